// Drives `exsa serve` with the official `openai` npm package, as an existing
// OpenAI client would. Run by tests/server_openai.sh:
//   node openai_client.mjs main  (env: BASE_URL MODEL N_EMBD NODE_DIR MESSAGES_FILE
//                                  TEMPLATE_PROMPT_FILE TEMPLATE_PROMPT_TOKENS)
//   node openai_client.mjs auth  (env: BASE_URL MODEL NODE_DIR API_KEY)
// The model is a random-weight tiny model: its text is arbitrary, so checks
// compare the server with itself across endpoints, modes and seeds, and
// check shapes, counts and invariants (never a fixed expected text).
// Prints every failed check; exits 1 if any failed.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.NODE_DIR, 'package.json'));
const OpenAI = require('openai');

const mode = process.argv[2] || 'main';
const BASE = process.env.BASE_URL; // .../v1, for the SDK
const ROOT = BASE.replace(/\/v1\/?$/, ''); // for raw fetches of full paths
const MODEL = process.env.MODEL;
let failures = 0;
let checks = 0;

function fail(what, detail) {
    failures++;
    console.error(`FAIL: ${what}${detail === undefined ? '' : ': ' + detail}`);
}
function check(cond, what, detail) {
    checks++;
    if (!cond) fail(what, typeof detail === 'function' ? detail() : detail);
    return !!cond;
}
function show(v) {
    const s = JSON.stringify(v);
    return s && s.length > 600 ? s.slice(0, 600) + '...' : s;
}
function eq(got, want, what) {
    return check(got === want, what, () => `expected ${show(want)}, got ${show(got)}`);
}
// Runs one named group of checks; an exception is one failure, not the end.
async function section(name, fn) {
    try {
        await fn();
    } catch (e) {
        fail(`${name}: unexpected exception`, `${e && e.constructor && e.constructor.name}: ${e && e.message}` +
            (e && e.error ? ' ' + show(e.error) : ''));
    }
}
// Expects fn to throw an openai APIError of class cls with status.
async function expectApiError(what, fn, cls, status, param) {
    try {
        const r = await fn();
        fail(what, `expected ${cls.name} ${status}, got a success: ${show(r)}`);
        return null;
    } catch (e) {
        if (!(e instanceof OpenAI.APIError)) {
            fail(what, `expected ${cls.name} ${status}, got ${e && e.constructor && e.constructor.name}: ${e && e.message}`);
            return null;
        }
        check(e instanceof cls, `${what}: error class`, () => `expected ${cls.name}, got ${e.constructor.name} (status ${e.status}, ${e.message})`);
        eq(e.status, status, `${what}: status`);
        // The SDK fills .error from the body's "error" object.
        const err = e.error;
        check(err && typeof err.message === 'string' && err.message.length > 0 && 'type' in err &&
            'param' in err && 'code' in err, `${what}: OpenAI error shape {message,type,param,code}`, () => show(err));
        if (param !== undefined)
            check(err && typeof err.param === 'string' && err.param.startsWith(param),
                `${what}: error.param names ${param}`, () => show(err));
        return e;
    }
}

// Reads a raw SSE reply: returns the list of "data:" payloads.
async function rawSse(pathname, body, headers = {}) {
    const res = await fetch(ROOT + pathname, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json', Authorization: 'Bearer x', ...headers },
        body: JSON.stringify(body),
    });
    const text = await res.text();
    const datas = text.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim());
    return { status: res.status, contentType: res.headers.get('content-type') || '', text, datas };
}

const client = new OpenAI({
    baseURL: BASE,
    apiKey: process.env.API_KEY || 'sk-no-key-required',
    maxRetries: 0,
    timeout: 120000,
});

const user = (content) => [{ role: 'user', content }];

