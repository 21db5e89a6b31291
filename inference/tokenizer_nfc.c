/* tokenizer_nfc.c: Unicode NFC (the normalizer Qwen2's tokenizer.json names) over the generated
 * tables: full canonical decomposition (Hangul algorithmically), canonical reordering of
 * non-starter runs by combining class, then canonical composition of unblocked pairs. Text with
 * nothing at or above U+0300 is NFC already and is left alone. */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"
#include "unicode_tables.h"
#include "utf8.h"

enum { HANGUL_S = 0xAC00, HANGUL_COUNT = 11172 };

typedef struct cp_buffer {
    uint32_t *cp;
    size_t n, cap;
} cp_buffer;

static bool push_cp(cp_buffer *b, uint32_t cp) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        uint32_t *p = realloc(b->cp, cap * sizeof *p);
        if (!p) return false;
        b->cp = p;
        b->cap = cap;
    }
    b->cp[b->n++] = cp;
    return true;
}

bool tokenizer_nfc(const unsigned char *s, size_t n, unsigned char **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    bool simple = true;
    for (size_t i = 0; i < n; i++)
        if (s[i] >= 0xCC) { /* lead bytes from 0xCC on start code points >= U+0300 */
            simple = false;
            break;
        }
    if (simple) return true;

    cp_buffer d = {0};
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += tokenizer_cp_at(s, n, i, &cp);
        size_t len;
        const uint32_t *dec;
        if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_COUNT) {
            uint32_t k = cp - HANGUL_S;
            if (!push_cp(&d, 0x1100 + k / 588) || !push_cp(&d, 0x1161 + (k % 588) / 28)) goto oom;
            if (k % 28 && !push_cp(&d, 0x11A7 + k % 28)) goto oom;
        } else if ((dec = unicode_decompose(cp, &len)) != NULL) {
            for (size_t k = 0; k < len; k++)
                if (!push_cp(&d, dec[k])) goto oom;
        } else if (!push_cp(&d, cp)) {
            goto oom;
        }
    }
    /* Canonical ordering: stable insertion sort inside each run of non-starters. */
    for (size_t i = 1; i < d.n; i++) {
        int cc = unicode_ccc_rank(d.cp[i]);
        if (!cc) continue;
        for (size_t j = i; j > 0 && unicode_ccc_rank(d.cp[j - 1]) > cc; j--) {
            uint32_t t = d.cp[j - 1];
            d.cp[j - 1] = d.cp[j];
            d.cp[j] = t;
        }
    }
    /* Composition, in place: out[0..w) is the result so far, starter its last starter. */
    size_t w = 0, starter = SIZE_MAX;
    int last_cc = 0;
    for (size_t i = 0; i < d.n; i++) {
        uint32_t c = d.cp[i];
        int cc = unicode_ccc_rank(c);
        if (starter != SIZE_MAX && (last_cc < cc || (last_cc == 0 && w - 1 == starter))) {
            uint32_t comp = unicode_compose(d.cp[starter], c);
            if (comp) {
                d.cp[starter] = comp;
                continue;
            }
        }
        if (cc == 0) {
            starter = w;
            last_cc = 0;
        } else {
            last_cc = cc;
        }
        d.cp[w++] = c;
    }
    unsigned char *o = malloc(w * 4 + 1);
    if (!o) goto oom;
    size_t olen = 0;
    for (size_t i = 0; i < w; i++) olen += (size_t)duel_utf8_encode(d.cp[i], (char *)o + olen);
    o[olen] = 0;
    free(d.cp);
    *out = o;
    *out_len = olen;
    return true;
oom:
    free(d.cp);
    return false;
}
