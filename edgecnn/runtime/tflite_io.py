"""Float input/output tensors for a full-integer .tflite model.

litert-torch's PT2E path gives int8 input and output tensors. For callers that feed float
images and read float logits, this rewrites the flatbuffer (the LiteRT schema's object API):
a QUANTIZE op turns the new float32 input into the old int8 input, and a DEQUANTIZE op turns
the int8 output into a new float32 output; the signature points at the new tensors. It is
TensorFlow's `modify_model_interface` run the other way.

`compact_names` shortens litert-torch's tensor names (each a `;`-joined list of fully qualified
module scopes, ~200 bytes a tensor) to one module path: 5% of a 150 K-parameter int8 file.
"""

from __future__ import annotations

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

_FLOAT32 = schema.TensorType.FLOAT32


def _opcode(model: schema.ModelT, builtin: int) -> int:
    """Index of a builtin operator code in the model, added when absent."""
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_twin(sub: schema.SubGraphT, index: int, suffix: str) -> int:
    """A new float32 tensor shaped like tensor `index` (no buffer data); returns its index."""
    old = sub.tensors[index]
    t = schema.TensorT()
    t.shape, t.shapeSignature, t.type, t.buffer = old.shape, old.shapeSignature, _FLOAT32, 0
    t.name = (old.name or b"") + suffix.encode()
    sub.tensors.append(t)
    return len(sub.tensors) - 1


def _op(opcode: int, src: int, dst: int) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, [src], [dst]
    return op


def _read(content: bytes) -> schema.ModelT:
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(content, 0))


def _write(model: schema.ModelT, size_hint: int) -> bytes:
    builder = flatbuffers.Builder(size_hint + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def compact_name(raw: bytes) -> bytes:
    """`Net;;pkg.Net/torch.nn.modules.conv.Conv2d_conv1;1` -> `Net/Conv2d_conv1`.

    litert-torch names a tensor by every scope fused into it; the last module path says which layer
    wrote it, and each scope's class name without its Python package is enough to read it.
    """
    parts = raw.split(b";")
    scoped = [p for p in parts if b"/" in p]
    path = scoped[-1] if scoped else parts[0]
    return b"/".join(seg.rsplit(b".", 1)[-1] for seg in path.split(b"/"))


def compact_names(content: bytes) -> bytes:
    """The same model with every tensor named by `compact_name` (weights, ops and signatures untouched)."""
    model = _read(content)
    for sub in model.subgraphs:
        for t in sub.tensors:
            if t.name:
                t.name = compact_name(t.name)
    return _write(model, len(content))


def float_io(content: bytes) -> bytes:
    """The same model with float32 input and output tensors (int8 ones are wrapped in (de)quantize ops)."""
    model = _read(content)
    sub = model.subgraphs[0]
    quant, dequant = _opcode(model, schema.BuiltinOperator.QUANTIZE), _opcode(model, schema.BuiltinOperator.DEQUANTIZE)
    sub.inputs, sub.outputs = [int(i) for i in sub.inputs], [int(i) for i in sub.outputs]
    remap: dict[int, int] = {}
    for pos, idx in enumerate(sub.inputs):
        if sub.tensors[idx].type != _FLOAT32:
            new = _float_twin(sub, idx, "_float")
            sub.operators.insert(0, _op(quant, new, idx))
            sub.inputs[pos] = remap[idx] = new
    for pos, idx in enumerate(sub.outputs):
        if sub.tensors[idx].type != _FLOAT32:
            new = _float_twin(sub, idx, "_float")
            sub.operators.append(_op(dequant, idx, new))
            sub.outputs[pos] = remap[idx] = new
    for sig in model.signatureDefs or []:
        for tmap in (sig.inputs or []) + (sig.outputs or []):
            tmap.tensorIndex = remap.get(tmap.tensorIndex, tmap.tensorIndex)
    return _write(model, len(content))
