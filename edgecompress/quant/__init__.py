"""INT8: quantizer presets per target family (PT2E), QAT/PTQ helpers and ONNX QDQ passes.

Nothing here imports ``torchao`` (or a converter) at import time: ``import edgecompress`` must
work with only the core installed.
"""
