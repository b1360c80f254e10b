"""ONNX Runtime (CPU) backend.

``onnxruntime`` is imported inside functions only, so importing this module (which registers the
backend) works on machines without it; using the backend then raises ``BackendUnavailable``.
Precisions are dispatched through ``_BUILDERS`` so adding int8 is one method and one entry.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable
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

# precision -> name of the OnnxRuntimeBackend method that builds it.
_BUILDERS: dict[str, str] = {"fp32": "_build_fp32"}

# ORT log severity: 3 = errors only. Its warnings (e.g. "optimized model may contain hardware
# specific optimizations") are expected here and would only clutter the CLI output.
_ORT_LOG_ERRORS_ONLY = 3


class OnnxRuntimeRunner(Runner):
    """An ``InferenceSession`` behind the :class:`Runner` interface."""

    def __init__(self, session: Any, threads: int) -> None:
        self._session = session
        self._threads = threads
        self._input_name: str = session.get_inputs()[0].name

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

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one float32 batch and return the first output (the logits)."""
        feed = {self._input_name: np.asarray(x).astype(np.float32, copy=False)}
        return self.session.run(None, feed)[0]

    def timed_call(self, x: np.ndarray) -> Callable[[], object]:
        """``session.run`` bound to a feed built once, for the latency loop.

        Timing :meth:`run` would count its dtype check and dict building as model latency
        (several % of a 10 us model); the bench harness times this call instead.
        """
        feed = {self._input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return functools.partial(self.session.run, None, feed)

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

    def _session(self, ort: ModuleType, model: Path, so: Any) -> Any:
        """Create a CPU session, turning ORT's load failures into ``ModelError``."""
        if not model.is_file():
            raise ModelError(f"ONNX model not found: {model}")
        try:
            return ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
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
        session = self._session(ort, artifact, self._session_options(ort, threads))
        return OnnxRuntimeRunner(session, threads)
