/* tokenizer.c: loading Hugging Face tokenizer.json files for byte-level BPE and encoding /
 * decoding exactly as the `tokenizers` library does (see tokenizer.h).
 *
 * Encoding follows the library's pipeline: (1) split the text on added tokens that are not
 * "normalized" (leftmost-longest match; special ones only when parse_special), (2) normalize the
 * rest (NFC or nothing), (3) split that on the "normalized" added tokens, (4) pre-tokenize each
 * remaining section (a chain of Digits / Split(known regex) / ByteLevel steps), (5) map each
 * piece's bytes to the GPT-2 byte alphabet and run BPE: repeatedly merge the adjacent pair of
 * lowest merge rank (leftmost on ties). BPE works on ids: a merge (left id, right id) -> (rank,
 * merged id) lives in a hash map, as does the vocabulary (token string -> id).
 *
 * Invariants after load: every id in [0, vocab_size) either names one token (model vocabulary or
 * added token) or is a hole; every merge's parts and result are in the vocabulary; the struct is
 * never written again, so it may be shared by threads. */
#include "tokenizer.h"

#include <stdlib.h>
#include <string.h>

#include "json_util.h"
#include "file_map.h"
#include "tokenizer_internal.h"
#include "unicode_tables.h"
#include "utf8.h"

/* Largest id + 1 we accept (Llama 3 has 128,256; Gemma 256k): guards allocations. */
#define TOKENIZER_MAX_VOCAB (1 << 22)
/* Ids may leave holes (ids naming no token), but not more than this many. */
#define TOKENIZER_MAX_HOLES 65536
#define TOKENIZER_MAX_MERGES (1 << 23)
#define TOKENIZER_MAX_ADDED 65536
/* Longest token string, in bytes. */
#define TOKENIZER_MAX_TOKEN_BYTES 65536
/* Pre-tokenizer steps in a Sequence. */
#define TOKENIZER_MAX_STEPS 8

typedef enum pretok_step_kind { STEP_DIGITS, STEP_SPLIT, STEP_BYTE_LEVEL } pretok_step_kind;

typedef struct pretok_step {
    pretok_step_kind kind;
    bool individual_digits;          /* STEP_DIGITS */
    tokenizer_split_pattern pattern; /* STEP_SPLIT, or STEP_BYTE_LEVEL with use_regex */
    bool use_regex;                  /* STEP_BYTE_LEVEL */
    bool add_prefix_space;           /* STEP_BYTE_LEVEL */
} pretok_step;

typedef struct added_token {
    const char *content; /* as written in the file */
    size_t len;
    const char *match; /* what is searched for: content, or its normalized form */
    size_t match_len;
    int32_t id;
    bool special, single_word, lstrip, rstrip, normalized;
} added_token;

typedef struct token_entry {
    const char *text; /* the token string as in the file (byte-level alphabet for BPE tokens) */
    const char *bytes; /* what it decodes to */
    uint32_t text_len, bytes_len;
    int32_t added; /* index into added tokens, or -1 */
    bool present;
} token_entry;

typedef struct string_map_slot {
    const char *key;
    uint32_t len;
    int32_t value;
} string_map_slot;

typedef struct merge_slot {
    uint64_t key; /* left << 32 | right; UINT64_MAX when empty */
    int32_t rank, merged;
} merge_slot;

struct tokenizer {
    int32_t vocab_size;
    token_entry *tokens;
    string_map_slot *vocab_map; /* model vocabulary and added tokens: text -> id */
    size_t vocab_map_cap;
    merge_slot *merges;
    size_t merges_cap;
    added_token *added;
    size_t n_added;
    bool has_normalized_added, has_plain_added;
    bool added_first_byte[256]; /* bytes an added token's match text starts with */
    int32_t byte_token[256]; /* id of the one-character token of each byte, or -1 */
    char byte_text[256][3];  /* UTF-8 of each byte's alphabet character */
    uint8_t byte_text_len[256];
    int32_t unk_id;          /* -1 when there is none */
    bool ignore_merges;
    bool nfc;
    pretok_step steps[TOKENIZER_MAX_STEPS];
    size_t n_steps;
    char *arena; /* all strings */
    size_t arena_len, arena_cap;
};

/* ---- byte-level alphabet ------------------------------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + k. */
static uint32_t byte_to_cp(unsigned b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return b;
    unsigned k = 0;
    for (unsigned x = 0; x < b; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) k++;
    return 256 + k;
}

size_t tokenizer_byte_level_string(const unsigned char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) o += (size_t)duel_utf8_encode(byte_to_cp(s[i]), out + o);
    out[o] = '\0';
    return o;
}

/* The byte a code point of the alphabet stands for, or -1. */
static int cp_to_byte(uint32_t cp) {
    if ((cp >= '!' && cp <= '~') || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68) return -1;
    unsigned k = 0;
    for (unsigned x = 0; x < 256; x++)
        if (!((x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) {
            if (k == cp - 256) return (int)x;
            k++;
        }
    return -1;
}

/* ---- hash maps ----------------------------------------------------------------------------- */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t table_cap(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    return cap;
}

static int32_t vocab_find(const tokenizer *tok, const char *s, size_t n) {
    if (!tok->vocab_map_cap) return -1;
    size_t mask = tok->vocab_map_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        const string_map_slot *slot = &tok->vocab_map[i];
        if (!slot->key) return -1;
        if (slot->len == n && memcmp(slot->key, s, n) == 0) return slot->value;
    }
}

/* Inserts; returns the existing id when the key is already there, else -1. */
static int32_t vocab_insert(tokenizer *tok, const char *s, size_t n, int32_t id) {
    size_t mask = tok->vocab_map_cap - 1;
    for (size_t i = hash_bytes(s, n) & mask;; i = (i + 1) & mask) {
        string_map_slot *slot = &tok->vocab_map[i];
        if (!slot->key) {
            slot->key = s;
            slot->len = (uint32_t)n;
            slot->value = id;
            return -1;
        }
        if (slot->len == n && memcmp(slot->key, s, n) == 0) return slot->value;
    }
}

static const merge_slot *merge_find(const tokenizer *tok, int32_t left, int32_t right) {
    if (!tok->merges_cap) return NULL;
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t mask = tok->merges_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        const merge_slot *slot = &tok->merges[i];
        if (slot->key == UINT64_MAX) return NULL;
        if (slot->key == key) return slot;
    }
}

