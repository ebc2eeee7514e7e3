/* Prefix cache tests, on a real KV pool of the CPU backend.
 *
 * Every test runs twice: against the library build, and against a second
 * copy of prefix_cache.c compiled into this file with keys forced onto 4
 * values, so that blocks collide in the key table all the time and only the
 * token and parent checks keep prefixes apart. Expected results come from the test's
 * own bookkeeping: which tokens the test "computed" into each pool block,
 * and which sequences hold which blocks (reference counts are recounted
 * from the block tables, never taken from the cache).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <stdio.h>
#include <string.h>

#include "engine/prefix_cache.h"

/* The colliding copy: renamed so that it links beside the library's. */
/* Only 4 distinct keys, whose table homes are the last 4 slots, so every
 * probe run wraps around the end of the table. */
#define EXSA_PREFIX_CACHE_KEY_MAP(k) ((k) | ~(uint64_t)3)
#define exsa_prefix_cache_create coll_create
#define exsa_prefix_cache_free coll_free
#define exsa_prefix_cache_match coll_match
#define exsa_prefix_cache_insert coll_insert
#define exsa_prefix_cache_make_room coll_make_room
#define exsa_prefix_cache_n_blocks coll_n_blocks
#define exsa_prefix_cache_n_evictable coll_n_evictable
#undef EXSA_PREFIX_CACHE_H
#include "engine/prefix_cache.c"
#undef exsa_prefix_cache_create
#undef exsa_prefix_cache_free
#undef exsa_prefix_cache_match
#undef exsa_prefix_cache_insert
#undef exsa_prefix_cache_make_room
#undef exsa_prefix_cache_n_blocks
#undef exsa_prefix_cache_n_evictable

#include <cmocka.h>

#include "backend/backend.h"
#include "model/kv_cache.h"
#include "quant/quant.h"
#include "test_util.h"

#define BS 16
#define MAX_LEN 256

typedef struct impl {
    const char *name;
    exsa_prefix_cache *(*create)(exsa_kv_cache *, exsa_err *);
    void (*free)(exsa_prefix_cache *);
    int (*match)(exsa_prefix_cache *, const int32_t *, int, int32_t *, int);
    void (*insert)(exsa_prefix_cache *, const int32_t *, int, const int32_t *);
    int (*make_room)(exsa_prefix_cache *, int);
    int (*n_blocks)(const exsa_prefix_cache *);
    int (*n_evictable)(const exsa_prefix_cache *);
} impl;

static const impl impls[2] = {
    {"real", exsa_prefix_cache_create, exsa_prefix_cache_free, exsa_prefix_cache_match,
     exsa_prefix_cache_insert, exsa_prefix_cache_make_room, exsa_prefix_cache_n_blocks,
     exsa_prefix_cache_n_evictable},
    {"collide", coll_create, coll_free, coll_match, coll_insert, coll_make_room, coll_n_blocks,
     coll_n_evictable},
};

typedef struct fx {
    const impl *im;
    exsa_backend *be;
    exsa_kv_cache *kv;
    exsa_prefix_cache *pc;
    int n_blocks, n_seq;
} fx;

static void fx_open(fx *f, void **state, int n_blocks, int n_seq)
{
    exsa_err err = {0};
    f->im = *state;
    f->n_blocks = n_blocks;
    f->n_seq = n_seq;
    f->be = exsa_backend_cpu_create(1, &err);
    if (!f->be)
        print_error("backend: %s\n", err.msg);
    assert_non_null(f->be);
    exsa_kv_params p = {.n_layer = 1, .n_kv_head = 1, .head_dim = 32, .type = EXSA_TYPE_F16,
                        .block_size = BS, .n_blocks = n_blocks, .n_seq = n_seq,
                        .max_seq_len = MAX_LEN};
    f->kv = exsa_kv_cache_create(f->be, &p, &err);
    if (!f->kv)
        print_error("kv: %s\n", err.msg);
    assert_non_null(f->kv);
    f->pc = f->im->create(f->kv, &err);
    if (!f->pc)
        print_error("prefix cache: %s\n", err.msg);
    assert_non_null(f->pc);
}

