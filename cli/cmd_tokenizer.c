/* cmd_tokenizer.c: `duel tokenizer train`: trains a byte-level BPE tokenizer on text files and
 * writes an HF tokenizer.json (trainer/bpe_train.h), with the chatml special tokens by default. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_train.h"
#include "cli.h"
#include "file_map.h"
#include "timer.h"

#define TOKENIZER_MAX_INPUTS 64
#define TOKENIZER_MAX_INPUT_BYTES ((size_t)2 << 30)

static int split_list(char *list, char **items, int cap) {
    int n = 0;
    for (char *s = strtok(list, ","); s != NULL && n < cap; s = strtok(NULL, ",")) {
        if (*s) items[n++] = s;
    }
    return n;
}

static int tokenizer_train(int argc, char **argv) {
    const char *inputs = NULL, *out = NULL, *special = "<|endoftext|>,<|im_start|>,<|im_end|>";
    long long vocab_size = 4096, min_frequency = 2;
    const cli_option options[] = {
        {"--input", CLI_OPT_STRING, &inputs, "FILES",
         "comma-separated UTF-8 text files to train on (required)", 0, 0, false, NULL},
        {"--out", CLI_OPT_STRING, &out, "FILE", "tokenizer.json to write (required)", 0, 0, false,
         NULL},
        {"--vocab-size", CLI_OPT_INT, &vocab_size, "N",
         "total vocabulary: 256 bytes + merges + special tokens (default 4096)", 257,
         BPE_TRAIN_MAX_VOCAB, false, NULL},
        {"--min-frequency", CLI_OPT_INT, &min_frequency, "N",
         "merge only pairs seen at least N times (default 2)", 1, 1e15, false, NULL},
        {"--special", CLI_OPT_STRING, &special, "LIST",
         "comma-separated special tokens, given the last ids "
         "(default <|endoftext|>,<|im_start|>,<|im_end|>)", 0, 0, false, NULL},
    };
    const cli_command cmd = {
        "tokenizer train", "--input FILES --out tokenizer.json [options]",
        "Trains a byte-level BPE tokenizer (GPT-2 pre-tokenizer, no prefix space) on the input\n"
        "text and writes a Hugging Face tokenizer.json. Merges are taken most frequent first\n"
        "(ties by token id, so the result is deterministic) until the vocabulary is full or no\n"
        "pair is frequent enough.",
        options, sizeof options / sizeof options[0]};
    int rc = cli_parse(&cmd, argc, argv);
    if (rc) return rc < 0 ? CLI_EXIT_OK : rc;
    if (inputs == NULL || out == NULL) return cli_usage_error(&cmd, "--input and --out are required");

    char *input_list = strdup(inputs), *special_list = strdup(special);
    char *files[TOKENIZER_MAX_INPUTS];
    const char *specials[BPE_TRAIN_MAX_SPECIAL];
    int n_files = split_list(input_list, files, TOKENIZER_MAX_INPUTS);
    int n_special = split_list(special_list, (char **)specials, BPE_TRAIN_MAX_SPECIAL);
    bpe_trainer *trainer = NULL;
    duel_error err = {0};
    double t0 = duel_time_seconds();
    rc = bpe_trainer_create(&trainer, &err);
    size_t total = 0;
    for (int i = 0; rc == 0 && i < n_files; i++) {
        char *text = NULL;
        size_t len = 0;
        rc = duel_file_read_all(files[i], TOKENIZER_MAX_INPUT_BYTES, &text, &len, &err);
        if (rc == 0) rc = bpe_trainer_add_text(trainer, text, len, files[i], &err);
        total += len;
        free(text);
    }
    bpe_train_options o = {(int)vocab_size, min_frequency, specials, n_special};
    if (rc == 0) rc = bpe_trainer_train(trainer, &o, &err);
    if (rc == 0) rc = bpe_trainer_write_json(trainer, out, &err);
    if (rc == 0) {
        printf("tokenizer: %d merges, vocabulary %d (%d special) from %zu bytes in %.1f s -> %s\n",
               bpe_trainer_num_merges(trainer), bpe_trainer_vocab_size(trainer), n_special, total,
               duel_time_seconds() - t0, out);
    } else {
        fprintf(stderr, "duel tokenizer train: %s\n", err.message);
    }
    bpe_trainer_free(trainer);
    free(input_list);
    free(special_list);
    return rc == 0 ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc >= 1 && strcmp(argv[0], "train") == 0) return tokenizer_train(argc - 1, argv + 1);
    FILE *f = argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0) ? stdout : stderr;
    fprintf(f, "usage: duel tokenizer train --input FILES --out tokenizer.json [options]\n\n"
               "subcommands:\n  train  train a byte-level BPE tokenizer and write tokenizer.json\n");
    return f == stdout ? CLI_EXIT_OK : CLI_EXIT_USAGE;
}