/* Inserts or overwrites: when a merge is listed twice its last rank counts, as in HF (which
 * collects the list into a hash map). */
static void merge_insert(tokenizer *tok, int32_t left, int32_t right, int32_t rank, int32_t merged) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t mask = tok->merges_cap - 1;
    for (size_t i = hash_u64(key) & mask;; i = (i + 1) & mask) {
        merge_slot *slot = &tok->merges[i];
        if (slot->key == UINT64_MAX || slot->key == key) {
            slot->key = key;
            slot->rank = rank;
            slot->merged = merged;
            return;
        }
    }
}

/* ---- loading ------------------------------------------------------------------------------- */

static const char *arena_add(tokenizer *tok, const char *s, size_t n) {
    /* The arena is sized before any string is added, so pointers into it stay valid. */
    if (tok->arena_len + n + 1 > tok->arena_cap) return NULL;
    char *p = tok->arena + tok->arena_len;
    if (n) memcpy(p, s, n);
    p[n] = 0;
    tok->arena_len += n + 1;
    return p;
}

/* Byte-level decoding of a token string: each character of the alphabet is its byte; a token
 * with any character outside the alphabet decodes to its own UTF-8, as HF's decoder does. */
static size_t byte_level_decode(const char *s, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = tokenizer_cp_at((const unsigned char *)s, n, i, &cp);
        int b = cp_to_byte(cp);
        if (b < 0) {
            memcpy(out, s, n);
            return n;
        }
        out[w++] = (char)b;
        i += len;
    }
    return w;
}

static int load_fail(tokenizer *tok, int rc) {
    tokenizer_free(tok);
    return rc;
}

static bool json_bool_or(const json_t *obj, const char *key, bool dflt) {
    json_t *v = json_object_get(obj, key);
    return json_is_boolean(v) ? json_is_true(v) : dflt;
}

/* Checks that an optional boolean key is a boolean. */
static int check_bool(const json_t *obj, const char *key, const char *where, const char *source,
                      duel_error *err) {
    json_t *v = json_object_get(obj, key);
    if (v && !json_is_null(v) && !json_is_boolean(v))
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s.%s must be true or false", source, where,
                              key);
    return DUEL_OK;
}

static int parse_byte_level(const json_t *cfg, const char *where, bool in_sequence, pretok_step *step,
                            const char *source, duel_error *err) {
    int rc;
    if ((rc = check_bool(cfg, "use_regex", where, source, err)) ||
        (rc = check_bool(cfg, "add_prefix_space", where, source, err)) ||
        (rc = check_bool(cfg, "trim_offsets", where, source, err)))
        return rc;
    (void)in_sequence;
    step->kind = STEP_BYTE_LEVEL;
    step->use_regex = json_bool_or(cfg, "use_regex", true);
    step->add_prefix_space = json_bool_or(cfg, "add_prefix_space", false);
    step->pattern = TOKENIZER_PATTERN_GPT2;
    return DUEL_OK;
}

static int parse_pretok_step(const json_t *cfg, const char *where, pretok_step *step,
                             const char *source, duel_error *err) {
    if (!json_is_object(cfg))
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s must be an object", source, where);
    const char *type = json_string_value(json_object_get(cfg, "type"));
    if (!type)
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s.type must be a string", source, where);
    if (strcmp(type, "ByteLevel") == 0) return parse_byte_level(cfg, where, true, step, source, err);
    if (strcmp(type, "Digits") == 0) {
        int rc = check_bool(cfg, "individual_digits", where, source, err);
        if (rc) return rc;
        step->kind = STEP_DIGITS;
        step->individual_digits = json_bool_or(cfg, "individual_digits", false);
        return DUEL_OK;
    }
    if (strcmp(type, "Split") == 0) {
        const json_t *pattern = json_object_get(cfg, "pattern");
        const char *regex = json_string_value(json_object_get(pattern, "Regex"));
        if (!regex)
            return duel_error_set(err, DUEL_EUNSUPPORTED,
                                  "%s: %s: only Split with a {\"Regex\": ...} pattern is supported",
                                  source, where);
        const char *behavior = json_string_value(json_object_get(cfg, "behavior"));
        if (!behavior || strcmp(behavior, "Isolated") != 0)
            return duel_error_set(err, DUEL_EUNSUPPORTED,
                                  "%s: %s: Split behavior \"%s\" is not supported (only Isolated)",
                                  source, where, behavior ? behavior : "(missing)");
        if (json_bool_or(cfg, "invert", false))
            return duel_error_set(err, DUEL_EUNSUPPORTED, "%s: %s: Split with invert is not supported",
                                  source, where);
        step->kind = STEP_SPLIT;
        if (strcmp(regex, tokenizer_pattern_gpt2) == 0) step->pattern = TOKENIZER_PATTERN_GPT2;
        else if (strcmp(regex, tokenizer_pattern_llama3) == 0) step->pattern = TOKENIZER_PATTERN_LLAMA3;
        else if (strcmp(regex, tokenizer_pattern_qwen2) == 0) step->pattern = TOKENIZER_PATTERN_QWEN2;
        else
            return duel_error_set(err, DUEL_EUNSUPPORTED,
                                  "%s: %s: unsupported Split regex %.400s (known: the GPT-2, Llama 3 "
                                  "and Qwen2 patterns)",
                                  source, where, regex);
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EUNSUPPORTED,
                          "%s: %s: pre-tokenizer type \"%s\" is not supported (ByteLevel, Split, "
                          "Digits, Sequence)",
                          source, where, type);
}

