"""The SAE corpus: documents read from local files, split by hash, tokenized and packed.

How text becomes training windows, in the order it happens:

1. **Documents** are read one at a time, never the whole corpus at once (``iter_documents``):
   plain text files (a document per line, per blank-line-separated paragraph, or per file), JSONL
   and Parquet files with a named text column, or a Hugging Face ``datasets`` folder written by
   ``save_to_disk``; ``generated`` is the behaviour sentences the tiny model learned from. Empty
   documents (only whitespace) are skipped.
2. **Held-out split**: a document is held out when the first 8 bytes of
   ``sha256("interp-assets/held-out:" + text)``, read as a fraction of 2**64, fall below
   ``held_out_fraction`` (``is_held_out``). It depends on the text alone, so it is the same in
   every run, order and data source, and a document repeated in the corpus is on one side only.
3. **Packing**, ``concatenate`` (SAELens's context-size packing, with Qwen's convention of no
   BOS): each document's tokens (the model's tokenizer, no special tokens) are followed by the
   end-of-text token and appended to one stream, which is cut into consecutive windows of
   ``seq_len`` tokens; a document may straddle two windows, and the last, incomplete window is
   dropped (``pack_windows``). ``document``: each document alone in its window, + end-of-text,
   cut at ``seq_len`` and right-padded (``PAD``, never fed as a token: padding is masked), for a
   model that never saw two documents in one context (the tiny model is trained that way, and
   packed windows put it out of distribution: its clean CE rose from ~1 to ~5 nats).
4. **Budget**: training takes windows of the training documents, in order, while their real
   tokens fit in ``max_tokens`` (``max_tokens // seq_len`` windows when concatenated); evaluation
   the same of the held-out ones with ``eval_tokens``; a corpus that cannot fill its budget (the
   documents run out before the next window would overflow it) is an error, not a silently
   smaller study.
5. The first ``exclude_first_positions`` positions of every window are fed to the model (they
   are context) but no activation is taken there: position 0 of a window carries the large-norm
   "attention sink" activations of Qwen-family models, which would dominate an SAE's loss.

Memory: reading holds one document (one Parquet/dataset batch) and at most one window of tokens
beyond the windows kept; the kept windows are ``int32`` (4 bytes a token of budget).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCES = ("generated", "text", "jsonl", "parquet", "dataset")
PAD = -1
"""Padding in a ``document``-packed window (token ids are never negative)."""
FILE_SUFFIXES = {"text": (".txt",), "jsonl": (".jsonl", ".json"), "parquet": (".parquet",)}
HELD_OUT_SALT = b"interp-assets/held-out:"
_TOKENIZE_BATCH = 256  # documents per call of the fast tokenizer


class CorpusError(ValueError):
    """A corpus that cannot be read as configured; the message names the file and the fix."""


@dataclass(frozen=True)
class CorpusSpec:
    """Where the documents come from and how they become windows (``corpus:`` in the config)."""

    source: str
    path: str | None = None
    text_column: str = "text"
    text_documents: str = "paragraph"
    dataset_split: str | None = None
    generated_documents: int = 0
    generated_seed: int = 0
    seq_len: int = 32
    packing: str = "concatenate"
    max_tokens: int = 0
    eval_tokens: int = 0
    held_out_fraction: float = 0.05
    exclude_first_positions: int = 0

    @property
    def train_windows(self) -> int:
        return self.max_tokens // self.seq_len

    @property
    def eval_windows(self) -> int:
        return self.eval_tokens // self.seq_len


# --------------------------------------------------------------------------- files
def corpus_files(spec: CorpusSpec) -> list[Path]:
    """The files of a file-based source: ``path`` itself, or every file of its kind in that folder
    (sorted, so the order is the same on every machine)."""
    if spec.source in ("generated", "dataset"):
        return []
    path = Path(spec.path or "")
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in FILE_SUFFIXES[spec.source])
        if not files:
            raise CorpusError(f"corpus.path: {path} holds no {'/'.join(FILE_SUFFIXES[spec.source])} file for "
                              f"corpus.source: {spec.source}")
        return files
    raise CorpusError(f"corpus.path: {path} does not exist: give the corpus file or folder on this machine "
                      "(nothing is downloaded at run time)")


def _open_dataset(spec: CorpusSpec) -> Any:
    import datasets

    path = Path(spec.path or "")
    if not path.exists():
        raise CorpusError(f"corpus.path: {path} does not exist: prepare the corpus first (README: Preparing a "
                          "corpus); nothing is downloaded at run time")
    if not path.is_dir():
        raise CorpusError(f"corpus.path: {path} is not a folder: corpus.source: dataset reads a folder written by "
                          "datasets' save_to_disk")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 - datasets raises many kinds; all mean the same to the user
        raise CorpusError(f"corpus.path: the datasets library cannot open {path} ({type(error).__name__}: {error}); "
                          "write it with Dataset.save_to_disk(path)") from None
    if isinstance(loaded, datasets.DatasetDict):
        split = spec.dataset_split or ("train" if "train" in loaded else None)
        if split not in loaded:
            raise CorpusError(f"corpus.dataset_split: {path} holds splits {sorted(loaded)}; name one "
                              f"(got {spec.dataset_split!r})")
        loaded = loaded[split]
    elif spec.dataset_split is not None:
        raise CorpusError(f"corpus.dataset_split: {path} is a single Dataset with no splits: drop dataset_split")
    return loaded


def _unknown_column(spec: CorpusSpec, where: str, columns: Iterable[str]) -> CorpusError:
    return CorpusError(f"corpus.text_column: {where} has no column {spec.text_column!r}; "
                       f"its columns are {sorted(columns)}")


def check_corpus(spec: CorpusSpec) -> None:
    """What can be checked without reading every document: files and folders exist, the text
    column is there, the dataset opens. Raises ``CorpusError``."""
    if spec.source == "generated":
        return
    if spec.source == "dataset":
        dataset = _open_dataset(spec)
        if spec.text_column not in dataset.column_names:
            raise _unknown_column(spec, str(spec.path), dataset.column_names)
        return
    for file in corpus_files(spec):
        if spec.source == "parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.ParquetFile(file).schema_arrow.names
            except Exception as error:  # noqa: BLE001 - pyarrow's errors for a non-Parquet file vary
                raise CorpusError(f"corpus.path: {file} is not a Parquet file pyarrow can read ({error})") from None
            if spec.text_column not in names:
                raise _unknown_column(spec, str(file), names)
        elif spec.source == "jsonl":
            with open(file, "rb") as handle:
                first = handle.readline()
            if first.strip():
                record = _json_record(first, file, 1, spec)
                if spec.text_column not in record:
                    raise _unknown_column(spec, f"{file} line 1", record)


# --------------------------------------------------------------------------- documents
def _decode_error(file: Path, line: int, error: UnicodeDecodeError) -> CorpusError:
    return CorpusError(f"corpus.path: {file} line {line} is not UTF-8 ({error.reason}); convert the file to UTF-8 "
                       "(e.g. iconv -f latin1 -t utf-8) or remove the bytes")


def _text_lines(file: Path) -> Iterator[tuple[int, str]]:
    with open(file, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise _decode_error(file, number, error) from None


def _json_record(raw: bytes, file: Path, number: int, spec: CorpusSpec) -> dict[str, Any]:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise _decode_error(file, number, error) from None
    except json.JSONDecodeError as error:
        raise CorpusError(f"corpus.path: {file} line {number} is not JSON ({error.msg}); JSONL holds one object "
                          "per line") from None
    if not isinstance(record, dict):
        raise CorpusError(f"corpus.path: {file} line {number} is a JSON {type(record).__name__}, not an object with "
                          f"a {spec.text_column!r} field")
    return record


def _column_text(value: Any, where: str, spec: CorpusSpec) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(f"corpus.text_column: {spec.text_column!r} at {where} is a {type(value).__name__}, "
                          "not text: name the column that holds the documents")
    return value


def iter_documents(spec: CorpusSpec) -> Iterator[str]:
    """Every document of the corpus, in order, streamed (empty ones included: callers skip them)."""
    if spec.source == "generated":
        from interp_assets.core.behaviours import generate_corpus

        yield from generate_corpus(spec.generated_documents, spec.generated_seed)
    elif spec.source == "dataset":
        dataset = _open_dataset(spec)
        if spec.text_column not in dataset.column_names:
            raise _unknown_column(spec, str(spec.path), dataset.column_names)
        for start, batch in enumerate(dataset.select_columns([spec.text_column]).iter(batch_size=1024)):
            for offset, value in enumerate(batch[spec.text_column]):
                yield _column_text(value, f"{spec.path} row {start * 1024 + offset}", spec)
    elif spec.source == "parquet":
        import pyarrow.parquet as pq

        check_corpus(spec)
        for file in corpus_files(spec):
            row = 0
            for batch in pq.ParquetFile(file).iter_batches(batch_size=1024, columns=[spec.text_column]):
                for value in batch.column(0).to_pylist():
                    yield _column_text(value, f"{file} row {row}", spec)
                    row += 1
    elif spec.source == "jsonl":
        for file in corpus_files(spec):
            with open(file, "rb") as handle:
                for number, raw in enumerate(handle, start=1):
                    if not raw.strip():
                        continue
                    record = _json_record(raw, file, number, spec)
                    if spec.text_column not in record:
                        raise _unknown_column(spec, f"{file} line {number}", record)
                    yield _column_text(record[spec.text_column], f"{file} line {number}", spec)
    elif spec.source == "text":
        for file in corpus_files(spec):
            if spec.text_documents == "line":
                for _, line in _text_lines(file):
                    yield line.rstrip("\r\n")
            elif spec.text_documents == "paragraph":
                paragraph: list[str] = []
                for _, line in _text_lines(file):
                    if line.strip():
                        paragraph.append(line)
                    elif paragraph:
                        yield "".join(paragraph).rstrip("\r\n")
                        paragraph = []
                if paragraph:
                    yield "".join(paragraph).rstrip("\r\n")
            else:
                yield "".join(line for _, line in _text_lines(file))
    else:
        raise CorpusError(f"corpus.source: unknown source {spec.source!r}; choose from {list(SOURCES)}")


def is_held_out(text: str, fraction: float) -> bool:
    """Whether a document belongs to the held-out split (a function of its text alone)."""
    digest = hashlib.sha256(HELD_OUT_SALT + text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def split_documents(spec: CorpusSpec, held_out: bool) -> Iterator[str]:
    """The non-empty documents of one side of the split, in corpus order."""
    for text in iter_documents(spec):
        if text.strip() and is_held_out(text, spec.held_out_fraction) == held_out:
            yield text


# --------------------------------------------------------------------------- packing
def tokenized(tokenizer, documents: Iterable[str]) -> Iterator[list[int]]:  # noqa: ANN001
    """Token ids of each document (no special tokens), tokenized a few hundred at a time."""
    batch: list[str] = []
    for text in documents:
        batch.append(text)
        if len(batch) == _TOKENIZE_BATCH:
            yield from tokenizer(batch, add_special_tokens=False)["input_ids"]
            batch = []
    if batch:
        yield from tokenizer(batch, add_special_tokens=False)["input_ids"]


def pack_windows(token_lists: Iterable[Sequence[int]], seq_len: int, eos_token_id: int) -> Iterator[list[int]]:
    """Documents' tokens, each followed by ``eos_token_id``, cut into consecutive ``seq_len``
    windows; the last incomplete window is dropped."""
    buffer: list[int] = []
    for ids in token_lists:
        buffer.extend(ids)
        buffer.append(eos_token_id)
        while len(buffer) >= seq_len:
            yield buffer[:seq_len]
            del buffer[:seq_len]


def document_windows(token_lists: Iterable[Sequence[int]], seq_len: int, eos_token_id: int) -> Iterator[list[int]]:
    """Each document alone, + ``eos_token_id``, cut at ``seq_len`` and right-padded with ``PAD``."""
    for ids in token_lists:
        window = [*ids, eos_token_id][:seq_len]
        yield window + [PAD] * (seq_len - len(window))


def end_of_text_id(tokenizer) -> int:  # noqa: ANN001
    token_id = tokenizer.eos_token_id
    if token_id is None:
        raise CorpusError("the model's tokenizer has no end-of-text (eos) token to separate documents with")
    return int(token_id)


def read_windows(spec: CorpusSpec, tokenizer, held_out: bool, n_windows: int | None = None):  # noqa: ANN001, ANN201
    """One side's windows, as an ``int32`` tensor ``[n, seq_len]`` (``PAD`` where a
    ``document`` window ends early): while their real tokens fit in the budget, or the first
    ``n_windows``. Raises ``CorpusError`` when the corpus cannot fill them."""
    import torch

    budget_tokens = spec.eval_tokens if held_out else spec.max_tokens
    side, budget = ("held-out", "corpus.eval_tokens") if held_out else ("training", "corpus.max_tokens")
    if n_windows is None and budget_tokens < spec.seq_len:
        raise CorpusError(f"{budget}: asks for fewer tokens than one window of corpus.seq_len {spec.seq_len}")
    documents = tokenized(tokenizer, split_documents(spec, held_out))
    pack = pack_windows if spec.packing == "concatenate" else document_windows
    rows: list[list[int]] = []
    tokens = 0
    for window in pack(documents, spec.seq_len, end_of_text_id(tokenizer)):
        real = sum(1 for token in window if token != PAD)
        if (n_windows is None and tokens + real > budget_tokens) or (n_windows is not None and len(rows) == n_windows):
            return torch.tensor(rows, dtype=torch.int32)
        rows.append(window)
        tokens += real
    if rows and (len(rows) == n_windows or (n_windows is None and tokens + spec.seq_len > budget_tokens)):
        return torch.tensor(rows, dtype=torch.int32)  # ran out just as the budget was filled
    if not rows:
        raise CorpusError(f"corpus: the {side} documents of {describe(spec)} fill no window of {spec.seq_len} tokens "
                          "(is the corpus empty, or held_out_fraction 0 or 1?); add text")
    asked = f"{n_windows} windows" if n_windows is not None else f"{budget_tokens} tokens"
    raise CorpusError(
        f"{budget}: the {side} documents of {describe(spec)} fill only {len(rows)} windows of {spec.seq_len} tokens "
        f"({tokens} tokens) but {asked} are asked for: lower {budget} or add text"
    )


def describe(spec: CorpusSpec) -> str:
    return f"the generated corpus ({spec.generated_documents} sentences)" if spec.source == "generated" else str(spec.path)


# --------------------------------------------------------------------------- identity
def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "interp-assets" / "file-sha256.json"


def _check_utf8(path: Path, chunks: Iterable[bytes]) -> Iterator[bytes]:
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    for chunk in chunks:
        try:
            decoder.decode(chunk)
        except UnicodeDecodeError as error:
            raise _decode_error(path, line + chunk[: error.start].count(b"\n"), error) from None
        line += chunk.count(b"\n")
        yield chunk
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise _decode_error(path, line, error) from None


def file_sha256(path: Path, text: bool = False) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) in the user's cache so a large
    corpus is hashed once per change, not at every load of the definitions. ``text``: also check
    that the file is UTF-8 (a ``CorpusError`` naming the line otherwise)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{int(text)}"
    cache_file = _cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        chunks = iter(lambda: handle.read(1 << 20), b"")
        for chunk in _check_utf8(path, chunks) if text else chunks:
            digest.update(chunk)
    cache[key] = digest.hexdigest()
    try:  # a cache that cannot be written only costs a re-hash next time
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_file.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(cache, tmp)
        os.replace(tmp.name, cache_file)
    except OSError:
        pass
    return cache[key]


def content_fingerprint(spec: CorpusSpec, extra_files: Sequence[Path] = ()) -> str:
    """sha256 over the corpus's bytes (every file, or the dataset folder's files) and
    ``extra_files`` (the tokenizer's): what the windows are made of, beyond the settings."""
    if spec.source == "generated":
        files: list[tuple[str, Path, bool]] = []
    elif spec.source == "dataset":
        root = Path(spec.path or "")
        files = [(str(p.relative_to(root)), p, False) for p in sorted(root.rglob("*")) if p.is_file()]
    else:
        root = Path(spec.path or "")
        files = [(str(p.relative_to(root)) if root.is_dir() else p.name, p, spec.source != "parquet")
                 for p in corpus_files(spec)]
    parts = {name: file_sha256(path, text) for name, path, text in files}
    parts.update({f"tokenizer/{p.name}": file_sha256(p) for p in extra_files if p.is_file()})
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json")


def tokenizer_files(model_dir: str | Path) -> list[Path]:
    return [Path(model_dir) / name for name in TOKENIZER_FILES]

