"""The typed schema of a training run: model, LoRA, data, objective and optimisation settings.

One dataclass per concern, one per objective (selected by `objective.name`), a default and a help
text on every field. `diffalign config show FILE key=value ...` prints the resolved tree with the
help texts; the defaults alone are the embedded demo (Diffusion-DPO on the tiny shapes model).

The beta convention, the same for every model family and resolution (see `objectives/dpo.py`):

    err(x) = mean over C,H,W of (net(x_t, t, c) - target)^2
    loss   = -log sigmoid(-0.5 * beta * [(err_θ(w) - err_θ(l)) - (err_ref(w) - err_ref(l))])

This is the official Diffusion-DPO code's `beta_dpo` (5000 for SDXL in its launchers, 2000 in the
paper for SD1.5). The diffusers SD research script's `beta_dpo` of 2500 equals 5000 here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .core import cfg_field
from .objectives import DPOConfig, ObjectiveConfig

DEMO_MODEL = "assets/tiny-sd"
DEMO_TRAIN_PAIRS = "assets/demo/pairs_train.parquet"
DEMO_HELDOUT_PROMPTS = "assets/demo/prompts_heldout.txt"


@dataclass
class ModelConfig:
    """Which base model to load and how."""

    pretrained: str = cfg_field(
        DEMO_MODEL,
        "Base pipeline: a hub id (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-2-1, "
        "stabilityai/stable-diffusion-xl-base-1.0) or a local diffusers folder.",
    )
    revision: str | None = cfg_field(None, "Hub revision (branch, tag or commit) of `pretrained`.")
    variant: str | None = cfg_field(None, "Weight file variant to load, e.g. 'fp16' (None: the default files).")
    vae: str | None = cfg_field(
        None, "A different VAE (hub id or folder), e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16."
    )
    frozen_dtype: Literal["float32", "float16", "bfloat16"] = cfg_field(
        "float32", "Dtype of the frozen parts (VAE, text encoders, frozen reference UNet)."
    )
    prediction_type: Literal["auto", "epsilon", "v_prediction"] = cfg_field(
        "auto", "What the UNet predicts; 'auto' reads the scheduler config (SD2.1-768 is v_prediction)."
    )


@dataclass
class LoraConfig:
    """LoRA adapters (peft) on the UNet's attention projections; disabled means full fine-tuning."""

    enabled: bool = cfg_field(True, "Train LoRA adapters (true) or every UNet weight (false, full fine-tuning).")
    rank: int = cfg_field(8, "LoRA rank r.", min=1)
    alpha: float = cfg_field(8.0, "LoRA alpha; the update is scaled by alpha / rank.", min=0.0)
    dropout: float = cfg_field(0.0, "Dropout on the LoRA branch.", min=0.0, max=1.0)
    target_modules: list[str] = cfg_field(
        ["to_q", "to_k", "to_v", "to_out.0"], "UNet module names (suffixes) that receive adapters."
    )
    init: Literal["default", "gaussian"] = cfg_field(
        "default",
        "peft init: 'default' zeroes B so the tuned model starts equal to the reference (DPO loss = ln 2 "
        "at step 0); 'gaussian' is the diffusers research script's choice.",
    )


