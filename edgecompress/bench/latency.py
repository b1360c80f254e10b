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
        input_shape: Shape of the timed input batch, when known.
        seconds: Wall time of the timed loop.
        stopped_by: ``"runs"`` (all runs made) or ``"time_budget"`` (``max_seconds`` spent).
        max_seconds: The time budget, if one was given.
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
    input_shape: list[int] | None = None
    seconds: float | None = None
    stopped_by: str = "runs"
    max_seconds: float | None = None

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], *, warmup: int = 0, threads: int = 1,
                     batch_size: int = 1, **extra: Any) -> LatencyStats:
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
            samples_ms=[float(v) for v in arr], **extra,
        )

    def to_dict(self, include_samples: bool = False) -> dict[str, Any]:
        """Plain-JSON form; raw samples only on request since they dominate the size."""
        out = asdict(self)
        if not include_samples:
            del out["samples_ms"]
        return out


def check_counts(*, warmup: int, runs: int, min_runs: int = 1,
                 max_seconds: float | None = None) -> None:
    """Reject impossible benchmark sizes before any (possibly slow) work starts.

    Raises:
        ConfigError: ``runs`` < 1, ``warmup`` < 0, ``min_runs`` outside 1..runs, or a
            non-positive ``max_seconds``.
    """
    if runs < 1:
        raise ConfigError(f"latency runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ConfigError(f"latency warmup must be >= 0, got {warmup}")
    if not 1 <= min_runs <= runs:
        raise ConfigError(f"latency min_runs must be in 1..runs ({runs}), got {min_runs}")
    if max_seconds is not None and max_seconds <= 0:
        raise ConfigError(f"latency max_seconds must be > 0, got {max_seconds}")


def measure_latency(fn: Callable[[], object], *, warmup: int = 10, runs: int = 100,
                    threads: int = 1, batch_size: int = 1, max_seconds: float | None = None,
                    min_runs: int = 1, input_shape: Sequence[int] | None = None) -> LatencyStats:
    """Time up to ``runs`` calls of ``fn`` after ``warmup`` untimed ones.

    Only the call itself sits between the two ``perf_counter_ns`` reads; the garbage collector
    is paused while timing (as ``timeit`` does) so a collection does not land in a random sample.
    With ``max_seconds`` the loop also stops once that much time is spent *and* ``min_runs``
    calls were timed, so a slow model on a slow device cannot stall CI, while the percentiles
    still rest on enough samples. The budget check reuses the clock read the sample already
    took, so it adds one integer comparison per call.

    Args:
        fn: Zero-argument callable doing one inference on a prepared input.
        warmup: Untimed calls first (allocations, lazy init, caches), >= 0.
        runs: Timed calls (the most, with a time budget), >= 1.
        threads: Recorded in the result; the caller configures the runtime.
        batch_size: Recorded in the result.
        max_seconds: Optional time budget of the timed loop.
        min_runs: With ``max_seconds``: timed calls always made (1..runs).
        input_shape: Recorded in the result.

    Raises:
        ConfigError: bad counts or budget (see :func:`check_counts`).
    """
    check_counts(warmup=warmup, runs=runs, min_runs=min_runs, max_seconds=max_seconds)
    for _ in range(warmup):
        fn()
    elapsed_ns = [0] * runs
    clock = time.perf_counter_ns
    done = runs
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t0 = clock()
    try:
        if max_seconds is None:
            for i in range(runs):
                start = clock()
                fn()
                elapsed_ns[i] = clock() - start
        else:
            deadline = t0 + int(max_seconds * 1e9)
            for i in range(runs):
                start = clock()
                fn()
                end = clock()
                elapsed_ns[i] = end - start
                if end > deadline and i + 1 >= min_runs:
                    done = i + 1
                    break
    finally:
        total_ns = clock() - t0
        if gc_was_enabled:
            gc.enable()
    stats = LatencyStats.from_samples(
        [ns / 1e6 for ns in elapsed_ns[:done]], warmup=warmup, threads=threads,
        batch_size=batch_size, input_shape=list(input_shape) if input_shape else None,
        seconds=round(total_ns / 1e9, 6), stopped_by="runs" if done == runs else "time_budget",
        max_seconds=max_seconds)
    logger.debug("latency p50 %.3f ms p99 %.3f ms over %d runs", stats.p50, stats.p99, done)
    return stats
