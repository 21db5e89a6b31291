/* test_kv_cache.c: the paged KV cache's memory manager (inference/kv_cache.c): capacity from a
 * budget, fork and copy-on-write, prefix reuse across sequences and turns, LRU eviction order,
 * out-of-blocks without damage, dedup, forced hash collisions, misuse errors, the invariant checker
 * itself, and a randomized stress test with kv_pool_check after every operation.
 *
 * Data integrity: like a real model, the K/V the tests write at position p is a function of the
 * model id and tokens[0..p] only (through an independent rolling hash), so any sequence can check
 * every committed position it reads through its block table, whichever sequence computed it. */
#include "kv_cache.h"
#include "rng.h"
#include "test_helpers.h"

#define T_LAYERS 2
#define T_HEADS 2
#define T_DIM 4

/* ---- helpers ---------------------------------------------------------------------------------- */

static uint64_t t_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Rolling identity of (model, tokens[0..p]). */
static uint64_t t_roll(uint64_t prev, int32_t token) { return t_mix(prev * 31 + (uint32_t)token); }
static uint64_t t_roll_start(uint64_t model_id) { return t_mix(model_id ^ 0x5eed); }

/* The value stored at (layer, head, d) for K (which 0) or V (which 1); exact in f32 (24 bits). */
static float t_value(uint64_t prefix, int layer, int head, int d, int which) {
    uint64_t x = t_mix(prefix ^ ((uint64_t)layer << 40 | (uint64_t)head << 24 | (uint64_t)d << 8 |
                                 (uint64_t)which));
    return (float)(x >> 40) + 1.0f; /* never 0, so a zeroed block never passes */
}

static kv_pool *t_pool(int num_blocks, int block_size, bool storage, int hash_bits) {
    kv_pool_params p = {.num_layers = T_LAYERS, .num_kv_heads = T_HEADS, .head_dim = T_DIM,
                        .block_size = block_size, .num_blocks = num_blocks,
                        .allocate_storage = storage, .hash_bits = hash_bits};
    kv_pool *pool = NULL;
    duel_error err = {0};
    int rc = kv_pool_create(&p, &pool, &err);
    if (rc) fprintf(stderr, "kv_pool_create: %s\n", err.message);
    assert_int_equal(rc, 0);
    return pool;
}

static void t_check(const kv_pool *pool, const kv_sequence *const *seqs, int n) {
    duel_error err = {0};
    int rc = kv_pool_check(pool, seqs, n, &err);
    if (rc) fprintf(stderr, "kv_pool_check: %s\n", err.message);
    assert_int_equal(rc, 0);
}

/* Writes the K/V of positions [from, from + n) for tokens (the whole history, tokens[0..from+n)). */
static void t_write(kv_pool *pool, const kv_sequence *seq, const int32_t *tokens, int64_t from,
                    int64_t n) {
    uint64_t r = t_roll_start(seq->model_id);
    for (int64_t p = 0; p < from + n; p++) {
        r = t_roll(r, tokens[p]);
        if (p < from) continue;
        for (int l = 0; l < T_LAYERS; l++)
            for (int h = 0; h < T_HEADS; h++) {
                float *k = kv_sequence_key(pool, seq, l, h, p);
                float *v = kv_sequence_value(pool, seq, l, h, p);
                assert_non_null(k);
                assert_non_null(v);
                for (int d = 0; d < T_DIM; d++) {
                    k[d] = t_value(r, l, h, d, 0);
                    v[d] = t_value(r, l, h, d, 1);
                }
            }
    }
}

/* Every committed position of seq holds the K/V of (model, tokens[0..p]). Returns the first bad
 * position or -1. */
static int64_t t_first_bad(kv_pool *pool, const kv_sequence *seq, const int32_t *tokens) {
    uint64_t r = t_roll_start(seq->model_id);
    for (int64_t p = 0; p < seq->num_tokens; p++) {
        r = t_roll(r, tokens[p]);
        for (int l = 0; l < T_LAYERS; l++)
            for (int h = 0; h < T_HEADS; h++) {
                const float *k = kv_sequence_key(pool, seq, l, h, p);
                const float *v = kv_sequence_value(pool, seq, l, h, p);
                if (!k || !v) return p;
                for (int d = 0; d < T_DIM; d++)
                    if (k[d] != t_value(r, l, h, d, 0) || v[d] != t_value(r, l, h, d, 1)) return p;
            }
    }
    return -1;
}

/* reserve + write + commit of tokens[from..from+n) (tokens is the whole history). */
static int t_append(kv_pool *pool, kv_sequence *seq, const int32_t *tokens, int64_t n) {
    int64_t from = seq->num_tokens;
    /* the planning call predicts exactly what the reserve takes, or that it is refused */
    int64_t need = kv_sequence_blocks_needed(pool, seq, n);
    int32_t available = kv_pool_available_blocks(pool);
    kv_pool_stats before, after;
    kv_pool_stats_get(pool, &before);
    kv_reserve_result r;
    int rc = kv_sequence_reserve(pool, seq, n, &r, NULL);
    kv_pool_stats_get(pool, &after);
    assert_int_equal(rc, need > available ? DUEL_ELIMIT : 0);
    assert_int_equal(after.allocations - before.allocations, rc ? 0 : need);
    assert_int_equal(r.new_blocks + (r.cow_src >= 0), rc ? 0 : need);
    if (rc) return rc;
    if (kv_pool_get_params(pool)->allocate_storage) t_write(pool, seq, tokens, from, n);
    duel_error err = {0};
    rc = kv_sequence_commit(pool, seq, tokens + from, n, &err);
    if (rc) fprintf(stderr, "commit: %s\n", err.message);
    assert_int_equal(rc, 0);
    assert_int_equal(seq->num_tokens, from + n);
    return 0;
}

static void t_fill(int32_t *tokens, int n, int32_t base) {
    for (int i = 0; i < n; i++) tokens[i] = base + i;
}

/* ---- capacity and parameters ------------------------------------------------------------------ */

