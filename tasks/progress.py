"""Progress a person can follow: counts, rate and ETA. A tqdm bar when stderr is a terminal, else
a compact log line at most every `every_s` seconds (Prefect's log, a CI log, a file)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any


def eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class CountProgress:
    """`progress(n)` after n more items of `total` are done (the LLM layer's Progress callback)."""

    def __init__(self, label: str, total: int, log: logging.Logger | Any | None = None, every_s: float = 10.0,
                 unit: str = "calls"):
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.log = log or logging.getLogger("sip.progress")
        self.done, self.start, self.last = 0, time.monotonic(), 0.0
        self.bar = None
        if total and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, unit=unit.rstrip("s") or "it", leave=False)

    def __call__(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.done >= self.total or now - self.last >= self.every_s:
            self.last = now
            self.log.info(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate else None
        return (f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.2f}/s, elapsed {eta(elapsed)}, "
                f"ETA {eta(left)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def step_line(event: dict, first_step: int) -> str | None:
    """A recipe's JSON event as one compact line: 'pretrain-dpo step 3/30 loss 0.6931, elapsed 41s,
    ETA 6m09s' (every metric stays in metrics.parquet), or the event's name and key facts."""
    recipe = event.get("recipe", "recipe")
    if "event" in event:
        facts = {k: v for k, v in event.items() if k not in ("recipe", "event")}
        return f"{recipe} {event['event']}: " + ", ".join(f"{k} {v}" for k, v in facts.items())
    step, total, elapsed = event.get("step"), event.get("of"), event.get("elapsed_s")
    if step is None:
        return None
    done = step - first_step
    left = elapsed / done * (total - step) if total and elapsed and done > 0 else None
    loss = event.get("loss")
    parts = [f"{recipe} step {step}/{total or '?'}", f"loss {loss:.4g}" if isinstance(loss, float) else None,
             *(f"{k} {event[k]:.4g}" if isinstance(event[k], float) else f"{k} {event[k]}"
               for k in ("reward_mean", "heldout_nll", "skipped_invalid", "skipped_invalid_groups")
               # a mean of 0 is a value worth seeing; a count of 0 skipped is not
               if event.get(k) or (k in ("reward_mean", "heldout_nll") and event.get(k) is not None)),
             f"elapsed {eta(elapsed)}", f"ETA {eta(left)}"]
    return ", ".join(p for p in parts if p)
