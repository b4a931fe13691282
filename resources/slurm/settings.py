"""SLURM settings, checked before anything reaches sbatch, ssh or a shell: pure functions of the
profile's values (a plain mapping of SlurmCompute's fields), raising ``SlurmConfigError`` that
names the field and the fix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import dagster as dg

from interp_assets.core.resource_model import DEVICES
from resources.compute import secret_names_in

# Values SLURM accepts and a shell cannot misread. Partitions/accounts/QOS: SLURM names.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_NAME_LIST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}(,[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})*\Z")
_GRES = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2}(,[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+){0,2})*\Z")
_MEM = re.compile(r"^[1-9][0-9]{0,9}[KMGT]?\Z")
_TIME = re.compile(r"^(?:(\d{1,3})-)?(\d{1,5})(?::(\d{1,2}))?(?::(\d{1,2}))?\Z")
_MODULE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+/-]{0,127}\Z")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
_HOST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\Z")
_USER = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\Z")
_COMMAND = re.compile(r"^[A-Za-z0-9_./+-]{1,4096}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # C0, DEL, C1 and Unicode line breaks
TASK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
AUTO = "auto"
"""``time: auto`` / ``mem: auto``: sized from the resource plan (interp_assets.plan) × auto_safety_factor."""

SIGNAL_MARGIN_SECONDS = 90
"""A time limit must exceed signal_seconds by this much (see check_settings)."""

JOB_FIELDS = ("partition", "account", "qos", "gres", "cpus", "mem", "time", "array_parallelism")
"""The settings of one job, which ``overrides.<task>`` may change per worker task."""


class SlurmConfigError(ValueError):
    """An invalid SlurmCompute setting; the message names the field and the fix."""


class SlurmJobSettings(dg.Config):
    """Per-task overrides of SlurmCompute's job settings (unset fields keep the defaults)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gres: str | None = None
    cpus: int | None = None
    mem: str | None = None
    time: str | None = None
    array_parallelism: int | None = None


