/* model.c: loading a Llama- or GPT-NeoX-family checkpoint and its CPU forward pass (see model.h).
 *
 * Parameters live in one f32 allocation carved into per-layer pointers (llm.c style); bf16/f16
 * weights are widened once at load. Linear weights stay [out][in] so that every projection of
 * a chunk of tokens is one sgemm (one sgemv for a single token). With bf16 or q8 weights
 * (model_load_with) the linear layers and the head leave that allocation: each matrix passes
 * through an f32 stage and is packed (weight_format.h) before the next is read, and every product
 * with it runs the packed kernels (weight_matmul.h) for any number of rows, its output groups
 * shared with the helper thread; a tied input embedding is then read from the packed head, row
 * by row. Invariant: a weight_matrix view exists for every linear layer and the head, whatever
 * the format, and the forward pass reads weights only through it (or the f32 embedding). Two
 * fusions at load:
 *   - q, k and v projections become one [q_dim + 2*kv_dim][hidden] matrix, rows in the order
 *     all q heads, all k heads, all v heads. GPT-NeoX's query_key_value interleaves them per head
 *     ([heads][3][head_dim], HF's view(heads, 3*head_dim) split) and is permuted into that order.
 *   - Llama's gate_proj and up_proj become one [2*ffn][hidden] matrix (gate rows, then up).
 * Residual adds are fused into the output GEMMs (beta = 1).
 *
 * The forward pass runs the tokens in chunks of at most MODEL_MAX_CHUNK_TOKENS so that scratch
 * is bounded; scratch grows on demand (rarely: geometric), never per token.
 *
 * The batched paged forward (model_forward_batch) runs the same layers over the rows of several
 * sequences at once. Only attention differs: each sequence's piece of the batch reads K/V through
 * its block table. A piece of a few rows (decode) reads the pool's [block][kv_head][16][head_dim]
 * tiles directly (paged_attention_rows); a longer piece (prefill) first gathers its history into
 * contiguous [ctx][kv_dim] buffers and runs the sgemm-based cpu_attention_forward on them, where
 * the gather's cost is small next to the O(rows * ctx) products. Steps of at most
 * MODEL_SKINNY_MAX_ROWS rows (decode) run their projections with the skinny kernel and their
 * decode attention on two threads: the caller's and the model's helper thread, which claim
 * chunks of each job from a shared counter (helper_parallel_for). */
#include "model.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_ops.h"
#include "safetensors.h"
#include "timer.h"
#include "weight_matmul.h"

#define MODEL_MAX_CHUNK_TOKENS 512     /* tokens per internal forward chunk (bounds scratch) */
#define MODEL_KV_MAX_TOKENS (1 << 24)  /* tokens: the largest contiguous cache we create */
#define MODEL_MAX_PARAMS (1LL << 36)   /* floats: 256 GiB of f32, far above anything served */
#define MODEL_NAME_MAX 256             /* bytes of a tensor name we build */
#define MODEL_PAGED_DIRECT_ROWS 4      /* pieces of at most this many rows read the pool directly;
                                          longer ones gather K/V for sgemm attention */

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MODEL_AVX2 1
#endif

/* The model's helper thread: a parallel-for over the chunks of one job at a time (the skinny
 * products' output columns, decode attention's sequences), shared with the owner thread. The
 * owner publishes a job, both threads claim chunks from one atomic word until none is left, and
 * the owner waits only for the chunks the helper has claimed: on a loaded machine a descheduled
 * helper costs at most one chunk, not half the job. Created at load, joined at free. The helper
 * spins briefly after each job (the next one follows within microseconds in a decode step), then
 * sleeps on the condition variable.
 * Ownership: fn and ctx are written by the owner before it publishes the job (state, release)
 * and read by the helper only after it has claimed a chunk of that job (acquire), so they stay
 * unchanged while it runs: the owner returns only when done == total. */
typedef void (*helper_fn)(void *ctx, int chunk, int thread); /* thread: 0 owner, 1 helper */
#define MODEL_HELPER_MAX_CHUNKS 0xffff /* chunks of one job (16 bits of state) */
typedef struct model_helper {
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    _Atomic uint64_t state; /* job sequence number (32 bits) | chunks (16) | next unclaimed (16) */
    _Atomic int done;       /* chunks of the current job finished (by either thread) */
    _Atomic bool quit;
    helper_fn fn;
    void *ctx;
} model_helper;

typedef struct model_layer {
    float *attn_norm_w, *attn_norm_b; /* b: GPT-NeoX LayerNorm only */
    float *qkv_w, *qkv_b;             /* [qkv_dim][hidden], [qkv_dim] or NULL */
    float *o_w, *o_b;                 /* [hidden][q_dim], [hidden] or NULL */
    float *mlp_norm_w, *mlp_norm_b;
    float *up_w, *up_b;     /* Llama: [2*ffn][hidden] gate then up; NeoX: [ffn][hidden] */
    float *down_w, *down_b; /* [hidden][ffn] */
    /* The four products' weights as the forward pass reads them: f32 borrows the pointers above;
     * bf16 and q8 own packed copies (the *_w pointers then pointed into the load stage and are
     * NULL after load). */
    weight_matrix qkv, o, up, down;
} model_layer;

struct model {
    model_config config;
    int q_dim, kv_dim, qkv_dim, up_dim, output_size;
    float *params;
    size_t num_params;
    float *embedding;                  /* [vocab][hidden] f32; NULL when tied to a packed head */
    float *final_norm_w, *final_norm_b;
    float *head_w;                     /* [output_size][hidden]; == embedding when tied (f32) */
    weight_matrix head;                /* the output head as the forward pass reads it */
    weight_format weights;             /* storage of the linear layers and the head */
    float *stage;                      /* load only: f32 staging of packed matrices */
    void *prepared;                    /* packed products' converted input rows (weight_matmul.h) */
    size_t prepared_bytes;
    model_layer *layers;
    double *inv_freq;                  /* [rotary_dim / 2] */

    /* Scratch for up to scratch_tokens rows of a chunk. */
    int scratch_tokens;
    float *scratch;
    float *x, *xb, *xb2, *qkv, *att, *ffn, *ffn_act, *rope_cos, *rope_sin;
    float *att_scratch;
    size_t att_scratch_floats;

    /* Scratch of model_forward_batch: gathered K/V of one piece ([ctx][kv_dim] each), the final
     * hidden rows and logits of the sequences that want them. */
    float *gather_k, *gather_v;
    size_t gather_floats;
    float *head_in, *head_out;
    size_t head_rows;

    double forward_seconds;
    cpu_matmul_stats gemm;

    cpu_isa isa; /* of the skinny products (cpu_isa_best at load) */
    model_helper helper;
};

struct model_kv_cache {
    int num_layers, kv_dim, max_tokens, length;
    float *k, *v; /* [num_layers][max_tokens][kv_dim] each */
};

static void helper_start(model_helper *h, bool spawn);
static void helper_stop(model_helper *h);

/* ---- parameters --------------------------------------------------------------------------- */

static bool is_tied(const model *m) {
    return m->config.head == MODEL_HEAD_CAUSAL_LM && m->config.tie_word_embeddings;
}

/* Assigns every parameter pointer inside base (when non-NULL) and returns the float count. With
 * packed weights (bf16, q8) the linear layers' and the head's f32 values only pass through the
 * load stage: each layer's matrices (and the embedding or head, each on its own) are assigned
 * inside stage (when non-NULL), one at a time, and packed before the next is read
 * (pack_layer, pack_head); *stage_floats receives the stage's size. */
static size_t layout_params(model *m, float *base, float *stage, size_t *stage_floats) {
    const model_config *c = &m->config;
    size_t H = (size_t)c->hidden_size, off = 0, soff = 0, smax = 0;
    bool neox = c->arch == MODEL_ARCH_GPT_NEOX, packed = m->weights != WEIGHT_F32;
    bool tied = c->head == MODEL_HEAD_CAUSAL_LM && c->tie_word_embeddings;
#define TAKE(ptr, count)                  \
    do {                                  \
        if (base) (ptr) = base + off;     \
        off += (size_t)(count);           \
    } while (0)
#define TAKE_LINEAR(ptr, count)                       \
    do {                                              \
        if (!packed) {                                \
            TAKE(ptr, count);                         \
        } else {                                      \
            if (stage) (ptr) = stage + soff;          \
            soff += (size_t)(count);                  \
            smax = soff > smax ? soff : smax;         \
        }                                             \
    } while (0)
    if (tied) TAKE_LINEAR(m->embedding, (size_t)c->vocab_size * H);
    else TAKE(m->embedding, (size_t)c->vocab_size * H);
    for (int l = 0; l < c->num_layers; l++) {
        model_layer *L = &m->layers[l];
        soff = 0;
        TAKE(L->attn_norm_w, H);
        if (neox) TAKE(L->attn_norm_b, H);
        TAKE_LINEAR(L->qkv_w, (size_t)m->qkv_dim * H);
        if (c->attention_bias) TAKE(L->qkv_b, m->qkv_dim);
        TAKE_LINEAR(L->o_w, H * (size_t)m->q_dim);
        if (c->attention_out_bias) TAKE(L->o_b, H);
        TAKE(L->mlp_norm_w, H);
        if (neox) TAKE(L->mlp_norm_b, H);
        TAKE_LINEAR(L->up_w, (size_t)m->up_dim * H);
        if (c->mlp_bias) TAKE(L->up_b, m->up_dim);
        TAKE_LINEAR(L->down_w, H * (size_t)c->intermediate_size);
        if (c->mlp_bias) TAKE(L->down_b, H);
    }
    TAKE(m->final_norm_w, H);
    if (neox) TAKE(m->final_norm_b, H);
    if (tied) {
        if (base) m->head_w = m->embedding;
    } else {
        soff = 0;
        TAKE_LINEAR(m->head_w, (size_t)m->output_size * H);
    }
#undef TAKE_LINEAR
#undef TAKE
    if (stage_floats) *stage_floats = smax;
    return off;
}

