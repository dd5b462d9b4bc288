"""Check every shell command the docs show against the real `diffalign` parser, the repository's files and the
config schema, so the docs cannot drift from the code.

`markdown_commands(text)` finds the commands of a Markdown file (fenced shell blocks and inline spans that start
with `diffalign `); `check_command(command)` lists what is wrong with one; `check_markdown(text, name)` does both
and labels each problem `NAME:LINE: message`.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from diffalign.cli.main import CONFIG_COMMANDS, build_parser
from diffalign.config.core import ConfigError, describe, load_config
from diffalign.config.schema import RunConfig

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"", "bash", "sh", "console", "shell"}
MODULE = "diffalign.cli.main"
CONTROL = {"|", "||", "&&", ";", "&"}  # each ends one command; what follows may be another
REDIRECT = re.compile(r"^\d*(>>?|<)$")  # ends a command's arguments
# Paths under these are the repository's files (a .yaml elsewhere, `runs/x/config.yaml`, is a run's output)
REPO_DIRS = ("configs/", "pipelines/", "assets/", "scripts/", "examples/", "docs/", "src/", "tests/", ".github/")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class Token:
    """One shell word and the line of its file it is on."""

    text: str
    line: int


@dataclass(frozen=True)
class Command:
    """One shell command of a docs file: its words, from the program name on, each with its line."""

    tokens: tuple[Token, ...]

    @property
    def line(self) -> int:
        """The line the command starts on."""
        return self.tokens[0].line


def deprecated_option_class() -> type | None:
    """`diffalign.cli.options.DeprecatedOption`, the argparse action of the old spellings, once it exists."""
    try:
        from diffalign.cli import options
    except ImportError:
        return None
    return getattr(options, "DeprecatedOption", None)


# --- finding the commands -------------------------------------------------------------------------------------


def _words(text: str) -> list[str]:
    """The shell words of one line, `# comments` dropped, with `|`, `&&`, `;`, `>` as words of their own."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: the line's words as whitespace splits them
        return text.split("#", 1)[0].split()


def _commands(lines: list[tuple[int, str]]) -> list[Command]:
    """The commands of shell lines (line number, text): `\\` continuations joined, a leading `$ ` prompt
    dropped, split at `|`, `&&`, `;`."""
    commands: list[Command] = []
    current: list[Token] = []
    continued = False
    for number, text in lines:
        stripped = text.strip()
        if not continued and stripped.startswith("$ "):
            stripped = stripped[2:]
        continued = stripped.endswith("\\") and not stripped.endswith("\\\\")
        for word in _words(stripped[:-1] if continued else stripped):
            if word in CONTROL:
                commands.append(Command(tuple(current)))
                current = []
            else:
                current.append(Token(word, number))
        if not continued:
            commands.append(Command(tuple(current)))
            current = []
    commands.append(Command(tuple(current)))
    return [command for command in commands if command.tokens]


def markdown_commands(text: str) -> list[Command]:
    """Every shell command of a Markdown text: those of its fenced shell blocks (```bash, sh, console, shell or
    unlabelled; in a console block with `$ ` prompts, only the prompted lines) and its inline code spans that
    start with `diffalign `."""
    lines = text.splitlines()
    commands: list[Command] = []
    prose: list[str] = []  # the text outside fences, fenced lines blanked so that offsets keep their line
    fence: str | None = None
    block: list[tuple[int, str]] = []
    language = ""
    for number, line in enumerate(lines, start=1):
        opening = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", line)
        if fence is None and opening:
            fence, language, block = opening.group(1), opening.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            if language in SHELL_FENCES:
                if language == "console" and any(text.lstrip().startswith("$ ") for _, text in block):
                    block = _prompted(block)
                commands += _commands(block)
            fence = None
            prose.append("")
        elif fence is not None:
            block.append((number, line))
            prose.append("")
        else:
            prose.append(line)
    joined = "\n".join(prose)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", joined):
        span = " ".join(match.group(1).split())
        if span.startswith("diffalign "):
            commands += _commands([(joined.count("\n", 0, match.start()) + 1, span)])
    return sorted(commands, key=lambda command: command.line)


