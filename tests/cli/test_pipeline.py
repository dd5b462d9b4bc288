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

    from diffalign.cli.main import build_parser

    root = Path(__file__).resolve().parents[2]
    recipes = sorted((root / "pipelines").glob("*.yaml"))
    assert recipes
    parser = build_parser()
    for recipe in recipes:
        _, steps = load_recipe(recipe, [])
        for step in steps:  # every step is a valid diffalign command line
            assert parser.parse_args(step.args).command == step.args[0]


LOOP_RECIPE = """
vars: {out: OUT, methods: "dpo,mapo", seeds: "0,1"}
steps:
  - name: train {method} {seed}
    for: {seed: "{seeds}", method: "{methods}"}
    run: train configs/demo/{method}.yaml train.seed={seed} train.output_dir={out}/{method}-seed{seed}
    creates: "{out}/{method}-seed{seed}/done"
  - name: evaluate
    for: {seed: "{seeds}", method: "{methods}"}
    join: {runs: "{method}-seed{seed}={out}/{method}-seed{seed}"}
    run: eval {runs} --out {out}/eval
"""


def test_for_expands_every_combination_and_join_gathers_them(tmp_path):
    _, steps = load_recipe(write(tmp_path, LOOP_RECIPE), ["methods=dpo,mapo,kto", "seeds=3"])
    out = tmp_path / "out"
    assert [s.name for s in steps] == ["train dpo 3", "train mapo 3", "train kto 3", "evaluate"]
    assert steps[1].args == ["train", "configs/demo/mapo.yaml", "train.seed=3", f"train.output_dir={out}/mapo-seed3"]
    assert steps[2].creates == out / "kto-seed3" / "done"
    assert steps[3].args == ["eval", *(f"{m}-seed3={out}/{m}-seed3" for m in ("dpo", "mapo", "kto")), "--out", f"{out}/eval"]
    assert len(load_recipe(write(tmp_path, LOOP_RECIPE), [])[1]) == 5  # 2 seeds x 2 methods + the evaluation


@pytest.mark.parametrize("bad,match", [
    ("for: {out: '1,2'}", "hides the recipe variable"),
    ("for: {x: ''}", "empty list"),
    ("for: [1, 2]", "maps loop variables"),
])
def test_bad_loops_are_refused(tmp_path, bad, match):
    text = f"vars: {{out: OUT}}\nsteps:\n  - run: config keys\n    {bad}\n"
    with pytest.raises(ValueError, match=match):
        load_recipe(write(tmp_path, text), [])


def test_a_step_with_several_processes_runs_under_accelerate_launch(tmp_path, capsys):
    path = write(tmp_path, """
vars: {gpus: 1}
steps:
  - name: evaluate
    run: eval assets/tiny-sd --out OUT/eval
    processes: "{gpus}"
""")
    import sys

    (one,) = load_recipe(path, [])[1]
    assert one.processes == 1 and one.command() == [sys.executable, "-m", "diffalign.cli.main", *one.args]
    (many,) = load_recipe(path, ["gpus=4"])[1]
    assert many.command() == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4", "-m",
                              "diffalign.cli.main", "eval", "assets/tiny-sd", "--out", f"{tmp_path}/out/eval"]
    assert run_recipe([many], dry_run=True) == 0
    assert f"accelerate launch --num_processes 4 -m diffalign.cli.main eval assets/tiny-sd --out {tmp_path}/out/eval" \
        in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"step 1: processes 'two' is not a whole number of processes \(1 or more\)"):
        load_recipe(path, ["gpus=two"])


def test_out_sets_the_recipes_out_variable(tmp_path, capsys):
    from diffalign.cli.main import main

    path = write(tmp_path, RECIPE)
    _, steps = load_recipe(path, [], out=str(tmp_path / "elsewhere"))
    assert steps[0].args[-1] == f"train.output_dir={tmp_path}/elsewhere/run"
    assert load_recipe(path, [f"out={tmp_path}/elsewhere"])[1][0].args == steps[0].args  # the same as out=DIR
    assert main(["pipeline", str(path), "--out", str(tmp_path / "elsewhere"), "--dry-run"]) == 0
    assert f"{tmp_path}/elsewhere/run" in capsys.readouterr().out


def test_out_needs_a_recipe_that_declares_out(tmp_path, capsys):
    from diffalign.cli.main import main

    path = tmp_path / "recipe.yaml"
    path.write_text("vars: {steps: 5}\nsteps:\n  - name: keys\n    run: config keys\n")
    assert main(["pipeline", str(path), "--out", "x"]) == 2
    assert capsys.readouterr().err.startswith(
        f"diffalign pipeline: error: {path}: --out sets the recipe's `out` variable, but its vars declare none; add "
        "`out: DIR` under vars: (defined: steps)\n")
    with pytest.raises(ValueError, match="--out b and out=a disagree: give one of them"):
        load_recipe(write(tmp_path, RECIPE), ["out=a"], out="b")
