/* bench_cuda_kernels.c: kernel-level microbenchmarks of the CUDA backend, to be run on a GPU
 * machine (ops/bench_cuda.sh, docs/CUDA.md). Measures, on the context's stream with wall time
 * around synchronised loops:
 *   - device-to-device copy bandwidth (cudaMemcpyAsync, bytes read + written): the roofline the
 *     memory-bound kernels are judged against;
 *   - paged-attention decode: KV bytes read per second, and that as a fraction of the copy
 *     bandwidth, for several batch sizes and context lengths (Llama-3-8B-like heads);
 *   - bf16 cuBLAS GEMM (f32 accumulate and output): TFLOP/s, and weight bytes per second for the
 *     skinny decode shapes where the GEMM is memory-bound;
 *   - device sampling (top-p over a Llama 3 vocabulary): milliseconds per call, host copies
 *     included.
 * Usage: bench_cuda_kernels [--json] [--quick] [--iters N]. --json prints one JSON object as the
 * last line of output. Exits 77 with "SKIP: no CUDA device (...)" when there is no GPU. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "rng.h"
#include "timer.h"

#define MIB ((size_t)1 << 20)
#define JSON_MAX 16384

typedef struct bench {
    backend_cuda_context *ctx;
    int iters;
    bool quick;
    double copy_gbps;
    char json[JSON_MAX]; /* the array members collected so far */
    size_t json_len;
} bench;

static void json_append(bench *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void json_append(bench *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->json + b->json_len, sizeof b->json - b->json_len, fmt, ap);
    va_end(ap);
    if (n > 0 && b->json_len + (size_t)n < sizeof b->json) b->json_len += (size_t)n;
}

static int die(const char *what, const duel_error *err) {
    fprintf(stderr, "bench_cuda_kernels: %s: %s\n", what, err->message);
    return 1;
}

static int bench_copy(bench *b, duel_error *err) {
    size_t bytes = (b->quick ? 256 : 1024) * MIB;
    void *src = NULL, *dst = NULL;
    int rc = backend_cuda_alloc(b->ctx, bytes, &src, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, bytes, &dst, err);
    if (!rc) rc = backend_cuda_memset(b->ctx, src, 0x3c, bytes, err);
    for (int i = 0; !rc && i < 2; i++) rc = backend_cuda_copy_device(b->ctx, dst, src, bytes, err);
    if (!rc) rc = backend_cuda_synchronize(b->ctx, err);
    double t0 = duel_time_seconds();
    for (int i = 0; !rc && i < b->iters; i++)
        rc = backend_cuda_copy_device(b->ctx, dst, src, bytes, err);
    if (!rc) rc = backend_cuda_synchronize(b->ctx, err);
    double dt = duel_time_seconds() - t0;
    if (!rc) {
        b->copy_gbps = 2.0 * (double)bytes * b->iters / dt / 1e9;
        printf("copy      %6zu MiB device-to-device: %8.1f GB/s (read + write)\n", bytes / MIB,
               b->copy_gbps);
    }
    backend_cuda_free(b->ctx, src);
    backend_cuda_free(b->ctx, dst);
    return rc;
}

