"""A user's clone holds only this repository: no tracked file may read or point to a folder beside it."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# built from pieces so that this file does not match itself
PATTERNS = ["../" + "shared", "shared" + "/reference", '"shared"' + " / " + '"reference"']


def _tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        return [ROOT / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist): every file
        return [p for p in ROOT.rglob("*") if p.is_file() and ".git" not in p.parts and ".venv" not in p.parts]


def test_no_file_refers_to_a_folder_outside_the_repository():
    offenders = []
    for path in _tracked_files():
        if not path.is_file() or path.stat().st_size > 5_000_000:
            continue
        text = path.read_bytes().decode("utf-8", errors="ignore")
        offenders += [f"{path.relative_to(ROOT)}: {p!r}" for p in PATTERNS if p in text]
    assert not offenders, "files that point outside the repository:\n" + "\n".join(offenders)


def test_the_reference_vectors_live_in_the_tests():
    assert (ROOT / "tests" / "reference_vectors.json").is_file()
