/* kv_cache.c: the paged KV cache's block pool, block tables, copy-on-write and prefix cache (see
 * kv_cache.h for the model and the storage layout).
 *
 * Bookkeeping per block: a reference count, a state (free / cached / used), links for the free or
 * LRU list it is on (both intrusive doubly-linked lists over block ids), and, while registered in
 * the prefix cache, its chain hash, model id, parent block id and the parent's generation. The
 * prefix cache is a hash table of buckets chained through the blocks themselves.
 *
 * Exactness: a cache entry is keyed by (model id, parent block identity, tokens). Identity is the
 * parent's block id together with its generation, a counter bumped whenever the block leaves the
 * prefix cache, so an entry whose parent was evicted (and whose id may now hold other data) can
 * never match again. Lookups walk from the first block and compare keys in full, so by induction a
 * matched chain holds exactly the KV of the requested tokens; the hash only speeds up the search.
 * The invariant that makes this work: in every sequence, the full committed block at table index
 * k > 0 is registered with parent = the block at index k-1 (kv_sequence_commit dedups a block
 * whose key is already cached instead of registering a second copy). It also means a parent is
 * referenced whenever its child is and is released after it (kv_sequence_free releases from the
 * end), so the LRU always evicts a chain from its end; the generation check is the safety net
 * should eviction ever take a parent first. kv_pool_check verifies all of this. */
#include "kv_cache.h"

#include <stdlib.h>
#include <string.h>

enum { KV_STATE_FREE = 0, KV_STATE_CACHED = 1, KV_STATE_USED = 2 };

typedef struct kv_block_meta {
    int32_t refcount;
    uint8_t state;
    uint8_t registered;     /* in the prefix cache's hash table */
    int32_t prev, next;     /* free or LRU list links (-1 at the ends) */
    int32_t hash_next;      /* next block in the same hash bucket (-1 at the end) */
    int32_t parent_block;   /* registered only: -1 for a first block */
    uint64_t parent_gen;    /* registered only: generation of parent_block when registered */
    uint64_t parent_hash;   /* registered only: chain hash of the parent (KV_HASH_ROOT if none) */
    uint64_t hash;          /* registered only: chain hash of this block */
    uint64_t model_id;      /* registered only */
    uint64_t gen;           /* bumped each time the block leaves the prefix cache */
} kv_block_meta;

typedef struct kv_list {
    int32_t head, tail, count; /* head: next to allocate / least recently released */
} kv_list;

struct kv_pool {
    kv_pool_params params;      /* block_size and bytes_per_element filled in */
    int32_t num_blocks;
    int block_size;
    size_t block_floats;        /* num_kv_heads * block_size * head_dim */
    kv_block_meta *meta;
    int32_t *tokens;            /* [num_blocks][block_size] token ids recorded per block */
    int32_t *buckets;           /* prefix cache: bucket -> first block, -1 when empty */
    uint64_t bucket_mask;
    uint64_t hash_mask;         /* all ones unless params.hash_bits truncates hashes (tests) */
    kv_list free_list;
    kv_list lru;
    int32_t registered;
    unsigned char *storage;     /* [layer][K, V][num_blocks][kv_heads][block_size][head_dim] of
                                   bytes_per_element (4: f32, 2: bf16) */
    int32_t *copies;            /* record_copies: (src, dst) pairs not yet taken, oldest first */
    int num_copies, cap_copies;
    kv_pool_stats stats;
};

/* ---- hashing ---------------------------------------------------------------------------------- */

