"""What writes DCPO's second captions: image captioners and caption perturbers, by hub id, folder or rule.

- A **captioner** says what an image shows: `captioner(images, prompts) -> captions`. Any transformers
  image-to-text model (`AutoModelForImageTextToText`: BLIP, GIT, LLaVA, a vision-encoder-decoder, ...) by
  hub id or local folder, batched, fp16 on a GPU; a chat model (its processor has a chat template) is asked
  `instruction` about each image, with the image's prompt filled in, as DCPO asked LLaVA. For the embedded
  world, `shapes` measures each synthetic image and names what it shows (`ShapesCaptioner`).
- A **perturber** rewrites a caption at a chosen diversity: `perturber(captions, rows) -> captions`. Any
  transformers text-to-text (`AutoModelForSeq2SeqLM`, e.g. DIPPER, T5) or causal model (`AutoModelForCausalLM`),
  prompted with `template` (default: DIPPER's control codes and DCPO's instruction), sampled with top-p 0.75
  as DCPO's script; `shapes` swaps attributes of a shapes-world caption (`ShapesPerturber`).

Weights load from safetensors only and remote code never runs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

DIVERSITY_LEVELS = {"weak": 40, "medium": 60, "strong": 80}  # DCPO's lex_diversity settings
DIPPER_TEMPLATE = "lexical = {lexical}, order = {order} Paraphrase and perturb the following image caption. <sent> {caption} </sent>"
CHAT_INSTRUCTION = "Describe this image in one sentence. It was generated for the prompt: {prompt}"


class Captioner(Protocol):
    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]: ...


class Perturber(Protocol):
    def __call__(self, captions: Sequence[str], rows: Sequence[int]) -> list[str]: ...


def diversity_value(diversity: str | int) -> int:
    """DIPPER's lexical diversity (0-100) from a level name (weak 40, medium 60, strong 80) or a number."""
    if isinstance(diversity, str) and not diversity.isdigit():
        if diversity not in DIVERSITY_LEVELS:
            raise ValueError(f"unknown diversity {diversity!r}: weak, medium, strong or a number 0-100")
        return DIVERSITY_LEVELS[diversity]
    value = int(diversity)
    if not 0 <= value <= 100:
        raise ValueError(f"diversity must lie in 0-100, got {value}")
    return value


def _device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, torch.dtype]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
             "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if dtype in (None, "auto"):
        return dev, torch.float16 if dev.type == "cuda" else torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: float32, float16, bfloat16 or auto")
    return dev, names[dtype]


def _new_tokens(sequences: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
    """The generated part of `sequences`: decoder-only models return the prompt first, which is cut off."""
    if input_ids is None or sequences.shape[1] < input_ids.shape[1]:
        return sequences
    if torch.equal(sequences[:, : input_ids.shape[1]].cpu(), input_ids.cpu()):
        return sequences[:, input_ids.shape[1]:]
    return sequences


class ImageCaptioner:
    """A transformers image-to-text model as a captioner (greedy decoding, `batch_size` images a call)."""

    def __init__(self, model: str, device: str | None = None, dtype: str | None = None, batch_size: int = 8,
                 instruction: str | None = None, max_new_tokens: int = 77) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device, self.dtype = _device_and_dtype(device, dtype)
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype, use_safetensors=True)
        self.model.to(self.device).eval()
        self.chat = bool(getattr(self.processor, "chat_template", None))
        self.instruction = instruction if instruction is not None else (CHAT_INSTRUCTION if self.chat else None)
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.name = model

    def _inputs(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
        images = [image.convert("RGB") for image in images]
        if self.chat:
            texts = [self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"},
                                              {"type": "text", "text": self.instruction.format(prompt=p)}]}],
                add_generation_prompt=True) for p in prompts]
            return self.processor(images=images, text=texts, return_tensors="pt", padding=True)
        if self.instruction:  # a text prefix the caption continues (BLIP's conditional captioning)
            return self.processor(images=images, text=[self.instruction.format(prompt=p) for p in prompts],
                                  return_tensors="pt", padding=True)
        return self.processor(images=images, return_tensors="pt")

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        """One caption per image, its prompt filled into the instruction of a chat model."""
        out: list[str] = []
        for start in range(0, len(images), self.batch_size):
            inputs = self._inputs(images[start:start + self.batch_size], prompts[start:start + self.batch_size])
            inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                      for k, v in inputs.items() if isinstance(v, torch.Tensor) and k != "token_type_ids"}
            sequences = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            new = _new_tokens(sequences, inputs.get("input_ids"))
            out.extend(text.strip() for text in self.processor.batch_decode(new, skip_special_tokens=True))
        return out


