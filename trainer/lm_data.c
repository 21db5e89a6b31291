/* lm_data.c: reading and tokenizing pretraining text, SFT and preference JSONL, and the batch
 * order (see lm_data.h). */
#include "lm_data.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "file_map.h"
#include "json_util.h"
#include "utf8.h"

typedef struct growable {
    void *data;
    size_t len, cap, elem;
} growable;

static void *grow_push(growable *g) {
    if (g->len == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 1024;
        void *data = realloc(g->data, cap * g->elem);
        if (data == NULL) {
            return NULL;
        }
        g->data = data;
        g->cap = cap;
    }
    return (char *)g->data + g->elem * g->len++;
}

void lm_data_free(lm_dataset *data) {
    for (size_t i = 0; i < data->num_examples; i++) {
        free(data->examples[i].tokens);
    }
    for (size_t i = 0; i < data->num_pairs; i++) {
        free(data->pairs[i].chosen.tokens);
        free(data->pairs[i].rejected.tokens);
    }
    free(data->examples);
    free(data->pairs);
    memset(data, 0, sizeof(*data));
}

static int32_t end_token(const lm_data_options *o, bool of_turn) {
    const char *name = of_turn ? chat_template_end_of_turn(o->chat_template) : NULL;
    int32_t id = name != NULL ? tokenizer_token_id(o->tok, name) : -1;
    return id >= 0 ? id : tokenizer_token_id(o->tok, "<|endoftext|>");
}

/* Records a bad line: an error unless skipping. */
static int bad_line(lm_dataset *out, const lm_data_options *o, const char *path, long long line,
                    duel_error *err, const char *why) {
    if (!o->skip_bad_lines) {
        return duel_error_set(err, DUEL_EFORMAT, "%s:%lld: %s", path, line, why);
    }
    if (out->bad_lines < LM_DATA_BAD_LINES_KEPT) {
        out->first_bad_lines[out->bad_lines] = line;
    }
    out->bad_lines++;
    return 0;
}

typedef int (*line_fn)(void *ctx, const char *line, size_t len, long long number, duel_error *err);

/* Calls fn for every non-empty line (without its newline) of a valid-UTF-8 file. */
static int for_each_line(const char *path, lm_dataset *out, const lm_data_options *o, line_fn fn,
                         void *ctx, duel_error *err) {
    duel_file_map map;
    int rc = duel_file_map_open(path, &map, err);
    if (rc != 0) {
        return rc;
    }
    if (map.size > LM_DATA_MAX_FILE_BYTES) {
        duel_file_map_close(&map);
        return duel_error_set(err, DUEL_ELIMIT, "%s: larger than %zu bytes", path,
                              LM_DATA_MAX_FILE_BYTES);
    }
    const char *s = (const char *)map.data;
    size_t pos = 0;
    long long number = 0;
    while (rc == 0 && pos < map.size) {
        const char *nl = memchr(s + pos, '\n', map.size - pos);
        size_t len = nl ? (size_t)(nl - (s + pos)) : map.size - pos;
        number++;
        const char *line = s + pos;
        pos += len + (nl != NULL);
        if (len > 0 && line[len - 1] == '\r') {
            len--;
        }
        if (len == 0) {
            continue;
        }
        if (o->max_examples > 0 && out->num_lines >= o->max_examples) {
            break;
        }
        out->num_lines++;
        size_t bad = 0;
        if (len > LM_DATA_MAX_LINE_BYTES) {
            rc = bad_line(out, o, path, number, err, "line longer than 1 MiB");
        } else if (!duel_utf8_valid(line, len, &bad)) {
            char why[64];
            snprintf(why, sizeof(why), "invalid UTF-8 at column %zu", bad + 1);
            rc = bad_line(out, o, path, number, err, why);
        } else {
            rc = fn(ctx, line, len, number, err);
        }
    }
    duel_file_map_close(&map);
    return rc;
}

/* ---- pretraining text ---- */

typedef struct text_ctx {
    const lm_data_options *o;
    lm_dataset *out;
    const char *path;
    growable stream; /* int32 */
    int32_t eot;
} text_ctx;

static int text_line(void *vctx, const char *line, size_t len, long long number, duel_error *err) {
    text_ctx *c = vctx;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = tokenizer_encode(c->o->tok, line, len, false, &ids, &n, err);
    if (rc != 0) {
        return duel_error_prefix(err, "%s:%lld", c->path, number);
    }
    for (size_t i = 0; i <= n; i++) {
        int32_t *slot = grow_push(&c->stream);
        if (slot == NULL) {
            free(ids);
            return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", c->path);
        }
        *slot = i < n ? ids[i] : c->eot;
    }
    free(ids);
    return 0;
}

