"""What share of a model file's multiply-accumulates run in integer kernels, read from the graph itself.

A file called "int8" can still run most of its work in float: layers left out of quantization,
or a dequantize step around every layer. `integer_macs(path)` walks the exported graph and, for
every MAC-carrying layer (convolutions, fully-connected and matrix products), counts its MACs at
batch 1 and decides whether it runs in an integer kernel:

- ONNX: `QLinearConv` / `QLinearMatMul` / `QGemm` / `ConvInteger` / `MatMulInteger` are integer; in QDQ
  files a `Conv` / `Gemm` / `MatMul` is integer when its activation and its weight come from
  `DequantizeLinear` nodes with 8-bit inputs and its output goes to a `QuantizeLinear` (the pattern
  ONNX Runtime fuses into an integer kernel); anything else runs in float.
- TFLite: an op is integer when its input and weight tensors are int8/uint8 (int16 activations
  with int8 weights count too); float32 inputs run the float kernel.
- OpenVINO IR: a `Convolution` / `GroupConvolution` / `MatMul` is integer when its inputs come
  from `FakeQuantize` nodes (NNCF's pattern, which the CPU plugin runs in int8), possibly through
  max-pooling or reshapes, or from int8 constants.

Consecutive float layers are grouped into "float islands" (named by their first and last layer),
so a report can say where the float work is.
"""

from __future__ import annotations

from pathlib import Path

INT_TYPES_ONNX = {2, 3}  # onnx.TensorProto.UINT8, INT8


def _island_groups(layers: list[dict]) -> list[dict]:
    islands: list[dict] = []
    current: list[dict] = []
    for layer in [*layers, None]:
        if layer is not None and not layer["integer"]:
            current.append(layer)
            continue
        if current:
            islands.append({"first": current[0]["name"], "last": current[-1]["name"], "layers": len(current),
                            "macs": sum(x["macs"] for x in current)})
            current = []
    return islands


def _summary(layers: list[dict]) -> dict:
    total = sum(x["macs"] for x in layers)
    integer = sum(x["macs"] for x in layers if x["integer"])
    return {
        "macs_total": total,
        "macs_integer": integer,
        "integer_mac_share": (integer / total) if total else None,
        "layers": len(layers),
        "layers_integer": sum(1 for x in layers if x["integer"]),
        "float_islands": _island_groups(layers),
    }


