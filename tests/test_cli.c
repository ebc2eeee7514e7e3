/* The `exsa` binary end to end: every command's happy path, its errors (one
 * clear line, non-zero exit, never a signal), and `quantize` keeping the
 * logits close to the source model's. Runs build/exsa as a child process. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/sampling.h"
#include "model/model.h"
#include "test_util.h"

#ifndef EXSA_BIN
#define EXSA_BIN "exsa"
#endif

static char g_dir[256];
static char g_out[1 << 16];

/* Runs "exsa ARGS" with stdout+stderr captured in g_out; returns the exit
 * status, or -1000-signal when the child died of a signal. */
static int exsa(const char *fmt, ...)
{
    char args[2048], cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd %s && %s %s 2>&1", g_dir, EXSA_BIN, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(g_out, 1, sizeof g_out - 1, p);
    g_out[n] = '\0';
    int st = pclose(p);
    if (WIFSIGNALED(st))
        return -1000 - WTERMSIG(st);
    return WEXITSTATUS(st);
}

static void expect_fail(const char *what, const char *needle, int rc)
{
    if (rc <= 0 || !strstr(g_out, needle) || strchr(g_out, '\n') != g_out + strlen(g_out) - 1)
        fail_msg("%s: rc %d, wanted one line with '%s', got:\n%s", what, rc, needle, g_out);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa-cli-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    /* One F32 model all tests share: K-quant friendly width (256). */
    return exsa("gen-model m.gguf --embd 256 --layers 2 --heads 4 --kv-heads 2 --ff 512 "
                "--vocab 600 --seed 7 --untied") == 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_help(void **state)
{
    (void)state;
    const char *cmds[] = {"run", "info", "quantize", "bench", "gen-model", "perplexity", "chat"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        assert_int_equal(exsa("%s --help", cmds[i]), 0);
        assert_non_null(strstr(g_out, "usage: exsa"));
    }
    assert_int_equal(exsa("--help"), 0);
    assert_non_null(strstr(g_out, "gen-model"));
    assert_true(exsa("frobnicate") > 0);
    assert_non_null(strstr(g_out, "unknown command 'frobnicate'"));
}

static void test_info(void **state)
{
    (void)state;
    assert_int_equal(exsa("info m.gguf -c 1024"), 0);
    assert_non_null(strstr(g_out, "architecture: llama"));
    assert_non_null(strstr(g_out, "embd 256, layers 2, heads 4, kv heads 2"));
    assert_non_null(strstr(g_out, "blk.1.ffn_down.weight"));
    assert_non_null(strstr(g_out, "memory at context 1024"));
    /* KV f16 at 1024 tokens: 2 layers * 2 (K,V) * 1024 * 2 heads*64 * 2 B = 1 MiB */
    assert_non_null(strstr(g_out, "kv F16   1.00 MiB"));
}

static void test_run_json_greedy(void **state)
{
    (void)state;
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5,6,7,8 -n 6 --temp 0 --json"), 0);
    const char *t = strstr(g_out, "\"tokens\": [");
    assert_non_null(t);
    int n = 1;
    for (const char *c = t + 11; *c && *c != ']'; c++)
        n += *c == ',';
    assert_int_equal(n, 6);
    assert_non_null(strstr(g_out, "\"n_prompt\": 4"));
    /* Greedy is deterministic: the same ids again. */
    char first[1024];
    snprintf(first, sizeof first, "%.*s", (int)(strchr(t, ']') - t), t);
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5,6,7,8 -n 6 --temp 0 --json -t 1"), 0);
    assert_non_null(strstr(g_out, first));
    /* Seeded sampling is reproducible too. */
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5 -n 8 --seed 3 --json"), 0);
    snprintf(first, sizeof first, "%.*s", (int)(strchr(strstr(g_out, "\"tokens\""), ']') -
                                                  strstr(g_out, "\"tokens\"")),
             strstr(g_out, "\"tokens\""));
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5 -n 8 --seed 3 --json"), 0);
    assert_non_null(strstr(g_out, first));
}

static float *read_logits(const char *name, size_t *n)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    size_t size = 0;
    float *f = exsa_test_read_file(path, &size);
    assert_non_null(f);
    *n = size / sizeof(float);
    return f;
}

