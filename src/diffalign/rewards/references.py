"""Your own scorer, named by reference: `path/to/file.py:NAME` or `package.module:NAME`.

Everywhere a scorer is named (`rollout.reward`, the keys of `rollout.rewards`, `data.relabel_with`,
`diffalign score/eval/relabel/pairs --scorer`), a name that is not registered and holds a ':' is a reference:

* `path/to/file.py:NAME`: the file (a path relative to the current directory, or absolute) is loaded once per
  process under a module name of its own, so every reference to the same file shares one module (its globals,
  a model it loads at import). Modules beside it are importable only if their folder is on PYTHONPATH.
* `package.module:NAME`: the module is imported as `import package.module` would (installed, or on PYTHONPATH).

NAME is either

* a class with a method `score(images, prompts)`: it is instantiated with the options of the scorer
  (`--scorer-option REF.KEY=VALUE`, `rollout.rewards: {REF: {weight: 1, KEY: VALUE}}`); `device`, `dtype` and
  `batch_size` reach its `__init__` only when it names them as parameters. `score` receives what any scorer
  receives: a list of PIL images or an image batch (a uint8 array (N, H, W, 3) or a float tensor (N, 3, H, W) in
  [0, 1]; `diffalign.rewards.to_pil_images` / `to_float_images` turn either into one form). Its attributes
  `scale` (the unit of its scores) and `logit_scale` (the factor turning a score difference into a
  Bradley-Terry logit) are used when it has them (default "user" and 1.0); or
* a function `NAME(images, prompts) -> scores`, called with PIL RGB images and their prompts (strings); the
  scorer's options reach it as keyword arguments, and `device`, `dtype`, `batch_size` when it names them.

Either way the scorer is named by the reference as written, and each call must return one float per image
(a list, NumPy array or tensor of shape (N,)); NaN marks an image it cannot score. Anything else is an error of
that call, so the batch loop (`rewards.batch.score_in_batches`) reports it for the images concerned.

    # my_rewards.py                                       rollout.reward=my_rewards.py:redness
    def redness(images, prompts, scale=1.0):              --scorer-option my_rewards.py:redness.scale=2
        return [scale * np.asarray(im)[..., 0].mean() / 255 for im in images]
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

from .base import ImageBatch, Scorer, to_pil_images

SHARED_OPTIONS = ("device", "dtype", "batch_size")  # what callers pass every scorer, options or not
FORMS = "path/to/file.py:NAME or package.module:NAME"

_FILE_MODULES: dict[Path, ModuleType] = {}  # resolved path -> the module loaded from it (once per process)
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def reference_factory(ref: str) -> Callable[..., Scorer]:
    """The factory that builds the scorer `ref` (`path/to/file.py:NAME` or `package.module:NAME`) from the usual
    scorer keyword arguments (device, dtype, batch_size and the scorer's own options); it loads the file or
    imports the module, and checks that NAME is a scorer class or a function that can take (images, prompts)."""
    target, _, attribute = ref.rpartition(":")
    if "://" in ref:
        raise ValueError(f"scorer {ref!r} looks like a server address: a served scorer is named remote:{ref}")
    if not target or not attribute.isidentifier():
        raise ValueError(f"scorer reference {ref!r}: expected {FORMS} (NAME a class or function of that file or module)")
    module = _load_file(ref, target) if target.endswith(".py") else _import_module(ref, target)
    if not hasattr(module, attribute):
        raise ValueError(f"scorer reference {ref!r}: {_where(module, target)} has no {attribute!r}; "
                         f"{_public_callables(module)}")
    obj = getattr(module, attribute)
    if inspect.isclass(obj):
        return _class_factory(ref, obj)
    if callable(getattr(obj, "score", None)) and not callable(obj):
        raise ValueError(f"scorer reference {ref!r} is an object ({type(obj).__name__}), not a class or function: name "
                         f"its class ({type(obj).__name__}) so that options and the device reach it")
    if not callable(obj):
        raise ValueError(f"scorer reference {ref!r} is a {type(obj).__name__}, not a scorer: name a class with a "
                         "score(images, prompts) method or a function (images, prompts) -> one float per image")
    return _function_factory(ref, obj)


def _where(module: ModuleType, target: str) -> str:
    return target if target.endswith(".py") else f"module {module.__name__}"


def _public_callables(module: ModuleType) -> str:
    """'its public functions and classes: a, B' of what the module itself defines (not what it imports)."""
    names = sorted(name for name, value in vars(module).items()
                   if not name.startswith("_") and callable(value) and getattr(value, "__module__", None) == module.__name__)
    return f"its public functions and classes: {', '.join(names)}" if names else "it defines no public function or class"


def _load_file(ref: str, target: str) -> ModuleType:
    """The module of the file `target`, executed on its first reference in this process."""
    path = Path(target).expanduser().resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        relative = "" if Path(target).expanduser().is_absolute() else f" (relative to the current directory {Path.cwd()})"
        raise FileNotFoundError(f"scorer reference {ref!r}: no file {path}{relative}")
    stem = re.sub(r"\W", "_", path.stem)
    name = f"diffalign_user_scorer_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"scorer reference {ref!r}: cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up by name while it runs
    try:
        spec.loader.exec_module(module)
    except BaseException as error:  # SystemExit too: a script that parses its arguments on import
        del sys.modules[name]
        if isinstance(error, KeyboardInterrupt):
            raise
        hint = (" (a module beside the file is importable only with its folder on PYTHONPATH)"
                if isinstance(error, ModuleNotFoundError) else "")
        raise ValueError(f"scorer reference {ref!r}: importing {path} failed: {type(error).__name__}: {error}{hint}") \
            from error
    _FILE_MODULES[path] = module
    return module


def _import_module(ref: str, target: str) -> ModuleType:
    """The module `target`, imported; a module that is not there and one that fails to import are told apart."""
    if not _MODULE_NAME.match(target):
        raise ValueError(f"scorer reference {ref!r}: {target!r} is neither a .py file nor a module name; expected {FORMS}")
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if target == missing or target.startswith(missing + "."):
            advice = (f"did you mean {target}.py:{ref.rpartition(':')[2]}?" if Path(f"{target}.py").is_file() else
                      "install it, put its folder on PYTHONPATH, or name a file as path/to/file.py:NAME")
            raise ValueError(f"scorer reference {ref!r}: no module {target!r} ({error}); {advice}") from error
        raise ValueError(f"scorer reference {ref!r}: importing {target} failed: ModuleNotFoundError: {error}") from error
    except Exception as error:
        raise ValueError(f"scorer reference {ref!r}: importing {target} failed: {type(error).__name__}: {error}") \
            from error


def _signature(obj: object) -> inspect.Signature | None:
    try:
        return inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # some builtins and C extensions have none: trust them
        return None


def _takes_images_and_prompts(signature: inspect.Signature | None, leading: int = 0) -> bool:
    """Whether a call with `leading` (self) and two positional arguments binds; keyword parameters may come from the
    options."""
    if signature is None:
        return True
    try:
        bound = signature.bind_partial(*[None] * (leading + 2))
    except TypeError:
        return False
    positional_only = [p for p in signature.parameters.values() if p.kind is p.POSITIONAL_ONLY]
    return all(p.name in bound.arguments or p.default is not p.empty for p in positional_only)


def _named(signature: inspect.Signature | None, key: str) -> bool:
    if signature is None:
        return False
    parameter = signature.parameters.get(key)
    return parameter is not None and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)


def _arguments(signature: inspect.Signature | None, kwargs: dict[str, object]) -> dict[str, object]:
    """The keyword arguments to pass: every option, and device/dtype/batch_size only where named."""
    return {k: v for k, v in kwargs.items() if k not in SHARED_OPTIONS or _named(signature, k)}


def _class_factory(ref: str, cls: type) -> Callable[..., Scorer]:
    """A factory instantiating the scorer class `cls` and wrapping it in a `ReferenceScorer`."""
    method = getattr(cls, "score", None)
    if not callable(method):
        raise ValueError(f"scorer reference {ref!r}: class {cls.__name__} has no score(images, prompts) method")
    signature = _signature(method)
    bound_already = isinstance(inspect.getattr_static(cls, "score", None), (staticmethod, classmethod))
    if not _takes_images_and_prompts(signature, leading=0 if bound_already else 1):
        raise ValueError(f"scorer reference {ref!r}: {cls.__name__}.score{signature} cannot be called as "
                         "score(images, prompts)")
    init = _signature(cls)

    def build(**kwargs: object) -> Scorer:
        return ReferenceScorer(ref, cls(**_arguments(init, kwargs)))

    return build


def _function_factory(ref: str, function: Callable[..., object]) -> Callable[..., Scorer]:
    """A factory binding a scoring function's options and wrapping it in a `ReferenceScorer`."""
    signature = _signature(function)
    label = getattr(function, "__name__", type(function).__name__)
    if not _takes_images_and_prompts(signature):
        raise ValueError(f"scorer reference {ref!r}: {label}{signature} cannot be called as {label}(images, prompts); "
                         "a function scorer takes the images and their prompts, then its options as keywords")

    def build(**kwargs: object) -> Scorer:
        options = _arguments(signature, kwargs)
        if signature is not None:
            accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
            for key in options:
                if not accepts_any and not _named(signature, key):
                    # worded as Python words it, so callers report it as any scorer's unknown option
                    raise TypeError(f"{label}() got an unexpected keyword argument '{key}'")
            try:
                signature.bind(None, None, **options)
            except TypeError as error:
                raise ValueError(f"scorer reference {ref!r}: {label}{signature} cannot be called with the options "
                                 f"given ({', '.join(options) or 'none'}): {error}; set options with --scorer-option "
                                 f"{ref}.KEY=VALUE, or as {{weight: W, KEY: VALUE}} in rollout.rewards") from error
        return ReferenceScorer(ref, _FunctionScorer(function, options))

    return build


class _FunctionScorer:
    """A scoring function with its options bound; it is handed PIL RGB images."""

    def __init__(self, function: Callable[..., object], options: dict[str, object]) -> None:
        self.function = function
        self.options = options

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> object:
        """The function's scores of the images as PIL RGB images."""
        return self.function(to_pil_images(images), list(prompts), **self.options)


class ReferenceScorer:
    """A user's scorer (an instance of their class, or their function) named by its reference, whose every result
    is checked to be one float per image. Attributes it does not define (device, dtype, ...) are the inner scorer's."""

    def __init__(self, name: str, inner: object) -> None:
        self.name = name
        self.inner = inner
        self.scale = str(getattr(inner, "scale", "user"))
        self.logit_scale = float(getattr(inner, "logit_scale", 1.0))

    def score(self, images: ImageBatch, prompts: Sequence[str]) -> torch.Tensor:
        """The inner scorer's scores as a float tensor (N,), after checking their type, shape and values."""
        return check_scores(self.inner.score(images, prompts), len(prompts))  # type: ignore[attr-defined]

    def __getattr__(self, key: str) -> object:
        if key == "inner":  # not yet set (copy, pickle): no delegation loop
            raise AttributeError(key)
        return getattr(self.inner, key)


_KINDS = {"U": "text", "S": "bytes", "O": "objects", "c": "complex numbers", "M": "dates", "m": "durations", "V": "records"}


def check_scores(result: object, count: int) -> torch.Tensor:
    """`result` as a float64 tensor (count,), or a ValueError saying how it differs from one float per image (a
    finite number, or NaN for an image that cannot be scored)."""
    expected = f"one float per image (a list, NumPy array or tensor of {count} number{'s' if count != 1 else ''})"
    if result is None:
        raise ValueError(f"returned None, not {expected}")
    if isinstance(result, torch.Tensor):
        values = result.detach().cpu()
        if values.is_complex():
            raise ValueError(f"returned a tensor of complex numbers, not {expected}")
    else:
        try:
            array = np.asarray(result)
        except ValueError as error:  # a ragged nesting of lists
            raise ValueError(f"returned a {type(result).__name__} of uneven nesting, not {expected}") from error
        if array.dtype.kind not in "biuf":
            what = f"a {type(result).__name__}" + (f" of {_KINDS.get(array.dtype.kind, array.dtype)}" if array.ndim else "")
            raise ValueError(f"returned {what}, not {expected}")
        values = torch.from_numpy(array)
    if tuple(values.shape) != (count,):
        raise ValueError(f"returned scores of shape {tuple(values.shape)} for {count} image{'s' if count != 1 else ''}, "
                         f"not {expected}")
    values = values.to(torch.float64)
    for i, value in enumerate(values.tolist()):
        if math.isinf(value):
            raise ValueError(f"returned {value} for image {i}: return a finite float, or NaN for an image it cannot score")
    return values