@dataclass
class DataConfig:
    """Preference pairs in the Pick-a-Pic v2 schema (caption, jpg_0, jpg_1, label_0, label_1)."""

    path: str = cfg_field(
        DEMO_TRAIN_PAIRS,
        "Parquet file, folder of parquet shards or glob, a JSONL/CSV pairs file (or a folder with pairs.jsonl/.csv: "
        "prompt, chosen, rejected image paths), or a hub dataset id (yuvalkirstain/pickapic_v2).",
    )
    split: str = cfg_field("train", "Dataset split to read.")
    resolution: int = cfg_field(32, "Training resolution: shorter side resized to it, then cropped square.", min=8)
    random_crop: bool = cfg_field(False, "Random instead of centre crop.")
    random_flip: bool = cfg_field(True, "Flip each image horizontally with probability 0.5 (independently).")
    empty_prompt_prob: float = cfg_field(
        0.0,
        "Probability of training a pair on the empty caption (Diffusion-DPO uses 0.2 on real models; the tiny "
        "demo, 0).",
        min=0.0,
        max=1.0,
    )
    max_pairs: int | None = cfg_field(None, "Use only the first N decided pairs (debugging).", min=1)
    cache_dir: str = cfg_field(
        "cache",
        "Folder for what is computed once from the data and reused by later runs: VAE latents and text "
        "embeddings (`diffalign cache`), AI-feedback scores.",
    )
    cache: Literal["auto", "off", "require"] = cfg_field(
        "auto",
        "Latent/text cache: 'auto' uses it when `diffalign cache` has built it for this model and data (then no "
        "VAE or text encoder is loaded), 'require' fails without it, 'off' always encodes on the fly.",
    )
    relabel_with: str | None = cfg_field(
        None,
        "AI feedback: a scorer (registered, e.g. shapes; your own path/to/file.py:NAME or package.module:NAME; or "
        "remote:http://127.0.0.1:PORT) re-decides the winner of "
        "every pair from the images (Diffusion-DPO's AI-feedback variant) and its scores become the score_0/score_1 "
        "columns; the scores are computed once and kept in cache_dir/relabel.",
    )
    relabel_tie_tolerance: float = cfg_field(
        0.0, "With relabel_with: pairs whose two scores differ by at most this are ties and dropped.", min=0.0
    )
    num_workers: int = cfg_field(0, "DataLoader worker processes (0 with data.streaming).", min=0)
    require_different: bool = cfg_field(
        False, "Drop rows whose are_different column is false (Pick-a-Pic's flag; Diffusion-DPO keeps them)."
    )
    dedupe: bool = cfg_field(
        False,
        "Drop rows whose two images have the same bytes, and repeats of an earlier row's caption with the same two "
        "images (either order), compared by SHA-1 of the image bytes; reads every image once at load.",
    )
    dual_captions: bool = cfg_field(
        False, "Require per-image captions caption_0/caption_1 (Pick-Double-Caption, DualCPO/pick-double-caption)."
    )
    validation_fraction: float = cfg_field(
        0.0,
        "Hold out this fraction of the captions (by a stable hash of the caption: every row of a caption on one "
        "side, the same in every run); 0 = no split.",
        min=0.0,
        max=0.99,
    )
    subset: Literal["train", "validation"] = cfg_field(
        "train", "With validation_fraction > 0: train on the 'train' or the 'validation' captions."
    )
    streaming: bool = cfg_field(
        False,
        "Read the data as a stream (datasets streaming=True): no download before the first step; filters on the "
        "fly; no latent cache; resume re-reads the consumed part of the stream.",
    )
    shuffle_buffer: int = cfg_field(
        0, "With streaming: shuffle shards and a buffer of this many rows, seeded by train.seed per epoch (0: file order).",
        min=0,
    )


