#!/bin/bash
# Builds Exsa with the CUDA backend for the H100 (sm_90 only, to keep the
# build short) in build-gpu/ and packs what a GPU machine with the NVIDIA
# driver but none of Exsa's Debian libraries needs to run it into
# .gpu/bundle.tar.xz: bin/ (exsa and the test programs; ~8 MB each with
# their kernels, 9 MB for all of them once compressed) and lib/ (their
# shared libraries). The test programs name build-gpu/ and tests/data by
# absolute path: bench/gpu/device.sh recreates those paths there.
#   bench/gpu/bundle.sh            # then carry .gpu (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/../.."
B=build-gpu
cmake -S . -B "$B" -DCMAKE_BUILD_TYPE=Release -DEXSA_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real >/dev/null
nice make -C "$B" -j2 >/dev/null
S="$B/stage"
rm -rf "$S" .gpu && mkdir -p "$S/bin" "$S/lib" .gpu
cp "$B"/exsa "$B"/test_* "$S/bin/"
strip --strip-debug "$S"/bin/*
for f in "$S"/bin/*; do
    ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | grep -v -E '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so' |
    while read -r so; do cp -L "$so" "$S/lib/"; done
echo "$(cd "$B" && pwd)" >"$S/build_dir"
tar cJf .gpu/bundle.tar.xz -C "$S" bin lib build_dir
# The benchmark files take llama.cpp's llama-spm vocabulary so that
# llama.cpp loads the very same files (../shared/fixtures beside the checkout).
V=../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf
[ -f "$V" ] && cp "$V" .gpu/vocab-llama-spm.gguf
# LLAMA_CPP_BIN: a folder of llama.cpp's CUDA build (llama-bench,
# llama-batched-bench and their libraries) for side-by-side runs.
if [ -n "${LLAMA_CPP_BIN:-}" ]; then
    mkdir -p .gpu/llama/bin .gpu/llama/lib
    cp "$LLAMA_CPP_BIN"/llama-bench "$LLAMA_CPP_BIN"/llama-batched-bench .gpu/llama/bin/
    cp -L "$LLAMA_CPP_BIN"/*.so* .gpu/llama/lib/ 2>/dev/null || true
    tar cJf .gpu/llama.tar.xz -C .gpu llama && rm -rf .gpu/llama
fi
du -sh .gpu
