/* Model registry: load / list / active / acquire / release, and the promise
 * that unload and reload never cut a running request short.
 *
 * Two tiny random models are generated into a temp dir. The reference output
 * of a greedy request is taken from a standalone engine (no registry); every
 * request run through the registry, across unloads and reloads, must produce
 * exactly those tokens and finish by length. Engines being freed at the last
 * release is checked through list() and by ASan's leak check.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "exsa.h"
#include "model/model_gen.h"
#include "test_util.h"

#define DERIVED "model-b" /* the default id of g_model_b: its file name without .gguf */
#define REF_TOKENS 40

static char g_dir[64];
static char g_model_a[128], g_model_b[128];
static char g_copy_dir[96], g_copy_b[160]; /* another model-b.gguf (a link to A) */
static int32_t g_prompt[8];
static int32_t g_ref[REF_TOKENS];

static void engine_params(exsa_engine_params *p, const char *path, const char *name)
{
    exsa_engine_params_default(p);
    p->model_path = path;
    p->name = name;
    p->n_threads = 1;
    p->n_ctx = 128;
    p->max_batch_size = 4;
    p->max_batch_tokens = 64;
}

static void request_params(exsa_request_params *rp, int max_tokens)
{
    exsa_request_params_default(rp);
    rp->prompt_ids = g_prompt;
    rp->n_prompt_ids = 8;
    rp->max_tokens = max_tokens;
    rp->sampling.temperature = 0;
    rp->ignore_eos = 1;
}

/* Reads a stream to its end; returns the finish reason. first: tokens
 * already read by the caller. */
static int drain(exsa_request *r, int32_t *tok, int *n, int cap)
{
    for (;;) {
        exsa_event ev;
        if (exsa_request_next(r, &ev, 30000) != 0)
            return -1;
        if (ev.type == EXSA_EVENT_DONE)
            return ev.finish;
        if (*n < cap)
            tok[*n] = ev.token;
        (*n)++;
    }
}

static exsa_request *submit(exsa_engine *e, int max_tokens)
{
    exsa_request_params rp;
    request_params(&rp, max_tokens);
    exsa_err err = {0};
    exsa_request *r = exsa_engine_submit(e, &rp, &err);
    if (!r)
        print_error("submit: %s\n", err.msg);
    return r;
}

/* The full reference request on e; asserts it matches g_ref. */
static void run_ref(exsa_engine *e)
{
    exsa_request *r = submit(e, REF_TOKENS);
    assert_non_null(r);
    int32_t tok[REF_TOKENS + 4];
    int n = 0;
    assert_int_equal(drain(r, tok, &n, REF_TOKENS + 4), EXSA_FINISH_LENGTH);
    assert_int_equal(n, REF_TOKENS);
    assert_memory_equal(tok, g_ref, sizeof g_ref);
    exsa_request_free(r);
}

