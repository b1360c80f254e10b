"""Helpers shared by stages: building models from the recipe and saving/loading their weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress.errors import ModelError
from edgecompress.io import atomic_path
from edgecompress.recipe import ModelSpec
from edgecompress.stages.base import Context


def spec_files(spec: ModelSpec, role: str) -> dict[str, Path]:
    """User files a model spec reads (weights, TorchScript/.pt2), keyed for stage input hashes."""
    return {f"{role}_{key}": getattr(spec, key) for key in ("weights", "path")
            if getattr(spec, key) is not None}


def check_model_sources(recipe) -> None:
    """Resolve model ids and factories without building anything or reading data.

    A missing package (exit 3, with the install line), an unknown architecture name or a
    factory module that does not import is therefore reported by ``validate`` and before the
    data stage, never after training.
    """
    from edgecompress.models import resolve_factory
    from edgecompress.models.zoo import check_model_id

    for role in ("teacher", "student"):
        spec: ModelSpec = getattr(recipe, role)
        if spec.kind == "zoo" and spec.id:
            check_model_id(spec.id)
        elif spec.kind == "factory" and spec.factory:
            resolve_factory(spec.factory)


def build_from_spec(spec: ModelSpec, ctx: Context, role: str) -> nn.Module:
    """Instantiate the model a recipe section describes, for this dataset's shape and classes."""
    from edgecompress.models import load_model

    bundle = ctx.bundle
    return load_model(spec.kind, family=spec.family, width=spec.width, depth=spec.depth,
                      factory=spec.factory, kwargs=dict(spec.kwargs), weights=spec.weights,
                      path=spec.path, trust_pickle=spec.trust_pickle, model_id=spec.id,
                      id_classes=spec.num_classes, num_classes=bundle.num_classes,
                      in_channels=bundle.input_shape[0], role=role)


def build_teacher_arch(ctx: Context) -> tuple[nn.Module, str]:
    """The teacher as given, with its head replaced when its class count differs from the data.

    Returns the model and the dotted name of its head.
    """
    from edgecompress.models import check_model_io, replace_head

    model = build_from_spec(ctx.recipe.teacher, ctx, "teacher")
    check_model_io(model, ctx.bundle.input_shape, None, role="teacher")
    head = replace_head(model, ctx.bundle.num_classes, ctx.recipe.stages.finetune.head)
    check_model_io(model, ctx.bundle.input_shape, ctx.bundle.num_classes, role="teacher")
    return model, head


def build_student(ctx: Context) -> nn.Module:
    """A freshly initialised student (seeded, so the distilled and baseline runs start equal)."""
    from edgecompress.models import check_model_io

    torch.manual_seed(ctx.recipe.seed)
    model = build_from_spec(ctx.recipe.student, ctx, "student")
    check_model_io(model, ctx.bundle.input_shape, ctx.bundle.num_classes, role="student")
    return model


def save_state(model: nn.Module, path: Path) -> Path:
    """Save a state dict atomically (plain tensors: reloadable with weights_only=True)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(model: nn.Module, path: Path) -> nn.Module:
    """Load weights this run saved earlier (never executes pickled code)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as err:  # noqa: BLE001 - any failure means the artifact is unusable
        raise ModelError(f"{path}: cannot load saved weights: {err}") from None
    return model.eval()


def load_teacher(ctx: Context) -> nn.Module:
    """The teacher the finetune stage produced."""
    model, _ = build_teacher_arch(ctx)
    return load_state(model, ctx.run_dir / "finetune" / "teacher.pt")


def final_student_source(ctx: Context) -> Path:
    """The artifact holding the student that gets exported and benchmarked.

    The pruned ``torch.export`` program when the prune stage is enabled, else the distilled
    state dict; later stages (QAT) point this at their own output, and export/bench/report
    follow without changes.
    """
    if ctx.recipe.stages.prune.enabled:
        return ctx.run_dir / "prune" / "student.pt2"
    return ctx.run_dir / "distill" / "student.pt"


def load_final_student(ctx: Context) -> nn.Module:
    """The student that gets exported and benchmarked (see :func:`final_student_source`).

    A pruned student no longer fits ``build_student()``'s layer shapes, so it is reloaded from
    its ``.pt2`` program (an inference-only module that accepts ``eval()``).
    """
    if ctx.recipe.stages.prune.enabled:
        from edgecompress.prune.artifact import load_pruned

        return load_pruned(final_student_source(ctx))
    return load_state(build_student(ctx), final_student_source(ctx))


def load_float_student(ctx: Context) -> nn.Module:
    """The final float student as an ordinary, trainable module (pruned shapes rebuilt).

    QAT needs it (a ``torch.export`` program has BatchNorm frozen), and so does the TFLite
    converter: re-exporting the pruned program decomposes ``Linear`` on 4-D tensors (ConvNeXt's
    NHWC blocks) into a rank-4 batch matmul that LiteRT rejects, while the module converts.
    """
    if ctx.recipe.stages.prune.enabled:
        from edgecompress.prune.rebuild import rebuild_pruned

        state = torch.load(ctx.run_dir / "prune" / "student_state.pt", map_location="cpu",
                           weights_only=True)
        return rebuild_pruned(build_student(ctx), state)
    return load_state(build_student(ctx), ctx.run_dir / "distill" / "student.pt")
