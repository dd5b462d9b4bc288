#!/usr/bin/env python
"""The checks that scripts/gpu_checks.sh runs on a GPU machine, one subcommand each, plus `record`.

    python scripts/gpu_checks/checks.py CHECK          # env, fsdp-lora, fsdp-full, fp16-resume, ...
    python scripts/gpu_checks/checks.py record ...     # one line of gpu_checks.jsonl (used by the .sh)

Each check starts `diffalign train` (through train_wrapper.py) as child processes, each with its own
timeout and never past GPUCHK_DEADLINE (epoch seconds), streams their output to stdout (the log), and
writes what it measured to GPUCHK_WORK/CHECK.figures.json after every step, so that a check stopped
by its timeout still reports what it got. Exit status: 0 passed, 1 failed, 3 skipped (a package or the
GPU it needs is absent), 124 stopped by a timeout.

DIFFALIGN_GPU_CHECKS_CPU=1 runs the same code paths on the CPU with tiny sizes (full-size architectures
become diffalign.models.tiny replicas of the same family): a rehearsal of the command lines, the
orchestration and the comparisons, not a measurement. What needs CUDA (FSDP actually sharding, the fp16
gradient scaler, xformers, bitsandbytes, CPU offload of the reference) is reported as such there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = ROOT / "scripts" / "gpu_checks" / "train_wrapper.py"
DEMO_CONFIG = "configs/demo/dpo.yaml"
FSDP_CONFIG = "configs/accelerate/fsdp.yaml"
CPU = os.environ.get("DIFFALIGN_GPU_CHECKS_CPU") == "1"
WORK = Path(os.environ.get("GPUCHK_WORK", "/tmp/gpu_checks_work"))
DEADLINE = float(os.environ.get("GPUCHK_DEADLINE", "inf"))
SKIPPED = 3
NONDETERMINISTIC = "does not have a deterministic implementation"

# Tiny-model resume runs: N steps, checkpoints every K (at K and 2K < N), resumed from step K; the
# checkpoint at 2K of the straight and the resumed run are compared too (weights, optimizer, scaler).
TINY_STEPS, TINY_EVERY, TINY_BATCH = (5, 2, 2) if CPU else (8, 3, 8)
# Full-size runs: steps per run (the first 2 are not timed, as in scripts/benchmark_full_size.py) and
# how many demo pairs they read (the cache is built for exactly these).
BENCH_STEPS = 4 if CPU else 8
BENCH_PAIRS = 8 if CPU else 32


class CheckFailed(Exception):
    """The check ran and found something wrong (or could not run a step)."""


class Skip(Exception):
    """What the check needs is not here."""


class Figures:
    """The check's results, rewritten to GPUCHK_WORK/NAME.figures.json at every change."""

    def __init__(self, name: str) -> None:
        self.path = WORK / f"{name}.figures.json"
        self.data: dict = {"cpu_rehearsal": True} if CPU else {}
        self.save()

    def __setitem__(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def __getitem__(self, key: str):
        return self.data[key]

    def get(self, key: str, default=None):
        return self.data.get(key, default)

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)


# ---------------------------------------------------------------------------------------------------
# child processes


_child: subprocess.Popen | None = None


def _kill_group(proc: subprocess.Popen) -> None:
    """TERM the child's process group (torchrun passes it on to its workers), KILL it 8 s later."""
    for sig, wait in ((signal.SIGTERM, 8), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _on_term(signum, frame) -> None:  # the .sh's `timeout` stopped this check: stop the child first
    if _child is not None and _child.poll() is None:
        _kill_group(_child)
    print(f"[gpu_checks] stopped by signal {signum}", flush=True)
    os._exit(124)


class Run:
    """A finished child process: exit status, wall time, its last output lines."""

    def __init__(self, rc: int, seconds: float, tail: list[str], nondeterministic: int, timed_out: bool) -> None:
        self.rc, self.seconds, self.tail = rc, seconds, tail
        self.nondeterministic, self.timed_out = nondeterministic, timed_out


def run(cmd: list[str], timeout: float, env: dict | None = None) -> Run:
    """Run `cmd` in the repo root, its output into ours, stopped after `timeout` s or at the deadline."""
    global _child
    limit = min(timeout, DEADLINE - time.time() - 3)
    if limit < 5:
        raise CheckFailed(f"no time left in this check's budget for: {shlex.join(cmd)[:200]}")
    print(f"$ {shlex.join(cmd)}   [timeout {limit:.0f}s]", flush=True)
    tail: deque[str] = deque(maxlen=60)
    counts = {"nondeterministic": 0}
    started = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", start_new_session=True,
    )
    _child = proc

    def pump() -> None:
        for line in proc.stdout:
            sys.stdout.write(line)
            last = line.rstrip("\n").split("\r")[-1]
            tail.append(last)
            if NONDETERMINISTIC in line:
                counts["nondeterministic"] += 1
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
        print(f"[gpu_checks] timeout after {limit:.0f}s: stopping it", flush=True)
        _kill_group(proc)
    reader.join(timeout=10)
    _child = None
    seconds = time.time() - started
    print(f"[gpu_checks] exit {proc.returncode} after {seconds:.1f}s", flush=True)
    return Run(proc.returncode, seconds, list(tail), counts["nondeterministic"], timed_out)


def must(result: Run, what: str) -> Run:
    if result.timed_out:
        raise CheckFailed(f"{what}: timed out after {result.seconds:.0f}s")
    if result.rc != 0:
        raise CheckFailed(f"{what}: exit status {result.rc}; last lines: " + " | ".join(result.tail[-6:]))
    return result


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------------------------------
# training runs of the tiny demo model, and resume comparisons


def launcher(kind: str, port: int = 29500) -> list[str]:
    """`accelerate launch` with the FSDP2 config on one process, or plain python."""
    if kind == "fsdp":
        return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", FSDP_CONFIG,
                "--num_processes", "1", "--num_machines", "1", "--main_process_port", str(port), str(WRAPPER)]
    return [sys.executable, str(WRAPPER)]


def tiny_overrides(out: Path, extra: list[str]) -> list[str]:
    """The demo config, small and fast: no trackers, no validation sampling, a step log, checkpoints."""
    return [
        f"train.output_dir={out}", "data.cache=off", f"data.cache_dir={WORK / 'cache'}", "train.trackers=[]",
        "validation.every=0", "train.log_every=1", f"train.batch_size={TINY_BATCH}", f"train.max_steps={TINY_STEPS}",
        f"train.checkpoint_every={TINY_EVERY}", "train.keep_checkpoints=5", "train.warmup_steps=2",
        "data.random_flip=true", "data.empty_prompt_prob=0.3", *extra,
    ]


def run_env(report: Path, deterministic: bool) -> dict:
    env = {"PYTHONUNBUFFERED": "1", "GPUCHK_REPORT": str(report)}
    if deterministic:
        env.update(GPUCHK_DETERMINISTIC="1", CUBLAS_WORKSPACE_CONFIG=":4096:8")
    return env


def read_reports(path: Path) -> dict:
    out: dict = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            out[record.pop("event")] = record
    return out


