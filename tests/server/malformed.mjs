// Malformed-request generator for tests/server_malformed.sh: builds several
// hundred bad requests (broken JSON, wrong types, out-of-range values,
// invalid UTF-8, oversized and cut-off bodies, bad headers, slow bodies,
// unknown routes and methods), sends each over a raw TCP socket (node's net,
// so headers and framing can be wrong on purpose), and checks each answer's
// status, the OpenAI error shape and the parameter it names. After every
// case the server must still answer GET /health.
//   node malformed.mjs PORT MODEL [SLOW]
import net from 'node:net';

const PORT = parseInt(process.argv[2], 10);
const MODEL = process.argv[3] || 'tiny';
const SLOW = parseFloat(process.argv[4] || '1');
const HOST = '127.0.0.1';

let failures = 0;
const log = [];

function esc(buf, n = 160) {
    const s = Buffer.isBuffer(buf) ? buf : Buffer.from(String(buf));
    let out = '';
    for (const b of s.subarray(0, n)) out += b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : b === 10 ? '\\n' : b === 13 ? '\\r' : `\\x${b.toString(16).padStart(2, '0')}`;
    return out + (s.length > n ? `...(${s.length} bytes)` : '');
}

// ---- raw HTTP over a socket ----

// parts: [{data: Buffer, delay: ms before writing}]. opts: halfClose (end our
// side after the parts), destroyAfter (ms: reset the connection without
// waiting for an answer), stopOnReply (stop writing once bytes come back),
// timeout (ms).
function exchange(parts, opts = {}) {
    return new Promise((resolve) => {
        const t0 = Date.now();
        const chunks = [];
        let errors = [];
        let finished = false;
        const sock = net.connect(PORT, HOST);
        const timeout = opts.timeout || 15000 * SLOW;
        const timer = setTimeout(() => finish(true), timeout);
        function finish(timedOut) {
            if (finished) return;
            finished = true;
            clearTimeout(timer);
            sock.destroy();
            resolve({ raw: Buffer.concat(chunks), timedOut: !!timedOut, errors, ms: Date.now() - t0 });
        }
        sock.on('data', (d) => chunks.push(d));
        sock.on('error', (e) => errors.push(e.code || e.message));
        sock.on('close', () => finish(false));
        sock.on('connect', async () => {
            try {
                for (const p of parts) {
                    if (p.delay) await new Promise((r) => setTimeout(r, p.delay));
                    if (finished || sock.destroyed) return;
                    if (opts.stopOnReply && chunks.length) break;
                    // Big parts go in pieces so that a reply mid-way stops us.
                    const piece = 65536;
                    for (let off = 0; off < p.data.length; off += piece) {
                        if (finished || sock.destroyed) return;
                        if (opts.stopOnReply && chunks.length) break;
                        const ok = sock.write(p.data.subarray(off, off + piece));
                        if (!ok) await new Promise((r) => { sock.once('drain', r); sock.once('close', r); });
                    }
                }
                if (opts.destroyAfter !== undefined) {
                    await new Promise((r) => setTimeout(r, opts.destroyAfter));
                    finish(false);
                    return;
                }
                if (opts.halfClose && !sock.destroyed) sock.end();
            } catch (e) {
                errors.push(String(e));
            }
        });
    });
}

function parseReply(raw) {
    const sep = raw.indexOf('\r\n\r\n');
    if (sep < 0) return null;
    const head = raw.subarray(0, sep).toString('latin1').split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(head[0]);
    if (!m) return null;
    const headers = {};
    for (const l of head.slice(1)) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    let body = raw.subarray(sep + 4);
    if ((headers['transfer-encoding'] || '').toLowerCase() === 'chunked') {
        const parts = [];
        let off = 0;
        while (off < body.length) {
            const e = body.indexOf('\r\n', off);
            if (e < 0) break;
            const n = parseInt(body.subarray(off, e).toString('latin1'), 16);
            if (!(n > 0)) break;
            parts.push(body.subarray(e + 2, e + 2 + n));
            off = e + 2 + n + 2;
        }
        body = Buffer.concat(parts);
    }
    return { status: parseInt(m[1], 10), headers, body };
}

function request(method, path, body, o = {}) {
    const b = body === undefined || body === null ? null : Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8');
    const lines = [`${method} ${path} ${o.version || 'HTTP/1.1'}`];
    if (o.host !== false) lines.push(`Host: ${HOST}:${PORT}`);
    lines.push('Connection: close');
    if (b !== null && o.contentType !== false) lines.push(`Content-Type: ${o.contentType || 'application/json'}`);
    if (b !== null && o.contentLength !== false) lines.push(`Content-Length: ${o.contentLength !== undefined ? o.contentLength : b.length}`);
    for (const h of o.headers || []) lines.push(h);
    const head = Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
    return b === null ? head : Buffer.concat([head, b]);
}

// ---- cases ----

