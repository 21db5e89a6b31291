/* vote_entry.c: the vote codec (see vote_entry.h): decoding and validation of duel:prefs entries,
 * the encoder every producer uses, and the framing outside Redis. Everything untrusted is checked
 * here and nowhere else; the encoder checks what it wrote with the decoder, so the two cannot
 * drift apart. */
#include "vote_entry.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "float16.h"

static const char *const CHOICE_NAMES[] = {"a", "b", "tie", "both_bad"};

const char *vote_choice_name(vote_choice c) {
    return (int)c >= 0 && c <= VOTE_CHOICE_BOTH_BAD ? CHOICE_NAMES[c] : "?";
}

int vote_choice_is_pair(vote_choice c) { return c == VOTE_CHOICE_A || c == VOTE_CHOICE_B; }

int vote_choice_parse(const char *s, size_t len, vote_choice *out) {
    for (int c = 0; c <= VOTE_CHOICE_BOTH_BAD; c++)
        if (len == strlen(CHOICE_NAMES[c]) && memcmp(s, CHOICE_NAMES[c], len) == 0) {
            *out = (vote_choice)c;
            return 0;
        }
    return DUEL_EFORMAT;
}

void vote_entry_free(vote_entry *e) {
    if (!e) return;
    free(e->prompt_tokens);
    free(e->cand_tokens);
    free(e->cand_offsets);
    free(e->features);
    free(e->erm_rewards);
    free(e->ref_logprobs);
    e->prompt_tokens = e->cand_tokens = e->cand_offsets = NULL;
    e->features = e->erm_rewards = e->ref_logprobs = NULL;
}

const int32_t *vote_entry_candidate(const vote_entry *e, int i, int *len) {
    *len = e->cand_offsets[i + 1] - e->cand_offsets[i];
    return e->cand_tokens + e->cand_offsets[i];
}

/* The fields the decoder knows, in the producer's order. */
enum {
    F_VOTE_ID, F_DUEL_ID, F_TS_MS, F_ARM, F_POLICY_VERSION, F_STRATEGY, F_CHOICE, F_SIDE_SWAP,
    F_PROMPT_TOKENS, F_CAND_TOKENS, F_CAND_OFFSETS, F_CHOSEN_IDX, F_REJECTED_IDX, F_FEATURES,
    F_ERM_REWARDS, F_GEN_PARAMS, F_PROMPT_TEXT, F_CHOSEN_TEXT, F_REJECTED_TEXT, F_MODEL_ID,
    F_NUM_CANDIDATES, F_D_FEAT, F_NUM_HEADS, F_FEATURES_DTYPE, F_CONVERSATION, F_REF_LOGPROBS,
    F_COUNT
};
static const char *const FIELD_NAMES[F_COUNT] = {
    "vote_id", "duel_id", "ts_ms", "arm", "policy_version", "strategy", "choice", "side_swap",
    "prompt_tokens", "cand_tokens", "cand_offsets", "chosen_idx", "rejected_idx", "features",
    "erm_rewards", "gen_params", "prompt_text", "chosen_text", "rejected_text", "model_id",
    "num_candidates", "d_feat", "num_heads", "features_dtype", "conversation", "ref_logprobs"};
#define FIRST_OPTIONAL F_FEATURES_DTYPE

static int parse_int(const vote_entry_field *f, int64_t lo, int64_t hi, int64_t *out,
                     duel_error *err) {
    char buf[32];
    size_t n = f->value_len;
    if (n == 0 || n >= sizeof buf)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: not a decimal integer",
                              (int)f->name_len, f->name);
    memcpy(buf, f->value, n);
    buf[n] = '\0';
    size_t i = buf[0] == '-' ? 1 : 0;
    if (i == n)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: not a decimal integer",
                              (int)f->name_len, f->name);
    for (size_t k = i; k < n; k++)
        if (buf[k] < '0' || buf[k] > '9')
            return duel_error_set(err, DUEL_EFORMAT, "field %.*s: not a decimal integer",
                                  (int)f->name_len, f->name);
    errno = 0;
    long long v = strtoll(buf, NULL, 10);
    if (errno != 0 || v < lo || v > hi)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: %s outside %" PRId64 "..%" PRId64,
                              (int)f->name_len, f->name, buf, lo, hi);
    *out = v;
    return 0;
}

