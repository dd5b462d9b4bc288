"""The real-model presets in configs/{sd15,sd21,sdxl}: they load, carry the paper's values, and are
composed from the shared pieces in configs/{models,data,methods} rather than copied."""

from pathlib import Path

import pytest
import yaml

from diffalign.config import RunConfig, load_config
from diffalign.config.objectives import DPOConfig, SePPOConfig, SFTConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
FAMILIES = ("sd15", "sd21", "sdxl")
PRESETS = [CONFIGS / family / f"{method}.yaml" for family in FAMILIES for method in ("dpo", "sft", "seppo")]
HUB_IDS = {
    "sd15": "runwayml/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


def _load(path: Path, *overrides: str) -> RunConfig:
    return load_config(RunConfig, path, overrides)


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _own(path: Path) -> dict:
    """The keys a file sets itself (its `base:` not followed)."""
    return yaml.safe_load(path.read_text()) or {}


def _chain(path: Path) -> list[Path]:
    """The file and every file it inherits from, depth first."""
    bases = _own(path).get("base", [])
    bases = [bases] if isinstance(bases, str) else bases
    return [p for b in bases for p in _chain((path.parent / b).resolve())] + [path.resolve()]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_loads_with_its_model_data_and_objective(path):
    cfg = _load(path)
    family, method = path.parent.name, path.stem
    assert cfg.model.pretrained == HUB_IDS[family]
    assert cfg.data.path == "yuvalkirstain/pickapic_v2"
    assert cfg.data.empty_prompt_prob == 0.2 and cfg.data.random_flip
    assert cfg.train.output_dir == f"runs/{family}-{method}"
    assert cfg.lora.enabled  # LoRA by default; lora.enabled=false for full fine-tuning
    if method == "dpo":
        assert isinstance(cfg.objective, DPOConfig) and cfg.objective.beta == 5000.0
    elif method == "seppo":  # the paper's beta and reference pool, 2048 pairs per step
        assert isinstance(cfg.objective, SePPOConfig) and cfg.objective.beta == 2000.0
        assert (cfg.reference.every, cfg.reference.keep, cfg.reference.selection) == (30, 7, "random")
        assert cfg.objective.criterion == "sign" and cfg.train.grad_accum == 256
    else:
        assert isinstance(cfg.objective, SFTConfig)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_paper_batch_and_learning_rate(path):
    cfg = _load(path)
    t = cfg.train
    seppo = path.stem == "seppo"  # SePPO: 8 GPUs x 256 accumulation, a checkpoint with every pool refresh
    assert (t.batch_size, t.grad_accum, t.max_steps) == (1, 256 if seppo else 128, 2000)
    assert t.scale_lr and t.learning_rate == 1e-8 and t.lr_scheduler == "constant_with_warmup"
    assert (t.checkpoint_every, t.keep_checkpoints) == (30 if seppo else 100, 3)


def test_effective_batch_text_is_2048_on_16_processes():
    from diffalign.training.loop import describe_batch

    cfg = _load(CONFIGS / "sdxl" / "dpo.yaml")
    text = describe_batch(cfg, 16)
    assert "1 pairs/device x 128 accumulation x 16 process(es) = 2048 pairs per optimizer step" in text
    assert "= 1024 pairs per optimizer step" in describe_batch(cfg, 8)
    # the README's advice for 8 GPUs: double the accumulation to keep the paper's batch
    doubled = _load(CONFIGS / "sdxl" / "dpo.yaml", "train.grad_accum=256")
    assert "= 2048 pairs per optimizer step" in describe_batch(doubled, 8)


def test_model_specific_settings():
    sd15, sd21, sdxl = (_load(CONFIGS / family / "dpo.yaml") for family in FAMILIES)
    assert (sd15.data.resolution, sd21.data.resolution, sdxl.data.resolution) == (512, 768, 1024)
    # SD2.1-768 is a v-prediction model: 'auto' reads it from the scheduler config; it must train at 768
    assert sd21.model.prediction_type == "auto" and sd21.data.resolution == 768
    assert (sd15.train.optimizer, sd21.train.optimizer, sdxl.train.optimizer) == ("adamw", "adamw", "adafactor")
    assert (sd15.train.warmup_steps, sd21.train.warmup_steps, sdxl.train.warmup_steps) == (500, 500, 200)
    assert sdxl.model.vae == "madebyollin/sdxl-vae-fp16-fix" and sd15.model.vae is None and sd21.model.vae is None
    assert sdxl.train.gradient_checkpointing
    assert (sd15.train.mixed_precision, sd15.model.frozen_dtype) == ("fp16", "float16")
    assert (sdxl.train.mixed_precision, sdxl.model.frozen_dtype) == ("fp16", "float16")
    assert (sd21.train.mixed_precision, sd21.model.frozen_dtype) == ("bf16", "bfloat16")


@pytest.mark.parametrize("family", FAMILIES)
def test_sft_preset_is_the_dpo_preset_with_the_objective_switched(family):
    dpo, sft = _load(CONFIGS / family / "dpo.yaml"), _load(CONFIGS / family / "sft.yaml")
    for part in ("model", "lora", "data"):
        assert getattr(sft, part) == getattr(dpo, part)
    assert _load(CONFIGS / family / "sft.yaml", f"train.output_dir=runs/{family}-dpo").train == dpo.train


def test_full_fine_tuning_switch_from_the_comments():
    cfg = _load(CONFIGS / "sdxl" / "dpo.yaml", "lora.enabled=false", "train.offload_reference=true")
    assert not cfg.lora.enabled and cfg.train.offload_reference


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_is_only_a_composition(path):
    """A preset names its pieces and its output folder; the settings live in the shared pieces."""
    text = path.read_text()
    assert text.startswith("# Preset: ") and f"diffalign train configs/{path.parent.name}/{path.name}" in text
    assert f"accelerate launch -m diffalign.cli.main train configs/{path.parent.name}/{path.name}" in text
    own = _leaves({k: v for k, v in _own(path).items() if k != "base"})
    assert set(own) == {"train.output_dir"}
    chain = _chain(path)
    assert len(chain) >= 4  # model, data, method pieces and the preset itself


def test_presets_share_no_setting_line():
    """No two preset files repeat a non-comment line other than the `base:` list and output_dir's `train:`."""
    seen: dict[str, Path] = {}
    for path in PRESETS:
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "base:", "output_dir:")) or stripped == "train:":
                continue
            assert stripped not in seen, f"{path} repeats {stripped!r} from {seen[stripped]}: use a shared piece"
            seen[stripped] = path


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_setting_is_restated_along_a_composition(path):
    """Each key is set by one file of the chain: a piece never repeats what another piece sets."""
    owner: dict[str, Path] = {}
    for piece in _chain(path):
        for key in _leaves({k: v for k, v in _own(piece).items() if k != "base"}):
            if key == "objective.name":  # methods/sft.yaml switches the variant of dpo-paper.yaml
                continue
            assert key not in owner, f"{key} is set in both {owner[key]} and {piece}"
            owner[key] = piece


