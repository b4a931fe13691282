"""A real `dagster dev` (webserver + daemon) on localhost for tests, and a small GraphQL client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import PROJECT_ROOT

LOCATION = "tiny"  # the code location of the tests' experiment: its experiment.name
REPOSITORY = "__repository__"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class DagsterDev:
    process: subprocess.Popen
    url: str
    log_path: Path
    config_path: Path

    def graphql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables or {}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]


def _instance_storage_created(dagster_home: Path) -> None:
    """Create the instance's SQLite storage before any server starts: a test that opens the
    instance while the webserver and daemon are creating it races their alembic stamps ("Version
    table 'alembic_version' has more than one head present", seen once in a full run)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(dagster_home)):
        pass


def start_dagster_dev(dagster_home: Path, config_path: Path | None, log_path: Path, timeout: float = 120,
                      env: dict[str, str] | None = None, experiments: Path | None = None) -> DagsterDev:
    """`scripts/dev.sh` with its own DAGSTER_HOME, config and port (and ``env`` on top, e.g. the
    SLURM backend); returns once GraphQL answers. Without ``config_path``, the workspace is every
    config of the folder ``experiments``, one code location each."""
    _instance_storage_created(dagster_home)
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "PORT": str(port), **(env or {})}
    env.pop("INTERP_ASSETS_CONFIG", None)
    if config_path is not None:
        env["INTERP_ASSETS_CONFIG"] = str(config_path)
    if experiments is not None:
        env["INTERP_ASSETS_EXPERIMENTS"] = str(experiments)
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        ["bash", str(PROJECT_ROOT / "scripts" / "dev.sh")], cwd=PROJECT_ROOT, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    return _answering(DagsterDev(process, f"http://127.0.0.1:{port}", log_path, config_path), "dagster dev", timeout)


def _answering(dev: DagsterDev, what: str, timeout: float) -> DagsterDev:
    """``dev`` once its GraphQL answers; stopped, and an error with its log, if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if dev.process.poll() is not None:
            raise RuntimeError(f"{what} exited with {dev.process.returncode}:\n{dev.log_tail()}")
        try:
            dev.graphql("{ version }", timeout=5)
            return dev
        except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError, OSError):
            time.sleep(0.5)
    dev.stop()
    raise RuntimeError(f"{what} did not answer within {timeout}s:\n{dev.log_tail()}")


class UnixSocketForward:
    """What `ssh -L PORT:/path/to/socket login-node` does on a workstation: a TCP port on
    127.0.0.1 whose connections are relayed to a Unix domain socket."""

    def __init__(self, socket_path: Path) -> None:
        import threading

        self.socket_path = socket_path
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(str(self.socket_path))
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


def start_private_ui(dagster_home: Path, config_path: Path, log_path: Path, socket_path: Path,
                     timeout: float = 120) -> DagsterDev:
    """The shared-login-node launcher (`python -m interp_assets.serve`: webserver on a Unix socket in
    a private directory + daemon), reached through a forwarded TCP port as from a workstation."""
    _instance_storage_created(dagster_home)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "INTERP_ASSETS_CONFIG": str(config_path)}
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv" / "bin" / "python"), "-m", "interp_assets.serve", "all", "--socket", str(socket_path)],
        cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    forward = UnixSocketForward(socket_path)
    return _answering(DagsterDev(process, f"http://127.0.0.1:{forward.port}", log_path, config_path),
                      "the UI launcher", timeout)


LAUNCH_RUN = """
mutation Launch($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message stack }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

LAUNCH_BACKFILL = """
mutation Backfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message stack }
    ... on PartitionSetNotFoundError { message }
  }
}"""

RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    ... on Runs { results { runId status assetSelection { path } tags { key value } } }
  }
}"""

RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    __typename
    ... on WorkspaceLocationEntry { locationOrLoadError { __typename ... on PythonError { message } } }
  }
}"""

STALENESS = """
query Stale($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) { assetKey { path } staleStatus staleCauses { key { path } category reason } }
}"""

STALENESS_BY_PARTITION = """
query StaleByPartition($keys: [AssetKeyInput!], $partitions: [String!]!) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    staleStatusByPartition(partitions: $partitions)
    staleCausesByPartition(partitions: $partitions) { partitionKey category reason }
  }
}"""