/* An identifier: 1..VOTE_ENTRY_MAX_ID printable ASCII bytes (allow_empty for model_id etc.). */
static int copy_id(const vote_entry_field *f, char *out, int allow_empty, duel_error *err) {
    if ((!allow_empty && f->value_len == 0) || f->value_len > VOTE_ENTRY_MAX_ID)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: length %zu outside %d..%d",
                              (int)f->name_len, f->name, f->value_len, allow_empty ? 0 : 1,
                              VOTE_ENTRY_MAX_ID);
    for (size_t i = 0; i < f->value_len; i++)
        if ((unsigned char)f->value[i] < 0x20 || (unsigned char)f->value[i] > 0x7e)
            return duel_error_set(err, DUEL_EFORMAT, "field %.*s: byte %zu is not printable ASCII",
                                  (int)f->name_len, f->name, i);
    memcpy(out, f->value, f->value_len);
    out[f->value_len] = '\0';
    return 0;
}

static uint32_t load_u32le(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* A little-endian i32 array of exactly count elements (count < 0: any multiple of 4 up to
 * VOTE_ENTRY_MAX_TOKENS, returned in *count). */
static int decode_i32(const vote_entry_field *f, int *count, int32_t **out, duel_error *err) {
    if (f->value_len % 4 != 0)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: %zu bytes is not a whole number of "
                              "int32", (int)f->name_len, f->name, f->value_len);
    size_t n = f->value_len / 4;
    if (*count >= 0 && n != (size_t)*count)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: %zu int32 values, expected %d",
                              (int)f->name_len, f->name, n, *count);
    if (n > VOTE_ENTRY_MAX_TOKENS)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: %zu values over the limit %d",
                              (int)f->name_len, f->name, n, VOTE_ENTRY_MAX_TOKENS);
    int32_t *a = malloc((n ? n : 1) * sizeof(int32_t));
    if (!a) return duel_error_set(err, DUEL_ENOMEM, "vote entry: out of memory");
    const unsigned char *p = (const unsigned char *)f->value;
    for (size_t i = 0; i < n; i++) a[i] = (int32_t)load_u32le(p + 4 * i);
    *count = (int)n;
    *out = a;
    return 0;
}

/* count floats as f32 (or f16 when half) little-endian; all finite. */
static int decode_floats(const vote_entry_field *f, size_t count, int half, float **out,
                         duel_error *err) {
    size_t width = half ? 2 : 4;
    if (f->value_len != count * width)
        return duel_error_set(err, DUEL_EFORMAT, "field %.*s: %zu bytes, expected %zu (%zu %s)",
                              (int)f->name_len, f->name, f->value_len, count * width, count,
                              half ? "f16" : "f32");
    float *a = malloc((count ? count : 1) * sizeof(float));
    if (!a) return duel_error_set(err, DUEL_ENOMEM, "vote entry: out of memory");
    const unsigned char *p = (const unsigned char *)f->value;
    for (size_t i = 0; i < count; i++) {
        if (half) {
            a[i] = duel_f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
        } else {
            uint32_t u = load_u32le(p + 4 * i);
            memcpy(&a[i], &u, 4);
        }
        if (!isfinite(a[i])) {
            free(a);
            return duel_error_set(err, DUEL_EFORMAT, "field %.*s: value %zu is not finite",
                                  (int)f->name_len, f->name, i);
        }
    }
    *out = a;
    return 0;
}

