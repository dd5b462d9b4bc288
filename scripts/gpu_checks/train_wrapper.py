#!/usr/bin/env python
"""`diffalign ARGS` (the same as `python -m diffalign.cli.main ARGS`) with two additions for the GPU checks.

    python scripts/gpu_checks/train_wrapper.py train configs/demo/dpo.yaml key=value ...
    accelerate launch --config_file configs/accelerate/fsdp.yaml --num_processes 1 \
        scripts/gpu_checks/train_wrapper.py train configs/demo/dpo.yaml key=value ...

- GPUCHK_DETERMINISTIC=1: deterministic kernels (`torch.use_deterministic_algorithms(True, warn_only=True)`,
  cuDNN deterministic, no cuDNN benchmark), so that a resumed run can be compared bit for bit with an
  uninterrupted one: what differs then comes from the checkpoint, not from atomics in a backward kernel.
  Set CUBLAS_WORKSPACE_CONFIG=:4096:8 in the environment too (it must be there before CUDA starts).
- GPUCHK_REPORT=FILE: appends JSON lines to FILE (main process only): after `accelerator.prepare`, what
  accelerate made of the UNet (distributed type, FSDP version and mixed-precision policy, the dtypes of the
  trainable and frozen parameters, how many are DTensors, i.e. sharded by FSDP2); at exit, the CUDA peak memory.

Nothing else changes: the training is diffalign's own code path.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter


def _append(record: dict) -> None:
    path = os.environ.get("GPUCHK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _report_prepare() -> None:
    """Wrap `Accelerator.prepare` to record what it did to the model (the first module it returns)."""
    import torch
    from accelerate import Accelerator

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # older torch
        DTensor = ()  # noqa: N806

    original = Accelerator.prepare

    def prepare(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        items = out if isinstance(out, tuple) else (out,)
        model = next((m for m in items if isinstance(m, torch.nn.Module)), None)
        if model is not None and self.is_main_process:
            trainable: Counter = Counter()
            frozen: Counter = Counter()
            sharded = 0
            for p in model.parameters():
                (trainable if p.requires_grad else frozen)[str(p.dtype).replace("torch.", "")] += p.numel()
                sharded += isinstance(p, DTensor) if DTensor else 0
            plugin = getattr(self.state, "fsdp_plugin", None)
            _append({
                "event": "prepared",
                "distributed_type": str(self.distributed_type).split(".")[-1],
                "num_processes": self.num_processes,
                "mixed_precision": self.mixed_precision,
                "fsdp_version": getattr(plugin, "fsdp_version", None),
                "fsdp_mixed_precision_policy": str(getattr(plugin, "mixed_precision_policy", None)) if plugin else None,
                "model_class": type(model).__name__,
                "trainable_numel_by_dtype": dict(trainable),
                "frozen_numel_by_dtype": dict(frozen),
                "dtensor_params": int(sharded),
                "params": sum(1 for _ in model.parameters()),
                "device": str(self.device),
            })
        return out

    Accelerator.prepare = prepare


def _report_exit() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        _append({
            "event": "exit",
            "max_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
            "max_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        })


def main() -> int:
    if os.environ.get("GPUCHK_DETERMINISTIC") == "1":
        import torch

        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if os.environ.get("GPUCHK_REPORT"):
        _report_prepare()
        if int(os.environ.get("RANK", "0")) == 0:
            atexit.register(_report_exit)

    from diffalign.cli.main import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
