import open_clip
import pytest

PROMPTS = [
    "a red circle on a blue background",
    "a small yellow triangle on a black background, on the left",  # punctuation
    "A photo of an astronaut riding a horse on Mars!",
    "portrait, (masterpiece:1.2), 8k, highly detailed; trending on artstation",
    "Café crème brûlée — über naïve façade",
    "don't stop believin' 1234 5.67",
    "猫と犬 🐱🐶",
    "",
    " ".join(["word"] * 120),  # truncated to 77 tokens with EOT kept
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_matches_open_clip_ids(clip_tokenizers, prompt):
    tokenizer, tokenizer_2 = clip_tokenizers
    expected = open_clip.tokenize([prompt])[0].tolist()
    ours = tokenizer(prompt, padding="max_length", max_length=77, truncation=True).input_ids
    n = expected.index(49407) + 1
    assert ours[:n] == expected[:n]
    assert ours[n:] == [49407] * (77 - n)  # SD1.5 convention: pad with <|endoftext|>
    # SD2/SDXL tokenizer_2 convention: pad with "!" (id 0), exactly open_clip's zero padding; as in the
    # hub's tokenizer_2, the pad token "!" is special, so prompts containing "!" differ from open_clip.
    if "!" not in prompt:
        assert tokenizer_2(prompt, padding="max_length", max_length=77, truncation=True).input_ids == expected


def test_embedded_model_tokenizer_is_the_clip_bpe(clip_tokenizers):
    from transformers import CLIPTokenizer

    from diffalign.paths import PROJECT_ROOT

    embedded = CLIPTokenizer.from_pretrained(PROJECT_ROOT / "assets" / "tiny-sd", subfolder="tokenizer")
    assert len(embedded) == 49408
    for prompt in PROMPTS:
        assert embedded(prompt).input_ids == clip_tokenizers[0](prompt).input_ids
