"""TensorRT backend: an engine built from the (Q/DQ) ONNX model with the TensorRT Python API.

Supports TensorRT 10.x (JetPack 6 ships 10.3), where precision is chosen with builder flags
(``BuilderFlag.INT8``/``FP16``: the Q/DQ layers run in INT8, the rest may use FP16), and 11.x,
where networks are always strongly typed: INT8 comes only from Q/DQ nodes and FP16 only from
FP16 tensors, so for ``fp16``/``int8`` the float parts of the model are converted to FP16 first
(:func:`to_fp16`). A calibrator is never used: INT8 scales come from the ``tensorrt`` QAT preset.

Engines are specific to the GPU and the TensorRT version, so the backend declares
``builds_on_device``: a Jetson target builds on the Jetson (see ``edgecompress.remote``), and
built plans are cached under a key of model hash, precision, options, TensorRT version and device
name. ``tensorrt`` and ``cuda-python`` are imported lazily; without them the backend reports
itself unavailable (exit code 3) with what to install or which image to use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from edgecompress.backends.base import Backend, Capabilities, Runner, register_backend
from edgecompress.backends.tensorrt_runner import TensorRTRunner, _Cuda, _import_cudart
from edgecompress.errors import BackendUnavailable, ConfigError, ModelError
from edgecompress.io import atomic_path, atomic_write_bytes, atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

ENGINE_NAME = "model.engine"
CACHE_ENV = "EDGECOMPRESS_TRT_CACHE"
MIN_MAJOR = 10
#: Build options a target profile's ``build_options`` may set.
BUILD_OPTIONS = ("dla_core", "gpu_fallback", "workspace_mb", "max_batch", "cache_dir",
                 "sequence_length")
INSTALL_HINT = (
    "TensorRT >= 10 with its Python bindings and cuda-python are needed, on a machine with an "
    "NVIDIA GPU. On a Jetson: JetPack 6 (TensorRT 10.3; apt-get install python3-libnvinfer) "
    "plus pip install 'edgecompress[tensorrt]', or build and run the Dockerfile.jetson image "
    "(docker run --runtime nvidia ...). On x86: an NGC container (nvcr.io/nvidia/tensorrt) or "
    "pip install tensorrt cuda-python from NVIDIA's index. See docs/jetson.md."
)


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


def cache_key(model_sha256: str, *, precision: str, options: Mapping[str, Any],
              tensorrt_version: str, device_name: str) -> str:
    """Key of a cached plan: everything that changes the engine (the model bytes, precision,
    build options, TensorRT version, GPU) and nothing that does not (paths, cache_dir)."""
    from edgecompress.io import sha256_json

    relevant = {k: v for k, v in sorted(options.items()) if k != "cache_dir"}
    return sha256_json({"model": model_sha256, "precision": precision, "options": relevant,
                        "tensorrt": tensorrt_version, "device": device_name})[:32]


def default_cache_dir() -> Path:
    """``$EDGECOMPRESS_TRT_CACHE``, else ``~/.cache/edgecompress/tensorrt``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "edgecompress" / "tensorrt"


