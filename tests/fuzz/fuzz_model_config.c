/* fuzz_model_config.c: libFuzzer target for the config.json parser (model_config_parse in
 * inference/model_config.c). Rejections must carry a message naming the source; an accepted
 * config must satisfy every invariant the forward pass relies on. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "model_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    model_config c;
    duel_error err = {0};
    int rc = model_config_parse((const char *)data, size, "fuzz/config.json", &c, &err);
    if (rc != 0) {
        if (err.code != rc || !strstr(err.message, "fuzz/config.json")) __builtin_trap();
        return 0;
    }
    bool ok = c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 &&
              c.num_layers > 0 && c.num_heads > 0 && c.num_kv_heads > 0 && c.head_dim > 0 &&
              c.num_heads % c.num_kv_heads == 0 && c.rotary_dim > 0 && c.rotary_dim % 2 == 0 &&
              c.rotary_dim <= c.head_dim && c.norm_eps > 0 && c.rope_theta > 0 &&
              c.max_position_embeddings > 0 && c.num_eos_token_ids >= 0 &&
              c.num_eos_token_ids <= MODEL_CONFIG_MAX_EOS && c.bos_token_id < c.vocab_size &&
              c.pad_token_id < c.vocab_size && memchr(c.architecture, 0, sizeof c.architecture) &&
              (c.head != MODEL_HEAD_SEQUENCE_CLASSIFICATION || c.num_labels > 0) &&
              model_config_num_parameters(&c) > 0;
    for (int i = 0; ok && i < c.num_eos_token_ids; i++)
        ok = c.eos_token_ids[i] >= 0 && c.eos_token_ids[i] < c.vocab_size;
    if (!ok) __builtin_trap();
    return 0;
}
