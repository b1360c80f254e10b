"""Inference backends (one per target runtime) and their registry.

Importing this package registers every built-in backend but imports no runtime: each backend
imports its runtime lazily, so listing and validating targets works on any machine.
"""

from edgecompress.backends import onnxruntime as _onnxruntime  # noqa: F401  (registers it)
from edgecompress.backends import tensorrt as _tensorrt  # noqa: F401  (registers it)
from edgecompress.backends import tflite as _tflite  # noqa: F401  (registers it)
from edgecompress.backends.base import (
    BACKENDS,
    Backend,
    Capabilities,
    Runner,
    available_backends,
    get_backend,
    register_backend,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "Capabilities",
    "Runner",
    "available_backends",
    "get_backend",
    "register_backend",
]
