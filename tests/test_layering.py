"""The packages of diffalign import one way: every import, at module level or inside a function,
absolute or relative, runs down the layers below (or stays within its own layer).

    cli, api                             the commands and the Python API
    training, evaluation, feedback       jobs (evaluation imports neither of the other two)
    objectives, sampling                 losses; pipelines and generation
    models, data, rewards                model parts; pair tables; scorers and batch scoring
    config                               the typed run schema
    files, paths, processes, synthetic,  utilities, jobs on many processes, the shapes world,
    threads                              CPU threads,
    diffalign                            the version

Lazy references by name ("module:Class" strings resolved by a registry) are not imports and are
not checked here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffalign"

LAYERS: list[set[str]] = [
    {"__init__", "files", "paths", "processes", "synthetic", "threads"},
    {"config"},
    {"models", "data", "rewards"},
    {"objectives", "sampling"},
    {"training", "evaluation", "feedback"},
    {"cli", "api"},
]
# Imports within a layer are allowed except these (importer -> packages it must not import).
SAME_LAYER_FORBIDDEN = {"evaluation": {"training", "feedback"}}

# (file relative to src/diffalign, imported module) pairs that break the order today, owned by
# other work; each says why it is tolerated. Remove an entry once its import is gone.
KNOWN_EXCEPTIONS: set[tuple[str, str]] = set()


def _rank(package: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if package in layer:
            return rank
    raise AssertionError(
        f"src/diffalign/{package} is in no layer: add it to LAYERS in tests/test_layering.py (and to the order "
        "in its docstring)"
    )


def _package_of(module: str) -> str:
    """`diffalign.data.pairs` -> `data`; `diffalign.files` -> `files`; `diffalign` -> `__init__`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_submodule(module: str) -> bool:
    relative = Path(*module.split(".")[1:]) if "." in module else Path()
    return (SRC / relative).with_suffix(".py").is_file() or (SRC / relative).is_dir()


def imports_in(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute module name) of every diffalign module that the code `source` of `module` imports,
    anywhere in it (module level, functions, `if TYPE_CHECKING:` blocks)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "diffalign"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "diffalign":
                target = node.module
            else:
                continue
            # `from pkg import name`: a submodule when pkg/name.py or pkg/name/ exists, else an attribute of pkg
            subs = [f"{target}.{alias.name}" for alias in node.names if _is_submodule(f"{target}.{alias.name}")]
            found += [(node.lineno, sub) for sub in subs] or [(node.lineno, target)]
    return found


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """`imports_in` for a file of src/diffalign."""
    return imports_in(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")


def violation(importer: str, target: str) -> str | None:
    """Why package `importer` may not import module `target`, or None when it may."""
    imported = _package_of(target)
    if imported == importer:
        return None
    if _rank(imported) > _rank(importer):
        return "a higher layer"
    if imported in SAME_LAYER_FORBIDDEN.get(importer, ()):
        return "a package of its layer that builds on it"
    return None


def layering_violations() -> list[str]:
    """Every import of src/diffalign that runs against the layer order, as `file:line: message`."""
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        importer = _package_of(_module_name(path))
        _rank(importer)  # a package in no layer fails even before it imports anything
        where = path.relative_to(SRC).as_posix()
        for line, target in imported_modules(path):
            reason = violation(importer, target)
            if reason and (where, target) not in KNOWN_EXCEPTIONS:
                violations.append(f"src/diffalign/{where}:{line}: {importer} imports {target} ({reason})")
    return violations


def test_imports_follow_the_layer_order():
    violations = layering_violations()
    assert not violations, "imports against the layer order (see tests/test_layering.py):\n" + "\n".join(violations)


def test_data_imports_no_job_package():
    for path in sorted((SRC / "data").rglob("*.py")):
        for line, target in imported_modules(path):
            assert _package_of(target) not in {"evaluation", "training", "feedback", "cli"}, f"{path}:{line}: {target}"


def test_known_exceptions_still_exist():
    """A known exception whose import is gone must leave the list, so that it cannot come back unnoticed."""
    present = {(path.relative_to(SRC).as_posix(), target) for path in SRC.rglob("*.py") for _, target in imported_modules(path)}
    assert KNOWN_EXCEPTIONS <= present, f"no longer imported, remove from KNOWN_EXCEPTIONS: {KNOWN_EXCEPTIONS - present}"


def test_the_checker_sees_function_level_relative_and_absolute_imports():
    source = (
        "import os\nimport diffalign.training.loop\n\ndef f():\n"
        "    from ..evaluation.scoring import build_scorers\n    from .. import files\n    from . import pairs\n"
    )
    found = imports_in(source, "diffalign.data.probe")
    assert found == [(2, "diffalign.training.loop"), (5, "diffalign.evaluation.scoring"), (6, "diffalign.files"),
                     (7, "diffalign.data.pairs")]
    assert [violation("data", target) for _, target in found] == ["a higher layer", "a higher layer", None, None]
    assert imports_in("from .base import Scorer", "diffalign.rewards", is_package=True) == [(1, "diffalign.rewards.base")]
    assert violation("evaluation", "diffalign.feedback.combine") == "a package of its layer that builds on it"
    assert violation("feedback", "diffalign.evaluation.scoring") is None
