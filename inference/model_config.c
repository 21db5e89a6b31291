/* model_config.c: parsing and validation of Hugging Face config.json (see model_config.h).
 *
 * The one place where config.json is trusted: every size is range-checked, every relation the
 * forward pass relies on (hidden = heads * head_dim unless head_dim is given, kv heads dividing
 * heads, even rotary dims no larger than head_dim) is checked here, and the defaults are the
 * transformers defaults of each architecture's config class. Unknown architectures, activations
 * and rope scaling types are DUEL_EUNSUPPORTED; wrong or missing values are DUEL_EFORMAT. Every
 * message names the source and the key. */
#include "model_config.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_map.h"
#include "json_util.h"

/* Sanity bounds: far above any model we serve, low enough that products cannot overflow. */
#define CONFIG_MAX_VOCAB (1 << 22)
#define CONFIG_MAX_HIDDEN 65536
#define CONFIG_MAX_INTERMEDIATE (1 << 20)
#define CONFIG_MAX_LAYERS 512
#define CONFIG_MAX_HEADS 1024
#define CONFIG_MAX_HEAD_DIM 1024
#define CONFIG_MAX_POSITIONS (1 << 24) /* tokens */
#define CONFIG_MAX_LABELS 65536

typedef enum config_family {
    FAMILY_LLAMA,
    FAMILY_QWEN2,
    FAMILY_MISTRAL,
    FAMILY_GPT_NEOX,
} config_family;

static const struct {
    const char *name;
    config_family family;
    model_head head;
} known_architectures[] = {
    {"LlamaForCausalLM", FAMILY_LLAMA, MODEL_HEAD_CAUSAL_LM},
    {"Qwen2ForCausalLM", FAMILY_QWEN2, MODEL_HEAD_CAUSAL_LM},
    {"MistralForCausalLM", FAMILY_MISTRAL, MODEL_HEAD_CAUSAL_LM},
    {"GPTNeoXForCausalLM", FAMILY_GPT_NEOX, MODEL_HEAD_CAUSAL_LM},
    {"LlamaForSequenceClassification", FAMILY_LLAMA, MODEL_HEAD_SEQUENCE_CLASSIFICATION},
    {"Qwen2ForSequenceClassification", FAMILY_QWEN2, MODEL_HEAD_SEQUENCE_CLASSIFICATION},
    {"MistralForSequenceClassification", FAMILY_MISTRAL, MODEL_HEAD_SEQUENCE_CLASSIFICATION},
    {"GPTNeoXForSequenceClassification", FAMILY_GPT_NEOX, MODEL_HEAD_SEQUENCE_CLASSIFICATION},
};

/* Reads an integer key. Absent or null: *out = fallback, or an error when required. Accepts an
 * integral JSON real (some exporters write 4096.0); range-checked before any cast. */
static int get_int(const json_t *obj, const char *key, bool required, long long fallback,
                   long long lo, long long hi, long long *out, const char *source,
                   duel_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" is missing", source, key);
        *out = fallback;
        return DUEL_OK;
    }
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && fabs(json_real_value(v)) < 9.0e15 &&
               json_real_value(v) == floor(json_real_value(v))) {
        x = (long long)json_real_value(v);
    } else {
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be an integer", source, key);
    }
    if (x < lo || x > hi)
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" (%lld) is outside [%lld, %lld]",
                              source, key, x, lo, hi);
    *out = x;
    return DUEL_OK;
}

static int get_int32(const json_t *obj, const char *key, bool required, int fallback, int lo,
                     int hi, int *out, const char *source, duel_error *err) {
    long long x = fallback;
    int rc = get_int(obj, key, required, fallback, lo, hi, &x, source, err);
    if (!rc) *out = (int)x;
    return rc;
}

/* Reads a finite number key in (lo, hi] (lo exclusive: eps and theta must be positive). */
static int get_positive(const json_t *obj, const char *key, bool required, double fallback,
                        double hi, double *out, const char *source, duel_error *err) {
    const json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" is missing", source, key);
        *out = fallback;
        return DUEL_OK;
    }
    if (!json_is_number(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be a number", source, key);
    double x = json_number_value(v);
    if (!(x > 0.0 && x <= hi))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" (%g) must be in (0, %g]", source,
                              key, x, hi);
    *out = x;
    return DUEL_OK;
}