const cases = [];
// expect: a status, a list of statuses, '4xx', or 'closed' (no reply); plus
// closedOk (a close without reply is fine too), param (error.param must
// start with it), shape (OpenAI error body; default for JSON API replies).
function add(name, bytes, expect, extra = {}) {
    cases.push({ name, parts: [{ data: bytes }], expect, ...extra });
}
const CHAT = '/v1/chat/completions';
const chatBody = (o) => JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, ...o });
// Raw JSON text for one field spliced into a valid chat body.
const chatWith = (field, rawValue) => `{"model":"${MODEL}","messages":[{"role":"user","content":"hi"}],"max_tokens":2,"${field}":${rawValue}}`;
const chatWithout = (field, rawValue) => {
    const o = { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };
    delete o[field];
    const s = JSON.stringify(o);
    return s.slice(0, -1) + `,"${field}":${rawValue}}`;
};

// 1. Every prefix of a valid body is invalid JSON.
const good = chatBody({});
for (let n = 0; n < good.length; n++) add(`chat body truncated to ${n} bytes`, request('POST', CHAT, good.slice(0, n)), 400);
const genGood = JSON.stringify({ prompt: 'hello there', max_tokens: 2, temperature: 0.5, stop: ['x'] });
for (let n = 1; n < genGood.length; n += 3) add(`generate body truncated to ${n} bytes`, request('POST', '/v1/generate', genGood.slice(0, n)), 400);

// 2. Bad JSON tokens.
const badJson = [
    "{'model':'x'}", '{"max_tokens":tru}', '{"max_tokens":01}', '{"max_tokens":.5}', '{"max_tokens":+1}',
    '{"messages":[1,]}', '{"max_tokens":1,}', '{} trailing', '{}{}', '{"a" 1}', '{"a":1 "b":2}', '{a:1}',
    '{"temperature":NaN}', '{"temperature":Infinity}', '{"temperature":-Infinity}', 'NaN', '{"max_tokens":0x10}',
    '{"s":"\\x41"}', '{"s":"\\u12"}', '{"s":"\\u12G4"}', '{"s":"tab\there"}', '{"s":"nl\nhere"}', '{"s":"\\"}',
    '{"max_tokens":1e}', '{"max_tokens":-}', '{"max_tokens":1.}', '{"\\ud800":1}', '[', ']', '{"a":[}', '"unterminated',
    '\ufeff{"model":"x"}', '{"a":1}\u0000', '{"a":nul}', '{"a":True}', '/* c */ {}',
];
for (const j of badJson) add(`bad JSON ${esc(j, 40)}`, request('POST', CHAT, j), 400);

// 3. Deep nesting.
add('10k nested arrays', request('POST', CHAT, '['.repeat(10000) + ']'.repeat(10000)), 400);
add('10k nested objects', request('POST', CHAT, '{"a":'.repeat(10000) + '1' + '}'.repeat(10000)), 400);
add('10k nested arrays in messages', request('POST', CHAT, `{"model":"${MODEL}","messages":` + '['.repeat(10000) + ']'.repeat(10000) + '}'), 400);
add('10k nested arrays unclosed', request('POST', CHAT, '['.repeat(10000)), 400);
add('nested content parts 3k', request('POST', CHAT, `{"model":"${MODEL}","messages":[{"role":"user","content":` + '['.repeat(3000) + ']'.repeat(3000) + '}]}'), 400);

// 4. Numbers.
const nums = [
    ['max_tokens', '1e999', 400], ['temperature', '1e999', 400], ['temperature', '-1e999', 400],
    ['max_tokens', '9223372036854775808', 400], ['max_tokens', '9223372036854775807', 400],
    ['max_tokens', '-9223372036854775809', 400], ['max_tokens', '2147483648', 400], ['max_tokens', '1e300', 400],
    ['top_p', '1e308', 400], ['seed', '18446744073709551616', 400], ['seed', '1e999', 400],
    ['top_k', '99999999999999999999', 400], ['n', '4294967297', 400], ['top_logprobs', '4294967299', 400],
    ['temperature', '-0', 200], ['temperature', '1e-320', 200], ['temperature', '0.0', 200], ['top_p', '1', 200],
    ['max_tokens', '-0', [200, 400]],
];
for (const [f, v, st] of nums) add(`number ${f}=${v}`, request('POST', CHAT, chatWith(f, v)), st, st === 400 ? { param: v.includes('e999') ? undefined : f } : {});

// 5. Invalid UTF-8 and surrogates.
const hi = (b) => Buffer.concat([Buffer.from(`{"model":"${MODEL}","messages":[{"role":"user","content":"a`), Buffer.from(b), Buffer.from('b"}],"max_tokens":2}')]);
const badUtf8 = [[0xff], [0xfe], [0xc3], [0xc3, 0x28], [0xc0, 0xaf], [0xe0, 0x80, 0xaf], [0xed, 0xa0, 0x80], [0xed, 0xbf, 0xbf],
    [0xf4, 0x90, 0x80, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0x80], [0xbf], [0xe2, 0x82], [0xf0, 0x9f, 0x98]];
