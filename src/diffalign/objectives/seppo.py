"""SePPO (Zhang, Lan et al., arXiv 2410.05255): preference optimisation from winners and reference samples.

The data holds only preferred images x0^w (the "anchors"). A reference model, an earlier checkpoint of the
run, draws a sample x0^r for each anchor's caption, which takes the loser's place. With per-sample
denoising errors e = mean_{C,H,W} (net(x_t, t, c) - target)^2 under the trained model (θ) and the
reference (ref), the anchor-based criterion compares the two models on the noised anchor:

    Δ_w = e_θ(w) - e_ref(w),     Δ_r = e_θ(r) - e_ref(r)
    s   = sign(e_ref(w) - e_θ(w))          (+1: the policy already fits the anchor better than the
                                            reference, so the reference sample is a loser: Diffusion-DPO;
                                            -1: the reference is better, so its sample is likely a
                                            winner and is learned as one: the loss moves towards SFT)
    loss = mean over pairs of -log σ(-0.5 · β · (Δ_w - s · Δ_r))

in Diffusion-DPO's -0.5·β convention (`objectives.dpo`: β absorbs T·ω(λ_t) and the 1/(C·H·W) of the mean).
The authors released no training code; this is the project's reconstruction of the paper's §5 (β = 2000,
"the same as Diffusion-DPO"), tested against hand-computed vectors (`tests/reference_vectors.json`).

Tie rule (not in the sources): s = -1 where e_θ(w) = e_ref(w), the reconstruction's choice. Ties are exact
whenever the reference equals the policy: at step 0 (the pool holds only the initial model) and right after
the pool keeps the current weights. The paper's Theorem 1 calls the model whose expected error difference is
≤ 0 the better one, so a tie does not show the policy ahead, and the sample is not pushed away: at step 0
the loss is SFT on both images rather than `torch.sign`'s s = 0 (the sample ignored) or DPO against the
policy's own samples.

`criterion` selects the paper's variants: "sign" (the anchor-based criterion above), "indicator" (the
ablation 𝟙(e_ref(w) - e_θ(w) > 0): the reference term is dropped instead of flipped, s ∈ {1, 0}) and
"always_loser" (s = 1: plain Diffusion-DPO with on-policy losers, which measures what the criterion adds).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .types import ObjectiveOutput

Criterion = Literal["sign", "indicator", "always_loser"]


def anchor_sign(model_err_w: torch.Tensor, ref_err_w: torch.Tensor, criterion: Criterion = "sign") -> torch.Tensor:
    """s per pair (float, no gradient): how the reference sample's term enters the loss (module docstring)."""
    policy_better = (model_err_w < ref_err_w).float().detach()
    if criterion == "sign":
        return 2.0 * policy_better - 1.0  # a tie counts as the reference being at least as good: -1
    if criterion == "indicator":
        return policy_better
    if criterion == "always_loser":
        return torch.ones_like(policy_better)
    raise ValueError(f"criterion {criterion!r}: expected 'sign', 'indicator' or 'always_loser'")


def seppo_loss(
    model_err_w: torch.Tensor,
    model_err_r: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_r: torch.Tensor,
    beta: float,
    criterion: Criterion = "sign",
    weight: torch.Tensor | None = None,
) -> ObjectiveOutput:
    """SePPO loss of a batch from per-sample denoising errors (each (B,)) of the anchors (w) and the
    reference samples (r) under the trained model and the reference; `weight` (B,) scales each logit.

    Metrics: `implicit_acc` (share of logits > 0, ties one half), `reward_margin` (mean logit),
    `sample_as_winner` (share of pairs whose reference sample is not treated as a loser, s ≤ 0),
    `anchor_gap` (mean Δ_w: negative once the policy fits the data better than its references),
    `model_err_w/r`, `ref_err_w/r`.
    """
    ref_err_w, ref_err_r = ref_err_w.detach(), ref_err_r.detach()
    s = anchor_sign(model_err_w, ref_err_w, criterion)
    delta_w, delta_r = model_err_w - ref_err_w, model_err_r - ref_err_r
    logits = -0.5 * beta * (delta_w - s * delta_r)
    if weight is not None:
        logits = logits * weight
    loss = -F.logsigmoid(logits).mean()
    with torch.no_grad():
        metrics = {
            "implicit_acc": ((logits > 0).float() + 0.5 * (logits == 0).float()).mean(),
            "reward_margin": logits.mean(),
            "sample_as_winner": (s <= 0).float().mean(),
            "anchor_gap": delta_w.mean(),
            "model_err_w": model_err_w.mean(),
            "model_err_r": model_err_r.mean(),
            "ref_err_w": ref_err_w.mean(),
            "ref_err_r": ref_err_r.mean(),
        }
    return ObjectiveOutput(loss=loss, metrics={k: v.detach() for k, v in metrics.items()})