static int check_tokens(const char *what, const int32_t *t, int n, int vocab, duel_error *err) {
    for (int i = 0; i < n; i++)
        if (t[i] < 0 || (vocab > 0 && t[i] >= vocab))
            return duel_error_set(err, DUEL_EFORMAT, "field %s: token %d is %d, outside 0..%d", what,
                                  i, (int)t[i], vocab > 0 ? vocab - 1 : INT32_MAX);
    return 0;
}

int vote_entry_decode(const vote_entry_field *fields, int n_fields,
                      const vote_entry_limits *limits, vote_entry *e, duel_error *err) {
    memset(e, 0, sizeof *e);
    vote_entry_limits none = {0};
    const vote_entry_limits *L = limits ? limits : &none;
    if (n_fields < 0 || n_fields > VOTE_ENTRY_MAX_FIELDS)
        return duel_error_set(err, DUEL_EFORMAT, "entry has %d fields, at most %d allowed",
                              n_fields, VOTE_ENTRY_MAX_FIELDS);
    const vote_entry_field *by[F_COUNT] = {0};
    for (int i = 0; i < n_fields; i++) {
        const vote_entry_field *f = &fields[i];
        if (!f->name || (!f->value && f->value_len))
            return duel_error_set(err, DUEL_EFORMAT, "field %d is missing its name or value", i);
        for (int k = 0; k < F_COUNT; k++) {
            if (f->name_len == strlen(FIELD_NAMES[k]) &&
                memcmp(f->name, FIELD_NAMES[k], f->name_len) == 0) {
                if (by[k])
                    return duel_error_set(err, DUEL_EFORMAT, "field %s appears twice", FIELD_NAMES[k]);
                by[k] = f;
            }
        }
    }
    for (int k = 0; k < FIRST_OPTIONAL; k++)
        if (!by[k]) return duel_error_set(err, DUEL_EFORMAT, "missing field %s", FIELD_NAMES[k]);
    int64_t v;
    int rc;
    if ((rc = copy_id(by[F_VOTE_ID], e->vote_id, 0, err)) || (rc = copy_id(by[F_DUEL_ID], e->duel_id, 0, err)) ||
        (rc = copy_id(by[F_MODEL_ID], e->model_id, 1, err)) || (rc = copy_id(by[F_STRATEGY], e->strategy, 1, err)) ||
        (by[F_CONVERSATION] && (rc = copy_id(by[F_CONVERSATION], e->conversation, 1, err))))
        return rc;
    if (L->model_id && L->model_id[0] && strcmp(L->model_id, e->model_id) != 0)
        return duel_error_set(err, DUEL_EFORMAT, "model_id '%s' is not the trainer's '%s'",
                              e->model_id, L->model_id);
    if ((rc = parse_int(by[F_TS_MS], 0, INT64_MAX, &e->ts_ms, err)) ||
        (rc = parse_int(by[F_ARM], -1, INT64_MAX, &e->arm, err)) ||
        (rc = parse_int(by[F_POLICY_VERSION], -1, INT64_MAX, &e->policy_version, err)))
        return rc;
    if ((rc = parse_int(by[F_SIDE_SWAP], 0, 1, &v, err))) return rc;
    e->side_swap = (int)v;
    if (vote_choice_parse(by[F_CHOICE]->value, by[F_CHOICE]->value_len, &e->choice)) return duel_error_set(err, DUEL_EFORMAT, "field choice: not a, b, tie or both_bad");
    if ((rc = parse_int(by[F_NUM_CANDIDATES], 2, VOTE_ENTRY_MAX_CANDIDATES, &v, err))) return rc;
    e->num_candidates = (int)v;
    if ((rc = parse_int(by[F_D_FEAT], 0, 1 << 16, &v, err))) return rc;
    e->d_feat = (int)v;
    if ((rc = parse_int(by[F_NUM_HEADS], 0, 4096, &v, err))) return rc;
    e->num_heads = (int)v;
    /* d_feat 0: an unscored duel (pilaf), which carries no features and so no rewards either;
     * the consumer's ERM width does not apply to it. */
    if (e->d_feat == 0 && e->num_heads != 0)
        return duel_error_set(err, DUEL_EFORMAT, "num_heads %d without features (d_feat 0)",
                              e->num_heads);
    if (L->d_feat > 0 && e->d_feat != 0 && e->d_feat != L->d_feat)
        return duel_error_set(err, DUEL_EFORMAT, "d_feat %d is not the ERM's %d", e->d_feat, L->d_feat);
    if (L->num_heads > 0 && e->d_feat != 0 && e->num_heads != L->num_heads)
        return duel_error_set(err, DUEL_EFORMAT, "num_heads %d is not the ERM's %d", e->num_heads,
                              L->num_heads);
    const int M = e->num_candidates;
    if ((rc = parse_int(by[F_CHOSEN_IDX], 0, M - 1, &v, err))) return rc;
    e->chosen_idx = (int)v;
    if ((rc = parse_int(by[F_REJECTED_IDX], 0, M - 1, &v, err))) return rc;
    e->rejected_idx = (int)v;
    if (e->chosen_idx == e->rejected_idx)
        return duel_error_set(err, DUEL_EFORMAT, "chosen_idx and rejected_idx are both %d", e->chosen_idx);
    static const int text_fields[] = {F_GEN_PARAMS, F_PROMPT_TEXT, F_CHOSEN_TEXT, F_REJECTED_TEXT};
    for (size_t k = 0; k < sizeof text_fields / sizeof *text_fields; k++)
        if (by[text_fields[k]]->value_len > VOTE_ENTRY_MAX_TEXT)
            return duel_error_set(err, DUEL_EFORMAT, "field %s: %zu bytes over the limit %u",
                                  FIELD_NAMES[text_fields[k]], by[text_fields[k]]->value_len,
                                  VOTE_ENTRY_MAX_TEXT);
    int half = 0;
    if (by[F_FEATURES_DTYPE]) {
        const vote_entry_field *f = by[F_FEATURES_DTYPE];
        if (f->value_len == 3 && memcmp(f->value, "f16", 3) == 0) half = 1;
        else if (!(f->value_len == 3 && memcmp(f->value, "f32", 3) == 0))
            return duel_error_set(err, DUEL_EFORMAT, "field features_dtype: not f32 or f16");
    }
    int n = -1;
    if ((rc = decode_i32(by[F_PROMPT_TOKENS], &n, &e->prompt_tokens, err))) return rc;
    e->n_prompt_tokens = n;
    if (n < 1) return duel_error_set(err, DUEL_EFORMAT, "field prompt_tokens: empty prompt");
    n = -1;
    if ((rc = decode_i32(by[F_CAND_TOKENS], &n, &e->cand_tokens, err))) return rc;
    e->n_cand_tokens = n;
    n = M + 1;
    if ((rc = decode_i32(by[F_CAND_OFFSETS], &n, &e->cand_offsets, err))) return rc;
    if (e->cand_offsets[0] != 0 || e->cand_offsets[M] != e->n_cand_tokens)
        return duel_error_set(err, DUEL_EFORMAT, "field cand_offsets: must run from 0 to %d (the "
                              "cand_tokens count), got %d..%d", e->n_cand_tokens,
                              (int)e->cand_offsets[0], (int)e->cand_offsets[M]);
    for (int i = 0; i < M; i++)
        if (e->cand_offsets[i + 1] < e->cand_offsets[i])
            return duel_error_set(err, DUEL_EFORMAT, "field cand_offsets: decreases at candidate %d", i);
    if ((rc = check_tokens("prompt_tokens", e->prompt_tokens, e->n_prompt_tokens, L->vocab, err)) ||
        (rc = check_tokens("cand_tokens", e->cand_tokens, e->n_cand_tokens, L->vocab, err)))
        return rc;
    int lc, lr;
    vote_entry_candidate(e, e->chosen_idx, &lc);
    vote_entry_candidate(e, e->rejected_idx, &lr);
    if (L->max_sequence > 0 && (e->n_prompt_tokens + lc > L->max_sequence ||
                                e->n_prompt_tokens + lr > L->max_sequence))
        return duel_error_set(err, DUEL_EFORMAT, "prompt (%d tokens) and response (%d and %d) "
                              "exceed the model's %d positions", e->n_prompt_tokens, lc, lr,
                              L->max_sequence);
    if ((rc = decode_floats(by[F_FEATURES], (size_t)M * (size_t)e->d_feat, half, &e->features, err)) ||
        (rc = decode_floats(by[F_ERM_REWARDS], (size_t)M * (size_t)e->num_heads, 0, &e->erm_rewards, err)))
        return rc;
    if (by[F_REF_LOGPROBS]) {
        if ((rc = decode_floats(by[F_REF_LOGPROBS], (size_t)M, 0, &e->ref_logprobs, err))) return rc;
        /* a sum of log-probabilities; a rounding's worth above 0 is allowed */
        for (int i = 0; i < M; i++)
            if (e->ref_logprobs[i] > 1e-3f)
                return duel_error_set(err, DUEL_EFORMAT, "field ref_logprobs: value %d is %g, "
                                      "not a log-probability (<= 0)", i, (double)e->ref_logprobs[i]);
    }
    return 0;
}

