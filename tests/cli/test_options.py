"""Command-line options made from a job's dataclass (cli/options.py, config/options.py)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from diffalign.cli.options import CommandParser, add_options, job_values
from diffalign.config.options import (MISSING, batch_size_option, dtype_option, option, out_option, progress_option,
                                      scorers_option)


@dataclass
class Job:
    source: str = option(MISSING, "what to read", positional=True)
    out: Path = out_option("where to write")
    scorers: list[str] = scorers_option(["shapes"])
    mode: str = option("keep", "what to do", choices=("keep", "flip"), old=("--how",))
    batch_size: int = batch_size_option(8, "images per call")
    dtype: str | None = dtype_option(None, "model", "the model's own")
    fast: bool = option(False, "go fast")
    progress: bool = progress_option()
    command: str | None = option(None, "computed", cli=False)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="job")
    add_options(p, Job)
    return p


def test_the_parser_reads_flags_defaults_types_and_help_from_the_fields():
    args = parser().parse_args(["data", "--out", "o"])
    assert job_values(args, Job) == {"source": "data", "out": Path("o"), "scorers": ["shapes"], "mode": "keep",
                                     "batch_size": 8, "dtype": None, "fast": False, "progress": True}
    args = parser().parse_args(["data", "--out", "o", "--scorer", "a,b", "--scorer", "c", "--mode", "flip",
                                "--batch-size", "3", "--dtype", "bfloat16", "--fast", "--no-progress"])
    values = job_values(args, Job)
    assert values["scorers"] == ["a,b", "c"] and values["mode"] == "flip" and values["batch_size"] == 3
    assert values["dtype"] == "bfloat16" and values["fast"] is True and values["progress"] is False
    assert "command" not in values
    text = parser().format_help()
    assert "images per call (default: 8)" in text and "what to do (default: keep)" in text
    assert "default: the model's own)" in text and "--command" not in text


def test_a_repeated_option_never_given_gets_a_fresh_copy_of_its_default():
    first = job_values(parser().parse_args(["d", "--out", "o"]), Job)
    first["scorers"].append("x")
    assert job_values(parser().parse_args(["d", "--out", "o"]), Job)["scorers"] == ["shapes"]


@pytest.mark.parametrize("argv, message", [
    (["d"], "the following arguments are required: --out"),
    (["d", "--out", "o", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["d", "--out", "o", "--batch-size", "two"], "argument --batch-size: invalid literal for int() with base 10: 'two'"),
    (["d", "--out", "o", "--mode", "spin"], "argument --mode: invalid choice: 'spin'"),
])
def test_bad_values_are_refused_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_old_spellings_work_with_a_deprecation_message(capsys):
    args = parser().parse_args(["d", "--out", "o", "--how", "flip", "--dtype", "bf16"])
    assert args.mode == "flip" and args.dtype == "bfloat16"
    err = capsys.readouterr().err
    assert "diffalign: deprecated: --how is now --mode" in err
    assert "diffalign: deprecated: --dtype bf16 is now --dtype bfloat16" in err
    assert "--how" not in parser().format_help()


def test_a_job_named_by_module_is_imported_only_when_its_command_is_used(tmp_path, monkeypatch):
    (tmp_path / "lazy_job_for_test.py").write_text(
        "from dataclasses import dataclass\nfrom diffalign.config.options import option\n\n"
        "@dataclass\nclass LazyJob:\n    steps: int = option(3, 'steps')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    top = CommandParser(prog="x")
    sub = top.add_subparsers(dest="command")
    add_options(sub.add_parser("lazy"), "lazy_job_for_test:LazyJob")
    sub.add_parser("other")
    assert "lazy_job_for_test" not in sys.modules
    assert top.parse_args(["other"]).command == "other" and "lazy_job_for_test" not in sys.modules
    assert top.parse_args(["lazy", "--steps", "5"]).steps == 5 and "lazy_job_for_test" in sys.modules
    sys.modules.pop("lazy_job_for_test")


def test_a_job_built_in_python_is_checked_against_its_minimums():
    from diffalign.config.options import check_minimums

    check_minimums(Job(source="d", out=Path("o")))
    with pytest.raises(ValueError, match="^--batch-size must be at least 1, got 0$"):
        check_minimums(Job(source="d", out=Path("o"), batch_size=0))