def read_metrics(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []


def final_weights_file(out: Path, lora: bool) -> Path:
    return out / ("pytorch_lora_weights.safetensors" if lora else "unet/diffusion_pytorch_model.safetensors")


def tensor_diff(a: dict, b: dict) -> dict:
    """Max |a - b| over same-named tensors, and how many differ at all."""
    import torch

    if a.keys() != b.keys():
        return {"same_keys": False, "only_a": sorted(a.keys() - b.keys())[:5], "only_b": sorted(b.keys() - a.keys())[:5]}
    worst, differing, scale = 0.0, 0, 0.0
    for key in a:
        x, y = a[key], b[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            return {"same_keys": True, "mismatch": f"{key}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"}
        if not torch.equal(x, y):
            differing += 1
            if x.is_floating_point():
                worst = max(worst, (x.double() - y.double()).abs().max().item())
            else:
                worst = max(worst, (x.long() - y.long()).abs().max().item())
        if x.is_floating_point() and x.numel():
            scale = max(scale, x.double().abs().max().item())
    return {"same_keys": True, "tensors": len(a), "differing_tensors": differing, "max_abs_diff": worst,
            "max_abs_value": scale, "identical": differing == 0}


def load_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def checkpoint(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:08d}"


def lora_file_names(trainable: dict) -> dict:
    """peft's parameter names (a checkpoint's trainable.safetensors) as the diffusers LoRA file names them."""
    return {"unet." + k.replace(".default.", "."): v for k, v in trainable.items()}


def compare_checkpoints(a: Path, b: Path) -> dict:
    """Two checkpoints of the same step: weights, optimizer tensors, schedule and scaler, data position."""
    sys.path.insert(0, str(ROOT / "src"))
    from diffalign.training.checkpoint import load_state_files

    out = {
        "weights": tensor_diff(load_tensors(a / "trainable.safetensors"), load_tensors(b / "trainable.safetensors")),
        "optimizer": tensor_diff(load_tensors(a / "optimizer.safetensors"), load_tensors(b / "optimizer.safetensors")),
        # the non-tensor part (param groups, steps); tuples compared as lists: after set_state_dict the
        # resumed optimizer holds betas=[b1, b2] where the original had (b1, b2), which AdamW reads alike
        "optimizer_skeleton_equal": _untuple(json.loads((a / "optimizer.json").read_text()))
        == _untuple(json.loads((b / "optimizer.json").read_text())),
        "optimizer_skeleton_identical": (a / "optimizer.json").read_text() == (b / "optimizer.json").read_text(),
        "position_equal": json.loads((a / "state.json").read_text()) == json.loads((b / "state.json").read_text()),
    }
    sa, sb = load_state_files(a, "schedule"), load_state_files(b, "schedule")
    out["lr_scheduler_equal"] = json.dumps(sa["lr_scheduler"], default=str) == json.dumps(sb["lr_scheduler"], default=str)
    out["scaler_a"], out["scaler_b"] = _plain(sa["scaler"]), _plain(sb["scaler"])
    out["scaler_equal"] = out["scaler_a"] == out["scaler_b"]
    return out


def _untuple(skeleton):
    """A checkpoint's JSON skeleton with {"__tuple__": [...]} replaced by the list."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {"__tuple__"}:
            return [_untuple(v) for v in skeleton["__tuple__"]]
        return {k: _untuple(v) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_untuple(v) for v in skeleton]
    return skeleton


def _plain(value):
    """A scaler state (tensors, numbers) as JSON-able numbers."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def resume_check(fig: Figures, name: str, kind: str, extra: list[str], lora: bool, per_run: float,
                 port: int, compare_plain: bool = False) -> None:
    """Straight run of TINY_STEPS steps (checkpoints at K, 2K); a second run resumed from step K in a new
    output folder; then final weights, the step-2K checkpoints and the losses after K compared."""
    root = fresh(WORK / name)
    deterministic = True
    fig["settings"] = {"launcher": kind, "steps": TINY_STEPS, "checkpoint_every": TINY_EVERY, "resume_from": TINY_EVERY,
                       "batch_size": TINY_BATCH, "overrides": extra, "deterministic_kernels": deterministic}
    straight, resumed = root / "straight", root / "resumed"
    reports = {}
    for i, (label, out, more) in enumerate([
        ("straight", straight, []),
        ("resumed", resumed, [f"train.resume={checkpoint(straight, TINY_EVERY)}"]),
    ]):
        report = root / f"{label}.report.jsonl"
        cmd = [*launcher(kind, port + i), "train", DEMO_CONFIG, *tiny_overrides(out, extra + more)]
        result = must(run(cmd, per_run, run_env(report, deterministic)), f"{label} run")
        reports[label] = read_reports(report)
        fig[f"{label}_run"] = {"seconds": round(result.seconds, 1), "nondeterministic_op_warnings": result.nondeterministic,
                               **reports[label]}
        if label == "straight" and not checkpoint(straight, TINY_EVERY).is_dir():
            raise CheckFailed(f"the straight run wrote no checkpoint at step {TINY_EVERY}")

    final = tensor_diff(load_tensors(final_weights_file(straight, lora)), load_tensors(final_weights_file(resumed, lora)))
    fig["final_weights_straight_vs_resumed"] = final
    later = 2 * TINY_EVERY
    if later < TINY_STEPS:
        fig[f"checkpoint_step_{later}_straight_vs_resumed"] = compare_checkpoints(checkpoint(straight, later),
                                                                                 checkpoint(resumed, later))
    # did the steps after the checkpoint train at all? (equal weights would otherwise prove nothing)
    saved = load_tensors(checkpoint(straight, TINY_EVERY) / "trainable.safetensors")
    if lora:
        saved = lora_file_names(saved)
    end = load_tensors(final_weights_file(straight, lora))
    common = [k for k in saved if k in end]
    changed = sum(1 for k in common if not bool((saved[k] == end[k]).all()))
    fig["tensors_changed_after_checkpoint"] = f"{changed}/{len(common)}"
    m_straight, m_resumed = read_metrics(straight), read_metrics(resumed)
    by_step = {m["step"]: m["loss"] for m in m_straight}
    deltas = [abs(m["loss"] - by_step[m["step"]]) for m in m_resumed if m["step"] in by_step]
    fig["losses_straight"] = [round(m["loss"], 6) for m in m_straight]
    fig["resumed_steps"] = [m["step"] for m in m_resumed]
    fig["loss_max_abs_diff_after_resume"] = max(deltas) if deltas else None
    fig["peak_memory_gib"] = m_straight[-1].get("peak_memory_gib") if m_straight else None

    problems = []
    if not final.get("identical"):
        problems.append(f"final weights differ: {json.dumps(final)}")
    ck = fig.get(f"checkpoint_step_{later}_straight_vs_resumed")
    if ck is not None:
        for part in ("weights", "optimizer"):
            if not ck[part].get("identical"):
                problems.append(f"step-{later} checkpoint {part} differ (max |diff| {ck[part].get('max_abs_diff')})")
        for flag in ("optimizer_skeleton_equal", "position_equal", "lr_scheduler_equal", "scaler_equal"):
            if not ck[flag]:
                problems.append(f"step-{later} checkpoints: {flag} is false")
    if changed == 0:
        problems.append("no weight changed after the checkpoint: the comparison proves nothing")
    if fig["resumed_steps"] != list(range(TINY_EVERY + 1, TINY_STEPS + 1)):
        problems.append(f"the resumed run logged steps {fig['resumed_steps']}")
    if kind == "fsdp" and not CPU:
        prep = reports["straight"].get("prepared", {})
        if prep.get("distributed_type") != "FSDP" or not prep.get("dtensor_params"):
            problems.append(f"FSDP2 did not shard the UNet: {prep}")
    if compare_plain:  # the same run without FSDP: how far the FSDP2 mixed-precision path is from autocast
        plain = root / "plain"
        report = root / "plain.report.jsonl"
        cmd = [*launcher("plain"), "train", DEMO_CONFIG, *tiny_overrides(plain, extra)]
        try:
            result = must(run(cmd, per_run, run_env(report, deterministic)), "plain (no FSDP) run")
            fig["plain_run"] = {"seconds": round(result.seconds, 1), **read_reports(report)}
            fig["final_weights_fsdp_vs_plain"] = tensor_diff(load_tensors(final_weights_file(straight, lora)),
                                                             load_tensors(final_weights_file(plain, lora)))
            lp = read_metrics(plain)
            fig["loss_max_abs_diff_fsdp_vs_plain"] = max(
                (abs(a["loss"] - b["loss"]) for a, b in zip(m_straight, lp)), default=None)
        except CheckFailed as error:  # informational only
            fig["plain_run_error"] = str(error)
    if problems:
        raise CheckFailed("; ".join(problems))


def check_fsdp_lora(fig: Figures) -> None:
    resume_check(fig, "fsdp-lora", "fsdp", [
        "train.mixed_precision=bf16", "model.frozen_dtype=bfloat16", "lora.dropout=0.1",
    ], lora=True, per_run=90, port=29510, compare_plain=True)


def check_fsdp_full(fig: Figures) -> None:
    resume_check(fig, "fsdp-full", "fsdp", [
        "lora.enabled=false", "train.optimizer=adamw", "train.learning_rate=1e-5",
        "train.mixed_precision=bf16", "model.frozen_dtype=bfloat16",
    ], lora=False, per_run=90, port=29520)


def check_fp16_resume(fig: Figures) -> None:
    # on the CPU accelerate has no fp16 autocast, so fp16 frozen weights would meet fp32 activations there
    frozen = "float32" if CPU else "float16"
    try:
        resume_check(fig, "fp16-resume", "plain", [
            "train.mixed_precision=fp16", f"model.frozen_dtype={frozen}", "lora.dropout=0.1",
        ], lora=True, per_run=75, port=0)
    finally:
        ck = checkpoint(WORK / "fp16-resume" / "straight", TINY_EVERY)
        if (ck / "schedule.json").is_file():
            sys.path.insert(0, str(ROOT / "src"))
            from diffalign.training.checkpoint import load_state_files

            fig[f"scaler_in_checkpoint_step_{TINY_EVERY}"] = _plain(load_state_files(ck, "schedule")["scaler"])
    scaler = fig.get(f"scaler_in_checkpoint_step_{TINY_EVERY}")
    if not CPU and not (isinstance(scaler, dict) and "scale" in scaler):
        raise CheckFailed(f"no gradient-scaler state in the checkpoint: {scaler}")
    if CPU:
        fig["note"] = ("on the CPU accelerate uses neither autocast nor a GradScaler for fp16: frozen weights stay "
                       "float32 and the checkpoint's scaler is None here")


def check_adamw8bit(fig: Figures) -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # ImportError, or a CUDA library it cannot load
        raise Skip(f"bitsandbytes does not import: {type(error).__name__}: {str(error)[:300]}")
    if CPU:
        raise Skip("bitsandbytes' 8-bit AdamW needs CUDA")
    fig["bitsandbytes"] = bitsandbytes.__version__
    # full fine-tuning: bitsandbytes keeps tensors under 4096 elements (all of the tiny LoRA) in 32 bit
    try:
        resume_check(fig, "adamw8bit-resume", "plain", [
            "lora.enabled=false", "train.optimizer=adamw8bit", "train.learning_rate=1e-5",
            "train.mixed_precision=bf16", "model.frozen_dtype=bfloat16",
        ], lora=False, per_run=75, port=0)
    finally:
        ck = checkpoint(WORK / "adamw8bit-resume" / "straight", TINY_EVERY)
        if (ck / "optimizer.safetensors").is_file():
            tensors = load_tensors(ck / "optimizer.safetensors")
            dtypes: dict[str, int] = {}
            for t in tensors.values():
                dtypes[str(t.dtype)] = dtypes.get(str(t.dtype), 0) + 1
            fig["optimizer_state_tensors_by_dtype"] = dtypes
    if not fig.get("optimizer_state_tensors_by_dtype", {}).get("torch.uint8"):
        raise CheckFailed("the checkpoint's optimizer state holds no uint8 tensors: no 8-bit state was saved")


# ---------------------------------------------------------------------------------------------------
# full-size architectures (random weights): step time and memory


def _lock(family: str) -> Path:
    return WORK / "models" / f"{family}.building"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_builds() -> float:
    """Wait while a background `build-models` (started by the .sh) is still building; return the seconds waited."""
    started = time.time()
    announced = False
    while True:
        live = []
        for lock in (WORK / "models").glob("*.building") if (WORK / "models").is_dir() else []:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                live.append(lock.stem)
        if not live:
            return time.time() - started
        if time.time() > DEADLINE - 30:
            raise CheckFailed(f"the background build of {live} has not finished")
        if not announced:
            print(f"[gpu_checks] waiting for the background build of {live}", flush=True)
            announced = True
        time.sleep(1)


def build_model(family: str) -> Path:
    """A random-weight pipeline folder of the family (GPU: the real architecture, as
    scripts/benchmark_full_size.py builds it; CPU rehearsal: the tiny replica). The .sh builds them in the
    background while the tiny-model checks run; this waits for that (so that nothing else runs on the GPU
    during a timing) and builds here only what it did not."""
    wait_for_builds()
    folder = WORK / "models" / family
    if (folder / ".complete").is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    must(run([sys.executable, __file__, "build-models", family], 240), f"building the {family} model")
    if not (folder / ".complete").is_file():
        raise CheckFailed(f"building the {family} model failed")
    return folder


def cmd_build_models(families: list[str]) -> int:
    """Build each family's pipeline folder under GPUCHK_WORK/models (a lock file per family while pending)."""
    (WORK / "models").mkdir(parents=True, exist_ok=True)
    for family in families:
        _lock(family).write_text(str(os.getpid()))
    sys.path.insert(0, str(ROOT / "src"))
    failed = 0
    for family in families:
        folder = WORK / "models" / family
        started = time.time()
        try:
            if (folder / ".complete").is_file():
                continue
            shutil.rmtree(folder, ignore_errors=True)
            if CPU:
                from diffalign.models.tiny import save_tiny_pipeline

                save_tiny_pipeline(folder, family)
            else:
                sys.path.insert(0, str(ROOT / "scripts"))
                from benchmark_full_size import build_pipeline

                build_pipeline(family, folder)
                import torch

                torch.cuda.empty_cache()
            (folder / ".complete").write_text(f"{time.time() - started:.1f}\n")
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30
            print(f"built {family} in {folder}: {size:.2f} GiB, {time.time() - started:.1f}s", flush=True)
        except Exception:
            import traceback

            traceback.print_exc()
            failed += 1
        finally:
            _lock(family).unlink(missing_ok=True)
    return 1 if failed else 0


def bench_overrides(model: Path, resolution: int, pairs: int, mixed: str, frozen: str, out: Path, cache_dir: Path,
                    extra: list[str]) -> list[str]:
    """scripts/benchmark_full_size.py's settings, without validation sampling, trackers or checkpoints."""
    return [
        f"model.pretrained={model}", f"model.frozen_dtype={frozen}", f"data.resolution={resolution}",
        f"train.batch_size={pairs}", f"train.max_steps={BENCH_STEPS}", "train.log_every=1",
        f"train.mixed_precision={mixed}", f"train.output_dir={out}", "train.learning_rate=1e-5", "objective.beta=5000",
        "train.trackers=[]", "validation.every=0", "train.checkpoint_every=0", f"data.max_pairs={BENCH_PAIRS}",
        f"data.cache_dir={cache_dir}", *extra,
    ]


def bench(label: str, model: Path, resolution: int, pairs: int, mixed: str, frozen: str, extra: list[str],
          timeout: float, cache_dir: Path | None = None) -> dict:
    """One full-size training run: median step time (steps 3..N), peak memory, losses."""
    out = WORK / "runs" / label
    shutil.rmtree(out, ignore_errors=True)
    report = WORK / "runs" / f"{label}.report.jsonl"
    report.unlink(missing_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)
    cache_dir = cache_dir or WORK / "cache-off"
    extra = extra if any(e.startswith("data.cache=") for e in extra) else [*extra, "data.cache=off"]
    cmd = [*launcher("plain"), "train", *bench_overrides(model, resolution, pairs, mixed, frozen, out, cache_dir, extra)]
    result = must(run(cmd, timeout, run_env(report, deterministic=False)), label)
    log = read_metrics(out)
    times = [b["seconds"] - a["seconds"] for a, b in zip(log[1:], log[2:])]
    reports = read_reports(report)
    shutil.rmtree(out, ignore_errors=True)  # a full fine-tuning run writes the whole UNet
    return {
        "overrides": extra, "resolution": resolution, "pairs": pairs, "mixed_precision": mixed, "frozen_dtype": frozen,
        "median_step_s": round(statistics.median(times), 4) if times else None,
        "step_s": [round(t, 4) for t in times],
        "peak_memory_gib": round(log[-1]["peak_memory_gib"], 3) if log else None,
        "max_reserved_gib": round(reports.get("exit", {}).get("max_reserved_gib", 0), 3) or None,
        "losses": [round(m["loss"], 6) for m in log],
        "run_s": round(result.seconds, 1),
        "trainable": reports.get("prepared", {}).get("trainable_numel_by_dtype"),
    }


def resolution(full: int) -> int:
    return 32 if CPU else full


# fp16 mixed precision with fp16 frozen weights needs CUDA autocast; the CPU rehearsal keeps them float32
FP16_FROZEN = "float32" if CPU else "float16"


def check_sdxl_memory(fig: Figures) -> None:
    """SDXL LoRA at 1024 px, 1 pair, bf16: without and with gradient checkpointing, then with checkpointing
    and the latent/text cache (no VAE or text encoder loaded)."""
    started = time.time()
    model = build_model("sdxl")
    fig["waited_for_model_s"] = round(time.time() - started, 1)  # built in the background meanwhile
    res = resolution(1024)
    common = dict(model=model, resolution=res, pairs=1, mixed="bf16", frozen="bfloat16")
    fig["no_gc"] = bench("sdxl-lora-nogc", extra=["train.gradient_checkpointing=false"], timeout=120, **common)
    fig["gc"] = bench("sdxl-lora-gc", extra=["train.gradient_checkpointing=true"], timeout=120, **common)
    cache_dir = fresh(WORK / "cache-sdxl")
    cache_cmd = [sys.executable, "-m", "diffalign.cli.main", "cache", f"model.pretrained={model}",
                 "model.frozen_dtype=bfloat16", f"data.resolution={res}", f"data.max_pairs={BENCH_PAIRS}",
                 f"data.cache_dir={cache_dir}", "--batch-size", "8"]
    result = must(run(cache_cmd, 90, {"PYTHONUNBUFFERED": "1"}), "diffalign cache")
    fig["cache_build_s"] = round(result.seconds, 1)
    fig["cache_mib"] = round(sum(f.stat().st_size for f in cache_dir.rglob("*") if f.is_file()) / 2**20, 1)
    fig["gc_cache"] = bench("sdxl-lora-gc-cache", extra=["train.gradient_checkpointing=true", "data.cache=require"],
                            timeout=120, cache_dir=cache_dir, **common)
    fig["readme_no_gc_no_cache"] = {"median_step_s": 1.03, "peak_memory_gib": 21.6}
    problems = [k for k in ("no_gc", "gc", "gc_cache") if fig[k].get("median_step_s") is None]
    if problems:
        raise CheckFailed(f"no step times for {problems}")


def check_offload_reference(fig: Figures) -> None:
    """Full fine-tuning of SD1.5 at 512 px (AdamW, bf16, bf16 reference): the reference UNet on the GPU vs
    train.offload_reference=true (accelerate's cpu_offload: weights on the CPU, moved per module call)."""
    started = time.time()
    model = build_model("sd15")
    fig["waited_for_model_s"] = round(time.time() - started, 1)  # built in the background meanwhile
    common = dict(model=model, resolution=resolution(512), pairs=1, mixed="bf16", frozen="bfloat16")
    full = ["lora.enabled=false", "train.optimizer=adamw"]
    fig["reference_on_gpu"] = bench("sd15-full-ref-gpu", extra=full, timeout=120, **common)
    fig["reference_offloaded"] = bench("sd15-full-ref-offload", extra=[*full, "train.offload_reference=true"],
                                       timeout=150, **common)
    if os.environ.get("GPUCHK_OFFLOAD_REPEAT") == "1":  # the same config again: run-to-run (non)determinism
        again = bench("sd15-full-ref-gpu-again", extra=full, timeout=120, **common)
        fig["reference_on_gpu_again_losses"] = again["losses"]
        fig["same_config_loss_max_abs_diff"] = max(
            (abs(x - y) for x, y in zip(fig["reference_on_gpu"]["losses"], again["losses"])), default=None)
    a, b = fig["reference_on_gpu"], fig["reference_offloaded"]
    fig["peak_saved_gib"] = round(a["peak_memory_gib"] - b["peak_memory_gib"], 3)
    fig["step_time_ratio_offloaded"] = (round(b["median_step_s"] / a["median_step_s"], 3)
                                        if a["median_step_s"] and b["median_step_s"] else None)
    fig["loss_max_abs_diff"] = max((abs(x - y) for x, y in zip(a["losses"], b["losses"])), default=None)
    fig["first_loss_equal"] = bool(a["losses"] and b["losses"] and a["losses"][0] == b["losses"][0])
    if CPU:
        fig["note"] = "on the CPU diffalign does not offload (the reference is already there): equal memory expected"
    elif fig["peak_saved_gib"] <= 0:
        raise CheckFailed(f"offloading the reference did not lower the peak memory ({fig['peak_saved_gib']} GiB saved)")


def check_sd15_baseline(fig: Figures) -> None:
    """docs/performance.md's SD1.5 row: LoRA r=8, 512 px, 4 pairs, fp16 mixed, frozen fp16 (0.39 s, 11.1 GiB on an H100)."""
    model = build_model("sd15")
    fig["sdpa"] = bench("sd15-lora-4pairs", model, resolution(512), 4, "fp16", FP16_FROZEN, [], timeout=90)
    fig["readme"] = {"median_step_s": 0.39, "peak_memory_gib": 11.1}
    (WORK / "sd15-baseline.sdpa.json").write_text(json.dumps(fig["sdpa"]))


def check_compile(fig: Figures) -> None:
    """SD1.5 LoRA, 512 px, 4 pairs, bf16, frozen bf16: train.compile=off against blocks (the step, the whole run
    with its compilation), blocks with the reference pre-pass, and unet (the whole UNet as one graph); every run's
    step-1 loss must be ln 2 (the compiled reference is the policy's own graph, issue 19's trap)."""
    model = build_model("sd15")
    args = (model, resolution(512), 4, "bf16", "bfloat16")
    plans = {
        "eager": ([], 90),
        "blocks": (["train.compile=blocks"], 240),
        "blocks_prepass": (["train.compile=blocks", "reference.precompute=on"], 150),
        "unet": (["train.compile=unet"], 420),
    }
    runs = {}
    for name, (extra, timeout) in plans.items():  # each kept as it finishes: a later timeout loses nothing
        runs[name] = fig[name] = bench(f"sd15-compile-{name}", *args, extra, timeout=timeout)
    off = [name for name, r in runs.items() if not r["losses"] or abs(r["losses"][0] - math.log(2)) > 1e-6]
    if off:
        raise CheckFailed(f"step-1 loss is not ln 2 in {off}: {[runs[n]['losses'][:1] for n in off]}")
    eager = runs["eager"]
    for name in ("blocks", "unet"):
        if eager["median_step_s"] and runs[name]["median_step_s"]:
            fig[f"step_ratio_{name}_to_eager"] = round(runs[name]["median_step_s"] / eager["median_step_s"], 3)
        fig[f"compile_overhead_{name}_s"] = round(runs[name]["run_s"] - eager["run_s"], 1)


def _against_sd15_baseline(fig: Figures, base: str, name: str, label: str, extra: list[str]) -> tuple[dict, dict]:
    """SD1.5 LoRA, 512 px, 4 pairs, fp16: the sd15-baseline run (run here if that check did not) as fig[base]
    and a run with `extra` as fig[name], their step time ratio and the largest difference of their losses."""
    model = build_model("sd15")
    earlier = WORK / "sd15-baseline.sdpa.json"
    args = (model, resolution(512), 4, "fp16", FP16_FROZEN)
    a = fig[base] = json.loads(earlier.read_text()) if earlier.is_file() else bench("sd15-lora-4pairs", *args, [], timeout=90)
    b = fig[name] = bench(label, *args, extra, timeout=90)
    fig[f"{name}_over_{base}_step_time"] = (round(b["median_step_s"] / a["median_step_s"], 3)
                                           if a["median_step_s"] and b["median_step_s"] else None)
    fig["loss_max_abs_diff"] = max((abs(x - y) for x, y in zip(a["losses"], b["losses"])), default=None)
    return a, b


def check_xformers(fig: Figures) -> None:
    """SD1.5 LoRA, 4 pairs, fp16: train.attention=xformers against sdpa (the sd15-baseline run if it ran)."""
    try:
        import xformers
        import xformers.ops  # noqa: F401
    except Exception as error:
        raise Skip(f"xformers does not import: {type(error).__name__}: {str(error)[:300]}")
    if CPU:
        raise Skip("xformers attention needs CUDA")
    fig["xformers"] = xformers.__version__
    # step 1 is ln 2 for both (LoRA starts at zero); later steps show how far the two kernels drift apart
    _against_sd15_baseline(fig, "sdpa", "xformers_run", "sd15-lora-4pairs-xformers", ["train.attention=xformers"])
    if fig["loss_max_abs_diff"] is None or fig["loss_max_abs_diff"] > 0.05:
        raise CheckFailed(f"losses differ by up to {fig['loss_max_abs_diff']} (sdpa vs xformers)")


def check_channels_last(fig: Figures) -> None:
    """SD1.5 LoRA, 4 pairs, fp16: train.channels_last=true against the default layout (the sd15-baseline run if
    it ran): step time ratio, and how far the losses drift apart (step 1 is ln 2 in both)."""
    _, b = _against_sd15_baseline(fig, "default", "channels_last", "sd15-lora-4pairs-channels-last",
                                  ["train.channels_last=true"])
    if not b["losses"] or abs(b["losses"][0] - math.log(2)) > 1e-6:
        raise CheckFailed(f"step-1 loss is not ln 2 with channels-last: {b['losses'][:1]}")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "diffalign.cli.main", *args]


