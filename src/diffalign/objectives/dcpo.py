"""DCPO (Saeidi, Luo et al., TMLR 2025): Diffusion-DPO with each image conditioned on its own caption.

A prompt often fits the rejected image badly, which confounds "worse image" with "image of another
prompt". DCPO conditions the winner on a caption z^w and the loser on a caption z^l that describes it
(from a captioning model, a perturbation of the prompt, or both: `diffalign captions`), with one noise
and one timestep per pair:

    inside = −0.5 · β · [(e_θ(x^w_t, z^w) − e_θ(x^l_t, z^l)) − (e_ref(x^w_t, z^w) − e_ref(x^l_t, z^l))]
    loss   = mean over pairs of −log σ(inside)                                           (β = 500)

Numerically this is Diffusion-DPO's loss (`objectives.dpo`); what differs is the conditioning of each
error, which the training method supplies. The errors may be measured on the model's own prediction
(v on SD2.1) or on the noise it implies (`error_space="epsilon"`, the scale the paper's β was tuned at):
‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t, 3.6 times larger at t = 500 and 200 times at t = 999.
"""

from __future__ import annotations

from .dpo import dpo_loss

# DCPO's loss is Diffusion-DPO's (same form, arguments and metrics) on errors under per-image captions
dcpo_loss = dpo_loss