static int parse_pre_tokenizer(tokenizer *tok, const json_t *cfg, const char *source,
                               duel_error *err) {
    if (!json_is_object(cfg))
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: pre_tokenizer is missing; only byte-level BPE (a ByteLevel "
                              "pre-tokenizer) is supported",
                              source);
    const char *type = json_string_value(json_object_get(cfg, "type"));
    if (type && strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(cfg, "pretokenizers");
        if (!json_is_array(list) || json_array_size(list) == 0 ||
            json_array_size(list) > TOKENIZER_MAX_STEPS)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: pre_tokenizer.pretokenizers must be an array of 1 to %d "
                                  "pre-tokenizers",
                                  source, TOKENIZER_MAX_STEPS);
        for (size_t i = 0; i < json_array_size(list); i++) {
            char where[64];
            snprintf(where, sizeof where, "pre_tokenizer.pretokenizers[%zu]", i);
            int rc = parse_pretok_step(json_array_get(list, i), where, &tok->steps[i], source, err);
            if (rc) return rc;
        }
        tok->n_steps = json_array_size(list);
    } else {
        int rc = parse_pretok_step(cfg, "pre_tokenizer", &tok->steps[0], source, err);
        if (rc) return rc;
        tok->n_steps = 1;
    }
    for (size_t i = 0; i < tok->n_steps; i++) {
        bool is_last = i + 1 == tok->n_steps;
        if ((tok->steps[i].kind == STEP_BYTE_LEVEL) != is_last)
            return duel_error_set(err, DUEL_EUNSUPPORTED,
                                  "%s: pre_tokenizer: a ByteLevel pre-tokenizer must come last, "
                                  "exactly once (only byte-level BPE is supported)",
                                  source);
    }
    return DUEL_OK;
}

static int parse_normalizer(tokenizer *tok, const json_t *cfg, const char *source, duel_error *err) {
    if (!cfg || json_is_null(cfg)) return DUEL_OK;
    const char *type = json_string_value(json_object_get(cfg, "type"));
    if (type && strcmp(type, "NFC") == 0) {
        tok->nfc = true;
        return DUEL_OK;
    }
    if (type && strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(cfg, "normalizers");
        if (json_is_array(list) && json_array_size(list) == 0) return DUEL_OK;
        if (json_is_array(list) && json_array_size(list) == 1)
            return parse_normalizer(tok, json_array_get(list, 0), source, err);
    }
    return duel_error_set(err, DUEL_EUNSUPPORTED,
                          "%s: normalizer \"%s\" is not supported (only none or NFC)", source,
                          type ? type : "(no type)");
}

/* Sums the bytes the arena needs: every token string twice (text and decoded bytes) plus
 * normalized added-token contents (at most 3x under NFC), each with a terminator. */
static size_t arena_bytes_needed(const json_t *vocab, const json_t *added) {
    size_t total = 0;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) { total += 2 * (strlen(key) + 1); }
    size_t i;
    json_array_foreach(added, i, value) {
        const char *c = json_string_value(json_object_get(value, "content"));
        if (c) total += 6 * (json_string_length(json_object_get(value, "content")) + 1);
    }
    return total + 16;
}

static int set_token(tokenizer *tok, int32_t id, const char *text, size_t len, int32_t added_index,
                     const char *source, const char *where, duel_error *err) {
    token_entry *e = &tok->tokens[id];
    if (e->present)
        return duel_error_set(err, DUEL_EFORMAT, "%s: %s: id %d is used by both \"%.100s\" and \"%.100s\"",
                              source, where, id, e->text, text);
    e->present = true;
    e->text = text;
    e->text_len = (uint32_t)len;
    e->added = added_index;
    if (added_index >= 0) {
        e->bytes = text;
        e->bytes_len = (uint32_t)len;
    } else {
        char *out = tok->arena + tok->arena_len;
        size_t n = byte_level_decode(text, len, out);
        out[n] = 0;
        tok->arena_len += n + 1;
        e->bytes = out;
        e->bytes_len = (uint32_t)n;
    }
    return DUEL_OK;
}

