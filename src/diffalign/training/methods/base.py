"""What every training method is: the capabilities the loop reads, and the model view it trains.

A method is a small class in its own module of this package, linked to its config by
`@objective(name, method="diffalign.training.methods.<name>:<Name>")` in `config/objectives.py`.
It declares what it needs as class attributes, and the loop builds exactly that, never branching on
method names:

- `data`: where its batches come from: `"pairs"` (offline preference pairs, `PairBatch`, encoded
  latents and conditioning filled in), `"winners"` (the preferred image of each pair only, `batch.l`
  None: the data may also be an image folder with captions or a pairs file without rejected images)
  or `"rollouts"` (images sampled from the current policy and judged by a reward each round, `Rollouts`);
- `reference_samples`: fill the loser slot of each winners-only pair with an image the micro-step's
  reference draws for the pair's caption (SePPO's on-policy reference samples; `ReferenceSampled`);
- `reference`: `"none"`, `"base"` (the initial model: the LoRA adapters switched off, or a frozen
  copy of the UNet for full fine-tuning) or `"pool"` (earlier checkpoints of the run, refreshed
  during training: `ReferencePool`);
- `needs_reward`: whether it needs a registered scorer (`rollout.reward`);
- `per_image_captions`: condition each image of a pair on its own caption (`caption_0`/`caption_1`
  of a dual-caption table) instead of the pair's prompt; otherwise a dual-caption table trains as a
  plain one.

`__call__(model, batch, rand)` turns one micro-batch into an `ObjectiveOutput` (loss and metrics). A method
whose batch is used for several micro-steps (`micro_steps_per_batch`, D3PO's one per trajectory step) gets
it that many times, `batch.substep` counting 0, 1, ...; the loop accumulates their gradients.
Every random draw goes through `rand` (a `BatchRandom`), one draw per pair, so the step does not
depend on how the batch is split over processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol

import torch
from diffusers import DDPMScheduler

from ...objectives import ObjectiveOutput
from ..randomness import BatchRandom

DataSource = Literal["pairs", "winners", "rollouts"]
ReferenceKind = Literal["none", "base", "pool"]


class Reference(Protocol):
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


@dataclass
class TrainableModel:
    """The UNet being trained (possibly wrapped by accelerate), its reference and the noise schedule."""

    unet: torch.nn.Module
    reference: Reference | None
    noise_scheduler: DDPMScheduler
    prediction_type: str

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The trained UNet's output (with gradient)."""
        return self.unet(sample, timestep, **kwargs).sample


class Method:
    """Base class of the training methods: the capability defaults and the config it was built from."""

    data: ClassVar[DataSource] = "pairs"
    reference: ClassVar[ReferenceKind] = "base"
    reference_samples: ClassVar[bool] = False
    needs_reward: ClassVar[bool] = False
    per_image_captions: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def micro_steps_per_batch(self, run: Any) -> int:
        """How many micro-steps (backward passes) each batch of the source is used for, with gradients
        accumulated into the same optimizer step; 1 for most methods (D3PO: the trained steps of a
        trajectory). `run` is the whole `RunConfig`."""
        del run
        return 1

    def __call__(self, model: TrainableModel, batch: Any, rand: BatchRandom) -> ObjectiveOutput:
        raise NotImplementedError


def sample_noise_and_timesteps(
    latents: torch.Tensor, scheduler: DDPMScheduler, rand: BatchRandom
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like `latents` (one row per pair) and uniform timesteps in [0, T), one per pair."""
    noise = rand.randn(*latents.shape[1:]).to(latents.device, latents.dtype)
    t = rand.randint(scheduler.config.num_train_timesteps).to(latents.device)
    return noise, t