static int gen(const char *path, uint64_t seed, const char *arch)
{
    exsa_gen_params p;
    exsa_gen_params_default(&p);
    p.arch = arch;
    p.n_embd = 64;
    p.n_layer = 2;
    p.n_head = 4;
    p.n_head_kv = 2;
    p.n_ff = 128;
    p.n_vocab = 300;
    p.n_ctx_train = 512;
    p.seed = seed;
    p.n_threads = 1;
    exsa_err err = {0};
    if (exsa_ftype_parse("F32", &p.ftype, &err) ||
        exsa_model_generate(path, &p, NULL, NULL, &err)) {
        fprintf(stderr, "generate: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/exsa_registry_XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_model_a, sizeof g_model_a, "%s/model-a.gguf", g_dir);
    snprintf(g_model_b, sizeof g_model_b, "%s/model-b.gguf", g_dir);
    if (gen(g_model_a, 7, "llama") || gen(g_model_b, 8, "qwen2"))
        return -1;
    snprintf(g_copy_dir, sizeof g_copy_dir, "%s/copy", g_dir);
    snprintf(g_copy_b, sizeof g_copy_b, "%s/model-b.gguf", g_copy_dir);
    if (mkdir(g_copy_dir, 0700) || symlink(g_model_a, g_copy_b))
        return -1;
    uint64_t st = 99;
    for (int i = 0; i < 8; i++)
        g_prompt[i] = (int32_t)(exsa_test_rand_u64(&st) % 298);
    /* The reference: model A on a standalone engine, request alone. */
    exsa_engine_params p;
    engine_params(&p, g_model_a, NULL);
    exsa_err err = {0};
    exsa_engine *e = exsa_engine_create(&p, &err);
    if (!e) {
        fprintf(stderr, "engine: %s\n", err.msg);
        return -1;
    }
    exsa_request *r = submit(e, REF_TOKENS);
    int n = 0;
    int fin = r ? drain(r, g_ref, &n, REF_TOKENS) : -1;
    exsa_request_free(r);
    exsa_engine_free(e);
    if (fin != EXSA_FINISH_LENGTH || n != REF_TOKENS) {
        fprintf(stderr, "reference run failed (finish %d, %d tokens)\n", fin, n);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_copy_b);
    rmdir(g_copy_dir);
    unlink(g_model_a);
    unlink(g_model_b);
    rmdir(g_dir);
    return 0;
}

static exsa_registry *new_registry(void)
{
    exsa_err err = {0};
    exsa_registry *r = exsa_registry_create(&err);
    assert_non_null(r);
    return r;
}

static void load_ok(exsa_registry *reg, const char *path, const char *name, const char *want)
{
    exsa_engine_params p;
    engine_params(&p, path, name);
    char got[256] = "?";
    exsa_err err = {0};
    int rc = exsa_registry_load(reg, &p, got, sizeof got, &err);
    if (rc)
        print_error("load: %s\n", err.msg);
    assert_int_equal(rc, 0);
    assert_string_equal(got, want);
}

static void name_of(exsa_engine *e, char *out)
{
    exsa_model_info info;
    exsa_engine_model_info(e, &info);
    strcpy(out, info.name);
}

static void test_default_name(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"/m/SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1"},
        {"tiny.gguf", "tiny"},
        {"dir/x.GGUF", "x"},
        {"/a.b/noext", "noext"},
        {"/m/.gguf", ".gguf"}, /* nothing would be left: the whole name */
        {"/m/my model.gguf.gguf", "my model.gguf"},
    };
    char out[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        exsa_registry_default_name(cases[i][0], out, sizeof out);
        assert_string_equal(out, cases[i][1]);
    }
    exsa_registry_default_name("/m/abcdef.gguf", out, 4); /* truncated, terminated */
    assert_string_equal(out, "abc");
}

