/* test_train_layers.c: every layer pair of trainer/train_layers.c on tiny shapes. The f32
 * forward is compared with a naive float64 reference written here, and the f32 backward with
 * central differences of that float64 reference, for the objective J = sum(upstream * out). */
#include "test_helpers.h"
#include "rng.h"
#include "train_layers.h"

#define FORWARD_TOL 1e-5 /* relative error of the f32 forward against float64 */
#define GRAD_TOL 1e-5    /* relative error of the f32 backward against float64 differences */
#define FD_STEP 1e-5

/* A float64 reference forward: reads its inputs from ctx, writes out_n values into out. */
typedef void (*ref_forward)(void *ctx, double *out);

typedef struct fd_problem {
    ref_forward forward;
    void *ctx;
    size_t out_n;
    const double *upstream; /* dJ/dout */
} fd_problem;

static double objective(const fd_problem *p) {
    double *out = calloc(p->out_n, sizeof *out);
    assert_non_null(out);
    p->forward(p->ctx, out);
    double j = 0;
    for (size_t i = 0; i < p->out_n; i++) j += p->upstream[i] * out[i];
    free(out);
    return j;
}

/* Central differences of J with respect to each of the n entries of x (an input of ctx). */
static double *numeric_grad(const fd_problem *p, double *x, size_t n) {
    double *g = calloc(n, sizeof *g);
    assert_non_null(g);
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + FD_STEP;
        double jp = objective(p);
        x[i] = saved - FD_STEP;
        double jm = objective(p);
        x[i] = saved;
        g[i] = (jp - jm) / (2 * FD_STEP);
    }
    return g;
}

/* Random values rounded to f32, in both precisions (so both sides see identical inputs). */
static void fill_random(duel_rng *rng, float *f, double *d, size_t n, double mean, double scale) {
    for (size_t i = 0; i < n; i++) {
        f[i] = (float)(mean + scale * duel_rng_normal(rng));
        d[i] = f[i];
    }
}

