"""Progress lines on long steps: "step N/M (P %), ETA mm:ss", rate-limited, with an ETA that is
plausible from the work done in this process. The clock is a counter the test advances (no
timing is asserted); the SAE trainer's real log lines are checked for the same structure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from interp_assets.config import SaeSection
from interp_assets.core.progress import Progress, format_duration
from interp_assets.core.sae_data import ShardedActivations, ShuffledBatches
from interp_assets.core.sae_training import train_sae

LINE = re.compile(r"(?P<unit>\w+) (?P<done>\d+)/(?P<total>\d+) \((?P<percent>\d+) %\), ETA (?P<eta>\d+:\d\d(?::\d\d)?|--:--)")


def parse(line: str) -> dict[str, str]:
    match = LINE.search(line)
    assert match, f"no 'N/M (P %), ETA mm:ss' in {line!r}"
    return match.groupdict()


def seconds(eta: str) -> int:
    parts = [int(p) for p in eta.split(":")]
    return sum(value * 60 ** power for power, value in enumerate(reversed(parts)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_line_carries_percentage_and_an_eta_from_the_rate_so_far() -> None:
    clock, lines = Clock(), []
    progress = Progress(400, lines.append, label="capture", unit="batch", every_s=0, clock=clock)
    clock.now += 50
    progress.update(100, "12 tokens/s")
    assert lines == ["capture: batch 100/400 (25 %), ETA 02:30 12 tokens/s"]  # 300 more at 2 per second
    clock.now += 150
    progress.update(400)
    assert lines[-1] == "capture: batch 400/400 (100 %), ETA 00:00"


def test_lines_are_rate_limited_but_the_last_always_comes() -> None:
    clock, lines = Clock(), []
    progress = Progress(100, lines.append, every_s=10, clock=clock)
    for done in range(1, 101):
        clock.now += 1
        progress.update(done)
    logged = [int(parse(line)["done"]) for line in lines]
    assert logged[0] == 1 and logged[-1] == 100  # the first unit shows it started, the last that it ended
    assert len(logged) == 11  # one line per 10 s, not one per unit
    percents = [int(parse(line)["percent"]) for line in lines]
    etas = [seconds(parse(line)["eta"]) for line in lines]
    assert percents == sorted(percents) and etas == sorted(etas, reverse=True)  # steady work: ETA falls
    assert etas[-1] == 0


def test_a_resumed_run_measures_its_rate_from_what_it_did_itself() -> None:
    clock, lines = Clock(), []
    progress = Progress(1000, lines.append, start=900, every_s=0, clock=clock)
    progress.update(900)
    assert parse(lines[0])["eta"] == "--:--"  # nothing done here yet: no rate to extrapolate
    clock.now += 10
    progress.update(950)  # 50 units in 10 s, 50 to go
    assert parse(lines[1]) == {"unit": "step", "done": "950", "total": "1000", "percent": "95", "eta": "00:10"}


def test_track_counts_each_item_once_its_work_is_done() -> None:
    clock, lines = Clock(), []
    progress = Progress(3, lines.append, label="attribution: nodes", unit="batch", every_s=0, clock=clock)
    seen = []
    for item in progress.track(["a", "b", "c"]):
        assert len(lines) == len(seen)  # the line for an item comes after its loop body
        clock.now += 2
        seen.append(item)
    assert seen == ["a", "b", "c"]
    assert [parse(line)["done"] for line in lines] == ["1", "2", "3"]
    assert lines[0] == "attribution: nodes: batch 1/3 (33 %), ETA 00:04"


def test_durations_read_as_minutes_and_hours() -> None:
    assert format_duration(0) == "00:00" and format_duration(61.4) == "01:01"
    assert format_duration(3 * 3600 + 5) == "3:00:05"
    with pytest.raises(ValueError, match="total"):
        Progress(-1, print)


def test_sae_training_logs_percentage_and_eta_at_every_log_interval(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    data = (torch.randn(3000, 16, generator=generator)).to(torch.bfloat16)
    save_file({"activations": data}, tmp_path / "corpus-00000.safetensors")
    activations = ShardedActivations([tmp_path / "corpus-00000.safetensors"], held_out=200)
    config = SaeSection(batch_size=64, steps=100, lr_warmup_steps=10, lr_decay_steps=20, l1_warmup_steps=10,
                        checkpoint_every=1000, log_every=20, expansion_factor=2).trainer_config()
    lines: list[str] = []
    result = train_sae(ShuffledBatches(activations, 64, seed=0), config, data_fingerprint="d", log=lines.append)
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == len(result.history) == 5  # one line per curve point, none dropped by the rate limit
    parsed = [parse(line) for line in steps]
    assert [p["done"] for p in parsed] == ["20", "40", "60", "80", "100"]
    assert [p["percent"] for p in parsed] == ["20", "40", "60", "80", "100"]
    assert all(p["eta"] != "--:--" for p in parsed) and parsed[-1]["eta"] == "00:00"
    assert all(" loss " in line and " R² " in line and " L0 " in line for line in steps)  # the figures stay
