"""The TensorRT engine runner: device buffers, a CUDA stream and events through cuda-python.

Split from :mod:`edgecompress.backends.tensorrt` (the backend: build, cache, inspect), which
loads engines into it. Imported only when an engine is loaded, on a machine with TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from edgecompress.backends.base import Runner
from edgecompress.errors import ModelError


# ---------------------------------------------------------------------------------------------
# CUDA through cuda-python (device buffers, a stream, events)
# ---------------------------------------------------------------------------------------------
class _Cuda:
    """The few CUDA runtime calls the runner needs, with errors turned into exceptions."""

    def __init__(self, cudart: ModuleType) -> None:
        self.rt = cudart

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise ModelError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else (tuple(rest) if rest else None)

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        self._ok(self.rt.cudaFree(ptr))

    def stream(self) -> Any:
        return self._ok(self.rt.cudaStreamCreate())

    def event(self) -> Any:
        return self._ok(self.rt.cudaEventCreate())

    def h2d(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def d2h(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self._ok(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                         self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def record(self, event: Any, stream: Any) -> None:
        self._ok(self.rt.cudaEventRecord(event, stream))

    def sync(self, stream: Any) -> None:
        self._ok(self.rt.cudaStreamSynchronize(stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        self._ok(self.rt.cudaEventSynchronize(end))
        return float(self._ok(self.rt.cudaEventElapsedTime(start, end)))

    def device_name(self) -> str:
        props = self._ok(self.rt.cudaGetDeviceProperties(0))
        name = props.name
        return (name.decode() if isinstance(name, bytes) else str(name)).rstrip("\x00")

    def device_count(self) -> int:
        return int(self._ok(self.rt.cudaGetDeviceCount()))


def _import_cudart() -> ModuleType:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class TensorRTRunner(Runner):
    """An execution context with device buffers sized for ``max_batch``; inputs are copied
    once per call, ``execute_async_v3`` runs on a private stream, CUDA events time it.

    Takes one array (an image model) or a name -> array feed (a text model's token ids and
    mask), each cast to its tensor's dtype; the first output is the logits.
    """

    def __init__(self, trt: ModuleType, cuda: _Cuda, engine: Any, max_batch: int) -> None:
        self._trt, self._cuda, self._engine = trt, cuda, engine
        self._context = engine.create_execution_context()
        self._stream = cuda.stream()
        self._start, self._end = cuda.event(), cuda.event()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == mode]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) != mode]
        if not self._inputs or not self._outputs:
            raise ModelError(f"TensorRT engine has inputs {self._inputs} and outputs "
                             f"{self._outputs}; inputs and a logits output expected")
        self._max_batch = max_batch
        self._buffers: dict[str, int] = {}
        self._shapes: dict[str, tuple[int, ...]] | None = None
        #: GPU time of every timed call (CUDA events), read by the remote agent.
        self.event_times_ms: list[float] = []

    @property
    def input_name(self) -> str:
        return self._inputs[0]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The first input's shape as built (-1 for the dynamic batch): a token input's
        second dimension is the fixed sequence length the engine was built for."""
        return tuple(int(d) for d in self._engine.get_tensor_shape(self.input_name))

    @property
    def threads(self) -> int:
        return 1

    def _np_dtype(self, name: str) -> np.dtype:
        return np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))

    def _arrays(self, x: Any) -> dict[str, np.ndarray]:
        """Input name -> contiguous array of the tensor's dtype."""
        if isinstance(x, Mapping):
            missing = [n for n in self._inputs if n not in x]
            if missing:
                raise ModelError(f"TensorRT engine takes inputs {self._inputs}; the feed has "
                                 f"{list(x)} (missing {missing})")
            return {n: np.ascontiguousarray(x[n], dtype=self._np_dtype(n))
                    for n in self._inputs}
        if len(self._inputs) != 1:
            raise ModelError(f"TensorRT engine takes inputs {self._inputs}: give a name -> "
                             "array feed")
        return {self.input_name: np.ascontiguousarray(x, dtype=self._np_dtype(self.input_name))}

    def _prepare(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Set the input shapes and (re)allocate buffers when they change."""
        if shapes == self._shapes:
            return
        ctx = self._context
        for name, shape in shapes.items():
            if not ctx.set_input_shape(name, shape):
                raise ModelError(f"TensorRT engine rejects input {name!r} of shape "
                                 f"{list(shape)} (built for batch 1..{self._max_batch}, "
                                 f"shape {list(self._engine.get_tensor_shape(name))})")
        for ptr in self._buffers.values():
            self._cuda.free(ptr)
        self._buffers = {}
        for name in (*self._inputs, *self._outputs):
            dims = tuple(ctx.get_tensor_shape(name))
            nbytes = int(np.prod(dims)) * self._np_dtype(name).itemsize
            self._buffers[name] = self._cuda.malloc(nbytes)
            ctx.set_tensor_address(name, self._buffers[name])
        self._shapes = dict(shapes)

    def _upload(self, arrays: dict[str, np.ndarray]) -> None:
        self._prepare({n: tuple(a.shape) for n, a in arrays.items()})
        for name, array in arrays.items():
            self._cuda.h2d(self._buffers[name], array, self._stream)

    def _execute(self) -> None:
        if not self._context.execute_async_v3(int(self._stream)):
            raise ModelError("TensorRT execute_async_v3 failed")

    def _run_batch(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        self._upload(arrays)
        self._execute()
        name = self._outputs[0]
        out = np.empty(tuple(self._context.get_tensor_shape(name)), dtype=self._np_dtype(name))
        self._cuda.d2h(out, self._buffers[name], self._stream)
        self._cuda.sync(self._stream)
        return out.astype(np.float32, copy=False)

    def run(self, x: Any) -> np.ndarray:
        """Logits of ``x``, in chunks of at most ``max_batch`` (the engine's profile)."""
        arrays = self._arrays(x)
        n = len(next(iter(arrays.values())))
        chunks = [self._run_batch({k: a[i:i + self._max_batch] for k, a in arrays.items()})
                  for i in range(0, n, self._max_batch)]
        return np.concatenate(chunks, axis=0)

    def timed_call(self, x: Any):
        """One inference on an input already on the GPU, timed by CUDA events (no copies)."""
        self._upload(self._arrays(x))
        self._cuda.sync(self._stream)
        self.event_times_ms.clear()

        def call() -> None:
            self._cuda.record(self._start, self._stream)
            self._execute()
            self._cuda.record(self._end, self._stream)
            self.event_times_ms.append(self._cuda.elapsed_ms(self._start, self._end))

        return call

    def close(self) -> None:
        for ptr in self._buffers.values():
            self._cuda.free(ptr)
        self._buffers = {}
        self._context = None
