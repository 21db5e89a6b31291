/* cuda_forward.cu: the CUDA backend's batched forward (cuda_compute.h): one arm's pieces of one
 * engine step over the paged KV cache on the device, with inference/model.c's semantics (the
 * model_forward_batch contract) and the kernels of backend_cuda.h.
 *
 * A call is cut into passes of at most CUDA_PASS_ROWS rows. In a pass, the single-token pieces
 * without targets (decodes) come first, one row each, and go through one paged-attention decode
 * launch per layer; the other pieces (prefill chunks, scoring) follow, each through the prefill
 * kernel over its own block-table row. All of a pass's integer inputs (ids, positions, K/V slots,
 * context lengths, block tables, output and target rows) are staged on the host in one array and
 * uploaded in one copy, into sections at fixed offsets of one device buffer, so that a pass of
 * decodes can be captured as a CUDA graph and replayed with new inputs: its rows are rounded up
 * to a power of two (padding rows: token 0 at position 0, no K/V write (slot -1), one position of
 * attention over block 0, no output), its block-table width likewise, and the graph is keyed on
 * (arm, rows, width) and the buffers' generation. The head runs on the rows that want outputs
 * (every row of a decode pass): final norm (f32, the hidden states copied back), bf16, one GEMM,
 * and a scatter of each row's logits into its row of the step's logits. Targets (forced tokens)
 * are scored in chunks after the pass: final norm, head, log-softmax at the target, in double.
 *
 * Only hidden states and target log-probabilities come back to the host (and synchronise); a
 * decode step's logits stay on the device for sampling.
 * UNVERIFIED: compiled in every CUDA build, never run on a GPU yet (docs/CUDA.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_compute_internal.h"

/* One run of an entry's tokens inside a pass. */
typedef struct pass_piece {
    int entry, offset, count, row;
    int64_t start; /* position of the piece's first token */
} pass_piece;

/* A pass's plan; the int sections live in c->h_ints at these offsets (int32 units). */
typedef struct pass_plan {
    int T, D, P, W, R, Rt;     /* rows, decode rows, prefill pieces, table width, outputs, targets */
    bool graph;                /* a decode pass replayed from (or captured into) a graph */
    size_t o_tokens, o_pos, o_slots, o_ctx, o_out_rows, o_out_logits, o_tgt_rows, o_tgt_tokens,
        o_tables, total;
    pass_piece *pieces;        /* [T]: D decode pieces then P prefill pieces */
    int *out_entry;            /* [R]: the entry whose last row it is, or -1 */
    int *tgt_entry;            /* [Rt] */
} pass_plan;

static int round_pow2(int x) {
    int p = 1;
    while (p < x) p <<= 1;
    return p;
}

static void layout(pass_plan *p) {
    size_t T = (size_t)p->T;
    p->o_tokens = 0;
    p->o_pos = T;
    p->o_slots = 2 * T;
    p->o_ctx = 3 * T;
    p->o_out_rows = 4 * T;
    p->o_out_logits = 5 * T;
    p->o_tgt_rows = 6 * T;
    p->o_tgt_tokens = 7 * T;
    p->o_tables = 8 * T;
    p->total = 8 * T + (size_t)(p->D + p->P) * (size_t)p->W;
}

/* ---- graphs ------------------------------------------------------------------------------- */

void cuda_graphs_clear(cuda_compute *c, int arm_id) {
    int kept = 0;
    for (int i = 0; i < c->num_graphs; i++) {
        if (arm_id < 0 || c->graphs[i].arm_id == arm_id) {
            cudaGraphExecDestroy(c->graphs[i].exec);
        } else {
            c->graphs[kept++] = c->graphs[i];
        }
    }
    c->num_graphs = kept;
}

static cuda_graph_entry *graph_find(cuda_compute *c, const compute_arm *arm, const pass_plan *p) {
    for (int i = 0; i < c->num_graphs; i++) {
        cuda_graph_entry *g = &c->graphs[i];
        if (g->arm_id == arm->id && g->rows == p->T && g->table_width == p->W &&
            g->generation == c->generation)
            return g;
    }
    return NULL;
}

/* ---- the kernels of one pass -------------------------------------------------------------- */

static int norm(cuda_compute *c, const compute_arm *a, void *out, backend_cuda_dtype dtype,
                float *x, const uint16_t *w, const uint16_t *b, int n, duel_error *err) {
    int H = a->config.hidden_size;
    return a->neox ? backend_cuda_layernorm(c->ctx, out, dtype, x, NULL, w, b, n, H, a->eps, err)
                   : backend_cuda_rmsnorm(c->ctx, out, dtype, x, NULL, w, n, H, a->eps, err);
}