def _keep(src: Path, name: str) -> None:
    """Copy an eval's report (not its images) to $OUT/NAME, which comes back from the GPU machine."""
    dest = Path(os.environ.get("OUT", WORK / "out")) / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for item in ("results.json", "summary.md", "report.html", "scores.csv", "plots", "grids"):
        if (src / item).is_dir():
            shutil.copytree(src / item, dest / item)
        elif (src / item).is_file():
            shutil.copy2(src / item, dest / item)


def _win(results_file: Path) -> dict:
    results = json.loads(results_file.read_text())
    c = results["comparisons"]["shapes"]["tuned"]
    return {"wins": c["wins"], "ties": c["ties"], "losses": c["losses"], "win_rate": c["win_rate"]["value"],
            "mean_base": results["scores"]["shapes"]["base"]["mean"],
            "mean_tuned": results["scores"]["shapes"]["tuned"]["mean"], "dtype": results["settings"]["dtype"]}


def check_eval_demo(fig: Figures) -> None:
    """The embedded demo on the GPU: a short `diffalign train`, then `diffalign eval` with the default precision
    (float16 on CUDA) and with float32, timed; the two reports come back under $OUT."""
    run_dir = fresh(WORK / "eval-demo-run")
    steps = "20" if CPU else "100"
    result = must(run(_cli("train", f"train.output_dir={run_dir}", f"train.max_steps={steps}", "validation.every=0",
                           "train.trackers=[]", "train.checkpoint_every=0"), 150), "diffalign train (demo)")
    fig["train_s"] = round(result.seconds, 1)
    for dtype in ("auto", "float32"):
        out = run_dir / f"eval-{dtype}"
        extra = ["--steps", "4", "--seeds", "1", "--max-prompts", "8"] if CPU else []
        result = must(run(_cli("eval", str(run_dir), "--out", str(out), "--dtype", dtype, "--no-progress", *extra),
                          150), f"diffalign eval --dtype {dtype}")
        fig[f"eval_{dtype}_s"] = round(result.seconds, 1)
        fig[f"eval_{dtype}"] = _win(out / "results.json")
        _keep(out, f"eval-demo-{dtype}")
        rerun = must(run(_cli("eval", str(run_dir), "--out", str(out), "--dtype", dtype, "--no-progress", *extra),
                         90), "diffalign eval rerun")
        fig[f"eval_{dtype}_rerun_s"] = round(rerun.seconds, 1)  # images reused: scoring and report only


