"""The text test split as engines see it (:class:`~edgecompress.bench.evalset.EvalSet`): token
ids and attention masks, read and tokenized a batch at a time, so the shared bench stage scores
and times text engines exactly as it does image engines.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from edgecompress.bench.evalset import REMOTE_SAMPLES, EvalSet, Feed
from edgecompress.text.data import Encoded, collate, fixed_length_input


def static_length(runner: Any) -> int | None:
    """The sequence length an engine of fixed length takes (a TFLite file converted at
    ``(1, seq_len)``, a TensorRT engine built for ``seq_len``), or None for engines of dynamic
    length (ONNX Runtime)."""
    shape = getattr(runner, "input_shape", None)
    return int(shape[1]) if shape is not None and len(shape) == 2 and shape[1] > 0 else None


class TokenEvalSet(EvalSet):
    """``input_ids`` + ``attention_mask`` feeds of the test split.

    Scoring pads each batch to its longest text (to exactly the engine's length for a
    static-shape engine, cutting longer texts as that engine must); timing uses ``seq_len``
    real tokens per row, no padding, so latency is measured at the target's length.
    """

    def __init__(self, data: Encoded, pad_id: int, seq_len: int, cls_id: int,
                 sep_id: int) -> None:
        self.data, self.pad_id, self.seq_len = data, pad_id, seq_len
        self.cls_id, self.sep_id = cls_id, sep_id
        self.labels = data.labels
        self.signature = ("tokens", seq_len)

    def __len__(self) -> int:
        return len(self.data)

    def _feed(self, positions: np.ndarray, length: int | None) -> Feed:
        ids, mask = collate(self.data.take(positions), self.pad_id, length=length)
        return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}

    def batches(self, batch_size: int, runner: Any = None) -> Iterator[Feed]:
        length = static_length(runner)
        for start in range(0, len(self), batch_size):
            yield self._feed(np.arange(start, min(start + batch_size, len(self))), length)

    def timing_feed(self, batch_size: int) -> Feed:
        ids, mask = fixed_length_input(self.data, self.seq_len, batch_size, self.cls_id,
                                       self.sep_id)
        return {"input_ids": ids, "attention_mask": mask}

    def sample(self, limit: int = REMOTE_SAMPLES) -> tuple[Feed, np.ndarray | None]:
        """The first ``limit`` texts padded (or cut) to ``seq_len``: one shape fits every
        engine on the device, static or not."""
        n = min(len(self), limit)
        return self._feed(np.arange(n), self.seq_len), self.labels[:n]