/* Frees every sequence and the cache; the pool must then be whole again. */
static void fx_close(fx *f)
{
    for (int s = 0; s < f->n_seq; s++)
        exsa_kv_seq_free(f->kv, s);
    f->im->free(f->pc);
    assert_int_equal(exsa_kv_n_free_blocks(f->kv), f->n_blocks);
    for (int b = 0; b < f->n_blocks; b++)
        assert_int_equal(exsa_kv_block_refcount(f->kv, b), 0);
    exsa_kv_cache_free(f->kv);
    exsa_backend_free(f->be);
}

static void rand_tokens(uint64_t *rng, int32_t *t, int n)
{
    for (int i = 0; i < n; i++)
        t[i] = (int32_t)(exsa_test_rand_u64(rng) % 32000);
}

static void reserve(fx *f, int seq, int n_tokens)
{
    exsa_err err = {0};
    int rc = exsa_kv_seq_reserve(f->kv, seq, n_tokens, &err);
    if (rc != 0)
        print_error("reserve: %s\n", err.msg);
    assert_int_equal(rc, 0);
}

static const int32_t *tab(fx *f, int seq) { return exsa_kv_block_table(f->kv, seq); }

/* Sequence seq computes tokens[0..n) from scratch and registers its full
 * blocks. */
static void compute(fx *f, int seq, const int32_t *tokens, int n)
{
    reserve(f, seq, n);
    f->im->insert(f->pc, tokens, n / BS, tab(f, seq));
}

static void expect_match(fx *f, const int32_t *tokens, int n, int max_blocks, int want,
                         const int32_t *want_blocks)
{
    int32_t got[MAX_LEN / BS + 1];
    memset(got, 0xff, sizeof got);
    int k = f->im->match(f->pc, tokens, n, got, max_blocks);
    assert_int_equal(k, want);
    for (int i = 0; i < want; i++)
        assert_int_equal(got[i], want_blocks[i]);
    /* Nothing written past the returned count. */
    for (int i = k; i < (int)(sizeof got / sizeof *got); i++)
        assert_int_equal(got[i], -1);
}

/* ---- tests ---- */

static void test_match_lengths(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 1;
    int32_t a[MAX_LEN], b[MAX_LEN];
    rand_tokens(&rng, a, 60);
    compute(&f, 0, a, 50); /* 3 full blocks + a partial 4th */
    int32_t blk[4];
    memcpy(blk, tab(&f, 0), sizeof blk);
    assert_int_equal(f.im->n_blocks(f.pc), 3);
    assert_int_equal(f.im->n_evictable(f.pc), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(exsa_kv_block_refcount(f.kv, blk[i]), 2);
    assert_int_equal(exsa_kv_block_refcount(f.kv, blk[3]), 1); /* partial: not cached */

    /* Same prompt, and a longer one with the 3-block prefix. */
    expect_match(&f, a, 50, 16, 3, blk);
    memcpy(b, a, 48 * sizeof *a);
    rand_tokens(&rng, b + 48, 100);
    expect_match(&f, b, 148, 16, 3, blk);
    /* Never more than n_tokens / block_size, nor max_blocks. */
    expect_match(&f, a, 48, 16, 3, blk);
    expect_match(&f, a, 47, 16, 2, blk);
    expect_match(&f, a, 32, 16, 2, blk);
    expect_match(&f, a, 17, 16, 1, blk);
    expect_match(&f, a, 16, 16, 1, blk);
    expect_match(&f, a, 15, 16, 0, blk);
    expect_match(&f, a, 1, 16, 0, blk);
    expect_match(&f, a, 0, 16, 0, blk);
    expect_match(&f, a, 50, 2, 2, blk);
    expect_match(&f, a, 50, 1, 1, blk);
    expect_match(&f, a, 50, 0, 0, blk);
    /* Diverging inside the 3rd block (its last and first token), the 2nd,
     * the 1st. */
    b[47] ^= 1;
    expect_match(&f, b, 148, 16, 2, blk);
    b[47] ^= 1;
    b[32] ^= 1;
    expect_match(&f, b, 148, 16, 2, blk);
    b[32] ^= 1;
    b[20] ^= 1;
    expect_match(&f, b, 148, 16, 1, blk);
    b[20] ^= 1;
    b[15] ^= 1;
    expect_match(&f, b, 148, 16, 0, blk);
    b[15] ^= 1;
    b[0] ^= 1;
    expect_match(&f, b, 148, 16, 0, blk);
    b[0] ^= 1;
    expect_match(&f, b, 148, 16, 3, blk);
    /* The partial block never matches even when the prompt covers it. */
    memcpy(b, a, 60 * sizeof *a);
    expect_match(&f, b, 64, 16, 3, blk);
    fx_close(&f);
}

static void test_single_block_and_partial(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 2;
    int32_t a[MAX_LEN];
    rand_tokens(&rng, a, 40);
    /* A partial block alone registers nothing. */
    compute(&f, 0, a, 15);
    assert_int_equal(f.im->n_blocks(f.pc), 0);
    expect_match(&f, a, 40, 16, 0, NULL);
    exsa_kv_seq_free(f.kv, 0);
    /* Exactly one full block. */
    compute(&f, 1, a, 16);
    int32_t b0 = tab(&f, 1)[0];
    assert_int_equal(f.im->n_blocks(f.pc), 1);
    expect_match(&f, a, 16, 16, 1, &b0);
    expect_match(&f, a, 40, 16, 1, &b0);
    /* n_full = 0 and bad arguments change nothing. */
    f.im->insert(f.pc, a, 0, tab(&f, 1));
    f.im->insert(f.pc, a, -3, tab(&f, 1));
    f.im->insert(f.pc, NULL, 1, tab(&f, 1));
    f.im->insert(f.pc, a, 1, NULL);
    assert_int_equal(f.im->match(f.pc, NULL, 16, &b0, 1), 0);
    assert_int_equal(f.im->n_blocks(f.pc), 1);
    assert_int_equal(exsa_kv_block_refcount(f.kv, b0), 2);
    /* Registering the same block again only touches it. */
    f.im->insert(f.pc, a, 1, tab(&f, 1));
    assert_int_equal(exsa_kv_block_refcount(f.kv, b0), 2);
    assert_int_equal(f.im->n_blocks(f.pc), 1);
    exsa_kv_seq_free(f.kv, 1);
    assert_int_equal(f.im->n_evictable(f.pc), 1);
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 7);
    fx_close(&f);
}

