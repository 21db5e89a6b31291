/* fuzz_judge_response.c: libFuzzer target for the untrusted text the oracles read: the judge's
 * chat-completion response (oracle_judge_parse_response in oracle/judge.c) and model answers
 * scored by the lexical oracle (oracle/lexical.c; the input split at its first 0xff byte into
 * reference and answer). A rejection must carry its code and a message; an accepted verdict is A
 * or B; a lexical score is finite and at most the overlap weight, with consistent details. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "oracle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    oracle_choice choice = (oracle_choice)-1;
    duel_error err = {0};
    int rc = oracle_judge_parse_response((const char *)data, size, &choice, &err);
    if (rc != 0) {
        if (err.code != rc || err.message[0] == '\0' || choice != (oracle_choice)-1)
            __builtin_trap();
    } else if (choice != ORACLE_PREFER_A && choice != ORACLE_PREFER_B) {
        __builtin_trap();
    }

    const uint8_t *cut = memchr(data, 0xff, size);
    size_t ref_len = cut ? (size_t)(cut - data) : size / 2;
    size_t ans_off = cut ? ref_len + 1 : ref_len;
    oracle_lexical_config c;
    oracle_lexical_config_default(&c);
    double score = NAN;
    oracle_lexical_detail d;
    rc = oracle_lexical_score(&c, (const char *)data, ref_len, (const char *)data + ans_off,
                              size - ans_off, &score, &d, &err);
    if (rc != 0) {
        if (err.code != rc || !isnan(score)) __builtin_trap();
        return 0;
    }
    if (!isfinite(score) || score > c.overlap_weight + 1e-12 || d.reference_words == 0 ||
        d.common_words > d.answer_words || d.common_words > d.reference_words || d.f1 < 0 ||
        d.f1 > 1 || d.repetition < 0 || d.repetition > 1 || d.length_penalty < 0)
        __builtin_trap();
    return 0;
}