/* splitmix64's finalizer: a bijective 64-bit mixer with full avalanche. */
static uint64_t kv_mix64(uint64_t x) {
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t kv_block_hash(uint64_t parent_hash, uint64_t model_id, const int32_t *tokens, int n) {
    uint64_t h = kv_mix64(parent_hash ^ 0x9e3779b97f4a7c15ull);
    h = kv_mix64(h ^ model_id);
    h = kv_mix64(h ^ (uint64_t)(uint32_t)n);
    /* two tokens per round; the round counter keeps (a, b) and (b, a) apart */
    int i = 0;
    for (; i + 1 < n; i += 2) {
        uint64_t pair = (uint64_t)(uint32_t)tokens[i] | ((uint64_t)(uint32_t)tokens[i + 1] << 32);
        h = kv_mix64(h ^ kv_mix64(pair + (uint64_t)i * 0x9e3779b97f4a7c15ull));
    }
    if (i < n) h = kv_mix64(h ^ kv_mix64((uint64_t)(uint32_t)tokens[i] + 0xa0761d6478bd642full));
    return h;
}

static uint64_t kv_pool_hash(const kv_pool *pool, uint64_t parent_hash, uint64_t model_id,
                             const int32_t *tokens) {
    return kv_block_hash(parent_hash, model_id, tokens, pool->block_size) & pool->hash_mask;
}

/* ---- lists ------------------------------------------------------------------------------------ */

static void kv_list_init(kv_list *list) {
    list->head = list->tail = -1;
    list->count = 0;
}

static void kv_list_push_tail(kv_pool *pool, kv_list *list, int32_t b) {
    kv_block_meta *m = &pool->meta[b];
    m->prev = list->tail;
    m->next = -1;
    if (list->tail >= 0)
        pool->meta[list->tail].next = b;
    else
        list->head = b;
    list->tail = b;
    list->count++;
}

static void kv_list_remove(kv_pool *pool, kv_list *list, int32_t b) {
    kv_block_meta *m = &pool->meta[b];
    if (m->prev >= 0)
        pool->meta[m->prev].next = m->next;
    else
        list->head = m->next;
    if (m->next >= 0)
        pool->meta[m->next].prev = m->prev;
    else
        list->tail = m->prev;
    m->prev = m->next = -1;
    list->count--;
}

/* ---- prefix cache ----------------------------------------------------------------------------- */

static const int32_t *kv_tokens_of(const kv_pool *pool, int32_t b) {
    return pool->tokens + (size_t)b * (size_t)pool->block_size;
}

static void kv_cache_insert(kv_pool *pool, int32_t b, uint64_t hash, uint64_t model_id,
                            int32_t parent, uint64_t parent_hash) {
    kv_block_meta *m = &pool->meta[b];
    m->registered = 1;
    m->hash = hash;
    m->model_id = model_id;
    m->parent_block = parent;
    m->parent_gen = parent >= 0 ? pool->meta[parent].gen : 0;
    m->parent_hash = parent_hash;
    size_t bucket = (size_t)(hash & pool->bucket_mask);
    m->hash_next = pool->buckets[bucket];
    pool->buckets[bucket] = b;
    pool->registered++;
}

static void kv_cache_remove(kv_pool *pool, int32_t b) {
    kv_block_meta *m = &pool->meta[b];
    int32_t *link = &pool->buckets[m->hash & pool->bucket_mask];
    while (*link != b) link = &pool->meta[*link].hash_next;
    *link = m->hash_next;
    m->hash_next = -1;
    m->registered = 0;
    m->gen++; /* children registered under the old identity can never match again */
    pool->registered--;
}

/* The registered block with exactly this key, or -1. */
static int32_t kv_cache_find(const kv_pool *pool, uint64_t hash, uint64_t model_id, int32_t parent,
                             const int32_t *tokens) {
    uint64_t parent_gen = parent >= 0 ? pool->meta[parent].gen : 0;
    for (int32_t b = pool->buckets[hash & pool->bucket_mask]; b >= 0; b = pool->meta[b].hash_next) {
        const kv_block_meta *m = &pool->meta[b];
        if (m->hash == hash && m->model_id == model_id && m->parent_block == parent &&
            m->parent_gen == parent_gen &&
            memcmp(kv_tokens_of(pool, b), tokens, sizeof(int32_t) * (size_t)pool->block_size) == 0)
            return b;
    }
    return -1;
}

/* ---- block life cycle ------------------------------------------------------------------------- */

/* Takes a block for exclusive use (refcount 1): from the free list, else the least recently
 * released cached block. The caller has checked that one is available. */
static int32_t kv_block_take(kv_pool *pool) {
    int32_t b = pool->free_list.head;
    if (b >= 0) {
        kv_list_remove(pool, &pool->free_list, b);
    } else {
        b = pool->lru.head;
        kv_list_remove(pool, &pool->lru, b);
        kv_cache_remove(pool, b);
        pool->stats.evictions++;
    }
    pool->meta[b].refcount = 1;
    pool->meta[b].state = KV_STATE_USED;
    pool->stats.allocations++;
    return b;
}

/* One more reference to a block that is used or cached. */
static void kv_block_ref(kv_pool *pool, int32_t b) {
    kv_block_meta *m = &pool->meta[b];
    if (m->state == KV_STATE_CACHED) {
        kv_list_remove(pool, &pool->lru, b);
        m->state = KV_STATE_USED;
    }
    m->refcount++;
}

static void kv_block_unref(kv_pool *pool, int32_t b) {
    kv_block_meta *m = &pool->meta[b];
    if (--m->refcount > 0) return;
    if (m->registered) {
        m->state = KV_STATE_CACHED;
        kv_list_push_tail(pool, &pool->lru, b);
    } else {
        m->state = KV_STATE_FREE;
        kv_list_push_tail(pool, &pool->free_list, b);
    }
}

static bool kv_block_writable(const kv_pool *pool, int32_t b) {
    return pool->meta[b].refcount == 1 && !pool->meta[b].registered;
}

static unsigned char *kv_block_base(kv_pool *pool, int layer, int32_t block, int which);

static void kv_block_copy_data(kv_pool *pool, int32_t dst, int32_t src) {
    memcpy(pool->tokens + (size_t)dst * (size_t)pool->block_size, kv_tokens_of(pool, src),
           sizeof(int32_t) * (size_t)pool->block_size);
    if (!pool->storage) return;
    size_t bytes = pool->block_floats * (size_t)pool->params.bytes_per_element;
    for (int layer = 0; layer < pool->params.num_layers; layer++)
        for (int which = 0; which < 2; which++)
            memcpy(kv_block_base(pool, layer, dst, which), kv_block_base(pool, layer, src, which),
                   bytes);
}

/* ---- pool ------------------------------------------------------------------------------------- */

static int kv_params_valid(const kv_pool_params *p) {
    int bs = p->block_size ? p->block_size : KV_BLOCK_SIZE;
    int elem = p->bytes_per_element ? p->bytes_per_element : 4;
    return p->hash_bits >= 0 && p->hash_bits <= 64 && p->num_layers > 0 && p->num_layers <= 4096 && p->num_kv_heads > 0 &&
           p->num_kv_heads <= 4096 && p->head_dim > 0 && p->head_dim <= 65536 && bs > 0 &&
           bs <= KV_MAX_BLOCK_SIZE && elem > 0 && elem <= 16;
}

size_t kv_pool_block_bytes(const kv_pool_params *p) {
    if (!p || !kv_params_valid(p)) return 0;
    /* every factor is bounded above, so the product fits in 64 bits */
    uint64_t bytes = 2ull * (uint64_t)p->num_layers * (uint64_t)p->num_kv_heads *
                     (uint64_t)(p->block_size ? p->block_size : KV_BLOCK_SIZE) *
                     (uint64_t)p->head_dim * (uint64_t)(p->bytes_per_element ? p->bytes_per_element : 4);
    return bytes > SIZE_MAX ? 0 : (size_t)bytes;
}

int kv_pool_create(const kv_pool_params *params, kv_pool **out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "kv pool: no output pointer");
    *out = NULL;
    if (!params || !kv_params_valid(params))
        return duel_error_set(err, DUEL_EINVAL,
                              "kv pool: invalid sizes (layers %d, kv heads %d, head_dim %d, "
                              "block_size %d, bytes_per_element %d)",
                              params ? params->num_layers : 0, params ? params->num_kv_heads : 0,
                              params ? params->head_dim : 0, params ? params->block_size : 0,
                              params ? params->bytes_per_element : 0);
    if (params->allocate_storage && params->bytes_per_element != 0 &&
        params->bytes_per_element != 4 && params->bytes_per_element != 2)
        return duel_error_set(err, DUEL_EINVAL,
                              "kv pool: host storage is f32 (4 bytes) or bf16 (2), not %d bytes "
                              "per element",
                              params->bytes_per_element);
    if (params->allocate_storage && params->record_copies)
        return duel_error_set(err, DUEL_EINVAL,
                              "kv pool: record_copies is for a backend's own storage, not the "
                              "pool's host storage (which the pool copies itself)");
    if ((params->memory_budget_bytes != 0) == (params->num_blocks != 0))
        return duel_error_set(err, DUEL_EINVAL,
                              "kv pool: give exactly one of memory_budget_bytes and num_blocks");
    if (params->num_blocks < 0)
        return duel_error_set(err, DUEL_EINVAL, "kv pool: num_blocks %d is negative",
                              params->num_blocks);

    size_t block_bytes = kv_pool_block_bytes(params);
    uint64_t num_blocks = params->num_blocks ? (uint64_t)params->num_blocks
                                             : (uint64_t)(params->memory_budget_bytes / block_bytes);
    if (num_blocks == 0)
        return duel_error_set(err, DUEL_ELIMIT,
                              "kv pool: memory budget of %zu bytes is smaller than one block "
                              "(%zu bytes)",
                              params->memory_budget_bytes, block_bytes);
    if (num_blocks > KV_MAX_BLOCKS)
        return duel_error_set(err, DUEL_ELIMIT,
                              "kv pool: %llu blocks exceed the limit of %d (lower the memory budget)",
                              (unsigned long long)num_blocks, KV_MAX_BLOCKS);

    kv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return duel_error_set(err, DUEL_ENOMEM, "kv pool: out of memory");
    pool->params = *params;
    pool->params.block_size = params->block_size ? params->block_size : KV_BLOCK_SIZE;
    pool->params.bytes_per_element = params->bytes_per_element ? params->bytes_per_element : 4;
    pool->params.num_blocks = (int)num_blocks;
    pool->num_blocks = (int32_t)num_blocks;
    pool->block_size = pool->params.block_size;
    pool->hash_mask = params->hash_bits > 0 && params->hash_bits < 64
                          ? (1ull << params->hash_bits) - 1
                          : ~0ull;
    pool->block_floats =
        (size_t)params->num_kv_heads * (size_t)pool->block_size * (size_t)params->head_dim;

    uint64_t buckets = 16;
    while (buckets < num_blocks) buckets <<= 1;
    pool->bucket_mask = buckets - 1;
    pool->meta = calloc((size_t)num_blocks, sizeof *pool->meta);
    pool->tokens = calloc((size_t)num_blocks * (size_t)pool->block_size, sizeof(int32_t));
    pool->buckets = malloc((size_t)buckets * sizeof(int32_t));
    if (!pool->meta || !pool->tokens || !pool->buckets) {
        kv_pool_destroy(pool);
        return duel_error_set(err, DUEL_ENOMEM, "kv pool: out of memory for %llu blocks",
                              (unsigned long long)num_blocks);
    }
    if (params->allocate_storage) {
        /* block_bytes * num_blocks is the whole K/V storage; check it fits before allocating */
        if ((uint64_t)block_bytes > SIZE_MAX / num_blocks) {
            kv_pool_destroy(pool);
            return duel_error_set(err, DUEL_ELIMIT, "kv pool: storage size overflows");
        }
        size_t bytes = block_bytes * (size_t)num_blocks;
        pool->storage = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!pool->storage) {
            kv_pool_destroy(pool);
            return duel_error_set(err, DUEL_ENOMEM, "kv pool: cannot allocate %zu bytes of KV storage",
                                  bytes);
        }
        memset(pool->storage, 0, bytes);
    }
    for (uint64_t i = 0; i < buckets; i++) pool->buckets[i] = -1;
    kv_list_init(&pool->free_list);
    kv_list_init(&pool->lru);
    for (int32_t b = 0; b < pool->num_blocks; b++) {
        pool->meta[b].hash_next = -1;
        pool->meta[b].parent_block = -1;
        pool->meta[b].state = KV_STATE_FREE;
        kv_list_push_tail(pool, &pool->free_list, b);
    }
    *out = pool;
    return DUEL_OK;
}

