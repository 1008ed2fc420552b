"""Mixed-precision int8: the layers int8 may leave in float, their ONNX nodes, and the fewest to keep in float.

Layers are named by their PyTorch module path (`features.3.block.0`), the same name for every format:
the ONNX quantizer gets the matching ONNX nodes (`nodes_to_exclude`), NNCF the matching OpenVINO IR
nodes (its ignored scope), the TFLite (PT2E) quantizer the module names. A name may also be a
container (`features.3`): every layer inside it is meant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from edgecnn.compression.export import for_export
from edgecnn.core.errors import UserError

LAYER_OPS = ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "linear")  # aten ops with MACs
ONNX_LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
OPENVINO_LAYER_OPS = ("Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul")


def quantizable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """Every convolution and linear call of `model`, in execution order: module `name`, `op`, `weight_shape`."""
    graph = torch.export.export(for_export(model), (torch.zeros(1, *input_shape),)).graph
    layers = []
    for node in graph.nodes:
        op = str(node.target).removeprefix("aten.").split(".")[0]
        if node.op != "call_function" or op not in LAYER_OPS:
            continue
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        weight = node.args[1].meta.get("val") if hasattr(node.args[1], "meta") else None
        layers.append({"name": str(stack[-1][0]) if stack else node.name, "op": op,
                       "weight_shape": tuple(weight.shape) if weight is not None else None})
    return layers


def layer_names(layers: list[dict]) -> list[str]:
    """The distinct layer names, in execution order."""
    return list(dict.fromkeys(x["name"] for x in layers))


def check_float_layers(names: Sequence[str], layers: list[dict], field: str = "quantize.fallback") -> list[str]:
    """`names` as given, or one UserError naming the unknown ones and listing the valid layer names."""
    valid = layer_names(layers)
    unknown = [n for n in names if not any(v == n or v.startswith(n + ".") for v in valid)]
    if unknown:
        raise UserError(f"{field}: unknown layer(s) {', '.join(unknown)}; the model's quantizable layers are "
                        f"{', '.join(valid)} (or a module containing some of them)")
    return list(names)


def expand(names: Sequence[str], layers: list[dict]) -> list[str]:
    """The layers meant by `names` (a container name means every layer inside it), in execution order."""
    return [v for v in layer_names(layers) if any(v == n or v.startswith(n + ".") for n in names)]


def onnx_layer_nodes(path: Path, layers: list[dict]) -> dict[str, list[str]]:
    """Layer name -> the ONNX nodes computing it, matched in execution order and checked by weight shape.

    The dynamo exporter keeps the FX graph's order; a file whose convolution/matrix nodes do not match
    the model's layers one to one raises ValueError.
    """
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    shapes = {init.name: tuple(init.dims) for init in g.initializer}
    nodes = [n for n in g.node if n.op_type in ONNX_LAYER_OPS and len(n.input) > 1
             and (n.op_type != "MatMul" or n.input[1] in shapes)]
    if len(nodes) != len(layers):
        raise ValueError(f"{path.name}: {len(nodes)} convolution/matrix nodes for {len(layers)} layers")
    out: dict[str, list[str]] = {}
    for node, layer in zip(nodes, layers, strict=True):
        w = shapes.get(node.input[1])
        if w is not None and layer["weight_shape"] and sorted(w) != sorted(layer["weight_shape"]):
            raise ValueError(f"{path.name}: node {node.name} has weight {w}, layer {layer['name']} "
                             f"{layer['weight_shape']}")
        out.setdefault(layer["name"], []).append(node.name)
    return out


def openvino_layer_nodes(path: Path, layers: list[dict]) -> dict[str, list[str]]:
    """Layer name -> the OpenVINO IR nodes computing it (the IR converted from the ONNX export keeps its order);
    an IR whose convolution/matrix nodes do not match the model's layers one to one raises ValueError."""
    import openvino as ov

    nodes = [n.get_friendly_name() for n in ov.Core().read_model(str(path)).get_ordered_ops()
             if n.get_type_name() in OPENVINO_LAYER_OPS]
    if len(nodes) != len(layers):
        raise ValueError(f"{path.name}: {len(nodes)} convolution/matrix nodes for {len(layers)} layers")
    out: dict[str, list[str]] = {}
    for node, layer in zip(nodes, layers, strict=True):
        out.setdefault(layer["name"], []).append(node)
    return out


def fewest_float_layers(ranking: Sequence[str], meets: Callable[[list[str]], bool]) -> int | None:
    """The smallest k for which keeping `ranking[:k]` (most sensitive first) in float `meets` the budget.

    k doubles (1, 2, 4, ...) until the budget holds, then bisects between the last miss and the first
    hit, so about 2 log2(n) files are tried; None when even every layer in float misses.
    """
    tried: dict[int, bool] = {}

    def ok(k: int) -> bool:
        if k not in tried:
            tried[k] = meets(list(ranking[:k]))
        return tried[k]

    lo, hi = 0, 1
    while not ok(min(hi, len(ranking))):
        if hi >= len(ranking):
            return None
        lo, hi = hi, 2 * hi
    hi = min(hi, len(ranking))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi
