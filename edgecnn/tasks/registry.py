"""The tasks by name: `task:` in a recipe picks one (classification is the default)."""

from __future__ import annotations

from edgecnn.core.errors import UserError
from edgecnn.tasks.base import Task

TASKS = ("classification", "detection", "keypoints")
DEFAULT_TASK = "classification"


def get_task(name: str = DEFAULT_TASK) -> Task:
    """The task named `name`; its module is imported only when asked for."""
    if name == "classification":
        from edgecnn.tasks.classification import ClassificationTask

        return ClassificationTask()
    if name == "detection":
        from edgecnn.tasks.detection.task import DetectionTask

        return DetectionTask()
    if name == "keypoints":
        from edgecnn.tasks.keypoints.task import KeypointsTask

        return KeypointsTask()
    raise UserError(f"task {name!r} is unknown; use one of {', '.join(TASKS)}")