static void test_dump_logits_and_kv_types(void **state)
{
    (void)state;
    const char *ids = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20";
    assert_int_equal(exsa("run -m m.gguf --prompt-ids %s -n 0 --kv-type f32 -b 7 "
                          "--dump-logits l32.f32", ids), 0);
    size_t n;
    float *l32 = read_logits("l32.f32", &n);
    assert_int_equal(n, 20 * 600);
    assert_int_equal(exsa("run -m m.gguf --prompt-ids %s -n 0 --dump-logits l16.f32", ids), 0);
    size_t n16;
    float *l16 = read_logits("l16.f32", &n16);
    assert_int_equal(n16, n);
    double e = exsa_test_rel_l2(l16, l32, n);
    printf("f16 vs f32 kv: %.3g\n", e);
    assert_true(e > 0 && e < 2e-3);
    free(l32);
    free(l16);
}

static void test_quantize_every_type(void **state)
{
    (void)state;
    const char *ids = "3,1,4,1,5,9,2,6,5,3,5,8,9,7,9,3";
    assert_int_equal(exsa("run -m m.gguf --prompt-ids %s -n 0 --kv-type f32 "
                          "--dump-logits src.f32", ids), 0);
    size_t n;
    float *src = read_logits("src.f32", &n);
    /* Bounds: ~1.5x the error measured on this model (printed; close to
     * llama.cpp's own figures in fixtures/README.md); a wrong block layout
     * gives ~1.4 (uncorrelated logits). */
    const struct { const char *type; double bound; } cases[] = {
        {"F16", 1e-3},    {"BF16", 8e-3},   {"Q8_0", 3e-2},   {"Q6_K", 7e-2},
        {"Q5_1", 0.15},   {"Q5_0", 0.15},   {"Q5_K", 0.15},   {"Q4_1", 0.3},
        {"Q4_0", 0.3},    {"Q4_K", 0.3},    {"Q4_K_M", 0.25}, {"Q3_K", 0.5},
        {"Q3_K_M", 0.45}, {"Q2_K", 0.95},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(exsa("quantize m.gguf q.gguf %s", cases[i].type), 0);
        assert_int_equal(exsa("info q.gguf"), 0);
        assert_non_null(strstr(g_out, "tokenizer.ggml.tokens")); /* metadata kept */
        assert_int_equal(exsa("run -m q.gguf --prompt-ids %s -n 0 --kv-type f32 "
                              "--dump-logits q.f32", ids), 0);
        size_t nq;
        float *q = read_logits("q.f32", &nq);
        assert_int_equal(nq, n);
        double e = exsa_test_rel_l2(q, src, n);
        printf("QUANTERR %-7s rel_l2=%.3g (bound %.3g)\n", cases[i].type, e, cases[i].bound);
        if (!(e < cases[i].bound))
            fail_msg("quantize %s: logits rel L2 %.3g >= %.3g", cases[i].type, e,
                     cases[i].bound);
        free(q);
    }
    free(src);
}

static void test_bench_json(void **state)
{
    (void)state;
    assert_int_equal(exsa("bench -m m.gguf -p 16 -n 4 -r 2 --json"), 0);
    assert_non_null(strstr(g_out, "\"test\": \"pp16\""));
    assert_non_null(strstr(g_out, "\"test\": \"tg4\""));
    assert_non_null(strstr(g_out, "\"avg_ts\": "));
    assert_non_null(strstr(g_out, "\"stddev_ts\": "));
    assert_non_null(strstr(g_out, "\"model_type\": \"llama"));
    assert_non_null(strstr(g_out, "\"n_prompt\": 16, \"n_gen\": 0"));
}

/* Speculative decoding from the command line: run --spec prints the same
 * ids, bench --spec-prompt compares both and reports guesses. */
static void test_speculative(void **state)
{
    (void)state;
    static char plain[1 << 16];
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5,6,7,8,5,6,7,8,5,6,7 -n 24 --temp 0 "
                          "--ignore-eos --json"), 0);
    const char *ids = strstr(g_out, "\"tokens\"");
    assert_non_null(ids);
    snprintf(plain, sizeof plain, "%.*s", (int)(strchr(ids, ']') - ids), ids);
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5,6,7,8,5,6,7,8,5,6,7 -n 24 --temp 0 "
                          "--ignore-eos --json --spec --draft-min 1"), 0);
    assert_non_null(strstr(g_out, plain));
    assert_int_equal(exsa("bench -m m.gguf --spec-prompt 'one two one two one two' -n 16 -r 1 "
                          "--draft-min 1 --json"), 0);
    assert_non_null(strstr(g_out, "\"proposer\": \"n-gram\""));
    assert_non_null(strstr(g_out, "\"speedup\": "));
    assert_int_equal(exsa("bench -m m.gguf --spec-prompt 'a b a b' -n 8 -r 1 -md m.gguf"), 0);
    assert_non_null(strstr(g_out, "draft model"));
    expect_fail("draft-max", "--draft-max must be in", exsa("run -m m.gguf --prompt-ids 1 --draft-max -1"));
    expect_fail("draft p-min", "--draft-p-min must be in",
                exsa("run -m m.gguf --prompt-ids 1 --draft-p-min 3"));
    expect_fail("draft missing", "nope.gguf", exsa("run -m m.gguf --prompt-ids 1 -md nope.gguf"));
}

