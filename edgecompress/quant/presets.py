"""INT8 presets for ONNX targets: ``ort-x86-*`` / ``ort-arm64`` (ONNX Runtime) and ``tensorrt``.

Both use the project's annotator (:mod:`edgecompress.quant.annotate`) on a ``torch.export`` graph
and differ only in the quantization specs, which is where the hardware differs:

``ort-x86-vnni`` / ``ort-x86-avx2`` / ``ort-arm64`` (``ort-x86`` picks one per target ISA)
    uint8 asymmetric activations, int8 symmetric per-channel weights (axis 0), Q after every
    conv/linear/add output. ONNX Runtime's CPU kernels (QLinearConv, QGemm, QLinearMatMul,
    QLinearAdd; VNNI ``vpdpbusd`` multiplies *unsigned* by *signed* bytes) fuse a QDQ group fully
    only in this form; signed activations leave about half the convs in FP32 here. Without VNNI
    the weights are 7-bit (|w| <= 63) so ORT's vpmaddubsw cannot saturate (:mod:`edgecompress.isa`).
``tensorrt``
    int8 symmetric per-tensor activations (zero point 0), int8 symmetric per-channel weights on
    axis 0, float bias, Q/DQ on conv/linear inputs and on residual-add inputs. TensorRT only
    accepts symmetric INT8 and fuses exactly these patterns; an int32 bias DQ is rejected.

The converted model is exported with the dynamo ONNX exporter (opset >= 18), the only exporter
that lowers PT2E's ``quantized_decomposed`` ops to QuantizeLinear/DequantizeLinear.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.quant.base import PRESETS, QuantPreset, register_preset

#: Which preset a backend uses when a recipe target does not name one. ``ort-x86`` is resolved
#: per instruction set by :func:`resolve_ort_preset` (VNNI: full range, AVX2: 7-bit weights).
DEFAULT_PRESET = {"onnxruntime": "ort-x86", "tensorrt": "tensorrt", "tflite": "tflite"}
#: The ONNX Runtime preset that names no instruction set: chosen per target ISA.
AUTO_ORT_PRESET = "ort-x86"


def _torchao() -> Any:
    try:
        import torchao.quantization.pt2e as pt2e
    except ImportError as exc:
        raise BackendUnavailable(
            f"INT8 quantization needs torchao ({exc}); install it with: "
            "pip install 'edgecompress[quant]'") from exc
    return pt2e


def _quiet_torchao_import() -> None:
    """torchao prints load failures of its CUDA extensions on CPU-only machines; harmless."""
    import logging

    logging.getLogger("torchao").setLevel(logging.ERROR)


class _Quantizer:
    """Adapter turning :func:`annotate_graph` into a torchao ``Quantizer``."""

    @staticmethod
    def build(specs: Any, report: dict[str, list[str]]) -> Any:
        from torchao.quantization.pt2e.quantizer import Quantizer

        from edgecompress.quant.annotate import annotate_graph

        class ProjectQuantizer(Quantizer):
            def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
                try:
                    report.update(annotate_graph(model, specs))
                except ValueError as err:
                    raise ConfigError(str(err)) from None
                return model

            def validate(self, model: torch.fx.GraphModule) -> None:
                pass

        return ProjectQuantizer()


class OnnxQdqPreset(QuantPreset):
    """Common flow of the presets whose engines start from a QDQ ONNX file."""

    artifact_suffix: ClassVar[str] = ".onnx"
    extra: ClassVar[str] = "quant"
    #: activation dtype, range and scheme
    act_dtype: ClassVar[torch.dtype]
    act_range: ClassVar[tuple[int, int]]
    act_symmetric: ClassVar[bool]
    #: largest |weight| code: 127 (full int8) or 63 (7-bit, cannot saturate vpmaddubsw)
    weight_max: ClassVar[int] = 127
    #: Quantize sigmoid / two-tensor mul / global average pooling too (SiLU decomposed into
    #: sigmoid x mul first): ONNX Runtime then runs them as QLinearSigmoid / QLinearMul /
    #: QLinearGlobalAveragePool instead of float ops between DequantizeLinear and
    #: QuantizeLinear. ORT presets only: TensorRT's QDQ rules are about conv/linear/add inputs.
    elementwise: ClassVar[bool] = False
    #: With ``elementwise``: also write hardswish as x * hardsigmoid(x) (QLinearMul, the
    #: hardsigmoid float between DQ and Q). Off: measured no faster, and slower at 32 px, than
    #: ORT's float HardSwish round trip (benchmarks/results/ort_activations_mobilenet_v3.json).
    hardswish_mul: ClassVar[bool] = False
    #: ONNX rewrite of the exported QDQ file: ReduceMean over H, W -> GlobalAveragePool (same
    #: values), which ORT's QDQ fusion turns into QLinearGlobalAveragePool.
    global_pool_rewrite: ClassVar[bool] = False

    def __init__(self, *, calibration: str = "minmax", percentile: float = 99.99,
                 opset: int = 18) -> None:
        from edgecompress.quant.observers import PTQ_METHODS

        if calibration not in PTQ_METHODS:
            raise ConfigError(f"unknown calibration method {calibration!r}; "
                              f"choose one of {', '.join(PTQ_METHODS)}")
        self.calibration, self.percentile, self.opset = calibration, percentile, opset
        self.layers: dict[str, list[str]] = {}

    def availability(self) -> tuple[bool, str]:
        try:
            _quiet_torchao_import()
            _torchao()
        except BackendUnavailable as exc:
            return False, str(exc)
        return True, ""

    def specs(self, qat: bool, skip: Collection[str]) -> Any:
        """The activation/weight ``QuantizationSpec`` pair for QAT (fake quant) or PTQ."""
        pt2e = _torchao()
        from torchao.quantization.pt2e.quantizer import QuantizationSpec

        from edgecompress.quant.annotate import Specs
        from edgecompress.quant.observers import make_distribution_observer

        lo, hi = self.act_range
        act_scheme = torch.per_tensor_symmetric if self.act_symmetric else torch.per_tensor_affine
        act_kw = dict(dtype=self.act_dtype, quant_min=lo, quant_max=hi, qscheme=act_scheme)
        w_kw = dict(dtype=torch.int8, quant_min=-self.weight_max, quant_max=self.weight_max,
                    qscheme=torch.per_channel_symmetric, ch_axis=0)
        if qat:
            act_ctr = pt2e.FakeQuantize.with_args(
                observer=pt2e.MovingAverageMinMaxObserver, **act_kw)
            w_ctr = pt2e.FakeQuantize.with_args(
                observer=pt2e.MovingAveragePerChannelMinMaxObserver, **w_kw)
        else:
            if self.calibration == "minmax":
                act_ctr = pt2e.MinMaxObserver.with_args(**act_kw)
            else:
                observer = make_distribution_observer(pt2e.MinMaxObserver)
                act_ctr = observer.with_args(method=self.calibration,
                                             percentile=self.percentile, **act_kw)
            w_ctr = pt2e.PerChannelMinMaxObserver.with_args(**w_kw)
        activation = QuantizationSpec(observer_or_fake_quant_ctr=act_ctr, is_dynamic=False,
                                      **act_kw)
        weight = QuantizationSpec(observer_or_fake_quant_ctr=w_ctr, is_dynamic=False, **w_kw)
        boundary = None
        if not qat and self.calibration != "minmax":
            boundary = QuantizationSpec(observer_or_fake_quant_ctr=pt2e.MinMaxObserver.with_args(
                **act_kw), is_dynamic=False, **act_kw)
        return Specs(activation=activation, weight=weight, skip=frozenset(skip), boundary=boundary,
                     elementwise=self.elementwise)

    def prepare(self, model: nn.Module, example: torch.Tensor, *, qat: bool,
                skip: Collection[str] = ()) -> nn.Module:
        _quiet_torchao_import()
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        if example.shape[0] < 2:
            example = torch.cat([example, example])  # batch 1 would be specialised, not dynamic
        model = model.cpu()
        model.train(qat)
        try:
            program = torch.export.export(model, (example,),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},))
        except Exception as exc:
            raise ModelError(f"cannot trace the student for INT8 ({type(exc).__name__}): "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
        self.layers = {}
        graph = program.module()
        if self.elementwise:
            from edgecompress.quant.annotate import (
                decompose_hardswish,
                decompose_silu,
                global_pool_as_mean,
            )

            decompose_silu(graph)
            if self.global_pool_rewrite:
                global_pool_as_mean(graph)
            if self.hardswish_mul:
                decompose_hardswish(graph)
        quantizer = _Quantizer.build(self.specs(qat, skip), self.layers)
        prep = prepare_qat_pt2e if qat else prepare_pt2e
        return prep(graph, quantizer)

    def convert(self, prepared: nn.Module) -> nn.Module:
        from torchao.quantization.pt2e import (
            allow_exported_model_train_eval,
            move_exported_model_to_eval,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        converted = convert_pt2e(prepared, fold_quantize=True)
        move_exported_model_to_eval(converted)
        # .eval()/.train() then switch the graph's mode, so generic eval code can run it.
        return allow_exported_model_train_eval(converted)

    def export(self, converted: nn.Module, example: torch.Tensor, out_path: Path) -> Path:
        from edgecompress.export import export_onnx

        return export_onnx(converted, example, out_path, opset=self.opset, dynamic_batch=True,
                           switch_mode=False)


class _OrtPreset(OnnxQdqPreset):
    """uint8 asymmetric activations x int8 symmetric per-channel weights, Q after every
    conv/linear/add: the only form ONNX Runtime's CPU EP fuses completely into
    QLinearConv/QGemm/QLinearAdd. Subclasses differ in the weight range, set by the ISA."""

    backends: ClassVar[tuple[str, ...]] = ("onnxruntime",)
    act_dtype: ClassVar[torch.dtype] = torch.uint8
    act_range: ClassVar[tuple[int, int]] = (0, 255)
    act_symmetric: ClassVar[bool] = False
    elementwise: ClassVar[bool] = True
    global_pool_rewrite: ClassVar[bool] = True

    def convert(self, prepared: nn.Module) -> nn.Module:
        """PT2E convert, then the biases snapped to the int32 grid ORT's QLinearConv/QGemm add
        (:mod:`edgecompress.quant.int32_bias`): the PyTorch int8 model, the parity reference,
        then computes what the engine computes."""
        import logging

        from edgecompress.quant.int32_bias import snap_biases_to_int32

        converted = super().convert(prepared)
        counts = snap_biases_to_int32(converted)
        if counts["clipped"]:
            logging.getLogger(__name__).warning(
                "%d bias channels do not fit int32 at scale x_scale * w_scale and are clipped "
                "(in the engine as in the reference)", counts["clipped"])
        return converted

    def export(self, converted: nn.Module, example: torch.Tensor, out_path: Path) -> Path:
        out = super().export(converted, example, out_path)
        if not self.global_pool_rewrite:
            return out
        import onnx

        from edgecompress.io import atomic_path
        from edgecompress.quant.onnx_passes import reduce_mean_to_global_pool

        model = onnx.load(str(out))
        if reduce_mean_to_global_pool(model):
            with atomic_path(out) as tmp:
                onnx.save(model, str(tmp))
        return out


@register_preset
class OrtX86VnniPreset(_OrtPreset):
    name: ClassVar[str] = "ort-x86-vnni"
    rationale: ClassVar[str] = (
        "uint8 asymmetric activations x int8 symmetric per-channel weights (full range), Q after "
        "every conv/linear/add: fully fused QLinearConv/QGemm/QLinearAdd; VNNI (vpdpbusd) "
        "accumulates u8 x s8 products in 32 bits, so the full weight range is exact")


@register_preset
class OrtX86Avx2Preset(_OrtPreset):
    name: ClassVar[str] = "ort-x86-avx2"
    rationale: ClassVar[str] = (
        "uint8 asymmetric activations x 7-bit symmetric per-channel weights (|w| <= 63), Q after "
        "every conv/linear/add: fully fused QLinearConv/QGemm/QLinearAdd; without VNNI ORT "
        "multiplies with vpmaddubsw, whose 16-bit pair sums saturate past 32,767 with full-range "
        "weights (255 x 127 x 2); 255 x 63 x 2 = 32,130 cannot (ORT's reduce_range)")
    weight_max: ClassVar[int] = 63


@register_preset
class OrtArm64Preset(_OrtPreset):
    name: ClassVar[str] = "ort-arm64"
    rationale: ClassVar[str] = (
        "uint8 asymmetric activations x int8 symmetric per-channel weights (full range) for ONNX "
        "Runtime on arm64: its sdot/udot/smmla kernels accumulate in 32 bits (exact)")


@register_preset
class TensorRTPreset(OnnxQdqPreset):
    name: ClassVar[str] = "tensorrt"
    # ONNX Runtime runs it too (after the uint8 rewrite), which is how it is checked on CPU.
    backends: ClassVar[tuple[str, ...]] = ("tensorrt", "onnxruntime")
    rationale: ClassVar[str] = (
        "int8 symmetric per-tensor activations (zero point 0) and int8 symmetric per-channel "
        "weights on axis 0 with float bias, Q/DQ on conv/linear and residual-add inputs: what "
        "TensorRT's explicit-quantization (QDQ) mode accepts and fuses")
    act_dtype: ClassVar[torch.dtype] = torch.int8
    act_range: ClassVar[tuple[int, int]] = (-128, 127)
    act_symmetric: ClassVar[bool] = True


def resolve_ort_preset(isa: str | None = None) -> str:
    """The concrete ONNX Runtime preset for an ISA class (:mod:`edgecompress.isa`); None means
    this machine's CPU. x86 without VNNI gets 7-bit weights, everything else the full range."""
    from edgecompress.isa import cpu_info, u8s8_saturates

    isa = isa or cpu_info().isa
    if isa.startswith("arm64"):
        return "ort-arm64"
    return "ort-x86-avx2" if u8s8_saturates(isa) else "ort-x86-vnni"