void kv_pool_destroy(kv_pool *pool) {
    if (!pool) return;
    free(pool->storage);
    free(pool->copies);
    free(pool->meta);
    free(pool->tokens);
    free(pool->buckets);
    free(pool);
}

int kv_pool_take_copies(kv_pool *pool, int32_t *pairs, int cap) {
    int n = pool->num_copies < cap ? pool->num_copies : cap;
    if (n <= 0) return 0;
    memcpy(pairs, pool->copies, (size_t)n * 2 * sizeof *pairs);
    memmove(pool->copies, pool->copies + 2 * n,
            (size_t)(pool->num_copies - n) * 2 * sizeof *pool->copies);
    pool->num_copies -= n;
    return n;
}

int kv_pool_pending_copies(const kv_pool *pool) { return pool->num_copies; }

int32_t kv_pool_num_blocks(const kv_pool *pool) { return pool->num_blocks; }
int kv_pool_block_size(const kv_pool *pool) { return pool->block_size; }
const kv_pool_params *kv_pool_get_params(const kv_pool *pool) { return &pool->params; }

int32_t kv_pool_available_blocks(const kv_pool *pool) {
    return pool->free_list.count + pool->lru.count;
}

void kv_pool_stats_get(const kv_pool *pool, kv_pool_stats *out) {
    *out = pool->stats;
    out->num_blocks = pool->num_blocks;
    out->free_blocks = pool->free_list.count;
    out->cached_blocks = pool->lru.count;
    out->used_blocks = pool->num_blocks - pool->free_list.count - pool->lru.count;
    out->registered_blocks = pool->registered;
}