static int parse_added_tokens(tokenizer *tok, const json_t *list, const char *source,
                              duel_error *err) {
    if (!list || json_is_null(list)) return DUEL_OK;
    if (!json_is_array(list))
        return duel_error_set(err, DUEL_EFORMAT, "%s: added_tokens must be an array", source);
    size_t n = json_array_size(list);
    if (n > TOKENIZER_MAX_ADDED)
        return duel_error_set(err, DUEL_ELIMIT, "%s: %zu added_tokens (at most %d)", source, n,
                              TOKENIZER_MAX_ADDED);
    tok->added = calloc(n ? n : 1, sizeof *tok->added);
    if (!tok->added) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
    for (size_t i = 0; i < n; i++) {
        const json_t *t = json_array_get(list, i);
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!json_is_object(t))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s must be an object", source, where);
        const json_t *content = json_object_get(t, "content");
        const json_t *id = json_object_get(t, "id");
        if (!json_is_string(content) || json_string_length(content) == 0 ||
            json_string_length(content) > TOKENIZER_MAX_TOKEN_BYTES)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: %s.content must be a non-empty string of at most %d bytes",
                                  source, where, TOKENIZER_MAX_TOKEN_BYTES);
        if (!json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= TOKENIZER_MAX_VOCAB)
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.id must be an integer in [0, %d)",
                                  source, where, TOKENIZER_MAX_VOCAB);
        static const char *const flags[] = {"special", "single_word", "lstrip", "rstrip",
                                            "normalized"};
        for (size_t k = 0; k < 5; k++) {
            int rc = check_bool(t, flags[k], where, source, err);
            if (rc) return rc;
        }
        added_token *a = &tok->added[i];
        a->id = (int32_t)json_integer_value(id);
        a->special = json_bool_or(t, "special", false);
        a->single_word = json_bool_or(t, "single_word", false);
        a->lstrip = json_bool_or(t, "lstrip", false);
        a->rstrip = json_bool_or(t, "rstrip", false);
        a->normalized = json_bool_or(t, "normalized", !a->special);
        a->len = json_string_length(content);
        a->content = arena_add(tok, json_string_value(content), a->len);
        if (!a->content || memchr(a->content, 0, a->len))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.content holds a NUL character", source,
                                  where);
        if (!duel_utf8_valid(a->content, a->len, NULL))
            return duel_error_set(err, DUEL_EFORMAT, "%s: %s.content is not valid UTF-8", source, where);
        a->match = a->content;
        a->match_len = a->len;
        if (a->normalized && tok->nfc) {
            unsigned char *norm;
            size_t norm_len;
            if (!tokenizer_nfc((const unsigned char *)a->content, a->len, &norm, &norm_len))
                return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
            if (norm) {
                a->match = arena_add(tok, (const char *)norm, norm_len);
                a->match_len = norm_len;
                free(norm);
                if (!a->match) return duel_error_set(err, DUEL_ENOMEM, "%s: arena overflow", source);
            }
        }
        tok->added_first_byte[(unsigned char)a->match[0]] = true;
        if (a->normalized) tok->has_normalized_added = true;
        else tok->has_plain_added = true;
        tok->n_added = i + 1;
    }
    return DUEL_OK;
}

static int parse_merge(const json_t *m, size_t i, const char **a, size_t *alen, const char **b,
                       size_t *blen, const char *source, duel_error *err) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        /* "a b": exactly one space separating two non-empty parts */
        if (!sp || sp == s || sp + 1 == s + n || memchr(sp + 1, ' ', (size_t)(s + n - sp - 1)))
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: model.merges[%zu] \"%.100s\" is not two tokens separated by "
                                  "one space",
                                  source, i, s);
        *a = s;
        *alen = (size_t)(sp - s);
        *b = sp + 1;
        *blen = (size_t)(s + n - sp - 1);
        return DUEL_OK;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *alen = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *blen = json_string_length(json_array_get(m, 1));
        return DUEL_OK;
    }
    return duel_error_set(err, DUEL_EFORMAT,
                          "%s: model.merges[%zu] must be a string \"a b\" or a pair [\"a\", \"b\"]",
                          source, i);
}

static int parse_merges(tokenizer *tok, const json_t *merges, const char *source, duel_error *err) {
    if (!json_is_array(merges))
        return duel_error_set(err, DUEL_EFORMAT, "%s: model.merges must be an array", source);
    size_t n = json_array_size(merges);
    if (n > TOKENIZER_MAX_MERGES)
        return duel_error_set(err, DUEL_ELIMIT, "%s: model.merges has %zu entries (at most %d)",
                              source, n, TOKENIZER_MAX_MERGES);
    tok->merges_cap = table_cap(n);
    tok->merges = malloc(tok->merges_cap * sizeof *tok->merges);
    if (!tok->merges) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
    for (size_t i = 0; i < tok->merges_cap; i++) tok->merges[i].key = UINT64_MAX;
    char *joined = NULL;
    size_t joined_cap = 0;
    int rc = DUEL_OK;
    for (size_t i = 0; i < n; i++) {
        const char *a = NULL, *b = NULL;
        size_t alen = 0, blen = 0;
        if ((rc = parse_merge(json_array_get(merges, i), i, &a, &alen, &b, &blen, source, err)))
            break;
        int32_t ia = vocab_find(tok, a, alen), ib = vocab_find(tok, b, blen);
        if (ia < 0 || ib < 0 || tok->tokens[ia].added >= 0 || tok->tokens[ib].added >= 0) {
            rc = duel_error_set(err, DUEL_EFORMAT,
                                "%s: model.merges[%zu] refers to \"%.*s\", which is not in model.vocab",
                                source, i, ia < 0 ? (int)alen : (int)blen, ia < 0 ? a : b);
            break;
        }
        if (alen + blen > joined_cap) {
            joined_cap = (alen + blen) * 2;
            char *p = realloc(joined, joined_cap);
            if (!p) {
                rc = duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
                break;
            }
            joined = p;
        }
        memcpy(joined, a, alen);
        memcpy(joined + alen, b, blen);
        int32_t merged = vocab_find(tok, joined, alen + blen);
        if (merged < 0 || tok->tokens[merged].added >= 0) {
            rc = duel_error_set(err, DUEL_EFORMAT,
                                "%s: model.merges[%zu]: the merged token \"%.*s%.*s\" is not in "
                                "model.vocab",
                                source, i, (int)alen, a, (int)blen, b);
            break;
        }
        merge_insert(tok, ia, ib, (int32_t)i, merged);
    }
    free(joined);
    return rc;
}

