"""edgecompress: teacher -> distilled student -> INT8 engines -> report and CI gate."""

__version__ = "0.1.0"
