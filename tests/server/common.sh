# Shared set-up for tests/server_*.sh, sourced with the script's arguments:
#   bash tests/server_X.sh EXSA_BIN FIXTURES_DIR BUILD_DIR
# It makes tiny random models, starts `exsa serve` on a free loopback port,
# gives curl/JSON check helpers, and on exit always stops the server, checks
# that it left with status 0 and without a sanitizer report, and prints its
# log when anything failed. Scripts end with `finish`.

EXSA=${1:?usage: bash tests/server_X.sh EXSA_BIN [FIXTURES_DIR] [BUILD_DIR]}
FIXTURES=${2:-}
BUILD_DIR=${3:-$(dirname "$EXSA")}
SERVER_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Absolute paths: node scripts and servers may run from other directories.
case $EXSA in /*) ;; */*) EXSA="$PWD/$EXSA" ;; esac
mkdir -p "$BUILD_DIR" 2>/dev/null
BUILD_DIR=$(cd "$BUILD_DIR" && pwd) || exit 1
export EXSA FIXTURES BUILD_DIR SERVER_TESTS_DIR

# A sanitized server reports leaks when it exits; keep what the caller set
# (scripts/test.sh sets its own options) and otherwise ask for leak checks.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/exsa-server-test.XXXXXX") || exit 1
FAILS=0
SERVER_PID=""
SERVER_LOG=""
SERVER_N=0
PORT=""
BASE=""
# A sanitized binary runs several times slower: scale the waits.
SLOW=1
if nm "$EXSA" 2>/dev/null | grep -q '__asan_init'; then SLOW=4; fi
# The server is on loopback: curl never goes through a proxy from the
# environment (which npm in setup-node.sh may need, so it stays set); node's
# fetch and the openai package ignore proxy variables.
printf 'noproxy = "*"\n' >"$WORK/.curlrc"
export CURL_HOME="$WORK"

fail() {
    echo "FAIL: $*" >&2
    FAILS=$((FAILS + 1))
}

note() { echo "  $*"; }

skip() {
    echo "SKIP: $*"
    exit 77
}