static float *new_f32(size_t n) {
    float *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

static double *new_f64(size_t n) {
    double *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

static void expect_close(const char *what, const float *out, const double *ref, size_t n,
                         double tol) {
    double e = test_relative_error(out, ref, n);
    double norm = 0;
    for (size_t i = 0; i < n; i++) norm += ref[i] * ref[i];
    if (!(e < tol) || norm == 0) {
        fprintf(stderr, "%s: relative error %.3g (tolerance %.1g), reference norm %.3g\n", what, e,
                tol, sqrt(norm));
        fail();
    }
}

/* Checks an f32 analytic gradient against central differences with respect to x. */
static void expect_grad(const char *what, const fd_problem *p, double *x, size_t n,
                        const float *analytic) {
    double *numeric = numeric_grad(p, x, n);
    expect_close(what, analytic, numeric, n, GRAD_TOL);
    free(numeric);
}

/* ---------------------------------------------------------------- embedding */

typedef struct { const int32_t *tokens; double *table; int n, dim; } embed_ctx;

static void embed_ref(void *vctx, double *out) {
    embed_ctx *c = vctx;
    for (int i = 0; i < c->n; i++)
        for (int j = 0; j < c->dim; j++) out[i * c->dim + j] = c->table[c->tokens[i] * c->dim + j];
}

static void test_embedding(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 1);
    enum { V = 7, DIM = 5, N = 9 };
    int32_t tokens[N] = {3, 0, 6, 3, 3, 1, 6, 2, 0}; /* repeats must accumulate */
    float *table = new_f32(V * DIM), *out = new_f32(N * DIM), *g = new_f32(N * DIM);
    float *dtable = new_f32(V * DIM);
    double *table_d = new_f64(V * DIM), *g_d = new_f64(N * DIM), *ref = new_f64(N * DIM);
    fill_random(&rng, table, table_d, V * DIM, 0, 1);
    fill_random(&rng, g, g_d, N * DIM, 0, 1);
    embed_ctx ctx = {tokens, table_d, N, DIM};
    fd_problem p = {embed_ref, &ctx, N * DIM, g_d};

    train_embedding_forward(out, tokens, table, N, DIM);
    embed_ref(&ctx, ref);
    expect_close("embedding forward", out, ref, N * DIM, FORWARD_TOL);
    train_embedding_backward(dtable, g, tokens, N, DIM);
    expect_grad("embedding dtable", &p, table_d, V * DIM, dtable);
    /* rows of tokens that never occur (4, 5) get no gradient */
    for (int j = 0; j < DIM; j++) assert_true(dtable[4 * DIM + j] == 0 && dtable[5 * DIM + j] == 0);
    free(table), free(out), free(g), free(dtable), free(table_d), free(g_d), free(ref);
}

/* ---------------------------------------------------------------- rmsnorm */

typedef struct { double *x, *w; int n, dim; double eps; } rms_ctx;

static void rms_ref(void *vctx, double *out) {
    rms_ctx *c = vctx;
    for (int i = 0; i < c->n; i++) {
        double ss = 0;
        for (int j = 0; j < c->dim; j++) ss += c->x[i * c->dim + j] * c->x[i * c->dim + j];
        double r = 1 / sqrt(ss / c->dim + c->eps);
        for (int j = 0; j < c->dim; j++) out[i * c->dim + j] = c->w[j] * c->x[i * c->dim + j] * r;
    }
}

static void test_rmsnorm(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 2);
    enum { N = 5, DIM = 8 };
    const float eps = 1e-5f;
    float *x = new_f32(N * DIM), *w = new_f32(DIM), *g = new_f32(N * DIM), *out = new_f32(N * DIM);
    float *rstd = new_f32(N), *dx = new_f32(N * DIM), *dw = new_f32(DIM);
    double *xd = new_f64(N * DIM), *wd = new_f64(DIM), *gd = new_f64(N * DIM), *ref = new_f64(N * DIM);
    fill_random(&rng, x, xd, N * DIM, 0, 1);
    fill_random(&rng, w, wd, DIM, 1, 0.3);
    fill_random(&rng, g, gd, N * DIM, 0, 1);
    rms_ctx ctx = {xd, wd, N, DIM, eps};
    fd_problem p = {rms_ref, &ctx, N * DIM, gd};

    train_rmsnorm_forward(out, rstd, x, w, N, DIM, eps);
    rms_ref(&ctx, ref);
    expect_close("rmsnorm forward", out, ref, N * DIM, FORWARD_TOL);
    train_rmsnorm_backward(dx, dw, g, x, w, rstd, N, DIM);
    expect_grad("rmsnorm dx", &p, xd, N * DIM, dx);
    expect_grad("rmsnorm dweight", &p, wd, DIM, dw);
    free(x), free(w), free(g), free(out), free(rstd), free(dx), free(dw);
    free(xd), free(wd), free(gd), free(ref);
}

/* ---------------------------------------------------------------- layernorm */

typedef struct { double *x, *w, *b; int n, dim; double eps; } ln_ctx;

static void ln_ref(void *vctx, double *out) {
    ln_ctx *c = vctx;
    for (int i = 0; i < c->n; i++) {
        const double *x = c->x + (size_t)i * c->dim;
        double mu = 0, var = 0;
        for (int j = 0; j < c->dim; j++) mu += x[j] / c->dim;
        for (int j = 0; j < c->dim; j++) var += (x[j] - mu) * (x[j] - mu) / c->dim;
        for (int j = 0; j < c->dim; j++)
            out[i * c->dim + j] = c->w[j] * (x[j] - mu) / sqrt(var + c->eps) + c->b[j];
    }
}

