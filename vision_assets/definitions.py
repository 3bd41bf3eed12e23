"""The code location Dagster loads (`workspace.yaml`): the process set up, then the one `Definitions`, built from
the environment's settings. This is the only module with side effects at import; everything else (the CLI, tests,
benches) builds what it needs through `wiring.py`."""

from .bootstrap import bootstrap
from .settings import Settings
from .wiring import definitions_from

bootstrap()
defs = definitions_from(Settings.from_env())
