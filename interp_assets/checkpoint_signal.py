"""SLURM's warning before the time limit (``--signal=B:USR1@N``; the batch script ``exec``s the
worker, so USR1 reaches it directly): checkpoint at the next training step instead of dying, so
the resubmitted job resumes from there. Light on purpose: the worker installs the handler before
its heavy imports, and the training loops ask ``checkpoint_requested()`` between steps."""

from __future__ import annotations

import os
import signal

_signalled = False


def install_usr1_handler() -> None:
    def handler(signum: int, frame: object) -> None:
        global _signalled
        _signalled = True
        # os.write, not print: a handler that prints while the worker is inside a write to stderr
        # raises "reentrant call" there.
        os.write(2, b"worker: USR1 received: checkpointing at the next training step\n")

    signal.signal(signal.SIGUSR1, handler)


def ignore_usr1() -> None:
    """Python's shutdown puts back the default action (death) of every signal it handles: a USR1
    then would fail the job of a worker that has finished and reported. Ignored, it stays so."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def checkpoint_requested() -> bool:
    """True once after each USR1."""
    global _signalled
    requested, _signalled = _signalled, False
    return requested