/* Every kernel of a pass, in stream order: no host synchronisation and no allocation, so that a
 * decode pass can be captured. */
static int launch_pass(cuda_compute *c, const compute_arm *a, const pass_plan *p, duel_error *err) {
    const model_config *cf = &a->config;
    const int T = p->T, H = cf->hidden_size, F = cf->intermediate_size;
    const int32_t *ints = (const int32_t *)c->d_ints.ptr;
    float *x = (float *)c->x.ptr, *qkv = (float *)c->qkv.ptr, *up = (float *)c->up.ptr;
    uint16_t *xb = (uint16_t *)c->xb.ptr, *xb2 = (uint16_t *)c->xb2.ptr;
    uint16_t *att = (uint16_t *)c->att.ptr, *act = (uint16_t *)c->act.ptr;
    int rc = backend_cuda_embedding(c->ctx, x, ints + p->o_tokens, T, a->embedding, cf->vocab_size,
                                    H, err);
    for (int l = 0; !rc && l < cf->num_layers; l++) {
        const cuda_layer_weights *L = &a->layers[l];
        const backend_cuda_kv_layer *kv = &c->kv[l];
        rc = norm(c, a, xb, BACKEND_CUDA_BF16, x, L->attn_norm_w, L->attn_norm_b, T, err);
        if (!rc && a->parallel_residual)
            rc = norm(c, a, xb2, BACKEND_CUDA_BF16, x, L->mlp_norm_w, L->mlp_norm_b, T, err);
        if (!rc)
            rc = backend_cuda_linear(c->ctx, qkv, xb, L->qkv_w, L->qkv_b, T, H, a->qkv_dim, false,
                                     err);
        if (!rc && cf->rotary_dim > 0) {
            rc = backend_cuda_rope(c->ctx, qkv, T, a->qkv_dim, cf->num_heads, cf->head_dim,
                                   cf->rotary_dim, ints + p->o_pos, a->inv_freq, err);
            if (!rc)
                rc = backend_cuda_rope(c->ctx, qkv + a->q_dim, T, a->qkv_dim, cf->num_kv_heads,
                                       cf->head_dim, cf->rotary_dim, ints + p->o_pos, a->inv_freq,
                                       err);
        }
        if (!rc)
            rc = backend_cuda_kv_write(c->ctx, kv, qkv + a->q_dim, qkv + a->q_dim + a->kv_dim,
                                       a->qkv_dim, ints + p->o_slots, T, err);
        if (!rc && p->D > 0)
            rc = backend_cuda_attention_decode(c->ctx, att, a->q_dim, qkv, a->qkv_dim, kv,
                                               ints + p->o_tables, p->W, ints + p->o_ctx, p->D,
                                               cf->num_heads, err);
        for (int k = 0; !rc && k < p->P; k++) {
            const pass_piece *pc = &p->pieces[p->D + k];
            rc = backend_cuda_attention_prefill(
                c->ctx, att + (size_t)pc->row * a->q_dim, a->q_dim, qkv + (size_t)pc->row * a->qkv_dim,
                a->qkv_dim, kv, ints + p->o_tables + (size_t)(p->D + k) * p->W, pc->count,
                (int)pc->start, cf->num_heads, err);
        }
        if (!rc)
            rc = backend_cuda_linear(c->ctx, x, att, L->o_w, L->o_b, T, a->q_dim, H, true, err);
        const uint16_t *mlp_in = xb2;
        if (!rc && !a->parallel_residual) {
            rc = norm(c, a, xb, BACKEND_CUDA_BF16, x, L->mlp_norm_w, L->mlp_norm_b, T, err);
            mlp_in = xb;
        }
        if (!rc)
            rc = backend_cuda_linear(c->ctx, up, mlp_in, L->up_w, L->up_b, T, H, a->up_dim, false,
                                     err);
        if (!rc)
            rc = a->neox ? backend_cuda_gelu(c->ctx, act, up, (size_t)T * F,
                                             cf->activation == MODEL_ACT_GELU_TANH, err)
                         : backend_cuda_swiglu(c->ctx, act, up, T, F, err);
        if (!rc)
            rc = backend_cuda_linear(c->ctx, x, act, L->down_w, L->down_b, T, F, H, true, err);
    }
    if (rc || p->R == 0) return rc;
    /* The output rows: final norm (kept in f32 for the hidden states), the head, the scatter. */
    float *out_in = (float *)c->out_in.ptr, *out_norm = (float *)c->out_norm.ptr;
    uint16_t *out_bf16 = (uint16_t *)c->out_bf16.ptr;
    float *out_logits = (float *)c->out_logits.ptr;
    rc = cuda_rows_gather(c, out_in, x, H, H, ints + p->o_out_rows, p->R, err);
    if (!rc)
        rc = norm(c, a, out_norm, BACKEND_CUDA_F32, out_in, a->final_norm_w, a->final_norm_b, p->R,
                  err);
    if (!rc) rc = cuda_to_bf16(c, out_bf16, out_norm, (size_t)p->R * H, err);
    if (!rc)
        rc = backend_cuda_linear(c->ctx, out_logits, out_bf16, a->head_w, NULL, p->R, H,
                                 a->output_size, false, err);
    if (!rc)
        rc = cuda_rows_scatter(c, (float *)c->logits.ptr, c->logits_vocab, out_logits,
                               a->output_size, ints + p->o_out_logits, p->R, err);
    return rc;
}

