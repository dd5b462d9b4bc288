"""The options of `diffalign pairs` (`feedback.build_pairs` runs them): a light module, so building the command
line loads no model library."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config.options import (DTYPES, MISSING, OLD_DTYPES, batch_size_option, check_minimums, device_option,
                              dtype_option, max_prompts_option, not_an_option, option, out_option, overwrite_option,
                              progress_option, prompts_option, scorer_options_option, scorers_option, seed_option,
                              shard_size_option, weights_option)

STRATEGIES = ("best-worst", "margin")
DEMO_GROUPS = 2400


@dataclass
class PairsJob:
    """Everything `build_pairs` needs: what to make (settings that a resumed run must share) and how; the options
    of `diffalign pairs`. `prompts` is a list, or as typed: `demo` or a prompt file, read when the job is made."""

    prompts: list[str] | str | Path = prompts_option(
        MISSING, "prompt file (.txt one per line, .csv/.tsv/.jsonl with a prompt column), or `demo`: the shapes "
        "world's training captions as the embedded demo data draws them (2400, shuffled by --seed)")
    out: Path = out_option("output folder (created; a rerun resumes it)")
    model: str = option(MISSING, "pipeline: hub id or local folder (e.g. assets/tiny-sd)")
    scorers: list[str] = scorers_option([])
    prompts_source: str = not_an_option("", "where the prompts came from, for the dataset card")
    loras: list[tuple[str, float]] = option([], "LoRA folder loaded with diffusers' load_lora_weights, at SCALE "
                                            "(default 1; repeatable)", flag="--lora", repeat=True,
                                            metavar="PATH[@SCALE]")
    scorer_options: dict[str, dict[str, object]] = scorer_options_option()
    weights: list[float] | None = weights_option()
    k: int = option(4, "images per prompt")
    steps: int = option(20, "sampling steps", min=1)
    guidance: float = option(5.0, "classifier-free guidance scale")
    size: int | None = option(None, "image size (default: the model's native size)")
    seed: int = seed_option("seed of the image seeds, the winners' sides and the demo prompts")
    strategy: str = option("best-worst", "how pairs are chosen", choices=STRATEGIES)
    min_margin: float = option(0.0, "smallest combined-score margin of a pair")
    shard_size: int = shard_size_option(1000, "rows per parquet shard (whole prompts: a shard closes once it has "
                                        "this many)")
    # run-time choices: they may change between a run and its resumption
    max_prompts: int | None = max_prompts_option("stop after the first N prompts (resume later)")
    device: str | None = device_option()
    dtype: str = dtype_option("float32", "generator")
    scorer_dtype: str | None = option(None, "scorer precision (auto: float16 on CUDA, float32 on the CPU; default: "
                                      "each scorer's own)", choices=DTYPES, old_values=OLD_DTYPES,
                                      metavar="{" + ",".join(DTYPES) + "}")
    batch_size: int = batch_size_option(32, "images per generation and scorer call")
    overwrite: bool = overwrite_option()
    progress: bool = progress_option()
    command: str | None = not_an_option(None, "the command line, for the dataset card")

    def __post_init__(self) -> None:
        from ..evaluation.model_specs import parse_lora
        from ..evaluation.scoring import scorer_choice
        from .build_pairs import prompt_list

        self.out = Path(self.out)
        if isinstance(self.prompts, (str, Path)):
            self.prompts, self.prompts_source = prompt_list(str(self.prompts), self.seed)
        self.loras = [parse_lora(lora) if isinstance(lora, str) else tuple(lora) for lora in self.loras]
        self.scorers, self.scorer_options, self.weights = scorer_choice(
            self.scorers, self.scorer_options, self.weights, required=False, check=False)

    def settings(self) -> dict:
        """The choices that decide the data; a resumed run must use the same."""
        digest = hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16]
        keep = ("model", "loras", "scorers", "scorer_options", "weights", "k", "steps", "guidance", "size", "seed",
                "strategy", "min_margin", "shard_size")
        data = asdict(self)
        settings = {key: data[key] for key in keep}
        settings["loras"] = [list(lora) for lora in self.loras]
        settings.update(prompts=len(self.prompts), prompts_sha256=digest)
        return json.loads(json.dumps(settings))

    def check(self) -> None:
        """Raise a ValueError naming the first invalid choice."""
        import numpy as np

        from ..evaluation.scoring import scorer_choice
        from .build_pairs import choose_pairs

        scorer_choice(self.scorers, self.scorer_options)  # at least one scorer, every name registered
        if not self.prompts:
            raise ValueError(f"no prompts in {self.prompts_source or 'the prompt list'}")
        if self.k < 2:
            raise ValueError(f"--k must be at least 2 (images per prompt to compare), got {self.k}")
        check_minimums(self)
        choose_pairs(np.zeros(0), self.strategy, self.min_margin)
