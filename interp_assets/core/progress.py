"""Progress lines for long steps: "step N/M (P %), ETA mm:ss", rate-limited.

A researcher watching a capture, an SAE training, an attribution or an intervention run in the
Dagster run log wants to know how far it is and when it ends, not only "step N/M". The ETA is
measured from the work done in THIS process (a resumed run does not count the steps its
checkpoint already held as if they had taken no time), so it is plausible from the first line.
Logging only; what a step computes never depends on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def format_duration(seconds: float) -> str:
    """mm:ss, or h:mm:ss past an hour."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Reports ``done`` out of ``total`` units through ``log``, at most once every ``every_s``
    seconds (the last unit, and any ``force=True`` update, always), as
    ``"<label>: step N/M (P %), ETA mm:ss <detail>"``.

    ``start`` is the count already done when this process began (a resume): the rate, and so the
    ETA, come from the units done since. ``unit`` names what is counted ("step", "batch", ...).
    """

    def __init__(
        self,
        total: int,
        log: Callable[[str], None],
        *,
        label: str = "",
        unit: str = "step",
        every_s: float = 10.0,
        start: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if total < 0:
            raise ValueError(f"total must be ≥ 0, got {total}")
        self.total, self.log, self.label, self.unit, self.every_s = total, log, label, unit, every_s
        self.start, self.clock = start, clock
        self.started = clock()
        self.last_logged: float | None = None

    def line(self, done: int, detail: str = "") -> str:
        """The progress line for ``done`` units, now."""
        percent = 100.0 * done / self.total if self.total else 100.0
        elapsed = self.clock() - self.started
        since_start = done - self.start
        if done >= self.total:
            eta = "00:00"
        elif since_start > 0 and elapsed > 0:
            eta = format_duration((self.total - done) * elapsed / since_start)
        else:
            eta = "--:--"  # nothing done yet in this process: no rate to extrapolate
        prefix = f"{self.label}: " if self.label else ""
        suffix = f" {detail}" if detail else ""
        return f"{prefix}{self.unit} {done}/{self.total} ({percent:.0f} %), ETA {eta}{suffix}"

    def update(self, done: int, detail: str = "", *, force: bool = False) -> bool:
        """Log the line if it is due; says whether it was logged."""
        now = self.clock()
        due = (force or done >= self.total or self.last_logged is None
               or now - self.last_logged >= self.every_s)
        if due:
            self.last_logged = now
            self.log(self.line(done, detail))
        return due

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """Yield ``items``, counting one unit done each time the consumer comes back for the next
        (so the unit's work, the loop body, is inside its time) — a loop reports itself without
        a line of its own: ``for batch in progress.track(batches): ...``."""
        done = self.start
        for item in items:
            yield item
            done += 1
            self.update(done)


def tracked(items: Iterable[T], progress: Progress | None) -> Iterable[T]:
    """``items`` reported through ``progress``, or untouched when there is none."""
    return items if progress is None else progress.track(items)