# ---------------------------------------------------------------------------------------------
# FP16 conversion for strongly typed networks (TensorRT >= 11)
# ---------------------------------------------------------------------------------------------
def to_fp16(model: Any) -> Any:
    """A copy of ``model`` whose float32 tensors are float16, inputs and outputs kept float32.

    Strongly typed TensorRT runs each layer in the type of its tensors, so "FP16 for the layers
    left unquantized" means FP16 tensors in the model. Float initializers and ``Constant``
    values become FP16 (Q/DQ scales too, which needs opset >= 19), ``Cast(to=FLOAT)`` casts to
    FP16, and Casts are inserted after each float input and before each float output.

    Raises:
        ModelError: The model has Q/DQ nodes at opset < 19 (FP16 scales are not allowed there).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=0)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    if has_qdq and opset < 19:
        raise ModelError(f"FP16 Q/DQ scales need opset >= 19, the model has opset {opset}; "
                         "export with opset 19 or later for TensorRT >= 11")
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(init).astype(np.float16)
            graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value" and \
                    attr.t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(attr.t).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    inits = {i.name for i in graph.initializer}
    new_nodes = []
    for inp in graph.input:
        if inp.name in inits or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}__fp16"
        for node in graph.node:
            node.input[:] = [half if n == inp.name else n for n in node.input]
        new_nodes.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16,
                                          name=f"{inp.name}__to_fp16"))
    tail = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{out.name}__fp16"
        for node in graph.node:
            node.output[:] = [half if n == out.name else n for n in node.output]
            node.input[:] = [half if n == out.name else n for n in node.input]
        tail.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT,
                                     name=f"{out.name}__to_fp32"))
    nodes = [*new_nodes, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]  # stale float32 annotations; types are re-inferred
    return model


@register_backend
class TensorRTBackend(Backend):
    """NVIDIA TensorRT on a CUDA GPU (or a Jetson's DLA core with GPU fallback)."""

    name: ClassVar[str] = "tensorrt"
    capabilities: ClassVar[Capabilities] = Capabilities(
        precisions=("fp32", "fp16", "int8"),
        artifact_suffixes=(".engine", ".plan", ".onnx"),
        supports_threads=False,
        device_kinds=("cuda", "dla"),
    )
    extra: ClassVar[str] = "tensorrt"
    #: Plans are specific to the GPU and TensorRT version: build them on the device.
    builds_on_device: ClassVar[bool] = True

    # -- runtime -----------------------------------------------------------------------------
    def _trt(self) -> ModuleType:
        try:
            import tensorrt
        except Exception as exc:  # ImportError, or the PyPI placeholder failing on import
            raise BackendUnavailable(
                f"backend 'tensorrt' needs NVIDIA TensorRT, which is not usable here "
                f"({type(exc).__name__}: {exc}). {INSTALL_HINT}") from exc
        if _major(tensorrt.__version__) < MIN_MAJOR:
            raise BackendUnavailable(f"backend 'tensorrt' needs TensorRT >= {MIN_MAJOR}, found "
                                     f"{tensorrt.__version__}. {INSTALL_HINT}")
        return tensorrt

    def _cuda(self) -> _Cuda:
        try:
            cuda = _Cuda(_import_cudart())
        except ImportError as exc:
            raise BackendUnavailable(f"backend 'tensorrt' needs cuda-python for device buffers "
                                     f"({exc}); pip install 'edgecompress[tensorrt]'") from exc
        try:
            count = cuda.device_count()
        except ModelError as exc:
            raise BackendUnavailable(f"backend 'tensorrt': no usable CUDA device ({exc})") \
                from exc
        if count < 1:
            raise BackendUnavailable("backend 'tensorrt': no CUDA device found")
        return cuda

    def availability(self) -> tuple[bool, str]:
        try:
            self._trt()
            self._cuda()
        except BackendUnavailable as exc:
            return False, str(exc)
        return True, ""

    # -- options -------------------------------------------------------------------------------
    def check_build_options(self, precision: str, options: Mapping[str, Any]) -> None:
        """Validate precision and build options without TensorRT (runs on the workstation).

        Raises:
            ConfigError: Unknown option or a value of the wrong kind, naming it.
        """
        self.validate_precision(precision)
        self.check_options(precision, options, BUILD_OPTIONS)
        core = options.get("dla_core")
        if core is not None and (isinstance(core, bool) or not isinstance(core, int) or core < 0):
            raise ConfigError(f"backend 'tensorrt': dla_core must be a DLA core index >= 0 "
                              f"(Orin: 0 or 1) or null, got {core!r}")
        if core is not None and precision == "fp32":
            raise ConfigError("backend 'tensorrt': the DLA runs fp16 or int8 only, not fp32 "
                              "(set precision fp16/int8, or drop dla_core)")
        if not isinstance(options.get("gpu_fallback", True), bool):
            raise ConfigError("backend 'tensorrt': gpu_fallback must be true or false")
        for key in ("workspace_mb", "max_batch", "sequence_length"):
            value = options.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"backend 'tensorrt': {key} must be an integer >= 1, "
                                  f"got {value!r}")

    # -- build ---------------------------------------------------------------------------------
    def build(self, source_onnx: Path, out_dir: Path, *, precision: str, **options: Any) -> Path:
        """Build (or take from the cache) ``model.engine`` in ``out_dir``; a JSON file next to
        it records the TensorRT version, device, precision, options and cache key."""
        self.check_build_options(precision, options)
        source = Path(source_onnx)
        if not source.is_file():
            raise ModelError(f"ONNX model not found: {source}")
        if precision == "int8":
            _require_qdq(source)
        trt = self._trt()
        cuda = self._cuda()
        device = cuda.device_name()
        key = cache_key(sha256_file(source), precision=precision, options=options,
                        tensorrt_version=trt.__version__, device_name=device)
        cache = Path(options.get("cache_dir") or default_cache_dir()) / f"{key}.engine"
        hit = cache.is_file()
        if not hit:
            plan = self._build_plan(trt, source, precision, options)
            atomic_write_bytes(cache, plan)
        out_dir.mkdir(parents=True, exist_ok=True)
        artifact = out_dir / ENGINE_NAME
        with atomic_path(artifact) as tmp:
            shutil.copyfile(cache, tmp)
        atomic_write_json(out_dir / f"{ENGINE_NAME}.json", {
            "tensorrt": trt.__version__, "device": device, "precision": precision,
            "options": {k: v for k, v in options.items() if k != "cache_dir"},
            "cache_key": key, "cache_hit": hit, "source_onnx": str(source)})
        logger.info("tensorrt %s engine for %s: %s (cache %s)", precision, device, artifact,
                    "hit" if hit else "miss")
        return artifact

    def _build_plan(self, trt: ModuleType, source: Path, precision: str,
                    options: Mapping[str, Any]) -> bytes:
        log = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(log)
        strongly_typed = _major(trt.__version__) >= 11  # always strongly typed from 11 on
        flags = 0
        creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
        if strongly_typed and creation is not None and hasattr(creation, "STRONGLY_TYPED"):
            flags |= 1 << int(creation.STRONGLY_TYPED)  # ignored (always on) in TensorRT 11
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, log)
        import onnx

        model = onnx.load(str(source))
        if strongly_typed and precision in ("fp16", "int8"):
            model = to_fp16(model)
        if not parser.parse(model.SerializeToString(), str(source.parent)):
            errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise ModelError(f"TensorRT cannot parse {source}:\n  " + "\n  ".join(errs))
        config = builder.create_builder_config()
        if options.get("workspace_mb"):
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE,
                                         int(options["workspace_mb"]) << 20)
        if not strongly_typed:
            if precision in ("fp16", "int8"):
                config.set_flag(trt.BuilderFlag.FP16)  # layers left unquantized
            if precision == "int8":
                config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ layers; no calibrator
        core = options.get("dla_core")
        if core is not None:
            if core >= builder.num_DLA_cores:
                raise ConfigError(f"backend 'tensorrt': dla_core {core} requested, this device "
                                  f"has {builder.num_DLA_cores} DLA core(s)")
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(core)
            if options.get("gpu_fallback", True):
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        self._add_profile(trt, builder, network, config, int(options.get("max_batch") or 256),
                          options.get("sequence_length"))
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ModelError(f"TensorRT could not build an engine from {source} "
                             f"({precision}); its log above says why")
        return bytes(plan)

    @staticmethod
    def _add_profile(trt: ModuleType, builder: Any, network: Any, config: Any,
                     max_batch: int, sequence_length: int | None = None) -> None:
        """An optimization profile for a dynamic batch dimension (1..max_batch, tuned for 1,
        the latency case). A dynamic second dimension of a rank-2 input (a token sequence:
        ids, mask) is fixed at ``sequence_length`` (the text target's ``seq_len``); any other
        dynamic dimension is an error."""
        profile = None
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            if all(d >= 0 for d in shape):
                continue
            rest = shape[1:]
            if sequence_length and len(shape) == 2 and rest[0] < 0:
                rest = [int(sequence_length)]
            if any(d < 0 for d in rest):
                raise ModelError(f"TensorRT: input {tensor.name!r} has dynamic dimensions "
                                 f"{shape} beyond the batch; export with a fixed image size "
                                 "(or, for token inputs, build with sequence_length)")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(tensor.name, [1, *rest], [1, *rest], [max_batch, *rest])
        if profile is not None:
            config.add_optimization_profile(profile)

    def _build_for_load(self, source: Path) -> Path:
        """``edgecompress bench model.onnx`` on the board: build (or reuse from the cache) an
        engine first; a Q/DQ model is built for int8, a float one for fp16."""
        precision = "int8" if _has_qdq(source) else "fp16"
        out = default_cache_dir() / "built" / sha256_file(source)[:16] / precision
        logger.info("building a TensorRT %s engine from %s", precision, source)
        return self.build(source, out, precision=precision)

    # -- load ----------------------------------------------------------------------------------
    def load(self, artifact: Path, *, threads: int = 1) -> Runner:
        """Deserialize ``artifact`` and return a runner with device buffers."""
        self.validate_threads(threads)
        artifact = Path(artifact)
        if artifact.suffix not in self.capabilities.artifact_suffixes:
            raise ConfigError(f"backend 'tensorrt' cannot load {artifact.name!r}; supported "
                              f"artifact suffixes: .engine, .plan, .onnx (built on load)")
        trt = self._trt()  # a missing runtime (exit 3) is reported before a missing file
        cuda = self._cuda()
        if not artifact.is_file():
            raise ModelError(f"TensorRT engine not found: {artifact}")
        if artifact.suffix == ".onnx":
            artifact = self._build_for_load(artifact)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(artifact.read_bytes())
        if engine is None:
            raise ModelError(f"TensorRT cannot deserialize {artifact}: built by another "
                             f"TensorRT version or for another GPU? (this is {trt.__version__} "
                             f"on {cuda.device_name()})")
        meta = artifact.with_name(artifact.name + ".json")
        max_batch = 256
        if meta.is_file():
            max_batch = int(json.loads(meta.read_text()).get("options", {}).get("max_batch")
                            or 256)
        return TensorRTRunner(trt, cuda, engine, max_batch)


def _has_qdq(source: Path) -> bool:
    from edgecompress.quant.trt_lint import lint_tensorrt

    return lint_tensorrt(source).qdq_nodes > 0


def _require_qdq(source: Path) -> None:
    """INT8 in TensorRT comes from Q/DQ nodes only (no calibrator here): check they are there
    and in the form TensorRT accepts before spending minutes on a build."""
    from edgecompress.quant.trt_lint import check_tensorrt_compat

    check_tensorrt_compat(source, require_qdq=True)