static int bench_gemm(bench *b, int n, int in_dim, int out_dim, bool *first, duel_error *err) {
    void *x = NULL, *w = NULL, *y = NULL;
    size_t wbytes = (size_t)in_dim * out_dim * 2;
    int rc = backend_cuda_alloc(b->ctx, (size_t)n * in_dim * 2, &x, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, wbytes, &w, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, (size_t)n * out_dim * 4, &y, err);
    /* 0x3c3c is bf16 0.0115: non-zero operands; speed does not depend on the values much. */
    if (!rc) rc = backend_cuda_memset(b->ctx, x, 0x3c, (size_t)n * in_dim * 2, err);
    if (!rc) rc = backend_cuda_memset(b->ctx, w, 0x3c, wbytes, err);
    for (int i = 0; !rc && i < 3; i++)
        rc = backend_cuda_linear(b->ctx, y, x, w, NULL, n, in_dim, out_dim, false, err);
    if (!rc) rc = backend_cuda_synchronize(b->ctx, err);
    double t0 = duel_time_seconds();
    for (int i = 0; !rc && i < b->iters; i++)
        rc = backend_cuda_linear(b->ctx, y, x, w, NULL, n, in_dim, out_dim, false, err);
    if (!rc) rc = backend_cuda_synchronize(b->ctx, err);
    double per = (duel_time_seconds() - t0) / b->iters;
    if (!rc) {
        double tflops = 2.0 * n * in_dim * out_dim / per / 1e12;
        double wgbps = (double)wbytes / per / 1e9;
        printf("gemm      n=%-5d in=%-6d out=%-6d %9.1f us  %7.1f TFLOP/s  weights %7.1f GB/s "
               "(%.0f%% of copy)\n",
               n, in_dim, out_dim, per * 1e6, tflops, wgbps, 100.0 * wgbps / b->copy_gbps);
        json_append(b, "%s{\"n\":%d,\"in\":%d,\"out\":%d,\"us\":%.2f,\"tflops\":%.2f,"
                       "\"weight_gbps\":%.1f}",
                    *first ? "" : ",", n, in_dim, out_dim, per * 1e6, tflops, wgbps);
        *first = false;
    }
    backend_cuda_free(b->ctx, x);
    backend_cuda_free(b->ctx, w);
    backend_cuda_free(b->ctx, y);
    return rc;
}

static int bench_decode(bench *b, int batch, int ctx_len, int heads, int kv_heads, int head_dim,
                        bool *first, duel_error *err) {
    const int bs = 16;
    int blocks_per_seq = (ctx_len + bs - 1) / bs, num_blocks = batch * blocks_per_seq;
    size_t cache_bytes = (size_t)num_blocks * kv_heads * bs * head_dim * 2;
    backend_cuda_kv_layer layer = {NULL, NULL, num_blocks, kv_heads, bs, head_dim};
    void *q = NULL, *out = NULL, *tables = NULL, *lens = NULL;
    int32_t *h_tables = malloc((size_t)num_blocks * sizeof *h_tables);
    int32_t *h_lens = malloc((size_t)batch * sizeof *h_lens);
    if (!h_tables || !h_lens) {
        free(h_tables), free(h_lens);
        return duel_error_set(err, DUEL_ENOMEM, "out of host memory");
    }
    /* Every sequence gets a shuffled set of blocks, as a long-running pool hands them out. */
    duel_rng rng;
    duel_rng_seed(&rng, 7);
    for (int i = 0; i < num_blocks; i++) h_tables[i] = i;
    for (int i = num_blocks - 1; i > 0; i--) {
        int j = (int)duel_rng_below(&rng, (uint64_t)i + 1);
        int32_t t = h_tables[i];
        h_tables[i] = h_tables[j], h_tables[j] = t;
    }
    for (int s = 0; s < batch; s++) h_lens[s] = ctx_len;
    int rc = backend_cuda_alloc(b->ctx, cache_bytes, (void **)&layer.keys, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, cache_bytes, (void **)&layer.values, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, (size_t)batch * heads * head_dim * 4, &q, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, (size_t)batch * heads * head_dim * 2, &out, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, (size_t)num_blocks * 4, &tables, err);
    if (!rc) rc = backend_cuda_alloc(b->ctx, (size_t)batch * 4, &lens, err);
    if (!rc) rc = backend_cuda_memset(b->ctx, layer.keys, 0x3c, cache_bytes, err);
    if (!rc) rc = backend_cuda_memset(b->ctx, layer.values, 0x3c, cache_bytes, err);
    if (!rc) rc = backend_cuda_memset(b->ctx, q, 0x3c, (size_t)batch * heads * head_dim * 4, err);
    if (!rc) rc = backend_cuda_copy_to_device(b->ctx, tables, h_tables, (size_t)num_blocks * 4, err);
    if (!rc) rc = backend_cuda_copy_to_device(b->ctx, lens, h_lens, (size_t)batch * 4, err);
    int stride = heads * head_dim;
    for (int i = 0; !rc && i < 3; i++)
        rc = backend_cuda_attention_decode(b->ctx, out, stride, q, stride, &layer, tables,
                                           blocks_per_seq, lens, batch, heads, err);
    if (!rc) rc = backend_cuda_synchronize(b->ctx, err);
    double t0 = duel_time_seconds();
    for (int i = 0; !rc && i < b->iters; i++)
        rc = backend_cuda_attention_decode(b->ctx, out, stride, q, stride, &layer, tables,
                                           blocks_per_seq, lens, batch, heads, err);
    if (!rc) rc = backend_cuda_synchronize(b->ctx, err);
    double per = (duel_time_seconds() - t0) / b->iters;
    if (!rc) {
        double kv_bytes = 2.0 * batch * ctx_len * kv_heads * head_dim * 2;
        double gbps = kv_bytes / per / 1e9;
        printf("decode    batch=%-3d ctx=%-5d heads=%d/%d d=%d %9.1f us  KV %7.1f GB/s (%.0f%% of "
               "copy)\n",
               batch, ctx_len, heads, kv_heads, head_dim, per * 1e6, gbps,
               100.0 * gbps / b->copy_gbps);
        json_append(b, "%s{\"batch\":%d,\"ctx\":%d,\"heads\":%d,\"kv_heads\":%d,\"head_dim\":%d,"
                       "\"us\":%.2f,\"kv_gbps\":%.1f,\"fraction_of_copy\":%.3f}",
                    *first ? "" : ",", batch, ctx_len, heads, kv_heads, head_dim, per * 1e6, gbps,
                    gbps / b->copy_gbps);
        *first = false;
    }
    backend_cuda_free(b->ctx, layer.keys);
    backend_cuda_free(b->ctx, layer.values);
    backend_cuda_free(b->ctx, q);
    backend_cuda_free(b->ctx, out);
    backend_cuda_free(b->ctx, tables);
    backend_cuda_free(b->ctx, lens);
    free(h_tables), free(h_lens);
    return rc;
}