static int get_bool(const json_t *obj, const char *key, bool fallback, bool *out,
                    const char *source, duel_error *err) {
    *out = fallback;
    return duel_json_get_bool(obj, key, out, source, err);
}

/* A token id key: absent, null or negative (old configs write -1) means none (-1); ids outside
 * the vocabulary are an error because the engine feeds them to the embedding. */
static int check_token_id(long long id, const char *key, int vocab, int *out, const char *source,
                          duel_error *err) {
    if (id < 0) {
        *out = -1;
        return DUEL_OK;
    }
    if (id >= vocab)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: \"%s\" (%lld) is outside the vocabulary (vocab_size %d)",
                              source, key, id, vocab);
    *out = (int)id;
    return DUEL_OK;
}

static int get_token_id(const json_t *obj, const char *key, int vocab, int *out,
                        const char *source, duel_error *err) {
    long long id = -1;
    int rc = get_int(obj, key, false, -1, INT32_MIN, INT32_MAX, &id, source, err);
    if (rc) return rc;
    return check_token_id(id, key, vocab, out, source, err);
}

static int get_eos_ids(const json_t *obj, int vocab, model_config *c, const char *source,
                       duel_error *err) {
    const json_t *v = json_object_get(obj, "eos_token_id");
    c->num_eos_token_ids = 0;
    if (!v || json_is_null(v)) return DUEL_OK;
    if (!json_is_array(v)) {
        int id = -1;
        int rc = get_token_id(obj, "eos_token_id", vocab, &id, source, err);
        if (rc) return rc;
        if (id >= 0) c->eos_token_ids[c->num_eos_token_ids++] = id;
        return DUEL_OK;
    }
    if (json_array_size(v) > MODEL_CONFIG_MAX_EOS)
        return duel_error_set(err, DUEL_ELIMIT, "%s: \"eos_token_id\" lists %zu ids, at most %d",
                              source, json_array_size(v), MODEL_CONFIG_MAX_EOS);
    for (size_t i = 0; i < json_array_size(v); i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < INT32_MIN ||
            json_integer_value(e) > INT32_MAX)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: \"eos_token_id\"[%zu] must be an integer", source, i);
        int id = -1;
        int rc = check_token_id(json_integer_value(e), "eos_token_id", vocab, &id, source, err);
        if (rc) return rc;
        if (id >= 0) c->eos_token_ids[c->num_eos_token_ids++] = id;
    }
    return DUEL_OK;
}

/* Newer transformers releases move rope settings (rope_theta, rope_type and its parameters,
 * partial_rotary_factor) from the top level into a "rope_parameters" object. Returns the object
 * to read key from: the top level when it has key, else rope_parameters when that has it. */
static const json_t *rope_holder(const json_t *root, const char *key) {
    const json_t *params = json_object_get(root, "rope_parameters");
    if (!json_object_get(root, key) && json_is_object(params) && json_object_get(params, key))
        return params;
    return root;
}

/* rope_scaling (or rope_parameters): null, {"rope_type"|"type": "default"|"linear"|"llama3",
 * ...}. */
