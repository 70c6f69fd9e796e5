"""Per-minute limits as sliding windows: a log of what was taken in the last minute.

A token bucket lets a client take its whole limit at once and again as it refills
(up to twice the limit in a minute that starts full); a sliding log never lets more
than `limit` through in any window of `span_s`, which is what "N requests per
minute" promises. Entries can be refunded (tokens reserved for `max_tokens` and not
generated). The log holds one entry per admitted request, which a per-minute limit
bounds."""

from __future__ import annotations

import math
import time
from collections import deque


class Window:
    def __init__(self, limit: int, span_s: float = 60.0) -> None:
        if limit < 1:
            raise ValueError("a limit must be at least 1")
        self.limit = limit
        self.span_s = span_s
        self.used = 0
        self._log: deque[list[float]] = deque()  # [time taken, amount], oldest first

    def _expire(self, now: float) -> None:
        horizon = now - self.span_s
        log = self._log
        while log and log[0][0] <= horizon:
            self.used -= int(log.popleft()[1])

    def remaining(self, now: float | None = None) -> int:
        self._expire(time.monotonic() if now is None else now)
        return max(0, self.limit - self.used)

    def take(self, amount: int, now: float | None = None) -> list[float] | None:
        """Take `amount` if it fits in the window; the entry (to refund) or None."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        if self.used + amount > self.limit:
            return None
        entry = [now, float(amount)]
        self._log.append(entry)
        self.used += amount
        return entry

    def settle(self, entry: list[float], actual: int) -> None:
        """The taken entry really cost `actual` (less: a refund; more: charged)."""
        if entry in self._log and actual != entry[1]:  # gone from the log: it expired, nothing to fix
            self.used += actual - int(entry[1])
            entry[1] = float(actual)

    def wait_for(self, amount: int, now: float | None = None) -> float:
        """Seconds until `amount` would fit (inf if it never can)."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        if amount > self.limit:
            return math.inf
        excess = self.used + amount - self.limit
        if excess <= 0:
            return 0.0
        for t, taken in self._log:  # the oldest entries leave first
            excess -= int(taken)
            if excess <= 0:
                return max(0.0, t + self.span_s - now)
        return math.inf  # not reached: the log holds everything counted in `used`

    def reset_after(self, now: float | None = None) -> float:
        """Seconds until the window is empty again (OpenAI's x-ratelimit-reset-*)."""
        now = time.monotonic() if now is None else now
        self._expire(now)
        return max(0.0, self._log[-1][0] + self.span_s - now) if self._log else 0.0
