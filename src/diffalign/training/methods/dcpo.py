"""DCPO: Diffusion-DPO with the winner conditioned on its own caption and the loser on its own.

The captions are the pair table's `caption_0`/`caption_1` (Pick-Double-Caption's columns, or written by
`diffalign captions`); choosing DCPO requires them, while plain Diffusion-DPO on the same table keeps
conditioning both images on the prompt. `objective.error_space=epsilon` measures the errors on the noise
the model implies, the scale the paper's beta (500) was tuned at (see `configs/sd21/dcpo.yaml`).
"""

from __future__ import annotations

from .dpo import DPO


class DCPO(DPO):
    """Diffusion-DPO on per-image captions: the loss, noise and timesteps of `DPO`, the conditioning of DCPO."""

    per_image_captions = True
