"""How long the server itself takes per call, per method: from the interceptor taking the call to its
answer leaving for grpc (it includes waiting for the group commit; a long-poll's wait is its answer).

A client-observed latency adds the network, grpc's queues and the client's own event loop. At 10,000
clients on one 2-core machine the load generator's SubmitUpdate p99 was ~1 s while the server's own
was ~12 ms (benchmarks/RESULTS.md): without this split an operator cannot tell a slow server from a
saturated network or host. Fixed memory: a log-scale histogram per method, 8 buckets per doubling
from 1 µs (percentiles within ~9 %).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["CallMeter"]

PER_DOUBLING = 8
BUCKETS = 34 * PER_DOUBLING  # 1 µs to ~4.8 hours


def _bucket(seconds: float) -> int:
    micros = seconds * 1e6
    if not micros > 1.0:  # also NaN
        return 0
    return min(BUCKETS - 1, int(math.log2(micros) * PER_DOUBLING) + 1)


def _upper_s(bucket: int) -> float:
    """The largest duration a bucket holds: what a percentile in it reports (never below the truth)."""
    return 2.0 ** (bucket / PER_DOUBLING) * 1e-6


@dataclass
class CallMeter:
    """Per-method counts of server-side call durations."""

    _counts: dict[str, list[int]] = field(default_factory=dict)

    def record(self, method: str, seconds: float) -> None:
        counts = self._counts.get(method)
        if counts is None:
            counts = self._counts[method] = [0] * BUCKETS
        counts[_bucket(seconds)] += 1

    def count(self, method: str) -> int:
        return sum(self._counts.get(method, ()))

    def percentile_s(self, method: str, q: float) -> float:
        """Upper bound of the q-th percentile (0 < q <= 100) of `method`'s durations; NaN when none."""
        counts = self._counts.get(method)
        total = sum(counts) if counts else 0
        if not counts or not total:
            return math.nan
        rank, seen = math.ceil(total * q / 100.0), 0
        for bucket, n in enumerate(counts):
            seen += n
            if seen >= rank:
                return _upper_s(bucket)
        return _upper_s(BUCKETS - 1)

    def summary(self) -> str:
        """One log line: every method's count, p50 and p99 (server side)."""
        parts = [
            f"{name.rsplit('/', 1)[-1]} {self.count(name)} p50 {self.percentile_s(name, 50) * 1e3:.3g} ms "
            f"p99 {self.percentile_s(name, 99) * 1e3:.3g} ms"
            for name in sorted(self._counts)
        ]
        return "calls while serving (server side): " + ("; ".join(parts) or "none")
