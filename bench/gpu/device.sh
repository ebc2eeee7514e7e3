#!/bin/bash
# Runs on the GPU machine over a copy of the tree that carries .gpu/ (made
# by bench/gpu/bundle.sh): unpacks the binaries, recreates the absolute
# paths the test programs were built with, and runs the stages named:
#   info      nvidia-smi, exsa --version, the copy bandwidth (PyTorch)
#   kernels   test_cuda_ops, test_cuda_matmul (every kernel against the
#             scalar references)
#   model     test_cuda_model (formats vs the exact reference and the CPU,
#             batch invariance, partial offload, memory after unload)
#   suites    the model, engine and server suites with EXSA_DEVICE=cuda
#   sanitize  compute-sanitizer memcheck and racecheck on the GPU tests
#   bench     1.1B-shape files (F16, Q4_K_M, Q4_0, Q8_0): exsa bench and,
#             when .gpu/llama/bin has them, llama-bench and
#             llama-batched-bench on the same files, runs interleaved
# Logs go to $OUT/<stage>.log.  Usage: bench/gpu/device.sh info kernels ...
set -uo pipefail
ROOT=$(pwd)
OUT=${OUT:-/tmp/exsa-out}
mkdir -p "$OUT"
tar xJf .gpu/bundle.tar.xz -C .gpu || exit 1
[ -f .gpu/llama.tar.xz ] && tar xJf .gpu/llama.tar.xz -C .gpu
BUILD=$(cat .gpu/build_dir)
SRC=$(dirname "$BUILD")
if [ "$SRC" != "$ROOT" ] && [ ! -e "$SRC" ]; then
    mkdir -p "$(dirname "$SRC")" && ln -s "$ROOT" "$SRC"
