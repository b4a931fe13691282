"""The squeue / sacct / scontrol parsers, pinned on literal output of a real SLURM 22.05 cluster
(scripts/slurm-local.sh). tests/data/slurm/README.md says how each file was made. No cluster needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from resources.slurm.status import parse_sacct, parse_scontrol_exit_codes, parse_squeue

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


def states(rows: dict) -> dict:
    return {key: row["state"] for key, row in rows.items()}


def test_plain_jobs_sacct_first_state_word_and_batch_max_rss():
    rows = parse_sacct(read("sacct_plain_completed_failed_cancelled.txt"))
    ended = {"elapsed": "00:00:05", "node": "vm", "gpu": ""}
    assert rows == {
        ("1", None): {**ended, "state": "COMPLETED", "exit_code": "0:0", "max_rss": "3128K"},
        ("2", None): {**ended, "state": "FAILED", "exit_code": "3:0", "max_rss": "3144K"},
        # "CANCELLED by 0"; the allocation row says 0:0 (only the .batch row has 0:15)
        ("3", None): {**ended, "elapsed": "00:00:04", "state": "CANCELLED", "exit_code": "0:0", "max_rss": "3224K"},
    }


def test_plain_jobs_squeue():
    running = parse_squeue(read("squeue_plain_running.txt"))
    assert running[("1", None)] == {"state": "RUNNING", "node": "vm", "elapsed": "0:04", "gpu": "", "reason": "None"}
    assert states(running) == {("1", None): "RUNNING", ("2", None): "RUNNING", ("3", None): "RUNNING"}
    ended = parse_squeue(read("squeue_plain_completed_failed_cancelled.txt"))
    assert states(ended) == {("1", None): "COMPLETED", ("2", None): "FAILED", ("3", None): "CANCELLED"}
    assert ended[("2", None)]["reason"] == "NonZeroExitCode"


@pytest.mark.parametrize(("name", "key", "code"), [
    ("scontrol_plain_completed.txt", ("1", None), "0:0"),
    ("scontrol_plain_failed.txt", ("2", None), "3:0"),
    ("scontrol_plain_cancelled.txt", ("3", None), "0:15"),
    ("scontrol_requeuehold.txt", ("8", None), "0:0"),
    ("scontrol_requeue_then_hold.txt", ("9", None), "0:0"),
])
def test_plain_jobs_scontrol_exit_code(name, key, code):
    assert parse_scontrol_exit_codes(read(name)) == {key: code}


def test_array_pending_range():
    """`4|2-3%2|PENDING` (squeue) and `4_[2-3%2]` (sacct): tasks 2 and 3 wait behind the %2 throttle."""
    squeue = parse_squeue(read("squeue_array_pending_range.txt"))
    assert states(squeue) == {("4", "pending-array"): "PENDING", ("4", "0"): "RUNNING", ("4", "1"): "RUNNING"}
    assert squeue[("4", "pending-array")] == {"state": "PENDING", "node": "", "elapsed": "0:00", "gpu": "",
                                             "reason": "JobArrayTaskLimit"}
    sacct = parse_sacct(read("sacct_array_pending_range.txt"))
    assert states(sacct) == {("4", "pending-array"): "PENDING", ("4", "0"): "RUNNING", ("4", "1"): "RUNNING"}
    assert sacct[("4", "pending-array")]["node"] == ""  # "None assigned"
    assert "max_rss" not in sacct[("4", "0")]  # the running .batch row has no MaxRSS yet
    codes = parse_scontrol_exit_codes(read("scontrol_array_pending_range.txt"))
    assert codes[("4", "0")] == codes[("4", "1")] == "0:0"
    assert set(codes) == {("4", "0"), ("4", "1"), ("4", "pending-array")}  # never "2-3%2" as an index


def test_array_completed_and_task_1_failed():
    expected = {("4", "0"): "COMPLETED", ("4", "1"): "FAILED", ("4", "2"): "COMPLETED", ("4", "3"): "COMPLETED"}
    sacct = parse_sacct(read("sacct_array_completed_and_failed.txt"))
    assert states(sacct) == expected
    assert {key: row["exit_code"] for key, row in sacct.items()} == {
        ("4", "0"): "0:0", ("4", "1"): "1:0", ("4", "2"): "0:0", ("4", "3"): "0:0"}
    # task 3 ran as job 4 itself (rows `4|4_3` and `4.batch|4_3.batch`)
    assert {key: row["max_rss"] for key, row in sacct.items()} == {
        ("4", "0"): "3232K", ("4", "1"): "3164K", ("4", "2"): "3336K", ("4", "3"): "3028K"}
    squeue = parse_squeue(read("squeue_array_completed_and_failed.txt"))
    assert states(squeue) == expected
    assert squeue[("4", "1")]["reason"] == "NonZeroExitCode"
    assert parse_scontrol_exit_codes(read("scontrol_array_completed_and_failed.txt")) == {
        ("4", "0"): "0:0", ("4", "1"): "1:0", ("4", "2"): "0:0", ("4", "3"): "0:0"}


def test_requeued_and_held():
    squeue = parse_squeue(read("squeue_held_requeued.txt"))
    assert states(squeue) == {("8", None): "PENDING", ("9", None): "PENDING"}
    assert squeue[("8", None)]["reason"] == "job requeued in held state"  # scontrol requeuehold
    assert squeue[("9", None)]["reason"] == "JobHeldAdmin"  # scontrol requeue, then hold
    assert all("held" in row["reason"].lower() and row["node"] == "" for row in squeue.values())
    sacct = parse_sacct(read("sacct_held_requeued.txt"))  # sacct: just PENDING, no reason column
    assert sacct == {key: {"state": "PENDING", "exit_code": "0:0", "elapsed": "00:00:00", "node": "", "gpu": ""}
                     for key in [("8", None), ("9", None)]}


@pytest.mark.parametrize(("suffix", "state"), [("pending", "PENDING"), ("cancelled", "CANCELLED")])
def test_hetjob_squeue_and_scontrol_key_each_component_by_its_job_id(suffix, state):
    """Het job 10 = components 10+0 (job 10) and 10+1 (job 11); squeue's %F prints 10 and 11."""
    squeue = parse_squeue(read(f"squeue_hetjob_{suffix}.txt"))
    assert states(squeue) == {("10", None): state, ("11", None): state}
    assert squeue[("11", None)]["reason"] == "Resources"
    assert parse_scontrol_exit_codes(read(f"scontrol_hetjob_{suffix}.txt")) == {("10", None): "0:0", ("11", None): "0:0"}


@pytest.mark.parametrize(("suffix", "state"), [("pending", "PENDING"), ("cancelled", "CANCELLED")])
def test_hetjob_sacct_keys_components_like_squeue(suffix, state):
    rows = parse_sacct(read(f"sacct_hetjob_{suffix}.txt"))
    assert rows == {key: {"state": state, "exit_code": "0:0", "elapsed": "00:00:00", "node": "", "gpu": ""}
                    for key in [("10", None), ("11", None)]}


def test_without_accounting_sacct_and_unknown_squeue_id_fail_with_known_text():
    # The poller's fallback to squeue and its "aged out" case match these texts.
    assert read("sacct_no_accounting_stderr.txt") == "Slurm accounting storage is disabled\n"
    assert read("sacct_no_accounting_rc.txt").strip() == "1"
    assert "Invalid job id" in read("squeue_unknown_id_stderr.txt")
    assert read("squeue_unknown_id_rc.txt").strip() == "1"
