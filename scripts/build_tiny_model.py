#!/usr/bin/env python
"""Train the embedded tiny text-to-image model of the shapes world from scratch, on CPU.

    python scripts/build_tiny_model.py --out assets/tiny-sd

Stages (deterministic for a given seed, torch build and thread count):
1. render a pool of captioned 32x32 images of the shapes world (`diffalign.synthetic`);
2. train a x4 AutoencoderKL on them and set its `scaling_factor` to 1/std of the latents;
3. encode the pool once, then train the UNet jointly with a tiny CLIP text encoder (real CLIP BPE
   tokenizer) on epsilon-prediction with the SD noise schedule and 10 % caption dropout (for CFG);
4. every `--eval-every` steps, sample held-out captions (DDIM 20 steps, CFG 5) and print how often
   the samples show the asked-for attributes, judged by the rule-based `shapes` reward;
5. save a standard diffusers folder that stock `StableDiffusionPipeline.from_pretrained` loads.

The learning rate is constant after warm-up, so a run with fewer `--unet-steps` is exactly the
prefix of a longer one: the default step count was chosen from the printed curve, where the model
follows captions clearly but imperfectly (room for alignment to show).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, StableDiffusionPipeline

from diffalign.models.tiny import (
    SCHEDULER_CONFIG,
    clip_bpe_tokenizer,
    tiny_scheduler,
    tiny_text_encoder,
    tiny_unet,
    tiny_vae,
)
from diffalign.rewards.shapes import ShapesReward, attribute_scores, classify, measure
from diffalign.synthetic.domain import SceneSpec, is_held_out, random_spec
from diffalign.synthetic.render import render

ATTRIBUTES = ("background", "colour", "shape", "size")


def render_pool(n: int, seed: int, train_only: bool = True) -> tuple[torch.Tensor, list[str]]:
    """`n` rendered images in [-1, 1], (n, 3, 32, 32), and their captions (held-out captions excluded)."""
    rng = random.Random(seed)
    images, captions = [], []
    while len(images) < n:
        spec = random_spec(rng)
        if train_only and is_held_out(spec):
            continue
        image, _ = render(spec, rng)
        images.append(image)
        captions.append(spec.caption)
    array = np.stack(images).astype(np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), captions


def train_vae(images: torch.Tensor, steps: int, batch: int, seed: int) -> torch.nn.Module:
    """Fit the tiny VAE: MSE reconstruction + 1e-6 KL, AdamW 1e-3."""
    vae = tiny_vae(seed=seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(1, steps + 1):
        x = images[torch.randint(len(images), (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps:
            print(f"  vae step {step:5d}/{steps}  loss {loss.item():.5f}  {time.time() - start:5.0f}s", flush=True)
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_pool(vae: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every pool image."""
    means, stds = [], []
    for chunk in images.split(512):
        posterior = vae.encode(chunk).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def eval_specs(n: int, seed: int) -> list[SceneSpec]:
    """`n` held-out specs, fixed by the seed, with a size named two times in three."""
    rng = random.Random(seed + 1)
    specs: list[SceneSpec] = []
    while len(specs) < n:
        spec = random_spec(rng)
        if is_held_out(spec):
            specs.append(spec)
    return specs


