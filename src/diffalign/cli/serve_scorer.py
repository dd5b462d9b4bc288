"""`diffalign serve-scorer`: serve one scorer over HTTP from its own environment, for `remote:` names.

This path imports the standard library, NumPy, Pillow, torch, tqdm, PyYAML and safetensors (the last two for
`diffalign.cli.main`), plus what the scorer imports, and no diffusers, transformers, accelerate, datasets or peft:
it runs where a scorer's own requirements are installed and diffalign was added with `pip install --no-deps`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config.scorer_server import ServeScorerOptions
from ..config.values import parse_option_value
from .options import add_options, job_values


def parse_options(items: Sequence[str], name: str) -> dict[str, object]:
    """The constructor options of the served scorer `name` from `NAME.key=value` (or `key=value`) strings."""
    options: dict[str, object] = {}
    for item in items:
        target, sep, value = item.partition("=")
        key = target[len(name) + 1:] if target.startswith(name + ".") else target
        if not sep or not key.isidentifier():
            raise ValueError(f"--scorer-option {item!r}: expected {name}.KEY=VALUE (or KEY=VALUE), "
                             f"e.g. {name}.model=/path/to/weights")
        options[key] = parse_option_value(value)
    return options


def make_server(args: argparse.Namespace):  # -> rewards.server.ScorerServer (imported here: it loads torch)
    """Build the scorer and its server from the command's arguments (the port is bound, nothing served yet)."""
    from ..rewards.server import ScorerServer, build_served_scorer

    opts = ServeScorerOptions(**job_values(args, ServeScorerOptions))
    if not 0 <= opts.port <= 65535:
        raise ValueError(f"--port must be 0 (any free port) to 65535, got {opts.port}")
    if not opts.max_request_mb > 0:
        raise ValueError(f"--max-request-mb must be more than 0, got {opts.max_request_mb:g}")
    options = parse_options(opts.scorer_options, opts.name)
    scorer = build_served_scorer(opts.name, options, opts.device, opts.dtype, opts.batch_size)
    try:
        return ScorerServer(scorer, opts.host, opts.port, opts.max_batch, int(opts.max_request_mb * 2**20))
    except OSError as error:
        raise ValueError(f"cannot listen on {opts.host}:{opts.port}: {error.strerror or error}; choose another "
                         "--port (0 picks a free one) or --host") from error


def cmd_serve_scorer(args: argparse.Namespace) -> int:
    from ..rewards.server import is_loopback, serve

    server = make_server(args)
    if not is_loopback(args.host):
        print(f"warning: bound to {args.host}: anyone who can reach this machine on port {server.port} can use the "
              "scorer (there is no authentication); use the default --host 127.0.0.1 with an SSH tunnel unless the "
              "network is yours", file=sys.stderr, flush=True)
    serve(server)
    return 0


def add_serve_scorer_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `serve-scorer` subcommand."""
    p = sub.add_parser(
        "serve-scorer",
        help="serve a scorer over HTTP from its own environment (use it as remote:http://HOST:PORT)",
        description="Serve one scorer, built once, to `remote:http://HOST:PORT` scorer names (training rewards,\n"
        "`diffalign score`, ...): JSON over HTTP, GET /info and POST /score (protocol in\n"
        "diffalign/rewards/remote.py). Run it in the environment the scorer needs, where diffalign was added with\n"
        "`pip install --no-deps`: this command imports only the standard library, NumPy, Pillow, torch, PyYAML,\n"
        "tqdm and safetensors, plus what the scorer imports. It prints `serving NAME on http://HOST:PORT` when\n"
        "ready; Ctrl-C or SIGTERM stops it. One request is scored at a time.",
        epilog="examples:\n"
        "  diffalign serve-scorer shapes --port 0                  # any free port; the ready line shows it\n"
        "  diffalign serve-scorer pickscore --device cuda:1 --dtype float32\n"
        "  diffalign serve-scorer examples/rewards/hpsv3_scorer.py:HPSv3 --device cuda --max-batch 16\n"
        "then: diffalign train configs/demo/grpo.yaml rollout.reward=remote:http://127.0.0.1:8765",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, ServeScorerOptions)
    p.set_defaults(func=cmd_serve_scorer)
