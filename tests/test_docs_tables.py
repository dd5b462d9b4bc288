"""The docs' methods tables are the benchmark recipes' output files, not hand-typed numbers."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (page, marker, the recipe's output file kept in the repository, how to refresh it)
TABLES = [
    ("docs/methods/comparing.md", "methods-table", "pipelines/benchmark-methods.md",
     "cp runs/benchmark/methods.md pipelines/benchmark-methods.md"),
    ("docs/methods/rl.md", "rl-methods-table", "pipelines/benchmark-rl.md",
     "cp runs/benchmark-rl/methods.md pipelines/benchmark-rl.md"),
]


def table_block(text: str, marker: str) -> str:
    """The text between `<!-- marker -->` and `<!-- /marker -->`, which must each occur exactly once."""
    opening, closing = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    assert text.count(opening) == 1 and text.count(closing) == 1, f"expected one {opening} ... {closing} block"
    return text.split(opening)[1].split(closing)[0]


@pytest.mark.parametrize(("page", "marker", "output", "refresh"), TABLES, ids=[t[1] for t in TABLES])
def test_a_docs_methods_table_is_its_recipes_output(page, marker, output, refresh):
    block = table_block((ROOT / page).read_text(), marker)
    written = (ROOT / output).read_text()
    assert block.strip() == written.strip(), f"{page}'s {marker} differs from {output}; after a new run: {refresh}"
