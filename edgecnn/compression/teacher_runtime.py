"""Where the frozen teacher of a distillation runs: PyTorch, or OpenVINO on CPUs.

Distilling on a CPU spends most of each step in the teacher's forward pass (the shared ResNet-56
teacher: about 70% of a ResNet-8 student's step). The teacher never trains, so it can run in an
inference runtime: on a 2-core Intel Xeon OpenVINO ran it 1.66x faster than PyTorch eager at batch
128, and whole distillation epochs 1.36x faster, with logits within 6.2e-6
(`benchmarks/distill_teacher.json`).

`teacher_runtime: auto` takes OpenVINO where it can stand in for the teacher exactly: on a CPU,
for a teacher whose output is one tensor (classification logits, keypoint heatmaps), without a
feature loss (those read the PyTorch teacher's inner maps through hooks); otherwise, and when the
conversion fails or its outputs differ from PyTorch's, the teacher runs in PyTorch and the fit
result says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from edgecnn.compression.openvino_ir import first_line, import_openvino
from edgecnn.core.console import quiet_libraries
from edgecnn.core.errors import UserError

# training precision -> the OpenVINO inference precision of the teacher (bf16 only where training is bf16)
HINTS = {"fp32": "f32", "bf16": "bf16"}
# the largest difference from the PyTorch teacher's output on the probe, relative to its largest value
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2}


class OpenVINOTeacher:
    """A frozen teacher compiled by OpenVINO: called like the module with a batch, returns a torch tensor."""

    def __init__(self, teacher: nn.Module, probe: torch.Tensor, precision: str, threads: int):
        ov = import_openvino()
        shape = [-1, *probe.shape[1:]]  # any batch size, the probe's image size
        with quiet_libraries(), torch.no_grad():
            model = ov.convert_model(teacher, example_input=probe[:1].contiguous(), input=[shape])
            self.compiled = ov.Core().compile_model(
                model,
                "CPU",
                {"INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": threads,
                 "PERFORMANCE_HINT": "LATENCY"},
            )
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer([np.ascontiguousarray(x.detach().float().numpy())])
        return torch.from_numpy(np.array(out[self.compiled.output(0)], dtype=np.float32))


@dataclass
class TeacherRun:
    """The teacher as the training loop calls it, the runtime that runs it, and why that one."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    runtime: str
    reason: str


def teacher_for_training(
    teacher: nn.Module, wanted: str, *, probe: torch.Tensor, device: torch.device, precision: str,
    feature_loss: bool,
) -> TeacherRun:
    """The frozen `teacher` in the runtime `wanted` (auto, torch or openvino) asks for, where it can run.

    `probe` is a normalised batch on `device` (its image size fixes the compiled model's; OpenVINO
    must give the teacher's outputs on it and its mirror images, or it does not stand in);
    `precision` is the training precision actually used; `feature_loss` says the loss reads the
    teacher's inner maps. An explicit `openvino` that cannot run raises UserError.
    """
    if wanted == "torch":
        return TeacherRun(teacher, "torch", "distill.teacher_runtime: torch")
    blocker = None
    if device.type != "cpu":
        blocker = f"training runs on {device.type}, OpenVINO runs the teacher on CPUs only"
    elif feature_loss:
        blocker = "the feature loss reads the PyTorch teacher's inner maps"
    elif precision not in HINTS:
        blocker = f"training precision {precision} has no OpenVINO CPU counterpart"
    else:
        check = torch.cat([probe, probe.flip(-1)])  # more images than the one the conversion traces
        with torch.no_grad():
            out = teacher(check)
        if not isinstance(out, torch.Tensor):
            blocker = f"the teacher returns {type(out).__name__}, not one tensor"
    if blocker is None:
        try:
            ov_teacher = OpenVINOTeacher(teacher, probe, precision, max(1, torch.get_num_threads()))
        except Exception as e:  # noqa: BLE001 - a converter failure is the model's
            blocker = f"OpenVINO could not convert it ({first_line(e, 160)})"
        else:  # a traced graph can differ from the module (data-dependent Python branches): compare
            diff = float((ov_teacher(check) - out.float()).abs().max())  # on the CPU
            limit = TOLERANCE[precision] * max(1.0, float(out.abs().max()))
            if diff <= limit:
                return TeacherRun(ov_teacher, "openvino",
                                  f"distill.teacher_runtime: {wanted}; {HINTS[precision]} on CPU, "
                                  f"outputs within {diff:.1e} of PyTorch's on the probe")
            blocker = f"OpenVINO's output differs from PyTorch's by {diff:.3g} on the probe (limit {limit:.3g})"
    if wanted == "openvino":
        raise UserError(
            f"distill.teacher_runtime: openvino cannot run this teacher: {blocker}; set it to auto or torch"
        )
    return TeacherRun(teacher, "torch", f"distill.teacher_runtime: auto chose torch: {blocker}")
