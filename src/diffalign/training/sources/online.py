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
   With `rollout.preference=human` the round is written to `OUTPUT_DIR/rounds/round-NNNNNN/` and the run waits
   until a person has decided every prompt with `diffalign label` (chosen image 1, the others 0, a tie 0.5).
4. **train**: the round's prompts are served in micro-batches of `train.batch_size` prompt groups
   (`Rollouts`), each as many times as the method uses a batch (`substep` 0, 1, ...); a round lasts
   prompts_per_round / (batch_size × processes) × substeps micro-steps.

Resume: a checkpoint stores the round, its prompts and, when it falls inside a round, the round's rollouts
(the policy that sampled them is gone by then), so a resumed run trains on exactly what the uninterrupted
run trained on; at a round boundary the next round is sampled from the restored weights, as it would have been.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from ...config.schema import RunConfig
from ...data.label_rounds import is_complete, read_decisions, write_round
from ...data.order import derive_seed
from ...files import atomic_write_text
from ...data.prompts import read_training_prompts
from ...models.conditioning import TextConditioning
from ...models.loading import DiffusionParts
from ...rewards import build_scorer
from ...rewards.batch import score_in_batches
from ...sampling.trajectory import Trajectory, default_resolution, sample_trajectory, vae_scale_factor
from ..checkpoint import load_state_files, save_state_files
from ..randomness import BatchRandom

