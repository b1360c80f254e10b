"""Wall-clock latency measurement with warmup and robust summary statistics.

Percentiles, not just the mean, go into reports: edge deployments are judged on tail latency,
and raw samples are kept so a report can be re-analysed without re-running the benchmark.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgecompress.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class LatencyStats:
    """Summary of per-call latencies; every time is in milliseconds.

    Attributes:
        p50: Median.
        p90: 90th percentile.
        p99: 99th percentile.
        mean: Arithmetic mean.
        stdev: Sample standard deviation (0.0 for a single run).
        min: Fastest call.
        max: Slowest call.
        runs: Number of timed calls.
        warmup: Untimed calls made before timing.
        threads: Thread count the runtime was configured with (recorded, not applied).
        batch_size: Samples per call.
        samples_ms: Raw per-call latencies in call order.
    """

    p50: float
    p90: float
    p99: float
    mean: float
    stdev: float
    min: float
    max: float
    runs: int
    warmup: int
    threads: int
    batch_size: int
    samples_ms: list[float] = field(repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], *, warmup: int = 0, threads: int = 1,
                     batch_size: int = 1) -> LatencyStats:
        """Summarize raw latencies (ms); percentiles use numpy's 'linear' method.

        Raises:
            ConfigError: ``samples_ms`` is empty.
        """
        if len(samples_ms) == 0:
            raise ConfigError("latency statistics need at least one sample (runs >= 1)")
        arr = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99], method="linear")
        return cls(
            p50=float(p50), p90=float(p90), p99=float(p99),
            mean=float(arr.mean()),
            stdev=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
            min=float(arr.min()), max=float(arr.max()),
            runs=int(arr.size), warmup=warmup, threads=threads, batch_size=batch_size,
            samples_ms=[float(v) for v in arr],
        )

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """Plain-JSON form; raw samples only on request since they dominate the size."""
        out = asdict(self)
        if not include_samples:
            del out["samples_ms"]
        return out


def check_counts(*, warmup: int, runs: int) -> None:
    """Reject impossible benchmark sizes before any (possibly slow) work starts.

    Raises:
        ConfigError: ``runs`` < 1 or ``warmup`` < 0.
    """
    if runs < 1:
        raise ConfigError(f"latency runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ConfigError(f"latency warmup must be >= 0, got {warmup}")


def measure_latency(fn: Callable[[], object], *, warmup: int = 10, runs: int = 100,
                    threads: int = 1, batch_size: int = 1) -> LatencyStats:
    """Time ``runs`` calls of ``fn`` after ``warmup`` untimed ones.

    Only the call itself sits between the two ``perf_counter_ns`` reads; the garbage collector
    is paused while timing (as ``timeit`` does) so a collection does not land in a random sample.

    Args:
        fn: Zero-argument callable doing one inference on a prepared input.
        warmup: Untimed calls first (allocations, lazy init, caches), >= 0.
        runs: Timed calls, >= 1.
        threads: Recorded in the result; the caller configures the runtime.
        batch_size: Recorded in the result.

    Raises:
        ConfigError: ``runs`` < 1 or ``warmup`` < 0.
    """
    check_counts(warmup=warmup, runs=runs)
    for _ in range(warmup):
        fn()
    elapsed_ns = [0] * runs
    clock = time.perf_counter_ns
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(runs):
            start = clock()
            fn()
            elapsed_ns[i] = clock() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    stats = LatencyStats.from_samples([ns / 1e6 for ns in elapsed_ns], warmup=warmup,
                                      threads=threads, batch_size=batch_size)
    logger.debug("latency p50 %.3f ms p99 %.3f ms over %d runs", stats.p50, stats.p99, runs)
    return stats
