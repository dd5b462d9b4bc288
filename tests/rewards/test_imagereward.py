"""ImageReward rebuilt on timm + transformers, checked on a tiny random replica of the published layout.

The replica's state dict is written here under the original checkpoint's key names, and the scores
are compared with a forward pass of BLIP written below in plain torch ops from those tensors, so a
mis-mapped key, a causal self-attention or a wrong preprocessing step makes the comparison fail.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffalign.rewards import build_scorer
from diffalign.rewards import imagereward as ir

MEAN, STD = 0.16717362830052426, 1.0333394966054072
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "green", "cat", "dog", "photo", "of", "the", "on", "grass"]
VOCAB_SIZE = len(VOCAB) + 2  # + [DEC], [ENC]
HIDDEN, LAYERS, TEXT_HEADS, INTERMEDIATE, MAX_POS = 32, 2, 4, 64, 40
WIDTH, DEPTH, VISION_HEADS, PATCH, IMAGE, MLP = 48, 2, 4, 8, 16, 96
MED_CONFIG = {
    "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "hidden_size": HIDDEN, "initializer_range": 0.02, "intermediate_size": INTERMEDIATE, "layer_norm_eps": 1e-12,
    "max_position_embeddings": MAX_POS, "model_type": "bert", "num_attention_heads": TEXT_HEADS,
    "num_hidden_layers": LAYERS, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": VOCAB_SIZE,
    "encoder_width": HIDDEN, "add_cross_attention": True,
}


def original_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the key names of ImageReward's modules (BLIP_Pretrain + MLP)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def linear(name: str, n_in: int, n_out: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = rand(n_out, n_in, scale=n_in**-0.5), rand(n_out, scale=0.1)

    def norm(name: str, n: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = 1 + rand(n, scale=0.2), rand(n, scale=0.2)

    v = "blip.visual_encoder."
    sd[v + "cls_token"] = rand(1, 1, WIDTH, scale=1.0)
    sd[v + "pos_embed"] = rand(1, (IMAGE // PATCH) ** 2 + 1, WIDTH, scale=0.5)
    sd[v + "patch_embed.proj.weight"] = rand(WIDTH, 3, PATCH, PATCH, scale=(3 * PATCH * PATCH) ** -0.5)
    sd[v + "patch_embed.proj.bias"] = rand(WIDTH, scale=0.1)
    for i in range(DEPTH):
        b = f"{v}blocks.{i}."
        norm(b + "norm1", WIDTH)
        linear(b + "attn.qkv", WIDTH, 3 * WIDTH)
        linear(b + "attn.proj", WIDTH, WIDTH)
        norm(b + "norm2", WIDTH)
        linear(b + "mlp.fc1", WIDTH, MLP)
        linear(b + "mlp.fc2", MLP, WIDTH)
    norm(v + "norm", WIDTH)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = rand(VOCAB_SIZE, HIDDEN, scale=1.0)
    sd[t + "embeddings.position_embeddings.weight"] = rand(MAX_POS, HIDDEN, scale=0.5)
    sd[t + "embeddings.position_ids"] = torch.arange(MAX_POS)[None]
    norm(t + "embeddings.LayerNorm", HIDDEN)
    for i in range(LAYERS):
        b = f"{t}encoder.layer.{i}."
        for part, kv_width in (("attention", HIDDEN), ("crossattention", WIDTH)):
            linear(f"{b}{part}.self.query", HIDDEN, HIDDEN)
            linear(f"{b}{part}.self.key", kv_width, HIDDEN)
            linear(f"{b}{part}.self.value", kv_width, HIDDEN)
            linear(f"{b}{part}.output.dense", HIDDEN, HIDDEN)
            norm(f"{b}{part}.output.LayerNorm", HIDDEN)
        linear(b + "intermediate.dense", HIDDEN, INTERMEDIATE)
        linear(b + "output.dense", INTERMEDIATE, HIDDEN)
        norm(b + "output.LayerNorm", HIDDEN)
    linear("blip.vision_proj", WIDTH, 256)
    linear("blip.text_proj", HIDDEN, 256)
    for index, (n_in, n_out) in zip((0, 2, 4, 6, 7), ((HIDDEN, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        linear(f"mlp.layers.{index}", n_in, n_out)
    return sd


# ---- BLIP's forward in plain torch, from the original-layout tensors ------------------------------

def lin(sd: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def layer_norm(sd: dict, name: str, x: torch.Tensor, eps: float) -> torch.Tensor:
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    q, k, v = (x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2) for x in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    probs = torch.softmax(scores if bias is None else scores + bias, dim=-1)
    return (probs @ v).transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def reference_vit(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    v = "blip.visual_encoder."
    x = F.conv2d(pixels, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(len(x), -1, -1), x], dim=1) + sd[v + "pos_embed"]
    for i in range(DEPTH):
        b = f"{v}blocks.{i}."
        q, k, val = lin(sd, b + "attn.qkv", layer_norm(sd, b + "norm1", x, 1e-6)).chunk(3, dim=-1)
        x = x + lin(sd, b + "attn.proj", attention(q, k, val, VISION_HEADS))
        x = x + lin(sd, b + "mlp.fc2", F.gelu(lin(sd, b + "mlp.fc1", layer_norm(sd, b + "norm2", x, 1e-6))))
    return layer_norm(sd, v + "norm", x, 1e-6)


def reference_cls(sd: dict, ids: torch.Tensor, mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    t = "blip.text_encoder."
    h = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    h = layer_norm(sd, t + "embeddings.LayerNorm", h, 1e-12)
    bias = (1.0 - mask[:, None, None, :].float()) * -10000.0  # med.py's extended mask, bidirectional
    for i in range(LAYERS):
        b = f"{t}encoder.layer.{i}."
        for part in ("attention", "crossattention"):
            s, context = f"{b}{part}.self.", h if part == "attention" else image_tokens
            a = attention(lin(sd, s + "query", h), lin(sd, s + "key", context), lin(sd, s + "value", context), TEXT_HEADS,
                          bias if part == "attention" else None)
            h = layer_norm(sd, f"{b}{part}.output.LayerNorm", lin(sd, f"{b}{part}.output.dense", a) + h, 1e-12)
        ffn = lin(sd, b + "output.dense", F.gelu(lin(sd, b + "intermediate.dense", h)))
        h = layer_norm(sd, b + "output.LayerNorm", ffn + h, 1e-12)
    return h[:, 0]


def reference_rewards(sd: dict, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r = reference_cls(sd, ids, mask, reference_vit(sd, pixels))
    for index in (0, 2, 4, 6, 7):
        r = lin(sd, f"mlp.layers.{index}", r)
    return (r.squeeze(-1) - MEAN) / STD


def reference_pixels(image: Image.Image) -> torch.Tensor:
    """Shortest side to IMAGE (bicubic, PIL), centre crop, then RGB, /255 and OpenAI mean/std."""
    w, h = image.size
    size = (IMAGE, int(IMAGE * h / w)) if w <= h else (int(IMAGE * w / h), IMAGE)
    image = image.resize(size, Image.BICUBIC)
    left, top = round((size[0] - IMAGE) / 2), round((size[1] - IMAGE) / 2)
    image = image.crop((left, top, left + IMAGE, top + IMAGE)).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[:, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[:, None, None]
    return (x - mean) / std


def reference_tokens(prompt: str) -> tuple[list[int], list[int]]:
    """WordPiece of whole words of the tiny vocab: [CLS] words[:33] [SEP] [PAD]... (35 ids)."""
    words = [VOCAB.index(w) if w in VOCAB else VOCAB.index("[UNK]") for w in prompt.lower().split()]
    ids = [VOCAB.index("[CLS]"), *words[:33], VOCAB.index("[SEP]")]
    return ids + [0] * (35 - len(ids)), [1] * len(ids) + [0] * (35 - len(ids))


# ---- fixtures --------------------------------------------------------------------------------------

def write_checkpoint(folder: Path, sd: dict[str, torch.Tensor], med_config: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(med_config or MED_CONFIG))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imagereward")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return {"checkpoint": write_checkpoint(root / "ckpt", original_state_dict()), "tokenizer": root / "tokenizer"}


@pytest.fixture(scope="module")
def scorer(tiny) -> ir.ImageRewardScorer:
    return ir.ImageRewardScorer(str(tiny["checkpoint"]), tokenizer=str(tiny["tokenizer"]), device="cpu", vision_heads=VISION_HEADS)


def sample_images(n: int = 4, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(16, 16), (20, 31), (33, 17), (24, 24), (16, 40), (41, 19)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]
    rgba = rng.integers(0, 256, (29, 22, 4), dtype=np.uint8)  # transparency makes resize-then-RGB matter
    return images[:-1] + [Image.fromarray(rgba, "RGBA")] if n > 1 else images


PROMPTS = ["a red cat", "a photo of the dog on grass", "zebra " + " ".join(["blue"] * 40), "green"]


# ---- tests -----------------------------------------------------------------------------------------

def test_scores_equal_plain_torch_blip_forward(scorer):
    images, sd = sample_images(), original_state_dict()
    tokens = [reference_tokens(p) for p in PROMPTS]
    ids, mask = torch.tensor([t[0] for t in tokens]), torch.tensor([t[1] for t in tokens])
    expected = reference_rewards(sd, torch.stack([reference_pixels(im) for im in images]), ids, mask)
    got = scorer.score(images, PROMPTS)
    assert got.dtype == torch.float32 and got.shape == (4,)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert expected.std() > 0.1  # the replica's scores vary, so a wrong path could not agree by chance


def test_pixels_and_image_tokens_equal_the_reference(scorer):
    images, sd = sample_images(), original_state_dict()
    pixels = torch.stack([scorer.preprocess(im) for im in images])
    torch.testing.assert_close(pixels, torch.stack([reference_pixels(im) for im in images]), atol=1e-6, rtol=0)
    with torch.no_grad():
        tokens = scorer.model.vision.forward_features(pixels)
    assert tokens.shape == (4, (IMAGE // PATCH) ** 2 + 1, WIDTH)
    torch.testing.assert_close(tokens, reference_vit(sd, pixels), atol=1e-5, rtol=1e-5)


def test_score_depends_on_every_prompt_token_and_on_the_image(scorer):
    image = sample_images(1)[0]
    same_image = scorer.score([image] * 3, ["a red cat", "a red dog", "a blue cat"])
    assert len({round(s, 4) for s in same_image.tolist()}) == 3  # later tokens reach [CLS]: not causal
    images = sample_images()
    assert abs(float(scorer.score(images[:2], ["a red cat"] * 2).diff())) > 1e-3


def test_tokenizer_is_blips_with_dec_and_enc_tokens(scorer):
    tok = scorer.tokenizer
    assert len(tok) == VOCAB_SIZE
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [len(VOCAB), len(VOCAB) + 1]
    assert tok.bos_token == "[DEC]"
    tokens = scorer.tokenize(PROMPTS)
    assert tokens["input_ids"].tolist() == [reference_tokens(p)[0] for p in PROMPTS]
    assert tokens["attention_mask"].tolist() == [reference_tokens(p)[1] for p in PROMPTS]


def test_batched_scores_equal_one_at_a_time(scorer):
    images, prompts = sample_images(6, seed=1), ["a red cat", "the dog", "green grass", "a photo", "blue", "of"]
    scorer.batch_size = 4
    try:
        batched = scorer.score(images, prompts)
    finally:
        scorer.batch_size = 16
    single = torch.cat([scorer.score([im], [p]) for im, p in zip(images, prompts)])
    assert (batched - single).abs().max() < 1e-4


def test_uint8_tensors_score_like_their_pil_images(scorer):
    array = np.random.default_rng(2).integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    pil = scorer.score([Image.fromarray(a) for a in array], ["a cat", "a dog"])
    torch.testing.assert_close(scorer.score(torch.from_numpy(array).permute(0, 3, 1, 2), ["a cat", "a dog"]), pil)
    assert scorer.score([], []).shape == (0,)
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer.score(sample_images(2), ["only one"])


def test_safetensors_checkpoint_gives_the_same_scores(tiny, scorer, tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in original_state_dict().items()}, tmp_path / "ImageReward.safetensors")
    (tmp_path / "med_config.json").write_text(json.dumps(MED_CONFIG))
    other = ir.ImageRewardScorer(str(tmp_path), tokenizer=str(tiny["tokenizer"]), device="cpu", vision_heads=VISION_HEADS)
    images = sample_images()
    torch.testing.assert_close(other.score(images, PROMPTS), scorer.score(images, PROMPTS))


def test_vision_geometry_is_read_from_the_checkpoint():
    geometry = ir.infer_vision_geometry(original_state_dict(), num_heads=VISION_HEADS)
    assert geometry == ir.VisionGeometry(IMAGE, PATCH, WIDTH, DEPTH, VISION_HEADS, MLP / WIDTH)
    with pytest.raises(ValueError, match="vision_heads"):
        ir.infer_vision_geometry(original_state_dict())  # width 48 has no 64-wide heads


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda sd: sd.pop("blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"), "missing keys: blip.text_encoder.encoder.layer.1.crossattention.self.key.weight"),
        (lambda sd: sd.pop("mlp.layers.7.bias"), "missing keys: mlp.layers.7.bias"),
        (lambda sd: sd.update({"blip.visual_encoder.blocks.0.attn.q_bias": torch.zeros(WIDTH)}), "unexpected keys: blip.visual_encoder.blocks.0.attn.q_bias"),
    ],
)
def test_missing_or_unexpected_keys_are_named(tiny, tmp_path, edit, named):
    sd = original_state_dict()
    edit(sd)
    folder = write_checkpoint(tmp_path, sd)
    with pytest.raises(ir.CheckpointMismatchError, match=named.replace(".", r"\.")):
        ir.ImageRewardScorer(str(folder), tokenizer=str(tiny["tokenizer"]), device="cpu", vision_heads=VISION_HEADS)


def test_med_config_that_does_not_fit_the_tensors_is_refused(tiny, tmp_path):
    folder = write_checkpoint(tmp_path, original_state_dict(), dict(MED_CONFIG, intermediate_size=2 * INTERMEDIATE))
    with pytest.raises(ir.CheckpointMismatchError, match="intermediate.dense.weight"):
        ir.ImageRewardScorer(str(folder), tokenizer=str(tiny["tokenizer"]), device="cpu", vision_heads=VISION_HEADS)


def test_unused_checkpoint_keys_are_listed_at_debug_level(tiny, caplog):
    with caplog.at_level(logging.DEBUG, logger=ir.__name__):
        ir.ImageRewardScorer(str(tiny["checkpoint"]), tokenizer=str(tiny["tokenizer"]), device="cpu", vision_heads=VISION_HEADS)
    logged = caplog.text
    assert "blip.vision_proj.weight" in logged and "blip.text_proj.bias" in logged
    assert "blip.text_encoder.embeddings.position_ids" in logged


def test_missing_files_say_what_to_download_and_where(tiny, tmp_path, monkeypatch):
    tok = str(tiny["tokenizer"])
    with pytest.raises(FileNotFoundError, match=r"no ImageReward\.safetensors or ImageReward\.pt in .*resolve/main/ImageReward\.pt"):
        ir.ImageRewardScorer(str(tmp_path), tokenizer=tok)
    torch.save({}, tmp_path / "ImageReward.pt")
    with pytest.raises(FileNotFoundError, match=r"med_config\.json does not exist: download .*resolve/main/med_config\.json"):
        ir.ImageRewardScorer(str(tmp_path), tokenizer=tok)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ir.ImageRewardScorer(str(tmp_path / "nowhere" / "ImageReward.pt"), tokenizer=tok)
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        ir.ImageRewardScorer(str(tiny["checkpoint"]), tokenizer=str(tmp_path / "no-tokenizer"))

    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id: str, filename: str, **kwargs: object) -> str:
        raise LocalEntryNotFoundError(f"{filename} is not in the cache and the hub cannot be reached")

    monkeypatch.setattr(ir, "hf_hub_download", offline)
    with pytest.raises(FileNotFoundError, match=r"https://huggingface\.co/THUDM/ImageReward/resolve/main/ImageReward\.pt .*checkpoint='<that folder>'"):
        ir.ImageRewardScorer("THUDM/ImageReward", tokenizer=tok)


def test_registered_by_name(tiny):
    scorer = build_scorer(
        "imagereward", checkpoint=str(tiny["checkpoint"]), tokenizer=str(tiny["tokenizer"]), device="cpu", vision_heads=VISION_HEADS
    )
    assert isinstance(scorer, ir.ImageRewardScorer)
    assert (scorer.name, scorer.scale, scorer.logit_scale) == ("imagereward", "imagereward (standardised, ~N(0,1))", 1.0)
    assert scorer.dtype == torch.float32 and next(scorer.model.head.parameters()).dtype == torch.float32


def test_bf16_backbone_keeps_a_float32_head_and_output(tiny, scorer):
    low = ir.ImageRewardScorer(str(tiny["checkpoint"]), tokenizer=str(tiny["tokenizer"]), dtype="bf16", device="cpu", vision_heads=VISION_HEADS)
    assert next(low.model.vision.parameters()).dtype == torch.bfloat16
    images = sample_images()
    got = low.score(images, PROMPTS)
    assert got.dtype == torch.float32
    assert (got - scorer.score(images, PROMPTS)).abs().max() < 0.25


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_defaults_to_fp16_and_agrees_with_cpu(tiny, scorer):
    gpu = ir.ImageRewardScorer(str(tiny["checkpoint"]), tokenizer=str(tiny["tokenizer"]), device="cuda", vision_heads=VISION_HEADS)
    assert gpu.dtype == torch.float16 and next(gpu.model.text.parameters()).device.type == "cuda"
    images = sample_images()
    got = gpu.score(images, PROMPTS)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert (got - scorer.score(images, PROMPTS)).abs().max() < 0.05