for (const b of badUtf8) add(`invalid UTF-8 ${b.map((x) => x.toString(16)).join(' ')} in content`, request('POST', CHAT, hi(b)), 400);
add('invalid UTF-8 in a key', request('POST', CHAT, Buffer.concat([Buffer.from('{"'), Buffer.from([0xff]), Buffer.from(`":1,"model":"${MODEL}","messages":[{"role":"user","content":"hi"}]}`)])), 400);
add('invalid UTF-8 in model', request('POST', CHAT, Buffer.concat([Buffer.from('{"model":"'), Buffer.from([0xc3]), Buffer.from('","messages":[{"role":"user","content":"hi"}]}')])), 400);
add('invalid UTF-8 in generate prompt', request('POST', '/v1/generate', Buffer.concat([Buffer.from('{"prompt":"x'), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from('","max_tokens":2}')])), 400);
add('invalid UTF-8 in tokenize content', request('POST', '/v1/tokenize', Buffer.concat([Buffer.from('{"content":"x'), Buffer.from([0xff]), Buffer.from('"}')])), 400);
add('invalid UTF-8 in embeddings input', request('POST', '/v1/embeddings', Buffer.concat([Buffer.from(`{"model":"${MODEL}","input":"x`), Buffer.from([0xfe]), Buffer.from('"}')])), 400);
add('invalid UTF-8 in a stop string', request('POST', '/v1/completions', Buffer.concat([Buffer.from(`{"model":"${MODEL}","prompt":"hi","max_tokens":2,"stop":"`), Buffer.from([0xc0, 0x80]), Buffer.from('"}')])), 400);
for (const s of ['\\ud800', '\\udc00', '\\ud800\\u0041', '\\udbff', '\\ud800\\ud800', '\\udfff\\ud800'])
    add(`lone surrogate ${s} in content`, request('POST', CHAT, `{"model":"${MODEL}","messages":[{"role":"user","content":"a${s}b"}],"max_tokens":2}`), 400);
add('lone surrogate in prompt', request('POST', '/v1/completions', `{"model":"${MODEL}","prompt":"\\ud800","max_tokens":2}`), 400);
add('valid surrogate pair (emoji) in content', request('POST', CHAT, `{"model":"${MODEL}","messages":[{"role":"user","content":"a\\ud83d\\ude00b"}],"max_tokens":2}`), 200);
add('valid raw UTF-8 (4-byte) in content', request('POST', CHAT, Buffer.from(`{"model":"${MODEL}","messages":[{"role":"user","content":"a\u{1F600}\u00e9b"}],"max_tokens":2}`, 'utf8')), 200);
add('escaped NUL in content', request('POST', CHAT, `{"model":"${MODEL}","messages":[{"role":"user","content":"a\\u0000b"}],"max_tokens":2}`), [200, 400]);

// 6. Wrong types / out of range for every field.
const wrong = {
    messages: ['{}', '"hi"', '5', 'null', 'true', '[]', '[5]', '["hi"]', '[null]', '[[]]', '[{"role":"user"}]', '[{"content":"hi"}]',
        '[{"role":5,"content":"hi"}]', '[{"role":"user","content":5}]', '[{"role":"user","content":{"a":1}}]',
        '[{"role":"user","content":[{"type":"image_url","image_url":{"url":"http://x/y.png"}}]}]', '[{"role":"user","content":[5]}]',
        '[{"role":"user","content":[{"type":"text"}]}]', '[{"role":"user","content":[{"type":"text","text":5}]}]', '[{"role":"user","content":true}]'],
    model: ['5', 'true', '{}', '[]'],
    max_tokens: ['"8"', '8.5', '-1', 'true', '{}', '[]', '[8]'],
    max_completion_tokens: ['"x"', '-1', '2.5'],
    temperature: ['-1', '"hot"', 'true', '{}', '[]', '-0.001', '"0.5"'],
    top_p: ['2', '-0.1', '"x"', '1.0001', '[]'],
    top_k: ['"x"', '1.5', '-5', '{}'],
    min_p: ['2', '-1', '"x"'],
    typical_p: ['2', '-0.5', '"x"'],
    tfs_z: ['0', '2', '"x"'],
    repeat_penalty: ['0', '-1', '"x"'],
    repeat_last_n: ['-2', '"x"', '1.5'],
    presence_penalty: ['3', '-3', '"x"'],
    frequency_penalty: ['3', '-3', '"x"'],
    mirostat: ['3', '-1', '"x"', '1.5'],
    mirostat_tau: ['-1', '"x"'],
    mirostat_eta: ['0', '2', '"x"'],
    n: ['0', '-1', '1000', '"2"', '1.5', 'true'],
    seed: ['"x"', '1.5', '{}', 'true', '-1.5'],
    stop: ['5', '[1]', '[null]', '{"a":1}', 'true', '[["x"]]'],
    logit_bias: ['{"abc":1}', '{"99999":1}', '{"-1":1}', '{"1":"x"}', '"x"', '5', '{"1.5":1}', '{"1":{}}', '{"":1}', 'true'],
    stream: ['"yes"', '{}', '[]'],
    stream_options: ['5', '"x"', '{"include_usage":"yes"}', '[]'],
    logprobs: ['"x"', '{}', '[]'],
    top_logprobs: ['21', '-1', '"x"', '2.5'],
    response_format: ['"json"', '{"type":"bogus"}', '{"type":"json_schema"}', '{"type":"json_schema","json_schema":{"name":"x","schema":{"not":{}}}}', '5', '{}'],
    tools: ['5', '[5]', '[{"type":"code"}]', '[{"type":"function","function":{"name":"a b"}}]'],
    tool_choice: ['"always"', '5', '{"type":"function","function":{"name":"nope"}}'],
    grammar: ['5', '"root ::= (\\"a\\""', '"root ::= undefined-rule"'],
    ignore_eos: ['"x"', '{}'],
    priority: ['"x"', '1.5', '{}'],
};
for (const [f, vals] of Object.entries(wrong)) {
    for (const v of vals) {
        const body = f === 'messages' || f === 'model' || f === 'max_tokens' ? chatWithout(f, v) : chatWith(f, v);
        const extra = { param: f };
        if (f === 'top_logprobs') {
            add(`chat ${f}=${v}`, request('POST', CHAT, chatWith(f, v).slice(0, -1) + ',"logprobs":true}'), 400, extra);
            continue;
        }
        add(`chat ${f}=${v}`, request('POST', CHAT, body), 400, extra);
    }
}
// Features not implemented must be refused naming the field, never ignored;
// their neutral values are fine.
for (const [f, v] of [['tool_choice', '"required"'],
    ['functions', '[{"name":"f"}]'], ['function_call', '"auto"'], ['n_probs', '3'], ['best_of', '2']])
    add(`chat unsupported ${f}=${v}`, request('POST', CHAT, chatWith(f, v)), 400, { param: f });
