"""One command-line convention, checked by walking the real parser: every option comes from a field of its
job's dataclass (flag, default, help and choices read from the field), every command that writes takes
`--out`, the options commands share are spelled and explained alike, and old spellings still work, with a
deprecation message."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from diffalign.cli.main import build_parser
from diffalign.cli.options import DeprecatedOption, default_of, flag_of, help_of, is_option

# Arguments that are not options of a job: the config commands' job is the run config, set by key=value.
NOT_JOB_OPTIONS = {
    ("train", "items"): "the config file and its key=value overrides (the job's dataclass is RunConfig)",
    ("cache", "items"): "the config file and its key=value overrides (the job's dataclass is RunConfig)",
    ("config", "action"): "show or keys",
    ("config", "items"): "the config file and its key=value overrides (the job's dataclass is RunConfig)",
    ("pipeline", "recipe"): "the recipe file",
    ("pipeline", "overrides"): "the recipe's vars, key=value",
}
# Commands that write no output of their own, and why.
NO_OUT = {
    "config": "prints the resolved config or the keys",
    "serve-scorer": "serves a scorer over HTTP; writes nothing",
    "label": "records labels inside the round folder the training loop waits on",
}
# Options every command spells alike: the field must be made by the shared constructor in config/options.py.
SHARED = ("--out", "--scorer", "--scorer-option", "--weights", "--prompts", "--max-prompts", "--seeds", "--seed",
          "--batch-size", "--device", "--dtype", "--shard-size", "--overwrite", "--no-progress", "--host")


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser().complete()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The parser's arguments but -h and the hidden old spellings."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, DeprecatedOption))]


def field_of(action: argparse.Action) -> dataclasses.Field:
    job, name = action.job_field
    return next(f for f in dataclasses.fields(job) if f.name == name)


COMMANDS = subcommands()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_comes_from_a_field_of_the_jobs_dataclass(command):
    problems = []
    for action in options(COMMANDS[command]):
        name = action.option_strings[0] if action.option_strings else action.dest
        if (command, action.dest) in NOT_JOB_OPTIONS:
            continue
        if not hasattr(action, "job_field"):
            problems.append(f"{name}: written by hand, not made from a job dataclass field (cli/options.add_options)")
            continue
        field = field_of(action)
        assert is_option(field), f"{command} {name}: {field.name} is not an option field"
        flag = field.metadata.get("negate") or (None if field.metadata.get("positional") else flag_of(field))
        if flag and action.option_strings != [flag]:
            problems.append(f"{name}: spelled {action.option_strings}, the field says {flag}")
        default = default_of(field)
        if field.metadata.get("negate"):
            expected_default = True
        elif field.metadata.get("repeat") or default is dataclasses.MISSING:
            expected_default = None
        else:
            expected_default = default
        if action.default != expected_default:
            problems.append(f"{name}: default {action.default!r}, the field's is {expected_default!r}")
        expected_help = field.metadata["help"] if field.metadata.get("negate") else help_of(field)
        if action.help != expected_help:
            problems.append(f"{name}: help {action.help!r} is not the field's {expected_help!r}")
        if list(action.choices or []) != list(field.metadata.get("choices") or []):
            problems.append(f"{name}: choices {action.choices} are not the field's")
    assert not problems, f"diffalign {command}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_that_writes_takes_out(command):
    flags = {flag for action in options(COMMANDS[command]) for flag in action.option_strings}
    if command in NO_OUT:
        assert "--out" not in flags, f"{command} is listed as writing nothing but has --out"
    else:
        assert "--out" in flags, f"diffalign {command} writes but has no --out"


def test_shared_options_are_made_by_the_shared_constructors_and_read_alike():
    seen: dict[str, set] = {}
    problems = []
    for command, parser in COMMANDS.items():
        for action in options(parser):
            for flag in action.option_strings:
                if "_" in flag:
                    problems.append(f"{command} {flag}: options are spelled with hyphens")
                if flag not in SHARED or not hasattr(action, "job_field"):
                    continue
                if field_of(action).metadata.get("shared") != flag:
                    problems.append(f"{command} {flag}: not made by the shared constructor of {flag}")
                seen.setdefault(flag, set()).add((tuple(action.choices or ()), action.metavar))
    for flag, forms in seen.items():
        if len(forms) > 1:
            problems.append(f"{flag}: spelled with different choices or metavars: {sorted(forms, key=str)}")
    assert not problems, "\n".join(problems)


def old_spellings() -> list[tuple[str, str, str]]:
    """(command, old flag, new flag) of every hidden old spelling in the parser."""
    return [(command, action.option_strings[0], action.new_flag)
            for command, parser in COMMANDS.items() for action in parser._actions
            if isinstance(action, DeprecatedOption)]


def test_old_dtype_spellings_warn_and_act_as_the_new(capsys):
    parser = build_parser()  # parsing adds the deferred options of the command it runs
    for old, new in (("fp16", "float16"), ("bf16", "bfloat16"), ("fp32", "float32")):
        args = parser.parse_args(["relabel", "data.parquet", "--out", "o", "--dtype", old])
        assert args.dtype == new
        err = capsys.readouterr().err
        assert f"diffalign: deprecated: --dtype {old} is now --dtype {new}" in err
    assert parser.parse_args(["relabel", "data.parquet", "--out", "o", "--dtype", "float16"]).dtype == "float16"
    assert "deprecated" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["relabel", "data.parquet", "--out", "o", "--dtype", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


@pytest.mark.parametrize("command, old, new", old_spellings())
def test_every_old_option_spelling_warns_and_acts_as_the_new(command, old, new, capsys):
    parser = COMMANDS[command]
    action = next(a for a in parser._actions if old in a.option_strings)
    value = [] if action.store in ("store_true", "store_false") else ["1"]
    required = [a for a in parser._actions if a.required and not a.option_strings]
    positionals = ["x"] * len(required)
    others = [arg for a in parser._actions if a.required and a.option_strings for arg in (a.option_strings[0], "x")]
    with_old = parser.parse_args([*positionals, *others, old, *value])
    assert f"diffalign: deprecated: {old} is now {new}" in capsys.readouterr().err
    assert vars(with_old) == vars(parser.parse_args([*positionals, *others, new, *value]))


def test_the_command_line_page_lists_every_command():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    listed = {line.split("|")[1].strip().strip("`") for line in page.splitlines() if line.startswith("| `")}
    assert listed >= set(COMMANDS), f"docs/cli.md does not list: {sorted(set(COMMANDS) - listed)}"
