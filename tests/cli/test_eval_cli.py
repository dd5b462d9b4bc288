"""`diffalign eval` from the command line: what it refuses (a missing model, a LoRA that does not fit, an output
that is a file) and what a rerun into the same folder says."""

from __future__ import annotations

import pytest

from diffalign.cli.main import main
from diffalign.models.lora_files import LORA_WEIGHTS

from ..models.lora_cases import MESSAGES, write_bad_loras
from ..permissions import modes, umask

FAST = ["--max-prompts", "1", "--seeds", "1", "--steps", "1", "--resamples", "10", "--grid-prompts", "1",
        "--no-progress"]


@pytest.fixture(scope="module")
def bad_loras(tiny_models, make_lora, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    good = make_lora(tiny_models["sd15"], root / "good", 0.05)
    return write_bad_loras(good, make_lora(tiny_models["sdxl"], root / "sdxl", 0.05), root / "bad")


def test_a_folder_that_does_not_exist_is_named(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "no-such-run"), *FAST]) == 2
    assert (f"diffalign eval: error: {tmp_path / 'no-such-run'} does not exist: `eval` takes a `diffalign train` run, "
            "a LoRA folder, a full fine-tuning run or a pipeline folder (or a hub id, with --base)"
            in capsys.readouterr().err)
    assert main(["eval", "runs/no-such-run", *FAST]) == 2  # could be a hub id, but no --base says which base
    assert "runs/no-such-run does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("case", list(MESSAGES))
def test_eval_refuses_a_lora_that_does_not_fit(tiny_models, bad_loras, case, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", str(bad_loras[case]), "--base", str(tiny_models["sd15"]), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"diffalign eval: error: LoRA {bad_loras[case] / LORA_WEIGHTS}" in err and MESSAGES[case] in err
    assert not list(out.rglob("*.png"))  # refused before the base model's images are drawn


def test_eval_into_a_file_is_refused(tiny_models, make_lora, tmp_path, capsys):
    lora = make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
    (tmp_path / "taken").write_text("not a folder")
    assert main(["eval", str(lora), "--base", str(tiny_models["sd15"]), "--out", str(tmp_path / "taken"), *FAST]) == 2
    assert f"diffalign eval: error: --out {tmp_path / 'taken'} is a file, not a folder" in capsys.readouterr().err


def test_a_rerun_says_it_replaced_the_results_and_files_get_the_umask_permissions(tiny_models, make_lora, tmp_path,
                                                                                   capsys):
    lora = make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
    argv = ["eval", str(lora), "--base", str(tiny_models["sd15"]), "--out", str(tmp_path / "eval"), *FAST]
    with umask(0o022):
        assert main(argv) == 0
    assert "replaced the results" not in capsys.readouterr().out
    written = modes(tmp_path / "eval")
    for name in ("report.html", "summary.md", "results.json", "scores.csv", "plots/win-rates.png"):
        assert written[name] == 0o644, name  # the report, summary and plots were 0600
    assert {mode for path, mode in written.items() if (tmp_path / "eval" / path).is_file()} == {0o644}
    assert main(argv) == 0
    assert (f"(replaced the results of an earlier eval in {tmp_path / 'eval'}; images of the same models and settings "
            "were reused)") in capsys.readouterr().out


def test_help_says_how_to_run_on_many_processes(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Runs unchanged on many GPUs: `accelerate launch --num_processes N -m diffalign.cli.main eval ...`" in text
    assert "one GPU per process; --out on a filesystem every process sees" in text


def test_another_process_failing_is_one_line(tiny_models, make_lora, tmp_path, monkeypatch, capsys):
    import diffalign.evaluation.evaluate as evaluate
    from diffalign.processes import ProcessFailed

    def fails_elsewhere(job, processes=None):
        raise ProcessFailed("process 1 of 2 failed: ValueError: p00000-s0.png: cannot score (what the processes "
                            "finished is kept: once the cause is fixed, the same command resumes)")

    monkeypatch.setattr(evaluate, "run_eval", fails_elsewhere)
    lora = make_lora(tiny_models["sd15"], tmp_path / "lora", 0.05)
    assert main(["eval", str(lora), "--base", str(tiny_models["sd15"]), "--out", str(tmp_path / "eval"), *FAST]) == 2
    err = capsys.readouterr().err
    assert ("diffalign eval: error: process 1 of 2 failed: ValueError: p00000-s0.png: cannot score (what the "
            "processes finished is kept: once the cause is fixed, the same command resumes)") in err
    assert "Traceback" not in err
