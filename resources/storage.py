"""Artifact storage under one root: a local folder or any fsspec URL.

Plain Python (no Dagster) so the worker, on a laptop or a SLURM node, writes exactly as the
orchestrator reads. Every write is atomic: bytes go to a temporary sibling, then one rename
makes them visible, so a crash leaves either the old artifact or the new one, never half of
one. Multi-file artifacts (activation shards) are made valid by writing their manifest last.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

_TMP_MARK = ".tmp-"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_bytes: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_errors(error: shutil.Error) -> list[OSError]:
    """The OSErrors inside a shutil.Error (copytree reports (src, dst, message) triples)."""
    found = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else []:
        message = str(item[2]) if isinstance(item, tuple) and len(item) == 3 else ""
        if "No space left on device" in message:
            found.append(OSError(errno.ENOSPC, message))
    return found


class ArtifactStore:
    """Read and write artifacts by relative path (``prompts/ioi.parquet``) under a root."""

    def __init__(self, root: str) -> None:
        self.root_url = root
        self.fs, self.root = fsspec.core.url_to_fs(root)
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def _path(self, relpath: str) -> str:
        parts = Path(relpath).parts
        if not relpath or Path(relpath).is_absolute() or ".." in parts:
            raise ValueError(f"artifact path {relpath!r} must be relative and stay under the storage root")
        return f"{self.root.rstrip('/')}/{relpath}"

    def url(self, relpath: str) -> str:
        path = self._path(relpath)
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def exists(self, relpath: str) -> bool:
        return self.fs.exists(self._path(relpath))

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Atomically write ``data``; returns its sha256."""
        path = self._path(relpath)
        if not self.is_local:
            # An object-store PUT is atomic (readers see the old object or the new one, never part
            # of one); a temporary copy + rename would only leave extra versions in a versioned bucket.
            self.fs.pipe_file(path, data)
            return sha256_bytes(data)
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            if os.path.exists(tmp):
                os.remove(tmp)
            self._explain_full_disk(error, relpath)
            raise
        return sha256_bytes(data)

    def _explain_full_disk(self, error: BaseException, relpath: str) -> None:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, (
                f"no space left on the storage root {self.root_url} while writing {relpath}: nothing was "
                "published and the previous version is kept. Free space there, or give this folder a "
                "larger root in storage.tiers, then rematerialize"
            )) from error

    def read_bytes(self, relpath: str) -> bytes:
        return self.fs.cat_file(self._path(relpath))

    def write_json(self, relpath: str, obj: Any) -> str:
        # sorted keys + no NaN: the same content always gives the same bytes, hence the same hash.
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
        return self.write_bytes(relpath, text.encode())

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.read_bytes(relpath))

    def write_parquet(self, relpath: str, frame: Any) -> str:
        """Write a polars DataFrame as Parquet; returns the sha256 of the file."""
        buffer = io.BytesIO()
        frame.write_parquet(buffer, statistics=False)
        return self.write_bytes(relpath, buffer.getvalue())

    def read_parquet(self, relpath: str) -> Any:
        import polars as pl

        return pl.read_parquet(io.BytesIO(self.read_bytes(relpath)))

    def delete(self, relpath: str) -> None:
        path = self._path(relpath)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def list(self, relpath: str) -> list[str]:
        """Names directly under a folder, temporary files excluded."""
        path = self._path(relpath)
        if not self.fs.exists(path):
            return []
        names = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(path, detail=False)]
        return sorted(name for name in names if _TMP_MARK not in name)

    def put_dir(self, relpath: str, local_dir: str | Path) -> None:
        """Publish a finished local folder at ``relpath`` as one unit (replacing any previous one).

        Locally this is a rename of a complete sibling folder; on an object store the files are
        uploaded first and a ``_COMPLETE`` marker last, which readers check.
        """
        path = self._path(relpath)
        local_dir = Path(local_dir)
        if self.is_local:
            parent = Path(path).parent
            parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=Path(path).name + _TMP_MARK, dir=parent))
            try:
                shutil.copytree(local_dir, staging, dirs_exist_ok=True)
                (staging / "_COMPLETE").write_text("")
            except BaseException as error:
                shutil.rmtree(staging, ignore_errors=True)
                if isinstance(error, shutil.Error):  # copytree gathers per-file errors
                    error = next((e for e in _copy_errors(error) if e.errno == errno.ENOSPC), error)
                self._explain_full_disk(error, relpath)
                raise
            old = None
            if Path(path).exists():
                old = parent / f"{Path(path).name}{_TMP_MARK}old-{uuid.uuid4().hex}"
                os.replace(path, old)
            os.replace(staging, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        else:
            self.delete(f"{relpath}/_COMPLETE")
            for file in sorted(local_dir.rglob("*")):
                if file.is_file():
                    self.write_bytes(f"{relpath}/{file.relative_to(local_dir).as_posix()}", file.read_bytes())
            self.write_bytes(f"{relpath}/_COMPLETE", b"")

    def is_complete_dir(self, relpath: str) -> bool:
        return self.exists(f"{relpath}/_COMPLETE")

    def _version_tag(self, relpath: str) -> str:
        """What identifies the current content of a remote object: size + ETag/VersionId/mtime.
        A re-published artifact gets a new tag, so a cached copy of the old one is never served."""
        info = self.fs.info(self._path(relpath))
        keys = ("size", "ETag", "VersionId", "LastModified", "mtime", "etag", "version_id")
        return json.dumps({key: str(info[key]) for key in keys if info.get(key) is not None}, sort_keys=True)

    def _cache_path(self, relpath: str, cache_dir: str | Path | None, tag: str) -> Path:
        """Where a remote artifact is downloaded to (once per version) for code that needs a local
        path: keyed by the root and the object's version, so two roots or two versions never mix."""
        key = sha256_bytes(f"{self.root_url}\0{relpath}\0{tag}".encode())[:20]
        return Path(cache_dir or Path(tempfile.gettempdir()) / "interp_assets_cache") / key / Path(relpath).name

    def local_file(self, relpath: str, cache_dir: str | Path | None = None) -> Path:
        """A local path for the file ``relpath`` (downloaded once into a cache if the root is remote)."""
        if self.is_local:
            return Path(self._path(relpath))
        cache = self._cache_path(relpath, cache_dir, self._version_tag(relpath))
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(cache.name + _TMP_MARK + uuid.uuid4().hex)
            self.fs.get_file(self._path(relpath), str(tmp))
            os.replace(tmp, cache)
        return cache

    def local_dir(self, relpath: str, cache_dir: str | Path | None = None) -> Path:
        """A local folder holding the published folder ``relpath`` (downloaded if the root is remote)."""
        if not self.is_complete_dir(relpath):
            raise FileNotFoundError(f"{self.url(relpath)} is missing or incomplete")
        if self.is_local:
            return Path(self._path(relpath))
        # The _COMPLETE marker is rewritten last on every publish: its version names the folder's.
        cache = self._cache_path(relpath, cache_dir, self._version_tag(f"{relpath}/_COMPLETE"))
        if not (cache / "_COMPLETE").exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=cache.name + _TMP_MARK, dir=cache.parent))
            self.fs.get(self._path(relpath) + "/", str(staging), recursive=True)
            shutil.rmtree(cache, ignore_errors=True)
            os.replace(staging, cache)
        return cache