static void test_errors(void **state)
{
    (void)state;
    expect_fail("missing file", "nope.gguf", exsa("run -m nope.gguf --prompt-ids 1"));
    expect_fail("missing file info", "nope.gguf", exsa("info nope.gguf"));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "echo 'not a model' > %s/text.gguf", g_dir);
    assert_int_equal(system(cmd), 0);
    expect_fail("text file", "gguf", exsa("run -m text.gguf --prompt-ids 1"));
    snprintf(cmd, sizeof cmd, "head -c 100000 %s/m.gguf > %s/cut.gguf", g_dir, g_dir);
    assert_int_equal(system(cmd), 0);
    expect_fail("truncated model", "gguf", exsa("run -m cut.gguf --prompt-ids 1"));
    expect_fail("unknown flag", "unknown option '--frob'", exsa("run -m m.gguf --frob"));
    expect_fail("bad -n", "-n must be in", exsa("run -m m.gguf --prompt-ids 1 -n -5"));
    expect_fail("bad temp", "--temp expects a number", exsa("run -m m.gguf --prompt-ids 1 --temp abc"));
    expect_fail("bad top-p", "--top-p must be in", exsa("run -m m.gguf --prompt-ids 1 --top-p 2"));
    expect_fail("missing value", "-n needs a value", exsa("run -m m.gguf --prompt-ids 1 -n"));
    expect_fail("bad ids", "--prompt-ids expects", exsa("run -m m.gguf --prompt-ids 1,x"));
    expect_fail("id out of vocab", "out of the vocabulary", exsa("run -m m.gguf --prompt-ids 600"));
    expect_fail("no prompt", "give a prompt", exsa("run -m m.gguf"));
    expect_fail("bad kv type", "--kv-type must be", exsa("run -m m.gguf --prompt-ids 1 --kv-type q4_0"));
    expect_fail("bad logit bias", "--logit-bias expects", exsa("run -m m.gguf --prompt-ids 1 --logit-bias 5"));
    expect_fail("bias token", "logit_bias", exsa("run -m m.gguf --prompt-ids 1 --logit-bias 9999+1"));
    expect_fail("ctx too small", "exceeds the context", exsa("run -m m.gguf --prompt-ids 1,2,3 -c 2"));
    expect_fail("quantize type", "unknown type 'Q9_9'", exsa("quantize m.gguf o.gguf Q9_9"));
    expect_fail("quantize args", "needs IN.gguf OUT.gguf TYPE", exsa("quantize m.gguf"));
    expect_fail("quantize same", "same file", exsa("quantize m.gguf m.gguf Q8_0"));
    expect_fail("gen-model kv heads", "must divide", exsa("gen-model x.gguf --heads 4 --kv-heads 3"));
    expect_fail("gen-model arch", "--arch", exsa("gen-model x.gguf --arch gpt9"));
    expect_fail("bench nothing", "nothing to do", exsa("bench -m m.gguf -p 0 -n 0"));
    expect_fail("info no model", "missing MODEL", exsa("info"));
}

