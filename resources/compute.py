"""Compute backends: where a heavy asset's worker task runs.

Every backend has the same interface, ``run(context, task=..., extras=...)``, and talks Dagster
Pipes with ``python -m interp_assets.worker <task>``: the worker's logs and results come back
into the Dagster run, and the Dagster process itself never loads the model. ``LocalCompute``
runs the worker as a subprocess here; the SLURM backend submits the same command as a job.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
WORKER_MODULE = "interp_assets.worker"
RUN_ID_ENV = "INTERP_ASSETS_RUN_ID"

_SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|AUTH",
                          re.IGNORECASE)


def secret_names_in(env: dict[str, str], field: str) -> str | None:
    """Why ``env`` (a resource field) must not hold these variables, or None when it holds no secret.

    Resource config is shown in the Dagster UI and, for SLURM, written into the sbatch script on
    the shared filesystem; secrets therefore come only from the environment (a local worker and
    a locally submitted job inherit it) or from files (``~/.aws/credentials``, ``HF_TOKEN_PATH``)."""
    found = sorted(key for key in env if _SECRET_NAME.search(key))
    if not found:
        return None
    return (f"{field}: {found} look like secrets, which are never taken from resource config (the UI shows it "
            "and SLURM scripts store it). Export them in the environment that starts Dagster (workers and "
            "locally submitted jobs inherit it) or in your login environment on the cluster, or keep them in "
            "a credentials file, and remove them here")


def tail_whole_lines(path: str, should_stop: Callable[[], bool]) -> Iterator[str]:
    """Lines appended to ``path`` as they complete, until ``should_stop()`` and nothing is left.

    Dagster's own tail yields whatever ``readline`` returns, and a message the worker is still
    writing (a materialization with a figure is tens of kB, written in several system calls) then
    arrives cut in two and fails to parse: the message is lost and the step fails. Here a line
    is held back until its newline arrives."""
    pending = ""
    with open(path, encoding="utf-8") as stream:
        while True:
            chunk = stream.readline()
            if chunk:
                pending += chunk
                if pending.endswith("\n"):
                    yield pending
                    pending = ""
            elif should_stop():
                if pending:  # the writer is gone: an unterminated last line is all there will be
                    yield pending
                return
            else:
                time.sleep(0.01)


class WholeLineFileMessageReader(dg.PipesFileMessageReader):
    """Dagster's file message reader, parsing each message only once its line is complete."""

    def _reader_thread(self, handler: Any, is_resource_complete: threading.Event) -> None:
        try:
            for line in tail_whole_lines(self._path, is_resource_complete.is_set):
                handler.handle_message(json.loads(line))
        except BaseException:
            handler.report_pipes_framework_exception(f"{self.__class__.__name__} reader thread", sys.exc_info())
            raise


class ComputeResource(dg.ConfigurableResource):
    """The seam every heavy asset calls; assets are typed against this, backends subclass it."""

    def run(
        self, context: dg.AssetExecutionContext, *, task: str, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        raise NotImplementedError

    def release_run(self, run_id: str) -> list[str]:
        """Stop what a dead run (its Dagster process killed outright) left working; returns what
        was done, for the run's log (``interp_assets/dead_runs.py``)."""
        return []


class LocalCompute(ComputeResource):
    """Run worker tasks as subprocesses of the Dagster step, on this machine."""

    python_executable: str = sys.executable
    """Interpreter that runs the worker (the project's venv by default)."""
    torch_threads: int = 0
    """Threads torch may use in the worker; 0 leaves torch's default (all cores)."""
    env: dict[str, str] = {}
    """Extra environment for the worker."""

    def worker_command(self, task: str) -> list[str]:
        return [self.python_executable, "-m", WORKER_MODULE, task]

    def run(
        self, context: dg.AssetExecutionContext, *, task: str, extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        problem = secret_names_in(self.env, "LocalCompute.env")
        if problem:
            raise ValueError(problem)  # names only: the values are never echoed
        # The run id marks the worker as this run's, so a dead run's worker can be found and stopped.
        env = {**self.env, "INTERP_ASSETS_COMPUTE_BACKEND": "local", RUN_ID_ENV: context.run.run_id}
        if self.torch_threads:
            env["INTERP_ASSETS_TORCH_THREADS"] = str(self.torch_threads)
        # The worker must import this checkout's packages even when the step runs from elsewhere.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        with tempfile.TemporaryDirectory(prefix="interp-assets-pipes-") as messages:
            client = dg.PipesSubprocessClient(
                env=env, cwd=str(PROJECT_ROOT),
                message_reader=WholeLineFileMessageReader(os.path.join(messages, "messages.jsonl")),
            )
            return client.run(command=self.worker_command(task), context=context, extras=extras)

    def release_run(self, run_id: str) -> list[str]:
        """SIGTERM the worker processes of this host that carry the dead run's id (the step process
        that waited on them then fails and ends)."""
        done = []
        marker = f"{RUN_ID_ENV}={run_id}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGTERM)
                    done.append(f"release_dead_runs: stopped worker process {entry.name} of the dead run")
            except (OSError, ValueError):
                continue
        return done
