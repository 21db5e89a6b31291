/* tokenizer_unicode.c: lookups over the generated tables in unicode_tables.c (categories by
 * binary search over sorted ranges, NFC data by binary search over sorted code points). */
#include "unicode_tables.h"

static bool in_ranges(const unicode_range *r, size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid].first) hi = mid;
        else if (cp > r[mid].last) lo = mid + 1;
        else return true;
    }
    return false;
}

bool unicode_is_letter(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(unicode_letter_ranges, unicode_letter_ranges_count, cp);
}

bool unicode_is_number(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(unicode_number_ranges, unicode_number_ranges_count, cp);
}

bool unicode_is_space(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    return in_ranges(unicode_space_ranges, unicode_space_ranges_count, cp);
}

int unicode_ccc_rank(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = unicode_ccc_table_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < unicode_ccc_table[mid].cp) hi = mid;
        else if (cp > unicode_ccc_table[mid].cp) lo = mid + 1;
        else return unicode_ccc_table[mid].rank;
    }
    return 0;
}

const uint32_t *unicode_decompose(uint32_t cp, size_t *length) {
    size_t lo = 0, hi = unicode_decomposition_table_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const unicode_decomposition *d = &unicode_decomposition_table[mid];
        if (cp < d->cp) hi = mid;
        else if (cp > d->cp) lo = mid + 1;
        else {
            *length = d->length;
            return &unicode_decomposition_pool[d->offset];
        }
    }
    return NULL;
}

enum {
    HANGUL_S_BASE = 0xAC00, HANGUL_L_BASE = 0x1100, HANGUL_V_BASE = 0x1161,
    HANGUL_T_BASE = 0x11A7, HANGUL_L_COUNT = 19, HANGUL_V_COUNT = 21, HANGUL_T_COUNT = 28,
    HANGUL_S_COUNT = 11172,
};

uint32_t unicode_compose(uint32_t first, uint32_t second) {
    if (first >= HANGUL_L_BASE && first < HANGUL_L_BASE + HANGUL_L_COUNT &&
        second >= HANGUL_V_BASE && second < HANGUL_V_BASE + HANGUL_V_COUNT)
        return HANGUL_S_BASE +
               ((first - HANGUL_L_BASE) * HANGUL_V_COUNT + (second - HANGUL_V_BASE)) * HANGUL_T_COUNT;
    if (first >= HANGUL_S_BASE && first < HANGUL_S_BASE + HANGUL_S_COUNT &&
        (first - HANGUL_S_BASE) % HANGUL_T_COUNT == 0 && second > HANGUL_T_BASE &&
        second < HANGUL_T_BASE + HANGUL_T_COUNT)
        return first + (second - HANGUL_T_BASE);
    size_t lo = 0, hi = unicode_composition_table_count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const unicode_composition *c = &unicode_composition_table[mid];
        if (first < c->first || (first == c->first && second < c->second)) hi = mid;
        else if (first > c->first || second > c->second) lo = mid + 1;
        else return c->composite;
    }
    return 0;
}
