"""The `diffalign` command line: train, cache, config, generate, eval, grid, score, serve-scorer, pairs, relabel, label, fuse,
pipeline."""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext
from importlib import metadata

from ..config.commands import CacheOptions, TrainOptions, with_out
from ..config.core import ConfigError, describe, dump_yaml, load_config
from ..config.schema import RunConfig
from ..threads import AUTO, command_started, cpu_threads
from .captions import add_captions_parser
from .errors import expected_failure
from .evaluate import add_eval_parser
from .export import add_export_parser
from .fuse import add_fuse_parser
from .generate import add_generate_parser
from .grid import add_grid_parser
from .label import add_label_parser
from .method_table import add_method_table_parser
from .options import CommandParser, add_options
from .pairs import add_pairs_parser
from .pipeline import add_pipeline_parser
from .relabel import add_relabel_parser
from .score import add_score_parser
from .serve_scorer import add_serve_scorer_parser


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """(config file or None, key=value overrides) from the positional arguments."""
    config = None
    overrides = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise ConfigError(f"unexpected argument {item!r}: give one config file, then key=value overrides")
    return config, overrides


def cmd_train(args: argparse.Namespace) -> int:
    from ..api import train  # the Python API's call: a bad config fails before torch loads

    path, overrides = _split_args(args.items)
    result = train(path, *with_out(overrides, "train.output_dir", args.out))
    if result.is_main_process:
        print(f"done: weights in {result.weights}; evaluate with `diffalign eval {result.folder}`")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    path, overrides = _split_args(args.items)
    cfg = load_config(RunConfig, path, with_out(overrides, "data.cache_dir", args.out))  # a bad config fails before torch loads
    import torch

    from ..data.cache import build_cache
    from ..models.loading import DTYPES, load_parts
    from ..processes import current_processes

    processes = current_processes()  # under a launcher, each process its share of the shards, on its own GPU
    device = torch.device(processes.device(args.device) or ("cuda" if torch.cuda.is_available() else "cpu"))
    parts = load_parts(cfg.model, unet=False)
    for module in (parts.vae, *parts.text_encoders):
        module.to(device, DTYPES[cfg.model.frozen_dtype])
    with cpu_threads(cfg.train.cpu_threads):  # the config's threads, as `train` runs with them
        latent_dir, text_dir = build_cache(parts, cfg.model, cfg.data, args.shard_size, args.batch_size, processes)
    if processes.is_main:
        size = sum(f.stat().st_size for d in (latent_dir, text_dir) for f in d.iterdir()) / 2**20
        print(f"cache ready ({size:.1f} MiB): {latent_dir}, {text_dir}\n`diffalign train` with this config now uses it")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "keys":
        for doc in describe(RunConfig):
            print(f"{doc.label}  ({doc.type}, default {doc.default!r})\n    {doc.help}")
        return 0
    path, overrides = _split_args(args.items)
    print(dump_yaml(load_config(RunConfig, path, overrides)), end="")
    return 0


