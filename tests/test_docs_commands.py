"""Every command the README and docs/ show exists as shown: its subcommand, options, choices, config keys and repo
files (the checker is tests/docs_commands.py); and the checker catches each kind of drift."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from diffalign.cli.main import build_parser
from diffalign.cli.options import add_options
from diffalign.config.options import MISSING, dtype_option, option

from .docs_commands import ROOT, check_markdown, deprecated_option_class, docs_files, docs_problems, old_values

# Wrong commands the docs show on purpose, to show the error they get.
SHOWN_WRONG_ON_PURPOSE = {
    "diffalign train --max_steps 20",  # the message that points to `train.max_steps=20`
}


@pytest.mark.parametrize("page", docs_files(ROOT), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_command_in_the_docs_matches_the_cli(page):
    problems = docs_problems([page], ROOT, SHOWN_WRONG_ON_PURPOSE)
    assert not problems, "commands in the docs that the CLI does not take:\n" + "\n".join(problems)


def check(text: str, name: str = "docs/page.md", **kwargs) -> list[str]:
    return check_markdown(text, name, **kwargs)


def test_a_wrong_flag_is_named_with_the_right_one():
    text = "Evaluate:\n\n```bash\ndiffalign eval runs/demo-dpo --seed 1\n```\n"
    assert check(text, "docs/evaluation.md") == [
        "docs/evaluation.md:4: diffalign eval has no option --seed (did you mean --seeds?)"
    ]


def test_a_wrong_subcommand_in_an_inline_span():
    problems = check("Then run `diffalign evall runs/demo-dpo` to compare.\n", "README.md")
    assert len(problems) == 1
    assert problems[0].startswith("README.md:1: no subcommand 'evall' (diffalign has: cache, captions, config, ")
    assert problems[0].endswith("; did you mean 'eval'?")


def test_an_inline_span_across_lines_reports_its_first_line():
    assert check("one\ntwo `diffalign eval runs/x\n--seed 1` three\n") == [
        "docs/page.md:2: diffalign eval has no option --seed (did you mean --seeds?)"
    ]


def test_a_missing_config_file():
    assert check("```bash\ndiffalign train configs/sdxl/dpox.yaml\n```\n") == [
        "docs/page.md:2: diffalign train: configs/sdxl/dpox.yaml does not exist (did you mean configs/sdxl/dpo.yaml?)"
    ]


def test_a_bad_config_key_on_a_repo_config_is_what_load_config_says():
    assert check("```bash\ndiffalign train configs/demo/dpo.yaml train.max_steps=5 train.max_step=5\n```\n") == [
        "docs/page.md:2: diffalign train: no config key 'train.max_step' (did you mean 'train.max_steps'?)"
    ]
    # a key that exists but a value the config refuses: load_config's own message, first line
    [problem] = check("```bash\ndiffalign config show configs/demo/dpo.yaml objective.beta=lots\n```\n")
    assert problem.startswith("docs/page.md:2: diffalign config configs/demo/dpo.yaml: ")
    assert "objective.beta" in problem


def test_a_bad_config_key_without_a_repo_config():
    assert check("`diffalign cache runs/x/config.yaml data.cach_dir=/scratch`") == [
        "docs/page.md:1: diffalign cache: no config key 'data.cach_dir' (did you mean 'data.cache_dir'?)"
    ]


@dataclass
class ToyJob:
    """A job of the shape the CLI's jobs have: its options declared as fields (config/options.py)."""

    source: str = option(MISSING, "dataset", positional=True)
    labels: str = option("keep", "keep the labels or take the scorer's", choices=("keep", "scorer"))
    dtype: str | None = dtype_option(None, "the scorer")


def toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffalign")
    add_options(parser.add_subparsers(dest="command").add_parser("relabel"), ToyJob)
    return parser


def test_a_value_outside_the_options_choices():
    assert check("```sh\ndiffalign relabel data/ --labels scorers\n```\n", parser=toy_parser()) == [
        "docs/page.md:2: diffalign relabel --labels: 'scorers' is not one of its choices (keep, scorer) "
        "(did you mean 'scorer'?)"
    ]