async function mainTests() {
    const N_EMBD = parseInt(process.env.N_EMBD, 10);

    await section('models.list', async () => {
        const page = await client.models.list();
        const ids = page.data.map((m) => m.id);
        check(ids.includes(MODEL), 'models.list() contains the served model', () => `ids ${show(ids)}, want ${MODEL}`);
        const m = page.data.find((x) => x.id === MODEL);
        if (m) {
            eq(m.object, 'model', 'models.list(): object');
            eq(m.owned_by, 'exsa', 'models.list(): owned_by');
            check(Number.isInteger(m.created) && m.created > 1600000000, 'models.list(): created is a unix time', () => show(m));
        }
    });

    // Greedy, fixed length (ignore_eos is llama-server's body field): the
    // same request non-streamed and streamed must give the same text.
    const chatReq = { model: MODEL, messages: user('Hello there, how are you?'), max_tokens: 8, temperature: 0, ignore_eos: true };
    let greedy = null;
    await section('chat non-stream', async () => {
        const r = await client.chat.completions.create(chatReq);
        eq(r.object, 'chat.completion', 'chat: object');
        check(typeof r.id === 'string' && r.id.startsWith('chatcmpl-'), 'chat: id starts with chatcmpl-', () => show(r.id));
        check(Number.isInteger(r.created), 'chat: created is an integer', () => show(r.created));
        eq(r.model, MODEL, 'chat: model');
        eq(r.choices.length, 1, 'chat: one choice');
        const c = r.choices[0];
        eq(c.index, 0, 'chat: choices[0].index');
        eq(c.message.role, 'assistant', 'chat: message.role');
        check(typeof c.message.content === 'string', 'chat: message.content is a string', () => show(c.message));
        eq(c.finish_reason, 'length', 'chat: finish_reason with ignore_eos and max_tokens 8');
        eq(r.usage.completion_tokens, 8, 'chat: usage.completion_tokens = max_tokens (ignore_eos)');
        check(r.usage.prompt_tokens > 0, 'chat: usage.prompt_tokens > 0', () => show(r.usage));
        eq(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, 'chat: usage.total_tokens = prompt + completion');
        greedy = r;
    });

    await section('chat non-stream without ignore_eos', async () => {
        const r = await client.chat.completions.create({ model: MODEL, messages: user('Tell me a story'), max_tokens: 8 });
        const c = r.choices[0];
        check(['stop', 'length'].includes(c.finish_reason), 'chat: finish_reason stop|length', () => show(c.finish_reason));
        check(r.usage.completion_tokens >= 0 && r.usage.completion_tokens <= 8, 'chat: completion_tokens <= max_tokens', () => show(r.usage));
        if (c.finish_reason === 'length') eq(r.usage.completion_tokens, 8, 'chat: finish_reason length means max_tokens tokens');
    });

    await section('chat again is deterministic (greedy)', async () => {
        if (!greedy) return;
        const r = await client.chat.completions.create(chatReq);
        eq(r.choices[0].message.content, greedy.choices[0].message.content, 'chat: same greedy request twice gives the same text');
        eq(r.usage.prompt_tokens, greedy.usage.prompt_tokens, 'chat: same prompt, same prompt_tokens');
        check(r.id !== greedy.id, 'chat: each completion gets its own id', () => show([r.id, greedy.id]));
    });

    await section('chat stream with include_usage', async () => {
        const stream = await client.chat.completions.create({ ...chatReq, stream: true, stream_options: { include_usage: true } });
        const chunks = [];
        for await (const ch of stream) chunks.push(ch);
        check(chunks.length >= 2, 'chat stream: at least 2 chunks', () => show(chunks));
        if (chunks.length < 2) return;
        const ids = new Set(chunks.map((c) => c.id));
        eq(ids.size, 1, 'chat stream: every chunk has the same id');
        check(chunks[0].id.startsWith('chatcmpl-'), 'chat stream: id starts with chatcmpl-', () => chunks[0].id);
        check(chunks.every((c) => c.object === 'chat.completion.chunk'), 'chat stream: object chat.completion.chunk', () => show(chunks.map((c) => c.object)));
        check(chunks.every((c) => c.model === MODEL), 'chat stream: model in every chunk', () => show(chunks.map((c) => c.model)));
        const first = chunks[0];
        eq(first.choices[0] && first.choices[0].delta.role, 'assistant', 'chat stream: first delta has role assistant');
        const last = chunks[chunks.length - 1];
        check(Array.isArray(last.choices) && last.choices.length === 0, 'chat stream: usage chunk has empty choices', () => show(last));
        check(last.usage && last.usage.completion_tokens === 8, 'chat stream: usage chunk completion_tokens 8', () => show(last.usage));
        if (greedy && last.usage) {
            eq(last.usage.prompt_tokens, greedy.usage.prompt_tokens, 'chat stream: usage.prompt_tokens = non-stream');
            eq(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens, 'chat stream: usage.total_tokens');
        }
        const withChoices = chunks.filter((c) => c.choices.length > 0);
        const fin = withChoices[withChoices.length - 1];
        eq(fin.choices[0].finish_reason, 'length', 'chat stream: last chunk before usage has finish_reason');
        check(withChoices.slice(0, -1).every((c) => c.choices[0].finish_reason === null || c.choices[0].finish_reason === undefined),
            'chat stream: only the last choice chunk has a finish_reason', () => show(withChoices.map((c) => c.choices[0].finish_reason)));
        check(chunks.slice(0, -1).every((c) => !c.usage), 'chat stream: only the last chunk has usage', () => show(chunks.map((c) => c.usage)));
        const text = withChoices.map((c) => c.choices[0].delta.content || '').join('');
        if (greedy) eq(text, greedy.choices[0].message.content, 'chat stream: concatenated deltas = non-stream content');
    });

    await section('chat stream without include_usage', async () => {
        const stream = await client.chat.completions.create({ ...chatReq, stream: true });
        const chunks = [];
        for await (const ch of stream) chunks.push(ch);
        check(chunks.every((c) => !c.usage), 'chat stream without include_usage: no usage in chunks', () => show(chunks.filter((c) => c.usage)));
        check(chunks.length > 0 && chunks[chunks.length - 1].choices.length === 1 &&
            chunks[chunks.length - 1].choices[0].finish_reason === 'length', 'chat stream without include_usage: last chunk has finish_reason', () => show(chunks[chunks.length - 1]));
        const text = chunks.map((c) => (c.choices[0] && c.choices[0].delta.content) || '').join('');
        if (greedy) eq(text, greedy.choices[0].message.content, 'chat stream without include_usage: text = non-stream');
    });

    await section('chat stream raw SSE framing', async () => {
        const r = await rawSse('/v1/chat/completions', { ...chatReq, stream: true });
        eq(r.status, 200, 'raw chat stream: status');
        check(r.contentType.startsWith('text/event-stream'), 'raw chat stream: Content-Type text/event-stream', () => r.contentType);
        eq(r.datas[r.datas.length - 1], '[DONE]', 'raw chat stream: ends with data: [DONE]');
        check(r.datas.slice(0, -1).every((d) => { try { JSON.parse(d); return true; } catch { return false; } }),
            'raw chat stream: every other data line is JSON', () => r.text.slice(0, 600));
    });

    await section('max_completion_tokens', async () => {
        const r = await client.chat.completions.create({ ...chatReq, max_tokens: undefined, max_completion_tokens: 3 });
        eq(r.usage.completion_tokens, 3, 'chat: max_completion_tokens 3 with ignore_eos gives 3 tokens');
        eq(r.choices[0].finish_reason, 'length', 'chat: max_completion_tokens finish_reason length');
        if (greedy) check(greedy.choices[0].message.content.startsWith(r.choices[0].message.content),
            'chat: 3-token greedy text is a prefix of the 8-token one', () => show([r.choices[0].message.content, greedy.choices[0].message.content]));
    });

    // Messages go through the model's chat template: a conversation with a
    // system message, text parts and an assistant turn gives the same answer
    // as /v1/completions on the prompt that `exsa template` renders for it,
    // and prompt_tokens is `exsa tokenize --bos` of that prompt.
    await section('chat template', async () => {
        const fs = await import('node:fs');
        const messages = JSON.parse(fs.readFileSync(process.env.MESSAGES_FILE, 'utf8'));
        const rendered = fs.readFileSync(process.env.TEMPLATE_PROMPT_FILE, 'utf8');
        const nTok = parseInt(process.env.TEMPLATE_PROMPT_TOKENS, 10);
        const c = await client.chat.completions.create({ model: MODEL, messages, max_tokens: 8, temperature: 0, ignore_eos: true });
        const p = await client.completions.create({ model: MODEL, prompt: rendered, max_tokens: 8, temperature: 0, ignore_eos: true });
        eq(c.choices[0].message.content, p.choices[0].text, 'chat = completions on the `exsa template` rendering of the same messages');
        eq(c.usage.prompt_tokens, nTok, 'chat prompt_tokens = exsa tokenize --bos of the rendered prompt');
        eq(p.usage.prompt_tokens, nTok, 'completions prompt_tokens = exsa tokenize --bos of the same text');
    });

    const compReq = { model: MODEL, prompt: 'Once upon a time', max_tokens: 8, temperature: 0, ignore_eos: true };
    let comp = null;
    await section('completions (string prompt)', async () => {
        const r = await client.completions.create(compReq);
        eq(r.object, 'text_completion', 'completions: object');
        check(typeof r.id === 'string' && r.id.length > 0, 'completions: id', () => show(r.id));
        eq(r.model, MODEL, 'completions: model');
        eq(r.choices.length, 1, 'completions: one choice');
        eq(r.choices[0].index, 0, 'completions: index');
        check(typeof r.choices[0].text === 'string', 'completions: text is a string', () => show(r.choices[0]));
        eq(r.choices[0].finish_reason, 'length', 'completions: finish_reason');
        eq(r.usage.completion_tokens, 8, 'completions: completion_tokens');
        check(r.usage.prompt_tokens > 0, 'completions: prompt_tokens > 0', () => show(r.usage));
        eq(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens, 'completions: total_tokens');
        comp = r;
    });

    await section('completions vs native /v1/generate', async () => {
        if (!comp) return;
        const res = await fetch(ROOT + '/v1/generate', {
            method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ prompt: compReq.prompt, max_tokens: 8, temperature: 0, ignore_eos: true }),
        });
        const j = await res.json();
        eq(res.status, 200, '/v1/generate status');
        eq(j.text, comp.choices[0].text, 'completions text = /v1/generate text for the same prompt (greedy)');
    });

    await section('completions (token-id prompt)', async () => {
        if (!comp) return;
        const res = await fetch(ROOT + '/v1/tokenize', {
            method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ content: compReq.prompt, add_special: true }),
        });
        const tok = await res.json();
        check(Array.isArray(tok.tokens) && tok.tokens.length > 0, '/v1/tokenize gives tokens', () => show(tok));
        if (!Array.isArray(tok.tokens)) return;
        const ids = tok.tokens.map((t) => (typeof t === 'object' && t !== null ? t.id : t));
        const r = await client.completions.create({ ...compReq, prompt: ids });
        eq(r.choices[0].text, comp.choices[0].text, 'completions: token-id prompt (= tokenize of the string, with BOS) gives the string prompt\'s text');
        eq(r.usage.prompt_tokens, ids.length, 'completions: token-id prompt: prompt_tokens = number of ids');
        eq(comp.usage.prompt_tokens, ids.length, 'completions: string prompt: prompt_tokens = tokenize(prompt, add_special) length');
        // A long id list is still ONE prompt (not 100 prompts).
        const long = Array.from({ length: 100 }, (_, i) => ids[i % ids.length]);
        const rl = await client.completions.create({ ...compReq, prompt: long });
        eq(rl.choices.length, 1, 'completions: a 100-id prompt is one prompt');
        eq(rl.usage.prompt_tokens, 100, 'completions: a 100-id prompt: prompt_tokens = 100');
    });

    await section('completions (list of prompts)', async () => {
        if (!comp) return;
        const r = await client.completions.create({ ...compReq, prompt: ['Once upon a time', 'The weather today'] });
        eq(r.choices.length, 2, 'completions: two prompts give two choices');
        if (r.choices.length !== 2) return;
        const byIndex = [...r.choices].sort((a, b) => a.index - b.index);
        eq(byIndex.map((c) => c.index).join(','), '0,1', 'completions: choice indices 0,1');
        eq(byIndex[0].text, comp.choices[0].text, 'completions: first prompt of the list gives the single-prompt text');
        eq(r.usage.completion_tokens, 16, 'completions: completion_tokens summed over the prompts');
    });

    await section('completions stream', async () => {
        if (!comp) return;
        const stream = await client.completions.create({ ...compReq, stream: true, stream_options: { include_usage: true } });
        const chunks = [];
        for await (const ch of stream) chunks.push(ch);
        check(chunks.every((c) => c.object === 'text_completion'), 'completions stream: object text_completion', () => show(chunks.map((c) => c.object)));
        eq(new Set(chunks.map((c) => c.id)).size, 1, 'completions stream: one id');
        const withChoices = chunks.filter((c) => c.choices.length > 0);
        eq(withChoices.map((c) => c.choices[0].text).join(''), comp.choices[0].text, 'completions stream: concatenation = non-stream text');
        eq(withChoices.length && withChoices[withChoices.length - 1].choices[0].finish_reason, 'length', 'completions stream: finish_reason');
        const last = chunks[chunks.length - 1];
        check(last && last.choices.length === 0 && last.usage && last.usage.completion_tokens === 8,
            'completions stream: usage chunk with empty choices', () => show(last));
    });

    await section('n = 2', async () => {
        const r = await client.chat.completions.create({ model: MODEL, messages: user('Pick a word'), max_tokens: 8, temperature: 1, seed: 7, n: 2, ignore_eos: true });
        eq(r.choices.length, 2, 'chat n=2: two choices');
        if (r.choices.length !== 2) return;
        eq(r.choices.map((c) => c.index).sort().join(','), '0,1', 'chat n=2: indices 0 and 1');
        check(r.choices.every((c) => c.message.role === 'assistant' && typeof c.message.content === 'string' && c.finish_reason === 'length'),
            'chat n=2: both choices complete', () => show(r.choices));
        eq(r.usage.completion_tokens, 16, 'chat n=2: usage.completion_tokens counts both choices');
        const g = await client.chat.completions.create({ model: MODEL, messages: user('Pick a word'), max_tokens: 8, temperature: 0, n: 2, ignore_eos: true });
        eq(g.choices.length, 2, 'chat n=2 greedy: two choices');
        if (g.choices.length === 2) eq(g.choices[0].message.content, g.choices[1].message.content, 'chat n=2 greedy: both choices equal');
        const r2 = await client.chat.completions.create({ model: MODEL, messages: user('Pick a word'), max_tokens: 8, temperature: 1, seed: 7, n: 2, ignore_eos: true });
        const sortByIdx = (x) => [...x.choices].sort((a, b) => a.index - b.index).map((c) => c.message.content);
        eq(show(sortByIdx(r2)), show(sortByIdx(r)), 'chat n=2 with a seed is reproducible');
    });

    await section('chat logprobs', async () => {
        const r = await client.chat.completions.create({ ...chatReq, max_tokens: 4, logprobs: true, top_logprobs: 3 });
        const lp = r.choices[0].logprobs;
        check(lp && Array.isArray(lp.content), 'chat logprobs: choices[0].logprobs.content is an array', () => show(lp));
        if (!lp || !Array.isArray(lp.content)) return;
        eq(lp.content.length, 4, 'chat logprobs: one entry per generated token');
        let allOk = true;
        for (const [i, e] of lp.content.entries()) {
            const ok = typeof e.token === 'string' && typeof e.logprob === 'number' && e.logprob <= 0 &&
                (e.bytes === null || (Array.isArray(e.bytes) && e.bytes.every((b) => Number.isInteger(b) && b >= 0 && b < 256))) &&
                Array.isArray(e.top_logprobs) && e.top_logprobs.length === 3 &&
                e.top_logprobs.every((t) => typeof t.token === 'string' && typeof t.logprob === 'number' && t.logprob <= 0);
            if (!ok) { allOk = false; fail(`chat logprobs: entry ${i} shape {token, logprob<=0, bytes, top_logprobs[3]}`, show(e)); continue; }
            const tl = e.top_logprobs.map((t) => t.logprob);
            check(tl[0] >= tl[1] && tl[1] >= tl[2], `chat logprobs: entry ${i} top_logprobs most likely first`, () => show(tl));
            check(tl.reduce((s, x) => s + Math.exp(x), 0) <= 1.0001, `chat logprobs: entry ${i} top probabilities sum <= 1`, () => show(tl));
            // Greedy: the chosen token is the most likely one.
            check(Math.abs(e.logprob - tl[0]) < 1e-4 && e.token === e.top_logprobs[0].token,
                `chat logprobs: entry ${i} greedy token = top_logprobs[0]`, () => show(e));
        }
        if (allOk) {
            const content = r.choices[0].message.content;
            if (lp.content.every((e) => Array.isArray(e.bytes))) {
                const bytes = Buffer.from(lp.content.flatMap((e) => e.bytes));
                if (!content.includes('\ufffd'))
                    eq(bytes.toString('utf8'), content, 'chat logprobs: concatenated bytes = content');
            }
        }
        if (greedy) check(greedy.choices[0].message.content.startsWith(r.choices[0].message.content),
            'chat logprobs: asking for logprobs does not change the greedy text', () => show([r.choices[0].message.content, greedy.choices[0].message.content]));
        const plain = await client.chat.completions.create({ ...chatReq, max_tokens: 4 });
        check(!plain.choices[0].logprobs, 'chat: no logprobs unless asked', () => show(plain.choices[0].logprobs));
    });

    // bytes are the token's own bytes (OpenAI: so that characters split
    // over tokens can be put together), also for a token that is part of a
    // UTF-8 character: "\u00e9" is two byte tokens in this vocabulary, and the
    // first alone must report [0xc3], not the bytes of U+FFFD.
    await section('chat logprobs bytes of a partial character', async () => {
        const res = await fetch(ROOT + '/v1/tokenize', {
            method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ content: '\u00e9', add_special: false }),
        });
        const ids = (await res.json()).tokens;
        if (!Array.isArray(ids) || ids.length !== 2) { console.log(`  (\u00e9 is ${show(ids)} here; partial-character bytes check skipped)`); return; }
        const r = await client.chat.completions.create({ ...chatReq, max_tokens: 1, logprobs: true, logit_bias: { [ids[0]]: 100 } });
        const e = r.choices[0].logprobs && r.choices[0].logprobs.content && r.choices[0].logprobs.content[0];
        check(e && JSON.stringify(e.bytes) === '[195]', `chat logprobs: token ${ids[0]} (first byte of \u00e9) has bytes [195]`, () => show(e));
    });

    await section('chat logprobs streamed', async () => {
        const stream = await client.chat.completions.create({ ...chatReq, max_tokens: 4, logprobs: true, top_logprobs: 2, stream: true });
        const entries = [];
        for await (const ch of stream) {
            const c = ch.choices[0];
            if (c && c.logprobs && Array.isArray(c.logprobs.content)) entries.push(...c.logprobs.content);
        }
        eq(entries.length, 4, 'chat stream logprobs: 4 entries over the chunks');
        check(entries.every((e) => Array.isArray(e.top_logprobs) && e.top_logprobs.length === 2), 'chat stream logprobs: top_logprobs 2 each', () => show(entries));
    });

    await section('completions logprobs', async () => {
        const r = await client.completions.create({ ...compReq, max_tokens: 4, logprobs: 2 });
        const lp = r.choices[0].logprobs;
        check(lp && Array.isArray(lp.tokens) && Array.isArray(lp.token_logprobs) && Array.isArray(lp.top_logprobs),
            'completions logprobs: {tokens, token_logprobs, top_logprobs}', () => show(lp));
        if (!lp || !Array.isArray(lp.tokens)) return;
        eq(lp.tokens.length, 4, 'completions logprobs: 4 tokens');
        eq(lp.token_logprobs.length, 4, 'completions logprobs: 4 token_logprobs');
        eq(lp.top_logprobs && lp.top_logprobs.length, 4, 'completions logprobs: 4 top_logprobs');
        check(lp.token_logprobs.every((x) => typeof x === 'number' && x <= 0), 'completions logprobs: logprobs <= 0', () => show(lp.token_logprobs));
        check((lp.top_logprobs || []).every((o) => o && typeof o === 'object' && Object.keys(o).length >= 1 && Object.keys(o).length <= 2),
            'completions logprobs: top_logprobs objects of <= 2 tokens', () => show(lp.top_logprobs));
        if (Array.isArray(lp.text_offset)) eq(lp.text_offset.length, 4, 'completions logprobs: text_offset length');
    });

    await section('seed reproducibility', async () => {
        const req = { model: MODEL, messages: user('Write something random'), max_tokens: 16, temperature: 1, ignore_eos: true };
        const a = await client.chat.completions.create({ ...req, seed: 42 });
        const b = await client.chat.completions.create({ ...req, seed: 42 });
        eq(b.choices[0].message.content, a.choices[0].message.content, 'seed 42 twice at temperature 1: same text');
        const texts = new Set([a.choices[0].message.content]);
        for (const s of [1, 2, 3, 4]) texts.add((await client.chat.completions.create({ ...req, seed: s })).choices[0].message.content);
        check(texts.size >= 2, 'different seeds at temperature 1 give different texts', () => show([...texts]));
        const c = await client.completions.create({ model: MODEL, prompt: 'abc', max_tokens: 16, temperature: 1, seed: 99, ignore_eos: true });
        const d = await client.completions.create({ model: MODEL, prompt: 'abc', max_tokens: 16, temperature: 1, seed: 99, ignore_eos: true });
        eq(d.choices[0].text, c.choices[0].text, 'completions: seed 99 twice gives the same text');
    });

    await section('stop strings', async () => {
        const base = { model: MODEL, prompt: 'The quick brown fox jumps', max_tokens: 24, temperature: 0, ignore_eos: true };
        const full = (await client.completions.create(base)).choices[0].text;
        // A 2-character ASCII piece that first occurs after the start.
        let stop = null;
        for (let i = 1; i + 2 <= full.length; i++) {
            const s = full.slice(i, i + 2);
            if (/^[\x21-\x7e]{2}$/.test(s) && full.indexOf(s) === i) { stop = s; break; }
        }
        if (!stop) { console.log(`  (stop: no usable ASCII piece in ${show(full)}; skipped)`); return; }
        const want = full.slice(0, full.indexOf(stop));
        const r = await client.completions.create({ ...base, stop });
        eq(r.choices[0].text, want, `completions stop ${show(stop)}: text cut before the stop string`);
        eq(r.choices[0].finish_reason, 'stop', 'completions stop: finish_reason stop');
        check(r.usage.completion_tokens < 24, 'completions stop: fewer tokens than max_tokens', () => show(r.usage));
        const r2 = await client.completions.create({ ...base, stop: ['\u00a7never1', stop, '\u00a7never2', 'zzzzzzzzzz'] });
        eq(r2.choices[0].text, want, 'completions stop list of 4: cut at the matching one');
        const s = await client.completions.create({ ...base, stop: [stop], stream: true });
        let st = '', fr = null;
        for await (const ch of s) for (const c of ch.choices) { st += c.text || ''; if (c.finish_reason) fr = c.finish_reason; }
        eq(st, want, 'completions stop streamed: the stop string and what follows are never sent');
        eq(fr, 'stop', 'completions stop streamed: finish_reason stop');
        // Chat takes stop too.
        const cfull = (await client.chat.completions.create({ ...chatReq, max_tokens: 24 })).choices[0].message.content;
        let cstop = null;
        for (let i = 1; i + 2 <= cfull.length; i++) {
            const x = cfull.slice(i, i + 2);
            if (/^[\x21-\x7e]{2}$/.test(x) && cfull.indexOf(x) === i) { cstop = x; break; }
        }
        if (cstop) {
            const cr = await client.chat.completions.create({ ...chatReq, max_tokens: 24, stop: cstop });
            eq(cr.choices[0].message.content, cfull.slice(0, cfull.indexOf(cstop)), `chat stop ${show(cstop)}: content cut before it`);
            eq(cr.choices[0].finish_reason, 'stop', 'chat stop: finish_reason stop');
        }
    });

    const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
    await section('embeddings (encoding_format float)', async () => {
        const r = await client.embeddings.create({ model: MODEL, input: 'hello world', encoding_format: 'float' });
        eq(r.object, 'list', 'embeddings: object list');
        eq(r.data.length, 1, 'embeddings: one item');
        const e = r.data[0];
        eq(e.object, 'embedding', 'embeddings: data[0].object');
        eq(e.index, 0, 'embeddings: data[0].index');
        check(Array.isArray(e.embedding) && e.embedding.length === N_EMBD, `embeddings: vector length = n_embd ${N_EMBD}`, () => show(e.embedding && e.embedding.length));
        if (Array.isArray(e.embedding)) {
            check(e.embedding.every(Number.isFinite), 'embeddings: finite values');
            check(Math.abs(norm(e.embedding) - 1) < 1e-3, 'embeddings: unit L2 norm', () => norm(e.embedding));
        }
        check(r.usage && r.usage.prompt_tokens > 0, 'embeddings: usage.prompt_tokens > 0', () => show(r.usage));
        const two = await client.embeddings.create({ model: MODEL, input: ['hello world', 'something else entirely'], encoding_format: 'float' });
        eq(two.data.length, 2, 'embeddings: two inputs give two items');
        if (two.data.length === 2) {
            const s = [...two.data].sort((a, b) => a.index - b.index);
            eq(s.map((x) => x.index).join(','), '0,1', 'embeddings: indices 0,1');
            const a = s[0].embedding, b = s[1].embedding;
            check(a.length === e.embedding.length && a.every((x, i) => Math.abs(x - e.embedding[i]) < 1e-5),
                'embeddings: same input in a list gives the same vector', () => show([a.slice(0, 4), e.embedding.slice(0, 4)]));
            check(a.some((x, i) => Math.abs(x - b[i]) > 1e-4), 'embeddings: different inputs give different vectors');
            check(Math.abs(norm(b) - 1) < 1e-3, 'embeddings: second vector unit norm', () => norm(b));
            check(two.usage && two.usage.prompt_tokens > r.usage.prompt_tokens, 'embeddings: usage counts both inputs', () => show(two.usage));
        }
    });

    await section('embeddings (SDK default: base64)', async () => {
        const r = await client.embeddings.create({ model: MODEL, input: 'hello world' });
        const v = r.data[0].embedding;
        check(v && v.length === N_EMBD, 'embeddings (base64, the SDK default): vector length = n_embd', () => show(v && v.length));
        if (v && v.length) check(Math.abs(norm(Array.from(v)) - 1) < 1e-3, 'embeddings (base64): unit norm', () => norm(Array.from(v)));
    });

    // ---- error cases through the SDK ----
    await expectApiError('unknown model', () => client.chat.completions.create({ model: 'no-such-model', messages: user('hi'), max_tokens: 2 }),
        OpenAI.NotFoundError, 404);
    await expectApiError('unknown model (completions)', () => client.completions.create({ model: 'no-such-model', prompt: 'hi', max_tokens: 2 }),
        OpenAI.NotFoundError, 404);
    await expectApiError('unknown model (embeddings)', () => client.embeddings.create({ model: 'no-such-model', input: 'hi', encoding_format: 'float' }),
        OpenAI.NotFoundError, 404);
    await expectApiError('temperature -1', () => client.chat.completions.create({ model: MODEL, messages: user('hi'), temperature: -1 }),
        OpenAI.BadRequestError, 400, 'temperature');
    await expectApiError('temperature "hot"', () => client.chat.completions.create({ model: MODEL, messages: user('hi'), temperature: 'hot' }),
        OpenAI.BadRequestError, 400, 'temperature');
    await expectApiError('top_p 2', () => client.chat.completions.create({ model: MODEL, messages: user('hi'), top_p: 2 }),
        OpenAI.BadRequestError, 400, 'top_p');
    await expectApiError('max_tokens -5', () => client.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: -5 }),
        OpenAI.BadRequestError, 400, 'max_tokens');
    await expectApiError('n 0', () => client.chat.completions.create({ model: MODEL, messages: user('hi'), n: 0 }),
        OpenAI.BadRequestError, 400, 'n');
    await expectApiError('missing messages', () => client.chat.completions.create({ model: MODEL, max_tokens: 2 }),
        OpenAI.BadRequestError, 400, 'messages');
    await expectApiError('messages not an array', () => client.chat.completions.create({ model: MODEL, messages: 'hi' }),
        OpenAI.BadRequestError, 400, 'messages');
    await expectApiError('missing prompt', () => client.completions.create({ model: MODEL, max_tokens: 2 }),
        OpenAI.BadRequestError, 400, 'prompt');
    await expectApiError('missing input', () => client.embeddings.create({ model: MODEL, encoding_format: 'float' }),
        OpenAI.BadRequestError, 400, 'input');
    // Structured output is not implemented: a clear 400, never ignored.
    await section('response_format json_object', async () => {
        try {
            const r = await client.chat.completions.create({ model: MODEL, messages: user('Give JSON'), max_tokens: 8, response_format: { type: 'json_object' } });
            // Implemented: then the content must be JSON.
            let okJson = true;
            try { JSON.parse(r.choices[0].message.content); } catch { okJson = false; }
            check(okJson, 'response_format json_object accepted, so the content must be valid JSON', () => show(r.choices[0].message.content));
        } catch (e) {
            check(e instanceof OpenAI.BadRequestError && e.status === 400, 'response_format json_object: 400 BadRequestError',
                () => `${e.constructor.name} ${e.status} ${e.message}`);
            check(e.error && typeof e.error.param === 'string' && e.error.param.startsWith('response_format'),
                'response_format json_object: error.param names response_format', () => show(e.error));
        }
    });
    await section('response_format text is fine', async () => {
        const r = await client.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 2, response_format: { type: 'text' } });
        eq(r.object, 'chat.completion', 'response_format text: a normal completion');
    });
    await expectApiError('unknown route through the SDK', () => client.get('/no/such/route'), OpenAI.NotFoundError, 404);
    await section('SDK sends Authorization: Bearer to a server without keys', async () => {
        const r = await client.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 1 });
        eq(r.object, 'chat.completion', 'a server without --api-key ignores the Bearer key');
    });
    await section('withResponse: X-Request-Id', async () => {
        const { response } = await client.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 1 }).withResponse();
        check((response.headers.get('x-request-id') || '').length > 0, 'reply carries an X-Request-Id header', () => show([...response.headers.keys()]));
    });
}

