"""An output folder is one run's: a second run refuses (or resumes, or overwrites when asked), rotation deletes
only the run's own checkpoints, and two processes cannot train into one folder (the lock dies with its holder)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from diffalign.cli.main import main
from diffalign.config.core import dump_yaml, load_config
from diffalign.config.schema import RunConfig
from diffalign.training.checkpoint import checkpoint_dir, list_checkpoints, save_checkpoint
from diffalign.training.run_folder import LOCK_FILE, RUN_FILE, RunFolderError, claim_run_folder

MAIN = SimpleNamespace(is_main_process=True, num_processes=1)


def _cfg(out: Path, *overrides: str) -> RunConfig:
    return load_config(RunConfig, None, [f"train.output_dir={out}", *overrides])


def _claim(out: Path, *overrides: str):
    with ExitStack() as stack:
        return claim_run_folder(_cfg(out, *overrides), MAIN, stack)


def _checkpoint(out: Path, step: int, run_id: str | None, keep: int = 5, cfg: RunConfig | None = None) -> Path:
    """A checkpoint with every file a resume reads, written the way the loop writes one."""

    def shared(folder: Path) -> None:
        from safetensors.torch import save_file
        import torch

        for name in ("trainable", "optimizer", "schedule"):
            save_file({"x": torch.zeros(2)}, str(folder / f"{name}.safetensors"))
        for name in ("optimizer", "schedule"):
            (folder / f"{name}.json").write_text("{}")
        (folder / "config.yaml").write_text(dump_yaml(cfg or _cfg(out)))
        state = {"step": step, "micro_step": step, "global_batch": 2, "format": 2, "run_id": run_id}
        (folder / "state.json").write_text(json.dumps(state))

    return save_checkpoint(out, step, shared, lambda folder: None, True, lambda: None, keep, run_id)


def test_a_new_run_takes_an_empty_folder_and_names_itself(tmp_path):
    folder = _claim(tmp_path / "run")
    assert folder.resume_from is None and not folder.notes
    assert json.loads((tmp_path / "run" / RUN_FILE).read_text())["run_id"] == folder.run_id


@pytest.mark.parametrize("left", ["checkpoint", "pytorch_lora_weights.safetensors", "unet"])
def test_a_folder_with_another_runs_outputs_is_refused_without_resume(tmp_path, left):
    out = tmp_path / "run"
    out.mkdir()
    if left == "checkpoint":
        _checkpoint(out, 400, "old")
    elif left == "unet":
        (out / "unet").mkdir()
    else:
        (out / left).write_text("x")
    with pytest.raises(RunFolderError, match=rf"train.output_dir={out} already holds another run \(.*"
                                             r"continue it with train.resume=latest.*another train.output_dir.*"
                                             r"train.overwrite=true"):
        _claim(out)


def test_a_run_that_saved_nothing_does_not_block_its_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "metrics.jsonl", RUN_FILE):  # what a run that failed on its data left
        (out / name).write_text("{}")
    folder = _claim(out)
    assert folder.notes == [f"{out} holds a run that saved no checkpoint or weights (config.yaml, run.json): starting "
                            f"over in it (replaced its config.yaml, run.json, metrics.jsonl)"]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, RUN_FILE]


def test_overwrite_deletes_the_previous_runs_outputs_and_says_so(tmp_path):
    out = tmp_path / "run"
    _checkpoint(out, 400, "old")
    for name in ("pytorch_lora_weights.safetensors", "config.yaml", "metrics.jsonl", "mine.txt"):
        (out / name).write_text("x")
    folder = _claim(out, "train.overwrite=true")
    assert folder.notes == [f"train.overwrite=true: deleted the previous run's checkpoints, pytorch_lora_weights."
                            f"safetensors, config.yaml, metrics.jsonl in {out}"]
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE, "mine.txt", RUN_FILE]  # not what the run did not write
    with pytest.raises(RunFolderError, match="set only one of them"):
        _claim(out, "train.overwrite=true", "train.resume=latest")


def test_resume_continues_the_folders_run_and_refuses_another_runs_folder(tmp_path):
    out = tmp_path / "run"
    first = _claim(out)
    _checkpoint(out, 2, first.run_id)
    (out / "config.yaml").write_text("x")
    again = _claim(out, "train.resume=latest")
    assert (again.run_id, again.resume_from) == (first.run_id, checkpoint_dir(out, 2))

    other = tmp_path / "other"  # another run's folder: continuing run 1 there would mix the two
    _checkpoint(other, 8, "someone-else")
    with pytest.raises(RunFolderError, match=f"train.output_dir={other} already holds another run"):
        _claim(other, f"train.resume={checkpoint_dir(out, 2)}")
    moved = _claim(tmp_path / "new", f"train.resume={checkpoint_dir(out, 2)}")  # into a new folder: the same run
    assert moved.run_id == first.run_id


def test_resume_latest_starts_over_only_where_no_finished_run_would_be_lost(tmp_path):
    out = tmp_path / "run"
    first = _claim(out)
    (out / "config.yaml").write_text("x")  # killed before its first checkpoint
    again = _claim(out, "train.resume=latest")
    assert again.run_id == first.run_id and again.resume_from is None
    assert again.notes == [f"train.resume=latest: no checkpoint in {out} yet; starting at step 0"]
    (out / "pytorch_lora_weights.safetensors").write_text("x")  # a finished run without checkpoints
    with pytest.raises(RunFolderError, match="holds no checkpoint to continue from, but a finished run's weights"):
        _claim(out, "train.resume=latest")


def test_rotation_deletes_only_the_runs_own_older_checkpoints(tmp_path):
    _checkpoint(tmp_path, 400, "old-run")  # left by a run before run ids were checked, say
    for step in (10, 20, 30):
        _checkpoint(tmp_path, step, "new-run", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030", "step-00000400"]
    _checkpoint(tmp_path, 40, "new-run", keep=1)  # keep=1 must keep the newest own, not the foreign step-400
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000040", "step-00000400"]


def test_a_resume_from_an_older_checkpoint_replaces_the_later_ones(tmp_path):
    out = tmp_path / "run"
    run_id = _claim(out).run_id
    for step in (2, 4, 6):
        _checkpoint(out, step, run_id, keep=3)
    folder = _claim(out, f"train.resume={checkpoint_dir(out, 2)}")
    assert "step-00000004, step-00000006" in folder.notes[0]
    _checkpoint(out, 3, run_id, keep=3)  # the resumed run's first checkpoint: train.resume=latest must find it
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002", "step-00000003"]


LOCK_HOLDER = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from diffalign.training.run_folder import folder_lock
with folder_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_train_into_a_folder_in_use_refuses_and_a_killed_holder_frees_it(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.time()
        assert main(["train", f"train.output_dir={out}", "train.trackers=[]"]) == 2
        assert time.time() - start < 30  # at once, not after waiting
        err = capsys.readouterr().err
        assert (f"diffalign train: error: train.output_dir={out}: another process (pid {holder.pid} on " in err
                and "is training into this folder; wait for it to end, or choose another train.output_dir" in err)
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        holder.wait()
    assert _claim(out).resume_from is None


def test_recipes_rerun_after_a_stop_continue_their_training_runs():
    """A recipe resumes at the step that did not finish (`diffalign pipeline`): its training steps must continue
    the run they began (train.resume=latest), which a plain repeat into the same folder is refused."""
    from diffalign.cli.pipeline import load_recipe

    root = Path(__file__).resolve().parents[2]
    trains = [step.args for recipe in sorted((root / "pipelines").glob("*.yaml")) for step in load_recipe(recipe, [])[1]
              if step.args[0] == "train"]
    assert trains and all("train.resume=latest" in args for args in trains)
