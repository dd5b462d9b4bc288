"""Typed, documented configuration trees built from dataclasses.

Every field is declared with :func:`cfg_field` (default + help text, optional
``min``/``max``/``choices`` constraints); a nested config is declared by passing
its class as the default::

    @dataclass
    class TrainConfig:
        lr: float = cfg_field(1e-4, "Peak learning rate.", min=0.0)
        target_modules: list[str] = cfg_field(["to_q", "to_k"], "LoRA targets.")
        model: ModelConfig = cfg_field(ModelConfig, "Base model.")

Tagged unions: a base dataclass subclasses :class:`Variant` and is decorated with
``@variants(<discriminator field>)``; each subclass is registered with
``@register_variant(Base, "<name>")`` and must default its discriminator to that name::

    @variants("name")
    @dataclass
    class ObjectiveConfig(Variant):
        name: str = cfg_field("dpo", "Which objective.")

    @register_variant(ObjectiveConfig, "dpo")
    @dataclass
    class DPOConfig(ObjectiveConfig):
        name: str = cfg_field("dpo", "Which objective.")
        beta: float = cfg_field(5000.0, "KL strength.")

A field typed ``ObjectiveConfig`` holds one registered subclass, chosen by the
``name`` key of the raw data (else by the field default's variant).  Only keys present
in the raw YAML/overrides are validated against the chosen variant, so switching
``objective.name=sft`` drops the old variant's defaults but reports keys the user set.

Loading: :func:`load_config` = :func:`load_yaml_tree` (with ``base:`` composition)
+ :func:`apply_overrides` (``a.b=value``, YAML-parsed) + :func:`from_dict`.  All
problems of one document are raised together as a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, Union, get_args, get_origin

import yaml

__all__ = ["ConfigError", "FieldDoc", "Variant", "apply_overrides", "cfg_field", "describe",
           "dump_yaml", "field_default", "from_dict", "load_config", "load_yaml_tree", "parse_override",
           "register_variant", "to_dict", "variant_switches", "variants"]

T = TypeVar("T")
_INVALID: Any = object()


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 scalars: only true/false are booleans (`no`, `off` stay strings), and `1e-4` is a float."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 (a SafeLoader subclass)
_FLOAT_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A configuration problem; ``errors`` holds one message per problem."""

    def __init__(self, errors: str | Sequence[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        head = "" if len(self.errors) == 1 else f"{len(self.errors)} config errors:\n  "
        super().__init__(head + "\n  ".join(self.errors))


def cfg_field(default: Any, help: str, **metadata: Any) -> Any:
    """Declare a config field with a default, a help text and optional ``min``/``max``/``choices``.

    A dataclass *class* as default becomes the default factory; list/dict/set and
    dataclass-instance defaults are deep-copied per instance.  ``dataclasses.MISSING``
    makes the field required.
    """
    md = {**metadata, "help": help}
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=md)
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=md)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=md)
    return dataclasses.field(default=default, metadata=md)


class Variant:
    """Marker base class for tagged-union config bases (see :func:`variants`)."""


def variants(key: str) -> Callable[[type[T]], type[T]]:
    """Class decorator making a ``Variant`` dataclass a tagged-union base discriminated by ``key``."""
    def deco(cls: type[T]) -> type[T]:
        if not (issubclass(cls, Variant) and "__dataclass_fields__" in vars(cls)):
            raise TypeError(f"@variants: {cls.__qualname__} must subclass Variant and be a dataclass "
                            "(put @variants above @dataclass)")
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise TypeError(f"@variants: {cls.__qualname__} has no field {key!r}")
        cls.__variant_key__ = key  # type: ignore[attr-defined]
        cls.__variant_registry__ = {}  # type: ignore[attr-defined]
        return cls
    return deco


