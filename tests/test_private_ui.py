"""The UI on a shared login node answers only its owner (README "Security"): the project's
launcher serves the webserver on a Unix socket in a directory only the owner can enter. A second
Unix account, made by the test, cannot connect to the socket, cannot read the instance's files
and gets no GraphQL answer; the owner can (test_ui runs its whole browser test that way). The
launcher refuses a DAGSTER_HOME or socket directory that other accounts can write to or enter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dagster_dev import start_private_ui
from helpers import PROJECT_ROOT, write_config

OTHER = "interp-other"
QUERY = '{"query": "{ version }"}'


@pytest.fixture(scope="module")
def other_account() -> str:
    if os.getuid() != 0:
        pytest.skip("making a second Unix account needs root (as CI has)")
    if subprocess.run(["id", OTHER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/bash", OTHER], check=True)
    return OTHER


@pytest.fixture()
def place() -> Path:
    """A folder every account can pass through (as /home or /rds are), holding the owner's things."""
    root = Path("/tmp") / f"interp-ui-{uuid.uuid4().hex[:8]}"
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _as(user: str, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", user, "--", *command], capture_output=True, text=True, timeout=60)


def _graphql_over(socket_path: Path, user: str | None = None) -> subprocess.CompletedProcess[str]:
    command = ["curl", "-s", "-m", "10", "--unix-socket", str(socket_path), "http://localhost/graphql",
               "-H", "Content-Type: application/json", "-d", QUERY]
    return _as(user, *command) if user else subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_second_account_gets_nothing_and_the_owner_gets_the_ui(other_account: str, place: Path) -> None:
    home = place / "dagster_home"
    home.mkdir(mode=0o700)
    shutil.copy(PROJECT_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    config = write_config(place)
    socket_path = place / "ui" / "ui.sock"
    ui = start_private_ui(home, config, place / "ui.log", socket_path)
    try:
        assert (socket_path.parent.stat().st_mode & 0o777) == 0o700
        # The owner: through the socket directly, and through the forwarded port.
        assert '"version"' in _graphql_over(socket_path).stdout
        assert ui.graphql("{ version }")["version"]
        # Another account on the same machine: no connection, no files, no GraphQL.
        denied = _as(other_account, sys.executable, "-c",
                     f"import socket; socket.socket(socket.AF_UNIX).connect({str(socket_path)!r})")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        reply = _graphql_over(socket_path, other_account)
        assert reply.returncode != 0 and "version" not in reply.stdout, reply
        for private in (home / "dagster.yaml", home):
            listing = _as(other_account, "ls", str(private))
            assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
    finally:
        ui.stop()


@pytest.mark.parametrize(("what", "mode"), [("socket dir", 0o777), ("socket dir", 0o750), ("DAGSTER_HOME", 0o775),
                                            ("DAGSTER_HOME", 0o757)])
def test_the_launcher_refuses_a_directory_others_can_write_to_or_enter(place: Path, what: str, mode: int) -> None:
    home, sockets = place / "dagster_home", place / "ui"
    home.mkdir(mode=0o700)
    sockets.mkdir(mode=0o700)
    target = sockets if what == "socket dir" else home
    target.chmod(mode)
    done = subprocess.run([str(PROJECT_ROOT / ".venv" / "bin" / "python"), "-m", "interp_assets.serve", "ui",
                           "--socket", str(sockets / "ui.sock")], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, "DAGSTER_HOME": str(home)}, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"{target}" in done.stderr and "Fix: chmod" in done.stderr, done.stderr
    assert not (sockets / "ui.sock").exists()
