#!/usr/bin/env python
"""Time a Diffusion-DPO training step of `diffalign train` against diffusers' research script.

    python scripts/benchmark_vs_diffusers.py --script PATH/TO/train_diffusion_dpo.py

diffusers' `examples/research_projects/diffusion_dpo/train_diffusion_dpo.py` is not shipped here: pass
a checkout's copy (it imports `wandb` at the top, so `pip install wandb` first). Both trainers run
as subprocesses on the same model (default: the embedded tiny model), the same Pick-a-Pic-schema
pairs, the same pairs per step, LoRA rank and resolution, with validation, checkpoints and trackers
off, on the CPU. Each runs twice, for `--short` and `--long` steps; the time per step is the
difference of the wall times divided by the difference of the step counts, so loading, start-up and
saving cancel out. diffalign runs with on-the-fly encoding (as the research script) and, when the
latent cache is built first, from the cache.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-3000:]}")
    return elapsed


def per_step(make_cmd, short: int, long: int, env: dict[str, str], repeats: int) -> float:
    """Seconds per step from the difference of a long and a short run (best of `repeats` each)."""
    t_short = min(timed(make_cmd(short), env) for _ in range(repeats))
    t_long = min(timed(make_cmd(long), env) for _ in range(repeats))
    return (t_long - t_short) / (long - short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", type=Path, required=True, help="diffusers' train_diffusion_dpo.py")
    parser.add_argument("--model", default=str(ROOT / "assets" / "tiny-sd"), help="model folder or hub id")
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo" / "pairs_train.parquet",
                        help="Pick-a-Pic-schema parquet file")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--short", type=int, default=10, help="steps of the short run")
    parser.add_argument("--long", type=int, default=110, help="steps of the long run")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each length (the fastest counts)")
    args = parser.parse_args()

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "pairs"
        data_dir.mkdir()
        (data_dir / "train.parquet").symlink_to(args.data.resolve())
        cache_dir = Path(tmp) / "cache"

        def theirs(steps: int) -> list[str]:
            return [sys.executable, str(args.script), "--pretrained_model_name_or_path", args.model,
                    "--dataset_name", str(data_dir), "--dataset_split_name", "train",
                    "--output_dir", str(Path(tmp) / "theirs"), "--resolution", str(args.resolution),
                    "--train_batch_size", str(args.pairs), "--max_train_steps", str(steps),
                    "--rank", str(args.rank), "--learning_rate", "1e-3", "--lr_warmup_steps", "0",
                    "--checkpointing_steps", "1000000", "--report_to", "tensorboard", "--seed", "0",
                    "--beta_dpo", "1000"]

        def ours(steps: int, cache: str) -> list[str]:
            return [sys.executable, "-m", "diffalign.cli.main", "train", "configs/demo/dpo.yaml",
                    f"model.pretrained={args.model}", f"data.path={args.data}", f"data.resolution={args.resolution}",
                    f"data.cache_dir={cache_dir}", f"data.cache={cache}", f"lora.rank={args.rank}",
                    f"lora.alpha={args.rank}", f"train.batch_size={args.pairs}", f"train.max_steps={steps}",
                    "train.warmup_steps=0", "train.checkpoint_every=0", "train.trackers=[]", "validation.every=0",
                    "train.cpu=true", f"train.output_dir={Path(tmp) / 'ours'}"]

        rows = [("diffusers research script", per_step(theirs, args.short, args.long, env, args.repeats))]
        rows.append(("diffalign train (encoding every step)",
                     per_step(lambda n: ours(n, "off"), args.short, args.long, env, args.repeats)))
        timed([sys.executable, "-m", "diffalign.cli.main", "cache", "configs/demo/dpo.yaml",
               f"model.pretrained={args.model}", f"data.path={args.data}", f"data.resolution={args.resolution}",
               f"data.cache_dir={cache_dir}"], env)
        rows.append(("diffalign train (latent cache)",
                     per_step(lambda n: ours(n, "require"), args.short, args.long, env, args.repeats)))

    base = rows[0][1]
    print(f"{args.pairs} pairs per step, {args.resolution} px, LoRA r={args.rank}, model {args.model}, "
          f"threads {os.cpu_count()}; steps {args.long} - {args.short}, best of {args.repeats}")
    for name, seconds in rows:
        print(f"  {name:40s} {seconds * 1000:7.1f} ms/step   {seconds / base:5.2f} x the research script")


if __name__ == "__main__":
    main()
