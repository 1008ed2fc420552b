"""Checks of untrusted model files before a runtime parses them."""

from __future__ import annotations

from pathlib import Path

from edgecnn.errors import UserError


def check_model_file(path: Path) -> None:
    """Raise UserError unless an .onnx passes onnx.checker or a .tflite carries the TFL3 identifier."""
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        import onnx

        try:
            onnx.checker.check_model(str(path))
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise UserError(f"{path}: not a valid ONNX model ({e.__class__.__name__}); re-export it") from None
    elif suffix == ".tflite":
        head = path.read_bytes()[:8]
        if len(head) < 8 or head[4:8] != b"TFL3":
            raise UserError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier); re-export it")