class TieredArtifactStore(ArtifactStore):
    """Artifacts under several roots, chosen by an artifact's top-level folder (``activations/...``
    on the hot scratch filesystem, the rest on the versioned bucket). Each tier writes as its own
    root does, so atomicity and content hashes are the same on every tier."""

    def __init__(self, root: str, tiers: dict[str, str]) -> None:
        super().__init__(root)
        self._default = ArtifactStore(root)
        self.tiers = {folder: ArtifactStore(tier_root) for folder, tier_root in tiers.items()}

    def tier(self, relpath: str) -> ArtifactStore:
        """The store that holds ``relpath``: its top folder's tier, else the default root."""
        return self.tiers.get(relpath.split("/", 1)[0], self._default)


ROUTED_METHODS = ("url", "exists", "write_bytes", "read_bytes", "write_json", "read_json", "write_parquet",
                  "read_parquet", "delete", "list", "put_dir", "is_complete_dir", "local_file", "local_dir")
"""Every public ArtifactStore method that takes a relpath (a test keeps this list complete)."""


def _routed(name: str):  # noqa: ANN202
    def method(self: TieredArtifactStore, relpath: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.tier(relpath), name)(relpath, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = getattr(ArtifactStore, name).__doc__
    return method


for _name in ROUTED_METHODS:
    setattr(TieredArtifactStore, _name, _routed(_name))


def open_store(storage: Any) -> ArtifactStore:
    """The store for a config's ``storage`` section: its experiment's folder (``prefix``) under
    ``root``, and under each of the optional ``tiers``."""
    tiers = storage.tier_locations()
    return TieredArtifactStore(storage.location, tiers) if tiers else ArtifactStore(storage.location)
