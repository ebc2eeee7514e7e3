#!/usr/bin/env python3
"""Concurrent load on an HTTP completion server (llama-server's /completion or
an OpenAI-style /v1/completions), the client side of bench/RESULTS.md's
serving comparisons. C client threads each send R requests in turn with a
prompt of P random token ids and G generated tokens (ignore_eos), and the
script prints aggregate generated tokens/s, time to completion percentiles
and the number of failed requests (HTTP errors or fewer tokens than asked).

  bench/serve_load.py --url http://127.0.0.1:8080 --clients 8 --requests 4 \
      --prompt 256 --gen 128 --vocab 32000 [--api llama|openai]
Standard library only."""
import argparse
import http.client
import json
import random
import threading
import time
import urllib.parse


def one_request(url, api, prompt, gen, seed):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    if api == "llama":
        path, body = "/completion", {"prompt": prompt, "n_predict": gen, "ignore_eos": True,
                                     "cache_prompt": False, "seed": seed}
    else:
        path, body = "/v1/completions", {"prompt": prompt, "max_tokens": gen,
                                         "ignore_eos": True, "seed": seed}
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    if resp.status != 200:
        return 0, "HTTP %d: %s" % (resp.status, data[:120])
    d = json.loads(data)
    n = d.get("tokens_predicted") if api == "llama" else d.get("usage", {}).get("completion_tokens")
    return int(n or 0), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--api", choices=["llama", "openai"], default="llama")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32000)
    a = ap.parse_args()
    results, lock = [], threading.Lock()

    def client(cid):
        rng = random.Random(1000 + cid)
        for r in range(a.requests):
            prompt = [rng.randrange(3, a.vocab) for _ in range(a.prompt)]
            t0 = time.time()
            try:
                n, err = one_request(a.url, a.api, prompt, a.gen, cid * 100 + r)
            except Exception as e:  # a dropped connection counts as a failure
                n, err = 0, repr(e)
            with lock:
                results.append((n, time.time() - t0, err))

    t0 = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    gen = sum(n for n, _, _ in results)
    failed = [e or "short" for n, _, e in results if e or n < a.gen]
    lat = sorted(d for _, d, _ in results)
    print(json.dumps({"clients": a.clients, "requests": len(results), "gen_tokens": gen,
                      "wall_s": round(wall, 3), "gen_tps": round(gen / wall, 2),
                      "latency_s_p50": round(lat[len(lat) // 2], 3),
                      "latency_s_max": round(lat[-1], 3), "failed": len(failed),
                      "first_failure": failed[0] if failed else None}))


if __name__ == "__main__":
    main()
