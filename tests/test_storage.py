"""Artifact storage: atomic writes, content hashes, paths confined to the root."""

from __future__ import annotations

import hashlib
from pathlib import Path

import polars as pl
import pytest

from resources.storage import ArtifactStore


def test_write_read_and_hash(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    sha = store.write_bytes("a/b/c.bin", b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    assert store.read_bytes("a/b/c.bin") == b"hello"
    assert store.list("a/b") == ["c.bin"]


def test_parquet_bytes_are_deterministic(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path))
    frame = pl.DataFrame({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    assert store.write_parquet("t1.parquet", frame) == store.write_parquet("t2.parquet", frame.clone())
    assert store.read_parquet("t1.parquet").equals(frame)


def test_a_failed_write_keeps_the_previous_artifact_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ArtifactStore(str(tmp_path))
    store.write_bytes("x.json", b"old")

    def disk_full(fd: int) -> None:  # the new bytes are written to the temp file, not yet renamed
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        store.write_bytes("x.json", b"new")
    assert store.read_bytes("x.json") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "a/../../b", ""])
def test_paths_cannot_leave_the_root(tmp_path: Path, bad: str) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    with pytest.raises(ValueError, match="stay under the storage root"):
        store.write_bytes(bad, b"x")


def test_put_dir_publishes_a_complete_folder_and_replaces_the_old_one(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "root"))
    for version in ("v1", "v2"):
        staging = tmp_path / version
        staging.mkdir()
        (staging / "weights.bin").write_text(version)
        store.put_dir("models/m", staging)
        assert store.is_complete_dir("models/m")
        assert (store.local_dir("models/m") / "weights.bin").read_text() == version
    assert store.list("models") == ["m"]  # no staging or old copies left behind
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        store.local_dir("models/other")


def test_fsspec_url_roots_work(tmp_path: Path) -> None:
    store = ArtifactStore(f"file://{tmp_path}/root")
    store.write_json("m.json", {"b": 1, "a": [1, 2]})
    assert store.read_json("m.json") == {"a": [1, 2], "b": 1}
    assert (tmp_path / "root" / "m.json").exists()