@dataclass
class TrainConfig:
    """Optimisation, precision and bookkeeping."""

    output_dir: str = cfg_field("runs/demo-dpo", "Where the LoRA/UNet weights, the resolved config and logs go.")
    max_steps: int = cfg_field(400, "Number of optimizer steps.", min=1)
    batch_size: int = cfg_field(
        16, "Pairs (online methods: prompts, each with rollout.images_per_prompt images) per device per micro-step.",
        min=1,
    )
    grad_accum: int = cfg_field(1, "Micro-steps accumulated per optimizer step.", min=1)
    learning_rate: float = cfg_field(1e-3, "Peak learning rate (after scale_lr, if set).", min=0.0)
    scale_lr: bool = cfg_field(
        False, "Multiply learning_rate by batch_size * grad_accum * processes (the official DPO launchers' --scale_lr)."
    )
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = cfg_field(
        "cosine", "Learning-rate schedule (diffusers.optimization.get_scheduler)."
    )
    warmup_steps: int = cfg_field(20, "Linear warm-up steps of the schedule.", min=0)
    optimizer: Literal["adamw", "adamw8bit", "adafactor"] = cfg_field(
        "adamw", "Optimizer: AdamW (SD1.5/2.1), 8-bit AdamW (needs bitsandbytes) or Adafactor (SDXL)."
    )
    fused_optimizer: bool = cfg_field(
        True,
        "AdamW in one fused kernel call for every parameter (CPU and CUDA; FSDP runs use the foreach kernel); false: "
        "PyTorch's default per-device implementation.",
    )
    adam_beta1: float = cfg_field(0.9, "AdamW beta1.", min=0.0, max=1.0)
    adam_beta2: float = cfg_field(0.999, "AdamW beta2.", min=0.0, max=1.0)
    adam_epsilon: float = cfg_field(1e-8, "AdamW epsilon.", min=0.0)
    weight_decay: float = cfg_field(1e-2, "Decoupled weight decay.", min=0.0)
    max_grad_norm: float | None = cfg_field(1.0, "Clip the gradient norm to this (None: no clipping).", min=0.0)
    mixed_precision: Literal["no", "fp16", "bf16"] = cfg_field(
        "no", "Mixed precision of the trained UNet (accelerate); trainable parameters stay float32."
    )
    gradient_checkpointing: bool = cfg_field(False, "Recompute UNet activations in the backward pass (less memory, ~30 % slower).")
    attention: Literal["sdpa", "xformers"] = cfg_field(
        "sdpa", "Attention backend: PyTorch SDPA, or xformers (pip install 'diffalign[gpu]'; CUDA only)."
    )
    compile: Literal["off", "blocks", "unet"] = cfg_field(
        "off",
        "torch.compile the trained UNet (inductor) for faster steps; for long runs. 'blocks': its repeated transformer "
        "blocks, each compiled once per shape (diffusers' regional compilation; on the CPU benchmark in docs/performance.md it "
        "compiled in under half the whole UNet's time for the same step time); 'unet': the whole UNet as one graph. "
        "PyTorch keeps compiled graphs on disk, so later runs of the same shapes compile in seconds. The LoRA "
        "reference runs the same compiled graphs with the adapters' scale at zero, so it matches the trained model "
        "exactly while the LoRA is zero (loss exactly ln 2 at step 0; tested in bf16). Offline methods with LoRA or "
        "no reference; not with FSDP.",
    )
    channels_last: bool = cfg_field(
        False,
        "Keep the UNet's 4-D weights, and so its convolutions' activations, in the channels-last memory layout "
        "(torch.channels_last), the one GPU tensor-core convolutions prefer. 3 % faster on the CPU's tiny model "
        "(docs/performance.md); scripts/gpu_checks.sh (check channels-last) measures SD1.5 on a GPU. Not with FSDP.",
    )
    allow_tf32: bool = cfg_field(True, "Use TF32 matmuls on Ampere and newer GPUs.")
    offload_reference: bool = cfg_field(
        False, "Full fine-tuning: keep the frozen reference UNet on the CPU and stream it to the GPU per call."
    )
    trackers: list[str] = cfg_field(
        ["tensorboard"], "accelerate trackers for the metrics (tensorboard, wandb, ...; [] for none); logs in OUTPUT_DIR/logs."
    )
    seed: int = cfg_field(0, "Seed of data order, noise and timesteps.")
    log_every: int = cfg_field(10, "Update the progress bar metrics every N optimizer steps.", min=1)
    cpu: bool = cfg_field(False, "Train on the CPU even if a GPU is available.")
    cpu_threads: int | Literal["auto"] = cfg_field(
        "auto",
        "Threads of the CPU operations when training on the CPU (torch.set_num_threads). 'auto': the cores this "
        "process may use (affinity, container quota, PyTorch's one per core) less those other processes keep busy "
        "as the command starts, at least 1, kept for the run; OMP_NUM_THREADS, if set, rules instead. 0: PyTorch's "
        "default. N: N threads. `diffalign cache` follows it too; generate, eval, score, ... run with 'auto'. With "
        "PyTorch's default, two demo trainings side by side on 2 cores ran 3 to 150 times slower each, with 'auto' "
        "about as fast as alone (docs/performance.md, CPU threads).",
    )
    checkpoint_every: int = cfg_field(
        100, "Write a resumable checkpoint (weights, optimizer, scheduler, RNG, data position) every N steps (0: never).",
        min=0,
    )
    keep_checkpoints: int = cfg_field(2, "Keep only the newest K checkpoints under OUTPUT_DIR/checkpoints.", min=1)
    resume: str | None = cfg_field(
        None,
        "Continue a run: 'latest' (the newest checkpoint in output_dir, or a fresh start if the folder holds none and no "
        "finished weights) or a checkpoint folder. Its settings must be the checkpoint's, except bookkeeping and speed "
        "keys and those the resumed run applies (train.max_steps, the learning rate and its schedule, "
        "train.max_grad_norm, train.mixed_precision, objective.beta; see training/resume_rules.py).",
    )
    overwrite: bool = cfg_field(
        False,
        "Start this run in an output_dir that holds another run's checkpoints or weights by deleting that run's "
        "outputs first (without it such a run is refused; two runs never share a folder).",
    )