static void test_tokenize_and_prompt(void **state)
{
    (void)state;
    /* Exsa's own vocabulary: ids 0..255 are the bytes, merges only join
     * lowercase letters and spaces, so punctuation stays byte by byte. */
    assert_int_equal(exsa("tokenize -m m.gguf '{}!'"), 0);
    assert_string_equal(g_out, "[123, 125, 33]\n");
    assert_int_equal(exsa("tokenize -m m.gguf --bos --pieces '{'"), 0);
    assert_string_equal(g_out, "[[598, \"<s>\"], [123, \"{\"]]\n");
    char cmd[600];
    snprintf(cmd, sizeof cmd, "printf '%%s' '()' | %s tokenize -m %s/m.gguf", EXSA_BIN, g_dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(g_out, 1, sizeof g_out - 1, p);
    g_out[n] = '\0';
    assert_int_equal(pclose(p), 0);
    assert_string_equal(g_out, "[40, 41]\n");
    /* -p tokenizes (BOS added): same tokens as --prompt-ids with the ids. */
    assert_int_equal(exsa("run -m m.gguf -p '{}!' -n 5 --temp 0 --json"), 0);
    assert_non_null(strstr(g_out, "\"n_prompt\": 4"));
    char *t = strstr(g_out, "\"tokens\"");
    assert_non_null(t);
    char first[256];
    snprintf(first, sizeof first, "%.*s", (int)(strchr(t, ']') - t), t);
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 598,123,125,33 -n 5 --temp 0 --json"), 0);
    assert_non_null(strstr(g_out, first));
    expect_fail("tokenize no model", "missing -m", exsa("tokenize x"));

    const char *fx = exsa_test_fixtures_dir();
    if (!fx) {
        printf("fixtures absent: real-vocabulary tokenize check not run\n");
        return;
    }
    assert_int_equal(exsa("tokenize -m %s/vocab/ggml-vocab-llama-spm.gguf --bos 'Hello world'", fx), 0);
    assert_string_equal(g_out, "[1, 15043, 3186]\n");
    assert_int_equal(exsa("tokenize -m %s/vocab/ggml-vocab-llama-spm.gguf '<s>'", fx), 0);
    assert_string_not_equal(g_out, "[1]\n");
    assert_int_equal(exsa("tokenize -m %s/vocab/ggml-vocab-llama-spm.gguf --special '<s>'", fx), 0);
    assert_string_equal(g_out, "[1]\n");

    /* gen-model --vocab FILE: the model tokenizes like the vocabulary file
     * (known ids), has its size, and runs. */
    assert_int_equal(exsa("gen-model spm.gguf --vocab %s/vocab/ggml-vocab-llama-spm.gguf "
                          "--embd 64 --layers 1 --heads 2 --kv-heads 2 --ff 64 --type Q4_0",
                          fx), 0);
    assert_int_equal(exsa("tokenize -m spm.gguf --bos 'Hello world'"), 0);
    assert_string_equal(g_out, "[1, 15043, 3186]\n");
    assert_int_equal(exsa("info -m spm.gguf"), 0);
    assert_non_null(strstr(g_out, "32000"));
    assert_int_equal(exsa("run -m spm.gguf -p 'Hello' -n 4 --temp 0"), 0);
    expect_fail("gen-model bad vocab", "cannot open",
                exsa("gen-model x.gguf --vocab %s/nonexistent.gguf", fx));
    expect_fail("gen-model vocab not a gguf", "gguf",
                exsa("gen-model x.gguf --vocab %s/README.md", fx));
}

/* Runs "printf INPUT | exsa ARGS" (stdin not a tty); same capture as exsa(),
 * stderr too when with_stderr. */
static int exsa_stdin2(const char *input, const char *args, int with_stderr)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd %s && printf '%s' | %s %s %s", g_dir, input, EXSA_BIN, args,
             with_stderr ? "2>&1" : "2>/dev/null");
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(g_out, 1, sizeof g_out - 1, p);
    g_out[n] = '\0';
    int st = pclose(p);
    return WIFSIGNALED(st) ? -1000 - WTERMSIG(st) : WEXITSTATUS(st);
}

static int exsa_stdin(const char *input, const char *args)
{
    return exsa_stdin2(input, args, 1);
}

static void test_template_cmd(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/msgs.json", g_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
          " {\"role\": \"user\", \"content\": \"Hi \\u00e9\"}]}", f);
    fclose(f);
    const char *chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi "
                         "\xc3\xa9<|im_end|>\n<|im_start|>assistant\n";
    assert_int_equal(exsa("template --template chatml msgs.json"), 0);
    assert_string_equal(g_out, chatml);
    /* A model without tokenizer.chat_template falls back to chatml. */
    assert_int_equal(exsa("template -m m.gguf msgs.json"), 0);
    assert_string_equal(g_out, chatml);
    assert_int_equal(exsa("template --template chatml --no-generation-prompt msgs.json"), 0);
    assert_null(strstr(g_out, "assistant"));
    snprintf(path, sizeof path, "%s/t.jinja", g_dir);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs("{% for m in messages %}[{{ m.role | upper }}:{{ m.content }}]{% endfor %}"
          "{% if add_generation_prompt %}>{% endif %}", f);
    fclose(f);
    assert_int_equal(exsa("template --template t.jinja msgs.json"), 0);
    assert_string_equal(g_out, "[SYSTEM:Be brief.][USER:Hi \xc3\xa9]>");
    expect_fail("template bad name", "neither a built-in name nor a readable file",
                exsa("template --template nosuch msgs.json"));
    expect_fail("template bad json", "line", exsa("template --template chatml m.gguf"));
    expect_fail("template no messages", "missing MESSAGES", exsa("template --template chatml"));
}

