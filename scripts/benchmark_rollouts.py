#!/usr/bin/env python
"""Online-round sampling against stock diffusers, and the sample / reward / train split of a run's rounds.

    python scripts/benchmark_rollouts.py                                  # tiny demo model on the CPU (seconds)
    python scripts/benchmark_rollouts.py --model sd15 --device cuda --dtype float16 --resolution 512 \\
        --steps 50 --images 8 --batch-size 8                             # SD1.5 architecture, random weights
    python scripts/benchmark_rollouts.py --round-run runs/sd15-ddpo      # also the split of that run's rounds
    python scripts/benchmark_rollouts.py --round-run runs/sd15-ddpo --no-sampling   # the split alone

Part 1, sampling. An online round samples with `diffalign.sampling.trajectory.sample_trajectory`: DDIM(eta)
with classifier-free guidance, keeping every latent and each step's log-probability, decoding the images.
Here it is timed against diffusers' `StableDiffusionPipeline` (`StableDiffusionXLPipeline` for an SDXL model)
with `DDIMScheduler.from_config(...)` drawing the same images: the same UNet, VAE and text encoder modules
(shared, not copied), prompts, seeds (`generator=[torch.Generator().manual_seed(s), ...]`), steps, eta,
guidance, batch size and dtype, `output_type="np"`. After `--warmup` untimed calls of each, the two run
alternately (A B A B ...) `--repeats` times, so a slow spell of a shared machine hits both; images/s is the
median over repeats, and the ratio ours / diffusers is checked against 0.9. Both must draw the same images:
at the benchmark's eta the last repeats' images are compared, and at eta 0 (deterministic) a batch is drawn
by each and compared; the largest difference is printed in uint8 levels (tolerance 2 in float32, 8 in
float16/bfloat16, where the pipeline rounds its initial noise to that dtype and ours keeps it in float32).

Part 2, the round split. `--round-run RUN_DIR` reads `RUN_DIR/rounds.jsonl` (one JSON object per round, as an
online run writes it) and prints the median over rounds of `sample_s`, `reward_s` and `train_s` in seconds and
as a share of their sum. The file is checked before anything is timed, so a wrong folder fails at once.

Models (`--model`): `demo` (assets/tiny-sd, the default), `tiny-sd15` / `tiny-sd21-v` / `tiny-sdxl` (the tiny
replicas of `diffalign.models.tiny`), `sd15` / `sd21-v` / `sdxl` (the real architectures with random weights,
built as scripts/benchmark_full_size.py builds them: nothing is downloaded), or a diffusers folder / hub id.
`--json OUT` writes every figure as one JSON object. On the CPU torch runs on `--threads` (default auto: the
cores other processes leave free when the command starts, as `diffalign` does), so a shared machine slows the
benchmark down in proportion rather than tens of times.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY_PRESETS = {"tiny-sd15": "sd15", "tiny-sd21-v": "sd21-v", "tiny-sdxl": "sdxl"}
FULL_PRESETS = ("sd15", "sd21-v", "sdxl")
ROUND_FIELDS = ("sample_s", "reward_s", "train_s")
ROUNDS_LOG = "rounds.jsonl"
TARGET_RATIO = 0.9
PROG = Path(__file__).name


# ---------------------------------------------------------------------------------------------------
# part 2: the round split of a run


@dataclass
class RoundSplit:
    """The median seconds of each phase of a run's rounds (over the `rounds` rounds that record all three)."""

    path: str
    rounds: int
    skipped_lines: list[int]
    sample_s: float
    reward_s: float
    train_s: float

    @property
    def total_s(self) -> float:
        """The sum of the three medians: a typical round's seconds."""
        return self.sample_s + self.reward_s + self.train_s

    def shares(self) -> dict[str, float]:
        """Each phase's median as a fraction of the sum of the medians."""
        total = self.total_s
        return {name: (getattr(self, name) / total if total > 0 else math.nan) for name in ROUND_FIELDS}


