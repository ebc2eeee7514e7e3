/* Chat template tests against Python Jinja2's renderings.
 *
 * 1. ../shared/fixtures/templates: ten real models' templates and the
 *    prompts Python's Jinja2 rendered for fixed conversations (render.py
 *    there); every case must match byte for byte, and a conversation that
 *    the reference could not render (the template raised) must fail here
 *    with the template's own message.
 * 2. tests/data/templates: more model families' templates and the built-in
 *    templates, with our own conversations (tools, tool calls, list
 *    contents, unicode, extra variables) rendered by python3-jinja2 with the
 *    same settings (tests/data/templates/render_local.py made cases.json);
 *    checked byte for byte, without Python at run time.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_util.h"
#include "gguf/gguf.h"
#include "text/chat_template.h"

static struct tm fixed_now(void)
{
    struct tm t;
    memset(&t, 0, sizeof t);
    t.tm_year = 2026 - 1900;
    t.tm_mon = 0;
    t.tm_mday = 2;
    t.tm_hour = 3;
    t.tm_min = 4;
    t.tm_sec = 5;
    t.tm_wday = 5; /* Friday */
    t.tm_yday = 1;
    return t;
}

static char *slurp(const char *path, size_t *n)
{
    return exsa_test_read_file(path, n);
}

/* Shows where two renderings first differ. */
static void show_diff(const char *name, const char *got, const char *want)
{
    size_t i = 0;
    while (got[i] && got[i] == want[i])
        i++;
    size_t s = i > 40 ? i - 40 : 0;
    fprintf(stderr, "  %s: differs at byte %zu\n    got:  %.80s\n    want: %.80s\n", name, i, got + s, want + s);
}

/* The conversations of fixtures/templates/render.py, to find the ones that
 * the reference skipped because the template raised. */
static const char *const FIXTURE_CONVS =
    "[[{\"role\": \"user\", \"content\": \"Hello!\"}],"
    " [{\"role\": \"system\", \"content\": \"You are a helpful assistant.\"},"
    "  {\"role\": \"user\", \"content\": \"What is 2+2?\"},"
    "  {\"role\": \"assistant\", \"content\": \"4.\"},"
    "  {\"role\": \"user\", \"content\": \"And 3+3?\"}],"
    " [{\"role\": \"user\", \"content\": \"Write a haiku about C.\\nKeep it short.\"},"
    "  {\"role\": \"assistant\", \"content\": \"Pointers in the dark\"},"
    "  {\"role\": \"user\", \"content\": \"Another, with \\\"quotes\\\" & <tags>.\"}]]";

static void test_fixture_templates(void **state)
{
    (void)state;
    const char *dir = exsa_test_fixtures_dir();
    assert_non_null(dir);
    char path[1024];
    snprintf(path, sizeof path, "%s/templates/expected.json", dir);
    json_error_t je;
    json_t *exp = json_load_file(path, 0, &je);
    assert_non_null(exp);
    json_t *convs = json_loads(FIXTURE_CONVS, 0, &je);
    assert_non_null(convs);
    struct tm now = fixed_now();
    size_t all = 0, all_ok = 0;
    const char *name;
    json_t *cases;
    json_object_foreach(exp, name, cases)
    {
        snprintf(path, sizeof path, "%s/templates/%s", dir, name);
        size_t n;
        char *src = slurp(path, &n);
        assert_non_null(src);
        exsa_err err = {0};
        exsa_chat_template *t = exsa_chat_template_create(src, n, &err);
        if (!t)
            fprintf(stderr, "  %s: %s\n", name, err.msg);
        size_t ok = 0, total = 0;
        /* every reference case must match */
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *c = json_array_get(cases, i);
            total++;
            if (!t)
                continue;
            exsa_chat_opts o = {.add_generation_prompt = 1,
                                .bos_token = json_string_value(json_object_get(c, "bos")),
                                .eos_token = json_string_value(json_object_get(c, "eos")),
                                .now = &now};
            char *out = exsa_chat_template_render(t, json_object_get(c, "messages"), &o, &err);
            const char *want = json_string_value(json_object_get(c, "output"));
            if (!out)
                fprintf(stderr, "  %s case %zu: %s\n", name, i, err.msg);
            else if (strcmp(out, want) != 0)
                show_diff(name, out, want);
            else
                ok++;
            free(out);
        }
        /* conversations the reference skipped: the template raised */
        for (size_t k = 0; k < json_array_size(convs); k++) {
            json_t *conv = json_array_get(convs, k);
            int present = 0;
            for (size_t i = 0; i < json_array_size(cases); i++)
                present |= json_equal(json_object_get(json_array_get(cases, i), "messages"), conv);
            if (present)
                continue;
            total++;
            if (!t)
                continue;
            exsa_chat_opts o = {.add_generation_prompt = 1, .bos_token = "<s>", .eos_token = "</s>", .now = &now};
            char *out = exsa_chat_template_render(t, conv, &o, &err);
            if (out) {
                fprintf(stderr, "  %s conv %zu: rendered, but Jinja2 raised\n", name, k);
                free(out);
            } else if (strstr(name, "gemma-2") && !strstr(err.msg, "System role not supported")) {
                fprintf(stderr, "  %s conv %zu: wrong error: %s\n", name, k, err.msg);
            } else {
                ok++;
            }
        }
        printf("TPLCASES %s %zu/%zu\n", name, ok, total);
        all += total;
        all_ok += ok;
        exsa_chat_template_destroy(t);
        free(src);
    }
    printf("TPLCASES total %zu/%zu\n", all_ok, all);
    json_decref(convs);
    json_decref(exp);
    assert_int_equal(all_ok, all);
    assert_true(all >= 30);
}

