"""Scoring many images with one or several registered scorers, and summarising the scores.

`build_scorers` turns command-line choices (`--scorer`, `--scorer-option NAME.key=value`, device,
dtype, batch size) into scorer objects; `score_items` scores every image with
`rewards.batch.score_in_batches`, so that one bad image or prompt costs only that image: the images of
a batch are decoded once and handed to every scorer, a failing call is retried on equal-size groups
and then on halves until the bad image stands alone, and each failure becomes that image's error. `summarize` gives each scorer's n, mean, std, median, min and max,
always next to the scorer's `scale` so that reports never mix units.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..config.values import parse_option_value
from ..rewards import available_scorers, scorer_factory
from ..rewards.base import construct_scorer
from ..rewards.base import Scorer
from ..rewards.batch import DEFAULT_BATCH_SIZE, score_in_batches
from ..data.image_inputs import ImageItem

DEFAULT_CHUNK = DEFAULT_BATCH_SIZE


def split_scorer_names(values: Sequence[str]) -> list[str]:
    """Scorer names from repeated and/or comma-separated `--scorer` values, in order, without repeats."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def check_scorer_names(names: Sequence[str]) -> None:
    """Raise a one-line error for the first name that names no scorer, before any scorer is built: the registry's
    did-you-mean KeyError for an unknown plain name; for `remote:URL` and `file.py:NAME` / `package.module:NAME`,
    the error of resolving it (a missing file, a module that fails to import, a NAME that is not a scorer...)."""
    available = set(available_scorers())
    for name in names:
        if name not in available:
            scorer_factory(name)


