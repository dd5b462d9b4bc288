"""`diffalign generate` from the command line: seeds syntax, output, resume and refused settings."""

from __future__ import annotations

import json

import pytest

from diffalign.cli.generate import parse_seeds
from diffalign.cli.main import main
from diffalign.models.lora_files import LORA_WEIGHTS

from ..conftest import ROOT

from ..models.lora_cases import MESSAGES, write_bad_loras


@pytest.fixture(scope="module")
def bad_loras(tiny_models, make_lora, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    good = make_lora(tiny_models["sd15"], root / "good", 0.05)
    return write_bad_loras(good, make_lora(tiny_models["sdxl"], root / "sdxl", 0.05), root / "bad")


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


@pytest.mark.parametrize("case", list(MESSAGES))
def test_generate_refuses_a_lora_that_does_not_fit(tiny_models, bad_loras, case, tmp_path, capsys):
    out = tmp_path / "gen"
    argv = ["generate", str(tiny_models["sd15"]), "--lora", str(bad_loras[case]), "--max-prompts", "1", "--steps", "1",
            "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"diffalign generate: error: LoRA {bad_loras[case] / LORA_WEIGHTS}" in err and MESSAGES[case] in err
    assert not list(out.glob("*.png"))


def test_generate_into_a_file_is_refused(tiny_models, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    assert main(["generate", str(tiny_models["sd15"]), "--out", str(tmp_path / "taken"), "--no-progress"]) == 2
    assert f"diffalign generate: error: --out {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_a_lora_trained_further_at_the_same_path_is_refused(tiny_models, make_lora, tmp_path, capsys):
    lora = make_lora(tiny_models["sd15"], tmp_path / "run", 0.05)
    argv = ["generate", str(lora), "--base", str(tiny_models["sd15"]), "--max-prompts", "1", "--steps", "1",
            "--out", str(tmp_path / "gen"), "--no-progress"]
    assert main(argv) == 0
    make_lora(tiny_models["sd15"], lora, 0.2)  # the run trained further, into the same folder
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'gen'} was drawn from other weights: {lora / LORA_WEIGHTS} changed since (sha256 " in err
            and "give another output folder (or delete this one)" in err)


def test_help_says_how_to_run_on_many_processes(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Runs unchanged on many GPUs: `accelerate launch --num_processes N -m diffalign.cli.main generate ...`" in text
    assert "one GPU per process; --out on a filesystem every process sees" in text


def test_a_batch_size_below_one_is_refused(tmp_path, capsys):
    argv = ["generate", str(ROOT / "assets" / "tiny-sd"), "--batch-size", "0", "--out", str(tmp_path / "gen")]
    with pytest.raises(SystemExit) as exit_:  # the shared --batch-size option checks it as it parses
        main([*argv, "--no-progress"])
    assert exit_.value.code == 2
    assert "diffalign generate: error: argument --batch-size: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("command, extra", [("generate", ["--out", "o"]), ("eval", [])])
def test_max_prompts_below_one_is_refused_as_it_parses(command, extra, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "x", *extra, "--max-prompts", "0"])
    assert exit_.value.code == 2
    assert f"diffalign {command}: error: argument --max-prompts: must be at least 1, got 0" in capsys.readouterr().err


def test_generate_and_eval_share_the_sampling_options_with_their_own_seed_defaults():
    from diffalign.cli.main import build_parser
    from diffalign.evaluation.evaluate import EvalOptions
    from diffalign.evaluation.generation import GenerateOptions, SamplingOptions

    parser = build_parser()
    generate = parser.parse_args(["generate", "m", "--out", "o"])
    evaluate = parser.parse_args(["eval", "run"])
    assert (generate.seeds, evaluate.seeds) == (GenerateOptions.seeds, EvalOptions.seeds) == ("1", "3")
    for name in ("prompts", "sampler", "steps", "guidance", "dtype", "batch_size", "progress"):
        assert getattr(generate, name) == getattr(evaluate, name) == getattr(SamplingOptions, name), name