/* tests/data/templates beside this source file */
static void data_dir(char *out, size_t n)
{
    const char *f = __FILE__;
    const char *slash = strrchr(f, '/');
    int len = slash ? (int)(slash - f) : 1;
    snprintf(out, n, "%.*s/data/templates", len, slash ? f : ".");
}

static void test_local_templates(void **state)
{
    (void)state;
    char dir[900], path[1024];
    data_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/cases.json", dir);
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    if (!all)
        fprintf(stderr, "cannot read %s: %s\n", path, je.text);
    assert_non_null(all);
    json_t *convs = json_object_get(all, "conversations");
    struct tm now = fixed_now();
    size_t tot = 0, tot_ok = 0;
    const char *name;
    json_t *cases;
    json_object_foreach(json_object_get(all, "templates"), name, cases)
    {
        snprintf(path, sizeof path, "%s/%s", dir, name);
        size_t n;
        char *src = slurp(path, &n);
        assert_non_null(src);
        exsa_err err = {0};
        exsa_chat_template *t;
        if (strncmp(name, "builtin-", 8) == 0) {
            /* the built-in must be exactly the text Python rendered */
            char bname[64];
            snprintf(bname, sizeof bname, "%.*s", (int)(strlen(name) - 8 - 6), name + 8);
            const char *bsrc = exsa_chat_template_builtin_source(bname);
            assert_non_null(bsrc);
            assert_string_equal(bsrc, src);
            t = exsa_chat_template_builtin(bname, &err);
        } else
            t = exsa_chat_template_create(src, n, &err);
        if (!t)
            fprintf(stderr, "  %s: %s\n", name, err.msg);
        size_t ok = 0;
        for (size_t i = 0; i < json_array_size(cases); i++) {
            json_t *c = json_array_get(cases, i);
            json_t *conv = json_array_get(convs, (size_t)json_integer_value(json_object_get(c, "conv")));
            json_t *agp = json_object_get(conv, "add_generation_prompt");
            exsa_chat_opts o = {.add_generation_prompt = agp ? json_is_true(agp) : 1,
                                .bos_token = "<s>",
                                .eos_token = "</s>",
                                .tools = json_object_get(conv, "tools"),
                                .extra = json_object_get(conv, "extra"),
                                .now = &now};
            if (!t)
                continue;
            char *out = exsa_chat_template_render(t, json_object_get(conv, "messages"), &o, &err);
            const char *want = json_string_value(json_object_get(c, "output"));
            const char *werr = json_string_value(json_object_get(c, "error"));
            if (want) {
                if (!out)
                    fprintf(stderr, "  %s conv %zu: %s\n", name, i, err.msg);
                else if (strcmp(out, want) != 0)
                    show_diff(name, out, want);
                else
                    ok++;
            } else if (out) {
                fprintf(stderr, "  %s conv %zu: rendered, but Jinja2 failed with: %s\n", name, i, werr);
            } else if (json_is_true(json_object_get(c, "raised")) && !strstr(err.msg, werr)) {
                fprintf(stderr, "  %s conv %zu: error '%s' lacks the template's message '%s'\n", name, i,
                        err.msg, werr);
            } else {
                ok++;
            }
            free(out);
        }
        printf("TPLCASES %s %zu/%zu\n", name, ok, json_array_size(cases));
        tot += json_array_size(cases);
        tot_ok += ok;
        exsa_chat_template_destroy(t);
        free(src);
    }
    printf("TPLCASES local-total %zu/%zu\n", tot_ok, tot);
    json_decref(all);
    assert_int_equal(tot_ok, tot);
    assert_true(tot >= 100);
}

/* The built-in "gemma" template renders what Gemma 3's official template
 * (tests/data/templates/google-gemma-3-it.jinja, as rendered by Jinja2 into
 * cases.json) renders, for every conversation that one accepts. */