static void test_chat_cmd(void **state)
{
    (void)state;
    /* Answers on stdout; the stats lines go to stderr. */
    assert_int_equal(exsa_stdin2("/set temp 0\\nhello\\n", "chat -m m.gguf -n 6", 0), 0);
    assert_non_null(strstr(g_out, "(temp = 0)"));
    char first[2048];
    snprintf(first, sizeof first, "%s", strstr(g_out, ")\n") + 2);
    /* The -n cap ends the answer with a marker. */
    assert_non_null(strstr(first, " [length]\n"));
    /* Greedy turns are reproducible; a second turn reuses the cache. */
    assert_int_equal(exsa_stdin2("/set temp 0\\nhello\\nmore\\n/clear\\nhello\\n/quit\\nnot read\\n",
                                 "chat -m m.gguf -n 6", 0), 0);
    assert_non_null(strstr(g_out, first));
    assert_non_null(strstr(g_out, "(conversation cleared)"));
    const char *again = strstr(strstr(g_out, "(conversation cleared)"), "\n") + 1;
    assert_string_equal(again, first);
    /* /set n 3: the same greedy answer cut at 3 tokens, marked [length];
     * the stats line counts them. */
    assert_int_equal(exsa_stdin("/set temp 0\\n/set n 3\\nhello\\n", "chat -m m.gguf"), 0);
    assert_non_null(strstr(g_out, "(n = 3)"));
    const char *ans = strstr(g_out, "(n = 3)\n") + 8;
    const char *mark = strstr(ans, " [length]\n");
    assert_non_null(mark);
    assert_true(mark - ans > 0 && strncmp(first, ans, (size_t)(mark - ans)) == 0);
    assert_non_null(strstr(mark, "[3 tokens, "));
    assert_non_null(strstr(mark, " t/s; prompt "));
    /* /help lists the chat's commands, not the command-line usage. */
    assert_int_equal(exsa_stdin("/help\\n", "chat -m m.gguf"), 0);
    assert_non_null(strstr(g_out, "/set n N"));
    assert_non_null(strstr(g_out, "/clear"));
    assert_non_null(strstr(g_out, "/quit"));
    assert_null(strstr(g_out, "usage: exsa"));
    assert_int_equal(exsa_stdin("/set top-p 7\\n/bogus\\n/set n x\\n", "chat -m m.gguf"), 0);
    assert_non_null(strstr(g_out, "--top-p must be in"));
    assert_non_null(strstr(g_out, "unknown command '/bogus'"));
    assert_non_null(strstr(g_out, "n expects an integer"));
    expect_fail("chat no model", "missing -m", exsa("chat"));

    /* Ctrl-C at the prompt keeps the conversation going: SIGINT while chat
     * waits for a line, then a question still gets its answer. (env resets
     * SIGINT, which sh ignores in background jobs.) */
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "cd %s && rm -f fifo && mkfifo fifo && "
             "{ env --default-signal=INT %s chat -m m.gguf < fifo > chat.out 2>&1 & "
             "pid=$!; exec 3> fifo; "
             "printf '/set n 2\\n' >&3; "
             "for i in $(seq 300); do grep -q 'n = 2' chat.out && break; sleep 0.1; done; "
             "kill -INT $pid; sleep 0.3; printf 'hello\\n/quit\\n' >&3; exec 3>&-; "
             "wait $pid; echo \"rc=$?\" >> chat.out; }",
             g_dir, EXSA_BIN);
    assert_int_equal(system(cmd), 0);
    char path[512];
    snprintf(path, sizeof path, "%s/chat.out", g_dir);
    size_t size;
    char *out = exsa_test_read_file(path, &size);
    assert_non_null(out);
    out = realloc(out, size + 1);
    out[size] = 0;
    if (!strstr(out, "[length]") || !strstr(out, "rc=0"))
        fail_msg("chat after SIGINT:\n%s", out);
    free(out);
}

/* Parses the first JSON array of integers in s into ids; returns the count. */
static int parse_id_array(const char *s, int32_t *ids, int cap)
{
    const char *c = strchr(s, '[');
    int n = 0;
    if (!c)
        return 0;
    for (c++; *c && *c != ']';) {
        char *end;
        long v = strtol(c, &end, 10);
        if (end == c) {
            c++;
            continue;
        }
        if (n < cap)
            ids[n] = (int32_t)v;
        n++;
        c = end;
    }
    return n;
}