def read_round_split(run_dir: Path) -> RoundSplit:
    """The median sample / reward / train seconds of the rounds in RUN_DIR/rounds.jsonl.

    Rounds without the three fields (written before the loop recorded them, e.g. in a resumed older run) are
    left out and their line numbers kept; a file where no round has them, a line that is not a JSON object or
    a value that is not a number of seconds >= 0 is an error naming the file and line.
    """
    if not run_dir.is_dir():
        raise FileNotFoundError(f"--round-run {run_dir}: no such folder (give the output folder of an online run)")
    path = run_dir / ROUNDS_LOG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: --round-run takes the output folder of an online run (DDPO, GRPO, D3PO), "
            "which writes it after each round"
        )
    entries: list[tuple[int, dict]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number} is not JSON: {error}") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{path} line {number} is not a JSON object: {line[:80]}")
        entries.append((number, entry))
    if not entries:
        raise ValueError(f"{path} holds no rounds (the run stopped before its first round ended?)")
    kept, skipped = [], []
    for number, entry in entries:
        if not all(name in entry for name in ROUND_FIELDS):
            skipped.append(number)
            continue
        for name in ROUND_FIELDS:
            value = entry[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{path} line {number}: {name} is {value!r}, expected seconds (a number >= 0)")
        kept.append(entry)
    if not kept:
        keys = sorted({key for _, entry in entries for key in entry})
        raise ValueError(
            f"{path}: none of its {len(entries)} rounds records {', '.join(ROUND_FIELDS)} (its keys: "
            f"{', '.join(keys)}): the loop that wrote it does not time its rounds' phases"
        )
    medians = {name: statistics.median(float(entry[name]) for entry in kept) for name in ROUND_FIELDS}
    return RoundSplit(str(path), len(kept), skipped, **medians)


def print_round_split(split: RoundSplit) -> None:
    """The split as a small table: median seconds and share of each phase."""
    print(f"round split of {split.path}: median over {split.rounds} round(s)"
          + (f"; lines {split.skipped_lines} left out (no {', '.join(ROUND_FIELDS)})" if split.skipped_lines else ""))
    for name, share in split.shares().items():
        print(f"  {name.removesuffix('_s'):7s} {getattr(split, name):9.2f} s  {share:6.1%}")
    print(f"  {'round':7s} {split.total_s:9.2f} s  (the sum of the medians)", flush=True)


# ---------------------------------------------------------------------------------------------------
# part 1: sampling against the stock pipeline


def model_folder(model: str, work: Path) -> str:
    """A preset's pipeline folder (built under `work`), or `model` itself (a folder or hub id)."""
    if model == "demo":
        return str(ROOT / "assets" / "tiny-sd")
    if model in TINY_PRESETS:
        from diffalign.models.tiny import save_tiny_pipeline

        return str(save_tiny_pipeline(work / model, TINY_PRESETS[model]))
    if model in FULL_PRESETS:
        sys.path.insert(0, str(ROOT / "scripts"))
        from benchmark_full_size import build_pipeline

        return str(build_pipeline(model, work / model))
    return model


def read_prompts(count: int) -> list[str]:
    """`count` prompts: the animal names of the online presets (ddpo-pytorch's aesthetic task), cycled."""
    names = [line.strip() for line in (ROOT / "assets" / "prompts" / "animals.txt").read_text().splitlines()]
    names = [name for name in names if name]
    return [names[i % len(names)] for i in range(count)]


def chunks(count: int, size: int) -> list[range]:
    """The index ranges of `count` items in batches of `size`."""
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


def max_level_diff(a: np.ndarray, b: np.ndarray) -> int:
    """The largest difference of two uint8 image arrays, in levels (0-255)."""
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def timed(fn: Callable[[], np.ndarray], sync: Callable[[], None]) -> tuple[np.ndarray, float]:
    """`fn()`'s images and wall seconds, the device synchronised before and after."""
    sync()
    start = time.perf_counter()
    images = fn()
    sync()
    return images, time.perf_counter() - start


def load_model(model: str, device_name: str, dtype_name: str):
    """The model's parts (UNet, VAE, text encoders all in `dtype_name`) on the device, the UNet frozen."""
    import torch

    from diffalign.config.schema import ModelConfig
    from diffalign.models.loading import DTYPES, load_parts

    parts = load_parts(ModelConfig(pretrained=model, frozen_dtype=dtype_name), trainable_dtype=DTYPES[dtype_name])
    for module in (parts.unet, parts.vae, *parts.text_encoders):
        module.to(torch.device(device_name))
    parts.unet.eval().requires_grad_(False)
    return parts


def benchmark_sampling(args: argparse.Namespace, model: str, parts) -> dict:
    """Time `sample_trajectory` against the stock pipeline (see the module docstring); the figures as a dict."""
    import torch
    from diffusers import DDIMScheduler

    from diffalign.models.loading import DTYPES
    from diffalign.sampling.pipeline import pipeline_from_parts
    from diffalign.sampling.trajectory import default_resolution, sample_trajectory, to_uint8

    device, dtype_name = torch.device(args.device), args.dtype
    dtype = DTYPES[dtype_name]
    pipe = pipeline_from_parts(parts, parts.unet, DDIMScheduler.from_config(parts.noise_scheduler.config))
    resolution = args.resolution or default_resolution(parts, parts.unet)
    prompts, seeds = read_prompts(args.images), list(range(args.images))
    batches = chunks(args.images, args.batch_size)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def ours(eta: float, parts_of: list[range] = batches) -> np.ndarray:
        return np.concatenate([sample_trajectory(
            parts, parts.unet, [prompts[i] for i in part], [seeds[i] for i in part], steps=args.steps,
            guidance=args.guidance, eta=eta, resolution=resolution, decode=True,
        ).images for part in parts_of])

    def theirs(eta: float, parts_of: list[range] = batches) -> np.ndarray:
        return np.concatenate([to_uint8(pipe(
            [prompts[i] for i in part], num_inference_steps=args.steps, guidance_scale=args.guidance, eta=eta,
            height=resolution, width=resolution, generator=[torch.Generator().manual_seed(seeds[i]) for i in part],
            output_type="np",
        ).images) for part in parts_of])

    runs = {"ours": lambda: ours(args.eta), "diffusers": lambda: theirs(args.eta)}
    for _ in range(args.warmup):
        for fn in runs.values():
            timed(fn, sync)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    images: dict[str, np.ndarray] = {}
    for _ in range(args.repeats):  # alternating, so that a slow spell of the machine hits both
        for name, fn in runs.items():
            images[name], took = timed(fn, sync)
            seconds[name].append(took)
    rate = {name: args.images / statistics.median(values) for name, values in seconds.items()}
    tolerance = 2 if dtype == torch.float32 else 8
    same = {f"eta={args.eta:g}": max_level_diff(images["ours"], images["diffusers"])}
    if args.eta != 0:  # deterministic sampling: the claim "the same images" without any noise stream
        same["eta=0"] = max_level_diff(ours(0.0, batches[:1]), theirs(0.0, batches[:1]))
    return {
        "model": model, "family": parts.family, "pipeline": type(pipe).__name__, "device": device_name(device),
        "dtype": dtype_name, "resolution": resolution, "steps": args.steps, "eta": args.eta,
        "guidance": args.guidance, "images": args.images, "batch_size": args.batch_size, "repeats": args.repeats,
        "warmup": args.warmup, "torch_threads": torch.get_num_threads(),
        "ours_images_per_s": rate["ours"], "diffusers_images_per_s": rate["diffusers"],
        "ours_seconds": seconds["ours"], "diffusers_seconds": seconds["diffusers"],
        "ratio": rate["ours"] / rate["diffusers"],
        "paired_ratios": [b / a for a, b in zip(seconds["ours"], seconds["diffusers"])],
        "meets_target": rate["ours"] / rate["diffusers"] >= TARGET_RATIO,
        "max_level_diff": same, "tolerance_levels": tolerance,
        "same_images": all(diff <= tolerance for diff in same.values()),
    }


def device_name(device) -> str:
    """The GPU's name, or "cpu"."""
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def print_sampling(result: dict) -> None:
    """Part 1's table: settings, both rates, the ratio against the target, and the image comparisons."""
    r = result
    print(f"sampling: {r['images']} images in batches of {r['batch_size']}, {r['resolution']} px, {r['steps']} DDIM "
          f"steps, eta {r['eta']:g}, guidance {r['guidance']:g}, {r['dtype']}, {r['family']} model {r['model']}, "
          f"device {r['device']} ({r['torch_threads']} torch threads); median of {r['repeats']} alternating "
          f"repeats after {r['warmup']} warm-up")
    for name, label in (("ours", "diffalign sample_trajectory (log-probs)"), ("diffusers", r["pipeline"])):
        values = r[f"{name}_seconds"]
        print(f"  {label:40s} {r[f'{name}_images_per_s']:9.3f} images/s  "
              f"({min(values):.3f}-{max(values):.3f} s per run)")
    paired = r["paired_ratios"]
    print(f"  ratio ours/diffusers {r['ratio']:.3f} (repeats {min(paired):.3f}-{max(paired):.3f}): "
          f"{'meets' if r['meets_target'] else 'BELOW'} the target >= {TARGET_RATIO}")
    for setting, diff in r["max_level_diff"].items():
        verdict = "the same images" if diff <= r["tolerance_levels"] else "DIFFERENT images"
        print(f"  {setting}: max |ours - diffusers| = {diff} uint8 levels (tolerance {r['tolerance_levels']}): "
              f"{verdict}")
    print(flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo",
                        help="demo, tiny-sd15, tiny-sd21-v, tiny-sdxl, sd15, sd21-v, sdxl, or a folder / hub id")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                        help="the weights' dtype, both samplers (auto: float16 on CUDA, float32 on the CPU)")
    parser.add_argument("--images", type=int, default=4, help="images per timed run")
    parser.add_argument("--batch-size", type=int, default=None, help="images per sampler call (default: --images)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1: every step stochastic, as DDPO)")
    parser.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    parser.add_argument("--resolution", type=int, default=None, help="image size (default: the model's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each sampler, alternating")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of each sampler first")
    parser.add_argument("--threads", default="auto",
                        help="torch's CPU threads: N, or auto (the cores other processes leave free, as the CLI)")
    parser.add_argument("--round-run", type=Path, default=None, metavar="RUN_DIR",
                        help="also print the sample / reward / train split of RUN_DIR/rounds.jsonl")
    parser.add_argument("--no-sampling", action="store_true", help="only the round split (needs --round-run)")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write every figure to OUT as JSON")
    args = parser.parse_args()
    from diffalign.threads import command_started, cpu_threads

    command_started()  # before torch loads: the cores others use, and OpenMP's shorter spinning
    for name in ("images", "steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.warmup < 0 or args.eta < 0:
        parser.error("--warmup and --eta must be >= 0")
    args.batch_size = args.batch_size or args.images
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1 (got {args.batch_size})")
    if args.no_sampling and args.round_run is None:
        parser.error("--no-sampling leaves only the round split: give --round-run RUN_DIR")
    threads = args.threads if args.threads == "auto" else int(args.threads) if args.threads.isdigit() else None
    if threads is None:
        parser.error(f"--threads {args.threads}: expected a whole number of threads or auto")
    try:  # part 2's input is checked first: a wrong folder must not wait for the benchmark
        split = read_round_split(args.round_run) if args.round_run is not None else None
    except (FileNotFoundError, ValueError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        sys.exit(2)

    result: dict = {}
    if not args.no_sampling:
        import torch

        args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if args.dtype == "auto":
            args.dtype = "float16" if args.device.startswith("cuda") else "float32"
        work = Path(tempfile.mkdtemp(prefix="bench-rollouts-"))
        try:
            model = model_folder(args.model, work)
            try:
                parts = load_model(model, args.device, args.dtype)
            except (FileNotFoundError, ValueError) as error:  # a wrong --model: one line, not a traceback
                print(f"{PROG}: error: --model {args.model}: {error}", file=sys.stderr)
                sys.exit(2)
            with cpu_threads(threads if args.device == "cpu" else 0, "--threads"):
                result["sampling"] = benchmark_sampling(args, model, parts)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        print_sampling(result["sampling"])
    if split is not None:
        print_round_split(split)
        result["round_split"] = {**asdict(split), "total_s": split.total_s, "shares": split.shares()}
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