def integer_macs(path: str | Path) -> dict:
    """The integer-MAC share of an .onnx, .tflite or OpenVINO .xml file, with its float islands."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        layers = _onnx_layers(path)
    elif suffix == ".tflite":
        layers = _tflite_layers(path)
    elif suffix == ".xml":
        layers = _openvino_layers(path)
    else:
        raise ValueError(f"{path}: integer MACs are read from .onnx, .tflite or .xml files")
    return _summary(layers)


MOSTLY_FLOAT = 0.5  # an "int8" file with a smaller share of its MACs in integer kernels is flagged
ENTRY_KEYS = ("integer_mac_share", "macs_integer", "macs_total", "float_islands", "mostly_float", "float_layers")
"""The keys an int8 model entry of report.json carries (float_layers: the layers the quantize stage kept float)."""


def proof_fields(path: str | Path) -> dict:
    """The fields an int8 model entry carries: `integer_mac_share`, `macs_integer`, `macs_total`,
    `float_islands`, and `mostly_float` (under half of the MACs in integer kernels)."""
    r = integer_macs(path)
    share = r["integer_mac_share"]
    return {"integer_mac_share": share, "macs_integer": r["macs_integer"], "macs_total": r["macs_total"],
            "float_islands": r["float_islands"], "mostly_float": share is not None and share < MOSTLY_FLOAT}


# ---- ONNX -----------------------------------------------------------------------------------------


def _onnx_layers(path: Path) -> list[dict]:
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    try:
        model = shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - shapes then come only from what the file records
        pass
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, int] = {}
    for vi in [*g.input, *g.output, *g.value_info]:
        t = vi.type.tensor_type
        dtypes[vi.name] = t.elem_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        shapes[vi.name] = tuple(dims)
    for init in g.initializer:
        shapes[init.name] = tuple(init.dims)
        dtypes[init.name] = init.data_type
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    consts = {init.name: init for init in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = n.attribute[0].t
            shapes[n.output[0]] = tuple(n.attribute[0].t.dims)
            dtypes[n.output[0]] = n.attribute[0].t.data_type

    def quantized(name: str) -> bool:
        """True when `name` is the output of a DequantizeLinear of an 8-bit tensor."""
        p = producer.get(name)
        if p is None or p.op_type != "DequantizeLinear":
            return False
        return dtypes.get(p.input[0]) in INT_TYPES_ONNX

    def weight_shape(name: str) -> tuple[int, ...] | None:
        p = producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            name = p.input[0]
        if name in shapes:
            return shapes[name]
        if name in consts:
            return tuple(np.asarray(numpy_helper.to_array(consts[name])).shape)
        return None

    def attr(node, key: str, default):
        for a in node.attribute:
            if a.name == key:
                return onnx.helper.get_attribute_value(a)
        return default

    layers = []
    for n in g.node:
        op = n.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
            w_in = n.input[3] if op == "QLinearConv" else n.input[1]
            out = n.output[0]
            w = weight_shape(w_in)
            o = shapes.get(out)
            if not w or not o or len(w) < 3:
                continue
            kernel = int(np.prod(w[2:]))
            if op == "ConvTranspose":
                in_shape = shapes.get(n.input[0]) or (1,)
                macs = int(np.prod(in_shape)) * w[1] * kernel
            else:
                macs = int(np.prod(o)) * w[1] * kernel  # w[1] is in_channels / group
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "QGemm"):
            a_in, b_in = (n.input[0], n.input[3]) if op in ("QLinearMatMul", "QGemm") else (n.input[0], n.input[1])
            a, b, o = shapes.get(a_in), weight_shape(b_in), shapes.get(n.output[0])
            if not b:
                continue
            gemm = op in ("Gemm", "QGemm")
            trans_b = gemm and attr(n, "transB", 0)
            k = (b[-1] if trans_b else b[0]) if gemm else b[-2]
            if not o:  # com.microsoft ops (QGemm) have no ONNX shape inference: (M, N) from the inputs
                o = ((a[0] if a else 1), (b[0] if trans_b else b[-1]))
                shapes[n.output[0]] = o
            macs = int(np.prod(o)) * int(k)
        else:
            continue
        if op in ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"):
            integer = True
        else:
            act_in, w_in = n.input[0], n.input[1]
            to_q = any(c.op_type == "QuantizeLinear" for c in consumers.get(n.output[0], []))
            integer = quantized(act_in) and quantized(w_in) and to_q
        layers.append({"name": n.name or n.output[0], "op": op, "macs": macs, "integer": integer})
    return layers


# ---- TFLite ---------------------------------------------------------------------------------------


def _tflite_layers(path: Path) -> list[dict]:
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    ops = schema.BuiltinOperator
    names = {v: k for k, v in vars(ops).items() if not k.startswith("_")}
    t = schema.TensorType
    integer_types = {t.INT8, t.UINT8, t.INT16}
    layers = []
    for sub in model.subgraphs[:1]:
        for op in sub.operators:
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
            name = names.get(builtin, str(builtin))
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV",
                            "CONV_3D"):
                continue
            inputs = [int(i) for i in op.inputs]
            if name == "TRANSPOSE_CONV":
                act, w = sub.tensors[inputs[2]], sub.tensors[inputs[1]]
            else:
                act, w = sub.tensors[inputs[0]], sub.tensors[inputs[1]]
            out = sub.tensors[int(op.outputs[0])]
            wshape = [int(x) for x in (w.shape if w.shape is not None else [])]
            oshape = [max(1, int(x)) for x in (out.shape if out.shape is not None else [])]
            if not wshape or not oshape:
                continue
            if name == "CONV_2D":
                macs = int(np.prod(oshape)) * int(np.prod(wshape[1:]))
            elif name == "DEPTHWISE_CONV_2D":
                macs = int(np.prod(oshape)) * int(np.prod(wshape[1:3]))
            elif name == "FULLY_CONNECTED":
                macs = int(np.prod(oshape)) * wshape[-1]
            elif name == "BATCH_MATMUL":
                macs = int(np.prod(oshape)) * wshape[-2]
            elif name == "TRANSPOSE_CONV":
                ashape = [max(1, int(x)) for x in act.shape]
                macs = int(np.prod(ashape)) * int(np.prod(wshape[:3]))
            else:
                macs = int(np.prod(oshape)) * int(np.prod(wshape[:-1]))
            integer = act.type in integer_types and w.type in integer_types
            layers.append({"name": _tflite_layer_name(out.name), "op": name, "macs": macs, "integer": integer})
    return layers


def _tflite_layer_name(raw: bytes | str | None) -> str:
    """`Net;;Net/torch.nn.modules.conv.Conv2d_conv1;1` -> `Conv2d_conv1`: the last segment of the tensor's module
    path (tflite_io.compact_name, which exports already apply); a name without a path is kept as it is."""
    from edgecnn.runtime.tflite_io import compact_name

    name = raw if isinstance(raw, bytes) else str(raw or "").encode()
    return (compact_name(name).rsplit(b"/", 1)[-1] if b"/" in name else name).decode(errors="replace")


# ---- OpenVINO IR ----------------------------------------------------------------------------------


# ops an int8 value passes through unchanged in precision (OpenVINO's low-precision transformations keep
# max-pooling and reshapes in int8: NNCF puts a FakeQuantize before the pooling, not after it)
PASS_THROUGH_OPENVINO = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze", "MaxPool")


def _openvino_layers(path: Path) -> list[dict]:
    import numpy as np
    import openvino as ov

    model = ov.Core().read_model(str(path))

    def from_quantized(node, depth: int = 0) -> bool:
        """True when a value reaches this input through FakeQuantize or an int8/uint8 constant."""
        t = node.get_type_name()
        if t == "FakeQuantize":
            return True
        if t == "Constant":
            return node.get_element_type() in (ov.Type.i8, ov.Type.u8)
        if depth < 4 and t in PASS_THROUGH_OPENVINO:
            return from_quantized(node.input_value(0).get_node(), depth + 1)
        return False

    layers = []
    for node in model.get_ordered_ops():
        t = node.get_type_name()
        if t not in ("Convolution", "GroupConvolution", "MatMul", "ConvolutionBackpropData"):
            continue
        a = node.input_value(0)
        w = node.input_value(1)
        o = node.output(0)
        wshape = [int(d) for d in w.get_partial_shape().get_min_shape()]
        oshape = [max(1, int(d)) for d in o.get_partial_shape().get_min_shape()]
        if t == "Convolution":
            macs = int(np.prod(oshape)) * int(np.prod(wshape[1:]))
        elif t == "GroupConvolution":
            macs = int(np.prod(oshape)) * int(np.prod(wshape[2:]))
        elif t == "MatMul":
            transpose_b = node.get_attributes().get("transpose_b", False)
            macs = int(np.prod(oshape)) * (wshape[-1] if transpose_b else wshape[-2])
        else:
            ashape = [max(1, int(d)) for d in a.get_partial_shape().get_min_shape()]
            macs = int(np.prod(ashape)) * int(np.prod(wshape[1:]))
        integer = from_quantized(a.get_node()) and from_quantized(w.get_node())
        layers.append({"name": node.get_friendly_name(), "op": t, "macs": macs, "integer": integer})
    return layers
