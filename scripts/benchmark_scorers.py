#!/usr/bin/env python
"""Throughput (images/s) and peak memory of the PickScore and HPS scorers at full ViT-H/14 size.

    python scripts/benchmark_scorers.py --device cuda --out scorers.jsonl
    python scripts/benchmark_scorers.py --device cpu --size tiny --images 8   # a smoke run

No weights are downloaded: random-weight replicas of the real architectures are saved in the
published layouts (`diffalign.rewards.replicas`) and loaded through the scorers' own code path, so
time and memory are those of the real models (the scores themselves mean nothing). Each run scores
`--images` random 512 x 512 images with one prompt each, after one warm-up batch, and reports
end-to-end images/s (preprocessing included), the preprocessing time alone and where it ran (PickScore
in fp16 both ways: PIL on the CPU, and the torchvision backend on the device from uint8 tensors, the
CUDA default), the model FLOPs per image (`torch.utils.flop_counter`) and, on a GPU, the MFU against the
matmul peak measured in the same run; for each dtype after fp32 it also reports how far its scores are
from the fp32 ones and how many exact ties it makes.
Attention backends: PickScore runs on transformers' CLIP with "sdpa", "eager" and, where the
package imports, "xformers"; HPS runs on open_clip, whose nn.MultiheadAttention uses PyTorch's SDPA.
Prints and writes one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffalign.rewards import build_scorer
from diffalign.rewards.base import to_uint8_tensors
from diffalign.rewards.hf_clip import processor_images
from diffalign.rewards.replicas import (
    save_clip_replica,
    save_hps_replica,
    save_open_clip_config,
)


def random_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    """`count` RGB noise images of size x size."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def have_xformers() -> bool:
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_flops(scorer, device: torch.device, batch_size: int) -> float:
    """FLOPs of the scorer's model per image (image tower and one text encoding each), counted by
    `torch.utils.flop_counter.FlopCounterMode` on one batch of 224 x 224 inputs."""
    from torch.utils.flop_counter import FlopCounterMode

    model = scorer.model
    visual = getattr(model, "visual", None)  # open_clip: its input dtype is the patch embedding's
    dtype = visual.conv1.weight.dtype if visual is not None and hasattr(visual, "conv1") else model.dtype
    pixels = torch.randn(batch_size, 3, 224, 224, device=device, dtype=dtype)
    tokens = torch.randint(0, 49000, (batch_size, 77), device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if hasattr(model, "get_image_features"):  # transformers CLIP
            model.get_image_features(pixel_values=pixels)
            model.get_text_features(input_ids=tokens)
        else:  # open_clip
            model.encode_image(pixels)
            model.encode_text(tokens)
    return counter.get_total_flops() / batch_size


def matmul_peak_tflops(device: torch.device, dtype: str) -> float | None:
    """The measured dense matmul throughput of the GPU in `dtype` (TFLOP/s), 8192^3, best of 20; None on CPU."""
    if device.type != "cuda":
        return None
    kind = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)
    a, b = (torch.randn(8192, 8192, device=device, dtype=kind) for _ in range(2))
    best = float("inf")
    for _ in range(23):
        start = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * 8192**3 / best / 1e12


