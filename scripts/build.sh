#!/bin/sh
# Builds Exsa into build/ (Release), or build-san/ with SANITIZE=1.
set -eu
cd "$(dirname "$0")/.."
if [ "${SANITIZE:-0}" = 1 ]; then
    dir=build-san
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DEXSA_SANITIZE=ON >/dev/null
else
    dir=build
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$dir" -j "$(nproc)"
