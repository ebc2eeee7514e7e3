/* Reasoning splitter tests: each case gives the generated text and the
 * reasoning / content written out by hand; the text is fed whole, one byte
 * at a time, and cut at every pair of points, and every way must give the
 * same split (a marker cut across pieces is the case that matters). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "server/reasoning.h"
#include "server/strbuf.h"

typedef struct split_case {
    const char *text;
    int opened; /* the prompt opened <think> */
    const char *reasoning, *content;
} split_case;

/* Feeds text cut at a and b (a <= b <= len) and checks the result. */
static void check_cut(const split_case *c, size_t a, size_t b)
{
    exsa_reasoning r;
    exsa_strbuf rs, cs;
    exsa_strbuf_init(&rs);
    exsa_strbuf_init(&cs);
    exsa_reasoning_init(&r, c->opened);
    size_t n = strlen(c->text);
    assert_int_equal(exsa_reasoning_feed(&r, c->text, a, &rs, &cs), 0);
    assert_int_equal(exsa_reasoning_feed(&r, c->text + a, b - a, &rs, &cs), 0);
    assert_int_equal(exsa_reasoning_feed(&r, c->text + b, n - b, &rs, &cs), 0);
    assert_int_equal(exsa_reasoning_finish(&r, &rs, &cs), 0);
    if (strcmp(rs.p ? rs.p : "", c->reasoning) || strcmp(cs.p ? cs.p : "", c->content))
        fail_msg("text \"%s\" cut at %zu,%zu: reasoning \"%s\" content \"%s\"; want \"%s\" / "
                 "\"%s\"",
                 c->text, a, b, rs.p ? rs.p : "", cs.p ? cs.p : "", c->reasoning, c->content);
    exsa_strbuf_free(&rs);
    exsa_strbuf_free(&cs);
}

static void check_all(const split_case *c)
{
    size_t n = strlen(c->text);
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++)
            check_cut(c, a, b);
}

/* Byte at a time, with the buffers reset after every byte as a stream does:
 * the deltas must add up to the split. */
static void check_bytes(const split_case *c)
{
    exsa_reasoning r;
    exsa_strbuf rs, cs;
    char rall[512] = "", call[512] = "";
    exsa_strbuf_init(&rs);
    exsa_strbuf_init(&cs);
    exsa_reasoning_init(&r, c->opened);
    for (const char *p = c->text; *p; p++) {
        assert_int_equal(exsa_reasoning_feed(&r, p, 1, &rs, &cs), 0);
        strncat(rall, rs.p ? rs.p : "", sizeof rall - strlen(rall) - 1);
        strncat(call, cs.p ? cs.p : "", sizeof call - strlen(call) - 1);
        exsa_strbuf_reset(&rs);
        exsa_strbuf_reset(&cs);
    }
    exsa_reasoning_finish(&r, &rs, &cs);
    strncat(rall, rs.p ? rs.p : "", sizeof rall - strlen(rall) - 1);
    strncat(call, cs.p ? cs.p : "", sizeof call - strlen(call) - 1);
    assert_string_equal(rall, c->reasoning);
    assert_string_equal(call, c->content);
    exsa_strbuf_free(&rs);
    exsa_strbuf_free(&cs);
}

static void run(const split_case *cs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        check_all(&cs[i]);
        check_bytes(&cs[i]);
    }
}

static void test_plain(void **state)
{
    (void)state;
    static const split_case c[] = {
        {"<think>\nLet me add.\n</think>\n\nIt is 4.", 0, "Let me add.\n", "It is 4."},
        {"<think>a</think>b", 0, "a", "b"},
        {"<think></think>answer", 0, "", "answer"},
    };
    run(c, sizeof c / sizeof c[0]);
}

static void test_no_think(void **state)
{
    (void)state;
    static const split_case c[] = {
        {"Just an answer.", 0, "", "Just an answer."},
        {"", 0, "", ""},
        /* Marker look-alikes stay text, also cut short at the end. */
        {"a < b and <thin ice> <think", 0, "", "a < b and <thin ice> <think"},
        {"x </think> y", 0, "", "x </think> y"},
        {"<<think>>", 0, ">", "<"},
    };
    run(c, sizeof c / sizeof c[0]);
}

static void test_text_around(void **state)
{
    (void)state;
    static const split_case c[] = {
        {"Hi. <think>hmm</think> Bye.", 0, "hmm", "Hi. Bye."},
        {"A<think> r1 </think>B<think>r2</think>C", 0, "r1 r2", "ABC"},
        {"<think>x</think>after </think> more", 0, "x", "after </think> more"},
    };
    run(c, sizeof c / sizeof c[0]);
}

static void test_unterminated(void **state)
{
    (void)state;
    static const split_case c[] = {
        {"<think>still thinking", 0, "still thinking", ""},
        {"<think>cut at </thin", 0, "cut at </thin", ""},
        {"ok <think>", 0, "", "ok "},
    };
    run(c, sizeof c / sizeof c[0]);
}

static void test_prompt_opened(void **state)
{
    (void)state;
    static const split_case c[] = {
        {"\nreasoning here\n</think>\n\nThe answer.", 1, "reasoning here\n", "The answer."},
        {"no close at all", 1, "no close at all", ""},
        {"</think>direct", 1, "", "direct"},
        /* Only the closing marker counts inside: "<think>" is thinking text. */
        {"a <think> b</think>c", 1, "a <think> b", "c"},
    };
    run(c, sizeof c / sizeof c[0]);
}

static void test_detection(void **state)
{
    (void)state;
    assert_true(exsa_reasoning_template_thinks("{{ '<think>\\n' }}"));
    assert_true(exsa_reasoning_template_thinks("{% set c = c.split('</think>')[-1] %}"));
    assert_false(exsa_reasoning_template_thinks("{{ '<|im_start|>assistant\\n' }}"));
    assert_false(exsa_reasoning_template_thinks(NULL));
    const char *p1 = "<|im_start|>assistant\n<think>\n";
    assert_true(exsa_reasoning_prompt_opened(p1, strlen(p1)));
    const char *p2 = "<|im_start|>assistant\n<think>\n\n</think>\n\n";
    assert_false(exsa_reasoning_prompt_opened(p2, strlen(p2)));
    const char *p3 = "<|im_start|>assistant\n";
    assert_false(exsa_reasoning_prompt_opened(p3, strlen(p3)));
    assert_false(exsa_reasoning_prompt_opened("think>", 6));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain),         cmocka_unit_test(test_no_think),
        cmocka_unit_test(test_text_around),   cmocka_unit_test(test_unterminated),
        cmocka_unit_test(test_prompt_opened), cmocka_unit_test(test_detection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
