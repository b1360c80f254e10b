"""INT8 preset ``tflite``: litert-torch's PT2E quantizer, converted to a fully integer ``.tflite``.

TFLite's int8 spec (and so XNNPACK, NNAPI and the Arm NPUs behind it) is int8 *asymmetric*
per-tensor activations, int8 symmetric per-channel weights on the output-channel axis and an
int32 bias; ``litert_torch``'s ``PT2EQuantizer`` annotates exactly that (conv+bn+relu, linear,
add, pooling), and its converter folds the Q/DQ pairs into integer kernels.

litert-torch 0.10.0's QAT path fails on torch 2.13 as shipped; both workarounds live here
(:func:`_patched_pattern_export`, :func:`_export_dynamic_batch`) and
``tests/test_tflite.py::test_qat_preset_fully_integer`` fails if either stops working.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.quant.base import QuantPreset, register_preset

logger = logging.getLogger(__name__)

CALIBRATIONS = ("histogram", "minmax")


class _PatternModule(nn.Module):
    """Wraps a pattern *function* so ``torch.export`` (which takes modules only) accepts it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@contextlib.contextmanager
def _patched_pattern_export() -> Iterator[None]:
    """Workaround 1: litert-torch hands a plain function to ``torch.export``.

    ``_do_annotate_conv_bn`` (the QAT conv+bn[+relu] annotator) builds its match pattern with
    torchao's ``_get_aten_graph_module_for_pattern(fn, ...)``, which calls
    ``torch.export.export(fn)``; torch >= 2.6 rejects non-modules ("Expected `mod` to be an
    instance of `torch.nn.Module`, got <class 'function'>"). torchao's own patterns are wrapped
    in a module; we wrap litert-torch's the same way, only while the quantizer annotates.
    Upstream: https://github.com/google-ai-edge/litert-torch/issues/355 and
    https://github.com/google-ai-edge/litert-torch/issues/801
    """
    import litert_torch.quantize.pt2e_quantizer_utils as utils

    original = utils._get_aten_graph_module_for_pattern

    def export_pattern(pattern: Any, example_inputs: Any, is_cuda: bool = False,
                       **kwargs: Any) -> Any:
        if not isinstance(pattern, nn.Module):
            pattern = _PatternModule(pattern)
        return original(pattern, example_inputs, is_cuda, **kwargs)

    utils._get_aten_graph_module_for_pattern = export_pattern
    try:
        yield
    finally:
        utils._get_aten_graph_module_for_pattern = original


