"""A Dagster instance file (`dagster.yaml`) checked the way Dagster loads it, without connecting to anything.

Dagster checks an instance file in two places: the file's own schema and rules when it is read, and each configured
class's config (storages, run launcher, coordinator, compute logs, ...) only when the class is constructed, which
for a team's instance means connecting to Postgres or Kubernetes. A typo in a class's config then shows as a
crash-looping daemon after a deploy. This runs both checks before: the file through Dagster's own reading, then each
class imported and its config processed by the class's own `config_type`, exactly what Dagster does before it
constructs it. Settings read from the environment (`{env: DAGSTER_PG_PASSWORD}`) are checked for their place, not
their value: an unset one is given a stand-in for the check, and reported.

    uv run python -m vision_assets.tools.instance_check deploy/dagster.yaml

(docs/deploying.md runs it on what `helm template` renders from deploy/helm/dagster-values.yaml.)
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAND_IN = "1"  # reads as a string and as an int, the two kinds an `{env: ...}` setting takes


@dataclass
class CheckedClass:
    section: str  # the instance file's key: run_launcher, event_log_storage, ...
    klass: type
    config: Mapping[str, Any]  # after Dagster's processing: defaults filled in, environment read


@dataclass
class InstanceCheck:
    classes: dict[str, CheckedClass] = field(default_factory=dict)
    unset_environment: list[str] = field(default_factory=list)  # what the deployment must provide


def check_instance_file(path: str | Path) -> InstanceCheck:
    """Raise `DagsterInvalidConfigError` (or `ImportError` for a class that is not there) where Dagster would.
    Dagster's own reading and processing, through `dagster_internals` (no public API checks an instance without
    constructing it); tests/test_deploy_kubernetes.py compares this with `DagsterInstance.from_config` on good and
    bad files."""
    from dagster import DagsterInvalidConfigError

    from ..dagster_internals import processed_class_config, read_instance_file

    path = Path(path)
    with _stand_ins(environment_names(_read(path))) as unset:
        config = read_instance_file(str(path.parent), path.name)
        checked = InstanceCheck(unset_environment=unset)
        for section, value in config.items():
            if not (isinstance(value, Mapping) and {"module", "class"} <= set(value)):
                continue
            klass = _configured_class(section, value["module"], value["class"])
            result = processed_class_config(klass, value.get("config"))
            if not result.success:
                raise DagsterInvalidConfigError(f"Errors in the `{section}` of {path} ({value['module']}."
                                                f"{value['class']})", result.errors, value.get("config"))
            checked.classes[section] = CheckedClass(section, klass, result.value)
    return checked


def _configured_class(section: str, module_name: str, class_name: str) -> type:
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"the `{section}` names {module_name}.{class_name}, which this environment cannot import "
                          f"({error})") from error


def environment_names(config: Any) -> list[str]:
    """Every `{env: NAME}` the file reads, in order."""
    if isinstance(config, Mapping):
        if set(config) == {"env"} and isinstance(config["env"], str):
            return [config["env"]]
        return [name for value in config.values() for name in environment_names(value)]
    if isinstance(config, list):
        return [name for value in config for name in environment_names(value)]
    return []


def _read(path: Path) -> Any:
    from dagster_shared.yaml_utils import load_yaml_from_path

    return load_yaml_from_path(str(path)) or {}


@contextmanager
def _stand_ins(names: list[str]) -> Iterator[list[str]]:
    unset = [name for name in dict.fromkeys(names) if name not in os.environ]
    os.environ.update({name: STAND_IN for name in unset})
    try:
        yield unset
    finally:
        for name in unset:
            os.environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a dagster.yaml")
    args = parser.parse_args(argv)
    from dagster import DagsterInvalidConfigError

    try:
        checked = check_instance_file(args.path)
    except (DagsterInvalidConfigError, ImportError) as error:
        print(f"{args.path}: {error}", file=sys.stderr)
        return 1
    for item in checked.classes.values():
        print(f"{item.section}: {item.klass.__module__}.{item.klass.__name__}: config accepted")
    if checked.unset_environment:
        print(f"the deployment must set: {', '.join(checked.unset_environment)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
