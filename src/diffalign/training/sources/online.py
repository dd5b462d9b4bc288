"""Online rollouts as a batch source: each round the current policy samples images for a set of prompts,
keeping every DDIM step, and a registered reward judges them; the method then trains on the round.

The loop as named phases (TRL's online trainers, ddpo-pytorch):

1. **prompts**: round r takes the next `rollout.prompts_per_round` prompts of an order that is a seeded
   permutation of the prompt list per pass (`train.seed`), so the order is a function of the round alone;
   each process samples its own contiguous share of them.
2. **sample**: for each prompt, `rollout.images_per_prompt` trajectories of the policy (DDIM, η, guidance,
   steps of `rollout`) from one shared initial noise x_T (as D3PO: a prompt's images differ only by the
   η-noise), seeded by (seed, round, prompt position, image), so a round draws the same noise in any run.
3. **judge**: the reward (`rollout.reward`, any registered scorer) scores the decoded images against their
   prompts in one batch-scoring call; an image the scorer cannot score gets the reward NaN (and is listed).
4. **train**: the round's prompts are served in micro-batches of `train.batch_size` prompt groups
   (`Rollouts`); a round lasts prompts_per_round / (batch_size × processes) micro-steps.

Resume: a checkpoint stores the round, its prompts and, when it falls inside a round, the round's rollouts
(the policy that sampled them is gone by then), so a resumed run trains on exactly what the uninterrupted
run trained on; at a round boundary the next round is sampled from the restored weights, as it would have been.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ...config.schema import RunConfig
from ...data.order import derive_seed
from ...data.prompts import read_training_prompts
from ...models.conditioning import TextConditioning
from ...models.loading import DiffusionParts
from ...rewards import build_scorer
from ...rewards.batch import score_in_batches
from ...sampling.trajectory import Trajectory, sample_trajectory
from ..checkpoint import load_state_files, save_state_files
from ..randomness import BatchRandom

ROUND_FILE = "rollouts"


@dataclass
class Rollouts:
    """A micro-batch of one round: P prompts, I images each, sampled by the policy and judged by the reward.

    - prompts: P prompts; trajectories: P·I samples, prompt-major (sample p·I + i is image i of prompt p),
      with latents (P·I, K+1, C, h, w), log_probs (P·I, K), images uint8 (P·I, H, W, 3) (see `Trajectory`);
    - rewards: float32 (P, I), NaN where the scorer failed on an image;
    - round: the round that sampled them.
    """

    round: int
    prompts: list[str]
    trajectories: Trajectory
    rewards: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def images_per_prompt(self) -> int:
        """I, the images sampled per prompt."""
        return self.rewards.shape[1]

    def select(self, index: list[int]) -> Rollouts:
        """The rollouts of the prompts `index`, in that order."""
        per = self.images_per_prompt
        samples = [p * per + i for p in index for i in range(per)]
        return Rollouts(self.round, [self.prompts[p] for p in index], self.trajectories.select(samples),
                        self.rewards[index])


def prompt_order(count: int, seed: int, round_: int, per_round: int) -> list[int]:
    """Indices into the prompt list of round `round_`'s prompts: consecutive slices of a seeded permutation
    per pass over the list (a pass that runs out continues into the next permutation)."""
    out: list[int] = []
    position = round_ * per_round
    while len(out) < per_round:
        epoch, offset = divmod(position, count)
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 0xB0)))
        take = min(per_round - len(out), count - offset)
        out.extend(permutation[offset : offset + take].tolist())
        position += take
    return out


class OnlineRollouts:
    """The online batch source (see the module docstring); `attach_policy` gives it the UNet being trained."""

    def __init__(self, cfg: RunConfig, parts: DiffusionParts, device: torch.device, rank: int = 0, world: int = 1) -> None:
        r, t = cfg.rollout, cfg.train
        share = t.batch_size * world
        if r.prompts_per_round % share:
            raise ValueError(
                f"rollout.prompts_per_round={r.prompts_per_round} must be a multiple of train.batch_size x processes "
                f"= {share} (each micro-step takes train.batch_size prompt groups on every process)"
            )
        if parts.vae is None or not parts.text_encoders:
            raise ValueError("online rollouts need the VAE and text encoders (the latent cache cannot stand in)")
        self.cfg, self.parts, self.device, self.rank, self.world = cfg, parts, device, rank, world
        self.prompts = read_training_prompts(r.prompts)
        self.micro_per_round = r.prompts_per_round // share
        self.scorer = build_scorer(r.reward, device=str(device))
        self.policy: torch.nn.Module | None = None
        self.autocast: Callable[[], AbstractContextManager] = nullcontext
        self.current: Rollouts | None = None  # this process's share of the current round
        self.failures: list[str] = []

    def attach_policy(self, unet: torch.nn.Module, autocast: Callable[[], AbstractContextManager]) -> None:
        """The (unwrapped) UNet being trained, which samples each round, and the autocast to sample under."""
        self.policy, self.autocast = unet, autocast

    def describe(self) -> str:
        r = self.cfg.rollout
        return (f"online rollouts: {len(self.prompts)} prompts from {r.prompts}; {r.prompts_per_round} prompts x "
                f"{r.images_per_prompt} images per round (DDIM {r.steps} steps, eta {r.eta:g}, guidance {r.guidance:g}), "
                f"judged by {r.reward}; {self.micro_per_round} micro-step(s) per round")

    def round_prompts(self, round_: int) -> list[int]:
        """This process's prompt indices of round `round_`."""
        per_round = self.cfg.rollout.prompts_per_round
        order = prompt_order(len(self.prompts), self.cfg.train.seed, round_, per_round)
        share = per_round // self.world
        return order[self.rank * share : (self.rank + 1) * share]

    @torch.no_grad()
    def sample_round(self, round_: int) -> Rollouts:
        """Sample and judge this process's share of round `round_` with the current policy."""
        if self.policy is None:
            raise RuntimeError("OnlineRollouts.attach_policy was not called before sampling")
        r, seed = self.cfg.rollout, self.cfg.train.seed
        indices = self.round_prompts(round_)
        share = self.cfg.rollout.prompts_per_round // self.world
        prompts = [self.prompts[i] for i in indices]
        per = r.images_per_prompt
        chunks = []
        was_training = self.policy.training
        self.policy.eval()
        try:
            for start in range(0, len(prompts), max(1, r.sample_batch_size // per)):
                group = range(start, min(start + max(1, r.sample_batch_size // per), len(prompts)))
                positions = [self.rank * share + p for p in group]
                noise = torch.stack([
                    self._initial_noise(derive_seed(seed, round_, position, 0x1A7)) for position in positions
                ]).repeat_interleave(per, dim=0)
                seeds = [derive_seed(seed, round_, position, i) for position in positions for i in range(per)]
                with self.autocast():
                    chunks.append(sample_trajectory(
                        self.parts, self.policy, [prompts[p] for p in group for _ in range(per)], seeds,
                        steps=r.steps, guidance=r.guidance, eta=r.eta, resolution=r.resolution, initial_latents=noise,
                    ))
        finally:
            self.policy.train(was_training)
        trajectories = _concat(chunks)
        result = score_in_batches(self.scorer, trajectories.images, trajectories.prompts,
                                  batch_size=r.sample_batch_size)
        for failure in result.failures:
            self.failures.append(f"round {round_} image {failure.index} ({trajectories.prompts[failure.index]!r}): "
                                 f"{failure.reason}")
        rewards = result.values().float().reshape(len(prompts), per).to(self.device)
        return Rollouts(round_, prompts, trajectories, rewards)

    def _initial_noise(self, seed: int) -> torch.Tensor:
        resolution = self.cfg.rollout.resolution or _default_size(self.parts)
        size = resolution // 2 ** (len(self.parts.vae_config["block_out_channels"]) - 1)
        shape = (self.parts.vae_config["latent_channels"], size, size)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    def batches(self, micro: int) -> Iterator[Rollouts]:
        batch = self.cfg.train.batch_size
        while True:
            round_, within = divmod(micro, self.micro_per_round)
            if self.current is None or self.current.round != round_:
                self.current = self.sample_round(round_)
            yield self.current.select(list(range(within * batch, (within + 1) * batch)))
            micro += 1

    def prepare(self, raw: Rollouts, rand: BatchRandom) -> Rollouts:
        del rand
        return raw

    def save(self, folder: Path, rank: int) -> None:
        """Write this process's current round (its rollouts and prompt positions) into a checkpoint folder."""
        if self.current is None:
            return
        state = {"round": self.current.round, "prompt_indices": self.round_prompts(self.current.round),
                 "prompts": self.current.prompts, "rewards": self.current.rewards,
                 "trajectories": _trajectory_state(self.current.trajectories)}
        save_state_files(folder, f"{ROUND_FILE}-{rank}", state)

    def restore(self, folder: Path, rank: int) -> None:
        """Read back the round a checkpoint was inside (none at a round boundary is needed; it is resampled)."""
        if not (folder / f"{ROUND_FILE}-{rank}.json").is_file():
            self.current = None
            return
        state = load_state_files(folder, f"{ROUND_FILE}-{rank}", self.device)
        if state["prompt_indices"] != self.round_prompts(state["round"]):
            raise ValueError(
                f"{folder}: its round {state['round']} took other prompts than this run's order gives (another "
                f"rollout.prompts file, rollout.prompts_per_round or number of processes?); start a new run"
            )
        self.current = Rollouts(state["round"], state["prompts"], _trajectory_from_state(state["trajectories"]),
                                state["rewards"])

    def summary(self) -> str | None:
        if not self.failures:
            return None
        return f"{len(self.failures)} rollout image(s) could not be scored (reward NaN), e.g. {self.failures[0]}"


def _default_size(parts: DiffusionParts) -> int:
    return int(parts.unet.config.sample_size) * 2 ** (len(parts.vae_config["block_out_channels"]) - 1)


def _concat(chunks: list[Trajectory]) -> Trajectory:
    """One trajectory record of several sampled in chunks (the same steps and settings)."""
    if len(chunks) == 1:
        return chunks[0]

    def cat(values):
        if values[0] is None:
            return None
        if isinstance(values[0], np.ndarray):
            return np.concatenate(values)
        if isinstance(values[0], TextConditioning):
            return TextConditioning.cat(values)
        return torch.cat(values)

    first = chunks[0]
    return replace(
        first, latents=cat([c.latents for c in chunks]), log_probs=cat([c.log_probs for c in chunks]),
        images=cat([c.images for c in chunks]), prompts=[p for c in chunks for p in c.prompts],
        seeds=[s for c in chunks for s in c.seeds], cond=cat([c.cond for c in chunks]),
        uncond=cat([c.uncond for c in chunks]), time_ids=cat([c.time_ids for c in chunks]),
    )


def _trajectory_state(trajectory: Trajectory) -> dict:
    """A trajectory record as nested tensors and plain values (for `save_state_files`)."""
    state = {}
    for f in fields(trajectory):
        value = getattr(trajectory, f.name)
        if isinstance(value, TextConditioning):
            value = {"hidden_states": value.hidden_states, "pooled": value.pooled}
        elif isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        state[f.name] = value
    return state


def _trajectory_from_state(state: dict) -> Trajectory:
    values = dict(state)
    for key in ("cond", "uncond"):
        if values[key] is not None:
            values[key] = TextConditioning(values[key]["hidden_states"], values[key]["pooled"])
    if values["images"] is not None:
        values["images"] = values["images"].cpu().numpy()
    return Trajectory(**values)