static int load_json(tokenizer *tok, const json_t *root, const char *source, duel_error *err) {
    if (!json_is_object(root))
        return duel_error_set(err, DUEL_EFORMAT, "%s: the top level must be a JSON object", source);
    const json_t *model = json_object_get(root, "model");
    if (!json_is_object(model))
        return duel_error_set(err, DUEL_EFORMAT, "%s: \"model\" is missing or not an object", source);
    const char *model_type = json_string_value(json_object_get(model, "type"));
    if (model_type && strcmp(model_type, "BPE") != 0)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: model.type is \"%s\"; only \"BPE\" is supported", source, model_type);
    if (!model_type && !json_object_get(model, "merges"))
        return duel_error_set(err, DUEL_EFORMAT, "%s: model.type is missing (expected \"BPE\")", source);
    const json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_object(vocab))
        return duel_error_set(err, DUEL_EFORMAT, "%s: model.vocab is missing or not an object", source);
    if (json_bool_or(model, "byte_fallback", false))
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: model.byte_fallback is set; only byte-level BPE is supported", source);
    int rc;
    if ((rc = check_bool(model, "ignore_merges", "model", source, err))) return rc;
    tok->ignore_merges = json_bool_or(model, "ignore_merges", false);
    const char *suffixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t k = 0; k < 2; k++) {
        const json_t *v = json_object_get(model, suffixes[k]);
        if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0))
            return duel_error_set(err, DUEL_EUNSUPPORTED, "%s: model.%s is not supported", source,
                                  suffixes[k]);
    }
    const json_t *decoder = json_object_get(root, "decoder");
    const char *decoder_type = json_string_value(json_object_get(decoder, "type"));
    if (!decoder_type || strcmp(decoder_type, "ByteLevel") != 0)
        return duel_error_set(err, DUEL_EUNSUPPORTED,
                              "%s: decoder is \"%s\"; only ByteLevel is supported", source,
                              decoder_type ? decoder_type : "(missing)");
    if ((rc = parse_normalizer(tok, json_object_get(root, "normalizer"), source, err))) return rc;
    if ((rc = parse_pre_tokenizer(tok, json_object_get(root, "pre_tokenizer"), source, err))) return rc;

    const json_t *added = json_object_get(root, "added_tokens");
    size_t n_vocab = json_object_size(vocab);
    if (n_vocab == 0) return duel_error_set(err, DUEL_EFORMAT, "%s: model.vocab is empty", source);
    if (n_vocab > TOKENIZER_MAX_VOCAB)
        return duel_error_set(err, DUEL_ELIMIT, "%s: model.vocab has %zu tokens (at most %d)", source,
                              n_vocab, TOKENIZER_MAX_VOCAB);
    tok->arena_cap = arena_bytes_needed(vocab, json_is_array(added) ? added : NULL);
    tok->arena = malloc(tok->arena_cap);
    if (!tok->arena) return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
    if ((rc = parse_added_tokens(tok, added, source, err))) return rc;

    /* Ids: the largest decides the table size; holes are limited. */
    long long max_id = -1;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)vocab, key, value) {
        if (!json_is_integer(value) || json_integer_value(value) < 0 ||
            json_integer_value(value) >= TOKENIZER_MAX_VOCAB)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: model.vocab[\"%.100s\"] must be an integer id in [0, %d)",
                                  source, key, TOKENIZER_MAX_VOCAB);
        if (json_integer_value(value) > max_id) max_id = json_integer_value(value);
    }
    for (size_t i = 0; i < tok->n_added; i++)
        if (tok->added[i].id > max_id) max_id = tok->added[i].id;
    tok->vocab_size = (int32_t)(max_id + 1);
    tok->tokens = calloc((size_t)tok->vocab_size, sizeof *tok->tokens);
    tok->vocab_map_cap = table_cap(n_vocab + tok->n_added);
    tok->vocab_map = calloc(tok->vocab_map_cap, sizeof *tok->vocab_map);
    if (!tok->tokens || !tok->vocab_map)
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);

    json_object_foreach((json_t *)vocab, key, value) {
        size_t len = strlen(key);
        if (len == 0 || len > TOKENIZER_MAX_TOKEN_BYTES)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: model.vocab has a token of %zu bytes (1 to %d allowed)", source,
                                  len, TOKENIZER_MAX_TOKEN_BYTES);
        const char *text = arena_add(tok, key, len);
        if (!text) return duel_error_set(err, DUEL_ENOMEM, "%s: arena overflow", source);
        int32_t id = (int32_t)json_integer_value(value);
        if ((rc = set_token(tok, id, text, len, -1, source, "model.vocab", err))) return rc;
        vocab_insert(tok, text, len, id);
    }
    for (size_t i = 0; i < tok->n_added; i++) {
        added_token *a = &tok->added[i];
        token_entry *e = &tok->tokens[a->id];
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (e->present) {
            /* The usual case for GPT-2 style files: the added token is also in the vocabulary. */
            if (e->added >= 0 || e->text_len != a->len || memcmp(e->text, a->content, a->len) != 0)
                return duel_error_set(err, DUEL_EFORMAT,
                                      "%s: %s: id %d is used by both \"%.100s\" and \"%.100s\"",
                                      source, where, a->id, e->text, a->content);
            e->added = (int32_t)i;
            e->bytes = a->content;
            e->bytes_len = (uint32_t)a->len;
            continue;
        }
        int32_t other = vocab_insert(tok, a->content, a->len, a->id);
        if (other >= 0)
            return duel_error_set(err, DUEL_EFORMAT,
                                  "%s: %s: \"%.100s\" has id %d but also id %d", source, where,
                                  a->content, a->id, other);
        if ((rc = set_token(tok, a->id, a->content, a->len, (int32_t)i, source, where, err))) return rc;
    }
    size_t holes = 0;
    for (int32_t id = 0; id < tok->vocab_size; id++) holes += !tok->tokens[id].present;
    if (holes > TOKENIZER_MAX_HOLES)
        return duel_error_set(err, DUEL_ELIMIT,
                              "%s: ids go up to %d but %zu of them name no token (at most %d gaps "
                              "allowed)",
                              source, tok->vocab_size - 1, holes, TOKENIZER_MAX_HOLES);

    for (unsigned b = 0; b < 256; b++) {
        char text[4];
        int len = duel_utf8_encode(byte_to_cp(b), text);
        memcpy(tok->byte_text[b], text, (size_t)len);
        tok->byte_text_len[b] = (uint8_t)len;
        int32_t id = vocab_find(tok, text, (size_t)len);
        tok->byte_token[b] = id >= 0 && tok->tokens[id].added < 0 ? id : -1;
    }
    tok->unk_id = -1;
    const json_t *unk = json_object_get(model, "unk_token");
    if (json_is_string(unk)) {
        tok->unk_id = vocab_find(tok, json_string_value(unk), json_string_length(unk));
        if (tok->unk_id < 0)
            return duel_error_set(err, DUEL_EFORMAT, "%s: model.unk_token \"%.100s\" is not in the vocabulary",
                                  source, json_string_value(unk));
    }
    return parse_merges(tok, json_object_get(model, "merges"), source, err);
}

