"""The loop asks nothing of what it runs: no `hasattr`/`isinstance`/`getattr` in its phases, no method kind
compared to a string anywhere in the training package (a behaviour a loop would branch on is a missing hook)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TRAINING = Path(__file__).resolve().parents[2] / "src" / "diffalign" / "training"
PHASES = ("loop.py", "run_setup.py")


def test_the_loop_phases_call_hooks_instead_of_inspecting_objects():
    for name in PHASES:
        tree = ast.parse((TRAINING / name).read_text())
        calls = {node.func.id for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
        assert not calls & {"hasattr", "isinstance", "getattr", "type"}, (name, calls & {"hasattr", "isinstance"})


def test_no_method_data_kind_is_compared_to_a_string():
    pattern = re.compile(r"\.data\s*[!=]=|[!=]=\s*[\"'](pairs|winners|rollouts)[\"']|method\.reference_samples|needs_reward")
    for path in TRAINING.rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(TRAINING)}:{number}: {line.strip()}"