static void test_layernorm(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 40);
    enum { N = 5, DIM = 8 };
    const float eps = 1e-5f;
    float *x = new_f32(N * DIM), *w = new_f32(DIM), *b = new_f32(DIM), *g = new_f32(N * DIM);
    float *out = new_f32(N * DIM), *mean = new_f32(N), *rstd = new_f32(N);
    float *dx = new_f32(N * DIM), *dw = new_f32(DIM), *db = new_f32(DIM);
    double *xd = new_f64(N * DIM), *wd = new_f64(DIM), *bd = new_f64(DIM), *gd = new_f64(N * DIM);
    double *ref = new_f64(N * DIM);
    fill_random(&rng, x, xd, N * DIM, 0.5, 1); /* non-zero mean */
    fill_random(&rng, w, wd, DIM, 1, 0.3);
    fill_random(&rng, b, bd, DIM, 0, 0.3);
    fill_random(&rng, g, gd, N * DIM, 0, 1);
    ln_ctx ctx = {xd, wd, bd, N, DIM, eps};
    fd_problem p = {ln_ref, &ctx, N * DIM, gd};

    train_layernorm_forward(out, mean, rstd, x, w, b, N, DIM, eps);
    ln_ref(&ctx, ref);
    expect_close("layernorm forward", out, ref, N * DIM, FORWARD_TOL);
    train_layernorm_backward(dx, dw, db, g, x, w, mean, rstd, N, DIM);
    expect_grad("layernorm dx", &p, xd, N * DIM, dx);
    expect_grad("layernorm dweight", &p, wd, DIM, dw);
    expect_grad("layernorm dbias", &p, bd, DIM, db);
    free(x), free(w), free(b), free(g), free(out), free(mean), free(rstd), free(dx), free(dw);
    free(db), free(xd), free(wd), free(bd), free(gd), free(ref);
}

/* ---------------------------------------------------------------- gelu */

typedef struct { double *x; int n; bool tanh_approx; } gelu_ctx;

static void gelu_ref(void *vctx, double *out) {
    gelu_ctx *c = vctx;
    for (int i = 0; i < c->n; i++) {
        double x = c->x[i];
        out[i] = c->tanh_approx
                     ? 0.5 * x * (1 + tanh(sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)))
                     : 0.5 * x * (1 + erf(x / sqrt(2.0)));
    }
}

static void test_gelu(void **state) {
    (void)state;
    for (int approx = 0; approx < 2; approx++) {
        duel_rng rng;
        duel_rng_seed(&rng, 41 + approx);
        enum { N = 50 };
        float x[N], g[N], out[N], dx[N] = {0};
        double xd[N], gd[N], ref[N];
        fill_random(&rng, x, xd, N, 0, 2.5);
        fill_random(&rng, g, gd, N, 0, 1);
        gelu_ctx ctx = {xd, N, approx == 1};
        fd_problem p = {gelu_ref, &ctx, N, gd};
        train_gelu_forward(out, x, N, approx == 1);
        gelu_ref(&ctx, ref);
        expect_close(approx ? "gelu_tanh forward" : "gelu forward", out, ref, N, FORWARD_TOL);
        train_gelu_backward(dx, g, x, N, approx == 1);
        expect_grad(approx ? "gelu_tanh dx" : "gelu dx", &p, xd, N, dx);
    }
}

/* ---------------------------------------------------------------- linear */

typedef struct { double *x, *w, *b; int n, in, out; } lin_ctx;

static void lin_ref(void *vctx, double *out) {
    lin_ctx *c = vctx;
    for (int i = 0; i < c->n; i++)
        for (int o = 0; o < c->out; o++) {
            double acc = c->b ? c->b[o] : 0;
            for (int k = 0; k < c->in; k++) acc += c->x[i * c->in + k] * c->w[o * c->in + k];
            out[i * c->out + o] = acc;
        }
}

static void run_linear(bool with_bias) {
    duel_rng rng;
    duel_rng_seed(&rng, with_bias ? 3 : 4);
    enum { N = 6, IN = 5, OUT = 7 };
    float *x = new_f32(N * IN), *w = new_f32(OUT * IN), *b = new_f32(OUT), *g = new_f32(N * OUT);
    float *out = new_f32(N * OUT), *dx = new_f32(N * IN), *dw = new_f32(OUT * IN), *db = new_f32(OUT);
    double *xd = new_f64(N * IN), *wd = new_f64(OUT * IN), *bd = new_f64(OUT), *gd = new_f64(N * OUT);
    double *ref = new_f64(N * OUT);
    fill_random(&rng, x, xd, N * IN, 0, 1);
    fill_random(&rng, w, wd, OUT * IN, 0, 0.5);
    fill_random(&rng, b, bd, OUT, 0, 0.5);
    fill_random(&rng, g, gd, N * OUT, 0, 1);
    lin_ctx ctx = {xd, wd, with_bias ? bd : NULL, N, IN, OUT};
    fd_problem p = {lin_ref, &ctx, N * OUT, gd};

    train_linear_forward(out, x, w, with_bias ? b : NULL, N, IN, OUT);
    lin_ref(&ctx, ref);
    expect_close("linear forward", out, ref, N * OUT, FORWARD_TOL);
    train_linear_backward(dx, dw, with_bias ? db : NULL, g, x, w, N, IN, OUT);
    expect_grad("linear dx", &p, xd, N * IN, dx);
    expect_grad("linear dweight", &p, wd, OUT * IN, dw);
    if (with_bias) expect_grad("linear dbias", &p, bd, OUT, db);
    free(x), free(w), free(b), free(g), free(out), free(dx), free(dw), free(db);
    free(xd), free(wd), free(bd), free(gd), free(ref);
}

