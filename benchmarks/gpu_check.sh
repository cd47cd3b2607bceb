#!/usr/bin/env bash
# The GPU check: one script, under 8 minutes on one GPU, one table at the end.
#
#   1. the tests whose device matters on CUDA (MUDPT_TEST_DEVICE=cuda: tests/test_device.py),
#      then the whole suite (with --quick: only the device tests);
#   2. bench_core at ImageNet's 1,000 class names in fp32 / bf16 / fp16: training-step time,
#      speed-up over the naive towers and peak CUDA memory;
#   3. bench_memory: peak CUDA memory of one step of CoCoOp, MaPLe, MuDPT, PromptSRC and CLIP-LoRA
#      at 1,000 classes, with and without the text tower's memory saver;
#   3b. the feature-space fits (GDA, LP++, CLAP) at 1,000 classes x 16 shots on the GPU;
#   3c. the 2024 baselines' step time and peak memory against MaPLe (TCP, MMA, CoPrompt, DePT), fp16;
#   3d. MuDPT's step on the other CLIP families (EVA02, SigLIP, PE-Core, ViT-L/14) in bf16;
#   4. a two-process torchrun (DDP) training run when two GPUs are visible;
#   5. the world demo's wall time.
#
# Without a GPU it runs the CPU versions of what it can (quick sizes) and skips the CUDA parts,
# so that CI can check that it is not broken:
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --quick    # seconds-long sizes (CI, or a first look)
set -uo pipefail
cd "$(dirname "$0")/.."
QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
DEVICE=cpu
[[ "$GPUS" -gt 0 ]] && DEVICE=cuda
ROWS=()
FAILED=0

row() { ROWS+=("$1|$2|$3"); }
timed() {  # timed NAME LOGFILE COMMAND... -> seconds in $SECONDS_TAKEN, status in $STATUS
  local name=$1 log=$2; shift 2
  local start=$(date +%s)
  "$@" >"$log" 2>&1
  STATUS=$?
  SECONDS_TAKEN=$(( $(date +%s) - start ))
  if [[ $STATUS -ne 0 ]]; then FAILED=1; echo "[gpu_check] $name failed (exit $STATUS); last lines of $log:"; tail -5 "$log"; fi
}

echo "[gpu_check] device: $DEVICE ($GPUS GPU(s)); logs in $OUT"
"$PY" -c "import torch; print('[gpu_check] torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA')"

# 1. tests
DEVICE_QUICK=""
[[ $QUICK -eq 1 ]] && DEVICE_QUICK=1  # one method of each kind (the full suite covers the registry on the CPU)
timed "device tests" "$OUT/tests_device.log" env MUDPT_TEST_DEVICE=$DEVICE MUDPT_DEVICE_TESTS_QUICK=$DEVICE_QUICK "$PY" -m pytest -q -x -p no:cacheprovider tests/test_device.py
row "tests on $DEVICE (tests/test_device.py)" "$(tail -1 "$OUT/tests_device.log")" "$SECONDS_TAKEN s"
if [[ $QUICK -eq 0 ]]; then
  timed "test suite" "$OUT/tests_all.log" env MUDPT_TEST_DEVICE=$DEVICE "$PY" -m pytest -q -n 8 -p no:cacheprovider
  row "whole test suite" "$(tail -1 "$OUT/tests_all.log")" "$SECONDS_TAKEN s"
fi

# 2. bench_core per precision
if [[ $DEVICE == cuda && $QUICK -eq 0 ]]; then CORE_ARGS=(--device cuda --classes 1000 --repeats 5 --eval-batch 100 --eval-batches 5)
elif [[ $DEVICE == cuda ]]; then CORE_ARGS=(--device cuda --classes 1000 --repeats 2 --eval-batch 32 --eval-batches 2)
else CORE_ARGS=(--backbone test-vit-tiny --repeats 1 --eval-batch 4 --eval-batches 1); fi
for precision in fp32 bf16 fp16; do
  timed "bench_core $precision" "$OUT/bench_core_$precision.log" "$PY" benchmarks/bench_core.py "${CORE_ARGS[@]}" --precision $precision
  step=$(grep -o "mudpt [0-9.]* s wall" "$OUT/bench_core_$precision.log" | head -1 | awk '{print $2}')
  speedup=$(grep -o "[0-9.]*x faster" "$OUT/bench_core_$precision.log" | head -1)
  peak=$(grep -o "peak CUDA memory (allocated): [0-9]* MiB" "$OUT/bench_core_$precision.log" | awk '{print $5}')
  ratio=$(grep -o "mudpt / image tower = [0-9.]*" "$OUT/bench_core_$precision.log" | awk '{print $6}')
  row "bench_core $precision (${CORE_ARGS[*]:0:4})" "step ${step:-?} s, ${speedup:-?} vs naive, eval/image tower ${ratio:-?}, peak ${peak:--} MiB" "$SECONDS_TAKEN s"
done