def test_a_deprecated_option_spelling_fails():
    """With a parser of the shape the real CLI has, an option whose action is a DeprecatedOption."""
    deprecated = deprecated_option_class()
    assert deprecated is not None, "diffalign.cli.options.DeprecatedOption is gone: update docs_commands.py"
    parser = argparse.ArgumentParser(prog="diffalign")
    eval_parser = parser.add_subparsers(dest="command").add_parser("eval")
    eval_parser.add_argument("runs", nargs="*")
    eval_parser.add_argument("--out")
    eval_parser.add_argument("--out-dir", dest="out", action=deprecated, new_flag="--out")
    assert check("`diffalign eval runs/x --out-dir eval/`", parser=parser) == [
        "docs/page.md:1: diffalign eval: --out-dir is a deprecated spelling; write --out"
    ]


def test_every_deprecated_spelling_of_the_real_cli_fails():
    """Each old option (a DeprecatedOption action) and each old value (a job field's `old_values`) of the CLI."""
    deprecated = deprecated_option_class()
    parser = build_parser()
    getattr(parser, "complete", lambda: None)()  # a CommandParser adds its job options when first needed
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    expected = {}
    for name, command_parser in sub.choices.items():
        for flag, action in command_parser._option_string_actions.items():
            if isinstance(action, deprecated):
                value = "" if action.nargs == 0 else " x"
                expected[f"`diffalign {name} {flag}{value}`"] = (
                    f"docs/page.md:1: diffalign {name}: {flag} is a deprecated spelling; write {action.new_flag}"
                )
            elif flag.startswith("--"):
                for old, new in old_values(action).items():
                    expected[f"`diffalign {name} {flag} {old}`"] = (
                        f"docs/page.md:1: diffalign {name} {flag}: {old!r} is a deprecated spelling of {new!r}"
                    )
    assert expected, "no old spelling left in the CLI: drop this test, or the checker's deprecated checks"
    for text, problem in expected.items():
        assert problem in check(text), text


def test_a_deprecated_value_spelling_fails():
    assert check("`diffalign relabel data/ --dtype fp16`", parser=toy_parser()) == [
        "docs/page.md:1: diffalign relabel --dtype: 'fp16' is a deprecated spelling of 'float16'"
    ]


def test_a_continued_command_reports_the_line_of_its_bad_flag():
    text = (
        "```bash\n"
        "# evaluate\n"
        "$ diffalign eval runs/sd15-dpo --prompts parti \\\n"
        "    --seeds 0-3 --scorers pickscore \\\n"
        "    --out eval/parti   # one report\n"
        "```\n"
    )
    assert check(text) == ["docs/page.md:4: diffalign eval has no option --scorers (did you mean --scorer?)"]


def test_launcher_forms_are_checked_as_the_command_they_launch():
    text = (
        "```bash\n"
        "accelerate launch --multi_gpu --num_processes 8 -m diffalign.cli.main eval runs/x --seed 1\n"
        "torchrun --nproc_per_node 2 -m diffalign.cli.main train configs/demo/dpo.yaml train.max_step=1\n"
        "python -m diffalign.cli.main evl runs/x\n"
        "```\n"
    )
    problems = check(text)
    assert problems[0] == "docs/page.md:2: diffalign eval has no option --seed (did you mean --seeds?)"
    assert problems[1] == (
        "docs/page.md:3: diffalign train: no config key 'train.max_step' (did you mean 'train.max_steps'?)"
    )
    assert problems[2].startswith("docs/page.md:4: no subcommand 'evl' (diffalign has: ")
    assert len(problems) == 3