@dataclass
class MonitorConfig:
    """The reward-hacking monitor of online runs: at the start of every `every`-th round and at the end, the policy
    draws the held-out `prompts` from fixed seeds with the deterministic sampler (DDIM, eta 0), the gold scorer(s)
    judge them, and the gold score is logged and drawn beside the training reward (OUTPUT_DIR/rounds.jsonl,
    rounds.png). When the training reward rises while the gold score falls for `patience` evaluations in a row the
    run warns (and stops with `stop`); the weights with the best gold score are kept in OUTPUT_DIR/best/."""

    scorers: dict[str, Any] = cfg_field(
        {},
        "Gold scorer(s), scorer -> weight or scorer -> {weight: W, OPTION: VALUE, ...} as rollout.rewards; the gold "
        "score is their weighted sum, averaged over the held-out images (rounds.jsonl: gold, and gold/NAME for each "
        "scorer). Empty: no monitor.",
    )
    prompts: str = cfg_field(
        DEMO_HELDOUT_PROMPTS,
        "Held-out prompts: a text file (one per line, # comments skipped) or a pair table (its distinct captions); "
        "not the training prompts (the run warns about those it shares with rollout.prompts).",
    )
    max_prompts: int | None = cfg_field(32, "Use the first N held-out prompts (None: all).", min=1)
    seeds: int = cfg_field(2, "Seeds per prompt (0..N-1), the same at every evaluation.", min=1)
    every: int = cfg_field(
        5,
        "Evaluate the weights that sample rounds 0, N, 2N, ... (once the round is judged, so its training reward "
        "counts) and the final weights.",
        min=1,
    )
    steps: int = cfg_field(20, "DDIM steps of the monitor's samples (eta 0).", min=1)
    guidance: float = cfg_field(5.0, "Classifier-free guidance scale of the monitor's samples.", min=0.0)
    patience: int = cfg_field(
        3,
        "Warn (once per streak) when, this many evaluations in a row, the training reward rose and the gold score "
        "fell against the evaluation before; an evaluation's training reward is the mean of the rounds sampled since "
        "the one before (a tie or a NaN breaks the streak).",
        min=1,
    )
    stop: bool = cfg_field(
        False,
        "End the run at a warning, before training on the round whose evaluation warned; its weights are saved as at "
        "any end.",
    )
    keep_best: bool = cfg_field(
        True,
        "Keep the weights with the best gold score so far in OUTPUT_DIR/best/ (as the final weights are saved, with "
        "config.yaml and best.json: round, step, gold score and its parts).",
    )