int lm_data_load_text(const char *path, const lm_data_options *o, lm_dataset *out,
                      duel_error *err) {
    memset(out, 0, sizeof(*out));
    text_ctx c = {o, out, path, {NULL, 0, 0, sizeof(int32_t)}, end_token(o, false)};
    if (c.eot < 0) {
        return duel_error_set(err, DUEL_EINVAL, "the tokenizer has no <|endoftext|> token");
    }
    int rc = for_each_line(path, out, o, text_line, &c, err);
    const int32_t *stream = c.stream.data;
    size_t window = (size_t)o->seq_len + 1, n = c.stream.len;
    size_t count = n >= window ? n / window : (n >= 2 ? 1 : 0);
    if (rc == 0 && count == 0) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: no text to train on", path);
    }
    if (rc == 0 && (out->examples = calloc(count, sizeof(lm_example))) == NULL) {
        rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
    }
    for (size_t i = 0; rc == 0 && i < count; i++) {
        size_t len = n >= window ? window : n;
        lm_example *e = &out->examples[i];
        e->tokens = malloc(len * sizeof(int32_t));
        if (e->tokens == NULL) {
            rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", path);
            break;
        }
        memcpy(e->tokens, stream + i * window, len * sizeof(int32_t));
        e->len = (int)len;
        e->loss_start = 0;
        out->num_examples = i + 1;
        out->num_tokens += (long long)len;
    }
    free(c.stream.data);
    if (rc != 0) {
        lm_data_free(out);
    }
    return rc;
}

/* ---- SFT and pairs ---- */

int lm_data_encode_prompt(const lm_data_options *o, const char *prompt, int32_t **ids, size_t *n,
                          duel_error *err) {
    chat_message message = {"user", prompt};
    char *text = NULL;
    int rc = chat_template_render(o->chat_template, &message, 1, true, &text, err);
    if (rc != 0) {
        return rc;
    }
    rc = tokenizer_encode(o->tok, text, strlen(text), true, ids, n, err);
    free(text);
    return rc;
}

/* prompt ids + response ids + end of turn, cut to seq_len + 1 tokens. Returns 1 when the
 * prompt leaves no room for a response (the example is unusable). */
static int build_example(const lm_data_options *o, const int32_t *prompt, size_t np,
                         const char *response, size_t response_len, lm_example *e, bool *truncated,
                         duel_error *err) {
    /* The template's answer prefix (" " for qa) goes in front, so that the response's first
     * token is the one the model generates after the prompt. */
    const char *prefix = chat_template_answer_prefix(o->chat_template);
    size_t np_text = strlen(prefix);
    char *text = malloc(np_text + response_len + 1);
    if (text == NULL) {
        return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    }
    memcpy(text, prefix, np_text);
    memcpy(text + np_text, response, response_len);
    text[np_text + response_len] = '\0';
    int32_t *ids = NULL;
    size_t nr = 0;
    int rc = tokenizer_encode(o->tok, text, np_text + response_len, false, &ids, &nr, err);
    free(text);
    if (rc != 0) {
        return rc;
    }
    size_t total = np + nr + 1, limit = (size_t)o->seq_len + 1;
    *truncated = total > limit;
    if (np + 1 >= limit) {
        free(ids);
        return 1;
    }
    size_t len = total < limit ? total : limit;
    e->tokens = malloc(len * sizeof(int32_t));
    if (e->tokens == NULL) {
        free(ids);
        return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    }
    memcpy(e->tokens, prompt, np * sizeof(int32_t));
    for (size_t i = np; i < len; i++) {
        e->tokens[i] = i - np < nr ? ids[i - np] : end_token(o, true);
    }
    free(ids);
    e->len = (int)len;
    e->loss_start = (int)np - 1; /* the first target is the first response token */
    return 0;
}

typedef struct jsonl_ctx {
    const lm_data_options *o;
    lm_dataset *out;
    const char *path;
    growable items; /* lm_example or lm_pair */
    bool pairs;
} jsonl_ctx;

static int get_text(const json_t *obj, const char *key, const char **s, size_t *len,
                    char *why, size_t cap) {
    const json_t *v = json_object_get(obj, key);
    if (!json_is_string(v)) {
        snprintf(why, cap, "\"%s\" is %s", key, v == NULL ? "missing" : "not a string");
        return -1;
    }
    *s = json_string_value(v);
    *len = json_string_length(v);
    if (*len == 0 && strcmp(key, "prompt") != 0) {
        snprintf(why, cap, "\"%s\" is empty", key);
        return -1;
    }
    if (memchr(*s, '\0', *len) != NULL) {
        snprintf(why, cap, "\"%s\" contains a NUL character", key);
        return -1;
    }
    return 0;
}

