"""The options of `diffalign serve-scorer` (`rewards.server` serves them). They live here, not beside the
server, because `diffalign.rewards` loads torch and the command line is built without it."""

from __future__ import annotations

from dataclasses import dataclass

from .options import (MISSING, batch_size_option, device_option, dtype_option, host_option, option,
                      scorer_options_option)


@dataclass
class ServeScorerOptions:
    """Which scorer to serve, how it is built, and where and how much the server accepts."""

    name: str = option(MISSING, "a registered scorer, path/to/file.py:NAME or package.module:NAME", positional=True,
                       metavar="NAME")
    host: str = host_option(", without authentication")
    port: int = option(8765, "port (0: a free one)")
    device: str | None = device_option("cpu, cuda, cuda:1 ... (default: the scorer's own, usually cuda if "
                                       "available)")
    dtype: str | None = dtype_option(None, "scorer", "the scorer's own")
    batch_size: int | None = batch_size_option(None, "images per forward pass (default: the scorer's own)")
    scorer_options: list[str] = scorer_options_option()
    max_batch: int = option(64, "most images in one request (clients split larger calls)")
    max_request_mb: float = option(64.0, "largest request body read, in MiB (clients split larger calls)")