int32_t kv_pool_drop_cached(kv_pool *pool) {
    int32_t dropped = 0;
    while (pool->lru.head >= 0) {
        int32_t b = pool->lru.head;
        kv_list_remove(pool, &pool->lru, b);
        kv_cache_remove(pool, b);
        pool->meta[b].state = KV_STATE_FREE;
        kv_list_push_tail(pool, &pool->free_list, b);
        dropped++;
    }
    return dropped;
}

/* ---- storage ---------------------------------------------------------------------------------- */

static unsigned char *kv_layer_base(kv_pool *pool, int layer, int which) {
    if (!pool || !pool->storage || layer < 0 || layer >= pool->params.num_layers) return NULL;
    size_t per_array = pool->block_floats * (size_t)pool->num_blocks *
                       (size_t)pool->params.bytes_per_element;
    return pool->storage + ((size_t)layer * 2 + (size_t)which) * per_array;
}

static unsigned char *kv_block_base(kv_pool *pool, int layer, int32_t block, int which) {
    unsigned char *base = kv_layer_base(pool, layer, which);
    if (!base || block < 0 || block >= pool->num_blocks) return NULL;
    return base + (size_t)block * pool->block_floats * (size_t)pool->params.bytes_per_element;
}

static float *kv_f32(kv_pool *pool, unsigned char *p) {
    return p && pool->params.bytes_per_element == 4 ? (float *)(void *)p : NULL;
}

static uint16_t *kv_bf16(kv_pool *pool, unsigned char *p) {
    return p && pool->params.bytes_per_element == 2 ? (uint16_t *)(void *)p : NULL;
}

float *kv_pool_layer_keys(kv_pool *pool, int layer) {
    return kv_f32(pool, kv_layer_base(pool, layer, 0));
}
float *kv_pool_layer_values(kv_pool *pool, int layer) {
    return kv_f32(pool, kv_layer_base(pool, layer, 1));
}
uint16_t *kv_pool_layer_keys_bf16(kv_pool *pool, int layer) {
    return kv_bf16(pool, kv_layer_base(pool, layer, 0));
}
uint16_t *kv_pool_layer_values_bf16(kv_pool *pool, int layer) {
    return kv_bf16(pool, kv_layer_base(pool, layer, 1));
}

int kv_dtype_parse(const char *text, int *bytes_per_element, duel_error *err) {
    if (text && strcmp(text, "f32") == 0) *bytes_per_element = 4;
    else if (text && strcmp(text, "bf16") == 0) *bytes_per_element = 2;
    else
        return duel_error_set(err, DUEL_EINVAL, "KV dtype '%s' is not one of f32, bf16",
                              text ? text : "(null)");
    return DUEL_OK;
}

float *kv_pool_block_keys(kv_pool *pool, int layer, int32_t block) {
    return kv_f32(pool, kv_block_base(pool, layer, block, 0));
}
float *kv_pool_block_values(kv_pool *pool, int layer, int32_t block) {
    return kv_f32(pool, kv_block_base(pool, layer, block, 1));
}

const int32_t *kv_pool_block_tokens(const kv_pool *pool, int32_t block) {
    if (!pool || block < 0 || block >= pool->num_blocks) return NULL;
    return kv_tokens_of(pool, block);
}

int32_t kv_pool_block_refcount(const kv_pool *pool, int32_t block) {
    if (!pool || block < 0 || block >= pool->num_blocks) return -1;
    return pool->meta[block].refcount;
}

bool kv_pool_block_is_cached(const kv_pool *pool, int32_t block) {
    if (!pool || block < 0 || block >= pool->num_blocks) return false;
    return pool->meta[block].registered != 0;
}

/* ---- sequences -------------------------------------------------------------------------------- */

void kv_sequence_init(kv_sequence *seq, uint64_t model_id) {
    memset(seq, 0, sizeof *seq);
    seq->model_id = model_id;
}