ROUND_FILE = "rollouts"
ROUNDS_DIR = "rounds"  # human preference: OUTPUT_DIR/rounds/round-NNNNNN/, labelled with `diffalign label`
LABEL_POLL_S = 2.0
ROUNDS_LOG = "rounds.jsonl"  # per round: mean and spread of the reward, win rate against the base model


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
    substep: int = 0  # which of the method's micro-steps on this batch (`Method.micro_steps_per_batch`)

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
                        self.rewards[index], self.substep)


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
    """The online batch source (see the module docstring); `attach` gives it the UNet being trained."""

    def __init__(self, cfg: RunConfig, parts: DiffusionParts, device: torch.device, rank: int = 0, world: int = 1,
                 *, substeps: int = 1, out_dir: Path | None = None) -> None:
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
        if r.preference == "human" and world > 1:
            raise ValueError("rollout.preference=human labels one round folder: run it on one process")
        self.substeps = substeps
        self.micro_per_round = r.prompts_per_round // share * substeps
        self.rounds_dir = Path(out_dir or cfg.train.output_dir) / ROUNDS_DIR
        self.scorer = build_scorer(r.reward, device=str(device)) if r.preference == "reward" else None
        self.policy: torch.nn.Module | None = None
        self.autocast: Callable[[], AbstractContextManager] = nullcontext
        self.current: Rollouts | None = None  # this process's share of the current round
        self.failures: list[str] = []

    def attach(self, policy: torch.nn.Module, reference: object = None,
               autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        """The (unwrapped) UNet being trained, which samples each round, and the autocast to sample under."""
        del reference
        self.policy, self.autocast = policy, autocast

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

    def _sample(self, round_: int, prompts: list[str]) -> Trajectory:
        """This process's trajectories of round `round_` (prompt-major, images_per_prompt per prompt)."""
        r, seed = self.cfg.rollout, self.cfg.train.seed
        share = r.prompts_per_round // self.world
        per = r.images_per_prompt
        group_size = max(1, r.sample_batch_size // per)
        chunks = []
        for start in range(0, len(prompts), group_size):
            group = range(start, min(start + group_size, len(prompts)))
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
        return _concat(chunks)

    def _base_win_rate(self, round_: int, prompts: list[str], rewards: torch.Tensor) -> float:
        """Share of the round's prompts whose mean reward beats the base model's on the same noise (ties: half)."""
        self.policy.disable_adapters()  # type: ignore[union-attr]
        try:
            base = self._sample(round_, prompts)
        finally:
            self.policy.enable_adapters()  # type: ignore[union-attr]
        scores = score_in_batches(self.scorer, base.images, base.prompts, batch_size=self.cfg.rollout.sample_batch_size)
        base_mean = scores.values().float().reshape(rewards.shape).nanmean(dim=1)
        policy_mean = rewards.nanmean(dim=1)
        wins = (policy_mean > base_mean).float() + 0.5 * (policy_mean == base_mean).float()
        return float(wins.mean())

    def _log_round(self, round_: int, rewards: torch.Tensor, win_rate: float | None) -> None:
        """Append the round's reward statistics to OUTPUT_DIR/rounds.jsonl (main process)."""
        if self.rank != 0:
            return
        entry = {"round": round_, "reward_mean": float(rewards.nanmean()),
                 "reward_std": float(rewards[~rewards.isnan()].std()) if rewards.numel() > 1 else 0.0,
                 "win_rate_vs_base": win_rate}
        path = self.rounds_dir.parent / ROUNDS_LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [line for line in (path.read_text().splitlines() if path.is_file() else [])
                 if line and json.loads(line)["round"] < round_]  # a resumed run rewrites what came after
        atomic_write_text(path, "".join(line + "\n" for line in lines) + json.dumps(entry) + "\n")

    @torch.no_grad()
    def sample_round(self, round_: int) -> Rollouts:
        """Sample and judge this process's share of round `round_` with the current policy."""
        if self.policy is None:
            raise RuntimeError("OnlineRollouts.attach was not called before sampling")
        r = self.cfg.rollout
        prompts = [self.prompts[i] for i in self.round_prompts(round_)]
        was_training = self.policy.training
        self.policy.eval()
        try:
            trajectories = self._sample(round_, prompts)
            if self.scorer is None:
                rewards, win_rate = self.human_rewards(round_, prompts, trajectories.images), None
            else:
                result = score_in_batches(self.scorer, trajectories.images, trajectories.prompts,
                                          batch_size=r.sample_batch_size)
                for failure in result.failures:
                    self.failures.append(f"round {round_} image {failure.index} "
                                         f"({trajectories.prompts[failure.index]!r}): {failure.reason}")
                rewards = result.values().float().reshape(len(prompts), r.images_per_prompt)
                compare = r.compare_base and hasattr(self.policy, "disable_adapters") and self.cfg.lora.enabled
                win_rate = self._base_win_rate(round_, prompts, rewards) if compare else None
        finally:
            self.policy.train(was_training)
        self._log_round(round_, rewards, win_rate)
        return Rollouts(round_, prompts, trajectories, rewards.to(self.device))

    def human_rewards(self, round_: int, prompts: list[str], images: np.ndarray) -> torch.Tensor:
        """Write the round for `diffalign label`, wait until every prompt is decided, and turn the choices into
        rewards (P, I): 1 for the chosen image, 0 for the others, 0.5 for all images of a tie, NaN for a skip."""
        folder = self.rounds_dir / f"round-{round_:06d}"
        write_round(folder, round_, prompts, images)
        if not is_complete(folder):
            print(f"round {round_}: {len(prompts)} prompts to label. In another terminal run\n"
                  f"    diffalign label {folder}\nand pick the preferred image of each prompt; training continues "
                  f"when all are decided (the choices are kept if this run stops: rerun it with train.resume=latest).",
                  flush=True)
            while not is_complete(folder):
                time.sleep(LABEL_POLL_S)
        per = self.cfg.rollout.images_per_prompt
        rewards = torch.full((len(prompts), per), float("nan"))
        for prompt, choice in read_decisions(folder).items():
            if choice == "tie":
                rewards[prompt] = 0.5
            elif choice != "skip":
                rewards[prompt] = 0.0
                rewards[prompt, int(choice)] = 1.0
        return rewards

    def _initial_noise(self, seed: int) -> torch.Tensor:
        resolution = self.cfg.rollout.resolution or default_resolution(self.parts, self.parts.unet)
        size = resolution // vae_scale_factor(self.parts)
        shape = (self.parts.vae_config["latent_channels"], size, size)
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed))

    def batches(self, micro: int) -> Iterator[Rollouts]:
        batch = self.cfg.train.batch_size
        while True:
            round_, within = divmod(micro, self.micro_per_round)
            index, substep = divmod(within, self.substeps)
            if self.current is None or self.current.round != round_:
                self.current = self.sample_round(round_)
            chosen = self.current.select(list(range(index * batch, (index + 1) * batch)))
            chosen.substep = substep
            yield chosen
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
        lines = []
        plot = plot_rounds(self.rounds_dir.parent / ROUNDS_LOG) if self.rank == 0 else None
        if plot is not None:
            lines.append(f"per-round rewards: {plot.with_suffix('.jsonl')}, plotted in {plot}")
        if self.failures:
            lines.append(f"{len(self.failures)} rollout image(s) could not be scored (reward NaN), e.g. {self.failures[0]}")
        return "\n".join(lines) or None


def plot_rounds(log: Path) -> Path | None:
    """Draw `rounds.jsonl` (mean reward with its spread, and the win rate against the base, per round) as
    `rounds.png` beside it; None when there is no log."""
    if not log.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [json.loads(line) for line in log.read_text().splitlines() if line]
    rounds = [e["round"] for e in entries]
    mean = np.array([e["reward_mean"] for e in entries])
    std = np.array([e["reward_std"] for e in entries])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(rounds, mean, label="mean reward")
    axes[0].fill_between(rounds, mean - std, mean + std, alpha=0.25, label="± 1 std")
    axes[0].set(xlabel="round", ylabel="reward", title="reward of the round's samples")
    axes[0].legend()
    wins = [(e["round"], e["win_rate_vs_base"]) for e in entries if e.get("win_rate_vs_base") is not None]
    if wins:
        axes[1].plot(*zip(*wins), color="tab:green")
        axes[1].axhline(0.5, color="grey", linestyle=":")
        axes[1].set(ylim=(0, 1))
    axes[1].set(xlabel="round", ylabel="share of prompts", title="per-prompt win rate against the base")
    fig.tight_layout()
    out = log.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


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