class TextPerturber:
    """A transformers text-to-text or causal model as a perturber: `template` filled with each caption and the
    diversity (`{lexical}` = 100 − diversity and `{order}` = 100 − order diversity are DIPPER's control codes),
    sampled with top-p `top_p`, seeded by the first row of each call (a resumed shard draws the same)."""

    def __init__(self, model: str, diversity: str | int = "medium", order_diversity: int = 0,
                 template: str = DIPPER_TEMPLATE, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 8, max_new_tokens: int = 256, top_p: float = 0.75, seed: int = 0) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        self.device, self.dtype = _device_and_dtype(device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.seq2seq = bool(getattr(AutoConfig.from_pretrained(model), "is_encoder_decoder", False))
        auto = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        self.model = auto.from_pretrained(model, dtype=self.dtype, use_safetensors=True).to(self.device).eval()
        if not self.seq2seq:
            self.tokenizer.padding_side = "left"  # generation continues every prompt from its own last token
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        self.diversity = diversity_value(diversity)
        self.order = order_diversity
        self.template, self.top_p, self.seed = template, top_p, seed
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.chat = not self.seq2seq and bool(getattr(self.tokenizer, "chat_template", None))
        self.name = model

    def prompt(self, caption: str) -> str:
        """The model's input for one caption."""
        text = self.template.format(caption=caption, diversity=self.diversity, lexical=100 - self.diversity,
                                    order=100 - self.order)
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], rows: Sequence[int]) -> list[str]:
        """One perturbed caption per caption."""
        out: list[str] = []
        for start in range(0, len(captions), self.batch_size):
            torch.manual_seed(self.seed + int(rows[start]))
            batch = [self.prompt(c) for c in captions[start:start + self.batch_size]]
            inputs = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True).to(self.device)
            inputs.pop("token_type_ids", None)  # a BERT-style tokenizer's; generation does not take them
            sequences = self.model.generate(**inputs, do_sample=True, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                            pad_token_id=self.tokenizer.pad_token_id)
            new = sequences if self.seq2seq else _new_tokens(sequences, inputs["input_ids"])
            out.extend(text.strip() for text in self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out


class ShapesCaptioner:
    """The shapes world's rule-based captioner: the colours, shape and size each image shows, measured by the
    `shapes` reward's image analysis, written as a caption of the world ("a small red circle on a blue
    background"; "a plain blue background" when no shape is found)."""

    name = "shapes"

    def __call__(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[str]:
        """What each image shows (`prompts` are not read: the caption comes from the pixels alone)."""
        from ..rewards.shapes import classify, measure
        from ..synthetic.domain import IMAGE_SIZE

        out = []
        for image in images:
            rgb = image.convert("RGB")
            if rgb.size != (IMAGE_SIZE, IMAGE_SIZE):
                rgb = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            seen = classify(measure(np.asarray(rgb, dtype=np.float64) / 255.0))
            if seen["shape"] is None:
                out.append(f"a plain {seen['background']} background")
            else:
                out.append(f"a {seen['size']} {seen['colour']} {seen['shape']} on a {seen['background']} background")
        return out


class ShapesPerturber:
    """The shapes world's rule-based perturber: changes the shape's colour, the shape, then the background of a
    caption of the world, one attribute per 30 points of diversity (weak 40: 1, medium 60: 2, strong 80: 3),
    each row's choice seeded by (seed, row)."""

    name = "shapes"

    def __init__(self, diversity: str | int = "medium", seed: int = 0) -> None:
        self.diversity = diversity_value(diversity)
        self.seed = seed

    def __call__(self, captions: Sequence[str], rows: Sequence[int]) -> list[str]:
        """One perturbed caption per caption; a caption outside the world is an error naming it."""
        from ..synthetic.domain import COLOURS, SHAPES, SceneSpec, parse_caption

        changes = max(1, min(3, round(self.diversity / 30)))
        out = []
        for caption, row in zip(captions, rows):
            spec = parse_caption(caption)
            rng = random.Random(f"{self.seed}:{row}")
            colour, shape, background = spec.colour, spec.shape, spec.background
            for attribute in ("colour", "shape", "background")[:changes]:
                if attribute == "colour":
                    colour = rng.choice([c for c in COLOURS if c not in (colour, background)])
                elif attribute == "shape":
                    shape = rng.choice([s for s in SHAPES if s != shape])
                else:
                    background = rng.choice([c for c in COLOURS if c not in (colour, background)])
            out.append(SceneSpec(colour, shape, background, spec.size).caption)
        return out


RULE_CAPTIONERS = {"shapes": ShapesCaptioner}
RULE_PERTURBERS = {"shapes": ShapesPerturber}


def build_captioner(name: str, **options: Any) -> Captioner:
    """A rule-based captioner by name (`shapes`) or a transformers image-to-text model by hub id or folder."""
    if name in RULE_CAPTIONERS:
        return RULE_CAPTIONERS[name]()
    return ImageCaptioner(name, **options)


def build_perturber(name: str, diversity: str | int = "medium", seed: int = 0, **options: Any) -> Perturber:
    """A rule-based perturber by name (`shapes`) or a transformers text model by hub id or folder."""
    if name in RULE_PERTURBERS:
        return RULE_PERTURBERS[name](diversity, seed)
    return TextPerturber(name, diversity=diversity, seed=seed, **options)
