"""Training steps of the text family, run by the shared teacher, distill and prune stages
(:mod:`edgecompress.stages.teacher`, :mod:`edgecompress.stages.student`).

Each writes a Hugging Face directory (``save_pretrained`` of model and tokenizer) so every
intermediate model is usable on its own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from edgecompress.errors import ModelError
from edgecompress.io import sha256_file
from edgecompress.stages.student import DistillSteps, PruneSteps
from edgecompress.stages.teacher import TeacherSteps
from edgecompress.text.context import TextContext
from edgecompress.text.recipe import text_recipe_to_dict

logger = logging.getLogger(__name__)


def hf_outputs(directory: Path) -> dict[str, Path]:
    """The files of a saved HF directory, as stage outputs (hashed for resume)."""
    return {f"{directory.name}/{p.name}": p for p in sorted(directory.iterdir()) if p.is_file()}


def dir_fingerprint(directory: Path) -> str:
    """Content hash of a user's HF directory (every file; names included)."""
    from edgecompress.io import sha256_json

    files = sorted(p for p in directory.rglob("*") if p.is_file() and ".git" not in p.parts)
    return sha256_json({str(p.relative_to(directory)): sha256_file(p) for p in files})


class TextTeacherSteps(TeacherSteps):
    """The text family's teacher (the shared teacher stage, named ``teacher``): a Hugging Face
    directory adopted, or a BERT built from a config with a WordPiece tokenizer trained on the
    training texts (rank 0 trains it and broadcasts it); fine-tuned; ``teacher/model/``."""

    ctx: TextContext

    def config(self) -> dict[str, Any]:
        raw = text_recipe_to_dict(self.ctx.recipe)
        return {"teacher": raw["teacher"], "max_length": raw["data"]["max_length"]}

    def fingerprints(self) -> dict[str, str]:
        ctx = self.ctx
        fp = {"dataset": ctx.bundle.fingerprint}
        if ctx.recipe.teacher.path is not None:
            fp["teacher_dir"] = dir_fingerprint(ctx.recipe.teacher.path)
        return fp

    def build(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from edgecompress.text.models import load_hf, scratch_teacher

        ctx = self.ctx
        cfg, b = ctx.recipe.teacher, ctx.bundle
        if cfg.scratch is not None:
            from edgecompress.distributed import broadcast_object
            from edgecompress.text.models import train_wordpiece

            tokenizer = broadcast_object(train_wordpiece(
                b.train.texts.chunks(), cfg.scratch.vocab_size, ctx.recipe.data.max_length)
                if ctx.dist.is_main else None)
            model, tokenizer = scratch_teacher(cfg.scratch, None, b.classes,
                                               ctx.recipe.data.max_length, ctx.recipe.seed,
                                               tokenizer=tokenizer)
        else:
            model, tokenizer = load_hf(cfg.path, num_labels=b.num_classes,
                                       trust_remote_code=cfg.trust_remote_code,
                                       id2label=dict(enumerate(b.classes)))
        ctx.set_tokenizer(tokenizer)
        return model, {"source": str(cfg.path) if cfg.path else "scratch"}

    def finetune(self, model: torch.nn.Module) -> dict[str, Any]:
        from edgecompress.text.train import train

        ctx, cfg = self.ctx, self.ctx.recipe.teacher.finetune
        if not (cfg.enabled and cfg.epochs > 0):
            return {}
        torch.manual_seed(ctx.recipe.seed)
        return {"finetune": train(model, ctx.encoded("train"), ctx.encoded("val"), cfg,
                                  ctx.pad_id, seed=ctx.recipe.seed, label="teacher",
                                  dist_info=ctx.dist)}

    def score(self, model: torch.nn.Module) -> dict[str, Any]:
        from edgecompress.text.models import model_summary
        from edgecompress.text.train import accuracy

        return {"test_accuracy": accuracy(model, self.ctx.encoded("test"), self.ctx.pad_id),
                "summary": model_summary(model)}

    def save(self, model: torch.nn.Module, out_dir: Path) -> dict[str, Path]:
        from edgecompress.text.models import save_hf

        return hf_outputs(save_hf(model, self.ctx.tokenizer, out_dir / "model"))


def load_run_model(directory: Path) -> torch.nn.Module:
    """A model this run saved (eager attention, eval mode)."""
    from edgecompress.text.models import load_hf

    model, _ = load_hf(directory)
    return model


def make_loss(ctx: TextContext, cfg: Any, student, teacher, kept: list[int] | None):
    """The distillation loss for ``cfg`` (distill or recovery settings)."""
    from edgecompress.text.losses import TextDistillLoss, check_layer_map, default_layer_map
    from edgecompress.text.models import num_layers

    s_layers, t_layers = num_layers(student), num_layers(teacher)
    if cfg.layer_map is not None:
        layer_map = [tuple(p) for p in cfg.layer_map]
    elif kept is not None:
        layer_map = default_layer_map(kept)
    else:  # evenly spaced, as the student was built
        from edgecompress.text.models import kept_layers

        layer_map = default_layer_map(kept_layers(ctx.recipe.student, t_layers))
    check_layer_map(layer_map, s_layers, t_layers)
    return TextDistillLoss(temperature=cfg.temperature, kd=cfg.kd, ce=cfg.ce, hidden=cfg.hidden,
                           attention=cfg.attention, layer_map=layer_map,
                           student_width=student.config.hidden_size,
                           teacher_width=teacher.config.hidden_size)


class TextDistillSteps(DistillSteps):
    """The text family's distillation (run by the shared distill stage): a student built from
    the teacher (its layers copied, or narrower), trained with logit KD + CE and optional
    TinyBERT hidden-state and attention terms; ``distill/model/``."""

    ctx: TextContext

    def config(self) -> dict[str, Any]:
        raw = text_recipe_to_dict(self.ctx.recipe)
        return {"student": raw["student"], "distill": raw["distill"], "seed": raw["seed"]}

    def inputs(self) -> dict[str, Path]:
        return {"teacher": self.ctx.run_dir / "teacher" / "stage.json"}

    def distill(self) -> tuple[dict[str, torch.nn.Module], str, dict[str, Any]]:
        from edgecompress.text.models import build_student, model_summary
        from edgecompress.text.train import accuracy, train

        ctx = self.ctx
        teacher = load_run_model(ctx.teacher_dir)
        student, kept = build_student(teacher, ctx.recipe.student, ctx.recipe.seed)
        teacher.to(ctx.dist.device)
        student.to(ctx.dist.device)
        cfg = ctx.recipe.distill
        loss = make_loss(ctx, cfg, student, teacher, kept)
        metrics: dict[str, Any] = {"kept_layers": kept, "layer_map": loss.layer_map,
                                   "accuracy_before": accuracy(student, ctx.encoded("test"),
                                                               ctx.pad_id)}
        torch.manual_seed(ctx.recipe.seed)
        metrics["train"] = train(student, ctx.encoded("train"), ctx.encoded("val"), cfg,
                                 ctx.pad_id, seed=ctx.recipe.seed, teacher=teacher,
                                 loss_fn=loss, label="distill", dist_info=ctx.dist)
        metrics["test_accuracy"] = accuracy(student, ctx.encoded("test"), ctx.pad_id)
        metrics["summary"] = model_summary(student)
        if ctx.dist.is_main:
            logger.info("student test accuracy %.4f", metrics["test_accuracy"])
        return {"student": student}, "student", metrics

    def save(self, models: dict[str, torch.nn.Module], kept: str, out_dir: Path
             ) -> dict[str, Path]:
        from edgecompress.text.models import save_hf

        return hf_outputs(save_hf(models[kept].cpu(), self.ctx.tokenizer, out_dir / "model"))


class TextPruneSteps(PruneSteps):
    """The text family's pruning (run by the shared prune stage): attention heads and FFN
    neurons removed, recovered with distillation; ``prune/model/``, checked to reload with
    ``from_pretrained`` to the same logits."""

    ctx: TextContext

    @property
    def enabled(self) -> bool:
        return self.ctx.recipe.prune.enabled

    def config(self) -> dict[str, Any]:
        return {"prune": text_recipe_to_dict(self.ctx.recipe)["prune"]}

    def inputs(self) -> dict[str, Path]:
        return {"distill": self.ctx.run_dir / "distill" / "stage.json"}

    def prune(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        from edgecompress.text.data import collate
        from edgecompress.text.models import model_summary
        from edgecompress.text.prune import prune_student
        from edgecompress.text.train import accuracy, train

        ctx = self.ctx
        cfg = ctx.recipe.prune
        teacher = load_run_model(ctx.teacher_dir)
        student = load_run_model(ctx.run_dir / "distill" / "model")
        before = model_summary(student)
        ids, mask = collate(ctx.encoded("val").head(4), ctx.pad_id)
        plan = prune_student(student, cfg, {"input_ids": ids, "attention_mask": mask})
        metrics: dict[str, Any] = {**plan, "summary_before": before,
                                   "accuracy_pruned": accuracy(student, ctx.encoded("test"),
                                                               ctx.pad_id)}
        if cfg.recovery.epochs > 0:
            teacher.to(ctx.dist.device)
            student.to(ctx.dist.device)
            loss = make_loss(ctx, cfg.recovery, student, teacher, None)
            torch.manual_seed(ctx.recipe.seed)
            metrics["recovery"] = train(student, ctx.encoded("train"), ctx.encoded("val"),
                                        cfg.recovery, ctx.pad_id, seed=ctx.recipe.seed,
                                        teacher=teacher, loss_fn=loss, label="recovery",
                                        dist_info=ctx.dist)
        metrics["test_accuracy"] = accuracy(student, ctx.encoded("test"), ctx.pad_id)
        metrics["summary"] = model_summary(student)
        return student, metrics

    def save(self, model: torch.nn.Module, out_dir: Path
             ) -> tuple[dict[str, Path], dict[str, Any]]:
        from edgecompress.text.models import save_hf
        from edgecompress.text.train import predict

        ctx = self.ctx
        out = save_hf(model.cpu(), ctx.tokenizer, out_dir / "model")
        reloaded = load_run_model(out)
        sample = ctx.encoded("test")
        diff = float(abs(predict(reloaded, sample, ctx.pad_id)
                         - predict(model, sample, ctx.pad_id)).max())
        if diff > 1e-4:
            raise ModelError(f"{out}: the pruned student does not reload with from_pretrained "
                             f"(logits differ by {diff:.3g})")
        return hf_outputs(out), {"reload_max_abs_diff": diff}