def check_generate(fig: Figures) -> None:
    """`diffalign generate` on the SD1.5 architecture (random weights), 512 px, 20 DDIM steps, float16: images/s at
    batch 16, a rerun that finds every image, and whether batch 1 gives the same pixels as batch 16."""
    started = time.time()
    model = build_model("sd15")
    fig["waited_for_model_s"] = round(time.time() - started, 1)
    size, count = str(resolution(512)), 8 if CPU else 64
    out, single = fresh(WORK / "gen-b16"), fresh(WORK / "gen-b1")
    common = ["--prompts", "parti", "--seeds", "1", "--steps", "20", "--size", size, "--dtype",
              "float32" if CPU else "float16", "--no-progress"]
    first = must(run(_cli("generate", str(model), "--max-prompts", str(count), "--batch-size", "16", "--out", str(out),
                          *common), 200), "diffalign generate")
    fig["images"] = count
    fig["batch16_run_s"] = round(first.seconds, 1)
    again = must(run(_cli("generate", str(model), "--max-prompts", str(count), "--batch-size", "16", "--out",
                          str(out), *common), 60), "diffalign generate (rerun)")
    fig["rerun_s"] = round(again.seconds, 1)
    fig["rerun_drew_nothing"] = any("(0 drawn now" in line for line in again.tail)
    one = must(run(_cli("generate", str(model), "--max-prompts", "4", "--batch-size", "1", "--out", str(single),
                        *common), 120), "diffalign generate --batch-size 1")
    fig["batch1_4_images_run_s"] = round(one.seconds, 1)
    import numpy as np
    from PIL import Image

    diffs = []
    for image in sorted(single.glob("p*.png")):
        a = np.asarray(Image.open(image), dtype=int)
        b = np.asarray(Image.open(out / image.name), dtype=int)
        diffs.append(int(np.abs(a - b).max()))
    fig["batch1_vs_batch16_max_pixel_diff"] = diffs
    if not fig["rerun_drew_nothing"]:
        raise CheckFailed("the rerun drew images again instead of resuming")


