"""Pipes messages from a worker arrive whole: a large message (a materialization with a figure)
is written in several pieces, and the reader must never parse half of one."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dagster._utils import tail_file

from resources.compute import tail_whole_lines


def _read_while_written(tail: Callable[[str, Callable[[], bool]], Iterator[str]], path: Path, pieces: list[str]) -> list[str]:
    path.write_text("")
    stop, lines = threading.Event(), []
    reader = threading.Thread(target=lambda: lines.extend(tail(str(path), stop.is_set)))
    reader.start()
    with open(path, "a", encoding="utf-8") as writer:
        for piece in pieces:
            writer.write(piece)
            writer.flush()
            time.sleep(0.3)  # the reader reaches the end of the file between two pieces
    stop.set()
    reader.join()
    return lines


def test_a_message_written_in_pieces_is_read_whole(tmp_path: Path) -> None:
    big = json.dumps({"method": "report_asset_materialization", "params": {"figure": "x" * 100_000}}) + "\n"
    small = json.dumps({"method": "closed", "params": {}}) + "\n"
    pieces = [big[:8192], big[8192:50_000], big[50_000:] + small]
    assert _read_while_written(tail_whole_lines, tmp_path / "ours.jsonl", pieces) == [big, small]
    # Dagster's own tail hands the half-written message over in pieces: what lost a run's SAE metadata.
    assert len(_read_while_written(tail_file, tmp_path / "dagster.jsonl", pieces)) > 2