/* Scores the pass's target rows in chunks; their log-probabilities into c->h_tgt[0..Rt). */
static int score_targets(cuda_compute *c, const compute_arm *a, const pass_plan *p,
                         duel_error *err) {
    const int H = a->config.hidden_size, V = a->output_size;
    const int32_t *ints = (const int32_t *)c->d_ints.ptr;
    int rc = DUEL_OK;
    for (int done = 0; !rc && done < p->Rt; done += CUDA_TARGET_CHUNK) {
        int k = p->Rt - done < CUDA_TARGET_CHUNK ? p->Rt - done : CUDA_TARGET_CHUNK;
        rc = cuda_rows_gather(c, (float *)c->out_in.ptr, (const float *)c->x.ptr, H, H,
                              ints + p->o_tgt_rows + done, k, err);
        if (!rc)
            rc = norm(c, a, c->out_norm.ptr, BACKEND_CUDA_F32, (float *)c->out_in.ptr,
                      a->final_norm_w, a->final_norm_b, k, err);
        if (!rc)
            rc = cuda_to_bf16(c, (uint16_t *)c->out_bf16.ptr, (const float *)c->out_norm.ptr,
                              (size_t)k * H, err);
        if (!rc)
            rc = backend_cuda_linear(c->ctx, (float *)c->out_logits.ptr,
                                     (const uint16_t *)c->out_bf16.ptr, a->head_w, NULL, k, H, V,
                                     false, err);
        if (!rc)
            rc = cuda_row_logprob(c, (double *)c->tgt_logprob.ptr + done,
                                  (const float *)c->out_logits.ptr, V, V, NULL,
                                  ints + p->o_tgt_tokens + done, k, err);
    }
    if (!rc)
        rc = backend_cuda_copy_to_host(c->ctx, c->h_tgt, c->tgt_logprob.ptr,
                                       (size_t)p->Rt * sizeof(double), err);
    return rc;
}

/* ---- planning ----------------------------------------------------------------------------- */

/* Makes every buffer a pass of p's sizes needs (before a graph is looked up: regrowth changes
 * the generation). */