void kv_sequence_destroy(kv_sequence *seq) {
    if (!seq) return;
    free(seq->blocks);
    seq->blocks = NULL;
    seq->num_blocks = seq->table_capacity = 0;
    seq->num_tokens = 0;
}

void kv_sequence_free(kv_pool *pool, kv_sequence *seq) {
    if (!seq) return;
    /* last block first: it reaches the LRU before its parent, so chains are evicted from the
     * end and their beginnings (the shared prompt) survive longest */
    for (int32_t i = seq->num_blocks - 1; i >= 0; i--) kv_block_unref(pool, seq->blocks[i]);
    kv_sequence_destroy(seq);
}

/* Ensures the table has room for `want` entries; nothing else changes. */
static int kv_table_grow(kv_sequence *seq, int64_t want, duel_error *err) {
    if (want <= seq->table_capacity) return DUEL_OK;
    if (want > KV_MAX_BLOCKS)
        return duel_error_set(err, DUEL_ELIMIT, "kv sequence: %lld blocks exceed the limit",
                              (long long)want);
    int64_t cap = seq->table_capacity ? seq->table_capacity : 8;
    while (cap < want) cap *= 2;
    int32_t *grown = realloc(seq->blocks, (size_t)cap * sizeof(int32_t));
    if (!grown) return duel_error_set(err, DUEL_ENOMEM, "kv sequence: out of memory for its table");
    seq->blocks = grown;
    seq->table_capacity = (int32_t)cap;
    return DUEL_OK;
}

static bool kv_sequence_is_empty(const kv_sequence *seq) {
    return seq->num_blocks == 0 && seq->num_tokens == 0;
}

int kv_prefix_lookup(kv_pool *pool, kv_sequence *seq, const int32_t *tokens, int64_t n,
                     int64_t *reused, duel_error *err) {
    if (reused) *reused = 0;
    if (!pool || !seq || n < 0 || (n > 0 && !tokens))
        return duel_error_set(err, DUEL_EINVAL, "kv prefix lookup: invalid arguments");
    if (!kv_sequence_is_empty(seq))
        return duel_error_set(err, DUEL_EINVAL, "kv prefix lookup: the sequence is not empty");
    pool->stats.lookups++;
    int64_t full = n / pool->block_size;
    if (full > pool->num_blocks) full = pool->num_blocks; /* cannot match more than the pool */
    int rc = kv_table_grow(seq, full, err);
    if (rc) return rc;

    uint64_t parent_hash = KV_HASH_ROOT;
    int32_t parent = -1;
    int64_t k = 0;
    for (; k < full; k++) {
        const int32_t *block_tokens = tokens + k * pool->block_size;
        uint64_t h = kv_pool_hash(pool, parent_hash, seq->model_id, block_tokens);
        int32_t b = kv_cache_find(pool, h, seq->model_id, parent, block_tokens);
        if (b < 0) break;
        kv_block_ref(pool, b);
        seq->blocks[k] = b;
        parent = b;
        parent_hash = h;
    }
    seq->num_blocks = (int32_t)k;
    seq->num_tokens = k * pool->block_size;
    pool->stats.hit_blocks += (uint64_t)k;
    pool->stats.miss_blocks += (uint64_t)(n / pool->block_size - k);
    if (reused) *reused = seq->num_tokens;
    return DUEL_OK;
}

/* What reserving n more tokens takes: blocks to append, the table index of the first position
 * to write, whether that block needs copy-on-write; returns the number of blocks to take. */
static int64_t kv_reserve_plan(const kv_pool *pool, const kv_sequence *seq, int64_t n,
                               int64_t *append, int64_t *first, bool *cow) {
    const int64_t bs = pool->block_size;
    int64_t blocks_needed = (seq->num_tokens + n + bs - 1) / bs;
    *append = blocks_needed > seq->num_blocks ? blocks_needed - seq->num_blocks : 0;
    *first = seq->num_tokens / bs;
    *cow = n > 0 && *first < seq->num_blocks && !kv_block_writable(pool, seq->blocks[*first]);
    return *append + (*cow ? 1 : 0);
}

int64_t kv_sequence_blocks_needed(const kv_pool *pool, const kv_sequence *seq, int64_t n) {
    if (!pool || !seq || n < 0) return -1;
    if (n > (int64_t)pool->num_blocks * pool->block_size) return (int64_t)pool->num_blocks + 1;
    int64_t append, first;
    bool cow;
    return kv_reserve_plan(pool, seq, n, &append, &first, &cow);
}