static void test_attach_and_free(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 3;
    int32_t a[MAX_LEN], b[MAX_LEN];
    rand_tokens(&rng, a, 48);
    compute(&f, 0, a, 48);
    int32_t blk[3];
    memcpy(blk, tab(&f, 0), sizeof blk);

    memcpy(b, a, 48 * sizeof *a);
    rand_tokens(&rng, b + 48, 20);
    int32_t got[16];
    int k = f.im->match(f.pc, b, 68, got, 16);
    assert_int_equal(k, 3);
    exsa_err err = {0};
    assert_int_equal(exsa_kv_seq_attach(f.kv, 1, got, k, &err), 0);
    reserve(&f, 1, 68); /* prefill only the rest: two new blocks */
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 8 - 5);
    for (int i = 0; i < 3; i++)
        assert_int_equal(exsa_kv_block_refcount(f.kv, blk[i]), 3);
    /* The new sequence registers its 4th block only. */
    f.im->insert(f.pc, b, 4, tab(&f, 1));
    assert_int_equal(f.im->n_blocks(f.pc), 4);
    assert_int_equal(f.im->n_evictable(f.pc), 0);

    exsa_kv_seq_free(f.kv, 0);
    exsa_kv_seq_free(f.kv, 1);
    for (int i = 0; i < 4; i++)
        assert_int_equal(exsa_kv_block_refcount(f.kv, tab(&f, 1)[i]), 1);
    assert_int_equal(f.im->n_evictable(f.pc), 4);
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 8 - 4);
    /* Still matchable after both sequences are gone. */
    int32_t want[4] = {blk[0], blk[1], blk[2], tab(&f, 1)[3]};
    expect_match(&f, b, 68, 16, 4, want);
    fx_close(&f);
}