static int jsonl_line(void *vctx, const char *line, size_t len, long long number,
                      duel_error *err) {
    jsonl_ctx *c = vctx;
    json_t *obj = NULL;
    duel_error parse_err = {0};
    char why[DUEL_ERROR_MESSAGE_MAX];
    if (duel_json_parse(line, len, "line", &obj, &parse_err) != 0) {
        snprintf(why, sizeof(why), "malformed JSON: %.900s", parse_err.message);
        return bad_line(c->out, c->o, c->path, number, err, why);
    }
    const char *prompt = NULL, *a = NULL, *b = NULL;
    size_t prompt_len = 0, a_len = 0, b_len = 0;
    int rc = 0;
    if (!json_is_object(obj)) {
        snprintf(why, sizeof(why), "not a JSON object");
        rc = -1;
    } else if (get_text(obj, "prompt", &prompt, &prompt_len, why, sizeof(why)) != 0 ||
               get_text(obj, c->pairs ? "chosen" : "response", &a, &a_len, why, sizeof(why)) != 0 ||
               (c->pairs && get_text(obj, "rejected", &b, &b_len, why, sizeof(why)) != 0)) {
        rc = -1;
    }
    if (rc != 0) {
        json_decref(obj);
        return bad_line(c->out, c->o, c->path, number, err, why);
    }
    int32_t *pids = NULL;
    size_t np = 0;
    rc = lm_data_encode_prompt(c->o, prompt, &pids, &np, err);
    if (rc != 0) {
        json_decref(obj);
        return duel_error_prefix(err, "%s:%lld", c->path, number);
    }
    lm_example ea = {0}, eb = {0};
    bool ta = false, tb = false;
    rc = build_example(c->o, pids, np, a, a_len, &ea, &ta, err);
    if (rc == 0 && c->pairs) {
        rc = build_example(c->o, pids, np, b, b_len, &eb, &tb, err);
    }
    free(pids);
    json_decref(obj);
    if (rc < 0) {
        free(ea.tokens);
        return duel_error_prefix(err, "%s:%lld", c->path, number);
    }
    if (rc == 1) {
        free(ea.tokens);
        free(eb.tokens);
        return bad_line(c->out, c->o, c->path, number, err,
                        "the prompt fills the whole sequence length");
    }
    c->out->truncated += ta || tb;
    c->out->num_tokens += ea.len + eb.len;
    void *slot = grow_push(&c->items);
    if (slot == NULL) {
        free(ea.tokens);
        free(eb.tokens);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", c->path);
    }
    if (c->pairs) {
        *(lm_pair *)slot = (lm_pair){ea, eb};
    } else {
        *(lm_example *)slot = ea;
    }
    return 0;
}

static int load_jsonl(const char *path, const lm_data_options *o, lm_dataset *out, bool pairs,
                      duel_error *err) {
    memset(out, 0, sizeof(*out));
    if (end_token(o, true) < 0) {
        return duel_error_set(err, DUEL_EINVAL, "the tokenizer has no end-of-turn token");
    }
    jsonl_ctx c = {o, out, path, {NULL, 0, 0, pairs ? sizeof(lm_pair) : sizeof(lm_example)}, pairs};
    int rc = for_each_line(path, out, o, jsonl_line, &c, err);
    if (pairs) {
        out->pairs = c.items.data;
        out->num_pairs = c.items.len;
    } else {
        out->examples = c.items.data;
        out->num_examples = c.items.len;
    }
    if (rc == 0 && c.items.len == 0) {
        rc = duel_error_set(err, DUEL_EFORMAT, "%s: no usable lines", path);
    }
    if (rc != 0) {
        lm_data_free(out);
    }
    return rc;
}

int lm_data_load_sft(const char *path, const lm_data_options *o, lm_dataset *out,
                     duel_error *err) {
    return load_jsonl(path, o, out, false, err);
}

int lm_data_load_pairs(const char *path, const lm_data_options *o, lm_dataset *out,
                       duel_error *err) {
    return load_jsonl(path, o, out, true, err);
}

/* ---- batches ---- */

int lm_batch_init(lm_batch *b, int rows, int seq_len, duel_error *err) {
    memset(b, 0, sizeof(*b));
    size_t n = (size_t)rows * (size_t)seq_len;
    b->tokens = malloc(n * sizeof(int32_t));
    b->targets = malloc(n * sizeof(int32_t));
    b->mask = malloc(n * sizeof(float));
    if (b->tokens == NULL || b->targets == NULL || b->mask == NULL) {
        lm_batch_free(b);
        return duel_error_set(err, DUEL_ENOMEM, "out of memory for a %d x %d batch", rows, seq_len);
    }
    b->capacity_rows = rows;
    b->capacity_len = seq_len;
    return 0;
}

