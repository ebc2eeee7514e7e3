#!/usr/bin/env python3
"""Thread counts under CPU contention: exsa (one or more binaries) and
llama.cpp's llama-bench, default threads and -t 1, on an idle machine and
beside a busy loop pinned to one core, all runs interleaved; prints one
table of medians (tokens/s).

  bench/contention.py [--exsa NAME=PATH ...] [--llama-bench PATH]
                      [--model PATH ...] [-p 128] [-n 64] [-r 3] [--rounds 3]
                      [--busy-cpu 1] [--states idle,busy] [--json OUT]

Each round runs every (state, model, tool, threads) cell once, in that
order of loops, so slow drift of the machine's load spreads over all
cells; a cell's figure is the median over rounds of that run's mean
(each run itself times -r repetitions after a warm-up). "default" is the
tool's default thread count for exsa (no -t) and -t <physical cores> for
llama-bench (its own default). The busy loop is
`taskset -c CPU sh -c 'while :; do :; done'`, started before and stopped
after each busy state's runs.
"""
import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time


def physical_cores():
    try:
        out = subprocess.run(["lscpu", "-p=CORE,SOCKET"], capture_output=True, text=True,
                             check=True).stdout
        cores = {l for l in out.splitlines() if l and not l.startswith("#")}
        return max(1, len(cores))
    except (OSError, subprocess.CalledProcessError):
        return os.cpu_count() or 1


def run_exsa(path, model, p, n, r, threads):
    cmd = [path, "bench", "-m", model, "-p", str(p), "-n", str(n), "-r", str(r), "--json"]
    if threads is not None:
        cmd += ["-t", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), out.stderr.strip()[-400:]))
    res = {}
    for row in json.loads(out.stdout):
        res[row["test"]] = row["avg_ts"]
        res["backend"] = row.get("backend", "")
    return res


def run_llama(path, model, p, n, r, threads):
    cmd = [path, "-m", model, "-p", str(p), "-n", str(n), "-r", str(r), "-t", str(threads),
           "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), out.stderr.strip()[-400:]))
    res = {}
    for row in json.loads(out.stdout):
        test = "pp%d" % row["n_prompt"] if row["n_prompt"] else "tg%d" % row["n_gen"]
        res[test] = row["avg_ts"]
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exsa", action="append", default=[],
                    help="NAME=PATH of an exsa binary (repeatable; default exsa=build/exsa)")
    ap.add_argument("--llama-bench", default="/tmp/llama.cpp/build/bin/llama-bench",
                    help="llama-bench binary ('' to skip)")
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-r", type=int, default=3, help="repetitions inside each run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--busy-cpu", type=int, default=1)
    ap.add_argument("--states", default="idle,busy")
    ap.add_argument("--json", help="write every run's figures here")
    a = ap.parse_args()

    exsas = [e.split("=", 1) if "=" in e else ["exsa", e] for e in a.exsa] or [["exsa", "build/exsa"]]
    models = a.model or ["/tmp/m110-q4_0.gguf",
                         os.path.expanduser("~/.cache/exsa/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    models = [m for m in models if os.path.exists(m)]
    if not models:
        sys.exit("contention: no model found (pass --model)")
    tools = [(name, "exsa", path) for name, path in exsas]
    if a.llama_bench and os.path.exists(a.llama_bench):
        tools.append(("llama.cpp", "llama", a.llama_bench))
    phys = physical_cores()
    states = [s for s in a.states.split(",") if s]
    tests = ["pp%d" % a.p, "tg%d" % a.n]
    runs = {}  # (state, model, tool, threads, test) -> [t/s per round]
    log = []

    busy = None

    def stop_busy():
        nonlocal busy
        if busy is not None:
            os.killpg(busy.pid, signal.SIGTERM)
            busy.wait()
            busy = None

    try:
        for rnd in range(a.rounds):
            for state in states:
                if state == "busy":
                    busy = subprocess.Popen(["taskset", "-c", str(a.busy_cpu), "sh", "-c",
                                             "while :; do :; done"], start_new_session=True)
                    time.sleep(0.5)
                for model in models:
                    for name, kind, path in tools:
                        for threads in ("default", "1"):
                            if kind == "exsa":
                                res = run_exsa(path, model, a.p, a.n, a.r,
                                               None if threads == "default" else 1)
                            else:
                                res = run_llama(path, model, a.p, a.n, a.r,
                                                phys if threads == "default" else 1)
                            for t in tests:
                                runs.setdefault((state, model, name, threads, t), []).append(
                                    res.get(t, float("nan")))
                            log.append({"round": rnd, "state": state, "model": model,
                                        "tool": name, "threads": threads, **res})
                            print("round %d %-4s %-40s %-10s -t %-7s %s" % (
                                rnd, state, os.path.basename(model), name, threads,
                                " ".join("%s %.1f" % (t, res.get(t, float("nan"))) for t in tests)),
                                file=sys.stderr, flush=True)
                stop_busy()
    finally:
        stop_busy()

    if a.json:
        with open(a.json, "w") as f:
            json.dump(log, f, indent=1)

    def med(k):
        v = runs.get(k)
        return "%.1f" % statistics.median(v) if v else "-"

    head = ["model", "tool", "-t"] + ["%s %s" % (t, s) for s in states for t in tests] + \
        ["%s default/-t 1" % s for s in states]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + " |")
    for model in models:
        for name, kind, _ in tools:
            for threads in ("default", "1"):
                tlabel = ("default (%d)" % phys if kind == "llama" else "default") \
                    if threads == "default" else "1"
                cells = [med((s, model, name, threads, t)) for s in states for t in tests]
                for s in states:  # tg of the default thread count over tg of -t 1
                    d, o = (runs.get((s, model, name, th, tests[1])) for th in ("default", "1"))
                    cells.append("%.2f" % (statistics.median(d) / statistics.median(o))
                                 if threads == "default" and d and o else "")
                print("| %s | %s | %s | %s |" % (os.path.basename(model), name, tlabel,
                                                 " | ".join(cells)))
    print("\nmedians of %d interleaved rounds, t/s; each run: -p %d -n %d -r %d; busy: one "
          "spinning loop on CPU %d; %d CPUs" % (a.rounds, a.p, a.n, a.r, a.busy_cpu,
                                                os.cpu_count() or 0))


if __name__ == "__main__":
    main()
