"""Text conditioning for SD1.x/2.x (one CLIP encoder) and SDXL (two encoders, pooled text, time ids)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .loading import DiffusionParts


@dataclass
class TextConditioning:
    """Encoder hidden states (N, 77, D) and, for SDXL, the pooled embedding of the second encoder."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __getitem__(self, index: slice | torch.Tensor) -> TextConditioning:
        return TextConditioning(self.hidden_states[index], None if self.pooled is None else self.pooled[index])

    def repeat(self, times: int) -> TextConditioning:
        """The batch repeated `times` times along dim 0 (winners and losers share a caption)."""
        pooled = None if self.pooled is None else self.pooled.repeat(times, 1)
        return TextConditioning(self.hidden_states.repeat(times, 1, 1), pooled)

    @staticmethod
    def cat(parts: Sequence[TextConditioning]) -> TextConditioning:
        """Concatenate conditionings along the batch dim."""
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])  # type: ignore[misc]
        return TextConditioning(torch.cat([p.hidden_states for p in parts]), pooled)


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids padded/truncated to the tokenizer's max length (77 for CLIP), shape (N, 77)."""
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_prompts(parts: DiffusionParts, prompts: Sequence[str]) -> TextConditioning:
    """Encode prompts as the diffusers pipelines do.

    SD1.x/2.x: the last hidden state of the text encoder. SDXL: the penultimate hidden states of both
    encoders concatenated along the feature dim, and the projected pooled output of the second.
    """
    device = parts.text_encoders[0].device
    if parts.family == "sd":
        ids = tokenize(parts.tokenizers[0], prompts).to(device)
        return TextConditioning(parts.text_encoders[0](ids)[0])
    states, pooled = [], None
    for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders):
        out = encoder(tokenize(tokenizer, prompts).to(device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]  # CLIPTextModelWithProjection: text_embeds (the last encoder's)
    return TextConditioning(torch.cat(states, dim=-1), pooled)


def sdxl_time_ids(
    original_sizes: torch.Tensor, crops_top_left: torch.Tensor, target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL micro-conditioning (N, 6): original (h, w), crop top-left (top, left), target (h, w)."""
    target = torch.tensor(target_size, dtype=original_sizes.dtype).expand(len(original_sizes), 2)
    return torch.cat([original_sizes, crops_top_left, target], dim=1)


def unet_kwargs(cond: TextConditioning, time_ids: torch.Tensor | None = None, dtype: torch.dtype | None = None) -> dict:
    """Keyword arguments of `UNet2DConditionModel.forward` for this conditioning (SDXL needs time ids)."""
    hidden = cond.hidden_states if dtype is None else cond.hidden_states.to(dtype)
    kwargs: dict = {"encoder_hidden_states": hidden}
    if cond.pooled is not None:
        if time_ids is None:
            raise ValueError("SDXL conditioning needs time_ids (original size, crop, target size)")
        pooled = cond.pooled if dtype is None else cond.pooled.to(dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(pooled.device, pooled.dtype)}
    return kwargs