static void test_load_list_active(void **state)
{
    (void)state;
    exsa_registry *reg = new_registry();
    exsa_err err = {0};
    exsa_registry_entry ents[4];
    assert_int_equal(exsa_registry_ready(reg), 0);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 0);
    assert_null(exsa_registry_acquire(reg, NULL, &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "no model"));

    load_ok(reg, g_model_a, "alpha", "alpha");
    load_ok(reg, g_model_b, NULL, DERIVED); /* name from the file name */
    assert_int_equal(exsa_registry_ready(reg), 1);

    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    assert_string_equal(ents[0].name, "alpha");
    assert_string_equal(ents[0].path, g_model_a);
    assert_int_equal(ents[0].state, EXSA_MODEL_READY);
    assert_int_equal(ents[0].active, 1); /* the first loaded */
    assert_int_equal(ents[0].holders, 0);
    assert_string_equal(ents[1].name, DERIVED);
    assert_string_equal(ents[1].path, g_model_b);
    assert_int_equal(ents[1].active, 0);
    /* A short buffer gets what fits; the count is still the total. */
    memset(ents, 0, sizeof ents);
    assert_int_equal(exsa_registry_list(reg, ents, 1), 2);
    assert_string_equal(ents[0].name, "alpha");
    assert_string_equal(ents[1].name, "");
    assert_int_equal(exsa_registry_list(reg, NULL, 0), 2);

    /* Acquire by name and by default; the engines answer to those names. */
    char nm[256];
    exsa_engine *a = exsa_registry_acquire(reg, NULL, &err);
    assert_non_null(a);
    name_of(a, nm);
    assert_string_equal(nm, "alpha");
    exsa_engine *a2 = exsa_registry_acquire(reg, "", &err);
    assert_ptr_equal(a2, a);
    exsa_engine *b = exsa_registry_acquire(reg, DERIVED, &err);
    assert_non_null(b);
    assert_ptr_not_equal(b, a);
    name_of(b, nm);
    assert_string_equal(nm, DERIVED);
    exsa_registry_list(reg, ents, 4);
    assert_int_equal(ents[0].holders, 2);
    assert_int_equal(ents[1].holders, 1);
    run_ref(a); /* alpha is model A */
    exsa_registry_release(reg, a);
    exsa_registry_release(reg, a2);
    exsa_registry_release(reg, b);
    exsa_registry_list(reg, ents, 4);
    assert_int_equal(ents[0].holders, 0);
    assert_int_equal(ents[1].holders, 0);

    assert_null(exsa_registry_acquire(reg, "nope", &err));
    assert_int_equal(err.code, EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "nope"));

    /* set_active */
    assert_int_equal(exsa_registry_set_active(reg, DERIVED, &err), 0);
    b = exsa_registry_acquire(reg, NULL, &err);
    name_of(b, nm);
    assert_string_equal(nm, DERIVED);
    exsa_registry_release(reg, b);
    exsa_registry_list(reg, ents, 4);
    assert_int_equal(ents[0].active, 0);
    assert_int_equal(ents[1].active, 1);
    assert_int_equal(exsa_registry_set_active(reg, "nope", &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "nope"));

    /* Duplicates: a given name, and a name that comes from the file. */
    exsa_engine_params p;
    engine_params(&p, g_model_b, "alpha");
    assert_int_equal(exsa_registry_load(reg, &p, NULL, 0, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "alpha"));
    /* Another file named model-b.gguf (in another directory): the error
     * names both files and how to pick another name. */
    engine_params(&p, g_copy_b, NULL);
    assert_int_equal(exsa_registry_load(reg, &p, NULL, 0, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "'" DERIVED "'"));
    assert_non_null(strstr(err.msg, g_model_b));
    assert_non_null(strstr(err.msg, g_copy_b));
    assert_non_null(strstr(err.msg, "--alias"));
    assert_non_null(strstr(err.msg, "\"name\""));
    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    /* With a name of its own it loads (then goes again). */
    load_ok(reg, g_copy_b, "b-copy", "b-copy");
    assert_int_equal(exsa_registry_unload(reg, "b-copy", &err), 0);
    /* A file that does not load leaves nothing behind. */
    char bad[160];
    snprintf(bad, sizeof bad, "%s/missing.gguf", g_dir);
    engine_params(&p, bad, "gamma");
    assert_true(exsa_registry_load(reg, &p, NULL, 0, &err) < 0);
    assert_non_null(strstr(err.msg, "missing.gguf"));
    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    assert_null(exsa_registry_acquire(reg, "gamma", &err));

    /* Unloading the active model hands "active" to the next one. */
    assert_int_equal(exsa_registry_unload(reg, DERIVED, &err), 0);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);
    assert_string_equal(ents[0].name, "alpha");
    assert_int_equal(ents[0].active, 1);
    assert_int_equal(exsa_registry_unload(reg, DERIVED, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, DERIVED));
    /* The freed name can be loaded again. */
    load_ok(reg, g_model_b, "beta", "beta");
    assert_int_equal(exsa_registry_unload(reg, "alpha", &err), 0);
    exsa_registry_list(reg, ents, 4);
    assert_string_equal(ents[0].name, "beta");
    assert_int_equal(ents[0].active, 1);
    assert_int_equal(exsa_registry_unload(reg, "beta", &err), 0);
    assert_int_equal(exsa_registry_ready(reg), 0);
    assert_null(exsa_registry_acquire(reg, NULL, &err));
    /* With none left, the next load becomes active. */
    load_ok(reg, g_model_a, NULL, "model-a");
    exsa_registry_list(reg, ents, 4);
    assert_int_equal(ents[0].active, 1);
    exsa_registry_free(reg); /* frees the engine still loaded */
}

