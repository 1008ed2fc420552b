"""What the stages share (Context) and what a stage is (Stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecnn.config.recipe import Recipe, recipe_dict
from edgecnn.core.errors import UserError
from edgecnn.data.datasets import Dataset
from edgecnn.data.identity import data_sha256
from edgecnn.tasks.base import Task
from edgecnn.tasks.registry import get_task


@dataclass
class Context:
    """What every stage shares: the recipe, the run directory, data and earlier stages' results."""

    recipe: Recipe
    run_dir: Path
    results: dict[str, dict] = field(default_factory=dict)
    _data: Dataset | None = None
    _data_sha256: str | None = None
    checked: bool = False

    @property
    def task(self) -> Task:
        """The recipe's task (classification by default): data, losses, metrics, parity, kept layers."""
        return get_task(self.recipe.task)

    @property
    def data(self) -> Dataset:
        if self._data is None:
            d = self.recipe.data
            size = d.image_size
            if self.recipe.task != "classification" and isinstance(size, tuple):
                if size[0] != size[1]:
                    raise UserError(f"data.image_size {list(size)}: {self.recipe.task} letterboxes to a square; "
                                    f"give one number, e.g. image_size: {max(size)}")
                size = size[0]
            extra = {"sigmas": d.sigmas} if d.sigmas is not None else {}  # keypoints only (the recipe checks)
            self._data = self.task.load_data(d.spec, image_size=size, val_fraction=d.val_fraction, mean=d.mean,
                                             std=d.std, **extra)
        return self._data

    @property
    def data_sha256(self) -> str:
        """A hash of the decoded data (every split's images and labels) and its normalisation."""
        if self._data_sha256 is None:
            self._data_sha256 = data_sha256(self.data)
        return self._data_sha256

    @property
    def augment(self) -> bool:
        a = self.recipe.data.augment
        if self.recipe.task != "classification":
            return a != "none"  # the task's own augmentation (boxes move with the pixels)
        if a == "auto":
            c, h, w = self.data.input_shape
            return c == 3 and h == w == 32
        return a == "cifar"

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def latest_model(self) -> tuple[str, Path]:
        """The stage and file of the most compressed PyTorch model so far."""
        for stage in ("prune", "distill", "teacher"):
            r = self.results.get(stage)
            if r and r.get("model_file"):
                return stage, self.stage_dir(stage) / r["model_file"]
        raise UserError("no model to compress: the recipe needs a teacher or a student")


DATA_IDENTITY = ("spec", "val_fraction", "mean", "std", "image_size")
"""The `data` keys that decide what the images and their normalisation are: every stage reads them."""


class Stage:
    """A pipeline stage: a config slice, the stages it reads, and `run` producing files + result.

    `data_reads` names the other `data` keys the stage uses (augment, eval_samples, calib_samples),
    so changing one redoes only the stages that read it.
    """

    name: str = ""
    reads: tuple[str, ...] = ()
    data_reads: tuple[str, ...] = ()

    def enabled(self, recipe: Recipe) -> bool:
        return True

    def config(self, recipe: Recipe) -> Any:
        """The part of the recipe this stage's output depends on (hashed into its key)."""
        return recipe_dict(recipe).get(self.name)

    def data_config(self, recipe: Recipe) -> dict:
        """The part of the `data` section this stage's output depends on (hashed into its key), with the task."""
        data = recipe_dict(recipe)["data"]
        out = {k: data[k] for k in (*DATA_IDENTITY, *self.data_reads)}
        if data.get("sigmas") is not None:  # keypoints' OKS sigmas: every score depends on them
            out["sigmas"] = data["sigmas"]
        return out if recipe.task == "classification" else {**out, "task": recipe.task}

    def run(self, ctx: Context, out: Path) -> dict:
        """Write this stage's artifacts into `out` and return its result record."""
        raise NotImplementedError
