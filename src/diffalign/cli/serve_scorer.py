"""`diffalign serve-scorer`: serve one scorer over HTTP from its own environment, for `remote:` names.

This path imports the standard library, NumPy, Pillow, torch, tqdm, PyYAML and safetensors (the last two for
`diffalign.cli.main`), plus what the scorer imports, and no diffusers, transformers, accelerate, datasets or peft:
it runs where a scorer's own requirements are installed and diffalign was added with `pip install --no-deps`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..config.values import parse_option_value

# rewards.server's defaults, repeated here: importing it loads torch, too slow for building the parser
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_REQUEST_MB = 64.0


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

    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0 (any free port) to 65535, got {args.port}")
    if not args.max_request_mb > 0:
        raise ValueError(f"--max-request-mb must be more than 0, got {args.max_request_mb:g}")
    options = parse_options(args.scorer_option, args.name)
    scorer = build_served_scorer(args.name, options, args.device, args.dtype, args.batch_size)
    try:
        return ScorerServer(scorer, args.host, args.port, args.max_batch, int(args.max_request_mb * 2**20))
    except OSError as error:
        raise ValueError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}; choose another "
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
        "  diffalign serve-scorer pickscore --device cuda:1 --dtype fp32\n"
        "  diffalign serve-scorer examples/rewards/hpsv3_scorer.py:HPSv3 --device cuda --max-batch 16\n"
        "then: diffalign train configs/demo/grpo.yaml rollout.reward=remote:http://127.0.0.1:8765",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="a registered scorer, path/to/file.py:NAME or package.module:NAME")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}, this machine only; 0.0.0.0 opens it to the "
                   "network, without authentication)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: a free one)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the scorer's own, usually cuda "
                   "if available)")
    p.add_argument("--dtype", default=None, choices=["auto", "fp32", "fp16", "bf16"],
                   help="model precision (default: the scorer's own)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass (default: the scorer's own)")
    p.add_argument("--scorer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="constructor option of the scorer, e.g. pickscore.model=/path (repeatable)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"most images in one request (default {DEFAULT_MAX_BATCH}; clients split larger calls)")
    p.add_argument("--max-request-mb", type=float, default=DEFAULT_MAX_REQUEST_MB,
                   help=f"largest request body read, in MiB (default {DEFAULT_MAX_REQUEST_MB:g}; clients split "
                   "larger calls)")
    p.set_defaults(func=cmd_serve_scorer)