static void test_capacity_from_budget(void **state) {
    (void)state;
    kv_pool_params p = {.num_layers = 2, .num_kv_heads = 2, .head_dim = 4};
    /* 2 (K, V) * 2 layers * 2 heads * 16 slots * 4 dims * 4 bytes */
    assert_int_equal(kv_pool_block_bytes(&p), 2048);
    p.memory_budget_bytes = 10 * 2048 + 1000;
    kv_pool *pool = NULL;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&p, &pool, &err), 0);
    assert_int_equal(kv_pool_num_blocks(pool), 10);
    assert_int_equal(kv_pool_block_size(pool), KV_BLOCK_SIZE);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.free_blocks, 10);
    assert_int_equal(st.used_blocks + st.cached_blocks, 0);
    assert_null(kv_pool_layer_keys(pool, 0)); /* no host storage asked for */
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);

    /* a bf16 device cache: half the bytes per block, twice the blocks */
    p.bytes_per_element = 2;
    assert_int_equal(kv_pool_create(&p, &pool, &err), 0);
    assert_int_equal(kv_pool_num_blocks(pool), 20);
    kv_pool_destroy(pool);
    /* bf16 host storage (engine.kv_dtype): only the bf16 accessors serve it */
    p.allocate_storage = true;
    assert_int_equal(kv_pool_create(&p, &pool, &err), 0);
    assert_int_equal(kv_pool_num_blocks(pool), 20);
    assert_null(kv_pool_layer_keys(pool, 0));
    assert_null(kv_pool_block_keys(pool, 0, 0));
    assert_non_null(kv_pool_layer_keys_bf16(pool, 1));
    assert_ptr_equal(kv_pool_layer_values_bf16(pool, 0),
                     kv_pool_layer_keys_bf16(pool, 0) + 20 * 2 * 16 * 4);
    assert_ptr_equal(kv_pool_layer_keys_bf16(pool, 1),
                     kv_pool_layer_keys_bf16(pool, 0) + 2 * 20 * 2 * 16 * 4);
    assert_null(kv_pool_layer_keys_bf16(pool, 2));
    kv_pool_destroy(pool);
    p.bytes_per_element = 3; /* host storage is f32 or bf16 only */
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    assert_null(pool);
    assert_non_null(strstr(err.message, "3 bytes"));
    p.bytes_per_element = 0;
    int bpe = 0;
    assert_int_equal(kv_dtype_parse("bf16", &bpe, &err), 0);
    assert_int_equal(bpe, 2);
    assert_int_equal(kv_dtype_parse("f32", &bpe, &err), 0);
    assert_int_equal(bpe, 4);
    assert_int_equal(kv_dtype_parse("f16", &bpe, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "'f16'"));

    /* with storage: every layer's K and V are distinct, zeroed, [blocks][heads][16][dim] */
    assert_int_equal(kv_pool_create(&p, &pool, &err), 0);
    assert_non_null(kv_pool_layer_keys(pool, 1));
    assert_ptr_equal(kv_pool_block_keys(pool, 1, 3),
                     kv_pool_layer_keys(pool, 1) + 3 * T_HEADS * KV_BLOCK_SIZE * T_DIM);
    assert_ptr_equal(kv_pool_layer_values(pool, 0), kv_pool_layer_keys(pool, 0) + 10 * 2 * 16 * 4);
    assert_null(kv_pool_layer_keys(pool, 2));
    assert_null(kv_pool_block_values(pool, 0, 10));
    assert_null(kv_pool_block_values(pool, 0, -1));
    kv_pool_destroy(pool);
    p.allocate_storage = false;

    p.memory_budget_bytes = 2047;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "smaller than one block"));
    p.memory_budget_bytes = SIZE_MAX;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_ELIMIT);
    p.memory_budget_bytes = 4096;
    p.num_blocks = 4; /* both */
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    p.memory_budget_bytes = 0;
    p.num_blocks = 0; /* neither */
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    p.num_blocks = -3;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    p.num_blocks = KV_MAX_BLOCKS + 1;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_ELIMIT);
    p.num_blocks = 4;
    p.block_size = KV_MAX_BLOCK_SIZE + 1;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    assert_int_equal(kv_pool_block_bytes(&p), 0);
    p.block_size = 0;
    p.num_layers = 0;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    p.num_layers = 2;
    p.head_dim = -1;
    assert_int_equal(kv_pool_create(&p, &pool, &err), DUEL_EINVAL);
    assert_int_equal(kv_pool_create(NULL, &pool, &err), DUEL_EINVAL);
    assert_null(pool);
}

static void test_block_hash(void **state) {
    (void)state;
    int32_t a[16], b[16];
    t_fill(a, 16, 100);
    memcpy(b, a, sizeof a);
    uint64_t h = kv_block_hash(KV_HASH_ROOT, 1, a, 16);
    assert_true(h == kv_block_hash(KV_HASH_ROOT, 1, b, 16));
    assert_true(h != kv_block_hash(KV_HASH_ROOT, 2, a, 16));     /* model id */
    assert_true(h != kv_block_hash(KV_HASH_ROOT + 1, 1, a, 16)); /* parent */
    assert_true(h != kv_block_hash(KV_HASH_ROOT, 1, a, 15));     /* length */
    for (int i = 0; i < 16; i++) { /* every token counts */
        b[i]++;
        assert_true(h != kv_block_hash(KV_HASH_ROOT, 1, b, 16));
        b[i]--;
    }
    b[0] = a[1];
    b[1] = a[0]; /* order counts */
    assert_true(h != kv_block_hash(KV_HASH_ROOT, 1, b, 16));
    /* chained: the same block after different parents differs */
    uint64_t p1 = kv_block_hash(KV_HASH_ROOT, 1, a, 16);
    uint64_t p2 = kv_block_hash(KV_HASH_ROOT, 1, b, 16);
    assert_true(kv_block_hash(p1, 1, a, 16) != kv_block_hash(p2, 1, a, 16));
}

/* ---- fork and copy-on-write ------------------------------------------------------------------- */

/* Copy-on-write of a bf16 pool copies every layer's K and V bytes of the block. */
static void test_cow_bf16_storage(void **state) {
    (void)state;
    kv_pool_params p = {.num_layers = T_LAYERS, .num_kv_heads = T_HEADS, .head_dim = T_DIM,
                        .num_blocks = 6, .bytes_per_element = 2, .allocate_storage = true};
    kv_pool *pool = NULL;
    assert_int_equal(kv_pool_create(&p, &pool, NULL), 0);
    int32_t tokens[20];
    t_fill(tokens, 20, 77);
    kv_sequence a, b;
    kv_sequence_init(&a, 3);
    kv_sequence_init(&b, 3);
    kv_reserve_result r;
    assert_int_equal(kv_sequence_reserve(pool, &a, 20, &r, NULL), 0);
    const size_t tile = (size_t)T_HEADS * KV_BLOCK_SIZE * T_DIM;
    for (int l = 0; l < T_LAYERS; l++)
        for (size_t i = 0; i < tile; i++) {
            kv_pool_layer_keys_bf16(pool, l)[(size_t)a.blocks[1] * tile + i] = (uint16_t)(i + 1 + l);
            kv_pool_layer_values_bf16(pool, l)[(size_t)a.blocks[1] * tile + i] = (uint16_t)(i + 9 + l);
        }
    assert_int_equal(kv_sequence_commit(pool, &a, tokens, 20, NULL), 0);
    assert_int_equal(kv_sequence_fork(pool, &a, &b, NULL), 0);
    assert_int_equal(kv_sequence_reserve(pool, &b, 1, &r, NULL), 0);
    assert_int_equal(r.cow_src, a.blocks[1]);
    for (int l = 0; l < T_LAYERS; l++) {
        assert_memory_equal(kv_pool_layer_keys_bf16(pool, l) + (size_t)b.blocks[1] * tile,
                            kv_pool_layer_keys_bf16(pool, l) + (size_t)a.blocks[1] * tile,
                            tile * 2);
        assert_memory_equal(kv_pool_layer_values_bf16(pool, l) + (size_t)b.blocks[1] * tile,
                            kv_pool_layer_values_bf16(pool, l) + (size_t)a.blocks[1] * tile,
                            tile * 2);
    }
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    kv_pool_destroy(pool);
}