for (const [f, v] of [['tools', '[]'], ['tool_choice', '"none"'], ['response_format', '{"type":"text"}'], ['best_of', '1'], ['user', '"u1"'], ['n_probs', '0'],
    ['response_format', '{"type":"json_object"}'], ['tools', '[{"type":"function","function":{"name":"f","parameters":{}}}]'],
    ['tool_choice', '"auto"'], ['grammar', '"root ::= \\"a\\""']])
    add(`chat neutral ${f}=${v}`, request('POST', CHAT, chatWith(f, v)), 200);
add('chat model "nope"', request('POST', CHAT, chatWithout('model', '"nope"')), 404);
add('chat without messages', request('POST', CHAT, `{"model":"${MODEL}","max_tokens":2}`), 400, { param: 'messages' });
add('chat stop: 5 strings of 10k chars', request('POST', CHAT, chatWith('stop', JSON.stringify(Array.from({ length: 5 }, (_, i) => String.fromCharCode(97 + i).repeat(10000))))), [200, 400]);
add('chat stop: 4 strings of 10 chars (fine)', request('POST', CHAT, chatWith('stop', JSON.stringify(['aaaaaaaaaa', 'bbbbbbbbbb', 'cccccccccc', 'dddddddddd']))), 200);
add('chat temperature null (= default)', request('POST', CHAT, chatWith('temperature', 'null')), 200);
add('chat harmless unknown field "user"', request('POST', CHAT, chatWith('user', '"someone"')), 200);
add('chat logit_bias {"65": 5} (fine)', request('POST', CHAT, chatWith('logit_bias', '{"65":5}')), 200);

// completions
const COMP = '/v1/completions';
const compWith = (f, v) => `{"model":"${MODEL}","prompt":"hi","max_tokens":2,"${f}":${v}}`;
const compPrompt = (v) => `{"model":"${MODEL}","max_tokens":2,"prompt":${v}}`;
for (const v of ['5', 'null', '{}', '[]', '[[]]', '[99999]', '[-1]', '[1.5]', '["a",5]', '[[1,2],[99999]]', 'true', '[[1,"x"]]', '[null]'])
    add(`completions prompt=${v}`, request('POST', COMP, compPrompt(v)), 400, { param: 'prompt' });
add('completions without prompt', request('POST', COMP, `{"model":"${MODEL}","max_tokens":2}`), 400, { param: 'prompt' });
for (const [f, v] of [['max_tokens', '"2"'], ['temperature', '-1'], ['logprobs', '-1'], ['logprobs', '"x"'], ['n', '0'], ['stop', '5'], ['echo', '"x"'], ['top_p', '7'], ['stream', '"x"'], ['seed', '"s"']])
    add(`completions ${f}=${v}`, request('POST', COMP, compWith(f, v)), 400, { param: f });
add('completions echo true', request('POST', COMP, compWith('echo', 'true')), 400, { param: 'echo' });
add('completions echo false (fine)', request('POST', COMP, compWith('echo', 'false')), 200);
add('completions suffix "x"', request('POST', COMP, compWith('suffix', '"x"')), 400, { param: 'suffix' });
add('completions model "nope"', request('POST', COMP, `{"model":"nope","prompt":"hi","max_tokens":2}`), 404);
add('completions prompt [1,2,3] (fine)', request('POST', COMP, compPrompt('[1,2,3]')), 200);
add('completions prompt [[1,2],[3]] (fine)', request('POST', COMP, compPrompt('[[1,2],[3]]')), 200);