def get_preset(name: str, **options: Any) -> QuantPreset:
    """A preset instance by name (importing the optional TFLite preset on demand).

    Raises:
        ConfigError: Unknown preset name; the message lists the known ones.
    """
    if name == "tflite" and name not in PRESETS:
        try:
            import edgecompress.quant.tflite  # noqa: F401 - registers the preset
        except ImportError:
            pass
    if name == AUTO_ORT_PRESET:
        name = resolve_ort_preset()
    cls = PRESETS.get(name)
    if cls is None:
        raise ConfigError(f"unknown quantization preset {name!r}; known presets: "
                          f"{', '.join(sorted(set(PRESETS) | set(DEFAULT_PRESET.values())))}")
    return cls(**options) if options else cls()


def preset_for_target(backend: str, preset: str | None, isa: str | None = None) -> str:
    """The concrete preset a target uses: the one it names, else its backend's default, with
    ``ort-x86`` resolved for the target's ISA class (``isa``; None: this machine's CPU).

    Raises:
        ConfigError: The backend has no INT8 preset, or the named preset's output cannot run on
            the backend; the message names both.
    """
    name = preset or DEFAULT_PRESET.get(backend)
    if name is None:
        raise ConfigError(f"backend {backend!r} has no INT8 quantization preset")
    if name == AUTO_ORT_PRESET:
        name = resolve_ort_preset(isa)
    supported = _preset_backends(name)
    if backend not in supported:
        raise ConfigError(f"quantization preset {name!r} does not support backend {backend!r} "
                          f"(preset {name!r} targets: {', '.join(supported)}; backend "
                          f"{backend!r} uses preset {DEFAULT_PRESET.get(backend, 'none')!r})")
    return name


def _preset_backends(name: str) -> tuple[str, ...]:
    if name == "tflite":  # known without importing the optional converter
        return ("tflite",)
    if name == AUTO_ORT_PRESET:
        name = resolve_ort_preset()
    cls = PRESETS.get(name)
    if cls is None:
        get_preset(name)  # raises the unknown-preset error
    return PRESETS[name].backends