static double json_number(const char *s, const char *key)
{
    char k[64];
    snprintf(k, sizeof k, "\"%s\": ", key);
    const char *p = strstr(s, k);
    if (!p)
        fail_msg("no \"%s\" in:\n%s", key, s);
    return strtod(p + strlen(k), NULL);
}

/* Mean NLL of the second half of each chunk, computed here from
 * `exsa run --dump-logits` of the chunk's tokens (first replaced by bos
 * when bos >= 0), scoring the tokens after position first (n_ctx / 2):
 * llama-perplexity's definition, written independently of
 * cmd_perplexity.c. Returns the PPL; *err gets its error estimate. */
static double reference_ppl(const int32_t *ids, int n_chunk, int n_ctx, int first, int32_t bos,
                            double *err)
{
    double nll = 0, nll2 = 0;
    int count = 0;
    for (int k = 0; k < n_chunk; k++) {
        char list[8192];
        size_t off = 0;
        for (int i = 0; i < n_ctx; i++) {
            int32_t t = i == 0 && bos >= 0 ? bos : ids[k * n_ctx + i];
            off += (size_t)snprintf(list + off, sizeof list - off, "%s%d", i ? "," : "", t);
        }
        assert_int_equal(exsa("run -m m.gguf --prompt-ids %s -n 0 --kv-type f32 "
                              "--dump-logits chunk.f32", list), 0);
        size_t n;
        float *l = read_logits("chunk.f32", &n);
        assert_int_equal(n, (size_t)n_ctx * 600);
        for (int i = first; i < n_ctx - 1; i++) {
            const float *row = l + (size_t)i * 600;
            double mx = row[0], sum = 0;
            for (int v = 1; v < 600; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < 600; v++)
                sum += exp((double)row[v] - mx);
            double x = mx + log(sum) - row[ids[k * n_ctx + i + 1]];
            nll += x, nll2 += x * x, count++;
        }
        free(l);
    }
    double mean = nll / count, ppl = exp(mean);
    *err = ppl * sqrt((nll2 / count - mean * mean) / (count - 1));
    return ppl;
}

