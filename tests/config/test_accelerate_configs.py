"""The accelerate configs in configs/accelerate/ parse, and the FSDP one shards every UNet family."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from accelerate.commands.config.config_args import load_config_from_file

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"


def test_ddp_config_parses():
    config = load_config_from_file(str(CONFIGS / "ddp.yaml"))
    assert config.distributed_type == "MULTI_GPU"


def test_fsdp_config_is_fsdp2_and_wraps_blocks_of_every_family(tiny_models):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml"),
              "--num_processes", "1"]
    models = [str(path) for path in tiny_models.values()]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([*launch, str(Path(__file__).with_name("accelerate_check.py")), *models],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    plugin = json.loads(result.stdout.strip().splitlines()[-1])
    assert plugin["fsdp_version"] == 2
    assert plugin["reshard_after_forward"] is False
    assert plugin["wrapped"] == ["BasicTransformerBlock", "ResnetBlock2D"]
