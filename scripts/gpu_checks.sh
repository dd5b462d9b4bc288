#!/usr/bin/env bash
# GPU checks of the training engine, for one short session on a GPU machine (one H100, no network).
#
#   bash scripts/gpu_checks.sh                                   # on the GPU machine, from the repo root
#   DIFFALIGN_GPU_CHECKS_CPU=1 GPUCHK_PYTHON=/tmp/tv/bin/python bash scripts/gpu_checks.sh   # CPU rehearsal
#
# What it checks, most valuable first (each its own time limit; a failure does not stop the others):
#   env                versions, the GPU, whether xformers/bitsandbytes import; every planned run's config parses
#   scorers            SLOT: scripts/benchmark_scorers.py, when that file exists (added by hand)
#   perf               scripts/benchmark_vs_diffusers.py on the SD1.5 (512 px, 4 pairs, fp16) and SDXL (1024 px,
#                      1 pair, bf16) architectures: diffusers' research scripts (from runs/research: carry that
#                      ignored folder) against diffalign from the latent cache, with the reference pre-pass
#                      (SD1.5 also without): ms/step, pairs/s, peak memory, MFU against the measured matmul
#                      peak; tables in $OUT/perf-sd15.txt, $OUT/perf-sdxl.txt (expected ~8-9 min on an H100)
#                      Issue 19: two device calls, GPUCHK_ONLY="env scorers" then GPUCHK_ONLY=perf with
#                      GPUCHK_TOTAL_BUDGET=590 (carry runs/research)
#   compile            SD1.5 LoRA, 512 px, 4 pairs, bf16: train.compile off / blocks / blocks with the reference
#                      pre-pass / unet: median step, each compiled run's extra seconds (compilation), step-1
#                      loss = ln 2 in each (~5-7 min on an H100 with a cold compile cache: an estimate; one device
#                      call of its own, GPUCHK_ONLY=compile GPUCHK_TOTAL_BUDGET=590)
#   fsdp-lora          accelerate launch --config_file configs/accelerate/fsdp.yaml (1 process) of diffalign train,
#                      LoRA, bf16 mixed precision, bf16 frozen weights: straight run with checkpoints vs a run
#                      resumed from its step-3 checkpoint; final weights and the step-6 checkpoints compared
#                      (exact equality expected: deterministic kernels); also max |diff| against the same run
#                      without FSDP
#   fsdp-full          the same for full fine-tuning (lora.enabled=false)
#   fp16-resume        fp16 mixed precision (GradScaler), one process: resume equality, scaler state in checkpoints
#   adamw8bit-resume   train.optimizer=adamw8bit (full fine-tuning, so 8-bit states exist): resume equality
#                      through get_state_dict/set_state_dict (skipped without bitsandbytes)
#   offload-reference  SD1.5 architecture (random weights), full fine-tuning, 512 px, 1 pair, bf16: step time and
#                      peak memory with the reference UNet on the GPU vs train.offload_reference=true
#   sdxl-memory        SDXL architecture (random weights), LoRA, 1024 px, 1 pair, bf16: step time and peak memory
#                      without / with gradient checkpointing / with checkpointing and the latent+text cache
#   sd15-baseline      SD1.5 LoRA, 512 px, 4 pairs, fp16 (docs/performance.md's row: 0.39 s/step, 11.1 GiB)
#   xformers           train.attention=xformers vs sdpa on that SD1.5 run (skipped without xformers)
#   channels-last      train.channels_last=true vs the default layout on that SD1.5 run: step time ratio, loss
#                      drift, step-1 loss ln 2
#   eval-demo          the embedded demo: a short `diffalign train`, then `diffalign eval` with float16 (the CUDA
#                      default) and float32, timed, and each rerun (images reused); reports copied to $OUT
#   generate           `diffalign generate` on the SD1.5 architecture, 512 px, float16: images/s at batch 16, a
#                      resuming rerun, batch 1 vs batch 16 pixels
#   data-jobs          `diffalign generate` and `score` on 1 process against one process per GPU (accelerate
#                      launch; scripts/benchmark_processes.py): SD1.5 architecture at 512 px, 20 steps, fp16,
#                      32 images per GPU, PickScore on a ViT-H/14 replica; images/s of each, the ratio, identical
#                      files. With one GPU, only the one-process figures. $OUT/data-jobs.json
#                      Issue 32: GPUCHK_ONLY="env data-jobs" GPUCHK_BUILD=sd15 (~3 min on one GPU: an estimate)
#   sampling           the sampling primitives on that model in float16: trajectory vs pipeline images at eta 0,
#                      a 20-step trajectory of 8 images, a re-scored step with gradient, DDIM inversion of 4 latents
#   seppo              SePPO on that model, 512 px, 2 pairs, fp16: step time with its reference samples (DDIM 10
#                      steps under autocast) vs a Diffusion-DPO step, finite losses
#   inversion          InPO and SmPO on that model the same way: step time with the inversion vs DPO, finite losses
#   variants           MaPO (no reference pass), Diffusion-KTO and DCPO (the demo pairs captioned by `diffalign
#                      captions --captioner shapes` first) the same way: step time vs DPO, finite losses
#   rollouts           scripts/benchmark_rollouts.py on the SD1.5 architecture (random weights), 512 px, 50 DDIM
#                      steps, eta 1, CFG 5, batch 8, fp16: a round's sampling with log-probabilities against
#                      StableDiffusionPipeline drawing the same images: images/s of each, the ratio (target >= 0.9),
#                      max pixel difference at eta 1 and eta 0; table in $OUT/rollouts.txt
#   rl-ddpo            `diffalign train configs/sd15/ddpo.yaml` (SD1.5 LoRA DDPO, ddpo-pytorch's defaults) on that
#                      model, 512 px, 50 steps, 2 rounds of 16 images, a downloaded reward on random-weight replicas:
#                      samples/s end to end beside ddpo-pytorch's ~0.22 samples/s per A100, and the rounds' median
#                      sample / reward / train split (benchmark_rollouts.py --round-run); skipped while the preset
#                      does not exist (GPUCHK_DDPO_CONFIG names another preset to rehearse it); $OUT/rl-ddpo/
#                      Issue 29: one device call, GPUCHK_ONLY="env rollouts rl-ddpo" GPUCHK_BUILD=sd15
#                      GPUCHK_TOTAL_BUDGET=590 (~5-7 min on an H100: an estimate, nothing measured yet)
#   rl-dgpo            `diffalign train configs/sd15/dgpo.yaml` (SD1.5 LoRA r=64 DGPO as its official code: DDIM eta 0
#                      rollouts, PickScore, 4 noised timesteps of the final latents a group) on that model, 512 px,
#                      50 steps as rl-ddpo, 2 rounds of one prompt's group of 24 images (the preset's group size),
#                      PickScore on a random-weight ViT-H/14 replica: samples/s end to end, peak memory, the round
#                      split, and when rl-ddpo ran in the same call DGPO's median train seconds per image over
#                      DDPO's (train_s_per_image_over_ddpo: a figure, no target; the paper claims far less training
#                      time than policy gradients); GPUCHK_DGPO_CONFIG names another preset; $OUT/rl-dgpo/
#                      Issue 30: one device call, GPUCHK_ONLY="env rollouts rl-ddpo rl-dgpo" GPUCHK_BUILD=sd15
#                      GPUCHK_TOTAL_BUDGET=590 (~7-9 min on an H100: an estimate, nothing measured yet; leave
#                      rollouts out if time is short: the ratio needs only rl-ddpo and rl-dgpo)
#
# GPUCHK_ONLY="env eval-demo ..." runs only the named checks (setup always runs; GPUCHK_BUILD="sd15" builds only
# that full-size model in the background); GPUCHK_OFFLOAD_REPEAT=1 makes
# offload-reference repeat its on-GPU run, to tell run-to-run nondeterminism from offloading numerics.
#
# Writes $OUT/gpu_checks.jsonl (one JSON object per check: name, ok [true/false/null=skipped], seconds,
# figures, error tail) and $OUT/gpu_checks.log (everything the checks printed); prints one line per check.
# The checks themselves are scripts/gpu_checks/checks.py; diffalign runs through scripts/gpu_checks/train_wrapper.py.
#
# Time: at most GPUCHK_TOTAL_BUDGET seconds (default 420, wheel install included); each check gets
# min(its budget below, what is left) and is skipped when less than 20 s is left. Expected on an H100: ~5-6 min.
# DIFFALIGN_GPU_CHECKS_CPU=1 rehearses the same command lines on the CPU with tiny sizes (no wheel install,
# budgets x8): what needs CUDA is reported as skipped or not applicable there.
set -u
cd "$(dirname "$0")/.." || exit 1