static int bench_sample(bench *b, int batch, int vocab, float top_p, int top_k, bool *first,
                        duel_error *err) {
    size_t count = (size_t)batch * vocab;
    float *h_logits = malloc(count * sizeof *h_logits);
    backend_cuda_sampling *params = malloc((size_t)batch * sizeof *params);
    duel_rng *rngs = malloc((size_t)batch * sizeof *rngs);
    duel_rng **ptrs = malloc((size_t)batch * sizeof *ptrs);
    int32_t *tokens = malloc((size_t)batch * sizeof *tokens);
    void *logits = NULL;
    int rc = (!h_logits || !params || !rngs || !ptrs || !tokens)
                 ? duel_error_set(err, DUEL_ENOMEM, "out of host memory")
                 : DUEL_OK;
    if (!rc) {
        duel_rng rng;
        duel_rng_seed(&rng, 11);
        for (size_t i = 0; i < count; i++) h_logits[i] = (float)(3.0 * duel_rng_normal(&rng));
        for (int i = 0; i < batch; i++) {
            params[i] = (backend_cuda_sampling){0.8f, top_p, top_k};
            duel_rng_seed(&rngs[i], (uint64_t)i);
            ptrs[i] = &rngs[i];
        }
        rc = backend_cuda_alloc(b->ctx, count * 4, &logits, err);
    }
    if (!rc) rc = backend_cuda_copy_to_device(b->ctx, logits, h_logits, count * 4, err);
    for (int i = 0; !rc && i < 2; i++)
        rc = backend_cuda_sample(b->ctx, tokens, NULL, logits, batch, vocab, params, ptrs, err);
    int iters = b->iters < 20 ? b->iters : 20;
    double t0 = duel_time_seconds();
    for (int i = 0; !rc && i < iters; i++)
        rc = backend_cuda_sample(b->ctx, tokens, NULL, logits, batch, vocab, params, ptrs, err);
    double per = (duel_time_seconds() - t0) / iters;
    if (!rc) {
        printf("sample    batch=%-3d vocab=%-6d T=0.8 top_p=%.2f top_k=%-3d %9.1f us per call\n",
               batch, vocab, (double)top_p, top_k, per * 1e6);
        json_append(b, "%s{\"batch\":%d,\"vocab\":%d,\"top_p\":%.2f,\"top_k\":%d,\"us\":%.2f}",
                    *first ? "" : ",", batch, vocab, (double)top_p, top_k, per * 1e6);
        *first = false;
    }
    backend_cuda_free(b->ctx, logits);
    free(h_logits), free(params), free(rngs), free(ptrs), free(tokens);
    return rc;
}

