"""Every objective config has a method and every method a config, by the naming convention of
`config/objectives.py`, so a missing or misnamed piece fails here rather than when training starts."""

from __future__ import annotations

import importlib
import pkgutil
import typing

import diffalign.training.methods as methods_pkg
from diffalign.config.objectives import ObjectiveConfig, registered_objectives
from diffalign.training.methods import Method, method_class
from diffalign.training.methods.base import ReferenceKind
from diffalign.training.sources.base import BatchSource

BUILT_IN = "diffalign.training.methods."


def test_every_config_variant_has_a_method_by_the_convention():
    variants = ObjectiveConfig.__variant_registry__
    assert set(variants) == set(registered_objectives())
    for name, config_cls in variants.items():
        cls = method_class(name)
        assert issubclass(cls, Method)
        assert config_cls.__name__ == f"{cls.__name__}Config", name
        if cls.__module__.startswith(BUILT_IN):
            assert cls.__module__ == BUILT_IN + name.replace("-", "_"), name
            objective = importlib.import_module(f"diffalign.objectives.{name.replace('-', '_')}")
            assert callable(getattr(objective, f"{name.replace('-', '_')}_loss")), name


def test_every_method_module_has_a_config():
    linked = {path.partition(":")[0] for path in registered_objectives().values() if isinstance(path, str)}
    modules = {f"{BUILT_IN}{m.name}" for m in pkgutil.iter_modules(methods_pkg.__path__) if m.name != "base"}
    assert modules and modules <= linked, f"method modules without an @objective config: {sorted(modules - linked)}"


def test_capabilities_are_declared_with_known_values():
    for name in registered_objectives():
        cls = method_class(name)
        assert issubclass(cls.source, BatchSource), name
        assert cls.rollout_unit in ("prompt", "image"), name
        assert cls.reference in typing.get_args(ReferenceKind), name
        assert isinstance(cls.per_image_captions, bool), name


def test_import_config_stays_torch_free():
    import subprocess
    import sys

    code = "import sys, diffalign.config, diffalign.config.objectives; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
