"""Online rollouts as a batch source: each round the current policy samples images for a set of prompts,
keeping every DDIM step, a judge scores them, the method turns the scores into advantages and trains on the
round for `rollout.inner_epochs` passes.

The round as named phases (TRL's online trainers, ddpo-pytorch), each a piece of its own:

1. **prompts** (`round_prompts`): the round's prompts, a function of the round alone; each process takes a
   contiguous share.
2. **sample** (`round_sampling`): this process's trajectories of its prompts (shared or distinct initial noise).
3. **reward** (`judges`): a registered scorer or a person judges the images; optionally the base model samples
   the same prompts for the win rate against it (`base_comparison`).
4. **advantage**: the round is gathered from every process (so the statistics and the training order are the
   same on one process as on many), and the method turns the rewards into advantages
   (`Method.advantages`: per-prompt statistics, group normalisation; None for a method reading the rewards).
5. **train**: `rollout.inner_epochs` passes over the round's units (prompt groups or images, as the method
   declares), each in the sampled order or reshuffled (`rollout.shuffle`), in micro-batches of
   `train.batch_size` units per process, each micro-batch used for the method's `micro_steps_per_batch`
   micro-steps (`substep` 0, 1, ...). A round lasts units / (batch_size × processes) × substeps × inner_epochs
   micro-steps. When its training ends, its line goes to OUTPUT_DIR/rounds.jsonl (`round_log`).

With `rollout.monitor`, the reward-hacking monitor (`monitor`) evaluates the weights that sampled every few rounds
once the round is judged, and the final weights at the end (`summary`); when it warns and `rollout.monitor.stop` is
set, `batches` ends before that round trains, which ends the run as its last step would.

Resume: a checkpoint stores the round, its prompts and, when it falls inside a round, the gathered round (the
policy that sampled it is gone by then), so a resumed run trains on exactly what the uninterrupted run trained
on, from the same pass and micro-batch; at a round boundary the next round is sampled from the restored weights,
as it would have been.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from ...config.schema import RunConfig
from ...data.prompts import read_training_prompts
from ...rewards.weighted import check_weighted
from ..checkpoint import load_state_files, save_state_files
from ..step_log import pooled_means
from .base import BatchSource, SourceContext
from .base_comparison import base_win_rate
from .judges import HumanJudge, RewardJudge, judge_description, rollout_rewards
from .monitor import RewardMonitor, check_monitor
from .round_log import ROUNDS_DIR, ROUNDS_LOG, plot_rounds, write_round
from .round_scores import ROUND_SCORES_LOG, write_round_scores
from .round_prompts import epoch_order, micro_batch_units, process_share, prompt_order
from .round_sampling import sample_prompts
from .rollouts import Rollouts, gather_trajectories, trajectory_from_state, trajectory_state

ROUND_FILE = "rollouts"

__all__ = ["OnlineRollouts", "ROUNDS_DIR", "ROUNDS_LOG", "Rollouts", "prompt_order"]


class OnlineRollouts(BatchSource):
    """The online batch source (see the module docstring); `attach` gives it the UNet being trained."""

    @classmethod
    def build(cls, context: SourceContext) -> OnlineRollouts:
        """The rounds of the run's policy, for the run's method."""
        return cls(context)

    @classmethod
    def compile_conflict(cls, cfg: RunConfig) -> str | None:
        """Sampling and training passes would be two compiled graphs with different roundings."""
        del cfg
        return ("online methods compare the log-probabilities of the sampler's no-gradient passes with the training "
                "passes', which would be two compiled graphs with different roundings")

    @classmethod
    def check(cls, cfg: RunConfig) -> None:
        """Refuse a bad rollout.rewards mapping or an unknown scorer name, and a reward-hacking monitor that cannot
        run, before any model is loaded."""
        if cfg.rollout.preference == "reward":
            check_weighted(rollout_rewards(cfg.rollout))
        check_monitor(cfg)  # the reward-hacking monitor's scorers and prompts

    def __init__(self, context: SourceContext) -> None:
        cfg, parts = context.cfg, context.parts
        r, t = cfg.rollout, cfg.train
        self.method, self.kind = context.method, context.method.rollout_unit
        self.unit = "prompts" if self.kind == "prompt" else "images"
        per_round = r.prompts_per_round * (r.images_per_prompt if self.kind == "image" else 1)
        share = t.batch_size * context.world
        if per_round % share:
            what = (f"rollout.prompts_per_round={r.prompts_per_round}" if self.kind == "prompt" else
                    f"rollout.prompts_per_round x rollout.images_per_prompt = {per_round} images")
            raise ValueError(
                f"{what} must be a multiple of train.batch_size x processes = {share} (each micro-step takes "
                f"train.batch_size {self.unit} on every process)"
            )
        if r.prompts_per_round % context.world:
            raise ValueError(f"rollout.prompts_per_round={r.prompts_per_round} must be a multiple of the number of "
                             f"processes ({context.world}): each samples an equal share")
        if parts.vae is None or not parts.text_encoders:
            raise ValueError("online rollouts need the VAE and text encoders (the latent cache cannot stand in)")
        if r.preference == "human" and context.world > 1:
            raise ValueError("rollout.preference=human labels one round folder: run it on one process")
        self.cfg, self.parts, self.device = cfg, parts, context.device
        self.rank, self.world, self.gather = context.rank, context.world, context.gather
        self.accelerator = context.accelerator
        self.prompts = read_training_prompts(r.prompts)
        self.substeps = context.substeps
        self.micro_per_epoch = per_round // share * self.substeps
        self.micro_per_round = self.micro_per_epoch * r.inner_epochs
        self.out_dir = context.out_dir
        self.judge = (RewardJudge(rollout_rewards(r), context.device, r.sample_batch_size)
                      if r.preference == "reward" else HumanJudge(context.out_dir / ROUNDS_DIR))
        self.reward_weights = self.judge.weights  # each reward's weight in the sum, by name (none when people judge)
        self.monitor = (RewardMonitor(cfg, parts, context.device, self.rank, self.world, self.gather, self.out_dir,
                                      self.prompts) if r.monitor.scorers else None)
        self.policy: torch.nn.Module | None = None
        self.autocast: Callable[[], AbstractContextManager] = nullcontext
        self.current: Rollouts | None = None  # the whole round being trained (gathered from every process)
        self.entry: dict = {}  # the current round's log line, completed when its training ends
        self.observed: dict[str, list[float]] = {}  # the method's metrics over the current round's micro-steps
        self.ready_at = time.perf_counter()
        self.next_micro = 0  # the global micro-step after the last batch served

    def attach(self, policy: torch.nn.Module, reference: object = None,
               autocast: Callable[[], AbstractContextManager] = nullcontext) -> None:
        """The (unwrapped) UNet being trained, which samples each round, and the autocast to sample under."""
        del reference
        self.policy, self.autocast = policy, autocast

    def describe(self) -> str:
        r = self.cfg.rollout
        judge = judge_description(self.reward_weights, r.reward_normalisation)
        return (f"online rollouts: {len(self.prompts)} prompts from {r.prompts}; {r.prompts_per_round} prompts x "
                f"{r.images_per_prompt} images per round ({r.initial_noise} initial noise; DDIM {r.steps} steps, eta "
                f"{r.eta:g}, guidance {r.guidance:g}), judged by {judge}; trained in {self.unit}, "
                f"{r.inner_epochs} pass(es) per round{' reshuffled' if r.shuffle else ''}; "
                f"{self.micro_per_round} micro-step(s) per round"
                + (f"\n{self.monitor.describe()}" if self.monitor is not None else ""))

    def round_prompts(self, round_: int) -> list[int]:
        """The prompt indices of round `round_` (all processes')."""
        return prompt_order(len(self.prompts), self.cfg.train.seed, round_, self.cfg.rollout.prompts_per_round)

    # -- the phases of a round -------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_round(self, round_: int) -> Rollouts:
        """Prompts, sample, reward and advantage phases of round `round_` with the current policy: the whole
        round, on every process."""
        if self.policy is None:
            raise RuntimeError("OnlineRollouts.attach was not called before sampling")
        r = self.cfg.rollout
        everyone = [self.prompts[i] for i in self.round_prompts(round_)]
        positions = process_share(list(range(r.prompts_per_round)), self.rank, self.world)
        mine = [everyone[p] for p in positions]
        was_training = self.policy.training
        self.policy.eval()
        try:
            start = time.perf_counter()
            sample = lambda: sample_prompts(self.policy, self.parts, mine, positions, round_, r,  # noqa: E731
                                            self.cfg.train.seed, self.autocast)
            trajectories = sample()
            sampled = time.perf_counter()
            rewards, parts = self.judge.judge(round_, mine, trajectories)
            rewards, parts = rewards.to(self.device), {k: v.to(self.device) for k, v in parts.items()}
            win_rate = None
            if r.compare_base and r.preference == "reward" and self.cfg.lora.enabled:
                win_rate = base_win_rate(self.policy, sample, lambda t: self.judge.score(t)[0], rewards)
            judged = time.perf_counter()
        finally:
            self.policy.train(was_training)
        if self.world > 1:
            sample_prompts_all = [p for p in everyone for _ in range(r.images_per_prompt)]
            trajectories = gather_trajectories(trajectories, self.gather, sample_prompts_all)
            rewards = self.gather(rewards)
            parts = {k: self.gather(v) for k, v in parts.items()}
            if win_rate is not None:
                win_rate = float(self.gather(torch.tensor([win_rate], device=self.device)).nanmean())
        rollouts = Rollouts(round_, everyone, trajectories, rewards, reward_parts=parts,
                            reward_weights=self.reward_weights, normalisation=r.reward_normalisation)
        rollouts.advantages = self.method.advantages(rollouts)
        self.entry = round_entry(rollouts, win_rate, sampled - start, judged - sampled)
        if self.monitor is not None:  # the weights that sampled this round, beside its training reward
            self.entry.update(self.monitor.round_sampled(round_, self.entry["reward_mean"], self.step_at(
                round_ * self.micro_per_round), self.policy, self.autocast))
        self.observed = {}
        self.ready_at = time.perf_counter()
        return rollouts

    def end_round(self) -> None:
        """Write the line of the round whose training just ended (main process; every process calls it)."""
        if self.current is None or not self.entry:
            return
        entry = dict(self.entry, train_s=time.perf_counter() - self.ready_at)
        entry.update(self.round_means())
        if self.rank == 0:
            write_round(self.out_dir / ROUNDS_LOG, entry)
            if self.current.reward_parts:
                write_round_scores(self.out_dir / ROUND_SCORES_LOG, self.current)
        self.entry = {}

    def batches(self, micro: int) -> Iterator[Rollouts]:
        r, batch = self.cfg.rollout, self.cfg.train.batch_size
        while True:
            round_, within = divmod(micro, self.micro_per_round)
            epoch, within = divmod(within, self.micro_per_epoch)
            index, substep = divmod(within, self.substeps)
            if self.current is None or self.current.round != round_:
                self.end_round()
                self.current = self.sample_round(round_)
                if self.monitor is not None and self.monitor.stopping:  # rollout.monitor.stop: end the run here
                    self.end_round()
                    return
            order = epoch_order(self.current.units(self.kind), self.cfg.train.seed, round_, epoch, r.shuffle)
            chosen = self.current.take(micro_batch_units(order, index, batch, self.rank, self.world), self.kind)
            chosen.substep, chosen.epoch = substep, epoch
            self.next_micro = micro + 1
            yield chosen
            micro += 1

    def observe(self, metrics: dict[str, float]) -> None:
        """Keep the method's metrics of a micro-step for the round's log line."""
        for key, value in metrics.items():
            self.observed.setdefault(key, []).append(float(value))

    def round_means(self) -> dict[str, float]:
        """The means of the method's metrics over the round's micro-steps of every process that reported them (a
        collective with several processes: `step_log.pooled_means`)."""
        sums = {k: sum(v) for k, v in self.observed.items() if v}
        counts = {k: len(v) for k, v in self.observed.items() if v}
        return pooled_means(sums, counts, self.accelerator) if self.accelerator is not None else {
            k: sums[k] / counts[k] for k in sums}

    # -- checkpoints -----------------------------------------------------------------------------------------

    def save(self, folder: Path, rank: int) -> None:
        """Write the current round when the checkpoint falls inside it (gathered, so the main process's copy
        serves every process); at a round boundary the round's training is over: its log line is written. The
        monitor's history goes into every checkpoint."""
        if self.monitor is not None and rank == 0:
            self.monitor.save(folder)
        if self.current is None:
            return
        if self.next_micro % self.micro_per_round == 0:
            self.end_round()
            return
        if rank != 0:
            return
        c = self.current
        state = {"round": c.round, "prompt_indices": self.round_prompts(c.round), "prompts": c.prompts,
                 "rewards": c.rewards, "reward_parts": c.reward_parts, "advantages": c.advantages, "entry": self.entry,
                 "trajectories": trajectory_state(c.trajectories)}
        save_state_files(folder, f"{ROUND_FILE}-0", state)

    def restore(self, folder: Path, rank: int) -> None:
        """Read back the round a checkpoint was inside (none at a round boundary is needed; it is resampled)."""
        del rank
        if self.monitor is not None:
            self.monitor.restore(folder)
        if not (folder / f"{ROUND_FILE}-0.json").is_file():
            self.current = None
            return
        state = load_state_files(folder, f"{ROUND_FILE}-0", self.device)
        if state["prompt_indices"] != self.round_prompts(state["round"]):
            raise ValueError(
                f"{folder}: its round {state['round']} took other prompts than this run's order gives (another "
                f"rollout.prompts file or rollout.prompts_per_round?); start a new run"
            )
        self.current = Rollouts(state["round"], state["prompts"], trajectory_from_state(state["trajectories"]),
                                state["rewards"], advantages=state.get("advantages"),
                                reward_parts=state.get("reward_parts") or {}, reward_weights=self.reward_weights,
                                normalisation=self.cfg.rollout.reward_normalisation)
        self.entry, self.observed, self.ready_at = dict(state.get("entry") or {}), {}, time.perf_counter()

    def step_at(self, micro: int) -> int:
        """The optimizer steps done before global micro-step `micro`."""
        return micro // (self.cfg.train.grad_accum * self.substeps)

    def summary(self) -> str | None:
        if self.monitor is not None and self.entry and self.policy is not None:  # the final weights, in the last line
            self.entry.update(self.monitor.final(-(-self.next_micro // self.micro_per_round),
                                                 self.step_at(self.next_micro), self.policy, self.autocast))
        self.end_round()
        lines = []
        plot = plot_rounds(self.out_dir / ROUNDS_LOG) if self.rank == 0 else None
        if plot is not None:
            lines.append(f"per-round rewards: {plot.with_suffix('.jsonl')}, plotted in {plot}")
        if self.judge.failures:
            lines.append(f"{len(self.judge.failures)} rollout image(s) could not be scored (reward NaN), e.g. "
                         f"{self.judge.failures[0]}")
        return "\n".join(lines) or None


def round_entry(rollouts: Rollouts, win_rate: float | None, sample_s: float, reward_s: float) -> dict:
    """A round's log line before its training: reward and advantage statistics (with several rewards each one's
    mean and std too, `reward/NAME/mean` and `reward/NAME/std`), win rate, timings."""
    rewards = rollouts.rewards.float()
    finite = rewards[~rewards.isnan()]
    entry = {"round": rollouts.round, "reward_mean": float(finite.mean()) if finite.numel() else float("nan"),
             "reward_std": float(finite.std()) if finite.numel() > 1 else 0.0, "win_rate_vs_base": win_rate,
             "unscored": int(rewards.isnan().sum()), "sample_s": sample_s, "reward_s": reward_s}
    if len(rollouts.reward_parts) > 1:
        for name, part in rollouts.reward_parts.items():
            scored = part.float()[~part.isnan()]
            entry[f"reward/{name}/mean"] = float(scored.mean()) if scored.numel() else float("nan")
            entry[f"reward/{name}/std"] = float(scored.std()) if scored.numel() > 1 else 0.0
    if rollouts.advantages is not None:
        advantages = rollouts.advantages.float()
        entry.update(advantage_std=float(advantages.std()) if advantages.numel() > 1 else 0.0,
                     advantage_abs=float(advantages.abs().mean()))
    return entry