static void test_unload_while_running(void **state)
{
    (void)state;
    exsa_registry *reg = new_registry();
    exsa_err err = {0};
    load_ok(reg, g_model_a, "alpha", "alpha");
    load_ok(reg, g_model_b, "beta", "beta");
    exsa_engine *e = exsa_registry_acquire(reg, "alpha", &err);
    assert_non_null(e);
    exsa_request *r = submit(e, REF_TOKENS);
    assert_non_null(r);
    /* Mid-stream: one token read, then the model is unloaded. */
    int32_t tok[REF_TOKENS + 4];
    int n = 0;
    exsa_event ev;
    assert_int_equal(exsa_request_next(r, &ev, 30000), 0);
    assert_int_equal(ev.type, EXSA_EVENT_TOKEN);
    tok[n++] = ev.token;
    assert_int_equal(exsa_registry_unload(reg, "alpha", &err), 0);

    /* Gone from lookup at once, still listed as draining with its holder. */
    assert_null(exsa_registry_acquire(reg, "alpha", &err));
    assert_non_null(strstr(err.msg, "alpha"));
    exsa_registry_entry ents[4];
    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    assert_string_equal(ents[0].name, "beta");
    assert_int_equal(ents[0].active, 1);
    assert_string_equal(ents[1].name, "alpha");
    assert_int_equal(ents[1].state, EXSA_MODEL_DRAINING);
    assert_int_equal(ents[1].holders, 1);
    assert_int_equal(ents[1].active, 0);
    /* A draining model cannot be made active. */
    assert_int_equal(exsa_registry_set_active(reg, "alpha", &err), EXSA_EINVAL);

    /* The request completes in full, exactly as alone. */
    assert_int_equal(drain(r, tok, &n, REF_TOKENS + 4), EXSA_FINISH_LENGTH);
    assert_int_equal(n, REF_TOKENS);
    assert_memory_equal(tok, g_ref, sizeof g_ref);
    /* A new request on the drained engine still works while held. */
    run_ref(e);
    exsa_request_free(r);
    exsa_registry_release(reg, e); /* the last holder frees it */
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);
    assert_string_equal(ents[0].name, "beta");
    /* A stray second release of a freed engine is ignored. */
    exsa_registry_release(reg, e);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);
    assert_int_equal(ents[0].holders, 0);

    /* Unload with no holder frees at once: nothing left draining. */
    assert_int_equal(exsa_registry_unload(reg, "beta", &err), 0);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 0);
    exsa_registry_free(reg);
}

static void test_reload(void **state)
{
    (void)state;
    exsa_registry *reg = new_registry();
    exsa_err err = {0};
    load_ok(reg, g_model_a, "alpha", "alpha");
    exsa_engine *e1 = exsa_registry_acquire(reg, "alpha", &err);
    assert_non_null(e1);
    /* A request queued on the old engine, held back by a pause. */
    exsa_engine_pause(e1, 1);
    exsa_request *r1 = submit(e1, REF_TOKENS);
    assert_non_null(r1);

    assert_int_equal(exsa_registry_reload(reg, "alpha", NULL, &err), 0);
    exsa_engine *e2 = exsa_registry_acquire(reg, NULL, &err);
    assert_non_null(e2);
    assert_ptr_not_equal(e2, e1);
    char nm[256];
    name_of(e2, nm);
    assert_string_equal(nm, "alpha");
    exsa_registry_entry ents[4];
    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    assert_string_equal(ents[0].name, "alpha");
    assert_int_equal(ents[0].state, EXSA_MODEL_READY);
    assert_int_equal(ents[0].holders, 1);
    assert_int_equal(ents[0].active, 1);
    assert_string_equal(ents[1].name, "alpha");
    assert_int_equal(ents[1].state, EXSA_MODEL_DRAINING);
    assert_int_equal(ents[1].holders, 1);
    run_ref(e2); /* the new engine serves */

    /* The old request finishes on the old engine, in full. */
    exsa_engine_pause(e1, 0);
    int32_t tok[REF_TOKENS + 4];
    int n = 0;
    assert_int_equal(drain(r1, tok, &n, REF_TOKENS + 4), EXSA_FINISH_LENGTH);
    assert_int_equal(n, REF_TOKENS);
    assert_memory_equal(tok, g_ref, sizeof g_ref);
    exsa_request_free(r1);
    exsa_registry_release(reg, e1);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);

    /* A failing reload keeps the old engine serving. */
    char bad[160];
    snprintf(bad, sizeof bad, "%s/missing.gguf", g_dir);
    exsa_engine_params p;
    engine_params(&p, bad, NULL);
    assert_true(exsa_registry_reload(reg, "alpha", &p, &err) < 0);
    assert_non_null(strstr(err.msg, "alpha"));
    assert_non_null(strstr(err.msg, "missing.gguf"));
    exsa_engine *e3 = exsa_registry_acquire(reg, "alpha", &err);
    assert_ptr_equal(e3, e2);
    run_ref(e3);
    exsa_registry_release(reg, e3);
    exsa_registry_release(reg, e2);
    assert_int_equal(exsa_registry_reload(reg, "nope", NULL, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "nope"));

    /* Reload with new parameters: they apply, the name stays, and a later
     * reload with p NULL reuses them. */
    engine_params(&p, g_model_b, "ignored");
    p.n_ctx = 64;
    assert_int_equal(exsa_registry_reload(reg, "alpha", &p, &err), 0);
    exsa_engine *e4 = exsa_registry_acquire(reg, "alpha", &err);
    exsa_model_info info;
    exsa_engine_model_info(e4, &info);
    assert_string_equal(info.name, "alpha");
    assert_string_equal(info.path, g_model_b);
    assert_int_equal(info.n_ctx, 64);
    exsa_registry_release(reg, e4);
    assert_int_equal(exsa_registry_reload(reg, "alpha", NULL, &err), 0);
    e4 = exsa_registry_acquire(reg, "alpha", &err);
    exsa_engine_model_info(e4, &info);
    assert_int_equal(info.n_ctx, 64);
    assert_string_equal(info.path, g_model_b);
    exsa_registry_list(reg, ents, 4);
    assert_string_equal(ents[0].path, g_model_b);
    exsa_registry_release(reg, e4);
    exsa_registry_free(reg);
}