def time_limit_seconds(value: str) -> int:
    """SLURM's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    match = _TIME.match(value)
    if not match:
        raise ValueError(value)
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H[:M[:S]]
        h, m, s = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def _override_values(override: Any) -> dict[str, Any]:
    if override is None:
        return {}
    return dict(override) if isinstance(override, Mapping) else override.model_dump()


def job_settings(settings: Mapping[str, Any], task: str) -> dict[str, Any]:
    """One task's job settings: the defaults, with that task's overrides applied."""
    job = {name: settings[name] for name in JOB_FIELDS}
    override = _override_values((settings.get("overrides") or {}).get(task))
    job.update({k: v for k, v in override.items() if v is not None})
    return job


def check_settings(settings: Mapping[str, Any]) -> None:
    """Check every setting that reaches sbatch or a shell; raise SlurmConfigError naming it."""
    # The top-level values first, then each override's own: an error names the field where the
    # value was written (a bad top-level gres is SlurmCompute.gres, whatever overrides exist).
    _check_job(job_settings(settings, ""), "")
    overrides = settings.get("overrides") or {}
    for task, override in overrides.items():
        if not TASK_NAME.match(task):
            raise SlurmConfigError(f"SlurmCompute.overrides: {task!r} is not a worker task name (e.g. activations, saes)")
        _check_job({k: v for k, v in _override_values(override).items() if v is not None}, f"overrides.{task}.")
    for i, module in enumerate(settings["module_loads"]):
        _check(_MODULE.match(module), f"module_loads[{i}]", module,
               "a module name such as CUDA/12.1.1 (letters, digits, _ . + / -)")
    venv, conda_env, python = settings["venv"], settings["conda_env"], settings["python"]
    if venv:
        _check_path(venv, "venv")
    if conda_env and not conda_env.startswith("/"):
        _check(_NAME.match(conda_env), "conda_env", conda_env, "an environment name or an absolute path")
    elif conda_env:
        _check_path(conda_env, "conda_env")
    if venv and conda_env:
        raise SlurmConfigError("SlurmCompute: set venv or conda_env, not both")
    if python:
        _check(_COMMAND.match(python), "python", python, "an interpreter path or name, e.g. python3.11")
    _check_path(settings["workdir"], "workdir")
    _check_path(settings["log_dir"], "log_dir")
    _check("%" not in settings["log_dir"], "log_dir", settings["log_dir"], "a path without '%' (sbatch expands it)")
    env = settings["env"]
    secrets = secret_names_in(env, "SlurmCompute.env")
    if secrets:
        raise SlurmConfigError(secrets)
    for key, value in env.items():
        _check(_ENV_KEY.match(key), "env", key, "environment variable names: letters, digits, _")
        _check(not _CONTROL.search(value), f"env.{key}", value, "a value without control characters")
    for task in settings["array_tasks"]:
        _check(TASK_NAME.match(task), "array_tasks", task, "worker task names, e.g. saes")
    signal_seconds = settings["signal_seconds"]
    _check(signal_seconds >= 0, "signal_seconds", signal_seconds, "a number of seconds ≥ 0")
    factor = settings.get("auto_safety_factor", 1.5)
    _check(isinstance(factor, (int, float)) and factor >= 1, "auto_safety_factor", factor,
           "a number ≥ 1 (the plan's time and memory are multiplied by it; 1 means no margin)")
    auto_device = settings.get("auto_device", "a100-80gb")
    _check(auto_device in DEVICES, "auto_device", auto_device, f"one of {', '.join(DEVICES)}")
    # An auto time is sized when a job is rendered, at least signal_seconds + the margin below.
    explicit = [(time_limit_seconds(job_settings(settings, t)["time"]), t) for t in ["", *overrides]
                if job_settings(settings, t)["time"] != AUTO]
    if not explicit:
        explicit = [(SIGNAL_MARGIN_SECONDS + signal_seconds, "")]
    shortest, task = min(explicit)
    limit_field = f"SlurmCompute.overrides.{task}.time" if task else "SlurmCompute.time"
    if signal_seconds and shortest < signal_seconds + SIGNAL_MARGIN_SECONDS:
        # SLURM checks limits every 30 s, the first check at any moment of the job's first 30 s,
        # and sends USR1 at the first check with fewer than signal_seconds + 30 s left: with this
        # margin the earliest USR1 comes a minute into the job, long after the worker's handler
        # is in place. A shorter limit could deliver it before the batch shell has even started.
        raise SlurmConfigError(
            f"{limit_field}={job_settings(settings, task)['time']!r} ({shortest} s) is too short for "
            f"SlurmCompute.signal_seconds={signal_seconds}: SLURM may send its USR1 warning at its first "
            f"time-limit check, before the worker can catch it. Give {limit_field} at least "
            f"signal_seconds + {SIGNAL_MARGIN_SECONDS} s ({signal_seconds + SIGNAL_MARGIN_SECONDS} s), or lower "
            "signal_seconds (0: no warning)")
    _check(0 <= settings["max_resubmits"] <= 100, "max_resubmits", settings["max_resubmits"], "0 to 100")
    _check(0.05 <= settings["poll_seconds"] <= settings["max_poll_seconds"], "poll_seconds", settings["poll_seconds"],
           "between 0.05 and max_poll_seconds")
    grace = settings["controller_grace_seconds"]
    _check(0 <= grace <= 7 * 86400, "controller_grace_seconds", grace,
           "0 to 604800 seconds (how long an unreachable controller is waited for)")
    if settings["ssh_host"]:
        _check(_HOST.match(settings["ssh_host"]), "ssh_host", settings["ssh_host"],
               "a host name or address, e.g. login1.cd3.example.org")
        if settings["ssh_user"]:
            _check(_USER.match(settings["ssh_user"]), "ssh_user", settings["ssh_user"], "a login name")
        _check(1 <= settings["ssh_port"] <= 65535, "ssh_port", settings["ssh_port"], "a TCP port")
        for name in ("ssh_key_file", "ssh_known_hosts_file"):
            if settings[name]:
                _check_path(settings[name], name)


def _check_job(job: dict[str, Any], prefix: str) -> None:
    """The job settings present in ``job`` (all of them at the top level; an override's own)."""
    rules = {
        "partition": (lambda v: not v or _NAME_LIST.match(v), "a partition name (or comma-separated names), e.g. gpu_a100"),
        "account": (lambda v: not v or _NAME.match(v), "an account name, e.g. rse-interp"),
        "qos": (lambda v: not v or _NAME.match(v), "a QOS name, e.g. normal"),
        "gres": (lambda v: not v or _GRES.match(v), "name[:type]:count, e.g. gpu:1 or gpu:a100:1"),
        "cpus": (lambda v: isinstance(v, int) and 1 <= v <= 4096, "1 to 4096"),
        "mem": (lambda v: isinstance(v, str) and (v == AUTO or _MEM.match(v)),
                "a size with an optional unit K, M, G or T, e.g. 16G, or auto (from the resource plan)"),
        "array_parallelism": (lambda v: isinstance(v, int) and 0 <= v <= 10000, "0 (no limit) to 10000"),
    }
    for name, (ok, expected) in rules.items():
        if name in job:
            _check(ok(job[name]), f"{prefix}{name}", job[name], expected)
    if "time" in job and job["time"] != AUTO:
        try:
            seconds = time_limit_seconds(job["time"])
        except (TypeError, ValueError):
            raise SlurmConfigError(
                f"SlurmCompute.{prefix}time: {job['time']!r} is not a SLURM time limit; use M, H:M:S or D-H:M:S, e.g. 2:00:00, or auto (from the resource plan)"
            ) from None
        _check(seconds >= 60, f"{prefix}time", job["time"], "at least one minute (SLURM limits are whole minutes)")


def _check(ok: Any, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise SlurmConfigError(f"SlurmCompute.{name}: {value!r} is not allowed; expected {expected}")


def _check_path(value: str, name: str) -> None:
    _check(value.startswith("/") and not _CONTROL.search(value), name, value,
           "an absolute path without control characters")