static void test_fork_cow_partial_block(void **state) {
    (void)state;
    kv_pool *pool = t_pool(8, 0, true, 0);
    int32_t ta[40], tb[40];
    t_fill(ta, 40, 1000);
    kv_sequence a, b;
    kv_sequence_init(&a, 7);
    kv_sequence_init(&b, 99); /* fork overwrites the model id */
    assert_int_equal(t_append(pool, &a, ta, 20), 0); /* block 0 full, block 1 holds 4 */
    assert_int_equal(kv_sequence_fork(pool, &a, &b, NULL), 0);
    assert_int_equal(b.model_id, 7);
    assert_int_equal(b.num_tokens, 20);
    assert_int_equal(b.num_blocks, 2);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(b.blocks[i], a.blocks[i]);
        assert_int_equal(kv_pool_block_refcount(pool, a.blocks[i]), 2);
    }
    const kv_sequence *both[] = {&a, &b};
    t_check(pool, both, 2);

    /* b writes position 20, inside the shared partial block: it gets a copy */
    memcpy(tb, ta, sizeof tb);
    tb[20] = 5555;
    int32_t shared = a.blocks[1];
    kv_reserve_result r;
    assert_int_equal(kv_sequence_reserve(pool, &b, 1, &r, NULL), 0);
    assert_int_equal(r.cow_src, shared);
    assert_int_equal(r.cow_dst, b.blocks[1]);
    assert_int_equal(r.new_blocks, 0);
    assert_true(b.blocks[1] != shared);
    assert_int_equal(b.blocks[0], a.blocks[0]); /* the full block stays shared */
    assert_int_equal(kv_pool_block_refcount(pool, shared), 1);
    assert_int_equal(kv_pool_block_refcount(pool, b.blocks[1]), 1);
    assert_int_equal(kv_pool_block_refcount(pool, a.blocks[0]), 2);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.cow_copies, 1);
    /* the copy carries the data of positions 16..19 for all layers, K and V, and the tokens */
    assert_int_equal(t_first_bad(pool, &b, tb), -1);
    assert_memory_equal(kv_pool_block_tokens(pool, b.blocks[1]), ta + 16, 4 * sizeof(int32_t));
    t_write(pool, &b, tb, 20, 1);
    assert_int_equal(kv_sequence_commit(pool, &b, tb + 20, 1, NULL), 0);
    t_check(pool, both, 2);

    /* a's history is untouched and a now owns its partial block alone: no second copy */
    assert_int_equal(t_first_bad(pool, &a, ta), -1);
    assert_int_equal(kv_sequence_reserve(pool, &a, 1, &r, NULL), 0);
    assert_int_equal(r.cow_src, -1);
    assert_int_equal(a.blocks[1], shared);
    t_write(pool, &a, ta, 20, 1);
    assert_int_equal(kv_sequence_commit(pool, &a, ta + 20, 1, NULL), 0);
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.cow_copies, 1);
    assert_int_equal(t_first_bad(pool, &a, ta), -1);
    assert_int_equal(t_first_bad(pool, &b, tb), -1);
    t_check(pool, both, 2);

    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.used_blocks, 0);
    assert_int_equal(st.cached_blocks, 1); /* the full first block stays in the prefix cache */
    kv_pool_destroy(pool);
}

static void test_full_shared_block_never_written(void **state) {
    (void)state;
    kv_pool *pool = t_pool(8, 0, true, 0);
    int32_t t[64];
    t_fill(t, 64, 1);
    kv_sequence a, b;
    kv_sequence_init(&a, 1);
    kv_sequence_init(&b, 1);
    assert_int_equal(t_append(pool, &a, t, 32), 0);
    assert_int_equal(kv_sequence_fork(pool, &a, &b, NULL), 0);
    int32_t b0 = a.blocks[0], b1 = a.blocks[1];
    kv_reserve_result r;
    assert_int_equal(kv_sequence_reserve(pool, &b, 5, &r, NULL), 0);
    assert_int_equal(r.cow_src, -1);
    assert_int_equal(r.new_blocks, 1);
    assert_int_equal(b.num_blocks, 3);
    assert_int_equal(b.blocks[0], b0);
    assert_int_equal(b.blocks[1], b1);
    assert_int_equal(kv_pool_block_refcount(pool, b1), 2);
    t[32] = -5;
    t_write(pool, &b, t, 32, 5);
    assert_int_equal(kv_sequence_commit(pool, &b, t + 32, 5, NULL), 0);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.cow_copies, 0);
    const kv_sequence *both[] = {&a, &b};
    t_check(pool, both, 2);
    assert_int_equal(t_first_bad(pool, &a, t), -1);
    assert_int_equal(t_first_bad(pool, &b, t), -1);
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

/* The engine's M candidates: fork M times from a prompt with a partial last block; every
 * candidate but the last writer copies it. */
static void test_m_candidates_share_prompt(void **state) {
    (void)state;
    enum { M = 4 };
    kv_pool *pool = t_pool(16, 0, true, 0);
    int32_t prompt[64];
    t_fill(prompt, 64, 300);
    kv_sequence p, c[M];
    kv_sequence_init(&p, 3);
    assert_int_equal(t_append(pool, &p, prompt, 37), 0);
    for (int i = 0; i < M; i++) {
        kv_sequence_init(&c[i], 0);
        assert_int_equal(kv_sequence_fork(pool, &p, &c[i], NULL), 0);
    }
    kv_sequence_free(pool, &p);
    assert_int_equal(kv_pool_block_refcount(pool, c[0].blocks[0]), M);
    int32_t toks[M][64];
    const kv_sequence *all[M];
    for (int i = 0; i < M; i++) {
        memcpy(toks[i], prompt, sizeof prompt);
        for (int j = 37; j < 64; j++) toks[i][j] = 10000 * (i + 1) + j;
        all[i] = &c[i];
    }
    for (int step = 37; step < 50; step++)
        for (int i = 0; i < M; i++) assert_int_equal(t_append(pool, &c[i], toks[i], 1), 0);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.cow_copies, M - 1);
    t_check(pool, all, M);
    for (int i = 0; i < M; i++) {
        assert_int_equal(t_first_bad(pool, &c[i], toks[i]), -1);
        assert_int_equal(c[i].blocks[0], c[0].blocks[0]);
        assert_int_equal(c[i].blocks[1], c[0].blocks[1]);
    }
    for (int i = 0; i < M; i++) kv_sequence_free(pool, &c[i]);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

/* ---- prefix cache ----------------------------------------------------------------------------- */

