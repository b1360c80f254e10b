"""ONNX Runtime (CPU) backend.

``onnxruntime`` is imported inside functions only, so importing this module (which registers the
backend) works on machines without it; using the backend then raises ``BackendUnavailable``.
Precisions are dispatched through ``_BUILDERS`` so adding int8 is one method and one entry.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from edgecompress.backends.base import Backend, Capabilities, Runner, register_backend
from edgecompress.errors import ConfigError, ModelError
from edgecompress.io import atomic_path

logger = logging.getLogger(__name__)

ARTIFACT_NAME = "model.onnx"
OPTIMIZED_NAME = "model.optimized.onnx"
#: Written next to an int8 engine: how to load it and what ORT fused (read by load/inspect).
ENGINE_INFO_NAME = "engine.json"

# ONNX tensor types of model inputs -> the numpy dtype a feed is cast to.
_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64,
               "tensor(int32)": np.int32, "tensor(float16)": np.float16,
               "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_}

# precision -> name of the OnnxRuntimeBackend method that builds it.
_BUILDERS: dict[str, str] = {"fp32": "_build_fp32", "int8": "_build_int8"}

# A Linear whose output has no Q is a MatMul+Add in QDQ form; ORT's MatMulAddFusion would turn
# it into a float Gemm before the QDQ fusion sees it, so no int8 kernel would run.
# WeightBiasQuantization quantizes the float weights of a conv/linear that sits between a DQ
# and a Q on its own (per-tensor): it would undo the layers the recipe keeps in FP32 on purpose
# (accuracy fallback). The QDQ model already says exactly what is quantized, and the build
# quantizes the float biases itself (quant.onnx_passes.quantize_biases).
INT8_DISABLED_OPTIMIZERS = ("MatMulAddFusion", "WeightBiasQuantization")

# ORT log severity: 3 = errors only. Its warnings (e.g. "optimized model may contain hardware
# specific optimizations") are expected here and would only clutter the CLI output.
_ORT_LOG_ERRORS_ONLY = 3


class OnnxRuntimeRunner(Runner):
    """An ``InferenceSession`` behind the :class:`Runner` interface."""

    def __init__(self, session: Any, threads: int) -> None:
        self._session = session
        self._threads = threads
        self._inputs = {i.name: _ORT_DTYPES.get(i.type, np.float32) for i in session.get_inputs()}
        self._input_name: str = next(iter(self._inputs))

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (for inspection in tests/reports)."""
        if self._session is None:
            raise RuntimeError("runner is closed")
        return self._session

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def threads(self) -> int:
        return self._threads

    def _feed(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One float32 batch for a single-input model, or a mapping of input name -> array
        (token ids and attention mask, say), each cast to its input's declared dtype."""
        if not isinstance(x, Mapping):
            return {self._input_name: np.ascontiguousarray(x, dtype=np.float32)}
        missing = sorted(set(self._inputs) - set(x))
        if missing:
            raise ModelError(f"the ONNX model takes inputs {list(self._inputs)}; the feed has "
                             f"{list(x)} (missing {missing})")
        return {name: np.ascontiguousarray(x[name], dtype=dtype)
                for name, dtype in self._inputs.items()}

    def run(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one batch (see :meth:`_feed`) and return the first output (the logits)."""
        return self.session.run(None, self._feed(x))[0]

    def timed_call(self, x: np.ndarray | Mapping[str, np.ndarray]) -> Callable[[], object]:
        """``session.run`` bound to a feed built once, for the latency loop.

        Timing :meth:`run` would count its dtype check and dict building as model latency
        (several % of a 10 us model); the bench harness times this call instead.
        """
        return functools.partial(self.session.run, None, self._feed(x))

    def close(self) -> None:
        self._session = None


@register_backend
class OnnxRuntimeBackend(Backend):
    """CPU inference through ONNX Runtime with deterministic, latency-friendly session settings."""

    name: ClassVar[str] = "onnxruntime"
    capabilities: ClassVar[Capabilities] = Capabilities(
        precisions=tuple(_BUILDERS),
        artifact_suffixes=(".onnx",),
        supports_threads=True,
        device_kinds=("cpu",),
    )
    extra: ClassVar[str] = "onnx"

    def _ort(self) -> ModuleType:
        """Import onnxruntime on first use, mapping absence to ``BackendUnavailable``."""
        try:
            import onnxruntime
        except ImportError as exc:
            raise self.unavailable("onnxruntime", exc) from exc
        return onnxruntime

    def availability(self) -> tuple[bool, str]:
        try:
            ort = self._ort()
        except Exception as exc:  # BackendUnavailable, or a broken install failing on import
            return False, str(exc)
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return False, "onnxruntime has no CPUExecutionProvider"
        return True, ""

    def _session_options(self, ort: ModuleType, threads: int) -> Any:
        """Session settings used for every ORT session, so build and benchmark agree."""
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = _ORT_LOG_ERRORS_ONLY
        return so

    def _session(self, ort: ModuleType, model: Path, so: Any,
                 disabled_optimizers: tuple[str, ...] = ()) -> Any:
        """Create a CPU session, turning ORT's load failures into ``ModelError``."""
        if not model.is_file():
            raise ModelError(f"ONNX model not found: {model}")
        kwargs = {"disabled_optimizers": list(disabled_optimizers)} if disabled_optimizers else {}
        try:
            return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"],
                                        **kwargs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load {model}: {first}") from exc

    def build(self, source_onnx: Path, out_dir: Path, *, precision: str, **options: Any) -> Path:
        """Write ``model.onnx`` (+ ``model.optimized.onnx`` for fp32) into ``out_dir``."""
        self.validate_precision(precision)
        builder = getattr(self, _BUILDERS[precision])
        return builder(Path(source_onnx), Path(out_dir), **options)

    def _build_fp32(self, source: Path, out_dir: Path, **options: Any) -> Path:
        """Copy the exported model and save ORT's optimized graph next to it.

        The optimized graph is for inspection only: at level ALL it may contain hardware specific
        (NCHWc) kernels, so ``load`` always optimizes ``model.onnx`` afresh on the machine.
        """
        self.check_options("fp32", options)
        ort = self._ort()
        out_dir.mkdir(parents=True, exist_ok=True)
        # Optimize first: it also proves ORT accepts the model before anything is published.
        with atomic_path(out_dir / OPTIMIZED_NAME) as tmp:
            so = self._session_options(ort, threads=1)
            so.optimized_model_filepath = str(tmp)
            self._session(ort, source, so)
        artifact = out_dir / ARTIFACT_NAME
        with atomic_path(artifact) as tmp:
            shutil.copyfile(source, tmp)
        logger.info("onnxruntime fp32 engine: %s (optimized graph: %s)", artifact, OPTIMIZED_NAME)
        return artifact

    def _build_int8(self, source: Path, out_dir: Path, **options: Any) -> Path:
        """Publish a QDQ model as an int8 engine: uint8 activation rewrite, ORT's optimized
        graph saved for inspection, and ``engine.json`` with the int8 kernel census. A file
        with its own ``<file>.engine.json`` is already an engine and is published as it is
        (:meth:`_publish_finished`).

        Raises:
            ModelError: ``source`` holds no QuantizeLinear (a float model cannot be an int8
                engine: it would silently run in FP32).
        """
        self.check_options("int8", options)
        if engine_info_path(Path(source)).is_file():
            return self._publish_finished(Path(source), out_dir)
        from edgecompress.isa import cpu_info
        from edgecompress.quant.onnx_passes import (
            activation_dtypes,
            compute_node_count,
            kernel_census,
            load,
            quantize_biases,
            rewrite_int8_activations_to_uint8,
            rewrite_wide_int8_weights_to_uint8,
            strip_metadata,
        )

        ort = self._ort()
        import onnx

        if not Path(source).is_file():
            raise ModelError(f"ONNX model not found: {source}")
        model = load(source)
        if not any(n.op_type == "QuantizeLinear" for n in model.graph.node):
            raise ModelError(f"{source}: precision int8 needs a quantized (QDQ) model, but it has "
                             "no QuantizeLinear node; enable the qat stage or quantize it first")
        compute_nodes = compute_node_count(model)
        before = dict(activation_dtypes(model))
        rewritten = rewrite_int8_activations_to_uint8(model)
        biases = quantize_biases(model)
        cpu = cpu_info()
        # Without VNNI full-range int8 weights would saturate ORT's u8 x s8 kernels: give those
        # layers exact u8 x u8 kernels instead (7-bit weights of ort-x86-avx2 are left alone).
        wide = rewrite_wide_int8_weights_to_uint8(model) if cpu.int8_saturates else 0
        if wide:
            logger.warning("onnxruntime int8 engine: %d layers have full-range int8 weights, "
                           "which saturate ORT's u8 x s8 kernels on this %s CPU (no VNNI); "
                           "they run exact u8 x u8 kernels (slower). Preset ort-x86 picks "
                           "7-bit weights here and keeps the fast kernels.", wide, cpu.isa)
        strip_metadata(model)
        padding = self._pad_channels_where_faster(ort, model)
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact = out_dir / ARTIFACT_NAME
        with atomic_path(artifact) as tmp:
            onnx.save(model, str(tmp))
            with atomic_path(out_dir / OPTIMIZED_NAME) as opt:
                so = self._session_options(ort, threads=1)
                so.optimized_model_filepath = str(opt)
                self._session(ort, tmp, so, INT8_DISABLED_OPTIMIZERS)
            census = kernel_census(load(out_dir / OPTIMIZED_NAME))
        info = {"precision": "int8", "disabled_optimizers": list(INT8_DISABLED_OPTIMIZERS),
                "activation_dtypes_in_source": before, "uint8_rewrites": rewritten,
                "int32_biases": biases, "compute_nodes": compute_nodes,
                "isa": cpu.isa, "uint8_weight_rewrites": wide, "channel_padding": padding,
                **census}
        from edgecompress.io import atomic_write_json

        atomic_write_json(out_dir / ENGINE_INFO_NAME, info)
        fused = sum(census["int8_kernels"].values())
        log = logger.warning if census["fp32_nodes"] else logger.info
        log("onnxruntime int8 engine %s: %d int8 kernels %s, %d float conv/linear nodes%s",
            artifact, fused, census["int8_kernels"], len(census["fp32_nodes"]),
            f" ({', '.join(census['fp32_nodes'])})" if census["fp32_nodes"] else "")
        return artifact

    def _pad_channels_where_faster(self, ort: ModuleType, model: Any) -> dict[str, dict]:
        """Pad conv input channels to ORT's kernel alignment where that measures faster on this
        CPU (:mod:`edgecompress.quant.channel_pad`, :mod:`.ort_profile`), in place. Returns,
        per candidate conv, both times and whether it was padded (for ``engine.json``). Exact
        either way; a model that cannot be timed (symbolic non-batch input dims) is left as
        it is."""
        import copy

        import onnx

        from edgecompress.backends.ort_profile import faster_padding, profile_nodes
        from edgecompress.quant.channel_pad import pad_candidates, pad_conv_input_channels

        if not pad_candidates(model):
            return {}
        trial = copy.deepcopy(model)
        padded = pad_conv_input_channels(trial)

        def make_session(path: Path, prefix: Path) -> Any:
            so = self._session_options(ort, threads=1)
            so.enable_profiling = True
            so.profile_file_prefix = str(prefix)
            return self._session(ort, path, so, INT8_DISABLED_OPTIMIZERS)

        with tempfile.TemporaryDirectory(prefix="ec-chanpad-") as tmp:
            paths = [Path(tmp) / "plain.onnx", Path(tmp) / "padded.onnx"]
            onnx.save(model, str(paths[0]))
            onnx.save(trial, str(paths[1]))
            times = profile_nodes(make_session, paths)
        if times is None:
            return {c.conv: {"channels": c.channels, "padded_to": c.padded_to, "keep": False,
                             "reason": "the model's input shape is not fixed; nothing to time"}
                    for c in padded}
        choice = faster_padding(times[0], times[1], padded)
        keep = {name for name, c in choice.items() if c["keep"]}
        if keep:
            pad_conv_input_channels(model, only=keep)
        logger.info("onnxruntime int8 engine: %d of %d convs get input channels padded to a "
                    "multiple of 4 (%s)", len(keep), len(padded),
                    ", ".join(f"{k}: {v.get('plain_us')} us plain, {v.get('padded_us')} us "
                              f"padded" for k, v in choice.items()))
        return choice

    def _publish_finished(self, source: Path, out_dir: Path) -> Path:
        """Publish an int8 model that is already an engine as it is: a file with its own
        ``<file>.engine.json`` (the text family's dynamic or QDQ INT8 encoder, made for ORT
        with the session settings that description names). Nothing is rewritten; the kernel
        census of the graph ORT optimizes it to is added to the description.

        Raises:
            ModelError: ORT runs no int8 kernel for it (it would silently be FP32).
        """
        from edgecompress.io import atomic_write_json
        from edgecompress.quant.onnx_passes import kernel_census, load

        ort = self._ort()
        info = _engine_info(source)
        disabled = tuple(info.get("disabled_optimizers", ()))
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact = out_dir / ARTIFACT_NAME
        with atomic_path(artifact) as tmp:
            shutil.copyfile(source, tmp)
            with atomic_path(out_dir / OPTIMIZED_NAME) as opt:
                so = self._session_options(ort, threads=1)
                so.optimized_model_filepath = str(opt)
                self._session(ort, tmp, so, disabled)
            census = kernel_census(load(out_dir / OPTIMIZED_NAME))
            if census["int8_total"] == 0:  # raised before the artifact is published
                raise ModelError(f"{source}: ONNX Runtime runs no int8 kernel (ops: "
                                 f"{census['ops']}); the INT8 engine would silently be FP32")
        atomic_write_json(out_dir / ENGINE_INFO_NAME, {**info, "precision": "int8",
                                                       "published_as_is": True, **census})
        logger.info("onnxruntime int8 engine %s (as exported): %d int8 kernels %s", artifact,
                    census["int8_total"], census["int8_kernels"])
        return artifact

    def inspect(self, artifact: Path, *, precision: str) -> dict[str, Any]:
        """For int8 engines: ``int8_kernels`` and ``fp32_nodes`` from ``engine.json``."""
        if precision != "int8":
            return {}
        info = _engine_info(Path(artifact))
        if not info:
            return {}
        return {"int8_kernels": info.get("int8_kernels", {}),
                "fp32_nodes": info.get("fp32_nodes", []),
                "uint8_rewrites": info.get("uint8_rewrites", 0)}

    def load(self, artifact: Path, *, threads: int = 1) -> Runner:
        """Open ``artifact`` in a CPU session with ``threads`` intra-op threads."""
        self.validate_threads(threads)
        artifact = Path(artifact)
        if artifact.suffix not in self.capabilities.artifact_suffixes:
            raise ConfigError(
                f"backend {self.name!r} cannot load {artifact.name!r}; supported artifact "
                f"suffixes: {', '.join(self.capabilities.artifact_suffixes)}"
            )
        ort = self._ort()
        disabled = tuple(_engine_info(artifact).get("disabled_optimizers", ()))
        session = self._session(ort, artifact, self._session_options(ort, threads), disabled)
        return OnnxRuntimeRunner(session, threads)


def engine_info_path(artifact: Path) -> Path:
    """Where a file's own engine description goes: ``<artifact>.engine.json`` (for a folder
    holding several engines, like the text family's export folder)."""
    return artifact.with_name(artifact.name + "." + ENGINE_INFO_NAME)


def engine_description(artifact: Path) -> Path | None:
    """The file describing how ``artifact`` is served (``<artifact>.engine.json``, else the
    ``engine.json`` of its folder), or None for a plain model. It must travel with the artifact
    (to a remote board, say): it names the graph optimizers the engine runs without."""
    artifact = Path(artifact)
    for path in (engine_info_path(artifact), artifact.parent / ENGINE_INFO_NAME):
        if path.is_file():
            return path
    return None


def _engine_info(artifact: Path) -> dict[str, Any]:
    """The engine description of ``artifact``: its own ``<artifact>.engine.json``, else the
    ``engine.json`` of its folder ({} for fp32 engines)."""
    import json

    path = engine_description(artifact)
    if path is None:
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{path}: unreadable engine description: {err}") from None
