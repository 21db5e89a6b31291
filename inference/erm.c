/* erm.c: the epistemic reward model's parameters (one allocation holding theta and theta_0),
 * its seeded initialisation, batched CPU scoring with OpenBLAS, and erm.safetensors I/O.
 * Invariant: params and initial always have the layout described in erm.h, and a model handed
 * out by erm_create/erm_load holds only finite values. */
#include "erm.h"

#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

#define ERM_FORMAT_NAME "duel-erm"
#define ERM_FORMAT_VERSION "1"

int erm_config_validate(const erm_config *c, duel_error *err) {
    if (!c) return duel_error_set(err, DUEL_EINVAL, "erm: config is NULL");
    if (c->num_heads < 1 || c->num_heads > ERM_MAX_NUM_HEADS)
        return duel_error_set(err, DUEL_EINVAL, "erm: num_heads %d outside 1..%d", c->num_heads,
                              ERM_MAX_NUM_HEADS);
    if (c->hidden < 1 || c->hidden > ERM_MAX_HIDDEN)
        return duel_error_set(err, DUEL_EINVAL, "erm: hidden %d outside 1..%d", c->hidden,
                              ERM_MAX_HIDDEN);
    if (c->d_feat < 1 || c->d_feat > ERM_MAX_D_FEAT)
        return duel_error_set(err, DUEL_EINVAL, "erm: d_feat %d outside 1..%d", c->d_feat,
                              ERM_MAX_D_FEAT);
    return 0;
}

size_t erm_num_params(const erm_config *c) {
    if (erm_config_validate(c, NULL) != 0) return 0;
    size_t E = (size_t)c->num_heads, H = (size_t)c->hidden, D = (size_t)c->d_feat;
    return E * (H * D + H + H * H + H + H + 1);
}

static void erm_carve(const erm_config *c, float *memory, erm_params *p) {
    size_t E = (size_t)c->num_heads, H = (size_t)c->hidden, D = (size_t)c->d_feat;
    p->memory = memory;
    p->fc1_weight = memory;
    p->fc1_bias = p->fc1_weight + E * H * D;
    p->fc2_weight = p->fc1_bias + E * H;
    p->fc2_bias = p->fc2_weight + E * H * H;
    p->fc3_weight = p->fc2_bias + E * H;
    p->fc3_bias = p->fc3_weight + E * H;
}

/* Allocates an erm with zeroed parameters. */
static int erm_alloc(const erm_config *config, erm **out, duel_error *err) {
    *out = NULL;
    int rc = erm_config_validate(config, err);
    if (rc) return rc;
    size_t n = erm_num_params(config);
    erm *m = calloc(1, sizeof *m);
    float *memory = calloc(2 * n, sizeof *memory);
    if (!m || !memory) {
        free(m);
        free(memory);
        return duel_error_set(err, DUEL_ENOMEM, "erm: cannot allocate %zu parameters", 2 * n);
    }
    m->config = *config;
    m->num_params = n;
    erm_carve(config, memory, &m->params);
    erm_carve(config, memory + n, &m->initial);
    *out = m;
    return 0;
}

void erm_free(erm *m) {
    if (!m) return;
    free(m->params.memory); /* also holds initial */
    free(m);
}

void erm_reset_initial(erm *m) {
    if (m) memcpy(m->initial.memory, m->params.memory, m->num_params * sizeof(float));
}

static void erm_fill_normal(duel_rng *rng, float *w, size_t n, int fan_in) {
    double std = 1.0 / (2.0 * sqrt((double)fan_in));
    for (size_t i = 0; i < n; i++) w[i] = (float)(std * duel_rng_normal(rng));
}

int erm_create(const erm_config *config, duel_rng *rng, erm **out, duel_error *err) {
    if (!out) return duel_error_set(err, DUEL_EINVAL, "erm_create: out is NULL");
    *out = NULL;
    if (!rng) return duel_error_set(err, DUEL_EINVAL, "erm_create: rng is NULL");
    erm *m;
    int rc = erm_alloc(config, &m, err);
    if (rc) return rc;
    size_t H = (size_t)config->hidden, D = (size_t)config->d_feat;
    /* Head by head so that head e's values do not depend on E (a 5-head ensemble is the first
     * five heads of a 20-head one with the same seed). Biases stay 0 from calloc. */
    for (int e = 0; e < config->num_heads; e++) {
        erm_fill_normal(rng, m->params.fc1_weight + (size_t)e * H * D, H * D, config->d_feat);
        erm_fill_normal(rng, m->params.fc2_weight + (size_t)e * H * H, H * H, config->hidden);
        erm_fill_normal(rng, m->params.fc3_weight + (size_t)e * H, H, config->hidden);
    }
    erm_reset_initial(m);
    *out = m;
    return 0;
}

