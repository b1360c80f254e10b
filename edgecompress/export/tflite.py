"""PyTorch -> ``.tflite`` (LiteRT flatbuffer) through litert-torch, and what is inside one.

litert-torch (the ``[tflite]`` extra) converts a ``torch.export`` graph straight to a flatbuffer,
without TensorFlow. Two facts shape this module:

* The converter keeps the model's NCHW input (it inserts the layout transposes itself), so a
  ``.tflite`` takes the same float32 NCHW batches as the ONNX file. Its batch dimension is
  static: a dynamic batch fails to lower ``torch.flatten`` (jax ``reshape`` needs concrete
  sizes), so edge models are converted at batch 1 and runners loop over larger batches.
* A PT2E-quantized model converts to a fully integer flatbuffer with **int8** input and output
  (the input/output Q/DQ are folded into the interface). :func:`set_float_io` puts a QUANTIZE /
  DEQUANTIZE pair back at the boundary when a float interface is configured, the same graph
  TensorFlow's converter writes for ``inference_input_type=float32``.

:func:`inspect_tflite` reads only the flatbuffer schema shipped with the runtime wheel, so it
works wherever ``ai-edge-litert`` (or ``tflite-runtime``) is installed, converter or not.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)

EXTRA = "tflite"
IO_DTYPES = ("int8", "float32")
IoDtype = Literal["int8", "float32"]

# TFLite TensorType codes (schema.fbs) that hold real (floating point) numbers.
_FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64", 16: "bfloat16"}
_INT8_TYPES = {9: "int8", 3: "uint8", 7: "int16"}
# Boundary ops of a float-interface int8 model: float in -> QUANTIZE, DEQUANTIZE -> float out.
_QUANTIZE, _DEQUANTIZE = "QUANTIZE", "DEQUANTIZE"


def require(module: str, what: str = "TFLite conversion") -> ModuleType:
    """Import an optional TFLite dependency, naming the pip extra if it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f"{what} needs the {module.split('.')[0]!r} package ({exc}); "
            f"install it with: pip install 'edgecompress[{EXTRA}]'") from exc


def schema() -> ModuleType:
    """The flatbuffer schema module of whichever LiteRT/TFLite wheel is installed."""
    for name in ("ai_edge_litert.schema_py_generated", "tflite_runtime.schema_py_generated"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    return require("ai_edge_litert.schema_py_generated", "reading a .tflite file")


@contextlib.contextmanager
def quiet_converter() -> Iterator[None]:
    """Silence litert-torch's progress lines, torch's export chatter and Python warnings.

    The converter prints a progress tree to stdout and torch/jax warn about optional features;
    they would bury the CLI's own output. They are kept at debug level.
    """
    saved = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    buf = io.StringIO()
    names = ["torch", "jax", "absl", "root"]
    levels = {n: logging.getLogger(n if n != "root" else None).level for n in names}
    try:
        for n in names:
            logging.getLogger(n if n != "root" else None).setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf):
            warnings.simplefilter("ignore")
            yield
    finally:
        for n, level in levels.items():
            logging.getLogger(n if n != "root" else None).setLevel(level)
        if saved is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved
        if buf.getvalue().strip():
            logger.debug("converter output:\n%s", buf.getvalue())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def convert_module(module: nn.Module, sample: torch.Tensor | tuple[torch.Tensor, ...],
                   out_path: str | Path, *, quant_config: Any = None) -> Path:
    """Convert ``module`` (traced at ``sample``'s static shape; a tuple for a module of several
    inputs, e.g. token ids and mask) and write it atomically.

    Raises:
        BackendUnavailable: litert-torch is not installed.
        ModelError: The converter rejects the model (first line of its error).
    """
    litert_torch = require("litert_torch")
    final = Path(out_path)
    if final.suffix != ".tflite":
        raise ConfigError(f"TFLite output must end in .tflite, got {final}")
    try:
        with quiet_converter(), torch.no_grad():
            samples = sample if isinstance(sample, tuple) else (sample,)
            edge = litert_torch.convert(module, samples, quant_config=quant_config)
            with atomic_path(final) as tmp:
                edge.export(str(tmp))
    except (ConfigError, BackendUnavailable):
        raise
    except Exception as exc:
        shapes = [list(t.shape) for t in (sample if isinstance(sample, tuple) else (sample,))]
        raise ModelError(f"litert-torch cannot convert {type(module).__name__} "
                         f"(input {', '.join(map(str, shapes))}): {_first_line(exc)}") from exc
    logger.info("wrote %s (%.1f KiB)", final, final.stat().st_size / 1024)
    return final


def export_tflite(model: nn.Module, example: torch.Tensor, out_path: str | Path, *,
                  batch_size: int = 1) -> Path:
    """Convert a float PyTorch model to an FP32 ``.tflite`` with a static batch.

    Args:
        model: Classifier mapping float32 NCHW batches to logits; converted in eval mode
            (its mode is restored afterwards).
        example: An input batch; only the per-sample shape and dtype matter.
        out_path: Destination ``.tflite`` (written atomically).
        batch_size: The flatbuffer's static batch (1 for on-device latency).

    Raises:
        ConfigError: Bad ``example``/``batch_size``.
        BackendUnavailable: litert-torch is missing.
        ModelError: Conversion failed.
    """
    sample = _sample(example, batch_size)
    was_training = model.training
    model.eval()
    try:
        return convert_module(model, sample, out_path)
    finally:
        model.train(was_training)


