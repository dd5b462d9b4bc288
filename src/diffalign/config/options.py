"""A command's options declared once, as the fields of its job's dataclass.

Each field carries its default, its help and how it is spelled on the command line; `diffalign.cli.options`
builds the argument parser from the fields, and the Python API takes the same names, so a default or a help
text cannot differ between them. The options several commands share (`--out`, `--scorer`, `--prompts`,
`--seeds`, `--batch-size`, `--device`, `--dtype`, ...) are made here, so they are spelled and explained alike
everywhere::

    @dataclass
    class RelabelJob:
        source: str = option(MISSING, "dataset to re-score", positional=True)
        out: Path = out_option("output folder (created; a rerun resumes it)")
        batch_size: int = batch_size_option(32, "images per scorer call")

Metadata a field may carry (all optional but `help`): `flag` (the option's name, default `--field-name`),
`positional`, `nargs`, `metavar`, `choices`, `parse` (str -> value, for argparse's `type`), `repeat` (a list
collected from a repeated option), `negate` (a True boolean turned off by this flag, e.g. `--no-progress`),
`old` (earlier flags of the option) and `old_values` ({old value: new value}), both accepted for one release
with a deprecation message, `cli=False` (not an option: computed by the command), `show_default=False` (the
help says what the default means), `shared` (set by the constructors below: the option is one of those every
command spells alike).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .core import cfg_field

MISSING: Any = dataclasses.MISSING

DTYPES = ("auto", "float32", "float16", "bfloat16")
# The scorer commands' earlier spellings of --dtype: accepted for one release, with a deprecation message.
OLD_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def flag_of(field: dataclasses.Field) -> str:
    """The option a field is spelled as: its `flag` metadata, else `--field-name`."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def check_minimums(job: Any) -> None:
    """Raise a ValueError naming the first option field of `job` below its declared `min` (a job built in Python
    is not parsed, so the parser's check did not run), e.g. `--batch-size must be at least 1, got 0`."""
    for field in dataclasses.fields(job):
        minimum, value = field.metadata.get("min"), getattr(job, field.name)
        if minimum is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < minimum:
            raise ValueError(f"{flag_of(field)} must be at least {minimum}, got {value}")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A job field that is also a command-line option: `default`, `help` and the metadata the module docstring
    lists (`MISSING` as default: a required option or positional)."""
    return cfg_field(default, help, **metadata)


def not_an_option(default: Any, help: str) -> Any:
    """A job field that the command computes rather than takes as an option (e.g. the command line itself)."""
    return cfg_field(default, help, cli=False)


def out_option(help: str, default: Any = MISSING) -> Any:
    """`--out`: where the command writes (required unless `default` is given)."""
    return option(default, help, metavar="OUT", show_default=False, shared="--out")


def host_option(help: str = "") -> Any:
    """`--host`: the address a local server listens on; this machine only unless the user opens it."""
    return option("127.0.0.1", f"address to listen on (127.0.0.1: this machine only; 0.0.0.0 opens it to the "
                  f"network{help})", shared="--host")


def device_option(help: str = "cpu, cuda, cuda:1 ... (default: cuda if available; under a launcher each process "
                  "takes its own GPU)") -> Any:
    """`--device`: where the models run."""
    return option(None, help, shared="--device")


def dtype_option(default: str | None, what: str, default_means: str | None = None) -> Any:
    """`--dtype`: the precision of `what` (auto, float32, float16, bfloat16; the old fp32/fp16/bf16 warn);
    `default_means` says what a None default does."""
    means = f"; default: {default_means}" if default_means else ""
    return option(default, f"{what} precision (auto: float16 on CUDA, float32 on the CPU{means})", choices=DTYPES,
                  old_values=OLD_DTYPES, metavar="{" + ",".join(DTYPES) + "}", show_default=not default_means,
                  shared="--dtype")


def batch_size_option(default: int | None, what: str) -> Any:
    """`--batch-size`: `what` per call."""
    return option(default, what, min=1, shared="--batch-size")


def scorers_option(default: Any, help: str = "scorer(s) by name (repeat, or separate with commas); "
                   "`diffalign score --help` lists them") -> Any:
    """`--scorer NAME[,NAME...]`, repeatable: the scorers, as the command line names them."""
    return option(default, help, flag="--scorer", repeat=True, metavar="NAME[,NAME...]", shared="--scorer")


def scorer_options_option() -> Any:
    """`--scorer-option NAME.KEY=VALUE`, repeatable: a constructor option of one scorer."""
    return option([], "constructor option of one scorer, e.g. pickscore.model=/path (repeatable)",
                  flag="--scorer-option", repeat=True, metavar="NAME.KEY=VALUE", shared="--scorer-option")


def weights_option() -> Any:
    """`--weights W[,W...]`: the scorers' weights in the combined score."""
    return option(None, "weights of the scorers in the combined score, in --scorer order (default: 1 for one "
                  "scorer; with several, each scorer's logit scale, so the sum is in preference logits)",
                  metavar="W[,W...]", shared="--weights")


def prompts_option(default: Any, help: str) -> Any:
    """`--prompts`: a named prompt set or a prompt file."""
    return option(default, help, metavar="SET|FILE", shared="--prompts")


def max_prompts_option(help: str = "only the first N prompts") -> Any:
    """`--max-prompts N`."""
    return option(None, help, metavar="N", min=1, shared="--max-prompts")


def seeds_option(default: str | None, help: str) -> Any:
    """`--seeds`: a count N (0..N-1), a range A-B or a list a,b,c."""
    return option(default, help, metavar="N|A-B|a,b", shared="--seeds")


def seed_option(help: str) -> Any:
    """`--seed`: the one seed a job draws its randomness from."""
    return option(0, help, shared="--seed")


def shard_size_option(default: int = 1000, help: str = "source rows per output shard") -> Any:
    """`--shard-size`: rows per output shard."""
    return option(default, help, min=1, shared="--shard-size")


def overwrite_option() -> Any:
    """`--overwrite`: start over instead of resuming."""
    return option(False, "start over in OUT instead of resuming", shared="--overwrite")


def progress_option() -> Any:
    """`--no-progress`: the progress bar is on unless this is given."""
    return option(True, "no progress bar", negate="--no-progress", shared="--no-progress")
