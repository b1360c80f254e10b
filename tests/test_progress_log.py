"""Progress that a log shows (issue 18 item 4): without a terminal, training loops log step, loss,
elapsed time and ETA at least every interval, driven here by a fake clock or a tiny interval."""

from __future__ import annotations

import logging
import types

import numpy as np
import torch
from torch import nn

from edgecompress.distributed import DistInfo
from edgecompress.training import ProgressLog, progress_interval, train


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_logs_once_per_interval_with_eta(caplog) -> None:
    clock = Clock()
    log = ProgressLog("finetune", total_steps=100, interval=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="edgecompress.training"):
        for step in range(100):
            clock.now += 1.0  # one second per step: a line at steps 30, 60 and 90
            log.step(epoch=1 + step // 50, epochs=2, loss=1.0 / (step + 1))
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert log.lines == len(lines) == 3
    assert lines[0].startswith("finetune epoch 1/2 step 30/100: loss 0.0333")
    assert "elapsed 0:30, ETA ~1:10" in lines[0]  # 70 steps left at 1 s each
    assert "epoch 2/2 step 90/100" in lines[2] and "ETA ~0:10" in lines[2]


def test_disabled_log_is_silent(caplog) -> None:
    clock = Clock()
    log = ProgressLog("x", total_steps=10, interval=1.0, enabled=False, clock=clock)
    with caplog.at_level(logging.INFO, logger="edgecompress.training"):
        for _ in range(10):
            clock.now += 5.0
            log.step(1, 1, 0.5)
    assert log.lines == 0 and log.done == 10 and not caplog.records


def test_interval_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("EDGECOMPRESS_PROGRESS_SECONDS", "0.5")
    assert progress_interval() == 0.5
    monkeypatch.setenv("EDGECOMPRESS_PROGRESS_SECONDS", "soon")
    assert progress_interval() == 30.0
    monkeypatch.delenv("EDGECOMPRESS_PROGRESS_SECONDS")
    assert progress_interval() == 30.0


def test_image_training_loop_logs_inside_an_epoch(monkeypatch, caplog) -> None:
    """A tiny interval: every step of the one epoch logs (no terminal under pytest)."""
    monkeypatch.setenv("EDGECOMPRESS_PROGRESS_SECONDS", "1e-9")
    monkeypatch.setattr("edgecompress.training.progress_enabled", lambda: False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Linear(4, 2)
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))

    def loss_fn(m, xb, yb, idx):
        return nn.functional.cross_entropy(m(xb), yb)

    with caplog.at_level(logging.INFO, logger="edgecompress.training"):
        train(model, model, loss_fn, x_train=x, y_train=y, x_val=x, y_val=y, epochs=1, lr=0.01,
              weight_decay=0.0, batch_size=16, patience=1, seed=0, dist_info=dist,
              desc="tiny")
    steps = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(steps) == 4 and steps[-1].startswith("tiny epoch 1/1 step 4/4: loss ")


def test_text_training_loop_logs_inside_an_epoch(monkeypatch, caplog) -> None:
    from edgecompress.text import train as text_train

    monkeypatch.setenv("EDGECOMPRESS_PROGRESS_SECONDS", "1e-9")

    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, input_ids, attention_mask, **kw):
            return types.SimpleNamespace(logits=self.head(self.emb(input_ids).mean(1)))

    batches = [(torch.randint(0, 10, (4, 5)), torch.ones(4, 5, dtype=torch.long),
                torch.randint(0, 2, (4,))) for _ in range(3)]
    monkeypatch.setattr(text_train, "batches", lambda data, *a, **k: iter(batches))
    cfg = types.SimpleNamespace(lr=0.01, weight_decay=0.0, epochs=2, batch_size=4,
                                warmup_fraction=0.1)

    class Data(list):
        pass

    train_data = Data(range(12))
    with caplog.at_level(logging.INFO, logger="edgecompress.training"):
        text_train.train(Tiny(), train_data, Data(range(12)), cfg, pad_id=0, seed=0,
                         label="finetune")
    steps = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert len(steps) == 6  # 3 steps x 2 epochs, each past the tiny interval
    assert steps[0].startswith("[finetune] epoch 1/2 step 1/6: loss ")
    assert steps[-1].startswith("[finetune] epoch 2/2 step 6/6")