def _sample(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    if not isinstance(example, torch.Tensor) or example.ndim < 2:
        raise ConfigError("TFLite export example must be a torch.Tensor with a batch dimension")
    if batch_size < 1:
        raise ConfigError(f"TFLite batch_size must be >= 1, got {batch_size}")
    reps = -(-batch_size // example.shape[0])
    return example.repeat(reps, *[1] * (example.ndim - 1))[:batch_size].float().contiguous()


# ----------------------------------------------------------------------------------------------
# Reading a flatbuffer


@dataclass
class TFLiteInspection:
    """What a ``.tflite`` really computes, from its flatbuffer (no interpreter needed).

    Attributes:
        ops: Operator name -> count over all subgraphs.
        int8_kernels: Count of ops that run on integer tensors (no float tensor touched).
        fp32_nodes: ``"OP (tensor)"`` for every op that reads or writes a float tensor, except
            the QUANTIZE/DEQUANTIZE that convert a float interface at the model boundary.
        fully_integer: True when ``fp32_nodes`` is empty.
        inputs / outputs: ``{"name", "shape", "dtype", "scale", "zero_point"}`` per tensor.
    """

    ops: dict[str, int] = field(default_factory=dict)
    int8_kernels: dict[str, int] = field(default_factory=dict)
    fp32_nodes: list[str] = field(default_factory=list)
    fully_integer: bool = False
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for reports."""
        return asdict(self)


def _op_names(fb: ModuleType) -> dict[int, str]:
    return {v: k for k, v in vars(fb.BuiltinOperator).items()
            if not k.startswith("_") and isinstance(v, int)}


def _type_name(fb: ModuleType, code: int) -> str:
    names = {v: k.lower() for k, v in vars(fb.TensorType).items()
             if not k.startswith("_") and isinstance(v, int)}
    return names.get(code, str(code))


def _tensor_info(fb: ModuleType, tensor: Any) -> dict[str, Any]:
    quant = tensor.Quantization()
    scale = zero = None
    if quant is not None and quant.ScaleLength() == 1:
        scale, zero = float(quant.Scale(0)), int(quant.ZeroPoint(0))
    return {"name": tensor.Name().decode("utf-8", "replace"),
            "shape": [int(d) for d in tensor.ShapeAsNumpy()] if tensor.ShapeLength() else [],
            "dtype": _type_name(fb, tensor.Type()), "scale": scale, "zero_point": zero}


def _short(raw: bytes) -> str:
    """``Sequential_stem/Conv2d_0`` from litert-torch's long module-path tensor names."""
    first = raw.decode("utf-8", "replace").split(";")[0]
    parts = [seg.rsplit(".", 1)[-1] for seg in first.split("/") if seg]
    return "/".join(parts[-2:]) or "?"


def read_model(path: str | Path) -> Any:
    """The flatbuffer root (read-only ``Model``) of a ``.tflite`` file.

    Raises:
        ModelError: Missing file or not a TFLite flatbuffer.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"TFLite model not found: {path}")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    return schema().Model.GetRootAs(data, 0)


def inspect_tflite(path: str | Path) -> TFLiteInspection:
    """Count ops and find every op that computes in float.

    Raises:
        ModelError: The file is missing or not a TFLite flatbuffer.
    """
    fb = schema()
    model = read_model(path)
    names = _op_names(fb)
    codes = [max(model.OperatorCodes(i).BuiltinCode(),
                 model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]
    result = TFLiteInspection()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        graph_in = {int(i) for i in sg.InputsAsNumpy()} if sg.InputsLength() else set()
        graph_out = {int(i) for i in sg.OutputsAsNumpy()} if sg.OutputsLength() else set()
        if s == 0:
            result.inputs = [_tensor_info(fb, sg.Tensors(i)) for i in sorted(graph_in)]
            result.outputs = [_tensor_info(fb, sg.Tensors(i)) for i in sorted(graph_out)]
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            name = names.get(codes[op.OpcodeIndex()], f"OP{codes[op.OpcodeIndex()]}")
            ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(i) for i in op.OutputsAsNumpy()] if op.OutputsLength() else []
            result.ops[name] = result.ops.get(name, 0) + 1
            floats = [i for i in ins + outs if i >= 0 and sg.Tensors(i).Type() in _FLOAT_TYPES]
            boundary = ((name == _QUANTIZE and set(ins) <= graph_in)
                        or (name == _DEQUANTIZE and set(outs) <= graph_out))
            if floats and not boundary:
                tensor = sg.Tensors(outs[0] if outs else floats[0]).Name()
                result.fp32_nodes.append(f"{name} ({_short(tensor)})")
            elif not floats:
                result.int8_kernels[name] = result.int8_kernels.get(name, 0) + 1
    result.fully_integer = not result.fp32_nodes and bool(result.ops)
    return result


# ----------------------------------------------------------------------------------------------
# Float interface for an int8 model


def set_float_io(path: str | Path, *, inputs: bool = True, outputs: bool = True) -> Path:
    """Give an int8-interface model float32 inputs/outputs (QUANTIZE in, DEQUANTIZE out).

    The integer graph is untouched; only the boundary conversion moves from the caller into the
    model, which is what a phone app that feeds float pixels wants. Idempotent: float tensors
    are left alone. Rewrites ``path`` atomically.

    Raises:
        ModelError: Not a TFLite flatbuffer.
    """
    fb = schema()
    path = Path(path)
    model = fb.ModelT.InitFromObj(read_model(path))
    sg = model.subgraphs[0]
    sg.inputs, sg.outputs = [int(i) for i in sg.inputs], [int(i) for i in sg.outputs]

    def opcode(code: int) -> int:
        for i, oc in enumerate(model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = fb.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 2
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def float_twin(index: int, suffix: str) -> int:
        old = sg.tensors[index]
        new = fb.TensorT()
        new.shape, new.shapeSignature = old.shape, old.shapeSignature
        new.type, new.name = fb.TensorType.FLOAT32, old.name
        old.name = (old.name or b"") + suffix.encode()
        model.buffers.append(fb.BufferT())
        new.buffer = len(model.buffers) - 1
        sg.tensors.append(new)
        return len(sg.tensors) - 1

    remap: dict[int, int] = {}

    def float_boundary(ends: list[int], code: int, at_input: bool) -> None:
        """Give each int8 graph input (output) a float twin and a QUANTIZE (DEQUANTIZE) op."""
        for pos, idx in enumerate(list(ends)):
            if sg.tensors[idx].type not in _INT8_TYPES:
                continue
            new = float_twin(idx, "_int8")
            op = fb.OperatorT()
            op.opcodeIndex = opcode(code)
            op.inputs, op.outputs = ([new], [idx]) if at_input else ([idx], [new])
            sg.operators.insert(0 if at_input else len(sg.operators), op)
            ends[pos], remap[idx] = new, new

    if inputs:
        float_boundary(sg.inputs, fb.BuiltinOperator.QUANTIZE, at_input=True)
    if outputs:
        float_boundary(sg.outputs, fb.BuiltinOperator.DEQUANTIZE, at_input=False)
    for sig in model.signatureDefs or []:
        for tmap in list(sig.inputs or []) + list(sig.outputs or []):
            tmap.tensorIndex = remap.get(tmap.tensorIndex, tmap.tensorIndex)
    if not remap:
        return path
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(builder.Output()))
    logger.debug("%s: float32 interface for %d tensor(s)", path.name, len(remap))
    return path


# ----------------------------------------------------------------------------------------------
# Parity with the PyTorch model


#: Why the ``.tflite`` parity failure names no layer (see :func:`check_tflite_parity`).
NO_TFLITE_PROBE = (
    "first diverging layer: not probed for .tflite (the engine runs under the XNNPACK delegate, "
    "whose fused subgraphs keep no intermediate tensors, and the converter's tensor names do "
    "not map back to the PyTorch quantizers; ONNX int8 models get a per-layer probe)")


def check_tflite_parity(path: str | Path, reference: Any, x: Any, *,
                        min_top1_agreement: float = 0.99, atol: float | None = None,
                        threads: int = 1, y: Any | None = None,
                        max_metric_diff_pp: float | None = None,
                        rtol: float | None = None) -> dict[str, Any]:
    """Run ``x`` through the ``.tflite`` (backend runner) and compare with ``reference`` logits.

    ``reference`` is the PyTorch model's logits on ``x`` (the float student for FP32 files, the
    converted int8 model for INT8 ones). An int8 interface quantizes the logits, so ``atol``
    (if given) must allow about one output scale step; top-1 agreement is the main criterion,
    with the accuracy difference on labels ``y`` (``max_metric_diff_pp``) and ``rtol`` as in
    :func:`~edgecompress.export.int8_parity.judge_int8_parity`.

    Returns:
        The parity record when every check passes.

    Raises:
        ParityError: A criterion failed; every one is listed with its numbers.
    """
    import numpy as np

    from edgecompress.backends import get_backend
    from edgecompress.errors import ParityError
    from edgecompress.export.int8_parity import judge_int8_parity, parity_message

    with get_backend("tflite").load(Path(path), threads=threads) as runner:
        got = runner.run(np.asarray(x, dtype=np.float32))
    record, failures = judge_int8_parity(np.asarray(reference), got, y,
                                         min_top1_agreement=min_top1_agreement,
                                         max_metric_diff_pp=max_metric_diff_pp, rtol=rtol)
    if atol is not None and not record["max_abs_diff"] <= atol:
        failures.append(f"max abs diff {record['max_abs_diff']:.4g} > atol {atol:g}")
    if failures:
        raise ParityError(parity_message(Path(path).name, record, failures, NO_TFLITE_PROBE))
    return record