def staleness(dev: DagsterDev, asset: str, partitions: list[str] | None = None, experiment: str = LOCATION) -> dict:
    """An asset's stale status (and causes) as the UI reads it: the asset's, or per partition."""
    keys = [{"path": [experiment, asset]}]
    if partitions is None:
        return dev.graphql(STALENESS, {"keys": keys})["assetNodes"][0]
    return dev.graphql(STALENESS_BY_PARTITION, {"keys": keys, "partitions": partitions})["assetNodes"][0]


START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on Sensor { sensorState { status } } ... on PythonError { message } }
}"""

SENSOR_TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    ... on Sensor { sensorState { status ticks(limit: 20) { status timestamp } } }
  }
}"""


def launch_assets(dev: DagsterDev, assets: list[str], experiment: str = LOCATION,
                  partition_range: tuple[str, str] | None = None, with_checks: bool = False) -> str:
    """What the UI's Materialize button sends for unpartitioned assets (of one experiment: its
    code location and key prefix), or for a partition range launched as a single run; with the
    assets' checks (an asset that runs its checks itself must be launched with them)."""
    tags = [] if partition_range is None else [
        {"key": "dagster/asset_partition_range_start", "value": partition_range[0]},
        {"key": "dagster/asset_partition_range_end", "value": partition_range[1]}]
    result = dev.graphql(LAUNCH_RUN, {"executionParams": {
        "selector": {"repositoryLocationName": experiment, "repositoryName": REPOSITORY, "pipelineName": "__ASSET_JOB",
                     "assetSelection": [{"path": [experiment, a]} for a in assets],
                     "assetCheckSelection": None if with_checks else []},
        "mode": "default", "executionMetadata": {"tags": tags},
    }})["launchPipelineExecution"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def launch_backfill(dev: DagsterDev, assets: list[str], partitions: list[str], experiment: str = LOCATION) -> str:
    result = dev.graphql(LAUNCH_BACKFILL, {"backfillParams": {
        "assetSelection": [{"path": [experiment, a]} for a in assets], "partitionNames": partitions, "fromFailure": False,
    }})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return result["backfillId"]


def runs(dev: DagsterDev, tags: dict[str, str] | None = None) -> list[dict[str, Any]]:
    flt = {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]} if tags else {}
    return dev.graphql(RUNS, {"filter": flt})["runsOrError"]["results"]


def wait_for_runs(dev: DagsterDev, tags: dict[str, str], expected: int | None = None, timeout: float = 600) -> list[dict]:
    """Wait until the runs with these tags (at least ``expected`` of them) have all finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = runs(dev, tags)
        finished = [r for r in found if r["status"] in {"SUCCESS", "FAILURE", "CANCELED"}]
        if found and len(finished) == len(found) and (expected is None or len(found) >= expected):
            return found
        time.sleep(1)
    raise AssertionError(f"runs tagged {tags} did not finish in {timeout}s: {runs(dev, tags)}\n{dev.log_tail()}")


def wait_for_run(dev: DagsterDev, run_id: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    query = "query R($id: ID!) { runOrError(runId: $id) { ... on Run { runId status tags { key value } } } }"
    while time.monotonic() < deadline:
        run = dev.graphql(query, {"id": run_id})["runOrError"]
        if run.get("status") in {"SUCCESS", "FAILURE", "CANCELED"}:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s\n{dev.log_tail()}")


def sensor_selector(name: str) -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}


WORKSPACE = """
query Workspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries { name loadStatus locationOrLoadError { __typename ... on PythonError { message causes { message } } } }
    }
  }
}"""


def workspace_locations(dev: DagsterDev, expected: int, timeout: float = 180) -> dict[str, dict[str, Any]]:
    """Every code location of the workspace by name, once ``expected`` of them have finished loading."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = dev.graphql(WORKSPACE)["workspaceOrError"].get("locationEntries") or []
        loaded = {e["name"]: e for e in entries if e["loadStatus"] == "LOADED"}
        if len(loaded) >= expected:
            return loaded
        time.sleep(1)
    raise AssertionError(f"the workspace's {expected} locations did not load in {timeout}s\n{dev.log_tail()}")
