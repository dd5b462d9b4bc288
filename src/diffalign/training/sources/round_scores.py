"""The per-image scores of an online run: OUTPUT_DIR/round_scores.jsonl, one JSON line per image of every round.

A line holds the round, the image's prompt, its position in the round (`image`, prompt-major: prompt p's images
are p·I ... p·I + I − 1, as in the judge's failure messages), its reward (the weighted sum of the rewards) and
every reward's score (`parts`); a score a scorer could not give is null. The main process appends a round's lines
when the round's training ends, beside its line in rounds.jsonl; a resumed run first drops the lines of the rounds
it redoes (and a last line cut short by a killed process), as rounds.jsonl does.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ...files import atomic_write_text

if TYPE_CHECKING:
    from .rollouts import Rollouts

ROUND_SCORES_LOG = "round_scores.jsonl"
_TAIL_BLOCK = 1 << 16


def round_score_lines(rollouts: Rollouts) -> list[dict]:
    """One line per image of the (whole, gathered) round `rollouts`: round, prompt, image, reward and parts."""
    per = rollouts.images_per_prompt
    rewards = rollouts.rewards.detach().cpu().double().reshape(-1).tolist()
    parts = {name: part.detach().cpu().double().reshape(-1).tolist() for name, part in rollouts.reward_parts.items()}
    return [{"round": rollouts.round, "prompt": rollouts.prompts[i // per], "image": i, "reward": _value(reward),
             "parts": {name: _value(values[i]) for name, values in parts.items()}}
            for i, reward in enumerate(rewards)]


def write_round_scores(path: Path, rollouts: Rollouts) -> None:
    """Append the lines of round `rollouts.round` to the log at `path`, first dropping the lines of that round and
    later ones when the log holds any (a resumed run redoing them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    last = _last_round(path)
    if last is None or last >= rollouts.round:
        atomic_write_text(path, "".join(json.dumps(line) + "\n" for line in read_round_scores(path)
                                        if line["round"] < rollouts.round))
    with path.open("a", encoding="utf-8") as log:
        log.write("".join(json.dumps(line) + "\n" for line in round_score_lines(rollouts)))


def read_round_scores(path: Path) -> list[dict]:
    """The lines of the log at `path` (none when there is no log), leaving out a last line cut short by a killed
    process; any other line that is not an image's JSON object raises ValueError naming the file and the line."""
    if not path.is_file():
        return []
    numbered = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    lines = []
    for position, (number, text) in enumerate(numbered):
        try:
            line = json.loads(text)
        except json.JSONDecodeError as bad:
            if position == len(numbered) - 1:
                break
            raise ValueError(f"{path} line {number}: not valid JSON ({bad.msg} at column {bad.colno}); fix or "
                             "delete that line") from None
        if not isinstance(line, dict) or not isinstance(line.get("round"), int):
            raise ValueError(f"{path} line {number}: not an image's line (a JSON object with an integer \"round\"); "
                             "fix or delete that line")
        lines.append(line)
    return lines


def _last_round(path: Path) -> int | None:
    """The round of the log's last line, read from its end; None when there is no log, it is empty or its last
    line is not a round's (then the whole log is read and rewritten)."""
    if not path.is_file():
        return None
    with path.open("rb") as log:
        end = log.seek(0, os.SEEK_END)
        tail = b""
        while end > 0 and b"\n" not in tail.strip():
            start = max(0, end - _TAIL_BLOCK)
            log.seek(start)
            tail = log.read(end - start) + tail
            end = start
    text = tail.strip().rsplit(b"\n", 1)[-1]
    try:
        line = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return line["round"] if isinstance(line, dict) and isinstance(line.get("round"), int) else None


def _value(score: float) -> float | None:
    return None if math.isnan(score) else score