static void test_prefix_reuse(void **state) {
    (void)state;
    kv_pool *pool = t_pool(16, 0, true, 0);
    int32_t ta[40], tb[50];
    t_fill(ta, 40, 7);
    memcpy(tb, ta, sizeof ta);
    for (int i = 40; i < 50; i++) tb[i] = 9000 + i;
    kv_sequence a, b, c;
    kv_sequence_init(&a, 1);
    assert_int_equal(t_append(pool, &a, ta, 40), 0);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.registered_blocks, 2);

    /* same 40-token prefix: 32 tokens (2 full blocks) are reused, the same blocks */
    kv_sequence_init(&b, 1);
    int64_t reused = -1;
    assert_int_equal(kv_prefix_lookup(pool, &b, tb, 50, &reused, NULL), 0);
    assert_int_equal(reused, 32);
    assert_int_equal(b.num_tokens, 32);
    assert_int_equal(b.num_blocks, 2);
    assert_int_equal(b.blocks[0], a.blocks[0]);
    assert_int_equal(b.blocks[1], a.blocks[1]);
    assert_int_equal(kv_pool_block_refcount(pool, a.blocks[1]), 2);
    assert_int_equal(t_first_bad(pool, &b, tb), -1);
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.lookups, 1);
    assert_int_equal(st.hit_blocks, 2);
    assert_int_equal(st.miss_blocks, 1); /* tokens 32..47 form a third full block, not cached */
    assert_int_equal(t_append(pool, &b, tb, 18), 0);
    assert_int_equal(t_first_bad(pool, &b, tb), -1);
    const kv_sequence *ab[] = {&a, &b};
    t_check(pool, ab, 2);

    /* another model id reuses nothing */
    kv_sequence_init(&c, 2);
    assert_int_equal(kv_prefix_lookup(pool, &c, ta, 40, &reused, NULL), 0);
    assert_int_equal(reused, 0);
    assert_int_equal(c.num_blocks, 0);
    kv_sequence_free(pool, &c); /* an empty sequence may still hold table memory */
    /* a different token in the second block: only the first block */
    kv_sequence_init(&c, 1);
    int32_t td[40];
    memcpy(td, ta, sizeof td);
    td[20] = -1;
    assert_int_equal(kv_prefix_lookup(pool, &c, td, 40, &reused, NULL), 0);
    assert_int_equal(reused, 16);
    kv_sequence_free(pool, &c);
    /* fewer tokens than a block: nothing (only whole blocks are reused) */
    kv_sequence_init(&c, 1);
    assert_int_equal(kv_prefix_lookup(pool, &c, ta, 15, &reused, NULL), 0);
    assert_int_equal(reused, 0);
    /* exactly one block's worth, e.g. n = prompt_len - 1 with a 17-token prompt */
    assert_int_equal(kv_prefix_lookup(pool, &c, ta, 16, &reused, NULL), 0);
    assert_int_equal(reused, 16);
    kv_sequence_free(pool, &c);

    /* after both finish, the full blocks stay cached and are found again */
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.used_blocks, 0);
    assert_int_equal(st.cached_blocks, 3); /* a's two + b's third (tokens 32..47) */
    kv_sequence_init(&c, 1);
    assert_int_equal(kv_prefix_lookup(pool, &c, tb, 50, &reused, NULL), 0);
    assert_int_equal(reused, 48);
    assert_int_equal(t_first_bad(pool, &c, tb), -1);
    kv_sequence_free(pool, &c);
    kv_pool_destroy(pool);
}

/* A conversation's next turn reuses the KV of its history, generated tokens included. */
static void test_next_turn_reuses_history(void **state) {
    (void)state;
    kv_pool *pool = t_pool(16, 0, true, 0);
    int32_t conv[80];
    t_fill(conv, 80, 40);
    kv_sequence s;
    kv_sequence_init(&s, 5);
    assert_int_equal(t_append(pool, &s, conv, 21), 0);          /* turn 1 prompt */
    for (int i = 21; i < 45; i++) assert_int_equal(t_append(pool, &s, conv, 1), 0); /* decode */
    kv_sequence_free(pool, &s);
    /* turn 2: the history (45 tokens) plus a new user message */
    kv_sequence_init(&s, 5);
    int64_t reused = 0;
    assert_int_equal(kv_prefix_lookup(pool, &s, conv, 60 - 1, &reused, NULL), 0);
    assert_int_equal(reused, 32);
    assert_int_equal(t_append(pool, &s, conv, 60 - 32), 0);
    assert_int_equal(t_first_bad(pool, &s, conv), -1);
    const kv_sequence *one[] = {&s};
    t_check(pool, one, 1);
    kv_sequence_free(pool, &s);
    kv_pool_destroy(pool);
}

/* Two sequences that compute the same block independently end up sharing one copy. */
static void test_dedup_identical_blocks(void **state) {
    (void)state;
    kv_pool *pool = t_pool(8, 0, true, 0);
    int32_t t[40];
    t_fill(t, 40, 77);
    kv_sequence a, b;
    kv_sequence_init(&a, 1);
    kv_sequence_init(&b, 1);
    assert_int_equal(t_append(pool, &a, t, 10), 0);
    assert_int_equal(t_append(pool, &b, t, 10), 0);
    assert_true(a.blocks[0] != b.blocks[0]);
    assert_int_equal(t_append(pool, &a, t, 10), 0); /* a's block 0 full: registered */
    assert_int_equal(t_append(pool, &b, t, 10), 0); /* b's identical block 0: dedup */
    assert_int_equal(a.blocks[0], b.blocks[0]);
    assert_int_equal(kv_pool_block_refcount(pool, a.blocks[0]), 2);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.dedup_blocks, 1);
    assert_int_equal(st.used_blocks, 3);
    assert_int_equal(st.free_blocks, 5);
    const kv_sequence *ab[] = {&a, &b};
    t_check(pool, ab, 2);
    assert_int_equal(t_append(pool, &b, t, 20), 0); /* b's block 1 chains to the shared block */
    assert_int_equal(t_append(pool, &a, t, 20), 0);
    assert_int_equal(a.blocks[1], b.blocks[1]);
    t_check(pool, ab, 2);
    assert_int_equal(t_first_bad(pool, &a, t), -1);
    assert_int_equal(t_first_bad(pool, &b, t), -1);
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

/* ---- LRU eviction ----------------------------------------------------------------------------- */

