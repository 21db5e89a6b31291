/* kv_cache.h: the paged KV cache's memory manager (DESIGN.md section 4).
 *
 * A kv_pool hands out fixed-size KV blocks of `block_size` token slots (16 by default). It owns:
 *   - block ids 0..num_blocks-1 with reference counts;
 *   - the prefix cache: every full block that a sequence commits is registered under a chained hash
 *     h = kv_block_hash(parent_h, model_id, tokens of the block), so that later requests with the
 *     same token prefix (a conversation's next turn, a preempted request being recomputed) attach
 *     the cached blocks instead of recomputing them;
 *   - an LRU list of cached blocks that no sequence references any more: they keep their KV and
 *     stay findable until the free list is empty, then the least recently released one is evicted;
 *   - optionally, the host (CPU backend) storage of K and V for every layer.
 * The bookkeeping never touches the storage except for copy-on-write, so a device backend
 * (inference/compute.h) creates the pool with allocate_storage = false and record_copies = true
 * and keeps its own arrays indexed by the same block ids: the pool then records every
 * copy-on-write copy (src, dst) in order, and the backend performs them (kv_pool_take_copies)
 * before it next writes K/V, which is the next forward of the step that reserved them.
 *
 * Every block is in exactly one of three states:
 *   free    refcount 0, not in the prefix cache, on the free list (its data is garbage);
 *   cached  refcount 0, in the prefix cache, on the LRU list (its data is valid KV);
 *   used    refcount > 0 (referenced by that many block-table entries of live sequences), in the
 *           prefix cache or not.
 * kv_pool_check() verifies this partition and all other invariants.
 *
 * Host storage layout (allocate_storage = true), f32 (bytes_per_element 4, the default) or bf16
 * (bytes_per_element 2: config engine.kv_dtype, half the bytes per token), one array per layer
 * for K and one for V:
 *     keys[layer]   [num_blocks][num_kv_heads][block_size][head_dim]
 *     values[layer] [num_blocks][num_kv_heads][block_size][head_dim]
 * so the vector of token slot s of head h in block b starts at
 *     ((b * num_kv_heads + h) * block_size + s) * head_dim
 * from kv_pool_layer_keys()/kv_pool_layer_values(). Within one block and head, the block_size
 * vectors are contiguous (a [block_size][head_dim] tile), which is what attention reads.
 *
 * A sequence's token at position p lives in block seq->blocks[p / block_size], slot p % block_size.
 *
 * Writing tokens, one step of the engine for one sequence:
 *     kv_sequence_reserve(pool, seq, n, &r, err)   room for n more tokens; copy-on-write of a shared
 *                                                  partly filled last block; DUEL_ELIMIT when the
 *                                                  pool is out of blocks (nothing changed: preempt)
 *     ... the backend writes K/V of positions seq->num_tokens .. +n-1 (kv_sequence_key/value) ...
 *     kv_sequence_commit(pool, seq, tokens, n, err) records the tokens; newly full blocks enter the
 *                                                  prefix cache
 * Do not fork the sequence between reserve and commit (commit then fails with DUEL_EINVAL, since
 * the blocks it wrote are shared). Commit may replace table entries of blocks that became full by
 * an identical cached block (dedup), so a backend reads seq->blocks afresh every step (a CUDA
 * backend re-uploads its block tables) and never keeps block ids of a sequence across steps.
 *
 * Not thread-safe: one thread (the engine's) owns the pool and all its sequences. */
#ifndef DUEL_KV_CACHE_H
#define DUEL_KV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define KV_BLOCK_SIZE 16          /* default token slots per block */
#define KV_MAX_BLOCK_SIZE 256     /* largest block_size accepted */
#define KV_MAX_BLOCKS (1 << 24)   /* largest pool accepted (block ids are int32) */
#define KV_HASH_ROOT 0x6b765f726f6f7421ull /* parent hash of a sequence's first block */

