"""TFLite / LiteRT backend: ``ai-edge-litert``'s Interpreter with XNNPACK, on this CPU.

The runtime is imported lazily: ``ai_edge_litert`` first, the old ``tflite_runtime`` if that is
all there is (numpy < 2 only, and its int8 path is several times slower), else
``BackendUnavailable`` naming the ``[tflite]`` extra. ``build`` takes a ``.tflite`` that the
export/qat stages already converted (litert-torch), proves it loads and, for int8, that it is
fully integer; the runner hides int8 interfaces and the static batch so callers pass the same
float32 NCHW batches as to ONNX Runtime.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from edgecompress.backends.base import Backend, Capabilities, Runner, register_backend
from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.tflite"
_RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def import_runtime() -> tuple[ModuleType, str]:
    """``(interpreter module, package name)`` of the first TFLite runtime that imports.

    Raises:
        BackendUnavailable: Neither ``ai-edge-litert`` nor ``tflite-runtime`` is usable.
    """
    import importlib

    errors = []
    for name in _RUNTIMES:
        try:
            return importlib.import_module(name), name.split(".")[0]
        except ImportError as exc:
            errors.append(f"{name.split('.')[0]}: {exc}")
    raise BackendUnavailable(
        "backend 'tflite' needs a TFLite runtime (ai-edge-litert, or the older tflite-runtime), "
        f"none is usable here ({'; '.join(errors)}); install it with: "
        "pip install 'edgecompress[tflite]'")


class TFLiteRunner(Runner):
    """One ``Interpreter`` behind the :class:`Runner` interface.

    The flatbuffer has a static batch (usually 1): larger batches run in chunks, the last one
    padded. int8 inputs are quantized and int8 outputs dequantized here with the tensors' own
    scale/zero point, so an int8-interface model still maps float logits to float logits.
    """

    def __init__(self, interpreter: Any, threads: int, path: Path, runtime: str) -> None:
        self._it = interpreter
        self._threads = threads
        self.path, self.runtime = path, runtime
        self._ins = _positional(interpreter.get_input_details())
        self._in = self._ins[0]
        self._out = interpreter.get_output_details()[0]
        self._shape = tuple(int(d) for d in self._in["shape"])
        self.xnnpack = any(op.get("op_name") == "DELEGATE"
                           for op in _ops_details(interpreter))

    @property
    def interpreter(self) -> Any:
        """The underlying interpreter (for inspection)."""
        if self._it is None:
            raise RuntimeError("runner is closed")
        return self._it

    @property
    def input_name(self) -> str:
        return str(self._in["name"])

    @property
    def threads(self) -> int:
        return self._threads

    @property
    def input_details(self) -> list[dict[str, Any]]:
        """The interpreter's input details in signature order (the order feeds follow)."""
        return list(self._ins)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The flatbuffer's static input shape (batch first)."""
        return self._shape

    def _to_model(self, x: np.ndarray) -> np.ndarray:
        """Float NCHW batch of the model's batch size -> the input tensor's dtype and layout."""
        x = np.asarray(x, dtype=np.float32)
        if tuple(x.shape[1:]) != self._shape[1:]:
            if x.ndim == 4 and tuple(x.transpose(0, 2, 3, 1).shape[1:]) == self._shape[1:]:
                x = x.transpose(0, 2, 3, 1)  # an NHWC flatbuffer (not what litert-torch makes)
            else:
                raise ModelError(f"{self.path.name}: input of shape {list(x.shape[1:])} does "
                                 f"not fit the model's input {list(self._shape[1:])}")
        dtype = self._in["dtype"]
        if np.issubdtype(dtype, np.integer):
            scale, zero = self._in["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        return np.ascontiguousarray(x, dtype=dtype)

    def _from_model(self, out: np.ndarray) -> np.ndarray:
        if np.issubdtype(out.dtype, np.integer):
            scale, zero = self._out["quantization"]
            return (out.astype(np.float32) - zero) * np.float32(scale)
        return out.astype(np.float32, copy=True)

    def _invoke(self, chunk: np.ndarray) -> np.ndarray:
        it = self.interpreter
        it.set_tensor(self._in["index"], self._to_model(chunk))
        it.invoke()
        return self._from_model(it.get_tensor(self._out["index"]))

    def _feed(self, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """A model with several inputs (token ids and mask, say): the feed's arrays in the
        signature's order, each cast to its input tensor's dtype (litert-torch makes int64
        token ids int32)."""
        arrays = list(feed.values())
        if len(arrays) != len(self._ins):
            raise ModelError(f"{self.path.name}: takes {len(self._ins)} inputs, got "
                             f"{len(arrays)} ({', '.join(feed)})")
        out = []
        for array, detail in zip(arrays, self._ins, strict=True):
            array = np.asarray(array)
            if tuple(array.shape[1:]) != tuple(int(d) for d in detail["shape"][1:]):
                raise ModelError(f"{self.path.name}: input {detail['name']} has shape "
                                 f"{list(detail['shape'])}, got {list(array.shape)}")
            out.append(np.ascontiguousarray(array, dtype=detail["dtype"]))
        return out

    def _run_feed(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        arrays, step = self._feed(feed), self._shape[0]
        it, outs = self.interpreter, []
        for start in range(0, len(arrays[0]), step):
            chunks = [a[start:start + step] for a in arrays]
            n = len(chunks[0])
            if n < step:  # pad the last chunk with copies of its first row
                chunks = [np.concatenate([c, np.repeat(c[:1], step - n, axis=0)])
                          for c in chunks]
            for chunk, detail in zip(chunks, self._ins, strict=True):
                it.set_tensor(detail["index"], chunk)
            it.invoke()
            outs.append(self._from_model(it.get_tensor(self._out["index"]))[:n])
        return np.concatenate(outs, axis=0)

    def run(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Logits for a float32 NCHW batch of any size, or for a feed of several inputs (name
        -> array, in the model's argument order)."""
        if isinstance(x, Mapping):
            return self._run_feed(x)
        x = np.asarray(x, dtype=np.float32)
        step = self._shape[0]
        outs = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            n = len(chunk)
            if n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *x.shape[1:]), np.float32)])
            outs.append(self._invoke(chunk)[:n])
        return np.concatenate(outs, axis=0)

    def timed_call(self, x: np.ndarray) -> Callable[[], object]:
        """``invoke`` on an input set once, for the latency loop (quantizing is not timed).

        A batch that is not the flatbuffer's batch runs through :meth:`run` (chunked), which
        is what such a batch really costs.
        """
        if isinstance(x, Mapping):
            arrays = self._feed(x)
            if len(arrays[0]) != self._shape[0]:
                return lambda: self._run_feed(x)
            for array, detail in zip(arrays, self._ins, strict=True):
                self.interpreter.set_tensor(detail["index"], array)
            return self.interpreter.invoke
        if len(x) != self._shape[0]:
            return lambda: self.run(x)
        self.interpreter.set_tensor(self._in["index"], self._to_model(x))
        return self.interpreter.invoke

    def close(self) -> None:
        self._it = None


def _positional(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input details in the converted function's argument order: litert-torch names them
    ``serving_default_args_<i>`` (the runtime lists them in no promised order)."""
    def position(detail: dict[str, Any]) -> tuple[int, int]:
        found = re.search(r"args_(\d+)", str(detail.get("name", "")))
        return (int(found.group(1)) if found else 1 << 30, details.index(detail))

    return sorted(details, key=position)


def _ops_details(interpreter: Any) -> list[dict[str, Any]]:
    try:
        return list(interpreter._get_ops_details())
    except Exception:  # older runtimes lack it; only used to tell whether XNNPACK took over
        return []


@register_backend
class TFLiteBackend(Backend):
    """LiteRT on the CPU with the XNNPACK delegate (the default delegate of ai-edge-litert)."""

    name: ClassVar[str] = "tflite"
    capabilities: ClassVar[Capabilities] = Capabilities(
        precisions=("fp32", "int8"),
        artifact_suffixes=(".tflite",),
        supports_threads=True,
        device_kinds=("cpu",),
    )
    extra: ClassVar[str] = "tflite"
    #: What ``build`` takes: a ``.tflite`` converted from PyTorch (litert-torch), not the ONNX
    #: file; ONNX -> TFLite converters (onnx2tf) silently break quantized models.
    source_suffix: ClassVar[str] = ".tflite"

    def availability(self) -> tuple[bool, str]:
        try:
            import_runtime()
        except Exception as exc:  # BackendUnavailable, or a broken install failing on import
            return False, str(exc)
        return True, ""

    def _interpreter(self, artifact: Path, threads: int) -> tuple[Any, str]:
        module, runtime = import_runtime()
        if not artifact.is_file():
            raise ModelError(f"TFLite model not found: {artifact}")
        kwargs: dict[str, Any] = {"model_path": str(artifact), "num_threads": threads}
        resolver = getattr(module, "OpResolverType", None)
        if resolver is not None:  # BUILTIN applies XNNPACK as the default delegate
            kwargs["experimental_op_resolver_type"] = resolver.BUILTIN
        try:
            it = module.Interpreter(**kwargs)
            it.allocate_tensors()
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{runtime} cannot load {artifact}: {first}") from exc
        return it, runtime

    def build(self, source_onnx: Path, out_dir: Path, *, precision: str, **options: Any) -> Path:
        """Check the converted ``.tflite`` ``source_onnx`` and copy it to ``out_dir/model.tflite``.

        (The parameter keeps the base class's name; for this backend it is a ``.tflite``.)

        Options:
            allow_float_ops: int8 only; accept float ops (layers kept float on purpose by the
                qat stage's accuracy fallback). They are still listed by :meth:`inspect`.

        Raises:
            ConfigError: Unknown precision/option, or the source is not a ``.tflite``.
            ModelError: The runtime cannot load it, or an int8 model runs float ops (listed).
        """
        from edgecompress.export.tflite import inspect_tflite

        self.validate_precision(precision)
        self.check_options(precision, options,
                           ("allow_float_ops",) if precision == "int8" else ())
        source = Path(source_onnx)
        if source.suffix != ".tflite":
            raise ConfigError(f"backend 'tflite' builds from a .tflite file (converted by the "
                              f"export/qat stage), got {source}")
        self._interpreter(source, 1)
        if precision == "int8":
            found = inspect_tflite(source)
            if not found.fully_integer and not options.get("allow_float_ops", False):
                raise ModelError(f"{source} is not fully integer: {len(found.fp32_nodes)} float "
                                 f"op(s): {', '.join(found.fp32_nodes)}")
        artifact = Path(out_dir) / ARTIFACT_NAME
        with atomic_path(artifact) as tmp:
            shutil.copyfile(source, tmp)
        logger.info("tflite %s engine: %s", precision, artifact)
        return artifact

    def load(self, artifact: Path, *, threads: int = 1) -> Runner:
        """An interpreter with ``threads`` threads and XNNPACK, behind a :class:`TFLiteRunner`."""
        self.validate_threads(threads)
        artifact = Path(artifact)
        if artifact.suffix not in self.capabilities.artifact_suffixes:
            raise ConfigError(f"backend 'tflite' cannot load {artifact.name!r}; supported "
                              f"artifact suffixes: .tflite")
        it, runtime = self._interpreter(artifact, threads)
        return TFLiteRunner(it, threads, artifact, runtime)

    def inspect(self, artifact: Path, *, precision: str) -> dict[str, Any]:
        """For int8 engines: ``{"int8_kernels", "fp32_nodes", "fully_integer", "ops", "inputs",
        "outputs"}``; nothing for float engines (every op is float there by design, as for the
        ONNX Runtime backend)."""
        from edgecompress.export.tflite import inspect_tflite

        if precision != "int8":
            return {}
        return inspect_tflite(artifact).to_dict()
