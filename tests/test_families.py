"""Model families (issue 12): the registry behind the one pipeline, CLI and API; the schema and
task listing commands; a family of one's own plugs in without touching the pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from edgecompress.errors import ConfigError
from edgecompress.families import (
    ModelFamily,
    family_for,
    get_family,
    load_any_recipe,
    register_family,
    tasks,
)
from edgecompress.pipeline import Pipeline
from edgecompress.stages.base import Context, Stage, StageResult
from tests.conftest import run_cli


def _cli(args: list[str]) -> tuple[int, str, str]:
    done = run_cli(*args)
    return done.returncode, done.stdout, done.stderr


def test_builtin_families_by_task():
    assert {"image-classification", "text-classification"} <= set(tasks())
    assert family_for({}).task == "image-classification"  # recipes written before families
    assert family_for({"task": "text-classification"}).task == "text-classification"
    image = get_family("image-classification")
    assert [s.name for s in image.stages()] == ["data", "finetune", "distill", "prune", "qat",
                                                "export", "bench", "report"]
    text = get_family("text-classification")
    # One data stage and one report stage class for both families.
    assert type(text.stages()[-1]) is type(image.stages()[-1])
    assert type(text.stages()[0]) is type(image.stages()[0])


def test_unknown_or_bad_task_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown task 'text-clasification'.*known tasks: "
                                          "image-classification, text-classification"):
        family_for({"task": "text-clasification"})
    with pytest.raises(ConfigError, match="task: must be a string"):
        family_for({"task": 3})
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\ntask: detection\n")
    with pytest.raises(ConfigError, match="unknown task 'detection'"):
        load_any_recipe(path)
    code, _, err = _cli(["validate", str(path)])
    assert code == 2 and "unknown task 'detection'" in err and "Traceback" not in err


def test_register_family_refuses_a_second_owner_of_a_task():
    class Impostor(ModelFamily):
        task = "image-classification"

    with pytest.raises(ConfigError, match="already the family ImageFamily"):
        register_family(Impostor)

    class Nameless(ModelFamily):
        pass

    with pytest.raises(ConfigError, match="has no 'task'"):
        register_family(Nameless)


class _TableRecipe:
    """A minimal recipe object for the toy family below."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw, self.task, self.name, self.seed = raw, raw["task"], "toy", 0
        self.device, self.threads = "cpu", None
        self.data, self.teacher = raw.get("data", {}), {}


class _CountStage(Stage):
    name = "count"

    def config(self, ctx: Context) -> dict[str, Any]:
        return {"n": ctx.recipe.raw["n"]}

    def run(self, ctx: Context) -> StageResult:
        path = ctx.stage_dir(self.name) / "count.json"
        path.write_text(json.dumps({"n": ctx.recipe.raw["n"]}))
        return StageResult(outputs={"count": path}, metrics={"n": ctx.recipe.raw["n"]})


def test_a_family_of_ones_own_runs_in_the_one_pipeline(tmp_path):
    """A third family needs a registry entry, not a fork: the Pipeline takes its stages,
    context and preflight, and gives it manifests, resume and the run directory rules."""

    @register_family
    class ToyFamily(ModelFamily):
        task: ClassVar[str] = "toy-counting"
        summary: ClassVar[str] = "counts"
        report_upstream: ClassVar[tuple[str, ...]] = ("count",)
        checked: ClassVar[list[str]] = []

        def parse_recipe(self, raw, *, source, base_dir):
            if "n" not in raw:
                raise ConfigError(f"{source}: n: missing")
            return _TableRecipe(raw)

        def recipe_model(self):
            return dict

        def recipe_to_dict(self, recipe):
            return dict(recipe.raw)

        def context(self, recipe, run_dir, dist_info):
            return Context(recipe, run_dir, dist_info)

        def stages(self):
            return [_CountStage()]

        def preflight(self, ctx):
            self.checked.append(ctx.recipe.raw["n"])

        def data_fingerprint(self, ctx):
            return str(ctx.recipe.raw["n"])

        def record_data(self, ctx, out_dir):
            return {}, {}

        def report_body(self, ctx, manifests, targets):
            return {}

    assert "toy-counting" in tasks()
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "task": "toy-counting", "n": 3}))
    recipe = load_any_recipe(path)
    out = tmp_path / "run"
    assert Pipeline(recipe, out).run() == {"count": "ran"}
    assert Pipeline(load_any_recipe(path), out).run() == {"count": "skipped"}
    assert json.loads((out / "count" / "count.json").read_text()) == {"n": 3}
    assert json.loads((out / "recipe.json").read_text())["task"] == "toy-counting"
    assert ToyFamily.checked == [3, 3]
    path.write_text(yaml.safe_dump({"version": 1, "task": "toy-counting"}))
    with pytest.raises(ConfigError, match="n: missing"):
        load_any_recipe(path)


def test_schema_command_prints_every_key_with_defaults_for_each_task():
    code, out, _ = _cli(["schema"])
    assert code == 0
    assert "task: \"image-classification\"" in out and "  distill:" in out
    assert "    temperature: " in out and "targets:" in out and "# each item:" in out
    code, out, _ = _cli(["schema", "--task", "text-classification"])
    assert code == 0
    assert "task: <required>" in out and "  path: <required>" in out
    assert "max_length: 128" in out
    code, _, err = _cli(["schema", "--task", "nope"])
    assert code == 2 and "unknown task 'nope'" in err


def test_tasks_command_lists_the_families():
    code, out, _ = _cli(["tasks"])
    assert code == 0
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert set(lines) >= {"image-classification", "text-classification"}


def test_validate_resolves_either_task(tmp_path):
    image = tmp_path / "image.yaml"
    image.write_text("version: 1\n")
    code, out, _ = _cli(["validate", str(image)])
    assert code == 0 and yaml.safe_load(out)["task"] == "image-classification"
    text = Path(__file__).parents[1] / "examples" / "text-classification.yaml"
    code, out, _ = _cli(["validate", str(text)])
    assert code == 0 and yaml.safe_load(out)["task"] == "text-classification"
