"""Property tests of the compute resources' fields (hypothesis): any string in any SlurmCompute
setting that reaches sbatch, ssh or the batch script is either refused before submission with
a SlurmConfigError naming that field, or reaches the script only shell-quoted — and the script
still parses as bash."""

from __future__ import annotations

import re
import shlex
import subprocess

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from resources.slurm import SlurmCompute, SlurmConfigError
from resources.slurm.script import batch_script, sbatch_argv

STRING_FIELDS = ("partition", "account", "qos", "gres", "mem", "time", "venv", "conda_env", "python", "workdir",
                 "log_dir", "ssh_host", "ssh_user", "ssh_key_file", "ssh_known_hosts_file")
SHELL_ACTIVE = [";", "$(", "`", "\n", "&&", "|", ">", "'", '"', " ", " --wrap=id", "../", "%j", "\\", "*", "#", "\x00", "-o"]
SAFE = st.text(alphabet="abcXYZ019_./:-", max_size=12)
VALUES = st.one_of(
    st.text(max_size=40),
    st.builds(lambda a, b, c: a + b + c, SAFE, st.sampled_from(SHELL_ACTIVE), SAFE),
    st.builds(lambda a, b: "/" + a + b, SAFE, st.sampled_from(SHELL_ACTIVE)),  # absolute paths with a sting
)


SCRIPT_FIELDS = {"venv": "/safe0", "conda_env": "safe0", "python": "safe0", "workdir": "/safe0"}
"""Fields written into the batch script, with a value the script surely treats as one word."""


def _words(script: str) -> list[list[str]]:
    """Each line's words and shell operators as a POSIX shell splits them (no expansion)."""
    lines = []
    for line in script.split("\n"):  # bash ends lines at \n only (not at \x85 or \u2028)
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lines.append(list(lexer))
    return lines


def _unquoted_or_double_quoted(line: str, start: int) -> bool:
    """Whether position ``start`` of ``line`` is outside single quotes (where $ and ` expand)."""
    state, i = None, 0
    while i < start:
        char = line[i]
        if state is None and char == "\\":
            i += 2
            continue
        if char == "'" and state in (None, "'"):
            state = None if state == "'" else "'"
        elif char == '"' and state in (None, '"'):
            state = None if state == '"' else '"'
        i += 1
    return state != "'"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(STRING_FIELDS), value=VALUES, env_value=st.one_of(st.none(), VALUES))
# A trailing newline slips past a Python regex anchored with $ (CI found partition="0\n").
@example(field="partition", value="0\n", env_value=None)
@example(field="mem", value="4G\n", env_value=None)
@example(field="time", value="10\n", env_value=None)
@example(field="python", value="python3\n", env_value=None)
@example(field="ssh_host", value="login1\n", env_value=None)
@example(field="account", value="a", env_value="x\n")
@example(field="account", value="a", env_value="x\x85y\u2028z")  # line breaks to Python, not to bash
@example(field="venv", value="/opt/$(id)/`id`", env_value="$HOME")
@example(field="time", value="1", env_value=None)  # shorter than signal_seconds: the error names time too  # a double-quoted value would expand
def test_every_slurm_string_is_refused_naming_its_field_or_reaches_the_script_quoted(
    field: str, value: str, env_value: str | None
) -> None:
    fields: dict[str, object] = {field: value}
    if field.startswith("ssh_") and field != "ssh_host":
        fields["ssh_host"] = "login1.cd3.example.org"
    if env_value is not None:
        fields["env"] = {"EXPERIMENT_TAG": env_value}
    try:
        compute = SlurmCompute(**fields)
        compute.check_settings()
    except SlurmConfigError as error:
        named = [name for name in (field, "env.EXPERIMENT_TAG") if f"SlurmCompute.{name}" in str(error)]
        assert named or (field in ("venv", "conda_env") and "SlurmCompute: set venv or conda_env" in str(error)), str(error)
        return
    assert "\n" not in value and "\x00" not in value
    script = batch_script(_spec(compute))
    parsed = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert parsed.returncode == 0, (parsed.stderr, script)
    # The same script with plain placeholders splits into the same words and operators, each
    # placeholder standing where the value stands: the value added no word, command or operator.
    placeholders = {**fields}
    replaced = field in SCRIPT_FIELDS and value != ""  # empty means unset: nothing to stand in for
    if replaced:
        placeholders[field] = SCRIPT_FIELDS[field]
    if env_value is not None:
        placeholders["env"] = {"EXPERIMENT_TAG": "safe1"}
    plain = batch_script(_spec(SlurmCompute(**placeholders)))
    substitute = {SCRIPT_FIELDS[field]: value} if replaced else {}
    if env_value is not None:
        substitute["safe1"] = env_value
    expected = [[_replace_all(word, substitute) for word in line] for line in _words(plain)]
    assert _words(script) == expected, script
    # Any $ or ` the value brought sits inside single quotes, where nothing expands: each line has
    # exactly as many expanding ones as the plain script's (which has its own, e.g. ${SLURM_JOB_ID}).
    for line, plain_line in zip(script.split("\n"), plain.split("\n"), strict=True):
        assert _expanding(line) == _expanding(plain_line), line
    argv = sbatch_argv(_spec(compute), None)
    assert all("\n" not in arg for arg in argv)
    if compute.ssh_host:  # the login node's shell sees one string: it must split back into argv
        assert shlex.split(shlex.join(argv)) == argv


def _spec(compute: SlurmCompute):  # noqa: ANN202
    return compute.batch_spec("saes", "/tmp/run", [{"DAGSTER_PIPES_CONTEXT": "e30="}], as_array=False)


def _expanding(line: str) -> int:
    """How many $ and ` in ``line`` a shell would expand (those outside single quotes)."""
    return sum(_unquoted_or_double_quoted(line, found.start()) for found in re.finditer(r"[$`]", line))


def _replace_all(word: str, substitute: dict[str, str]) -> str:
    for placeholder, value in substitute.items():
        word = word.replace(placeholder, value)
    return word
