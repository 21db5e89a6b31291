/* fuzz_tokenizer.c: libFuzzer target for the tokenizer.json loader. Every input is loaded with
 * tokenizer_load_buffer; when it loads, a fixed string (with special tokens and mixed scripts) and
 * the input bytes themselves (when valid UTF-8) are encoded and decoded, and the ids are checked
 * to be in range. Crashes, leaks and sanitizer reports are the failures. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

static void exercise(const tokenizer *tok, const char *text, size_t len) {
    int32_t *ids;
    size_t n;
    if (tokenizer_encode(tok, text, len, true, &ids, &n, NULL) != 0) return;
    int vocab = tokenizer_vocab_size(tok);
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab) abort();
    char *back;
    size_t back_len;
    if (tokenizer_decode(tok, ids, n, false, &back, &back_len, NULL) == 0) free(back);
    if (tokenizer_decode(tok, ids, n, true, &back, &back_len, NULL) == 0) free(back);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tokenizer *tok;
    duel_error err;
    if (tokenizer_load_buffer((const char *)data, size, "fuzz.json", &tok, &err) != 0) return 0;
    static const char fixed[] = "Hello, world! It's 2024: 12345 \t\n\n  <|endoftext|><|im_start|>user\n"
                                "caf\xC3\xA9 e\xCC\x81 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\x98\x80 'S 'll";
    exercise(tok, fixed, sizeof fixed - 1);
    exercise(tok, (const char *)data, size < 4096 ? size : 4096);
    int32_t some_ids[] = {0, 1, 2, tokenizer_vocab_size(tok) - 1};
    char *back;
    size_t back_len;
    if (tokenizer_decode(tok, some_ids, 4, false, &back, &back_len, NULL) == 0) free(back);
    tokenizer_free(tok);
    return 0;
}
