#!/bin/bash
# Constrained against unconstrained decode speed: the same model and prompt,
# generation with a JSON Schema (a list of at least 40 records, so the
# answer is long) and without (--ignore-eos, the same token count), runs
# interleaved; prints generated t/s of each and their ratio.
#   bench/constrained.sh [EXSA] [MODEL] [RUNS]
set -euo pipefail
EXSA=${1:-build/exsa}
MODEL=${2:-${EXSA_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exsa/models}/SmolLM2-135M-Instruct.Q4_1.gguf}
RUNS=${3:-3}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cat >"$T/schema.json" <<'JSON'
{"type": "array", "minItems": 40, "maxItems": 40, "items": {"type": "object",
 "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9999},
  "name": {"type": "string", "maxLength": 16}, "active": {"type": "boolean"}},
 "required": ["id", "name", "active"], "additionalProperties": false}}
JSON
P="List forty users as JSON."
tps() { sed -n 's/.*generated: \([0-9]*\) tokens in [0-9.]* ms (\([0-9.]*\) t\/s).*/\1 \2/p'; }
c_sum=0 u_sum=0
for r in $(seq "$RUNS"); do
    read -r n c < <("$EXSA" run -m "$MODEL" -p "$P" -n 1500 --temp 0 -t "${THREADS:-2}" \
        --json-schema-file "$T/schema.json" 2>&1 | tps)
    read -r m u < <("$EXSA" run -m "$MODEL" -p "$P" -n "$n" --temp 0 --ignore-eos -t "${THREADS:-2}" 2>&1 | tps)
    echo "run $r: constrained $n tokens at $c t/s, unconstrained $m tokens at $u t/s"
    c_sum=$(echo "$c_sum + $c" | bc -l)
    u_sum=$(echo "$u_sum + $u" | bc -l)
done
echo "mean: constrained $(echo "$c_sum / $RUNS" | bc -l | cut -c1-7) t/s, unconstrained" \
    "$(echo "$u_sum / $RUNS" | bc -l | cut -c1-7) t/s, ratio $(echo "$c_sum / $u_sum" | bc -l | cut -c1-5)"
