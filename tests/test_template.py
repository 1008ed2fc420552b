"""recipes/template.yaml documents every recipe key with its real default."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecnn.config.recipe import Recipe, load_recipe, recipe_dict

TEMPLATE = Path(__file__).resolve().parents[1] / "recipes" / "template.yaml"


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        out.add(prefix + k)
        if isinstance(v, dict) and v and k not in ("kwargs",):
            out |= _keys(v, prefix + k + ".")
    return out


def test_template_lists_every_key_with_its_default():
    raw = yaml.safe_load(TEMPLATE.read_text())
    defaults = recipe_dict(Recipe())
    defaults.pop("sweep", None)
    missing = _keys(defaults) - _keys(raw)
    assert not missing, f"template.yaml lacks {sorted(missing)}"
    loaded = recipe_dict(Recipe.model_validate(raw))
    loaded.pop("sweep", None)
    # the template's teacher/student/train values are the defaults (student.model shown as lenet)
    for section in ("data", "train", "distill", "prune", "quantize", "export", "bench"):
        assert loaded[section] == defaults[section], section


@pytest.mark.parametrize("path", sorted(TEMPLATE.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    """A recipe the README points users to is never stale against the schema (its data may be absent)."""
    recipe = load_recipe(path)
    assert recipe.name