static int parse_rope_scaling(const json_t *root, model_config *c, const char *source,
                              duel_error *err) {
    c->rope_scaling = MODEL_ROPE_NONE;
    c->rope_factor = 1.0;
    c->rope_low_freq_factor = 0.0;
    c->rope_high_freq_factor = 0.0;
    c->rope_original_max_positions = 0;
    const char *rs_key = "rope_scaling";
    const json_t *rs = json_object_get(root, rs_key);
    if (!rs || json_is_null(rs)) {
        rs_key = "rope_parameters";
        rs = json_object_get(root, rs_key);
    }
    if (!rs || json_is_null(rs)) return DUEL_OK;
    if (!json_is_object(rs))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"%s\" must be an object or null", source,
                              rs_key);
    const json_t *type = json_object_get(rs, "rope_type");
    if (!type || json_is_null(type)) type = json_object_get(rs, "type");
    if (!type && strcmp(rs_key, "rope_parameters") == 0) return DUEL_OK;
    if (!json_is_string(type))
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: \"%s\" needs a string \"rope_type\" (or \"type\")", source,
                              rs_key);
    const char *name = json_string_value(type);
    if (strcmp(name, "default") == 0) return DUEL_OK;
    char where[512];
    snprintf(where, sizeof where, "%s: %s", source, rs_key);
    int rc;
    if (strcmp(name, "linear") == 0) {
        c->rope_scaling = MODEL_ROPE_LINEAR;
        return get_positive(rs, "factor", true, 1.0, 1e6, &c->rope_factor, where, err);
    }
    if (strcmp(name, "llama3") == 0) {
        c->rope_scaling = MODEL_ROPE_LLAMA3;
        if ((rc = get_positive(rs, "factor", true, 1.0, 1e6, &c->rope_factor, where, err)) ||
            (rc = get_positive(rs, "low_freq_factor", true, 1.0, 1e6, &c->rope_low_freq_factor,
                               where, err)) ||
            (rc = get_positive(rs, "high_freq_factor", true, 1.0, 1e6,
                               &c->rope_high_freq_factor, where, err)) ||
            (rc = get_int32(rs, "original_max_position_embeddings", true, 0, 1,
                            CONFIG_MAX_POSITIONS, &c->rope_original_max_positions, where, err)))
            return rc;
        /* The smoothing between the two wavelength bands divides by their difference. */
        if (!(c->rope_high_freq_factor > c->rope_low_freq_factor))
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: \"high_freq_factor\" (%g) must exceed \"low_freq_factor\" "
                                  "(%g)",
                                  where, c->rope_high_freq_factor, c->rope_low_freq_factor);
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EUNSUPPORTED,
                          "%s: rope scaling type \"%s\" is not supported (supported: default, "
                          "linear, llama3)",
                          source, name);
}

static int parse_common_sizes(const json_t *root, model_config *c, const char *source,
                              duel_error *err) {
    int rc;
    if ((rc = get_int32(root, "vocab_size", true, 0, 1, CONFIG_MAX_VOCAB, &c->vocab_size, source,
                        err)) ||
        (rc = get_int32(root, "hidden_size", true, 0, 1, CONFIG_MAX_HIDDEN, &c->hidden_size,
                        source, err)) ||
        (rc = get_int32(root, "intermediate_size", true, 0, 1, CONFIG_MAX_INTERMEDIATE,
                        &c->intermediate_size, source, err)) ||
        (rc = get_int32(root, "num_hidden_layers", true, 0, 1, CONFIG_MAX_LAYERS, &c->num_layers,
                        source, err)) ||
        (rc = get_int32(root, "num_attention_heads", true, 0, 1, CONFIG_MAX_HEADS, &c->num_heads,
                        source, err)) ||
        (rc = get_int32(root, "max_position_embeddings", false, 2048, 1, CONFIG_MAX_POSITIONS,
                        &c->max_position_embeddings, source, err)))
        return rc;
    return DUEL_OK;
}

static int require_head_divides(const model_config *c, const char *source, duel_error *err) {
    if (c->hidden_size % c->num_heads != 0)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: \"num_attention_heads\" (%d) must divide \"hidden_size\" (%d)",
                              source, c->num_heads, c->hidden_size);
    return DUEL_OK;
}

