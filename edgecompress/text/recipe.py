"""The text-classification recipe (``task: text-classification``, version 1).

A separate, strict pydantic model: the image recipe forbids unknown keys, and a BERT pipeline
needs other sections (tokenizer-backed data, layer maps, head pruning, INT8 method). The gate
section and the gate semantics are the image recipe's own, so ``edgecompress gate`` and
``compare`` judge text reports the same way. Defaults live here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgecompress.errors import ConfigError
from edgecompress.recipe import GateConfig, check_field_range
from edgecompress.recipe_data import check_one_kind_of_limit

TASK = "text-classification"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    _ranges = field_validator("*", mode="after", check_fields=False)(check_field_range)


class TextDataConfig(_Strict):
    """Where the labelled texts are and which columns hold what. Texts stay on disk and are
    read and tokenized per batch, so a corpus of any size fits in memory."""

    path: Path = Field(description="CSV, TSV or JSONL file (one object per line), or a "
                                   "directory written by Hugging Face datasets' save_to_disk.")
    format: Literal["auto", "csv", "tsv", "jsonl", "hf"] = Field(
        "auto", description="auto: a directory is a saved Hugging Face dataset (hf), a file "
                            "goes by its suffix (.csv, .tsv/.tab, .jsonl/.json).")
    text_column: str = Field("text", description="Column/key holding the text.")
    label_column: str = Field("label", description="Column/key holding the class label (hf: a "
                                                   "ClassLabel, integers or strings).")
    labels: list[str] | None = Field(
        None, description="Keep only rows with these labels, in this class order (default: "
                          "a ClassLabel's order, else every label sorted).")
    split_column: str | None = Field(
        None, description="Column whose values train/validation|val|dev/test give the split; "
                          "default: a seeded stratified split (hf DatasetDict: its own train/"
                          "validation/test splits).")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Validation share when the "
                                "data gives no validation split (carved from train).")
    test_fraction: float = Field(0.2, gt=0, lt=0.5, description="Test share when the data "
                                 "gives no test split (carved from train).")
    limit: int | None = Field(None, ge=10, description="Older, blunt option: a stratified "
                              "subsample of at most N rows of ALL the data, before splitting "
                              "(a given test split shrinks too). Prefer train_limit / "
                              "eval_limit; cannot be combined with them.")
    train_limit: int | None = Field(None, gt=0, description="At most this many texts in train "
                                    "+ val together (stratified, seeded); the test split is "
                                    "unchanged, a given one stays whole.")
    eval_limit: int | None = Field(None, gt=0, description="At most this many test texts "
                                   "(stratified, seeded); off by default.")
    name: str | None = Field(None, min_length=1, max_length=200, description="The dataset's "
                             "name in logs and the report (default: the file or directory "
                             "name).")
    max_length: int = Field(128, ge=8, le=512, description="Tokens per text (truncation).")

    @model_validator(mode="after")
    def _one_kind_of_limit(self) -> TextDataConfig:
        return check_one_kind_of_limit(self)


class ScratchConfig(_Strict):
    """A BERT built from a config with random weights and a WordPiece tokenizer trained on the
    training split (no pretrained model is needed, nothing is downloaded)."""

    # Upper bounds far above a model trained from scratch on one machine: a typo like
    # hidden_size: 1e9 must be an error, not an out-of-memory kill.
    layers: int = Field(4, ge=1, le=256)
    hidden_size: int = Field(256, ge=8, le=65_536)
    heads: int = Field(4, ge=1, le=1_024)
    intermediate_size: int = Field(1024, ge=8, le=262_144)
    vocab_size: int = Field(8000, ge=100, le=10_000_000)
    dropout: float = Field(0.1, ge=0, lt=1)


class TrainConfig(_Strict):
    """AdamW with linear warm-up/decay; the best validation epoch is kept."""

    enabled: bool = True
    epochs: int = Field(3, ge=0)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, ge=1)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)


class TeacherConfig(_Strict):
    """The teacher: a local Hugging Face directory, or a BERT built from scratch."""

    path: Path | None = Field(None, description="HF directory (config.json, weights, tokenizer); "
                                                "loaded with local_files_only, never from a hub.")
    trust_remote_code: bool = Field(False, description="Allow the directory's own Python code "
                                                       "(only for directories you trust).")
    scratch: ScratchConfig | None = Field(None, description="Build the teacher instead.")
    finetune: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _one_source(self) -> TeacherConfig:
        if (self.path is None) == (self.scratch is None):
            raise ValueError("give exactly one of teacher.path (a Hugging Face directory) and "
                             "teacher.scratch")
        return self


class StudentConfig(_Strict):
    """DistilBERT-style (a subset of the teacher's layers) and/or narrower."""

    keep_layers: list[int] | None = Field(
        None, description="Teacher layer indices copied into the student (DistilBERT style).")
    num_layers: int | None = Field(
        None, ge=1, description="Alternative to keep_layers: this many, evenly spaced.")
    hidden_size: int | None = Field(None, ge=8, description="Narrower student (random init).")
    num_attention_heads: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=8)

    @model_validator(mode="after")
    def _layers(self) -> StudentConfig:
        if self.keep_layers is not None and self.num_layers is not None:
            raise ValueError("give at most one of keep_layers and num_layers")
        if self.keep_layers is not None and (not self.keep_layers or min(self.keep_layers) < 0):
            raise ValueError("keep_layers: non-empty list of teacher layer indices >= 0")
        return self