static void test_linear(void **state) {
    (void)state;
    run_linear(false);
    run_linear(true);
}

/* Backward passes accumulate: a second call adds the same gradient again. */
static void test_backward_accumulates(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 5);
    enum { N = 4, IN = 3, OUT = 5 };
    float x[N * IN], w[OUT * IN], g[N * OUT], once_dx[N * IN] = {0}, once_dw[OUT * IN] = {0};
    float twice_dx[N * IN] = {0}, twice_dw[OUT * IN] = {0};
    double tmp[N * OUT];
    fill_random(&rng, x, tmp, N * IN, 0, 1);
    fill_random(&rng, w, tmp, OUT * IN, 0, 1);
    fill_random(&rng, g, tmp, N * OUT, 0, 1);
    train_linear_backward(once_dx, once_dw, NULL, g, x, w, N, IN, OUT);
    train_linear_backward(twice_dx, twice_dw, NULL, g, x, w, N, IN, OUT);
    train_linear_backward(twice_dx, twice_dw, NULL, g, x, w, N, IN, OUT);
    for (int i = 0; i < N * IN; i++) assert_float_equal(twice_dx[i], 2 * once_dx[i], 1e-5);
    for (int i = 0; i < OUT * IN; i++) assert_float_equal(twice_dw[i], 2 * once_dw[i], 1e-5);
    assert_true(fabsf(once_dx[0]) > 0);
}

/* ---------------------------------------------------------------- rope */

typedef struct { double *x; int batch, seq, heads, head_dim, rotary_dim; double theta; } rope_ctx;

static void rope_ref(void *vctx, double *out) {
    rope_ctx *c = vctx;
    int half = c->rotary_dim / 2;
    for (int b = 0; b < c->batch; b++)
        for (int t = 0; t < c->seq; t++)
            for (int h = 0; h < c->heads; h++) {
                size_t off = (((size_t)b * c->seq + t) * c->heads + h) * c->head_dim;
                for (int i = 0; i < c->head_dim; i++) out[off + i] = c->x[off + i];
                for (int i = 0; i < half; i++) {
                    double angle = t * pow(c->theta, -2.0 * i / c->rotary_dim);
                    double x1 = c->x[off + i], x2 = c->x[off + i + half];
                    out[off + i] = x1 * cos(angle) - x2 * sin(angle);
                    out[off + i + half] = x2 * cos(angle) + x1 * sin(angle);
                }
            }
}

static void run_rope(int rotary_dim) {
    duel_rng rng;
    duel_rng_seed(&rng, 6 + rotary_dim);
    enum { B = 2, T = 5, H = 3, D = 8 };
    const size_t n = B * T * H * D;
    model_config config = {0};
    config.rotary_dim = rotary_dim;
    config.rope_theta = 100.0; /* small so that tiny positions rotate visibly */
    config.rope_scaling = MODEL_ROPE_NONE;
    float cos_t[T * D / 2], sin_t[T * D / 2];
    assert_int_equal(train_rope_tables(cos_t, sin_t, T, &config, NULL), 0);
    float *x = new_f32(n), *g = new_f32(n), *out = new_f32(n), *dx = new_f32(n);
    double *xd = new_f64(n), *gd = new_f64(n), *ref = new_f64(n);
    fill_random(&rng, x, xd, n, 0, 1);
    fill_random(&rng, g, gd, n, 0, 1);
    rope_ctx ctx = {xd, B, T, H, D, rotary_dim, 100.0};
    fd_problem p = {rope_ref, &ctx, n, gd};

    train_rope_forward(out, x, cos_t, sin_t, B, T, H, D, rotary_dim, NULL);
    rope_ref(&ctx, ref);
    expect_close("rope forward", out, ref, n, FORWARD_TOL);
    /* in place gives the same */
    float *inplace = new_f32(n);
    memcpy(inplace, x, n * sizeof *x);
    train_rope_forward(inplace, inplace, cos_t, sin_t, B, T, H, D, rotary_dim, NULL);
    assert_memory_equal(inplace, out, n * sizeof *out);
    train_rope_backward(dx, g, cos_t, sin_t, B, T, H, D, rotary_dim, NULL);
    expect_grad("rope dx", &p, xd, n, dx);
    free(x), free(g), free(out), free(dx), free(inplace), free(xd), free(gd), free(ref);
}

