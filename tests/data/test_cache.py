"""The latent and text cache: lossless against on-the-fly encoding, resumable, keyed by its inputs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import save_file

from diffalign.cli.main import main
from diffalign.config.core import load_config
from diffalign.config.schema import RunConfig
from diffalign.data.cache import CachedPairs, build_cache, cache_folders, find_cache
from diffalign.data.pairs import PreferencePairs
from diffalign.data.record import collate_items
from diffalign.models.loading import load_parts
from diffalign.processes import STATUS_DIR, ChunkRecords, Processes
from diffalign.training.encode import encode_batch
from diffalign.training.loop import train
from diffalign.training.randomness import BatchRandom

from ..permissions import modes, umask


def _cfg(model, pairs, tmp_path, *extra):
    return load_config(RunConfig, None, [
        f"model.pretrained={model}", f"data.path={pairs}", f"data.cache_dir={tmp_path / 'cache'}",
        f"train.output_dir={tmp_path / 'run'}", "data.random_flip=true", "data.empty_prompt_prob=0.5",
        "train.max_steps=2", "train.batch_size=3", "train.log_every=1", "train.warmup_steps=0",
        "train.trackers=[]", *extra,
    ])


def _build(cfg, shard_size=4):
    parts = load_parts(cfg.model, unet=False)
    return build_cache(parts, cfg.model, cfg.data, shard_size=shard_size, batch_size=3), parts


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_cached_batch_equals_the_encoded_batch(tiny_models, pair_file, tmp_path, family):
    cfg = _cfg(tiny_models[family], pair_file, tmp_path)
    _, parts = _build(cfg)
    latents, text = find_cache(cfg.model, cfg.data)
    d = cfg.data
    pairs = PreferencePairs(d.path, d.split, d.resolution, False, d.random_flip, seed=0)
    cached = CachedPairs(pairs, latents, text)
    empty = text.conditioning([""])
    keys = [(3, i) for i in range(len(pairs))]  # epoch 3: some images flipped, some not
    live = encode_batch(parts, collate_items([pairs[k] for k in keys]), 0.5, BatchRandom(0, 5, len(keys)),
                        d.resolution, torch.device("cpu"))
    read = encode_batch(parts, cached.collate([cached[k] for k in keys]), 0.5, BatchRandom(0, 5, len(keys)),
                        d.resolution, torch.device("cpu"), empty=empty)
    for a, b in [(live.w.latents, read.w.latents), (live.l.latents, read.l.latents),
                 (live.w.cond.hidden_states, read.w.cond.hidden_states),
                 (live.l.cond.hidden_states, read.l.cond.hidden_states)]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if family == "sdxl":
        torch.testing.assert_close(live.w.cond.pooled, read.w.cond.pooled, rtol=1e-4, atol=1e-5)
        assert torch.equal(live.w.time_ids, read.w.time_ids) and torch.equal(live.l.time_ids, read.l.time_ids)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "objective"), [  # winners-only data on the richest conditioning (SDXL's)
    ("sd15", "dpo"), ("sd21-v", "dpo"), ("sdxl", "dpo"), ("sdxl", "sft"),
])
def test_training_with_and_without_cache_gives_the_same_losses(tiny_models, pair_file, tmp_path, capsys,
                                                               family, objective):
    losses = {}
    for mode in ("off", "require"):
        cfg = _cfg(tiny_models[family], pair_file, tmp_path, f"objective.name={objective}", f"data.cache={mode}",
                   f"train.output_dir={tmp_path / mode}")
        if mode == "require":
            _build(cfg)
        train(cfg)
        losses[mode] = [json.loads(line)["loss"] for line in (tmp_path / mode / "metrics.jsonl").read_text().splitlines()]
    assert "no VAE or text encoder loaded" in capsys.readouterr().out
    assert len(losses["off"]) == 2 and all(math.isfinite(x) for x in losses["off"])
    assert losses["require"] == pytest.approx(losses["off"], rel=1e-4)


def _files(*folders) -> dict[str, bytes]:
    """{folder/name: bytes} of every file of the cache folders (hidden ones too)."""
    return {f"{d.name}/{p.relative_to(d)}": p.read_bytes() for d in folders for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def recorded(monkeypatch):
    """The chunks whose record the build writes, in order ((folder kind, shard) pairs); `recorded.kill_after(n)`
    makes the build fail instead of writing its (n+1)-th record, as a killed process (its shard is written)."""
    original = ChunkRecords.write

    class Recorded(list):
        limit: int | None = None

        def kill_after(self, n: int | None) -> None:
            self.clear()
            self.limit = n

    chunks = Recorded()

    def write(self, chunk: int, record: dict) -> None:
        if chunks.limit is not None and len(chunks) >= chunks.limit:
            raise RuntimeError("killed before recording its chunk")
        original(self, chunk, record)
        chunks.append((self.folder.parent.name.split("-")[0], chunk))

    monkeypatch.setattr(ChunkRecords, "write", write)
    return chunks


@pytest.fixture(scope="module")
def clean_cache(tiny_models, pair_file, tmp_path_factory) -> tuple[dict[str, bytes], dict[str, int]]:
    """The files of the cache `_cfg` gives for the tiny SD1.5 model, built at once under umask 022 (the folders'
    names and files do not depend on data.cache_dir), and the latent folder's permission bits."""
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path_factory.mktemp("clean"))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # as every test runs (_quiet_threads): the same roundings
    try:
        with umask(0o022):
            (latent_dir, text_dir), _ = _build(cfg)
    finally:
        torch.set_num_threads(threads)
    return _files(latent_dir, text_dir), modes(latent_dir)


