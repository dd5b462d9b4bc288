"""A reference drawn from earlier states of the run (SePPO's "Random Checkpoint Replay"), not a UNet copy.

Every `reference.every` optimizer steps the pool keeps a copy of the LoRA weights (CPU tensors, a few MB
even for SDXL), the newest `reference.keep` of them, beside the initial model. Before each micro-step
one member is chosen (`reference.selection`: uniformly at random over the initial model and every
kept state, the paper's default; the latest; or the initial model only) from a generator seeded by
(run seed, micro-step), so a resumed run chooses what the uninterrupted run chose. A chosen state is
loaded into a second peft adapter named `reference` on the same UNet; the initial model is the UNet
with its adapters switched off. The pool is saved inside every checkpoint, so `train.keep_checkpoints`
never prunes it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig as PeftLoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from ..config.schema import LoraConfig, ReferenceConfig
from ..data.order import derive_seed
from ..models.reference import ReferenceModel

POOL_FILE = "reference_pool"
ADAPTER = "reference"
INITIAL = 0  # the pool member "step 0": the initial model


class ReferencePool(ReferenceModel):
    """Earlier LoRA states of the trained UNet, one of which serves as the reference of a micro-step."""

    def __init__(self, unet: UNet2DConditionModel, lora: LoraConfig, cfg: ReferenceConfig) -> None:
        self.unet, self.cfg = unet, cfg
        with warnings.catch_warnings():  # peft warns that a second adapter is being added: that is the point
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            unet.add_adapter(
                PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0, target_modules=list(lora.target_modules)),
                adapter_name=ADAPTER,
            )
        self._activate("default")
        named = dict(unet.named_parameters())
        self.trained = {n: p for n, p in named.items() if ".default." in n}
        self.slots = {n: named[n.replace(".default.", f".{ADAPTER}.")] for n in self.trained}
        for p in self.slots.values():
            p.requires_grad_(False)
        self.states: dict[int, dict[str, torch.Tensor]] = {}  # optimizer step -> LoRA weights at that step
        self.loaded: int | None = None  # the step whose weights the reference adapter holds
        self.current = INITIAL

    def _activate(self, name: str) -> None:
        for module in self.unet.modules():
            if isinstance(module, BaseTunerLayer):
                module.set_adapter(name)
        for p in getattr(self, "slots", {}).values():
            p.requires_grad_(False)

    def members(self) -> list[int]:
        """The steps of the pool's members, oldest first; 0 is the initial model."""
        return [INITIAL, *sorted(self.states)]

    def refresh(self, step: int, seed: int, micro_step: int) -> int:
        """Keep the current weights if `step` is due, then choose this micro-step's reference; return its step."""
        if step > 0 and step % self.cfg.every == 0 and step not in self.states:
            self.states[step] = {n: p.detach().float().cpu().clone() for n, p in self.trained.items()}
            for old in sorted(self.states)[: -self.cfg.keep]:
                del self.states[old]
        members = self.members()
        if self.cfg.selection == "initial":
            self.current = INITIAL
        elif self.cfg.selection == "latest":
            self.current = members[-1]
        else:
            generator = torch.Generator().manual_seed(derive_seed(seed, micro_step, 0x5EF))
            self.current = members[int(torch.randint(len(members), (), generator=generator))]
        return self.current

    @torch.no_grad()
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs) -> torch.Tensor:
        """The chosen reference's UNet output for these inputs (no gradient)."""
        if self.current == INITIAL:
            self.unet.disable_adapters()
            try:
                return self.unet(sample, timestep, **kwargs).sample
            finally:
                self.unet.enable_adapters()
        if self.loaded != self.current:
            for name, slot in self.slots.items():
                slot.copy_(self.states[self.current][name])
            self.loaded = self.current
        self._activate(ADAPTER)
        try:
            return self.unet(sample, timestep, **kwargs).sample
        finally:
            self._activate("default")

    def save(self, folder: Path, rank: int) -> None:
        """Write the pool's states into a checkpoint folder (the main process: every process holds the same pool)."""
        if rank != 0:
            return
        tensors = {f"{step}/{name}": t for step, state in self.states.items() for name, t in state.items()}
        save_file(tensors, str(folder / f"{POOL_FILE}.safetensors"))
        (folder / f"{POOL_FILE}.json").write_text(json.dumps({"steps": sorted(self.states)}))

    def restore(self, folder: Path, rank: int) -> None:
        """Read the pool's states back from a checkpoint folder."""
        path = folder / f"{POOL_FILE}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no {path.name}; this checkpoint was written by a run without a reference pool")
        tensors = load_file(str(path))
        self.states = {}
        for key, value in tensors.items():
            step, name = key.split("/", 1)
            self.states.setdefault(int(step), {})[name] = value
        self.loaded = None