/* A load blocked on a FIFO (open() waits for a writer) holds its name in
 * LOADING state for as long as the test wants. */
typedef struct loader {
    exsa_registry *reg;
    const char *path;
    int rc;
    exsa_err err;
} loader;

static void *loader_main(void *arg)
{
    loader *l = arg;
    exsa_engine_params p;
    engine_params(&p, l->path, "gamma");
    l->rc = exsa_registry_load(l->reg, &p, NULL, 0, &l->err);
    return NULL;
}

static void test_loading_state(void **state)
{
    (void)state;
    char fifo[160];
    snprintf(fifo, sizeof fifo, "%s/fifo.gguf", g_dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    exsa_registry *reg = new_registry();
    exsa_err err = {0};
    load_ok(reg, g_model_a, "alpha", "alpha");
    loader l = {.reg = reg, .path = fifo};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, loader_main, &l), 0);
    exsa_registry_entry ents[4];
    for (int i = 0; i < 5000 && exsa_registry_list(reg, ents, 4) < 2; i++)
        usleep(1000);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    assert_string_equal(ents[1].name, "gamma");
    assert_int_equal(ents[1].state, EXSA_MODEL_LOADING);
    assert_int_equal(ents[1].active, 0);

    /* Other models keep serving; the loading name is reserved. */
    exsa_engine *a = exsa_registry_acquire(reg, "alpha", &err);
    assert_non_null(a);
    run_ref(a);
    exsa_registry_release(reg, a);
    assert_null(exsa_registry_acquire(reg, "gamma", &err));
    assert_non_null(strstr(err.msg, "loading"));
    exsa_engine_params p;
    engine_params(&p, g_model_b, "gamma");
    assert_int_equal(exsa_registry_load(reg, &p, NULL, 0, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "gamma"));
    assert_int_equal(exsa_registry_reload(reg, "gamma", NULL, &err), EXSA_EINVAL);
    assert_non_null(strstr(err.msg, "loading"));
    assert_int_equal(exsa_registry_set_active(reg, "gamma", &err), EXSA_EINVAL);

    /* Unloading it drops the reservation now; the loader then fails. */
    assert_int_equal(exsa_registry_unload(reg, "gamma", &err), 0);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);
    int fd = open(fifo, O_WRONLY);
    assert_true(fd >= 0);
    close(fd);
    pthread_join(th, NULL);
    assert_true(l.rc < 0);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);
    assert_string_equal(ents[0].name, "alpha");
    unlink(fifo);

    /* The same again, but the load is left to fail on its own. */
    assert_int_equal(mkfifo(fifo, 0600), 0);
    memset(&l, 0, sizeof l);
    l.reg = reg;
    l.path = fifo;
    assert_int_equal(pthread_create(&th, NULL, loader_main, &l), 0);
    for (int i = 0; i < 5000 && exsa_registry_list(reg, ents, 4) < 2; i++)
        usleep(1000);
    assert_int_equal(exsa_registry_list(reg, ents, 4), 2);
    fd = open(fifo, O_WRONLY);
    assert_true(fd >= 0);
    close(fd);
    pthread_join(th, NULL);
    assert_true(l.rc < 0);
    assert_non_null(strstr(l.err.msg, "fifo.gguf"));
    assert_int_equal(exsa_registry_list(reg, ents, 4), 1);
    unlink(fifo);
    exsa_registry_free(reg);
}