# 3. memory per method at 1,000 classes
if [[ $DEVICE == cuda ]]; then
  MEM_ARGS=(--device cuda --precision fp16 --limit-gb 0)
  [[ $QUICK -eq 1 ]] && MEM_ARGS+=(--classes 200)
  timed "bench_memory" "$OUT/bench_memory.log" "$PY" benchmarks/bench_memory.py "${MEM_ARGS[@]}"
  while read -r method saver status rss before secs cuda; do
    row "memory $method (saver $saver)" "$status, CUDA peak $cuda MiB, step $secs s" ""
  done < <(grep -E "^(cocoop|maple|mudpt|promptsrc|clip_lora) " "$OUT/bench_memory.log")
else
  timed "bench_memory (CPU, quick)" "$OUT/bench_memory.log" "$PY" benchmarks/bench_memory.py --methods cocoop --classes 20 --chunk 10 --limit-gb 0 --backbone test-vit-tiny
  row "bench_memory on CPU (test-vit-tiny, 20 classes)" "$(grep -cE '^cocoop .* ok ' "$OUT/bench_memory.log") of 2 configurations ran" "$SECONDS_TAKEN s"
fi

# 3b. feature-space fits at ImageNet's size (minutes on a CPU: GPU only)
if [[ $DEVICE == cuda ]]; then
  timed "bench_feature_space fits" "$OUT/bench_fits.log" "$PY" benchmarks/bench_feature_space.py --only-fit --device cuda
  while read -r method secs unit rest; do
    row "fit $method, 1,000 classes x 16 shots" "$secs $unit" ""
  done < <(grep -E "^   (gda|lpp|clap) " "$OUT/bench_fits.log")
else
  row "feature-space fits at 1,000 classes" "skipped (no GPU; docs/RESULTS.md has the CPU times)" ""
fi

# 3c. the 2024 baselines against MaPLe (GPU only: minutes on a CPU, docs/METHODS.md has those)
if [[ $DEVICE == cuda ]]; then
  timed "bench_baselines_2024" "$OUT/bench_2024.log" "$PY" benchmarks/bench_baselines_2024.py --device cuda --precision fp16 --repeats 5
  while read -r method secs ratio rss adds cuda rest; do
    row "step $method (ViT-B/16, 100 classes, batch 4, fp16)" "$secs s, $ratio MaPLe's, peak $cuda MiB" ""
  done < <(grep -E "^(maple|tcp|mma|coprompt|dept_maple|coop|dept_coop) " "$OUT/bench_2024.log")
else
  row "2024 baselines' step cost" "skipped (no GPU; docs/METHODS.md has the CPU times)" ""
fi

# 3d. the CLIP families (GPU only: minutes each on a CPU, docs/METHODS.md has those)
if [[ $DEVICE == cuda ]]; then
  for backbone in EVA02-B-16 ViT-B-16-SigLIP PE-Core-B-16 ViT-L-14; do
    timed "bench_core $backbone" "$OUT/bench_family_$backbone.log" "$PY" benchmarks/bench_core.py --device cuda \
      --precision bf16 --classes 1000 --repeats 3 --backbone "$backbone"
    step=$(grep -E "^training step" "$OUT/bench_family_$backbone.log" | sed -E 's/.*mudpt ([0-9.]+) s wall.*-> ([0-9.]+)x faster.*/\1 s, \2x over naive/')
    memory=$(grep -E "peak CUDA memory" "$OUT/bench_family_$backbone.log" | grep -oE "[0-9]+ MiB")
    row "MuDPT step on $backbone (1,000 classes, batch 4, bf16)" "${step:-failed}, peak ${memory:-?}" ""
  done
else
  row "CLIP families' step" "skipped (no GPU; docs/METHODS.md has the CPU times)" ""
fi

# 4. two-process DDP
if [[ "$GPUS" -ge 2 ]]; then
  timed "torchrun 2 GPUs" "$OUT/torchrun.log" "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m mudpt train \
    --method mudpt --shots 4 --epochs 2 --output "$OUT/ddp_run" --overwrite --quiet
  row "torchrun, 2 processes on 2 GPUs (world, mudpt)" "$(grep -o '"accuracy": [0-9.]*' "$OUT/torchrun.log" | head -1)" "$SECONDS_TAKEN s"
else
  row "torchrun, 2 GPUs" "skipped ($GPUS GPU(s) visible)" ""
fi

# 5. the world demo
DEMO_ARGS=(--out "$OUT/demo" --no-progress --no-plot)
[[ $QUICK -eq 1 ]] && DEMO_ARGS+=(--quick)
timed "demo" "$OUT/demo.log" "$PY" -m mudpt demo "${DEMO_ARGS[@]}"
row "mudpt demo (${DEMO_ARGS[*]:2})" "$(grep -E '^mudpt ' "$OUT/demo.log" | head -1 | tr -s ' ' | sed 's/^/base new HM trainable: /')" "$SECONDS_TAKEN s"

echo
echo "| check | result | wall |"
echo "|---|---|---|"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<<"$r"; echo "| $a | $b | $c |"; done
exit $FAILED