static void test_rope(void **state) {
    (void)state;
    run_rope(8); /* Llama: whole head */
    run_rope(4); /* GPT-NeoX style partial rotary: the rest passes through */
}

static void test_rope_tables_reject_bad_config(void **state) {
    (void)state;
    model_config config = {0};
    float c[8], s[8];
    duel_error err = {0};
    config.rotary_dim = 3;
    config.rope_theta = 10000;
    assert_int_equal(train_rope_tables(c, s, 2, &config, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "rotary_dim"));
    config.rotary_dim = 4;
    config.rope_scaling = MODEL_ROPE_LLAMA3;
    config.rope_factor = 8;
    config.rope_low_freq_factor = 4; /* must be below high */
    config.rope_high_freq_factor = 1;
    config.rope_original_max_positions = 8192;
    assert_int_equal(train_rope_tables(c, s, 2, &config, &err), DUEL_EINVAL);
    assert_non_null(strstr(err.message, "llama3"));
}

/* Linear scaling divides every frequency by the factor: position t with factor f rotates like
 * position t/f without scaling. */
static void test_rope_linear_scaling(void **state) {
    (void)state;
    model_config plain = {0}, scaled = {0};
    plain.rotary_dim = scaled.rotary_dim = 6;
    plain.rope_theta = scaled.rope_theta = 500;
    scaled.rope_scaling = MODEL_ROPE_LINEAR;
    scaled.rope_factor = 2;
    float pc[5 * 3], ps[5 * 3], sc[5 * 3], ss[5 * 3];
    assert_int_equal(train_rope_tables(pc, ps, 5, &plain, NULL), 0);
    assert_int_equal(train_rope_tables(sc, ss, 5, &scaled, NULL), 0);
    for (int i = 0; i < 3; i++) {
        assert_float_equal(sc[4 * 3 + i], pc[2 * 3 + i], 1e-6);
        assert_float_equal(ss[4 * 3 + i], ps[2 * 3 + i], 1e-6);
    }
}

/* ---------------------------------------------------------------- attention */

typedef struct { double *q, *k, *v; int batch, seq, hq, hkv, d; } attn_ctx;

static void attn_ref(void *vctx, double *out) {
    attn_ctx *c = vctx;
    int group = c->hq / c->hkv;
    double *score = new_f64(c->seq);
    for (int b = 0; b < c->batch; b++)
        for (int h = 0; h < c->hq; h++)
            for (int t = 0; t < c->seq; t++) {
                const double *q = c->q + ((size_t)(b * c->seq + t) * c->hq + h) * c->d;
                double max = -INFINITY, sum = 0;
                for (int s = 0; s <= t; s++) {
                    const double *k = c->k + ((size_t)(b * c->seq + s) * c->hkv + h / group) * c->d;
                    double dot = 0;
                    for (int i = 0; i < c->d; i++) dot += q[i] * k[i];
                    score[s] = dot / sqrt((double)c->d);
                    if (score[s] > max) max = score[s];
                }
                for (int s = 0; s <= t; s++) sum += (score[s] = exp(score[s] - max));
                double *o = out + ((size_t)(b * c->seq + t) * c->hq + h) * c->d;
                for (int i = 0; i < c->d; i++) o[i] = 0;
                for (int s = 0; s <= t; s++) {
                    const double *v = c->v + ((size_t)(b * c->seq + s) * c->hkv + h / group) * c->d;
                    for (int i = 0; i < c->d; i++) o[i] += score[s] / sum * v[i];
                }
            }
    free(score);
}