int main(int argc, char **argv) {
    bench b;
    memset(&b, 0, sizeof b);
    b.iters = 50;
    bool json = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) {
            json = true;
        } else if (!strcmp(argv[i], "--quick")) {
            b.quick = true;
        } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
            b.iters = atoi(argv[++i]);
            if (b.iters < 1 || b.iters > 100000) {
                fprintf(stderr, "bench_cuda_kernels: --iters must be in [1, 100000]\n");
                return 2;
            }
        } else {
            fprintf(stderr, "usage: bench_cuda_kernels [--json] [--quick] [--iters N]\n");
            return 2;
        }
    }
    if (b.quick && b.iters > 10) b.iters = 10;

    duel_error err = {0};
    backend_cuda_info info;
    if (backend_cuda_probe(&info, &err)) return die("probe", &err);
    if (info.device_count == 0) {
        printf("SKIP: no CUDA device (%s)\n",
               info.built ? "the driver reports no device" : "built without CUDA");
        return 77;
    }
    if (backend_cuda_context_create(0, 0, &b.ctx, &err)) return die("context", &err);
    printf("device: %s, %d SMs, %.1f GiB; CUDA runtime %d, cuBLAS %d\n",
           backend_cuda_device_name(b.ctx), backend_cuda_sm_count(b.ctx),
           info.total_memory / 1073741824.0, info.runtime_version, info.cublas_version);

    int rc = bench_copy(&b, &err);
    json_append(&b, "\"gemm\":[");
    bool first = true;
    /* (n, in, out): Llama-3-8B projections at decode batch 1, 64 and at prefill 512, 4096. */
    static const int gemm_shapes[][3] = {
        {1, 4096, 4096},    {1, 4096, 14336},  {64, 4096, 6144},   {64, 4096, 28672},
        {512, 4096, 4096},  {512, 14336, 4096}, {4096, 4096, 4096}, {4096, 4096, 14336},
    };
    int num_gemm = b.quick ? 3 : (int)(sizeof gemm_shapes / sizeof gemm_shapes[0]);
    for (int i = 0; !rc && i < num_gemm; i++)
        rc = bench_gemm(&b, gemm_shapes[i][0], gemm_shapes[i][1], gemm_shapes[i][2], &first, &err);
    json_append(&b, "],\"decode\":[");
    first = true;
    /* (batch, context): Llama-3-8B attention (32 query heads, 8 kv heads, head_dim 128). */
    static const int decode_shapes[][2] = {
        {1, 2048}, {1, 16384}, {16, 2048}, {64, 512}, {64, 2048}, {64, 8192}, {256, 2048},
    };
    int num_decode = b.quick ? 2 : (int)(sizeof decode_shapes / sizeof decode_shapes[0]);
    for (int i = 0; !rc && i < num_decode; i++)
        rc = bench_decode(&b, decode_shapes[i][0], decode_shapes[i][1], 32, 8, 128, &first, &err);
    if (!rc && !b.quick) rc = bench_decode(&b, 64, 2048, 14, 2, 64, &first, &err); /* Qwen2-0.5B */
    json_append(&b, "],\"sample\":[");
    first = true;
    if (!rc) rc = bench_sample(&b, b.quick ? 8 : 64, 128256, 0.9f, 0, &first, &err);
    if (!rc && !b.quick) rc = bench_sample(&b, 64, 128256, 1.0f, 50, &first, &err);
    json_append(&b, "]");
    if (rc) {
        backend_cuda_context_destroy(b.ctx);
        return die("benchmark", &err);
    }
    if (json)
        printf("{\"device\":\"%s\",\"sm_count\":%d,\"iters\":%d,\"quick\":%s,\"copy_gbps\":%.1f,%s}\n",
               backend_cuda_device_name(b.ctx), backend_cuda_sm_count(b.ctx), b.iters,
               b.quick ? "true" : "false", b.copy_gbps, b.json);
    backend_cuda_context_destroy(b.ctx);
    return 0;
}
