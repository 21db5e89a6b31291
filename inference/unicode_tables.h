/* unicode_tables.h: the Unicode data the tokenizer needs (generated into unicode_tables.c by
 * tests/tools/gen_unicode_tables.js from node's Unicode data, the same data the parity reference
 * uses): general categories L and N, the White_Space property (what \s means in Oniguruma and in
 * tokenizers.js), and NFC data. Lookups are binary searches over sorted tables. */
#ifndef DUEL_UNICODE_TABLES_H
#define DUEL_UNICODE_TABLES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct unicode_range {
    uint32_t first, last; /* inclusive */
} unicode_range;

typedef struct unicode_ccc_entry {
    uint32_t cp;
    uint8_t rank; /* order of the canonical combining class among non-zero classes (1 = lowest) */
} unicode_ccc_entry;

typedef struct unicode_decomposition {
    uint32_t cp;
    uint32_t offset, length; /* into unicode_decomposition_pool: the full canonical decomposition */
} unicode_decomposition;

typedef struct unicode_composition {
    uint32_t first, second, composite; /* sorted by (first, second) */
} unicode_composition;

extern const unicode_range unicode_letter_ranges[];
extern const size_t unicode_letter_ranges_count;
extern const unicode_range unicode_number_ranges[];
extern const size_t unicode_number_ranges_count;
extern const unicode_range unicode_space_ranges[];
extern const size_t unicode_space_ranges_count;
extern const unicode_ccc_entry unicode_ccc_table[];
extern const size_t unicode_ccc_table_count;
extern const uint32_t unicode_decomposition_pool[];
extern const unicode_decomposition unicode_decomposition_table[];
extern const size_t unicode_decomposition_table_count;
extern const unicode_composition unicode_composition_table[];
extern const size_t unicode_composition_table_count;

/* \p{L}, \p{N}, \s (White_Space). */
bool unicode_is_letter(uint32_t cp);
bool unicode_is_number(uint32_t cp);
bool unicode_is_space(uint32_t cp);

/* Canonical combining class rank (0 for starters). */
int unicode_ccc_rank(uint32_t cp);
/* Full canonical decomposition of cp (not Hangul), or NULL when cp does not decompose. */
const uint32_t *unicode_decompose(uint32_t cp, size_t *length);
/* The primary composite of (first, second), Hangul included, or 0 when there is none. */
uint32_t unicode_compose(uint32_t first, uint32_t second);

#endif