def register_variant(base: type, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator registering a dataclass subclass of ``base`` under ``name``."""
    def deco(cls: type[T]) -> type[T]:
        if not _is_variant_base(base):
            raise TypeError(f"register_variant: {base!r} is not decorated with @variants")
        if not (issubclass(cls, base) and "__dataclass_fields__" in vars(cls)):
            raise TypeError(f"register_variant: {cls.__qualname__} must be a dataclass subclass of "
                            f"{base.__qualname__} (put @register_variant above @dataclass)")
        key = base.__variant_key__
        if next(f for f in dataclasses.fields(cls) if f.name == key).default != name:
            raise TypeError(f"register_variant: {cls.__qualname__}.{key} must default to {name!r}")
        prev = base.__variant_registry__.get(name)
        if prev is not None and (prev.__module__, prev.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"register_variant: {name!r} is already registered to {prev.__qualname__}")
        base.__variant_registry__[name] = cls
        return cls
    return deco


def _is_variant_base(tp: Any) -> bool:
    return isinstance(tp, type) and "__variant_registry__" in vars(tp)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as e:
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {e} "
                        "(classes used in annotations must be importable at module level)") from e


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (a fresh one from a default factory), or `dataclasses.MISSING`."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _show(v: Any) -> str:
    r = repr(v)
    return f"{r[:60] + '...' if len(r) > 63 else r} ({type(v).__name__})"


def _suggest(given: Any, options: Sequence[str], quote: str = "") -> str:
    close = difflib.get_close_matches(str(given), [str(o) for o in options], n=3, cutoff=0.6)
    return "; did you mean " + " or ".join(f"'{quote}{c}'" for c in close) + "?" if close else ""


class _Ctx:
    """Collects errors, labelling each with where its key was set."""

    def __init__(self, source: str | None, origins: Mapping[str, str] | None) -> None:
        self.errors: list[str] = []
        self.source, self.origins = source, origins or {}

    def err(self, key: str, msg: str) -> Any:
        k = key.split("[")[0]
        while k and k not in self.origins:
            k = k.rpartition(".")[0]
        where = self.origins.get(k, self.source) if k else self.source
        self.errors.append(f"{where}: {msg}" if where else msg)
        return _INVALID

    def bad(self, key: str, v: Any, expected: str, extra: str = "") -> Any:
        return self.err(key, f"invalid value for '{key or '<top level>'}': expected {expected}, got {_show(v)}{extra}")


def _convert(tp: Any, v: Any, key: str, ctx: _Ctx, dflt: Any = None) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if tp in (list, tuple, dict):
        origin, args = tp, ()
    if tp is Any or tp is object:
        return v
    if _is_dataclass_type(tp):
        return _build(tp, v, key, ctx, dflt)
    if origin is Literal:
        if any(v == a and type(v) is type(a) for a in args):
            return v
        return ctx.bad(key, v, "one of " + ", ".join(map(repr, args)), _suggest(v, [str(a) for a in args]))
    if origin in (Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        opts = [a for a in args if a is not type(None)]
        if len(opts) == 1:
            return _convert(opts[0], v, key, ctx, dflt)
        for opt in opts:
            scratch = _Ctx(None, None)
            out = _convert(opt, v, key, scratch, dflt)
            if not scratch.errors:
                return out
        return ctx.bad(key, v, _type_name(tp))
    if tp is bool:
        return v if isinstance(v, bool) else ctx.bad(key, v, "true or false")
    if tp is int:
        return v if isinstance(v, int) and not isinstance(v, bool) else ctx.bad(key, v, "an integer")
    if tp is float:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            number = float(v)
        elif isinstance(v, str) and _FLOAT_RE.fullmatch(v.strip()):  # PyYAML reads `1e-4` as a string
            number = float(v)
        else:
            return ctx.bad(key, v, "a number")
        # no setting means anything with nan or inf (YAML's .nan/.inf, or 1e999), which would reach the run silently
        return number if math.isfinite(number) else ctx.bad(key, v, "a finite number")
    if tp is str:
        hint = " (quote it in YAML)" if isinstance(v, (int, float, bool)) else ""
        return v if isinstance(v, str) else ctx.bad(key, v, "a string", hint)
    if tp is Path:
        return Path(v) if isinstance(v, (str, Path)) else ctx.bad(key, v, "a path string")
    if origin in (list, tuple, Sequence):
        if not isinstance(v, (list, tuple)):
            return ctx.bad(key, v, f"a list ({_type_name(tp)})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(v) != len(args):
                return ctx.bad(key, v, f"a list of {len(args)} items ({_type_name(tp)})")
            item_types: Sequence[Any] = args
        else:
            item_types = [args[0] if args else Any] * len(v)
        out = [_convert(t, x, f"{key}[{i}]", ctx) for i, (t, x) in enumerate(zip(item_types, v))]
        if any(x is _INVALID for x in out):
            return _INVALID
        return tuple(out) if origin is tuple else out
    if origin in (dict, Mapping):
        if not isinstance(v, Mapping):
            return ctx.bad(key, v, f"a mapping ({_type_name(tp)})")
        kt, vt = args or (Any, Any)
        res = {_convert(kt, k, key, ctx): _convert(vt, x, f"{key}.{k}", ctx) for k, x in v.items()}
        return _INVALID if any(x is _INVALID for x in [*res, *res.values()]) else res
    if isinstance(tp, type) and isinstance(v, tp):
        return v
    return ctx.bad(key, v, _type_name(tp))


def _check_constraints(f: dataclasses.Field, v: Any, key: str, ctx: _Ctx) -> bool:
    md, n0 = f.metadata, len(ctx.errors)
    if v is None:
        return True
    if "min" in md and v < md["min"]:
        ctx.bad(key, v, f"a value >= {md['min']}")
    if "max" in md and v > md["max"]:
        ctx.bad(key, v, f"a value <= {md['max']}")
    if "choices" in md and v not in md["choices"]:
        ctx.bad(key, v, "one of " + ", ".join(map(repr, md["choices"])), _suggest(v, md["choices"]))
    return len(ctx.errors) == n0


def _build(cls: type, data: Any, key: str, ctx: _Ctx, dflt: Any) -> Any:
    if not isinstance(data, Mapping):
        return ctx.bad(key, data, f"a mapping ({cls.__name__})")
    pre, n0, vkey = f"{key}." if key else "", len(ctx.errors), None
    if _is_variant_base(cls):
        vkey, reg = cls.__variant_key__, cls.__variant_registry__
        fallback = getattr(dflt, vkey) if isinstance(dflt, cls) else field_default(
            next(f for f in dataclasses.fields(cls) if f.name == vkey))
        name = data.get(vkey, fallback)
        if not (isinstance(name, str) and name in reg):
            return ctx.bad(pre + vkey, name, "one of " + ", ".join(map(repr, reg)), _suggest(name, list(reg)))
        cls = reg[name]
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    same = type(dflt) is cls
    kwargs: dict[str, Any] = {}
    for k, x in data.items():
        sub, f = pre + str(k), fields.get(k)
        if f is None:
            owners = [n for n, c in reg.items() if k in c.__dataclass_fields__] if vkey else []
            extra = (f" (only valid for {pre}{vkey}={'/'.join(owners)}, not {data.get(vkey, fallback)})"
                     if owners else "")
            msg = _suggest(k, list(fields), pre) or (f"; valid keys{' under ' + repr(key) if key else ''}: "
                                                    + ", ".join(fields))
            ctx.err(sub, f"unknown key '{sub}'{extra}{msg}")
            continue
        if k == vkey:
            continue
        d = (getattr(dflt, k) if same else field_default(f)) if isinstance(x, Mapping) else None
        val = _convert(hints[k], x, sub, ctx, d)
        if val is not _INVALID and _check_constraints(f, val, sub, ctx):
            kwargs[k] = val
    for k, f in fields.items():
        if k not in data and _is_dataclass_type(hints[k]):  # resolve variant defaults in nested trees
            kwargs[k] = _convert(hints[k], {}, pre + k, ctx, getattr(dflt, k) if same else field_default(f))
        elif k not in data and not same and field_default(f) is dataclasses.MISSING:
            ctx.err(pre + k, f"missing required key '{pre + k}'")
    if len(ctx.errors) > n0:
        return _INVALID
    try:
        return dataclasses.replace(dflt, **kwargs) if same else cls(**kwargs)
    except (TypeError, ValueError) as e:
        return ctx.err(key, f"invalid '{key or cls.__name__}': {e}")


def from_dict(cls: type[T], data: Mapping[str, Any], *, source: str | None = None,
              origins: Mapping[str, str] | None = None) -> T:
    """Build and validate ``cls`` from plain data; raise one ConfigError listing every problem.

    ``source`` labels errors (e.g. a file name); ``origins`` maps dotted keys to a more
    specific label (set by :func:`load_config`).
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    ctx = _Ctx(source, origins)
    out = _build(cls, data, "", ctx, None)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return out


def _plain(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v) if isinstance(v, Path) else v


def to_dict(obj: Any) -> dict[str, Any]:
    """Convert a config instance to a plain, YAML-safe dict (tuples become lists)."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict expects a dataclass instance, got {obj!r}")
    return _plain(obj)


def parse_override(text: str) -> tuple[list[str], object]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML."""
    key, eq, raw = text.partition("=")
    path = [p.strip() for p in key.split(".")]
    if not eq or not all(path):
        raise ConfigError(f"command line: bad override {text!r}; expected KEY=VALUE with a dotted key, "
                          "e.g. train.lr=1e-4 or objective.name=sft")
    try:
        value = _yaml_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"command line: cannot parse the value of {text!r} as YAML "
                          f"({getattr(e, 'problem', e)}); quote it, e.g. {key}='...'") from None
    if isinstance(value, dict) and not raw.lstrip().startswith("{"):
        value = raw.strip()  # `prompt=a cat: photo` means a string, not a mapping
    return path, value


