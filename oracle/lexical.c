/* lexical.c: the lexical oracle, r*(x, y) from an answer and a reference answer: bag-of-words F1
 * minus a length penalty and a repeated-n-gram penalty (the formula and word rules are in
 * oracle.h). Words are interned to integer ids by sorting, so scoring is O(n log n) in the text
 * length and allocates only per call. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "oracle.h"
#include "utf8.h"

void oracle_lexical_config_default(oracle_lexical_config *c) {
    c->overlap_weight = 1.0;
    c->length_weight = 0.25;
    c->length_target_ratio = 2.0;
    c->repetition_weight = 1.0;
    c->char_ngram_weight = 0.0;
}

int oracle_lexical_config_validate(const oracle_lexical_config *c, duel_error *err) {
    if (!c) return duel_error_set(err, DUEL_EINVAL, "lexical oracle: config is NULL");
    struct { const char *name; double v; } w[] = {
        {"overlap_weight", c->overlap_weight},
        {"length_weight", c->length_weight},
        {"repetition_weight", c->repetition_weight},
        {"char_ngram_weight", c->char_ngram_weight},
    };
    for (size_t i = 0; i < 4; i++)
        if (!isfinite(w[i].v) || w[i].v < 0)
            return duel_error_set(err, DUEL_EINVAL, "lexical oracle: %s %g must be finite and >= 0",
                                  w[i].name, w[i].v);
    if (!isfinite(c->length_target_ratio) || !(c->length_target_ratio > 0))
        return duel_error_set(err, DUEL_EINVAL,
                              "lexical oracle: length_target_ratio %g must be finite and > 0",
                              c->length_target_ratio);
    return 0;
}

/* A text split into words: NUL-terminated lowercase words packed in text, pointers in words. */
typedef struct word_list {
    char *text;
    char **words;
    size_t count;
} word_list;

static void word_list_free(word_list *w) {
    free(w->text);
    free(w->words);
}

typedef enum { CH_WORD, CH_APOSTROPHE, CH_SEPARATOR } char_class;

/* Classifies the character at s[0..n) and returns its length in bytes via *len. */
static char_class classify(const unsigned char *s, size_t n, size_t *len) {
    unsigned char c = s[0];
    *len = 1;
    if (c < 0x80) {
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
            return CH_WORD;
        return c == '\'' ? CH_APOSTROPHE : CH_SEPARATOR;
    }
    uint32_t cp;
    int k = duel_utf8_decode(s, n, &cp);
    if (k <= 0) return CH_WORD; /* an invalid byte counts as part of a word */
    *len = (size_t)k;
    if (cp == 0x2018 || cp == 0x2019) return CH_APOSTROPHE;
    /* Latin-1 punctuation and symbols (no-break space, guillemets, inverted marks, ...), general
     * punctuation (dashes, typographic quotes, ellipsis, thin spaces) and CJK punctuation. */
    if ((cp >= 0x00A0 && cp <= 0x00BF) || cp == 0x00D7 || cp == 0x00F7 ||
        (cp >= 0x2000 && cp <= 0x206F) || (cp >= 0x3000 && cp <= 0x303F))
        return CH_SEPARATOR;
    return CH_WORD;
}

