"""Wall-clock latency measurement with warmup and robust summary statistics.

Percentiles, not just the mean, go into reports: edge deployments are judged on tail latency,
and raw samples are kept so a report can be re-analysed without re-running the benchmark.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Mapping, Sequence
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
        cpu_p50: Median CPU time per call (ms) on ``cpu_clock``, when recorded.
        cpu_mean: Mean CPU time per call (ms), when recorded.
        cpu_clock: ``thread_time`` (the runtime ran on the calling thread) or
            ``process_time`` (every thread of the process), when recorded.
        rounds: Interleaved rounds the samples were taken in (None: one block).
        round_p50_ms: Median latency of each round (interleaved timing only).
        round_spread: ``{"min", "max", "median", "rel_iqr"}`` of ``round_p50_ms``: how much
            the rounds disagree (rel_iqr: interquartile range / median).
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
    cpu_p50: float | None = None
    cpu_mean: float | None = None
    cpu_clock: str | None = None
    rounds: int | None = None
    round_p50_ms: list[float] | None = None
    round_spread: dict[str, float] | None = None

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


# --- interleaved rounds --------------------------------------------------------------------------

#: Default number of rounds of an interleaved benchmark (each engine's runs are split over them).
DEFAULT_ROUNDS = 20
#: A same-round ratio is flagged noisy when the interquartile range of its per-round values
#: exceeds this fraction of their median (the middle half of the rounds disagree by > 10 %).
NOISE_THRESHOLD = 0.10


def cpu_clock_for(threads: int) -> tuple[str, Callable[[], int]]:
    """The CPU-time clock that sees an engine's work: the calling thread's own CPU time when the
    runtime runs single-threaded (ORT with one intra-op thread and XNNPACK with one thread run on
    the calling thread), else the whole process's (the runtime's pool threads do the work)."""
    if threads <= 1:
        return "thread_time", time.thread_time_ns
    return "process_time", time.process_time_ns


def _spread(values: Sequence[float]) -> dict[str, float]:
    """min, max and the interquartile range relative to the median of per-round values."""
    arr = np.asarray(values, dtype=np.float64)
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return {"min": float(arr.min()), "max": float(arr.max()), "median": float(q50),
            "rel_iqr": float((q75 - q25) / q50) if q50 > 0 else 0.0}


@dataclass
class InterleavedResult:
    """What :func:`measure_interleaved` measured.

    Attributes:
        stats: Engine name -> its :class:`LatencyStats` over every round (``round_*`` and
            ``cpu_*`` fields filled).
        round_ms: Engine name -> per-round median wall latency (ms), one value per round.
        round_cpu_ms: Engine name -> per-round median CPU time per call (ms).
        order: Engine names in the order of the first round (later rounds rotate it).
        rounds: Rounds completed.
        seconds: Wall time of all rounds together.
        stopped_by: ``"runs"`` or ``"time_budget"``.
    """

    stats: dict[str, LatencyStats]
    round_ms: dict[str, list[float]]
    round_cpu_ms: dict[str, list[float]]
    order: list[str]
    rounds: int
    seconds: float
    stopped_by: str

    def schedule(self) -> dict[str, Any]:
        """The report's description of how the engines were timed."""
        return {"scheme": "interleaved", "rounds": self.rounds, "engines": list(self.order),
                "order": "rotated each round (A B C, B C A, ...)",
                "seconds": round(self.seconds, 3), "stopped_by": self.stopped_by,
                "noise_threshold_rel_iqr": NOISE_THRESHOLD}

    def paired_ratio(self, baseline: str, candidate: str, *, cpu: bool = False,
                     noise_threshold: float = NOISE_THRESHOLD) -> dict[str, Any] | None:
        """``baseline / candidate`` from same-round pairs: the median of the per-round ratios.

        Both engines ran in every round, so a change of the machine's load between rounds
        moves both numbers of a pair together and largely cancels in the ratio.

        Returns:
            ``{"ratio", "noisy", "spread": {"min", "max", "median", "rel_iqr"}, "rounds"}``,
            or None when a per-round time is zero (nothing to divide by).
        """
        source = self.round_cpu_ms if cpu else self.round_ms
        base, cand = source.get(baseline), source.get(candidate)
        if not base or not cand or min(cand) <= 0:
            return None
        ratios = [b / c for b, c in zip(base, cand, strict=True)]
        spread = _spread(ratios)
        return {"ratio": spread["median"], "noisy": spread["rel_iqr"] > noise_threshold,
                "spread": spread, "rounds": len(ratios)}