/* The weight_matrix views of layer l once its f32 values are loaded: borrowed (f32) or packed
 * from the stage, whose values are then dead (the stage pointers are cleared). */
static int pack_one(model *m, weight_matrix *dst, float **src, int rows, int cols,
                    duel_error *err) {
    if (m->weights == WEIGHT_F32) {
        *dst = weight_matrix_borrow_f32(*src, rows, cols);
        return DUEL_OK;
    }
    int rc = weight_matrix_pack(dst, m->weights, *src, rows, cols, err);
    *src = NULL;
    return rc;
}

static int pack_layer(model *m, int l, duel_error *err) {
    const model_config *c = &m->config;
    model_layer *L = &m->layers[l];
    int H = c->hidden_size, rc;
    if ((rc = pack_one(m, &L->qkv, &L->qkv_w, m->qkv_dim, H, err)) ||
        (rc = pack_one(m, &L->o, &L->o_w, H, m->q_dim, err)) ||
        (rc = pack_one(m, &L->up, &L->up_w, m->up_dim, H, err)) ||
        (rc = pack_one(m, &L->down, &L->down_w, H, c->intermediate_size, err)))
        return duel_error_prefix(err, "layer %d", l);
    return DUEL_OK;
}

/* The head from head_w (f32: borrowed; packed: from the stage). A tied head is packed from the
 * embedding, which the forward pass then reads through the head (embed_rows). */
static int pack_head(model *m, duel_error *err) {
    const model_config *c = &m->config;
    bool tied = c->head == MODEL_HEAD_CAUSAL_LM && c->tie_word_embeddings;
    int rc = pack_one(m, &m->head, &m->head_w, m->output_size, c->hidden_size, err);
    if (tied && m->weights != WEIGHT_F32) m->embedding = NULL;
    return rc;
}

/* Loads tensor `name` of the given 1-d or 2-d shape, converted to f32, into dst. BF16 (the
 * common checkpoint dtype) goes through the vectorised cpu_bf16_to_f32. */
static int load_tensor(const safetensors_archive *st, const char *name, int64_t rows,
                       int64_t cols, float *dst, duel_error *err) {
    int64_t shape[2] = {rows, cols};
    const safetensors_tensor *t;
    int rc = safetensors_expect(st, name, cols ? 2 : 1, shape, &t, err);
    if (rc) return rc;
    size_t n = (size_t)t->num_elements;
    if (t->dtype == SAFETENSORS_BF16 && t->num_bytes == n * 2) {
        cpu_bf16_to_f32(dst, t->data, n);
        return DUEL_OK;
    }
    return safetensors_to_f32(t, dst, err);
}

static int load_named(const safetensors_archive *st, int64_t rows, int64_t cols, float *dst,
                      duel_error *err, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
static int load_named(const safetensors_archive *st, int64_t rows, int64_t cols, float *dst,
                      duel_error *err, const char *fmt, ...) {
    char name[MODEL_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return load_tensor(st, name, rows, cols, dst, err);
}

static int load_llama(model *m, const safetensors_archive *st, duel_error *err) {
    const model_config *c = &m->config;
    int64_t H = c->hidden_size, F = c->intermediate_size;
    int rc;
    const char *p = "model.";
    if ((rc = load_named(st, c->vocab_size, H, m->embedding, err, "%sembed_tokens.weight", p)) ||
        (is_tied(m) && (rc = pack_head(m, err))))
        return rc;
    for (int l = 0; l < c->num_layers; l++) {
        model_layer *L = &m->layers[l];
        float *k_w = L->qkv_w + (size_t)m->q_dim * H, *v_w = k_w + (size_t)m->kv_dim * H;
        if ((rc = load_named(st, H, 0, L->attn_norm_w, err, "%slayers.%d.input_layernorm.weight",
                             p, l)) ||
            (rc = load_named(st, m->q_dim, H, L->qkv_w, err, "%slayers.%d.self_attn.q_proj.weight",
                             p, l)) ||
            (rc = load_named(st, m->kv_dim, H, k_w, err, "%slayers.%d.self_attn.k_proj.weight", p,
                             l)) ||
            (rc = load_named(st, m->kv_dim, H, v_w, err, "%slayers.%d.self_attn.v_proj.weight", p,
                             l)) ||
            (rc = load_named(st, H, m->q_dim, L->o_w, err, "%slayers.%d.self_attn.o_proj.weight",
                             p, l)) ||
            (rc = load_named(st, H, 0, L->mlp_norm_w, err,
                             "%slayers.%d.post_attention_layernorm.weight", p, l)) ||
            (rc = load_named(st, F, H, L->up_w, err, "%slayers.%d.mlp.gate_proj.weight", p, l)) ||
            (rc = load_named(st, F, H, L->up_w + (size_t)F * H, err,
                             "%slayers.%d.mlp.up_proj.weight", p, l)) ||
            (rc = load_named(st, H, F, L->down_w, err, "%slayers.%d.mlp.down_proj.weight", p, l)))
            return rc;
        if (c->attention_bias &&
            ((rc = load_named(st, m->q_dim, 0, L->qkv_b, err, "%slayers.%d.self_attn.q_proj.bias",
                              p, l)) ||
             (rc = load_named(st, m->kv_dim, 0, L->qkv_b + m->q_dim, err,
                              "%slayers.%d.self_attn.k_proj.bias", p, l)) ||
             (rc = load_named(st, m->kv_dim, 0, L->qkv_b + m->q_dim + m->kv_dim, err,
                              "%slayers.%d.self_attn.v_proj.bias", p, l))))
            return rc;
        if (c->attention_out_bias &&
            (rc = load_named(st, H, 0, L->o_b, err, "%slayers.%d.self_attn.o_proj.bias", p, l)))
            return rc;
        if (c->mlp_bias &&
            ((rc = load_named(st, F, 0, L->up_b, err, "%slayers.%d.mlp.gate_proj.bias", p, l)) ||
             (rc = load_named(st, F, 0, L->up_b + F, err, "%slayers.%d.mlp.up_proj.bias", p, l)) ||
             (rc = load_named(st, H, 0, L->down_b, err, "%slayers.%d.mlp.down_proj.bias", p, l))))
            return rc;
        if ((rc = pack_layer(m, l, err))) return rc;
    }
    return load_named(st, H, 0, m->final_norm_w, err, "%snorm.weight", p);
}

/* HF's query_key_value rows are [heads][3][head_dim]; ours are [3][heads][head_dim]. */
static void permute_neox_qkv(float *dst, const float *src, int heads, int head_dim, size_t cols) {
    for (int h = 0; h < heads; h++)
        for (int j = 0; j < 3; j++)
            for (int d = 0; d < head_dim; d++) {
                size_t from = ((size_t)h * 3 + j) * head_dim + d;
                size_t to = ((size_t)j * heads + h) * head_dim + d;
                memcpy(dst + to * cols, src + from * cols, cols * sizeof *dst);
            }
}

static int load_neox(model *m, const safetensors_archive *st, duel_error *err) {
    const model_config *c = &m->config;
    int64_t H = c->hidden_size, F = c->intermediate_size;
    const char *p = "gpt_neox.";
    int rc;
    float *tmp = malloc((size_t)m->qkv_dim * (size_t)H * sizeof *tmp);
    if (!tmp) return duel_error_set(err, DUEL_ENOMEM, "out of memory loading query_key_value");
    if ((rc = load_named(st, c->vocab_size, H, m->embedding, err, "%sembed_in.weight", p)) ||
        (is_tied(m) && (rc = pack_head(m, err))))
        goto done;
    for (int l = 0; l < c->num_layers; l++) {
        model_layer *L = &m->layers[l];
        if ((rc = load_named(st, H, 0, L->attn_norm_w, err, "%slayers.%d.input_layernorm.weight",
                             p, l)) ||
            (rc = load_named(st, H, 0, L->attn_norm_b, err, "%slayers.%d.input_layernorm.bias", p,
                             l)) ||
            (rc = load_named(st, H, 0, L->mlp_norm_w, err,
                             "%slayers.%d.post_attention_layernorm.weight", p, l)) ||
            (rc = load_named(st, H, 0, L->mlp_norm_b, err,
                             "%slayers.%d.post_attention_layernorm.bias", p, l)) ||
            (rc = load_named(st, m->qkv_dim, H, tmp, err,
                             "%slayers.%d.attention.query_key_value.weight", p, l)))
            goto done;
        permute_neox_qkv(L->qkv_w, tmp, c->num_heads, c->head_dim, (size_t)H);
        if (c->attention_bias) {
            if ((rc = load_named(st, m->qkv_dim, 0, tmp, err,
                                 "%slayers.%d.attention.query_key_value.bias", p, l)))
                goto done;
            permute_neox_qkv(L->qkv_b, tmp, c->num_heads, c->head_dim, 1);
        }
        if ((rc = load_named(st, H, m->q_dim, L->o_w, err, "%slayers.%d.attention.dense.weight", p,
                             l)) ||
            (c->attention_out_bias &&
             (rc = load_named(st, H, 0, L->o_b, err, "%slayers.%d.attention.dense.bias", p, l))) ||
            (rc = load_named(st, F, H, L->up_w, err, "%slayers.%d.mlp.dense_h_to_4h.weight", p,
                             l)) ||
            (rc = load_named(st, F, 0, L->up_b, err, "%slayers.%d.mlp.dense_h_to_4h.bias", p, l)) ||
            (rc = load_named(st, H, F, L->down_w, err, "%slayers.%d.mlp.dense_4h_to_h.weight", p,
                             l)) ||
            (rc = load_named(st, H, 0, L->down_b, err, "%slayers.%d.mlp.dense_4h_to_h.bias", p,
                             l)) ||
            (rc = pack_layer(m, l, err)))
            goto done;
    }
    if ((rc = load_named(st, H, 0, m->final_norm_w, err, "%sfinal_layer_norm.weight", p)) ||
        (rc = load_named(st, H, 0, m->final_norm_b, err, "%sfinal_layer_norm.bias", p)))
        goto done;
done:
    free(tmp);
    return rc;
}

static int load_head(model *m, const safetensors_archive *st, duel_error *err) {
    const model_config *c = &m->config;
    int64_t H = c->hidden_size;
    if (is_tied(m)) return DUEL_OK; /* packed with the embedding */
    int rc = c->head == MODEL_HEAD_SEQUENCE_CLASSIFICATION
                 ? load_tensor(st, "score.weight", m->output_size, H, m->head_w, err)
                 : load_tensor(st,
                               c->arch == MODEL_ARCH_GPT_NEOX ? "embed_out.weight" : "lm_head.weight",
                               m->output_size, H, m->head_w, err);
    return rc ? rc : pack_head(m, err);
}

int model_load(const char *dir, model **out, duel_error *err) {
    return model_load_with(dir, NULL, out, err);
}

int model_load_archive(const char *dir, const safetensors_archive *weights, model **out,
                       duel_error *err) {
    model_load_options o = {.weights = WEIGHT_F32, .archive = weights};
    return model_load_with(dir, &o, out, err);
}

int model_load_with(const char *dir, const model_load_options *opts, model **out,
                    duel_error *err) {
    if (out) *out = NULL;
    if (!dir || !out) return duel_error_set(err, DUEL_EINVAL, "model_load: NULL argument");
    weight_format weights = opts ? opts->weights : WEIGHT_F32;
    int threads = opts ? opts->threads : 0;
    if (weights != WEIGHT_F32 && weights != WEIGHT_BF16 && weights != WEIGHT_Q8)
        return duel_error_set(err, DUEL_EINVAL, "model_load: weight format %d", (int)weights);
    if (threads < 0 || threads > 2)
        return duel_error_set(err, DUEL_EINVAL, "model_load: %d threads (0 or 2: with the helper "
                              "thread, 1: without)", threads);
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return duel_error_set(err, DUEL_ELIMIT, "model_load: directory path too long");
    model *m = calloc(1, sizeof *m);
    if (!m) return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    m->isa = cpu_isa_best();
    m->weights = weights;
    helper_start(&m->helper, threads != 1);
    safetensors_archive *st = NULL;
    int rc = model_config_load(path, &m->config, err);
    if (rc) goto fail;
    const model_config *c = &m->config;
    m->q_dim = c->num_heads * c->head_dim;
    m->kv_dim = c->num_kv_heads * c->head_dim;
    m->qkv_dim = m->q_dim + 2 * m->kv_dim;
    m->up_dim = c->arch == MODEL_ARCH_LLAMA ? 2 * c->intermediate_size : c->intermediate_size;
    m->output_size = c->head == MODEL_HEAD_SEQUENCE_CLASSIFICATION ? c->num_labels : c->vocab_size;
    m->layers = calloc((size_t)c->num_layers, sizeof *m->layers);
    m->inv_freq = calloc((size_t)(c->rotary_dim / 2 + 1), sizeof *m->inv_freq);
    if (!m->layers || !m->inv_freq) {
        rc = duel_error_set(err, DUEL_ENOMEM, "out of memory");
        goto fail;
    }
    size_t stage_floats = 0;
    m->num_params = layout_params(m, NULL, NULL, &stage_floats);
    if ((long long)m->num_params > MODEL_MAX_PARAMS || (long long)stage_floats > MODEL_MAX_PARAMS) {
        rc = duel_error_set(err, DUEL_ELIMIT, "%s: %zu parameters is above the limit of %lld",
                            path, m->num_params, MODEL_MAX_PARAMS);
        goto fail;
    }
    m->params = malloc(m->num_params * sizeof *m->params);
    if (stage_floats) m->stage = malloc(stage_floats * sizeof *m->stage);
    if (!m->params || (stage_floats && !m->stage)) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory for %zu parameters", dir,
                            m->num_params + stage_floats);
        goto fail;
    }
    layout_params(m, m->params, m->stage, NULL);
    const safetensors_archive *from = opts ? opts->archive : NULL;
    if (!from && (rc = safetensors_open_dir(dir, &st, err))) goto fail;
    if (!from) from = st;
    rc = c->arch == MODEL_ARCH_LLAMA ? load_llama(m, from, err) : load_neox(m, from, err);
    if (rc || (rc = load_head(m, from, err))) goto fail;
    safetensors_close(st);
    st = NULL;
    free(m->stage);
    m->stage = NULL;
    cpu_rope_inv_freq(m->inv_freq, c->rotary_dim, c->rope_theta,
                      c->rope_scaling == MODEL_ROPE_LLAMA3   ? CPU_ROPE_SCALING_LLAMA3
                      : c->rope_scaling == MODEL_ROPE_LINEAR ? CPU_ROPE_SCALING_LINEAR
                                                             : CPU_ROPE_SCALING_NONE,
                      c->rope_factor, c->rope_low_freq_factor, c->rope_high_freq_factor,
                      c->rope_original_max_positions);
    *out = m;
    return DUEL_OK;
fail:
    safetensors_close(st);
    model_free(m);
    return rc;
}

