"""The README's methods table is the benchmark recipe's output file, not hand-typed numbers."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_methods_table_is_the_benchmark_recipes_output():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- methods-table -->") == 1 and readme.count("<!-- /methods-table -->") == 1
    block = readme.split("<!-- methods-table -->")[1].split("<!-- /methods-table -->")[0]
    written = (ROOT / "pipelines" / "benchmark-methods.md").read_text()
    assert block.strip() == written.strip()  # copy it with: cp runs/benchmark/methods.md pipelines/benchmark-methods.md


def test_the_readme_rl_table_is_the_recipes_output():
    readme = (ROOT / "README.md").read_text()
    assert readme.count("<!-- rl-methods-table -->") == 1 and readme.count("<!-- /rl-methods-table -->") == 1
    block = readme.split("<!-- rl-methods-table -->")[1].split("<!-- /rl-methods-table -->")[0]
    written = (ROOT / "pipelines" / "benchmark-rl.md").read_text()
    assert block.strip() == written.strip()  # cp runs/benchmark-rl/methods.md pipelines/benchmark-rl.md
