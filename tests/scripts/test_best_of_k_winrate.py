"""scripts/best_of_k_winrate.py: the best of K pool images against each base image, from a score CSV."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_best_of_k_against_hand_counts(tmp_path):
    # prompt 0: base seeds 0,1 score 0.5, 0.9; pool seeds 2,3 score 0.6, 0.8
    # best of 1 (0.6): beats 0.5, loses to 0.9; best of 2 (0.8): the same; prompt 1: pool always wins
    rows = [(0, 0, 0.5), (0, 1, 0.9), (0, 2, 0.6), (0, 3, 0.8), (1, 0, 0.1), (1, 1, 0.2), (1, 2, 0.3), (1, 3, 0.4)]
    path = tmp_path / "scores.csv"
    path.write_text("file,prompt,shapes,error\n" + "".join(f"/x/p{p:05d}-s{s}.png,a,{r},\n" for p, s, r in rows)
                    + "/x/p00002-s0.png,b,,boom\n")  # a failed image has no score and is left out
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "best_of_k_winrate.py"), str(path),
                          "--base-seeds", "0-1", "--pool-seeds", "2,3", "--k", "1,2"],
                         capture_output=True, text=True, check=True).stdout
    assert "2 prompts, base seeds [0, 1], pool seeds [2, 3]" in out
    # best of 1: wins 0.6>0.5, 0.3>0.1, 0.3>0.2; loses 0.6<0.9 -> 75 %; gain (0.1-0.3+0.2+0.1)/4 = 0.025
    assert "best of 1: win rate 75.0 %" in out and "mean gain +0.025" in out
    # best of 2: 0.8>0.5, 0.8<0.9, 0.4>0.1, 0.4>0.2 -> 75 %; gain (0.3-0.1+0.3+0.2)/4 = 0.175
    assert "best of 2: win rate 75.0 %" in out and "mean gain +0.175" in out
