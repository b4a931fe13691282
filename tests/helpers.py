"""Small builders shared by the tests."""

from __future__ import annotations

import contextlib
import time
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = PROJECT_ROOT / "configs" / "experiments" / "tiny.yaml"
DATA = Path(__file__).resolve().parent / "data"


EXPERIMENT = "tiny"
"""configs/experiments/tiny.yaml's experiment.name: the prefix of every asset key of the tests' studies."""


def in_experiment(names: list[str], experiment: str = EXPERIMENT) -> list[str]:
    """Asset names as a selection of one experiment's keys (``tiny/saes``)."""
    return [f"{experiment}/{name}" for name in names]


def asset_key(name: str, experiment: str = EXPERIMENT):  # noqa: ANN201 - dagster.AssetKey
    import dagster as dg

    return dg.AssetKey([experiment, name])


SMALL_CORPUS = {"generated_documents": 1500, "max_tokens": 8192, "eval_tokens": 1024}
"""A generated corpus of ~18k tokens: 256 training and 32 held-out windows, for plumbing tests."""


def save_text_dataset(folder: Path, texts: list[str], column: str = "text") -> Path:
    """A Hugging Face ``datasets`` folder (``save_to_disk``) holding ``texts``, as a lab prepares one."""
    import datasets

    datasets.Dataset.from_dict({column: texts}).save_to_disk(str(folder))
    return folder


def tiny_config_dict() -> dict[str, Any]:
    return yaml.safe_load(TINY_CONFIG.read_text())


def deep_update(base: dict[str, Any], updates: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


def write_config(directory: Path, updates: dict[str, Any] | None = None, name: str = "config.yaml") -> Path:
    """tiny.yaml with ``updates`` merged in, storage under ``directory`` unless given."""
    # root + prefix "storage": the experiment's files are under directory/storage/, as before namespaces.
    data = deep_update(tiny_config_dict(), {"storage": {"root": str(directory), "prefix": "storage"}})
    data = deep_update(data, updates or {})
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def copy_study(source_root: str | Path, target: Path, folders: tuple[str, ...],
               updates: dict[str, Any] | None = None) -> Path:
    """A new study under ``target`` whose storage starts with ``folders`` copied from another
    study's storage root; its config is tiny.yaml with ``updates``."""
    import shutil

    for folder in folders:
        shutil.copytree(Path(source_root) / folder, target / "storage" / folder)
    return write_config(target, updates)


def run_log(instance: Any, run_id: str) -> str:
    """Every log line of a run as the UI shows it, the worker's Pipes logs included."""
    return "\n".join(entry.user_message for entry in instance.all_logs(run_id))


def seed_tiny_model(storage_root: str | Path, built_storage: Path) -> None:
    """Copy an already built tiny model into another storage root (same spec, same folder)."""
    import shutil

    shutil.copytree(built_storage / "models", Path(storage_root) / "models", dirs_exist_ok=True)


@contextlib.contextmanager
def small_filesystem(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. ``1m``) at ``mount_point``: a storage root that really fills up.
    Skips the test when tmpfs cannot be mounted (it needs root, as CI has)."""
    import subprocess

    import pytest

    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def grow_filesystem(mount_point: Path, size: str) -> None:
    """Give a tmpfs from ``small_filesystem`` more room, as an operator freeing space would."""
    import subprocess

    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


def wait_for(what: str, condition: Callable[[], object], timeout: float = 300, every: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_local_server(script: Path, env: dict[str, str], what: str) -> dict[str, str]:
    """``script start`` (scripts/postgres-local.sh, mlflow-local.sh): the ``export NAME=value``
    lines it prints. A server that cannot start fails the test under CI (where it must) and
    skips it, saying why, elsewhere."""
    import os
    import subprocess

    import pytest

    started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, env=env, timeout=900)
    if started.returncode != 0:
        reason = f"{what} could not start: {started.stderr.strip()[-1500:]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
                if line.startswith("export "))
