"""The test split as the engines see it: batches to score, one fixed batch to time, and a bounded
sample to send to a remote device.

The bench code is written once for every model family; what differs is what an engine is fed.
An image model takes one float array; a text model takes token ids and an attention mask (a
name -> array feed, which every runner accepts). A family hands the bench an :class:`EvalSet`
and the bench never looks inside a feed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, Union

import numpy as np

from edgecompress.errors import DataError

#: What a runner's ``run`` takes: one array, or input name -> array.
Feed = Union[np.ndarray, Mapping[str, np.ndarray]]  # noqa: UP007 - a runtime alias

#: Most samples sent to a remote device (its inputs travel as one file).
REMOTE_SAMPLES = 512


class EvalSet(ABC):
    """The labelled test split, fed to engines.

    Attributes:
        labels: Class index per sample (None for a benchmark on unlabelled inputs).
        signature: Hashable description of :meth:`timing_feed`'s input; targets whose engines
            are timed on the same feed share one interleaved benchmark.
    """

    labels: np.ndarray | None
    signature: tuple = ()

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def batches(self, batch_size: int, runner: Any = None) -> Iterator[Feed]:
        """The whole split in order, ``batch_size`` samples at a time, shaped for ``runner``
        (an engine with a static input, a TFLite file, may need its own padding)."""

    @abstractmethod
    def timing_feed(self, batch_size: int) -> Feed:
        """The one prepared batch every engine is timed on (no data handling is timed)."""

    @abstractmethod
    def sample(self, limit: int = REMOTE_SAMPLES) -> tuple[Feed, np.ndarray | None]:
        """The first samples (at most ``limit`` where reading them costs) as arrays, and their
        labels, for a remote device; its logits are compared with the reference's first as
        many rows."""

    def value_ranges(self) -> list[tuple[int, int] | None] | None:
        """Per input, in feed order: ``(low, high)`` of an integer input (token ids, a mask),
        None for a float one; None when no input is integer. For a tool that makes up its own
        inputs (``benchmark_model`` on a phone), so they stay valid for the model."""
        feed = self.timing_feed(1)
        arrays = list(feed.values()) if isinstance(feed, Mapping) else [feed]
        ranges = [(int(np.min(a)), int(np.max(a))) if np.issubdtype(np.asarray(a).dtype,
                                                                    np.integer) else None
                  for a in arrays]
        return ranges if any(r is not None for r in ranges) else None


def feed_rows(feed: Feed) -> int:
    """Number of samples in a feed."""
    if isinstance(feed, Mapping):
        return len(next(iter(feed.values())))
    return len(feed)


def feed_shape(feed: Feed) -> list[int]:
    """A feed's shape as the latency stats record it (its first input's, for several: token
    ids and their mask have the same)."""
    if isinstance(feed, Mapping):
        return list(np.shape(next(iter(feed.values()))))
    return list(np.shape(feed))


class ArrayEvalSet(EvalSet):
    """Arrays already in memory (or an image stream that slices like one): ``x`` is one array
    or input name -> array, every array with one row per sample."""

    def __init__(self, x: Any, y: np.ndarray | None) -> None:
        n = feed_rows(x)
        if isinstance(x, Mapping):
            for name, array in x.items():
                if len(array) != n:
                    raise DataError(f"input {name!r} has {len(array)} rows, the first input {n}")
        if n == 0:
            raise DataError("the test split is empty")
        if y is not None:
            y = np.asarray(y).reshape(-1)
            if len(y) != n:
                raise DataError(f"need equally many inputs and labels, got {n} and {len(y)}")
        self.x, self.labels = x, y
        self.signature = ("arrays",)

    def __len__(self) -> int:
        return feed_rows(self.x)

    def _rows(self, start: int, stop: int) -> Feed:
        if isinstance(self.x, Mapping):
            return {k: v[start:stop] for k, v in self.x.items()}
        return self.x[start:stop]

    def batches(self, batch_size: int, runner: Any = None) -> Iterator[Feed]:
        for start in range(0, len(self), batch_size):
            yield self._rows(start, start + batch_size)

    def timing_feed(self, batch_size: int) -> Feed:
        if isinstance(self.x, Mapping):
            return {k: np.ascontiguousarray(v[:batch_size]) for k, v in self.x.items()}
        return np.ascontiguousarray(self.x[:batch_size], dtype=np.float32)

    def sample(self, limit: int = REMOTE_SAMPLES) -> tuple[Feed, np.ndarray | None]:
        """Arrays already in memory travel whole; a stream's first ``limit`` images are
        decoded (the split is already shuffled), so memory does not grow with the split."""
        from edgecompress.data.stream import is_stream

        n = min(len(self), limit) if is_stream(self.x) else len(self)
        x = self._rows(0, n)
        if not isinstance(x, Mapping):
            x = np.asarray(x, dtype=np.float32)
        return x, None if self.labels is None else self.labels[:n]


def as_eval_set(x: Any, y: np.ndarray | None = None) -> EvalSet:
    """``x`` when it already is an :class:`EvalSet`, else the arrays wrapped in one."""
    return x if isinstance(x, EvalSet) else ArrayEvalSet(x, y)
