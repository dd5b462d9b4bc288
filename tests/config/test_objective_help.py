"""`objective.name`'s help is derived from the objective registry: every registered objective with its summary,
including one registered (and removed again) at run time."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from diffalign.cli.main import main
from diffalign.config.core import cfg_field, describe, variant_summary
from diffalign.config.objectives import ObjectiveConfig, objective, registered_objectives, unregister_objective
from diffalign.config.schema import RunConfig

PROBE_SUMMARY = "a probe objective that only a test registers"


@dataclass
class ProbeConfig(ObjectiveConfig):
    """Docstring line that the explicit summary overrides."""

    name: str = cfg_field("probe", "A test objective.")


class ProbeMethod:
    """Never built: the help only needs the registration."""


@pytest.fixture
def probe():
    objective("probe", method=ProbeMethod, summary=PROBE_SUMMARY)(ProbeConfig)
    yield "probe"
    unregister_objective("probe")


def name_help() -> str:
    (doc,) = [d for d in describe(RunConfig) if d.key == "objective.name"]
    return doc.help


def test_name_help_lists_every_registered_objective_with_its_summary():
    help_text = name_help()
    registry = ObjectiveConfig.__variant_registry__  # type: ignore[attr-defined]
    assert set(registry) == set(registered_objectives())
    assert {"dpo", "d3po", "kto", "ddpo", "grpo"} <= set(registry)
    for name, cls in registry.items():
        assert f"'{name}': {variant_summary(cls)}" in help_text, name


def test_an_objective_registered_at_run_time_appears_in_the_help_and_goes_with_it(probe, capsys):
    assert f"'probe': {PROBE_SUMMARY}" in name_help()
    assert main(["config", "keys"]) == 0
    keys = capsys.readouterr().out
    line = next(line for line in keys.splitlines() if line.startswith("    ") and "'probe':" in line)
    assert f"'probe': {PROBE_SUMMARY}" in line and "'ddpo':" in line and "'grpo':" in line
    assert "Docstring line" not in keys  # the summary given to @objective wins over the docstring

    unregister_objective("probe")
    assert "'probe'" not in name_help() and "'ddpo':" in name_help()
    assert main(["config", "keys"]) == 0
    assert "'probe'" not in capsys.readouterr().out