static int split_words(const char *s, size_t n, word_list *out, duel_error *err) {
    memset(out, 0, sizeof *out);
    out->text = malloc(n + 1);
    out->words = malloc(sizeof(char *) * (n / 2 + 1)); /* words need a separator between them */
    if (!out->text || !out->words) {
        word_list_free(out);
        return duel_error_set(err, DUEL_ENOMEM, "lexical oracle: out of memory for %zu bytes", n);
    }
    const unsigned char *u = (const unsigned char *)s;
    size_t w = 0;
    int in_word = 0;
    for (size_t i = 0; i < n;) {
        size_t len;
        char_class cls = classify(u + i, n - i, &len);
        if (cls == CH_WORD) {
            if (!in_word) {
                out->words[out->count++] = out->text + w;
                in_word = 1;
            }
            for (size_t k = 0; k < len; k++) {
                unsigned char c = u[i + k];
                out->text[w++] = (char)(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
            }
        } else if (cls == CH_SEPARATOR || !in_word) {
            if (in_word) out->text[w++] = '\0';
            in_word = 0;
        } /* else: an apostrophe inside a word is dropped */
        i += len;
    }
    if (in_word) out->text[w++] = '\0';
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Fraction of the n-grams of ids[0..count) that repeat an earlier one. */
typedef struct ngram { uint32_t id[3]; } ngram;
static int cmp_ngram(const void *a, const void *b) {
    return memcmp(a, b, sizeof(ngram)); /* only equality matters, so byte order is fine */
}

static int repeated_fraction(const uint32_t *ids, size_t count, int n, double *out,
                             duel_error *err) {
    *out = 0;
    if (count < (size_t)n) return 0;
    size_t m = count - (size_t)n + 1;
    ngram *g = calloc(m, sizeof *g);
    if (!g) return duel_error_set(err, DUEL_ENOMEM, "lexical oracle: out of memory");
    for (size_t i = 0; i < m; i++)
        for (int k = 0; k < n; k++) g[i].id[k] = ids[i + (size_t)k];
    qsort(g, m, sizeof *g, cmp_ngram);
    size_t distinct = 1;
    for (size_t i = 1; i < m; i++) distinct += memcmp(&g[i], &g[i - 1], sizeof *g) != 0;
    free(g);
    *out = (double)(m - distinct) / (double)m;
    return 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* The byte trigrams of the normalised text " w1 w2 ... wn " (lowercase words, one space between
 * and around them), as sorted 24-bit codes; *out is malloc'd (NULL when there are none). */
static int char_trigrams(const word_list *w, uint32_t **out, size_t *count, duel_error *err) {
    *out = NULL;
    *count = 0;
    size_t len = 1;
    for (size_t i = 0; i < w->count; i++) len += strlen(w->words[i]) + 1;
    if (w->count == 0 || len < 3) return 0;
    unsigned char *t = malloc(len);
    uint32_t *g = malloc(sizeof *g * (len - 2));
    if (!t || !g) {
        free(t);
        free(g);
        return duel_error_set(err, DUEL_ENOMEM, "lexical oracle: out of memory");
    }
    size_t n = 0;
    t[n++] = ' ';
    for (size_t i = 0; i < w->count; i++) {
        size_t k = strlen(w->words[i]);
        memcpy(t + n, w->words[i], k);
        n += k;
        t[n++] = ' ';
    }
    for (size_t i = 0; i + 2 < n; i++)
        g[i] = (uint32_t)t[i] << 16 | (uint32_t)t[i + 1] << 8 | (uint32_t)t[i + 2];
    free(t);
    qsort(g, n - 2, sizeof *g, cmp_u32);
    *out = g;
    *count = n - 2;
    return 0;
}

/* F1 of the two texts' character-trigram multisets (0 when either has none). */
static int char_trigram_f1(const word_list *ref, const word_list *ans, double *f1, duel_error *err) {
    uint32_t *r = NULL, *a = NULL;
    size_t nr = 0, na = 0;
    int rc = char_trigrams(ref, &r, &nr, err);
    if (!rc) rc = char_trigrams(ans, &a, &na, err);
    *f1 = 0;
    if (!rc && nr > 0 && na > 0) {
        size_t common = 0;
        for (size_t i = 0, j = 0; i < nr && j < na;) {
            if (r[i] == a[j]) common++, i++, j++;
            else if (r[i] < a[j]) i++;
            else j++;
        }
        if (common > 0) {
            double p = (double)common / (double)na, q = (double)common / (double)nr;
            *f1 = 2 * p * q / (p + q);
        }
    }
    free(r);
    free(a);
    return rc;
}

int oracle_lexical_score(const oracle_lexical_config *c, const char *reference,
                         size_t reference_len, const char *answer, size_t answer_len,
                         double *score, oracle_lexical_detail *detail, duel_error *err) {
    if (!reference || !answer || !score)
        return duel_error_set(err, DUEL_EINVAL, "lexical oracle: NULL argument");
    int rc = oracle_lexical_config_validate(c, err);
    if (rc) return rc;
    if (reference_len > ORACLE_LEXICAL_MAX_BYTES || answer_len > ORACLE_LEXICAL_MAX_BYTES)
        return duel_error_set(err, DUEL_ELIMIT, "lexical oracle: %s of %zu bytes is over the "
                              "limit of %u", reference_len > ORACLE_LEXICAL_MAX_BYTES ?
                              "reference" : "answer",
                              reference_len > ORACLE_LEXICAL_MAX_BYTES ? reference_len : answer_len,
                              ORACLE_LEXICAL_MAX_BYTES);
    word_list ref, ans;
    if ((rc = split_words(reference, reference_len, &ref, err))) return rc;
    if ((rc = split_words(answer, answer_len, &ans, err))) {
        word_list_free(&ref);
        return rc;
    }
    char **all = NULL;
    uint32_t *ids = NULL, *count_ref = NULL, *count_ans = NULL;
    if (ref.count == 0) {
        rc = duel_error_set(err, DUEL_EINVAL, "lexical oracle: the reference answer has no words");
        goto done;
    }
    /* Intern: sort every word of both texts, equal strings get equal ids. */
    size_t total = ref.count + ans.count;
    all = malloc(sizeof *all * total);
    ids = malloc(sizeof *ids * total);
    count_ref = calloc(total, sizeof *count_ref);
    count_ans = calloc(total, sizeof *count_ans);
    if (!all || !ids || !count_ref || !count_ans) {
        rc = duel_error_set(err, DUEL_ENOMEM, "lexical oracle: out of memory");
        goto done;
    }
    memcpy(all, ref.words, sizeof *all * ref.count);
    memcpy(all + ref.count, ans.words, sizeof *all * ans.count);
    qsort(all, total, sizeof *all, cmp_str_ptr);
    /* ids[k] for the word at position k of ref then ans: find by binary search on the sorted
     * array of distinct words. */
    size_t distinct = 0;
    for (size_t i = 0; i < total; i++)
        if (i == 0 || strcmp(all[i], all[distinct - 1]) != 0) all[distinct++] = all[i];
    for (size_t k = 0; k < total; k++) {
        char *w = k < ref.count ? ref.words[k] : ans.words[k - ref.count];
        char **hit = bsearch(&w, all, distinct, sizeof *all, cmp_str_ptr);
        ids[k] = (uint32_t)(hit - all);
        if (k < ref.count) count_ref[ids[k]]++;
        else count_ans[ids[k]]++;
    }
    size_t common = 0;
    for (size_t i = 0; i < distinct; i++)
        common += count_ref[i] < count_ans[i] ? count_ref[i] : count_ans[i];

    oracle_lexical_detail d;
    memset(&d, 0, sizeof d);
    d.answer_words = ans.count;
    d.reference_words = ref.count;
    d.common_words = common;
    if (common > 0) {
        d.precision = (double)common / (double)ans.count;
        d.recall = (double)common / (double)ref.count;
        d.f1 = 2 * d.precision * d.recall / (d.precision + d.recall);
    }
    d.length_ratio = (double)ans.count / (double)ref.count;
    d.length_penalty = d.length_ratio > c->length_target_ratio
                           ? d.length_ratio - c->length_target_ratio : 0.0;
    if ((rc = repeated_fraction(ids + ref.count, ans.count, 2, &d.repetition_bigram, err)) ||
        (rc = repeated_fraction(ids + ref.count, ans.count, 3, &d.repetition_trigram, err)))
        goto done;
    d.repetition = (d.repetition_bigram + d.repetition_trigram) / 2;
    if (c->char_ngram_weight > 0 && (rc = char_trigram_f1(&ref, &ans, &d.char_f1, err))) goto done;
    d.score = c->overlap_weight * d.f1 + c->char_ngram_weight * d.char_f1 -
              c->length_weight * d.length_penalty - c->repetition_weight * d.repetition;
    *score = d.score;
    if (detail) *detail = d;
done:
    free(all);
    free(ids);
    free(count_ref);
    free(count_ans);
    word_list_free(&ref);
    word_list_free(&ans);
    return rc;
}
