"""The options of `diffalign captions` (`feedback.caption_dataset` runs them): a light module, so building the
command line loads no model library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config.options import (MISSING, batch_size_option, check_minimums, device_option, dtype_option, not_an_option,
                              option, out_option, overwrite_option, progress_option, seed_option, shard_size_option)

STRATEGIES = ("captioning", "perturbation", "hybrid")


@dataclass
class CaptionJob:
    """What `caption_dataset` reads, how it writes the second captions, and where: the options of
    `diffalign captions`."""

    source: str = option(MISSING, "Pick-a-Pic-schema parquet file, folder of shards, glob, pairs file or hub id",
                         positional=True)
    out: Path = out_option("output folder (created; a rerun resumes it)")
    strategy: str = option("captioning", "how the captions are made", choices=STRATEGIES)
    captioner: str | None = option(None, "image-to-text model: hub id, folder, or 'shapes' (rule-based, the "
                                   "embedded world)")
    perturber: str | None = option(None, "text-to-text or causal model: hub id, folder, or 'shapes' (rule-based)")
    diversity: str = option("medium", "perturbation strength: weak (40), medium (60), strong (80) or 0-100 "
                            "(DIPPER's lexical diversity)")
    instruction: str | None = option(None, "what a chat captioner is asked, {prompt} filled in (default: describe "
                                     "the image in one sentence, given its prompt); for other captioners a text "
                                     "prefix the caption continues")
    template: str | None = option(None, "the perturber's input, with {caption}, {diversity}, {lexical} (100 - "
                                  "diversity) and {order} (default: DIPPER's 'lexical = {lexical}, order = {order} "
                                  "Paraphrase and perturb the following image caption. <sent> {caption} </sent>')")
    seed: int = seed_option("seed of the perturber's sampling")
    shard_size: int = shard_size_option()
    device: str | None = device_option()
    dtype: str | None = dtype_option(None, "model", "auto")
    batch_size: int = batch_size_option(8, "pairs per model call")
    overwrite: bool = overwrite_option()
    progress: bool = progress_option()
    command: str | None = not_an_option(None, "the command line, for the dataset card")

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    def check(self) -> None:
        """Raise a ValueError naming the first invalid or missing choice."""
        from .captioners import diversity_value

        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; use one of {', '.join(STRATEGIES)}")
        if self.strategy in ("captioning", "hybrid") and not self.captioner:
            raise ValueError(f"--strategy {self.strategy} needs --captioner (a hub id, a folder, or 'shapes')")
        if self.strategy in ("perturbation", "hybrid") and not self.perturber:
            raise ValueError(f"--strategy {self.strategy} needs --perturber (a hub id, a folder, or 'shapes')")
        diversity_value(self.diversity)
        check_minimums(self)
        if Path(self.out).resolve() == Path(self.source).resolve() or (
                Path(self.source).is_file() and Path(self.out).resolve() == Path(self.source).resolve().parent):
            raise ValueError(f"--out {self.out} is the source's own folder: write the captioned dataset elsewhere")

    def settings(self, rows: int) -> dict:
        """What the dataset is made with (a resumed run must match)."""
        from ..data.pairs import source_key
        from .captioners import diversity_value

        return {"source": self.source, "source_key": source_key(self.source, "train", None), "source_rows": rows,
                "strategy": self.strategy, "captioner": self.captioner if self.strategy != "perturbation" else None,
                "perturber": self.perturber if self.strategy != "captioning" else None,
                "diversity": diversity_value(self.diversity) if self.strategy != "captioning" else None,
                "instruction": self.instruction, "template": self.template, "seed": self.seed,
                "shard_size": self.shard_size}