def check_data_jobs(fig: Figures) -> None:
    """`diffalign generate` and `score` on one process against one process per GPU (`accelerate launch`), through
    scripts/benchmark_processes.py: SD1.5 architecture (random weights) at 512 px, 20 steps, float16, 32 images
    per GPU; PickScore on a random-weight ViT-H/14 replica scoring them 4 times over. Figures: images/s of each
    layout, the ratio, whether both wrote the same files. On a machine with one GPU only the one-process figures
    (the multi-process code path on a GPU, nothing to scale over)."""
    import torch

    gpus = 2 if CPU else torch.cuda.device_count()
    fig["gpus"] = gpus
    model = build_model("sd15")
    figures = WORK / "data-jobs.json"
    command = [sys.executable, str(ROOT / "scripts" / "benchmark_processes.py"), "--model", str(model),
               "--processes", str(max(gpus, 1)), "--repeats", "1", "--out", str(figures)]
    if CPU:
        command += ["--device", "cpu", "--images", "8", "--steps", "2", "--score-copies", "2"]
    else:
        command += ["--device", "cuda", "--images", str(32 * gpus), "--steps", "20", "--size", "512",
                    "--batch-size", "8", "--score-copies", "4", "--scorer-size", "vit-h-14"]
    must(run(command, 400), "scripts/benchmark_processes.py")
    results = json.loads(figures.read_text())
    for key in ("generate", "score"):
        fig[key] = results[key]
    if not all(results[key]["outputs_identical"] for key in ("generate", "score")):
        raise CheckFailed("the processes wrote other files than one process: " + json.dumps(results))


def check_sampling(fig: Figures) -> None:
    """The sampling primitives on the SD1.5 architecture (random weights), 512 px, float16 on the GPU: trajectory
    images vs diffusers' pipeline at eta 0 (same seeds), time of a 20-step trajectory of 8 images at eta 1, a
    re-scored step's log-probability with gradient, and DDIM inversion of 4 latents to 4 timesteps."""
    import numpy as np
    import torch

    from diffalign.config.schema import ModelConfig
    from diffalign.models.loading import load_parts
    from diffalign.sampling.ddim import ddim_scheduler
    from diffalign.sampling.inversion import invert
    from diffalign.sampling.pipeline import pipeline_from_parts
    from diffalign.sampling.trajectory import sample_trajectory, sampling_conditioning, step_log_prob

    started = time.time()
    model = build_model("sd15")
    fig["waited_for_model_s"] = round(time.time() - started, 1)
    device = torch.device("cpu" if CPU else "cuda")
    dtype = torch.float32 if CPU else torch.float16
    parts = load_parts(ModelConfig(pretrained=str(model), frozen_dtype="float32" if CPU else "float16"),
                       trainable_dtype=dtype)
    for module in (parts.unet, parts.vae, *parts.text_encoders):
        module.to(device)
    size, prompts, seeds = resolution(512), ["a red circle", "a blue square"] * 4, list(range(8))

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.time()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, round(time.time() - t0, 2)

    deterministic = sample_trajectory(parts, parts.unet, prompts[:2], seeds[:2], steps=20, eta=0.0, resolution=size)
    pipe = pipeline_from_parts(parts, parts.unet)
    with torch.no_grad():
        reference = pipe(prompts[:2], num_inference_steps=20, guidance_scale=5.0, height=size, width=size, eta=0.0,
                         generator=[torch.Generator().manual_seed(s) for s in seeds[:2]], output_type="np").images
    reference = (np.clip(reference, 0, 1) * 255).round().astype(np.uint8)
    fig["eta0_vs_pipeline_max_pixel_diff"] = int(np.abs(deterministic.images.astype(int) - reference.astype(int)).max())
    trajectory, fig["trajectory_8x20_s"] = timed(
        lambda: sample_trajectory(parts, parts.unet, prompts, seeds, steps=20, eta=1.0, resolution=size))
    fig["log_probs_finite"] = bool(torch.isfinite(trajectory.log_probs).all())
    scheduler = ddim_scheduler(parts)
    parts.unet.requires_grad_(True)
    log_prob, fig["rescore_one_step_s"] = timed(lambda: step_log_prob(parts.unet, scheduler, trajectory, 5))
    log_prob.float().mean().backward()
    fig["rescore_matches_sampling_max_abs"] = float((log_prob.detach() - trajectory.log_probs[:, 5]).abs().max())
    cond, _, _ = sampling_conditioning(parts, prompts[:4], size, device)
    inverted, fig["invert_4_latents_10_steps_s"] = timed(lambda: invert(
        parts.unet, parts.noise_scheduler.config, trajectory.latents[:4, -1], torch.tensor([101, 301, 601, 901]),
        cond, num_steps=10))
    fig["inverted_reached"] = inverted.timesteps.tolist()
    if fig["eta0_vs_pipeline_max_pixel_diff"] > (2 if CPU else 8) or not fig["log_probs_finite"]:
        raise CheckFailed("trajectory images differ from the pipeline's or log-probabilities are not finite")


def _against_dpo(fig: Figures, methods: dict[str, list[str]]) -> None:
    """Each method's step on the SD1.5 architecture (random weights), 512 px, 2 pairs, LoRA, fp16 mixed
    precision, against a Diffusion-DPO step with the same settings: median step times, their ratio, peak
    memory, and every loss finite."""
    started = time.time()
    model = build_model("sd15")
    fig["waited_for_model_s"] = round(time.time() - started, 1)
    res = resolution(512)
    dpo = bench("dpo-reference", model, res, 2, "fp16", FP16_FROZEN, ["objective.beta=2000"], 80)
    fig["dpo_median_step_s"], fig["dpo_peak_memory_gib"] = dpo["median_step_s"], dpo["peak_memory_gib"]
    for name, extra in methods.items():
        timed = bench(name, model, res, 2, "fp16", FP16_FROZEN, [f"objective.name={name}", "objective.beta=2000", *extra],
                      120)
        fig[f"{name}_median_step_s"], fig[f"{name}_peak_memory_gib"] = timed["median_step_s"], timed["peak_memory_gib"]
        if dpo["median_step_s"] and timed["median_step_s"]:
            fig[f"{name}_over_dpo_step_time"] = round(timed["median_step_s"] / dpo["median_step_s"], 2)
        fig[f"{name}_losses"] = timed["losses"]
        if not timed["losses"] or not all(math.isfinite(x) for x in timed["losses"]):
            raise CheckFailed(f"{name} losses missing or not finite")


# the methods timed against Diffusion-DPO, and their overrides
AGAINST_DPO = {
    # reference samples by DDIM 10 steps, CFG 7.5, eta 0, drawn under autocast by a pool refreshed every 2 steps
    "seppo": ["rollout.steps=10", "rollout.guidance=7.5", "rollout.eta=0", "rollout.sample_batch_size=2",
              "reference.every=2", "reference.keep=2"],
    "inpo": [],  # 10 inverse steps, eta-noise 0.1
    "smpo": [],  # 5 ReNoise steps; the demo table's scores, bounds from the data
    "mapo": [],  # no reference pass: the saving against DPO's adapters-off forward
    "kto": [],  # each pair as a desirable and an undesirable image, own noise and timestep
    "dcpo": ["data.path=CAPTIONS"],  # the demo pairs with a caption per image (`diffalign captions --captioner shapes`)
}


def check_seppo(fig: Figures) -> None:
    """SePPO against DPO (`_against_dpo`, `AGAINST_DPO`)."""
    _against_dpo(fig, {"seppo": AGAINST_DPO["seppo"]})


def check_inversion(fig: Figures) -> None:
    """InPO and SmPO against DPO (`_against_dpo`, `AGAINST_DPO`), under fp16 autocast."""
    _against_dpo(fig, {name: AGAINST_DPO[name] for name in ("inpo", "smpo")})


def check_variants(fig: Figures) -> None:
    """MaPO (no reference), Diffusion-KTO and DCPO (per-image captions, written first by `diffalign captions`)
    against DPO (`_against_dpo`, `AGAINST_DPO`)."""
    captions = WORK / "captions"
    started = time.time()
    must(run([*launcher("plain"), "captions", "assets/demo/pairs_train.parquet", "--captioner", "shapes",
              "--out", str(captions), "--no-progress"], 120), "captions")
    fig["captions_s"] = round(time.time() - started, 1)
    methods = {name: [e.replace("CAPTIONS", str(captions)) for e in AGAINST_DPO[name]] for name in ("mapo", "kto", "dcpo")}
    _against_dpo(fig, methods)