int erm_score(const erm *m, const float *features, int M, float *rewards, duel_error *err) {
    if (!m || !features || !rewards)
        return duel_error_set(err, DUEL_EINVAL, "erm_score: NULL argument");
    if (M < 1 || M > ERM_MAX_CANDIDATES)
        return duel_error_set(err, DUEL_EINVAL, "erm_score: %d candidates outside 1..%d", M,
                              ERM_MAX_CANDIDATES);
    const int E = m->config.num_heads, H = m->config.hidden, D = m->config.d_feat;
    for (int i = 0; i < M; i++)
        for (int k = 0; k < D; k++) {
            float v = features[(size_t)i * D + k];
            if (!isfinite(v))
                return duel_error_set(err, DUEL_EINVAL, "erm_score: candidate %d feature %d is %s",
                                      i, k, isnan(v) ? "NaN" : "infinite");
        }
    const size_t width = (size_t)E * H; /* one row of activations: every head's hidden units */
    float *h1 = malloc((size_t)M * width * sizeof *h1);
    float *h2 = malloc((size_t)M * width * sizeof *h2);
    if (!h1 || !h2) {
        free(h1);
        free(h2);
        return duel_error_set(err, DUEL_ENOMEM, "erm_score: cannot allocate activations for %d "
                              "candidates", M);
    }
    /* Layer 1, all heads at once: h1[M][E*H] = features[M][D] . fc1_weight[E*H][D]^T. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, (int)width, D, 1.0f, features, D,
                m->params.fc1_weight, D, 0.0f, h1, (int)width);
    for (int i = 0; i < M; i++) {
        float *row = h1 + (size_t)i * width;
        for (size_t j = 0; j < width; j++) {
            float v = row[j] + m->params.fc1_bias[j];
            row[j] = v > 0.0f ? v : 0.0f;
        }
    }
    /* Layer 2, per head over all candidates, reading and writing head e's column block. */
    for (int e = 0; e < E; e++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, H, H, 1.0f,
                    h1 + (size_t)e * H, (int)width, m->params.fc2_weight + (size_t)e * H * H, H,
                    0.0f, h2 + (size_t)e * H, (int)width);
    /* Layer 3: bias, ReLU and the dot product with w3_e. */
    for (int i = 0; i < M; i++)
        for (int e = 0; e < E; e++) {
            const float *row = h2 + (size_t)i * width + (size_t)e * H;
            const float *b2 = m->params.fc2_bias + (size_t)e * H;
            const float *w3 = m->params.fc3_weight + (size_t)e * H;
            float acc = 0.0f;
            for (int j = 0; j < H; j++) {
                float v = row[j] + b2[j];
                acc += (v > 0.0f ? v : 0.0f) * w3[j];
            }
            rewards[(size_t)i * E + e] = acc + m->params.fc3_bias[e];
        }
    free(h1);
    free(h2);
    return 0;
}

/* The six tensors of one block: name suffix, shape and view. */
typedef struct erm_tensor_spec {
    const char *name;
    int ndim;
    int64_t shape[3];
    float *data;
} erm_tensor_spec;

static void erm_tensor_specs(const erm_config *c, const erm_params *p, erm_tensor_spec s[6]) {
    int64_t E = c->num_heads, H = c->hidden, D = c->d_feat;
    s[0] = (erm_tensor_spec){"fc1.weight", 3, {E, H, D}, p->fc1_weight};
    s[1] = (erm_tensor_spec){"fc1.bias", 2, {E, H, 0}, p->fc1_bias};
    s[2] = (erm_tensor_spec){"fc2.weight", 3, {E, H, H}, p->fc2_weight};
    s[3] = (erm_tensor_spec){"fc2.bias", 2, {E, H, 0}, p->fc2_bias};
    s[4] = (erm_tensor_spec){"fc3.weight", 3, {E, 1, H}, p->fc3_weight};
    s[5] = (erm_tensor_spec){"fc3.bias", 2, {E, 1, 0}, p->fc3_bias};
}

int erm_save(const erm *m, const char *path, duel_error *err) {
    if (!m || !path) return duel_error_set(err, DUEL_EINVAL, "erm_save: NULL argument");
    erm_tensor_spec specs[2][6];
    erm_tensor_specs(&m->config, &m->params, specs[0]);
    erm_tensor_specs(&m->config, &m->initial, specs[1]);
    char names[6][64];
    safetensors_write_tensor tensors[12];
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 6; i++) {
            safetensors_write_tensor *t = &tensors[b * 6 + i];
            memset(t, 0, sizeof *t);
            if (b == 0) {
                t->name = specs[b][i].name;
            } else {
                snprintf(names[i], sizeof names[i], "initial.%s", specs[b][i].name);
                t->name = names[i];
            }
            t->dtype = SAFETENSORS_F32;
            t->ndim = specs[b][i].ndim;
            for (int d = 0; d < t->ndim; d++) t->shape[d] = specs[b][i].shape[d];
            t->data = specs[b][i].data;
        }
    char metadata[256];
    snprintf(metadata, sizeof metadata,
             "{\"format\":\"" ERM_FORMAT_NAME "\",\"version\":\"" ERM_FORMAT_VERSION "\","
             "\"num_heads\":\"%d\",\"d_feat\":\"%d\",\"hidden\":\"%d\"}",
             m->config.num_heads, m->config.d_feat, m->config.hidden);
    int rc = safetensors_write_file(path, tensors, 12, metadata, err);
    if (rc) return duel_error_prefix(err, "erm_save");
    return 0;
}

