/* model_config.h: the parsed, validated contents of a Hugging Face config.json for the
 * architectures we serve: LlamaForCausalLM (also Qwen2ForCausalLM = Llama with qkv bias) and
 * GPTNeoXForCausalLM, plus their *ForSequenceClassification variants (reward models). */
#ifndef DUEL_MODEL_CONFIG_H
#define DUEL_MODEL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "error.h"

#define MODEL_CONFIG_MAX_EOS 8
#define MODEL_CONFIG_MAX_JSON_BYTES (1u << 20)

typedef enum model_arch { MODEL_ARCH_LLAMA, MODEL_ARCH_GPT_NEOX } model_arch;
typedef enum model_head { MODEL_HEAD_CAUSAL_LM, MODEL_HEAD_SEQUENCE_CLASSIFICATION } model_head;
typedef enum model_activation { MODEL_ACT_SILU, MODEL_ACT_GELU, MODEL_ACT_GELU_TANH } model_activation;
typedef enum model_rope_scaling { MODEL_ROPE_NONE, MODEL_ROPE_LINEAR, MODEL_ROPE_LLAMA3 } model_rope_scaling;

typedef struct model_config {
    char architecture[64]; /* as written, e.g. "LlamaForCausalLM" */
    model_arch arch;
    model_head head;
    int vocab_size;
    int hidden_size;
    int intermediate_size;
    int num_layers;
    int num_heads;
    int num_kv_heads; /* == num_heads without GQA */
    int head_dim;     /* hidden_size / num_heads unless config says otherwise */
    int rotary_dim;   /* head_dim, or head_dim * rotary_pct for GPT-NeoX partial rotary */
    int max_position_embeddings;
    double norm_eps;  /* rms_norm_eps (Llama) or layer_norm_eps (GPT-NeoX) */
    double rope_theta;
    model_rope_scaling rope_scaling;
    double rope_factor;               /* linear and llama3 */
    double rope_low_freq_factor;      /* llama3 */
    double rope_high_freq_factor;     /* llama3 */
    int rope_original_max_positions;  /* llama3 */
    model_activation activation;
    bool tie_word_embeddings;
    bool attention_bias; /* q/k/v (and for Llama's attention_bias also o) biases */
    bool attention_out_bias;
    bool mlp_bias;
    bool use_parallel_residual; /* GPT-NeoX */
    int num_labels;             /* sequence classification heads */
    int bos_token_id;           /* -1 when absent */
    int pad_token_id;           /* -1 when absent */
    int eos_token_ids[MODEL_CONFIG_MAX_EOS];
    int num_eos_token_ids;
} model_config;

/* Parses config.json text; source names it in messages. Unknown architectures, missing or
 * inconsistent sizes (hidden not divisible by heads, kv heads not dividing heads, ...) are
 * DUEL_EFORMAT / DUEL_EUNSUPPORTED errors naming the key. */
int model_config_parse(const char *text, size_t len, const char *source, model_config *out,
                       duel_error *err);
int model_config_load(const char *path, model_config *out, duel_error *err);

/* Number of parameters the config implies (for reports). */
long long model_config_num_parameters(const model_config *config);

#endif