// embeddings
const EMB = '/v1/embeddings';
const embInput = (v) => `{"model":"${MODEL}","input":${v}}`;
for (const v of ['5', 'null', '{}', '[]', '[5.5]', '[99999]', '[[]]', '["a",5]', 'true', '[-3]', '[[1],[99999]]'])
    add(`embeddings input=${v}`, request('POST', EMB, embInput(v)), 400, { param: 'input' });
add('embeddings without input', request('POST', EMB, `{"model":"${MODEL}"}`), 400, { param: 'input' });
add('embeddings encoding_format "xyz"', request('POST', EMB, `{"model":"${MODEL}","input":"hi","encoding_format":"xyz"}`), 400, { param: 'encoding_format' });
add('embeddings encoding_format 5', request('POST', EMB, `{"model":"${MODEL}","input":"hi","encoding_format":5}`), 400, { param: 'encoding_format' });
add('embeddings model "nope"', request('POST', EMB, `{"model":"nope","input":"hi"}`), 404);
add('embeddings input "" ', request('POST', EMB, embInput('""')), [200, 400]);
add('embeddings input [1,2,3] (fine)', request('POST', EMB, embInput('[1,2,3]')), 200);

// native generate
const GEN = '/v1/generate';
for (const [f, v] of [['prompt', '5'], ['prompt', '{}'], ['tokens', '"x"'], ['tokens', '[99999]'], ['tokens', '[-1]'], ['tokens', '[1.5]'],
    ['logit_bias', '[[1]]'], ['logit_bias', '[["a",1]]'], ['logit_bias', '[[1,"x"]]'], ['logit_bias', '[[99999,1]]'], ['logit_bias', '[5]'],
    ['max_tokens', '"5"'], ['n_predict', '"5"'], ['stream', '"yes"'], ['stop', '[5]'], ['priority', '"x"'], ['cache_prompt', '"x"'], ['temperature', 'NaN']]) {
    const body = f === 'prompt' || f === 'tokens' ? `{"${f}":${v},"max_tokens":2}` : `{"prompt":"hi","max_tokens":2,"${f}":${v}}`;
    add(`generate ${f}=${v}`, request('POST', GEN, body), 400, v === 'NaN' ? {} : { param: f });
}
add('generate model 5', request('POST', GEN, '{"prompt":"hi","model":5}'), 400, { param: 'model' });
add('generate model "nope"', request('POST', GEN, '{"prompt":"hi","model":"nope"}'), 404);

// tokenize / detokenize
for (const v of ['5', '{}', '[]', 'null']) add(`tokenize content=${v}`, request('POST', '/v1/tokenize', `{"content":${v}}`), 400, { param: 'content' });
add('tokenize without content', request('POST', '/v1/tokenize', '{"add_special":true}'), 400);
add('tokenize add_special "x"', request('POST', '/v1/tokenize', '{"content":"hi","add_special":"x"}'), 400, { param: 'add_special' });
for (const v of ['"x"', '[99999]', '[-1]', '[1.5]', '["a"]', '5', '{}', '[[1]]', '[2147483648]'])
    add(`detokenize tokens=${v}`, request('POST', '/v1/detokenize', `{"tokens":${v}}`), 400, { param: 'tokens' });
add('detokenize without tokens', request('POST', '/v1/detokenize', '{}'), 400, { param: 'tokens' });

// model management
for (const [b, st, p] of [['{}', 400, 'path'], ['{"path":5}', 400, 'path'], ['{"path":""}', 400, 'path'], ['{"path":"/nonexistent/x.gguf"}', [400, 404]],
    ['{"path":"/etc/hostname"}', 400], ['{"path":"/tmp"}', 400], ['{"path":"/etc/hostname","name":5}', 400, 'name'],
    [`{"path":"/nonexistent/x.gguf","name":"${MODEL}"}`, 400]])
    add(`models/load ${b}`, request('POST', '/v1/models/load', b), st, p ? { param: p } : {});
for (const ep of ['unload', 'reload']) {
    add(`models/${ep} {}`, request('POST', `/v1/models/${ep}`, '{}'), 400, { param: 'name' });
    add(`models/${ep} name 5`, request('POST', `/v1/models/${ep}`, '{"name":5}'), 400, { param: 'name' });
    add(`models/${ep} name "nope"`, request('POST', `/v1/models/${ep}`, '{"name":"nope"}'), 404);
}
add('models/active name 5', request('POST', '/v1/models/active', '{"name":5}'), 400, { param: 'name' });
add('models/active name "nope"', request('POST', '/v1/models/active', '{"name":"nope"}'), 404);

// 7. Bodies that are not objects, and empty bodies, on every POST endpoint.
const posts = [CHAT, COMP, EMB, GEN, '/v1/tokenize', '/v1/detokenize', '/v1/models/load', '/v1/models/unload', '/v1/models/reload'];
for (const ep of posts) {
    for (const v of ['null', '[]', '5', '"s"', 'true']) add(`${ep} body ${v}`, request('POST', ep, v), 400);
    add(`${ep} empty body`, request('POST', ep, ''), 400);
    add(`${ep} no body, no Content-Length`, request('POST', ep, null), 400);
}

