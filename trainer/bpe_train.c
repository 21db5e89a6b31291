/* bpe_train.c: byte-level BPE training (see bpe_train.h). Distinct pieces live in an open
 * addressing table; training turns them into symbol arrays and keeps a table of adjacent-pair
 * counts that each merge updates incrementally (only the pieces that contain the merged pair are
 * rewritten). Invariant: pair_count[(a, b)] == sum over pieces of freq * occurrences of a b. */
#include "bpe_train.h"

#include <fcntl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tokenizer.h"
#include "utf8.h"

typedef struct bpe_word {
    uint32_t offset; /* into bytes */
    uint32_t len;
    long long freq;
} bpe_word;

typedef struct bpe_pair_slot {
    uint64_t key; /* (a << 32 | b) + 1; 0 = empty */
    long long count;
} bpe_pair_slot;

struct bpe_trainer {
    /* piece table */
    unsigned char *bytes;
    size_t bytes_len, bytes_cap;
    bpe_word *words;
    size_t num_words, words_cap;
    uint32_t *word_slots; /* index + 1 into words; 0 = empty */
    size_t word_slots_cap;
    /* result */
    int trained;
    int num_tokens;        /* bytes + merges */
    int32_t (*merges)[3];  /* left, right, result token (an existing one when the bytes repeat) */
    int num_merges;
    unsigned char **token_bytes;
    size_t *token_len;
    char **special;
    int num_special;
};

static uint64_t hash_bytes(const unsigned char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 1099511628211ull;
    }
    return h;
}

int bpe_trainer_create(bpe_trainer **out, duel_error *err) {
    bpe_trainer *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return duel_error_set(err, DUEL_ENOMEM, "bpe: out of memory");
    }
    t->word_slots_cap = 1 << 16;
    t->word_slots = calloc(t->word_slots_cap, sizeof(uint32_t));
    if (t->word_slots == NULL) {
        free(t);
        return duel_error_set(err, DUEL_ENOMEM, "bpe: out of memory");
    }
    *out = t;
    return 0;
}

void bpe_trainer_free(bpe_trainer *t) {
    if (t == NULL) {
        return;
    }
    free(t->bytes);
    free(t->words);
    free(t->word_slots);
    free(t->merges);
    if (t->token_bytes != NULL) {
        for (int i = 0; i < t->num_tokens; i++) {
            free(t->token_bytes[i]);
        }
    }
    free(t->token_bytes);
    free(t->token_len);
    for (int i = 0; i < t->num_special; i++) {
        free(t->special[i]);
    }
    free(t->special);
    free(t);
}

static int grow_word_slots(bpe_trainer *t) {
    size_t cap = t->word_slots_cap * 2;
    uint32_t *slots = calloc(cap, sizeof(uint32_t));
    if (slots == NULL) {
        return DUEL_ENOMEM;
    }
    for (size_t i = 0; i < t->num_words; i++) {
        const bpe_word *w = &t->words[i];
        size_t j = hash_bytes(t->bytes + w->offset, w->len) & (cap - 1);
        while (slots[j] != 0) {
            j = (j + 1) & (cap - 1);
        }
        slots[j] = (uint32_t)(i + 1);
    }
    free(t->word_slots);
    t->word_slots = slots;
    t->word_slots_cap = cap;
    return 0;
}

