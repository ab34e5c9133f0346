"""Adaptive concurrency: an AIMD controller for one endpoint's in-flight cap.

Rules:
- Pure: no I/O, no clock, no asyncio. The transport reports when each attempt starts and what
  status it ended with, and what the server's `/metrics` said; the controller answers with
  the cap. Virtual-time tests drive it directly.
- Signals: HTTP 429 or 503 means overload; a 2xx means the server had room; anything else
  (timeouts, connection errors, other statuses) says nothing about capacity and is ignored.
- Multiplicative decrease: the cap is multiplied by `decrease_factor`, at most once per window.
  An overload from an attempt that started before the last decrease was caused by the old,
  larger cap and changes nothing (TCP's one reduction per round trip); so a burst of 429s
  from one window costs one decrease, not one per 429.
- Increase only while the cap is what limits us: a success counts when requests were queued
  for a slot (or every slot was taken) as it ended. Successes at a cap that was never reached
  prove nothing, and growing on them would inflate the cap until a burst of demand storms the
  server (RFC 7661, congestion window validation). Successes of attempts sent before the
  last decrease count too: ignoring them (as TCP does) starved growth under the queue
  signal's frequent small cuts (benchmarks/adaptive.py).
- Slow start: the cap starts low (`initial`) and, until the first overload, each success adds
  one slot, so it doubles per window (a window: as many successes as the cap). Starting at
  the ceiling against a server that takes a tenth of it drew 77% 429s; started low it settled
  near the server's limit with under 1% (docs/design.md, section 8).
- Additive increase after the first overload, in slots per window (each success adds
  step / cap): below the cap at the last decrease the step is half the remaining gap (a
  binary search, at least 1), so the cap returns near a hard limit within a few windows and
  crosses it by a request or two; from there the step starts at 1 and doubles after every
  window without overload (1, 2, 4, ... at most the cap), so once a limit is lifted the cap
  grows exponentially again instead of one slot per window (BIC, Xu, Harfoush and Rhee 2004).
- Queue signal (when `max_waiting` is set): while the server's waiting queue
  (vllm:num_requests_waiting) is above `max_waiting` the cap does not grow, and it decreases
  once every attempt started before the previous decrease has finished (only then does the
  queue reflect the current cap, so a queue that drains slowly is not punished twice). The
  decrease is the excess (waiting - max_waiting), at most `decrease_factor`: a queue is not
  an error, and a 30% cut for a queue a few requests too long would leave the server's batch
  part empty (measured: occupancy 0.84 instead of 1.00, benchmarks/adaptive.py).
- The cap always stays within [floor, ceiling].
"""

from __future__ import annotations

import enum
import math
from typing import Final

from asynctts.endpoint import Endpoint
from asynctts.errors import ConfigError

__all__ = [
    "DECREASE_FACTOR",
    "AIMDController",
    "Signal",
    "controller_for",
    "queue_length",
    "signal_of",
]

DECREASE_FACTOR: Final = 0.7  # CUBIC's: keeps most of the cap, so the sawtooth stays near a limit
WAITING_METRIC: Final = "vllm:num_requests_waiting"


class Signal(enum.Enum):
    SUCCESS = "success"  # 2xx
    OVERLOAD = "overload"  # 429 or 503
    NEUTRAL = "neutral"  # no response, or a status that is not about capacity


def signal_of(status: int | None) -> Signal:
    """What an attempt's HTTP status (None: no response) says about the server's capacity."""
    if status is None:
        return Signal.NEUTRAL
    if 200 <= status < 300:
        return Signal.SUCCESS
    if status == 429 or status == 503:
        return Signal.OVERLOAD
    return Signal.NEUTRAL


