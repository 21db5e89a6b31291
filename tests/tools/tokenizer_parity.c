/* tokenizer_parity.c: the C side of the tokenizer parity test. Reads parity.json written by
 * tokenizer_parity.mjs (strings, and the ids and decoded text that @huggingface/tokenizers gives
 * for each pre-tokenizer configuration), encodes every string with our tokenizer, compares ids
 * exactly, checks that decoding gives the reference's text (the string itself, except where the
 * configuration changes the text: NFC, a prefix space) and prints a summary or the first
 * mismatches with context.
 * Usage: tokenizer_parity PARITY_JSON. Exit 0 when everything matches. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "timer.h"
#include "tokenizer.h"

#define MAX_REPORTED 10

static void print_escaped(const char *s, size_t n) {
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c < 0x20 || c == 0x7F) printf("\\x%02X", c);
        else putchar(c);
    }
    putchar('"');
}

static void print_ids(const char *label, const int32_t *ids, size_t n) {
    printf("    %s (%zu):", label, n);
    for (size_t i = 0; i < n && i < 64; i++) printf(" %d", ids[i]);
    if (n > 64) printf(" ...");
    printf("\n");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PARITY_JSON\n", argv[0]);
        return 2;
    }
    json_error_t jerr;
    json_t *root = json_load_file(argv[1], JSON_ALLOW_NUL, &jerr);
    if (!root) {
        fprintf(stderr, "%s: %s (line %d)\n", argv[1], jerr.text, jerr.line);
        return 1;
    }
    json_t *configs = json_object_get(root, "configs"), *cases = json_object_get(root, "cases");
    size_t n_configs = json_array_size(configs), n_cases = json_array_size(cases);
    if (!n_configs || !n_cases) {
        fprintf(stderr, "%s: no configs or no cases\n", argv[1]);
        return 1;
    }
    size_t failures = 0, comparisons = 0;
    double encode_seconds = 0;
    for (size_t c = 0; c < n_configs; c++) {
        json_t *cfg = json_array_get(configs, c);
        const char *name = json_string_value(json_object_get(cfg, "name"));
        const char *path = json_string_value(json_object_get(cfg, "tokenizer"));
        bool identity = json_is_true(json_object_get(cfg, "identity"));
        tokenizer *tok;
        duel_error err = {0};
        if (tokenizer_load(path, &tok, &err)) {
            fprintf(stderr, "config %s: %s\n", name, err.message);
            return 1;
        }
        size_t config_failures = 0;
        for (size_t k = 0; k < n_cases; k++) {
            json_t *cs = json_array_get(cases, k);
            json_t *jtext = json_object_get(cs, "text");
            const char *text = json_string_value(jtext);
            size_t len = json_string_length(jtext);
            json_t *want = json_object_get(json_object_get(cs, "ids"), name);
            json_t *want_text = json_object_get(json_object_get(cs, "decoded"), name);
            int32_t *ids = NULL;
            size_t n = 0;
            comparisons++;
            double t0 = duel_time_seconds();
            int rc = tokenizer_encode(tok, text, len, true, &ids, &n, &err);
            encode_seconds += duel_time_seconds() - t0;
            bool ok = rc == 0 && n == json_array_size(want);
            for (size_t i = 0; ok && i < n; i++)
                ok = ids[i] == (int32_t)json_integer_value(json_array_get(want, i));
            char *decoded = NULL;
            size_t decoded_len = 0;
            bool decode_ok = false;
            if (rc == 0 && tokenizer_decode(tok, ids, n, false, &decoded, &decoded_len, &err) == 0) {
                decode_ok = decoded_len == json_string_length(want_text) &&
                            memcmp(decoded, json_string_value(want_text), decoded_len) == 0;
                if (identity) decode_ok = decode_ok && decoded_len == len && memcmp(decoded, text, len) == 0;
            }
            if (!ok || !decode_ok) {
                failures++;
                if (config_failures++ < MAX_REPORTED) {
                    printf("MISMATCH config %s case %zu%s: ", name, k, ok ? " (decode only)" : "");
                    print_escaped(text, len);
                    printf("\n");
                    if (rc) printf("    error: %s\n", err.message);
                    int32_t wanted[4096];
                    size_t nw = json_array_size(want) < 4096 ? json_array_size(want) : 4096;
                    for (size_t i = 0; i < nw; i++)
                        wanted[i] = (int32_t)json_integer_value(json_array_get(want, i));
                    print_ids("reference", wanted, nw);
                    print_ids("ours     ", ids, n);
                    if (decoded) {
                        printf("    decoded: ");
                        print_escaped(decoded, decoded_len);
                        printf("\n    expected: ");
                        print_escaped(json_string_value(want_text), json_string_length(want_text));
                        printf("\n");
                    }
                }
            }
            free(ids);
            free(decoded);
        }
        printf("config %-10s: %zu strings, %zu mismatches\n", name, n_cases, config_failures);
        tokenizer_free(tok);
    }
    json_decref(root);
    if (failures) {
        printf("tokenizer parity: %zu of %zu comparisons differ\n", failures, comparisons);
        return 1;
    }
    printf("tokenizer parity: %zu strings, %zu configs: all match (encode %.3f s in total)\n", n_cases,
           n_configs, encode_seconds);
    return 0;
}
