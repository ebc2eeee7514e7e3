#!/usr/bin/env python3
"""Side by side: `exsa bench` and llama.cpp's llama-bench on the same model
files, runs interleaved one repetition of one test at a time (exsa pp,
llama.cpp pp, exsa tg, llama.cpp tg, then the next repetition), so both
engines of a pair run within seconds of each other, each t/s the mean of its
--reps runs; the
read bandwidth measured just before every file's runs (it swings by 30%
within minutes on a shared machine; bench/membw, the better of its plain and
its prefetching read), and one table:

  model | test | Exsa t/s | llama.cpp t/s | ratio | read GB/s | roofline t/s | Exsa % of roofline

per round. Roofline (token generation only) = read bandwidth / bytes a token
reads (`stream_bytes` of exsa bench: the weights, less token_embd when the
model has a separate output matrix).

  bench/compare.py --llama-bench /path/to/llama-bench [--threads 2] [--rounds 2]
      [--reps 3] [--pp 512] [--tg 128] [--batched 8,32 [--llama-batched-bench PATH]
      [--batched-pp 128] [--batched-tg 128] [--only-batched]] MODEL.gguf [MODEL.gguf ...]

--batched adds batched decode: B sequences of --batched-pp prompt tokens
each generating --batched-tg tokens, through Exsa's serving engine (`exsa
bench --concurrency B --requests 1`: "decode t/s" sums each sequence's tokens
after its first over the time they took) against llama-batched-bench's S_TG
(B * tg / time of the generation phase), plus both engines' end-to-end t/s
(generated tokens over the whole run for Exsa; S = all tokens over the whole
run for llama-batched-bench, which counts the prompt too).

Without --llama-bench only Exsa runs. Standard library only."""
import argparse
import json
import os
import subprocess
import sys


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def bandwidth(membw, threads):
    out = subprocess.run([membw, str(threads), "512", "3"], check=True, capture_output=True,
                         text=True).stdout
    best = None  # the better of the plain and the prefetching read
    for line in out.splitlines():
        d = json.loads(line)
        if d.get("test") in ("read", "read_prefetch"):
            best = max(best or 0.0, d["best_gbs"])
    return best


def cpu_model():
    """model name, family and model numbers (a hypervisor may hide the name)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k in ("model name", "cpu family", "model") and k not in info:
                    info[k] = v.strip()
    except OSError:
        pass
    return "%s (family %s, model %s)" % (info.get("model name", "unknown"),
                                        info.get("cpu family", "?"), info.get("model", "?"))


def run_jsonl(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return [json.loads(l) for l in out.splitlines() if l.startswith("{")]


def batched(a, m, rnd, brows):
    levels = [int(x) for x in a.batched.split(",")]
    ex = run_json([a.exsa, "bench", "-m", m, "--json", "-t", str(a.threads), "--concurrency",
                   a.batched, "--prompt", str(a.batched_pp), "--gen", str(a.batched_tg),
                   "--requests", "1"])
    ll = []
    if a.llama_batched_bench:
        ctx = max(levels) * (a.batched_pp + a.batched_tg) + 64
        ll = run_jsonl([a.llama_batched_bench, "-m", m, "-t", str(a.threads), "-c", str(ctx),
                        "-b", "2048", "-ub", "512", "-npp", str(a.batched_pp), "-ntg",
                        str(a.batched_tg), "-npl", a.batched, "--output-format", "jsonl"])
    for e in ex:
        b = e["concurrency"]
        l = next((x for x in ll if x["pl"] == b), None)
        brows.append((rnd, os.path.basename(m), b, e["decode_tps"], l["speed_tg"] if l else None,
                      e["gen_tps"], l["speed"] if l else None))
        print("  %s batched %d: exsa decode %.1f llama.cpp S_TG %s" % (
            os.path.basename(m), b, e["decode_tps"], "%.1f" % l["speed_tg"] if l else "-"),
            file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--exsa", default="build/exsa")
    ap.add_argument("--membw", default="build/membw")
    ap.add_argument("--llama-bench", default=os.environ.get("LLAMA_BENCH"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--batched", default=None)
    ap.add_argument("--llama-batched-bench", default=os.environ.get("LLAMA_BATCHED_BENCH"))
    ap.add_argument("--batched-pp", type=int, default=128)
    ap.add_argument("--batched-tg", type=int, default=128)
    ap.add_argument("--only-batched", action="store_true")
    a = ap.parse_args()
    rows, brows = [], []
    for rnd in range(1, a.rounds + 1):
        for m in a.models:
            bw = bandwidth(a.membw, a.threads)
            print("round %d, %s: read bandwidth %.1f GB/s" % (rnd, os.path.basename(m), bw),
                  file=sys.stderr)
            if a.batched:
                batched(a, m, rnd, brows)
            if a.only_batched:
                continue
            tests = [(pp, tg) for pp, tg in ((a.pp, 0), (0, a.tg)) if pp or tg]
            got = {}  # test -> ([exsa t/s], [llama.cpp t/s], stream_bytes, n_gen)
            for _ in range(a.reps):
                for pp, tg in tests:
                    args = ["-t", str(a.threads), "-p", str(pp), "-n", str(tg), "-r", "1"]
                    e = run_json([a.exsa, "bench", "-m", m, "--json"] + args)[0]
                    g = got.setdefault(e["test"], ([], [], e.get("stream_bytes"), e["n_gen"]))
                    g[0].append(e["avg_ts"])
                    if a.llama_bench:
                        ll = run_json([a.llama_bench, "-m", m, "-o", "json"] + args)
                        g[1].extend(x["avg_ts"] for x in ll
                                    if x["n_prompt"] == pp and x["n_gen"] == tg)
            for test, (es, ls, sb, n_gen) in got.items():
                et = sum(es) / len(es)
                lt = sum(ls) / len(ls) if ls else None
                roof = bw * 1e9 / sb if n_gen > 0 and sb else None
                rows.append((rnd, os.path.basename(m), test, et, lt, bw, roof))
                print("  %s %s: exsa %s llama.cpp %s" % (
                    os.path.basename(m), test, " ".join("%.2f" % x for x in es),
                    " ".join("%.2f" % x for x in ls) if ls else "-"), file=sys.stderr)
    print("CPU: %s, %d threads" % (cpu_model(), a.threads))
    print()
    if brows:
        print("| round | model | sequences | Exsa decode t/s | llama.cpp S_TG t/s | ratio "
              "| Exsa end-to-end gen t/s | llama.cpp S t/s |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for rnd, m, b, ed, ld, ee, le in brows:
            print("| %d | %s | %d | %.1f | %s | %s | %.1f | %s |" % (
                rnd, m, b, ed, "%.1f" % ld if ld else "-", "%.2f" % (ed / ld) if ld else "-", ee,
                "%.1f" % le if le else "-"))
        print()
    if a.only_batched:
        return
    print("| round | model | test | Exsa t/s | llama.cpp t/s | ratio | read GB/s "
          "| roofline t/s | Exsa % of roofline |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for rnd, m, test, et, lt, bw, roof in rows:
        print("| %d | %s | %s | %.2f | %s | %s | %.1f | %s | %s |" % (
            rnd, m, test, et, "%.2f" % lt if lt else "-", "%.2f" % (et / lt) if lt else "-", bw,
            "%.1f" % roof if roof else "-", "%.0f%%" % (100 * et / roof) if roof else "-"))


if __name__ == "__main__":
    main()
