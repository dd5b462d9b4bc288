"""The objectives (training methods) a run can choose with `objective.name`, and their settings.

Each objective is declared once, by decorating its config dataclass with `@objective(name, method=...)`:
that registers the config variant and links it, lazily, to the method class that trains it
(`"module:Class"`, imported only when training starts, so `import diffalign.config` stays torch-free).
The naming convention, checked by `tests/training/test_method_registry.py`:

    config/objectives.py            <Name>Config           (this file)
    training/methods/<name>.py      <Name>                 (the method: what it needs, how a batch becomes a loss)
    objectives/<name>.py            <name>_loss            (the loss as a pure function of tensors)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from .core import Variant, cfg_field, register_variant, variants

T = TypeVar("T")

_NAME_HELP = "Objective (training method): one of the registered objectives (`@objective`, listed here)."

# objective name -> "module:Class" of its training method (or the class itself, for methods defined
# outside the package, e.g. in a user's own module or a test)
_METHODS: dict[str, str | type] = {}


@variants("name")
@dataclass
class ObjectiveConfig(Variant):
    """The training objective; `name` picks one of the registered objectives."""

    name: str = cfg_field("dpo", _NAME_HELP)


def objective(name: str, method: str | type, summary: str | None = None) -> Callable[[type[T]], type[T]]:
    """Class decorator: register a config dataclass as the objective `name`, trained by `method`
    (`"module:Class"`, imported on first use by `diffalign.training.methods.method_class`, or the class);
    `summary` (else the docstring's first line) describes it in `objective.name`'s help."""

    def decorate(cls: type[T]) -> type[T]:
        if isinstance(method, str) and ":" not in method:
            raise ValueError(f"@objective({name!r}): method must be 'module:Class', got {method!r}")
        if summary:
            cls.__variant_summary__ = summary  # type: ignore[attr-defined]
        register_variant(ObjectiveConfig, name)(cls)
        _METHODS[name] = method
        return cls

    return decorate


def unregister_objective(name: str) -> None:
    """Remove objective `name` (for tests that register a temporary one)."""
    _METHODS.pop(name, None)
    ObjectiveConfig.__variant_registry__.pop(name, None)  # type: ignore[attr-defined]


def method_path(name: str) -> str | type:
    """The `"module:Class"` of the method that trains objective `name` (or the class itself)."""
    if name not in _METHODS:
        raise KeyError(f"no objective named {name!r}; registered: {sorted(_METHODS)}")
    return _METHODS[name]


def registered_objectives() -> dict[str, str | type]:
    """Every registered objective name and its method's `"module:Class"`."""
    return dict(_METHODS)


@objective("dpo", method="diffalign.training.methods.dpo:DPO", summary="Diffusion-DPO")
@dataclass
class DPOConfig(ObjectiveConfig):
    """Diffusion-DPO (Wallace et al. 2024), Eq. 14 in the official code's form."""

    name: str = cfg_field("dpo", _NAME_HELP)
    beta: float = cfg_field(
        2000.0,
        "KL strength beta in -log sigmoid(-0.5*beta*[(err_θ(w)-err_θ(l))-(err_ref(w)-err_ref(l))]), errors "
        "averaged over latent elements: the official code's beta_dpo (SD1.5 paper: 2000, SDXL: 5000).",
        min=0.0,
    )
    loss: Literal["sigmoid", "ipo", "hinge"] = cfg_field(
        "sigmoid",
        "Per-pair loss of the logit z = -0.5*beta*[...]: 'sigmoid' (Diffusion-DPO, -log sigmoid(z)), 'ipo' "
        "((z - 1/2)^2, IPO with tau in beta's units) or 'hinge' (max(0, 1 - z)).",
    )
    error_space: Literal["prediction", "epsilon"] = cfg_field(
        "prediction",
        "What the denoising errors compare: the model's own output with its target ('prediction': v on "
        "v-prediction models) or the noise it implies with the true noise ('epsilon'; the same on epsilon "
        "models; on v models the v error is the epsilon error / alpha_bar_t, so a beta tuned on epsilon "
        "errors keeps its meaning only here).",
    )


@objective("sft", method="diffalign.training.methods.sft:SFT", summary="supervised on the preferred images")
@dataclass
class SFTConfig(ObjectiveConfig):
    """Supervised fine-tuning on the preferred image of each pair (Diffusion-DPO's SFT baseline)."""

    name: str = cfg_field("sft", _NAME_HELP)


@objective("d3po", method="diffalign.training.methods.d3po:D3PO", summary="online DPO on the steps of the policy's own trajectories")
@dataclass
class D3POConfig(ObjectiveConfig):
    """D3PO (Yang et al., CVPR 2024): DPO on every step of trajectory pairs sampled by the policy each round
    (`rollout.*`), judged by a reward or by people (`rollout.preference`); the official code's defaults."""

    name: str = cfg_field("d3po", _NAME_HELP)
    beta: float = cfg_field(0.1, "beta of the per-step DPO loss on mean-over-elements log-probabilities.", min=0.0)
    clip: float = cfg_field(
        0.1, "Clamp each policy/reference probability ratio to [1 - clip, 1 + clip] (no gradient outside).", min=0.0
    )
    timestep_fraction: float = cfg_field(
        1.0,
        "Train on this fraction of each trajectory's steps (the first ones of a random permutation per pair); "
        "each trained step is one micro-step, accumulated into one optimizer step per batch of pairs.",
        min=0.0,
        max=1.0,
    )
    pairs: Literal["all", "first"] = cfg_field(
        "all", "Pairs of a prompt's images: every pair (the human-feedback script) or only images 0 and 1."
    )
    guidance: float | None = cfg_field(
        None, "Classifier-free guidance when re-scoring steps in training (None: the sampler's, rollout.guidance)."
    )


@objective("seppo", method="diffalign.training.methods.seppo:SePPO", summary="preferred images only, against samples of earlier checkpoints")
@dataclass
class SePPOConfig(ObjectiveConfig):
    """SePPO (Zhang, Lan et al. 2024): preferred images only; a reference drawn from the run's earlier
    checkpoints (`reference.*`) samples each winner's caption (sampler: `rollout.steps`, `guidance`, `eta`,
    `sample_batch_size`), and the anchor-based criterion learns that sample as a loser or as a winner."""

    name: str = cfg_field("seppo", _NAME_HELP)
    beta: float = cfg_field(
        2000.0,
        "beta of -log sigmoid(-0.5*beta*[(err_θ(w)-err_ref(w)) - s*(err_θ(r)-err_ref(r))]), errors averaged over "
        "latent elements as Diffusion-DPO's (the paper: 2000, 'the same as Diffusion-DPO').",
        min=0.0,
    )
    criterion: Literal["sign", "indicator", "always_loser"] = cfg_field(
        "sign",
        "How the reference sample enters: 'sign' (s = sign(err_ref(w) - err_θ(w)), ties -1: a loser where the "
        "policy fits the winner better than the reference, else a second winner), 'indicator' (the paper's "
        "ablation: s = 1 or 0, the sample dropped instead of flipped) or 'always_loser' (s = 1: Diffusion-DPO "
        "with on-policy losers).",
    )
    share_noise: bool = cfg_field(
        True,
        "Noise the winner and its reference sample with the same noise and timestep (as Diffusion-DPO's pairs; "
        "the paper does not say); false draws their own.",
    )


@objective("inpo", method="diffalign.training.methods.inpo:InPO", summary="DPO on DDIM-inverted latents")
@dataclass
class InPOConfig(ObjectiveConfig):
    """DDIM-InPO (Lu et al., CVPR 2025): Diffusion-DPO on latents reached by DDIM inversion of each image under
    the current model, with the reparametrised target τ_t in place of the noise; the official code's defaults."""

    name: str = cfg_field("inpo", _NAME_HELP)
    beta: float = cfg_field(2000.0, "beta of the Diffusion-DPO loss (official: 2000 SD1.5, 5000 SDXL).", min=0.0)
    inversion_steps: int = cfg_field(
        10, "Inverse DDIM steps of the grid; a pair inverts through the steps below its timestep.", min=1)
    inversion_eta: float = cfg_field(
        0.1, "η-noise added after each inverse step (official 0.1; 0: deterministic).", min=0.0)
    renoise_steps: int = cfg_field(0, "ReNoise iterations per inverse step (SmPO: 1).", min=0)
    inversion_mode: Literal["consistent", "official"] = cfg_field(
        "consistent",
        "'consistent': the UNet inverts at each step's target level and the loss runs at the level reached "
        "(UNet and target agree); 'official': the papers' code, the UNet inverting at each step's source level "
        "(-99 first) and the loss at the sampled timestep, up to 99 steps from the level reached.",
    )


@objective("smpo", method="diffalign.training.methods.smpo:SmPO", summary="InPO with ReNoise inversion and smoothed labels from a scorer")
@dataclass
class SmPOConfig(InPOConfig):
    """SmPO-Diffusion (Lu et al., ICML 2025): InPO on ReNoise-inverted latents (one iteration, the same timestep,
    no η-noise, a 5-step grid for SD1.5 as the official code; SDXL: 10) with each pair's logit weighted by
    γ(2p − 1), p = σ(s'_w − s'_l) from a scorer's min-max normalised scores; the scorer also re-decides the
    winner. Scores: the table's score_0/score_1 columns (`diffalign relabel`, or `data.relabel_with=NAME`,
    which computes and caches them)."""

    name: str = cfg_field("smpo", _NAME_HELP)
    inversion_steps: int = cfg_field(5, "Inverse DDIM steps of the grid (official: 5 for SD1.5, 10 for SDXL).", min=1)
    inversion_eta: float = cfg_field(0.0, "η-noise after each inverse step (SmPO: none).", min=0.0)
    renoise_steps: int = cfg_field(1, "ReNoise iterations per inverse step (SmPO: 1, at the same timestep).", min=0)
    gamma: float = cfg_field(10.0, "Sensitivity γ of the weight γ(2p − 1) (official 10).", min=0.0)
    score_bounds: list[float] | None = cfg_field(
        None,
        "[low, high] of the min-max normalisation; None: the training data's own minimum and maximum score "
        "(written to OUTPUT_DIR/score_bounds.json). The paper's [0.11543526500463486, 0.28201571106910706] "
        "apply to raw PickScore cosines only (on logit_scale*cos every weight saturates at γ).",
    )


@objective("dcpo", method="diffalign.training.methods.dcpo:DCPO", summary="DPO with each image on its own caption")
@dataclass
class DCPOConfig(DPOConfig):
    """DCPO (Saeidi, Luo et al., TMLR 2025): Diffusion-DPO with the winner conditioned on its own caption and
    the loser on its own (the table's caption_0/caption_1: Pick-Double-Caption, or `diffalign captions`)."""

    name: str = cfg_field("dcpo", _NAME_HELP)
    beta: float = cfg_field(
        500.0, "beta of the Diffusion-DPO loss on per-caption errors (the official launcher: 500).", min=0.0)


@objective("mapo", method="diffalign.training.methods.mapo:MaPO", summary="reference-free margin loss")
@dataclass
class MaPOConfig(ObjectiveConfig):
    """MaPO (Hong et al. 2024): mean e(w) - beta * mean log sigmoid(T * [f(e(w)) - f(e(l))]), f(e) =
    snr*e/(exp(snr*e) - 1); no reference model; the official code's defaults."""

    name: str = cfg_field("mapo", _NAME_HELP)
    beta: float = cfg_field(0.1, "Weight beta_mapo of the margin term (official 0.1).", min=0.0)
    snr: float = cfg_field(0.5, "gamma of f(e) = gamma*e/(exp(gamma*e) - 1) (the official snr_value 0.5).", min=0.0)
    scale: float = cfg_field(1000.0, "T multiplying the margin inside the log-sigmoid (official 1000).", min=0.0)


@objective("kto", method="diffalign.training.methods.kto:KTO", summary="Diffusion-KTO: single images rated desirable or undesirable")
@dataclass
class KTOConfig(ObjectiveConfig):
    """Diffusion-KTO (Li et al. 2024): each image pushed above (desirable) or below (undesirable) a reference
    point of implicit reward on its own; the official code's defaults."""

    name: str = cfg_field("kto", _NAME_HELP)
    beta: float = cfg_field(
        2000.0,
        "beta of the implicit reward r = -0.5*beta*(err_θ - err_ref), Diffusion-DPO's units (the official "
        "--beta_dpo 1000 multiplies err_ref - err_θ without the 0.5).",
        min=0.0,
    )
    lambda_desirable: float = cfg_field(1.0, "Weight of the desirable images' terms (official 1).", min=0.0)
    lambda_undesirable: float = cfg_field(1.0, "Weight of the undesirable images' terms (official 1).", min=0.0)
    rows: Literal["pairs", "rated"] = cfg_field(
        "pairs",
        "What a row of data.path holds: 'pairs' (a preference pair: its winner is desirable, its loser "
        "undesirable) or 'rated' (one image, `jpg_0` with its `caption`, rated by `label_0`: 1 desirable, "
        "0 undesirable).",
    )


@dataclass
class PolicyGradientConfig(ObjectiveConfig):
    """The settings DDPO and GRPO share: PPO-clip on the per-step log-probability ratios of the policy's DDIM(η)
    trajectories (`rollout.*`, η > 0), an optional KL penalty to the base model (DPOK)."""

    clip_range: float = cfg_field(
        1e-4, "PPO clip: the per-step ratio pi/pi_old is clamped to [1 - clip_range, 1 + clip_range] (ddpo-pytorch 1e-4).",
        min=0.0,
    )
    advantage_clip: float = cfg_field(
        10.0, "Clamp advantages to [-advantage_clip, advantage_clip] (ddpo-pytorch's adv_clip_max 10).", min=0.0
    )
    timestep_fraction: float = cfg_field(
        1.0,
        "Train on this fraction of each trajectory's steps (the first ones of a random permutation per image and "
        "pass); each trained step is one micro-step, accumulated into one optimizer step per batch.",
        min=0.0,
        max=1.0,
    )
    guidance: float | None = cfg_field(
        None,
        "Classifier-free guidance when re-scoring steps in training (None: the sampler's, rollout.guidance, so the "
        "ratio is exactly 1 on the first pass; train without CFG by sampling without it, rollout.guidance=1).",
    )
    kl_weight: float = cfg_field(
        0.0,
        "Weight of the KL penalty to the base model (DPOK, Fan et al. 2023): the Gaussian step KL "
        "|mu - mu_base|^2 / (2 sigma_t^2), mean over latent elements. 0: off (start so, to see the reward's "
        "ceiling; flow_grpo's advice).",
        min=0.0,
    )


@objective("ddpo", method="diffalign.training.methods.ddpo:DDPO",
           summary="DDPO: PPO-clip on the policy's trajectories, advantages from per-prompt reward statistics")
@dataclass
class DDPOConfig(PolicyGradientConfig):
    """DDPO (Black et al., ICLR 2024), ddpo-pytorch's DDPO_IS: PPO-clip on the per-step ratios of DDIM(η = 1)
    trajectories of the current policy, advantages normalised per prompt over a buffer of its recent rewards."""

    name: str = cfg_field("ddpo", _NAME_HELP)
    per_prompt_stats: bool = cfg_field(
        True,
        "Normalise each image's reward by its prompt's mean and std over the prompt's last buffer_size rewards "
        "(the round's statistics until min_count are buffered); false: by the whole round's.",
    )
    buffer_size: int = cfg_field(16, "Rewards kept per prompt (ddpo-pytorch 16).", min=1)
    min_count: int = cfg_field(16, "Buffered rewards a prompt needs before its own statistics are used (16).", min=1)


@objective("grpo", method="diffalign.training.methods.grpo:GRPO",
           summary="GRPO: PPO-clip with advantages normalised within each prompt's group of images")
@dataclass
class GRPOConfig(PolicyGradientConfig):
    """GRPO on an SD UNet as DanceGRPO runs it: each prompt draws a group of rollout.images_per_prompt images,
    advantages are their rewards normalised within the group, PPO-clip on the per-step ratios."""

    name: str = cfg_field("grpo", _NAME_HELP)
    advantage_clip: float = cfg_field(5.0, "Clamp advantages to [-advantage_clip, advantage_clip] (5: group advantages rarely pass it).",
                                      min=0.0)
    std: Literal["group", "global"] = cfg_field(
        "group",
        "Divide by the std of the prompt's group (DanceGRPO) or of the whole round (flow_grpo's global_std, which "
        "keeps a group of near-equal rewards from being inflated to unit scale).",
    )


@objective("dgpo", method="diffalign.training.methods.dgpo:DGPO",
           summary="DGPO: online group DPO, each prompt's positive against its negative subgroup (deterministic rollouts)")
@dataclass
class DGPOConfig(ObjectiveConfig):
    """DGPO (Luo et al., ICLR 2026): each prompt draws a group of rollout.images_per_prompt images with the
    deterministic sampler (rollout.eta=0, distinct initial noise); their group-relative advantages split the group
    into a positive and a negative subgroup, and Diffusion-DPO's loss compares the subgroups (objectives/dgpo.py),
    at a few noised timesteps of the final images, against the frozen base or an EMA of the policy."""

    name: str = cfg_field("dgpo", _NAME_HELP)
    beta: float = cfg_field(
        100.0,
        "beta_dpo of the group preference: how sharply the group weight sigmoid(s_g) saturates (the official "
        "recipes: 10-100 with the frozen reference, 2000-5000 with the EMA one). The step size does not scale with "
        "it (the official surrogate's gradient is the group loss's over beta).",
        min=0.0,
    )
    advantage_clip: float = cfg_field(5.0, "Clamp advantages to [-advantage_clip, advantage_clip] (official 5).", min=0.0)
    std: Literal["group", "global"] = cfg_field(
        "group", "Advantages: rewards minus the group's mean, over the group's std or the whole round's (as GRPO)."
    )
    timesteps: int = cfg_field(
        4,
        "Noised timesteps each group is trained at per pass (official num_train_timesteps 4): one micro-step each, "
        "accumulated into the batch's optimizer step.",
        min=1,
    )
    timestep_min: float = cfg_field(
        0.3,
        "Train at DDPM timesteps t >= timestep_min x T, uniformly (the official code trains only the noisier part of "
        "the sampling schedule, 't_min = shift(0.3)' on SD3's flow schedule; ours is the analogue on the UNet's).",
        min=0.0,
        max=0.99,
    )
    shared_noise: bool = cfg_field(
        True, "One noise and one timestep per group at each micro-step (official use_shared_noise); false: per image."
    )
    reference: Literal["frozen", "ema"] = cfg_field(
        "frozen",
        "The DPO reference: the frozen base model (adapters off), or an EMA of the policy's LoRA weights (TDM-R1's "
        "dynamic reference; reference.ema_decay; use a much larger beta).",
    )
    clip_range: float = cfg_field(
        0.0,
        "PPO-style clip (official clip_dsm, 1e-3 to 1e-2; 0: off): an image whose ratio exp(err_old - err) passed "
        "1 +- clip_range in its advantage's direction loses its gradient; err_old is the EMA policy's error (one "
        "more UNet forward per micro-step).",
        min=0.0,
    )
    kl_weight: float = cfg_field(
        1e-3,
        "Weight of the KL to the frozen base, the mean squared difference of the two UNet outputs (official beta "
        "1e-3; 0: off).",
        min=0.0,
    )