static int count_piece(bpe_trainer *t, const unsigned char *s, size_t n, duel_error *err) {
    size_t j = hash_bytes(s, n) & (t->word_slots_cap - 1);
    while (t->word_slots[j] != 0) {
        bpe_word *w = &t->words[t->word_slots[j] - 1];
        if (w->len == n && memcmp(t->bytes + w->offset, s, n) == 0) {
            w->freq++;
            return 0;
        }
        j = (j + 1) & (t->word_slots_cap - 1);
    }
    if (t->num_words >= BPE_TRAIN_MAX_WORDS) {
        return duel_error_set(err, DUEL_ELIMIT, "bpe: more than %u distinct pieces",
                              BPE_TRAIN_MAX_WORDS);
    }
    if (t->num_words == t->words_cap) {
        size_t cap = t->words_cap ? t->words_cap * 2 : 4096;
        bpe_word *words = realloc(t->words, cap * sizeof(*words));
        if (words == NULL) {
            return duel_error_set(err, DUEL_ENOMEM, "bpe: out of memory");
        }
        t->words = words;
        t->words_cap = cap;
    }
    if (t->bytes_len + n > t->bytes_cap) {
        size_t cap = t->bytes_cap ? t->bytes_cap * 2 : 65536;
        while (cap < t->bytes_len + n) {
            cap *= 2;
        }
        if (cap > UINT32_MAX) {
            return duel_error_set(err, DUEL_ELIMIT, "bpe: distinct pieces exceed 4 GiB");
        }
        unsigned char *bytes = realloc(t->bytes, cap);
        if (bytes == NULL) {
            return duel_error_set(err, DUEL_ENOMEM, "bpe: out of memory");
        }
        t->bytes = bytes;
        t->bytes_cap = cap;
    }
    memcpy(t->bytes + t->bytes_len, s, n);
    t->words[t->num_words] = (bpe_word){(uint32_t)t->bytes_len, (uint32_t)n, 1};
    t->bytes_len += n;
    t->word_slots[j] = (uint32_t)(++t->num_words);
    if (t->num_words * 2 > t->word_slots_cap && grow_word_slots(t) != 0) {
        return duel_error_set(err, DUEL_ENOMEM, "bpe: out of memory");
    }
    return 0;
}

int bpe_trainer_add_text(bpe_trainer *t, const char *text, size_t len, const char *source,
                         duel_error *err) {
    if (t->trained) {
        return duel_error_set(err, DUEL_EINVAL, "bpe: text added after training");
    }
    size_t bad = 0;
    if (!duel_utf8_valid(text, len, &bad)) {
        return duel_error_set(err, DUEL_EFORMAT, "%s: invalid UTF-8 at byte %zu", source, bad);
    }
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0;
    while (i < len) {
        size_t n = tokenizer_gpt2_piece_end(text, len, i) - i;
        for (size_t k = 0; k < n; k += BPE_TRAIN_MAX_PIECE_BYTES) {
            size_t m = n - k < BPE_TRAIN_MAX_PIECE_BYTES ? n - k : BPE_TRAIN_MAX_PIECE_BYTES;
            int rc = count_piece(t, s + i + k, m, err);
            if (rc != 0) {
                return rc;
            }
        }
        i += n;
    }
    return 0;
}

/* ---- pair counts ---- */

typedef struct pair_table {
    bpe_pair_slot *slots;
    size_t cap, used; /* used counts occupied slots, tombstones (count 0) included */
} pair_table;

