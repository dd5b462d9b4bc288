"""Run by tests/training/test_agreement.py under torchrun (2 CPU processes over gloo): what one process alone
sees (a non-finite loss, non-finite weights, a signal, a refused output folder) stops every process together.

    python -m torch.distributed.run --nproc_per_node 2 agreement_worker.py OUT

Each process writes what it saw to OUT/rank-R.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import Accelerator

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.training.interrupts import InterruptGuard
from diffalign.training.run_folder import claim_run_folder
from diffalign.training.steps import StepRunner, TrainingDiverged, any_process


def outcome(action) -> str:
    try:
        action()
    except (TrainingDiverged, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return "went on"


def main() -> None:
    out = Path(sys.argv[1])
    acc = Accelerator(cpu=True)
    rank = acc.process_index
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, scheduler = acc.prepare(model, optimizer, scheduler)
    params = [p for p in model.parameters() if p.requires_grad]

    def method(trainable, batch, rand):
        loss = trainable.unet(torch.ones(1, 2)).sum() * (float("nan") if rank == 1 else 1.0)
        return SimpleNamespace(loss=loss, metrics={})

    runner = StepRunner(acc, method, SimpleNamespace(unet=model), params, optimizer, scheduler, 1.0)
    seen = {"loss": outcome(lambda: runner.run(None, None, 0))}

    with torch.no_grad():
        if rank == 1:
            params[0].data[0, 0] = float("inf")
    seen["weights"] = outcome(lambda: runner.check_weights(3, "its checkpoint"))

    with InterruptGuard() as guard:
        if rank == 0:
            signal.raise_signal(signal.SIGTERM)
        seen["signal"] = any_process(acc, guard.requested)

    def claim(folder: Path) -> str:
        with ExitStack() as stack:
            cfg = load_config(RunConfig, None, [f"train.output_dir={folder}"])
            return claim_run_folder(cfg, acc, stack).run_id

    if rank == 0:
        (out / "taken").mkdir(parents=True)
        (out / "taken" / "pytorch_lora_weights.safetensors").write_text("another run's\n")
    acc.wait_for_everyone()
    seen["foreign folder"] = outcome(lambda: claim(out / "taken"))
    seen["new folder"] = claim(out / "new")
    (out / f"rank-{rank}.json").write_text(json.dumps(seen))
    acc.wait_for_everyone()  # no process tears the group down while the other is still in a collective
    torch.distributed.destroy_process_group()
    # Everything is written. Leave without the interpreter's teardown: with the data modules imported (the training
    # package's import of the offline source), a C++ destructor at exit sometimes aborts ("terminate called without
    # an active exception", 1 exit in 3 to 6 here) after both results are on disk; the real CLI's 2-process runs
    # exit cleanly (tests/training/test_multiprocess.py, test_online_multiprocess.py).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
