"""edgecompress: teacher -> distilled student -> INT8 engines -> report and CI gate."""

from edgecompress import _torchvision_fix

__version__ = "0.1.0"

_torchvision_fix.install()  # `import torchvision` works next to the CPU torch wheel (see module)

__all__ = ["CompressResult", "__version__", "compress", "run_recipe"]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the API loads torch only when used
    if name in ("compress", "CompressResult", "run_recipe"):
        from edgecompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
