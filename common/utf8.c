/* utf8.c: UTF-8 per RFC 3629 and the maximal-subpart replacement rule (see utf8.h). Every
 * function here is built on duel_utf8_next (in utf8.h), the one decoder. */
#include "utf8.h"

#include <string.h>

int duel_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    size_t len;
    return duel_utf8_next(s, n, &len, cp) == DUEL_UTF8_CHAR ? (int)len : 0;
}

bool duel_utf8_valid(const char *s, size_t n, size_t *bad_offset) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t len;
        uint32_t cp;
        if (duel_utf8_next(p + i, n - i, &len, &cp) != DUEL_UTF8_CHAR) {
            if (bad_offset) *bad_offset = i;
            return false;
        }
        i += len;
    }
    return true;
}

size_t duel_utf8_lossy(const char *s, size_t n, unsigned flags, char *out) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        size_t len;
        uint32_t cp = 0;
        duel_utf8_kind k = duel_utf8_next(p + i, n - i, &len, &cp);
        if (k == DUEL_UTF8_CHAR && !(cp == 0 && (flags & DUEL_UTF8_LOSSY_NUL))) {
            memcpy(out + o, p + i, len);
            o += len;
        } else {
            memcpy(out + o, DUEL_UTF8_REPLACEMENT, 3);
            o += 3;
        }
        i += len;
    }
    return o;
}

int duel_utf8_encode(uint32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0;
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    if (cp > 0x10FFFF) return 0;
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