CPU_MODE=${DIFFALIGN_GPU_CHECKS_CPU:-0}
PY=${GPUCHK_PYTHON:-python3}
OUT=${OUT:-/tmp/gpu_checks_out}
export GPUCHK_WORK=${GPUCHK_WORK:-/tmp/gpu_checks_work}
LOG=$OUT/gpu_checks.log
RESULTS=$OUT/gpu_checks.jsonl
if [ "$CPU_MODE" = 1 ]; then FACTOR=8; TOTAL_BUDGET=${GPUCHK_TOTAL_BUDGET:-3000}; else FACTOR=1; TOTAL_BUDGET=${GPUCHK_TOTAL_BUDGET:-420}; fi

mkdir -p "$OUT"
rm -rf "$GPUCHK_WORK" && mkdir -p "$GPUCHK_WORK"
: >"$LOG"
: >"$RESULTS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TQDM_MININTERVAL=2  # fewer progress-bar repaints in the log

log() { echo "$*" | tee -a "$LOG"; }

# ---- set-up: the carried wheels (diffusers, datasets, open_clip, ...) into /tmp/site; diffalign from src/ ----
START=$(date +%s)  # the total budget counts from here
if [ "$CPU_MODE" = 1 ]; then
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    setup_rc=0
else
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
    setup_rc=$?
    export PYTHONPATH=/tmp/site:$PWD/src
    nvidia-smi >>"$LOG" 2>&1