def test_build_resumes_and_inputs_pick_the_folder(tiny_models, pair_file, tmp_path, recorded, clean_cache):
    reference, shard_modes = clean_cache
    names = sorted(name.split("/")[1] for name in reference if name.startswith("latents"))
    shards = [name for name in names if name.startswith("shard-")]
    assert len(shards) == 4  # all 14 rows (ties too: AI feedback may decide them), in shards of 4
    assert {shard_modes[shard] for shard in shards} == {0o644}  # safetensors alone writes 0600
    assert names == ["index.json", "inputs.json", *shards]  # no record or status file is left
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path)
    latent_dir, text_dir = cache_folders(cfg.model, cfg.data)
    recorded.kill_after(2)
    with pytest.raises(RuntimeError, match="killed"):
        _build(cfg)  # latent shards 0 and 1 recorded; shard 2 written, not recorded: it is redone
    assert find_cache(cfg.model, cfg.data) is None and (latent_dir / shards[2]).is_file()
    before = [(latent_dir / shard).stat().st_mtime_ns for shard in shards[:2]]
    recorded.kill_after(None)
    _build(cfg)
    assert recorded == [("latents", 2), ("latents", 3), *(("text", k) for k in range(4))]  # only the gap
    assert [(latent_dir / shard).stat().st_mtime_ns for shard in shards[:2]] == before
    assert _files(latent_dir, text_dir) == reference
    assert find_cache(cfg.model, cfg.data) is not None

    other = _cfg(tiny_models["sd15"], pair_file, tmp_path, "data.resolution=16")
    assert cache_folders(other.model, other.data)[0] != latent_dir
    assert cache_folders(other.model, other.data)[1] == text_dir  # captions do not depend on resolution
    assert find_cache(other.model, other.data) is None
    with pytest.raises(FileNotFoundError, match="data.cache=require"):
        find_cache(other.model, _cfg(tiny_models["sd15"], pair_file, tmp_path, "data.resolution=16",
                                     "data.cache=require").data)
    with pytest.raises(ValueError, match="random_crop"):
        cache_folders(other.model, _cfg(tiny_models["sd15"], pair_file, tmp_path, "data.random_crop=true").data)


def _cache_argv(model, pairs, cache_dir, *extra) -> list[str]:
    return ["cache", f"model.pretrained={model}", f"data.path={pairs}", f"data.cache_dir={cache_dir}",
            "data.random_flip=true", "--device", "cpu", *extra]


def test_a_resume_with_other_shard_or_batch_sizes_is_refused_naming_them(tiny_models, pair_file, tmp_path, recorded,
                                                                         capsys):
    argv = _cache_argv(tiny_models["sd15"], pair_file, tmp_path / "cache", "--shard-size", "4", "--batch-size", "3")
    recorded.kill_after(1)
    with pytest.raises(RuntimeError, match="killed"):
        main(argv)
    recorded.kill_after(None)
    latent_dir = next((tmp_path / "cache").glob("latents-*"))
    assert main(argv[:-4] + ["--shard-size", "8", "--batch-size", "2"]) == 2
    assert capsys.readouterr().err.splitlines()[-2] == (
        f"diffalign cache: error: {latent_dir} holds part of a cache built with other settings (batch_size: 3 there, "
        f"2 now; also shard_size): rerun with the same settings (--shard-size 4 --batch-size 3) to resume it, or "
        f"delete {latent_dir} to start over")
    assert recorded == []
    assert main(argv) == 0 and recorded[0] == ("latents", 1)  # the same settings resume after shard 0


def test_bad_shard_and_batch_sizes_are_refused(tiny_models, pair_file, tmp_path):
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path)
    with pytest.raises(ValueError, match=r"^--shard-size 0: give a whole number of at least 1 \(rows per shard file\)$"):
        build_cache(None, cfg.model, cfg.data, shard_size=0)
    with pytest.raises(ValueError, match=r"^--batch-size -2: give a whole number of at least 1 \(images or captions "):
        build_cache(None, cfg.model, cfg.data, batch_size=-2)


def _finished_elsewhere(folder, index: int):
    """A barrier for a simulated process of 2 alone: at its waits, the other process (`index`) reports each phase
    finished, as if it had done its share somewhere this process cannot see."""
    def barrier() -> None:
        (folder / STATUS_DIR).mkdir(parents=True, exist_ok=True)
        for phase in ("latents", "captions"):
            (folder / STATUS_DIR / f"{phase}-{index:05d}.json").write_text(
                json.dumps({"done": 0, "state": "finished", "error": None}))
    return barrier


