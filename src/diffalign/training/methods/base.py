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

from ...data.record import Side
from ...models.conditioning import TextConditioning, unet_kwargs
from ...models.prediction import training_target
from ...objectives import ObjectiveOutput, denoising_error
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

    def transform_table(self, table: Any, run: Any) -> Any:
        """The method's own use of the pair table (a `datasets.Dataset`), after any relabelling and before the
        filters: unchanged for most methods (SmPO: labels and weights from the pairs' scores)."""
        del run
        return table

    def transform_row(self, row: dict) -> dict:
        """`transform_table` for one row of a stream."""
        return row

    def __call__(self, model: TrainableModel, batch: Any, rand: BatchRandom) -> ObjectiveOutput:
        raise NotImplementedError


def sample_noise_and_timesteps(
    latents: torch.Tensor, scheduler: DDPMScheduler, rand: BatchRandom
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like `latents` (one row per pair) and uniform timesteps in [0, T), one per pair."""
    noise = rand.randn(*latents.shape[1:]).to(latents.device, latents.dtype)
    t = rand.randint(scheduler.config.num_train_timesteps).to(latents.device)
    return noise, t


def pair_errors(
    model: TrainableModel, first: Side, second: Side, noise: torch.Tensor, t: torch.Tensor,
    second_noise: torch.Tensor | None = None, second_t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample denoising errors (2B,) of the trained model (with gradient) and of the reference, the B
    `first` images then the B `second` ones, noised with `noise`, `t` (the second side with its own when
    given, else the same) and conditioned on each side's `cond` in one UNet batch per model."""
    second_noise = noise if second_noise is None else second_noise
    second_t = t if second_t is None else second_t
    latents = torch.cat([first.latents, second.latents])
    noise, t = torch.cat([noise, second_noise]), torch.cat([t, second_t])
    noisy = model.noise_scheduler.add_noise(latents, noise, t)
    target = training_target(model.noise_scheduler, latents, noise, t, model.prediction_type)
    time_ids = None if first.time_ids is None else torch.cat([first.time_ids, second.time_ids])
    kwargs = unet_kwargs(TextConditioning.cat([first.cond, second.cond]), time_ids)
    err = denoising_error(model.predict(noisy, t, **kwargs), target)
    if model.reference is None:
        raise ValueError("pair_errors needs the method's reference model")
    ref_err = denoising_error(model.reference.predict(noisy, t, **kwargs), target)
    return err, ref_err
