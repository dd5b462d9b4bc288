"""Attention backends for the transformers models that scorers run: SDPA, eager, and xformers.

transformers has SDPA and eager attention built in; xformers is added through its own extension
point, `AttentionInterface.register`, so that `attn_implementation="xformers"` works for any model
that dispatches through the interface (CLIP does). xformers runs the unmasked attention, which is
all of the vision tower; masked attention (CLIP's causal text tower) goes to SDPA, which handles
arbitrary masks.
"""

from __future__ import annotations

import torch

BACKENDS = ("sdpa", "eager", "xformers")
_registered = False


def _xformers_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """softmax(q k^T * scaling) v with xformers' memory-efficient kernel; (B, H, L, D) in, (B, L, H, D) out."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", False))
    if attention_mask is not None or causal or query.device.type != "cuda":
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    import xformers.ops as xops

    out = xops.memory_efficient_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), p=dropout, scale=scaling
    )
    return out, None


def attention_implementation(name: str) -> str:
    """The `attn_implementation` string for transformers, registering xformers first when asked for it."""
    global _registered
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; use one of {', '.join(BACKENDS)}")
    if name == "xformers":
        try:
            import xformers.ops  # noqa: F401
        except ImportError as error:
            raise ImportError(
                "attention=xformers needs the xformers package (pip install 'diffalign[gpu]'); "
                "use attention=sdpa otherwise"
            ) from error
        if not _registered:
            from transformers import AttentionInterface

            AttentionInterface.register("xformers", _xformers_attention)
            _registered = True
    return name
