"""Typed configs: dataclass schemas, YAML files with `base:` composition and `key=value` overrides."""

from .core import ConfigError, describe, dump_yaml, from_dict, load_config, to_dict
from .schema import RunConfig

__all__ = ["ConfigError", "RunConfig", "describe", "dump_yaml", "from_dict", "load_config", "to_dict"]