static void test_lru_eviction_order(void **state) {
    (void)state;
    kv_pool *pool = t_pool(4, 0, false, 0);
    int32_t t[3][16];
    kv_sequence s[3];
    for (int i = 0; i < 3; i++) {
        t_fill(t[i], 16, 100 * (i + 1));
        kv_sequence_init(&s[i], 1);
        assert_int_equal(t_append(pool, &s[i], t[i], 16), 0);
    }
    int32_t block_of[3] = {s[0].blocks[0], s[1].blocks[0], s[2].blocks[0]};
    kv_sequence_free(pool, &s[1]); /* LRU: 1 */
    kv_sequence_free(pool, &s[0]); /* LRU: 1, 0 */
    kv_sequence_free(pool, &s[2]); /* LRU: 1, 0, 2 */
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.cached_blocks, 3);
    assert_int_equal(st.free_blocks, 1);
    assert_int_equal(kv_pool_available_blocks(pool), 4);

    kv_sequence x;
    kv_sequence_init(&x, 9);
    assert_int_equal(kv_sequence_reserve(pool, &x, 16, NULL, NULL), 0); /* the free block first */
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(kv_sequence_reserve(pool, &x, 32, NULL, NULL), 0); /* evicts 1 (oldest) */
    assert_int_equal(x.blocks[1], block_of[1]);
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.evictions, 1);
    assert_false(kv_pool_block_is_cached(pool, block_of[1]));
    assert_true(kv_pool_block_is_cached(pool, block_of[0]));

    kv_sequence y;
    int64_t reused = -1;
    kv_sequence_init(&y, 1);
    assert_int_equal(kv_prefix_lookup(pool, &y, t[1], 16, &reused, NULL), 0);
    assert_int_equal(reused, 0); /* evicted */
    assert_int_equal(kv_prefix_lookup(pool, &y, t[0], 16, &reused, NULL), 0);
    assert_int_equal(reused, 16); /* a hit takes block 0 off the LRU */
    assert_int_equal(y.blocks[0], block_of[0]);
    assert_int_equal(kv_sequence_reserve(pool, &x, 48, NULL, NULL), 0); /* evicts 2, not 0 */
    assert_int_equal(x.blocks[2], block_of[2]);
    const kv_sequence *xy[] = {&x, &y};
    t_check(pool, xy, 2);
    assert_int_equal(kv_sequence_reserve(pool, &x, 64, NULL, NULL), DUEL_ELIMIT);
    kv_sequence_free(pool, &x);
    kv_sequence_free(pool, &y);
    t_check(pool, NULL, 0);
    assert_int_equal(kv_pool_drop_cached(pool), 1);
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.free_blocks, 4);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

