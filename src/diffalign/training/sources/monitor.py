"""The reward-hacking monitor of an online run (`rollout.monitor`): gold scorers judge held-out prompts drawn by the
policy from fixed seeds, every few rounds, beside the training reward.

When: at the start of rounds 0, `every`, 2·`every`, ... (the weights that sample that round, once its rollouts
are judged, so the round's training reward counts) and once more at the end of the run (the final weights), unless
those weights were evaluated already. What: the first `max_prompts` held-out prompts × seeds 0..`seeds`-1, drawn
with the pipeline's deterministic DDIM sampler (eta 0, `steps`, `guidance`: `sampling.generate`, as the
validation grid), the same images for the same weights at every evaluation; each process draws a share of them and
the scores are gathered. The gold score is the weighted sum of the gold scorers' scores (`rewards.weighted`),
averaged over the images.

What it writes: the round's line of OUTPUT_DIR/rounds.jsonl gets `gold`, `gold/NAME` (each gold scorer's mean),
`monitor_reward` (the training reward the evaluation compares: the mean reward of the rounds sampled since the
evaluation before, this one's included), `gold_s`, `gold_unscored` and, when a hacking streak completes
(`hacking`), `monitor_warning` (also printed); the final evaluation goes under `final_evaluation` in the last
round's line. Whenever the gold score is the best so far, OUTPUT_DIR/best/ holds those weights as the final save
writes them (`saved_weights`), the run's config.yaml and best.json (round, step, gold score and its parts), written
at once by the main process (`files.atomic_save`). With `stop`, the run ends after the round whose evaluation
warned, before training on it, its weights saved as at any end. The evaluations are part of the online source's
checkpoints, so a resumed run warns and keeps best/ as the uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

from ...config.core import dump_yaml
from ...config.schema import RunConfig
from ...data.prompts import read_training_prompts
from ...files import atomic_save
from ...models.loading import DiffusionParts
from ...rewards.weighted import WeightedScorers, check_weighted, parse_weighted
from ...sampling.generate import generate
from ...sampling.pipeline import pipeline_from_parts
from ..checkpoint import CONFIG_FILE, load_state_files, save_state_files
from ..methods import method_class
from ..run_card import write_run_card
from ..saved_weights import BEST_DIR, BEST_FILE, write_weights
from ..state import full_trainable_state
from .hacking import Evaluation, best_evaluation, hacking_streak, warning_message

STATE_NAME = "monitor-0"  # in a checkpoint folder, beside the online source's rollouts-0
SCORERS_KEY = "rollout.monitor.scorers"
PROMPTS_KEY = "rollout.monitor.prompts"


def monitor_prompts(cfg: RunConfig) -> list[str]:
    """The held-out prompts the monitor draws: the first `max_prompts` of `rollout.monitor.prompts` (ValueError or
    FileNotFoundError naming that key when the file is missing or holds none)."""
    m = cfg.rollout.monitor
    return read_training_prompts(m.prompts, key=PROMPTS_KEY)[: m.max_prompts]


def check_monitor(cfg: RunConfig) -> None:
    """Refuse a monitor that cannot run, before any model loads: a bad gold-scorer mapping or name (naming
    `rollout.monitor.scorers.NAME`), or a missing or empty prompts file (naming `rollout.monitor.prompts`)."""
    if not cfg.rollout.monitor.scorers:
        return
    check_weighted(parse_weighted(cfg.rollout.monitor.scorers, SCORERS_KEY))
    monitor_prompts(cfg)


def held_out_note(prompts: Sequence[str], training: Sequence[str]) -> str | None:
    """A warning when monitor prompts are training prompts too (the gold score would not measure held-out
    prompts), else None."""
    shared, total = set(prompts) & set(training), len(set(prompts))
    if not shared:
        return None
    if len(shared) == total:
        what = f"all {total} {PROMPTS_KEY} prompts are" if total > 1 else f"the one {PROMPTS_KEY} prompt is"
    else:
        what = f"{len(shared)} of the {total} {PROMPTS_KEY} prompts {'is' if len(shared) == 1 else 'are'}"
    also = "also a training prompt" if what.endswith("is") else "also training prompts"
    return (f"warning: {what} {also} (rollout.prompts): the gold score does not measure held-out prompts alone; "
            f"give the monitor prompts the run does not train on")


def padded_share(count: int, rank: int, world: int) -> list[int]:
    """Process `rank`'s contiguous share of the indices 0..count-1, every share of equal length (the last
    index repeated where `count` is not a multiple of `world`), so the shares' gather holds the indices in
    order followed by repeats."""
    share = -(-count // world)
    return [min(i, count - 1) for i in range(rank * share, (rank + 1) * share)]


class RewardMonitor:
    """The monitor of one run (see the module docstring); every process holds one and calls it alike."""

    def __init__(self, cfg: RunConfig, parts: DiffusionParts, device: torch.device, rank: int, world: int,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None, out_dir: Path,
                 training_prompts: Sequence[str]) -> None:
        m = cfg.rollout.monitor
        self.cfg, self.parts, self.device, self.out_dir = cfg, parts, device, Path(out_dir)
        self.rank, self.world, self.gather = rank, world, gather
        self.prompts = monitor_prompts(cfg)
        self.note = held_out_note(self.prompts, training_prompts)
        self.scorers = WeightedScorers.build(parse_weighted(m.scorers, SCORERS_KEY), device=str(device))
        self.evaluations: list[Evaluation] = []
        self.pending: list[float] = []  # the training reward of each round sampled since the last evaluation
        self.stopping = False  # an evaluation warned and rollout.monitor.stop is set
        self.failures: list[str] = []  # why this process's held-out images of the last evaluation went unscored

    def describe(self) -> str:
        """The monitor's line (and its held-out warning) for the start of the run."""
        m = self.cfg.rollout.monitor
        weights = " + ".join(f"{e.weight:g} x {e.name}" for e in self.scorers.entries)
        text = (f"reward-hacking monitor: gold score {weights} on {len(self.prompts)} prompts of {m.prompts} x "
                f"{m.seeds} seed(s) (DDIM {m.steps} steps, eta 0, guidance {m.guidance:g}) at rounds 0, {m.every}, "
                f"{2 * m.every}, ... and at the end; warns after {m.patience} evaluation(s) in a row of rising reward "
                f"and falling gold score{', then stops' if m.stop else ''}"
                f"{f'; the best weights go to {self.out_dir / BEST_DIR}' if m.keep_best else ''}")
        return text + (f"\n{self.note}" if self.note else "")

    # -- evaluations -------------------------------------------------------------------------------------------

    def round_sampled(self, round_: int, reward: float, step: int, policy: torch.nn.Module,
                      autocast: Callable[[], AbstractContextManager] = nullcontext) -> dict:
        """Note round `round_`'s mean training reward; at an evaluation round evaluate the weights that sampled it
        (at optimizer step `step`) and return the fields for the round's log line (else {})."""
        self.pending.append(float(reward))
        if round_ % self.cfg.rollout.monitor.every:
            return {}
        fields = self.evaluate(round_, step, policy, autocast, final=False)
        self.stopping = "monitor_warning" in fields and self.cfg.rollout.monitor.stop
        return fields

    def final(self, round_: int, step: int, policy: torch.nn.Module,
              autocast: Callable[[], AbstractContextManager] = nullcontext) -> dict:
        """Evaluate the final weights (after `round_` rounds, at step `step`) unless the last evaluation saw them;
        the fields for the last round's log line under `final_evaluation` (or {})."""
        if self.stopping or (self.evaluations and self.evaluations[-1].step == step):
            return {}
        return {"final_evaluation": self.evaluate(round_, step, policy, autocast, final=True)}

    def evaluate(self, round_: int, step: int, policy: torch.nn.Module,
                 autocast: Callable[[], AbstractContextManager], final: bool) -> dict:
        """Draw and judge the held-out images, add the evaluation to the history, keep best/ and warn; the
        evaluation's log fields."""
        start = time.perf_counter()
        gold, parts, unscored = self.gold_scores(policy, autocast)
        rewards = [r for r in self.pending if not math.isnan(r)]
        reward = sum(rewards) / len(rewards) if rewards else float("nan")
        self.pending = []
        evaluation = Evaluation(round_, step, reward, gold, parts, final)
        self.evaluations.append(evaluation)
        fields: dict = {"gold": gold, **{f"gold/{name}": value for name, value in parts.items()},
                        "monitor_reward": reward, "gold_unscored": unscored}
        if final:
            fields = {"round": round_, "step": step, **fields}
        if unscored and self.rank == 0:
            example = f", e.g. {self.failures[0]}" if self.failures else ""
            drawn = len(self.prompts) * self.cfg.rollout.monitor.seeds
            print(f"reward-hacking monitor, round {round_}: {unscored} of {drawn} held-out images could not be scored"
                  f"{example}; the gold score leaves them out", flush=True)
        m = self.cfg.rollout.monitor
        if m.keep_best and best_evaluation(self.evaluations) == len(self.evaluations) - 1:
            self.keep_best(evaluation, policy)
        streak = hacking_streak(self.evaluations, m.patience)
        if streak is not None:
            best_dir = str(self.out_dir / BEST_DIR) + "/" if m.keep_best else None
            message = warning_message(self.evaluations, streak, best_dir, m.stop and not final)
            fields["monitor_warning"] = message
            if self.rank == 0:
                print(message, flush=True)
        fields["gold_s"] = time.perf_counter() - start
        return fields

    @torch.no_grad()
    def gold_scores(self, policy: torch.nn.Module, autocast: Callable[[], AbstractContextManager] = nullcontext
                    ) -> tuple[float, dict[str, float], int]:
        """The gold score of `policy` (the mean over the held-out images of the scorers' weighted sum), each
        gold scorer's mean score, and how many images could not be scored (left out of the means)."""
        m, r = self.cfg.rollout.monitor, self.cfg.rollout
        items = [(prompt, seed) for prompt in self.prompts for seed in range(m.seeds)]
        mine = [items[i] for i in padded_share(len(items), self.rank, self.world)]
        prompts, seeds = [p for p, _ in mine], [s for _, s in mine]
        was_training = policy.training
        policy.eval()
        try:
            with autocast():
                images = generate(pipeline_from_parts(self.parts, policy), prompts, seeds, m.steps, m.guidance,
                                  r.resolution, batch_size=r.sample_batch_size)
        finally:
            policy.train(was_training)
        scores = self.scorers.score(images, prompts, batch_size=r.sample_batch_size)
        self.failures = [f"image {f.index} ({prompts[f.index]!r}): {f.reason}" for f in scores.failures]
        table = torch.stack([scores.total, *scores.parts.values()], dim=1).to(self.device, torch.float64)
        if self.world > 1 and self.gather is not None:
            table = self.gather(table)
        table = table[: len(items)].cpu()
        means = [float(column.nanmean()) for column in table.unbind(1)]
        return means[0], dict(zip(scores.parts, means[1:])), int(table[:, 0].isnan().sum())

    def keep_best(self, evaluation: Evaluation, policy: torch.nn.Module) -> Path | None:
        """Write OUTPUT_DIR/best/ (the weights as the final save writes them, config.yaml and best.json) at once;
        every process enters (the weights are gathered from shards), the main process writes."""
        state_dict, _ = full_trainable_state(policy)
        if self.rank != 0:
            return None
        record = {**evaluation.as_state(), "scorers": {e.name: e.weight for e in self.scorers.entries}}

        def write(tmp: Path) -> Path:
            folder = tmp / BEST_DIR
            folder.mkdir()
            write_weights(folder, policy, state_dict, self.parts.family, self.cfg.lora.enabled)
            (folder / CONFIG_FILE).write_text(dump_yaml(self.cfg))
            (folder / BEST_FILE).write_text(json.dumps(record, indent=2) + "\n")
            write_run_card(folder, self.cfg, self.parts.family, evaluation.step, self.world, self.device,
                           f"online rollouts on the prompts of {self.cfg.rollout.prompts}",
                           "prompts" if method_class(self.cfg.objective.name).rollout_unit == "prompt" else "images",
                           note=f"The reward-hacking monitor's best weights: gold score {evaluation.gold:.4g} at round "
                                f"{evaluation.round}, step {evaluation.step} ({BEST_FILE}).",
                           shown=self.out_dir / BEST_DIR)
            return folder

        return atomic_save(self.out_dir, write)

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """Write the history (the evaluations and the training rewards of the rounds since the last one) into a
        checkpoint folder (main process)."""
        state = {"evaluations": [e.as_state() for e in self.evaluations], "pending": list(self.pending)}
        save_state_files(folder, STATE_NAME, state)

    def restore(self, folder: Path) -> None:
        """Read back what `save` wrote (every process); a checkpoint of a run without the monitor starts an empty
        history."""
        self.stopping = False
        if not (folder / f"{STATE_NAME}.json").is_file():
            self.evaluations, self.pending = [], []
            return
        state = load_state_files(folder, STATE_NAME)
        self.evaluations = [Evaluation.from_state(e) for e in state["evaluations"]]
        self.pending = [float(r) for r in state["pending"]]