def test_every_piece_is_used_and_starts_with_a_comment():
    online = [CONFIGS / family / f"{method}.yaml" for family in FAMILIES
              for method in ("d3po", "ddpo", "grpo", "dgpo", "inpo", "smpo", "dcpo", "mapo", "kto", "ipo", "hinge")]
    used = {p for preset in [*PRESETS, *online] for p in _chain(preset)}
    for folder in ("models", "data", "methods"):
        for piece in sorted((CONFIGS / folder).glob("*.yaml")):
            assert piece.resolve() in used, f"{piece} is not used by any preset"
            assert piece.read_text().startswith("# Shared piece")


@pytest.mark.parametrize("family", FAMILIES)
def test_ddpo_and_grpo_presets_carry_the_stated_defaults(family):
    from diffalign.config.objectives import DDPOConfig, GRPOConfig

    ddpo, grpo = _load(CONFIGS / family / "ddpo.yaml"), _load(CONFIGS / family / "grpo.yaml")
    assert isinstance(ddpo.objective, DDPOConfig) and isinstance(grpo.objective, GRPOConfig)
    assert ddpo.model.pretrained == grpo.model.pretrained == HUB_IDS[family]
    assert (ddpo.train.output_dir, grpo.train.output_dir) == (f"runs/{family}-ddpo", f"runs/{family}-grpo")
    # ddpo-pytorch: 50 steps, eta 1, CFG 5, 256 samples a round, clip 1e-4, advantages clipped to 10 (its
    # base.py), per-prompt statistics 16/16, one inner epoch, 64 samples per optimizer step
    o, r = ddpo.objective, ddpo.rollout
    assert (o.clip_range, o.advantage_clip, o.timestep_fraction, o.kl_weight) == (1e-4, 10.0, 1.0, 0.0)
    assert (o.per_prompt_stats, o.buffer_size, o.min_count) == (True, 16, 16)
    assert (r.steps, r.eta, r.guidance, r.prompts_per_round * r.images_per_prompt, r.inner_epochs) == (50, 1.0, 5.0,
                                                                                                     256, 1)
    assert r.initial_noise == "distinct" and ddpo.train.batch_size * ddpo.train.grad_accum == 64
    o, r = grpo.objective, grpo.rollout
    assert (o.clip_range, o.advantage_clip, o.std, o.kl_weight) == (1e-4, 5.0, "group", 0.0)
    assert (r.steps, r.eta, r.images_per_prompt, r.initial_noise) == (50, 1.0, 8, "shared")
    assert ddpo.lora.enabled and grpo.lora.enabled


