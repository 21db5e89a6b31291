/* tokenizer_pretok.c: the pre-tokenizer regexes of GPT-2, Llama 3 and Qwen2 (and the Digits
 * pre-tokenizer) as small hand-written matchers instead of a regex engine. Each matcher returns
 * where the leftmost alternative that matches at position i ends, reproducing the backtracking
 * of the original pattern (notably \s+(?!\S), which leaves a run's last space for the next piece
 * when a non-space follows, and \s*[\r\n]+, which ends at the run's last line break). Character
 * classes follow Oniguruma (what Hugging Face tokenizers compiles the patterns with): \p{L},
 * \p{N} by general category, \s is White_Space; (?i:...) folds case as Unicode does, so 's also
 * matches 'S and 'ſ (U+017F, whose case folding is s). */
#include "tokenizer.h"
#include "tokenizer_internal.h"
#include "unicode_tables.h"

const char *const tokenizer_pattern_gpt2 =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char *const tokenizer_pattern_llama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char *const tokenizer_pattern_qwen2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

bool tokenizer_is_space_cp(uint32_t cp) { return unicode_is_space(cp); }

size_t tokenizer_gpt2_piece_end(const char *s, size_t n, size_t i) {
    return tokenizer_pattern_match(TOKENIZER_PATTERN_GPT2, (const unsigned char *)s, n, i);
}

typedef enum char_class { CLASS_LETTER, CLASS_NUMBER, CLASS_SPACE, CLASS_OTHER } char_class;

static char_class classify(uint32_t cp) {
    if (unicode_is_letter(cp)) return CLASS_LETTER;
    if (unicode_is_number(cp)) return CLASS_NUMBER;
    if (unicode_is_space(cp)) return CLASS_SPACE;
    return CLASS_OTHER;
}

/* End of the run of characters of class cls starting at i. */
static size_t run_of(const unsigned char *s, size_t n, size_t i, char_class cls) {
    while (i < n) {
        uint32_t cp;
        size_t len = tokenizer_cp_at(s, n, i, &cp);
        if (classify(cp) != cls) break;
        i += len;
    }
    return i;
}

/* The contractions 's 't 're 've 'm 'll 'd at i (s[i] == '\''); case-insensitive for Llama 3.
 * Returns the end or 0. */
static size_t match_contraction(const unsigned char *s, size_t n, size_t i, bool fold) {
    size_t j = i + 1;
    if (j >= n) return 0;
    unsigned char a = s[j], b = j + 1 < n ? s[j + 1] : 0;
    if (fold) {
        /* U+017F LATIN SMALL LETTER LONG S (C5 BF) folds to 's'. */
        if (a == 0xC5 && b == 0xBF) return j + 2;
        if (a >= 'A' && a <= 'Z') a = (unsigned char)(a + 32);
        if (b >= 'A' && b <= 'Z') b = (unsigned char)(b + 32);
    }
    switch (a) {
    case 's': case 't': case 'm': case 'd': return j + 1;
    case 'r': case 'v': return b == 'e' ? j + 2 : 0;
    case 'l': return b == 'l' ? j + 2 : 0;
    default: return 0;
    }
}

/* \s+(?!\S)|\s+ at i (s[i] is a space): the whole run when it reaches the end or is one
 * character long, otherwise the run without its last character. */
static size_t match_space_run(const unsigned char *s, size_t n, size_t i) {
    size_t j = i, last = i;
    while (j < n) {
        uint32_t cp;
        size_t len = tokenizer_cp_at(s, n, j, &cp);
        if (!unicode_is_space(cp)) break;
        last = j;
        j += len;
    }
    if (j == n || last == i) return j;
    return last;
}

static size_t match_gpt2(const unsigned char *s, size_t n, size_t i) {
    uint32_t c0, c1 = 0;
    size_t len0 = tokenizer_cp_at(s, n, i, &c0);
    if (c0 == '\'') {
        size_t e = match_contraction(s, n, i, false);
        if (e) return e;
    }
    char_class k0 = classify(c0), k1 = CLASS_SPACE;
    if (i + len0 < n) {
        tokenizer_cp_at(s, n, i + len0, &c1);
        k1 = classify(c1);
    }
    if (c0 == ' ' && i + len0 < n && k1 != CLASS_SPACE) return run_of(s, n, i + len0, k1);
    if (k0 != CLASS_SPACE) return run_of(s, n, i, k0);
    return match_space_run(s, n, i);
}

static size_t match_llama3(const unsigned char *s, size_t n, size_t i, int max_digits) {
    uint32_t c0, c1 = 0;
    size_t len0 = tokenizer_cp_at(s, n, i, &c0);
    if (c0 == '\'') {
        size_t e = match_contraction(s, n, i, true);
        if (e) return e;
    }
    char_class k0 = classify(c0), k1 = CLASS_SPACE;
    bool has_next = i + len0 < n;
    if (has_next) {
        tokenizer_cp_at(s, n, i + len0, &c1);
        k1 = classify(c1);
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (k0 != CLASS_LETTER && k0 != CLASS_NUMBER && c0 != '\r' && c0 != '\n' && has_next &&
        k1 == CLASS_LETTER)
        return run_of(s, n, i + len0, CLASS_LETTER);
    if (k0 == CLASS_LETTER) return run_of(s, n, i, CLASS_LETTER);
    /* \p{N}{1,3} or \p{N} */
    if (k0 == CLASS_NUMBER) {
        size_t j = i;
        for (int d = 0; d < max_digits && j < n; d++) {
            uint32_t cp;
            size_t len = tokenizer_cp_at(s, n, j, &cp);
            if (!unicode_is_number(cp)) break;
            j += len;
        }
        return j;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    size_t j = 0;
    if (c0 == ' ' && has_next && k1 == CLASS_OTHER) j = run_of(s, n, i + len0, CLASS_OTHER);
    else if (k0 == CLASS_OTHER) j = run_of(s, n, i, CLASS_OTHER);
    if (j) {
        while (j < n && (s[j] == '\r' || s[j] == '\n')) j++;
        return j;
    }
    /* \s*[\r\n]+ : ends after the last line break of the space run, if it has one. */
    size_t end = i, after_break = 0;
    while (end < n) {
        uint32_t cp;
        size_t len = tokenizer_cp_at(s, n, end, &cp);
        if (!unicode_is_space(cp)) break;
        end += len;
        if (cp == '\r' || cp == '\n') after_break = end;
    }
    if (after_break) return after_break;
    return match_space_run(s, n, i);
}

size_t tokenizer_pattern_match(tokenizer_split_pattern pattern, const unsigned char *s, size_t n,
                               size_t i) {
    switch (pattern) {
    case TOKENIZER_PATTERN_GPT2: return match_gpt2(s, n, i);
    case TOKENIZER_PATTERN_LLAMA3: return match_llama3(s, n, i, 3);
    case TOKENIZER_PATTERN_QWEN2: return match_llama3(s, n, i, 1);
    }
    return n;
}

size_t tokenizer_digits_match(bool individual, const unsigned char *s, size_t n, size_t i) {
    uint32_t cp;
    size_t len = tokenizer_cp_at(s, n, i, &cp);
    bool number = unicode_is_number(cp);
    if (number && individual) return i + len;
    size_t j = i + len;
    while (j < n) {
        len = tokenizer_cp_at(s, n, j, &cp);
        if (unicode_is_number(cp) != number) break;
        j += len;
    }
    return j;
}
