#!/usr/bin/env python3
"""Side by side: `exsa bench` and llama.cpp's llama-bench on the same model
files, runs interleaved (exsa, llama.cpp, exsa, ... per file and round), the
read bandwidth measured at the start of every round, and one table:

  model | test | Exsa t/s | llama.cpp t/s | ratio | read GB/s | roofline t/s | Exsa % of roofline

per round. Roofline (token generation only) = read bandwidth / bytes a token
reads (`stream_bytes` of exsa bench: the weights, less token_embd when the
model has a separate output matrix).

  bench/compare.py --llama-bench /path/to/llama-bench [--threads 2] [--rounds 2]
      [--reps 3] [--pp 512] [--tg 128] MODEL.gguf [MODEL.gguf ...]

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
    for line in out.splitlines():
        d = json.loads(line)
        if d.get("test") == "read":
            return d["best_gbs"]
    return None


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
    a = ap.parse_args()
    common = ["-t", str(a.threads), "-p", str(a.pp), "-n", str(a.tg), "-r", str(a.reps)]
    rows = []
    for rnd in range(1, a.rounds + 1):
        bw = bandwidth(a.membw, a.threads)
        print("round %d: read bandwidth %.1f GB/s" % (rnd, bw), file=sys.stderr)
        for m in a.models:
            ex = run_json([a.exsa, "bench", "-m", m, "--json"] + common)
            ll = []
            if a.llama_bench:
                ll = run_json([a.llama_bench, "-m", m, "-o", "json"] + common)
            for e in ex:
                test = e["test"]
                lt = next((x["avg_ts"] for x in ll
                           if x["n_prompt"] == e["n_prompt"] and x["n_gen"] == e["n_gen"]), None)
                roof = bw * 1e9 / e["stream_bytes"] if e["n_gen"] > 0 else None
                rows.append((rnd, os.path.basename(m), test, e["avg_ts"], lt, bw, roof))
                print("  %s %s: exsa %.2f llama.cpp %s" % (os.path.basename(m), test, e["avg_ts"],
                      "%.2f" % lt if lt else "-"), file=sys.stderr)
    print("| round | model | test | Exsa t/s | llama.cpp t/s | ratio | read GB/s "
          "| roofline t/s | Exsa % of roofline |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for rnd, m, test, et, lt, bw, roof in rows:
        print("| %d | %s | %s | %.2f | %s | %s | %.1f | %s | %s |" % (
            rnd, m, test, et, "%.2f" % lt if lt else "-", "%.2f" % (et / lt) if lt else "-", bw,
            "%.1f" % roof if roof else "-", "%.0f%%" % (100 * et / roof) if roof else "-"))


if __name__ == "__main__":
    main()
