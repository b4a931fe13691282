"""A SLURM profile file is read the way the experiment config is: hypothesis writes profiles with
a null, a value of the wrong kind, or a one-letter typo of a key, at every field of the top level
and of ``overrides.<task>``; each is a SlurmConfigError naming the file and the field as written
(a typo also the key it meant), in our words — never pydantic's — and nothing can be submitted
because no SlurmCompute exists. The README's field list is made from the model itself."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import yaml
from helpers import PROJECT_ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources.backend import load_slurm_profile
from resources.slurm import SlurmCompute, SlurmConfigError
from resources.slurm.profile import field_reference
from resources.slurm.settings import JOB_FIELDS

TOP = sorted(SlurmCompute.model_fields)
WRONG_KIND = {str: 12345, int: "many", float: "fast"}
PYDANTIC_WORDS = ("pydantic", "Input should", "validation error", "type=", "For further information")


def _wrong_value(field: str, top_level: bool) -> object:
    annotation = (SlurmCompute.model_fields[field].annotation if top_level
                  else {"cpus": int, "array_parallelism": int}.get(field, str))
    return WRONG_KIND.get(annotation, 12345)  # lists, mappings, choices: a number is never one


def _load(tmp: Path, profile: dict) -> str:
    path = tmp / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    with pytest.raises(SlurmConfigError) as caught:
        load_slurm_profile(path)
    message = str(caught.value)
    assert str(path) in message, message
    assert not any(word in message for word in PYDANTIC_WORDS), message
    return message


def _typo(key: str, kind: str, at: int, letter: str) -> str:
    at %= len(key)
    if kind == "drop":
        return key[:at] + key[at + 1:]
    if kind == "swap" and at + 1 < len(key):
        return key[:at] + key[at + 1] + key[at] + key[at + 2:]
    if kind == "insert":
        return key[:at] + letter + key[at:]
    return key[:at] + letter + key[at + 1:]  # replace


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=st.sampled_from(["top", "override"]), data=st.data(),
       fault=st.sampled_from(["null", "wrong kind", "typo"]),
       kind=st.sampled_from(["drop", "swap", "insert", "replace"]), at=st.integers(0, 30),
       letter=st.sampled_from("abcdefghijklmnopqrstuvwxyz_"))
def test_every_field_null_wrong_kind_or_typo_is_refused_naming_it(
    tmp_path: Path, where: str, data: st.DataObject, fault: str, kind: str, at: int, letter: str,
) -> None:
    top_level = where == "top"
    field = data.draw(st.sampled_from(TOP if top_level else list(JOB_FIELDS)))
    valid = TOP if top_level else list(JOB_FIELDS)
    written = f"SlurmCompute.{field}" if top_level else f"SlurmCompute.overrides.saes.{field}"
    key = field
    value: object = {"null": None, "wrong kind": _wrong_value(field, top_level)}.get(fault, "x")
    if fault == "typo":
        key = _typo(field, kind, at, letter)
        # A typo is only a typo of `field` when `field` is the one nearest key.
        ratios = sorted((difflib.SequenceMatcher(None, key, f).ratio(), f) for f in valid)
        if key in valid or ratios[-1][1] != field or ratios[-1][0] == ratios[-2][0] or ratios[-1][0] < 0.6:
            return
        written = written.rsplit(".", 1)[0] + f".{key}"
    profile = {key: value} if top_level else {"overrides": {"saes": {key: value}}}
    message = _load(tmp_path, profile)
    assert f"{written}:" in message, (profile, message)
    if fault == "typo":
        assert f"did you mean `{field}`?" in message, message
    elif fault == "null":
        assert "None is not allowed" in message and "remove the key" in message, message


@pytest.mark.parametrize(("profile", "named"), [
    ({"partiton": "ampere"}, "SlurmCompute.partiton: unknown key (did you mean `partition`?"),
    ({"overrides": {"saes": {"memory": "48G"}}}, "SlurmCompute.overrides.saes.memory: unknown key"),
    ({"account": None}, "SlurmCompute.account: None is not allowed; expected a string"),
    ({"cpus": "many"}, "SlurmCompute.cpus: 'many' is not allowed; expected a whole number"),
    ({"cpus": True}, "SlurmCompute.cpus: True is not allowed; expected a whole number"),
    # A bad top-level value is named where it was written, whatever overrides exist.
    ({"gres": "gpu:1;rm", "overrides": {"activations": {"mem": "8G"}}}, "SlurmCompute.gres: 'gpu:1;rm' is not allowed"),
    ({"overrides": {"saes": {"gres": "gpu:1;rm"}}}, "SlurmCompute.overrides.saes.gres: 'gpu:1;rm' is not allowed"),
    # SLURM's first time-limit check could send USR1 before the job has started: both fields named.
    ({"time": "2"}, "SlurmCompute.time='2' (120 s) is too short for SlurmCompute.signal_seconds=90"),
    ({"signal_seconds": 300, "overrides": {"saes": {"time": "5"}}},
     "SlurmCompute.overrides.saes.time='5' (300 s) is too short for SlurmCompute.signal_seconds=300"),
])
def test_the_issue_s_cases_name_the_field_as_written(tmp_path: Path, profile: dict, named: str) -> None:
    assert named in _load(tmp_path, profile)


def test_the_shipped_cd3_profile_loads() -> None:
    compute = load_slurm_profile(PROJECT_ROOT / "configs" / "slurm-cd3.yaml")
    assert compute.partition == "ampere" and compute.job_settings("activations")["mem"] == "96G"


def test_readme_lists_every_profile_field_as_the_model_defines_it() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = re.search(r"### Writing a SLURM profile\n(.*?)\n(?=#)", readme, re.S)
    assert section, "README has no 'Writing a SLURM profile' section"
    listed = [line for line in section.group(1).splitlines() if line.startswith("- `")]
    assert listed == field_reference(), "README's field list drifted: paste field_reference() from resources/slurm/profile.py"
