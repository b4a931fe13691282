"""A SLURM profile file (YAML: SlurmCompute's fields, ``overrides.<task>`` per worker task) read
the way the experiment config is: an unknown key, a null or a value of the wrong kind fails at
load, before anything is submitted, naming the file, the field as written and the fix (with the
nearest valid key for a typo) — never in pydantic's words. ``field_reference()`` lists every
field with its default; the README's "Writing a SLURM profile" section is made from it."""

from __future__ import annotations

import ast
import difflib
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from resources.slurm.resource import SlurmCompute
from resources.slurm.settings import JOB_FIELDS, SlurmConfigError, SlurmJobSettings

_KINDS = {str: "a string", int: "a whole number", float: "a number"}


def _kind(annotation: Any) -> str:
    """How a field's type reads to a researcher."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return "a list of strings"
    if origin is dict and args and args[1] is SlurmJobSettings:
        return "a mapping of worker task names (activations, saes, ...) to job settings"
    if origin is dict:
        return "a mapping of names to strings"
    if origin in (typing.Union, types.UnionType):
        return _kind(next(a for a in args if a is not type(None)))
    return _KINDS.get(annotation, str(annotation))


def _fits(value: Any, annotation: Any) -> bool:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    if origin is dict and args and args[1] is SlurmJobSettings:
        return isinstance(value, dict)  # its entries are checked one by one
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    if origin in (typing.Union, types.UnionType):
        return value is None or any(_fits(value, a) for a in args if a is not type(None))
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _unknown(key: Any, known: typing.Iterable[str], where: str) -> SlurmConfigError:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {', '.join(sorted(known))}"
    return SlurmConfigError(f"{where}{key}: unknown key ({hint}; every field: README 'Writing a SLURM profile')")


def check_profile_values(data: dict[str, Any], source: str) -> None:
    """Unknown keys, nulls and wrong kinds, each named as written in ``source``."""
    fields = SlurmCompute.model_fields
    for key, value in data.items():
        if key not in fields:
            raise _unknown(key, fields, f"SLURM profile {source}: SlurmCompute.")
        field = fields[key]
        if value is None:
            raise SlurmConfigError(
                f"SLURM profile {source}: SlurmCompute.{key}: None is not allowed; expected {_kind(field.annotation)}. "
                f"To leave it unset, remove the key (default: {field.default!r})")
        if not _fits(value, field.annotation):
            raise SlurmConfigError(f"SLURM profile {source}: SlurmCompute.{key}: {value!r} is not allowed; "
                                   f"expected {_kind(field.annotation)}")
    job_fields = SlurmJobSettings.model_fields
    for task, override in (data.get("overrides") or {}).items():
        where = f"SLURM profile {source}: SlurmCompute.overrides.{task}"
        if not isinstance(override, dict):
            raise SlurmConfigError(f"{where}: {override!r} is not allowed; expected a mapping of job settings "
                                   f"({', '.join(JOB_FIELDS)})")
        for key, value in override.items():
            if key not in job_fields:
                raise _unknown(key, job_fields, f"{where}.")
            if value is None:
                raise SlurmConfigError(f"{where}.{key}: None is not allowed; expected {_kind(job_fields[key].annotation)}. "
                                       f"To keep the top-level SlurmCompute.{key} for this task, remove the key")
            if not _fits(value, job_fields[key].annotation):
                raise SlurmConfigError(f"{where}.{key}: {value!r} is not allowed; expected "
                                       f"{_kind(job_fields[key].annotation)}")


def load_profile(path: Path) -> SlurmCompute:
    """A SlurmCompute from a profile file, checked before anything can be submitted."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise SlurmConfigError(f"cannot read the SLURM profile {path}: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SlurmConfigError(f"SLURM profile {path}: not valid YAML text: {error}") from None
    if not isinstance(data, dict):
        raise SlurmConfigError(f"SLURM profile {path}: expected a mapping of SlurmCompute settings")
    check_profile_values(data, str(path))
    try:
        compute = SlurmCompute(**data)
        compute.check_settings()
    except SlurmConfigError as error:
        raise SlurmConfigError(f"SLURM profile {path}: {error}") from None
    except Exception as error:  # noqa: BLE001 - whatever else the model refuses: our words, not its
        raise SlurmConfigError(f"SLURM profile {path}: not a valid profile ({type(error).__name__}); "
                               "check each value against README 'Writing a SLURM profile'") from None
    return compute


def _attribute_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of ``cls`` (pydantic drops them), first sentence, one line."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def field_reference() -> list[str]:
    """One line per profile field, from the model itself: name, kind, default, what it does."""
    docs = _attribute_docs(SlurmCompute)
    machine_dependent = {"workdir": "this checkout", "log_dir": "<checkout>/dagster_home/slurm"}
    lines = []
    for name, field in SlurmCompute.model_fields.items():
        default = machine_dependent.get(name, repr(field.default))
        doc = docs.get(name, "")
        lines.append(f"- `{name}` ({_kind(field.annotation)}; default `{default}`){': ' + doc if doc else ''}")
    return lines