static int parse_llama(const json_t *root, config_family family, model_config *c,
                       const char *source, duel_error *err) {
    int rc = parse_common_sizes(root, c, source, err);
    if (rc) return rc;
    c->arch = MODEL_ARCH_LLAMA;
    if ((rc = get_int32(root, "num_key_value_heads", false, c->num_heads, 1, CONFIG_MAX_HEADS,
                        &c->num_kv_heads, source, err)))
        return rc;
    if (json_object_get(root, "head_dim") && !json_is_null(json_object_get(root, "head_dim"))) {
        if ((rc = get_int32(root, "head_dim", true, 0, 1, CONFIG_MAX_HEAD_DIM, &c->head_dim,
                            source, err)))
            return rc;
    } else {
        if ((rc = require_head_divides(c, source, err))) return rc;
        c->head_dim = c->hidden_size / c->num_heads;
    }
    if (c->num_heads % c->num_kv_heads != 0)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: \"num_key_value_heads\" (%d) must divide "
                              "\"num_attention_heads\" (%d)",
                              source, c->num_kv_heads, c->num_heads);
    c->rotary_dim = c->head_dim;
    if ((rc = get_positive(root, "rms_norm_eps", false, 1e-6, 1.0, &c->norm_eps, source, err)) ||
        (rc = get_positive(rope_holder(root, "rope_theta"), "rope_theta", false, 10000.0, 1e12,
                           &c->rope_theta, source, err)) ||
        (rc = parse_rope_scaling(root, c, source, err)) ||
        (rc = get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, source, err)))
        return rc;
    char act[32] = "silu";
    if ((rc = duel_json_get_string(root, "hidden_act", act, sizeof act, source, err))) {
        if (rc == DUEL_ELIMIT) rc = duel_error_set(err, DUEL_EUNSUPPORTED,
                                                   "%s: \"hidden_act\" is not supported", source);
        return rc;
    }
    if (strcmp(act, "silu") != 0 && strcmp(act, "swish") != 0)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: \"hidden_act\" \"%s\" is not supported for %s (only silu)",
                              source, act, c->architecture);
    c->activation = MODEL_ACT_SILU;
    switch (family) {
    case FAMILY_QWEN2: /* q, k, v projections carry biases; o and the MLP never do */
        c->attention_bias = true;
        c->attention_out_bias = false;
        c->mlp_bias = false;
        break;
    case FAMILY_MISTRAL: /* no biases at all */
        c->attention_bias = c->attention_out_bias = c->mlp_bias = false;
        break;
    default:
        if ((rc = get_bool(root, "attention_bias", false, &c->attention_bias, source, err)) ||
            (rc = get_bool(root, "mlp_bias", false, &c->mlp_bias, source, err)))
            return rc;
        c->attention_out_bias = c->attention_bias;
        break;
    }
    /* We implement full causal attention only: a sliding window that actually limits the
     * context would silently change the model. */
    bool sliding = family == FAMILY_MISTRAL;
    if (family == FAMILY_QWEN2 &&
        (rc = get_bool(root, "use_sliding_window", false, &sliding, source, err)))
        return rc;
    if (sliding && family != FAMILY_LLAMA) {
        int window = 0;
        if ((rc = get_int32(root, "sliding_window", false, 0, 0, INT32_MAX, &window, source,
                            err)))
            return rc;
        if (window > 0 && window < c->max_position_embeddings)
            return duel_error_set(err, DUEL_EUNSUPPORTED,
                                  "%s: \"sliding_window\" (%d) below \"max_position_embeddings\" "
                                  "(%d) is not supported",
                                  source, window, c->max_position_embeddings);
    }
    return DUEL_OK;
}

