"""Preflight: load everything a recipe names (data, models, weights) before the pipeline touches the run
directory, so bad input fails in seconds and leaves a run intact."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgecnn.core.errors import UserError

if TYPE_CHECKING:
    from edgecnn.pipeline.context import Context

def preflight(ctx: Context) -> None:
    """Load what the recipe names (data, teacher, student, weights) and check names it uses, failing fast.

    The stages load the same things the same way later; doing it first means bad input never
    costs a training run, and nothing in an existing run directory is touched before it is found.
    """
    import torch

    from edgecnn.devices.profiles import check_local_device
    from edgecnn.models.files import build_model, load_weights
    from edgecnn.models.user import data_model_info, load_user_model
    from edgecnn.pipeline.stages.common import decision_split
    from edgecnn.pipeline.stages.teacher import default_teacher

    recipe = ctx.recipe
    check_local_device(recipe.bench.device, "bench.device")
    data = ctx.data
    if recipe.export is not None and recipe.export.formats:
        decision_split(ctx)  # the export and quantize gates need validation images
    t = recipe.teacher
    teacher = None
    if t.model or t.weights:
        teacher, _ = load_user_model(t.model or default_teacher(recipe.task), t.kwargs, t.weights, data, "teacher")
    elif t.kwargs:
        teacher = build_model(data_model_info(data, default_teacher(recipe.task), t.kwargs))
    s = recipe.student
    student = None
    if s is not None and s.model is not None:
        student = build_model(data_model_info(data, s.model, s.kwargs))
        if s.weights:
            load_weights(student, Path(s.weights))
    if s is not None and s.from_teacher is not None:
        from edgecnn.compression.depth import removable

        cut = teacher if teacher is not None else build_model(data_model_info(data, default_teacher(recipe.task), {}))
        removable(cut, torch.zeros(1, *data.input_shape), s.from_teacher.keep_blocks, s.from_teacher.max_params)
    for field, model in (("teacher", teacher), ("student", student)):
        if model is not None:
            check_forward(model, data.input_shape, data.num_classes, field, recipe.task == "classification")
            ctx.task.head_spec(model, data)  # a detector the task cannot decode, or built for other data, fails here
    if recipe.prune is not None and recipe.prune.ignored_layers:
        pruned = student if student is not None else teacher
        if pruned is not None:
            from edgecnn.compression.pruning import kept_layers

            kept_layers(pruned, recipe.prune.ignored_layers, [])  # a name or pattern matching no layer fails here


def check_forward(model, input_shape: tuple[int, ...], num_classes: int, field: str, logits: bool = True) -> None:
    """Run one all-zero image through a model: kwargs that build a broken network fail here, not in training.

    With `logits` (classification) the output must be (1, num_classes)."""
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
    if logits and isinstance(out, torch.Tensor) and (out.ndim != 2 or out.shape[-1] != num_classes):
        raise UserError(
            f"{field}: the model outputs shape {tuple(out.shape)} for one image, the data has {num_classes} "
            f"classes; fix {field}.model / {field}.kwargs (num_classes)"
        )
