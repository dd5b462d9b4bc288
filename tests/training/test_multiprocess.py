"""Two processes (DDP over gloo, CPU, launched by torchrun) reach the weights of one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
RUN = ["train.max_steps=4", "train.log_every=1", "train.trackers=[]", "train.checkpoint_every=0",
       "data.random_flip=true", "data.empty_prompt_prob=0.3", "train.warmup_steps=2"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _train(*overrides: str) -> list[str]:
    return ["-m", "diffalign.cli.main", "train", *RUN, *overrides]


def _two_processes(out: Path, port: int, *overrides: str) -> subprocess.CompletedProcess:
    """`diffalign train` on two CPU processes, 2 pairs each (torchrun is what `accelerate launch --multi_gpu`
    runs; train.cpu=true makes accelerate pick gloo)."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    result = subprocess.run([*launch, *_train(f"train.output_dir={out}", "train.batch_size=2", "train.cpu=true",
                                              *overrides)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """one_process(): the output folder of the one-process run (4 pairs a step, reference forward every step),
    once it has finished. The run starts here and goes on beside the first test's two processes (all three
    single-threaded), so its time hides in theirs."""
    one = tmp_path_factory.mktemp("one-process") / "one"
    command = _train(f"train.output_dir={one}", "train.batch_size=4", "reference.precompute=off", "train.cpu=true")
    run = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)

    def finished() -> Path:
        if run.returncode is None:
            _, err = run.communicate(timeout=600)
            assert run.returncode == 0, err[-3000:]
        assert run.returncode == 0, "the one-process run failed (see the first test that waited for it)"
        return one

    yield finished
    if run.poll() is None:
        run.kill()
        run.communicate()


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, one_process):
    two = tmp_path / "two"
    result = _two_processes(two, 29531)
    one = one_process()
    assert "2 pairs/device x 1 accumulation x 2 process(es) = 4 pairs per optimizer step" in result.stdout
    a = load_file(str(one / "pytorch_lora_weights.safetensors"))
    b = load_file(str(two / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    moved = max((v.abs().max().item() for k, v in a.items() if "lora_B" in k), default=0.0)
    assert moved > 0  # LoRA B starts at zero: the runs did train
    # equal up to float rounding (the gradient is summed in another order), which Adam's
    # normalisation lifts to ~1e-5 on weights of ~0.1
    scale = max(v.abs().max().item() for v in a.values())
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 2e-4 * scale, (worst, scale)
    # logged metrics are means over both processes
    assert [m["loss"] for m in _metrics(two)] == pytest.approx([m["loss"] for m in _metrics(one)], rel=1e-3)


@pytest.mark.slow
def test_each_process_precomputes_the_reference_errors_of_its_own_pairs(tmp_path, one_process):
    two = tmp_path / "two"
    result = _two_processes(two, 29533, "reference.precompute=on", f"data.cache_dir={tmp_path / 'cache'}")
    assert "reference errors: 4 micro-steps, 4 computed now" in result.stdout
    assert len(list((tmp_path / "cache").glob("reference-*/rank-*/steps-*.safetensors"))) == 2
    # the reference does not train: its errors, logged as means over both processes' pairs, are the one-process
    # run's at every step, to float rounding (the pre-pass runs each process's 4 micro-steps as one forward)
    log_one, log_two = _metrics(one_process()), _metrics(two)
    for key in ("ref_err_w", "ref_err_l"):
        assert [row[key] for row in log_two] == pytest.approx([row[key] for row in log_one], rel=1e-6)
