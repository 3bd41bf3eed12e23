"""Plain-Python core of vision-assets: no Dagster imports here, so all of it is testable on its own."""