def _prompted(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The `$ `-prompted lines of a console block and their `\\` continuations (the rest is output)."""
    kept, continued = [], False
    for number, text in block:
        if continued or text.lstrip().startswith("$ "):
            kept.append((number, text))
            continued = text.rstrip().endswith("\\")
    return kept


# --- checking one command -------------------------------------------------------------------------------------


def is_placeholder(word: str) -> bool:
    """Whether a word stands for something the reader fills in: ALL-CAPS words (`OUT`, `runs/RUN`,
    `CONFIG.yaml`), or anything with `$`, `<`, `{`, `[` or `...`."""
    return bool(re.search(r"[$<{\[]|\.\.\.|…", word) or re.search(r"(?<![A-Za-z])[A-Z][A-Z0-9_]+(?![a-z])", word))


def _did_you_mean(word: str, known: list[str], quote: bool = True) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)" if quote else f" (did you mean {close[0]}?)"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


@cache
def _real_parser() -> argparse.ArgumentParser:
    return build_parser()


@cache
def config_keys() -> dict[str, str]:
    """Every config key (`train.max_steps`) and its type, from `describe(RunConfig)`."""
    return {doc.label.split(" ")[0]: doc.type for doc in describe(RunConfig)}


def _unknown_key(key: str) -> bool:
    keys = config_keys()
    return key not in keys and not any(
        key.startswith(known + ".") and kind.startswith("dict") for known, kind in keys.items()
    )


def _repo_path(word: str) -> str | None:
    """The repository file a word names (`configs/sdxl/dpo.yaml`, `examples/x.py:Class`), or None for outputs
    (`runs/...`), absolute paths, model ids and placeholders."""
    path = word[2:] if word.startswith("./") else word
    path = re.sub(r"\.py:[\w.]+$", ".py", path)
    if is_placeholder(path) or path.startswith(("/", "~")) or "://" in path:
        return None
    return path if path.startswith(REPO_DIRS) else None


def _missing_path(path: str, root: Path) -> str | None:
    if (root / path).exists():
        return None
    parent = (root / path).parent
    siblings = [str(p.relative_to(root)) for p in parent.iterdir()] if parent.is_dir() else []
    return f"{path} does not exist{_did_you_mean(path, siblings, quote=False)}"


def _option_value_count(action: argparse.Action, following: list[Token]) -> int:
    """How many of the following words `action` takes as its value(s)."""
    nargs = action.nargs
    if nargs == 0:
        return 0
    if nargs is None:
        return min(1, len(following))
    if nargs == argparse.OPTIONAL:
        return 1 if following and not following[0].text.startswith("-") else 0
    if isinstance(nargs, int):
        return min(nargs, len(following))
    count = 0  # *, +, REMAINDER: up to the next option
    while count < len(following) and not following[count].text.startswith("-"):
        count += 1
    return count


def _choice_problem(where: str, action: argparse.Action, value: str) -> str | None:
    if action.choices is None or is_placeholder(value):
        return None
    choices = [str(choice) for choice in action.choices]
    if value in choices:
        return None
    return f"{where}: {value!r} is not one of its choices ({', '.join(choices)}){_did_you_mean(value, choices)}"


def old_values(action: argparse.Action) -> dict[str, str]:
    """The deprecated spellings of an option's values ({old: new}), from the `old_values` of the job field the
    action was made from (`action.job_field`, set by `diffalign.cli.options.add_options`)."""
    job, name = getattr(action, "job_field", (None, None))
    if job is None:
        return {}
    field = next((f for f in dataclasses.fields(job) if f.name == name), None)
    return dict(field.metadata.get("old_values") or {}) if field else {}


def _replacement(parser: argparse.ArgumentParser, action: argparse.Action, deprecated: type) -> str | None:
    """The current spelling of a deprecated option: the option of the same dest that is not deprecated."""
    for other in parser._actions:
        if other.dest == action.dest and not isinstance(other, deprecated) and other.option_strings:
            return max(other.option_strings, key=len)
    return None


def check_arguments(
    words: list[Token], parser: argparse.ArgumentParser, prog: str, root: Path, deprecated: type | None
) -> list[Token | str]:
    """What is wrong with `words`, the arguments of the (sub)parser `parser` named `prog`; each problem a
    message, after the token it is about (whose line it is on)."""
    problems: list[Token | str] = []
    complete = getattr(parser, "complete", None)  # a CommandParser adds its job's options when first needed
    if complete is not None:
        complete()
    commands = _subparsers(parser)
    if commands:
        known = sorted(commands)
        first = next((i for i, word in enumerate(words) if not word.text.startswith("-")), None)
        if first is None:
            if not any(word.text in ("-h", "--help", "--version") for word in words):
                problems += [words[0] if words else Token("", 0), f"{prog}: no subcommand (it has: {', '.join(known)})"]
            return problems
        word = words[first]
        if is_placeholder(word.text):
            return problems
        if "/" in word.text:  # prose's `diffalign score/eval --scorer`: each of the commands
            return problems + [
                problem
                for name in word.text.split("/")
                for problem in check_arguments(
                    [*words[:first], Token(name, word.line), *words[first + 1:]], parser, prog, root, deprecated
                )
            ]
        if word.text not in commands:
            hint = _did_you_mean(word.text, known).replace(" (", "; ", 1).rstrip(")")
            return [word, f"no subcommand {word.text!r} ({prog} has: {', '.join(known)}){hint}"]
        for option in words[:first]:  # the program's own options (--version, --help)
            if option.text.partition("=")[0] not in parser._option_string_actions:
                problems += [option, f"{prog} has no option {option.text} before its subcommand"]
        return problems + check_arguments(
            words[first + 1:], commands[word.text], f"{prog} {word.text}", root, deprecated
        )
    options = parser._option_string_actions
    positionals: list[Token] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.text == "--":
            positionals += words[i:]
            break
        if not word.text.startswith("-") or word.text == "-" or re.match(r"^-\d", word.text):
            positionals.append(word)
            continue
        flag, inline, value = word.text.partition("=")
        if is_placeholder(flag):
            continue
        action = options.get(flag)
        if action is None:
            longs = sorted(name for name in options if name.startswith("--"))
            problems += [word, f"{prog} has no option {flag}{_did_you_mean(flag, longs, quote=False)}"]
            if not inline and i < len(words) and not words[i].text.startswith("-"):
                i += 1  # its value, most likely: not a positional argument
            continue
        if deprecated is not None and isinstance(action, deprecated):
            current = getattr(action, "new_flag", None) or _replacement(parser, action, deprecated)
            problems += [word, f"{prog}: {flag} is a deprecated spelling" + (f"; write {current}" if current else "")]
        if inline:
            values = [Token(value, word.line)]
        else:
            count = _option_value_count(action, words[i:])
            values, i = words[i:i + count], i + count
        for item in values:
            problems += _value_problems(f"{prog} {flag}", action, item, root)
    problems += _positional_problems(parser, prog, positionals, root)
    return problems


def _value_problems(where: str, action: argparse.Action, value: Token, root: Path) -> list[Token | str]:
    problems: list[Token | str] = []
    new_value = old_values(action).get(value.text)
    if new_value is not None:
        return [value, f"{where}: {value.text!r} is a deprecated spelling of {new_value!r}"]
    choice = _choice_problem(where, action, value.text)
    if choice:
        problems += [value, choice]
    path = _repo_path(value.text)
    missing = path and _missing_path(path, root)
    if missing:
        problems += [value, f"{where}: {missing}"]
    return problems


def _positional_problems(
    parser: argparse.ArgumentParser, prog: str, words: list[Token], root: Path
) -> list[Token | str]:
    problems: list[Token | str] = []
    command = prog.split(" ")[-1]
    if command in CONFIG_COMMANDS and prog.count(" ") == 1:
        return _config_problems(prog, words, root)
    if command == "pipeline" and prog.count(" ") == 1:
        return _pipeline_problems(prog, words, root)
    remaining = list(words)
    for action in (a for a in parser._actions if not a.option_strings):
        count = _option_value_count(action, remaining) if action.nargs not in (None, 1) else min(1, len(remaining))
        taken, remaining = remaining[:count], remaining[count:]
        for word in taken:
            problems += _value_problems(prog, action, word, root)
    for word in remaining:  # more words than the parser's positionals take
        if not is_placeholder(word.text):
            problems += [word, f"{prog} takes no argument {word.text!r} here (see `{prog} --help`)"]
    return problems


def _config_problems(prog: str, words: list[Token], root: Path) -> list[Token | str]:
    """`train`, `cache`, `config`: the config file exists and every `key=value` names a real key."""
    problems: list[Token | str] = []
    items = list(words)
    if prog.endswith(" config") and items:
        action = items.pop(0)
        if action.text not in ("show", "keys") and not is_placeholder(action.text):
            problems += [action, f"{prog}: {action.text!r} is not one of its choices (show, keys)"]
    files = [word for word in items if "=" not in word.text]
    overrides = [word for word in items if "=" in word.text]
    for word in files[1:]:
        if is_placeholder(word.text):
            continue
        problems += [word, f"{prog} takes one config file, then key=value overrides; {word.text!r} is a second file"]
    config = files[0] if files else None
    path = config and _repo_path(config.text)
    missing = path and _missing_path(path, root)
    if missing:
        problems += [config, f"{prog}: {missing}"]
    checkable = []
    for word in overrides:
        key, _, value = word.text.partition("=")
        if is_placeholder(key):
            continue
        if _unknown_key(key):
            problems += [word, f"{prog}: no config key {key!r}{_did_you_mean(key, list(config_keys()))}"]
            continue
        value_path = _repo_path(value)
        value_missing = value_path and _missing_path(value_path, root)
        if value_missing:
            problems += [word, f"{prog} {key}: {value_missing}"]
        elif not is_placeholder(value):
            checkable.append(word)
    if path and not missing and checkable:
        try:
            load_config(RunConfig, root / path, [word.text for word in checkable])
        except (ConfigError, ValueError, FileNotFoundError) as error:
            problems += [checkable[0], f"{prog} {path}: {str(error).splitlines()[0]}"]
    return problems


def _pipeline_problems(prog: str, words: list[Token], root: Path) -> list[Token | str]:
    """`pipeline RECIPE key=value`: the recipe exists and defines every variable the command sets."""
    if not words or is_placeholder(words[0].text):
        return []
    recipe, overrides = words[0], words[1:]
    missing = _missing_path(recipe.text, root) if not recipe.text.startswith("/") else None
    if missing:
        return [recipe, f"{prog}: {missing}"]
    if recipe.text.startswith("/"):
        return []
    defined = [str(key) for key in (yaml.safe_load((root / recipe.text).read_text()) or {}).get("vars") or {}]
    problems: list[Token | str] = []
    for word in overrides:
        key, sep, _ = word.text.partition("=")
        if not sep:
            problems += [word, f"{prog}: {word.text!r} is not key=value (a variable of {recipe.text})"]
        elif key not in defined and not is_placeholder(key):
            problems += [word, f"{prog}: {recipe.text} defines no variable {key!r} (it has: {', '.join(defined)})"
                         f"{_did_you_mean(key, defined)}"]
    return problems


def _script_problems(words: list[Token], root: Path) -> list[Token | str]:
    """`python scripts/NAME.py --flags`: the file exists and each `--flag` appears in its source."""
    script = words[0]
    path = script.text[2:] if script.text.startswith("./") else script.text
    missing = _missing_path(path, root)
    if missing:
        return [script, missing]
    source = (root / path).read_text()
    flags = sorted(set(re.findall(r"--[A-Za-z][\w-]*", source)))
    problems: list[Token | str] = []
    for word in words[1:]:
        flag = word.text.partition("=")[0]
        if flag.startswith("--") and not is_placeholder(flag) and not re.search(rf"{re.escape(flag)}(?![\w-])", source):
            problems += [word, f"{path} has no option {flag}{_did_you_mean(flag, flags, quote=False)}"]
    return problems


def _launcher_target(words: list[Token]) -> tuple[str, list[Token]] | None:
    """After `python`, `accelerate launch [options]` or `torchrun [options]`: ("module", arguments) for
    `-m diffalign.cli.main ARGS`, ("script", [script, ARGS]) for a repo script, else None."""
    for i, word in enumerate(words):
        if word.text == "-m":
            if i + 1 < len(words) and words[i + 1].text == MODULE:
                return "module", words[i + 2:]
            return None
        if word.text.endswith(".py") and not word.text.startswith("-"):
            return ("script", words[i:]) if word.text.lstrip("./").startswith(("scripts/", "examples/")) else None
    return None


def check_command(command: Command, root: Path = ROOT, parser: argparse.ArgumentParser | None = None,
                  deprecated: type | None = None) -> list[tuple[int, str]]:
    """What is wrong with one docs command, as (line, message); nothing for commands that are not diffalign's."""
    words = list(command.tokens)
    while words and ENV_ASSIGNMENT.match(words[0].text):
        words.pop(0)
    for i, word in enumerate(words):  # a redirection ends the arguments
        if REDIRECT.match(word.text):
            words = words[:i]
            break
    if not words:
        return []
    program = words[0].text
    target = None
    if program == "diffalign":
        target = ("module", words[1:])
    elif program in ("python", "python3", "torchrun"):
        target = _launcher_target(words[1:])
    elif program == "accelerate" and len(words) > 1 and words[1].text == "launch":
        target = _launcher_target(words[2:])
    if target is None:
        return []
    kind, arguments = target
    if kind == "script":
        found = _script_problems(arguments, root)
    else:
        parser = parser or _real_parser()
        found = check_arguments(arguments, parser, "diffalign", root,
                                deprecated if deprecated is not None else deprecated_option_class())
    pairs = zip(found[::2], found[1::2])
    return sorted(((token.line or command.line, message) for token, message in pairs), key=lambda item: item[0])


def command_text(command: Command) -> str:
    """A command's words joined by single spaces, as the docs show it on one line."""
    return " ".join(token.text for token in command.tokens)


def check_markdown(text: str, name: str, root: Path = ROOT, parser: argparse.ArgumentParser | None = None,
                   deprecated: type | None = None, on_purpose: Iterable[str] = ()) -> list[str]:
    """Every problem of every command of a Markdown text, each `NAME:LINE: message`; the commands in
    `on_purpose` (as `command_text` writes them: wrong commands shown to show their error) are not checked."""
    skipped = set(on_purpose)
    return [
        f"{name}:{line}: {message}"
        for command in markdown_commands(text)
        if command_text(command) not in skipped
        for line, message in check_command(command, root, parser, deprecated)
    ]


def docs_files(root: Path = ROOT) -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def docs_problems(files: Iterable[Path], root: Path = ROOT, on_purpose: Iterable[str] = ()) -> list[str]:
    """Every problem of every command of `files`, named relative to `root` where they are under it."""
    problems = []
    for path in files:
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        problems += check_markdown(path.read_text(), name, root, on_purpose=on_purpose)
    return problems
