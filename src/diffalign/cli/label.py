"""`diffalign label`: serve a local web page on which a person picks the preferred image of each prompt of a round."""

from __future__ import annotations

import argparse
import errno
import socket

from ..feedback.label_server import LabelOptions
from .options import add_options, job_values

BIND_ERRORS = (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES)  # the address is taken or not ours


def cmd_label(args: argparse.Namespace) -> int:
    """Serve the labelling page of ROUND_DIR until Ctrl-C, then say how far the labelling got."""
    from ..data.label_rounds import PAIRS_FILE, read_decisions, read_round, round_pairs
    from ..feedback.label_server import serve

    options = LabelOptions(**job_values(args, LabelOptions))
    round_ = read_round(options.round_dir)  # not a round folder: a clear error before anything listens
    try:
        serve(round_.folder, host=options.host, port=options.port)
    except OSError as error:
        if not (isinstance(error, socket.gaierror) or error.errno in BIND_ERRORS):
            raise
        raise ValueError(f"cannot listen on {options.host} port {options.port}: {error.strerror or error}") from None
    except KeyboardInterrupt:
        labelled, total = len(read_decisions(round_.folder)), len(round_.prompts)
        pairs = len(round_pairs(round_.folder))
        print(f"\nstopped: {labelled} / {total} prompts labelled, {pairs} pair(s) in {round_.folder / PAIRS_FILE}"
              + ("" if labelled == total else "; run the same command to go on"))
    return 0


def add_label_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `label` subcommand."""
    p = sub.add_parser(
        "label",
        help="label a round's images in the browser (human feedback for D3PO)",
        description="Serve a local web page showing each prompt of a round with its images side by side; a person\n"
        "picks the preferred one (click it or press 1..9; t tie, s skip, u or Backspace undo). Every\n"
        "decision is appended to ROUND_DIR/labels.jsonl at once, and ROUND_DIR/pairs.jsonl (prompt,\n"
        "chosen, rejected: the chosen image against each other image; ties and skips give none) is\n"
        "rewritten, in the local-pairs format that `data.path` reads. Stop and start again at will: the\n"
        "page resumes at the first prompt not yet labelled.\n\n"
        "ROUND_DIR is a round folder, round.json plus the images: a D3PO run with rollout.preference=human\n"
        "writes OUTPUT_DIR/rounds/round-NNNNNN/ and waits until every prompt of it is decided.",
        epilog="examples:\n"
        "  diffalign label runs/d3po-human/rounds/round-000003    # then open the printed http://127.0.0.1:PORT/\n"
        "  diffalign label ROUND_DIR --port 8765                  # a fixed port (e.g. for an SSH tunnel)\n"
        "  ssh -L 8765:127.0.0.1:8765 gpu-box                     # ... to label from your own machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(p, LabelOptions)
    p.set_defaults(func=cmd_label)