int tokenizer_load_buffer(const char *json_text, size_t len, const char *source, tokenizer **out,
                          duel_error *err) {
    *out = NULL;
    if (!source) source = "tokenizer.json";
    if (len > TOKENIZER_MAX_JSON_BYTES)
        return duel_error_set(err, DUEL_ELIMIT, "%s: %zu bytes is larger than the %u byte limit",
                              source, len, TOKENIZER_MAX_JSON_BYTES);
    json_t *root;
    int rc = duel_json_parse(json_text, len, source, &root, err);
    if (rc) return rc;
    tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) {
        json_decref(root);
        return duel_error_set(err, DUEL_ENOMEM, "%s: out of memory", source);
    }
    rc = load_json(tok, root, source, err);
    json_decref(root);
    if (rc) return load_fail(tok, rc);
    *out = tok;
    return DUEL_OK;
}

int tokenizer_load(const char *path, tokenizer **out, duel_error *err) {
    *out = NULL;
    char *text;
    size_t len;
    int rc = duel_file_read_all(path, TOKENIZER_MAX_JSON_BYTES, &text, &len, err);
    if (rc) return rc;
    rc = tokenizer_load_buffer(text, len, path, out, err);
    free(text);
    return rc;
}

void tokenizer_free(tokenizer *tok) {
    if (!tok) return;
    free(tok->tokens);
    free(tok->vocab_map);
    free(tok->merges);
    free(tok->added);
    free(tok->arena);
    free(tok);
}

/* ---- encoding ------------------------------------------------------------------------------ */

typedef struct id_buffer {
    int32_t *ids;
    size_t n, cap;
} id_buffer;

static bool push_id(id_buffer *b, int32_t id) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        int32_t *p = realloc(b->ids, cap * sizeof *p);
        if (!p) return false;
        b->ids = p;
        b->cap = cap;
    }
    b->ids[b->n++] = id;
    return true;
}

/* Scratch space for BPE on one piece, reused across pieces. */
typedef struct bpe_symbol {
    int32_t id;
    int32_t prev, next; /* -1 at the ends */
    bool alive;
} bpe_symbol;

typedef struct bpe_candidate {
    int32_t rank, pos, left, right;
} bpe_candidate;

typedef struct encode_state {
    const tokenizer *tok;
    id_buffer out;
    bpe_symbol *symbols;
    size_t symbols_cap;
    bpe_candidate *heap;
    size_t heap_n, heap_cap;
    char *mapped; /* byte-level text of a piece (for ignore_merges) */
    size_t mapped_cap;
    unsigned char *prefixed; /* piece with a prefix space added */
    size_t prefixed_cap;
    duel_error *err;
} encode_state;

static bool candidate_less(const bpe_candidate *a, const bpe_candidate *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static bool heap_push(encode_state *st, bpe_candidate c) {
    if (st->heap_n == st->heap_cap) {
        size_t cap = st->heap_cap ? st->heap_cap * 2 : 64;
        bpe_candidate *p = realloc(st->heap, cap * sizeof *p);
        if (!p) return false;
        st->heap = p;
        st->heap_cap = cap;
    }
    size_t i = st->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!candidate_less(&c, &st->heap[parent])) break;
        st->heap[i] = st->heap[parent];
        i = parent;
    }
    st->heap[i] = c;
    return true;
}

static bpe_candidate heap_pop(encode_state *st) {
    bpe_candidate top = st->heap[0], last = st->heap[--st->heap_n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= st->heap_n) break;
        if (child + 1 < st->heap_n && candidate_less(&st->heap[child + 1], &st->heap[child])) child++;
        if (!candidate_less(&st->heap[child], &last)) break;
        st->heap[i] = st->heap[child];
        i = child;
    }
    if (st->heap_n) st->heap[i] = last;
    return top;
}

static bool add_candidate(encode_state *st, int32_t pos) {
    const bpe_symbol *s = &st->symbols[pos];
    if (s->next < 0) return true;
    const merge_slot *m = merge_find(st->tok, s->id, st->symbols[s->next].id);
    if (!m) return true;
    return heap_push(st, (bpe_candidate){m->rank, pos, s->id, st->symbols[s->next].id});
}

static int oom(encode_state *st) { return duel_error_set(st->err, DUEL_ENOMEM, "tokenizer: out of memory"); }

