// Concurrency test for tests/server_concurrency.sh:
//  1. 32 distinct greedy streaming requests (chat and completions mixed)
//     run one at a time: the reference outputs.
//  2. The same 32 all at once: each output must equal its reference (the
//     engine's batching is bit-exact whatever the batch holds), with the
//     right finish_reason and usage; the streams must really overlap.
//  3. 8 clients that abort after their first 2 chunks of a long generation,
//     while the 32 run again (their outputs must still be the same):
//     afterwards /v1/status shows nothing running or queued, the KV blocks
//     in use (not counting the prefix cache's) are back to the idle value,
//     and the generated-token counter shows the aborted requests stopped
//     early (cancelled, not run to max_tokens).
//  4. A final request still gives its reference output.
//   node concurrency.mjs BASE_URL MODEL [SLOW]   (BASE_URL without /v1)
const BASE = process.argv[2];
const MODEL = process.argv[3] || 'tiny';
const SLOW = parseFloat(process.argv[4] || '1');
const N = 32;
const MAX_TOKENS = 32;
const N_ABORT = 8;
const ABORT_MAX_TOKENS = 900;

let failures = 0;
function fail(msg) {
    failures++;
    console.error(`FAIL: ${msg}`);
}
const show = (v) => { const s = JSON.stringify(v); return s && s.length > 400 ? s.slice(0, 400) + '...' : s; };

function requestFor(i) {
    const prompt = `Request ${i}: ${'abcdefghijklmnopqrstuvwxyz'.slice(i % 13, (i % 13) + 8)} number ${i * 7919}`;
    if (i % 2 === 0)
        return { path: '/v1/chat/completions', kind: 'chat', body: { model: MODEL, messages: [{ role: 'user', content: prompt }], max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } } };
    return { path: '/v1/completions', kind: 'completion', body: { model: MODEL, prompt, max_tokens: MAX_TOKENS, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } } };
}

// Streams one request; returns {text, finish, usage, chunks, tFirst, tLast}.
// abortAfter: abort the connection after that many data chunks.
async function stream(req, abortAfter = 0) {
    const ac = new AbortController();
    const res = await fetch(BASE + req.path, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(req.body), signal: ac.signal,
    });
    if (res.status !== 200) throw new Error(`${req.path}: HTTP ${res.status}: ${await res.text()}`);
    const out = { text: '', finish: null, usage: null, chunks: 0, done: false, tFirst: 0, tLast: 0 };
    const dec = new TextDecoder();
    let buf = '';
    const reader = res.body.getReader();
    try {
        for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += dec.decode(value, { stream: true });
            let nl;
            while ((nl = buf.indexOf('\n')) >= 0) {
                const line = buf.slice(0, nl).replace(/\r$/, '');
                buf = buf.slice(nl + 1);
                if (!line.startsWith('data:')) continue;
                const d = line.slice(5).trim();
                if (d === '[DONE]') { out.done = true; continue; }
                const j = JSON.parse(d);
                out.chunks++;
                const now = performance.now();
                if (!out.tFirst) out.tFirst = now;
                out.tLast = now;
                if (j.usage) out.usage = j.usage;
                for (const c of j.choices || []) {
                    out.text += req.kind === 'chat' ? (c.delta && c.delta.content) || '' : c.text || '';
                    if (c.finish_reason) out.finish = c.finish_reason;
                }
                if (abortAfter && out.chunks >= abortAfter) {
                    ac.abort();
                    return out;
                }
            }
        }
    } catch (e) {
        if (!(abortAfter && e.name === 'AbortError')) throw e;
    }
    return out;
}

async function getJson(path) {
    const res = await fetch(BASE + path);
    if (res.status !== 200) throw new Error(`GET ${path}: HTTP ${res.status}`);
    return res.json();
}

// The numbers this test needs from /v1/status.
function statusNums(s) {
    const kv = s.kv || s.kv_cache || {};
    const num = (...vals) => vals.find((v) => typeof v === 'number');
    return {
        running: num(s.running, s.running_sequences),
        peak: num(s.batch_seqs_peak),
        queue: num(s.queue, s.queue_length, s.queued),
        used: num(kv.blocks_used, kv.used, s.kv_blocks_used),
        cached: num(kv.blocks_cached, kv.cached, s.kv_blocks_cached),
        free: num(kv.blocks_free, kv.free, s.kv_blocks_free),
    };
}