static void test_lru_order(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 4;
    int32_t a[MAX_LEN], b[MAX_LEN], c[MAX_LEN];
    rand_tokens(&rng, a, 32);
    rand_tokens(&rng, b, 32);
    rand_tokens(&rng, c, 48);
    compute(&f, 0, a, 32);
    compute(&f, 1, b, 32);
    int32_t ab[2], bb[2];
    memcpy(ab, tab(&f, 0), sizeof ab);
    memcpy(bb, tab(&f, 1), sizeof bb);
    exsa_kv_seq_free(f.kv, 0);
    exsa_kv_seq_free(f.kv, 1);
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 4);
    /* a was inserted first, but using it makes b the older one. */
    expect_match(&f, a, 32, 16, 2, ab);
    /* Asking for what is already free evicts nothing. */
    assert_int_equal(f.im->make_room(f.pc, 4), 4);
    assert_int_equal(f.im->make_room(f.pc, 0), 4);
    assert_int_equal(f.im->n_blocks(f.pc), 4);
    /* One block: b's leaf goes first, its root stays matchable. */
    assert_int_equal(f.im->make_room(f.pc, 5), 5);
    assert_int_equal(exsa_kv_block_refcount(f.kv, bb[1]), 0);
    expect_match(&f, b, 32, 16, 1, bb);
    /* That match made b's root the most recent: a's leaf is next. */
    assert_int_equal(f.im->make_room(f.pc, 6), 6);
    assert_int_equal(exsa_kv_block_refcount(f.kv, ab[1]), 0);
    expect_match(&f, a, 32, 16, 1, ab);
    expect_match(&f, b, 32, 16, 1, bb);

    /* A chain of 3 computed now is the hottest: a goes first. */
    compute(&f, 2, c, 48);
    int32_t cb[3];
    memcpy(cb, tab(&f, 2), sizeof cb);
    exsa_kv_seq_free(f.kv, 2);
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 3);
    assert_int_equal(f.im->make_room(f.pc, 4), 4);
    expect_match(&f, a, 32, 16, 0, NULL);
    expect_match(&f, b, 32, 16, 1, bb);
    expect_match(&f, c, 48, 16, 3, cb); /* c now hotter than b */
    assert_int_equal(f.im->make_room(f.pc, 5), 5);
    expect_match(&f, b, 32, 16, 0, NULL);
    /* Within c's chain the leaf goes first. */
    assert_int_equal(f.im->make_room(f.pc, 6), 6);
    expect_match(&f, c, 48, 16, 2, cb);
    fx_close(&f);
}

static void test_evict_all_and_in_use(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 5;
    int32_t a[MAX_LEN], b[MAX_LEN];
    rand_tokens(&rng, a, 64);
    rand_tokens(&rng, b, 48);
    compute(&f, 0, a, 64);
    compute(&f, 1, b, 40); /* 2 full + 1 partial */
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 1);
    int32_t ab[4], bb[3];
    memcpy(ab, tab(&f, 0), sizeof ab);
    memcpy(bb, tab(&f, 1), sizeof bb);
    exsa_kv_seq_free(f.kv, 0);
    /* Seq 1 still uses its blocks: only a's 4 can go. */
    assert_int_equal(f.im->make_room(f.pc, 8), 5);
    assert_int_equal(f.im->n_blocks(f.pc), 2);
    assert_int_equal(f.im->n_evictable(f.pc), 0);
    expect_match(&f, a, 64, 16, 0, NULL);
    expect_match(&f, b, 48, 16, 2, bb);
    for (int i = 0; i < 2; i++)
        assert_int_equal(exsa_kv_block_refcount(f.kv, bb[i]), 2);
    exsa_kv_seq_free(f.kv, 1);
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 6);
    assert_int_equal(f.im->make_room(f.pc, 8), 8);
    assert_int_equal(f.im->n_blocks(f.pc), 0);
    for (int i = 0; i < 8; i++)
        assert_int_equal(exsa_kv_block_refcount(f.kv, i), 0);
    expect_match(&f, b, 48, 16, 0, NULL);
    /* The cache still works after being emptied. */
    compute(&f, 2, a, 64);
    exsa_kv_seq_free(f.kv, 2);
    assert_int_equal(f.im->n_evictable(f.pc), 4);
    int32_t got[4];
    assert_int_equal(f.im->match(f.pc, a, 64, got, 4), 4);
    /* Freeing the cache with blocks cached returns them (checked in close). */
    fx_close(&f);
}