/* Byte-level BPE of one pre-tokenized piece. */
static int encode_piece(encode_state *st, const unsigned char *s, size_t n) {
    const tokenizer *tok = st->tok;
    if (n == 0) return DUEL_OK;
    if (tok->ignore_merges) {
        if (n * 2 > st->mapped_cap) {
            char *p = realloc(st->mapped, n * 2);
            if (!p) return oom(st);
            st->mapped = p;
            st->mapped_cap = n * 2;
        }
        size_t m = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(st->mapped + m, tok->byte_text[s[i]], tok->byte_text_len[s[i]]);
            m += tok->byte_text_len[s[i]];
        }
        int32_t id = vocab_find(tok, st->mapped, m);
        if (id >= 0 && tok->tokens[id].added < 0) return push_id(&st->out, id) ? DUEL_OK : oom(st);
    }
    if (n > st->symbols_cap) {
        bpe_symbol *p = realloc(st->symbols, n * sizeof *p);
        if (!p) return oom(st);
        st->symbols = p;
        st->symbols_cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        int32_t id = tok->byte_token[s[i]];
        if (id < 0) {
            if (tok->unk_id < 0)
                return duel_error_set(st->err, DUEL_EFORMAT,
                                      "tokenizer: the vocabulary has no token for byte 0x%02X and "
                                      "no unk_token",
                                      s[i]);
            id = tok->unk_id;
        }
        st->symbols[i] = (bpe_symbol){id, (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, true};
    }
    st->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (!add_candidate(st, (int32_t)i)) return oom(st);
    while (st->heap_n) {
        bpe_candidate c = heap_pop(st);
        bpe_symbol *left = &st->symbols[c.pos];
        if (!left->alive || left->id != c.left || left->next < 0) continue;
        bpe_symbol *right = &st->symbols[left->next];
        if (right->id != c.right) continue;
        left->id = merge_find(tok, c.left, c.right)->merged;
        right->alive = false;
        left->next = right->next;
        if (right->next >= 0) st->symbols[right->next].prev = c.pos;
        if (left->prev >= 0 && !add_candidate(st, left->prev)) return oom(st);
        if (!add_candidate(st, c.pos)) return oom(st);
    }
    for (int32_t i = 0; i >= 0; i = st->symbols[i].next)
        if (!push_id(&st->out, st->symbols[i].id)) return oom(st);
    return DUEL_OK;
}

/* Runs pre-tokenizer step k on s[0..n) and everything after it on each piece. */
static int pre_tokenize(encode_state *st, size_t k, const unsigned char *s, size_t n) {
    const pretok_step *step = &st->tok->steps[k];
    if (n == 0) return DUEL_OK;
    if (step->kind == STEP_BYTE_LEVEL) {
        if (step->add_prefix_space && s[0] != ' ') {
            if (n + 1 > st->prefixed_cap) {
                unsigned char *p = realloc(st->prefixed, n + 1);
                if (!p) return oom(st);
                st->prefixed = p;
                st->prefixed_cap = n + 1;
            }
            if (s != st->prefixed) memmove(st->prefixed + 1, s, n);
            st->prefixed[0] = ' ';
            s = st->prefixed;
            n++;
        }
        if (!step->use_regex) return encode_piece(st, s, n);
        for (size_t i = 0; i < n;) {
            size_t e = tokenizer_pattern_match(step->pattern, s, n, i);
            int rc = encode_piece(st, s + i, e - i);
            if (rc) return rc;
            i = e;
        }
        return DUEL_OK;
    }
    for (size_t i = 0; i < n;) {
        size_t e = step->kind == STEP_DIGITS ? tokenizer_digits_match(step->individual_digits, s, n, i)
                                             : tokenizer_pattern_match(step->pattern, s, n, i);
        int rc = pre_tokenize(st, k + 1, s + i, e - i);
        if (rc) return rc;
        i = e;
    }
    return DUEL_OK;
}

static bool is_word_cp(uint32_t cp) {
    return cp == '_' || unicode_is_letter(cp) || unicode_is_number(cp);
}

/* Leftmost-longest search for an added token of the given kind (normalized or not) in s[from, n).
 * Returns the index of the token or -1; *start and *end bound the match, widened by lstrip/rstrip. */
static int find_added(const tokenizer *tok, bool normalized, bool parse_special, const unsigned char *s,
                      size_t n, size_t from, size_t *start, size_t *end) {
    for (size_t i = from; i < n; i++) {
        if (!tok->added_first_byte[s[i]]) continue;
        int best = -1;
        size_t best_len = 0;
        for (size_t k = 0; k < tok->n_added; k++) {
            const added_token *a = &tok->added[k];
            if (a->normalized != normalized || a->match_len <= best_len || a->match_len > n - i ||
                (unsigned char)a->match[0] != s[i] || memcmp(a->match, s + i, a->match_len) != 0)
                continue;
            best = (int)k;
            best_len = a->match_len;
        }
        if (best < 0) continue;
        const added_token *a = &tok->added[best];
        size_t e = i + best_len;
        if (a->special && !parse_special) {
            /* HF finds the match and then ignores it: the text it covers stays plain text. */
            i = e - 1;
            continue;
        }
        if (a->single_word) {
            uint32_t cp;
            bool word_before = false, word_after = false;
            if (i > 0) {
                size_t b = i - 1;
                while (b > 0 && (s[b] & 0xC0) == 0x80) b--;
                tokenizer_cp_at(s, n, b, &cp);
                word_before = is_word_cp(cp);
            }
            if (e < n) {
                tokenizer_cp_at(s, n, e, &cp);
                word_after = is_word_cp(cp);
            }
            if (word_before || word_after) continue;
        }
        size_t b = i;
        if (a->lstrip)
            while (b > from) {
                size_t p = b - 1;
                while (p > from && (s[p] & 0xC0) == 0x80) p--;
                uint32_t cp;
                tokenizer_cp_at(s, n, p, &cp);
                if (!tokenizer_is_space_cp(cp)) break;
                b = p;
            }
        if (a->rstrip)
            while (e < n) {
                uint32_t cp;
                size_t len = tokenizer_cp_at(s, n, e, &cp);
                if (!tokenizer_is_space_cp(cp)) break;
                e += len;
            }
        *start = b;
        *end = e;
        return best;
    }
    return -1;
}

/* Normalized text: split on normalized added tokens, then pre-tokenize and BPE the rest. */
static int encode_normalized(encode_state *st, const unsigned char *s, size_t n, bool parse_special) {
    const tokenizer *tok = st->tok;
    size_t pos = 0;
    while (pos < n) {
        size_t start = n, end = n;
        int k = tok->has_normalized_added ? find_added(tok, true, parse_special, s, n, pos, &start, &end)
                                          : -1;
        int rc = pre_tokenize(st, 0, s + pos, (k < 0 ? n : start) - pos);
        if (rc) return rc;
        if (k < 0) break;
        if (!push_id(&st->out, tok->added[k].id)) return oom(st);
        pos = end;
    }
    return DUEL_OK;
}