void model_free(model *m) {
    if (!m) return;
    helper_stop(&m->helper);
    if (m->layers && m->weights != WEIGHT_F32)
        for (int l = 0; l < m->config.num_layers; l++) {
            weight_matrix_free(&m->layers[l].qkv);
            weight_matrix_free(&m->layers[l].o);
            weight_matrix_free(&m->layers[l].up);
            weight_matrix_free(&m->layers[l].down);
        }
    if (m->weights != WEIGHT_F32) weight_matrix_free(&m->head);
    free(m->stage);
    free(m->prepared);
    free(m->params);
    free(m->layers);
    free(m->inv_freq);
    free(m->scratch);
    free(m->att_scratch);
    free(m->gather_k);
    free(m->gather_v);
    free(m->head_in);
    free(m->head_out);
    free(m);
}

const model_config *model_get_config(const model *m) { return &m->config; }

int model_output_size(const model *m) { return m->output_size; }

weight_format model_weight_format(const model *m) { return m->weights; }

size_t model_weight_bytes(const model *m) {
    size_t bytes = weight_matrix_bytes(&m->head);
    for (int l = 0; l < m->config.num_layers; l++) {
        const model_layer *L = &m->layers[l];
        bytes += weight_matrix_bytes(&L->qkv) + weight_matrix_bytes(&L->o) +
                 weight_matrix_bytes(&L->up) + weight_matrix_bytes(&L->down);
    }
    return bytes;
}

/* ---- KV cache ----------------------------------------------------------------------------- */

int model_kv_cache_create(const model *m, int max_tokens, model_kv_cache **out, duel_error *err) {
    if (out) *out = NULL;
    if (!m || !out) return duel_error_set(err, DUEL_EINVAL, "model_kv_cache_create: NULL argument");
    if (max_tokens < 1 || max_tokens > MODEL_KV_MAX_TOKENS)
        return duel_error_set(err, DUEL_EINVAL, "KV cache size %d is outside [1, %d] tokens",
                              max_tokens, MODEL_KV_MAX_TOKENS);
    size_t per = (size_t)m->config.num_layers * (size_t)max_tokens * (size_t)m->kv_dim;
    if (per > SIZE_MAX / 2 / sizeof(float))
        return duel_error_set(err, DUEL_ELIMIT, "KV cache of %d tokens is too large", max_tokens);
    model_kv_cache *kv = calloc(1, sizeof *kv);
    float *mem = calloc(2 * per, sizeof *mem);
    if (!kv || !mem) {
        free(kv);
        free(mem);
        return duel_error_set(err, DUEL_ENOMEM,
                              "out of memory for a KV cache of %d tokens (%zu MiB)", max_tokens,
                              2 * per * sizeof(float) >> 20);
    }
    kv->num_layers = m->config.num_layers;
    kv->kv_dim = m->kv_dim;
    kv->max_tokens = max_tokens;
    kv->k = mem;
    kv->v = mem + per;
    *out = kv;
    return DUEL_OK;
}

void model_kv_cache_free(model_kv_cache *kv) {
    if (!kv) return;
    free(kv->k); /* k and v share one allocation */
    free(kv);
}

void model_kv_cache_reset(model_kv_cache *kv) {
    if (kv) kv->length = 0;
}

int model_kv_cache_length(const model_kv_cache *kv) { return kv ? kv->length : 0; }

void model_kv_cache_truncate(model_kv_cache *kv, int length) {
    if (!kv) return;
    if (length < 0) length = 0;
    if (length < kv->length) kv->length = length;
}

/* ---- forward ------------------------------------------------------------------------------ */

