"""Ctrl-C and SIGTERM save a checkpoint after the current step and stop with how to continue; a second signal
stops at once; the run continues from that checkpoint to the weights of a run never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffalign.training.checkpoint import list_checkpoints
from diffalign.training.interrupts import InterruptGuard

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train.max_steps=8", "train.batch_size=2", "train.checkpoint_every=0", "train.log_every=1",
       "train.trackers=[]", "validation.every=0", "train.warmup_steps=2", "data.random_flip=true",
       "data.empty_prompt_prob=0.3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_the_first_signal_asks_the_second_stops_and_the_old_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with InterruptGuard() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # Python runs the handler at the next bytecode
        assert guard.requested and guard.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert {s: signal.getsignal(s) for s in before} == before  # the second signal handed them back
    assert {s: signal.getsignal(s) for s in before} == before


CLI = [sys.executable, "-m", "diffalign.cli.main"]


def _start(out: Path, *extra: str, log=subprocess.PIPE) -> subprocess.Popen:
    command = [*CLI, "train", "configs/demo/dpo.yaml", f"train.output_dir={out}", *RUN, *extra]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=log, stderr=log, text=True)


def _steps_logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _signal_after(proc: subprocess.Popen, out: Path, steps: int, signum: int) -> tuple[int, str]:
    """Send `signum` once the run has logged `steps` steps; its exit code and stderr."""
    deadline = time.time() + 300
    while _steps_logged(out) < steps and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.slow
def test_sigterm_then_ctrl_c_save_and_the_run_continues_to_the_same_weights(tmp_path):
    log = (tmp_path / "whole.log").open("w")
    whole = _start(tmp_path / "whole", log=log)  # beside the interrupted one (one thread each)
    out = tmp_path / "stopped"

    code, err = _signal_after(_start(out), out, 1, signal.SIGTERM)
    assert code == 143, err[-3000:]
    (checkpoint,) = list_checkpoints(out)
    step = json.loads((checkpoint / "state.json").read_text())["step"]
    assert 1 <= step < 7  # at least one step left for the resumed run to be stopped in
    last = err.strip().splitlines()[-1]
    assert last == (f"interrupted (SIGTERM) at step {step}: saved {checkpoint}; continue with: diffalign train "
                    f"{out / 'config.yaml'} train.resume=latest")
    assert "Traceback" not in err

    code, err = _signal_after(_start(out, "train.resume=latest"), out, step + 1, signal.SIGINT)
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted (SIGINT) at step" in err

    # the command the message gives, as given
    command = last.split("continue with: diffalign ")[1].split()
    finish = subprocess.run([*CLI, *command], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr[-3000:]
    assert whole.wait() == 0, (tmp_path / "whole.log").read_text()[-3000:]
    log.close()
    a = load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))