def _burst_sizes(runs: int, rounds: int) -> list[int]:
    """``runs`` calls split over ``rounds`` as evenly as possible (earlier rounds get the rest)."""
    base, extra = divmod(runs, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


def measure_interleaved(calls: Mapping[str, Callable[[], object]], *, warmup: int = 10,
                        runs: int = 100, rounds: int | None = None,
                        threads: Mapping[str, int] | int = 1, batch_size: int = 1,
                        max_seconds: float | None = None, min_runs: int = 1,
                        input_shape: Sequence[int] | None = None) -> InterleavedResult:
    """Time several engines in interleaved rounds: A B C, B C A, C A B, ...

    Every engine first gets ``warmup`` untimed calls. Then its ``runs`` timed calls are split over
    ``rounds`` rounds; in each round every engine makes a short burst of consecutive calls, the
    starting engine rotating from round to round so no engine always follows the same neighbour.
    Each call records its wall time (``perf_counter_ns``, only the call in between) and, read
    just outside that window, its CPU time (:func:`cpu_clock_for`). Because every engine is
    measured in every round, a ratio of two engines can be taken per round (see
    :meth:`InterleavedResult.paired_ratio`): load that changes during the benchmark moves both.

    With ``max_seconds`` (a budget *per engine*, as in :func:`measure_latency`; the rounds share
    ``max_seconds x engines``) the rounds stop once the budget is spent and every engine made
    ``min_runs`` calls; after the budget, bursts only make up what ``min_runs`` still needs.

    Args:
        calls: Engine name -> zero-argument callable doing one inference on a prepared input.
        warmup: Untimed calls per engine before the first round.
        runs: Timed calls per engine (the most, with a time budget).
        rounds: Rounds to split the runs over (default :data:`DEFAULT_ROUNDS`, at most ``runs``).
        threads: Thread count per engine (or one for all): recorded, and picks the CPU clock.
        batch_size: Recorded.
        max_seconds: Optional time budget per engine.
        min_runs: With ``max_seconds``: timed calls per engine always made.
        input_shape: Recorded.

    Raises:
        ConfigError: no engine, bad counts or budget (see :func:`check_counts`).
    """
    if not calls:
        raise ConfigError("an interleaved benchmark needs at least one engine")
    check_counts(warmup=warmup, runs=runs, min_runs=min_runs, max_seconds=max_seconds)
    rounds = max(1, min(rounds or DEFAULT_ROUNDS, runs))
    names = list(calls)
    n_threads = {k: (threads if isinstance(threads, int) else threads.get(k, 1)) for k in names}
    clocks = {k: cpu_clock_for(n_threads[k]) for k in names}
    for name in names:
        for _ in range(warmup):
            calls[name]()
    bursts = _burst_sizes(runs, rounds)
    wall: dict[str, list[int]] = {k: [] for k in names}
    cpu: dict[str, list[int]] = {k: [] for k in names}
    round_ms: dict[str, list[float]] = {k: [] for k in names}
    round_cpu: dict[str, list[float]] = {k: [] for k in names}
    clock = time.perf_counter_ns
    deadline = None if max_seconds is None else int(max_seconds * len(names) * 1e9)
    stopped_by, done_rounds = "runs", 0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    t0 = clock()
    try:
        for r, planned in enumerate(bursts):
            over = deadline is not None and clock() - t0 > deadline
            if over:
                stopped_by = "time_budget"
                sizes = {k: min(planned, max(0, min_runs - len(wall[k]))) for k in names}
                if not any(sizes.values()):
                    break
            else:
                sizes = dict.fromkeys(names, planned)
            for i in range(len(names)):
                name = names[(r + i) % len(names)]
                fn, cpu_now = calls[name], clocks[name][1]
                w, c = wall[name], cpu[name]
                first = len(w)
                for _ in range(sizes[name]):
                    c0 = cpu_now()
                    start = clock()
                    fn()
                    end = clock()
                    c.append(cpu_now() - c0)
                    w.append(end - start)
                if len(w) > first:
                    round_ms[name].append(float(np.median(w[first:])) / 1e6)
                    round_cpu[name].append(float(np.median(c[first:])) / 1e6)
            done_rounds += 1
    finally:
        total_ns = clock() - t0
        if gc_was_enabled:
            gc.enable()
    # Rounds where an engine made no call (after the budget) do not pair: keep only full ones.
    full = min(len(v) for v in round_ms.values())
    round_ms = {k: v[:full] for k, v in round_ms.items()}
    round_cpu = {k: v[:full] for k, v in round_cpu.items()}
    stats = {}
    for name in names:
        cpu_arr = np.asarray(cpu[name], dtype=np.float64) / 1e6
        stats[name] = LatencyStats.from_samples(
            [ns / 1e6 for ns in wall[name]], warmup=warmup, threads=n_threads[name],
            batch_size=batch_size, input_shape=list(input_shape) if input_shape else None,
            seconds=round(total_ns / 1e9, 6), stopped_by=stopped_by, max_seconds=max_seconds,
            cpu_p50=float(np.median(cpu_arr)), cpu_mean=float(cpu_arr.mean()),
            cpu_clock=clocks[name][0], rounds=full,
            round_p50_ms=[round(v, 6) for v in round_ms[name]],
            round_spread=_spread(round_ms[name]) if full else None)
        logger.debug("%s: p50 %.3f ms (cpu %.3f ms) over %d runs in %d rounds", name,
                     stats[name].p50, stats[name].cpu_p50, stats[name].runs, full)
    return InterleavedResult(stats=stats, round_ms=round_ms, round_cpu_ms=round_cpu,
                             order=names, rounds=full, seconds=total_ns / 1e9,
                             stopped_by=stopped_by)