/* Room for the converted input of packed products of up to `rows` rows (no-op for f32). */
static int ensure_prepared(model *m, int rows, duel_error *err) {
    if (m->weights == WEIGHT_F32 || rows < 1) return DUEL_OK;
    const model_layer *L = &m->layers[0];
    const weight_matrix *all[5] = {&m->head, &L->qkv, &L->o, &L->up, &L->down};
    size_t need = 0;
    for (int i = m->config.num_layers > 0 ? 4 : 0; i >= 0; i--) {
        /* the scalar kernels' prepared rows (f32 for bf16) are the largest of any kernel */
        size_t b = weight_prepared_bytes(WEIGHT_KERNEL_SCALAR, all[i], rows);
        need = b > need ? b : need;
    }
    if (need <= m->prepared_bytes) return DUEL_OK;
    void *mem = aligned_alloc(64, (need + 63) / 64 * 64);
    if (!mem) return duel_error_set(err, DUEL_ENOMEM, "out of memory for %d converted rows", rows);
    free(m->prepared);
    m->prepared = mem;
    m->prepared_bytes = need;
    return DUEL_OK;
}

/* Makes room for chunks of `rows` tokens and attention over caches of max_ctx tokens. */
static int ensure_scratch(model *m, int rows, int max_ctx, duel_error *err) {
    const model_config *c = &m->config;
    if (rows > m->scratch_tokens) {
        int cap = m->scratch_tokens * 2 > rows ? m->scratch_tokens * 2 : rows;
        if (cap > MODEL_MAX_CHUNK_TOKENS) cap = MODEL_MAX_CHUNK_TOKENS;
        size_t H = (size_t)c->hidden_size, n = (size_t)cap, half = (size_t)c->rotary_dim / 2;
        size_t sizes[9] = {n * H,         n * H,         n * H,
                           n * m->qkv_dim, n * m->q_dim,  n * m->up_dim,
                           n * (size_t)c->intermediate_size, n * half, n * half};
        size_t total = 0;
        for (int i = 0; i < 9; i++) total += sizes[i];
        float *mem = malloc(total * sizeof *mem);
        if (!mem) return duel_error_set(err, DUEL_ENOMEM, "out of memory for forward scratch");
        free(m->scratch);
        m->scratch = mem;
        float **ptrs[9] = {&m->x,   &m->xb,      &m->xb2,      &m->qkv,     &m->att,
                           &m->ffn, &m->ffn_act, &m->rope_cos, &m->rope_sin};
        for (int i = 0; i < 9; i++) {
            *ptrs[i] = mem;
            mem += sizes[i];
        }
        m->scratch_tokens = cap;
    }
    int rc = ensure_prepared(m, m->scratch_tokens, err);
    if (rc) return rc;
    size_t need = cpu_attention_scratch_floats(rows, max_ctx);
    if (need < 2 * (size_t)max_ctx) need = 2 * (size_t)max_ctx; /* decode scores, two threads */
    if (need > m->att_scratch_floats) {
        float *mem = malloc(need * sizeof *mem);
        if (!mem) return duel_error_set(err, DUEL_ENOMEM, "out of memory for attention scratch");
        free(m->att_scratch);
        m->att_scratch = mem;
        m->att_scratch_floats = need;
    }
    return DUEL_OK;
}

static void apply_norm(const model *m, float *out, const float *in, const float *w,
                       const float *b, int n) {
    if (m->config.arch == MODEL_ARCH_GPT_NEOX)
        cpu_layernorm_forward(out, in, w, b, n, m->config.hidden_size, (float)m->config.norm_eps);
    else
        cpu_rmsnorm_forward(out, in, w, n, m->config.hidden_size, (float)m->config.norm_eps);
}

/* ---- the helper thread's parallel-for ---------------------------------------------------- */

#define MODEL_HELPER_SPIN 4000     /* pause iterations the helper polls before sleeping */
#define MODEL_OWNER_SPIN (1 << 14) /* pause iterations the owner polls before yielding */

static inline void cpu_relax(void) {
#ifdef MODEL_AVX2
    _mm_pause();
#endif
}

/* Claims the next chunk of job seq: false when the job is over or another one was posted. */
static bool helper_claim(model_helper *h, uint32_t seq, int *chunk) {
    uint64_t s = atomic_load_explicit(&h->state, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(s >> 32) != seq) return false;
        int total = (int)((s >> 16) & 0xffff), next = (int)(s & 0xffff);
        if (next >= total) return false;
        if (atomic_compare_exchange_weak_explicit(&h->state, &s, s + 1, memory_order_acq_rel,
                                                  memory_order_acquire)) {
            *chunk = next;
            return true;
        }
    }
}

/* Runs chunks of job seq until none is left. */
static void helper_run(model_helper *h, uint32_t seq, int thread) {
    int chunk;
    while (helper_claim(h, seq, &chunk)) {
        h->fn(h->ctx, chunk, thread);
        atomic_fetch_add_explicit(&h->done, 1, memory_order_release);
    }
}

static void *helper_main(void *arg) {
    model_helper *h = arg;
    uint32_t seen = 0;
    for (;;) {
        uint32_t seq = (uint32_t)(atomic_load_explicit(&h->state, memory_order_acquire) >> 32);
        for (int spin = 0; seq == seen && spin < MODEL_HELPER_SPIN; spin++) {
            cpu_relax();
            seq = (uint32_t)(atomic_load_explicit(&h->state, memory_order_acquire) >> 32);
        }
        if (seq == seen) {
            pthread_mutex_lock(&h->lock);
            while ((seq = (uint32_t)(atomic_load_explicit(&h->state, memory_order_acquire) >>
                                     32)) == seen &&
                   !atomic_load(&h->quit))
                pthread_cond_wait(&h->wake, &h->lock);
            pthread_mutex_unlock(&h->lock);
        }
        if (atomic_load(&h->quit)) return NULL;
        seen = seq;
        helper_run(h, seq, 1);
    }
}

/* Starts the helper (best effort: without it every job runs on the owner thread); with
 * spawn false only the synchronisation objects (model_load_options.threads = 1). */
static void helper_start(model_helper *h, bool spawn) {
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    atomic_init(&h->state, 0);
    atomic_init(&h->done, 0);
    atomic_init(&h->quit, false);
    h->started = spawn && pthread_create(&h->thread, NULL, helper_main, h) == 0;
}

static void helper_stop(model_helper *h) {
    if (h->started) {
        pthread_mutex_lock(&h->lock);
        atomic_store(&h->quit, true);
        pthread_cond_signal(&h->wake);
        pthread_mutex_unlock(&h->lock);
        pthread_join(h->thread, NULL);
        h->started = false;
    }
    pthread_mutex_destroy(&h->lock);
    pthread_cond_destroy(&h->wake);
}

/* fn(ctx, i, thread) for every i < total, on the owner (thread 0) and the helper thread
 * (thread 1); returns when all ran. */
static void helper_parallel_for(model_helper *h, helper_fn fn, void *ctx, int total) {
    if (!h->started || total < 2 || total > MODEL_HELPER_MAX_CHUNKS) {
        for (int i = 0; i < total; i++) fn(ctx, i, 0);
        return;
    }
    h->fn = fn;
    h->ctx = ctx;
    atomic_store_explicit(&h->done, 0, memory_order_relaxed);
    uint32_t seq = (uint32_t)(atomic_load_explicit(&h->state, memory_order_relaxed) >> 32) + 1;
    if (seq == 0) seq = 1; /* 0 is the helper's initial "seen" */
    pthread_mutex_lock(&h->lock);
    atomic_store_explicit(&h->state, (uint64_t)seq << 32 | (uint64_t)total << 16,
                          memory_order_release);
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    helper_run(h, seq, 0);
    for (int spin = 0; atomic_load_explicit(&h->done, memory_order_acquire) != total; spin++) {
        if (spin < MODEL_OWNER_SPIN) cpu_relax();
        else sched_yield(); /* the helper holds a chunk but was descheduled (a loaded machine) */
    }
}

/* ---- skinny products (a few rows: batched decode) ----------------------------------------- */

#define MODEL_SKINNY_MAX_ROWS 8 /* rows up to which batch_matmul runs the skinny kernel */
#define MODEL_SKINNY_CHUNKS 32  /* a product is split into about this many column chunks */
#define MODEL_SKINNY_MIN_COLS 16 /* columns per chunk at least (a cache line of out) */

typedef struct skinny_job {
    cpu_isa isa;
    float *out;
    const float *in, *W, *bias;
    int n, in_dim, out_dim, cols_per_chunk;
    bool accumulate;
} skinny_job;

static void skinny_chunk(void *ctx, int chunk, int thread) {
    (void)thread;
    const skinny_job *j = ctx;
    int begin = chunk * j->cols_per_chunk;
    int end = begin + j->cols_per_chunk < j->out_dim ? begin + j->cols_per_chunk : j->out_dim;
    cpu_matmul_skinny_isa(j->isa, j->out, j->in, j->W, j->bias, j->n, j->in_dim, j->out_dim,
                          begin, end, j->accumulate);
}

/* out[n][out_dim] (=|+=) in[n][in_dim] W^T (+ bias) like cpu_matmul_forward. For 1..8 rows
 * (decode steps) the product runs as cpu_matmul_skinny_isa over column chunks shared by the
 * owner and the helper thread: each weight is streamed from memory once and used for every row
 * from registers, so 8 rows cost little more than one weight read, where OpenBLAS's sgemm on
 * such skinny shapes repacks the weights and ran 8 rows in 2.6x the time of 1 (SmolLM2-135M
 * shapes). One row takes the same path rather than OpenBLAS's sgemv: as fast on one thread
 * (measured 19-24 ms against 24-30 ms of CPU time over the 135M weights), and on a loaded
 * machine much faster, because sgemv's two threads split the rows in fixed halves (decode of one
 * sequence: 13 against 5 tok/s at load average 12). Other sizes go to cpu_matmul_forward
 * (OpenBLAS sgemm, its own threads). */