static int reserve_for(cuda_compute *c, const compute_arm *a, const pass_plan *p, duel_error *err) {
    const size_t T = (size_t)p->T, H = (size_t)a->config.hidden_size;
    size_t out_rows = (size_t)(p->R > CUDA_TARGET_CHUNK ? p->R : CUDA_TARGET_CHUNK);
    int rc;
    if ((rc = cuda_buffer_reserve(c, &c->x, T * H * sizeof(float), err)) ||
        (rc = cuda_buffer_reserve(c, &c->xb, T * H * sizeof(uint16_t), err)) ||
        (rc = cuda_buffer_reserve(c, &c->xb2, T * H * sizeof(uint16_t), err)) ||
        (rc = cuda_buffer_reserve(c, &c->qkv, T * (size_t)a->qkv_dim * sizeof(float), err)) ||
        (rc = cuda_buffer_reserve(c, &c->att, T * (size_t)a->q_dim * sizeof(uint16_t), err)) ||
        (rc = cuda_buffer_reserve(c, &c->up, T * (size_t)a->up_dim * sizeof(float), err)) ||
        (rc = cuda_buffer_reserve(c, &c->act, T * (size_t)a->config.intermediate_size *
                                                  sizeof(uint16_t), err)) ||
        (rc = cuda_buffer_reserve(c, &c->out_in, out_rows * H * sizeof(float), err)) ||
        (rc = cuda_buffer_reserve(c, &c->out_norm, out_rows * H * sizeof(float), err)) ||
        (rc = cuda_buffer_reserve(c, &c->out_bf16, out_rows * H * sizeof(uint16_t), err)) ||
        (rc = cuda_buffer_reserve(c, &c->out_logits,
                                  out_rows * (size_t)a->output_size * sizeof(float), err)) ||
        (rc = cuda_buffer_reserve(c, &c->tgt_logprob, T * sizeof(double), err)) ||
        (rc = cuda_buffer_reserve(c, &c->d_ints, p->total * sizeof(int32_t), err)))
        return rc;
    if (p->total > c->h_ints_cap) {
        int32_t *grown = (int32_t *)realloc(c->h_ints, p->total * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of host memory");
        c->h_ints = grown;
        c->h_ints_cap = p->total;
    }
    if ((size_t)p->Rt > c->h_tgt_cap) {
        double *grown = (double *)realloc(c->h_tgt, (size_t)p->Rt * sizeof *grown);
        if (!grown) return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of host memory");
        c->h_tgt = grown;
        c->h_tgt_cap = (size_t)p->Rt;
    }
    return DUEL_OK;
}

/* Fills the host staging of pass p (pieces already placed). */
static void stage(cuda_compute *c, const compute_entry *entries, pass_plan *p) {
    int32_t *h = c->h_ints;
    const int bs = c->kv_params.block_size;
    memset(h, 0, p->total * sizeof *h);
    for (int r = 0; r < p->T; r++) { /* padding rows of a graph: token 0 at 0, no write */
        h[p->o_slots + r] = -1;
        h[p->o_out_logits + r] = -1;
        h[p->o_out_rows + r] = r;
    }
    for (int d = 0; d < p->D; d++) h[p->o_ctx + d] = 1;
    int R = 0, Rt = 0;
    for (int k = 0; k < p->D + p->P; k++) {
        const pass_piece *pc = &p->pieces[k];
        if (pc->entry < 0) continue; /* a graph's padding row */
        const compute_entry *e = &entries[pc->entry];
        const kv_sequence *seq = e->seq;
        for (int j = 0; j < pc->count; j++) {
            int row = pc->row + j;
            int64_t pos = pc->start + j;
            h[p->o_tokens + row] = e->tokens[pc->offset + j];
            h[p->o_pos + row] = (int32_t)pos;
            h[p->o_slots + row] = seq->blocks[pos / bs] * bs + (int32_t)(pos % bs);
            if (e->targets && e->targets[pc->offset + j] >= 0) {
                h[p->o_tgt_rows + Rt] = row;
                h[p->o_tgt_tokens + Rt] = e->targets[pc->offset + j];
                p->tgt_entry[Rt++] = pc->entry;
            }
        }
        int64_t end = pc->start + pc->count;
        int blocks = (int)((end + bs - 1) / bs);
        int32_t *table = h + p->o_tables + (size_t)k * p->W;
        for (int i = 0; i < blocks; i++) table[i] = seq->blocks[i];
        if (k < p->D) h[p->o_ctx + k] = (int32_t)end;
        bool last = pc->offset + pc->count == e->n_tokens;
        if (last && (e->logits_row >= 0 || e->hidden_last)) {
            int out = p->graph ? pc->row : R; /* a decode pass keeps every row as an output */
            h[p->o_out_rows + out] = pc->row + pc->count - 1;
            h[p->o_out_logits + out] = e->logits_row;
            p->out_entry[out] = pc->entry;
            if (!p->graph) R++;
        }
    }
}

/* Runs pass p: stage, upload, kernels (replayed from a graph when one fits), outputs. */
static int run_pass(cuda_compute *c, compute_arm *a, const compute_entry *entries, pass_plan *p,
                    duel_error *err) {
    for (int r = 0; r < p->T; r++) p->out_entry[r] = -1;
    int rc = reserve_for(c, a, p, err);
    if (rc) return rc;
    stage(c, entries, p);
    BACKEND_CUDA_TRY(cudaMemcpyAsync(c->d_ints.ptr, c->h_ints, p->total * sizeof(int32_t),
                                     cudaMemcpyHostToDevice, c->ctx->stream),
                     err, "upload of a pass's inputs");
    if (p->graph) {
        cuda_graph_entry *g = graph_find(c, a, p);
        if (!g && c->num_graphs == CUDA_MAX_GRAPHS) cuda_graphs_clear(c, -1);
        if (!g) {
            cudaGraph_t graph = NULL;
            cudaGraphExec_t exec = NULL;
            cudaError_t ce = cudaStreamBeginCapture(c->ctx->stream, cudaStreamCaptureModeThreadLocal);
            duel_error cap_err = {};
            int crc = ce == cudaSuccess ? launch_pass(c, a, p, &cap_err) : DUEL_EDEVICE;
            if (ce == cudaSuccess) ce = cudaStreamEndCapture(c->ctx->stream, &graph);
            if (!crc && ce == cudaSuccess) ce = cudaGraphInstantiate(&exec, graph, 0);
            if (graph) cudaGraphDestroy(graph);
            if (crc || ce != cudaSuccess) {
                cudaGetLastError();
                /* Never fatal: record why, stop capturing, run the pass eagerly. */
                snprintf(c->graph_note, sizeof c->graph_note, "graph capture failed: %.200s",
                         crc ? cap_err.message : cudaGetErrorString(ce));
                c->graphs_enabled = false;
                if (exec) cudaGraphExecDestroy(exec);
                p->graph = false;
            } else {
                g = &c->graphs[c->num_graphs++];
                *g = (cuda_graph_entry){a->id, p->T, p->W, c->generation, exec};
            }
        }
        if (g) BACKEND_CUDA_TRY(cudaGraphLaunch(g->exec, c->ctx->stream), err, "cudaGraphLaunch");
    }
    if (!p->graph) rc = launch_pass(c, a, p, err);
    /* Hidden states of the entries that ended in this pass (before scoring reuses out_norm). */
    const int H = a->config.hidden_size;
    for (int r = 0; !rc && r < p->R; r++) {
        int k = p->out_entry[r];
        if (k < 0 || !entries[k].hidden_last) continue;
        rc = backend_cuda_copy_to_host(c->ctx, entries[k].hidden_last,
                                       (const float *)c->out_norm.ptr + (size_t)r * H,
                                       (size_t)H * sizeof(float), err);
    }
    if (!rc && p->Rt > 0) rc = score_targets(c, a, p, err);
    for (int t = 0; !rc && t < p->Rt; t++) *entries[p->tgt_entry[t]].target_logprob += c->h_tgt[t];
    return rc;
}

/* ---- the forward -------------------------------------------------------------------------- */

static int check_entries(const cuda_compute *c, const compute_arm *a, const compute_entry *entries,
                         int n, duel_error *err) {
    const model_config *cf = &a->config;
    const kv_pool_params *pp = &c->kv_params;
    if (!c->kv || pp->num_layers != cf->num_layers || pp->num_kv_heads != cf->num_kv_heads ||
        pp->head_dim != cf->head_dim)
        return duel_error_set(err, DUEL_EINVAL,
                              "cuda backend: the KV cache (%d layers x %d kv heads x %d) does not "
                              "fit the arm (%d x %d x %d)",
                              pp->num_layers, pp->num_kv_heads, pp->head_dim, cf->num_layers,
                              cf->num_kv_heads, cf->head_dim);
    for (int i = 0; i < n; i++) {
        const compute_entry *e = &entries[i];
        if (!e->seq || !e->tokens || e->n_tokens < 1 || e->start < 0)
            return duel_error_set(err, DUEL_EINVAL, "cuda backend: entry %d: %d tokens at %lld", i,
                                  e->n_tokens, (long long)e->start);
        int64_t end = e->start + e->n_tokens;
        if (end > (int64_t)e->seq->num_blocks * pp->block_size || end > INT32_MAX)
            return duel_error_set(err, DUEL_EINVAL,
                                  "cuda backend: entry %d: positions %lld..%lld are not reserved",
                                  i, (long long)e->start, (long long)end - 1);
        for (int t = 0; t < e->n_tokens; t++)
            if (e->tokens[t] < 0 || e->tokens[t] >= cf->vocab_size)
                return duel_error_set(err, DUEL_EINVAL,
                                      "cuda backend: entry %d: token id %d outside the vocabulary "
                                      "of %d",
                                      i, (int)e->tokens[t], cf->vocab_size);
        if (e->logits_row >= c->logits_rows || (e->logits_row >= 0 && a->output_size > c->logits_vocab))
            return duel_error_set(err, DUEL_EINVAL,
                                  "cuda backend: entry %d: logits row %d of %d (vocab %d of %d)",
                                  i, e->logits_row, c->logits_rows, a->output_size,
                                  c->logits_vocab);
        if (e->targets) {
            if (!e->target_logprob || cf->head != MODEL_HEAD_CAUSAL_LM)
                return duel_error_set(err, DUEL_EINVAL,
                                      "cuda backend: entry %d: targets need target_logprob and a "
                                      "language-model head",
                                      i);
            for (int t = 0; t < e->n_tokens; t++)
                if (e->targets[t] >= a->output_size)
                    return duel_error_set(err, DUEL_EINVAL,
                                          "cuda backend: entry %d: target %d outside the vocabulary",
                                          i, (int)e->targets[t]);
        }
    }
    return DUEL_OK;
}

int cuda_forward(cuda_compute *c, compute_arm *a, kv_pool *pool, const compute_entry *entries,
                 int n, duel_error *err) {
    (void)pool; /* the block tables come with the entries; the storage is c->kv */
    int rc = check_entries(c, a, entries, n, err);
    if (rc) return rc;
    const int bs = c->kv_params.block_size;
    for (int i = 0; i < n; i++)
        if (entries[i].targets) *entries[i].target_logprob = 0;
    /* Decodes first (single tokens without targets), then the rest, as ordered pieces. */
    int *order = (int *)malloc((size_t)n * sizeof *order);
    pass_plan p;
    memset(&p, 0, sizeof p);
    p.pieces = (pass_piece *)malloc(((size_t)CUDA_PASS_ROWS + 1) * sizeof *p.pieces);
    p.out_entry = (int *)malloc(((size_t)CUDA_PASS_ROWS + 1) * sizeof *p.out_entry);
    p.tgt_entry = (int *)malloc(((size_t)CUDA_PASS_ROWS + 1) * sizeof *p.tgt_entry);
    if (!order || !p.pieces || !p.out_entry || !p.tgt_entry) {
        free(order), free(p.pieces), free(p.out_entry), free(p.tgt_entry);
        return duel_error_set(err, DUEL_ENOMEM, "cuda backend: out of memory for a batch of %d", n);
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (entries[i].n_tokens == 1 && !entries[i].targets) order[m++] = i;
    const int n_decode = m;
    for (int i = 0; i < n; i++)
        if (!(entries[i].n_tokens == 1 && !entries[i].targets)) order[m++] = i;
    int k = 0, offset = 0;
    while (!rc && k < n) {
        /* Fill one pass: decodes while they last (and fit), then pieces of the others. */
        p.T = p.D = p.P = p.R = p.Rt = 0;
        int64_t widest = 1;
        while (k < n && p.T < CUDA_PASS_ROWS) {
            const compute_entry *e = &entries[order[k]];
            bool decode = k < n_decode;
            if (decode && p.P > 0) break; /* cannot happen: decodes come first */
            int take = e->n_tokens - offset;
            if (take > CUDA_PASS_ROWS - p.T) take = CUDA_PASS_ROWS - p.T;
            pass_piece *pc = &p.pieces[p.D + p.P];
            *pc = (pass_piece){order[k], offset, take, p.T, e->start + offset};
            int64_t blocks = (pc->start + take + bs - 1) / bs;
            if (blocks > widest) widest = blocks;
            p.T += take;
            if (decode) p.D++;
            else p.P++;
            for (int j = 0; e->targets && j < take; j++) p.Rt += e->targets[offset + j] >= 0;
            offset += take;
            if (offset == e->n_tokens) {
                p.R += e->logits_row >= 0 || e->hidden_last;
                k++;
                offset = 0;
            }
        }
        p.W = (int)widest;
        p.graph = c->graphs_enabled && p.P == 0 && p.D > 0 && p.D <= CUDA_GRAPH_MAX_ROWS;
        if (p.graph) {
            int rows = round_pow2(p.D);
            for (int r = p.D; r < rows; r++) /* padding pieces: attention over block 0 */
                p.pieces[r] = (pass_piece){-1, 0, 1, r, 0};
            p.T = p.D = p.R = rows; /* every row of a decode pass goes through the head */
            p.W = round_pow2(p.W);
        }
        layout(&p);
        rc = run_pass(c, a, entries, &p, err);
    }
    free(order), free(p.pieces), free(p.out_entry), free(p.tgt_entry);
    return rc;
}
