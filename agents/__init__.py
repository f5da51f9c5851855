"""Policy networks for SB3, export (ONNX) and engine hooks."""