int kv_sequence_reserve(kv_pool *pool, kv_sequence *seq, int64_t n, kv_reserve_result *result,
                        duel_error *err) {
    if (result) *result = (kv_reserve_result){0, -1, -1};
    if (!pool || !seq || n < 0)
        return duel_error_set(err, DUEL_EINVAL, "kv reserve: invalid arguments");
    if (n == 0) return DUEL_OK;
    const int64_t bs = pool->block_size;
    if (n > (int64_t)pool->num_blocks * bs) {
        pool->stats.out_of_blocks++;
        return duel_error_set(err, DUEL_ELIMIT,
                              "kv reserve: %lld tokens exceed the whole pool (%d blocks of %lld)",
                              (long long)n, pool->num_blocks, (long long)bs);
    }
    int64_t blocks_needed = (seq->num_tokens + n + bs - 1) / bs;
    int64_t append, first;
    bool cow;
    int64_t need = kv_reserve_plan(pool, seq, n, &append, &first, &cow);
    if (need > kv_pool_available_blocks(pool)) {
        pool->stats.out_of_blocks++;
        return duel_error_set(err, DUEL_ELIMIT,
                              "kv reserve: out of blocks (need %lld, %d free or cached of %d)",
                              (long long)need, kv_pool_available_blocks(pool), pool->num_blocks);
    }
    int rc = kv_table_grow(seq, blocks_needed, err);
    if (rc) return rc;
    if (cow && pool->params.record_copies && pool->num_copies == pool->cap_copies) {
        int cap = pool->cap_copies ? 2 * pool->cap_copies : 64;
        int32_t *grown = realloc(pool->copies, (size_t)cap * 2 * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "kv reserve: out of memory");
        pool->copies = grown;
        pool->cap_copies = cap;
    }

    /* From here on nothing can fail. */
    if (cow) {
        int32_t src = seq->blocks[first];
        int32_t dst = kv_block_take(pool);
        kv_block_copy_data(pool, dst, src);
        if (pool->params.record_copies) {
            pool->copies[2 * pool->num_copies] = src;
            pool->copies[2 * pool->num_copies + 1] = dst;
            pool->num_copies++;
        }
        seq->blocks[first] = dst;
        kv_block_unref(pool, src);
        pool->stats.cow_copies++;
        if (result) {
            result->cow_src = src;
            result->cow_dst = dst;
        }
    }
    for (int64_t i = 0; i < append; i++) seq->blocks[seq->num_blocks++] = kv_block_take(pool);
    if (result) result->new_blocks = (int32_t)append;
    return DUEL_OK;
}

int kv_sequence_commit(kv_pool *pool, kv_sequence *seq, const int32_t *tokens, int64_t n,
                       duel_error *err) {
    if (!pool || !seq || n < 0 || (n > 0 && !tokens))
        return duel_error_set(err, DUEL_EINVAL, "kv commit: invalid arguments");
    if (n == 0) return DUEL_OK;
    const int64_t bs = pool->block_size;
    int64_t start = seq->num_tokens, end = seq->num_tokens + n;
    if (n > (int64_t)seq->num_blocks * bs || end > (int64_t)seq->num_blocks * bs)
        return duel_error_set(err, DUEL_EINVAL,
                              "kv commit: %lld tokens at position %lld exceed the reserved space "
                              "(%lld slots)",
                              (long long)n, (long long)start, (long long)seq->num_blocks * bs);
    for (int64_t k = start / bs; k <= (end - 1) / bs; k++)
        if (!kv_block_writable(pool, seq->blocks[k]))
            return duel_error_set(err, DUEL_EINVAL,
                                  "kv commit: block %d at table index %lld is shared or cached "
                                  "(forked between reserve and commit?)",
                                  seq->blocks[k], (long long)k);

    for (int64_t pos = start; pos < end; pos++)
        pool->tokens[(size_t)seq->blocks[pos / bs] * (size_t)bs + (size_t)(pos % bs)] =
            tokens[pos - start];
    seq->num_tokens = end;

    /* register the blocks that became full, in order, so each one's parent is already final */
    for (int64_t k = start / bs; k < end / bs; k++) {
        int32_t b = seq->blocks[k];
        int32_t parent = k > 0 ? seq->blocks[k - 1] : -1;
        uint64_t parent_hash = parent >= 0 ? pool->meta[parent].hash : KV_HASH_ROOT;
        const int32_t *block_tokens = kv_tokens_of(pool, b);
        uint64_t h = kv_pool_hash(pool, parent_hash, seq->model_id, block_tokens);
        int32_t same = kv_cache_find(pool, h, seq->model_id, parent, block_tokens);
        if (same >= 0) {
            kv_block_ref(pool, same);
            seq->blocks[k] = same;
            kv_block_unref(pool, b); /* refcount was 1 and unregistered: back to the free list */
            pool->stats.dedup_blocks++;
        } else {
            kv_cache_insert(pool, b, h, seq->model_id, parent, parent_hash);
        }
    }
    return DUEL_OK;
}

int kv_sequence_fork(kv_pool *pool, const kv_sequence *src, kv_sequence *dst, duel_error *err) {
    if (!pool || !src || !dst || src == dst)
        return duel_error_set(err, DUEL_EINVAL, "kv fork: invalid arguments");
    if (!kv_sequence_is_empty(dst))
        return duel_error_set(err, DUEL_EINVAL, "kv fork: the destination sequence is not empty");
    int64_t committed = (src->num_tokens + pool->block_size - 1) / pool->block_size;
    int rc = kv_table_grow(dst, committed, err);
    if (rc) return rc;
    for (int64_t i = 0; i < committed; i++) {
        dst->blocks[i] = src->blocks[i];
        kv_block_ref(pool, src->blocks[i]);
    }
    dst->num_blocks = (int32_t)committed;
    dst->num_tokens = src->num_tokens;
    dst->model_id = src->model_id;
    return DUEL_OK;
}

int kv_sequence_locate(const kv_pool *pool, const kv_sequence *seq, int64_t pos, int32_t *block,
                       int *slot, duel_error *err) {
    if (!pool || !seq || pos < 0 || pos >= (int64_t)seq->num_blocks * pool->block_size)
        return duel_error_set(err, DUEL_EINVAL, "kv locate: position %lld outside the table",
                              (long long)pos);
    if (block) *block = seq->blocks[pos / pool->block_size];
    if (slot) *slot = (int)(pos % pool->block_size);
    return DUEL_OK;
}