def measure(name: str, options: dict, images: list[Image.Image], prompts: list[str], device: torch.device,
            batch_size: int, reference: torch.Tensor | None,
            peak_tflops: float | None = None) -> tuple[dict, torch.Tensor]:
    """Build one scorer, warm it up, time `score` over all images; figures and the scores."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    scorer = build_scorer(name, device=str(device), batch_size=batch_size, **options)
    load_s = time.perf_counter() - start
    scorer.score(images[:batch_size], prompts[:batch_size])
    sync(device)
    start = time.perf_counter()
    scores = scorer.score(images, prompts)
    sync(device)
    seconds = time.perf_counter() - start
    processor = getattr(scorer, "image_processor", None)
    sync(device)
    start = time.perf_counter()
    if processor is not None:  # what score() does before the model: on the device for the torchvision backend
        inputs = processor_images(processor, images)
        kwargs = {"device": device} if isinstance(inputs[0], torch.Tensor) else {}
        if kwargs:
            inputs = [t.to(device) for t in inputs]
        processor(images=inputs, return_tensors="pt", **kwargs)
    else:
        from diffalign.rewards.hps import hps_pixels

        [hps_pixels(t.to(device)) for t in to_uint8_tensors(images)]
    sync(device)
    preprocess_s = time.perf_counter() - start
    flops = model_flops(scorer, device, batch_size)
    result = {
        "scorer": name, "dtype": options.get("dtype", "fp32"), "attention": options.get("attention", "sdpa"),
        "preprocessing": ("PIL on the CPU" if processor is not None and not isinstance(inputs[0], torch.Tensor)
                          else f"on {device.type}"),
        "batch_size": batch_size, "images": len(images), "images_per_s": round(len(images) / seconds, 1),
        "seconds": round(seconds, 3), "preprocess_seconds": round(preprocess_s, 3), "load_seconds": round(load_s, 1),
        "model_gflop_per_image": round(flops / 1e9, 2),
        "mfu": round(flops * len(images) / seconds / 1e12 / peak_tflops, 4) if peak_tflops else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }
    if reference is not None:
        result["max_abs_diff_vs_fp32"] = float((scores - reference).abs().max())
        result["exact_ties"] = int(len(scores) - len(torch.unique(scores)))
        result["exact_ties_fp32"] = int(len(reference) - len(torch.unique(reference)))
    del scorer
    return result, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="vit-h-14", choices=["vit-h-14", "tiny"], help="replica size")
    parser.add_argument("--images", type=int, default=256, help="images scored per run")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], help="fp32 first: later dtypes are compared with it")
    parser.add_argument("--scorers", nargs="+", default=["pickscore", "hpsv2.1"], choices=["pickscore", "hpsv2.1"])
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    images = random_images(args.images, args.image_size)
    prompts = [f"a photo of object number {i}, highly detailed" for i in range(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        replicas: dict[str, dict] = {}
        if "pickscore" in args.scorers:
            folder = save_clip_replica(root / "pickscore", args.size, dtype=torch.float16)
            replicas["pickscore"] = dict(model=str(folder), processor=str(folder))
        if "hpsv2.1" in args.scorers:
            architecture, config = "ViT-H-14", None
            if args.size == "tiny":
                architecture, config = "tiny-hps-clip", save_open_clip_config(root / "tiny-hps-clip.json")
            checkpoint = save_hps_replica(root / "HPS_v2.1_compressed.pt", architecture, config)
            replicas["hpsv2.1"] = dict(checkpoint=str(checkpoint), architecture=architecture,
                                       architecture_config=str(config) if config else None)
        peaks = {dtype: matmul_peak_tflops(device, dtype) for dtype in args.dtypes}
        for name, options in replicas.items():
            backends = ["sdpa"] if name != "pickscore" else ["sdpa", "eager"] + (["xformers"] if have_xformers() else [])
            reference = None
            for dtype in args.dtypes:
                for attention in backends:
                    for pixels in (["pil", "torchvision"] if name == "pickscore" and dtype != "fp32" else ["auto"]):
                        if dtype == "fp32" and attention != "sdpa" or pixels == "pil" and attention != "sdpa":
                            continue
                        run_options = {**options, "dtype": dtype}
                        if name == "pickscore":
                            run_options.update(attention=attention, image_processor_backend=pixels)
                        try:
                            result, scores = measure(name, run_options, images, prompts, device, args.batch_size,
                                                     None if dtype == "fp32" else reference, peaks[dtype])
                        except Exception as error:  # report and go on: one failing backend must not hide the others
                            result, scores = {"scorer": name, "dtype": dtype, "attention": attention,
                                              "error": f"{type(error).__name__}: {error}"[:500]}, None
                        if dtype == "fp32" and scores is not None:
                            reference = scores
                        line = json.dumps(result)
                        print(line, flush=True)
                        if args.out:
                            with args.out.open("a") as f:
                                f.write(line + "\n")


if __name__ == "__main__":
    main()