static int encode_section(encode_state *st, const unsigned char *s, size_t n, bool parse_special) {
    if (n == 0) return DUEL_OK;
    if (!st->tok->nfc) return encode_normalized(st, s, n, parse_special);
    unsigned char *norm;
    size_t norm_len;
    if (!tokenizer_nfc(s, n, &norm, &norm_len)) return oom(st);
    if (!norm) return encode_normalized(st, s, n, parse_special);
    int rc = encode_normalized(st, norm, norm_len, parse_special);
    free(norm);
    return rc;
}

int tokenizer_encode(const tokenizer *tok, const char *text, size_t len, bool parse_special,
                     int32_t **ids, size_t *n_ids, duel_error *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!tok || (!text && len))
        return duel_error_set(err, DUEL_EINVAL, "tokenizer_encode: no tokenizer or no text");
    size_t bad;
    if (!duel_utf8_valid(text, len, &bad))
        return duel_error_set(err, DUEL_EFORMAT, "tokenizer: the text is not valid UTF-8 at byte offset %zu",
                              bad);
    encode_state st = {.tok = tok, .err = err};
    const unsigned char *s = (const unsigned char *)text;
    size_t pos = 0;
    int rc = DUEL_OK;
    while (pos < len) {
        size_t start = len, end = len;
        int k = tok->has_plain_added ? find_added(tok, false, parse_special, s, len, pos, &start, &end)
                                     : -1;
        if ((rc = encode_section(&st, s + pos, (k < 0 ? len : start) - pos, parse_special))) break;
        if (k < 0) break;
        if (!push_id(&st.out, tok->added[k].id)) {
            rc = oom(&st);
            break;
        }
        pos = end;
    }
    free(st.symbols);
    free(st.heap);
    free(st.mapped);
    free(st.prefixed);
    if (rc) {
        free(st.out.ids);
        return rc;
    }
    if (!st.out.ids) st.out.ids = malloc(sizeof(int32_t)); /* a valid pointer even when empty */
    if (!st.out.ids) return duel_error_set(err, DUEL_ENOMEM, "tokenizer: out of memory");
    *ids = st.out.ids;
    *n_ids = st.out.n;
    return DUEL_OK;
}

/* ---- decoding ------------------------------------------------------------------------------ */

typedef struct byte_buffer {
    char *p;
    size_t n, cap;
} byte_buffer;

static bool append(byte_buffer *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

/* Appends s[0..n) with the one replacement rule (common/utf8.h: U+FFFD per maximal subpart of
 * invalid UTF-8, as Hugging Face does). */
static bool append_lossy(byte_buffer *b, const unsigned char *s, size_t n) {
    char *tmp = malloc(DUEL_UTF8_LOSSY_MAX(n) + 1);
    if (!tmp) return false;
    bool ok = append(b, tmp, duel_utf8_lossy((const char *)s, n, 0, tmp));
    free(tmp);
    return ok;
}

int tokenizer_decode(const tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                     char **text, size_t *len, duel_error *err) {
    *text = NULL;
    if (len) *len = 0;
    if (!tok || (!ids && n_ids))
        return duel_error_set(err, DUEL_EINVAL, "tokenizer_decode: no tokenizer or no ids");
    byte_buffer out = {0}, pending = {0};
    int rc = DUEL_OK;
    for (size_t i = 0; i < n_ids && !rc; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->vocab_size || !tok->tokens[id].present) {
            rc = duel_error_set(err, DUEL_EINVAL, "tokenizer_decode: id %d at position %zu is not a token",
                                id, i);
            break;
        }
        const token_entry *e = &tok->tokens[id];
        if (e->added >= 0) {
            if (skip_special && tok->added[e->added].special) continue;
            /* Added tokens are output as they are, not byte-level decoded. */
            if (!append_lossy(&out, (const unsigned char *)pending.p, pending.n) ||
                !append(&out, e->text, e->text_len))
                rc = duel_error_set(err, DUEL_ENOMEM, "tokenizer: out of memory");
            pending.n = 0;
            continue;
        }
        if (!append(&pending, e->bytes, e->bytes_len))
            rc = duel_error_set(err, DUEL_ENOMEM, "tokenizer: out of memory");
    }
    if (!rc && !append_lossy(&out, (const unsigned char *)pending.p, pending.n))
        rc = duel_error_set(err, DUEL_ENOMEM, "tokenizer: out of memory");
    if (!rc && !out.p && !append(&out, "", 0)) rc = duel_error_set(err, DUEL_ENOMEM, "tokenizer: out of memory");
    free(pending.p);
    if (rc) {
        free(out.p);
        return rc;
    }
    *text = out.p;
    if (len) *len = out.n;
    return DUEL_OK;
}

/* ---- lookups ------------------------------------------------------------------------------- */

int tokenizer_token_bytes(const tokenizer *tok, int32_t id, const char **bytes, size_t *len) {
    if (!tok || id < 0 || id >= tok->vocab_size || !tok->tokens[id].present) return DUEL_EINVAL;
    *bytes = tok->tokens[id].bytes;
    *len = tok->tokens[id].bytes_len;
    return DUEL_OK;
}

int tokenizer_vocab_size(const tokenizer *tok) { return tok ? tok->vocab_size : 0; }

int32_t tokenizer_token_id(const tokenizer *tok, const char *token) {
    if (!tok || !token) return -1;
    return vocab_find(tok, token, strlen(token));
}

bool tokenizer_is_special(const tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->vocab_size || !tok->tokens[id].present) return false;
    return tok->tokens[id].added >= 0 && tok->added[tok->tokens[id].added].special;
}