fi
took=$(( $(date +%s) - START ))
"$PY" scripts/gpu_checks/checks.py record --name setup --rc "$setup_rc" --seconds "$took" --log "$LOG" >>"$RESULTS"
log "setup: wheel install rc=$setup_rc (${took}s); total budget ${TOTAL_BUDGET}s; log $LOG"

# run_check NAME BUDGET_SECONDS COMMAND... : the command under `timeout`, output into the log, one result line.
run_check() {
    local name=$1 budget=$(( $2 * FACTOR )) now left limit offset t1 t2 ms rc skip=""
    shift 2
    if [ -n "${GPUCHK_ONLY:-}" ] && [[ " $GPUCHK_ONLY " != *" $name "* ]]; then return; fi
    now=$(date +%s)
    left=$(( TOTAL_BUDGET - (now - START) ))
    limit=$(( budget < left - 5 ? budget : left - 5 ))
    offset=$(stat -c %s "$LOG")
    echo "===== $name: limit ${limit}s, $(date -u +%H:%M:%S) UTC, ${left}s of the total left" >>"$LOG"
    if [ "$limit" -lt 20 ]; then
        rc=3; skip="the total budget of ${TOTAL_BUDGET}s is spent"; t1=0; t2=0
    else
        t1=$(date +%s%N)
        GPUCHK_DEADLINE=$(( now + limit - 2 )) timeout -k 20 "$limit" "$@" >>"$LOG" 2>&1
        rc=$?
        t2=$(date +%s%N)
    fi
    ms=$(( (t2 - t1) / 1000000 ))
    "$PY" scripts/gpu_checks/checks.py record --name "$name" --rc "$rc" --seconds "$((ms / 1000)).$(printf %03d $((ms % 1000)))" \
        --figures "$GPUCHK_WORK/$name.figures.json" --log "$LOG" --log-offset "$offset" --limit "$limit" \
        ${skip:+--skip-reason "$skip"} >>"$RESULTS"
    local verdict=passed
    case $rc in 0) ;; 3) verdict="skipped" ;; 124|137) verdict="TIMED OUT (rc=$rc)" ;; *) verdict="FAILED (rc=$rc)" ;; esac
    log "----- $name: $verdict in $((ms / 1000))s"
}