/* A finished chain is evicted from its end, so its beginning (a shared prompt) survives. */
static void test_chain_evicted_from_the_end(void **state) {
    (void)state;
    kv_pool *pool = t_pool(4, 0, false, 0);
    int32_t t[48];
    t_fill(t, 48, 5);
    kv_sequence s, x;
    kv_sequence_init(&s, 1);
    assert_int_equal(t_append(pool, &s, t, 48), 0);
    int32_t c0 = s.blocks[0], c1 = s.blocks[1], c2 = s.blocks[2];
    kv_sequence_free(pool, &s);
    kv_sequence_init(&x, 2);
    assert_int_equal(kv_sequence_reserve(pool, &x, 32, NULL, NULL), 0); /* free block + evict c2 */
    assert_false(kv_pool_block_is_cached(pool, c2));
    assert_true(kv_pool_block_is_cached(pool, c1));
    assert_true(kv_pool_block_is_cached(pool, c0));
    kv_sequence_init(&s, 1);
    int64_t reused = 0;
    assert_int_equal(kv_prefix_lookup(pool, &s, t, 48, &reused, NULL), 0);
    assert_int_equal(reused, 32);
    kv_sequence_free(pool, &s);
    kv_sequence_free(pool, &x);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

/* ---- out of blocks, misuse, the checker ------------------------------------------------------- */

static void test_out_of_blocks_leaves_state_intact(void **state) {
    (void)state;
    kv_pool *pool = t_pool(4, 0, true, 0);
    int32_t t[64];
    t_fill(t, 64, 11);
    kv_sequence a, b, c;
    kv_sequence_init(&a, 1);
    kv_sequence_init(&b, 1);
    kv_sequence_init(&c, 1);
    assert_int_equal(t_append(pool, &a, t, 40), 0); /* 3 blocks, the last partial */
    assert_int_equal(kv_sequence_fork(pool, &a, &b, NULL), 0);
    assert_int_equal(kv_sequence_reserve(pool, &c, 16, NULL, NULL), 0); /* the last block */
    assert_int_equal(kv_pool_available_blocks(pool), 0);

    kv_sequence saved = b;
    int32_t saved_blocks[3];
    memcpy(saved_blocks, b.blocks, sizeof saved_blocks);
    kv_pool_stats before, after;
    kv_pool_stats_get(pool, &before);
    duel_error err = {0};
    kv_reserve_result r;
    assert_int_equal(kv_sequence_blocks_needed(pool, &b, 1), 1);  /* copy-on-write */
    assert_int_equal(kv_sequence_blocks_needed(pool, &b, 8), 1);  /* still within block 2 */
    assert_int_equal(kv_sequence_blocks_needed(pool, &b, 9), 2);  /* and one more */
    assert_int_equal(kv_sequence_blocks_needed(pool, &c, 16), 0); /* reserved already */
    assert_int_equal(kv_sequence_blocks_needed(pool, &c, 17), 1);
    assert_int_equal(kv_sequence_blocks_needed(pool, &a, 0), 0);
    assert_true(kv_sequence_blocks_needed(pool, &a, 1000000) > kv_pool_num_blocks(pool));
    assert_int_equal(kv_sequence_blocks_needed(pool, &a, -1), -1);
    /* b's next token needs a copy of the shared partial block: none left */
    assert_int_equal(kv_sequence_reserve(pool, &b, 1, &r, &err), DUEL_ELIMIT);
    assert_non_null(strstr(err.message, "out of blocks"));
    assert_int_equal(r.cow_src, -1);
    assert_int_equal(b.num_blocks, saved.num_blocks);
    assert_int_equal(b.num_tokens, saved.num_tokens);
    assert_memory_equal(b.blocks, saved_blocks, sizeof saved_blocks);
    assert_int_equal(kv_sequence_reserve(pool, &a, 30, NULL, NULL), DUEL_ELIMIT);
    assert_int_equal(kv_sequence_reserve(pool, &a, 1000000, NULL, NULL), DUEL_ELIMIT);
    assert_int_equal(a.num_blocks, 3);
    kv_pool_stats_get(pool, &after);
    assert_int_equal(after.out_of_blocks, before.out_of_blocks + 3);
    assert_int_equal(after.free_blocks, before.free_blocks);
    assert_int_equal(after.used_blocks, before.used_blocks);
    assert_int_equal(after.cow_copies, before.cow_copies);
    assert_int_equal(after.allocations, before.allocations);
    const kv_sequence *abc[] = {&a, &b, &c};
    t_check(pool, abc, 3);
    assert_int_equal(t_first_bad(pool, &a, t), -1);
    assert_int_equal(t_first_bad(pool, &b, t), -1);

    /* preempt c: now b's copy-on-write succeeds */
    kv_sequence_free(pool, &c);
    assert_int_equal(t_append(pool, &b, t, 1), 0);
    t_check(pool, abc, 2);
    assert_int_equal(t_first_bad(pool, &b, t), -1);
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

static void test_misuse_is_refused(void **state) {
    (void)state;
    kv_pool *pool = t_pool(8, 0, true, 0);
    int32_t t[64];
    t_fill(t, 64, 1);
    kv_sequence a, b;
    kv_sequence_init(&a, 1);
    kv_sequence_init(&b, 1);
    duel_error err = {0};
    /* commit without reserve */
    assert_int_equal(kv_sequence_commit(pool, &a, t, 1, &err), DUEL_EINVAL);
    assert_int_equal(a.num_tokens, 0);
    assert_int_equal(kv_sequence_reserve(pool, &a, -1, NULL, &err), DUEL_EINVAL);
    assert_int_equal(t_append(pool, &a, t, 20), 0);
    /* lookup into a non-empty sequence, fork into a non-empty one, fork onto itself */
    assert_int_equal(kv_prefix_lookup(pool, &a, t, 20, NULL, &err), DUEL_EINVAL);
    assert_int_equal(t_append(pool, &b, t, 3), 0);
    assert_int_equal(kv_sequence_fork(pool, &a, &b, &err), DUEL_EINVAL);
    assert_int_equal(kv_sequence_fork(pool, &a, &a, &err), DUEL_EINVAL);
    kv_sequence_free(pool, &b);
    /* fork between reserve and commit: the reserved space is not shared, commit is refused */
    assert_int_equal(kv_sequence_reserve(pool, &a, 20, NULL, NULL), 0);
    assert_int_equal(a.num_blocks, 3);
    assert_int_equal(kv_sequence_fork(pool, &a, &b, NULL), 0);
    assert_int_equal(b.num_blocks, 2);
    assert_int_equal(kv_sequence_commit(pool, &a, t + 20, 5, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "shared"));
    assert_int_equal(a.num_tokens, 20);
    /* more than reserved */
    assert_int_equal(kv_sequence_commit(pool, &a, t + 20, 29, &err), DUEL_EINVAL);
    const kv_sequence *ab[] = {&a, &b};
    t_check(pool, ab, 2);
    /* positions: locate and pointers stop at the reserved space */
    int32_t block = -1;
    int slot = -1;
    assert_int_equal(kv_sequence_locate(pool, &a, 47, &block, &slot, NULL), 0);
    assert_int_equal(block, a.blocks[2]);
    assert_int_equal(slot, 15);
    assert_int_equal(kv_sequence_locate(pool, &a, 48, &block, &slot, &err), DUEL_EINVAL);
    assert_int_equal(kv_sequence_locate(pool, &a, -1, &block, &slot, &err), DUEL_EINVAL);
    assert_non_null(kv_sequence_key(pool, &a, 1, 1, 47));
    assert_null(kv_sequence_key(pool, &a, 1, 1, 48));
    assert_null(kv_sequence_key(pool, &a, 2, 0, 0));
    assert_null(kv_sequence_value(pool, &a, 0, T_HEADS, 0));
    assert_ptr_equal(kv_sequence_value(pool, &a, 1, 1, 21),
                     kv_pool_block_values(pool, 1, a.blocks[1]) + (1 * 16 + 5) * T_DIM);
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

static void test_check_finds_violations(void **state) {
    (void)state;
    kv_pool *pool = t_pool(8, 0, false, 0);
    int32_t t[64];
    t_fill(t, 64, 1);
    kv_sequence a, b;
    kv_sequence_init(&a, 1);
    kv_sequence_init(&b, 1);
    assert_int_equal(t_append(pool, &a, t, 40), 0);
    assert_int_equal(kv_sequence_fork(pool, &a, &b, NULL), 0);
    duel_error err = {0};
    const kv_sequence *only_a[] = {&a};
    assert_int_equal(kv_pool_check(pool, only_a, 1, &err), DUEL_EFORMAT); /* b left out */
    assert_non_null(strstr(err.message, "refcount"));
    const kv_sequence *twice[] = {&a, &a};
    assert_int_equal(kv_pool_check(pool, twice, 2, &err), DUEL_EFORMAT);
    const kv_sequence *ab[] = {&a, &b};
    t_check(pool, ab, 2);
    /* a table that names a block twice */
    int32_t keep = b.blocks[1];
    b.blocks[1] = b.blocks[0];
    assert_int_equal(kv_pool_check(pool, ab, 2, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "twice"));
    b.blocks[1] = keep;
    /* more tokens than the table holds */
    b.num_tokens = 49;
    assert_int_equal(kv_pool_check(pool, ab, 2, &err), DUEL_EFORMAT);
    b.num_tokens = 40;
    /* a block the pool considers free */
    keep = b.blocks[2];
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_true(st.free_blocks > 0);
    b.blocks[2] = 7; /* never handed out */
    assert_int_equal(kv_pool_check(pool, ab, 2, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "state"));
    b.blocks[2] = -7;
    assert_int_equal(kv_pool_check(pool, ab, 2, &err), DUEL_EFORMAT);
    assert_non_null(strstr(err.message, "invalid block id"));
    b.blocks[2] = keep;
    t_check(pool, ab, 2);
    kv_sequence_free(pool, &a);
    kv_sequence_free(pool, &b);
    t_check(pool, NULL, 0);
    kv_pool_destroy(pool);
}

/* With 2-bit hashes almost every lookup meets colliding entries; the full key comparison must
 * still return exactly the longest cached prefix, with the right KV. */
static void test_collisions_never_return_wrong_kv(void **state) {
    (void)state;
    enum { N = 24, LEN = 64 };
    kv_pool *pool = t_pool(N * 4 + 8, 0, true, 2);
    duel_rng rng;
    duel_rng_seed(&rng, 123);
    int32_t t[N][LEN];
    kv_sequence s;
    int hits = 0;
    for (int i = 0; i < N; i++) {
        /* each block is one of two variants (the last one random), so prefixes often agree
         * for a block or more and differ after */
        for (int k = 0; k < LEN / 16; k++) {
            uint64_t variant = duel_rng_below(&rng, 2);
            for (int j = 0; j < 16; j++)
                t[i][k * 16 + j] = k == LEN / 16 - 1 ? (int32_t)duel_rng_below(&rng, 1000)
                                                     : (int32_t)(variant * 100 + (uint64_t)j);
        }
        uint64_t model = 1 + (uint64_t)(i % 2);
        /* expected reuse: the longest whole-block common prefix with an earlier same-model
         * sequence (nothing is evicted: the pool holds every block) */
        int64_t expect = 0;
        for (int e = 0; e < i; e++) {
            if (e % 2 != i % 2) continue;
            int64_t k = 0;
            while (k < LEN / 16 && memcmp(t[e] + k * 16, t[i] + k * 16, 16 * sizeof(int32_t)) == 0)
                k++;
            if (k * 16 > expect) expect = k * 16;
        }
        kv_sequence_init(&s, model);
        int64_t reused = -1;
        assert_int_equal(kv_prefix_lookup(pool, &s, t[i], LEN, &reused, NULL), 0);
        assert_int_equal(reused, expect);
        hits += reused > 0;
        assert_int_equal(t_first_bad(pool, &s, t[i]), -1);
        assert_int_equal(t_append(pool, &s, t[i], LEN - reused), 0);
        assert_int_equal(t_first_bad(pool, &s, t[i]), -1);
        const kv_sequence *one[] = {&s};
        t_check(pool, one, 1);
        kv_sequence_free(pool, &s);
    }
    assert_true(hits > N / 2);
    kv_pool_stats st;
    kv_pool_stats_get(pool, &st);
    assert_int_equal(st.evictions, 0);
    assert_true(st.registered_blocks > 40); /* many entries share the 4 hash values */
    kv_pool_destroy(pool);
}

/* ---- randomized stress ------------------------------------------------------------------------ */

#define S_SLOTS 24
#define S_PENDING 32
#define S_MAX_RUNNING 10 /* live sequences above which nothing new is admitted */
#define S_CONVS 6
#define S_CONV_LEN 400
#define S_VOCAB 40

typedef struct s_seq {
    bool live;
    kv_sequence kv;
    int32_t *tokens;  /* the whole planned history: committed prefix first */
    int64_t len;      /* tokens known (>= kv.num_tokens) */
    int64_t target;   /* finish when committed reaches this */
    uint64_t birth;   /* admission time; the youngest is preempted first */
} s_seq;

typedef struct s_request {
    int32_t *tokens;
    int64_t len, target;
    uint64_t model_id;
} s_request;

typedef struct s_ctx {
    kv_pool *pool;
    duel_rng rng;
    s_seq seq[S_SLOTS];
    s_request pending[S_PENDING];
    int num_pending;
    int32_t conv[S_CONVS][S_CONV_LEN];
    uint64_t clock;
    int64_t max_target;
    int64_t preemptions, finished, cancels, forks, admitted, reused_tokens;
} s_ctx;

static int s_live(s_ctx *c, const kv_sequence **out) {
    int n = 0;
    for (int i = 0; i < S_SLOTS; i++)
        if (c->seq[i].live) out[n++] = &c->seq[i].kv;
    return n;
}

static void s_check(s_ctx *c, const char *op, int iter) {
    const kv_sequence *live[S_SLOTS];
    int n = s_live(c, live);
    duel_error err = {0};
    int rc = kv_pool_check(c->pool, live, n, &err);
    if (rc) fprintf(stderr, "after %s at step %d: %s\n", op, iter, err.message);
    assert_int_equal(rc, 0);
}

static void s_verify(s_ctx *c, int i) {
    int64_t bad = t_first_bad(c->pool, &c->seq[i].kv, c->seq[i].tokens);
    if (bad >= 0) fprintf(stderr, "slot %d: wrong KV at position %lld\n", i, (long long)bad);
    assert_int_equal(bad, -1);
}

static void s_release(s_ctx *c, int i) {
    kv_sequence_free(c->pool, &c->seq[i].kv);
    free(c->seq[i].tokens);
    c->seq[i].tokens = NULL;
    c->seq[i].live = false;
}

/* Preemption: blocks freed, the request goes back to the queue with its history (recomputed
 * later, mostly from the prefix cache). When the queue is full the oldest waiting one is dropped
 * (a test simplification; the engine never drops). */
static void s_preempt(s_ctx *c, int i) {
    s_seq *s = &c->seq[i];
    if (c->num_pending == S_PENDING) {
        free(c->pending[0].tokens);
        memmove(c->pending, c->pending + 1, sizeof c->pending[0] * (S_PENDING - 1));
        c->num_pending--;
    }
    s_request *r = &c->pending[c->num_pending++];
    r->len = s->len; /* committed or not, the known tokens are recomputed on resumption */
    r->target = s->target;
    r->model_id = s->kv.model_id;
    r->tokens = malloc(sizeof(int32_t) * (size_t)(r->target > 0 ? r->target : 1));
    assert_non_null(r->tokens);
    if (r->len) memcpy(r->tokens, s->tokens, sizeof(int32_t) * (size_t)r->len);
    s_release(c, i);
    c->preemptions++;
}

static int s_youngest(s_ctx *c) {
    int y = -1;
    for (int i = 0; i < S_SLOTS; i++)
        if (c->seq[i].live && (y < 0 || c->seq[i].birth > c->seq[y].birth)) y = i;
    return y;
}

/* Commits tokens up to `upto` (known in s->tokens) in chunks, preempting the youngest when out of
 * blocks. Returns false when slot i itself was preempted. */
static bool s_grow(s_ctx *c, int i, int64_t upto, int iter) {
    s_seq *s = &c->seq[i];
    while (s->kv.num_tokens < upto) {
        int64_t n = 1 + (int64_t)duel_rng_below(&c->rng, 24);
        if (n > upto - s->kv.num_tokens) n = upto - s->kv.num_tokens;
        int rc = t_append(c->pool, &s->kv, s->tokens, n);
        if (rc == 0) continue;
        assert_int_equal(rc, DUEL_ELIMIT);
        s_check(c, "refused reserve", iter); /* the refusal left everything intact */
        int victim = s_youngest(c);
        s_preempt(c, victim);
        s_check(c, "preempt", iter);
        if (victim == i) return false;
    }
    return true;
}

static int s_free_slot(s_ctx *c) {
    for (int i = 0; i < S_SLOTS; i++)
        if (!c->seq[i].live) return i;
    return -1;
}

/* Admits a request: prefix lookup (reused KV verified), then prefill of the rest. */
static void s_admit(s_ctx *c, int slot, s_request *r, int iter) {
    s_seq *s = &c->seq[slot];
    memset(s, 0, sizeof *s);
    s->live = true;
    s->tokens = r->tokens;
    s->len = r->len;
    s->target = r->target;
    s->birth = ++c->clock;
    kv_sequence_init(&s->kv, r->model_id);
    int64_t reused = 0;
    assert_int_equal(kv_prefix_lookup(c->pool, &s->kv, s->tokens, s->len > 0 ? s->len - 1 : 0,
                                      &reused, NULL), 0);
    c->reused_tokens += reused;
    c->admitted++;
    s_verify(c, slot);
    s_check(c, "lookup", iter);
    s_grow(c, slot, s->len, iter);
}

static void s_new_request(s_ctx *c, s_request *r) {
    r->model_id = 1 + duel_rng_below(&c->rng, 2);
    const int32_t *conv = c->conv[duel_rng_below(&c->rng, S_CONVS)];
    r->len = 1 + (int64_t)duel_rng_below(&c->rng, (uint64_t)(c->max_target / 2));
    r->target = r->len + 1 + (int64_t)duel_rng_below(&c->rng, (uint64_t)(c->max_target / 2));
    r->tokens = malloc(sizeof(int32_t) * (size_t)r->target);
    assert_non_null(r->tokens);
    /* a shared conversation prefix, then (sometimes) a private tail */
    int64_t shared = duel_rng_below(&c->rng, 4) ? r->len : (int64_t)duel_rng_below(&c->rng, (uint64_t)r->len + 1);
    for (int64_t p = 0; p < r->len; p++)
        r->tokens[p] = p < shared ? conv[p] : (int32_t)duel_rng_below(&c->rng, S_VOCAB);
}

static void s_run(uint64_t seed, int block_size, int hash_bits, int steps) {
    s_ctx *c = calloc(1, sizeof *c);
    assert_non_null(c);
    duel_rng_seed(&c->rng, seed);
    /* a tiny budget: 40 blocks' worth of bytes */
    kv_pool_params p = {.num_layers = T_LAYERS, .num_kv_heads = T_HEADS, .head_dim = T_DIM,
                        .block_size = block_size, .allocate_storage = true,
                        .hash_bits = hash_bits};
    p.memory_budget_bytes = 40 * kv_pool_block_bytes(&p) + 100;
    duel_error err = {0};
    assert_int_equal(kv_pool_create(&p, &c->pool, &err), 0);
    assert_int_equal(kv_pool_num_blocks(c->pool), 40);
    c->max_target = (int64_t)40 * kv_pool_block_size(c->pool) / 2;
    if (c->max_target > S_CONV_LEN) c->max_target = S_CONV_LEN;
    for (int i = 0; i < S_CONVS; i++)
        for (int j = 0; j < S_CONV_LEN; j++)
            c->conv[i][j] = (int32_t)duel_rng_below(&c->rng, S_VOCAB);

    for (int iter = 0; iter < steps; iter++) {
        int op = (int)duel_rng_below(&c->rng, 100);
        const kv_sequence *live[S_SLOTS];
        int nlive = s_live(c, live);
        int pick = -1;
        if (nlive > 0) {
            int k = (int)duel_rng_below(&c->rng, (uint64_t)nlive);
            for (int i = 0; i < S_SLOTS; i++)
                if (c->seq[i].live && k-- == 0) pick = i;
        }
        int slot = s_free_slot(c);
        /* admission control, as a scheduler would; forks may exceed it */
        int admit = nlive < S_MAX_RUNNING ? slot : -1;
        if (op < 15 && admit >= 0) { /* admit a new request */
            s_request r;
            s_new_request(c, &r);
            s_admit(c, admit, &r, iter);
        } else if (op < 25 && admit >= 0 && c->num_pending > 0) { /* resume a preempted one */
            s_request r = c->pending[0];
            memmove(c->pending, c->pending + 1, sizeof r * (size_t)(--c->num_pending));
            s_admit(c, admit, &r, iter);
        } else if (op < 75 && pick >= 0) { /* decode a few tokens */
            s_seq *s = &c->seq[pick];
            int64_t upto = s->kv.num_tokens + 1 + (int64_t)duel_rng_below(&c->rng, 4);
            if (upto > s->target) upto = s->target;
            for (int64_t q = s->len; q < upto; q++)
                s->tokens[q] = (int32_t)duel_rng_below(&c->rng, S_VOCAB);
            if (upto > s->len) s->len = upto;
            if (s_grow(c, pick, upto, iter) && s->kv.num_tokens >= s->target) {
                s_verify(c, pick);
                s_release(c, pick); /* finished */
                c->finished++;
            }
        } else if (op < 85 && pick >= 0 && slot >= 0) { /* fork a candidate */
            s_seq *src = &c->seq[pick], *dst = &c->seq[slot];
            memset(dst, 0, sizeof *dst);
            kv_sequence_init(&dst->kv, 0);
            assert_int_equal(kv_sequence_fork(c->pool, &src->kv, &dst->kv, NULL), 0);
            dst->live = true;
            dst->target = src->target;
            dst->len = src->kv.num_tokens;
            dst->birth = ++c->clock;
            dst->tokens = malloc(sizeof(int32_t) * (size_t)dst->target);
            assert_non_null(dst->tokens);
            memcpy(dst->tokens, src->tokens, sizeof(int32_t) * (size_t)dst->len);
            c->forks++;
        } else if (op < 89 && pick >= 0) { /* cancel */
            s_release(c, pick);
            c->cancels++;
        } else if (op < 92 && pick >= 0) { /* preempt explicitly */
            s_preempt(c, pick);
        } else { /* read every live sequence back through its table */
            for (int i = 0; i < S_SLOTS; i++)
                if (c->seq[i].live) s_verify(c, i);
        }
        s_check(c, "step", iter);
    }

    for (int i = 0; i < S_SLOTS; i++)
        if (c->seq[i].live) {
            s_verify(c, i);
            s_release(c, i);
        }
    for (int i = 0; i < c->num_pending; i++) free(c->pending[i].tokens);
    t_check(c->pool, NULL, 0);
    kv_pool_stats st;
    kv_pool_stats_get(c->pool, &st);
    assert_int_equal(st.used_blocks, 0);
    assert_int_equal(st.free_blocks + st.cached_blocks, st.num_blocks);
    assert_int_equal(st.registered_blocks, st.cached_blocks);
    /* the run exercised what it is meant to */
    assert_true(c->preemptions > 10);
    assert_true(c->forks > 50);
    assert_true(c->finished > 20);
    assert_true(st.cow_copies > 10);
    assert_true(st.evictions > 10);
    assert_true(st.hit_blocks > 50);
    assert_true(st.out_of_blocks > 10);
    if (getenv("KV_STRESS_VERBOSE"))
        fprintf(stderr,
                "seed %llu bs %d hash_bits %d: admitted %lld finished %lld forks %lld cancels %lld "
                "preemptions %lld reused %lld tokens; hits %llu misses %llu evictions %llu cow %llu "
                "dedup %llu refused %llu\n",
                (unsigned long long)seed, block_size, hash_bits, (long long)c->admitted,
                (long long)c->finished, (long long)c->forks, (long long)c->cancels,
                (long long)c->preemptions, (long long)c->reused_tokens,
                (unsigned long long)st.hit_blocks, (unsigned long long)st.miss_blocks,
                (unsigned long long)st.evictions, (unsigned long long)st.cow_copies,
                (unsigned long long)st.dedup_blocks, (unsigned long long)st.out_of_blocks);
    kv_pool_destroy(c->pool);
    free(c);
}

static void test_stress_block16(void **state) {
    (void)state;
    s_run(1, 16, 0, 5000);
}

static void test_stress_colliding_hashes(void **state) {
    (void)state;
    s_run(2, 16, 3, 5000);
}

static void test_stress_block4(void **state) {
    (void)state;
    s_run(3, 4, 0, 5000);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity_from_budget),
        cmocka_unit_test(test_block_hash),
        cmocka_unit_test(test_fork_cow_partial_block),
        cmocka_unit_test(test_cow_bf16_storage),
        cmocka_unit_test(test_full_shared_block_never_written),
        cmocka_unit_test(test_m_candidates_share_prompt),
        cmocka_unit_test(test_prefix_reuse),
        cmocka_unit_test(test_next_turn_reuses_history),
        cmocka_unit_test(test_dedup_identical_blocks),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_chain_evicted_from_the_end),
        cmocka_unit_test(test_out_of_blocks_leaves_state_intact),
        cmocka_unit_test(test_misuse_is_refused),
        cmocka_unit_test(test_check_finds_violations),
        cmocka_unit_test(test_collisions_never_return_wrong_kv),
        cmocka_unit_test(test_stress_block16),
        cmocka_unit_test(test_stress_colliding_hashes),
        cmocka_unit_test(test_stress_block4),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
