#!/usr/bin/env python
"""The training benchmark: `diffalign train` in several configurations against diffusers' research script.

    python scripts/benchmark_vs_diffusers.py --script PATH/TO/train_diffusion_dpo.py
    python scripts/benchmark_vs_diffusers.py --script ... --row "2 threads=train.cpu_threads=0" --row ...
    python scripts/benchmark_vs_diffusers.py --model FOLDER --device cuda --resolution 512 --pairs 4 \\
        --mixed-precision fp16 --script ...   # a full-size folder: scripts/benchmark_full_size.py --save FOLDER

diffusers' `examples/research_projects/diffusion_dpo/train_diffusion_dpo.py` (`train_diffusion_dpo_sdxl.py`
for SDXL) is not shipped here: pass a checkout's copy. It imports `wandb` at the top; trackers are off, so
where wandb is not installed an empty module of that name is put on the script's path. Every trainer runs
as a subprocess on the same model (default: the embedded tiny model), the same Pick-a-Pic-schema pairs,
pairs per step, LoRA rank and resolution, with validation, checkpoints and trackers off. Each
configuration runs for `--short` and `--long` steps, the runs of all configurations alternating (so a
slower spell of a shared machine hits them alike), `--repeats` times; the time per step is the median over
repeats of the difference of the wall times over the difference of the step counts, so process start-up,
model loading and saving cancel out, and what grows with the steps stays in: the reference pre-pass
computes exactly the run's micro-steps, and its folder is deleted before every run (except in the
"reused" row, which measures a beta or learning-rate sweep's later runs).

What does not grow with the steps is reported beside: each run's fixed seconds (start-up, loading,
`train.compile`'s compilation, saving: the short run less its steps; median and largest over repeats), and
building the latent cache (`diffalign cache`, a whole process, measured once). "All-in" adds both to the
step time amortised over `--run-steps` steps (default: one epoch of the data at this batch): the wall time
of such a run over its steps. PyTorch's compile cache is a fresh folder per benchmark
(`TORCHINDUCTOR_CACHE_DIR`): a compiled row runs once untimed first, and the first row of each
`train.compile` value compiles cold there, as a user's first run does: its fixed seconds and all-in are printed
apart; the timed runs find the cache.
Peak memory is each process's maximum resident set (CPU), or its peak CUDA allocation
(`torch.cuda.max_memory_allocated` at exit, both trainers). With `--device cuda`, MFU is the model FLOPs
of a Diffusion-DPO step (policy forward and backward, reference forward, counted by
`torch.utils.flop_counter` on the model's UNet with the LoRA) per second of a step,
over the bf16 (or fp16) matmul peak measured in the same run.

Default rows: the research script; diffalign encoding every step with a reference forward per step (the
research script's way); from the latent cache with a reference forward per step; from the cache with the
reference pre-pass (diffalign's default once the cache exists); and the same reusing a pre-pass (its first
run, untimed, computes it). `--rows` also offers `compiled` and `compiled-reused`: those two with
`train.compile=blocks`, and `compiled-unet-reused`: the reused one with `train.compile=unet`.
`--row "NAME=key=value,key=value"` adds a configuration of diffalign (overrides of the run config).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = "research script"
COMPILED = ("data.cache=require", "reference.precompute=on", "train.compile=blocks")


# Runs a training script or module, then writes the CUDA peak memory (if CUDA started) to the file in argv[1].
PEAK_WRAPPER = """
import atexit, json, runpy, sys
out = sys.argv[1]
def peak():
    import torch
    started = torch.cuda.is_available() and torch.cuda.is_initialized()
    gib = torch.cuda.max_memory_allocated() / 2**30 if started else None
    open(out, "w").write(json.dumps({"cuda_peak_gib": gib}))
