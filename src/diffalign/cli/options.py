"""Command-line options made from a job's dataclass (see `diffalign.config.options`), and old spellings.

`add_options(parser, Job)` adds one argument per field: its flag, default, help (with the default appended),
choices and type all read from the field, so the parser cannot disagree with the job. `job_values(args, Job)`
reads them back as the field values. Spellings a release renamed stay accepted for one more release: they
print a deprecation message to stderr and act as the new spelling.

Jobs live beside their code, which imports torch; so a job may be named as "module:Class", and a
`CommandParser` adds its options only when that command is parsed or its help shown: `diffalign config`
or `diffalign --help` import no job module.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import sys
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..config.core import field_default as default_of
from ..config.options import flag_of

DEPRECATION_NOTE = "the old spelling is accepted until the next release"


def deprecated(message: str) -> None:
    """Tell the user (on stderr, so output files and pipes stay clean) that they used an old spelling."""
    print(f"diffalign: deprecated: {message} ({DEPRECATION_NOTE})", file=sys.stderr)


class DeprecatedOption(argparse.Action):
    """An old spelling of an option: says so on stderr, then acts as the new option (`new_flag`)."""

    def __init__(self, option_strings: list[str], dest: str, new_flag: str, store: str = "store",
                 const: Any = None, **kwargs: Any) -> None:
        if store in ("store_true", "store_false"):
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new_flag, self.store, self.store_const = new_flag, store, const

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        deprecated(f"{option_string} is now {self.new_flag}")
        if self.store == "append":
            setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), values])
        elif self.store in ("store_true", "store_false"):
            setattr(namespace, self.dest, self.store == "store_true")
        else:
            setattr(namespace, self.dest, values)


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose job options are added when first needed: on parsing, on help, or `complete()`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: list[Callable[[], None]] = []

    def defer(self, add: Callable[[], None]) -> None:
        """Run `add` (which adds arguments) before this parser is next used."""
        self._pending.append(add)

    def complete(self) -> argparse.ArgumentParser:
        """Add every deferred argument now (and those of the subcommands' parsers); return the parser."""
        while self._pending:
            self._pending.pop(0)()
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for parser in action.choices.values():
                    if isinstance(parser, CommandParser):
                        parser.complete()
        return self

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """argparse's parse, with the job options added first; words left over after an option (`train
        CONFIG --out DIR key=value`) join a trailing list positional, as if typed before the option."""
        while self._pending:
            self._pending.pop(0)()
        namespace, extras = super().parse_known_args(args, namespace)
        trailing = [a for a in self._actions if not a.option_strings and a.nargs in ("*", "+")]
        if extras and trailing and not any(isinstance(a, argparse._SubParsersAction) for a in self._actions):
            words = [word for word in extras if not word.startswith("-")]
            setattr(namespace, trailing[-1].dest, [*(getattr(namespace, trailing[-1].dest) or []), *words])
            extras = [word for word in extras if word.startswith("-")]
        return namespace, extras

    def format_help(self) -> str:
        while self._pending:
            self._pending.pop(0)()
        return super().format_help()

    def format_usage(self) -> str:
        while self._pending:
            self._pending.pop(0)()
        return super().format_usage()


def when_used(parser: argparse.ArgumentParser, add: Callable[[], None]) -> None:
    """Run `add` (which imports a job and adds its options) when a `CommandParser` is first used, at once for
    any other parser: a command's job module, and torch with it, loads only for that command."""
    if isinstance(parser, CommandParser):
        parser.defer(add)
    else:
        add()


def resolve_job(job: type | str) -> type:
    """A job dataclass, given or named as "package.module:Class"."""
    if isinstance(job, str):
        module, _, name = job.partition(":")
        return getattr(importlib.import_module(module), name)
    return job


def is_option(field: dataclasses.Field) -> bool:
    """Whether a job field is given on the command line (fields marked `cli=False` are computed)."""
    return field.init and field.metadata.get("cli", True) and "help" in field.metadata


def shown_default(value: Any) -> str | None:
    """How a default reads in a help text, or None when it says nothing (None, False, empty)."""
    if value is dataclasses.MISSING or value is None or value is False or value is True or value in ("", [], ()):
        return None
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)
    return str(value)