static void batch_matmul(model *m, float *out, const float *in, const float *W, const float *bias,
                         int n, int in_dim, int out_dim, bool accumulate) {
    if (n <= MODEL_SKINNY_MAX_ROWS && m->isa != CPU_ISA_SCALAR) {
        double t0 = duel_time_seconds();
        int cols = (out_dim / MODEL_SKINNY_CHUNKS + MODEL_SKINNY_MIN_COLS - 1) /
                   MODEL_SKINNY_MIN_COLS * MODEL_SKINNY_MIN_COLS;
        if (cols < MODEL_SKINNY_MIN_COLS) cols = MODEL_SKINNY_MIN_COLS;
        skinny_job job = {m->isa, out, in, W, bias, n, in_dim, out_dim, cols, accumulate};
        helper_parallel_for(&m->helper, skinny_chunk, &job, (out_dim + cols - 1) / cols);
        m->gemm.seconds += duel_time_seconds() - t0;
        m->gemm.flops += 2LL * n * in_dim * out_dim;
        return;
    }
    cpu_matmul_forward(out, in, W, bias, n, in_dim, out_dim, accumulate, &m->gemm);
}

/* Packed weights (bf16, q8): the input rows are converted once on the owner thread
 * (weight_prepare_input), then the groups of 16 output columns are shared with the helper thread
 * in chunks (weight_matmul_groups), for every n: decode and prefill alike. */
typedef struct packed_job {
    weight_kernel kernel;
    const weight_matrix *W;
    const void *prepared;
    float *out;
    const float *bias;
    int n, groups_per_chunk;
    bool accumulate;
} packed_job;

static void packed_chunk(void *ctx, int chunk, int thread) {
    (void)thread;
    const packed_job *j = ctx;
    int begin = chunk * j->groups_per_chunk;
    weight_matmul_groups(j->kernel, j->W, j->prepared, j->n, j->out, (size_t)j->W->rows, j->bias,
                         j->accumulate, begin, begin + j->groups_per_chunk);
}

static void packed_matmul(model *m, float *out, const float *in, const weight_matrix *W,
                          const float *bias, int n, bool accumulate) {
    double t0 = duel_time_seconds();
    packed_job job = {weight_kernel_best(W->format, n), W, m->prepared, out, bias, n, 1,
                      accumulate};
    weight_prepare_input(job.kernel, W, in, n, (size_t)W->cols, m->prepared);
    job.groups_per_chunk = (W->groups + MODEL_SKINNY_CHUNKS - 1) / MODEL_SKINNY_CHUNKS;
    helper_parallel_for(&m->helper, packed_chunk, &job,
                        (W->groups + job.groups_per_chunk - 1) / job.groups_per_chunk);
    m->gemm.seconds += duel_time_seconds() - t0;
    m->gemm.flops += 2LL * n * W->cols * W->rows;
}

/* out[n][W->rows] (=|+=) in[n][W->cols] W^T (+ bias): every linear layer and the head. f32
 * weights go to OpenBLAS (cpu_matmul_forward), or with skinny (the paged path) to batch_matmul;
 * packed weights to packed_matmul. */
static void linear(model *m, float *out, const float *in, const weight_matrix *W,
                   const float *bias, int n, bool accumulate, bool skinny) {
    if (W->format != WEIGHT_F32) packed_matmul(m, out, in, W, bias, n, accumulate);
    else if (skinny) batch_matmul(m, out, in, W->f32, bias, n, W->cols, W->rows, accumulate);
    else cpu_matmul_forward(out, in, W->f32, bias, n, W->cols, W->rows, accumulate, &m->gemm);
}

/* Input embeddings of n tokens: the f32 table, or rows of the packed head it is tied to. */
static void embed_rows(const model *m, float *out, const int32_t *tokens, int n) {
    int H = m->config.hidden_size;
    if (m->embedding) {
        cpu_embedding_forward(out, tokens, n, m->embedding, H);
        return;
    }
    for (int i = 0; i < n; i++) weight_matrix_row(&m->head, tokens[i], out + (size_t)i * H);
}

/* x += mlp(in) for n rows; skinny: batch_matmul (the paged path) instead of
 * cpu_matmul_forward. */
static void mlp_forward_with(model *m, const model_layer *L, const float *in, int n,
                             bool skinny);
static void mlp_forward(model *m, const model_layer *L, const float *in, int n) {
    mlp_forward_with(m, L, in, n, false);
}

static void mlp_forward_with(model *m, const model_layer *L, const float *in, int n,
                             bool skinny) {
    const model_config *c = &m->config;
    int F = c->intermediate_size;
    linear(m, m->ffn, in, &L->up, L->up_b, n, false, skinny);
    const float *act = m->ffn;
    if (c->arch == MODEL_ARCH_LLAMA) {
        cpu_swiglu_forward(m->ffn_act, m->ffn, n, F);
        act = m->ffn_act;
    } else {
        cpu_gelu_forward(m->ffn, (size_t)n * F, c->activation == MODEL_ACT_GELU_TANH);
    }
    linear(m, m->x, act, &L->down, L->down_b, n, true, skinny);
}

/* One chunk of n <= scratch_tokens tokens at positions kv->length ... */
static void forward_chunk(model *m, model_kv_cache *kv, const int32_t *tokens, int n,
                          float *logits, bool all_logits, float *hidden_last) {
    const model_config *c = &m->config;
    int H = c->hidden_size, start = kv->length;
    embed_rows(m, m->x, tokens, n);
    cpu_rope_tables(m->rope_cos, m->rope_sin, m->inv_freq, c->rotary_dim, start, n);
    bool parallel = c->arch == MODEL_ARCH_GPT_NEOX && c->use_parallel_residual;
    for (int l = 0; l < c->num_layers; l++) {
        const model_layer *L = &m->layers[l];
        size_t layer_off = (size_t)l * kv->max_tokens * kv->kv_dim;
        float *kc = kv->k + layer_off, *vc = kv->v + layer_off;

        apply_norm(m, m->xb, m->x, L->attn_norm_w, L->attn_norm_b, n);
        linear(m, m->qkv, m->xb, &L->qkv, L->qkv_b, n, false, false);
        cpu_rope_forward(m->qkv, n, m->qkv_dim, c->num_heads, c->head_dim, c->rotary_dim,
                         m->rope_cos, m->rope_sin);
        cpu_rope_forward(m->qkv + m->q_dim, n, m->qkv_dim, c->num_kv_heads, c->head_dim,
                         c->rotary_dim, m->rope_cos, m->rope_sin);
        for (int t = 0; t < n; t++) {
            const float *row = m->qkv + (size_t)t * m->qkv_dim;
            size_t at = (size_t)(start + t) * kv->kv_dim;
            memcpy(kc + at, row + m->q_dim, (size_t)m->kv_dim * sizeof *kc);
            memcpy(vc + at, row + m->q_dim + m->kv_dim, (size_t)m->kv_dim * sizeof *vc);
        }
        cpu_attention_forward(m->att, m->q_dim, m->qkv, m->qkv_dim, kc, vc, kv->kv_dim, n, start,
                              c->num_heads, c->num_kv_heads, c->head_dim, m->att_scratch,
                              &m->gemm);
        if (parallel) {
            /* x + attn(ln1(x)) + mlp(ln2(x)): both norms read x before either add. */
            apply_norm(m, m->xb2, m->x, L->mlp_norm_w, L->mlp_norm_b, n);
            linear(m, m->x, m->att, &L->o, L->o_b, n, true, false);
            mlp_forward(m, L, m->xb2, n);
        } else {
            linear(m, m->x, m->att, &L->o, L->o_b, n, true, false);
            apply_norm(m, m->xb, m->x, L->mlp_norm_w, L->mlp_norm_b, n);
            mlp_forward(m, L, m->xb, n);
        }
    }
    kv->length = start + n;

    const float *last;
    if (logits && all_logits) {
        apply_norm(m, m->xb, m->x, m->final_norm_w, m->final_norm_b, n);
        linear(m, logits, m->xb, &m->head, NULL, n, false, false);
        last = m->xb + (size_t)(n - 1) * H;
    } else {
        apply_norm(m, m->xb, m->x + (size_t)(n - 1) * H, m->final_norm_w, m->final_norm_b, 1);
        if (logits)
            linear(m, logits, m->xb, &m->head, NULL, 1, false, false);
        last = m->xb;
    }
    if (hidden_last) memcpy(hidden_last, last, (size_t)H * sizeof *hidden_last);
}