// Tokens generated so far: the engine's count in /v1/status (every token
// sampled, also for requests cancelled later) and the /metrics counter.
async function generatedTokens() {
    const s = await getJson('/v1/status');
    const res = await fetch(BASE + '/metrics');
    const t = await res.text();
    let sum = 0;
    for (const l of t.split('\n')) if (/^exsa_generated_tokens_total(\{| )/.test(l)) sum += parseFloat(l.split(' ').pop());
    return { engine: typeof s.generated_tokens === 'number' ? s.generated_tokens : NaN, metrics: sum };
}

async function waitIdle(what) {
    const t0 = Date.now();
    let st;
    for (;;) {
        st = statusNums(await getJson('/v1/status'));
        if (st.running === 0 && st.queue === 0) return st;
        if (Date.now() - t0 > 15000 * SLOW) {
            fail(`${what}: /v1/status still shows running ${st.running}, queue ${st.queue} after ${15 * SLOW} s`);
            return st;
        }
        await new Promise((r) => setTimeout(r, 50));
    }
}

async function main() {
    const reqs = Array.from({ length: N }, (_, i) => requestFor(i));

    const s0 = await getJson('/v1/status');
    const n0 = statusNums(s0);
    for (const k of ['running', 'queue', 'used', 'cached', 'free'])
        if (typeof n0[k] !== 'number') fail(`/v1/status: no number for ${k} in ${show(s0)}`);

    // 1. One at a time.
    const ref = [];
    for (const r of reqs) ref.push(await stream(r));
    for (const [i, r] of ref.entries()) {
        if (r.finish !== 'length') fail(`alone #${i}: finish_reason ${show(r.finish)}, expected "length"`);
        if (!r.usage || r.usage.completion_tokens !== MAX_TOKENS) fail(`alone #${i}: usage ${show(r.usage)}, expected completion_tokens ${MAX_TOKENS}`);
        if (!r.done) fail(`alone #${i}: stream did not end with data: [DONE]`);
    }
    const distinct = new Set(ref.map((r) => r.text)).size;
    console.log(`  ${N} requests alone: ${distinct} distinct outputs`);
    const idle = await waitIdle('after the sequential requests');
    const idleUsed = idle.used - idle.cached;
    const alonePeak = idle.peak;
    console.log(`  idle: KV blocks used ${idle.used} (cached ${idle.cached}), free ${idle.free}`);

    // 2. All at once.
    let maxRunning = 0;
    let polling = true;
    const poller = (async () => {
        while (polling) {
            try { maxRunning = Math.max(maxRunning, statusNums(await getJson('/v1/status')).running || 0); } catch { /* ignore */ }
            await new Promise((r) => setTimeout(r, 5));
        }
    })();
    const t0 = performance.now();
    const together = await Promise.all(reqs.map((r) => stream(r).catch((e) => ({ error: String(e) }))));
    const wall = performance.now() - t0;
    polling = false;
    await poller;
    let same = 0;
    for (const [i, r] of together.entries()) {
        if (r.error) { fail(`together #${i}: ${r.error}`); continue; }
        if (r.text === ref[i].text) same++;
        else fail(`together #${i} (${reqs[i].kind}): output differs from the same request alone:\n    alone:    ${show(ref[i].text)}\n    together: ${show(r.text)}`);
        if (r.finish !== 'length') fail(`together #${i}: finish_reason ${show(r.finish)}`);
        if (!r.usage || r.usage.completion_tokens !== MAX_TOKENS || r.usage.prompt_tokens !== ref[i].usage.prompt_tokens)
            fail(`together #${i}: usage ${show(r.usage)}, alone it was ${show(ref[i].usage)}`);
        if (!r.done) fail(`together #${i}: stream did not end with data: [DONE]`);
    }
    // Overlap seen by the clients: streams whose first..last chunk spans
    // intersect the busiest moment.
    const spans = together.filter((r) => !r.error && r.tFirst).map((r) => [r.tFirst, r.tLast]);
    let maxOpen = 0;
    for (const [a] of spans) maxOpen = Math.max(maxOpen, spans.filter(([s, e]) => s <= a && a <= e).length);
    // The engine's own record: most sequences in one forward step. Polling
    // can miss a short overlap; this cannot.
    const peak = statusNums(await getJson('/v1/status')).peak;
    console.log(`  ${N} at once: ${same}/${N} equal to alone, ${wall.toFixed(0)} ms, most sequences in one step ${peak} (alone: ${alonePeak}), peak running ${maxRunning} (/v1/status polls), ${maxOpen} streams open at once (client side)`);
    if (typeof peak !== 'number') fail(`/v1/status has no batch_seqs_peak`);
    else if (alonePeak !== 1) fail(`one request at a time, the engine still batched ${alonePeak} sequences into one step`);
    else if (peak < 2) fail(`the ${N} concurrent requests never shared a forward step (batch_seqs_peak ${peak}, peak running ${maxRunning}, streams open at once ${maxOpen})`);
    await waitIdle('after the concurrent requests');

    // 3. Clients that go away mid-stream, while the 32 run again beside
    //    them: the others' outputs must not change.
    const g0 = await generatedTokens();
    const abortP = Promise.all(Array.from({ length: N_ABORT }, (_, i) => stream({
        path: '/v1/completions', kind: 'completion',
        body: { model: MODEL, prompt: `Long story ${i}:`, max_tokens: ABORT_MAX_TOKENS, temperature: 0.8, seed: i, ignore_eos: true, stream: true },
    }, 2).catch((e) => ({ error: String(e) }))));
    const again = await Promise.all(reqs.map((r) => stream(r).catch((e) => ({ error: String(e) }))));
    const aborted = await abortP;
    for (const [i, r] of again.entries()) {
        if (r.error) fail(`beside the disconnecting clients #${i}: ${r.error}`);
        else if (r.text !== ref[i].text) fail(`beside the disconnecting clients #${i}: output differs from alone:\n    alone: ${show(ref[i].text)}\n    now:   ${show(r.text)}`);
    }
    for (const [i, r] of aborted.entries()) {
        if (r.error) fail(`aborting client #${i}: ${r.error}`);
        else if (r.chunks < 2) fail(`aborting client #${i}: only ${r.chunks} chunks before the abort`);
    }
    const after = await waitIdle('after the clients that disconnected');
    const g1 = await generatedTokens();
    const usedNow = after.used - after.cached;
    const dEngine = g1.engine - g0.engine, dMetrics = g1.metrics - g0.metrics;
    console.log(`  after ${N_ABORT} disconnects: KV blocks used ${after.used} (cached ${after.cached}), free ${after.free}; generated tokens +${dEngine} (engine), +${dMetrics} (/metrics)`);
    if (!(dEngine > 0)) fail(`/v1/status generated_tokens did not grow over the aborted requests (${g0.engine} -> ${g1.engine})`);
    if (usedNow !== idleUsed) fail(`KV blocks in use (not cached) after the disconnects: ${usedNow}, idle value ${idleUsed} (status ${show(after)})`);
    if (after.used + after.free !== idle.used + idle.free) fail(`KV blocks used+free changed: ${after.used}+${after.free} vs idle ${idle.used}+${idle.free}`);
    // Cancelled early: far fewer than N_ABORT * ABORT_MAX_TOKENS tokens.
    // The 32 generate N * MAX_TOKENS of these; the aborted ones few.
    const budget = N * MAX_TOKENS + (N_ABORT * ABORT_MAX_TOKENS) / 2;
    if (dEngine > budget || dMetrics > budget)
        fail(`the disconnected requests were not cancelled: ${dEngine} tokens generated (max_tokens ${ABORT_MAX_TOKENS} x ${N_ABORT})`);

    // 4. A request after all that.
    const last = await stream(reqs[0]);
    if (last.text !== ref[0].text) fail(`final request: output ${show(last.text)} differs from before ${show(ref[0].text)}`);
}

try {
    await main();
} catch (e) {
    fail(`exception: ${e && e.stack}`);
}
console.log(`concurrency: ${failures} failed`);
process.exit(failures ? 1 : 0);