Switches = Mapping[tuple[str, ...], str]  # path of a variant field -> its discriminator key


def variant_switches(cls: type, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Where the config tree of ``cls`` holds variant fields, and the discriminator key of each."""
    out: dict[tuple[str, ...], str] = {}
    for name, tp in _hints(cls).items():
        if _is_variant_base(tp):
            out[(*prefix, name)] = tp.__variant_key__
        elif _is_dataclass_type(tp):
            out.update(variant_switches(tp, (*prefix, name)))
    return out


def _switched(old: Any, new: Any, key: str | None) -> bool:
    """Whether a higher layer picks another variant than the lower one did (then the lower one's keys go)."""
    return (key is not None and isinstance(old, Mapping) and isinstance(new, Mapping)
            and key in old and key in new and old[key] != new[key])


def _deep_merge(a: Mapping[str, Any], b: Mapping[str, Any], switches: Switches | None = None,
                prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        path = (*prefix, k)
        if _switched(out.get(k), v, (switches or {}).get(path)):
            out[k] = {}
        both = isinstance(v, Mapping) and isinstance(out.get(k), Mapping)
        out[k] = _deep_merge(out[k], v, switches, path) if both else copy.deepcopy(v)
    return out


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str],
                    switches: Switches | None = None) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b=value`` override set (mappings merge, rest replaces).

    With ``switches`` (from :func:`variant_switches`), an override that picks another variant
    (``objective.name=sft``) first drops the keys that lower layers set for the old variant.
    """
    switches = switches or {}
    out = copy.deepcopy(dict(data))
    for text in overrides:
        path, value = parse_override(text)
        parent = tuple(path[:-1])
        if parent and switches.get(parent) == path[-1]:
            node = out
            for p in parent[:-1]:
                node = node.get(p) if isinstance(node.get(p), dict) else {}
            if _switched(node.get(parent[-1]), {path[-1]: value}, path[-1]):
                node[parent[-1]] = {}
        node = out
        for i, p in enumerate(path[:-1]):
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"command line: cannot apply {text!r}: '{'.'.join(path[:i + 1])}' "
                                  f"is {_show(node[p])}, not a mapping")
            node = node[p]
        both = isinstance(value, dict) and isinstance(node.get(path[-1]), dict)
        node[path[-1]] = _deep_merge(node[path[-1]], value, switches, tuple(path)) if both else value
    return out


def _record(origins: dict[str, str], key: str, value: Any, label: str) -> None:
    origins[key] = label
    if isinstance(value, Mapping):
        for k, v in value.items():
            _record(origins, f"{key}.{k}", v, label)


def _load_tree(path: Path, stack: tuple[Path, ...], origins: dict[str, str],
               switches: Switches | None = None) -> dict[str, Any]:
    resolved = path.resolve()
    if resolved in stack:
        raise ConfigError(f"{path}: cyclic 'base' chain: " + " -> ".join(map(str, [*stack, resolved])))
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (base of {stack[-1]})" if stack else ""))
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        loc = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{loc}: YAML syntax error: {getattr(e, 'problem', None) or e}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {_show(data)}")
    bases = data.pop("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: 'base' must be a path or a list of paths, got {_show(bases)}")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _deep_merge(merged, _load_tree(path.parent / Path(b).expanduser(), (*stack, resolved), origins,
                                                switches), switches)
    for k, v in data.items():
        _record(origins, str(k), v, str(path))
    return _deep_merge(merged, data, switches)


def load_yaml_tree(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, resolving ``base:`` files (relative to it) and deep-merging them beneath it."""
    return _load_tree(Path(path), (), {})


def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = ()) -> T:
    """Load ``path`` (or nothing), apply ``overrides`` and validate into ``cls``."""
    origins: dict[str, str] = {}
    switches = variant_switches(cls)
    data = {} if path is None else _load_tree(Path(path), (), origins, switches)
    data = apply_overrides(data, overrides, switches)
    for text in overrides:
        keys, value = parse_override(text)
        _record(origins, ".".join(keys), value, f"command line ({text})")
    return from_dict(cls, data, source=None if path is None else str(path), origins=origins)


