"""`diffalign pipeline`: recipes with variables, skipped finished steps, a clear stop on failure."""

from __future__ import annotations

import pytest

from diffalign.cli.pipeline import load_recipe, run_recipe

RECIPE = """
description: a test recipe
vars: {out: OUT, steps: 5}
steps:
  - name: show
    run: config show configs/demo/dpo.yaml train.max_steps={steps} train.output_dir={out}/run
    creates: "{out}/never"
  - name: keys
    run: config keys
"""


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text.replace("OUT", str(tmp_path / "out")))
    return path


def test_variables_and_overrides(tmp_path):
    description, steps = load_recipe(write(tmp_path, RECIPE), ["steps=7"])
    assert description == "a test recipe"
    assert steps[0].args == ["config", "show", "configs/demo/dpo.yaml", "train.max_steps=7",
                             f"train.output_dir={tmp_path}/out/run"]
    assert steps[0].creates == tmp_path / "out" / "never" and steps[1].creates is None


def test_runs_steps_and_skips_finished_ones(tmp_path, capsys):
    path = write(tmp_path, RECIPE)
    _, steps = load_recipe(path, [])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "never").write_text("")
    assert run_recipe(steps) == 0
    out = capsys.readouterr().out
    assert "[1/2] show: done already" in out and "[2/2] keys: finished" in out


def test_failure_stops_with_a_message(tmp_path, capsys):
    path = write(tmp_path, RECIPE.replace("config keys", "config show no-such-file.yaml"))
    _, steps = load_recipe(path, [])
    assert run_recipe(steps[1:]) != 0
    assert "run the recipe again" in capsys.readouterr().err


def test_step_that_does_not_create_its_output_fails(tmp_path, capsys):
    _, steps = load_recipe(write(tmp_path, RECIPE), [])
    assert run_recipe(steps[:1]) == 1
    assert "did not create" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        (RECIPE, ["nope=1"], "no such variable; defined: out, steps"),
        (RECIPE.replace("{steps}", "{stepz}"), [], "unknown variable {stepz}"),
        (RECIPE.replace("run: config keys", "cmd: config keys"), [], "each step needs `run:"),
        ("vars: {}\nsteps: []\n", [], "no steps"),
        ("step: []\n", [], "unknown top-level key"),
    ],
)
def test_clear_errors(tmp_path, text, overrides, message):
    with pytest.raises(ValueError, match=message):
        load_recipe(write(tmp_path, text), overrides)


def test_shipped_recipes_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    recipes = sorted((root / "pipelines").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        _, steps = load_recipe(recipe, [])
        assert all(step.args[0] in {"train", "fuse", "pairs", "eval", "score", "cache", "relabel"} for step in steps)