/* ---- concurrency ---- */

#define N_WORKERS 8

typedef struct shared {
    exsa_registry *reg;
    atomic_int stop;
    atomic_int failures;   /* acquires that must not have failed */
    atomic_int cut_short;  /* requests that did not finish by length */
    atomic_int acquires, beta_misses, requests;
} shared;

typedef struct worker {
    shared *s;
    int id;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    shared *s = w->s;
    uint64_t st = 1000 + (uint64_t)w->id;
    for (int it = 0; !atomic_load(&s->stop) || it < 40; it++) {
        static const char *const names[] = {NULL, "alpha", "beta"};
        const char *name = names[exsa_test_rand_u64(&st) % 3];
        exsa_err err = {0};
        exsa_engine *e = exsa_registry_acquire(s->reg, name, &err);
        if (!e) {
            /* beta comes and goes; alpha and the default never may. */
            if (name && !strcmp(name, "beta"))
                atomic_fetch_add(&s->beta_misses, 1);
            else
                atomic_fetch_add(&s->failures, 1);
            continue;
        }
        atomic_fetch_add(&s->acquires, 1);
        if (it % 8 == w->id % 8) {
            exsa_request *r = submit(e, 3);
            int n = 0;
            int32_t tok[8];
            if (!r || drain(r, tok, &n, 8) != EXSA_FINISH_LENGTH || n != 3)
                atomic_fetch_add(&s->cut_short, 1);
            exsa_request_free(r);
            atomic_fetch_add(&s->requests, 1);
        }
        exsa_registry_release(s->reg, e);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    shared s = {.reg = new_registry()};
    exsa_err err = {0};
    load_ok(s.reg, g_model_a, "alpha", "alpha");
    load_ok(s.reg, g_model_b, "beta", "beta");
    pthread_t th[N_WORKERS];
    worker w[N_WORKERS];
    for (int i = 0; i < N_WORKERS; i++) {
        w[i] = (worker){.s = &s, .id = i};
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int k = 0; k < 3; k++) {
        assert_int_equal(exsa_registry_reload(s.reg, "alpha", NULL, &err), 0);
        assert_int_equal(exsa_registry_set_active(s.reg, k % 2 ? "alpha" : "beta", &err), 0);
        assert_int_equal(exsa_registry_reload(s.reg, "beta", NULL, &err), 0);
        /* Unloading the (maybe active) beta moves the default to alpha. */
        assert_int_equal(exsa_registry_unload(s.reg, "beta", &err), 0);
        load_ok(s.reg, g_model_b, "beta", "beta");
    }
    atomic_store(&s.stop, 1);
    for (int i = 0; i < N_WORKERS; i++)
        pthread_join(th[i], NULL);
    print_message("acquires %d requests %d beta misses %d\n", atomic_load(&s.acquires), atomic_load(&s.requests), atomic_load(&s.beta_misses));
    assert_int_equal(atomic_load(&s.failures), 0);
    assert_int_equal(atomic_load(&s.cut_short), 0);
    assert_true(atomic_load(&s.acquires) >= N_WORKERS * 40 - atomic_load(&s.beta_misses));
    assert_true(atomic_load(&s.requests) > 0);
    /* Every drained engine was freed by its last release. */
    exsa_registry_entry ents[8];
    assert_int_equal(exsa_registry_list(s.reg, ents, 8), 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(ents[i].state, EXSA_MODEL_READY);
        assert_int_equal(ents[i].holders, 0);
    }
    exsa_registry_free(s.reg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_name),
        cmocka_unit_test(test_load_list_active),
        cmocka_unit_test(test_unload_while_running),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_loading_state),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
