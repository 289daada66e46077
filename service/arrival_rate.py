"""How fast pairs are arriving: what the micro-batcher's adaptive wait for company reads
(service/batcher.py)."""

from __future__ import annotations

import math


class ArrivalRate:
    """Exponentially decayed arrival rate (pairs per second) with time constant ``tau_s``.

    ``mass`` is the decayed count of arrivals, ``sum(n_i * exp(-(now - t_i) / tau))``, which
    at a steady rate ``r`` tends to ``r * tau``.
    """

    def __init__(self, tau_s: float = 0.2):
        self.tau_s = tau_s
        self._mass = 0.0
        self._last = -math.inf

    def observe(self, now: float, n: int = 1) -> None:
        """Record ``n`` pairs arriving at ``now`` (seconds, monotonic)."""
        self._mass = self._decayed(now) + n
        self._last = now

    def rate(self, now: float) -> float:
        """Pairs per second around ``now``."""
        return self._decayed(now) / self.tau_s

    def expected_within(self, now: float, seconds: float, pending: int = 0) -> float:
        """Pairs expected to arrive in the next ``seconds`` at the rate of recent arrivals.

        Args:
            pending: pairs already waiting; their own arrival is taken out of the rate, so a
                lone request does not count as evidence that another is coming.
        """
        return max(0.0, self._decayed(now) - pending) / self.tau_s * seconds

    def _decayed(self, now: float) -> float:
        if self._mass == 0.0:
            return 0.0
        return self._mass * math.exp(-max(0.0, now - self._last) / self.tau_s)
