"""`diffalign pipeline`: run an end-to-end recipe (data -> train -> evaluate) written as a YAML file.

A recipe is a list of steps, each one `diffalign` command line, with `{name}` variables:

    description: two on-policy rounds on the embedded demo
    vars: {out: runs/demo-rounds}
    steps:
      - name: round 1
        run: train configs/demo/dpo.yaml train.output_dir={out}/round-1
        creates: "{out}/round-1/pytorch_lora_weights.safetensors"

Steps run in order, each in its own process. A step whose `creates` path exists is skipped, so a
recipe that stopped (crash, Ctrl-C) resumes at the step that did not finish when it is run again.
`key=value` arguments override `vars`; `--out DIR` sets the `out` variable (every shipped recipe declares one).

A step with `for` runs once for every combination of its loop variables, each a comma-separated list
(after substitution, so a list can come from `vars` and be overridden on the command line):

      - name: train {method}, seed {seed}
        for: {method: "{methods}", seed: "0,1,2"}
        run: train configs/demo/{method}.yaml train.seed={seed} train.output_dir={out}/{method}-seed{seed}
        creates: "{out}/{method}-seed{seed}/pytorch_lora_weights.safetensors"

With `join` as well, the step runs once, and each `join` variable is its template filled in for every
combination, joined by spaces (every run of the loop above as `NAME=FOLDER` arguments of one command):

      - name: evaluate every run
        for: {method: "{methods}", seed: "0,1,2"}
        join: {runs: "{method}-seed{seed}={out}/{method}-seed{seed}"}
        run: eval {runs} --out {out}/eval

A step with `processes: N` (after substitution; e.g. `processes: "{gpus}"` with a `gpus` variable) runs under
`accelerate launch --num_processes N` when N > 1: one process per GPU, for the commands that split their work
over processes (train, generate, eval, score, relabel, captions, pairs, cache).
"""

from __future__ import annotations

import argparse
import itertools
import shlex
import string
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config.options import option, out_option
from .options import add_options, job_values


@dataclass(frozen=True)
class Step:
    """One recipe step: a name, the diffalign arguments, and the path whose existence means it is done."""

    name: str
    args: list[str]
    creates: Path | None
    processes: int = 1

    def command(self) -> list[str]:
        """The command line that runs the step: `python -m diffalign.cli.main ARGS`, under `accelerate launch
        --num_processes N` when the step asks for several processes."""
        launch = ["-m", "accelerate.commands.launch", "--num_processes", str(self.processes)] if self.processes > 1 else []
        return [sys.executable, *launch, "-m", "diffalign.cli.main", *self.args]


def _substitute(text: str, values: dict[str, str], where: str) -> str:
    try:
        return string.Formatter().vformat(text, (), values)
    except KeyError as error:
        raise ValueError(f"{where}: unknown variable {{{error.args[0]}}}; defined: {', '.join(sorted(values))}") from None


def _loop(spec: object, values: dict[str, str], where: str) -> list[dict[str, str]]:
    """Every combination of a step's `for` variables (each a comma-separated list after substitution)."""
    if spec is None:
        return [{}]
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: `for` maps loop variables to comma-separated lists, e.g. {{seed: '0,1,2'}}")
    names, lists = [], []
    for name, items in spec.items():
        if str(name) in values:
            raise ValueError(f"{where}: loop variable {name!r} hides the recipe variable of that name; rename it")
        listed = [x.strip() for x in _substitute(str(items), values, where).split(",") if x.strip()]
        if not listed:
            raise ValueError(f"{where}: loop variable {name!r} has an empty list")
        names.append(str(name))
        lists.append(listed)
    return [dict(zip(names, combo)) for combo in itertools.product(*lists)]


def _joined(spec: object, loops: list[dict[str, str]], values: dict[str, str], where: str) -> dict[str, str]:
    """A step's `join` variables: each template filled in for every loop combination, space-separated."""
    if not isinstance(spec, dict) or not spec:
        raise ValueError(f"{where}: `join` maps variables to templates, e.g. {{runs: '{{method}}={{out}}/{{method}}'}}")
    return {str(name): " ".join(_substitute(str(template), {**values, **combo}, where) for combo in loops)
            for name, template in spec.items()}


def _processes(value: object, values: dict[str, str], where: str) -> int:
    text = _substitute(str(value), values, where).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{where}: processes {text!r} is not a whole number of processes (1 or more)")
    return int(text)


@dataclass
class PipelineOptions:
    """The options of `diffalign pipeline` besides the recipe and its `key=value` overrides."""

    out: str | None = out_option("where the recipe writes: sets its `out` variable (the same as out=OUT)",
                                 default=None)
    dry_run: bool = option(False, "print the steps (and which are done) without running them")


