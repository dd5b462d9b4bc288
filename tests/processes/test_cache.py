"""`diffalign cache` on 2 processes (accelerate launch, gloo): the files one process writes, and a failed process's
shards redone by the same command, alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..conftest import DEMO_MODEL, write_pairs
from .launch import Job, register, run_one

LATENT_SHARDS, TEXT_SHARDS = 3, 4  # 12 rows and 13 captions (12 distinct and the empty one) in shards of 4


def _argv(folder: Path, cache: Path) -> list[str]:
    return ["cache", f"model.pretrained={DEMO_MODEL}", f"data.path={folder / 'pairs.parquet'}",
            f"data.cache_dir={cache}", "data.random_flip=true", "train.cpu_threads=1", "--shard-size", "4",
            "--batch-size", "3", "--device", "cpu"]


def build(folder: Path) -> list[Job]:
    write_pairs(folder / "pairs.parquet", n=10, ties=2)
    return [
        Job("cache-two", _argv(folder, folder / "two")),
        # process 1 records latent shard 1, then fails before recording caption shard 1 (which it has written)
        Job("cache-fault", _argv(folder, folder / "fault"), fault={"process": 1, "after": 1, "how": "raise"}),
        Job("cache-resume", _argv(folder, folder / "fault")),
    ]


register("cache", build)


def _files(cache: Path) -> dict[str, bytes]:
    """{path under the cache folder: bytes} of every file there, hidden ones (records, status files) too."""
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def one_process(launched, tmp_path_factory) -> dict[str, bytes]:
    """The files `diffalign cache` writes on one process (in this one) for the launched jobs' data."""
    cache = tmp_path_factory.mktemp("cache-one")
    assert run_one(_argv(launched.folders["cache"], cache)) == 0
    files = _files(cache)
    shards = [name.split("-")[0] for name in files if "/shard-" in name]
    assert (shards.count("latents"), shards.count("text")) == (LATENT_SHARDS, TEXT_SHARDS)
    return files


def _share(shards: int, index: int) -> int:
    return len(range(index, shards, 2))


def test_two_processes_write_the_files_of_one(launched, one_process):
    assert launched.main.rc("cache-two") == [0, 0], launched.main.describe("cache-two")
    # each process built its own share of the shards (latents, then captions)
    assert launched.main.records("cache-two") == [_share(LATENT_SHARDS, r) + _share(TEXT_SHARDS, r) for r in (0, 1)]
    assert _files(launched.folders["cache"] / "two") == one_process  # byte for byte, no record or status file left


def test_a_failed_process_is_resumed_by_the_same_command(launched, one_process):
    main = launched.main
    assert 0 not in main.rc("cache-fault"), main.describe("cache-fault")
    assert ("process 1 of 2 failed: RuntimeError: injected fault: this process fails before recording its chunk "
            "(what the processes finished is kept: once the cause is fixed, the same command resumes)"
            ) in main.err("cache-fault", 0)
    assert main.records("cache-fault") == [4, 1]  # main: latents 0, 2 and captions 0, 2; process 1: latents 1
    assert main.rc("cache-resume") == [0, 0], main.describe("cache-resume")
    assert main.records("cache-resume") == [0, 2]  # only captions 1 and 3 (process 1's) were redone
    assert _files(launched.folders["cache"] / "fault") == one_process