@pytest.mark.parametrize("family", FAMILIES)
def test_dgpo_presets_carry_the_official_pickscore_recipe(family):
    from diffalign.config.objectives import DGPOConfig

    cfg = _load(CONFIGS / family / "dgpo.yaml")
    assert isinstance(cfg.objective, DGPOConfig)
    assert cfg.model.pretrained == HUB_IDS[family] and cfg.train.output_dir == f"runs/{family}-dgpo"
    # Luo-Yihong/DGPO config/dgpo.py pickscore_sd3_4gpu: 8 groups of 24, CFG 4.5, beta_dpo 10, KL 1e-3, global std,
    # clip 5e-2 (its compressibility base), 4 trained timesteps, shared noise, LoRA r64/alpha 128, lr 3e-4
    o, r = cfg.objective, cfg.rollout
    assert (o.beta, o.kl_weight, o.std, o.clip_range, o.timesteps, o.shared_noise, o.reference) == (
        10.0, 1e-3, "global", 5e-2, 4, True, "frozen")
    assert (r.prompts_per_round, r.images_per_prompt, r.guidance, r.eta, r.initial_noise, r.reward) == (
        8, 24, 4.5, 0.0, "distinct", "pickscore")
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.train.learning_rate) == (64, 128.0, 3e-4)
    assert (cfg.reference.ema_decay, cfg.reference.ema_ramp) == (0.3, 0.001)


@pytest.mark.parametrize("family", FAMILIES)
def test_d3po_presets_carry_the_official_defaults(family):
    from diffalign.config.objectives import D3POConfig
    from diffalign.data.prompts import read_training_prompts

    cfg = _load(CONFIGS / family / "d3po.yaml")
    assert cfg.model.pretrained == HUB_IDS[family] and cfg.train.output_dir == f"runs/{family}-d3po"
    assert isinstance(cfg.objective, D3POConfig)
    assert (cfg.objective.beta, cfg.objective.clip, cfg.objective.timestep_fraction) == (0.1, 0.1, 1.0)
    r = cfg.rollout
    assert (r.prompts_per_round, r.images_per_prompt, r.steps, r.eta, r.guidance) == (20, 2, 20, 1.0, 5.0)
    assert r.reward == "aesthetic" and r.preference == "reward"
    assert (cfg.train.optimizer, cfg.train.learning_rate, cfg.train.weight_decay) == ("adamw", 3e-5, 1e-4)
    assert cfg.lora.rank == 4 and cfg.train.batch_size == 1
    assert len(read_training_prompts(str(CONFIGS.parent / r.prompts))) == 45


def test_demo_d3po_preset_runs_on_the_embedded_model_and_reward():
    cfg = _load(CONFIGS / "demo" / "d3po.yaml")
    assert cfg.objective.name == "d3po" and cfg.rollout.reward == "shapes"
    assert cfg.model.pretrained == "assets/tiny-sd" and cfg.train.output_dir == "runs/demo-d3po"


def test_demo_seppo_preset_has_the_dpo_demos_budget():
    dpo, seppo = _load(CONFIGS / "demo" / "dpo.yaml"), _load(CONFIGS / "demo" / "seppo.yaml")
    assert seppo.objective.name == "seppo" and seppo.data.path == dpo.data.path
    assert (seppo.train.max_steps, seppo.train.batch_size, seppo.train.learning_rate, seppo.lora.rank) == (
        dpo.train.max_steps, dpo.train.batch_size, dpo.train.learning_rate, dpo.lora.rank)
    assert seppo.train.output_dir == "runs/demo-seppo"