static int parse_gpt_neox(const json_t *root, model_config *c, const char *source,
                          duel_error *err) {
    int rc = parse_common_sizes(root, c, source, err);
    if (rc) return rc;
    c->arch = MODEL_ARCH_GPT_NEOX;
    if ((rc = require_head_divides(c, source, err))) return rc;
    c->num_kv_heads = c->num_heads;
    c->head_dim = c->hidden_size / c->num_heads;
    double rotary_pct = 0.25;
    const char *pct_key =
        json_object_get(root, "rotary_pct") ? "rotary_pct" : "partial_rotary_factor";
    if ((rc = get_positive(rope_holder(root, pct_key), pct_key, false, 0.25, 1.0, &rotary_pct,
                           source, err)))
        return rc;
    c->rotary_dim = (int)(c->head_dim * rotary_pct); /* truncation, as transformers does */
    if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: \"%s\" (%g) gives rotary_dim %d of head_dim %d, which must be "
                              "even and at least 2",
                              source, pct_key, rotary_pct, c->rotary_dim, c->head_dim);
    const char *theta_key =
        json_object_get(root, "rotary_emb_base") ? "rotary_emb_base" : "rope_theta";
    if ((rc = get_positive(rope_holder(root, theta_key), theta_key, false, 10000.0, 1e12,
                           &c->rope_theta, source, err)) ||
        (rc = parse_rope_scaling(root, c, source, err)) ||
        (rc = get_positive(root, "layer_norm_eps", false, 1e-5, 1.0, &c->norm_eps, source,
                           err)) ||
        (rc = get_bool(root, "use_parallel_residual", true, &c->use_parallel_residual, source,
                       err)) ||
        (rc = get_bool(root, "tie_word_embeddings", false, &c->tie_word_embeddings, source,
                       err)) ||
        (rc = get_bool(root, "attention_bias", true, &c->attention_bias, source, err)))
        return rc;
    c->attention_out_bias = c->attention_bias;
    c->mlp_bias = true; /* dense_h_to_4h and dense_4h_to_h always have biases */
    char act[32] = "gelu";
    if ((rc = duel_json_get_string(root, "hidden_act", act, sizeof act, source, err))) {
        if (rc == DUEL_ELIMIT) rc = duel_error_set(err, DUEL_EUNSUPPORTED,
                                                   "%s: \"hidden_act\" is not supported", source);
        return rc;
    }
    if (strcmp(act, "gelu") == 0) {
        c->activation = MODEL_ACT_GELU;
    } else if (strcmp(act, "gelu_new") == 0 || strcmp(act, "gelu_pytorch_tanh") == 0 ||
               strcmp(act, "gelu_fast") == 0) {
        c->activation = MODEL_ACT_GELU_TANH;
    } else {
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: \"hidden_act\" \"%s\" is not supported for %s (gelu, gelu_new, "
                              "gelu_pytorch_tanh)",
                              source, act, c->architecture);
    }
    return DUEL_OK;
}

static int parse_num_labels(const json_t *root, model_config *c, const char *source,
                            duel_error *err) {
    const json_t *id2label = json_object_get(root, "id2label");
    int from_map = 0;
    if (id2label && !json_is_null(id2label)) {
        if (!json_is_object(id2label))
            return duel_error_set(err, DUEL_EFORMAT, "%s: \"id2label\" must be an object",
                                  source);
        if (json_object_size(id2label) > CONFIG_MAX_LABELS)
            return duel_error_set(err, DUEL_ELIMIT, "%s: \"id2label\" has more than %d labels",
                                  source, CONFIG_MAX_LABELS);
        from_map = (int)json_object_size(id2label);
    }
    int rc = get_int32(root, "num_labels", false, from_map ? from_map : 2, 1, CONFIG_MAX_LABELS,
                       &c->num_labels, source, err);
    if (rc) return rc;
    if (from_map && json_object_get(root, "num_labels") && c->num_labels != from_map)
        return duel_error_set(err, DUEL_EFORMAT,
                              "%s: \"num_labels\" (%d) disagrees with \"id2label\" (%d labels)",
                              source, c->num_labels, from_map);
    if (c->num_labels < 1)
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"id2label\" is empty", source);
    return DUEL_OK;
}

