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


def test_tiers_route_each_top_folder_to_its_own_root(tmp_path: Path) -> None:
    import inspect

    from resources.storage import ROUTED_METHODS, TieredArtifactStore

    store = TieredArtifactStore(str(tmp_path / "bucket"), {"activations": str(tmp_path / "scratch")})
    assert store.write_bytes("activations/l1/shard.bin", b"x") == store.write_bytes("saes/l1/w.bin", b"x")
    assert (tmp_path / "scratch" / "activations" / "l1" / "shard.bin").read_bytes() == b"x"
    assert (tmp_path / "bucket" / "saes" / "l1" / "w.bin").read_bytes() == b"x"
    assert not (tmp_path / "bucket" / "activations").exists()
    assert store.url("activations/l1") == f"{tmp_path}/scratch/activations/l1"
    assert store.list("activations/l1") == ["shard.bin"] and store.exists("saes/l1/w.bin")
    with pytest.raises(ValueError, match="stay under the storage root"):
        store.write_bytes("activations/../../escape", b"x")
    # Every public method that takes a relpath is routed (a new one must be added to the list).
    takes_relpath = {name for name, fn in inspect.getmembers(ArtifactStore, inspect.isfunction)
                     if not name.startswith("_") and list(inspect.signature(fn).parameters)[1:2] == ["relpath"]}
    assert takes_relpath == set(ROUTED_METHODS)


def test_unknown_tier_folders_are_a_config_error() -> None:
    from helpers import tiny_config_dict

    from interp_assets.config import ConfigError, parse_config

    data = tiny_config_dict()
    data["storage"] = {"root": "/data", "tiers": {"activation": "/scratch"}}
    with pytest.raises(ConfigError, match=r"storage\.tiers.*unknown artifact folder.*'activation'"):
        parse_config(data)


@pytest.fixture
def one_mebibyte(tmp_path: Path):  # noqa: ANN201
    from helpers import small_filesystem

    with small_filesystem(tmp_path / "small", "1m") as mount_point:
        yield mount_point


def test_a_full_filesystem_is_a_clear_error_and_keeps_every_previous_artifact(
    one_mebibyte: Path, tmp_path: Path
) -> None:
    small_filesystem = one_mebibyte
    store = ArtifactStore(str(small_filesystem))
    store.write_bytes("prompts/ioi.parquet", b"old" * 1000)
    with pytest.raises(OSError, match=r"no space left on the storage root .* while writing prompts/ioi\.parquet"):
        store.write_bytes("prompts/ioi.parquet", b"n" * (2 << 20))
    assert store.read_bytes("prompts/ioi.parquet") == b"old" * 1000
    folder = tmp_path / "sae"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"w" * (2 << 20))
    with pytest.raises(OSError, match="no space left on the storage root .* while writing saes/layer_001"):
        store.put_dir("saes/layer_001", folder)
    assert not store.exists("saes/layer_001") and store.list("saes") == []
    leftovers = [p for p in small_filesystem.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []  # no temp file or staging folder is left to fill the disk