def test_a_share_done_on_two_processes_resumes_on_one(tiny_models, pair_file, tmp_path, recorded, clean_cache):
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path)
    parts = load_parts(cfg.model, unet=False)
    latent_dir, text_dir = cache_folders(cfg.model, cfg.data)
    for folder in (latent_dir, text_dir):
        folder.mkdir(parents=True)  # as the main process makes them before the others start
    second = Processes(1, 2, barrier=_finished_elsewhere(latent_dir, 0))
    build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3, processes=second)
    assert recorded == [("latents", 1), ("latents", 3), ("text", 1), ("text", 3)]
    assert find_cache(cfg.model, cfg.data) is None  # the main process never merged
    recorded.clear()
    build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3)
    assert recorded == [("latents", 0), ("latents", 2), ("text", 0), ("text", 2)]
    assert _files(latent_dir, text_dir) == clean_cache[0]


def test_the_merge_refuses_missing_and_foreign_shards(tiny_models, pair_file, tmp_path, recorded):
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path)
    parts = load_parts(cfg.model, unet=False)
    latent_dir, text_dir = cache_folders(cfg.model, cfg.data)
    main_of_two = Processes(0, 2, barrier=_finished_elsewhere(latent_dir, 1))
    with pytest.raises(ValueError) as missing:  # process 1 says it finished, but its shards are not here
        build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3, processes=main_of_two)
    assert str(missing.value).startswith(
        f"{latent_dir / '.chunks'}: no record of latents shard-00001.safetensors (chunk 1 of 4, the share of process "
        "1 of 2): it was not computed (rerun the same command to compute it), or was written where this process "
        "cannot see it")

    shutil.rmtree(latent_dir)
    recorded.kill_after(2)
    with pytest.raises(RuntimeError, match="killed"):
        build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3)
    recorded.kill_after(None)
    shard = latent_dir / "shard-00001.safetensors"
    save_file({"hidden": torch.zeros(4, 2)}, str(shard))  # another cache's shard where shard 1 was
    with pytest.raises(ValueError) as foreign:
        build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3)
    assert str(foreign.value) == (
        f"{shard} does not fit this cache: it holds 4 rows of hidden, where shard 1 of this cache holds 4 rows of "
        "size_0, crop_0, mean_0, std_0, mean_0_flip, std_0_flip, size_1, crop_1, mean_1, std_1, mean_1_flip, "
        "std_1_flip (another cache's shard?); delete it and rerun `diffalign cache` with the same config to "
        "recompute it")
    shard.unlink()
    recorded.clear()
    build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3)
    assert recorded == [("latents", 1), *(("text", k) for k in range(4))]  # the missing shard is recomputed
    assert find_cache(cfg.model, cfg.data) is not None

    (text_dir / ".chunks").mkdir()
    ChunkRecords(text_dir / ".chunks", "another-job", 4).write(0, {"rows": 4})
    (text_dir / "index.json").unlink()
    with pytest.raises(ValueError, match=r"chunk-000000.json: a foreign chunk record, written by a job with other "
                                         r"settings \(fingerprint another-job, this job's \w+\)"):
        build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3)


def test_every_process_takes_its_own_gpu(tiny_models, pair_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("diffalign.processes.current_processes", lambda: Processes(1, 2, local_index=1))
    assert main(_cache_argv(tiny_models["sd15"], pair_file, tmp_path / "cache")[:-2] + ["--device", "cuda:1"]) == 2
    assert capsys.readouterr().err.splitlines()[-2] == (
        "diffalign cache: error: --device cuda:1: with 2 processes each process takes its own GPU (cuda:LOCAL_RANK); "
        "give --device cuda, or leave --device out")


def test_the_merge_refuses_a_recorded_shard_that_is_gone_or_unreadable(tiny_models, pair_file, tmp_path):
    cfg = _cfg(tiny_models["sd15"], pair_file, tmp_path)
    parts = load_parts(cfg.model, unet=False)
    latent_dir, text_dir = cache_folders(cfg.model, cfg.data)
    for folder in (latent_dir, text_dir):
        folder.mkdir(parents=True)
    build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3,
                processes=Processes(1, 2, barrier=_finished_elsewhere(latent_dir, 0)))
    shard = latent_dir / "shard-00001.safetensors"
    shard.unlink()  # recorded by process 1, then gone before the merge (the main process never sees it)
    main_of_two = Processes(0, 2, barrier=_finished_elsewhere(latent_dir, 1))
    with pytest.raises(FileNotFoundError) as gone:
        build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3, processes=main_of_two)
    assert str(gone.value) == (
        f"{shard}: missing, though its chunk record says it was written (on several nodes data.cache_dir must be on a "
        "filesystem every node shares); rerun `diffalign cache` with the same config to recompute it")
    shard.write_bytes(b"not a shard")
    with pytest.raises(ValueError, match=r"shard-00001.safetensors: not a readable safetensors shard \(.+\); delete it "
                                         r"and rerun `diffalign cache` with the same config to recompute it$"):
        build_cache(parts, cfg.model, cfg.data, shard_size=4, batch_size=3, processes=main_of_two)
