"""Where something ran: Python and library versions, the CPU (model, ISA class, peaks), threads.

One module owns this so the pipeline's manifests and every report (run, bench, remote) record
the environment the same way, without importing each other.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from typing import Any

from edgecompress import __version__

TRACKED_PACKAGES = ("torch", "numpy", "onnx", "onnxscript", "onnxruntime", "scikit-learn",
                    "pydantic", "torchvision", "timm", "transformers")


def library_versions() -> dict[str, str]:
    """Versions of Python, edgecompress and the libraries that shape the artifacts."""
    versions = {"python": platform.python_version(), "edgecompress": __version__}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def cpu_description() -> dict[str, Any]:
    """CPU model, ISA class and the instruction-set flags that decide which int8 kernels can run
    (:func:`edgecompress.isa.cpu_info`), with the int8/fp32 peak figures used for % of peak."""
    from edgecompress.isa import cpu_info

    info = cpu_info().to_dict()
    return {"model": info.pop("model"), "machine": info.pop("arch"), **info,
            "logical_cores": os.cpu_count()}


def environment() -> dict[str, Any]:
    """Where a benchmark ran: Python, library versions, CPU model and flags, torch threads."""
    versions = library_versions()
    threads = None
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return {"python": versions["python"], "packages": versions, "cpu": cpu_description(),
            "threads": threads}