void lm_batch_free(lm_batch *b) {
    free(b->tokens);
    free(b->targets);
    free(b->mask);
    memset(b, 0, sizeof(*b));
}

void lm_batch_fill(lm_batch *b, const lm_example *const *rows, int num_rows) {
    int T = 1;
    for (int r = 0; r < num_rows; r++) {
        if (rows[r]->len - 1 > T) {
            T = rows[r]->len - 1;
        }
    }
    if (T > b->capacity_len) {
        T = b->capacity_len;
    }
    b->batch_size = num_rows;
    b->seq_len = T;
    b->loss_tokens = 0;
    for (int r = 0; r < num_rows; r++) {
        const lm_example *e = rows[r];
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)r * T + t;
            bool inside = t + 1 < e->len;
            b->tokens[i] = t < e->len ? e->tokens[t] : 0;
            b->targets[i] = inside ? e->tokens[t + 1] : -100;
            b->mask[i] = inside && t >= e->loss_start ? 1.0f : 0.0f;
            b->loss_tokens += b->mask[i];
        }
    }
}

int lm_order_init(lm_order *order, const lm_dataset *data, int batch_size, uint64_t seed,
                  duel_error *err) {
    memset(order, 0, sizeof(*order));
    if (data->num_examples == 0 || batch_size <= 0) {
        return duel_error_set(err, DUEL_EINVAL, "no examples or a batch size <= 0");
    }
    order->order = malloc(data->num_examples * sizeof(size_t));
    if (order->order == NULL) {
        return duel_error_set(err, DUEL_ENOMEM, "out of memory");
    }
    order->num_examples = data->num_examples;
    order->batch_size = batch_size;
    order->batches_per_epoch = (data->num_examples + (size_t)batch_size - 1) / (size_t)batch_size;
    order->epoch = -1;
    order->seed = seed;
    return 0;
}

void lm_order_free(lm_order *order) {
    free(order->order);
    memset(order, 0, sizeof(*order));
}


static void shuffle(size_t *a, size_t n, duel_rng *rng) {
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)duel_rng_below(rng, i);
        size_t t = a[i - 1];
        a[i - 1] = a[j];
        a[j] = t;
    }
}

static void sort_by_length(size_t *a, size_t n, const lm_dataset *data) {
    /* insertion sort into length order (stable and deterministic; groups are small) */
    for (size_t i = 1; i < n; i++) {
        size_t x = a[i];
        size_t j = i;
        while (j > 0 && data->examples[a[j - 1]].len > data->examples[x].len) {
            a[j] = a[j - 1];
            j--;
        }
        a[j] = x;
    }
}

static void make_epoch(lm_order *o, const lm_dataset *data, long long epoch) {
    duel_rng rng;
    duel_rng_seed(&rng, o->seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(epoch + 1)));
    for (size_t i = 0; i < o->num_examples; i++) {
        o->order[i] = i;
    }
    shuffle(o->order, o->num_examples, &rng);
    size_t group = (size_t)o->batch_size * 64;
    for (size_t g = 0; g < o->num_examples; g += group) {
        size_t n = o->num_examples - g < group ? o->num_examples - g : group;
        sort_by_length(o->order + g, n, data);
    }
    /* shuffle whole batches (the last, possibly partial, batch stays last) */
    size_t full = o->num_examples / (size_t)o->batch_size;
    size_t *perm = malloc(full * sizeof(size_t)), *copy = malloc(full * (size_t)o->batch_size * sizeof(size_t));
    if (perm != NULL && copy != NULL) {
        for (size_t i = 0; i < full; i++) {
            perm[i] = i;
        }
        shuffle(perm, full, &rng);
        for (size_t i = 0; i < full; i++) {
            memcpy(copy + i * (size_t)o->batch_size, o->order + perm[i] * (size_t)o->batch_size,
                   (size_t)o->batch_size * sizeof(size_t));
        }
        memcpy(o->order, copy, full * (size_t)o->batch_size * sizeof(size_t));
    }
    free(perm);
    free(copy);
    o->epoch = epoch;
}

void lm_order_batch(lm_order *o, const lm_dataset *data, long long k, const lm_example **rows,
                    int *num_rows) {
    long long epoch = k / (long long)o->batches_per_epoch;
    size_t b = (size_t)(k % (long long)o->batches_per_epoch);
    if (epoch != o->epoch) {
        make_epoch(o, data, epoch);
    }
    size_t start = b * (size_t)o->batch_size;
    size_t n = o->num_examples - start < (size_t)o->batch_size ? o->num_examples - start
                                                               : (size_t)o->batch_size;
    for (size_t i = 0; i < n; i++) {
        rows[i] = &data->examples[o->order[start + i]];
    }
    *num_rows = (int)n;
}
