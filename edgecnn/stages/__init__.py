"""The pipeline's stages, in order."""

from edgecnn.stages.bench import BenchStage
from edgecnn.stages.distill import DistillStage
from edgecnn.stages.export import ExportStage
from edgecnn.stages.prune import PruneStage
from edgecnn.stages.quantize import QuantizeStage
from edgecnn.stages.teacher import TeacherStage

STAGES = [TeacherStage(), DistillStage(), PruneStage(), ExportStage(), QuantizeStage(), BenchStage()]

__all__ = ["STAGES", "TeacherStage", "DistillStage", "PruneStage", "ExportStage", "QuantizeStage", "BenchStage"]