/* ---- encoder ---------------------------------------------------------------------------- */

static int add_field(vote_entry_encoded *enc, const char *name, const void *value, size_t len,
                     duel_error *err) {
    if (enc->n_fields >= VOTE_ENTRY_MAX_FIELDS)
        return duel_error_set(err, DUEL_ELIMIT, "vote entry: too many fields");
    char *copy = malloc(len ? len : 1);
    if (!copy) return duel_error_set(err, DUEL_ENOMEM, "vote entry: out of memory");
    if (len) memcpy(copy, value, len);
    int i = enc->n_fields++;
    enc->buffers[i] = copy;
    enc->fields[i] = (vote_entry_field){name, strlen(name), copy, len};
    return 0;
}

static int add_int(vote_entry_encoded *enc, const char *name, long long v, duel_error *err) {
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%lld", v);
    return add_field(enc, name, buf, (size_t)n, err);
}

static int add_text(vote_entry_encoded *enc, const char *name, const char *s, duel_error *err) {
    return add_field(enc, name, s ? s : "", s ? strlen(s) : 0, err);
}

/* count 4-byte values (int32 or f32) from data, written little-endian whatever the host. */
static int add_le32(vote_entry_encoded *enc, const char *name, const void *data, size_t count,
                    duel_error *err) {
    if (count > 0 && !data)
        return duel_error_set(err, DUEL_EFORMAT, "field %s: %zu values but no array", name, count);
    unsigned char *b = malloc(count * 4 + 1);
    if (!b) return duel_error_set(err, DUEL_ENOMEM, "vote entry: out of memory");
    const unsigned char *bytes = data;
    for (size_t i = 0; i < count; i++) {
        uint32_t x;
        memcpy(&x, bytes + 4 * i, 4);
        b[4 * i] = (unsigned char)x;
        b[4 * i + 1] = (unsigned char)(x >> 8);
        b[4 * i + 2] = (unsigned char)(x >> 16);
        b[4 * i + 3] = (unsigned char)(x >> 24);
    }
    int rc = add_field(enc, name, b, count * 4, err);
    free(b);
    return rc;
}

