"""Checks of untrusted model files: `check_model_file` refuses ONNX, TFLite and OpenVINO IR files that
are not well-formed before a runtime (C++ parsers) sees them."""

from __future__ import annotations

from pathlib import Path

from edgecnn.core.errors import UserError

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's limit; also far beyond any edge model


def check_model_file(path: Path) -> None:
    """Raise UserError unless an .onnx/.tflite file (or an OpenVINO .xml + .bin) is a well-formed model."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".tflite", ".xml"):
        return
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    size = path.stat().st_size
    if size == 0 or size > MAX_MODEL_BYTES:
        raise UserError(f"{path}: {'empty' if size == 0 else 'over 2 GB'}; give a complete .{suffix[1:]} model")
    if suffix == ".onnx":
        _check_onnx(path)
    elif suffix == ".xml":
        _check_openvino(path)
    else:
        _check_tflite(path)


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
        raise UserError(f"{path}: not a valid ONNX model ({e.__class__.__name__}); re-export it") from None
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute if a.t.name]
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors):
        raise UserError(f"{path}: the ONNX model keeps weights in external files; export it as one self-contained file")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - a checker failure of any kind means a bad file
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
        raise UserError(f"{path}: not a valid ONNX model ({first}); re-export it") from None
    if not model.graph.node or not model.graph.input or not model.graph.output:
        raise UserError(f"{path}: the ONNX graph has no nodes, inputs or outputs; re-export it")


def _check_tflite(path: Path) -> None:
    """Walk the whole flatbuffer (LiteRT's schema) in Python, bounds-checking every index a runtime follows."""
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UserError(f"{path}: not a TFLite flatbuffer (no TFL3 identifier); re-export it")
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # no LiteRT here: the identifier check above is all we can do
        return
    bad = f"{path}: damaged TFLite flatbuffer"
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    except Exception as e:  # noqa: BLE001 - out-of-bounds offsets surface as many error types
        raise UserError(f"{bad} ({e.__class__.__name__}); re-export it") from None
    subgraphs, buffers, codes = model.subgraphs or [], model.buffers or [], model.operatorCodes or []
    if not subgraphs:
        raise UserError(f"{bad} (no subgraph); re-export it")
    for b in buffers:
        if b.offset and (b.offset + b.size > len(data) or b.size < 0):
            raise UserError(f"{bad} (a weight buffer lies beyond the end of the file); re-export it")
    for g in subgraphs:
        tensors, ops = g.tensors or [], g.operators or []
        for t in tensors:
            if not 0 <= t.buffer < max(1, len(buffers)):
                raise UserError(f"{bad} (tensor {t.name!r} names a missing buffer); re-export it")
        indices = list(g.inputs if g.inputs is not None else []) + list(g.outputs if g.outputs is not None else [])
        for op in ops:
            if not 0 <= op.opcodeIndex < len(codes):
                raise UserError(f"{bad} (an operator names a missing op code); re-export it")
            indices += list(op.inputs if op.inputs is not None else [])
            indices += list(op.outputs if op.outputs is not None else [])
        if any(not -1 <= int(i) < len(tensors) for i in indices):
            raise UserError(f"{bad} (an operator or I/O names a missing tensor); re-export it")
        if not len(g.inputs if g.inputs is not None else []) or not len(g.outputs if g.outputs is not None else []):
            raise UserError(f"{bad} (the graph has no inputs or outputs); re-export it")


def _check_openvino(path: Path) -> None:
    """An IR: well-formed XML (no DTD or entities) naming a graph, every weight inside the .bin beside it."""
    import xml.etree.ElementTree as ET

    bad = f"{path}: not a valid OpenVINO IR"
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise UserError(f"{path}: its weights {weights.name} are missing; keep the .xml and .bin files together")
    text = path.read_bytes()
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise UserError(f"{bad} (it declares a DTD or entities); re-export it")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise UserError(f"{bad} (XML error at line {e.position[0]}: truncated or damaged); re-export it") from None
    layers = root.findall("./layers/layer")
    if root.tag != "net" or not layers or not any(la.get("type") == "Parameter" for la in layers):
        raise UserError(f"{bad} (no <net> with layers and an input); re-export it")
    size = weights.stat().st_size
    for layer in layers:
        data = layer.find("data")
        if layer.get("type") != "Const" or data is None or data.get("offset") is None:
            continue
        try:
            offset, nbytes = int(data.get("offset")), int(data.get("size", "0"))
        except ValueError:
            offset = nbytes = -1
        if offset < 0 or nbytes < 0:
            raise UserError(f"{bad} (layer {layer.get('name')!r} has a malformed weight offset); re-export it")
        end = offset + nbytes
        if end > size:
            raise UserError(
                f"{weights}: weights of layer {layer.get('name')!r} lie beyond its end ({end:,} > {size:,} bytes: "
                "truncated?); copy or re-export the .bin with its .xml"
            )
