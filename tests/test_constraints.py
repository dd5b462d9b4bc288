"""constraints.txt, the versions the README's install pins, names every dependency within its declared range."""

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version)
    return pins


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is in the standard library from Python 3.11")
def test_every_dependency_is_pinned_within_its_range():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + [r for extra in ("dev",) for r in project["optional-dependencies"][extra]]
    pins = _pins()
    problems = []
    for text in declared:
        requirement = Requirement(text)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is not in constraints.txt")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is outside pyproject's {requirement.specifier}")
    assert not problems, "; ".join(problems) + ": run `bash scripts/update_constraints.sh`"


def test_the_readme_and_ci_install_with_the_constraints():
    install = re.compile(r'pip install -e "\.\[dev\]" -c constraints\.txt')
    assert install.search((ROOT / "README.md").read_text())
    assert install.search((ROOT / ".ci" / "run").read_text())