def test_shell_around_the_command_is_dropped_and_every_chained_command_checked():
    text = (
        "```bash\n"
        "CUDA_VISIBLE_DEVICES=0,1 diffalign train configs/demo/dpo.yaml train.max_steps=5 && diffalign eval runs/x "
        "--sed 2\n"
        "diffalign score samples/ --scorer shapes --out scores.csv | tee log.txt > /dev/null\n"
        "diffalign method-table eval/methods --out methods.md > table.md; diffalign evl x\n"
        "pip install -e . && python -m pytest --wrong-but-not-ours\n"
        "```\n"
    )
    problems = check(text)
    assert problems[0] == "docs/page.md:2: diffalign eval has no option --sed (did you mean --seeds?)"
    assert problems[1].startswith("docs/page.md:4: no subcommand 'evl'")
    assert len(problems) == 2


def test_a_correct_page_has_no_problem():
    text = (
        "```console\n"
        "$ diffalign config keys\n"
        "diffalign evall: this is output, not a command\n"
        "$ diffalign train configs/demo/dpo.yaml train.max_steps=50 objective.beta=2000\n"
        "```\n"
        "Prose `diffalign score/eval --scorer` and `diffalign eval RUN --out OUT`.\n"
        "```yaml\ndiffalign evall: not a shell block\n```\n"
    )
    assert check(text) == []


def test_a_pipeline_recipe_and_its_variables():
    assert check("`diffalign pipeline pipelines/sd15-methods.yaml gpus=8 gpu=2`")[0].startswith(
        "docs/page.md:1: diffalign pipeline: pipelines/sd15-methods.yaml defines no variable 'gpu' (it has: "
    )
    assert check("`diffalign pipeline pipelines/sd15-method.yaml`") == [
        "docs/page.md:1: diffalign pipeline: pipelines/sd15-method.yaml does not exist "
        "(did you mean pipelines/sd15-methods.yaml?)"
    ]


def test_scripts_exist_and_take_the_flags_shown():
    script = next(path for path in sorted((ROOT / "scripts").glob("*.py")))
    name = f"scripts/{script.name}"
    problems = check(f"```bash\npython {name} --no-such-flag-anywhere\npython scripts/nope.py\n```\n")
    assert problems[0] == f"docs/page.md:2: {name} has no option --no-such-flag-anywhere"
    assert problems[1].startswith("docs/page.md:3: scripts/nope.py does not exist")
    assert len(problems) == 2


def test_a_wrong_flag_added_to_a_real_page_is_caught():
    """The real README with one wrong flag more: exactly that line is reported."""
    lines = (ROOT / "README.md").read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("diffalign eval ") and "\\" not in line)
    lines[number] += " --seed 3"
    problems = check_markdown("\n".join(lines), "README.md", on_purpose=SHOWN_WRONG_ON_PURPOSE)
    assert problems == [f"README.md:{number + 1}: diffalign eval has no option --seed (did you mean --seeds?)"]


def help_examples(parser: argparse.ArgumentParser) -> str:
    """The example commands of a subcommand's --help (description and epilog) as one shell block: each line
    that starts with `diffalign ` or `accelerate launch`, with its `\\` continuation lines."""
    lines, taking = [], False
    for line in f"{parser.description or ''}\n{parser.epilog or ''}".splitlines():
        text = line.strip()
        if taking or text.startswith(("diffalign ", "accelerate launch ")):
            lines.append(text)
            taking = text.endswith("\\")
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def test_every_example_in_the_help_texts_matches_the_cli():
    parser = build_parser().complete()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    problems = [problem for name, command in sub.choices.items()
                for problem in check_markdown(help_examples(command), f"diffalign {name} --help", parser=parser,
                                              on_purpose=SHOWN_WRONG_ON_PURPOSE)]
    assert not problems, "examples in --help texts that the CLI does not take:\n" + "\n".join(problems)


def test_the_help_examples_are_found_and_a_wrong_one_fails():
    parser = build_parser().complete()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    relabel = sub.choices["relabel"]
    assert "diffalign relabel assets/demo/pairs_train.parquet --scorer shapes --flip" in help_examples(relabel)
    wrong = argparse.ArgumentParser(epilog="example:\n  diffalign relabel data.parquet --out o \\\n      --scorers x")
    assert check_markdown(help_examples(wrong), "help", parser=parser) == [
        "help:3: diffalign relabel has no option --scorers (did you mean --scorer?)"]
