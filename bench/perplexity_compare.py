#!/usr/bin/env python3
"""Side by side: `exsa perplexity` and llama.cpp's llama-perplexity on the
same model files and text, runs interleaved (exsa, llama.cpp, then the next
round), one table per run:

  round | model | Exsa PPL | llama.cpp PPL | PPL rel. diff | Exsa t/s | llama.cpp t/s | ratio

t/s is prompt evaluation speed: tokens evaluated (n_chunks * ctx) over the
time the evaluation took (Exsa: eval_tps of --json; llama.cpp: the time
stamps of its log lines, from "calculating perplexity" to the final
estimate). Both use llama-perplexity's method (chunks of ctx
tokens, BOS at each chunk start, second half of each chunk scored).

  bench/perplexity_compare.py [--exsa build/exsa] --llama-perplexity PATH
      [--text /usr/share/common-licenses/GPL-3] [--ctx 512] [--batch N]
      [--threads 2] [--rounds 2] MODEL.gguf [MODEL.gguf ...]

The default text ships in every Debian system (base-files). Without
--llama-perplexity only Exsa runs. Standard library only."""
import argparse
import json
import os
import re
import subprocess
import sys


def run_exsa(a, model):
    cmd = [a.exsa, "perplexity", "-m", model, "-f", a.text, "-c", str(a.ctx), "-t",
           str(a.threads), "--json"]
    if a.batch:
        cmd += ["-b", str(a.batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    d = json.loads(out.strip().splitlines()[-1])
    return d["ppl"], d["ppl_error"], d["eval_tps"], d["n_chunks"]


def run_llama(a, model):
    cmd = [a.llama_perplexity, "-m", model, "-f", a.text, "-c", str(a.ctx), "-t",
           str(a.threads)]
    if a.batch:
        cmd += ["-b", str(a.batch)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    log = p.stdout + p.stderr
    # Its log lines carry a time stamp (minutes.seconds.ms.us): the
    # evaluation runs from the "calculating" line to the final estimate.
    m = re.search(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+) I Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)",
                  log)
    c = re.search(r"([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]+) I perplexity: calculating perplexity over "
                  r"([0-9]+) chunks, n_ctx=([0-9]+)", log)
    if p.returncode != 0 or not m or not c:
        sys.exit("llama-perplexity failed on %s:\n%s" % (model, log[-2000:]))

    def stamp(g):
        return (int(g.group(1)) * 60 + int(g.group(2)) + int(g.group(3)) / 1e3 +
                int(g.group(4)) / 1e6)

    n_chunks, n_ctx = int(c.group(5)), int(c.group(6))
    tps = n_chunks * n_ctx / (stamp(m) - stamp(c))
    return float(m.group(5)), float(m.group(6)), tps, n_chunks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exsa", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                   "exsa"))
    ap.add_argument("--llama-perplexity")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    print("text: %s, ctx %d, threads %d" % (a.text, a.ctx, a.threads))
    print("| round | model | chunks | Exsa PPL | llama.cpp PPL | PPL rel. diff | Exsa t/s "
          "| llama.cpp t/s | ratio |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in range(1, a.rounds + 1):
        for model in a.models:
            ep, ee, et, en = run_exsa(a, model)
            name = os.path.basename(model)
            if a.llama_perplexity:
                lp, le, lt, ln = run_llama(a, model)
                print("| %d | %s | %d/%s | %.4f ± %.4f | %.4f ± %.4f | %+.2f%% | %.1f | %.1f "
                      "| %.2f |" % (r, name, en, ln, ep, ee, lp, le, 100.0 * (ep - lp) / lp,
                                    et, lt, et / lt))
            else:
                print("| %d | %s | %d | %.4f ± %.4f | - | - | %.1f | - | - |" %
                      (r, name, en, ep, ee, et))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
