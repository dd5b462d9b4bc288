"""`diffalign score` on one process or many: the images cut into chunks of one batch, each chunk recorded
beside the output as it is scored, the chunks merged in image order by the main process.

The images to score (the items that `collect_items` found loadable, in its order) are cut into chunks of
`batch_size`: chunk c holds images c*B ... (c+1)*B - 1, exactly the batches one process scores, so N processes
compute the scores one process computes. Process r scores chunks r, r + N, ... (`Processes.share`); with
--out each chunk's scores and errors are recorded (JSON, NaN as null) in the hidden folder `.NAME.parts/`
beside the output, which the main process merges into one `ScoreRun` once every process is done, and removes
once the output is written. A killed job rerun with the same images, scorers and options (on any number of
processes) scores only the chunks without a record; a rerun with other settings is refused, naming what
changed, as `relabel` and `pairs` refuse to mix settings: the recorded scores would not be the new job's, and
they may be hours of GPU time, so the user decides (the same settings to resume, or delete the folder).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..data.image_inputs import ImageItem
from ..files import atomic_write_text
from ..processes import ChunkRecords, Processes, current_processes, fingerprint, job_progress, prepare_status
from ..rewards.base import Scorer
from .scoring import ScoreRun, score_items, scorer_tags

SETTINGS_FILE = "settings.json"
PHASE = "score"


def parts_folder(out: str | Path) -> Path:
    """The hidden folder beside `out` that holds a job's chunk records until the merge: `.NAME.parts`."""
    out = Path(out)
    return out.parent / f".{out.name}.parts"


def _stamp(file: str, cache: dict[str, list[int] | None]) -> list[int] | None:
    """The size and modification time of `file` (None when it is no local file: a hub dataset)."""
    if file not in cache:
        try:
            stat = Path(file).stat()
            cache[file] = [stat.st_size, stat.st_mtime_ns]
        except OSError:
            cache[file] = None
    return cache[file]


def images_setting(items: Sequence[ImageItem]) -> dict:
    """The images of a job as a setting: their count and a digest of each one's file (with its size and
    modification time), row, prompt and known error, so a rerun on other or changed images is told apart."""
    cache: dict[str, list[int] | None] = {}
    listed = [[item.file, item.row, item.image, item.prompt, item.error, _stamp(item.file, cache)] for item in items]
    return {"count": len(items), "digest": hashlib.sha256(json.dumps(listed).encode()).hexdigest()[:16]}


def score_settings(
    items: Sequence[ImageItem],
    scorers: Sequence[str],
    options: dict[str, dict[str, object]],
    device: str | None,
    dtype: str | None,
    batch_size: int,
) -> dict:
    """Everything the scores of a job depend on, as a JSON-ready dict: a resumed job must have the same."""
    settings = {"images": images_setting(items), "scorers": list(scorers), "scorer options": options,
                "device": device, "dtype": dtype, "batch size": batch_size}
    return json.loads(json.dumps(settings, default=str))  # as it reads back from the settings file


def _difference(key: str, old: object, new: object) -> str:
    if key == "images" and isinstance(old, dict) and isinstance(new, dict):
        if old.get("count") != new.get("count"):
            return f"images: {old.get('count')} there, {new.get('count')} now"
        return "images: as many, but other files, prompts or modification times"
    return f"{key}: {old!r} there, {new!r} now"


def _chunk_record(part: ScoreRun) -> dict:
    """What a chunk's record holds: per scorer its scores (NaN as null), per image its errors."""
    return {
        "count": len(part.items),
        "scores": {name: [float(v) if math.isfinite(v) else None for v in values.tolist()]
                   for name, values in part.scores.items()},
        "errors": part.errors,
    }