class AIMDController:
    """The in-flight cap of one endpoint, adapted to the server's overload signals.

    Args:
        initial: the cap to start at (clamped to [floor, ceiling]).
        floor: the cap never goes below this.
        ceiling: nor above this (the connection limit).
        max_waiting: back off while the server's waiting queue is longer than this;
            None ignores the queue.
        decrease_factor: the cap is multiplied by this at a decrease, in (0, 1).
    """

    __slots__ = (
        "_cap",
        "_current",
        "_epoch",
        "_last_max",
        "_old",
        "_queue_high",
        "_slow_start",
        "_step",
        "_window",
        "ceiling",
        "decrease_factor",
        "decreases",
        "floor",
        "lowest",
        "max_waiting",
    )

    def __init__(
        self,
        *,
        initial: int,
        floor: int,
        ceiling: int,
        max_waiting: int | None = None,
        decrease_factor: float = DECREASE_FACTOR,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ConfigError(
                f"AIMDController floor={floor}, ceiling={ceiling}: need 1 <= floor <= ceiling"
            )
        if not 0.0 < decrease_factor < 1.0:
            raise ConfigError(f"AIMDController decrease_factor={decrease_factor}: need 0 < f < 1")
        if max_waiting is not None and max_waiting < 0:
            raise ConfigError(f"AIMDController max_waiting={max_waiting}: need >= 0 or None")
        self.floor = floor
        self.ceiling = ceiling
        self.max_waiting = max_waiting
        self.decrease_factor = decrease_factor
        self._cap = float(min(max(initial, floor), ceiling))
        self._slow_start = True
        self._step = 1.0  # slots added per window above the last overload's cap
        self._last_max = 0.0  # the cap when the last decrease happened
        self._window = 0  # counted successes since the step last doubled
        self._epoch = 0  # bumped at every decrease
        self._current = 0  # attempts in flight that started in this epoch
        self._old = 0  # attempts in flight that started before the last decrease
        self._queue_high = False
        self.decreases = 0
        self.lowest = self.cap

    def __repr__(self) -> str:
        phase = "slow start" if self._slow_start else f"step {self._step:g}"
        return f"<AIMDController cap={self.cap} in [{self.floor}, {self.ceiling}], {phase}>"

    @property
    def cap(self) -> int:
        """The current cap on attempts in flight."""
        return int(self._cap)

    @property
    def slow_start(self) -> bool:
        """True until the first decrease."""
        return self._slow_start

    def started(self) -> int:
        """An attempt takes a slot; returns its ticket for `finished`."""
        self._current += 1
        return self._epoch

    def finished(self, ticket: int, signal: Signal, *, saturated: bool) -> bool:
        """An attempt ended.

        Args:
            ticket: what `started` returned for it.
            signal: what its status says (`signal_of`).
            saturated: whether the cap was what limited us as it ended (requests were queued
                for a slot, or every slot was taken).

        Returns:
            Whether the cap changed.
        """
        current = ticket == self._epoch
        if current:
            self._current -= 1
        else:
            self._old -= 1
        if signal is Signal.OVERLOAD:
            return current and self._decrease()
        if signal is Signal.SUCCESS and saturated and not self._queue_high:
            return self._grow()
        return False

    def observe_waiting(self, waiting: int) -> bool:
        """The server's waiting queue, read from /metrics. Returns whether the cap changed."""
        if self.max_waiting is None:
            return False
        excess = waiting - self.max_waiting
        self._queue_high = excess > 0
        return self._queue_high and self._old == 0 and self._decrease(self._cap - excess)

    def reset(self, cap: int) -> None:
        """Continue from `cap` (set by hand), with the step back to 1."""
        if not self.floor <= cap <= self.ceiling:
            raise ConfigError(f"cap={cap}: need {self.floor}..{self.ceiling}")
        self._cap = float(cap)
        self._step = 1.0
        self._window = 0
        self.lowest = min(self.lowest, cap)

    def _grow(self) -> bool:
        before = self.cap
        if self._slow_start:
            self._cap = min(self.ceiling, self._cap + 1.0)
            return self.cap != before
        if self._cap < self._last_max:
            # binary search back to the cap of the last overload: half the way per window
            step = max(1.0, (self._last_max - self._cap) / 2.0)
        else:
            step = self._step
            self._window += 1
            if self._window >= self._cap:
                self._window = 0
                self._step = min(self._step * 2.0, self._cap)
        self._cap = min(self.ceiling, self._cap + step / self._cap)
        return self.cap != before

    def _decrease(self, at_least: float = 0.0) -> bool:
        """Multiply the cap by `decrease_factor`, or lower it to `at_least` if that is higher
        (a gentler cut)."""
        before = self.cap
        self._last_max = self._cap
        self._cap = max(float(self.floor), self._cap * self.decrease_factor, at_least)
        self._slow_start = False
        self._step = 1.0
        self._window = 0
        self._epoch += 1
        self._old += self._current
        self._current = 0
        self.decreases += 1
        self.lowest = min(self.lowest, self.cap)
        return self.cap != before


def controller_for(endpoint: Endpoint) -> AIMDController | None:
    """The endpoint's controller, or None when its cap is fixed."""
    if not endpoint.adapts_concurrency:
        return None
    return AIMDController(
        initial=endpoint.adaptive_initial_in_flight,
        floor=endpoint.adaptive_min_in_flight,
        ceiling=endpoint.max_in_flight,
        max_waiting=endpoint.adaptive_max_waiting,
    )


def queue_length(metrics: str) -> int | None:
    """The sum of every `vllm:num_requests_waiting` sample in a Prometheus text exposition
    (one per model or engine); None when there is none."""
    total = 0.0
    found = False
    for line in metrics.splitlines():
        if not line.startswith(WAITING_METRIC):
            continue
        rest = line[len(WAITING_METRIC) :]
        if rest.startswith("{"):
            end = rest.rfind("}")
            if end < 0:
                continue
            rest = rest[end + 1 :]
        elif not rest[:1].isspace():
            continue  # another metric whose name starts the same way
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value) and value >= 0:  # skip NaN, infinities and nonsense
            total += value
            found = True
    return round(total) if found else None
