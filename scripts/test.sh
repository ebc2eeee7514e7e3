#!/bin/sh
# Installs dependencies, builds, and runs the whole test suite twice: a
# Release build, then under AddressSanitizer + UndefinedBehaviorSanitizer.
# Tests that need ../shared/fixtures report "skipped" when it is absent.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
jobs="$(nproc)"
scripts/build.sh
ctest --test-dir build --output-on-failure -j "$jobs"
SANITIZE=1 scripts/build.sh
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-san --output-on-failure -j "$jobs"
