"""edgecompress: teacher -> distilled student -> INT8 engines -> report and CI gate."""

__version__ = "0.1.0"

__all__ = ["CompressResult", "__version__", "compress", "run_recipe"]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the API loads torch only when used
    if name in ("compress", "CompressResult", "run_recipe"):
        from edgecompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
