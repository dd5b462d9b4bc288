#!/usr/bin/env python
"""Time one Diffusion-DPO optimizer step of the training loop, and where the time goes.

    python scripts/benchmark_dpo_step.py                      # tiny demo model, 32 px, 4 pairs
    python scripts/benchmark_dpo_step.py model.pretrained=runwayml/stable-diffusion-v1-5 data.resolution=512

Any `key=value` override of the run config applies (the demo config is the default). The step is
the loop's own: load a batch, VAE-encode and text-encode it, noise it, the LoRA model's forward and
backward, the adapter-disabled reference forward, the optimizer step. Prints the median and
quartiles over `--steps` timed steps after `--warmup` untimed ones, per phase.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.models.loading import load_parts
from diffalign.training.encode import encode_batch
from diffalign.training.setup import build_optimizer, prepare_unet
from diffalign.training.sources.offline import build_dataset, build_loader
from diffalign.training.methods import TrainableModel, build_method
from diffalign.training.randomness import BatchRandom


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    parser.add_argument("--pairs", type=int, default=4, help="pairs per step")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    cfg = load_config(RunConfig, None, [f"train.batch_size={args.pairs}", *args.overrides])
    device = torch.device(args.device)
    torch.manual_seed(0)
    parts = load_parts(cfg.model)
    method = build_method(cfg.objective)
    params, reference = prepare_unet(cfg, parts, method.reference, device)
    for module in (parts.unet, parts.vae, *parts.text_encoders):
        module.to(device)
    loader = build_loader(cfg, build_dataset(cfg))
    optimizer = build_optimizer(params, cfg, cfg.train.learning_rate)
    model = TrainableModel(parts.unet, reference, parts.noise_scheduler, parts.prediction_type)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings: dict[str, list[float]] = defaultdict(list)
    batches = iter(loader)
    for step in range(args.warmup + args.steps):
        marks = [time.perf_counter()]
        batch = next(batches)
        rand = BatchRandom(cfg.train.seed, step, len(batch), device=device)
        marks.append(time.perf_counter())
        pairs = encode_batch(parts, batch, cfg.data.empty_prompt_prob, rand, cfg.data.resolution, device)
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
        if step >= args.warmup:
            for name, a, b in zip(("data", "encode", "forward+ref", "backward+opt"), marks, marks[1:]):
                timings[name].append(b - a)
            timings["total"].append(marks[-1] - marks[0])

    print(f"Diffusion-DPO step: {args.pairs} pairs, {cfg.data.resolution} px, model {cfg.model.pretrained}, "
          f"device {device}, torch threads {torch.get_num_threads()}")
    for name, values in timings.items():
        q1, med, q3 = statistics.quantiles(values, n=4)
        print(f"  {name:13s} median {1000 * med:7.1f} ms   (quartiles {1000 * q1:.1f}-{1000 * q3:.1f} ms)")


if __name__ == "__main__":
    main()