int model_forward(model *m, model_kv_cache *kv, const int32_t *tokens, int n_tokens,
                  float *logits, bool all_logits, float *hidden_last, duel_error *err) {
    if (!m || !kv || !tokens)
        return duel_error_set(err, DUEL_EINVAL, "model_forward: NULL argument");
    const model_config *c = &m->config;
    if (n_tokens < 1)
        return duel_error_set(err, DUEL_EINVAL, "model_forward: %d tokens (need at least 1)",
                              n_tokens);
    if (kv->num_layers != c->num_layers || kv->kv_dim != m->kv_dim)
        return duel_error_set(err, DUEL_EINVAL,
                              "model_forward: KV cache shape (%d layers x %d) does not match the "
                              "model (%d layers x %d)",
                              kv->num_layers, kv->kv_dim, c->num_layers, m->kv_dim);
    if (n_tokens > kv->max_tokens - kv->length)
        return duel_error_set(err, DUEL_ELIMIT,
                              "model_forward: KV cache overflow: %d tokens stored, %d more exceed "
                              "its capacity of %d",
                              kv->length, n_tokens, kv->max_tokens);
    for (int i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return duel_error_set(err, DUEL_EINVAL,
                                  "model_forward: token id %d at index %d is outside the "
                                  "vocabulary (vocab_size %d)",
                                  (int)tokens[i], i, c->vocab_size);
    int chunk = n_tokens < MODEL_MAX_CHUNK_TOKENS ? n_tokens : MODEL_MAX_CHUNK_TOKENS;
    int rc = ensure_scratch(m, chunk, kv->max_tokens, err);
    if (rc) return rc;
    double t0 = duel_time_seconds();
    for (int done = 0; done < n_tokens;) {
        int rows = n_tokens - done < m->scratch_tokens ? n_tokens - done : m->scratch_tokens;
        bool last = done + rows == n_tokens;
        float *chunk_logits = NULL;
        if (logits && all_logits)
            chunk_logits = logits + (size_t)done * m->output_size;
        else if (logits && last)
            chunk_logits = logits;
        forward_chunk(m, kv, tokens + done, rows, chunk_logits, all_logits,
                      last ? hidden_last : NULL);
        done += rows;
    }
    m->forward_seconds += duel_time_seconds() - t0;
    return DUEL_OK;
}

/* ---- batched forward over the paged KV cache ---------------------------------------------- */

/* A contiguous run of one entry's tokens inside one pass: rows row .. row+count-1 of the pass
 * are the entry's tokens offset .. offset+count-1. */
typedef struct batch_piece {
    int entry;
    int offset;
    int count;
    int row;
} batch_piece;

static inline float dot_f32(const float *a, const float *b, int n) {
    int i = 0;
    float sum = 0;
#ifdef MODEL_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    s4 = _mm_add_ss(s4, _mm_movehdup_ps(s4));
    sum = _mm_cvtss_f32(s4);
#endif
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* y += a * x over n floats. */
static inline void axpy_f32(float *y, float a, const float *x, int n) {
    int i = 0;
#ifdef MODEL_AVX2
    __m256 av = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] += a * x[i];
}

/* One layer of the pool's host storage: f32 (k, v) or bf16 (k16, v16), the other pair NULL. */
typedef struct kv_layer {
    float *k, *v;
    uint16_t *k16, *v16;
} kv_layer;

static kv_layer pool_layer(kv_pool *pool, int l) {
    kv_layer s = {kv_pool_layer_keys(pool, l), kv_pool_layer_values(pool, l),
                  kv_pool_layer_keys_bf16(pool, l), kv_pool_layer_values_bf16(pool, l)};
    return s;
}

/* bf16 K/V rows are widened (cpu_bf16_to_f32, exact) in chunks on the stack, then go through
 * the f32 helpers above. */
#define MODEL_WIDEN_CHUNK 256 /* floats */

static inline float dot_f32_bf16(const float *a, const uint16_t *b, int n) {
    float tmp[MODEL_WIDEN_CHUNK], sum = 0;
    for (int i = 0; i < n; i += MODEL_WIDEN_CHUNK) {
        int m = n - i < MODEL_WIDEN_CHUNK ? n - i : MODEL_WIDEN_CHUNK;
        cpu_bf16_to_f32(tmp, b + i, (size_t)m);
        sum += dot_f32(a + i, tmp, m);
    }
    return sum;
}

static inline void axpy_bf16(float *y, float a, const uint16_t *x, int n) {
    float tmp[MODEL_WIDEN_CHUNK];
    for (int i = 0; i < n; i += MODEL_WIDEN_CHUNK) {
        int m = n - i < MODEL_WIDEN_CHUNK ? n - i : MODEL_WIDEN_CHUNK;
        cpu_bf16_to_f32(tmp, x + i, (size_t)m);
        axpy_f32(y + i, a, tmp, m);
    }
}

/* Causal attention of `rows` query rows at positions start .. start+rows-1 of seq, for the query
 * heads of kv heads [g0, g1), reading each position's K/V in place from the pool's tiles of this
 * layer. q rows are qkv_dim apart, out rows q_dim apart; scores: start+rows floats. */
static void paged_attention_rows(const model *m, const kv_pool_params *pp, const kv_layer *kv,
                                 const kv_sequence *seq, int64_t start,
                                 int rows, const float *q, float *out, float *scores, int g0,
                                 int g1) {
    const model_config *c = &m->config;
    int hd = c->head_dim, kvh = c->num_kv_heads, bs = pp->block_size;
    int group = c->num_heads / kvh;
    float scale = 1.0f / sqrtf((float)hd);
    size_t tile = (size_t)bs * hd;
    for (int r = 0; r < rows; r++) {
        int64_t ctx = start + r + 1;
        const float *qr = q + (size_t)r * m->qkv_dim;
        float *orow = out + (size_t)r * m->q_dim;
        for (int h = g0 * group; h < g1 * group; h++) {
            int g = h / group;
            const float *qh = qr + (size_t)h * hd;
            float max = -INFINITY;
            for (int64_t p0 = 0; p0 < ctx; p0 += bs) {
                size_t at = ((size_t)seq->blocks[p0 / bs] * kvh + g) * tile;
                int n = ctx - p0 < bs ? (int)(ctx - p0) : bs;
                for (int s = 0; s < n; s++) {
                    size_t o = at + (size_t)s * hd;
                    float v = scale * (kv->k ? dot_f32(qh, kv->k + o, hd)
                                             : dot_f32_bf16(qh, kv->k16 + o, hd));
                    scores[p0 + s] = v;
                    max = v > max ? v : max;
                }
            }
            float sum = 0;
            for (int64_t p = 0; p < ctx; p++) {
                scores[p] = expf(scores[p] - max);
                sum += scores[p];
            }
            float inv = 1.0f / sum;
            float *oh = orow + (size_t)h * hd;
            memset(oh, 0, (size_t)hd * sizeof *oh);
            for (int64_t p0 = 0; p0 < ctx; p0 += bs) {
                size_t at = ((size_t)seq->blocks[p0 / bs] * kvh + g) * tile;
                int n = ctx - p0 < bs ? (int)(ctx - p0) : bs;
                for (int s = 0; s < n; s++) {
                    size_t o = at + (size_t)s * hd;
                    if (kv->v) axpy_f32(oh, scores[p0 + s] * inv, kv->v + o, hd);
                    else axpy_bf16(oh, scores[p0 + s] * inv, kv->v16 + o, hd);
                }
            }
        }
    }
}

/* Copies positions 0..ctx-1 of seq (this layer's K when keys, else V) into [ctx][kv_dim] f32
 * rows (bf16 storage widened). */
static void gather_kv(const model *m, const kv_pool_params *pp, const kv_layer *kv, bool keys,
                      const kv_sequence *seq, int64_t ctx, float *dst) {
    int hd = m->config.head_dim, kvh = m->config.num_kv_heads, bs = pp->block_size;
    size_t tile = (size_t)bs * hd;
    const float *src = keys ? kv->k : kv->v;
    const uint16_t *src16 = keys ? kv->k16 : kv->v16;
    for (int64_t p0 = 0; p0 < ctx; p0 += bs) {
        int n = ctx - p0 < bs ? (int)(ctx - p0) : bs;
        for (int g = 0; g < kvh; g++) {
            size_t at = ((size_t)seq->blocks[p0 / bs] * kvh + g) * tile;
            for (int s = 0; s < n; s++) {
                float *d = dst + (size_t)(p0 + s) * m->kv_dim + (size_t)g * hd;
                if (src) memcpy(d, src + at + (size_t)s * hd, (size_t)hd * sizeof *dst);
                else cpu_bf16_to_f32(d, src16 + at + (size_t)s * hd, (size_t)hd);
            }
        }
    }
}

/* Writes the K and V of pass rows (after rope) into their slots of the pool (bf16 storage:
 * rounded to nearest even). */
static void store_kv(const model *m, const kv_pool_params *pp, const kv_layer *kv,
                     const kv_sequence *seq, int64_t start, const float *qkv, int rows) {
    int hd = m->config.head_dim, kvh = m->config.num_kv_heads, bs = pp->block_size;
    for (int r = 0; r < rows; r++) {
        int64_t p = start + r;
        const float *row = qkv + (size_t)r * m->qkv_dim;
        size_t base = (size_t)seq->blocks[p / bs] * kvh;
        for (int g = 0; g < kvh; g++) {
            size_t at = ((base + g) * bs + (size_t)(p % bs)) * hd;
            const float *k = row + m->q_dim + (size_t)g * hd, *v = k + m->kv_dim;
            if (kv->k) {
                memcpy(kv->k + at, k, (size_t)hd * sizeof *k);
                memcpy(kv->v + at, v, (size_t)hd * sizeof *v);
            } else {
                for (int d = 0; d < hd; d++) {
                    kv->k16[at + d] = weight_f32_to_bf16(k[d]);
                    kv->v16[at + d] = weight_f32_to_bf16(v[d]);
                }
            }
        }
    }
}

static int ensure_batch_scratch(model *m, int64_t max_ctx, int head_rows, duel_error *err) {
    int rc = ensure_prepared(m, head_rows, err);
    if (rc) return rc;
    size_t need = (size_t)max_ctx * (size_t)m->kv_dim;
    if (need > m->gather_floats) {
        float *k = malloc(need * sizeof *k), *v = malloc(need * sizeof *v);
        if (!k || !v) {
            free(k);
            free(v);
            return duel_error_set(err, DUEL_ENOMEM, "out of memory for attention gather buffers");
        }
        free(m->gather_k);
        free(m->gather_v);
        m->gather_k = k;
        m->gather_v = v;
        m->gather_floats = need;
    }
    if ((size_t)head_rows > m->head_rows) {
        size_t rows = (size_t)head_rows;
        float *in = malloc(rows * (size_t)m->config.hidden_size * sizeof *in);
        float *out = malloc(rows * (size_t)m->output_size * sizeof *out);
        if (!in || !out) {
            free(in);
            free(out);
            return duel_error_set(err, DUEL_ENOMEM, "out of memory for %d output rows", head_rows);
        }
        free(m->head_in);
        free(m->head_out);
        m->head_in = in;
        m->head_out = out;
        m->head_rows = rows;
    }
    return DUEL_OK;
}

/* Decode attention of the short pieces of one layer, one chunk per (piece, kv head); thread t's
 * scores live at att_scratch + t * max_ctx. */
typedef struct attention_job {
    model *m;
    const kv_pool_params *pp;
    const kv_layer *kv;
    const model_batch_entry *entries;
    const batch_piece *pieces;
    const int *direct; /* indices into pieces of the short ones */
    int kv_heads;
    int64_t max_ctx;
} attention_job;

static void attention_chunk(void *ctx, int chunk, int thread) {
    const attention_job *j = ctx;
    model *m = j->m;
    const batch_piece *pc = &j->pieces[j->direct[chunk / j->kv_heads]];
    const model_batch_entry *e = &j->entries[pc->entry];
    int g = chunk % j->kv_heads;
    paged_attention_rows(m, j->pp, j->kv, e->seq, e->start + pc->offset, pc->count,
                         m->qkv + (size_t)pc->row * m->qkv_dim,
                         m->att + (size_t)pc->row * m->q_dim,
                         m->att_scratch + (size_t)thread * (size_t)j->max_ctx, g, g + 1);
}

/* One pass over pieces whose rows fill m->x[0..rows): every layer, K/V written into the pool.
 * direct_pieces: scratch for n_pieces ints; max_ctx: the longest context of the step. */
static void forward_pass_paged(model *m, kv_pool *pool, const model_batch_entry *entries,
                               const batch_piece *pieces, int n_pieces, int rows,
                               int *direct_pieces, int64_t max_ctx) {
    const model_config *c = &m->config;
    const kv_pool_params *pp = kv_pool_get_params(pool);
    int H = c->hidden_size, half = c->rotary_dim / 2;
    for (int i = 0; i < n_pieces; i++) {
        const batch_piece *pc = &pieces[i];
        const model_batch_entry *e = &entries[pc->entry];
        embed_rows(m, m->x + (size_t)pc->row * H, e->tokens + pc->offset, pc->count);
        cpu_rope_tables(m->rope_cos + (size_t)pc->row * half, m->rope_sin + (size_t)pc->row * half,
                        m->inv_freq, c->rotary_dim, (int)(e->start + pc->offset), pc->count);
    }
    bool parallel = c->arch == MODEL_ARCH_GPT_NEOX && c->use_parallel_residual;
    for (int l = 0; l < c->num_layers; l++) {
        const model_layer *L = &m->layers[l];
        kv_layer kv = pool_layer(pool, l);
        apply_norm(m, m->xb, m->x, L->attn_norm_w, L->attn_norm_b, rows);
        linear(m, m->qkv, m->xb, &L->qkv, L->qkv_b, rows, false, true);
        cpu_rope_forward(m->qkv, rows, m->qkv_dim, c->num_heads, c->head_dim, c->rotary_dim,
                         m->rope_cos, m->rope_sin);
        cpu_rope_forward(m->qkv + m->q_dim, rows, m->qkv_dim, c->num_kv_heads, c->head_dim,
                         c->rotary_dim, m->rope_cos, m->rope_sin);
        /* Every piece's K/V first (a piece reads only its own sequence's positions, and no two
         * sequences write the same slot), then the short pieces' attention on both threads, one
         * chunk per (piece, kv head), the long ones' here. */
        int direct = 0;
        for (int i = 0; i < n_pieces; i++) {
            const batch_piece *pc = &pieces[i];
            const model_batch_entry *e = &entries[pc->entry];
            store_kv(m, pp, &kv, e->seq, e->start + pc->offset,
                     m->qkv + (size_t)pc->row * m->qkv_dim, pc->count);
            if (pc->count <= MODEL_PAGED_DIRECT_ROWS) direct_pieces[direct++] = i;
        }
        attention_job job = {m,      pp,           &kv,            entries,
                             pieces, direct_pieces, c->num_kv_heads, max_ctx};
        helper_parallel_for(&m->helper, attention_chunk, &job, direct * c->num_kv_heads);
        for (int i = 0; i < n_pieces; i++) {
            const batch_piece *pc = &pieces[i];
            const model_batch_entry *e = &entries[pc->entry];
            int64_t start = e->start + pc->offset;
            const float *q = m->qkv + (size_t)pc->row * m->qkv_dim;
            float *out = m->att + (size_t)pc->row * m->q_dim;
            if (pc->count > MODEL_PAGED_DIRECT_ROWS) {
                int64_t ctx = start + pc->count;
                gather_kv(m, pp, &kv, true, e->seq, ctx, m->gather_k);
                gather_kv(m, pp, &kv, false, e->seq, ctx, m->gather_v);
                cpu_attention_forward(out, m->q_dim, q, m->qkv_dim, m->gather_k, m->gather_v,
                                      m->kv_dim, pc->count, (int)start, c->num_heads,
                                      c->num_kv_heads, c->head_dim, m->att_scratch, &m->gemm);
            }
        }
        if (parallel) {
            apply_norm(m, m->xb2, m->x, L->mlp_norm_w, L->mlp_norm_b, rows);
            linear(m, m->x, m->att, &L->o, L->o_b, rows, true, true);
            mlp_forward_with(m, L, m->xb2, rows, true);
        } else {
            linear(m, m->x, m->att, &L->o, L->o_b, rows, true, true);
            apply_norm(m, m->xb, m->x, L->mlp_norm_w, L->mlp_norm_b, rows);
            mlp_forward_with(m, L, m->xb, rows, true);
        }
    }
}

/* Adds each scored row's log softmax at its target to its entry's target_logprob: the pass's
 * rows with a target (m->x holds their residual stream) go through the final norm into in, one
 * GEMM with the head into out ([rows][output_size]), then a log-sum-exp per row (cpu_sum_exp, as
 * the sampler's). */
static void score_targets(model *m, const model_batch_entry *entries, const batch_piece *pieces,
                          int n_pieces, float *in, float *out) {
    const int H = m->config.hidden_size, V = m->output_size;
    int n = 0;
    for (int i = 0; i < n_pieces; i++) {
        const batch_piece *pc = &pieces[i];
        const model_batch_entry *e = &entries[pc->entry];
        for (int r = 0; e->targets && r < pc->count; r++)
            if (e->targets[pc->offset + r] >= 0)
                apply_norm(m, in + (size_t)n++ * H, m->x + (size_t)(pc->row + r) * H,
                           m->final_norm_w, m->final_norm_b, 1);
    }
    if (n == 0) return;
    linear(m, out, in, &m->head, NULL, n, false, true);
    n = 0;
    for (int i = 0; i < n_pieces; i++) {
        const batch_piece *pc = &pieces[i];
        const model_batch_entry *e = &entries[pc->entry];
        for (int r = 0; e->targets && r < pc->count; r++) {
            const int32_t target = e->targets[pc->offset + r];
            if (target < 0) continue;
            const float *row = out + (size_t)n++ * V;
            *e->target_logprob += (double)row[target] - cpu_log_sum_exp(row, V);
        }
    }
}

int model_forward_batch(model *m, kv_pool *pool, const model_batch_entry *entries, int n_entries,
                        duel_error *err) {
    if (!m || !pool || (!entries && n_entries))
        return duel_error_set(err, DUEL_EINVAL, "model_forward_batch: NULL argument");
    if (n_entries < 0)
        return duel_error_set(err, DUEL_EINVAL, "model_forward_batch: %d entries", n_entries);
    const model_config *c = &m->config;
    const kv_pool_params *pp = kv_pool_get_params(pool);
    if (pp->num_layers != c->num_layers || pp->num_kv_heads != c->num_kv_heads ||
        pp->head_dim != c->head_dim ||
        (!kv_pool_layer_keys(pool, 0) && !kv_pool_layer_keys_bf16(pool, 0)))
        return duel_error_set(err, DUEL_EINVAL,
                              "model_forward_batch: the KV pool (%d layers x %d kv heads x %d, "
                              "%s) does not fit the model (%d layers x %d kv heads x %d)",
                              pp->num_layers, pp->num_kv_heads, pp->head_dim,
                              kv_pool_layer_keys(pool, 0) || kv_pool_layer_keys_bf16(pool, 0)
                                  ? "host storage"
                                  : "no host storage",
                              c->num_layers, c->num_kv_heads, c->head_dim);
    int64_t max_ctx = 1, total_rows = 0;
    int head_rows = 0, target_entries = 0;
    for (int i = 0; i < n_entries; i++) {
        const model_batch_entry *e = &entries[i];
        if (!e->seq || !e->tokens)
            return duel_error_set(err, DUEL_EINVAL, "model_forward_batch: entry %d: NULL", i);
        if (e->n_tokens < 1 || e->start < 0)
            return duel_error_set(err, DUEL_EINVAL,
                                  "model_forward_batch: entry %d: %d tokens at position %lld", i,
                                  e->n_tokens, (long long)e->start);
        int64_t end = e->start + e->n_tokens;
        if (end > (int64_t)e->seq->num_blocks * pp->block_size || end > INT_MAX)
            return duel_error_set(err, DUEL_EINVAL,
                                  "model_forward_batch: entry %d: positions %lld..%lld are not "
                                  "reserved (the table covers %lld)",
                                  i, (long long)e->start, (long long)end - 1,
                                  (long long)e->seq->num_blocks * pp->block_size);
        for (int t = 0; t < e->n_tokens; t++)
            if (e->tokens[t] < 0 || e->tokens[t] >= c->vocab_size)
                return duel_error_set(err, DUEL_EINVAL,
                                      "model_forward_batch: entry %d: token id %d at index %d is "
                                      "outside the vocabulary (vocab_size %d)",
                                      i, (int)e->tokens[t], t, c->vocab_size);
        if (e->targets) {
            if (!e->target_logprob || c->head == MODEL_HEAD_SEQUENCE_CLASSIFICATION)
                return duel_error_set(err, DUEL_EINVAL,
                                      "model_forward_batch: entry %d: targets need target_logprob "
                                      "and a language-model head",
                                      i);
            for (int t = 0; t < e->n_tokens; t++)
                if (e->targets[t] >= c->vocab_size)
                    return duel_error_set(err, DUEL_EINVAL,
                                          "model_forward_batch: entry %d: target %d at index %d is "
                                          "outside the vocabulary (vocab_size %d)",
                                          i, (int)e->targets[t], t, c->vocab_size);
            target_entries++;
        }
        if (end > max_ctx) max_ctx = end;
        total_rows += e->n_tokens;
        if (e->logits || e->hidden_last) head_rows++;
    }
    if (n_entries == 0) return DUEL_OK;
    int rc = ensure_scratch(m, total_rows < MODEL_BATCH_MAX_ROWS ? (int)total_rows
                                                                 : MODEL_BATCH_MAX_ROWS,
                            (int)max_ctx, err);
    if (!rc) rc = ensure_batch_scratch(m, max_ctx, head_rows, err);
    if (rc) return rc;
    batch_piece *pieces = malloc((size_t)n_entries * sizeof *pieces);
    int *head_entry = malloc(((size_t)head_rows + 1) * sizeof *head_entry);
    int *direct_pieces = malloc((size_t)n_entries * sizeof *direct_pieces);
    int H = c->hidden_size, cap = m->scratch_tokens, n_head = 0;
    /* Scoring targets: one pass's rows through the final norm and the head at a time. */
    float *target_in = NULL, *target_out = NULL;
    if (target_entries) {
        target_in = malloc((size_t)cap * (size_t)H * sizeof *target_in);
        target_out = malloc((size_t)cap * (size_t)m->output_size * sizeof *target_out);
    }
    if (!pieces || !head_entry || !direct_pieces || (target_entries && (!target_in || !target_out))) {
        free(pieces);
        free(head_entry);
        free(direct_pieces);
        free(target_in);
        free(target_out);
        return duel_error_set(err, DUEL_ENOMEM, "out of memory for a batch of %d", n_entries);
    }
    for (int i = 0; i < n_entries; i++)
        if (entries[i].targets) *entries[i].target_logprob = 0;
    double t0 = duel_time_seconds();
    int entry = 0, offset = 0;
    while (entry < n_entries) {
        /* Fill one pass with up to cap rows, splitting an entry across passes when needed. */
        int rows = 0, n_pieces = 0;
        while (entry < n_entries && rows < cap) {
            const model_batch_entry *e = &entries[entry];
            int take = e->n_tokens - offset;
            if (take > cap - rows) take = cap - rows;
            pieces[n_pieces++] = (batch_piece){entry, offset, take, rows};
            rows += take;
            offset += take;
            if (offset == e->n_tokens) {
                entry++;
                offset = 0;
            }
        }
        forward_pass_paged(m, pool, entries, pieces, n_pieces, rows, direct_pieces, max_ctx);
        if (target_entries) score_targets(m, entries, pieces, n_pieces, target_in, target_out);
        /* Final-norm hidden rows of the entries that ended in this pass. */
        for (int i = 0; i < n_pieces; i++) {
            const batch_piece *pc = &pieces[i];
            const model_batch_entry *e = &entries[pc->entry];
            if (pc->offset + pc->count != e->n_tokens || !(e->logits || e->hidden_last)) continue;
            float *dst = m->head_in + (size_t)n_head * H;
            apply_norm(m, dst, m->x + (size_t)(pc->row + pc->count - 1) * H, m->final_norm_w,
                       m->final_norm_b, 1);
            if (e->hidden_last) memcpy(e->hidden_last, dst, (size_t)H * sizeof *dst);
            head_entry[n_head++] = pc->entry;
        }
    }
    /* One GEMM for every sequence's output scores. */
    int n_logits = 0;
    for (int i = 0; i < n_head; i++) {
        if (!entries[head_entry[i]].logits) continue;
        if (n_logits != i)
            memcpy(m->head_in + (size_t)n_logits * H, m->head_in + (size_t)i * H,
                   (size_t)H * sizeof *m->head_in);
        head_entry[n_logits++] = head_entry[i];
    }
    if (n_logits) {
        linear(m, m->head_out, m->head_in, &m->head, NULL, n_logits, false, true);
        for (int i = 0; i < n_logits; i++)
            memcpy(entries[head_entry[i]].logits, m->head_out + (size_t)i * m->output_size,
                   (size_t)m->output_size * sizeof(float));
    }
    free(pieces);
    free(head_entry);
    free(direct_pieces);
    free(target_in);
    free(target_out);
    m->forward_seconds += duel_time_seconds() - t0;
    return DUEL_OK;
}

/* ---- weights for other backends ----------------------------------------------------------- */

/* Where tensor t of layer lives (NULL when absent) and its shape. */
/* Tensor t of layer: its f32 values (*f32) or, for a linear layer or the head held packed (bf16,
 * q8), its weight_matrix (*packed); both NULL when the model lacks it. A tied embedding of a
 * packed model is the packed head's rows. */
static void tensor_at(const model *m, model_tensor t, int layer, int *rows, int *cols,
                      const float **f32, const weight_matrix **packed) {
    const model_config *c = &m->config;
    int H = c->hidden_size, F = c->intermediate_size;
    *rows = *cols = 0;
    *f32 = NULL;
    *packed = NULL;
    bool per_layer = t >= MODEL_TENSOR_ATTN_NORM_W && t <= MODEL_TENSOR_DOWN_B;
    if ((int)t < 0 || t >= MODEL_TENSOR_COUNT || (per_layer && (layer < 0 || layer >= c->num_layers)))
        return;
    const model_layer *L = per_layer ? &m->layers[layer] : NULL;
    bool pk = m->weights != WEIGHT_F32;
    const float *p = NULL;
    const weight_matrix *w = NULL;
    int r = 0, k = 1;
    switch (t) {
    case MODEL_TENSOR_EMBEDDING:
        p = m->embedding, r = c->vocab_size, k = H;
        if (!p && pk) w = &m->head; /* tied to the packed head (pack_head) */
        break;
    case MODEL_TENSOR_ATTN_NORM_W: p = L->attn_norm_w, r = H; break;
    case MODEL_TENSOR_ATTN_NORM_B: p = L->attn_norm_b, r = H; break;
    case MODEL_TENSOR_QKV_W: w = &L->qkv, r = m->qkv_dim, k = H; break;
    case MODEL_TENSOR_QKV_B: p = L->qkv_b, r = m->qkv_dim; break;
    case MODEL_TENSOR_O_W: w = &L->o, r = H, k = m->q_dim; break;
    case MODEL_TENSOR_O_B: p = L->o_b, r = H; break;
    case MODEL_TENSOR_MLP_NORM_W: p = L->mlp_norm_w, r = H; break;
    case MODEL_TENSOR_MLP_NORM_B: p = L->mlp_norm_b, r = H; break;
    case MODEL_TENSOR_UP_W: w = &L->up, r = m->up_dim, k = H; break;
    case MODEL_TENSOR_UP_B: p = L->up_b, r = m->up_dim; break;
    case MODEL_TENSOR_DOWN_W: w = &L->down, r = H, k = F; break;
    case MODEL_TENSOR_DOWN_B: p = L->down_b, r = H; break;
    case MODEL_TENSOR_FINAL_NORM_W: p = m->final_norm_w, r = H; break;
    case MODEL_TENSOR_FINAL_NORM_B: p = m->final_norm_b, r = H; break;
    case MODEL_TENSOR_HEAD_W: w = &m->head, r = m->output_size, k = H; break;
    case MODEL_TENSOR_COUNT: break;
    }
    /* f32 linear layers: the borrowed row-major values themselves */
    if (w && w->format == WEIGHT_F32) p = w->f32, w = NULL;
    if (w && (w->rows != r || w->cols != k)) w = NULL;
    if (!p && !w) return;
    *rows = r;
    *cols = k;
    *f32 = p;
    *packed = w;
}

void model_tensor_shape(const model *m, model_tensor t, int layer, int *rows, int *cols) {
    const float *p;
    const weight_matrix *w;
    tensor_at(m, t, layer, rows, cols, &p, &w);
}

int model_tensor_read(const model *m, model_tensor t, int layer, float *out, duel_error *err) {
    int rows, cols;
    const float *p;
    const weight_matrix *w;
    tensor_at(m, t, layer, &rows, &cols, &p, &w);
    if ((!p && !w) || !out)
        return duel_error_set(err, DUEL_EINVAL, "model: no tensor %d of layer %d", (int)t, layer);
    if (p) {
        memcpy(out, p, (size_t)rows * (size_t)cols * sizeof *out);
    } else {
        /* bf16 or q8: the values exactly as the CPU kernels see them (q8: scale * quant) */
        for (int r = 0; r < rows; r++) weight_matrix_row(w, r, out + (size_t)r * (size_t)cols);
    }
    return DUEL_OK;
}

bool model_head_is_embedding(const model *m) { return is_tied(m); }

const double *model_rope_inv_freq(const model *m) { return m->inv_freq; }

model_timing model_get_timing(const model *m) {
    model_timing t = {m->forward_seconds, m->gemm.seconds, m->gemm.flops};
    return t;
}

void model_reset_timing(model *m) {
    m->forward_seconds = 0;
    m->gemm.seconds = 0;
    m->gemm.flops = 0;
}
