"""Let ``import torchvision`` succeed next to the CPU torch wheel, whoever imports it.

torch 2.13.0's CPU wheel pairs with torchvision 0.28.0, whose PyPI wheel is a CUDA build: its C++
extension (``_C.so``: NMS, RoIAlign, deformable conv, JPEG decoding) links ``libtorch_cuda.so``
and does not load. torchvision tolerates that for every op but two: ``_meta_registrations``
registers fake kernels for ``torchvision::nms``/``::qnms`` unconditionally, so the import dies
with ``operator torchvision::nms does not exist``. Hugging Face ``transformers`` and ``timm``
import torchvision whenever it is installed, so the failure would reach the text path too.

:func:`install` puts a finder first on ``sys.meta_path`` (cheap: torch is not imported here).
When torchvision is imported, its loader runs normally; only on that exact failure are the two
schemas defined (no kernel) and the package executed again. Models, layers and transforms then
work; ``torchvision.ops.nms`` raises torchvision's own "Couldn't load custom C++ ops" error.
Any other import error propagates unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

_LIBS: list[Any] = []  # keeps the torch.library fragment alive for the process


def _define_missing_schemas() -> None:
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901 - schemas only
    for op in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, op):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)


class _RetryLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        try:
            self.loader.exec_module(module)
        except RuntimeError as exc:
            if "torchvision::" not in str(exc) or "does not exist" not in str(exc):
                raise
            logger.info("torchvision's C++ ops did not load (%s); defining the nms/qnms "
                        "schemas so its models import without them", exc)
            for key in [k for k in sys.modules if k.startswith("torchvision.")]:
                del sys.modules[key]
            _define_missing_schemas()
            self.loader.exec_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torchvision":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RetryLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
