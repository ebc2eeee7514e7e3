#!/usr/bin/env python3
"""Speculative decoding, side by side: the same chat requests (greedy) to
several OpenAI-compatible servers, interleaved round by round, and the
decode speed each reports (timings.predicted_per_second, which both
exsa serve and llama-server give), with the guesses verified and kept
(timings.draft_n / draft_n_accepted). Then N concurrent story requests per
server: aggregate completion tokens per wall second.

  python3 bench/speculative.py [--rounds R] [--max-tokens N] [--concurrent N] \\
      LABEL=URL [LABEL=URL ...]

Tasks: copying ones (rewrite a paragraph fixing its spelling, rename a
variable in a function) where n-gram guesses win, and free story writing
where they fail. Standard library only."""
import argparse
import json
import statistics
import threading
import time
import urllib.request

PARAGRAPH = (
    "The comittee met on tuesday to dicuss the new budjet. Several members argued that the "
    "proposal was to expensive, while others beleived it was neccessary for the future of the "
    "town. After a long debate, the chairman sugested that they postpone the decision untill "
    "next month, so that everyone could review the numbers more carefuly. The meeting ended "
    "late in the evening, and most people went strait home. The local newspaper reported the "
    "discusion the following morning, noting that the budjet would affect schools, roads and "
    "the public libary.")

FUNCTION = '''def summarize(items):
    count = 0
    largest = None
    smallest = None
    for item in items:
        count += 1
        if largest is None or item > largest:
            largest = item
        if smallest is None or item < smallest:
            smallest = item
    if count == 0:
        return {"count": 0, "largest": None, "smallest": None, "mean": None}
    mean = sum(items) / count
    return {"count": count, "largest": largest, "smallest": smallest, "mean": mean}
'''

TASKS = [
    ("rewrite", "Rewrite the following paragraph with the spelling mistakes corrected. Output "
                "only the corrected paragraph.\n\n" + PARAGRAPH),
    ("code-edit", "Rename the variable `count` to `total` in this Python function. Output the "
                  "whole function and nothing else.\n\n```python\n" + FUNCTION + "```"),
    ("story", "Write a short story about a dragon who learns to cook."),
]


def post(url, body, timeout=600):
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def one(url, prompt, max_tokens, extra=None):
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "seed": 1}
    body.update(extra or {})
    j = post(url, body)
    t = j.get("timings", {})
    return {"tps": t.get("predicted_per_second", 0.0), "n": j["usage"]["completion_tokens"],
            "draft": t.get("draft_n", 0), "acc": t.get("draft_n_accepted", 0),
            "text": j["choices"][0]["message"]["content"]}


def concurrent(url, n, max_tokens):
    animals = ["dragon", "otter", "fox", "owl", "whale", "cat", "bear", "crow", "frog", "wolf"]
    out = [None] * n

    def run(i):
        out[i] = one(url, f"Write a short story about a {animals[i % len(animals)]} who finds "
                          f"a map (story {i}).", max_tokens)

    t0 = time.time()
    th = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.time() - t0
    return sum(o["n"] for o in out) / wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("servers", nargs="+")
    a = ap.parse_args()
    servers = [s.split("=", 1) for s in a.servers]
    res = {(lab, task): [] for lab, _ in servers for task, _ in TASKS}
    info = {}
    for lab, url in servers:  # warm-up: load pages, fill caches
        one(url, "Hello", 8)
    for rnd in range(a.rounds):
        for task, prompt in TASKS:
            order = servers if rnd % 2 == 0 else servers[::-1]
            for lab, url in order:
                r = one(url, prompt, a.max_tokens)
                res[(lab, task)].append(r["tps"])
                info[(lab, task)] = r
    print(f"decode tokens/s, batch 1, greedy, max_tokens {a.max_tokens}, "
          f"median of {a.rounds} interleaved rounds")
    print("| task | " + " | ".join(lab for lab, _ in servers) + " |")
    print("|---|" + "---|" * len(servers))
    for task, _ in TASKS:
        cells = []
        for lab, _ in servers:
            r = info[(lab, task)]
            m = statistics.median(res[(lab, task)])
            acc = f", {r['acc']}/{r['draft']} kept" if r["draft"] else ""
            cells.append(f"{m:.1f} ({r['n']} tok{acc})")
        print(f"| {task} | " + " | ".join(cells) + " |")
    if a.concurrent > 0:
        agg = {lab: [] for lab, _ in servers}
        for rnd in range(a.rounds):
            order = servers if rnd % 2 == 0 else servers[::-1]
            for lab, url in order:
                agg[lab].append(concurrent(url, a.concurrent, a.max_tokens))
        print(f"\n{a.concurrent} concurrent story requests: aggregate completion tokens/s "
              f"(median of {a.rounds})")
        print("| " + " | ".join(lab for lab, _ in servers) + " |")
        print("|" + "---|" * len(servers))
        print("| " + " | ".join(f"{statistics.median(agg[lab]):.1f}" for lab, _ in servers) + " |")


if __name__ == "__main__":
    main()
