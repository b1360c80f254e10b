"""Export trained PyTorch models to ONNX and prove the export matches PyTorch."""

from edgecompress.export.onnx import ParityResult, check_parity, compare_logits, export_onnx

__all__ = ["ParityResult", "check_parity", "compare_logits", "export_onnx"]
