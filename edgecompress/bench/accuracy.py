"""Top-1 accuracy of a runner, and the combined accuracy + latency benchmark of one engine."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from edgecompress.bench.evalset import (
    ArrayEvalSet,
    EvalSet,
    Feed,
    as_eval_set,
    feed_rows,
    feed_shape,
)
from edgecompress.bench.latency import (
    InterleavedResult,
    check_counts,
    measure_interleaved,
    measure_latency,
)
from edgecompress.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from edgecompress.backends.base import Runner

logger = logging.getLogger(__name__)

LogitsFn = Callable[[np.ndarray], np.ndarray]
RunnerOrFn = Union["Runner", LogitsFn]


def _as_fn(runner_or_fn: RunnerOrFn) -> LogitsFn:
    """Accept a :class:`Runner` (uses ``.run``) or a plain ``x -> logits`` callable."""
    run = getattr(runner_or_fn, "run", None)
    if callable(run):
        return run
    if callable(runner_or_fn):
        return runner_or_fn
    raise ConfigError(f"expected a Runner or a callable, got {type(runner_or_fn).__name__}")


def evaluate_accuracy(runner_or_fn: RunnerOrFn, x: np.ndarray, y: np.ndarray, *,
                      batch_size: int = 256) -> tuple[float, np.ndarray]:
    """Run ``x`` through the model in batches and score top-1 accuracy against ``y``.

    The logits are returned too, so callers can compute parity against another engine without
    a second pass.

    Returns:
        ``(accuracy in [0, 1], logits of shape (len(x), classes))``.

    Raises:
        DataError: ``x``/``y`` are empty or their lengths differ.
        ConfigError: ``batch_size`` < 1.
        ModelError: The model returns the wrong number of rows.
    """
    accuracy, logits = evaluate(runner_or_fn, ArrayEvalSet(x, y), batch_size=batch_size)
    return float(accuracy), logits


def evaluate(runner_or_fn: RunnerOrFn, data: EvalSet, *, batch_size: int = 256
             ) -> tuple[float | None, np.ndarray]:
    """Logits of the whole split, and top-1 accuracy (None when ``data`` has no labels).

    Raises:
        ConfigError: ``batch_size`` < 1.
        ModelError: The model returns the wrong number of rows.
    """
    if batch_size < 1:
        raise ConfigError(f"accuracy batch_size must be >= 1, got {batch_size}")
    fn = _as_fn(runner_or_fn)
    runner = runner_or_fn if fn is not runner_or_fn else None
    outs = []
    for batch in data.batches(batch_size, runner):
        rows = feed_rows(batch)
        out = np.asarray(fn(batch))
        if out.ndim < 1 or out.shape[0] != rows:
            raise ModelError(f"model returned shape {out.shape} for a batch of {rows}")
        outs.append(out.reshape(rows, -1))
    logits = np.concatenate(outs, axis=0)
    if data.labels is None:
        return None, logits
    return float(np.mean(np.argmax(logits, axis=1) == data.labels)), logits


def timed_call(runner: Runner, batch: Feed) -> Callable[[], object]:
    """The zero-argument callable the latency loop times for ``runner`` on ``batch``.

    A runner may offer ``timed_call(batch)`` returning a call bound to an already prepared input
    (e.g. ORT's ``session.run`` with its feed dict built once), so that per-call conversions in
    ``Runner.run`` are not counted as model latency; otherwise ``runner.run(batch)`` is timed.
    """
    hook = getattr(runner, "timed_call", None)
    return hook(batch) if callable(hook) else (lambda: runner.run(batch))


def _checked_settings(n_test: int, *, batch_size: int, warmup: int, runs: int,
                      min_runs: int | None, max_seconds: float | None) -> int:
    """Validate the timing settings against the test set; returns the effective ``min_runs``.

    Raises:
        ConfigError: ``batch_size`` < 1 or larger than the test set; bad ``warmup``/``runs``.
    """
    if batch_size < 1 or batch_size > n_test:
        raise ConfigError(
            f"latency batch_size must be in 1..{n_test} (test set size), got {batch_size}")
    min_runs = min(min_runs or runs, runs) if max_seconds is not None else 1
    check_counts(warmup=warmup, runs=runs, min_runs=min_runs, max_seconds=max_seconds)
    return min_runs


def benchmark_runner(runner: Runner, x_test: np.ndarray | EvalSet, y_test: np.ndarray | None = None,
                     *, warmup: int, runs: int, batch_size: int = 1,
                     max_seconds: float | None = None, min_runs: int | None = None,
                     ) -> dict[str, Any]:
    """Accuracy on the whole test set plus latency on a fixed batch of its first samples.

    Latency always uses the same prepared batch so no data handling is timed. ``x_test`` is
    an :class:`~edgecompress.bench.evalset.EvalSet` or the inputs (one array, or name ->
    array) with their labels ``y_test``; without labels (a benchmark on synthetic inputs)
    accuracy is ``None``.

    Returns:
        ``{"accuracy": float | None, "latency_ms": LatencyStats.to_dict(),
        "samples_ms": [raw latencies], "logits": np.ndarray}``.

    Raises:
        ConfigError: ``batch_size`` < 1 or larger than the test set; bad ``warmup``/``runs``.
    """
    data = as_eval_set(x_test, y_test)
    min_runs = _checked_settings(len(data), batch_size=batch_size, warmup=warmup, runs=runs,
                                 min_runs=min_runs, max_seconds=max_seconds)
    accuracy, logits = evaluate(runner, data)
    batch = data.timing_feed(batch_size)
    stats = measure_latency(timed_call(runner, batch), warmup=warmup, runs=runs,
                            threads=runner.threads, batch_size=batch_size,
                            max_seconds=max_seconds, min_runs=min_runs,
                            input_shape=feed_shape(batch))
    logger.info("accuracy %s, latency p50 %.3f ms (batch %d, %d threads)",
                "-" if accuracy is None else f"{accuracy:.4f}", stats.p50, batch_size,
                runner.threads)
    return {"accuracy": accuracy, "latency_ms": stats.to_dict(), "samples_ms": stats.samples_ms,
            "logits": logits}


def benchmark_runners(runners: Mapping[str, Runner], x_test: np.ndarray | EvalSet,
                      y_test: np.ndarray | None = None, *, warmup: int, runs: int,
                      batch_size: int = 1, max_seconds: float | None = None,
                      min_runs: int | None = None, rounds: int | None = None,
                      evaluate: Collection[str] | None = None,
                      ) -> tuple[dict[str, dict[str, Any]], InterleavedResult]:
    """Accuracy of each runner, then the latency of all of them in interleaved rounds.

    Like :func:`benchmark_runner` for several engines at once, except that the timed calls of
    the engines alternate (see :func:`~edgecompress.bench.latency.measure_interleaved`), so
    their ratios can be taken round by round.

    Args:
        runners: Engine name -> runner; all are timed on the same prepared batch.
        x_test: An :class:`~edgecompress.bench.evalset.EvalSet`, or the inputs (labels in
            ``y_test``) as :func:`benchmark_runner` takes them.
        evaluate: Names whose accuracy and logits are computed (default: all).

    Returns:
        ``(name -> {"accuracy", "latency_ms", "samples_ms", "logits"}, interleaved result)``;
        ``accuracy`` and ``logits`` are None for engines not in ``evaluate``.

    Raises:
        ConfigError: ``batch_size`` < 1 or larger than the test set; bad ``warmup``/``runs``.
    """
    data = as_eval_set(x_test, y_test)
    min_runs = _checked_settings(len(data), batch_size=batch_size, warmup=warmup, runs=runs,
                                 min_runs=min_runs, max_seconds=max_seconds)
    out: dict[str, dict[str, Any]] = {}
    for name, runner in runners.items():
        accuracy, logits = None, None
        if evaluate is None or name in evaluate:
            accuracy, logits = _evaluate(runner, data)
        out[name] = {"accuracy": accuracy, "logits": logits}
    batch = data.timing_feed(batch_size)
    result = measure_interleaved({k: timed_call(r, batch) for k, r in runners.items()},
                                 warmup=warmup, runs=runs, rounds=rounds,
                                 threads={k: r.threads for k, r in runners.items()},
                                 batch_size=batch_size, max_seconds=max_seconds,
                                 min_runs=min_runs, input_shape=feed_shape(batch))
    for name, stats in result.stats.items():
        out[name]["latency_ms"] = stats.to_dict()
        out[name]["samples_ms"] = stats.samples_ms
        logger.info("%s: accuracy %s, latency p50 %.3f ms (cpu %.3f ms, %d rounds)", name,
                    "-" if out[name]["accuracy"] is None else f"{out[name]['accuracy']:.4f}",
                    stats.p50, stats.cpu_p50, stats.rounds)
    return out, result


_evaluate = evaluate  # benchmark_runners' ``evaluate`` argument shadows the function