def _export_dynamic_batch(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Workaround 2: export with a symbolic batch dimension.

    torch 2.13's ``ExportedProgram.module()`` inserts a ``_guards_fn`` that asserts the traced
    input shape, so a graph exported at the documented batch-1 example ("Guard failed:
    x.size()[0] == 1") cannot train on mini-batches or calibrate on larger ones. A ``Dim``
    batch removes the guard (batch 1 would be specialised, so at least 2 samples are traced).
    Upstream: https://github.com/google-ai-edge/litert-torch/issues/801
    """
    if example.shape[0] < 2:
        example = torch.cat([example, example])
    try:
        program = torch.export.export(model, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot trace the student for TFLite INT8 ({type(exc).__name__}): "
                         f"{first}") from exc
    return program.module()


def _module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost module a node came from (``stage1.0.conv1``)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    return path.removeprefix("L['self'].").removeprefix("L__self__.")


def _in_skipped(node: torch.fx.Node, skip: frozenset[str]) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    for path, _ in stack.values():
        path = str(path).removeprefix("L['self'].")
        if any(path == s or path.startswith(s + ".") for s in skip):
            return True
    return False


def _build_quantizer(qat: bool, calibration: str, skip: frozenset[str]) -> Any:
    """litert-torch's ``PT2EQuantizer`` with a global config and our module-name exclusion.

    The upstream ``set_module_name(name, None)`` (keep a module float) asserts; its name filter
    also rebuilds paths by replacing every ``_`` with ``.``. The subclass instead drops nodes
    whose ``nn_module_stack`` lies under a skipped module before the global config annotates.
    """
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )

    config = get_symmetric_quantization_config(is_per_channel=True, is_qat=qat)
    if not qat and calibration == "minmax":
        from dataclasses import replace

        from torchao.quantization.pt2e.observer import MinMaxObserver

        act = replace(config.input_activation,
                      observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
        config = replace(config, input_activation=act, output_activation=act)

    class SkippingQuantizer(PT2EQuantizer):
        def _annotate_all_static_patterns(self, model: Any, quantization_config: Any,
                                          filter_fn: Any = None) -> Any:
            def keep(n: torch.fx.Node) -> bool:
                return not _in_skipped(n, skip) and (filter_fn is None or filter_fn(n))

            model = super()._annotate_all_static_patterns(model, quantization_config, keep)
            if quantization_config is not None:
                _annotate_untraced_adds(model, quantization_config, keep)
                _annotate_silu(model, quantization_config, keep)
            return model

    return SkippingQuantizer().set_global(config)


_ADDS = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
_RELUS = (torch.ops.aten.relu.default, torch.ops.aten.relu_.default)


def _annotate_untraced_adds(model: torch.fx.GraphModule, config: Any,
                            keep: Callable[[torch.fx.Node], bool]) -> int:
    """Annotate the residual adds litert-torch's add annotators cannot see.

    They find adds by ``source_fn_stack`` (``operator.add``/``torch.add``/``operator.iadd``);
    ``torch.export`` records none for an in-place ``out += identity`` (torchvision's ResNet
    blocks), so those adds stayed float and TFLite wrapped each in DEQUANTIZE/QUANTIZE. Same
    annotation as litert-torch's ``add``/``add_relu``: both inputs and the output (of the relu
    when one follows).
    """
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    count = 0
    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in _ADDS or not keep(node):
            continue
        if "quantization_annotation" in node.meta:
            continue
        inputs = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        if len(inputs) != 2 or not all(_is_float_tensor(a) for a in inputs):
            continue
        users = list(node.users)
        relu = users[0] if (len(users) == 1 and users[0].op == "call_function"
                            and users[0].target in _RELUS
                            and "quantization_annotation" not in users[0].meta) else None
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={a: get_input_act_qspec(config) for a in inputs},
            output_qspec=None if relu is not None else get_output_act_qspec(config),
            _annotated=True)
        if relu is not None:
            relu.meta["quantization_annotation"] = QuantizationAnnotation(
                output_qspec=get_output_act_qspec(config), _annotated=True)
        count += 1
    if count:
        logger.info("tflite int8: annotated %d residual add(s) without source information", count)
    return count


def decompose_silu(graph: torch.fx.GraphModule) -> int:
    """Rewrite every ``silu(x)`` as ``mul(x, sigmoid(x))`` before annotation (the rewrite the
    ORT presets use too: :func:`edgecompress.quant.annotate.decompose_silu`).

    litert-torch has no annotator for SiLU; its converter lowers it to LOGISTIC + MUL in float,
    wrapped in DEQUANTIZE/QUANTIZE (EfficientNet-B0: 196 float ops). Written as sigmoid and mul,
    both get annotated (:func:`_annotate_silu`), and TFLite runs its int8 LOGISTIC (fixed output
    scale 1/256) and int8 MUL kernels: the model converts fully integer.
    """
    from edgecompress.quant.annotate import decompose_silu as write_out

    count = write_out(graph)
    if count:
        logger.debug("tflite int8: %d SiLU written as sigmoid x mul", count)
    return count


def _annotate_silu(model: torch.fx.GraphModule, config: Any,
                   keep: Callable[[torch.fx.Node], bool]) -> int:
    """Annotate ``mul(x, sigmoid(x))`` (a decomposed SiLU): the sigmoid with TFLite's fixed
    output quantization, the mul's two inputs and output like litert-torch's ``mul``."""
    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_fixed_qparams_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    count = 0
    for node in model.graph.nodes:
        if (node.op != "call_function" or node.target != torch.ops.aten.mul.Tensor
                or "quantization_annotation" in node.meta or not keep(node)):
            continue
        x, gate = node.args[:2]
        if not (isinstance(gate, torch.fx.Node) and gate.target == torch.ops.aten.sigmoid.default
                and gate.args[0] is x and _is_float_tensor(x)):
            continue
        if "quantization_annotation" not in gate.meta:
            gate.meta["quantization_annotation"] = QuantizationAnnotation(
                input_qspec_map={x: get_input_act_qspec(config)},
                output_qspec=get_fixed_qparams_qspec(config), _annotated=True)
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={x: get_input_act_qspec(config), gate: get_input_act_qspec(config)},
            output_qspec=get_output_act_qspec(config), _annotated=True)
        count += 1
    if count:
        logger.info("tflite int8: annotated %d SiLU (sigmoid x mul) for int8 kernels", count)
    return count


def _is_float_tensor(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _check_skip(model: nn.Module, skip: Collection[str], preset: str) -> frozenset[str]:
    names = {n for n, _ in model.named_modules() if n}
    unknown = sorted(set(skip) - names)
    if unknown:
        raise ConfigError(f"quantization preset {preset!r}: skip names no module of the model: "
                          f"{', '.join(unknown)}")
    return frozenset(skip)


def _layer_report(prepared: torch.fx.GraphModule, skip: frozenset[str]) -> dict[str, list[str]]:
    """Which conv/linear layers got int8 and which stayed float, by module path."""
    weighted = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default,
                torch.ops.aten.conv1d.default}
    quantized, skipped = [], []
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in weighted:
            path = _module_path(node)
            (skipped if _in_skipped(node, skip) else quantized).append(path)
    return {"quantized": quantized, "skipped": skipped}


@register_preset
class TFLitePreset(QuantPreset):
    """litert-torch PT2E quantization -> fully integer ``.tflite`` (int8 or float interface)."""

    name: ClassVar[str] = "tflite"
    backends: ClassVar[tuple[str, ...]] = ("tflite",)
    artifact_suffix: ClassVar[str] = ".tflite"
    extra: ClassVar[str] = "tflite"
    rationale: ClassVar[str] = (
        "int8 asymmetric per-tensor activations, int8 symmetric per-channel weights (axis 0) "
        "and int32 bias, conv+bn(+relu) folded: TFLite's int8 quantization spec, which XNNPACK "
        "and the Android/Arm int8 kernels (sdot/i8mm) execute without float fallback")

    def __init__(self, *, io_dtype: str = "int8", calibration: str = "histogram",
                 batch_size: int = 1) -> None:
        from edgecompress.export.tflite import IO_DTYPES

        if io_dtype not in IO_DTYPES:
            raise ConfigError(f"preset 'tflite': io_dtype {io_dtype!r} not in "
                              f"{', '.join(IO_DTYPES)}")
        if calibration not in CALIBRATIONS:
            raise ConfigError(f"preset 'tflite': calibration {calibration!r} not in "
                              f"{', '.join(CALIBRATIONS)}")
        self.io_dtype, self.calibration, self.batch_size = io_dtype, calibration, batch_size
        self.layers: dict[str, list[str]] = {}
        self.float_ops: list[str] = []
        self._quantizer: Any = None

    def availability(self) -> tuple[bool, str]:
        from edgecompress.export.tflite import require

        try:
            require("litert_torch", "the 'tflite' INT8 preset")
            require("torchao", "the 'tflite' INT8 preset")
        except BackendUnavailable as exc:
            return False, str(exc)
        return True, ""

    def prepare(self, model: nn.Module, example: torch.Tensor, *, qat: bool,
                skip: Collection[str] = ()) -> nn.Module:
        from edgecompress.export.tflite import quiet_converter, require

        require("litert_torch", "the 'tflite' INT8 preset")
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        skipped = _check_skip(model, skip, self.name)
        model = model.cpu()
        model.train(qat)
        graph = _export_dynamic_batch(model, example)
        decompose_silu(graph)
        self._quantizer = _build_quantizer(qat, self.calibration, skipped)
        with quiet_converter(), _patched_pattern_export():
            prepared = (prepare_qat_pt2e if qat else prepare_pt2e)(graph, self._quantizer)
        self.layers = _layer_report(prepared, skipped)
        return prepared

    def convert(self, prepared: nn.Module) -> nn.Module:
        from torchao.quantization.pt2e import move_exported_model_to_eval
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        # fold_quantize=False: litert-torch's converter wants the weight Q/DQ pairs explicit
        # and folds them into int8 constants itself.
        converted = convert_pt2e(prepared, fold_quantize=False)
        move_exported_model_to_eval(converted)
        # .eval() is refused on PT2E graph modules; clear the flag so the converter does not
        # warn that it converts "in training mode" (BN/dropout were already switched above).
        for module in converted.modules():
            module.training = False
        return converted

    def export(self, converted: nn.Module, example: torch.Tensor, out_path: Path) -> Path:
        """Convert to ``.tflite`` at a static batch, check it is fully integer, write it.

        Float ops the converter leaves are logged and kept in ``float_ops``; the engine's
        census reports them and the gate's ``no_fp32_fallback`` decides.
        """
        from edgecompress.export.tflite import (
            _sample,
            convert_module,
            inspect_tflite,
            require,
            set_float_io,
        )

        require("litert_torch")
        if self._quantizer is None:
            raise ConfigError("preset 'tflite': export() before prepare(); the converter needs "
                              "the quantizer that annotated the model")
        from litert_torch.quantize.quant_config import QuantConfig

        out = convert_module(converted, _sample(example, self.batch_size), out_path,
                             quant_config=QuantConfig(pt2e_quantizer=self._quantizer))
        if self.io_dtype == "float32":
            set_float_io(out)
        found = inspect_tflite(out)
        self.float_ops = list(found.fp32_nodes)
        if self.float_ops and not self.layers.get("skipped"):
            # A float island (LayerNorm, GELU, a softmax the converter keeps float...) is
            # reported, not fatal: the target's engine lists it in fp32_nodes and the gate's
            # no_fp32_fallback decides whether it may ship.
            logger.warning("%s: INT8 conversion left %d float op(s) (float islands; "
                           "targets[].gate.no_fp32_fallback: true makes them fail the gate): %s",
                           out.name, len(self.float_ops), ", ".join(self.float_ops[:20]))
        logger.info("tflite int8: %s (%s interface, %d ops, float ops: %s)", out.name,
                    self.io_dtype, sum(found.ops.values()), found.fp32_nodes or "none")
        return out