CHECKS="$PY scripts/gpu_checks/checks.py"

run_check env 40 $CHECKS env

# ---- SLOT: scorer throughput benchmark, added by hand; keep it first after env (budget GPUCHK_SCORERS_BUDGET) ----
#      (GPUCHK_SKIP_SCORERS=1 leaves it out; the CPU rehearsal runs its tiny smoke size)
if [ -f scripts/benchmark_scorers.py ] && [ "${GPUCHK_SKIP_SCORERS:-0}" != 1 ]; then
    if [ "$CPU_MODE" = 1 ]; then
        run_check scorers 30 "$PY" scripts/benchmark_scorers.py --device cpu --size tiny --images 8 \
            --out "$OUT/scorers.jsonl"
    else
        run_check scorers "${GPUCHK_SCORERS_BUDGET:-90}" \
            "$PY" scripts/benchmark_scorers.py --device cuda --images 128 --out "$OUT/scorers.jsonl"
    fi
else
    log "----- scorers: skipped (no scripts/benchmark_scorers.py, or GPUCHK_SKIP_SCORERS=1)"
    "$PY" scripts/gpu_checks/checks.py record --name scorers --rc 3 --seconds 0 \
        --skip-reason "no scripts/benchmark_scorers.py, or GPUCHK_SKIP_SCORERS=1" >>"$RESULTS"
fi

# ---- the full-size random-weight models (SD1.5, SDXL) are built in the background while the tiny-model
#      checks run; the checks that time them wait for the build to end (nothing else on the GPU then) ----
timeout 300 "$PY" scripts/gpu_checks/checks.py build-models ${GPUCHK_BUILD:-sd15 sdxl} >"$GPUCHK_WORK/build.log" 2>&1 &
BUILD_PID=$!

run_check perf              600 $CHECKS perf

# ---- evaluation: the tiny demo first (while the full-size model builds), then generation at full size ----
run_check eval-demo         200 $CHECKS eval-demo
run_check generate          150 $CHECKS generate
run_check data-jobs         200 $CHECKS data-jobs  # issue 32; an estimate: nothing measured on a GPU yet
run_check sampling           90 $CHECKS sampling
run_check seppo             200 $CHECKS seppo
run_check inversion         250 $CHECKS inversion
run_check variants          200 $CHECKS variants

# ---- online rounds (issues 29, 30): sampling against the stock pipeline, short DDPO and DGPO runs end to end ----
run_check rollouts          150 $CHECKS rollouts
run_check rl-ddpo           360 $CHECKS rl-ddpo
run_check rl-dgpo           300 $CHECKS rl-dgpo  # an estimate: 240 s for the run, 60 for its split, nothing measured

# ---- the training engine on the GPU (budgets in seconds on an H100; the total budget caps them all) ----
run_check fsdp-lora          90 $CHECKS fsdp-lora
run_check fsdp-full          60 $CHECKS fsdp-full
run_check fp16-resume       120 $CHECKS fp16-resume
run_check adamw8bit-resume   50 $CHECKS adamw8bit-resume
run_check offload-reference "${GPUCHK_OFFLOAD_BUDGET:-100}" $CHECKS offload-reference
run_check sdxl-memory       150 $CHECKS sdxl-memory
run_check sd15-baseline      40 $CHECKS sd15-baseline
run_check xformers           60 $CHECKS xformers
run_check channels-last      60 $CHECKS channels-last
run_check compile           560 $CHECKS compile

kill "$BUILD_PID" 2>/dev/null  # still running only if every check that needed it was skipped
{ echo "===== background model build"; cat "$GPUCHK_WORK/build.log"; } >>"$LOG"
log "total $(( $(date +%s) - START ))s; results: $RESULTS"
"$PY" scripts/gpu_checks/checks.py summary "$RESULTS" | tee -a "$LOG"
exit 0