def _dump_lines(obj: Any, pad: str) -> list[str]:
    lines: list[str] = []
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        v = getattr(obj, f.name)
        nested = dataclasses.is_dataclass(v) and any(g.init for g in dataclasses.fields(v))
        if not pad and lines:
            lines.append("")
        lines += [f"{pad}# {h}".rstrip() for h in f.metadata.get("help", "").splitlines()]
        if nested:
            lines += [f"{pad}{f.name}:", *_dump_lines(v, pad + "  ")]
        else:
            pv = _plain(v)  # flow style only for collections of scalars, e.g. `betas: [0.9, 0.999]`
            text = yaml.safe_dump({f.name: pv}, sort_keys=False, allow_unicode=True, width=100,
                                  default_flow_style=None if isinstance(pv, (list, dict)) else False)
            lines += [pad + line for line in text.rstrip("\n").splitlines()]
    return lines


def dump_yaml(obj: Any) -> str:
    """Render a config instance as YAML, each field preceded by its help text as a comment."""
    return "\n".join(_dump_lines(obj, "")) + "\n"


class FieldDoc(NamedTuple):
    """One documented leaf field; ``variant`` names the variant(s) it belongs to, if any."""

    key: str
    type: str
    default: Any
    help: str
    variant: str | None = None

    @property
    def label(self) -> str:
        """The key with its variant, e.g. ``objective.beta (dpo)``."""
        return f"{self.key} ({self.variant})" if self.variant else self.key