int model_config_parse(const char *text, size_t len, const char *source, model_config *out,
                       duel_error *err) {
    if (!source) source = "config.json";
    memset(out, 0, sizeof *out);
    if (!text && len)
        return duel_error_set(err, DUEL_EINVAL, "%s: NULL text", source);
    if (len > MODEL_CONFIG_MAX_JSON_BYTES)
        return duel_error_set(err, DUEL_ELIMIT, "%s: %zu bytes, more than the limit of %u",
                              source, len, MODEL_CONFIG_MAX_JSON_BYTES);
    json_t *root;
    int rc = duel_json_parse(text ? text : "", len, source, &root, err);
    if (rc) return rc;
    model_config c;
    memset(&c, 0, sizeof c);
    if (!json_is_object(root)) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: not a JSON object", source);
        goto done;
    }
    const json_t *archs = json_object_get(root, "architectures");
    if (!json_is_array(archs) || json_array_size(archs) == 0 ||
        !json_is_string(json_array_get(archs, 0))) {
        rc = duel_error_set(err, DUEL_EFORMAT,
                            "%s: \"architectures\" must be a non-empty array of strings", source);
        goto done;
    }
    if (json_array_size(archs) > 1) {
        rc = duel_error_set(err, DUEL_EUNSUPPORTED,
                            "%s: \"architectures\" lists %zu architectures, expected one", source,
                            json_array_size(archs));
        goto done;
    }
    const char *arch = json_string_value(json_array_get(archs, 0));
    size_t which = sizeof known_architectures / sizeof known_architectures[0];
    for (size_t i = 0; i < sizeof known_architectures / sizeof known_architectures[0]; i++)
        if (strcmp(arch, known_architectures[i].name) == 0) which = i;
    if (which == sizeof known_architectures / sizeof known_architectures[0]) {
        rc = duel_error_set(err, DUEL_EUNSUPPORTED,
                            "%s: architecture \"%.64s\" is not supported (supported: Llama, "
                            "Qwen2, Mistral and GPTNeoX ForCausalLM / ForSequenceClassification)",
                            source, arch);
        goto done;
    }
    snprintf(c.architecture, sizeof c.architecture, "%s", arch);
    c.head = known_architectures[which].head;
    config_family family = known_architectures[which].family;
    rc = family == FAMILY_GPT_NEOX ? parse_gpt_neox(root, &c, source, err)
                                   : parse_llama(root, family, &c, source, err);
    if (rc) goto done;
    if (c.head_dim > CONFIG_MAX_HEAD_DIM) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: head_dim %d is above the limit of %d", source,
                            c.head_dim, CONFIG_MAX_HEAD_DIM);
        goto done;
    }
    if (c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim) {
        rc = duel_error_set(err, DUEL_EFORMAT,
                            "%s: rotary dimension %d must be even and at most \"head_dim\" (%d)",
                            source, c.rotary_dim, c.head_dim);
        goto done;
    }
    if (c.head == MODEL_HEAD_SEQUENCE_CLASSIFICATION &&
        (rc = parse_num_labels(root, &c, source, err)))
        goto done;
    if ((rc = get_token_id(root, "bos_token_id", c.vocab_size, &c.bos_token_id, source, err)) ||
        (rc = get_token_id(root, "pad_token_id", c.vocab_size, &c.pad_token_id, source, err)) ||
        (rc = get_eos_ids(root, c.vocab_size, &c, source, err)))
        goto done;
    *out = c;
done:
    json_decref(root);
    return rc;
}

int model_config_load(const char *path, model_config *out, duel_error *err) {
    char *text;
    size_t len;
    memset(out, 0, sizeof *out);
    int rc = duel_file_read_all(path, MODEL_CONFIG_MAX_JSON_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = model_config_parse(text, len, path, out, err);
    free(text);
    return rc;
}

long long model_config_num_parameters(const model_config *config) {
    const model_config *c = config;
    long long V = c->vocab_size, H = c->hidden_size, I = c->intermediate_size;
    long long q = (long long)c->num_heads * c->head_dim;
    long long kv = (long long)c->num_kv_heads * c->head_dim;
    long long per_layer, final_norm;
    if (c->arch == MODEL_ARCH_LLAMA) {
        per_layer = 2 * H;                      /* input and post-attention RMSNorm */
        per_layer += H * q + 2 * H * kv + q * H; /* q, k, v, o */
        if (c->attention_bias) per_layer += q + 2 * kv;
        if (c->attention_out_bias) per_layer += H;
        per_layer += 3 * H * I; /* gate, up, down */
        if (c->mlp_bias) per_layer += 2 * I + H;
        final_norm = H;
    } else {
        per_layer = 4 * H;                  /* two LayerNorms, weight and bias */
        per_layer += H * 3 * q + q * H;     /* query_key_value, dense */
        if (c->attention_bias) per_layer += 3 * q;
        if (c->attention_out_bias) per_layer += H;
        per_layer += 2 * H * I + I + H;     /* dense_h_to_4h, dense_4h_to_h with biases */
        final_norm = 2 * H;
    }
    long long total = V * H + per_layer * c->num_layers + final_norm;
    if (c->head == MODEL_HEAD_SEQUENCE_CLASSIFICATION)
        total += (long long)c->num_labels * H; /* score, no bias */
    else if (!c->tie_word_embeddings)
        total += V * H;
    return total;
}