int vote_entry_encode(const vote_entry *e, const vote_entry_texts *t, vote_entry_encoded *enc,
                      duel_error *err) {
    memset(enc, 0, sizeof *enc);
    vote_entry_texts none = {0};
    if (!t) t = &none;
    /* The shapes say how much of each array to read: check them before reading any. */
    if (e->num_candidates < 2 || e->num_candidates > VOTE_ENTRY_MAX_CANDIDATES || e->d_feat < 0 ||
        e->d_feat > 1 << 16 || e->num_heads < 0 || e->num_heads > 4096 || e->n_prompt_tokens < 0 ||
        e->n_prompt_tokens > VOTE_ENTRY_MAX_TOKENS || e->n_cand_tokens < 0 ||
        e->n_cand_tokens > VOTE_ENTRY_MAX_TOKENS)
        return duel_error_set(err, DUEL_EFORMAT, "vote entry: shape M=%d d_feat=%d heads=%d "
                              "prompt=%d candidates=%d tokens is out of range", e->num_candidates,
                              e->d_feat, e->num_heads, e->n_prompt_tokens, e->n_cand_tokens);
    const size_t M = (size_t)e->num_candidates;
    int rc = 0;
    rc = rc ? rc : add_text(enc, "vote_id", e->vote_id, err);
    rc = rc ? rc : add_text(enc, "duel_id", e->duel_id, err);
    rc = rc ? rc : add_int(enc, "ts_ms", e->ts_ms, err);
    rc = rc ? rc : add_int(enc, "arm", e->arm, err);
    rc = rc ? rc : add_int(enc, "policy_version", e->policy_version, err);
    rc = rc ? rc : add_text(enc, "strategy", e->strategy, err);
    rc = rc ? rc : add_text(enc, "choice", vote_choice_name(e->choice), err);
    rc = rc ? rc : add_int(enc, "side_swap", e->side_swap, err);
    rc = rc ? rc : add_le32(enc, "prompt_tokens", e->prompt_tokens, (size_t)e->n_prompt_tokens, err);
    rc = rc ? rc : add_le32(enc, "cand_tokens", e->cand_tokens, (size_t)e->n_cand_tokens, err);
    rc = rc ? rc : add_le32(enc, "cand_offsets", e->cand_offsets, M + 1, err);
    rc = rc ? rc : add_int(enc, "chosen_idx", e->chosen_idx, err);
    rc = rc ? rc : add_int(enc, "rejected_idx", e->rejected_idx, err);
    rc = rc ? rc : add_le32(enc, "features", e->features, M * (size_t)e->d_feat, err);
    rc = rc ? rc : add_le32(enc, "erm_rewards", e->erm_rewards, M * (size_t)e->num_heads, err);
    rc = rc ? rc : add_text(enc, "gen_params", t->gen_params ? t->gen_params : "{}", err);
    rc = rc ? rc : add_text(enc, "prompt_text", t->prompt_text, err);
    rc = rc ? rc : add_text(enc, "chosen_text", t->chosen_text, err);
    rc = rc ? rc : add_text(enc, "rejected_text", t->rejected_text, err);
    rc = rc ? rc : add_text(enc, "model_id", e->model_id, err);
    rc = rc ? rc : add_int(enc, "num_candidates", e->num_candidates, err);
    rc = rc ? rc : add_int(enc, "d_feat", e->d_feat, err);
    rc = rc ? rc : add_int(enc, "num_heads", e->num_heads, err);
    rc = rc ? rc : add_text(enc, "features_dtype", "f32", err);
    if (e->conversation[0]) rc = rc ? rc : add_text(enc, "conversation", e->conversation, err);
    if (e->ref_logprobs) rc = rc ? rc : add_le32(enc, "ref_logprobs", e->ref_logprobs, M, err);
    if (rc == 0) {
        /* What the decoder refuses is never written. */
        vote_entry check;
        rc = vote_entry_decode(enc->fields, enc->n_fields, NULL, &check, err);
        vote_entry_free(&check);
    }
    if (rc) vote_entry_encoded_free(enc);
    return rc;
}