atexit.register(peak)
if sys.argv[2] == "-m":
    sys.argv = [sys.argv[3], *sys.argv[4:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass
class Row:
    """One configuration and its measurements: wall seconds by step count, peak memory of its long runs."""

    name: str
    overrides: list[str] = field(default_factory=list)
    theirs: bool = False
    reuse_prepass: bool = False
    first: tuple[float, int] | None = None  # a compiled row's untimed first run: (wall seconds, steps)
    seconds: dict[int, list[float]] = field(default_factory=dict)
    peak: list[float] = field(default_factory=list)

    def per_step(self, short: int, long: int) -> float:
        """The median over repeats of (long run - short run) / (long - short): each repeat's two runs are close
        in time, so a slow spell of a shared machine shifts a repeat, not the median."""
        return statistics.median(self.repeats(short, long))

    def repeats(self, short: int, long: int) -> list[float]:
        """Each repeat's (long run - short run) / (long - short)."""
        return [(b - a) / (long - short) for a, b in zip(self.seconds[short], self.seconds[long])]

    def fixed(self, short: int, long: int) -> list[float]:
        """Each repeat's seconds that do not grow with the steps (start-up, loading, compilation, saving): its
        short run less `short` steps at that repeat's per-step time."""
        return [a - short * step for a, step in zip(self.seconds[short], self.repeats(short, long))]


def run_process(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, float | None]:
    """Run `cmd` (output into `log`); return its wall seconds, peak resident memory (MiB) and CUDA peak (GiB)."""
    peak_file = log.with_suffix(".peak.json")
    peak_file.unlink(missing_ok=True)
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", PEAK_WRAPPER, str(peak_file), *cmd], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")
    cuda = json.loads(peak_file.read_text())["cuda_peak_gib"] if peak_file.is_file() else None
    return elapsed, usage.ru_maxrss / 1024, cuda


def matmul_peak_tflops(dtype_name: str) -> float:
    """The measured dense matmul throughput of this GPU in `dtype_name` (TFLOP/s), 8192^3, best of 20."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * 8192**3 / best / 1e12


def step_flops(model: str, pairs: int, resolution: int, rank: int, device: str) -> float:
    """Model FLOPs of one Diffusion-DPO step on `pairs` pairs: the LoRA policy's forward and backward on the 2B
    images and the reference's forward, counted by `torch.utils.flop_counter.FlopCounterMode`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diffalign.config.core import load_config
    from diffalign.config.schema import RunConfig
    from diffalign.models.loading import load_parts
    from diffalign.training.setup import prepare_unet

    cfg = load_config(RunConfig, None, [f"model.pretrained={model}", f"lora.rank={rank}", f"lora.alpha={rank}"])
    parts = load_parts(cfg.model, encoders=False)
    unet = parts.unet.to(device)
    _, reference = prepare_unet(cfg, parts, "base", torch.device(device))
    c = unet.config
    n, side = 2 * pairs, resolution // parts.vae_scale_factor
    kwargs: dict = {"encoder_hidden_states": torch.randn(n, 77, c.cross_attention_dim, device=device)}
    if c.addition_embed_type == "text_time":
        pooled = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(n, pooled, device=device),
                                       "time_ids": torch.randn(n, 6, device=device)}
    sample = torch.randn(n, c.in_channels, side, side, device=device)
    t = torch.randint(0, 1000, (n,), device=device)
    with FlopCounterMode(display=False) as counter:
        unet(sample, t, **kwargs).sample.float().square().mean().backward()
        reference.predict(sample, t, **kwargs)
    return float(counter.get_total_flops())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", type=Path, required=True,
                        help="diffusers' train_diffusion_dpo.py (train_diffusion_dpo_sdxl.py for an SDXL model)")
    parser.add_argument("--model", default=str(ROOT / "assets" / "tiny-sd"), help="model folder or hub id")
    parser.add_argument("--data", type=Path, default=ROOT / "assets" / "demo" / "pairs_train.parquet",
                        help="Pick-a-Pic-schema parquet file")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                        help="both trainers; diffalign's frozen weights in the same dtype")
    parser.add_argument("--short", type=int, default=10, help="steps of the short run")
    parser.add_argument("--long", type=int, default=110, help="steps of the long run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each length (the median difference counts)")
    parser.add_argument("--run-steps", type=int, default=None,
                        help="steps the latent cache's build is amortised over (default: one epoch of the data)")
    parser.add_argument("--row", action="append", default=[], metavar="NAME=OVERRIDES",
                        help="an extra diffalign configuration: its name, '=', comma-separated key=value overrides")
    parser.add_argument("--rows", default="script,encode,cache,prepass,reused",
                        help="which default rows to run (script,encode,cache,prepass,reused,compiled,compiled-reused,"
                             "compiled-unet-reused)")
    parser.add_argument("--work", type=Path, default=None, help="keep the runs' folders and logs here")
    args = parser.parse_args()

    env = {**os.environ, "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    default_rows = {
        "script": Row(f"diffusers {SCRIPT}", theirs=True),
        "encode": Row("diffalign, encoding every step, reference forward",
                      ["data.cache=off", "reference.precompute=off"]),
        "cache": Row("diffalign, latent cache, reference forward", ["data.cache=require", "reference.precompute=off"]),
        "prepass": Row("diffalign, latent cache + reference pre-pass",
                       ["data.cache=require", "reference.precompute=on"]),
        "reused": Row("diffalign, latent cache + reused pre-pass (sweep)",
                      ["data.cache=require", "reference.precompute=on"], reuse_prepass=True),
        "compiled": Row("diffalign, latent cache + pre-pass, compiled", [*COMPILED]),
        "compiled-reused": Row("diffalign, latent cache + reused pre-pass, compiled", [*COMPILED], reuse_prepass=True),
        "compiled-unet-reused": Row("diffalign, latent cache + reused pre-pass, whole UNet compiled",
                                    [*COMPILED[:-1], "train.compile=unet"], reuse_prepass=True),
    }
    rows = [default_rows[name] for name in args.rows.split(",") if name]
    for spec in args.row:
        name, _, overrides = spec.partition("=")
        rows.append(Row(name, [o for o in overrides.split(",") if o]))
    work = Path(tempfile.mkdtemp(prefix="bench-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "pairs"
    data_dir.mkdir(exist_ok=True)
    if not (data_dir / "train.parquet").exists():
        (data_dir / "train.parquet").symlink_to(args.data.resolve())
    cache_dir = work / "cache"
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "inductor"))  # a compiled row's first run compiles cold
    try:
        import wandb  # noqa: F401
    except ImportError:  # the research script only imports it (trackers are off): an empty stand-in will do
        (work / "stub").mkdir(exist_ok=True)
        (work / "stub" / "wandb.py").write_text("")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(work / "stub"), env.get("PYTHONPATH", "")) if p)
    frozen = {"fp16": "float16", "bf16": "bfloat16"}.get(args.mixed_precision, "float32")
    common = [f"model.pretrained={args.model}", f"data.path={args.data}", f"data.resolution={args.resolution}",
              f"data.cache_dir={cache_dir}", f"model.frozen_dtype={frozen}"]

    def theirs(steps: int) -> list[str]:
        return [str(args.script), "--pretrained_model_name_or_path", args.model, "--dataset_name", str(data_dir),
                "--dataset_split_name", "train", "--output_dir", str(work / "theirs"),
                "--resolution", str(args.resolution), "--train_batch_size", str(args.pairs),
                "--max_train_steps", str(steps), "--rank", str(args.rank), "--learning_rate", "1e-3",
                "--lr_warmup_steps", "0", "--checkpointing_steps", "1000000", "--report_to", "tensorboard",
                "--seed", "0", "--beta_dpo", "1000", "--mixed_precision", args.mixed_precision]

    def ours(steps: int, overrides: list[str]) -> list[str]:
        return ["-m", "diffalign.cli.main", "train", "configs/demo/dpo.yaml", *common, f"lora.rank={args.rank}",
                f"lora.alpha={args.rank}", f"train.batch_size={args.pairs}", f"train.max_steps={steps}",
                "train.warmup_steps=0", "train.checkpoint_every=0", "train.trackers=[]", "validation.every=0",
                f"train.cpu={'true' if args.device == 'cpu' else 'false'}",
                f"train.mixed_precision={args.mixed_precision}",
                f"train.output_dir={work / 'ours'}", "train.overwrite=true", *overrides]  # each run replaces the last

    def clear_prepass() -> None:
        for folder in cache_dir.glob("reference-*"):
            shutil.rmtree(folder)

    started = time.perf_counter()
    def cache_key(row: Row) -> tuple[str, ...]:  # the overrides a latent cache depends on
        return tuple(o for o in row.overrides if o.startswith(("model.", "data.")) and not o.startswith("data.cache="))

    cache_s: dict[tuple[str, ...], float] = {}  # build seconds of each distinct cache the rows read
    for row in rows:
        if not row.theirs and "data.cache=off" not in row.overrides and cache_key(row) not in cache_s:
            cache_s[cache_key(row)], _, _ = run_process(
                ["-m", "diffalign.cli.main", "cache", "configs/demo/dpo.yaml", *common, *cache_key(row)],
                env, work / f"cache-{len(cache_s)}.log")
    kept = work / "kept-prepass"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir()
    compiled_cold: set[str] = set()  # the train.compile values a first run has compiled
    for index, row in enumerate(rows):  # untimed first runs
        compiled = next((o for o in row.overrides if o.startswith("train.compile=") and o != "train.compile=off"), None)
        if row.theirs or not (row.reuse_prepass or compiled):
            continue
        # a sweep's first run, whose pre-pass the row's timed runs reuse; a compiled row's first run fills
        # PyTorch's compile cache (a fresh folder), as a user's first run does, and its time is reported apart
        clear_prepass()
        steps = args.long if row.reuse_prepass else args.short
        seconds, _, _ = run_process(ours(steps, row.overrides), env, work / f"first-{index}.log")
        if compiled and compiled not in compiled_cold:  # the first to compile these graphs: a cold cache
            compiled_cold.add(compiled)
            row.first = (seconds, steps)
        if row.reuse_prepass:
            for folder in cache_dir.glob("reference-*"):
                shutil.copytree(folder, kept / folder.name, dirs_exist_ok=True)
    for repeat in range(args.repeats):
        for index, row in enumerate(rows):
            for steps in (args.short, args.long):
                if not row.theirs:
                    clear_prepass()
                    if row.reuse_prepass:
                        for folder in kept.glob("reference-*"):
                            shutil.copytree(folder, cache_dir / folder.name)
                log = work / f"{index}-{steps}-{repeat}.log"
                cmd = theirs(steps) if row.theirs else ours(steps, row.overrides)
                seconds, rss, cuda = run_process(cmd, env, log)
                row.seconds.setdefault(steps, []).append(seconds)
                if steps == args.long:
                    row.peak.append(cuda * 1024 if cuda is not None else rss)

    import pyarrow.parquet as pq

    labels = pq.read_table(args.data, columns=["label_0"])["label_0"].to_pylist()
    data_pairs = sum(label in (0, 1) for label in labels)  # ties are dropped
    run_steps = args.run_steps or -(-data_pairs // args.pairs)
    base = rows[0].per_step(args.short, args.long) if rows[0].theirs else None
    base_peak = max(rows[0].peak) if rows[0].theirs else None
    flops = peak_tflops = None
    if args.device == "cuda":
        flops = step_flops(args.model, args.pairs, args.resolution, args.rank, "cuda")
        peak_tflops = matmul_peak_tflops(args.mixed_precision)
    memory = "peak GPU memory" if args.device == "cuda" else "peak resident memory"
    print(f"{args.pairs} pairs per step, {args.resolution} px, LoRA r={args.rank}, model {args.model}, device "
          f"{args.device}, mixed precision {args.mixed_precision}, CPU cores {os.cpu_count()}; per step: "
          f"({args.long} - {args.short})-step wall times, median of {args.repeats}, runs alternating; "
          f"{time.perf_counter() - started:.0f} s in all")
    builds = ", ".join(f"{seconds:.1f} s" + (f" ({' '.join(key)})" if key else "") for key, seconds in cache_s.items())
    print(f"latent cache: built in {builds} (`diffalign cache`, a whole process); all-in adds it and each run's "
          f"fixed seconds (median) amortised over {run_steps} steps "
          f"({'--run-steps' if args.run_steps else f'one epoch of {data_pairs} decided pairs'})")
    if flops is not None:
        print(f"model FLOPs per step {flops / 1e12:.2f} TFLOP; measured {args.mixed_precision} matmul peak "
              f"{peak_tflops:.0f} TFLOP/s")
    def all_in(row: Row) -> float:
        cache = 0.0 if row.theirs or "data.cache=off" in row.overrides else cache_s[cache_key(row)]
        fixed = statistics.median(row.fixed(args.short, args.long))
        return row.per_step(args.short, args.long) + (cache + fixed) / run_steps

    base_all_in = all_in(rows[0]) if rows[0].theirs else None
    for row in rows:
        step = row.per_step(args.short, args.long)
        fixed = row.fixed(args.short, args.long)
        line = f"  {row.name:52s} {1000 * step:8.1f} ms/step  {args.pairs / step:7.2f} pairs/s"
        if base is not None:
            line += f"  {step / base:5.2f}x"
        line += f"  fixed {statistics.median(fixed):5.1f} s (max {max(fixed):5.1f})"
        line += f"  all-in {1000 * all_in(row):8.1f} ms/step"
        if base_all_in is not None:
            line += f" {all_in(row) / base_all_in:5.2f}x"
        if row.first is not None:  # a first run compiles cold: its fixed seconds instead of the median
            seconds, steps = row.first
            first_fixed = seconds - steps * step
            first_all_in = all_in(row) + (first_fixed - statistics.median(fixed)) / run_steps
            line += f" (first run: fixed {first_fixed:.1f} s, all-in {1000 * first_all_in:.1f} ms/step"
            line += f" {first_all_in / base_all_in:.2f}x)" if base_all_in is not None else ")"
        peak = max(row.peak)
        line += f"  {memory} {peak:7.0f} MiB"
        if base_peak is not None:
            line += f" {peak / base_peak:5.2f}x"
        if flops is not None and peak_tflops is not None:
            line += f"  MFU {flops / step / 1e12 / peak_tflops:6.1%}"
        if len(row.seconds[args.long]) > 1:
            spread = row.repeats(args.short, args.long)
            line += f"  (repeats {1000 * min(spread):.0f}-{1000 * max(spread):.0f} ms/step)"
        print(line, flush=True)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
