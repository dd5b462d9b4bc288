"""What every training method is: the capabilities the loop reads, and the model view it trains.

A method is a small class in its own module of this package, linked to its config by
`@objective(name, method="diffalign.training.methods.<name>:<Name>")` in `config/objectives.py`.
It declares what it needs as class attributes, and the loop builds exactly that, never branching on
method names:

- `source`: the batch source class its batches come from: `OfflinePairs` (offline preference pairs,
  `PairBatch`, encoded latents and conditioning filled in), `OfflineWinners` (the preferred image of each
  pair only, `batch.l` None: the data may also be an image folder with captions or a pairs file without
  rejected images), `ReferenceSampled` (winners with the loser slot filled by an image the micro-step's
  reference draws for the pair's caption: SePPO) or `OnlineRollouts` (images sampled from the current
  policy and judged by a reward each round, `Rollouts`), or a class of the user's own (`sources.base`);
- `rollout_unit` (online sources): what a micro-batch of a round holds, whole prompt groups (`"prompt"`,
  D3PO compares a prompt's images) or single images (`"image"`, DDPO and GRPO);
- `reference`: `"none"`, `"base"` (the initial model: the LoRA adapters switched off, or a frozen
  copy of the UNet for full fine-tuning) or `"pool"` (earlier checkpoints of the run, refreshed
  during training: `ReferencePool`);
- `per_image_captions`: condition each image of a pair on its own caption (`caption_0`/`caption_1`
  of a dual-caption table) instead of the pair's prompt; otherwise a dual-caption table trains as a
  plain one;
- `precomputable_reference`: the reference errors depend only on what `noised(model, batch, rand)`
  draws from the micro-step's batch (latents, conditioning, noise, timesteps), measured in the method's
  `error_space`; such a method takes them from `model.reference_errors`, which the reference-output
  pre-pass (`training/reference_errors.py`, `reference.precompute`) can serve without a reference forward.

Hooks with defaults: `validate(run)` refuses settings the method cannot train with; `advantages(rollouts)`
turns a gathered online round's rewards into advantages (None: the method reads the rewards);
`state_dict()`/`load_state_dict()` hold what the method keeps across steps (a per-prompt statistics buffer),
which checkpoints store and a resumed run restores.

`__call__(model, batch, rand)` turns one micro-batch into an `ObjectiveOutput` (loss and metrics). A method
whose batch is used for several micro-steps (`micro_steps_per_batch`, D3PO's one per trajectory step) gets
it that many times, `batch.substep` counting 0, 1, ...; the loop accumulates their gradients.
Every random draw goes through `rand` (a `BatchRandom`), one draw per pair, so the step does not
depend on how the batch is split over processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import torch
from diffusers import DDPMScheduler

from ...data.record import Side
from ...models.conditioning import TextConditioning, unet_kwargs
from ...models.prediction import training_target
from ...objectives import ObjectiveOutput, denoising_error
from ...sampling.ddim import convert_prediction
from ..checkpoint import load_state_files, save_state_files
from ..randomness import BatchRandom
from ..sources.base import BatchSource
from ..sources.offline import OfflinePairs

ReferenceKind = Literal["none", "base", "pool", "ema"]
ErrorSpace = Literal["prediction", "epsilon"]


class Reference(Protocol):
    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor: ...


@dataclass
class TrainableModel:
    """The UNet being trained (possibly wrapped by accelerate), its reference and the noise schedule."""

    unet: torch.nn.Module
    reference: Reference | None
    noise_scheduler: DDPMScheduler
    prediction_type: str

    precomputed: Any = None  # a `PrecomputedErrors` of this run, set by the reference-output pre-pass

    def predict(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """The trained UNet's output (with gradient)."""
        return self.unet(sample, timestep, **kwargs).sample

    def reference_errors(self, noised: NoisedPair, space: ErrorSpace, rand: BatchRandom) -> torch.Tensor:
        """The reference's per-sample errors on `noised` (see `prediction_errors`): read from the run's
        precomputed errors for this micro-step when there are some, else a reference forward (no gradient)."""
        if self.precomputed is not None:
            return self.precomputed.lookup(rand, noised.t)
        if self.reference is None:
            raise ValueError("this method needs its reference model, and the run built none")
        return prediction_errors(self, self.reference.predict(noised.noisy, noised.t, **noised.kwargs), noised, space)


METHOD_STATE = "method"  # checkpoint files method-RANK.json / .safetensors: the method's state_dict