def build_parser(scorer_names: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; `scorer_names` (the registered scorers) are listed in `score --help`."""
    scorer_names = ", ".join(scorer_names) if scorer_names else "see `diffalign score --help`"
    parser = CommandParser(prog="diffalign", description="Align text-to-image diffusion models with human preferences.")
    parser.add_argument("--version", action="version", version=f"diffalign {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="fine-tune a model on preference pairs",
        description="Train with a YAML config plus key=value overrides. With no arguments: the embedded demo "
        "(Diffusion-DPO with LoRA on the tiny shapes model, CPU, a few minutes).",
        epilog="examples:\n"
        "  diffalign train configs/demo/dpo.yaml train.max_steps=50 objective.beta=5000 --out runs/dpo-50\n"
        "  diffalign train configs/sdxl/dpo.yaml train.resume=latest     # continue from the newest checkpoint\n"
        "  accelerate launch --multi_gpu -m diffalign.cli.main train configs/sdxl/dpo.yaml   # DDP on every GPU\n"
        "  accelerate launch --config_file configs/accelerate/fsdp.yaml -m diffalign.cli.main train \\\n"
        "      configs/sdxl/dpo.yaml lora.enabled=false            # full fine-tuning, state sharded (FSDP2)\n"
        "A run whose latents `diffalign cache` has built reads them (data.cache=auto). Every key: `diffalign config keys`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]", help="config file and overrides")
    add_options(p, TrainOptions)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "cache",
        help="precompute VAE latents and text embeddings for a training config",
        description="Encode every pair's images (and their mirror images with data.random_flip) with the VAE and\n"
        "every caption with the text encoder(s), once, into data.cache_dir, in shards named by a hash of model,\n"
        "data and resolution. An interrupted build resumes when rerun with the same --shard-size and\n"
        "--batch-size; `diffalign train` with the same config then uses the cache and loads neither VAE nor\n"
        "text encoders.\n\n"
        "Runs unchanged on many processes (GPUs, nodes):\n"
        "  accelerate launch --num_processes N -m diffalign.cli.main cache CONFIG.yaml [key=value ...]\n"
        "process r encodes shards r, r+N, ... on its own GPU (--device cuda or none); the main process writes\n"
        "each index once every shard is there, so the files are those one process writes (data.cache_dir on a\n"
        "filesystem every process sees). A killed launch resumes with the same command, on any N.",
        epilog="example: diffalign cache configs/sdxl/dpo.yaml --out /scratch/cache",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]", help="config file and overrides")
    add_options(p, CacheOptions)
    p.set_defaults(func=cmd_cache)

    p = sub.add_parser(
        "config",
        help="print a resolved config or list every key",
        description="`show`: the config after base files and overrides, with every field's help text. "
        "`keys`: every key with its type, default and help.",
    )
    p.add_argument("action", choices=["show", "keys"], help="show: resolved config; keys: all keys")
    p.add_argument("items", nargs="*", metavar="[CONFIG.yaml] [key=value ...]", help="config file and overrides")
    p.set_defaults(func=cmd_config)

    add_generate_parser(sub)
    add_eval_parser(sub)
    add_method_table_parser(sub)
    add_grid_parser(sub)
    add_score_parser(sub, scorer_names)
    add_serve_scorer_parser(sub)
    add_pairs_parser(sub)
    add_relabel_parser(sub)
    add_captions_parser(sub)
    add_label_parser(sub)
    add_fuse_parser(sub)
    add_export_parser(sub)
    add_pipeline_parser(sub)
    return parser


def package_version() -> str:
    """The installed distribution's version (the source tree's `__version__` when run uninstalled)."""
    try:
        return metadata.version("diffalign")
    except metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


CONFIG_COMMANDS = ("train", "cache", "config")  # the commands whose settings are key=value overrides


def unknown_options_message(command: str, unknown: list[str], argv: list[str]) -> str:
    """What to say about options `command` does not know; for the config commands, the key=value form of the
    same setting (`--max_steps 20` -> `train.max_steps=20`)."""
    listed = " ".join(unknown)
    if command not in CONFIG_COMMANDS:
        return f"unrecognized arguments: {listed} (see `diffalign {command} --help`)"
    flags = [item for item in unknown if item.startswith("-")] or unknown
    flag = flags[0]
    name, _, value = flag.lstrip("-").partition("=")
    name = name.replace("-", "_")
    if not value:
        following = argv[argv.index(flag) + 1] if flag in argv and argv.index(flag) + 1 < len(argv) else ""
        value = following if following and not following.startswith("-") and "=" not in following else "VALUE"
    labels = dict.fromkeys(doc.label.split(" ")[0] for doc in describe(RunConfig))  # "objective.beta (dpo)"
    keys = [label for label in labels if label == name or label.endswith("." + name)]
    example = " or ".join(f"{key}={value}" for key in keys[:4]) if keys else f"SECTION.{name}={value}"
    known = "" if keys else f" (no setting is named {name!r}: `diffalign config keys` lists them all)"
    return (
        f"unrecognized option {flag}: `diffalign {command}` takes its settings as key=value after the config file, "
        f"e.g. `diffalign {command} {example}`{known}"
    )


# Commands that never load torch, which would cost them seconds for a thread setting they do not use, and those
# that take their threads from their config (train.cpu_threads), once the config has been checked.
TORCH_FREE_COMMANDS = {"config", "grid", "method-table", "label"}
CONFIG_THREAD_COMMANDS = {"train", "cache"}


def _registered_scorers() -> list[str]:
    from ..rewards import available_scorers

    return available_scorers()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `diffalign` console script."""
    argv = sys.argv[1:] if argv is None else argv
    command_started()  # before anything imports torch
    # Only `score --help` lists the registered scorers: importing them loads torch, too slow for anything else.
    scorers = _registered_scorers() if argv[:1] == ["score"] and {"-h", "--help"} & set(argv) else None
    args, unknown = build_parser(scorers).parse_known_args(argv)
    if unknown:
        print(f"diffalign {args.command}: error: {unknown_options_message(args.command, unknown, argv)}",
              file=sys.stderr)
        return 2
    try:
        with nullcontext() if args.command in TORCH_FREE_COMMANDS | CONFIG_THREAD_COMMANDS else cpu_threads(AUTO):
            return args.func(args)
    except Exception as error:
        message = expected_failure(error)
        if message is None or os.environ.get("DIFFALIGN_DEBUG"):
            raise
        print(f"diffalign {args.command}: error: {message}\n(set DIFFALIGN_DEBUG=1 for a traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