fi
mkdir -p "$BUILD"
for f in .gpu/bin/*; do ln -sf "$ROOT/$f" "$BUILD/"; done
export LD_LIBRARY_PATH="$ROOT/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
EXSA="$BUILD/exsa"
MODELS=${MODELS:-/tmp/exsa-models}
mkdir -p "$MODELS"

run() { # name, command...: runs, logs, prints the verdict
    local name=$1
    shift
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-150}" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "[$name] rc=$rc $((SECONDS - t0))s"
    return $rc
}

stage_info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    "$EXSA" --version
    python3 - <<'PY' || true
import torch, time
n = 1 << 30
a = torch.empty(n, dtype=torch.uint8, device="cuda"); b = torch.empty_like(a)
for _ in range(3): b.copy_(a)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): b.copy_(a)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
print(f"device-to-device copy of 1 GiB: {2 * n / dt / 1e12:.2f} TB/s (bytes read + written)")
h = torch.empty(n // 4, dtype=torch.uint8, pin_memory=True); d = torch.empty_like(h, device="cuda")
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(5): d.copy_(h, non_blocking=True)
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 5
print(f"host-to-device copy of 256 MiB (pinned): {n / 4 / dt / 1e9:.1f} GB/s")
PY
}

stage_kernels() {
    run cuda_ops "$BUILD/test_cuda_ops"
    run cuda_matmul "$BUILD/test_cuda_matmul"
    grep -h -E "FAIL|ERROR" "$OUT/cuda_ops.log" "$OUT/cuda_matmul.log" | head -40
}

stage_model() {
    run cuda_model "$BUILD/test_cuda_model"
    grep -h -E "GPUERR|BATCHINV|OFFLOAD .*tokens|DEVMEM|FAIL|ERROR" "$OUT/cuda_model.log" | head -60
}

stage_suites() {
    for t in test_model test_gemma3 test_engine test_engine_api test_registry test_real_models; do
        EXSA_DEVICE=cuda run "cuda-$t" "$BUILD/$t"
        grep -h -E "FAILED|ERROR|LINE" "$OUT/cuda-$t.log" | head -12
    done
    for s in server_native server_concurrency server_malformed server_startup; do
        EXSA_DEVICE=cuda run "cuda-$s" bash "$SRC/tests/$s.sh" "$EXSA" "$SRC/../shared/fixtures" "$BUILD"
        grep -h -E "FAIL" "$OUT/cuda-$s.log" | head -12
    done
}

stage_sanitize() {
    local cs=compute-sanitizer
    command -v $cs >/dev/null || cs=/usr/local/cuda/bin/compute-sanitizer
    EXSA_TEST_QUICK=1 run memcheck-ops $cs --tool memcheck --error-exitcode 9 "$BUILD/test_cuda_ops"
    EXSA_TEST_QUICK=1 run racecheck-ops $cs --tool racecheck --error-exitcode 9 "$BUILD/test_cuda_ops"
    EXSA_TEST_QUICK=1 run memcheck-matmul $cs --tool memcheck --error-exitcode 9 "$BUILD/test_cuda_matmul"
    EXSA_TEST_QUICK=1 run racecheck-matmul $cs --tool racecheck --error-exitcode 9 "$BUILD/test_cuda_matmul"
    "$EXSA" gen-model "$MODELS/san.gguf" --embd 256 --layers 2 --type Q4_K_M >/dev/null 2>&1
    run memcheck-run $cs --tool memcheck --error-exitcode 9 --leak-check full \
        "$EXSA" run -m "$MODELS/san.gguf" --prompt-ids 1,2,3,4,5,6,7,8,9 -n 24 --device cuda
    tail -n 3 "$OUT"/memcheck-*.log "$OUT"/racecheck-*.log
}

# TinyLlama 1.1B's shape, random weights, llama.cpp's llama-spm vocabulary.
gen_1b() {
    [ -f "$MODELS/1b-F16.gguf" ] && return
    "$EXSA" gen-model "$MODELS/1b-F16.gguf" --embd 2048 --layers 22 --heads 32 --kv-heads 4 \
        --ff 5632 --vocab "$ROOT/.gpu/vocab-llama-spm.gguf" --untied --type F16 -t 16
    for t in Q4_K_M Q4_0 Q8_0; do
        "$EXSA" quantize "$MODELS/1b-F16.gguf" "$MODELS/1b-$t.gguf" "$t" -t 16 >/dev/null
    done
}

stage_bench() {
    gen_1b
    local LB="$ROOT/.gpu/llama/bin"
    for t in Q4_K_M Q4_0 Q8_0 F16; do
        local f="$MODELS/1b-$t.gguf"
        echo "== 1.1B $t"
        "$EXSA" bench -m "$f" -p 512 -n 128 -r 3 --device cuda
        if [ -x "$LB/llama-bench" ]; then
            LD_LIBRARY_PATH="$ROOT/.gpu/llama/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH" \
                "$LB/llama-bench" -m "$f" -ngl 99 -fa 1 -p 512 -n 128 -r 3
            "$EXSA" bench -m "$f" -p 512 -n 128 -r 3 --device cuda
        fi
    done
    echo "== batched, 1.1B Q4_K_M, 128 prompt + 128 generated per sequence"
    "$EXSA" bench -m "$MODELS/1b-Q4_K_M.gguf" --concurrency 1,8,32,64 --prompt 128 --gen 128 \
        --requests 1 --device cuda
    if [ -x "$LB/llama-batched-bench" ]; then
        LD_LIBRARY_PATH="$ROOT/.gpu/llama/lib:/usr/local/cuda/lib64:$LD_LIBRARY_PATH" \
            "$LB/llama-batched-bench" -m "$MODELS/1b-Q4_K_M.gguf" -ngl 99 -fa 1 -c 20000 \
            -npp 128 -ntg 128 -npl 1,8,32,64
    fi
}

for s in "$@"; do
    echo "#### $s (at ${SECONDS}s)"
    "stage_$s" 2>&1 | tee "$OUT/stage-$s.log"
done