static void test_perplexity(void **state)
{
    (void)state;
    /* A text of lowercase words (merged tokens) and punctuation (bytes). */
    static const char *words[] = {"the", "cat", "sat", "on", "a", "mat", "while", "dogs",
                                  "ran", "far", "away", "from", "home", ",", ".", "quietly"};
    char path[512];
    snprintf(path, sizeof path, "%s/text.txt", g_dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    uint64_t st = 42;
    for (int i = 0; i < 400; i++)
        fprintf(f, "%s%s", i ? " " : "", words[exsa_test_rand_u64(&st) % 16]);
    fclose(f);
    assert_int_equal(exsa("tokenize -m m.gguf --bos < text.txt"), 0);
    static int32_t ids[4096];
    int n_tok = parse_id_array(g_out, ids, 4096);
    assert_true(n_tok > 200 && n_tok < 4096);
    assert_int_equal(ids[0], 598);
    const int n_ctx = 32, n_chunk = n_tok / n_ctx;

    double ref_err, ref = reference_ppl(ids, n_chunk, n_ctx, n_ctx / 2, 598, &ref_err);
    /* The reference tells the variants apart: without BOS at each chunk's
     * start, or with the window one token early, it differs, so a
     * perplexity that got either wrong fails below. */
    double x_err, nobos = reference_ppl(ids, n_chunk, n_ctx, n_ctx / 2, -1, &x_err);
    double early = reference_ppl(ids, n_chunk, n_ctx, n_ctx / 2 - 1, 598, &x_err);
    printf("reference PPL %.6f +/- %.6f (without BOS %.6f, window one early %.6f), %d chunks\n",
           ref, ref_err, nobos, early, n_chunk);
    assert_true(fabs(nobos / ref - 1) > 1e-4);
    assert_true(fabs(early / ref - 1) > 1e-4);

    /* One chunk per pass, a chunk split over passes, several per pass. */
    const char *batches[] = {"32", "10", "64", "96"};
    for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++) {
        assert_int_equal(exsa("perplexity -m m.gguf -f text.txt -c 32 -b %s --kv-type f32 "
                              "--json -t 2", batches[b]), 0);
        double ppl = json_number(g_out, "ppl"), err = json_number(g_out, "ppl_error");
        printf("exsa perplexity -b %s: PPL %.6f +/- %.6f\n", batches[b], ppl, err);
        assert_int_equal((int)json_number(g_out, "n_tokens"), n_tok);
        assert_int_equal((int)json_number(g_out, "n_chunks"), n_chunk);
        assert_int_equal((int)json_number(g_out, "tokens_scored"), n_chunk * (n_ctx / 2 - 1));
        assert_int_equal((int)json_number(g_out, "tokens_evaluated"), n_chunk * n_ctx);
        if (!(fabs(ppl / ref - 1) < 2e-5 && fabs(err / ref_err - 1) < 1e-3))
            fail_msg("-b %s: PPL %.6f +/- %.6f, reference %.6f +/- %.6f", batches[b], ppl, err,
                     ref, ref_err);
    }
    /* --chunks 2: the first two chunks only. */
    double ref2_err, ref2 = reference_ppl(ids, 2, n_ctx, n_ctx / 2, 598, &ref2_err);
    assert_int_equal(exsa("perplexity -m m.gguf -f text.txt -c 32 --chunks 2 --kv-type f32 "
                          "--json"), 0);
    assert_true(fabs(json_number(g_out, "ppl") / ref2 - 1) < 2e-5);
    /* Text report: running values per chunk and the final line. */
    assert_int_equal(exsa("perplexity -m m.gguf -f text.txt -c 32 --chunks 3"), 0);
    assert_non_null(strstr(g_out, "[1]"));
    assert_non_null(strstr(g_out, ",[3]"));
    assert_non_null(strstr(g_out, "Final estimate: PPL = "));
    assert_non_null(strstr(g_out, " t/s)"));

    expect_fail("ppl missing file", "cannot open 'nope.txt'",
                exsa("perplexity -m m.gguf -f nope.txt"));
    expect_fail("ppl short text", "needs at least 4096 tokens",
                exsa("perplexity -m m.gguf -f text.txt -c 2048"));
    expect_fail("ppl bad batch", "-b (48) must be below -c (32) or a multiple of it",
                exsa("perplexity -m m.gguf -f text.txt -c 32 -b 48"));
    expect_fail("ppl bad ctx", "-c must be in", exsa("perplexity -m m.gguf -f text.txt -c 2"));
    expect_fail("ppl no file", "missing -f", exsa("perplexity -m m.gguf"));
    expect_fail("ppl flag", "unknown option '--frob'", exsa("perplexity -m m.gguf --frob"));
}

/* The single-sequence loop `exsa run` had before it became an engine
 * client, written here on the model and sampler APIs: the prompt in one
 * pass, the sampler fed the prompt, then one row per generated token. */
static void loop_generate(const char *model, const int32_t *prompt, int n_prompt,
                          const exsa_sampling_params *sp, int n_gen, int32_t *out)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, model);
    exsa_err err = {0};
    exsa_model *m = exsa_model_load(path, &err);
    assert_non_null(m);
    exsa_model_ctx_params cp;
    exsa_model_ctx_params_default(&cp);
    cp.n_ctx = 256;
    cp.max_batch = 64;
    exsa_model_ctx *c = exsa_model_ctx_create(m, &cp, &err);
    assert_non_null(c);
    const int V = exsa_model_hparams(m)->n_vocab;
    float *logits = malloc((size_t)V * sizeof *logits);
    exsa_sampler *smp = exsa_sampler_create(sp, V, &err);
    assert_non_null(smp);
    int32_t pos[64], seq[64] = {0}, tok[64];
    uint8_t want[64];
    for (int i = 0; i < n_prompt; i++) {
        tok[i] = prompt[i], pos[i] = i, want[i] = i == n_prompt - 1;
        exsa_sampler_accept(smp, prompt[i]);
    }
    exsa_batch b = {.n = n_prompt, .token = tok, .pos = pos, .seq = seq, .logits = want};
    assert_int_equal(exsa_model_forward(c, &b, logits, &err), 0);
    for (int k = 0; k < n_gen; k++) {
        int32_t t = exsa_sampler_sample(smp, logits);
        exsa_sampler_accept(smp, t);
        out[k] = t;
        int32_t p = n_prompt + k;
        uint8_t one = 1;
        exsa_batch d = {.n = 1, .token = &t, .pos = &p, .seq = seq, .logits = &one};
        assert_int_equal(exsa_model_forward(c, &d, logits, &err), 0);
    }
    exsa_sampler_free(smp);
    free(logits);
    exsa_model_ctx_free(c);
    exsa_model_free(m);
}