typedef struct kv_pool_params {
    int num_layers;
    int num_kv_heads;
    int head_dim;
    int block_size;           /* token slots per block; 0 means KV_BLOCK_SIZE */
    /* Capacity: give exactly one of the two. With a budget, num_blocks = budget / block bytes,
     * where block bytes = 2 (K and V) * num_layers * num_kv_heads * block_size * head_dim *
     * bytes_per_element; the bookkeeping (about 100 bytes per block) is not counted. */
    size_t memory_budget_bytes;
    int num_blocks;
    int bytes_per_element;    /* element size of the KV storage for the budget; 0 means 4 (f32).
                                 With allocate_storage: 4 (f32) or 2 (bf16 host storage: the
                                 *_bf16 accessors); a bf16 device cache passes 2 too. */
    bool allocate_storage;    /* allocate the host K/V arrays (CPU backend) */
    bool record_copies;       /* without host storage: record each copy-on-write copy for the
                                 backend that holds the K/V (kv_pool_take_copies) */
    int hash_bits;            /* 0 (normal): full 64-bit block hashes. Tests pass a small number
                                 to keep only that many low bits and so force hash collisions. */
} kv_pool_params;

typedef struct kv_pool kv_pool;

/* One sequence's view of the pool: its block table and how many tokens are committed. The struct
 * is owned by the caller (the engine embeds it in its request); only kv_* functions change it. */
typedef struct kv_sequence {
    int32_t *blocks;          /* block table: blocks[i] holds positions [i*bs, (i+1)*bs) */
    int32_t num_blocks;       /* entries in use (committed and reserved) */
    int32_t table_capacity;   /* entries allocated */
    int64_t num_tokens;       /* committed tokens (their K/V are written and their ids known) */
    uint64_t model_id;        /* which weights computed the KV; part of every block hash */
} kv_sequence;

typedef struct kv_pool_stats {
    int32_t num_blocks;       /* capacity */
    int32_t free_blocks;      /* on the free list */
    int32_t cached_blocks;    /* unreferenced but in the prefix cache (LRU list) */
    int32_t used_blocks;      /* referenced by at least one sequence */
    int32_t registered_blocks;/* in the prefix cache (cached + used ones that are registered) */
    uint64_t allocations;     /* blocks handed out by reserve (including copy-on-write targets) */
    uint64_t evictions;       /* cached blocks taken from the LRU for reuse */
    uint64_t cow_copies;      /* copy-on-write copies of a shared, partly filled block */
    uint64_t lookups;         /* kv_prefix_lookup calls */
    uint64_t hit_blocks;      /* full blocks attached from the prefix cache */
    uint64_t miss_blocks;     /* full blocks asked for but not found (only the first miss of a
                                 chain is looked up; the rest of the chain counts as misses) */
    uint64_t dedup_blocks;    /* committed full blocks replaced by an identical cached block */
    uint64_t out_of_blocks;   /* reserve calls refused with DUEL_ELIMIT */
} kv_pool_stats;

/* What kv_sequence_reserve did, for a backend with its own storage: when cow_src >= 0, the data of
 * block cow_src (all layers, K and V) must be copied to block cow_dst before writing. With host
 * storage the pool has already copied it. */
typedef struct kv_reserve_result {
    int32_t new_blocks;       /* blocks appended to the table (copy-on-write target excluded) */
    int32_t cow_src;          /* -1 when no copy was needed */
    int32_t cow_dst;
} kv_reserve_result;

/* Bytes of K and V storage per block for these params (0 when a size is invalid or overflows). */
size_t kv_pool_block_bytes(const kv_pool_params *params);

/* Creates a pool. DUEL_EINVAL for bad sizes or both/neither of budget and num_blocks;
 * DUEL_ELIMIT when the budget holds no block or more than KV_MAX_BLOCKS; DUEL_ENOMEM. */
int kv_pool_create(const kv_pool_params *params, kv_pool **out, duel_error *err);
/* Frees the pool. Sequences still pointing into it must be freed with kv_sequence_free first
 * (or only their tables released with kv_sequence_destroy after the pool is gone). NULL is a no-op. */
void kv_pool_destroy(kv_pool *pool);

