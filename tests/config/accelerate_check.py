"""Run by tests/config/test_accelerate_configs.py under `accelerate launch --config_file ...`: prints
the FSDP plugin that accelerate builds from the config and the UNet modules its wrap policy shards."""

import json
import sys

from accelerate.utils import FullyShardedDataParallelPlugin
from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
from diffusers import UNet2DConditionModel

plugin = FullyShardedDataParallelPlugin()
wrapped = set()
for model in sys.argv[1:]:
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    policy = fsdp2_prepare_auto_wrap_policy(plugin, unet)
    wrapped |= {type(m).__name__ for m in unet.modules() if policy(m)}
print(json.dumps({"fsdp_version": plugin.fsdp_version, "reshard_after_forward": plugin.reshard_after_forward,
                  "wrapped": sorted(wrapped)}))