class DistillConfig(TrainConfig):
    """loss = kd * T^2 KL(teacher || student) + ce * CE(y) + hidden * MSE(W h_s, h_t)
    + attention * MSE(A_s, A_t) over the mapped layers (TinyBERT)."""

    epochs: int = Field(4, ge=0)
    lr: float = Field(1e-4, gt=0)
    temperature: float = Field(2.0, gt=0)
    kd: float = Field(1.0, ge=0)
    ce: float = Field(0.1, ge=0)
    hidden: float = Field(0.0, ge=0, description="Hidden-state MSE weight (learned projection "
                                                 "when widths differ).")
    attention: float = Field(0.0, ge=0, description="Attention-map MSE weight.")
    layer_map: list[tuple[int, int]] | None = Field(
        None, description="[[student_layer, teacher_layer], ...], 1-based (0 = embeddings); "
                          "default: each student layer to the teacher layer it came from (or "
                          "evenly spaced).")


class PruneConfig(_Strict):
    """Structured pruning of the distilled student, then distillation recovery."""

    enabled: bool = False
    heads_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of heads removed per layer.")
    ffn_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of FFN neurons removed.")
    round_to: int = Field(8, ge=1, description="FFN sizes stay multiples of this.")
    recovery: DistillConfig = Field(default_factory=lambda: DistillConfig(epochs=2, lr=5e-5))


class QuantConfig(_Strict):
    """INT8 for the ONNX Runtime int8 targets."""

    method: Literal["ptq_dynamic", "ptq_static", "qat"] = Field(
        "ptq_dynamic", description="ptq_dynamic: int8 weights, uint8 activations quantized at "
        "run time; ptq_static: QDQ with calibrated uint8 activations; qat: PT2E fake-quant "
        "training of Linear/matmul, then QDQ export.")
    per_channel: bool = True
    embeddings: bool = Field(
        True, description="ptq_dynamic: store the embedding tables int8 too (dequantized after "
        "the lookup); the word-embedding table is most of a small student's file.")
    teacher_reference: bool = Field(
        True, description="Also quantize the FP32 teacher with ONNX Runtime's quantize_dynamic "
        "(the same settings) and bench it in the same rounds: the alternative to distillation "
        "a user would try first (report: targets[].reference).")
    calibration_samples: int = Field(128, ge=1)
    qat: DistillConfig = Field(default_factory=lambda: DistillConfig(epochs=1, lr=2e-5))


class ExportConfig(_Strict):
    """ONNX export (dynamic batch and sequence length) and its parity check."""

    exporter: Literal["torchscript", "dynamo"] = Field(
        "torchscript", description="Exporter of the FP32 teacher and student: torchscript "
        "(ORT's transformer optimizer fuses Attention, SkipLayerNormalization, BiasGelu on its "
        "graph) or dynamo (no Attention fusion). QAT graphs always use dynamo.")
    opset: int = Field(18, ge=18)
    atol: float = Field(1e-3, gt=0, description="Max abs logit diff vs PyTorch.")
    parity_samples: int = Field(64, ge=1)


#: Why a text target cannot be TFLite int8 (checked with litert-torch 0.10.0 and
#: litert-converter 0.5.0; tests/test_text_tflite.py fails once the converter accepts it).
TFLITE_INT8_REFUSAL = (
    "tflite int8 is not available for text-classification: litert-torch cannot convert a PT2E "
    "int8 transformer encoder (its converter rejects the int8 weight of every quantized Linear: "
    "'stablehlo.uniform_dequantize' needs a quantized tensor type, gets tensor<..xi8>). Use "
    "precision: fp32 for a TFLite target, or backend: onnxruntime for int8")