int32_t kv_pool_num_blocks(const kv_pool *pool);
int kv_pool_block_size(const kv_pool *pool);
/* The params as created, with block_size, bytes_per_element and num_blocks filled in. */
const kv_pool_params *kv_pool_get_params(const kv_pool *pool);
void kv_pool_stats_get(const kv_pool *pool, kv_pool_stats *out);
/* Blocks a reserve could obtain right now (free + cached). */
int32_t kv_pool_available_blocks(const kv_pool *pool);
/* Drops every unreferenced cached block from the prefix cache onto the free list (for a weight
 * change that invalidates a model id, or tests). Returns how many were dropped. */
int32_t kv_pool_drop_cached(kv_pool *pool);

/* With record_copies: moves up to cap of the copy-on-write copies recorded since the last call
 * into pairs (pairs[2i] = src, pairs[2i + 1] = dst), oldest first, and returns how many; the
 * rest stay for the next call. A backend applies them in this order before its next K/V write:
 * a later copy may read a block an earlier one wrote, or overwrite one an earlier one read. */
int kv_pool_take_copies(kv_pool *pool, int32_t *pairs, int cap);
/* Copies recorded and not yet taken. */
int kv_pool_pending_copies(const kv_pool *pool);

/* Host storage of one layer (NULL without allocate_storage or for a bad layer). The float
 * accessors (here and below) serve f32 storage only and return NULL for bf16, the _bf16 ones the
 * reverse. */
float *kv_pool_layer_keys(kv_pool *pool, int layer);
float *kv_pool_layer_values(kv_pool *pool, int layer);
uint16_t *kv_pool_layer_keys_bf16(kv_pool *pool, int layer);
uint16_t *kv_pool_layer_values_bf16(kv_pool *pool, int layer);
/* "f32" -> 4, "bf16" -> 2: bytes_per_element of a KV dtype name (config engine.kv_dtype). */
int kv_dtype_parse(const char *text, int *bytes_per_element, duel_error *err);
/* The [num_kv_heads][block_size][head_dim] tile of one block (NULL as above or for a bad block). */
float *kv_pool_block_keys(kv_pool *pool, int layer, int32_t block);
float *kv_pool_block_values(kv_pool *pool, int layer, int32_t block);

/* The chained block hash: h = H(parent_hash, model_id, tokens[0..n-1]). Deterministic on every
 * platform; used by the prefix cache and exposed for tests and the CUDA backend. */
uint64_t kv_block_hash(uint64_t parent_hash, uint64_t model_id, const int32_t *tokens, int n);

/* An empty sequence of model_id (no blocks). Never fails. Once used, a sequence holds memory
 * even when empty (a table grown by a lookup that found nothing): release it with
 * kv_sequence_free before initializing it again. */
void kv_sequence_init(kv_sequence *seq, uint64_t model_id);
/* Releases all blocks (refcounts drop; full registered blocks go to the LRU, the others to the
 * free list) and the table; seq is empty afterwards and may be reused. Used for finish, cancel
 * and preemption. */
void kv_sequence_free(kv_pool *pool, kv_sequence *seq);
/* Frees only the table memory (for a sequence whose pool was already destroyed). */
void kv_sequence_destroy(kv_sequence *seq);

/* Attaches to an empty seq the longest chain of cached full blocks matching the full blocks of
 * tokens[0..n-1] (only whole blocks are reused: pass n = prompt_len - 1 when the logits of the
 * last prompt token are needed). Blocks match only when the model id, the block's tokens and the
 * identity of the parent block are equal, so a hash collision never returns wrong KV. *reused
 * (may be NULL) gets the number of tokens attached (a multiple of the block size) and
 * seq->num_tokens is set to it. DUEL_EINVAL if seq is not empty; DUEL_ENOMEM (nothing attached). */
int kv_prefix_lookup(kv_pool *pool, kv_sequence *seq, const int32_t *tokens, int64_t n,
                     int64_t *reused, duel_error *err);

