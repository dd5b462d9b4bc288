#!/usr/bin/env python
"""Time one optimizer step of the training loop for Diffusion-DPO (or other methods), and where the time goes.

    python scripts/benchmark_dpo_step.py                      # tiny demo model, 32 px, 4 pairs, Diffusion-DPO
    python scripts/benchmark_dpo_step.py model.pretrained=runwayml/stable-diffusion-v1-5 data.resolution=512
    python scripts/benchmark_dpo_step.py --objectives dpo,mapo,kto,dcpo data.path=runs/demo-captions

Any `key=value` override of the run config applies (the demo config is the default). The step is
the loop's own: load a batch, VAE-encode and text-encode it, noise it, the LoRA model's forward and
backward, the reference forward the method declared (adapters off; none for MaPO), the optimizer step.
With several `--objectives` each gets its own model and optimizer and their steps alternate in one process,
so the ratios to the first (printed) compare them under the same machine load. Prints the median and
quartiles over `--steps` timed steps after `--warmup` untimed ones, per phase ("forward" is the trained
model's, "reference" the reference's forward, timed apart). (DCPO needs a table with
caption_0/caption_1, e.g. `diffalign captions assets/demo/pairs_train.parquet --captioner shapes --out
runs/demo-captions`; any pairwise method reads it.)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.models.loading import load_parts
from diffalign.models.reference import compile_unet
from diffalign.threads import resolve_threads
from diffalign.training.encode import encode_batch
from diffalign.training.methods import TrainableModel, build_method
from diffalign.training.randomness import BatchRandom
from diffalign.training.setup import build_optimizer, check_compile, prepare_unet
from diffalign.training.sources.offline import build_dataset, build_loader

PHASES = ("data", "encode", "forward", "backward+opt")


class TimedReference:
    """The run's reference, adding the seconds of each of its forward passes to `seconds`."""

    def __init__(self, reference, sync: Callable[[], None]) -> None:
        self.reference, self.sync, self.seconds = reference, sync, 0.0

    def predict(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = self.reference.predict(*args, **kwargs)
        self.sync()
        self.seconds += time.perf_counter() - start
        return out


def step_runner(cfg: RunConfig, device: torch.device) -> Callable[[int], tuple[list[float], float]]:
    """A function running optimizer step `i` of `cfg`'s method and returning the phase boundaries' times and
    the seconds its reference forward took (inside the "forward" phase)."""
    torch.manual_seed(0)
    parts = load_parts(cfg.model)
    method = build_method(cfg.objective)
    check_compile(cfg, method, sharded=False)
    params, reference = prepare_unet(cfg, parts, method.reference, device)
    for module in (parts.unet, parts.vae, *parts.text_encoders):
        module.to(device)
    if cfg.train.compile != "off":  # as the loop does; the warm-up steps take the compilation
        compile_unet(parts.unet, cfg.train.compile)
    batches = iter(build_loader(cfg, build_dataset(cfg, method=method)))
    optimizer = build_optimizer(params, cfg, cfg.train.learning_rate)
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timed = None if reference is None else TimedReference(reference, sync)
    model = TrainableModel(parts.unet, timed, parts.noise_scheduler, parts.prediction_type)

    def run(step: int) -> tuple[list[float], float]:
        if timed is not None:
            timed.seconds = 0.0
        marks = [time.perf_counter()]
        batch = next(batches)
        rand = BatchRandom(cfg.train.seed, step, len(batch), device=device)
        marks.append(time.perf_counter())
        pairs = encode_batch(parts, batch, cfg.data.empty_prompt_prob, rand, cfg.data.resolution, device,
                             per_image_captions=method.per_image_captions)
        sync()
        marks.append(time.perf_counter())
        out = method(model, pairs, rand)
        sync()
        marks.append(time.perf_counter())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        marks.append(time.perf_counter())
        return marks, 0.0 if timed is None else timed.seconds

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    parser.add_argument("--objectives", default=None,
                        help="comma-separated objective names to time against each other (default: the config's)")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    base = [f"train.batch_size={args.pairs}", *args.overrides]
    names = args.objectives.split(",") if args.objectives else [load_config(RunConfig, None, base).objective.name]
    device = torch.device(args.device)
    configs = {name: load_config(RunConfig, None, [*base, f"objective.name={name}"]) for name in names}
    threads = resolve_threads(configs[names[0]].train.cpu_threads) if device.type == "cpu" else 0
    if threads:  # as the loop does on the CPU
        torch.set_num_threads(threads)
    runners = {name: step_runner(cfg, device) for name, cfg in configs.items()}
    timings: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in names}
    for step in range(args.warmup + args.steps):
        for name, run in runners.items():  # alternating: each method sees the same machine load
            marks, reference_s = run(step)
            if step >= args.warmup:
                for phase, a, b in zip(PHASES, marks, marks[1:]):
                    timings[name][phase].append(b - a - (reference_s if phase == "forward" else 0.0))
                    if phase == "forward":
                        timings[name]["reference"].append(reference_s)
                timings[name]["total"].append(marks[-1] - marks[0])

    cfg = configs[names[0]]
    print(f"optimizer step: {args.pairs} pairs, {cfg.data.resolution} px, model {cfg.model.pretrained}, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    first = statistics.median(timings[names[0]]["total"])
    for name in names:
        total = statistics.median(timings[name]["total"])
        ratio = "" if name == names[0] else f"   ({total / first:.2f}x {names[0]})"
        print(f"{name}: median step {1000 * total:.1f} ms{ratio}")
        for phase, values in timings[name].items():
            q1, med, q3 = statistics.quantiles(values, n=4)
            print(f"  {phase:13s} median {1000 * med:7.1f} ms   (quartiles {1000 * q1:.1f}-{1000 * q3:.1f} ms)")


if __name__ == "__main__":
    main()