def _type_name(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return " | ".join(map(repr, args))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if _is_variant_base(tp):
        return " | ".join(map(repr, tp.__variant_registry__))
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def variant_summary(cls: type) -> str:
    """What a variant is, for the lists of choices: its `__variant_summary__`, else its docstring's first line."""
    summary = getattr(cls, "__variant_summary__", None)
    return summary or (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")


def variant_list(registry: dict[str, type]) -> str:
    """The registered variants as " 'name' (summary), ..." for a help text, in registration order."""
    if not registry:
        return ""
    return " Registered: " + "; ".join(f"'{name}': {variant_summary(cls)}" for name, cls in registry.items()) + "."


def describe(cls: type) -> list[FieldDoc]:
    """Flatten ``cls`` into leaf FieldDocs; a variant field lists every registered variant's fields."""
    return _describe(cls, "", None, None)


def _describe(cls: type, prefix: str, _default: Any, _variant: str | None) -> list[FieldDoc]:
    out: list[FieldDoc] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, key = hints[f.name], prefix + f.name
        d = getattr(_default, f.name) if _default is not None else field_default(f)
        if _is_variant_base(tp):
            vkey, reg = tp.__variant_key__, tp.__variant_registry__
            vf = next(g for g in dataclasses.fields(tp) if g.name == vkey)
            help_text = (vf.metadata.get("help") or f.metadata.get("help", "")) + variant_list(reg)
            out.append(FieldDoc(f"{key}.{vkey}", _type_name(tp), getattr(d, vkey, None), help_text, _variant))
            for name, sub in reg.items():
                label = f"{_variant}/{name}" if _variant else name
                docs = _describe(sub, key + ".", d if type(d) is sub else None, label)
                out += [doc for doc in docs if doc.key != f"{key}.{vkey}"]
        elif _is_dataclass_type(tp):
            out += _describe(tp, key + ".", d, _variant)
        else:
            out.append(FieldDoc(key, _type_name(tp), _plain(d), f.metadata.get("help", ""), _variant))
    return out
