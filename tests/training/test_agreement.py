"""Under several processes, what one process sees stops them all at the same point (tests/training/
agreement_worker.py on 2 CPU processes): a non-finite loss or weights, a signal, a refused output folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("agreement_worker.py")


def test_one_process_seeing_a_fault_stops_every_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29551"]
    result = subprocess.run([*launch, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    zero, one = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert zero["loss"] == one["loss"] and zero["loss"].startswith("TrainingDiverged: non-finite loss at step 1")
    assert zero["weights"] == one["weights"] and zero["weights"].startswith("TrainingDiverged: non-finite weights")
    assert zero["signal"] is one["signal"] is True  # only process 0 got the SIGTERM
    assert zero["foreign folder"] == one["foreign folder"]
    assert zero["foreign folder"].startswith(f"RunFolderError: train.output_dir={tmp_path / 'taken'} already holds")
    assert zero["new folder"] == one["new folder"]  # one run id for every process