class Method:
    """Base class of the training methods: the capability defaults and the config it was built from."""

    source: ClassVar[type[BatchSource]] = OfflinePairs
    rollout_unit: ClassVar[Literal["prompt", "image"]] = "prompt"
    reference: ClassVar[ReferenceKind] = "base"
    per_image_captions: ClassVar[bool] = False
    precomputable_reference: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.error_space: ErrorSpace = "prediction"

    def noised(self, model: TrainableModel, batch: Any, rand: BatchRandom) -> NoisedPair:
        """The micro-step's UNet inputs and targets, drawn from `rand` exactly as `__call__` draws them (a method
        with `precomputable_reference`)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare its reference inputs")

    def reference_key(self) -> dict[str, Any]:
        """The objective settings its precomputed reference errors depend on (not beta or the loss form, so runs
        that differ only in those share them); by default every setting."""
        return {"name": self.cfg.name, **{k: v for k, v in vars(self.cfg).items() if k != "name"}}

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

    def validate(self, run: Any) -> None:
        """Refuse run settings (`run`: the whole `RunConfig`) this method cannot train with; nothing by default."""
        del run

    def advantages(self, rollouts: Any) -> torch.Tensor | None:
        """The advantages (P, I) of a gathered online round (`Rollouts`, its rewards (P, I)); None by default: the
        method reads the rewards itself."""
        del rollouts
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the method keeps across steps, for checkpoints (nested tensors, lists and plain values); empty by
        default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what `state_dict` returned."""
        del state

    def save(self, folder: Path, rank: int) -> None:
        """Write `state_dict()` into a checkpoint folder when it holds anything."""
        state = self.state_dict()
        if state:
            save_state_files(folder, f"{METHOD_STATE}-{rank}", state)

    def restore(self, folder: Path, rank: int) -> None:
        """Load the state `save` wrote (a checkpoint without one leaves the method as built)."""
        if (folder / f"{METHOD_STATE}-{rank}.json").is_file():
            self.load_state_dict(load_state_files(folder, f"{METHOD_STATE}-{rank}"))

    def __call__(self, model: TrainableModel, batch: Any, rand: BatchRandom) -> ObjectiveOutput:
        raise NotImplementedError


def sample_noise_and_timesteps(
    latents: torch.Tensor, scheduler: DDPMScheduler, rand: BatchRandom
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise like `latents` (one row per pair) and uniform timesteps in [0, T), one per pair."""
    noise = rand.randn(*latents.shape[1:]).to(latents.device, latents.dtype)
    t = rand.randint(scheduler.config.num_train_timesteps).to(latents.device)
    return noise, t


@dataclass
class NoisedPair:
    """A batch of pairs noised for one UNet call per model: the B first images then the B second ones."""

    noisy: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    target: torch.Tensor
    kwargs: dict[str, Any]


def noise_pair(
    model: TrainableModel, first: Side, second: Side | None, noise: torch.Tensor, t: torch.Tensor,
    second_noise: torch.Tensor | None = None, second_t: torch.Tensor | None = None,
) -> NoisedPair:
    """`first` and `second` noised with `noise`, `t` (the second side with its own when given, else the same),
    their training targets and the UNet keyword arguments of each side's `cond`; `second=None`: `first` only."""
    sides = [first] if second is None else [first, second]
    if second is not None:
        noise = torch.cat([noise, noise if second_noise is None else second_noise])
        t = torch.cat([t, t if second_t is None else second_t])
    latents = torch.cat([side.latents for side in sides])
    noisy = model.noise_scheduler.add_noise(latents, noise, t)
    target = training_target(model.noise_scheduler, latents, noise, t, model.prediction_type)
    time_ids = None if first.time_ids is None else torch.cat([side.time_ids for side in sides])
    return NoisedPair(noisy, t, noise, target, unet_kwargs(TextConditioning.cat([side.cond for side in sides]), time_ids))


def prediction_errors(
    model: TrainableModel, output: torch.Tensor, noised: NoisedPair, space: ErrorSpace = "prediction"
) -> torch.Tensor:
    """Per-sample errors of a UNet output on `noised`: against the training target (`"prediction"`), or the
    noise the output implies against the true noise (`"epsilon"`; ‖v̂ − v‖² = ‖ε̂ − ε‖²/ᾱ_t on v models)."""
    if space == "prediction":
        return denoising_error(output, noised.target)
    if space != "epsilon":
        raise ValueError(f"unknown error space {space!r} (prediction or epsilon)")
    alpha = model.noise_scheduler.alphas_cumprod.to(noised.t.device)[noised.t].float()
    eps = convert_prediction(output.float(), noised.noisy.float(), alpha, model.prediction_type)[1]
    return denoising_error(eps, noised.noise)


def pair_errors(
    model: TrainableModel, first: Side, second: Side, noise: torch.Tensor, t: torch.Tensor,
    second_noise: torch.Tensor | None = None, second_t: torch.Tensor | None = None, space: ErrorSpace = "prediction",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample denoising errors (2B,) of the trained model (with gradient) and of the reference, the B
    `first` images then the B `second` ones (see `noise_pair`), conditioned on each side's `cond` in one UNet
    batch per model, measured in `space` (see `prediction_errors`)."""
    noised = noise_pair(model, first, second, noise, t, second_noise, second_t)
    err = prediction_errors(model, model.predict(noised.noisy, noised.t, **noised.kwargs), noised, space)
    if model.reference is None:
        raise ValueError("pair_errors needs the method's reference model")
    ref_err = prediction_errors(model, model.reference.predict(noised.noisy, noised.t, **noised.kwargs), noised, space)
    return err, ref_err