class TextTargetConfig(_Strict):
    """A target, timed at a fixed sequence length: ONNX Runtime (FP32 or INT8) or TFLite/LiteRT
    (FP32; the model is converted at that sequence length)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Target name (default: the "
                      "profile's name).")
    profile: str | None = Field(None, description="A target profile (name or YAML path, "
                                "edgecompress targets lists them) whose settings and budgets "
                                "fill the fields not given here: a local one runs only on a "
                                "machine that matches it (else the target is reported "
                                "skipped), an ssh one on its device.")
    isa: str | None = Field(None, description="The ISA class the profile requires (recorded; "
                            "text INT8 is dynamic quantization, the same on every ISA).")
    backend: Literal["onnxruntime", "tflite", "tensorrt"] = Field(
        "onnxruntime", description="onnxruntime, tflite (LiteRT with XNNPACK; fp32 only for "
        "text: see TFLITE_INT8_REFUSAL) or tensorrt (an NVIDIA GPU or a Jetson; int8 from a "
        "static Q/DQ file with symmetric activations, engine built for seq_len)")
    precision: Literal["fp32", "int8"] = "int8"
    threads: int = Field(1, ge=1)
    batch_size: int = Field(1, ge=1)
    seq_len: int = Field(128, ge=8, le=512)
    warmup: int = Field(10, ge=0)
    runs: int = Field(100, ge=1)
    max_seconds: float | None = Field(None, gt=0)
    min_runs: int = Field(20, ge=1)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, raw: Any) -> Any:
        """A profile fills what the target leaves out (the image recipe's rule). Local and
        ssh profiles on onnxruntime, tflite or tensorrt (a Jetson), and phones over adb on
        tflite (``benchmark_model`` times the FP32 flatbuffer with token ids drawn from the
        data's range)."""
        if not isinstance(raw, dict) or not raw.get("profile"):
            return raw
        from edgecompress.targets import profile_for_validator

        profile = profile_for_validator(raw["profile"])
        kind, backend = profile.connection.kind, profile.backend
        if backend not in ("onnxruntime", "tflite", "tensorrt") or \
                (kind == "adb" and backend != "tflite"):
            raise ValueError(f"profile {profile.name!r} ({backend} over {kind}): "
                             "text-classification targets run on onnxruntime, tflite or "
                             "tensorrt (here or over ssh) or on tflite over adb in this "
                             "version")
        return profile.fill_target(raw)

    @model_validator(mode="after")
    def _tflite_fp32_only(self) -> TextTargetConfig:
        if self.backend == "tflite" and self.precision == "int8":
            raise ValueError(TFLITE_INT8_REFUSAL)
        return self


class TextRecipe(_Strict):
    """A text-classification compression recipe."""

    version: Literal[1]
    task: Literal["text-classification"]
    name: str = "recipe"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Training device (teacher fine-tuning, distillation, pruning "
        "recovery); auto uses CUDA when present. Export, QAT and the engines run on the CPU.")
    threads: int | None = Field(None, ge=1, description="torch threads for training.")
    data: TextDataConfig
    teacher: TeacherConfig
    student: StudentConfig = Field(default_factory=lambda: StudentConfig(num_layers=2))
    distill: DistillConfig = Field(default_factory=DistillConfig)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    quant: QuantConfig = Field(default_factory=QuantConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    targets: list[TextTargetConfig] = Field(default_factory=lambda: [
        TextTargetConfig(name="ort-fp32", precision="fp32"),
        TextTargetConfig(name="ort-int8", precision="int8")])
    gate: GateConfig = Field(default_factory=GateConfig)

    @field_validator("targets")
    @classmethod
    def _unique(cls, value: list[TextTargetConfig]) -> list[TextTargetConfig]:
        names = [t.name for t in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate target names: {', '.join(dupes)}")
        return value


def is_text_recipe(raw: Any) -> bool:
    """Whether a parsed YAML mapping asks for the text pipeline."""
    return isinstance(raw, dict) and raw.get("task") == TASK


def parse_text_recipe(raw: Any, *, source: str = "<recipe>",
                      base_dir: Path | None = None) -> TextRecipe:
    """Validate a mapping; relative paths resolve against ``base_dir``.

    Raises:
        ConfigError: naming ``source`` and the dotted path of every bad key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe must be a mapping, got {type(raw).__name__}")
    try:
        recipe = TextRecipe.model_validate(raw)
    except ValidationError as err:
        lines = [f"{source}: invalid text-classification recipe"]
        for item in err.errors():
            loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
            msg = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            lines.append(f"  {loc}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    base = base_dir or Path.cwd()
    if not recipe.data.path.is_absolute():
        recipe.data.path = (base / recipe.data.path).resolve()
    if recipe.teacher.path is not None and not recipe.teacher.path.is_absolute():
        recipe.teacher.path = (base / recipe.teacher.path).resolve()
    return recipe


def load_text_recipe(path: str | Path) -> TextRecipe:
    """Read and validate a text recipe YAML file."""
    from edgecompress.recipe import load_recipe_file

    return load_recipe_file(path, parse_text_recipe)


def text_recipe_to_dict(recipe: TextRecipe) -> dict[str, Any]:
    """JSON-ready dict of the resolved recipe."""
    return recipe.model_dump(mode="json")
