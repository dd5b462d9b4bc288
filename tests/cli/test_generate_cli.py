"""`diffalign generate` from the command line: seeds syntax, output, resume and refused settings."""

from __future__ import annotations

import json

import pytest

from diffalign.cli.generate import parse_seeds
from diffalign.cli.main import main


def test_parse_seeds():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds("2-4") == [2, 3, 4]
    assert parse_seeds("0,5,7") == [0, 5, 7]
    with pytest.raises(ValueError, match="a count N"):
        parse_seeds("many")


def test_generate_command(tiny_models, make_lora, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,category\na red circle,circle\na blue square,square\n")
    lora = make_lora(tiny_models["sd15"], tmp_path / "lora", 0.1)
    out = tmp_path / "gen"
    argv = ["generate", str(tiny_models["sd15"]), "--lora", f"{lora}@0.5", "--prompts", str(prompts), "--seeds", "0,2",
            "--steps", "2", "--sampler", "euler-a", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "4 images in" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert {(r["prompt"], r["category"], r["seed"]) for r in rows} == {
        (p, c, s) for p, c in (("a red circle", "circle"), ("a blue square", "square")) for s in (0, 2)}
    assert rows[0]["sampler"] == "euler-a" and rows[0]["loras"] == [{"path": str(lora), "scale": 0.5}]
    assert main(argv) == 0
    assert "(0 drawn now, 4 already there)" in capsys.readouterr().out
    assert main([*argv[:-3], "--guidance", "7", "--out", str(out)]) == 2
    assert "guidance=5.0, not 7.0" in capsys.readouterr().err
    assert main(["generate", str(tiny_models["sd15"]), "--sampler", "magic", "--out", str(out)]) == 2
    assert "--sampler 'magic'" in capsys.readouterr().err