/* Makes room for n more tokens after seq->num_tokens: appends blocks as needed and, when the
 * first position to write lies in a block that is shared or in the prefix cache, copies it to a
 * fresh block first (copy-on-write). All or nothing: DUEL_ELIMIT when the pool has too few free
 * plus cached blocks (the pool and seq are unchanged, so the scheduler can preempt and retry),
 * DUEL_ENOMEM likewise unchanged. result may be NULL. */
int kv_sequence_reserve(kv_pool *pool, kv_sequence *seq, int64_t n, kv_reserve_result *result,
                        duel_error *err);

/* How many blocks kv_sequence_reserve(pool, seq, n) would take from the pool right now (appended
 * blocks plus a copy-on-write target), for a scheduler planning a step; compare with
 * kv_pool_available_blocks. More than the pool holds when n exceeds the whole pool; -1 for bad
 * arguments. */
int64_t kv_sequence_blocks_needed(const kv_pool *pool, const kv_sequence *seq, int64_t n);

/* Records tokens[0..n-1] as the ids at positions num_tokens.. (their K/V already written into
 * reserved space) and advances num_tokens. Each block that becomes full is registered in the
 * prefix cache; if an identical block (same model, parent and tokens) is already cached, the
 * table switches to that block and the new copy is freed (dedup). DUEL_EINVAL when the space was
 * not reserved or the sequence was forked since the reserve (nothing changed). */
int kv_sequence_commit(kv_pool *pool, kv_sequence *seq, const int32_t *tokens, int64_t n,
                       duel_error *err);

/* Makes dst (which must be empty: initialized or freed) share all committed blocks of src:
 * same table, same num_tokens and model id, +1 on every block's refcount. Space src reserved but
 * did not commit is not shared. DUEL_EINVAL, DUEL_ENOMEM (dst unchanged). */
int kv_sequence_fork(kv_pool *pool, const kv_sequence *src, kv_sequence *dst, duel_error *err);

/* Where position pos of seq lives (pos < seq->num_blocks * block_size, committed or reserved):
 * its block id and slot. DUEL_EINVAL when out of range. */
int kv_sequence_locate(const kv_pool *pool, const kv_sequence *seq, int64_t pos, int32_t *block,
                       int *slot, duel_error *err);
/* The head_dim floats of K (or V) for (layer, kv head, position) in host storage, read through the
 * block table; NULL when pos is beyond the reserved space, an index is out of range or there is
 * no host storage. Use it both to write the new token's K/V and to read the history. */
float *kv_sequence_key(kv_pool *pool, const kv_sequence *seq, int layer, int head, int64_t pos);
float *kv_sequence_value(kv_pool *pool, const kv_sequence *seq, int layer, int head, int64_t pos);

/* The tokens the pool recorded for a block (block_size ints; only the committed slots are
 * meaningful). NULL for a bad id. */
const int32_t *kv_pool_block_tokens(const kv_pool *pool, int32_t block);
int32_t kv_pool_block_refcount(const kv_pool *pool, int32_t block);
/* Whether the block is in the prefix cache. */
bool kv_pool_block_is_cached(const kv_pool *pool, int32_t block);

/* Verifies every invariant, given all live sequences of the pool (each sequence at most once):
 * the free list, the LRU list and the referenced blocks partition the pool; each block's refcount
 * equals the number of table entries referencing it; lists and hash chains are well formed and
 * without duplicates; every registered block's hash matches its parent hash, model and tokens;
 * every full committed block of a sequence is registered and chained to the previous table entry;
 * reserved and partly filled blocks are not registered, reserved ones not shared; a block's
 * parent is referenced whenever the block is, and an unreferenced cached block comes before its
 * cached parent in the LRU (chains are evicted from their ends).
 * Costs O(pool size + table entries): for tests and debug builds, not every engine step.
 * Returns 0, DUEL_EFORMAT with a message naming the first violation, or DUEL_ENOMEM. */
int kv_pool_check(const kv_pool *pool, const kv_sequence *const *seqs, int num_seqs,
                  duel_error *err);

#endif
