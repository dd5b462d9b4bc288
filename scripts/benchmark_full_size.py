#!/usr/bin/env python
"""Step time and peak GPU memory of the training loop on full-size SD1.5 / SD2.1 / SDXL architectures.

    python scripts/benchmark_full_size.py --family sdxl --resolution 1024 --pairs 1 --mixed-precision bf16

No weights are downloaded: the UNet, VAE and text encoder(s) are built from the published
architectures with random weights (so losses mean nothing, but time and memory are those of the
real models), saved as a diffusers folder and trained through `diffalign.training.loop.train`
on the demo pairs (resized to the resolution). The tokenizer is the embedded model's CLIP BPE.
Prints one JSON line per run: median step time, peak memory, the first and last loss, and on a GPU the
MFU (a DPO step's model FLOPs, counted as `benchmark_vs_diffusers.py` counts them, over the measured
matmul peak of the run's precision).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.models.loading import DiffusionParts
from diffalign.models.tiny import SCHEDULER_CONFIG
from diffalign.paths import PROJECT_ROOT
from diffalign.sampling.pipeline import pipeline_from_parts
from diffalign.training.loop import train

CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
OPEN_CLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   projection_dim=1024, hidden_act="gelu")
OPEN_CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      projection_dim=1280, hidden_act="gelu")


def text_encoder(spec: dict, with_projection: bool = False):
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **spec)
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def vae(scaling: float) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2, scaling_factor=scaling,
    )


def unet(family: str) -> UNet2DConditionModel:
    if family == "sdxl":
        return UNet2DConditionModel(
            sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
    sd21 = family == "sd21-v"
    return UNet2DConditionModel(
        sample_size=96 if sd21 else 64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024 if sd21 else 768, attention_head_dim=(5, 10, 20, 20) if sd21 else 8,
        use_linear_projection=sd21,
    )


def build_pipeline(family: str, folder: Path) -> Path:
    """Save a random-weight pipeline of the family's real architecture (fp16 files) to `folder`."""
    tokenizer = CLIPTokenizer.from_pretrained(PROJECT_ROOT / "assets" / "tiny-sd", subfolder="tokenizer")
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG, prediction_type="v_prediction" if family == "sd21-v" else "epsilon")
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        if family == "sdxl":
            tokenizer_2 = CLIPTokenizer.from_pretrained(
                PROJECT_ROOT / "assets/tiny-sd", subfolder="tokenizer", pad_token="!"
            )
            encoders = [text_encoder(CLIP_L), text_encoder(OPEN_CLIP_BIGG, with_projection=True)]
            parts = DiffusionParts(unet(family), vae(0.13025), encoders, [tokenizer, tokenizer_2], scheduler, "sdxl",
                                   "epsilon", "random")
        else:
            encoders = [text_encoder(OPEN_CLIP_H if family == "sd21-v" else CLIP_L)]
            parts = DiffusionParts(unet(family), vae(0.18215), encoders, [tokenizer], scheduler, "sd",
                                   scheduler.config.prediction_type, "random")
    pipe = pipeline_from_parts(parts, parts.unet, scheduler)
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=["sd15", "sd21-v", "sdxl"], default="sd15")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 / 768 / 1024")
    parser.add_argument("--pairs", type=int, default=2, help="pairs per step")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps (the first 2 are not timed)")
    parser.add_argument("--mixed-precision", default="bf16", choices=["no", "fp16", "bf16"])
    parser.add_argument("--frozen-dtype", default=None, help="default: float16 under fp16, else bfloat16")
    parser.add_argument("--save", type=Path, default=None,
                        help="only build the family's random-weight pipeline into this folder (for other benchmarks)")
    parser.add_argument("overrides", nargs="*", help="extra key=value run-config overrides")
    args = parser.parse_args()
    if args.save is not None:
        print(build_pipeline(args.family, args.save))
        return

    resolution = args.resolution or {"sd15": 512, "sd21-v": 768, "sdxl": 1024}[args.family]
    frozen = args.frozen_dtype or ("float16" if args.mixed_precision == "fp16" else "bfloat16")
    tmp = Path(tempfile.mkdtemp(prefix=f"full-{args.family}-"))
    try:
        started = time.time()
        model = build_pipeline(args.family, tmp / "model")
        built = time.time() - started
        cfg = load_config(RunConfig, None, [
            f"model.pretrained={model}", f"model.frozen_dtype={frozen}", f"data.resolution={resolution}",
            f"train.batch_size={args.pairs}", f"train.max_steps={args.steps}", "train.log_every=1",
            f"train.mixed_precision={args.mixed_precision}", f"train.output_dir={tmp / 'run'}",
            "train.learning_rate=1e-5", "objective.beta=5000", *args.overrides,
        ])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        result = train(cfg)
        log = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
        step_times = [b["seconds"] - a["seconds"] for a, b in zip(log[1:], log[2:])]
        mfu = None
        if torch.cuda.is_available() and step_times:  # model FLOPs of a DPO step over the measured matmul peak
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from benchmark_vs_diffusers import matmul_peak_tflops, step_flops

            flops = step_flops(str(model), args.pairs, resolution, cfg.lora.rank, "cuda")
            peak = matmul_peak_tflops(args.mixed_precision)
            mfu = round(flops / statistics.median(step_times) / 1e12 / peak, 4)
        print(json.dumps({
            "family": args.family, "resolution": resolution, "pairs": args.pairs, "mfu": mfu,
            "mixed_precision": args.mixed_precision, "frozen_dtype": frozen, "overrides": args.overrides,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "median_step_s": statistics.median(step_times) if step_times else None,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
            "first_loss": log[0]["loss"], "last_loss": log[-1]["loss"], "build_s": built,
        }), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
