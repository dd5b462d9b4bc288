"""The documentation site (mkdocs.yml, docs/) builds in MkDocs' strict mode, and that mode does fail on a
broken link, so a page that points nowhere cannot be merged."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_site(project: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run `mkdocs build --strict` on the project folder holding mkdocs.yml and docs/; return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_docs_site_builds_strictly(tmp_path):
    built = build_site(ROOT, tmp_path / "site")
    assert built.returncode == 0, f"mkdocs build --strict failed:\n{built.stdout}\n{built.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "methods" / "comparing" / "index.html").is_file()


def test_the_strict_build_fails_on_a_link_to_a_missing_page(tmp_path):
    project = tmp_path / "project"
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copy(ROOT / "mkdocs.yml", project / "mkdocs.yml")
    index = project / "docs" / "index.md"
    index.write_text(index.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    built = build_site(project, tmp_path / "site")
    assert built.returncode != 0, "a link to a missing page should fail the strict build"
    assert "no-such-page.md" in built.stdout + built.stderr