@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["inpo", "smpo"])
def test_inversion_presets_carry_the_official_settings(family, method):
    from diffalign.config.objectives import InPOConfig, SmPOConfig

    cfg = _load(CONFIGS / family / f"{method}.yaml")
    o, t = cfg.objective, cfg.train
    assert cfg.model.pretrained == HUB_IDS[family] and t.output_dir == f"runs/{family}-{method}"
    assert cfg.data.path == "yuvalkirstain/pickapic_v2"
    assert o.beta == (5000.0 if family == "sdxl" else 2000.0)
    assert (t.grad_accum, t.learning_rate, t.scale_lr) == (128, 1e-8, True)
    if method == "inpo":
        assert type(o) is InPOConfig and (o.inversion_steps, o.inversion_eta, o.renoise_steps) == (10, 0.1, 0)
        assert (t.max_steps, t.warmup_steps) == (400, 200)
    else:
        assert isinstance(o, SmPOConfig) and (o.gamma, o.renoise_steps, o.inversion_eta) == (10.0, 1, 0.0)
        assert o.inversion_steps == (10 if family == "sdxl" else 5) and (t.max_steps, t.warmup_steps) == (200, 100)
        assert cfg.data.relabel_with == "pickscore" and o.score_bounds is None


@pytest.mark.parametrize("method", ["inpo", "smpo"])
def test_demo_inversion_presets_have_the_dpo_demos_budget(method):
    dpo, cfg = _load(CONFIGS / "demo" / "dpo.yaml"), _load(CONFIGS / "demo" / f"{method}.yaml")
    assert cfg.objective.name == method and cfg.train.output_dir == f"runs/demo-{method}"
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate) == (
        dpo.train.max_steps, dpo.train.batch_size, dpo.train.learning_rate)


VARIANTS = ("dcpo", "mapo", "kto", "ipo", "hinge")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VARIANTS)
def test_variant_presets_are_compositions_with_the_official_settings(family, method):
    from diffalign.config.objectives import DCPOConfig, KTOConfig, MaPOConfig

    path = CONFIGS / family / f"{method}.yaml"
    text = path.read_text()
    assert text.startswith("# Preset: ") and f"diffalign train configs/{family}/{method}.yaml" in text
    assert set(_leaves({k: v for k, v in _own(path).items() if k != "base"})) == {"train.output_dir"}
    cfg = _load(path)
    o, t = cfg.objective, cfg.train
    assert cfg.model.pretrained == HUB_IDS[family] and t.output_dir == f"runs/{family}-{method}" and cfg.lora.enabled
    if method == "dcpo":  # the launcher's beta and batch; epsilon-space errors on every family (SD2.1: see the piece)
        assert isinstance(o, DCPOConfig) and (o.beta, o.error_space, o.loss) == (500.0, "epsilon", "sigmoid")
        assert cfg.data.path == "DualCPO/pick-double-caption" and cfg.data.dual_captions
        assert cfg.data.empty_prompt_prob == 0.0
        assert (t.batch_size, t.grad_accum, t.max_steps, t.learning_rate, t.scale_lr) == (1, 128, 2000, 1e-8, True)
    elif method == "mapo":
        assert isinstance(o, MaPOConfig) and (o.beta, o.snr, o.scale) == (0.1, 0.5, 1000.0)
        assert (t.batch_size, t.grad_accum, t.max_steps, t.learning_rate, t.lr_scheduler) == (8, 2, 2000, 1e-5, "constant")
    elif method == "kto":
        assert isinstance(o, KTOConfig) and (o.beta, o.lambda_desirable, o.lambda_undesirable, o.rows) == (
            2000.0, 1.0, 1.0, "pairs")
        assert (t.batch_size, t.learning_rate, t.max_steps) == (1, 1e-7, 20000)
    else:  # the DPO preset with the loss switched
        dpo = _load(CONFIGS / family / "dpo.yaml", f"train.output_dir=runs/{family}-{method}")
        assert o.loss == method and o.beta == dpo.objective.beta and t == dpo.train and cfg.data == dpo.data
    if method != "dcpo":
        assert cfg.data.path == "yuvalkirstain/pickapic_v2"


def test_demo_variant_presets_have_the_dpo_demos_budget():
    dpo = _load(CONFIGS / "demo" / "dpo.yaml")
    for method in ("dcpo", "mapo", "kto"):
        cfg = _load(CONFIGS / "demo" / f"{method}.yaml")
        assert cfg.objective.name == method and cfg.train.output_dir == f"runs/demo-{method}"
        assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.learning_rate, cfg.lora.rank) == (
            dpo.train.max_steps, dpo.train.batch_size, dpo.train.learning_rate, dpo.lora.rank)
    assert _load(CONFIGS / "demo" / "dcpo.yaml").data.dual_captions