@dataclass
class RolloutConfig:
    """Online methods (D3PO, DDPO, GRPO): each round the current policy samples images for a set of
    prompts with the DDIM sampler, keeping every step, and a registered reward judges them."""

    prompts: str = cfg_field(
        DEMO_TRAIN_PAIRS,
        "Training prompts: a text file (one prompt per line) or a pair table (its distinct captions).",
    )
    prompts_per_round: int = cfg_field(
        8, "Prompts sampled per round (over all processes); a multiple of train.batch_size x processes.", min=1
    )
    images_per_prompt: int = cfg_field(
        2, "Images sampled per prompt each round (D3PO compares them: at least 2; GRPO normalises within them).", min=1
    )
    initial_noise: Literal["shared", "distinct"] = cfg_field(
        "shared",
        "Initial noise x_T of a prompt's images: one shared by all (D3PO: they differ only by the eta-noise of the "
        "steps) or one each (DDPO, GRPO groups).",
    )
    steps: int = cfg_field(20, "DDIM sampling steps of a rollout.", min=1)
    guidance: float = cfg_field(5.0, "Classifier-free guidance scale of the sampler.", min=0.0)
    eta: float = cfg_field(1.0, "DDIM eta: 1 samples every step stochastically (D3PO); 0 is deterministic.", min=0.0)
    preference: Literal["reward", "human"] = cfg_field(
        "reward",
        "Who judges a round: the reward (rollout.reward) or people: the run writes the round's images to "
        "OUTPUT_DIR/rounds/round-NNNNNN/ and waits until `diffalign label` on that folder has every prompt decided.",
    )
    reward: str = cfg_field(
        "shapes",
        "The scorer that judges the rollouts: a registered name (`diffalign score --help` lists them), your own as "
        "path/to/file.py:NAME or package.module:NAME (a Scorer class or a function (images, prompts) -> scores), or "
        "remote:http://127.0.0.1:PORT (`diffalign serve-scorer`). Ignored when rollout.rewards is set.",
    )
    rewards: dict[str, Any] = cfg_field(
        {},
        "Several rewards at once, scorer -> weight or scorer -> {weight: W, OPTION: VALUE, ...} (the other keys are "
        "the scorer's constructor options), e.g. {shapes: 1.0, my_rewards.py:colour: 0.5}. The reward of an image is "
        "the weighted sum (NaN, untrained, where any scorer failed); each reward is logged on its own every round "
        "(OUTPUT_DIR/rounds.jsonl and rounds.png; every image's scores in round_scores.jsonl). Names with dots go "
        "inside the mapping ({hpsv2.1: 1.0}), not in a dotted override. Empty: rollout.reward alone, weight 1.",
    )
    reward_normalisation: Literal["per_reward", "sum"] = cfg_field(
        "per_reward",
        "With several rewards, for the methods whose advantages normalise rewards (GRPO and DGPO within each group, "
        "DDPO per prompt): 'per_reward' normalises each reward on its own and sums the weighted advantages (two "
        "rewards on different scales both count); 'sum' normalises the weighted sum of the rewards. With one reward "
        "both are that reward's advantages; D3PO compares the weighted sum.",
    )
    monitor: MonitorConfig = cfg_field(
        MonitorConfig,
        "Reward-hacking monitor: gold scorer(s) on held-out prompts from fixed seeds every few rounds, beside the "
        "training reward.",
    )
    sample_batch_size: int = cfg_field(16, "Images per sampler batch.", min=1)
    compare_base: bool = cfg_field(
        True,
        "With a reward and LoRA: also sample each round's prompts with the base model (adapters off, the same noise) "
        "and log the policy's per-prompt win rate against it in OUTPUT_DIR/rounds.jsonl and rounds.png "
        "(one more sampling pass per round).",
    )
    resolution: int | None = cfg_field(None, "Image size of the rollouts (None: the model's default size).", min=8)
    inner_epochs: int = cfg_field(
        1, "Passes of training over each round's samples before the next round is sampled (PPO's inner epochs).", min=1
    )
    shuffle: bool = cfg_field(
        False,
        "Visit a round's samples in a new seeded random order on every pass (ddpo-pytorch); false: in the order "
        "they were sampled.",
    )


