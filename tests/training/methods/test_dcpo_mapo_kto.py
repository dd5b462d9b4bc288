"""DCPO (per-image captions at the UNet, the v-prediction error spaces), MaPO (no reference) and Diffusion-KTO
(pairs and unpaired rated rows) in the training loop on the tiny models."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.data.record import Side
from diffalign.models.conditioning import encode_prompts
from diffalign.models.loading import load_parts
from diffalign.models.reference import AdapterDisabledReference, FrozenCopyReference
from diffalign.training.loop import train
from diffalign.training.methods.base import TrainableModel, noise_pair, pair_errors
from diffalign.training.methods.dcpo import DCPO
from diffalign.training.methods.dpo import DPO
from diffalign.training.methods.kto import KTO


def _cfg(model, data, out, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={data}", "train.batch_size=2", "train.max_steps=2",
        "train.learning_rate=1e-2", "train.warmup_steps=0", "train.trackers=[]", "validation.every=0",
        "data.empty_prompt_prob=0", f"train.output_dir={out}", *extra])


@pytest.fixture(scope="module")
def dual_caption_file(pair_file, tmp_path_factory):
    """`pair_file` with a caption per image that differs from the prompt (Pick-Double-Caption's columns)."""
    table = pq.read_table(pair_file)
    captions = table.column("caption").to_pylist()
    table = table.append_column("caption_0", pa.array([f"{c} in red" for c in captions]))
    table = table.append_column("caption_1", pa.array([f"{c} in blue" for c in captions]))
    path = tmp_path_factory.mktemp("dual") / "dual.parquet"
    pq.write_table(table, path)
    return path


def _spy_unet_calls(monkeypatch, method_class):
    """Record each batch the method gets and the text embeddings of the trained UNet's calls."""
    batches, hidden = [], []
    real_call, real_predict = method_class.__call__, TrainableModel.predict

    def call(self, model, batch, rand):
        batches.append(batch)
        return real_call(self, model, batch, rand)

    def predict(self, sample, timestep, **kwargs):
        hidden.append(kwargs["encoder_hidden_states"].detach())
        return real_predict(self, sample, timestep, **kwargs)

    monkeypatch.setattr(method_class, "__call__", call)
    monkeypatch.setattr(TrainableModel, "predict", predict)
    return batches, hidden


@pytest.mark.parametrize("name", ["dcpo", "dpo"])
def test_each_image_is_conditioned_on_its_own_caption_under_dcpo_only(
        tiny_models, dual_caption_file, tmp_path, monkeypatch, name):
    batches, hidden = _spy_unet_calls(monkeypatch, DCPO if name == "dcpo" else DPO)
    cfg = _cfg(tiny_models["sd15"], dual_caption_file, tmp_path / name, f"objective.name={name}", "train.max_steps=1")
    train(cfg)
    (batch,), (states,) = batches, hidden
    parts = load_parts(cfg.model)
    n = len(batch)
    assert batch.w.own_captions != batch.captions and batch.l.own_captions != batch.w.own_captions
    if name == "dcpo":
        expected_w, expected_l = batch.w.own_captions, batch.l.own_captions
    else:  # a dual-caption table trains plain Diffusion-DPO as plain DPO: the prompt for both images
        expected_w = expected_l = batch.captions
    torch.testing.assert_close(states[:n], encode_prompts(parts, expected_w).hidden_states)
    torch.testing.assert_close(states[n:], encode_prompts(parts, expected_l).hidden_states)


def test_dcpo_needs_a_caption_per_image(tiny_models, pair_file, tmp_path):
    with pytest.raises(ValueError, match=r"caption_0.*diffalign captions"):
        train(_cfg(tiny_models["sd15"], pair_file, tmp_path / "run", "objective.name=dcpo"))


def test_v_prediction_errors_in_both_spaces(tiny_models):
    """On the SD2.1-shaped (v-prediction) UNet the default error is against v = get_velocity, and the
    epsilon-space error is the v error times alpha_bar_t."""
    parts = load_parts(load_config(RunConfig, None, [f"model.pretrained={tiny_models['sd21-v']}"]).model)
    scheduler = parts.noise_scheduler
    assert scheduler.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    cond = encode_prompts(parts, ["a red circle on a blue background", "a green square on a white background"])
    side = lambda: Side(["a", "b"], latents=torch.randn(2, 4, 8, 8, generator=g), cond=cond)  # noqa: E731
    w, l_ = side(), side()
    noise, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 999])
    model = TrainableModel(parts.unet, FrozenCopyReference(parts.unet, torch.float32), scheduler, "v_prediction")
    v_err, _ = pair_errors(model, w, l_, noise, t)
    eps_err, eps_ref = pair_errors(model, w, l_, noise, t, space="epsilon")
    noised = noise_pair(model, w, l_, noise, t)
    with torch.no_grad():
        output = parts.unet(noised.noisy, noised.t, **noised.kwargs).sample
    velocity = scheduler.get_velocity(torch.cat([w.latents, l_.latents]), noised.noise, noised.t)
    torch.testing.assert_close(v_err.detach(), (output - velocity).pow(2).flatten(1).mean(1))
    alpha = scheduler.alphas_cumprod[noised.t]
    torch.testing.assert_close(eps_err.detach(), v_err.detach() * alpha, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(eps_ref, eps_err.detach())
    ratio = (v_err / eps_err).detach()
    assert 3.3 < ratio[0] < 3.9 and ratio[1] > 150  # about 3.6x at t = 500, 200x at t = 999


@pytest.mark.parametrize("family,space", [("sd21-v", "epsilon"), ("sd21-v", "prediction"), ("sdxl", "prediction")])
def test_a_short_dcpo_run_trains(tiny_models, dual_caption_file, tmp_path, family, space):
    result = train(_cfg(tiny_models[family], dual_caption_file, tmp_path / family, "objective.name=dcpo",
                        f"objective.error_space={space}"))
    weights = load_file(str(result.weights))
    assert any(not torch.equal(w, torch.zeros_like(w)) for k, w in weights.items() if "lora_B" in k)
    assert math.isfinite(result.metrics["loss"])


@pytest.mark.parametrize("lora", ["true", "false"])
def test_mapo_never_calls_a_reference(tiny_models, pair_file, tmp_path, monkeypatch, lora):
    def refuse(self, *args, **kwargs):
        raise AssertionError("MaPO called a reference model")

    monkeypatch.setattr(AdapterDisabledReference, "predict", refuse)
    monkeypatch.setattr(FrozenCopyReference, "__init__", refuse)  # not even built for full fine-tuning
    models = []
    real = TrainableModel.predict

    def predict(self, sample, timestep, **kwargs):
        models.append(self.reference)
        return real(self, sample, timestep, **kwargs)

    monkeypatch.setattr(TrainableModel, "predict", predict)
    result = train(_cfg(tiny_models["sd15"], pair_file, tmp_path / lora, "objective.name=mapo", f"lora.enabled={lora}"))
    assert models and all(reference is None for reference in models)
    assert math.isfinite(result.metrics["loss"]) and "ratio_loss" in result.metrics


@pytest.mark.parametrize("form", ["ipo", "hinge"])
def test_the_ipo_and_hinge_forms_start_at_their_initial_values(tiny_models, pair_file, tmp_path, form):
    result = train(_cfg(tiny_models["sd15"], pair_file, tmp_path / form, "objective.name=dpo",
                        f"objective.loss={form}", "train.max_steps=1", "train.learning_rate=0"))
    assert result.metrics["loss"] == pytest.approx({"ipo": 0.25, "hinge": 1.0}[form], abs=1e-6)


def _rated_table(pair_file, path):
    """Every image of `pair_file`'s decided pairs as its own row: winners rated 1, losers 0, shuffled."""
    rows = []
    for row in pq.read_table(pair_file).to_pylist():
        if row["label_0"] in (0, 1):
            for k in (0, 1):
                rows.append({"caption": row["caption"], "jpg_0": row[f"jpg_{k}"], "label_0": row[f"label_{k}"]})
    rows = rows[1::2] + rows[::2]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path, rows


@pytest.mark.parametrize("reader", ["table", "stream", "cache"])
def test_kto_trains_on_unpaired_rated_rows(tiny_models, pair_file, tmp_path, monkeypatch, reader, reader_overrides):
    path, rows = _rated_table(pair_file, tmp_path / "rated.parquet")
    seen = []
    real = KTO.__call__

    def spy(self, model, batch, rand):
        assert batch.l is None and len(batch) == 2
        seen.append((list(batch.captions), batch.weight.tolist()))
        return real(self, model, batch, rand)

    monkeypatch.setattr(KTO, "__call__", spy)
    extra = ["objective.name=kto", "objective.rows=rated", "train.max_steps=3"]
    extra += reader_overrides(reader, lambda more: _cfg(tiny_models["sd15"], path, tmp_path / reader, *extra, *more),
                              tmp_path / "cache")
    result = train(_cfg(tiny_models["sd15"], path, tmp_path / reader, *extra))
    weights = [w for _, ws in seen for w in ws]
    assert set(weights) == {1.0, -1.0}  # both kinds reached the loss, as +1 / -1
    ratings = {(r["caption"], 1.0 if r["label_0"] == 1 else -1.0) for r in rows}
    assert all((c, w) in ratings for captions, ws in seen for c, w in zip(captions, ws))
    assert math.isfinite(result.metrics["loss"]) and 0 <= result.metrics["desirable_share"] <= 1


def test_kto_on_pairs_rates_each_winner_desirable_and_each_loser_not(tiny_models, pair_file, tmp_path):
    result = train(_cfg(tiny_models["sd15"], pair_file, tmp_path / "pairs", "objective.name=kto",
                        "train.learning_rate=0", "train.max_steps=1"))
    assert result.metrics["desirable_share"] == 0.5
    assert result.metrics["loss"] == pytest.approx(0.5, abs=1e-6)  # every reward 0 at the start


def test_kto_rated_rows_are_checked(tiny_models, pair_file, tmp_path):
    path, rows = _rated_table(pair_file, tmp_path / "rated.parquet")
    table = pq.read_table(path).to_pylist()
    table[3]["label_0"] = 0.5
    pq.write_table(pa.Table.from_pylist(table), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match=r"row 3 \(0.5\)"):
        train(_cfg(tiny_models["sd15"], tmp_path / "bad.parquet", tmp_path / "bad", "objective.name=kto",
                   "objective.rows=rated"))
    with pytest.raises(ValueError, match="holds pairs"):
        train(_cfg(tiny_models["sd15"], pair_file, tmp_path / "pairs", "objective.name=kto", "objective.rows=rated"))