static void test_run_matches_model_loop(void **state)
{
    (void)state;
    const int32_t prompt[] = {5, 6, 7, 8, 300, 12};
    int32_t want[16], got[32];
    exsa_sampling_params sp;
    exsa_sampling_params_default(&sp);
    sp.temperature = 0;
    loop_generate("m.gguf", prompt, 6, &sp, 16, want);
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5,6,7,8,300,12 -n 16 --temp 0 "
                          "--ignore-eos --json"), 0);
    assert_int_equal(parse_id_array(strstr(g_out, "\"tokens\""), got, 32), 16);
    assert_memory_equal(got, want, sizeof want);
    assert_non_null(strstr(g_out, "\"finish_reason\": \"length\""));
    /* Seeded sampling with penalties and truncations draws the same. */
    exsa_sampling_params_default(&sp);
    sp.seed = 3;
    sp.top_k = 20;
    sp.repeat_penalty = 1.3f;
    sp.presence_penalty = 0.5f;
    loop_generate("m.gguf", prompt, 6, &sp, 16, want);
    assert_int_equal(exsa("run -m m.gguf --prompt-ids 5,6,7,8,300,12 -n 16 --seed 3 --top-k 20 "
                          "--repeat-penalty 1.3 --presence-penalty 0.5 --ignore-eos --json"), 0);
    assert_int_equal(parse_id_array(strstr(g_out, "\"tokens\""), got, 32), 16);
    assert_memory_equal(got, want, sizeof want);

    /* --stop: the text ends before the first occurrence of the stop string
     * (two lowercase letters picked from the greedy text). */
    assert_int_equal(exsa("run -m m.gguf -p 'hello there' -n 24 --temp 0 --ignore-eos --json"), 0);
    char text[4096];
    const char *t = strstr(g_out, "\"text\": \"");
    assert_non_null(t);
    t += 9;
    snprintf(text, sizeof text, "%.*s", (int)(strstr(t, "\", \"finish_reason\"") - t), t);
    char stop[3] = {0};
    for (size_t i = 3; text[i] && text[i + 1] && !stop[0]; i++)
        if (text[i] >= 'a' && text[i] <= 'z' && text[i + 1] >= 'a' && text[i + 1] <= 'z')
            stop[0] = text[i], stop[1] = text[i + 1];
    if (!stop[0]) {
        printf("no letter pair in '%s': --stop check not run\n", text);
        return;
    }
    size_t cut = (size_t)(strstr(text, stop) - text);
    assert_int_equal(exsa("run -m m.gguf -p 'hello there' -n 24 --temp 0 --ignore-eos --json "
                          "--stop %s", stop), 0);
    char expect[4200];
    snprintf(expect, sizeof expect, "\"text\": \"%.*s\", \"finish_reason\": \"stop\"", (int)cut,
             text);
    if (!strstr(g_out, expect))
        fail_msg("--stop %s: wanted %s in\n%s", stop, expect, g_out);
}

static void test_other_archs(void **state)
{
    (void)state;
    assert_int_equal(exsa("gen-model q2.gguf --arch qwen2 --embd 64 --heads 4 --kv-heads 2 "
                          "--ff 128 --vocab 300 --type Q8_0"), 0);
    assert_int_equal(exsa("run -m q2.gguf --prompt-ids 1,2,3 -n 4 --json"), 0);
    assert_int_equal(exsa("gen-model q3.gguf --arch qwen3 --embd 64 --heads 4 --kv-heads 1 "
                          "--head-dim 32 --ff 128 --vocab 300 --type F16"), 0);
    assert_int_equal(exsa("info q3.gguf"), 0);
    assert_non_null(strstr(g_out, "head dim 32"));
    assert_non_null(strstr(g_out, "q/k norm"));
    assert_int_equal(exsa("run -m q3.gguf --prompt-ids 1,2,3 -n 4 --kv-type q8_0"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help),
        cmocka_unit_test(test_info),
        cmocka_unit_test(test_run_json_greedy),
        cmocka_unit_test(test_dump_logits_and_kv_types),
        cmocka_unit_test(test_quantize_every_type),
        cmocka_unit_test(test_bench_json),
        cmocka_unit_test(test_speculative),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_tokenize_and_prompt),
        cmocka_unit_test(test_template_cmd),
        cmocka_unit_test(test_chat_cmd),
        cmocka_unit_test(test_other_archs),
        cmocka_unit_test(test_perplexity),
        cmocka_unit_test(test_run_matches_model_loop),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