def help_of(field: dataclasses.Field) -> str:
    """The help text of a field's option: its help, then its default unless the help says what it means."""
    text = field.metadata["help"]
    shown = shown_default(default_of(field)) if field.metadata.get("show_default", True) else None
    return text if shown is None else f"{text} (default: {shown})"


def _scalar_type(field: dataclasses.Field, hints: dict[str, Any]) -> Callable[[str], Any] | None:
    """The str -> value conversion of a field without `parse`: int, float or Path by its annotation."""
    hint = hints[field.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    item = args[0]
    if typing.get_origin(item) in (list, tuple):
        inner = typing.get_args(item)
        item = inner[0] if inner else str
    return item if item in (int, float, Path) else None


def _value_parser(flag: str, field: dataclasses.Field, hints: dict[str, Any]) -> Callable[[str], Any] | None:
    """argparse's `type` for a field: `parse` or the annotation's scalar, checked against `min`, with the old
    spellings of its values (`old_values`) turned into the new ones after a deprecation message."""
    convert = field.metadata.get("parse") or _scalar_type(field, hints)
    minimum = field.metadata.get("min")
    old_values = field.metadata.get("old_values") or {}
    if convert is None and minimum is None and not old_values:
        return None

    def parse(text: str) -> Any:
        if text in old_values:
            deprecated(f"{flag} {text} is now {flag} {old_values[text]}")
            text = old_values[text]
        try:
            value = convert(text) if convert else text
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error) or f"invalid value {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = field.name  # argparse names the type in "invalid X value" messages
    return parse


def add_options(parser: argparse.ArgumentParser, job: type | str, skip: Iterable[str] = ()) -> None:
    """Add one argument per option field of the dataclass `job` (but `skip`), in field order; each argparse
    action remembers its field as `action.job_field`, so a test can walk the parser back to the job. A job
    named as "module:Class" is imported only when a `CommandParser` needs its options."""
    if isinstance(job, str) and isinstance(parser, CommandParser):
        parser.defer(lambda: add_options(parser, resolve_job(job), skip))
        return
    job = resolve_job(job)
    hints = typing.get_type_hints(job)
    skipped = set(skip)
    for field in dataclasses.fields(job):
        if not is_option(field) or field.name in skipped:
            continue
        _add_one(parser, job, field, hints)


def _add_one(parser: argparse.ArgumentParser, job: type, field: dataclasses.Field, hints: dict[str, Any]) -> None:
    md = field.metadata
    default = default_of(field)
    kwargs: dict[str, Any] = {"help": help_of(field)}
    if md.get("metavar"):
        kwargs["metavar"] = md["metavar"]
    if md.get("choices"):
        kwargs["choices"] = list(md["choices"])
    flag = flag_of(field)
    value_type = _value_parser(flag, field, hints)
    if value_type is not None:
        kwargs["type"] = value_type
    store = "store"
    if md.get("positional"):
        if md.get("nargs"):
            kwargs["nargs"] = md["nargs"]
        if default is not dataclasses.MISSING:
            kwargs["default"] = default
            kwargs.setdefault("nargs", "?")
        action = parser.add_argument(field.name, **kwargs)
        action.job_field = (job, field.name)
        return
    if md.get("negate"):
        store = "store_false"
        kwargs.pop("type", None)
        flag = md["negate"]
        kwargs["help"] = md["help"]
    elif hints[field.name] is bool:
        store = "store_true"
        kwargs.pop("type", None)
    elif md.get("repeat"):
        store = "append"
    if default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        # repeated options collect into a fresh list (argparse would append to the default itself)
        kwargs["default"] = None if store == "append" else default
    action = parser.add_argument(flag, dest=field.name, action=store, **kwargs)
    action.job_field = (job, field.name)
    for old in md.get("old", ()):
        extra = {k: v for k, v in kwargs.items() if k in ("type", "choices", "metavar")}
        parser.add_argument(old, dest=field.name, action=DeprecatedOption, new_flag=flag, store=store,
                            default=argparse.SUPPRESS, **extra)


def job_values(args: argparse.Namespace, job: type | str, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The option fields of `job` (but `skip`) as parsed in `args`; a repeated option never given takes the
    field's default."""
    job = resolve_job(job)
    values: dict[str, Any] = {}
    skipped = set(skip)
    for field in dataclasses.fields(job):
        if not is_option(field) or field.name in skipped or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if value is None and field.metadata.get("repeat"):
            value = copy.deepcopy(default_of(field))
        values[field.name] = value
    return values
