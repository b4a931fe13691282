"""The UI and the daemon for a shared login node: ``python -m interp_assets.serve`` (``scripts/ui.sh``).

Dagster's open-source webserver has no login, and 127.0.0.1 belongs to every account of the
machine: on a login node shared by hundreds of accounts, anyone could read the runs and launch
jobs charged to you. So by default the webserver's own ASGI app is served by uvicorn on a Unix
domain socket inside a directory only you can enter, and you reach it from your workstation
with ``ssh -L 3000:<socket> <login node>``. The daemon runs beside it. Both refuse to start on a
``DAGSTER_HOME`` (or socket directory) that other accounts can write to, naming the path and the
fix. ``--tcp PORT`` serves on 127.0.0.1 instead, for a laptop, with a warning when the machine
has other human accounts.

    python -m interp_assets.serve [ui|daemon|all] [--socket PATH | --tcp PORT]
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

from interp_assets.config import PROJECT_ROOT

DEFAULT_SOCKET = Path.home() / ".interp-assets" / "ui.sock"


class InsecureLocation(RuntimeError):
    """A directory other accounts can write to (or enter, for the socket's)."""


def check_private_dir(path: Path, what: str, *, others_may_read: bool) -> None:
    """Refuse ``path`` when an account other than its owner can write to it (or, unless
    ``others_may_read``, read or enter it), or when it belongs to someone else."""
    info = path.stat()
    if info.st_uid != os.getuid():
        raise InsecureLocation(f"{what} {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}): "
                               "use a directory of your own")
    forbidden = (stat.S_IWGRP | stat.S_IWOTH) if others_may_read else (stat.S_IRWXG | stat.S_IRWXO)
    if info.st_mode & forbidden:
        fix = f"chmod go-w {path}" if others_may_read else f"chmod 700 {path}"
        who = "can write to it" if others_may_read else "can enter it"
        raise InsecureLocation(f"{what} {path} has mode {stat.filemode(info.st_mode)}: other accounts {who}. "
                               f"Fix: {fix}")


def check_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / "dagster_home").resolve()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Run logs, event records and compute logs live here: nobody else may write (or read) them.
    check_private_dir(home, "DAGSTER_HOME", others_may_read=False)
    return home


def other_human_accounts() -> list[str]:
    """Accounts with a login shell besides this one (uid 1000+, as Debian numbers people)."""
    me = os.getuid()
    return sorted(entry.pw_name for entry in pwd.getpwall()
                  if entry.pw_uid >= 1000 and entry.pw_uid != 65534 and entry.pw_uid != me
                  and not entry.pw_shell.endswith(("nologin", "false")))


def prepare_socket(path: Path) -> Path:
    """The socket's directory, made (0700) or checked; a stale socket file removed."""
    path = path.resolve()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(path.parent, "the socket directory", others_may_read=False)
    if path.exists() or path.is_socket():
        path.unlink()
    return path


def _warn_if_shared(port: int) -> None:
    others = other_human_accounts()
    if others:
        print(f"WARNING: 127.0.0.1:{port} is reachable by every account of this machine, and it has {len(others)} "
              f"other ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): they can read your runs and "
              "launch jobs as you. On a shared machine use the socket: bash scripts/ui.sh", file=sys.stderr, flush=True)


def serve_ui(socket_path: Path | None, tcp_port: int | None, workspace: Path) -> None:
    import uvicorn
    from dagster import DagsterInstance
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import WorkspaceFileTarget
    from dagster_webserver.app import create_app_from_workspace_process_context
    from dagster_webserver.version import __version__

    with DagsterInstance.get() as instance, WorkspaceProcessContext(
        instance, version=__version__, workspace_load_target=WorkspaceFileTarget(paths=[str(workspace)]),
    ) as context:
        app = create_app_from_workspace_process_context(context)
        if tcp_port is not None:
            print(f"serve: the UI on http://127.0.0.1:{tcp_port}", file=sys.stderr, flush=True)
            uvicorn.run(app, host="127.0.0.1", port=tcp_port, log_level="warning")
        else:
            print(f"serve: the UI on the socket {socket_path}; from your workstation: "
                  f"ssh -N -L 3000:{socket_path} <this host>, then http://localhost:3000", file=sys.stderr, flush=True)
            uvicorn.run(app, uds=str(socket_path), log_level="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interp_assets.serve", description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=["all", "ui", "daemon", "check-tcp"], default="all",
                        help="check-tcp: only the checks `dagster dev` on a TCP port gets (scripts/dev.sh)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help=f"the UI's Unix socket (default {DEFAULT_SOCKET})")
    where.add_argument("--tcp", type=int, metavar="PORT", help="serve on 127.0.0.1:PORT instead (a laptop)")
    parser.add_argument("--workspace", type=Path,
                        help="default: one code location per experiment (interp_assets/workspace.py), written to "
                             "$DAGSTER_HOME/workspace.yaml at start")
    args = parser.parse_args(argv)
    if args.what == "check-tcp":  # a laptop's `dagster dev`: nobody else may write the instance
        home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / "dagster_home").resolve()
        try:
            check_private_dir(home, "DAGSTER_HOME", others_may_read=True)
        except InsecureLocation as error:
            print(f"dev: refusing to start: {error}", file=sys.stderr)
            return 2
        _warn_if_shared(args.tcp or 3000)
        return 0
    os.umask(0o077)  # what the UI, the daemon and their runs create is the owner's alone
    try:
        home = check_dagster_home()
        socket_path = None if args.tcp is not None or args.what == "daemon" else prepare_socket(
            args.socket or DEFAULT_SOCKET)
    except InsecureLocation as error:
        print(f"serve: refusing to start: {error}", file=sys.stderr)
        return 2
    os.environ["DAGSTER_HOME"] = str(home)
    if args.workspace is None:
        from interp_assets.workspace import main as write_workspace

        args.workspace = home / "workspace.yaml"
        if write_workspace(["--out", str(args.workspace)]) != 0:
            return 2
    if args.tcp is not None and args.what != "daemon":
        _warn_if_shared(args.tcp)
    daemon = None
    if args.what in ("all", "daemon"):
        command = [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(args.workspace)]
        if args.what == "daemon":
            os.execv(command[0], command)
        daemon = subprocess.Popen(command)
    try:
        serve_ui(socket_path, args.tcp, args.workspace)
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
