"""Property tests of the config loader (hypothesis): whatever a researcher types, the loader
either accepts it or raises ConfigError naming the field — never another exception, never a
path outside the storage root, never a value that reaches a shell."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import deep_update, tiny_config_dict
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from interp_assets.config import ConfigError, load_config

SECTIONS = tuple(tiny_config_dict())
NASTY_TEXT = st.sampled_from([
    "", " ", "../../etc/passwd", "..", "/", "gpu; rm -rf ~", "$(reboot)", "`id`", "a\nb", "x" * 5000,
    "Qwen/../../x", "ioi'; DROP", "\x00", "é", "-1", "1e309", "nan", "inf",
])
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, -1.0, 0.0, 2**63, -(2**63)]), NASTY_TEXT, st.text(max_size=30),
    st.lists(st.integers(min_value=-5, max_value=100), max_size=5), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def _leaf_paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(data, dict):
        return [p for key, value in data.items() for p in _leaf_paths(value, (*prefix, key))]
    return [prefix]


LEAF_PATHS = _leaf_paths(tiny_config_dict())


def _nest(path: tuple[str, ...], value: Any) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def _load(tmp_path: Path, text: str | bytes) -> Any:
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return load_config(path)


def _assert_clear(error: ConfigError, path: tuple[str, ...] | None = None) -> None:
    message = str(error)
    assert message.strip()
    if path is not None:
        # The field is named: the edited key or its section (cross-field checks name both).
        assert path[0] in message, message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(LEAF_PATHS), value=LEAVES)
@example(path=("storage", "root"), value="\x00")  # the OS's "embedded null byte", before it was named
def test_any_single_bad_value_is_accepted_or_named(tmp_path: Path, path: tuple[str, ...], value: Any) -> None:
    data = deep_update(tiny_config_dict(), {"storage": {"root": str(tmp_path / "storage")}})
    data = deep_update(data, _nest(path, value))
    try:
        config = _load(tmp_path, yaml.safe_dump(data, sort_keys=False))
    except ConfigError as error:
        _assert_clear(error, path)
        return
    # Accepted: then every number is finite and every name that becomes a path is path-safe.
    dumped = config.model_dump(mode="json")
    floats = [v for section in dumped.values() if isinstance(section, dict) for v in section.values() if isinstance(v, float)]
    assert all(math.isfinite(v) for v in floats)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?", config.model.name)
    assert ".." not in config.experiment.name.split("/")
    assert config.activations.hook_point in {"mlp_post", "mlp_out", "resid_post"}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_file_contents_raise_config_error(tmp_path: Path, content: bytes | str) -> None:
    try:
        _load(tmp_path, content)
    except ConfigError as error:
        _assert_clear(error)
    else:  # only a complete, valid config could load; random text never is one
        pytest.fail(f"accepted {content!r}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(SECTIONS), key=st.text(min_size=1, max_size=12).filter(lambda k: k.strip()))
def test_unknown_keys_are_named(tmp_path: Path, section: str, key: str) -> None:
    data = tiny_config_dict()
    # sae_variants' keys are names the researcher chooses, not fields: its fields are the
    # variants' own (next test).
    if section == "sae_variants" or not isinstance(data[section], dict) or key in data[section]:
        return
    data["storage"]["root"] = str(tmp_path / "storage")
    data[section][key] = 1
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, yaml.safe_dump(data, sort_keys=False))
    assert section in str(raised.value) and "unknown key" in str(raised.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=12).filter(lambda k: k.strip()))
def test_a_variants_unknown_keys_are_named(tmp_path: Path, key: str) -> None:
    data = tiny_config_dict()
    if key in data["sae"]:
        return
    data["storage"]["root"] = str(tmp_path / "storage")
    data["sae_variants"] = {"wide": {"expansion_factor": 8, key: 1}}
    with pytest.raises(ConfigError) as raised:
        _load(tmp_path, yaml.safe_dump(data, sort_keys=False))
    assert f"sae_variants.wide.{key}: unknown key" in str(raised.value)