static void test_same_parent_other_tokens(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 6;
    int32_t x[MAX_LEN], y[MAX_LEN], z[MAX_LEN], w[MAX_LEN];
    rand_tokens(&rng, x, 32); /* x = P X */
    memcpy(y, x, 16 * sizeof *x);
    rand_tokens(&rng, y + 16, 16); /* y = P Y */
    memcpy(z, x, 32 * sizeof *x);
    z[31] ^= 0x40; /* z = P X' : differs in one token */
    memcpy(w, x, 32 * sizeof *x);
    compute(&f, 0, x, 32);
    compute(&f, 1, y, 32); /* P found cached in seq 0's block: y's own copy not kept */
    int32_t xb[2], yb[2];
    memcpy(xb, tab(&f, 0), sizeof xb);
    memcpy(yb, tab(&f, 1), sizeof yb);
    assert_int_equal(f.im->n_blocks(f.pc), 3);
    int32_t want_y[2] = {xb[0], yb[1]};
    expect_match(&f, x, 32, 16, 2, xb);
    expect_match(&f, y, 32, 16, 2, want_y);
    expect_match(&f, z, 32, 16, 1, xb);
    expect_match(&f, w, 32, 16, 2, xb);
    exsa_kv_seq_free(f.kv, 0);
    exsa_kv_seq_free(f.kv, 1);
    assert_int_equal(exsa_kv_block_refcount(f.kv, yb[0]), 0); /* the duplicate was not kept */
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 5);
    expect_match(&f, y, 32, 16, 2, want_y);
    fx_close(&f);
}

static void test_same_tokens_other_parent(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 7;
    int32_t p[MAX_LEN], q[MAX_LEN];
    rand_tokens(&rng, p, 32); /* p = A B */
    rand_tokens(&rng, q, 16);
    memcpy(q + 16, p + 16, 16 * sizeof *p); /* q = C B */
    compute(&f, 0, p, 32);
    int32_t pb[2];
    memcpy(pb, tab(&f, 0), sizeof pb);
    /* Block B alone as a first block is not p's second block. */
    expect_match(&f, p + 16, 16, 16, 0, NULL);
    expect_match(&f, q, 32, 16, 0, NULL);
    compute(&f, 1, q, 32);
    int32_t qb[2];
    memcpy(qb, tab(&f, 1), sizeof qb);
    expect_match(&f, q, 32, 16, 2, qb);
    expect_match(&f, p, 32, 16, 2, pb);
    /* A repeated block follows its own parent: p = A B, r = A B B. */
    int32_t r[MAX_LEN];
    memcpy(r, p, 32 * sizeof *p);
    memcpy(r + 32, p + 16, 16 * sizeof *p);
    expect_match(&f, r, 48, 16, 2, pb);
    fx_close(&f);
}

/* A child whose parent was evicted must not match through a new block that
 * happens to reuse the parent's id. */
static void test_orphan_never_matches(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 8;
    int32_t a[MAX_LEN], c[MAX_LEN];
    rand_tokens(&rng, a, 32);
    rand_tokens(&rng, c, 16);
    compute(&f, 3, c, 16);  /* seq 3: C, the coldest block */
    int32_t c0 = tab(&f, 3)[0];
    compute(&f, 0, a, 16);  /* seq 0: A */
    int32_t a0 = tab(&f, 0)[0];
    compute(&f, 1, a, 32);  /* seq 1: A' B, A' a duplicate of A */
    int32_t b1 = tab(&f, 1)[1];
    int32_t want[2] = {a0, b1};
    expect_match(&f, a, 32, 16, 2, want);
    exsa_kv_seq_free(f.kv, 0);
    /* A is evictable, B and C are held: evicting A orphans B. */
    assert_int_equal(f.im->make_room(f.pc, 8), 5);
    assert_int_equal(exsa_kv_block_refcount(f.kv, a0), 0);
    expect_match(&f, a, 32, 16, 0, NULL);
    /* A computed again lands in A's old id (the pool reuses it first). */
    compute(&f, 2, a, 16);
    assert_int_equal(tab(&f, 2)[0], a0);
    expect_match(&f, a, 32, 16, 1, &a0);
    for (int s = 1; s < 4; s++)
        exsa_kv_seq_free(f.kv, s);
    assert_int_equal(f.im->n_blocks(f.pc), 3);
    assert_int_equal(f.im->n_evictable(f.pc), 3);
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 5);
    /* The orphan goes before C, although C is older. */
    assert_int_equal(f.im->make_room(f.pc, 6), 6);
    assert_int_equal(exsa_kv_block_refcount(f.kv, b1), 0);
    expect_match(&f, c, 16, 16, 1, &c0);
    expect_match(&f, a, 32, 16, 1, &a0);
    fx_close(&f);
}