static void run_attention(int hq, int hkv) {
    duel_rng rng;
    duel_rng_seed(&rng, 10 + hq * 3 + hkv);
    enum { B = 2, T = 5, D = 4 };
    size_t nq = (size_t)B * T * hq * D, nk = (size_t)B * T * hkv * D;
    float *q = new_f32(nq), *k = new_f32(nk), *v = new_f32(nk), *g = new_f32(nq);
    float *out = new_f32(nq), *probs = new_f32((size_t)B * hq * T * T), scratch[T * T];
    float *dq = new_f32(nq), *dk = new_f32(nk), *dv = new_f32(nk);
    double *qd = new_f64(nq), *kd = new_f64(nk), *vd = new_f64(nk), *gd = new_f64(nq), *ref = new_f64(nq);
    fill_random(&rng, q, qd, nq, 0, 1);
    fill_random(&rng, k, kd, nk, 0, 1);
    fill_random(&rng, v, vd, nk, 0, 1);
    fill_random(&rng, g, gd, nq, 0, 1);
    attn_ctx ctx = {qd, kd, vd, B, T, hq, hkv, D};
    fd_problem p = {attn_ref, &ctx, nq, gd};

    train_attention_forward(out, probs, q, k, v, B, T, hq, hkv, D, NULL);
    attn_ref(&ctx, ref);
    expect_close("attention forward", out, ref, nq, FORWARD_TOL);
    /* causal: probabilities above the diagonal are zero, rows sum to one */
    for (int r = 0; r < B * hq * T; r++) {
        int t = r % T;
        double sum = 0;
        for (int s = 0; s < T; s++) {
            if (s > t) assert_true(probs[(size_t)r * T + s] == 0);
            sum += probs[(size_t)r * T + s];
        }
        assert_float_equal(sum, 1.0, 1e-5);
    }
    train_attention_backward(dq, dk, dv, scratch, g, probs, q, k, v, B, T, hq, hkv, D);
    expect_grad("attention dq", &p, qd, nq, dq);
    expect_grad("attention dk", &p, kd, nk, dk);
    expect_grad("attention dv", &p, vd, nk, dv);
    free(q), free(k), free(v), free(g), free(out), free(probs), free(dq), free(dk), free(dv);
    free(qd), free(kd), free(vd), free(gd), free(ref);
}

static void test_attention(void **state) {
    (void)state;
    run_attention(2, 2); /* multi-head */
    run_attention(4, 2); /* grouped-query */
    run_attention(3, 1); /* multi-query */
}

/* ---------------------------------------------------------------- swiglu, residual */

typedef struct { double *gate, *up; int n; } swiglu_ctx;

static void swiglu_ref(void *vctx, double *out) {
    swiglu_ctx *c = vctx;
    for (int i = 0; i < c->n; i++) out[i] = c->gate[i] / (1 + exp(-c->gate[i])) * c->up[i];
}

static void test_swiglu(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 20);
    enum { N = 40 };
    float gate[N], up[N], g[N], out[N], dgate[N] = {0}, dup[N] = {0};
    double gated[N], upd[N], gd[N], ref[N];
    fill_random(&rng, gate, gated, N, 0, 3); /* both tails of the sigmoid */
    fill_random(&rng, up, upd, N, 0, 1);
    fill_random(&rng, g, gd, N, 0, 1);
    swiglu_ctx ctx = {gated, upd, N};
    fd_problem p = {swiglu_ref, &ctx, N, gd};
    train_swiglu_forward(out, gate, up, N);
    swiglu_ref(&ctx, ref);
    expect_close("swiglu forward", out, ref, N, FORWARD_TOL);
    train_swiglu_backward(dgate, dup, g, gate, up, N);
    expect_grad("swiglu dgate", &p, gated, N, dgate);
    expect_grad("swiglu dup", &p, upd, N, dup);
}

typedef struct { double *a, *b; int n; } residual_ctx;

