"""Live progress of OpenUnlearning subprocesses: what a running ``src/train.py`` / ``src/eval.py`` is doing, read
from its own output, shown as one line per job at a fixed interval with tqdm's rate and ETA.

``train.py`` prints HF Trainer's tqdm bar (``37%|###   | 296/800 [01:02<01:46, 4.73it/s]``); ``eval.py`` prints
``Evaluating <metric>`` once per metric. :class:`JobProgress` keeps the latest of either and renders a status line;
the caller decides when to show it (every few seconds, so a silent phase such as the imports still shows a line).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field

from tqdm import tqdm

# A whole tqdm bar: the " [elapsed<remaining" after n/total is required, so a bar cut by a chunk boundary
# ("| 137/80") is not read as another total.
_BAR = re.compile(r"(?:^|[\r\n])([^\r\n|]{0,60}?):?\s*(\d+)%\|[^|\r\n]*\|\s*(\d+)/(\d+) \[")
_METRIC = re.compile(r"Evaluating (\S+)")
_TAIL = 2000  # characters of recent output kept for parsing
_FORMAT = "{percentage:3.0f}% {n_fmt}/{total_fmt}{unit} [{elapsed}<{remaining}"


def _meter(n: int, total: int, elapsed: float, rate: float | None, unit: str) -> str:
    """``37% 296/800 steps [01:02<01:46, 4.73 steps/s]`` (tqdm's numbers; slow rates as seconds per item)."""
    head = tqdm.format_meter(n, total, elapsed, rate=rate, unit=f" {unit}", bar_format=_FORMAT)
    if not rate:
        return f"{head}, ? {unit}/s]"
    return f"{head}, {rate:.2f} {unit}/s]" if rate >= 1 else f"{head}, {1 / rate:.1f} s/{unit.rstrip('s')}]"


def _clean(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@dataclass
class JobProgress:
    """What one OU job has reported so far.

    With ``steps`` (a training job) the latest bar without a description is HF Trainer's and counts as steps; an
    evaluation's own bars (``Calculating loss: 1/1``, one per batch of a metric) never do. ``metrics_total`` is
    the number of ``Evaluating`` lines an evaluation prints, when known (then eval jobs get an ETA too).
    """

    name: str
    steps: bool = True
    metrics_total: int | None = None
    started: float = field(default_factory=time.monotonic)
    step: int = 0
    total: int = 0
    first_step_at: float | None = None
    first_step: int = 0
    metrics_done: int = 0
    metric: str | None = None
    _tail: str = ""  # recent output, for the bars
    _partial: str = ""  # the last, unfinished line, for the "Evaluating" lines
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def feed(self, chunk: str) -> None:
        """Parse a chunk of the job's combined stdout/stderr (called by the thread that reads the job's pipe)."""
        text = _clean(chunk)
        *lines, partial = re.split(r"[\r\n]", self._partial + text)
        bars = [(d.strip(), int(n), int(t)) for d, _, n, t in _BAR.findall((self._tail + text)[-_TAIL:])]
        steps = [(n, t) for desc, n, t in bars if not desc] if self.steps else []
        metrics = [m for line in lines for m in _METRIC.findall(line)]
        with self._lock:
            self._tail, self._partial = (self._tail + text)[-_TAIL:], partial[-_TAIL:]
            if steps:
                n, t = steps[-1]
                if self.first_step_at is None or t != self.total:
                    self.first_step_at, self.first_step = time.monotonic(), n
                self.step, self.total = n, t
            if metrics:
                self.metrics_done += len(metrics)
                self.metric = metrics[-1]

    def line(self, now: float | None = None) -> str:
        """``name  <progress>`` with a rate and an ETA where the job has shown enough to estimate them."""
        with self._lock:
            return self._line(time.monotonic() if now is None else now)

    def _line(self, now: float) -> str:
        elapsed = now - self.started
        if self.total:
            # Rate from the steps seen since the bar appeared (the imports and data loading before it do not count).
            measured = now - (self.first_step_at or now)
            done = self.step - self.first_step
            rate = done / measured if done > 0 and measured > 0 else None
            return f"{self.name}: {_meter(self.step, self.total, measured, rate, 'steps')}"
        if self.metrics_done:
            total = self.metrics_total
            if total:
                rate = self.metrics_done / elapsed if elapsed > 0 else None
                meter = _meter(min(self.metrics_done, total), total, elapsed, rate, "metrics")
                return f"{self.name}: {meter} {self.metric}"
            return f"{self.name}: metric {self.metrics_done} ({self.metric}) [{tqdm.format_interval(elapsed)}]"
        return f"{self.name}: starting OpenUnlearning (imports, model and data) [{tqdm.format_interval(elapsed)}]"
