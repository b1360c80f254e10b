"""The recipe's ``data`` section: where the images come from, how they are split, limited,
normalised and (for real photos) transformed. Part of :mod:`edgecompress.recipe`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from edgecompress.config import _Strict


class PhotoTransformsConfig(_Strict):
    """Real-photo transforms (torchvision transforms v2) for image folders, streamed per batch."""

    preset: Literal["photo"] = Field("photo", description="photo: train RandomResizedCrop + "
                                     "horizontal flip (+ colour jitter / RandAugment); eval "
                                     "Resize + CenterCrop.")
    crop_size: int = Field(224, ge=8, le=4096, description="Side of the square crop the model "
                           "sees (train and eval).")
    resize_size: int | None = Field(None, ge=8, le=8192, description="Eval: shorter side resized "
                                    "to this before the centre crop (default crop_size * "
                                    "256 / 224).")
    scale: tuple[float, float] = Field((0.08, 1.0), description="Train: RandomResizedCrop's "
                                       "area fraction range (min, max), 0 < min <= max <= 1.")
    hflip: bool = Field(True, description="Train: random horizontal flip.")
    color_jitter: float = Field(0.0, ge=0, le=1, description="Train: brightness/contrast/"
                                "saturation jitter strength (0 = off).")
    randaugment: bool = Field(False, description="Train: RandAugment (default settings).")

    @model_validator(mode="after")
    def _scale_range(self) -> PhotoTransformsConfig:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must be (min, max) with 0 < min <= max <= 1, got "
                             f"{list(self.scale)}")
        return self


class DataConfig(_Strict):
    """Where the data comes from and how it is split."""

    source: Literal["digits", "npz", "idx", "imagefolder", "hf"] = Field(
        "digits", description="Dataset kind: built-in sklearn digits, an .npz file, a directory of "
        "MNIST-format IDX files (optionally .gz), an image folder (one subfolder per class; "
        "train/ + test/ subfolders give the test split; or a .csv/.json index of "
        "path,label[,split]), or hf: a Hugging Face dataset directory written by "
        "save_to_disk (train [+ test] splits, an Image column and a label column).")
    path: Path | None = Field(None, description="File or directory for npz/idx/imagefolder; "
                              "relative paths resolve against the recipe's directory.")
    npz_keys: tuple[str, str] = Field(("x", "y"), description="Array keys of inputs and labels in "
                                      "an .npz (x_train/y_train/x_test/y_test are also "
                                      "recognised).")
    image_size: tuple[int, int] | None = Field(None, description="(H, W) to resize image-folder "
                                               "images to.")
    grayscale: bool = Field(False, description="Load image-folder images as one channel.")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Fraction held out for early "
                                "stopping / model selection.")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Fraction held out for the final "
                                 "accuracy numbers (ignored when the data has its own test split).")
    limit: int | None = Field(None, gt=0, description="Older, blunt option: a stratified subsample "
                              "of at most this many samples of ALL the data, taken before "
                              "splitting; a given test split (idx t10k, npz x_test) shrinks in "
                              "proportion (logged and recorded in the report). Prefer train_limit "
                              "/ eval_limit; cannot be combined with them.")
    train_limit: int | None = Field(None, gt=0, description="At most this many samples in train + "
                                    "val together (stratified, seeded); the test split is "
                                    "unchanged, a given one stays whole.")
    eval_limit: int | None = Field(None, gt=0, description="At most this many test samples "
                                   "(stratified, seeded); off by default. Accuracy is then "
                                   "measured on a subset (recorded in the report).")
    name: str | None = Field(None, min_length=1, max_length=200, description="The dataset's "
                             "name in logs and the report (default: the file or directory "
                             "name).")
    calibration_samples: int = Field(256, gt=0, description="Size of the stratified calibration "
                                     "subset sampled from the train split and saved in the run.")
    image_column: str | None = Field(None, min_length=1, max_length=200, description="Source hf: "
                                     "the image column (default image or img).")
    label_column: str | None = Field(None, min_length=1, max_length=200, description="Source hf: "
                                     "the label column (default label or labels).")
    stream: Literal["auto"] | bool = Field("auto", description="true: splits stay on disk "
                                           "(image folders, hf: decoded per batch in DataLoader "
                                           "workers) or in their own dtype (idx memory-mapped, "
                                           "npz: converted per batch); false: float32 arrays in "
                                           "memory; auto: stream above 512 MiB of float32 "
                                           "pixels or with photo transforms.")
    workers: int | None = Field(None, ge=0, le=64, description="DataLoader worker processes for "
                                "streamed images (default: none below 512 images per pass, "
                                "else up to 4, one less than the CPU count).")
    transforms: PhotoTransformsConfig | None = Field(None, description="Real-photo transforms "
                                                     "for image folders (implies streaming; "
                                                     "replaces image_size).")
    mean: list[float] | None = Field(None, min_length=1, max_length=4, description="Per-channel "
                                     "mean of pixels in [0, 1] to normalise with (with std); "
                                     "default: computed on the train split.")
    std: list[float] | None = Field(None, min_length=1, max_length=4, description="Per-channel "
                                    "std to normalise with (with mean), each > 0.")
    stats_samples: int = Field(1000, gt=0, le=1_000_000, description="Streamed image folders: "
                               "mean/std (when not given) are computed on this many seeded train "
                               "images.")

    @model_validator(mode="after")
    def _streaming(self) -> DataConfig:
        if self.source not in ("imagefolder", "hf") and self.transforms is not None:
            raise ValueError(f"transforms needs source: imagefolder or hf (source "
                             f"{self.source!r} holds arrays)")
        if self.transforms is not None and self.image_size is not None:
            raise ValueError("image_size and transforms cannot be combined: the photo "
                             "transforms resize (resize_size) and crop (crop_size) themselves")
        if self.transforms is not None and self.stream is False:
            raise ValueError("transforms decode every image per batch and need streaming; "
                             "remove stream: false")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        if self.std is not None and (len(self.std) != len(self.mean) or min(self.std) <= 0):
            raise ValueError(f"std must have one positive value per mean value, got {self.std}")
        return self

    @model_validator(mode="after")
    def _one_kind_of_limit(self) -> DataConfig:
        return check_one_kind_of_limit(self)


def check_one_kind_of_limit(cfg: Any) -> Any:
    """The old ``limit`` (all data, test split included) and ``train_limit``/``eval_limit``
    exclude each other, in every family's data section."""
    if cfg.limit is not None and (cfg.train_limit is not None or cfg.eval_limit is not None):
        raise ValueError("limit cannot be combined with train_limit / eval_limit (limit "
                         "subsamples all data, test split included); use train_limit and "
                         "eval_limit")
    return cfg
