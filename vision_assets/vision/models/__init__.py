"""Model wrappers: one small base (`Model`), one module per task. Heavy libraries are imported on load, not on
import, so the Dagster code server and the sensor never pay for torch."""
