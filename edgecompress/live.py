"""Live objects handed to :func:`edgecompress.compress`, turned into what the file-based
pipeline reads: a live ``nn.Module`` is registered in this process and named in the recipe as a
``kind: factory`` model; arrays or a map-style ``Dataset`` are written once as an npz file.

Kept apart from :mod:`edgecompress.api` so a model family can fold these inputs into its recipe
(:meth:`~edgecompress.families.ModelFamily.api_inputs`) without importing the API.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edgecompress.errors import ConfigError, DataError, ModelError

_LIVE: dict[str, nn.Module] = {}
# The factory name recorded in recipes (edgecompress.api re-exports live_model): unchanged, so
# run directories of earlier versions still resume.
LIVE_FACTORY = "edgecompress.api:live_model"


def live_model(key: str) -> nn.Module:
    """The factory behind live modules: a fresh deep copy of the module registered as ``key``."""
    module = _LIVE.get(key)
    if module is None:
        raise ModelError(f"live module {key!r} is not registered in this process: it was passed "
                         "to edgecompress.compress() in another Python process. Call compress() "
                         "again with the same module to resume the run")
    return copy.deepcopy(module)


def register_module(module: nn.Module) -> dict[str, Any]:
    """Register ``module`` for :func:`live_model`; returns the recipe model spec naming it."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    key = f"{type(module).__name__}-{digest.hexdigest()[:16]}"
    _LIVE[key] = copy.deepcopy(module).cpu()
    return {"kind": "factory", "factory": LIVE_FACTORY, "kwargs": {"key": key}}


def model_spec(model: Any, role: str) -> dict[str, Any]:
    if isinstance(model, nn.Module):
        return register_module(model)
    if isinstance(model, Mapping):
        return dict(model)
    if isinstance(model, (str, Path)):
        path = Path(model)
        kind = "export" if path.suffix == ".pt2" else "torchscript"
        return {"kind": kind, "path": str(path)}
    raise ConfigError(f"{role}: expected an nn.Module, a model spec dict or a .pt2/TorchScript "
                      f"path, got {type(model).__name__}")


def as_arrays(data: Any, role: str) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` float32 NCHW / int64 from an ``(x, y)`` pair or a map-style Dataset of
    ``(image, label)`` items."""
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (np.asarray(getattr(a, "numpy", lambda a=a: a)()) for a in data)
    else:
        if not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise DataError(f"{role}: expected a map-style Dataset of (image, label) or an "
                            f"(x, y) pair, got {type(data).__name__}")
        items = [data[i] for i in range(len(data))]
        if not items:
            raise DataError(f"{role}: the dataset is empty")
        try:
            x = np.stack([np.asarray(item[0]) for item in items])
            y = np.asarray([int(item[1]) for item in items])
        except (TypeError, ValueError, IndexError) as err:
            raise DataError(f"{role}: items must be (image, label) with images of one shape: "
                            f"{err}") from None
    if len(x) != len(y):
        raise DataError(f"{role}: {len(x)} images but {len(y)} labels")
    return x.astype(np.float32), y.astype(np.int64)


def write_arrays(train: Any, test: Any, inputs: Path) -> dict[str, Any]:
    from edgecompress.io import atomic_path

    x_train, y_train = as_arrays(train, "train")
    arrays = {"x": x_train, "y": y_train}
    if test is not None:
        x_test, y_test = as_arrays(test, "test")
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    inputs.mkdir(parents=True, exist_ok=True)
    path = inputs / "data.npz"
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return {"source": "npz", "path": str(path)}


def merge_mapping(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``; nested mappings merge, everything else (lists too) replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_mapping(dict(out[key]), value)
        else:
            out[key] = value
    return out
