"""The options of the commands that take a run config (`train`, `cache`) besides the config file and its
key=value overrides: where they write, and how `cache` batches its work. Declared here, light to import, so
the parser does not load torch; `--out` is the same setting as the config key it names."""

from __future__ import annotations

from dataclasses import dataclass

from .core import ConfigError
from .options import batch_size_option, device_option, out_option, shard_size_option


@dataclass
class TrainOptions:
    """`diffalign train` CONFIG [key=value ...] [--out OUT]."""

    out: str | None = out_option("the run folder: the same as train.output_dir=OUT (default: the config's "
                                 "train.output_dir)", default=None)


@dataclass
class CacheOptions:
    """`diffalign cache` CONFIG [key=value ...] [--out OUT] and how the encoders are batched."""

    out: str | None = out_option("the cache folder: the same as data.cache_dir=OUT (default: the config's "
                                 "data.cache_dir)", default=None)
    device: str | None = device_option()
    batch_size: int = batch_size_option(16, "images per VAE call, captions per text-encoder call")
    shard_size: int = shard_size_option(1024)


def with_out(overrides: list[str], key: str, out: str | None) -> list[str]:
    """`overrides` plus `key=out` for `--out`; a `key=...` override naming another folder is refused."""
    if out is None:
        return list(overrides)
    for item in overrides:
        name, _, value = item.partition("=")
        if name.strip() == key and value.strip() != str(out):
            raise ConfigError(f"--out {out} and {item} name two different folders: give one of them")
    return [*overrides, f"{key}={out}"]
