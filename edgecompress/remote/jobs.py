"""Small pieces of a remote benchmark job: where it lives on the board, the inputs file the
agent reads, the agent's last JSON line and its errors, trtexec's ``--shapes``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import errors
from edgecompress.errors import EdgeCompressError
from edgecompress.remote.ssh import RemoteError

DEFAULT_WORKDIR = ".cache/edgecompress/jobs"


def remote_workdir(workdir: str | None) -> str:
    """Job root on the board; ``~/x`` becomes ``x`` (ssh commands start in the home directory
    and a quoted ``~`` would not be expanded)."""
    if not workdir:
        return DEFAULT_WORKDIR
    return workdir[2:] if workdir.startswith("~/") else workdir


def reraise(where: str, error: dict[str, Any]) -> EdgeCompressError:
    """The agent's error as the same edgecompress error class, prefixed with the host."""
    cls = getattr(errors, str(error.get("type")), None)
    message = f"on {where}: {error.get('message')}"
    if isinstance(cls, type) and issubclass(cls, EdgeCompressError):
        return cls(message)
    return RemoteError(f"{message} ({error.get('type')})")


def last_json(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.decode("utf-8", "replace").strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def write_inputs(folder: Path, x: Any, y: np.ndarray | None) -> Path:
    """``inputs.npz`` for the agent: the exact test inputs and labels (``y``). One float array
    is stored as ``x``; a name -> array feed (token ids and mask) as ``x:<name>`` each, dtypes
    kept, in the feed's order."""
    from collections.abc import Mapping

    inputs = folder / "inputs.npz"
    if isinstance(x, Mapping):
        arrays = {f"x:{name}": np.ascontiguousarray(a) for name, a in x.items()}
    else:
        arrays = {"x": np.ascontiguousarray(x, dtype=np.float32)}
    if y is not None:
        arrays["y"] = np.asarray(y)
    np.savez(inputs, **arrays)
    return inputs


def read_inputs(path: Path) -> tuple[Any, np.ndarray | None]:
    """What :func:`write_inputs` wrote: ``(x or name -> array, y or None)``."""
    with np.load(path, allow_pickle=False) as data:
        names = [k for k in data.files if k.startswith("x:")]
        x = {k[2:]: data[k] for k in names} if names else data["x"]
        y = data["y"] if "y" in data.files else None
    return x, y


def dynamic_input_shapes(onnx_path: Path | None, shape: Any) -> dict[str, list[int]]:
    """``--shapes`` for the model's inputs whose dimensions are dynamic: ``shape`` is the first
    input's shape (an image model), or input name -> shape (token ids and mask)."""
    if onnx_path is None:
        return {}
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        return {}
    wanted = dict(shape) if isinstance(shape, dict) else {inputs[0].name: shape}
    out = {}
    for tensor in inputs:
        dims = tensor.type.tensor_type.shape.dim
        if tensor.name in wanted and any(not d.HasField("dim_value") for d in dims):
            out[tensor.name] = list(wanted[tensor.name])
    return out