static void test_bad_blocks_ignored(void **state)
{
    fx f;
    fx_open(&f, state, 8, 4);
    uint64_t rng = 9;
    int32_t a[MAX_LEN];
    rand_tokens(&rng, a, 48);
    int32_t bad[3][3] = {{-1, 0, 1}, {8, 0, 1}, {5, 0, 1}}; /* 5: refcount 0 */
    for (int i = 0; i < 3; i++) {
        f.im->insert(f.pc, a, 3, bad[i]);
        assert_int_equal(f.im->n_blocks(f.pc), 0);
    }
    assert_int_equal(exsa_kv_n_free_blocks(f.kv), 8);
    /* A live first block followed by a dead one registers the first only. */
    reserve(&f, 0, 16);
    int32_t mixed[2] = {tab(&f, 0)[0], 6};
    f.im->insert(f.pc, a, 2, mixed);
    assert_int_equal(f.im->n_blocks(f.pc), 1);
    /* A block already cached under another prefix is not re-registered. */
    int32_t other[MAX_LEN];
    rand_tokens(&rng, other, 16);
    f.im->insert(f.pc, other, 1, mixed);
    assert_int_equal(f.im->n_blocks(f.pc), 1);
    expect_match(&f, other, 16, 16, 0, NULL);
    expect_match(&f, a, 48, 16, 1, mixed);
    /* n_full beyond the context is clamped to its 16 blocks, not read
     * past (ASan); the stale table entries stop the walk. */
    int32_t longp[MAX_LEN];
    memcpy(longp, a, 16 * sizeof *a);
    rand_tokens(&rng, longp + 16, MAX_LEN - 16);
    f.im->insert(f.pc, longp, 1000, tab(&f, 0));
    assert_int_equal(f.im->n_blocks(f.pc), 1);
    fx_close(&f);
}

/* Random sequences over a few shared prefixes with a tight pool. Each
 * block's content is tracked here when a sequence reserves it; every block
 * a match returns must hold exactly the prompt's prefix, and reference
 * counts must equal the sequences' uses plus one per cached block. */
#define ST_BLOCKS 24
#define ST_SEQ 4
typedef struct st_block {
    int len; /* tokens of the prefix this block ends; 0 when not full */
    int32_t prefix[MAX_LEN];
} st_block;

static void check_refcounts(fx *f, const int *seq_len)
{
    int uses[ST_BLOCKS] = {0};
    for (int s = 0; s < ST_SEQ; s++)
        for (int i = 0; i < (seq_len[s] + BS - 1) / BS; i++)
            uses[tab(f, s)[i]]++;
    int cached = 0, evictable = 0, free_blocks = 0;
    for (int b = 0; b < ST_BLOCKS; b++) {
        int rc = exsa_kv_block_refcount(f->kv, b);
        assert_in_range(rc - uses[b], 0, 1);
        cached += rc - uses[b];
        evictable += rc == 1 && uses[b] == 0;
        free_blocks += rc == 0;
    }
    assert_int_equal(f->im->n_blocks(f->pc), cached);
    assert_int_equal(f->im->n_evictable(f->pc), evictable);
    assert_int_equal(exsa_kv_n_free_blocks(f->kv), free_blocks);
}