static float *kv_sequence_vector(kv_pool *pool, const kv_sequence *seq, int layer, int head,
                                 int64_t pos, int which) {
    if (!pool || !seq || head < 0 || head >= pool->params.num_kv_heads || pos < 0 ||
        pos >= (int64_t)seq->num_blocks * pool->block_size)
        return NULL;
    float *base = kv_f32(pool, kv_block_base(pool, layer, seq->blocks[pos / pool->block_size], which));
    if (!base) return NULL;
    return base + ((size_t)head * (size_t)pool->block_size + (size_t)(pos % pool->block_size)) *
                      (size_t)pool->params.head_dim;
}

float *kv_sequence_key(kv_pool *pool, const kv_sequence *seq, int layer, int head, int64_t pos) {
    return kv_sequence_vector(pool, seq, layer, head, pos, 0);
}
float *kv_sequence_value(kv_pool *pool, const kv_sequence *seq, int layer, int head, int64_t pos) {
    return kv_sequence_vector(pool, seq, layer, head, pos, 1);
}

/* ---- invariants ------------------------------------------------------------------------------- */

#define KV_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            rc = duel_error_set(err, DUEL_EFORMAT, "kv invariant: " __VA_ARGS__);                  \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

/* Walks one list: well-linked, no repeats, every member in `state`; marks members in `seen`. */
static int kv_check_list(const kv_pool *pool, const kv_list *list, int state, const char *name,
                         uint8_t *seen, duel_error *err) {
    int rc = DUEL_OK;
    int32_t prev = -1, count = 0;
    for (int32_t b = list->head; b >= 0; b = pool->meta[b].next) {
        KV_CHECK(b < pool->num_blocks, "%s list holds invalid block id %d", name, b);
        KV_CHECK(!seen[b], "block %d appears twice in the %s list or in both lists", b, name);
        seen[b] = 1;
        const kv_block_meta *m = &pool->meta[b];
        KV_CHECK(m->prev == prev, "%s list: block %d has prev %d, expected %d", name, b, m->prev,
                 prev);
        KV_CHECK(m->state == state, "%s list: block %d has state %d", name, b, m->state);
        KV_CHECK(m->refcount == 0, "%s list: block %d has refcount %d", name, b, m->refcount);
        KV_CHECK((m->registered != 0) == (state == KV_STATE_CACHED),
                 "%s list: block %d is %sin the prefix cache", name, b, m->registered ? "" : "not ");
        prev = b;
        count++;
    }
    KV_CHECK(list->tail == prev, "%s list: tail %d, last element %d", name, list->tail, prev);
    KV_CHECK(list->count == count, "%s list: count %d, walked %d", name, list->count, count);
done:
    return rc;
}

