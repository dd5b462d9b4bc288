"""Run by tests/training/test_fsdp.py under torchrun: a few training steps of a tiny UNet sharded
with FSDP2 (`fully_shard`, gloo, CPU), checkpointed and restored through `TrainingState`.

accelerate only turns FSDP on with GPUs, so this worker shards the UNet as accelerate's
`fsdp2_prepare_model` does with configs/accelerate/fsdp.yaml (every transformer and ResNet block,
innermost first, then the root) and drives the same checkpoint code.

    python -m torch.distributed.run --nproc_per_node 2 fsdp_worker.py MODEL OUT MODES {lora|full}

MODES is a comma-separated list, run in order, each on a UNet, optimizer and scheduler built afresh:
`straight` trains 4 steps, checkpointing after 2; `resume` restores that checkpoint and trains steps 3-4.
Both write the gathered weights after step 4 to OUT/final-MODE.safetensors. (One launch for both saves
the start-up of a second pair of processes.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel
from diffusers.optimization import get_scheduler
from safetensors.torch import save_file
from torch.distributed.fsdp import fully_shard

from diffalign.config.schema import LoraConfig
from diffalign.models.lora import attach_lora
from diffalign.training.checkpoint import checkpoint_dir
from diffalign.training.state import TrainingState, full_trainable_state


def main() -> None:
    model, out, modes, kind = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    acc = Accelerator(cpu=True)
    for mode in modes.split(","):
        run(acc, model, out, mode, kind)
    torch.distributed.destroy_process_group()


def run(acc: Accelerator, model: Path, out: Path, mode: str, kind: str) -> None:
    rank = acc.process_index
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    if kind == "lora":
        attach_lora(unet, LoraConfig(rank=4, alpha=4, init="gaussian"))
    for module in reversed(list(unet.modules())):
        if type(module).__name__ in ("BasicTransformerBlock", "ResnetBlock2D"):
            fully_shard(module)
    fully_shard(unet)
    sharded = [p for p in unet.parameters() if p.requires_grad]
    assert all(type(p).__name__ == "DTensor" or "DTensor" in type(p.data).__name__ for p in sharded)
    optimizer = torch.optim.AdamW(sharded, lr=1e-3, weight_decay=1e-2)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=1, num_training_steps=4)
    state = TrainingState(acc, unet, optimizer, scheduler, lora=kind == "lora", family="sd", global_batch=4,
                          config_text="fsdp test\n")
    step = 0
    if mode == "resume":
        step, _ = state.restore(checkpoint_dir(out, 2))
    width = unet.config.cross_attention_dim
    while step < 4:
        g = torch.Generator().manual_seed(1000 * step + rank)  # each process its own pairs
        sample = torch.randn(2, 4, 8, 8, generator=g)
        text = torch.randn(2, 77, width, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        loss = (unet(sample, t, encoder_hidden_states=text).sample - sample).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if mode == "straight" and step == 2:
            state.save(out, step, micro_step=step, keep=2)
    weights, _ = full_trainable_state(unet)
    if acc.is_main_process:
        save_file(weights, str(out / f"final-{mode}.safetensors"))
    acc.wait_for_everyone()


if __name__ == "__main__":
    main()
