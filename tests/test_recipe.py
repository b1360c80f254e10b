"""Recipe validation: strict keys with their path, defaults in one place, paths resolved."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgecompress.errors import ConfigError
from edgecompress.recipe import Recipe, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]


def test_defaults_fill_every_section():
    recipe = parse_recipe({})
    assert recipe.version == 1
    assert recipe.data.source == "digits"
    assert recipe.stages.distill.temperature == 2.0  # issue 17's measured defaults
    assert recipe.stages.distill.augment == "mixup"
    assert recipe.targets[0].backend == "onnxruntime"
    assert recipe.stages.export.opset >= 18


def test_unknown_key_is_rejected_with_its_path():
    with pytest.raises(ConfigError) as info:
        parse_recipe({"stages": {"distill": {"temprature": 2.0}}}, source="r.yaml")
    assert "stages.distill.temprature: unknown key" in str(info.value)
    assert "r.yaml" in str(info.value)


def test_every_error_is_listed_at_once():
    with pytest.raises(ConfigError) as info:
        parse_recipe({"seed": "x", "data": {"val_fraction": 2}, "bogus": 1})
    text = str(info.value)
    assert "seed" in text and "data.val_fraction" in text and "bogus: unknown key" in text


@pytest.mark.parametrize("raw, fragment", [
    ({"version": 2}, "version"),
    ({"teacher": {"kind": "factory"}}, "factory"),
    ({"teacher": {"kind": "torchscript"}}, "path"),
    ({"targets": [{"name": "a"}, {"name": "a"}]}, "duplicate target names: a"),
    ({"targets": [{"name": "../x"}]}, "targets.0.name"),
    ({"targets": [{"name": "a", "runs": 10}]}, "targets.0.runs"),
    ({"stages": {"export": {"opset": 17}}}, "stages.export.opset"),
    ({"stages": {"prune": {"enabled": True, "ratio": 1.5}}}, "stages.prune.ratio"),
])
def test_invalid_values_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as info:
        parse_recipe(raw)
    assert fragment in str(info.value)


def test_relative_paths_resolve_against_the_recipe(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "r.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "data": {"source": "npz", "path": "d.npz"},
                                    "teacher": {"kind": "builtin", "weights": "w.pt"}}))
    recipe = load_recipe(path)
    assert recipe.data.path == tmp_path / "sub" / "d.npz"
    assert recipe.teacher.weights == tmp_path / "sub" / "w.pt"
    assert recipe.name == "r"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_recipe(bad)


def test_shipped_recipes_validate():
    demo = load_recipe(REPO / "edgecompress" / "recipes" / "digits.yaml")
    assert isinstance(demo, Recipe)
    example = REPO / "examples" / "digits.yaml"
    assert example.read_text() == (REPO / "edgecompress" / "recipes" / "digits.yaml").read_text()


def test_every_field_is_described():
    missing = []

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation, f"{prefix}{name}.")
            elif not field.description and name not in ("finetune", "distill", "prune", "qat",
                                                        "export", "data", "stages", "gate",
                                                        "teacher", "student"):
                missing.append(prefix + name)
    walk(Recipe, "")
    assert not missing, f"fields without a description: {missing}"