@dataclass
class ReferenceConfig:
    """The reference model's errors computed before training (methods whose reference term depends only on the
    data and the micro-step's draws: Diffusion-DPO and its IPO/hinge forms, DCPO, KTO), and the pool of earlier
    states of the run (methods whose reference is such a pool: SePPO)."""

    precompute: Literal["auto", "on", "off"] = cfg_field(
        "auto",
        "Reference-output pre-pass: before the first step, replay the run's micro-steps (data order, noise and "
        "timesteps), compute the reference's errors in large no-grad batches, keep them under data.cache_dir "
        "(reused by runs with the same data, model, seed and batch: beta and learning-rate sweeps) and skip the "
        "reference forward in training. 'auto': when the method allows it and the run reads the latent cache; "
        "'on': whenever the method allows it (an error otherwise); 'off': a reference forward every micro-step.",
    )
    precompute_batch: int = cfg_field(
        64, "Images per no-grad reference forward of the pre-pass (lower it for SDXL on small GPUs).", min=1
    )

    every: int = cfg_field(
        30, "Pool: keep the LoRA weights every N optimizer steps (30: a secondary review's value).", min=1
    )
    keep: int = cfg_field(
        7, "Pool: keep the newest K states beside the initial model (7: a secondary review's value).", min=1
    )
    selection: Literal["random", "latest", "initial"] = cfg_field(
        "random",
        "Pool: which member is the reference of a micro-step: uniformly at random over the initial model and the kept "
        "states (the paper's Random Checkpoint Replay), the latest, or the initial model only.",
    )
    ema_decay: float = cfg_field(
        0.3,
        "EMA reference (DGPO's reference=ema or clip): after each optimizer step ema += (1 - d)(weights - ema) with "
        "d = min(ema_decay, ema_ramp x step) (the official 0.3 and 0.001: the EMA stays close to the last weights).",
        min=0.0,
        max=1.0,
    )
    ema_ramp: float = cfg_field(0.001, "EMA reference: the decay's ramp per optimizer step (see ema_decay).", min=0.0)


@dataclass
class ValidationConfig:
    """Images sampled during training from fixed prompts and seeds, base and tuned side by side."""

    every: int = cfg_field(
        100, "Sample the validation grid every N optimizer steps and at the end (0: never).", min=0
    )
    prompts: list[str] = cfg_field(
        [
            "a red circle on a orange background",
            "a small orange circle on a black background",
            "a large green triangle on a black background",
            "a large white square on a red background",
        ],
        "Validation prompts (the defaults are held-out captions of the demo's shapes world).",
    )
    seeds: int = cfg_field(2, "Seeds per prompt (0..N-1): the same initial noise for base and tuned.", min=1)
    steps: int = cfg_field(20, "DDIM sampling steps.", min=1)
    guidance: float = cfg_field(5.0, "Classifier-free guidance scale.", min=0.0)


@dataclass
class RunConfig:
    """A training run: `diffalign train [CONFIG.yaml] [key=value ...]`."""

    model: ModelConfig = cfg_field(ModelConfig, "Base model.")
    lora: LoraConfig = cfg_field(LoraConfig, "LoRA adapters.")
    data: DataConfig = cfg_field(DataConfig, "Preference data.")
    objective: ObjectiveConfig = cfg_field(DPOConfig, "Training objective (the method).")
    train: TrainConfig = cfg_field(TrainConfig, "Optimisation and bookkeeping.")
    validation: ValidationConfig = cfg_field(ValidationConfig, "Validation images during training.")
    rollout: RolloutConfig = cfg_field(RolloutConfig, "Online sampling (methods that learn from their own images).")
    reference: ReferenceConfig = cfg_field(
        ReferenceConfig, "The reference: its precomputed errors, or a pool of earlier states of the run (SePPO)."
    )