@torch.no_grad()
def evaluate(pipe: StableDiffusionPipeline, specs: list[SceneSpec], seed: int, guidance: float) -> dict[str, float]:
    """Attribute accuracy (nearest palette colour, best-fitting shape, ...) and mean reward of samples."""
    captions = [s.caption for s in specs]
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(specs))]
    images = pipe(
        captions,
        num_inference_steps=20,
        guidance_scale=guidance,
        height=32,
        width=32,
        generator=generators,
        output_type="np",
    ).images
    hits = {a: [] for a in ATTRIBUTES}
    rewards = []
    for image, spec in zip(images, specs):
        m = measure(image.astype(np.float64))
        found = classify(m)
        scores = attribute_scores(m, spec)
        rewards.append(np.mean(list(scores.values())))
        for attribute in ATTRIBUTES:
            wanted = getattr(spec, attribute)
            if wanted is not None:
                hits[attribute].append(found[attribute] == wanted)
    result = {a: float(np.mean(v)) for a, v in hits.items() if v}
    result["all"] = float(
        np.mean([all(classify(measure(i.astype(np.float64)))[a] == getattr(s, a) for a in ATTRIBUTES if getattr(s, a)) for i, s in zip(images, specs)])
    )
    result["reward"] = float(np.mean(rewards))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("assets/tiny-sd"), help="output pipeline folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and training")
    parser.add_argument("--pool", type=int, default=16384, help="number of rendered training images")
    parser.add_argument("--vae-steps", type=int, default=800, help="VAE optimizer steps (batch 64)")
    parser.add_argument("--unet-steps", type=int, default=2000, help="UNet + text encoder steps (batch 64)")
    parser.add_argument("--batch", type=int, default=64, help="batch size of both stages")
    parser.add_argument("--lr", type=float, default=1e-3, help="UNet/text-encoder learning rate")
    parser.add_argument("--eval-every", type=int, default=400, help="evaluate every N UNet steps (0: only at the end)")
    parser.add_argument("--eval-prompts", type=int, default=96, help="held-out captions per evaluation")
    parser.add_argument("--guidance", type=float, default=5.0, help="CFG scale of the evaluation samples")
    parser.add_argument("--snapshots", type=Path, default=None, help="also save the pipeline at every evaluation here")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    t0 = time.time()
    print(f"[1/4] rendering {args.pool} training images", flush=True)
    images, captions = render_pool(args.pool, args.seed)
    print(f"[2/4] training the VAE ({args.vae_steps} steps)", flush=True)
    vae = train_vae(images, args.vae_steps, args.batch, args.seed)
    means, stds = encode_pool(vae, images)
    scaling = float(1 / means.std())
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        recon = vae.decode(means[:256]).sample
    recon_np = ((recon.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).double().numpy()
    recon_reward = ShapesReward().score(recon_np, captions[:256]).mean().item()
    print(f"  latent std {1 / scaling:.3f} -> scaling_factor {scaling:.4f}; reward of reconstructions {recon_reward:.3f}")

    print(f"[3/4] training the UNet and text encoder ({args.unet_steps} steps)", flush=True)
    tokenizer = clip_bpe_tokenizer()
    text_encoder = tiny_text_encoder(seed=args.seed)
    unet = tiny_unet("sd15", seed=args.seed)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if k != "set_alpha_to_one"})
    ids = tokenizer(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    empty_ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    gen = torch.Generator().manual_seed(args.seed + 1)
    specs = eval_specs(args.eval_prompts, args.seed)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=tiny_scheduler("sd15"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    history = []
    start = time.time()
    for step in range(1, args.unet_steps + 1):
        unet.train()
        text_encoder.train()
        idx = torch.randint(len(images), (args.batch,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scaling
        batch_ids = ids[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < 0.1
        batch_ids[drop] = empty_ids
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        hidden = text_encoder(batch_ids)[0]
        loss = F.mse_loss(unet(noisy, t, hidden).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0:
            print(f"  unet step {step:5d}/{args.unet_steps}  loss {loss.item():.4f}  {time.time() - start:5.0f}s", flush=True)
        if (args.eval_every and step % args.eval_every == 0) or step == args.unet_steps:
            unet.eval()
            text_encoder.eval()
            result = evaluate(pipe, specs, seed=1000, guidance=args.guidance)
            result.update(step=step, minutes=(time.time() - start) / 60)
            history.append(result)
            print("  eval " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()), flush=True)
            if args.snapshots:
                pipe.save_pretrained(args.snapshots / f"step-{step:05d}", safe_serialization=True)

    print(f"[4/4] saving to {args.out}", flush=True)
    unet.eval()
    text_encoder.eval()
    pipe.save_pretrained(args.out, safe_serialization=True)
    card = {
        "what": "tiny text-to-image model of the diffalign shapes world, trained from scratch on CPU",
        "script": "scripts/build_tiny_model.py",
        "args": {k: str(v) for k, v in vars(args).items()},
        "vae_scaling_factor": scaling,
        "vae_reconstruction_reward": recon_reward,
        "evaluations": history,
        "total_minutes": (time.time() - t0) / 60,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    (args.out / "build_info.json").write_text(json.dumps(card, indent=2))
    print(f"done in {(time.time() - t0) / 60:.1f} min; final eval: {history[-1]}")


if __name__ == "__main__":
    main()
