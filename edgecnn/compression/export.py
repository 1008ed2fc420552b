"""Export PyTorch models to fp32 ONNX (dynamo exporter) and TFLite (litert-torch); int8 is in quantize.py.

A failing conversion raises UserError naming the operator and, where known, the layer.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
import torch.nn as nn

from edgecnn.core.artifacts import atomic_path
from edgecnn.core.console import quiet_libraries
from edgecnn.core.errors import UserError


def _op_key(name: str) -> str:
    """`aten.erfinv.default` / `torch.ops.prims.erf_inv.default` -> `erfinv` (for matching)."""
    name = re.sub(r"^(torch\.ops\.)?(aten|prims)[.:]+", "", name)
    return re.sub(r"\.(default|Tensor|Scalar|int)$", "", name).replace("_", "").lower()


def find_layer(model: nn.Module, input_shape: tuple[int, ...], op: str) -> str | None:
    """The module path (and class) of the first layer whose ATen graph calls `op`, if any."""
    key = _op_key(op)
    try:
        graph = torch.export.export(model.eval(), (torch.zeros(1, *input_shape),)).graph
    except Exception:  # noqa: BLE001 - a model torch.export cannot capture has no layer map
        return None
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        target = _op_key(str(node.target))
        if key and (key in target or target in key):
            stack = node.meta.get("nn_module_stack") or {}
            if stack:
                path, cls = list(stack.values())[-1]
                path = re.sub(r"^L\['self'\]\.?", "", str(path)) or "(top level)"
                return f"{path} ({getattr(cls, '__name__', str(cls).split('.')[-1])})"
    return None


def conversion_error(kind: str, exc: Exception, model: nn.Module, input_shape: tuple[int, ...]) -> UserError:
    text = f"{exc.__class__.__name__}: {exc}"
    op = re.search(r"(aten[.:]{1,2}[A-Za-z0-9_.]+|torch\.ops\.[A-Za-z0-9_.]+|'[A-Za-z]+' (?:op|operator))", text)
    layer = find_layer(model, input_shape, op.group(1)) if op else None
    what = f"operator {op.group(1)}" if op else text.splitlines()[0][:200]
    where = f" in layer {layer}" if layer else ""
    return UserError(
        f"{kind} export failed: unsupported {what}{where}; replace that layer or skip {kind} in export.formats"
    )


def simplify_onnx(path: Path) -> None:
    """Fold constants and remove redundant nodes with the onnxscript optimizer, in place (atomically)."""
    import onnx
    import onnxscript.optimizer

    with quiet_libraries():
        model = onnxscript.optimizer.optimize(onnx.load(str(path)))
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)


def for_export(model: nn.Module) -> nn.Module:
    """`model` in eval mode with contiguous (NCHW) weights, copied if training left them channels-last.

    litert-torch converts a model whose 4-d weights are channels-last into a .tflite that runs but
    computes garbage (the shared ResNet-56: logits off by 3e4), so every converter gets NCHW weights.
    """
    if any(p.dim() == 4 and not p.is_contiguous() for p in model.parameters()):
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    return model.eval()


def export_onnx(
    model: nn.Module, input_shape: tuple[int, ...], path: Path, opset: int = 18, simplify: bool = False
) -> None:
    """One self-contained .onnx file (dynamic batch), checked by onnx.checker; optionally simplified."""
    import onnx

    model = for_export(model)
    example = (torch.randn(2, *input_shape),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with quiet_libraries(), atomic_path(path) as tmp:
            program = torch.onnx.export(
                model,
                example,
                dynamo=True,
                opset_version=opset,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                verbose=False,
            )
            program.save(str(tmp), external_data=False)
            onnx.checker.check_model(str(tmp), full_check=True)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - converter failures are the model's, reported as such
        raise conversion_error("ONNX", e, model, input_shape) from None
    if simplify:
        simplify_onnx(path)


def export_tflite(model: nn.Module, input_shape: tuple[int, ...], path: Path) -> None:
    """A float32 .tflite file (batch 1) converted by litert-torch."""
    model = for_export(model)
    try:
        with quiet_libraries(), atomic_path(path) as tmp:
            import litert_torch

            from edgecnn.runtime.tflite_io import compact_names

            litert_torch.convert(model, (torch.zeros(1, *input_shape),)).export(str(tmp))
            tmp.write_bytes(compact_names(tmp.read_bytes()))
    except Exception as e:  # noqa: BLE001
        raise conversion_error("TFLite", e, model, input_shape) from None
