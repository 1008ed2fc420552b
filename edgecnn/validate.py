"""Checks of untrusted inputs before anything heavy runs or a runtime parses them.

`check_model_file` refuses ONNX and TFLite files that are not well-formed before a runtime (C++
parsers) sees them; `preflight` loads everything a recipe names (data, models, weights) before
the pipeline touches the run directory, so bad input fails in seconds and leaves a run intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgecnn.errors import UserError

if TYPE_CHECKING:
    from edgecnn.pipeline import Context

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's limit; also far beyond any edge model


def check_model_file(path: Path) -> None:
    """Raise UserError unless an .onnx/.tflite file is a well-formed, self-contained model."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".tflite"):
        return
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    size = path.stat().st_size
    if size == 0 or size > MAX_MODEL_BYTES:
        raise UserError(f"{path}: {'empty' if size == 0 else 'over 2 GB'}; give a complete .{suffix[1:]} model")
    if suffix == ".onnx":
        _check_onnx(path)
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


def preflight(ctx: Context) -> None:
    """Load what the recipe names (data, teacher, student, weights) and check names it uses, failing fast.

    The stages load the same things the same way later; doing it first means bad input never
    costs a training run, and nothing in an existing run directory is touched before it is found.
    """
    from edgecnn.models import build_model, load_weights
    from edgecnn.stages.bench import check_bench_device
    from edgecnn.stages.teacher import data_model_info, load_user_model

    recipe = ctx.recipe
    check_bench_device(recipe.bench.device)
    data = ctx.data
    t = recipe.teacher
    teacher = None
    if t.model or t.weights:
        teacher, _ = load_user_model(t.model or "lenet", t.kwargs, t.weights, data, "teacher")
    elif t.kwargs:
        teacher = build_model(data_model_info(data, "lenet", t.kwargs))
    s = recipe.student
    student = None
    if s is not None and s.model is not None:
        student = build_model(data_model_info(data, s.model, s.kwargs))
        if s.weights:
            load_weights(student, Path(s.weights))
    for field, model in (("teacher", teacher), ("student", student)):
        if model is not None:
            check_forward(model, data.input_shape, data.num_classes, field)
    if recipe.prune is not None and recipe.prune.ignored_layers:
        pruned = student if student is not None else teacher
        if pruned is not None:
            names = dict(pruned.named_modules())
            missing = [n for n in recipe.prune.ignored_layers if n not in names]
            if missing:
                examples = ", ".join(list(names)[1:6])
                raise UserError(f"prune.ignored_layers: no layer named {missing[0]!r}; layers are e.g. {examples}")


def check_forward(model, input_shape: tuple[int, ...], num_classes: int, field: str) -> None:
    """Run one all-zero image through a model: kwargs that build a broken network fail here, not in training."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as e:  # noqa: BLE001 - any failure of the user's network is bad input
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise UserError(
            f"{field}: the model fails on one {'x'.join(map(str, input_shape))} image of the data "
            f"({e.__class__.__name__}: {first}); fix {field}.model / {field}.kwargs"
        ) from None
    finally:
        model.train(was_training)
    if isinstance(out, torch.Tensor) and (out.ndim != 2 or out.shape[-1] != num_classes):
        raise UserError(
            f"{field}: the model outputs shape {tuple(out.shape)} for one image, the data has {num_classes} "
            f"classes; fix {field}.model / {field}.kwargs (num_classes)"
        )