def load_recipe(path: str | Path, overrides: list[str], out: str | None = None) -> tuple[str, list[Step]]:
    """The description and the steps of a recipe file, with `vars`, the `key=value` overrides and `out` (the
    `out` variable, as `--out` gives it) substituted."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found (the shipped ones are in pipelines/)")
    recipe = yaml.safe_load(path.read_text()) or {}
    unknown = set(recipe) - {"description", "vars", "steps"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level key(s) {sorted(unknown)}; a recipe has description, vars, steps")
    values = {str(k): str(v) for k, v in (recipe.get("vars") or {}).items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        if key not in values:
            raise ValueError(f"override {key!r}: the recipe defines no such variable; defined: {', '.join(sorted(values))}")
        values[key] = value
    if out is not None:
        if "out" not in values:
            raise ValueError(f"{path}: --out sets the recipe's `out` variable, but its vars declare none; add `out: "
                             f"DIR` under vars: (defined: {', '.join(sorted(values)) or 'none'})")
        if any(item.partition("=")[0] == "out" for item in overrides) and values["out"] != str(out):
            raise ValueError(f"--out {out} and out={values['out']} disagree: give one of them")
        values["out"] = str(out)
    steps = []
    for i, raw in enumerate(recipe.get("steps") or [], start=1):
        where = f"{path} step {i}"
        if not isinstance(raw, dict) or "run" not in raw:
            raise ValueError(f"{where}: each step needs `run: <diffalign command line>`")
        extra = set(raw) - {"name", "run", "creates", "for", "join", "processes"}
        if extra:
            raise ValueError(f"{where}: unknown key(s) {sorted(extra)}; a step has name, run, creates, for, join, "
                             "processes")
        loops = _loop(raw.get("for"), values, where)
        if "join" in raw:
            loops = [_joined(raw["join"], loops, values, where)]
        for loop_values in loops:
            scope = {**values, **loop_values}
            args = shlex.split(_substitute(str(raw["run"]), scope, where))
            creates = raw.get("creates")
            name = _substitute(str(raw["name"]), scope, where) if "name" in raw else (args[0] if args else f"step {i}")
            processes = _processes(raw.get("processes", 1), scope, where)
            steps.append(Step(name, args, Path(_substitute(str(creates), scope, where)) if creates else None, processes))
    if not steps:
        raise ValueError(f"{path}: no steps")
    return str(recipe.get("description", "")).strip(), steps


def run_recipe(steps: list[Step], dry_run: bool = False, in_process: bool = False) -> int:
    """Run the steps not yet done, in order, each as `Step.command()` (with `in_process`, a one-process step
    as `diffalign.cli.main.main(ARGS)` in this process: no interpreter start-up per step, for tests);
    the first failure stops."""
    for i, step in enumerate(steps, start=1):
        line = "diffalign " + shlex.join(step.args)
        if step.processes > 1:
            line = f"accelerate launch --num_processes {step.processes} -m diffalign.cli.main " + shlex.join(step.args)
        if step.creates is not None and step.creates.exists():
            print(f"[{i}/{len(steps)}] {step.name}: done already ({step.creates} exists), skipped", flush=True)
            continue
        print(f"[{i}/{len(steps)}] {step.name}: {line}", flush=True)
        if dry_run:
            continue
        start = time.time()
        if in_process and step.processes == 1:
            from .main import main

            code = main(list(step.args))
        else:
            code = subprocess.call(step.command())
        if code != 0:
            print(f"step {i} ({step.name}) failed with exit status {code}; fix it and run the recipe again: "
                  "finished steps are skipped", file=sys.stderr)
            return code
        if step.creates is not None and not step.creates.exists():
            print(f"step {i} ({step.name}) finished but did not create {step.creates}; check the recipe's `creates`",
                  file=sys.stderr)
            return 1
        print(f"[{i}/{len(steps)}] {step.name}: finished in {(time.time() - start) / 60:.1f} min", flush=True)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    """Load the recipe, print its description, run it."""
    options = PipelineOptions(**job_values(args, PipelineOptions))
    description, steps = load_recipe(args.recipe, args.overrides, options.out)
    if description:
        print(description + "\n")
    return run_recipe(steps, dry_run=options.dry_run)


def add_pipeline_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `pipeline` subcommand."""
    p = sub.add_parser(
        "pipeline",
        help="run an end-to-end recipe (data -> train -> evaluate) from pipelines/",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  diffalign pipeline pipelines/demo-online-rounds.yaml --out runs/my-rounds --dry-run",
    )
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a variable of the recipe's vars")
    add_options(p, PipelineOptions)
    p.set_defaults(func=cmd_pipeline)