def parse_scorer_options(items: Sequence[str], names: Sequence[str]) -> dict[str, dict[str, object]]:
    """Constructor options per scorer from `NAME.key=value` strings (NAME may hold dots: `hpsv2.1.scale=cos`)."""
    options: dict[str, dict[str, object]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--scorer-option {item!r}: expected NAME.key=value, e.g. pickscore.model=/path/to/PickScore_v1")
        matches = [name for name in names if target.startswith(name + ".")]
        if not matches:
            raise ValueError(
                f"--scorer-option {item!r}: {target!r} does not start with a chosen scorer's name "
                f"({', '.join(names) or 'none chosen'}) and a dot; write NAME.key=value"
            )
        name = max(matches, key=len)
        key = target[len(name) + 1 :]
        if not key.isidentifier():
            raise ValueError(f"--scorer-option {item!r}: {key!r} is not an option name")
        options.setdefault(name, {})[key] = parse_option_value(value)
    return options


def parse_weights(text: str | Sequence[float] | None, names: Sequence[str]) -> list[float] | None:
    """`--weights w1,w2` (or a list) as floats, one per scorer; None when not given."""
    if text is None:
        return None
    try:
        weights = [float(w) for w in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise ValueError(f"--weights {text!r}: give one number per scorer, separated by commas") from None
    if len(weights) != len(names):
        raise ValueError(f"--weights {text!r}: {len(weights)} value(s) for {len(names)} scorer(s) ({', '.join(names)})")
    return weights


def scorer_choice(scorers: str | Sequence[str], options: Sequence[str] | Mapping[str, Mapping] | None = None,
                  weights: str | Sequence[float] | None = None, required: bool = True, check: bool = True
                  ) -> tuple[list[str], dict[str, dict[str, object]], list[float] | None]:
    """(names, constructor options per scorer, weights) from the options as typed (`--scorer a,b`,
    `--scorer-option NAME.key=value`, `--weights 1,2`) or already parsed (lists, a {scorer: {key: value}}
    mapping); the names are checked against the registry unless `check` is False. Idempotent, so a job may
    call it on its own fields."""
    names = split_scorer_names([scorers] if isinstance(scorers, str) else list(scorers))
    if not names and required:
        raise ValueError(f"choose the scorer(s) with --scorer NAME[,NAME...]; available: {', '.join(available_scorers())}")
    if check:
        check_scorer_names(names)
    if isinstance(options, Mapping):
        parsed = {name: dict(values) for name, values in options.items()}
        unknown = sorted(set(parsed) - set(names))
        if unknown:
            raise ValueError(f"scorer_options for {', '.join(unknown)}: not a chosen scorer ({', '.join(names)})")
    else:
        parsed = parse_scorer_options(list(options or []), names)
    return names, parsed, parse_weights(weights, names)


def build_scorers(
    names: Sequence[str],
    options: dict[str, dict[str, object]] | None = None,
    device: str | None = None,
    dtype: str | None = None,
    batch_size: int | None = None,
) -> list[Scorer]:
    """Instantiate each named scorer with the shared device/dtype/batch size (when given) and its own options.

    A failing constructor (missing weights, an option it does not take...) becomes a ValueError
    naming the scorer and the options it was given.
    """
    check_scorer_names(names)
    shared = {k: v for k, v in (("device", device), ("dtype", dtype), ("batch_size", batch_size)) if v is not None}
    scorers = []
    for name in names:
        kwargs = {**shared, **(options or {}).get(name, {})}
        hint = (f"\n(constructor options are passed with --scorer-option {name}.KEY=VALUE, e.g. a local weights "
                "path)")
        scorers.append(construct_scorer(name, scorer_factory(name), kwargs, hint))
    return scorers


@dataclass
class ScoreRun:
    """The outcome of scoring: per scorer one float per item (NaN where it failed), per item its errors."""

    items: list[ImageItem]
    scorer_names: list[str]
    tags: dict[str, dict]  # per scorer: scale, logit_scale, dtype, device (what the numbers mean)
    scores: dict[str, np.ndarray]
    errors: list[list[str]] = field(default_factory=list)
    interrupted: bool = False

    def error_of(self, index: int) -> str | None:
        """Every problem of item `index`, joined by '; ', or None."""
        return "; ".join(self.errors[index]) or None

    @property
    def failed(self) -> list[int]:
        """Indices of the items with at least one error."""
        return [i for i, errors in enumerate(self.errors) if errors]

    def rows(self) -> tuple[list[str], list[dict]]:
        """Per-image rows: file, (row, image for pair tables), prompt, one column per scorer, error."""
        pairs = any(item.row is not None for item in self.items)
        columns = ["file", *(["row", "image"] if pairs else []), "prompt", *self.scorer_names, "error"]
        rows = []
        for i, item in enumerate(self.items):
            row: dict[str, object] = {"file": item.file}
            if pairs:
                row.update(row=item.row, image=item.image)
            row["prompt"] = item.prompt
            for name in self.scorer_names:
                value = self.scores[name][i]
                row[name] = float(value) if np.isfinite(value) else None
            row["error"] = self.error_of(i)
            rows.append(row)
        return columns, rows


def scorer_tags(scorer: Scorer) -> dict:
    """What a scorer's numbers mean and how they were computed: scale, logit_scale, dtype, device."""
    tags: dict[str, object] = {"scale": str(getattr(scorer, "scale", ""))}
    if getattr(scorer, "logit_scale", None) is not None:
        tags["logit_scale"] = float(scorer.logit_scale)
    for key in ("dtype", "device"):
        if getattr(scorer, key, None) is not None:
            tags[key] = str(getattr(scorer, key)).replace("torch.", "")
    return tags


def score_items(
    items: Sequence[ImageItem],
    scorers: Sequence[Scorer],
    batch_size: int = DEFAULT_CHUNK,
    progress: bool = True,
    stop_if_first_batch_fails: bool | None = None,
    stop_on_interrupt: bool = True,
) -> ScoreRun:
    """Score every item with every scorer, `batch_size` images per call (`rewards.batch.score_in_batches`);
    each failure becomes an item error.

    Raises `ScorerFailure` when a scorer fails on all images of the first batch and more remain (a
    wrong scorer for these prompts, missing weights...); `stop_if_first_batch_fails` True or False decides
    it instead (a caller scoring a long list a batch at a time). Ctrl-C stops the run: the returned
    `ScoreRun` has `interrupted` set and the unscored items say so, so the caller can still save it
    (with `stop_on_interrupt` False, KeyboardInterrupt propagates instead).
    """
    items = list(items)
    names = [s.name for s in scorers]
    run = ScoreRun(
        items=items,
        scorer_names=names,
        tags={s.name: scorer_tags(s) for s in scorers},
        scores={name: np.full(len(items), np.nan) for name in names},
        errors=[[item.error] if item.error else [] for item in items],
    )
    todo = [i for i, item in enumerate(items) if item.load is not None and not run.errors[i]]
    result = score_in_batches(
        scorers,
        [items[i].load for i in todo],  # type: ignore[misc]
        [items[i].prompt or "" for i in todo],
        batch_size=batch_size,
        progress=progress,
        desc=f"scoring ({', '.join(names)})",
        stop_if_first_batch_fails=len(todo) > batch_size if stop_if_first_batch_fails is None else stop_if_first_batch_fails,
        stop_on_interrupt=stop_on_interrupt,
        where=lambda k: items[todo[k]].where,
    )
    for name, values in result.scores.items():
        run.scores[name][todo] = values.numpy()
    for failure in result.failures:
        run.errors[todo[failure.index]].append(failure.reason)
    run.interrupted = result.interrupted
    if run.interrupted:
        for i in todo:
            if not run.errors[i] and any(np.isnan(run.scores[name][i]) for name in names):
                run.errors[i].append("not scored: interrupted")
    return run


@dataclass
class ScoreSummary:
    """Statistics of one scorer's scores over the images it scored, with the unit they are in."""

    scorer: str
    scale: str
    dtype: str | None
    device: str | None
    n: int
    failed: int
    mean: float
    std: float  # sample standard deviation (n - 1); NaN for fewer than 2 scores
    median: float
    min: float
    max: float

    def as_dict(self) -> dict:
        """The fields as a dict, NaN as None (valid JSON)."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def summarize(run: ScoreRun) -> list[ScoreSummary]:
    """n, failures, mean, std, median, min and max of each scorer's finite scores."""
    out = []
    for name in run.scorer_names:
        values = run.scores[name][np.isfinite(run.scores[name])]
        nan = float("nan")
        stats = (
            (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else nan, float(np.median(values)),
             float(values.min()), float(values.max()))
            if len(values) else (nan,) * 5
        )
        tags = run.tags[name]
        failed = len(run.items) - len(values)
        out.append(ScoreSummary(name, tags["scale"], tags.get("dtype"), tags.get("device"), len(values), failed, *stats))
    return out


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: Sequence[int] | None = None) -> str:
    """An aligned text table, columns two spaces apart: the `left` columns (default: the first and the
    last) left-aligned, the others right-aligned."""
    left = (0, len(header) - 1) if left is None else left
    widths = [max(len(str(r[c])) for r in (header, *rows)) for c in range(len(header))]
    lines = []
    for r in (header, *rows):
        cells = [str(v).ljust(w) if c in left else str(v).rjust(w) for c, (v, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _number(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.4f}"


def format_summary(summaries: Sequence[ScoreSummary]) -> str:
    """The summary as an aligned text table, one line per scorer, its scale last."""
    header = ("scorer", "n", "failed", "mean", "std", "median", "min", "max", "scale")
    rows = [
        (s.scorer, str(s.n), str(s.failed), *(_number(v) for v in (s.mean, s.std, s.median, s.min, s.max)), s.scale)
        for s in summaries
    ]
    return format_table(header, rows)


def summary_json(summaries: Sequence[ScoreSummary]) -> str:
    """The summaries as a JSON object keyed by scorer name."""
    return json.dumps({s.scorer: s.as_dict() for s in summaries}, indent=2)