async function authTests() {
    const good = client;
    await section('auth: right key', async () => {
        const page = await good.models.list();
        check(page.data.some((m) => m.id === MODEL), 'auth: models.list with the right key', () => show(page.data));
        const r = await good.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 2 });
        eq(r.object, 'chat.completion', 'auth: chat with the right key');
    });
    const bad = new OpenAI({ baseURL: BASE, apiKey: 'wrong-key', maxRetries: 0, timeout: 60000 });
    await expectApiError('auth: wrong key (chat)', () => bad.chat.completions.create({ model: MODEL, messages: user('hi'), max_tokens: 2 }),
        OpenAI.AuthenticationError, 401);
    await expectApiError('auth: wrong key (models.list)', () => bad.models.list(), OpenAI.AuthenticationError, 401);
    const prefix = new OpenAI({ baseURL: BASE, apiKey: process.env.API_KEY.slice(0, -1), maxRetries: 0, timeout: 60000 });
    await expectApiError('auth: key missing its last character', () => prefix.models.list(), OpenAI.AuthenticationError, 401);
    const longer = new OpenAI({ baseURL: BASE, apiKey: process.env.API_KEY + 'x', maxRetries: 0, timeout: 60000 });
    await expectApiError('auth: key with an extra character', () => longer.models.list(), OpenAI.AuthenticationError, 401);
    await section('auth: no Authorization header', async () => {
        const res = await fetch(ROOT + '/v1/chat/completions', {
            method: 'POST', headers: { 'Content-Type': 'application/json' },
            body: JSON.stringify({ model: MODEL, messages: user('hi'), max_tokens: 2 }),
        });
        eq(res.status, 401, 'auth: no key -> 401');
        const j = await res.json().catch(() => null);
        check(j && j.error && typeof j.error.message === 'string', 'auth: 401 body has the OpenAI error shape', () => show(j));
    });
}

try {
    if (mode === 'auth') await authTests();
    else await mainTests();
} catch (e) {
    fail('unexpected exception', e && e.stack);
}
console.log(`openai_client ${mode}: ${checks} checks, ${failures} failed`);
process.exit(failures ? 1 : 0);
