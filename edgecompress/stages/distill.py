"""The image family's distill steps (run by the shared :class:`DistillStage`): train the
student from the frozen teacher, and keep it only if it pays.

Loss = alpha * soft + (1 - alpha) * CE(y), where soft is Hinton's T^2 * KL (default), Decoupled
KD or DIST (``stages.distill.loss``), plus optional feature matching (MSE) terms through learned
projections. The teacher stays in eval mode without gradients.

Optionally a budgeted search (``stages.distill.search``) picks temperature / alpha / loss on the
validation split first. With ``baseline`` on, the same student is also trained on hard labels
only (same initialisation, epochs and optimiser, so the comparison isolates what the teacher
adds), and whichever of the two is better on the validation split is carried forward as
``distill/student.pt`` (the file later stages read): distillation is never silently worse.
Runs unchanged under ``torchrun`` (DDP).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.distributed import DistInfo
from edgecompress.recipe import DistillConfig, recipe_to_dict
from edgecompress.stages.augment import cutmix, mixup, random_shift
from edgecompress.stages.common import build_student, load_teacher, save_state, spec_files
from edgecompress.stages.feature_match import resolve_features
from edgecompress.stages.losses import (
    FeatureTaps,
    distillation_loss,
    feature_mse,
    make_projection,
)
from edgecompress.stages.student import DistillSteps
from edgecompress.training import (
    TrainResult,
    accuracy,
    augments,
    predict_logits,
    seed_everything,
    train,
)

logger = logging.getLogger(__name__)


class StudentWithProjections(nn.Module):
    """The student plus its feature projections, trained (and DDP-wrapped) as one module."""

    def __init__(self, student: nn.Module, projections: dict[str, nn.Module]) -> None:
        super().__init__()
        self.student = student
        self.projections = nn.ModuleDict({k.replace(".", "__"): v for k, v in projections.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


@dataclass(frozen=True)
class Setting:
    """One distillation setting: the soft loss, its temperature and its weight alpha."""

    loss: str
    temperature: float
    alpha: float

    def describe(self) -> str:
        """Short text for logs, e.g. ``kd T=4 alpha=0.9``."""
        return f"{self.loss} T={self.temperature:g} alpha={self.alpha:g}"


def search_candidates(cfg: DistillConfig) -> list[Setting]:
    """The settings a search tries: the grid of the listed values (unlisted ones pinned to the
    stage's), evenly thinned to ``max_candidates`` when larger (first and last always kept)."""
    search = cfg.search
    if search is None:
        return [Setting(cfg.loss, cfg.temperature, cfg.alpha)]
    grid = [Setting(loss, float(t), float(a)) for loss, t, a in itertools.product(
        search.losses or [cfg.loss], search.temperatures or [cfg.temperature],
        search.alphas or [cfg.alpha])]
    grid = list(dict.fromkeys(grid))  # drop duplicates, keep order
    if len(grid) <= search.max_candidates:
        return grid
    picks = np.linspace(0, len(grid) - 1, search.max_candidates).round().astype(int)
    return [grid[i] for i in dict.fromkeys(picks.tolist())]


def choose_student(distilled_val: float, baseline_val: float) -> str:
    """``"distilled"`` unless the hard-label student is strictly better on validation."""
    return "baseline" if baseline_val > distilled_val else "distilled"


def train_student(teacher: nn.Module, student: nn.Module, data: Any, cfg: DistillConfig,
                  setting: Setting, *, seed: int, dist_info: DistInfo, role: str,
                  epochs: int | None = None, features: list | None = None,
                  teacher_logits: torch.Tensor | None = None) -> TrainResult:
    """Train ``student`` against the frozen ``teacher`` with ``setting`` (alpha 0: labels only).

    Args:
        data: a dataset bundle (``train``/``val`` splits with ``x``/``y`` arrays).
        cfg: the stage's settings (optimiser, schedule, augmentation, DKD weight).
        epochs: overrides ``cfg.epochs`` (search candidates).
        features: feature-matching pairs (``FeatureMatch``), empty for logits only.
        teacher_logits: the teacher's logits on ``data.train.x`` when already computed.
    """
    device = dist_info.device
    alpha = setting.alpha
    features = features or []
    t_taps = s_taps = None
    projections: dict[str, nn.Module] = {}
    if features:
        t_taps = FeatureTaps(teacher, [f.teacher for f in features], "teacher")
        s_taps = FeatureTaps(student, [f.student for f in features], "student")
        probe = torch.from_numpy(data.train.x[:2]).to(device)
        with torch.no_grad():
            teacher(probe)
            was = student.training
            student.eval()
            student(probe)
            student.train(was)
        for f in features:
            projections[f.student] = make_projection(s_taps.outputs[f.student],
                                                     t_taps.outputs[f.teacher]).to(device)
        teacher_logits = None
    elif augments(data.train.x) or cfg.augment != "none":
        teacher_logits = None  # random transforms: the teacher labels each augmented batch
    elif alpha > 0 and teacher_logits is None:
        # No feature terms: the teacher's logits never change, so compute them once.
        teacher_logits = torch.from_numpy(
            predict_logits(teacher, data.train.x, device)).to(device)
    trainable = StudentWithProjections(student, projections)
    kw = {"alpha": alpha, "temperature": setting.temperature, "loss": setting.loss,
          "dkd_beta": cfg.dkd_beta}

    def loss_fn(module: nn.Module, xb: torch.Tensor, yb: torch.Tensor, idx: torch.Tensor):
        # Augment first: the teacher (logits and feature taps) sees exactly the student's input.
        xb, perm, lam = augment_batch(xb, cfg.augment)
        logits = module(xb)
        t_logits = None
        if teacher_logits is not None:  # no augmentation, no feature terms: precomputed
            t_logits = teacher_logits[idx.to(device)]
        elif alpha > 0 or features:
            with torch.no_grad():
                t_logits = teacher(xb)
        loss = mixed_distillation_loss(logits, t_logits, yb, perm, lam, **kw)
        for f in features:
            proj = trainable.projections[f.student.replace(".", "__")]
            loss = loss + f.weight * feature_mse(proj(s_taps.outputs[f.student]),
                                                 t_taps.outputs[f.teacher].detach())
        return loss

    try:
        return train(student, trainable, loss_fn, x_train=data.train.x, y_train=data.train.y,
                     x_val=data.val.x, y_val=data.val.y, epochs=epochs or cfg.epochs, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
                     patience=cfg.patience, seed=seed, dist_info=dist_info,
                     desc=f"distill[{role}]")
    finally:
        for taps in (t_taps, s_taps):
            if taps is not None:
                taps.remove()


def run_search(teacher: nn.Module, make_student: Callable[[], nn.Module], data: Any,
               cfg: DistillConfig, *, seed: int, dist_info: DistInfo,
               teacher_logits: torch.Tensor | None = None
               ) -> tuple[Setting, dict[str, Any], nn.Module | None]:
    """Train every candidate of :func:`search_candidates` and pick the best on validation.

    Returns:
        The chosen setting, the report entry (candidates with their validation accuracy, the
        choice, epochs per candidate) and, when candidates trained for the stage's full epochs,
        the winning student itself (else None: the caller retrains it).
    """
    epochs = cfg.search.epochs or cfg.epochs
    candidates, best, best_model = [], None, None
    for i, setting in enumerate(search_candidates(cfg)):
        seed_everything(seed)
        student = make_student()
        result = train_student(teacher, student, data, cfg, setting, seed=seed,
                               dist_info=dist_info, role=f"search {i + 1}: {setting.describe()}",
                               epochs=epochs, features=cfg.features,
                               teacher_logits=teacher_logits)
        entry = {**asdict(setting), "val_accuracy": result.best_val_accuracy,
                 "best_epoch": result.best_epoch}
        candidates.append(entry)
        if dist_info.is_main:
            logger.info("distill search %d: %s -> val accuracy %.4f", i + 1,
                        setting.describe(), result.best_val_accuracy)
        if best is None or result.best_val_accuracy > best[1]:
            best = (setting, result.best_val_accuracy)
            best_model = student if epochs == cfg.epochs else None
    chosen, val = best
    info = {"epochs_per_candidate": epochs, "candidates": candidates,
            "chosen": {**asdict(chosen), "val_accuracy": val}}
    return chosen, info, best_model


class ImageDistillSteps(DistillSteps):
    """The image family's distillation (run by the shared distill stage): ``distill/student.pt``
    (the student later stages read). With the baseline on, also ``distill/distilled.pt`` and
    ``distill/baseline.pt``, and student.pt is whichever of the two scored higher on the
    validation split."""

    def config(self) -> dict[str, Any]:
        raw = recipe_to_dict(self.ctx.recipe)
        return {"student": raw["student"], "distill": raw["stages"]["distill"],
                "seed": raw["seed"]}

    def inputs(self) -> dict[str, Any]:
        ctx = self.ctx
        return {"teacher": ctx.run_dir / "finetune" / "teacher.pt",
                **spec_files(ctx.recipe.student, "student")}

    def distill(self) -> tuple[dict[str, nn.Module], str, dict[str, Any]]:
        ctx = self.ctx
        cfg = ctx.recipe.stages.distill
        device, bundle, seed = ctx.dist.device, ctx.bundle, ctx.recipe.seed
        teacher = load_teacher(ctx).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        metrics: dict[str, Any] = {"device": str(device)}
        if cfg.enabled and cfg.features == "auto":  # resolved once: every run uses these pairs
            probe = torch.from_numpy(bundle.train.x[:2]).to(device)
            cfg, metrics["feature_pairs"] = resolve_features(cfg, teacher, build_student(ctx)
                                                             .to(device), probe)

        def make_student() -> nn.Module:
            return build_student(ctx).to(device)

        teacher_logits = None
        if (cfg.enabled and not cfg.features and cfg.augment == "none"
                and not augments(bundle.train.x)):
            teacher_logits = torch.from_numpy(
                predict_logits(teacher, bundle.train.x, device)).to(device)
        setting = Setting(cfg.loss, cfg.temperature, cfg.alpha if cfg.enabled else 0.0)
        search, searched = None, None
        if cfg.enabled and cfg.search is not None:
            setting, search, searched = run_search(teacher, make_student, bundle, cfg, seed=seed,
                                                   dist_info=ctx.dist,
                                                   teacher_logits=teacher_logits)
        runs = [("student", setting, cfg.features if cfg.enabled else [])]
        if cfg.enabled and cfg.baseline:
            runs.append(("baseline", Setting(cfg.loss, cfg.temperature, 0.0), []))
        models: dict[str, nn.Module] = {}
        for role, run_setting, features in runs:
            if role == "student" and searched is not None:
                student, result = searched, None  # the search already trained it in full
            else:
                seed_everything(seed)
                student = make_student()
                result = train_student(teacher, student, bundle, cfg, run_setting, seed=seed,
                                       dist_info=ctx.dist, role=role, features=features,
                                       teacher_logits=teacher_logits)
            models[role] = student
            metrics[role] = _role_metrics(student, result, run_setting, bundle, device, search)
            if ctx.dist.is_main:
                logger.info("%s: test accuracy %.4f", role, metrics[role]["test_accuracy"])
        metrics["teacher_test_accuracy"] = accuracy(teacher, bundle.test.x, bundle.test.y, device)
        kept = "student"
        if "baseline" in metrics:
            summary = distillation_summary(metrics["student"], metrics["baseline"], search)
            metrics["distillation"] = summary
            metrics["distillation_gain_pp"] = summary["gain_pp"]
            kept = "student" if summary["kept"] == "distilled" else "baseline"
            if ctx.dist.is_main:
                _log_choice(summary)
        elif search is not None:
            metrics["distillation"] = distillation_summary(metrics["student"], None, search)
        metrics["kept"] = "baseline" if kept == "baseline" else "distilled"
        metrics["final"] = {k: metrics[kept][k] for k in ("val_accuracy", "test_accuracy")}
        return models, kept, metrics

    def save(self, models: dict[str, nn.Module], kept: str, out_dir: Any) -> dict[str, Any]:
        outputs = {"student": save_state(models[kept].cpu(), out_dir / "student.pt")}
        if "baseline" in models:
            outputs["distilled"] = save_state(models["student"].cpu(), out_dir / "distilled.pt")
            outputs["baseline"] = save_state(models["baseline"].cpu(), out_dir / "baseline.pt")
        return outputs

    def train_one(self, teacher: nn.Module, student: nn.Module, alpha: float,
                  features: list, role: str) -> TrainResult:
        """One training run with the recipe's settings and ``alpha`` (kept for benchmarks)."""
        ctx = self.ctx
        cfg = ctx.recipe.stages.distill
        return train_student(teacher, student, ctx.bundle, cfg,
                             Setting(cfg.loss, cfg.temperature, alpha), seed=ctx.recipe.seed,
                             dist_info=ctx.dist, role=role, features=features)


def _role_metrics(student: nn.Module, result: TrainResult | None, setting: Setting, data: Any,
                  device: torch.device, search: dict[str, Any] | None) -> dict[str, Any]:
    out = {"test_accuracy": accuracy(student, data.test.x, data.test.y, device),
           "alpha": setting.alpha, "temperature": setting.temperature, "loss": setting.loss}
    if result is None:  # the search's winner, trained for the full epochs there
        out["val_accuracy"] = search["chosen"]["val_accuracy"]
        out["best_epoch"] = next(c["best_epoch"] for c in search["candidates"]
                                 if c["val_accuracy"] == out["val_accuracy"])
        return out
    out.update(val_accuracy=result.best_val_accuracy, best_epoch=result.best_epoch,
               epochs_run=result.epochs_run, history=result.history)
    return out


def distillation_summary(distilled: dict[str, Any], baseline: dict[str, Any] | None,
                         search: dict[str, Any] | None) -> dict[str, Any]:
    """The report's ``distillation`` block: both students' val/test accuracy, the gains in pp
    (distilled minus hard-label), which one was carried forward, the settings and the search."""
    summary: dict[str, Any] = {
        "loss": distilled["loss"], "temperature": distilled["temperature"],
        "alpha": distilled["alpha"],
        "distilled": {k: distilled[k] for k in ("val_accuracy", "test_accuracy")},
        "baseline": None, "gain_pp": None, "val_gain_pp": None, "kept": "distilled",
        "search": search}
    if baseline is not None:
        summary["baseline"] = {k: baseline[k] for k in ("val_accuracy", "test_accuracy")}
        summary["gain_pp"] = round(100 * (distilled["test_accuracy"]
                                          - baseline["test_accuracy"]), 3)
        summary["val_gain_pp"] = round(100 * (distilled["val_accuracy"]
                                              - baseline["val_accuracy"]), 3)
        summary["kept"] = choose_student(distilled["val_accuracy"], baseline["val_accuracy"])
    return summary


def _log_choice(summary: dict[str, Any]) -> None:
    d, b = summary["distilled"], summary["baseline"]
    text = (f"validation: distilled {d['val_accuracy']:.4f} vs hard-label {b['val_accuracy']:.4f} "
            f"({summary['val_gain_pp']:+.2f} pp); test: {d['test_accuracy']:.4f} vs "
            f"{b['test_accuracy']:.4f} ({summary['gain_pp']:+.2f} pp)")
    if summary["kept"] == "distilled":
        logger.info("distill: carrying the distilled student forward (%s)", text)
    else:
        logger.warning("distill: distillation did not pay, carrying the hard-label student "
                       "forward instead (%s)", text)


def augment_batch(xb: torch.Tensor, augment: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Apply ``stages.distill.augment`` to a batch: (augmented batch, the mixing permutation or
    None, lambda = the weight of each image's own label)."""
    if "shift" in augment:
        xb = random_shift(xb)
    if "mixup" in augment:
        return mixup(xb)
    if "cutmix" in augment:
        return cutmix(xb)
    return xb, None, 1.0


def mixed_distillation_loss(logits: torch.Tensor, t_logits: torch.Tensor | None,
                            yb: torch.Tensor, perm: torch.Tensor | None, lam: float,
                            **kw: Any) -> torch.Tensor:
    """:func:`distillation_loss` whose hard-label term is mixed like the batch (lambda on each
    image's label, 1 - lambda on its partner's); the soft term is the teacher's label of the
    mixed image itself, so it is the same in both halves."""
    out = distillation_loss(logits, t_logits, yb, **kw)
    if perm is not None:
        out = lam * out + (1 - lam) * distillation_loss(logits, t_logits, yb[perm], **kw)
    return out


def augmented_loss(module: nn.Module, teacher: nn.Module | None, xb: torch.Tensor,
                   yb: torch.Tensor, augment: str, *, alpha: float, temperature: float,
                   loss: str = "kd", dkd_beta: float = 8.0) -> torch.Tensor:
    """Distillation (or hard-label) loss on an augmented batch the teacher labels afresh."""
    xb, perm, lam = augment_batch(xb, augment)
    logits = module(xb)
    t_logits = None
    if teacher is not None:
        with torch.no_grad():
            t_logits = teacher(xb)
    kw = {"alpha": alpha, "temperature": temperature, "loss": loss, "dkd_beta": dkd_beta}
    return mixed_distillation_loss(logits, t_logits, yb, perm, lam, **kw)