# ---------------------------------------------------------------------------------------------------
# online rounds (issues 29, 30): sampling against the stock pipeline, and short DDPO and DGPO runs end to end

DDPO_CONFIG = os.environ.get("GPUCHK_DDPO_CONFIG", "configs/sd15/ddpo.yaml")  # another preset rehearses the check
DGPO_CONFIG = os.environ.get("GPUCHK_DGPO_CONFIG", "configs/sd15/dgpo.yaml")  # likewise for rl-dgpo
DDPO_ANCHOR = 0.22  # samples/s per A100: ddpo-pytorch's published SD1.5 LoRA DDPO throughput
RL_ROUNDS, RL_IMAGES = 2, 16  # the rl-* runs: rounds, about this many images per round
RL_STEPS = 4 if CPU else 50  # DDIM steps of a rollout

# `diffalign ARGS` through train_wrapper.py with the scorer REWARD registered again as "REWARD-replica" on
# random-weight files (argv: REWARD, its options as JSON, then the wrapper's arguments): the GPU machine
# cannot download the real weights, and the replica has the real architecture (its time and memory).
REPLICA_REWARD = """
import functools, json, runpy, sys
from diffalign.rewards import register_scorer, scorer_factory
name, options = sys.argv[1], json.loads(sys.argv[2])
register_scorer(name + "-replica")(functools.partial(scorer_factory(name), **options))
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def reward_replica(reward: str, folder: Path) -> dict | None:
    """Options that load the scorer `reward` from random-weight replicas saved under `folder` (ViT-L/14 CLIP and
    head for the aesthetic predictor, ViT-H/14 CLIP for PickScore; the tiny CLIP in the CPU rehearsal); None for
    a reward that needs no download (such as `shapes`) or one without a replica here."""
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    from diffalign.rewards.replicas import save_aesthetic_head, save_clip_replica

    dtype = torch.float32 if CPU else torch.float16
    if reward == "aesthetic":
        size = "tiny" if CPU else "vit-l-14"
        clip = save_clip_replica(fresh(folder / f"clip-{size}"), size, dtype=dtype)
        head = save_aesthetic_head(folder / "aesthetic-head.pth", width=32 if CPU else 768)
        return {"clip_model": str(clip), "head": str(head)}
    if reward == "pickscore":
        size = "tiny" if CPU else "vit-h-14"
        clip = save_clip_replica(fresh(folder / f"clip-{size}"), size, dtype=dtype)
        return {"model": str(clip), "processor": str(clip)}
    return None


def rl_plan(config: str, model: Path, out: Path) -> tuple[list[str], dict]:
    """The overrides of the online preset `config` for an rl-* check, and what they imply: RL_ROUNDS rounds of
    about RL_IMAGES images (whole prompt groups: max(1, RL_IMAGES // images_per_prompt) prompts x the preset's
    images_per_prompt), one optimizer step a round of all its units (single images for DDPO, prompt groups for
    DGPO: the method's `rollout_unit`; train.batch_size x train.grad_accum units), 512 px, RL_STEPS DDIM steps,
    the preset's trained timesteps, no comparison with the base model (ddpo-pytorch samples once per round), no
    validation, checkpoints or trackers."""
    sys.path.insert(0, str(ROOT / "src"))
    from diffalign.config.core import load_config
    from diffalign.config.schema import RunConfig
    from diffalign.training.methods import method_class

    cfg = load_config(RunConfig, config, [])
    r, t = cfg.rollout, cfg.train
    prompts = max(1, RL_IMAGES // r.images_per_prompt)
    images = prompts * r.images_per_prompt
    units = images if method_class(cfg.objective.name).rollout_unit == "image" else prompts
    batch = min(t.batch_size, units)
    while units % batch:
        batch -= 1
    overrides = [
        f"model.pretrained={model}", f"model.frozen_dtype={FP16_FROZEN}", f"rollout.resolution={resolution(512)}",
        f"rollout.steps={RL_STEPS}", f"rollout.prompts_per_round={prompts}", "rollout.compare_base=false",
        f"train.batch_size={batch}", f"train.grad_accum={units // batch}", "rollout.inner_epochs=1",
        f"train.max_steps={RL_ROUNDS}", f"train.output_dir={out}", "train.trackers=[]",
        "validation.every=0", "train.checkpoint_every=0",
    ]
    plan = {"config": config, "rounds": RL_ROUNDS, "images_per_round": images,
            "prompts_per_round": prompts, "images_per_prompt": r.images_per_prompt, "steps_per_round": 1,
            "rollout_steps": RL_STEPS, "resolution": resolution(512), "reward": r.reward, "lora": cfg.lora.enabled,
            "mixed_precision": t.mixed_precision}
    for depth in ("timestep_fraction", "timesteps"):  # how much of each image trains: DDPO's steps, DGPO's draws
        if hasattr(cfg.objective, depth):
            plan[depth] = getattr(cfg.objective, depth)
    return overrides, plan


def check_rollouts(fig: Figures) -> None:
    """scripts/benchmark_rollouts.py on the SD1.5 architecture (random weights), 512 px, 50 DDIM steps, eta 1,
    CFG 5, a batch of 8, float16: a round's sampling with log-probabilities (`sample_trajectory`) against
    StableDiffusionPipeline drawing the same images, images/s of each and the ratio (target >= 0.9), and the
    largest pixel difference at eta 1 and eta 0. Its table goes to $OUT/rollouts.txt."""
    model = build_model("sd15")
    figures = WORK / "rollouts.json"
    figures.unlink(missing_ok=True)
    size = ["--steps", "4", "--images", "2", "--dtype", "float32"] if CPU else ["--steps", "50", "--images", "8",
                                                                              "--dtype", "float16"]
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_rollouts.py"), "--model", str(model), "--device",
           "cpu" if CPU else "cuda", "--resolution", str(resolution(512)), "--eta", "1", "--guidance", "5",
           "--repeats", "3", "--warmup", "1", "--json", str(figures), *size]
    result = must(run(cmd, 150), "benchmark_rollouts")
    out = Path(os.environ.get("OUT", WORK / "out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollouts.txt").write_text("\n".join(result.tail) + "\n")
    s = json.loads(figures.read_text())["sampling"]
    for key in ("device", "dtype", "resolution", "steps", "eta", "guidance", "images", "batch_size",
                "ours_images_per_s", "diffusers_images_per_s", "ratio", "paired_ratios", "meets_target",
                "max_level_diff", "tolerance_levels", "same_images"):
        fig[key] = s[key]
    problems = []
    if not s["same_images"]:
        problems.append(f"the two samplers draw different images (max |diff| {s['max_level_diff']} levels, "
                        f"tolerance {s['tolerance_levels']})")
    if not CPU and not s["meets_target"]:  # the CPU rehearsal's tiny model times noise, not sampling
        problems.append(f"sample_trajectory at {s['ratio']:.3f}x the pipeline's images/s, below 0.9")
    if problems:
        raise CheckFailed("; ".join(problems))


def rl_run(fig: Figures, name: str, config: str, label: str, timeout: float, anchors: dict) -> None:
    """`diffalign train CONFIG` with `rl_plan`'s overrides on the SD1.5 architecture (random weights; a reward that
    needs downloaded weights on random-weight replicas): samples/s end to end (images sampled / wall seconds of the
    train process), peak memory, and the round split (median sample / reward / train seconds of rounds.jsonl, by
    scripts/benchmark_rollouts.py --round-run); rounds.jsonl and the split's table go to $OUT/NAME/. `anchors`:
    published figures recorded beside the samples/s."""
    if not (ROOT / config).is_file():
        raise Skip(f"{config} does not exist (yet): the {label} preset this check runs")
    model = build_model("sd15")
    root = fresh(WORK / name)
    run_dir = root / "run"
    overrides, plan = rl_plan(config, model, run_dir)
    fig["plan"] = plan
    started = time.time()
    options = reward_replica(plan["reward"], root / "reward")
    cmd = [*launcher("plain"), "train", config, *overrides]
    if options is not None:
        cmd = [sys.executable, "-c", REPLICA_REWARD, plan["reward"], json.dumps(options), str(WRAPPER), "train",
               config, *overrides, f"rollout.reward={plan['reward']}-replica"]
        fig["reward_replica"] = f"{plan['reward']} on random weights ({round(time.time() - started, 1)} s to build)"
    report = root / "report.jsonl"
    result = must(run(cmd, timeout, run_env(report, deterministic=False)), f"diffalign train ({label})")
    rounds_log = run_dir / "rounds.jsonl"
    entries = [json.loads(line) for line in rounds_log.read_text().splitlines() if line] if rounds_log.is_file() else []
    out = Path(os.environ.get("OUT", WORK / "out")) / name
    fresh(out)
    if rounds_log.is_file():
        shutil.copy2(rounds_log, out / "rounds.jsonl")
    images = len(entries) * plan["images_per_round"]
    fig["train_wall_s"] = round(result.seconds, 1)
    fig["rounds_logged"] = len(entries)
    fig["images_sampled"] = images
    fig["samples_per_s_end_to_end"] = round(images / result.seconds, 4)
    for key, value in anchors.items():
        fig[key] = value
    fig["peak_memory_gib"] = round(read_reports(report).get("exit", {}).get("max_allocated_gib", 0), 2) or None
    if not entries:
        raise CheckFailed(f"the run logged no round in {rounds_log}")
    split_json = root / "split.json"
    split = run([sys.executable, str(ROOT / "scripts" / "benchmark_rollouts.py"), "--round-run", str(run_dir),
                 "--no-sampling", "--json", str(split_json)], 60)
    (out / "round_split.txt").write_text("\n".join(split.tail) + "\n")
    if split.rc != 0:
        raise CheckFailed(f"no round split: {' | '.join(split.tail[-2:])}")
    s = json.loads(split_json.read_text())["round_split"]
    fig["round_split_median_s"] = {k: round(s[k], 2) for k in ("sample_s", "reward_s", "train_s", "total_s")}
    fig["round_split_share"] = {k: round(v, 3) for k, v in s["shares"].items()}
    fig["samples_per_s_per_round"] = round(plan["images_per_round"] / s["total_s"], 4) if s["total_s"] else None
    if len(entries) != RL_ROUNDS:
        raise CheckFailed(f"{len(entries)} rounds logged, {RL_ROUNDS} planned (train.max_steps from {plan})")


def check_rl_ddpo(fig: Figures) -> None:
    """`diffalign train configs/sd15/ddpo.yaml` (SD1.5, LoRA, DDPO with ddpo-pytorch's defaults) on the SD1.5
    architecture (random weights; a reward that needs downloaded weights on random-weight replicas), 512 px,
    50 DDIM steps, 2 rounds of 16 images: samples/s end to end (images sampled / wall seconds of the train
    process) beside ddpo-pytorch's ~0.22 samples/s per A100, and the round split (median sample / reward /
    train seconds of rounds.jsonl, by scripts/benchmark_rollouts.py --round-run); rounds.jsonl and the
    split's table go to $OUT/rl-ddpo/."""
    rl_run(fig, "rl-ddpo", DDPO_CONFIG, "DDPO", 300, {"anchor_ddpo_pytorch_samples_per_s_per_a100": DDPO_ANCHOR})


def per_image_against(base: dict, other: dict) -> dict:
    """Each round phase's median seconds per image of the run `other` over those of the run `base` (two rl-*
    checks' figures: their `round_split_median_s` and `plan.images_per_round`), keyed by phase; {} when
    either has no round split."""
    splits = [f.get("round_split_median_s") for f in (base, other)]
    sizes = [f.get("plan", {}).get("images_per_round") for f in (base, other)]
    if not all(splits) or not all(sizes):
        return {}
    ratios = {}
    for phase in ("sample_s", "reward_s", "train_s", "total_s"):
        per_image = [split[phase] / size for split, size in zip(splits, sizes)]
        ratios[phase] = round(per_image[1] / per_image[0], 4) if per_image[0] > 0 else None
    return ratios


def check_rl_dgpo(fig: Figures) -> None:
    """`diffalign train configs/sd15/dgpo.yaml` (SD1.5, LoRA r=64, DGPO as its official code: deterministic DDIM
    rollouts, PickScore, Diffusion-DPO's loss at 4 noised timesteps of each group's final latents against the
    frozen base, the clip's EMA reference) on the SD1.5 architecture (random weights, PickScore on a random-weight
    ViT-H/14 replica), 512 px, 50 DDIM steps as rl-ddpo (the preset samples 20), 2 rounds of one prompt's group of
    24 images (the preset's group size, not cut: the nearest whole group to rl-ddpo's 16 images; one optimizer
    step a round of 4 micro-steps on that group): samples/s end to end, peak memory, the round split, and, when
    rl-ddpo ran in the same call (its figures in GPUCHK_WORK), DGPO's median train seconds per image over DDPO's
    (`train_s_per_image_over_ddpo`; the other phases in `per_image_over_ddpo`): the paper's claim that training
    the final latents at a few timesteps costs far less than re-scoring every step, as a figure with no target.
    rounds.jsonl and the split's table go to $OUT/rl-dgpo/."""
    rl_run(fig, "rl-dgpo", DGPO_CONFIG, "DGPO", 240, {})
    ddpo_figures = WORK / "rl-ddpo.figures.json"
    ddpo = json.loads(ddpo_figures.read_text()) if ddpo_figures.is_file() else {}
    ratios = per_image_against(ddpo, fig.data)
    fig["per_image_over_ddpo"] = ratios or None
    fig["train_s_per_image_over_ddpo"] = ratios.get("train_s")
    if not ratios:
        fig["ddpo_comparison"] = ("no rl-ddpo round split in this call (run GPUCHK_ONLY=\"... rl-ddpo rl-dgpo\"): "
                                  + (ddpo.get("error") or ddpo.get("skipped") or f"no {ddpo_figures}"))


# ---------------------------------------------------------------------------------------------------
# performance: scripts/benchmark_vs_diffusers.py at full size, diffalign against the research scripts

RESEARCH = Path(os.environ.get("GPUCHK_RESEARCH", ROOT / "runs" / "research"))
# family: (research script, resolution, pairs, mixed precision, rows, short and long step counts); the long
# run is 30 (SD1.5) or 15 (SDXL) steps longer, ~10-15 s of steps, against a few seconds of loading noise
PERF_RUNS = {
    "sd15": ("train_diffusion_dpo.py", 512, 4, "fp16", "script,cache,prepass", (5, 35)),
    "sdxl": ("train_diffusion_dpo_sdxl.py", 1024, 1, "bf16", "script,prepass", (3, 18)),
}


def check_perf(fig: Figures) -> None:
    """SD1.5 (512 px, 4 pairs, fp16) and SDXL (1024 px, 1 pair, bf16) LoRA DPO steps: the research script
    against diffalign from the latent cache with (and for SD1.5 without) the reference pre-pass: ms/step,
    pairs/s, peak GPU memory and MFU per configuration (scripts/benchmark_vs_diffusers.py); its printed
    tables go to $OUT/perf-*.txt.
    Needs the research scripts in GPUCHK_RESEARCH (default runs/research, an ignored folder: carry it to the GPU
    machine)."""
    missing = [PERF_RUNS[f][0] for f in PERF_RUNS if not (RESEARCH / PERF_RUNS[f][0]).is_file()]
    if missing:
        raise Skip(f"no {missing} in {RESEARCH} (copy them from diffusers' examples/research_projects/diffusion_dpo)")
    out = Path(os.environ.get("OUT", WORK / "out"))
    out.mkdir(parents=True, exist_ok=True)
    for family, (script, full, pairs, mixed, rows, (short, long)) in PERF_RUNS.items():
        model = build_model(family)
        steps = ["--short", "2", "--long", "4"] if CPU else ["--short", str(short), "--long", str(long)]
        cmd = [sys.executable, str(ROOT / "scripts" / "benchmark_vs_diffusers.py"), "--script", str(RESEARCH / script),
               "--model", str(model), "--resolution", str(resolution(full)), "--pairs", str(pairs), "--repeats", "1",
               "--device", "cpu" if CPU else "cuda", "--mixed-precision", "no" if CPU else mixed, "--rows", rows,
               "--run-steps", "2000", *steps]
        result = must(run(cmd, 360 if family == "sdxl" else 240), f"benchmark {family}")
        table = [line for line in result.tail if "ms/step" in line or line.startswith(("latent cache", "model FLOPs"))]
        (out / f"perf-{family}.txt").write_text("\n".join(result.tail) + "\n")
        fig[family] = table


# ---------------------------------------------------------------------------------------------------
# environment, and every planned command line's config checked against the schema


def planned_configs() -> list[tuple[str, str | None, list[str]]]:
    """(label, config file, overrides) of every training run the checks start."""
    out, cache, m = WORK / "x", WORK / "cache", WORK / "models" / "m"
    tiny = {
        "fsdp-lora": ["train.mixed_precision=bf16", "model.frozen_dtype=bfloat16", "lora.dropout=0.1"],
        "fsdp-full": ["lora.enabled=false", "train.optimizer=adamw", "train.learning_rate=1e-5",
                      "train.mixed_precision=bf16", "model.frozen_dtype=bfloat16"],
        "fp16-resume": ["train.mixed_precision=fp16", "model.frozen_dtype=float16", "lora.dropout=0.1"],
        "adamw8bit-resume": ["lora.enabled=false", "train.optimizer=adamw8bit", "train.learning_rate=1e-5",
                             "train.mixed_precision=bf16", "model.frozen_dtype=bfloat16"],
    }
    plans = [(k, DEMO_CONFIG, tiny_overrides(out, v + [f"train.resume={out}"])) for k, v in tiny.items()]
    for label, extra in [
        ("sdxl no gc", ["train.gradient_checkpointing=false", "data.cache=off"]),
        ("sdxl gc+cache", ["train.gradient_checkpointing=true", "data.cache=require"]),
        ("sd15 offload", ["lora.enabled=false", "train.optimizer=adamw", "train.offload_reference=true", "data.cache=off"]),
        ("sd15 xformers", ["train.attention=xformers", "data.cache=off"]),
        ("sd15 channels-last", ["train.channels_last=true", "data.cache=off"]),
        ("sd15 compile+pre-pass", ["train.compile=blocks", "reference.precompute=on", "data.cache=off"]),
    ]:
        plans.append((label, None, bench_overrides(m, 512, 1, "bf16", "bfloat16", out, cache, extra)))
    for name, extra in AGAINST_DPO.items():
        extra = [e.replace("CAPTIONS", str(WORK / "captions")) for e in extra]
        overrides = [f"objective.name={name}", "objective.beta=2000", *extra, "data.cache=off"]
        plans.append((name, None, bench_overrides(m, 512, 2, "fp16", "float16", out, cache, overrides)))
    for label, config in (("rl-ddpo", DDPO_CONFIG), ("rl-dgpo", DGPO_CONFIG)):
        if (ROOT / config).is_file():  # the preset's own errors show here, as the run's
            try:
                plans.append((label, config, rl_plan(config, m, out)[0]))
            except Exception:
                plans.append((label, config, []))
    return plans


def check_env(fig: Figures) -> None:
    import importlib
    import platform

    fig["python"] = f"{platform.python_version()} {sys.executable}"
    versions = {}
    for name in ["torch", "torchvision", "diffusers", "transformers", "accelerate", "peft", "datasets", "pyarrow",
                 "fsspec", "huggingface_hub", "safetensors", "tokenizers", "timm", "open_clip", "ftfy", "xformers",
                 "bitsandbytes"]:
        try:
            module = importlib.import_module(name)
            where = "/tmp/site" if "/tmp/site/" in (getattr(module, "__file__", "") or "") else ""
            versions[name] = f"{getattr(module, '__version__', '?')} {where}".strip()
        except Exception as error:
            versions[name] = f"NOT IMPORTABLE: {type(error).__name__}: {str(error)[:160]}"
    fig["versions"] = versions
    import torch

    fig["cuda"] = {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        fig["cuda"].update(device=props.name, capability=f"{props.major}.{props.minor}",
                           memory_gib=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
    sys.path.insert(0, str(ROOT / "src"))
    import diffalign.training.loop  # noqa: F401  (diffusers, peft, accelerate, datasets)
    from diffalign.config.core import load_config
    from diffalign.config.schema import RunConfig

    for label, path, overrides in planned_configs():
        try:
            load_config(RunConfig, path, overrides)
        except Exception as error:
            raise CheckFailed(f"planned run '{label}' does not parse: {error}")
    fig["planned_configs_parse"] = len(planned_configs())
    core = ["torch", "diffusers", "transformers", "accelerate", "peft", "datasets"]
    broken = [n for n in core if versions[n].startswith("NOT")]
    if broken:
        raise CheckFailed(f"not importable: {broken}")
    if not CPU and not torch.cuda.is_available():
        raise CheckFailed("torch sees no GPU")


CHECKS = {
    "env": check_env,
    "fsdp-lora": check_fsdp_lora,
    "fsdp-full": check_fsdp_full,
    "fp16-resume": check_fp16_resume,
    "adamw8bit-resume": check_adamw8bit,
    "sdxl-memory": check_sdxl_memory,
    "offload-reference": check_offload_reference,
    "sd15-baseline": check_sd15_baseline,
    "xformers": check_xformers,
    "eval-demo": check_eval_demo,
    "generate": check_generate,
    "data-jobs": check_data_jobs,
    "sampling": check_sampling,
    "seppo": check_seppo,
    "inversion": check_inversion,
    "variants": check_variants,
    "perf": check_perf,
    "compile": check_compile,
    "channels-last": check_channels_last,
    "rollouts": check_rollouts,
    "rl-ddpo": check_rl_ddpo,
    "rl-dgpo": check_rl_dgpo,
}


# ---------------------------------------------------------------------------------------------------
# the result line


def cmd_record(args: argparse.Namespace) -> None:
    """Print the JSON line of one check: name, ok (true, false, or null when skipped), seconds, figures, error."""
    figures: dict = {}
    path = Path(args.figures) if args.figures else None
    if path is not None and path.is_file():
        try:
            figures = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            figures = {"unreadable_figures": str(error)}
    error = figures.pop("error", None)
    skipped = figures.pop("skipped", None) or args.skip_reason
    rc = args.rc
    record = {"name": args.name, "ok": True if rc == 0 else (None if rc == SKIPPED else False),
              "seconds": round(args.seconds, 1), "rc": rc, "figures": figures}
    if rc == SKIPPED:
        record["skipped"] = skipped
    elif rc != 0:
        tail = ""
        if args.log and Path(args.log).is_file():
            with open(args.log, "rb") as f:
                f.seek(args.log_offset)
                text = f.read().decode("utf-8", "replace")
            lines = [line.split("\r")[-1] for line in text.splitlines()]
            tail = "\n".join(line for line in lines if line.strip())[-2500:]
        reason = "timed out (limit %ss)" % args.limit if rc in (124, 137) else error
        record["error"] = (f"{reason}\n" if reason else "") + tail
    print(json.dumps(record), flush=True)


def cmd_summary(results: Path) -> None:
    """One line per check from gpu_checks.jsonl: verdict, time, the figures that matter."""
    for line in results.read_text().splitlines():
        r = json.loads(line)
        f = r.get("figures", {})
        bits = []
        final = f.get("final_weights_straight_vs_resumed")
        if final:
            bits.append(f"resume identical={final.get('identical')} max|diff|={final.get('max_abs_diff')} "
                        f"changed={f.get('tensors_changed_after_checkpoint')}")
        for key, value in f.items():
            if key.startswith("checkpoint_step_") and isinstance(value, dict):
                flags = {k: (v.get("identical") if isinstance(v, dict) else v) for k, v in value.items()
                         if k in ("weights", "optimizer", "lr_scheduler_equal", "scaler_equal", "position_equal",
                                  "optimizer_skeleton_equal")}
                bits.append(f"{key.replace('_straight_vs_resumed', '')}={flags}")
        prep = f.get("straight_run", {}).get("prepared")
        if prep:
            bits.append(f"{prep.get('distributed_type')} dtensors={prep.get('dtensor_params')} "
                        f"trainable={prep.get('trainable_numel_by_dtype')} frozen={prep.get('frozen_numel_by_dtype')}")
        if "final_weights_fsdp_vs_plain" in f:
            bits.append(f"fsdp-vs-plain max|diff|={f['final_weights_fsdp_vs_plain'].get('max_abs_diff')}")
        for key in [k for k in f if k.startswith("scaler_in_checkpoint")]:
            bits.append(f"{key}={f[key]}")
        for key in ("reference_on_gpu", "reference_offloaded", "no_gc", "gc", "gc_cache", "sdpa", "xformers_run"):
            if isinstance(f.get(key), dict):
                v = f[key]
                bits.append(f"{key}: {v.get('median_step_s')} s/step, peak {v.get('peak_memory_gib')} GiB")
        for key in ("peak_saved_gib", "step_time_ratio_offloaded", "loss_max_abs_diff", "cache_mib",
                    "xformers_over_sdpa_step_time", "optimizer_state_tensors_by_dtype", "ours_images_per_s",
                    "diffusers_images_per_s", "ratio", "max_level_diff", "samples_per_s_end_to_end",
                    "samples_per_s_per_round", "round_split_share", "train_s_per_image_over_ddpo"):
            if key in f:
                bits.append(f"{key}={f[key]}")
        if r["name"] == "env":
            v = f.get("versions", {})
            bits.append(f"{f.get('cuda', {}).get('device', 'no GPU')}; " + ", ".join(
                f"{k} {v.get(k, '?')[:40]}" for k in ("torch", "diffusers", "accelerate", "peft", "datasets", "xformers",
                                                      "bitsandbytes")))
        status = {True: "ok", False: "FAIL", None: "skip"}[r["ok"]]
        if r["ok"] is None:
            bits.append(f"skipped: {r.get('skipped')}")
        if r["ok"] is False:
            bits.append("error: " + " | ".join((r.get("error") or "").splitlines()[:1] + (r.get("error") or "").splitlines()[-3:])[:400])
        print(f"{status:4} {r['name']:17} {r['seconds']:6.1f}s  " + "; ".join(bits), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in CHECKS:
        sub.add_parser(name)
    p = sub.add_parser("build-models")
    p.add_argument("families", nargs="+", choices=["sd15", "sd21-v", "sdxl"])
    p = sub.add_parser("summary")
    p.add_argument("results")
    p = sub.add_parser("record")
    p.add_argument("--name", required=True)
    p.add_argument("--rc", type=int, required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--figures", default=None)
    p.add_argument("--log", default=None)
    p.add_argument("--log-offset", type=int, default=0)
    p.add_argument("--limit", default="?")
    p.add_argument("--skip-reason", default=None)
    args = parser.parse_args()
    if args.command == "record":
        cmd_record(args)
        return 0
    if args.command == "build-models":
        return cmd_build_models(args.families)
    if args.command == "summary":
        cmd_summary(Path(args.results))
        return 0
    signal.signal(signal.SIGTERM, _on_term)
    WORK.mkdir(parents=True, exist_ok=True)
    fig = Figures(args.command)
    try:
        CHECKS[args.command](fig)
    except Skip as reason:
        fig["skipped"] = str(reason)
        print(f"[gpu_checks] {args.command}: skipped: {reason}", flush=True)
        return SKIPPED
    except CheckFailed as error:
        fig["error"] = str(error)
        print(f"[gpu_checks] {args.command}: FAILED: {error}", flush=True)
        return 1
    except Exception as error:  # a bug in the check itself, or an unexpected failure: keep the traceback
        import traceback

        traceback.print_exc()
        fig["error"] = f"{type(error).__name__}: {error}"
        return 1
    print(f"[gpu_checks] {args.command}: passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