static uint64_t pair_key(int32_t a, int32_t b) {
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

static size_t pair_hash(uint64_t key, size_t cap) {
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static int pair_table_rehash(pair_table *p, size_t cap) {
    bpe_pair_slot *slots = calloc(cap, sizeof(*slots));
    if (slots == NULL) {
        return DUEL_ENOMEM;
    }
    size_t used = 0;
    for (size_t i = 0; i < p->cap; i++) {
        if (p->slots[i].key != 0 && p->slots[i].count != 0) {
            size_t j = pair_hash(p->slots[i].key, cap);
            while (slots[j].key != 0) {
                j = (j + 1) & (cap - 1);
            }
            slots[j] = p->slots[i];
            used++;
        }
    }
    free(p->slots);
    p->slots = slots;
    p->cap = cap;
    p->used = used;
    return 0;
}

static int pair_add(pair_table *p, int32_t a, int32_t b, long long delta) {
    uint64_t key = pair_key(a, b);
    size_t j = pair_hash(key, p->cap);
    while (p->slots[j].key != 0) {
        if (p->slots[j].key == key) {
            p->slots[j].count += delta;
            return 0;
        }
        j = (j + 1) & (p->cap - 1);
    }
    p->slots[j].key = key;
    p->slots[j].count = delta;
    if (++p->used * 2 > p->cap) {
        return pair_table_rehash(p, p->cap * 2);
    }
    return 0;
}

static int word_pairs(pair_table *p, const int32_t *sym, uint32_t n, long long delta) {
    for (uint32_t i = 0; i + 1 < n; i++) {
        if (pair_add(p, sym[i], sym[i + 1], delta) != 0) {
            return DUEL_ENOMEM;
        }
    }
    return 0;
}

static int check_options(const bpe_train_options *o, duel_error *err) {
    if (o->num_special_tokens < 0 || o->num_special_tokens > BPE_TRAIN_MAX_SPECIAL ||
        (o->num_special_tokens > 0 && o->special_tokens == NULL)) {
        return duel_error_set(err, DUEL_EINVAL, "bpe: at most %d special tokens",
                              BPE_TRAIN_MAX_SPECIAL);
    }
    if (o->vocab_size < 256 + o->num_special_tokens || o->vocab_size > BPE_TRAIN_MAX_VOCAB) {
        return duel_error_set(err, DUEL_EINVAL,
                              "bpe: vocabulary size %d must be in [%d (256 bytes + special "
                              "tokens), %d]",
                              o->vocab_size, 256 + o->num_special_tokens, BPE_TRAIN_MAX_VOCAB);
    }
    if (o->min_frequency < 1) {
        return duel_error_set(err, DUEL_EINVAL, "bpe: minimum frequency must be >= 1");
    }
    for (int i = 0; i < o->num_special_tokens; i++) {
        const char *s = o->special_tokens[i];
        if (s == NULL || s[0] == '\0' || strlen(s) > 256 || !duel_utf8_valid(s, strlen(s), NULL)) {
            return duel_error_set(err, DUEL_EINVAL,
                                  "bpe: special token %d is empty, too long or not UTF-8", i);
        }
        for (int j = 0; j < i; j++) {
            if (strcmp(s, o->special_tokens[j]) == 0) {
                return duel_error_set(err, DUEL_EINVAL, "bpe: special token \"%s\" given twice", s);
            }
        }
    }
    return 0;
}

int bpe_trainer_train(bpe_trainer *t, const bpe_train_options *o, duel_error *err) {
    if (t->trained) {
        return duel_error_set(err, DUEL_EINVAL, "bpe: already trained");
    }
    int rc = check_options(o, err);
    if (rc != 0) {
        return rc;
    }
    int max_merges = o->vocab_size - 256 - o->num_special_tokens;
    int rc_mem = DUEL_ENOMEM;
    int32_t *sym = malloc((t->bytes_len + 1) * sizeof(int32_t));
    uint32_t *sym_len = malloc((t->num_words + 1) * sizeof(uint32_t));
    pair_table pairs = {calloc(1 << 16, sizeof(bpe_pair_slot)), 1 << 16, 0};
    /* Each merge shortens the total symbol count, so the loop ends; a merge whose bytes already
     * form a token reuses that id (as HF's trainer does) and adds no vocabulary. */
    size_t merge_cap = (size_t)max_merges * 2 + 16;
    t->merges = malloc(merge_cap * sizeof(*t->merges));
    t->token_bytes = calloc((size_t)o->vocab_size, sizeof(*t->token_bytes));
    t->token_len = calloc((size_t)o->vocab_size, sizeof(*t->token_len));
    t->special = calloc((size_t)o->num_special_tokens + 1, sizeof(char *));
    if (sym == NULL || sym_len == NULL || pairs.slots == NULL || t->merges == NULL ||
        t->token_bytes == NULL || t->token_len == NULL || t->special == NULL) {
        goto fail;
    }
    t->trained = 1;
    for (int b = 0; b < 256; b++) {
        t->token_bytes[b] = malloc(1);
        if (t->token_bytes[b] == NULL) {
            goto fail;
        }
        t->token_bytes[b][0] = (unsigned char)b;
        t->token_len[b] = 1;
        t->num_tokens = b + 1;
    }
    for (int i = 0; i < o->num_special_tokens; i++) {
        t->special[i] = strdup(o->special_tokens[i]);
        if (t->special[i] == NULL) {
            goto fail;
        }
        t->num_special = i + 1;
    }
    /* Symbols of word w live at sym[words[w].offset ..] (a piece never grows). */
    for (size_t w = 0; w < t->num_words; w++) {
        const bpe_word *word = &t->words[w];
        for (uint32_t k = 0; k < word->len; k++) {
            sym[word->offset + k] = t->bytes[word->offset + k];
        }
        sym_len[w] = word->len;
        if (word_pairs(&pairs, sym + word->offset, word->len, word->freq) != 0) {
            goto fail;
        }
    }
    for (int m = 0; t->num_tokens < 256 + max_merges && (size_t)m < merge_cap; m++) {
        long long best = 0;
        uint64_t best_key = 0;
        for (size_t j = 0; j < pairs.cap; j++) {
            const bpe_pair_slot *s = &pairs.slots[j];
            if (s->key != 0 && (s->count > best || (s->count == best && best > 0 && s->key < best_key))) {
                best = s->count;
                best_key = s->key;
            }
        }
        if (best < o->min_frequency || best == 0) {
            break;
        }
        int32_t a = (int32_t)((best_key - 1) >> 32), b = (int32_t)((best_key - 1) & 0xffffffffu);
        size_t len = t->token_len[a] + t->token_len[b];
        unsigned char *merged = malloc(len);
        if (merged == NULL) {
            goto fail;
        }
        memcpy(merged, t->token_bytes[a], t->token_len[a]);
        memcpy(merged + t->token_len[a], t->token_bytes[b], t->token_len[b]);
        int32_t id = t->num_tokens;
        for (int32_t k = 256; k < t->num_tokens; k++) {
            if (t->token_len[k] == len && memcmp(t->token_bytes[k], merged, len) == 0) {
                id = k;
                break;
            }
        }
        if (id == t->num_tokens) {
            t->token_bytes[id] = merged;
            t->token_len[id] = len;
            t->num_tokens = id + 1;
        } else {
            free(merged);
        }
        t->merges[m][0] = a;
        t->merges[m][1] = b;
        t->merges[m][2] = id;
        t->num_merges = m + 1;
        for (size_t w = 0; w < t->num_words; w++) {
            int32_t *s = sym + t->words[w].offset;
            uint32_t n = sym_len[w];
            int found = 0;
            for (uint32_t k = 0; k + 1 < n; k++) {
                if (s[k] == a && s[k + 1] == b) {
                    found = 1;
                    break;
                }
            }
            if (!found) {
                continue;
            }
            long long f = t->words[w].freq;
            if (word_pairs(&pairs, s, n, -f) != 0) {
                goto fail;
            }
            uint32_t out = 0;
            for (uint32_t k = 0; k < n; k++) {
                if (k + 1 < n && s[k] == a && s[k + 1] == b) {
                    s[out++] = id;
                    k++;
                } else {
                    s[out++] = s[k];
                }
            }
            sym_len[w] = out;
            if (word_pairs(&pairs, s, out, f) != 0) {
                goto fail;
            }
        }
        /* Drop dead pairs now and then so the max scan stays short. */
        if ((m & 255) == 255 && pair_table_rehash(&pairs, pairs.cap) != 0) {
            goto fail;
        }
    }
    free(sym);
    free(sym_len);
    free(pairs.slots);
    return 0;
fail:
    free(sym);
    free(sym_len);
    free(pairs.slots);
    return duel_error_set(err, rc_mem, "bpe: out of memory during training");
}

int bpe_trainer_num_merges(const bpe_trainer *t) {
    return t->trained ? t->num_merges : 0;
}

int bpe_trainer_vocab_size(const bpe_trainer *t) {
    return t->trained ? t->num_tokens + t->num_special : 0;
}

/* A token's vocabulary string in GPT-2's byte-level alphabet (the tokenizer's own mapping). */
static char *byte_level_string(const unsigned char *s, size_t n) {
    char *out = malloc(n * 2 + 1);
    if (out != NULL) {
        tokenizer_byte_level_string(s, n, out);
    }
    return out;
}

static json_t *byte_level_object(const char *type, int add_prefix_space) {
    return json_pack("{s:s, s:b, s:b, s:b}", "type", type, "add_prefix_space", add_prefix_space,
                     "trim_offsets", 1, "use_regex", 1);
}

int bpe_trainer_write_json(const bpe_trainer *t, const char *path, duel_error *err) {
    if (!t->trained) {
        return duel_error_set(err, DUEL_EINVAL, "bpe: write before training");
    }
    json_t *vocab = json_object(), *merges = json_array(), *added = json_array();
    char **names = calloc((size_t)t->num_tokens, sizeof(char *));
    int rc = DUEL_ENOMEM;
    if (vocab == NULL || merges == NULL || added == NULL || names == NULL) {
        goto done;
    }
    for (int i = 0; i < t->num_tokens; i++) {
        names[i] = byte_level_string(t->token_bytes[i], t->token_len[i]);
        if (names[i] == NULL || json_object_set_new(vocab, names[i], json_integer(i)) != 0) {
            goto done;
        }
    }
    for (int m = 0; m < t->num_merges; m++) {
        json_t *pair = json_pack("[s, s]", names[t->merges[m][0]], names[t->merges[m][1]]);
        if (pair == NULL || json_array_append_new(merges, pair) != 0) {
            goto done;
        }
    }
    for (int i = 0; i < t->num_special; i++) {
        int id = t->num_tokens + i;
        if (json_object_set_new(vocab, t->special[i], json_integer(id)) != 0) {
            goto done;
        }
        json_t *tok = json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content",
                                t->special[i], "single_word", 0, "lstrip", 0, "rstrip", 0,
                                "normalized", 0, "special", 1);
        if (tok == NULL || json_array_append_new(added, tok) != 0) {
            goto done;
        }
    }
    json_t *model = json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:O, s:O}", "type", "BPE",
                              "dropout", "unk_token", "continuing_subword_prefix",
                              "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
                              "ignore_merges", 0, "vocab", vocab, "merges", merges);
    json_t *root = json_pack("{s:s, s:n, s:n, s:O, s:n, s:o, s:o, s:o, s:o}", "version", "1.0",
                             "truncation", "padding", "added_tokens", added, "normalizer",
                             "pre_tokenizer", byte_level_object("ByteLevel", 0), "post_processor",
                             byte_level_object("ByteLevel", 1), "decoder",
                             byte_level_object("ByteLevel", 1), "model", model);
    if (root == NULL) {
        json_decref(model);
        goto done;
    }
    char tmp[4096];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        json_decref(root);
        rc = duel_error_set(err, DUEL_EINVAL, "%s: path too long", path);
        goto done_set;
    }
    char *text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(1));
    json_decref(root);
    if (text == NULL) {
        goto done;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text), off = 0;
    int ok = fd >= 0;
    while (ok && off < len) {
        ssize_t w = write(fd, text + off, len - off);
        ok = w > 0;
        off += ok ? (size_t)w : 0;
    }
    ok = ok && fsync(fd) == 0;
    if (fd >= 0 && close(fd) != 0) {
        ok = 0;
    }
    free(text);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        rc = duel_error_set(err, DUEL_EIO, "%s: cannot write tokenizer", path);
        goto done_set;
    }
    rc = 0;
    goto done_set;
done:
    duel_error_set(err, rc, "bpe: out of memory writing %s", path);
done_set:
    json_decref(vocab);
    json_decref(merges);
    json_decref(added);
    if (names != NULL) {
        for (int i = 0; i < t->num_tokens; i++) {
            free(names[i]);
        }
    }
    free(names);
    return rc;
}