# make_model NAME [gen-model flags...] -> $WORK/NAME.gguf (tiny by default)
make_model() {
    local name=$1
    shift
    local args=("$@")
    if [ ${#args[@]} -eq 0 ]; then
        args=(--embd 64 --layers 2 --heads 4 --kv-heads 2 --ff 128 --vocab 512)
    fi
    "$EXSA" gen-model "$WORK/$name.gguf" "${args[@]}" >"$WORK/gen-$name.log" 2>&1 || {
        cat "$WORK/gen-$name.log" >&2
        echo "FATAL: exsa gen-model $name failed" >&2
        exit 1
    }
}

# A port nobody listens on now, for the tests that must name one (most use
# --port 0). It is taken below the kernel's ephemeral range so that no
# client connection of this or another test holds it.
pick_port() {
    local p i lo=32768
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
    [ "$lo" -gt 12000 ] || lo=32768
    for i in $(seq 1 200); do
        p=$((10000 + (RANDOM * 32768 + RANDOM) % (lo - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

server_alive() { [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; }

# Sanitizer reports in a server log (ASan, LSan, UBSan).
log_has_sanitizer_report() {
    grep -qE 'ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:' "$1"
}

# wait_health [TIMEOUT_S] [WANT_STATUS]: polls GET /health until it answers
# WANT_STATUS (200). Returns 1 on timeout, 2 if the server died.
wait_health() {
    local limit=$((${1:-30} * SLOW)) want=${2:-200} code t0=$SECONDS
    while [ $((SECONDS - t0)) -lt "$limit" ]; do
        server_alive || return 2
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$BASE/health" 2>/dev/null)
        [ "$code" = "$want" ] && return 0
        sleep 0.1
    done
    return 1
}

# start_server [--no-wait] [--env K=V ...] [--fixed-port P] SERVE_ARGS...:
# starts `exsa serve` in the background with --host 127.0.0.1 --port 0 (any
# free port, read back from its "listening on http://HOST:PORT" log line, so
# parallel tests never race for a port); with --fixed-port the caller has the
# server listen on P some other way (e.g. through the environment). Waits for
# /health 200 (unless --no-wait). Sets SERVER_PID, SERVER_LOG, PORT, BASE.
start_server() {
    local wait=1 envs=() rc own_port=0 t0
    while [ $# -gt 0 ]; do
        case $1 in
            --no-wait) wait=0; shift ;;
            --env) envs+=("$2"); shift 2 ;;
            --fixed-port) own_port=1; PORT=$2; BASE="http://127.0.0.1:$PORT"; shift 2 ;;
            *) break ;;
        esac
    done
    if server_alive; then
        echo "FATAL: start_server while server $SERVER_PID still runs" >&2
        exit 1
    fi
    SERVER_N=$((SERVER_N + 1))
    SERVER_LOG="$WORK/server-$SERVER_N.log"
    local start_ns
    start_ns=$(date +%s%N)
    if [ $own_port = 1 ]; then
        env "${envs[@]}" "$EXSA" serve "$@" >"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
    else
        env "${envs[@]}" "$EXSA" serve --host 127.0.0.1 --port 0 "$@" >"$SERVER_LOG" 2>&1 &
        SERVER_PID=$!
        t0=$SECONDS
        PORT=""
        while [ -z "$PORT" ]; do
            PORT=$(sed -n 's|.*listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*|\1|p' "$SERVER_LOG" 2>/dev/null | head -n 1)
            [ -n "$PORT" ] && break
            if ! server_alive || [ $((SECONDS - t0)) -gt $((30 * SLOW)) ]; then
                echo "FATAL: exsa serve $* printed no 'listening on http://127.0.0.1:PORT' line; its log:" >&2
                cat "$SERVER_LOG" >&2
                exit 1
            fi
            sleep 0.05
        done
        BASE="http://127.0.0.1:$PORT"
    fi
    [ $wait = 0 ] && return 0
    wait_health 30
    rc=$?
    # Start to /health 200, for the record (polled every 0.1 s).
    SERVER_READY_MS=$((($(date +%s%N) - start_ns) / 1000000))
    [ $rc = 0 ] && return 0
    echo "FATAL: server (exsa serve $*) not ready on $BASE (rc $rc); its log:" >&2
    cat "$SERVER_LOG" >&2
    exit 1
}

# stop_server [EXPECT_RC [SIGNAL]]: SIGTERM (or SIGNAL; '-': the caller sent
# it already), wait (grace period + margin), check the exit status (0) and
# the log for sanitizer reports.
stop_server() {
    local want=${1:-0} sig=${2:-TERM} t0=$SECONDS rc
    [ -n "$SERVER_PID" ] || return 0
    [ "$sig" = - ] || kill -"$sig" "$SERVER_PID" 2>/dev/null
    while kill -0 "$SERVER_PID" 2>/dev/null && [ $((SECONDS - t0)) -lt $((20 * SLOW)) ]; do
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        fail "server $SERVER_PID did not exit within $((20 * SLOW)) s of SIG$sig; killing it"
        kill -KILL "$SERVER_PID" 2>/dev/null
    fi
    wait "$SERVER_PID" 2>/dev/null
    rc=$?
    SERVER_PID=""
    [ "$rc" = "$want" ] || fail "server exit status after SIG$sig: expected $want, got $rc (log $SERVER_LOG)"
    if log_has_sanitizer_report "$SERVER_LOG"; then
        fail "sanitizer report in the server log $SERVER_LOG"
    fi
    SERVER_STOPPED_LOGS+=("$SERVER_LOG")
    return 0
}
SERVER_STOPPED_LOGS=()

print_logs() {
    local l seen=" "
    for l in "${SERVER_STOPPED_LOGS[@]}" ${SERVER_LOG:+"$SERVER_LOG"}; do
        [ -f "$l" ] || continue
        [[ "$seen" == *" $l "* ]] && continue
        seen="$seen$l "
        echo "----- $l (last 200 lines) -----" >&2
        tail -n 200 "$l" >&2
    done
}

cleanup() {
    local rc=$?
    [ -n "${JVPROC_PID:-}" ] && kill "$JVPROC_PID" 2>/dev/null
    if server_alive; then
        kill -TERM "$SERVER_PID" 2>/dev/null
        local t0=$SECONDS
        while kill -0 "$SERVER_PID" 2>/dev/null && [ $((SECONDS - t0)) -lt 10 ]; do sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
        print_logs
        echo "(work dir kept: $WORK)" >&2
    elif [ -z "${KEEP_WORK:-}" ]; then
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# finish: stop the server, report, exit 0 / 1.
finish() {
    stop_server
    if [ "$FAILS" -gt 0 ]; then
        echo "$FAILS check(s) failed"
        exit 1
    fi
    echo "all checks passed"
    exit 0
}

# ---- HTTP helpers (curl) ----

# http METHOD PATH [BODY [CURL_ARGS...]]: BODY '' sends an empty body, '-'
# sends none, '@FILE' a file. Sets CODE (HTTP status or "curl-N"), the reply
# body in $WORK/body and the headers in $WORK/headers.
http() {
    local method=$1 path=$2 body=${3--}
    shift 2
    [ $# -gt 0 ] && shift
    local data=()
    [ "$body" != "-" ] && data=(--data-binary "$body")
    CODE=$(curl -sS --max-time $((60 * SLOW)) -o "$WORK/body" -D "$WORK/headers" \
        -w '%{http_code}' -X "$method" -H 'Content-Type: application/json' -H 'Expect:' \
        "${data[@]}" "$@" "$BASE$path" 2>"$WORK/curl.err") || CODE="curl-$?"
    LAST_REQ="$method $path${body:+ body=$(printf '%.200s' "$body")}"
}

# Header value of the last reply (case-insensitive name), without CR.
header() {
    grep -i "^$1:" "$WORK/headers" | tail -n 1 | cut -d: -f2- | sed 's/^ *//; s/\r$//'
}

body_excerpt() { head -c 400 "$WORK/body" 2>/dev/null; }

# jv EXPR [FILE]: evaluates the JavaScript expression EXPR with j = the JSON
# of FILE (the last reply body); prints strings raw, the rest as JSON,
# "<not json>" when the file does not parse, "<error: ...>" if EXPR throws.
# With JV_SSE=1, j is the list of an SSE body's "data:" payloads (each parsed
# as JSON where it parses, else the raw string such as "[DONE]").
# One node process answers every call (node takes ~0.1-0.3 s to start, and
# the scripts make hundreds of checks): requests and answers are one line
# each, base64-encoded.
JV_NODE='
const fs = require("fs");
const rl = require("readline").createInterface({ input: process.stdin });
const b64 = (s) => Buffer.from(s, "utf8").toString("base64");
rl.on("line", (line) => {
  const [sse, file, expr64] = line.split("\t");
  const expr = Buffer.from(expr64, "base64").toString("utf8");
  let out;
  try {
    const raw = fs.readFileSync(file, "utf8");
    let j, ok = true;
    if (sse === "1") {
      j = raw.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => {
        const d = l.slice(5).trim();
        try { return JSON.parse(d); } catch (e) { return d; }
      });
    } else {
      try { j = JSON.parse(raw); } catch (e) { ok = false; }
    }
    if (!ok) out = "<not json>";
    else {
      try {
        const r = (new Function("j", "return (" + expr + ");"))(j);
        out = typeof r === "string" ? r : String(JSON.stringify(r));
      } catch (e) { out = "<error: " + e.message + ">"; }
    }
  } catch (e) { out = "<cannot read " + file + ": " + e.message + ">"; }
  process.stdout.write(b64(out) + "\n");
});
'
jv_start() {
    coproc JVPROC { NODE_EXTRA_CA_CERTS= exec node -e "$JV_NODE"; }
}
jv() {
    local line req
    req=$(printf '%s\t%s\t%s' "${JV_SSE:-0}" "${2:-$WORK/body}" "$(printf '%s' "$1" | base64 -w0)")
    # The helper's pipes exist in this shell and its command substitutions,
    # not in pipelines: there (or without the helper) a node of its own.
    if [ -n "${JVPROC_PID:-}" ] && { printf '%s\n' "$req" >&"${JVPROC[1]}"; } 2>/dev/null; then
        IFS= read -r line <&"${JVPROC[0]}"
    else
        line=$(printf '%s\n' "$req" | NODE_EXTRA_CA_CERTS= node -e "$JV_NODE")
    fi
    printf '%s\n' "$line" | base64 -d
    echo
}

# expect_code WANT WHAT: the last reply had status WANT (a regex: 200, 40[01]).
expect_code() {
    if [[ ! "$CODE" =~ ^($1)$ ]]; then
        fail "$2: $LAST_REQ -> expected HTTP $1, got $CODE; body: $(body_excerpt)"
        return 1
    fi
    return 0
}

# expect_eq GOT WANT WHAT
expect_eq() {
    if [ "$1" != "$2" ]; then
        fail "$3: expected '$2', got '$1' (last request: $LAST_REQ)"
        return 1
    fi
    return 0
}

# expect_js EXPR WHAT [FILE]: EXPR (JavaScript over j = the last body, or
# FILE) is true.
expect_js() {
    local r f=${3:-$WORK/body}
    r=$(jv "$1" "$f")
    if [ "$r" != "true" ]; then
        fail "$2: expected ($1) to hold on the reply of $LAST_REQ; it gave $r; body: $(head -c 400 "$f")"
        return 1
    fi
    return 0
}

# expect_openai_error STATUS PARAM WHAT: status and OpenAI error shape
# {"error": {"message", "type", "param", "code"}}; PARAM '' skips the param check.
expect_openai_error() {
    expect_code "$1" "$3" || return 1
    expect_js 'typeof j.error === "object" && typeof j.error.message === "string" && j.error.message.length > 0 && "type" in j.error && "param" in j.error && "code" in j.error' \
        "$3 (OpenAI error shape)" || return 1
    if [ -n "$2" ]; then
        expect_js "j.error.param === \"$2\" || (typeof j.error.param === 'string' && j.error.param.startsWith(\"$2\"))" \
            "$3 (error.param names $2)"
    fi
}

# ---- node helpers ----

# Sets up node's openai package in $BUILD_DIR/node (see setup-node.sh).
NODE_DIR="$BUILD_DIR/node"
export NODE_DIR

command -v node >/dev/null 2>&1 && jv_start

# ---- the Python client tests (server_*_py.sh) ----

# use_real_model FILE_NAME -> MODEL_FILE (fetched by scripts/fetch-models.sh),
# or skip.
use_real_model() {
    local dir=${EXSA_MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exsa/models}
    MODEL_FILE_NAME=$1
    MODEL_FILE="$dir/$1"
    [ -f "$MODEL_FILE" ] || skip "$MODEL_FILE is absent (scripts/fetch-models.sh; or set EXSA_MODELS_DIR)"
}

# use_venv WHAT -> REPO, VENV and PY with the pinned packages of
# tests/requirements-server.txt (scripts/setup-venv.sh), or skip when the
# package index is out of reach (WHAT names the packages in that line).
use_venv() {
    REPO=$(cd "$SERVER_TESTS_DIR/../.." && pwd)
    VENV=${EXSA_VENV:-$REPO/build/venv}
    "$REPO/scripts/setup-venv.sh" "$VENV"
    case $? in
        0) ;;
        2) skip "$1 cannot be installed: the package index is out of reach" ;;
        *) echo "FATAL: scripts/setup-venv.sh $VENV failed" >&2; exit 1 ;;
    esac
    PY="$VENV/bin/python"
}

# The server is on loopback: keep the client off any proxy of the environment.
py_client() {
    env -u http_proxy -u https_proxy -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy \
        NO_PROXY='*' no_proxy='*' PYTHONDONTWRITEBYTECODE=1 "$@"
}