void vote_entry_encoded_free(vote_entry_encoded *enc) {
    for (int i = 0; i < enc->n_fields; i++) free(enc->buffers[i]);
    enc->n_fields = 0;
}

const vote_entry_field *vote_entry_field_find(const vote_entry_field *fields, int n_fields,
                                              const char *name) {
    size_t n = strlen(name);
    for (int i = 0; i < n_fields; i++)
        if (fields[i].name_len == n && memcmp(fields[i].name, name, n) == 0) return &fields[i];
    return NULL;
}

/* ---- framing outside Redis ---------------------------------------------------------------- */

static void put_u32le(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

int vote_entry_pack(const vote_entry_field *fields, int n_fields, char **out, size_t *out_len,
                    duel_error *err) {
    *out = NULL;
    *out_len = 0;
    if (n_fields < 0 || n_fields > VOTE_ENTRY_MAX_FIELDS)
        return duel_error_set(err, DUEL_ELIMIT, "vote entry: %d fields, at most %d", n_fields,
                              VOTE_ENTRY_MAX_FIELDS);
    size_t total = 4;
    for (int i = 0; i < n_fields; i++) {
        if (fields[i].name_len == 0 || fields[i].name_len > VOTE_ENTRY_MAX_NAME ||
            fields[i].value_len > UINT32_MAX)
            return duel_error_set(err, DUEL_EINVAL, "vote entry: field %d cannot be framed", i);
        total += 8 + fields[i].name_len + fields[i].value_len;
    }
    unsigned char *buf = malloc(total);
    if (!buf) return duel_error_set(err, DUEL_ENOMEM, "vote entry: out of memory");
    put_u32le(buf, (uint32_t)n_fields);
    size_t o = 4;
    for (int i = 0; i < n_fields; i++) {
        const vote_entry_field *f = &fields[i];
        put_u32le(buf + o, (uint32_t)f->name_len);
        memcpy(buf + o + 4, f->name, f->name_len);
        o += 4 + f->name_len;
        put_u32le(buf + o, (uint32_t)f->value_len);
        if (f->value_len) memcpy(buf + o + 4, f->value, f->value_len);
        o += 4 + f->value_len;
    }
    *out = (char *)buf;
    *out_len = total;
    return 0;
}

int vote_entry_unpack(const void *data, size_t len, size_t *at, vote_entry_field *fields,
                      int *n_fields, duel_error *err) {
    const unsigned char *p = data;
    size_t o = *at;
    *n_fields = 0;
    if (o > len || len - o < 4)
        return duel_error_set(err, DUEL_EFORMAT, "vote entry: truncated at byte %zu", o);
    uint32_t n = load_u32le(p + o);
    o += 4;
    if (n > VOTE_ENTRY_MAX_FIELDS)
        return duel_error_set(err, DUEL_EFORMAT, "vote entry: %" PRIu32 " fields, at most %d", n,
                              VOTE_ENTRY_MAX_FIELDS);
    for (uint32_t i = 0; i < n; i++) {
        if (len - o < 4) goto truncated;
        uint32_t nl = load_u32le(p + o);
        o += 4;
        if (len - o < nl) goto truncated;
        if (nl == 0 || nl > VOTE_ENTRY_MAX_NAME || memchr(p + o, 0, nl))
            return duel_error_set(err, DUEL_EFORMAT, "vote entry: field %" PRIu32 " has a bad name "
                                  "(%" PRIu32 " bytes)", i, nl);
        fields[i].name = (const char *)p + o;
        fields[i].name_len = nl;
        o += nl;
        if (len - o < 4) goto truncated;
        uint32_t vl = load_u32le(p + o);
        o += 4;
        if (len - o < vl) goto truncated;
        fields[i].value = (const char *)p + o;
        fields[i].value_len = vl;
        o += vl;
    }
    *n_fields = (int)n;
    *at = o;
    return 0;
truncated:
    return duel_error_set(err, DUEL_EFORMAT, "vote entry: truncated at byte %zu", o);
}