int kv_pool_check(const kv_pool *pool, const kv_sequence *const *seqs, int num_seqs,
                  duel_error *err) {
    if (!pool || num_seqs < 0 || (num_seqs > 0 && !seqs))
        return duel_error_set(err, DUEL_EINVAL, "kv check: invalid arguments");
    const int32_t nb = pool->num_blocks;
    const int64_t bs = pool->block_size;
    int rc = DUEL_OK;
    uint8_t *seen = calloc((size_t)nb, 1);
    uint8_t *in_hash = calloc((size_t)nb, 1);
    int32_t *refs = calloc((size_t)nb, sizeof(int32_t));
    int32_t *owner = malloc((size_t)nb * sizeof(int32_t)); /* last sequence that referenced it */
    int32_t *lru_pos = calloc((size_t)nb, sizeof(int32_t));
    if (!seen || !in_hash || !refs || !owner || !lru_pos) {
        rc = duel_error_set(err, DUEL_ENOMEM, "kv check: out of memory");
        goto done;
    }
    for (int32_t b = 0; b < nb; b++) owner[b] = -1;

    /* free list + LRU + used blocks partition the pool */
    rc = kv_check_list(pool, &pool->free_list, KV_STATE_FREE, "free", seen, err);
    if (rc) goto done;
    rc = kv_check_list(pool, &pool->lru, KV_STATE_CACHED, "LRU", seen, err);
    if (rc) goto done;
    int32_t pos = 0;
    for (int32_t b = pool->lru.head; b >= 0; b = pool->meta[b].next) lru_pos[b] = pos++;
    int32_t registered = 0;
    for (int32_t b = 0; b < nb; b++) {
        const kv_block_meta *m = &pool->meta[b];
        KV_CHECK(m->state <= KV_STATE_USED, "block %d has unknown state %d", b, m->state);
        KV_CHECK(m->state == KV_STATE_USED ? (m->refcount > 0 && !seen[b]) : seen[b],
                 "block %d (state %d, refcount %d) is %son a list", b, m->state, m->refcount,
                 seen[b] ? "" : "not ");
        registered += m->registered != 0;
    }
    KV_CHECK(registered == pool->registered, "%d blocks registered, counter says %d", registered,
             pool->registered);

    /* the hash table holds exactly the registered blocks, each in its own bucket, once */
    int32_t chained = 0;
    for (uint64_t bucket = 0; bucket <= pool->bucket_mask; bucket++) {
        for (int32_t b = pool->buckets[bucket]; b >= 0; b = pool->meta[b].hash_next) {
            KV_CHECK(b < nb, "bucket %llu holds invalid block id %d", (unsigned long long)bucket, b);
            KV_CHECK(!in_hash[b], "block %d appears twice in the prefix cache", b);
            in_hash[b] = 1;
            chained++;
            const kv_block_meta *m = &pool->meta[b];
            KV_CHECK(m->registered, "block %d is in the hash table but not marked registered", b);
            KV_CHECK((m->hash & pool->bucket_mask) == bucket, "block %d is in the wrong bucket", b);
            KV_CHECK(m->hash == kv_pool_hash(pool, m->parent_hash, m->model_id, kv_tokens_of(pool, b)),
                     "block %d: hash does not match its parent hash, model and tokens", b);
            KV_CHECK(m->parent_block >= -1 && m->parent_block < nb && m->parent_block != b,
                     "block %d has invalid parent %d", b, m->parent_block);
            if (m->parent_block < 0) {
                KV_CHECK(m->parent_hash == KV_HASH_ROOT, "first block %d has a parent hash", b);
            } else if (pool->meta[m->parent_block].gen == m->parent_gen) {
                const kv_block_meta *p = &pool->meta[m->parent_block];
                KV_CHECK(p->registered, "block %d: live parent %d is not registered", b,
                         m->parent_block);
                KV_CHECK(p->hash == m->parent_hash && p->model_id == m->model_id,
                         "block %d: parent hash or model differs from parent %d", b,
                         m->parent_block);
                /* a parent is referenced whenever its child is, and released after it, so the
                 * LRU evicts chains from their ends and no cached child outlives its parent */
                if (m->state == KV_STATE_USED)
                    KV_CHECK(p->state == KV_STATE_USED, "used block %d has unreferenced parent %d",
                             b, m->parent_block);
                else if (p->state == KV_STATE_CACHED)
                    KV_CHECK(lru_pos[b] < lru_pos[m->parent_block],
                             "cached block %d is after its parent %d in the LRU", b,
                             m->parent_block);
            }
            int32_t steps = 0;
            for (int32_t o = m->hash_next; o >= 0; o = pool->meta[o].hash_next) {
                KV_CHECK(++steps <= nb, "prefix cache bucket %llu loops", (unsigned long long)bucket);
                KV_CHECK(o < nb, "bucket %llu holds invalid block id %d", (unsigned long long)bucket,
                         o);
                const kv_block_meta *q = &pool->meta[o];
                KV_CHECK(!(q->hash == m->hash && q->model_id == m->model_id &&
                           q->parent_block == m->parent_block && q->parent_gen == m->parent_gen &&
                           memcmp(kv_tokens_of(pool, o), kv_tokens_of(pool, b),
                                  sizeof(int32_t) * (size_t)bs) == 0),
                         "blocks %d and %d are identical prefix cache entries", b, o);
            }
            KV_CHECK(chained <= nb, "prefix cache chains loop");
        }
    }
    KV_CHECK(chained == registered, "%d blocks in the hash table, %d registered", chained,
             registered);

    /* sequences: tables, counts, and the chain structure */
    for (int s = 0; s < num_seqs; s++) {
        const kv_sequence *seq = seqs[s];
        KV_CHECK(seq != NULL, "sequence %d is NULL", s);
        for (int t = 0; t < s; t++)
            KV_CHECK(seqs[t] != seq, "sequences %d and %d are the same struct", t, s);
        KV_CHECK(seq->num_blocks >= 0 && seq->num_blocks <= seq->table_capacity &&
                     (seq->num_blocks == 0 || seq->blocks),
                 "sequence %d: table of %d entries, capacity %d", s, seq->num_blocks,
                 seq->table_capacity);
        KV_CHECK(seq->num_tokens >= 0 && seq->num_tokens <= (int64_t)seq->num_blocks * bs,
                 "sequence %d: %lld tokens in %d blocks", s, (long long)seq->num_tokens,
                 seq->num_blocks);
        int64_t full = seq->num_tokens / bs;
        int64_t committed = (seq->num_tokens + bs - 1) / bs;
        for (int64_t k = 0; k < seq->num_blocks; k++) {
            int32_t b = seq->blocks[k];
            KV_CHECK(b >= 0 && b < nb, "sequence %d: table entry %lld is invalid block id %d", s,
                     (long long)k, b);
            KV_CHECK(owner[b] != s, "sequence %d: block %d appears twice in its table", s, b);
            owner[b] = s;
            refs[b]++;
            const kv_block_meta *m = &pool->meta[b];
            KV_CHECK(m->state == KV_STATE_USED, "sequence %d references block %d in state %d", s,
                     b, m->state);
            if (k < full) {
                KV_CHECK(m->registered, "sequence %d: full block %d (index %lld) not registered",
                         s, b, (long long)k);
                KV_CHECK(m->model_id == seq->model_id,
                         "sequence %d: block %d registered for another model", s, b);
                int32_t parent = k > 0 ? seq->blocks[k - 1] : -1;
                KV_CHECK(m->parent_block == parent &&
                             (parent < 0 || m->parent_gen == pool->meta[parent].gen),
                         "sequence %d: block %d (index %lld) is not chained to the previous entry",
                         s, b, (long long)k);
            } else {
                KV_CHECK(!m->registered,
                         "sequence %d: partly filled or reserved block %d is registered", s, b);
            }
            if (k >= committed)
                KV_CHECK(m->refcount == 1, "sequence %d: reserved block %d is shared", s, b);
        }
    }
    for (int32_t b = 0; b < nb; b++)
        KV_CHECK(refs[b] == pool->meta[b].refcount,
                 "block %d has refcount %d but %d table entries reference it", b,
                 pool->meta[b].refcount, refs[b]);

done:
    free(seen);
    free(in_hash);
    free(refs);
    free(owner);
    free(lru_pos);
    return rc;
}
