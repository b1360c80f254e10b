"""The pruned student on disk: a ``torch.export`` program (.pt2) plus its state dict.

A pruned model's layers no longer match the class that built it (a 16-channel conv now has 8),
so a plain state dict cannot be loaded back into ``build_student()``. The ``.pt2`` carries the
graph and the weights together and reloads with ``torch.export.load(path).module()`` in any
process, without edgecompress or the original model class, and it re-exports to ONNX with the
dynamo exporter. It is exported in eval mode (BatchNorm uses its running statistics) with a
dynamic batch dimension, i.e. it is an inference artifact.

The state dict is saved next to it for users who rebuild the pruned architecture themselves;
torch-pruning's own ``tp.state_dict`` is not used because it pickles module objects, which
``torch.load(weights_only=True)`` rightly refuses.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import ModelError
from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)


class ExportedStudent(nn.Module):
    """An inference-only ``torch.export`` module that tolerates ``train()``/``eval()``.

    ``ExportedProgram.module()`` raises on ``.eval()``, which every consumer of a student
    (export, parity, benchmarks) calls. The wrapped graph was exported in eval mode, so the
    mode flag is recorded and otherwise ignored.
    """

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.program = program

    def train(self, mode: bool = True) -> ExportedStudent:
        """Record the mode only: the exported graph always runs with eval semantics."""
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


def save_pruned(model: nn.Module, sample: torch.Tensor, program_path: Path,
                state_path: Path) -> tuple[Path, Path]:
    """Export ``model`` (eval mode, CPU, dynamic batch) to ``program_path``; save its state dict.

    Args:
        model: The pruned model; its mode and device are restored.
        sample: An input batch of at least 2 samples (batch 1 would be specialised).
        program_path: Destination ``.pt2``.
        state_path: Destination state dict (plain tensors).

    Raises:
        ModelError: ``torch.export`` cannot capture the model.
    """
    was_training = model.training
    device = next(model.parameters()).device
    model.cpu().eval()
    try:
        batch = torch.export.Dim("batch")
        try:
            program = torch.export.export(model, (sample.cpu(),), dynamic_shapes=({0: batch},))
        except Exception as exc:
            raise ModelError(f"cannot torch.export the pruned student: {type(exc).__name__}: "
                             f"{exc}") from exc
        with atomic_path(program_path) as tmp:
            torch.export.save(program, str(tmp))
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(state_path) as tmp:
            torch.save(state, tmp)
    finally:
        model.to(device).train(was_training)
    logger.info("saved pruned student: %s (+ %s)", program_path, state_path.name)
    return program_path, state_path


def load_pruned(path: Path) -> ExportedStudent:
    """Reload a saved ``.pt2`` as a module (no pickled code runs; no model class is needed).

    Raises:
        ModelError: The file is missing or not a ``torch.export`` archive.
    """
    try:
        program = torch.export.load(str(path)).module()
    except Exception as exc:  # noqa: BLE001 - any failure means the artifact is unusable
        raise ModelError(f"{path}: cannot load the pruned student: {type(exc).__name__}: "
                         f"{exc}") from None
    return ExportedStudent(program)
