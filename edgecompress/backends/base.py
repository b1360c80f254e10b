"""Backend contract and registry: one class per inference runtime (ORT now, TFLite/TRT later).

The pipeline only talks to :class:`Backend` and :class:`Runner`, so a new target is one module
that subclasses both and registers itself. Nothing here imports a runtime: a machine without
TensorRT must still be able to list backends, validate a recipe and run the ORT target.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, TypeVar

import numpy as np

from edgecompress.errors import BackendUnavailable, ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared up front so recipes are validated before any work starts.

    Attributes:
        precisions: Numeric precisions ``build`` accepts (e.g. ``("fp32", "int8")``).
        artifact_suffixes: File suffixes ``load`` accepts (e.g. ``(".onnx",)``).
        supports_threads: Whether the intra-op thread count can be chosen; if not, only 1 is valid.
        device_kinds: Kinds of device the runtime executes on (e.g. ``("cpu",)``).
    """

    precisions: tuple[str, ...]
    artifact_suffixes: tuple[str, ...]
    supports_threads: bool
    device_kinds: tuple[str, ...]


class Runner(ABC):
    """A loaded engine that maps a batch of inputs to logits.

    Benchmarks and parity checks only need ``run``, so every runtime looks the same to them.
    Runners are context managers so sessions are released deterministically.
    """

    @abstractmethod
    def run(self, x: np.ndarray) -> np.ndarray:
        """Run one batch and return its logits, shape ``(batch, classes)``."""

    @property
    @abstractmethod
    def input_name(self) -> str:
        """Name of the engine's input tensor (kept for diagnostics and reports)."""

    @property
    @abstractmethod
    def threads(self) -> int:
        """Intra-op thread count the engine was loaded with (recorded next to latencies)."""

    def close(self) -> None:  # noqa: B027 - optional hook, most runners hold nothing to free
        """Release the runtime's resources; the runner must not be used afterwards."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Backend(ABC):
    """One inference runtime: turns the exported ONNX model into its engine and loads it.

    Subclasses set the class attributes and implement ``availability``, ``build`` and ``load``;
    they must import their runtime lazily (inside methods) so the registry stays importable on
    machines that lack it.
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    extra: ClassVar[str]

    @abstractmethod
    def availability(self) -> tuple[bool, str]:
        """Return ``(True, "")`` if the runtime is usable here, else ``(False, reason)``."""

    @abstractmethod
    def build(self, source_onnx: Path, out_dir: Path, *, precision: str, **options: Any) -> Path:
        """Produce this backend's engine artifact from ``source_onnx`` in ``out_dir``.

        Returns:
            Path of the artifact that :meth:`load` accepts.

        Raises:
            ConfigError: Unsupported precision or unknown option.
            BackendUnavailable: The runtime is not installed.
            ModelError: The runtime rejects the model.
        """

    @abstractmethod
    def load(self, artifact: Path, *, threads: int = 1) -> Runner:
        """Load an artifact written by :meth:`build` into a :class:`Runner`."""

    def inspect(self, artifact: Path, *, precision: str) -> dict[str, Any]:
        """What the engine really runs, for the report: e.g. ``{"int8_kernels": {...},
        "fp32_nodes": [...]}`` so a quantized model that silently runs in float is visible.

        The default knows nothing; backends that can look inside their engine override it.
        """
        return {}

    def validate(self, precision: str, threads: int) -> None:
        """Reject a precision or thread count this backend cannot honour, before any work runs.

        Raises:
            ConfigError: Naming the backend, the bad value and the supported values.
        """
        self.validate_precision(precision)
        self.validate_threads(threads)

    def validate_precision(self, precision: str) -> None:
        """Raise ``ConfigError`` unless ``precision`` is one of ``capabilities.precisions``."""
        supported = self.capabilities.precisions
        if precision not in supported:
            raise ConfigError(
                f"backend {self.name!r} does not support precision {precision!r}; "
                f"supported precisions: {', '.join(supported)}"
            )

    def validate_threads(self, threads: int) -> None:
        """Raise ``ConfigError`` unless ``threads`` is a thread count this backend can set."""
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(
                f"backend {self.name!r}: invalid threads {threads!r}; "
                "supported values: integers >= 1"
            )
        if threads != 1 and not self.capabilities.supports_threads:
            raise ConfigError(
                f"backend {self.name!r} cannot set the thread count (threads={threads}); "
                "supported values: 1"
            )

    def unavailable(self, module: str, exc: BaseException) -> BackendUnavailable:
        """Build the error raised when ``module`` (this backend's runtime) cannot be imported."""
        return BackendUnavailable(
            f"backend {self.name!r} needs the {module!r} package, which is not usable here "
            f"({type(exc).__name__}: {exc}); "
            f"install it with: pip install 'edgecompress[{self.extra}]'"
        )

    def check_options(self, precision: str, options: Mapping[str, Any],
                      allowed: tuple[str, ...] = ()) -> None:
        """Reject build options this backend/precision does not understand (typos fail loudly)."""
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"backend {self.name!r} ({precision}): unknown option(s) {', '.join(unknown)}; "
                f"supported options: {', '.join(allowed) if allowed else 'none'}"
            )


BACKENDS: dict[str, type[Backend]] = {}
"""Registered backend classes by name; filled by :func:`register_backend`."""

_B = TypeVar("_B", bound=type[Backend])


def register_backend(cls: _B) -> _B:
    """Class decorator adding a backend to :data:`BACKENDS` under ``cls.name``.

    Raises:
        ConfigError: Another class already claimed the name (two targets would be ambiguous).
    """
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"backend class {cls.__qualname__} has no 'name'")
    existing = BACKENDS.get(name)
    if existing is not None and existing.__qualname__ != cls.__qualname__:
        raise ConfigError(
            f"backend name {name!r} is registered twice: "
            f"{existing.__qualname__} and {cls.__qualname__}"
        )
    BACKENDS[name] = cls
    return cls


def get_backend(name: str) -> Backend:
    """Return a fresh instance of the backend registered as ``name``.

    Raises:
        ConfigError: Unknown name; the message lists the known ones.
    """
    cls = BACKENDS.get(name)
    if cls is None:
        known = ", ".join(sorted(BACKENDS)) or "none"
        raise ConfigError(f"unknown backend {name!r}; known backends: {known}")
    return cls()


def available_backends() -> dict[str, tuple[bool, str]]:
    """Map every registered backend name to its ``availability()`` on this machine."""
    return {name: BACKENDS[name]().availability() for name in sorted(BACKENDS)}