static void test_builtin_gemma_is_gemma3(void **state)
{
    (void)state;
    char dir[900], path[1024];
    data_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/cases.json", dir);
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    assert_non_null(all);
    json_t *convs = json_object_get(all, "conversations");
    json_t *cases = json_object_get(json_object_get(all, "templates"), "google-gemma-3-it.jinja");
    assert_non_null(cases);
    exsa_err err = {0};
    exsa_chat_template *t = exsa_chat_template_builtin("gemma", &err);
    assert_non_null(t);
    struct tm now = fixed_now();
    size_t checked = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *want = json_string_value(json_object_get(c, "output"));
        if (!want)
            continue; /* the official template raises on it (roles, tools) */
        json_t *conv = json_array_get(convs, (size_t)json_integer_value(json_object_get(c, "conv")));
        json_t *agp = json_object_get(conv, "add_generation_prompt");
        exsa_chat_opts o = {.add_generation_prompt = agp ? json_is_true(agp) : 1,
                            .bos_token = "<s>", .eos_token = "</s>",
                            .tools = json_object_get(conv, "tools"), .extra = json_object_get(conv, "extra"),
                            .now = &now};
        char *out = exsa_chat_template_render(t, json_object_get(conv, "messages"), &o, &err);
        if (!out || strcmp(out, want) != 0) {
            fprintf(stderr, "builtin gemma, conv %zu: %s\n", i, out ? "" : err.msg);
            if (out)
                show_diff("builtin gemma", out, want);
        }
        assert_non_null(out);
        assert_string_equal(out, want);
        free(out);
        checked++;
    }
    assert_true(checked >= 5); /* system folded, multi-turn, unicode, list parts, image */
    exsa_chat_template_destroy(t);
    json_decref(all);
}

/* A GGUF in memory with only general.architecture = arch. */
static size_t tiny_gguf(unsigned char *b, const char *arch)
{
    size_t n = 0;
    const char *key = "general.architecture";
    uint64_t kl = strlen(key), al = strlen(arch), one = 1, zero = 0;
    uint32_t ver = 3, ty = 8;
    memcpy(b + n, "GGUF", 4), n += 4;
    memcpy(b + n, &ver, 4), n += 4;
    memcpy(b + n, &zero, 8), n += 8;
    memcpy(b + n, &one, 8), n += 8;
    memcpy(b + n, &kl, 8), n += 8;
    memcpy(b + n, key, kl), n += kl;
    memcpy(b + n, &ty, 4), n += 4;
    memcpy(b + n, &al, 8), n += 8;
    memcpy(b + n, arch, al), n += al;
    while (n % 32)
        b[n++] = 0;
    return n;
}

/* With no template in the GGUF, a Gemma architecture gets the built-in
 * gemma template and anything else ChatML. */
static void test_template_for_arch(void **state)
{
    (void)state;
    const char *archs[] = {"gemma3", "gemma2", "llama"};
    const char *want[] = {"<s><start_of_turn>user\nSys\n\nHi<end_of_turn>\n<start_of_turn>model\n",
                          "<s><start_of_turn>user\nSys\n\nHi<end_of_turn>\n<start_of_turn>model\n",
                          "<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                          "<|im_start|>assistant\n"};
    json_t *msgs = json_loads("[{\"role\":\"system\",\"content\":\"Sys\"},{\"role\":\"user\",\"content\":\"Hi\"}]",
                              0, NULL);
    assert_non_null(msgs);
    for (int i = 0; i < 3; i++) {
        unsigned char buf[256];
        size_t n = tiny_gguf(buf, archs[i]);
        exsa_err err = {0};
        exsa_gguf *g = exsa_gguf_open_memory(buf, n, &err);
        if (!g)
            fprintf(stderr, "gguf: %s\n", err.msg);
        assert_non_null(g);
        const char *desc = NULL;
        exsa_chat_template *t = exsa_chat_template_for_model(g, NULL, &desc, &err);
        assert_non_null(t);
        exsa_chat_opts o = {.add_generation_prompt = 1, .bos_token = "<s>", .eos_token = "</s>"};
        char *out = exsa_chat_template_render(t, msgs, &o, &err);
        assert_non_null(out);
        assert_string_equal(out, want[i]);
        free(out);
        exsa_chat_template_destroy(t);
        exsa_gguf_close(g);
    }
    json_decref(msgs);
}

int main(void)
{
    if (!exsa_test_fixtures_dir()) {
        fprintf(stderr, "test_chat_template: ../shared/fixtures not found, skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_templates),
        cmocka_unit_test(test_local_templates),
        cmocka_unit_test(test_builtin_gemma_is_gemma3),
        cmocka_unit_test(test_template_for_arch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