static void test_random_workload(void **state)
{
    fx f;
    fx_open(&f, state, ST_BLOCKS, ST_SEQ);
    static st_block blocks[ST_BLOCKS];
    memset(blocks, 0, sizeof blocks);
    uint64_t rng = 10;
    int32_t base[3][MAX_LEN];
    for (int i = 0; i < 3; i++)
        rand_tokens(&rng, base[i], MAX_LEN);
    base[2][0] = base[1][0]; /* families 1 and 2 share a first token only */
    int seq_len[ST_SEQ] = {0};
    long hit_blocks = 0, started = 0;
    for (int step = 0; step < 1500; step++) {
        int s = (int)(exsa_test_rand_u64(&rng) % ST_SEQ);
        if (seq_len[s] > 0) {
            exsa_kv_seq_free(f.kv, s);
            seq_len[s] = 0;
            check_refcounts(&f, seq_len);
            continue;
        }
        int32_t prompt[MAX_LEN];
        int fam = (int)(exsa_test_rand_u64(&rng) % 3);
        int n = 1 + (int)(exsa_test_rand_u64(&rng) % 120);
        int cut = (int)(exsa_test_rand_u64(&rng) % (n + 1));
        memcpy(prompt, base[fam], (size_t)cut * sizeof *prompt);
        rand_tokens(&rng, prompt + cut, n - cut);

        int32_t got[MAX_LEN / BS];
        int k = f.im->match(f.pc, prompt, n, got, MAX_LEN / BS);
        assert_in_range(k, 0, n / BS);
        for (int i = 0; i < k; i++) {
            assert_int_equal(blocks[got[i]].len, (i + 1) * BS);
            assert_memory_equal(blocks[got[i]].prefix, prompt,
                                (size_t)(i + 1) * BS * sizeof *prompt);
        }
        hit_blocks += k;
        exsa_err err = {0};
        assert_int_equal(exsa_kv_seq_attach(f.kv, s, got, k, &err), 0);
        int need = (n + BS - 1) / BS - k;
        if (exsa_kv_n_free_blocks(f.kv) < need)
            f.im->make_room(f.pc, need);
        if (exsa_kv_seq_reserve(f.kv, s, n, &err) != 0) {
            assert_int_equal(err.code, EXSA_EFULL);
            exsa_kv_seq_free(f.kv, s);
            check_refcounts(&f, seq_len);
            continue;
        }
        started++;
        seq_len[s] = n;
        /* "Compute" the new blocks. */
        for (int i = k; i < (n + BS - 1) / BS; i++) {
            st_block *sb = &blocks[tab(&f, s)[i]];
            sb->len = (i + 1) * BS <= n ? (i + 1) * BS : 0;
            memcpy(sb->prefix, prompt, (size_t)sb->len * sizeof *prompt);
        }
        f.im->insert(f.pc, prompt, n / BS, tab(&f, s));
        check_refcounts(&f, seq_len);
        /* Every full block of a running sequence is cached (its own or an
         * equal one), and stays findable however the key table has been
         * reshuffled by evictions. */
        assert_int_equal(f.im->match(f.pc, prompt, n, got, MAX_LEN / BS), n / BS);
        for (int i = 0; i < n / BS; i++)
            assert_memory_equal(blocks[got[i]].prefix, prompt,
                                (size_t)(i + 1) * BS * sizeof *prompt);
    }
    /* The workload must actually have reused blocks and run sequences. */
    assert_true(hit_blocks > 200);
    assert_true(started > 400);
    for (int s = 0; s < ST_SEQ; s++)
        exsa_kv_seq_free(f.kv, s);
    assert_int_equal(f.im->make_room(f.pc, ST_BLOCKS), ST_BLOCKS);
    assert_int_equal(f.im->n_blocks(f.pc), 0);
    fx_close(&f);
}

typedef void (*test_fn)(void **);

int main(void)
{
    static const struct {
        const char *name;
        test_fn fn;
    } list[] = {
        {"match_lengths", test_match_lengths},
        {"single_block_and_partial", test_single_block_and_partial},
        {"attach_and_free", test_attach_and_free},
        {"lru_order", test_lru_order},
        {"evict_all_and_in_use", test_evict_all_and_in_use},
        {"same_parent_other_tokens", test_same_parent_other_tokens},
        {"same_tokens_other_parent", test_same_tokens_other_parent},
        {"orphan_never_matches", test_orphan_never_matches},
        {"bad_blocks_ignored", test_bad_blocks_ignored},
        {"random_workload", test_random_workload},
    };
    enum { N = sizeof list / sizeof list[0] };
    static char names[2 * N][64];
    struct CMUnitTest tests[2 * N];
    for (int v = 0; v < 2; v++)
        for (int i = 0; i < N; i++) {
            int j = v * N + i;
            snprintf(names[j], sizeof names[j], "%s/%s", impls[v].name, list[i].name);
            tests[j] = (struct CMUnitTest){names[j], list[i].fn, NULL, NULL,
                                           (void *)&impls[v]};
        }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