/* A positive decimal integer from the metadata (no sign, no spaces, no trailing text). */
static int erm_metadata_int(const safetensors_archive *st, const char *path, const char *key,
                            int *out, duel_error *err) {
    const char *v = safetensors_metadata(st, key);
    if (!v) return duel_error_set(err, DUEL_EFORMAT, "%s: metadata has no \"%s\"", path, key);
    char *end = NULL;
    errno = 0;
    long x = v[0] >= '0' && v[0] <= '9' ? strtol(v, &end, 10) : -1;
    if (x < 0 || errno || !end || *end || x > (1L << 30))
        return duel_error_set(err, DUEL_EFORMAT, "%s: metadata \"%s\" is \"%s\", not a count",
                              path, key, v);
    *out = (int)x;
    return 0;
}

static int erm_load_block(const safetensors_archive *st, const char *path, const char *prefix,
                          const erm_config *c, const erm_params *p, duel_error *err) {
    erm_tensor_spec specs[6];
    erm_tensor_specs(c, p, specs);
    for (int i = 0; i < 6; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%s", prefix, specs[i].name);
        const safetensors_tensor *t;
        int rc = safetensors_expect(st, name, specs[i].ndim, specs[i].shape, &t, err);
        if (rc) return rc; /* the message names the file and the tensor */
        rc = safetensors_to_f32(t, specs[i].data, err);
        if (rc) return rc;
        for (int64_t k = 0; k < t->num_elements; k++)
            if (!isfinite(specs[i].data[k]))
                return duel_error_set(err, DUEL_EFORMAT, "%s: tensor %s element %lld is %s", path,
                                      name, (long long)k, isnan(specs[i].data[k]) ? "NaN" : "infinite");
    }
    return 0;
}

static int erm_known_name(const char *name) {
    static const char *const known[] = {"fc1.weight", "fc1.bias", "fc2.weight",
                                        "fc2.bias",   "fc3.weight", "fc3.bias"};
    if (strncmp(name, "initial.", 8) == 0) name += 8;
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(name, known[i]) == 0) return 1;
    return 0;
}

int erm_load(const char *path, int expected_d_feat, erm **out, duel_error *err) {
    if (!path || !out) return duel_error_set(err, DUEL_EINVAL, "erm_load: NULL argument");
    *out = NULL;
    safetensors_archive *st = NULL;
    int rc = safetensors_open_file(path, &st, err);
    if (rc) return rc;
    erm *m = NULL;
    const char *format = safetensors_metadata(st, "format");
    const char *version = safetensors_metadata(st, "version");
    if (!format || strcmp(format, ERM_FORMAT_NAME) != 0) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: metadata \"format\" is %s%s%s, expected \""
                            ERM_FORMAT_NAME "\"", path, format ? "\"" : "",
                            format ? format : "missing", format ? "\"" : "");
        goto done;
    }
    if (!version || strcmp(version, ERM_FORMAT_VERSION) != 0) {
        rc = duel_error_set(err, DUEL_EUNSUPPORTED, "%s: ERM format version %s is not supported "
                            "(this build reads " ERM_FORMAT_VERSION ")", path,
                            version ? version : "(missing)");
        goto done;
    }
    erm_config c;
    if ((rc = erm_metadata_int(st, path, "num_heads", &c.num_heads, err)) ||
        (rc = erm_metadata_int(st, path, "d_feat", &c.d_feat, err)) ||
        (rc = erm_metadata_int(st, path, "hidden", &c.hidden, err)))
        goto done;
    duel_error shape_err;
    if (erm_config_validate(&c, &shape_err) != 0) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: %s", path, shape_err.message);
        goto done;
    }
    if (expected_d_feat > 0 && c.d_feat != expected_d_feat) {
        rc = duel_error_set(err, DUEL_EINVAL, "%s: ERM expects %d features, the encoder gives %d",
                            path, c.d_feat, expected_d_feat);
        goto done;
    }
    size_t count = safetensors_count(st);
    int has_initial = 0;
    for (size_t i = 0; i < count; i++) {
        const char *name = safetensors_at(st, i)->name;
        if (!erm_known_name(name)) {
            rc = duel_error_set(err, DUEL_EFORMAT, "%s: unexpected tensor \"%s\" in an ERM file",
                                path, name);
            goto done;
        }
        if (strncmp(name, "initial.", 8) == 0) has_initial = 1;
    }
    if ((rc = erm_alloc(&c, &m, err))) goto done;
    if ((rc = erm_load_block(st, path, "", &c, &m->params, err))) goto done;
    if (has_initial) {
        if ((rc = erm_load_block(st, path, "initial.", &c, &m->initial, err))) goto done;
    } else {
        erm_reset_initial(m);
    }
    *out = m;
    m = NULL;
done:
    erm_free(m);
    safetensors_close(st);
    return rc;
}
