/* Tokenizers of real vocabularies against llama.cpp's ids.
 *
 * tests/data/tokenizer/llama_cpp_ids.json holds texts (spaces, newline
 * runs, digits, emoji, CJK, Indic scripts, code, special-token strings) and
 * the ids llama.cpp's llama_tokenize() gave for them, with and without
 * BOS and special-token parsing, and the ids llama.cpp treats as end of
 * generation, for:
 * - the fixture vocabs bert-bge (WordPiece on Devanagari / Tamil / Bengali:
 *   accent and vowel-sign stripping) and phi-3 ("</s>" is a user-defined
 *   token there that llama.cpp reads as text unless special tokens are
 *   parsed);
 * - the real models gemma-3-270m (SentencePiece, 262,144 tokens) and
 *   SmolLM2-135M (byte-level BPE).
 * A vocabulary that is not on this machine is skipped (cmocka SKIPPED; the
 * program exits 77 when nothing could be checked). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf/gguf.h"
#include "test_util.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

static json_t *g_doc;
static int g_checked; /* vocabularies actually checked */

static void data_path(char *out, size_t n, const char *file)
{
    const char *f = __FILE__;
    const char *slash = strrchr(f, '/');
    snprintf(out, n, "%.*s/data/tokenizer/%s", slash ? (int)(slash - f) : 1, slash ? f : ".", file);
}

/* Where the named vocabulary lives on this machine, or NULL. */
static const char *locate(const char *where, const char *file)
{
    static char path[2048];
    if (strcmp(where, "model") == 0)
        return exsa_test_model_path(file);
    const char *dir = exsa_test_fixtures_dir();
    if (!dir)
        return NULL;
    snprintf(path, sizeof path, "%s/vocab/%s", dir, file);
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fclose(f);
    return path;
}

/* Every case of one vocabulary file, and its end-of-generation set. */
static void check_file(const char *file)
{
    json_t *cases = json_object_get(g_doc, "cases");
    const char *where = NULL;
    for (size_t i = 0; i < json_array_size(cases) && !where; i++)
        if (strcmp(json_string_value(json_object_get(json_array_get(cases, i), "file")), file) == 0)
            where = json_string_value(json_object_get(json_array_get(cases, i), "where"));
    assert_non_null(where);
    const char *path = locate(where, file);
    if (!path) {
        printf("%s not found: skipped\n", file);
        skip();
    }
    exsa_err err = {0};
    exsa_gguf *g = exsa_gguf_open(path, &err);
    exsa_vocab *v = g ? exsa_vocab_load(g, &err) : NULL;
    exsa_tokenizer *t = v ? exsa_tokenizer_create(v, &err) : NULL;
    if (!t)
        fprintf(stderr, "%s: %s\n", file, err.msg);
    assert_non_null(t);
    size_t n = 0, bad = 0;
    int32_t *ids = malloc(sizeof *ids * 65536);
    assert_non_null(ids);
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        if (strcmp(json_string_value(json_object_get(c, "file")), file) != 0)
            continue;
        const char *flags = json_string_value(json_object_get(c, "flags"));
        json_t *text = json_object_get(c, "text"), *want = json_object_get(c, "ids");
        int fl = (strchr(flags, 'b') ? EXSA_TOK_ADD_SPECIAL : 0) | (strchr(flags, 's') ? EXSA_TOK_PARSE_SPECIAL : 0);
        int64_t k = exsa_tokenize(t, json_string_value(text), json_string_length(text), fl, ids, 65536, &err);
        int same = k == (int64_t)json_array_size(want);
        for (int64_t j = 0; same && j < k; j++)
            same = ids[j] == json_integer_value(json_array_get(want, (size_t)j));
        if (!same) {
            bad++;
            fprintf(stderr, "%s [%s] %.60s:\n  got ", file, flags, json_string_value(text));
            for (int64_t j = 0; j < k && j < 40; j++)
                fprintf(stderr, "%d ", ids[j]);
            fprintf(stderr, "\n  want");
            for (size_t j = 0; j < json_array_size(want) && j < 40; j++)
                fprintf(stderr, " %d", (int)json_integer_value(json_array_get(want, j)));
            fprintf(stderr, "\n");
        }
        n++;
    }
    /* end of generation: exactly llama.cpp's set */
    json_t *eog = json_object_get(json_object_get(g_doc, "eog"), file);
    if (eog) {
        size_t found = 0;
        for (int32_t id = 0; id < exsa_vocab_n_tokens(v); id++) {
            int want = 0;
            for (size_t j = 0; j < json_array_size(eog); j++)
                want |= json_integer_value(json_array_get(eog, j)) == id;
            if (exsa_vocab_is_eog(v, id) != want) {
                size_t len;
                const char *s = exsa_vocab_token_str(v, id, &len);
                fprintf(stderr, "%s: token %d '%.*s' is_eog %d, llama.cpp %d\n", file, id, (int)len, s,
                        exsa_vocab_is_eog(v, id), want);
                bad++;
            }
            found += want;
        }
        assert_int_equal(found, json_array_size(eog));
    }
    printf("TOKMODELS %s %zu/%zu\n", file, n - bad, n);
    free(ids);
    exsa_tokenizer_free(t);
    exsa_vocab_free(v);
    exsa_gguf_close(g);
    assert_int_equal(bad, 0);
    assert_true(n >= 5);
    g_checked++;
}

static void test_bert_bge(void **state)
{
    (void)state;
    check_file("ggml-vocab-bert-bge.gguf");
}
static void test_phi3(void **state)
{
    (void)state;
    check_file("ggml-vocab-phi-3.gguf");
}
static void test_gemma3(void **state)
{
    (void)state;
    check_file("gemma-3-270m-q4_k_m.gguf");
}
static void test_smollm2(void **state)
{
    (void)state;
    check_file("SmolLM2-135M-Instruct.Q4_1.gguf");
}

int main(void)
{
    char path[1024];
    data_path(path, sizeof path, "llama_cpp_ids.json");
    json_error_t je;
    g_doc = json_load_file(path, 0, &je);
    if (!g_doc) {
        fprintf(stderr, "cannot read %s: %s\n", path, je.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bert_bge),
        cmocka_unit_test(test_phi3),
        cmocka_unit_test(test_gemma3),
        cmocka_unit_test(test_smollm2),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(g_doc);
    if (rc == 0 && g_checked == 0)
        return 77;
    return rc;
}