class ScoreJob:
    """Scoring `items` in chunks of `batch_size` images on this process's share, recorded beside `out`.

    Without `out` the chunks stay in memory, on one process only (the processes meet through files). Call
    `open` (the main process checks the settings; every process learns which chunks are done), then `run`,
    then, once the main process has written the output, `close` (removes the records).
    """

    def __init__(self, items: Sequence[ImageItem], batch_size: int, out: str | Path | None, settings: dict,
                 processes: Processes | None = None) -> None:
        self.items = list(items)
        self.batch_size = batch_size
        self.out = None if out is None else Path(out)
        self.settings = settings
        self.processes = processes or current_processes()
        self.todo = [i for i, item in enumerate(self.items) if item.load is not None and not item.error]
        self.chunks = math.ceil(len(self.todo) / batch_size)
        self.parts = None if self.out is None else parts_folder(self.out)
        self.records = (None if self.parts is None else
                        ChunkRecords(self.parts, fingerprint(settings), self.chunks, self.describe))
        self.done: set[int] = set()

    def positions(self, chunk: int) -> list[int]:
        """The indices (in `items`) of the images of `chunk`."""
        return self.todo[chunk * self.batch_size:(chunk + 1) * self.batch_size]

    def describe(self, chunk: int) -> str:
        """`chunk` named for messages: its images' numbers and its first image."""
        positions = self.positions(chunk)
        first = chunk * self.batch_size
        return f"images {first + 1}-{first + len(positions)} of {len(self.todo)}, from {self.items[positions[0]].where}"

    def open(self) -> None:
        """Start the job: the main process refuses another job's records (naming the setting that changed)
        and writes the settings; then every process reads which chunks are done."""
        if self.parts is None:
            if self.processes.many:
                raise ValueError(
                    f"with {self.processes.count} processes give --out FILE: the processes meet through files "
                    "(each records its batches beside FILE, the main process merges them into it)"
                )
            return
        if self.processes.is_main:
            self._check_settings()
        prepare_status(self.processes, self.parts)
        self.done = self.records.done()

    def _check_settings(self) -> None:
        path = self.parts / SETTINGS_FILE
        if path.is_file() and any(self.parts.glob("chunk-*.json")):
            try:
                old = json.loads(path.read_text())
            except ValueError as error:
                raise ValueError(f"{path}: not valid JSON ({error}); delete {self.parts} to start over") from None
            differing = [k for k in (*self.settings, *(k for k in old if k not in self.settings))
                         if old.get(k) != self.settings.get(k)]
            if differing:
                also = f"; also {', '.join(differing[1:])}" if differing[1:] else ""
                raise ValueError(
                    f"--out {self.out}: {self.parts} holds the scores of an unfinished job with other settings "
                    f"({_difference(differing[0], old.get(differing[0]), self.settings.get(differing[0]))}{also}): "
                    f"rerun it with the same settings to resume it, or delete {self.parts} to start over"
                )
        atomic_write_text(path, json.dumps(self.settings, indent=1) + "\n")

    def run(self, build_scorers: Callable[[], Sequence[Scorer]], progress: bool = True) -> ScoreRun | None:
        """Build the scorers, score this process's chunks that are not done, wait for every process, and on the
        main process return the merged `ScoreRun` of every image (None on the others).

        The scorers are built inside the job, so a process that cannot build them stops the others. The first
        chunk this process scores stops the job with `ScorerFailure` when a scorer fails on all its images
        (as one process stops on its first batch). On one process, Ctrl-C ends the scoring and the returned run
        says `interrupted` (the recorded chunks are kept for a rerun); on many it stops the job.
        """
        many = self.processes.many
        memory: dict[int, dict] = {}
        partial: tuple[int, dict] | None = None
        done_images = sum(len(self.positions(c)) for c in self.done)
        try:
            # one process writes no status file: any folder will do without --out
            with job_progress(self.processes, self.parts or Path.cwd(), PHASE, len(self.todo), done_images,
                              desc=f"scoring ({', '.join(self.settings['scorers'])})", unit="image",
                              enabled=progress) as bar:
                scorers = list(build_scorers())
                check = len(self.todo) > self.batch_size
                for chunk in self.processes.share(self.chunks):
                    if chunk in self.done:
                        continue
                    part = score_items([self.items[i] for i in self.positions(chunk)], scorers, self.batch_size,
                                       progress=False, stop_if_first_batch_fails=check, stop_on_interrupt=not many)
                    if part.interrupted:
                        partial = (chunk, _chunk_record(part))
                        break
                    if self.records is None:
                        memory[chunk] = _chunk_record(part)
                    else:
                        self.records.write(chunk, _chunk_record(part))
                    # until a chunk had an image to score, the next one is this process's first batch
                    check = check and not any(np.isfinite(v).any() for v in part.scores.values())
                    bar.update(len(part.items))
        except BaseException:
            self._drop_if_empty()
            raise
        # every process has left job_progress's polling of the status files before the main process removes them
        self.processes.wait()
        if not self.processes.is_main:
            return None
        if self.records is None:
            recorded = memory
        elif partial is None:
            recorded = dict(enumerate(self.records.read_all(self.processes)))
        else:
            recorded = {c: json.loads(self.records.path(c).read_text()) for c in sorted(self.records.done())}
            self._drop_if_empty()
        return self.merge(scorers, recorded, partial)

    def merge(self, scorers: Sequence[Scorer], recorded: dict[int, dict],
              partial: tuple[int, dict] | None = None) -> ScoreRun:
        """One `ScoreRun` of every item from the chunk records (and the chunk an interruption cut short): the
        errors known before scoring, then each chunk's scores and errors at its images' places."""
        names = [s.name for s in scorers]
        tags = {s.name: scorer_tags(s) for s in scorers}
        if self.processes.many:
            for tag in tags.values():  # each process scored on its own GPU, cuda:LOCAL_RANK
                if str(tag.get("device", "")).startswith("cuda:"):
                    tag["device"] = "cuda"
        run = ScoreRun(
            items=self.items,
            scorer_names=names,
            tags=tags,
            scores={name: np.full(len(self.items), np.nan) for name in names},
            errors=[[item.error] if item.error else [] for item in self.items],
        )
        for chunk, record in sorted([*recorded.items(), *([partial] if partial else [])]):
            positions = self.positions(chunk)
            for name in names:
                run.scores[name][positions] = [np.nan if v is None else v for v in record["scores"][name]]
            for position, errors in zip(positions, record["errors"]):
                run.errors[position].extend(errors)
        if partial is not None:
            run.interrupted = True
            for i in self.todo:
                if not run.errors[i] and any(np.isnan(run.scores[name][i]) for name in names):
                    run.errors[i].append("not scored: interrupted")
        return run

    def _drop_if_empty(self) -> None:
        """On one process, remove a parts folder without a chunk record (nothing to resume)."""
        if self.parts is not None and not self.processes.many and not any(self.parts.glob("chunk-*.json")):
            shutil.rmtree(self.parts, ignore_errors=True)

    def close(self) -> None:
        """Remove the chunk records once the output is written (main process)."""
        if self.records is not None and self.processes.is_main:
            self.records.clear()
