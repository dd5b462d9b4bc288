"""HPSv3 (Ma et al., "HPSv3: Towards Wide-Spectrum Human Preference Score", ICCV 2025) as a diffalign scorer.

HPSv3 pins its own transformers, so serve it from its own environment (docs/scorers.md, "Scorers in their own
environment"):

    python -m venv ~/hpsv3-env && . ~/hpsv3-env/bin/activate
    pip install hpsv3                     # PyPI package of github.com/MizzenAI/HPSv3
    pip install --no-deps diffalign       # or: pip install --no-deps /path/to/a/clone of diffalign
    diffalign serve-scorer examples/rewards/hpsv3_scorer.py:HPSv3 --device cuda:1 --max-batch 16

and train with `rollout.reward=remote:http://127.0.0.1:8765`.

`hpsv3.HPSv3RewardInferencer(config_path=None, checkpoint_path=None, device="cuda")` loads Qwen2-VL-7B-Instruct
and the HPSv3 head (`HPSv3.safetensors` from the hub repo MizzenAI/HPSv3 when no checkpoint is given);
`reward(prompts, image_paths)` takes PIL images as well as paths and returns, per image, the mean and the
uncertainty of its score, shape (N, 2). The score is the mean, as HPSv3's README reads it. This file was
written against that API and has not been run here (no weights offline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffalign.rewards import to_pil_images


class HPSv3:
    """HPSv3's preference score of each image for its prompt (higher is better)."""

    name = "hpsv3"
    scale = "hpsv3 mu"
    logit_scale = 1.0  # a convention, not a fit: HPSv3 publishes no Bradley-Terry temperature

    def __init__(self, device: str | None = None, checkpoint: str | None = None, batch_size: int = 8) -> None:
        try:
            from hpsv3 import HPSv3RewardInferencer
        except ImportError as error:
            raise ImportError(f"HPSv3 is not installed in this environment ({error}): pip install hpsv3") from error
        if checkpoint is not None and not checkpoint.endswith(".safetensors"):
            raise ValueError(f"checkpoint {checkpoint!r}: give HPSv3's .safetensors file (other files would be "
                             "unpickled)")
        self.inferencer = HPSv3RewardInferencer(checkpoint_path=checkpoint, device=device or "cuda")
        self.batch_size = batch_size

    def score(self, images, prompts: Sequence[str]) -> torch.Tensor:
        """The mean of HPSv3's score of each image against its prompt, float32 (N,)."""
        pil_images = to_pil_images(images)
        means = []
        for start in range(0, len(pil_images), self.batch_size):
            stop = start + self.batch_size
            rewards = self.inferencer.reward(prompts=list(prompts[start:stop]), image_paths=pil_images[start:stop])
            means.append(rewards[:, 0].float().cpu())
        return torch.cat(means) if means else torch.zeros(0)