// 8. Too large.
const big = Buffer.alloc(2 * 1024 * 1024, 'a');
const bigJson = Buffer.concat([Buffer.from(`{"model":"${MODEL}","prompt":"`), big, Buffer.from('"}')]);
// With a Content-Length the server knows at once: the body follows only
// after a pause, so the answer is read before the server closes the
// connection (closing with unread data resets it, which can lose the reply).
const headThenBody = (path, body) => {
    const head = request('POST', path, null, { headers: ['Content-Type: application/json', `Content-Length: ${body.length}`] });
    return [{ data: head }, { data: body, delay: 300 }];
};
cases.push({ name: '2 MiB body (limit 1 MiB)', parts: headThenBody(COMP, bigJson), expect: 413, stopOnReply: true });
cases.push({ name: '2 MiB body on /v1/tokenize', parts: headThenBody('/v1/tokenize', bigJson), expect: 413, stopOnReply: true });
cases.push({ name: '2 MiB body on /v1/chat/completions, sent at once', parts: [{ data: request('POST', CHAT, bigJson) }], expect: 413, stopOnReply: true, shape: false, resetOk: true });
add('Content-Length 10 GB, 10 bytes sent', request('POST', CHAT, '{"a":12345', { contentLength: 10737418240 }), 413, { halfClose: true, shape: false, closedOk: false });
add('Content-Length 1 MiB + 1, body not sent', request('POST', CHAT, '', { contentLength: 1048577 }), 413, { halfClose: true, shape: false });
{
    const chunk = Buffer.alloc(512 * 1024, 'a');
    const parts = [];
    parts.push(Buffer.from(`POST ${COMP} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n`));
    for (let i = 0; i < 4; i++) parts.push(Buffer.from(`${chunk.length.toString(16)}\r\n`), chunk, Buffer.from('\r\n'));
    parts.push(Buffer.from('0\r\n\r\n'));
    // No length up front: the server reads up to its limit and answers while
    // the client still sends; a reset instead of the reply is tolerated.
    add('chunked body of 2 MiB', Buffer.concat(parts), 413, { stopOnReply: true, shape: false, resetOk: true });
}
add('chunked small valid body', (() => {
    const b = Buffer.from(chatBody({}));
    return Buffer.concat([Buffer.from(`POST ${CHAT} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n0\r\n\r\n')]);
})(), 200);

// 9. Bad headers and request lines.
add('64 KB header value', request('GET', '/health', null, { headers: ['X-Big: ' + 'a'.repeat(65536)] }), '4xx', { shape: false, closedOk: true });
add('1000 headers', request('GET', '/health', null, { headers: Array.from({ length: 1000 }, (_, i) => `X-H${i}: ${'v'.repeat(40)}`) }), '4xx', { shape: false, closedOk: true });
add('100 KB URL', request('GET', '/' + 'a'.repeat(100000), null), '4xx', { shape: false, closedOk: true });
add('Content-Length "abc"', request('POST', CHAT, chatBody({}), { contentLength: 'abc' }), '4xx', { shape: false, closedOk: true });
add('Content-Length -5', request('POST', CHAT, chatBody({}), { contentLength: '-5' }), '4xx', { shape: false, closedOk: true });
add('Content-Length "1 2"', request('POST', CHAT, chatBody({}), { contentLength: '1 2' }), '4xx', { shape: false, closedOk: true });
add('two different Content-Length headers', request('POST', CHAT, chatBody({}), { headers: ['Content-Length: 3'] }), '4xx', { shape: false, closedOk: true });
add('Content-Length smaller than body (rest is junk)', request('POST', CHAT, chatBody({}), { contentLength: 10 }), 400, { shape: false, closedOk: false });
add('bad chunk size', Buffer.from(`POST ${CHAT} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n`), '4xx', { shape: false, closedOk: true, halfClose: true });
// RFC 9112 wants 400; llama-server and most embedded servers accept it.
add('no Host header (HTTP/1.1)', request('GET', '/health', null, { host: false }), [200, 400], { shape: false });
add('HTTP/1.0 without Host (fine)', request('GET', '/health', null, { host: false, version: 'HTTP/1.0' }), 200, { shape: false });
add('garbage request line', Buffer.from('HELLO\r\n\r\n'), '4xx', { shape: false, closedOk: true, halfClose: true });
add('binary garbage', Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 37 + 11) & 0xff)), '4xx', { shape: false, closedOk: true, halfClose: true });
add('HTTP/9.9', request('GET', '/health', null, { version: 'HTTP/9.9' }), ['4xx', 505], { shape: false, closedOk: true });
add('header without a colon', request('GET', '/health', null, { headers: ['NoColonHere'] }), '4xx', { shape: false, closedOk: true });
add('NUL byte in a header', Buffer.from(`GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: a\u0000b\r\n\r\n`, 'latin1'), ['4xx', 200], { shape: false, closedOk: true });
add('space before colon in a header', request('GET', '/health', null, { headers: ['X-A : b'] }), ['4xx', 200], { shape: false, closedOk: true });
add('X-Request-Id of 1000 chars', request('GET', '/health', null, { headers: ['X-Request-Id: ' + 'r'.repeat(1000)] }), 200,
    { shape: false, check: (r) => { const id = r.headers['x-request-id'] || ''; return id.length > 0 && id.length <= 128 ? null : `X-Request-Id must be regenerated (1..128 chars), got ${id.length} chars`; } });
add('X-Request-Id with control bytes', request('GET', '/health', null, { headers: ['X-Request-Id: ab\u0001cd\u007f'] }), 200,
    { shape: false, check: (r) => { const id = r.headers['x-request-id'] || ''; return id.length > 0 && !/[\x00-\x1f\x7f]/.test(id) ? null : `X-Request-Id must be regenerated without control bytes, got ${esc(id)}`; } });
add('Authorization on a server without keys', request('GET', '/v1/models', null, { headers: ['Authorization: Bearer ' + 'k'.repeat(5000)] }), 200, { shape: false });

// 10. Cut-off and slow bodies.
cases.push({ name: 'Content-Length 100, 10 bytes, then half-close', parts: [{ data: request('POST', CHAT, '{"model":"', { contentLength: 100 }) }], expect: 'closed', closedOk: true, alsoOk: [400, 408], halfClose: true, shape: false });
cases.push({ name: 'Content-Length 100, 10 bytes, then reset', parts: [{ data: request('POST', CHAT, '{"model":"', { contentLength: 100 }) }], expect: 'any', destroyAfter: 50 });
cases.push({ name: 'headers cut mid-way, then half-close', parts: [{ data: Buffer.from(`POST ${CHAT} HTTP/1.1\r\nHost: x\r\nContent-Le`) }], expect: 'closed', closedOk: true, alsoOk: [400, 408], halfClose: true, shape: false });
cases.push({ name: 'chunked body cut after one chunk, then half-close', parts: [{ data: Buffer.from(`POST ${CHAT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n5\r\n{"mod\r\n`) }], expect: 'closed', closedOk: true, alsoOk: [400, 408], halfClose: true, shape: false });
cases.push({ name: 'big body cut at 600 KB, then reset', parts: [{ data: request('POST', COMP, bigJson.subarray(0, 600000), { contentLength: bigJson.length }) }], expect: 'any', destroyAfter: 20 });
{
    const body = Buffer.from(JSON.stringify({ prompt: 'hi', max_tokens: 2 }));
    const parts = [{ data: request('POST', GEN, null, { headers: ['Content-Type: application/json', `Content-Length: ${body.length}`] }) }];
    for (const b of body) parts.push({ data: Buffer.from([b]), delay: 100 });
    cases.push({ name: `slow body: ${body.length} bytes, one per 100 ms`, parts, expect: 200, timeout: 30000 * SLOW });
}
{
    const body = Buffer.from(chatBody({}));
    const head = request('POST', CHAT, null, { headers: ['Content-Type: application/json', `Content-Length: ${body.length}`] });
    const parts = [];
    for (const b of head) parts.push({ data: Buffer.from([b]), delay: 2 });
    parts.push({ data: body });
    cases.push({ name: 'slow headers: one byte per 2 ms', parts, expect: 200, timeout: 30000 * SLOW });
}

// 11. Routes and methods.
for (const [m, p, st] of [['GET', '/nope', 404], ['POST', '/v1/nope', 404], ['GET', '/v1/chat/completionsX', 404], ['GET', '/v2/models', 404],
    ['GET', '/../../etc/passwd', [400, 404]], ['GET', '/v1/models/../../../etc/passwd', [400, 404]], ['GET', '/%00', [400, 404]],
    ['GET', '/v1/chat%2Fcompletions', [400, 404, 405]], ['GET', '/' + 'x'.repeat(4000), [404, 414]], ['GET', '/v1/generate/../health', [200, 400, 404]],
    ['GET', CHAT, 405], ['PUT', COMP, 405], ['DELETE', '/health', 405], ['PATCH', GEN, 405], ['POST', '/health', 405],
    ['POST', '/v1/models', 405], ['POST', '/metrics', 405], ['GET', EMB, 405], ['GET', '/v1/tokenize', 405], ['POST', '/v1/models/list', 405],
    ['GET', '/v1/models/load', 405], ['DELETE', '/v1/models/unload', 405], ['PUT', '/v1/status', 405], ['BREW', '/health', [400, 405, 501]],
    ['GET', '/health?x=1&y', 200], ['HEAD', '/health', [200, 405]]]) {
    const body = ['POST', 'PUT', 'PATCH'].includes(m) ? '{}' : null;
    const shape = typeof st === 'number' && st >= 400 && !p.includes('%') && !p.includes('..') && m !== 'BREW';
    add(`${m} ${p.length > 60 ? p.slice(0, 60) + '...' : p}`, request(m, p, body), st, {
        shape, check: st === 405 ? (r) => (/\b(GET|POST)\b/.test(r.headers.allow || '') ? null : `405 without an Allow header naming the method (got ${JSON.stringify(r.headers.allow)})`) : undefined,
    });
}

// 12. Content types.
add('Content-Type text/plain', request('POST', CHAT, chatBody({}), { contentType: 'text/plain' }), [200, 400, 415]);
add('Content-Type application/x-www-form-urlencoded', request('POST', CHAT, chatBody({}), { contentType: 'application/x-www-form-urlencoded' }), [200, 400, 415]);
add('Content-Type multipart/form-data', request('POST', CHAT, chatBody({}), { contentType: 'multipart/form-data; boundary=x' }), [200, 400, 415]);
add('no Content-Type', request('POST', CHAT, chatBody({}), { contentType: false }), [200, 400, 415]);
add('Content-Type application/json; charset=utf-8', request('POST', CHAT, chatBody({}), { contentType: 'application/json; charset=utf-8' }), 200);
add('Content-Type APPLICATION/JSON', request('POST', CHAT, chatBody({}), { contentType: 'APPLICATION/JSON' }), 200);

// ---- run ----

function statusMatches(status, expect) {
    const list = Array.isArray(expect) ? expect : [expect];
    return list.some((e) => (e === '4xx' ? status >= 400 && status < 500 : e === status));
}

async function health() {
    const r = await exchange([{ data: request('GET', '/health', null) }], { timeout: 10000 * SLOW });
    const p = parseReply(r.raw);
    return p ? p.status : null;
}

async function runCase(c) {
    const r = await exchange(c.parts, { halfClose: c.halfClose, destroyAfter: c.destroyAfter, stopOnReply: c.stopOnReply, timeout: c.timeout });
    const p = parseReply(r.raw);
    const desc = `request ${esc(Buffer.concat(c.parts.map((x) => x.data)))}`;
    if (c.expect === 'any') return null;
    if (r.timedOut) return `no reply within ${(c.timeout || 15000 * SLOW) / 1000} s (connection stuck); ${desc}`;
    if (!p) {
        if (c.expect === 'closed' || c.closedOk) return null;
        if (c.resetOk && r.raw.length === 0 && r.errors.some((e) => e === 'EPIPE' || e === 'ECONNRESET')) return null;
        return `expected HTTP ${JSON.stringify(c.expect)}, got a close without a reply (${r.raw.length} bytes: ${esc(r.raw, 80)}; socket errors ${r.errors.join(',')}); ${desc}`;
    }
    if (c.expect === 'closed') {
        if ((c.alsoOk || []).includes(p.status)) return null;
        return `expected a close (or ${JSON.stringify(c.alsoOk)}), got HTTP ${p.status}: ${esc(p.body, 200)}; ${desc}`;
    }
    if (!statusMatches(p.status, c.expect)) return `expected HTTP ${JSON.stringify(c.expect)}, got ${p.status}: ${esc(p.body, 300)}; ${desc}`;
    if (c.check) {
        const e = c.check(p);
        if (e) return `${e}; ${desc}`;
    }
    const shape = c.shape !== undefined ? c.shape : true;
    if (shape && p.status >= 400) {
        let j = null;
        try { j = JSON.parse(p.body.toString('utf8')); } catch { /* reported below */ }
        const e = j && j.error;
        if (!(e && typeof e.message === 'string' && e.message.length > 0 && 'type' in e && 'param' in e && 'code' in e))
            return `HTTP ${p.status} body is not {"error": {"message","type","param","code"}}: ${esc(p.body, 300)}; ${desc}`;
        if (c.param && !(typeof e.param === 'string' && e.param.startsWith(c.param)))
            return `HTTP ${p.status}: error.param should name ${c.param}, got ${JSON.stringify(e.param)} (message: ${e.message}); ${desc}`;
        if (p.status === 400 && e.type !== 'invalid_request_error')
            return `HTTP 400 error.type should be invalid_request_error, got ${JSON.stringify(e.type)}; ${desc}`;
    }
    if (shape && p.status === 200 && (p.headers['content-type'] || '').startsWith('application/json')) {
        try { JSON.parse(p.body.toString('utf8')); } catch { return `HTTP 200 body is not JSON: ${esc(p.body, 200)}; ${desc}`; }
    }
    return null;
}

const t0 = Date.now();
for (const [i, c] of cases.entries()) {
    let err;
    try {
        err = await runCase(c);
    } catch (e) {
        err = `test harness exception: ${e && e.stack}`;
    }
    if (err) {
        failures++;
        console.error(`FAIL [${i}] ${c.name}: ${err}`);
    }
    const h = await health();
    if (h !== 200) {
        failures++;
        console.error(`FAIL [${i}] ${c.name}: afterwards GET /health gave ${h === null ? 'no reply' : h} (server down?)`);
        if (h === null) break;
    }
}
const secs = ((Date.now() - t0) / 1000).toFixed(1);
console.log(`malformed: ${cases.length} cases in ${secs} s, ${failures} failed`);
process.exit(failures ? 1 : 0);