static void residual_ref(void *vctx, double *out) {
    residual_ctx *c = vctx;
    for (int i = 0; i < c->n; i++) out[i] = c->a[i] + c->b[i];
}

static void test_residual(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 21);
    enum { N = 12 };
    float a[N], b[N], g[N], out[N], da[N] = {0}, db[N] = {0};
    double ad[N], bd[N], gd[N], ref[N];
    fill_random(&rng, a, ad, N, 0, 1);
    fill_random(&rng, b, bd, N, 0, 1);
    fill_random(&rng, g, gd, N, 0, 1);
    residual_ctx ctx = {ad, bd, N};
    fd_problem p = {residual_ref, &ctx, N, gd};
    train_residual_forward(out, a, b, N);
    residual_ref(&ctx, ref);
    expect_close("residual forward", out, ref, N, FORWARD_TOL);
    train_residual_backward(da, db, g, N);
    expect_grad("residual da", &p, ad, N, da);
    expect_grad("residual db", &p, bd, N, db);
}

/* ---------------------------------------------------------------- log-prob head */

typedef struct { double *logits; const int32_t *targets; int n, vocab; } logprob_ctx;

static void logprob_ref(void *vctx, double *out) {
    logprob_ctx *c = vctx;
    for (int i = 0; i < c->n; i++) {
        const double *row = c->logits + (size_t)i * c->vocab;
        double sum = 0;
        for (int j = 0; j < c->vocab; j++) sum += exp(row[j]);
        out[i] = row[c->targets[i]] - log(sum);
    }
}

static void test_logprob(void **state) {
    (void)state;
    duel_rng rng;
    duel_rng_seed(&rng, 30);
    enum { N = 4, V = 11 };
    int32_t targets[N] = {0, 10, 5, 5};
    float logits[N * V], g[N], out[N], lse[N], dlogits[N * V], inplace[N * V];
    double logits_d[N * V], gd[N], ref[N];
    fill_random(&rng, logits, logits_d, N * V, 0, 2);
    fill_random(&rng, g, gd, N, 0, 1);
    logprob_ctx ctx = {logits_d, targets, N, V};
    fd_problem p = {logprob_ref, &ctx, N, gd};
    train_logprob_forward(out, lse, logits, targets, N, V);
    logprob_ref(&ctx, ref);
    expect_close("logprob forward", out, ref, N, FORWARD_TOL);
    train_logprob_backward(dlogits, logits, lse, targets, g, N, V);
    expect_grad("logprob dlogits", &p, logits_d, N * V, dlogits);
    /* in place gives the same gradient */
    memcpy(inplace, logits, sizeof logits);
    train_logprob_backward(inplace, inplace, lse, targets, g, N, V);
    assert_memory_equal(inplace, dlogits, sizeof dlogits);
    /* large logits do not overflow */
    for (int j = 0; j < V; j++) logits[j] = 1000.0f + j;
    train_logprob_forward(out, lse, logits, targets, 1, V);
    assert_true(isfinite(out[0]) && out[0] < 0);
}

static void test_sequence_logprob(void **state) {
    (void)state;
    enum { B = 2, T = 4 };
    float lp[B * T] = {-1, -2, -3, NAN, -0.5f, -0.25f, 0, 0};
    float mask[B * T] = {0, 1, 1, 0, 1, 1, 0, 0}; /* NaN under a zero mask is ignored */
    double sum[B], count[B];
    train_sequence_logprob_forward(sum, count, lp, mask, B, T, NULL);
    assert_float_equal(sum[0], -5.0, 1e-12);
    assert_float_equal(count[0], 2.0, 0);
    assert_float_equal(sum[1], -0.75, 1e-12);
    assert_float_equal(count[1], 2.0, 0);
    double dsum[B] = {2.0, -1.0};
    float dlp[B * T] = {0};
    train_sequence_logprob_backward(dlp, dsum, mask, B, T, NULL);
    float expect[B * T] = {0, 2, 2, 0, -1, -1, 0, 0};
    assert_memory_equal(dlp, expect, sizeof expect);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_backward_accumulates),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_tables_reject_bad_config),
        cmocka_unit_test(test_rope_linear_scaling),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_residual),
        cmocka_unit_test(test_logprob),
        cmocka_unit_test(test_sequence_logprob),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
