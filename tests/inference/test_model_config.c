/* test_model_config.c: config.json parsing (inference/model_config.c) on real-world configs
 * (Llama-3.2-1B, SmolLM2-135M, Qwen2.5-0.5B, TinyLlama-1.1B, Pythia-160m, reward-model heads) with
 * their published parameter counts, and a table of bad configs each asserting the code and the
 * message. */
#include "model_config.h"
#include "test_helpers.h"

static void assert_contains(const char *haystack, const char *needle) {
    if (!strstr(haystack, needle)) fail_msg("message \"%s\" lacks \"%s\"", haystack, needle);
}

static void parse_ok(const char *text, model_config *c) {
    duel_error err = {0};
    int rc = model_config_parse(text, strlen(text), "config.json", c, &err);
    if (rc) fail_msg("parse failed (%d): %s", rc, err.message);
}

/* meta-llama/Llama-3.2-1B-Instruct */
static const char *LLAMA_3_2_1B =
    "{\n"
    "  \"architectures\": [\"LlamaForCausalLM\"],\n"
    "  \"attention_bias\": false,\n"
    "  \"attention_dropout\": 0.0,\n"
    "  \"bos_token_id\": 128000,\n"
    "  \"eos_token_id\": [128001, 128008, 128009],\n"
    "  \"head_dim\": 64,\n"
    "  \"hidden_act\": \"silu\",\n"
    "  \"hidden_size\": 2048,\n"
    "  \"initializer_range\": 0.02,\n"
    "  \"intermediate_size\": 8192,\n"
    "  \"max_position_embeddings\": 131072,\n"
    "  \"mlp_bias\": false,\n"
    "  \"model_type\": \"llama\",\n"
    "  \"num_attention_heads\": 32,\n"
    "  \"num_hidden_layers\": 16,\n"
    "  \"num_key_value_heads\": 8,\n"
    "  \"pretraining_tp\": 1,\n"
    "  \"rms_norm_eps\": 1e-05,\n"
    "  \"rope_scaling\": {\n"
    "    \"factor\": 32.0,\n"
    "    \"high_freq_factor\": 4.0,\n"
    "    \"low_freq_factor\": 1.0,\n"
    "    \"original_max_position_embeddings\": 8192,\n"
    "    \"rope_type\": \"llama3\"\n"
    "  },\n"
    "  \"rope_theta\": 500000.0,\n"
    "  \"tie_word_embeddings\": true,\n"
    "  \"torch_dtype\": \"bfloat16\",\n"
    "  \"transformers_version\": \"4.45.0.dev0\",\n"
    "  \"use_cache\": true,\n"
    "  \"vocab_size\": 128256\n"
    "}\n";

/* HuggingFaceTB/SmolLM2-135M */
static const char *SMOLLM2_135M =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, "
    "\"attention_dropout\": 0.0, \"bos_token_id\": 0, \"eos_token_id\": 0, \"hidden_act\": "
    "\"silu\", \"hidden_size\": 576, \"initializer_range\": 0.041666666666666664, "
    "\"intermediate_size\": 1536, \"is_llama_config\": true, \"max_position_embeddings\": 8192, "
    "\"model_type\": \"llama\", \"num_attention_heads\": 9, \"num_hidden_layers\": 30, "
    "\"num_key_value_heads\": 3, \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, "
    "\"rope_interleaved\": false, \"rope_scaling\": null, \"rope_theta\": 100000, "
    "\"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"transformers_version\": "
    "\"4.40.1\", \"use_cache\": true, \"vocab_size\": 49152}";

/* Qwen/Qwen2.5-0.5B */
static const char *QWEN2_5_0_5B =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": "
    "151643, \"eos_token_id\": 151643, \"hidden_act\": \"silu\", \"hidden_size\": 896, "
    "\"initializer_range\": 0.02, \"intermediate_size\": 4864, \"max_position_embeddings\": "
    "32768, \"max_window_layers\": 24, \"model_type\": \"qwen2\", \"num_attention_heads\": 14, "
    "\"num_hidden_layers\": 24, \"num_key_value_heads\": 2, \"rms_norm_eps\": 1e-06, "
    "\"rope_theta\": 1000000.0, \"sliding_window\": 32768, \"tie_word_embeddings\": true, "
    "\"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.40.1\", \"use_cache\": true, "
    "\"use_mrope\": false, \"use_sliding_window\": false, \"vocab_size\": 151936}";

/* TinyLlama/TinyLlama-1.1B-Chat-v1.0 */
static const char *TINYLLAMA =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false, \"bos_token_id\": 1, "
    "\"eos_token_id\": 2, \"hidden_act\": \"silu\", \"hidden_size\": 2048, "
    "\"initializer_range\": 0.02, \"intermediate_size\": 5632, \"max_position_embeddings\": "
    "2048, \"model_type\": \"llama\", \"num_attention_heads\": 32, \"num_hidden_layers\": 22, "
    "\"num_key_value_heads\": 4, \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-05, "
    "\"rope_scaling\": null, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
    "\"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.35.0\", \"use_cache\": true, "
    "\"vocab_size\": 32000}";

/* EleutherAI/pythia-160m */
static const char *PYTHIA_160M =
    "{\"architectures\": [\"GPTNeoXForCausalLM\"], \"bos_token_id\": 0, \"eos_token_id\": 0, "
    "\"hidden_act\": \"gelu\", \"hidden_size\": 768, \"initializer_range\": 0.02, "
    "\"intermediate_size\": 3072, \"layer_norm_eps\": 1e-05, \"max_position_embeddings\": 2048, "
    "\"model_type\": \"gpt_neox\", \"num_attention_heads\": 12, \"num_hidden_layers\": 12, "
    "\"rotary_emb_base\": 10000, \"rotary_pct\": 0.25, \"tie_word_embeddings\": false, "
    "\"torch_dtype\": \"float16\", \"transformers_version\": \"4.24.0\", \"use_cache\": true, "
    "\"use_parallel_residual\": true, \"vocab_size\": 50304}";

static void test_llama_3_2_1b(void **state) {
    (void)state;
    model_config c;
    parse_ok(LLAMA_3_2_1B, &c);
    assert_string_equal(c.architecture, "LlamaForCausalLM");
    assert_int_equal(c.arch, MODEL_ARCH_LLAMA);
    assert_int_equal(c.head, MODEL_HEAD_CAUSAL_LM);
    assert_int_equal(c.vocab_size, 128256);
    assert_int_equal(c.hidden_size, 2048);
    assert_int_equal(c.intermediate_size, 8192);
    assert_int_equal(c.num_layers, 16);
    assert_int_equal(c.num_heads, 32);
    assert_int_equal(c.num_kv_heads, 8);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.rotary_dim, 64);
    assert_int_equal(c.max_position_embeddings, 131072);
    assert_true(c.norm_eps == 1e-5);
    assert_true(c.rope_theta == 500000.0);
    assert_int_equal(c.rope_scaling, MODEL_ROPE_LLAMA3);
    assert_true(c.rope_factor == 32.0);
    assert_true(c.rope_low_freq_factor == 1.0);
    assert_true(c.rope_high_freq_factor == 4.0);
    assert_int_equal(c.rope_original_max_positions, 8192);
    assert_int_equal(c.activation, MODEL_ACT_SILU);
    assert_true(c.tie_word_embeddings);
    assert_false(c.attention_bias);
    assert_false(c.attention_out_bias);
    assert_false(c.mlp_bias);
    assert_int_equal(c.bos_token_id, 128000);
    assert_int_equal(c.pad_token_id, -1);
    assert_int_equal(c.num_eos_token_ids, 3);
    assert_int_equal(c.eos_token_ids[0], 128001);
    assert_int_equal(c.eos_token_ids[2], 128009);
    assert_int_equal(model_config_num_parameters(&c), 1235814400LL); /* published count */
}

static void test_smollm2_135m(void **state) {
    (void)state;
    model_config c;
    parse_ok(SMOLLM2_135M, &c);
    assert_int_equal(c.num_heads, 9);
    assert_int_equal(c.num_kv_heads, 3);
    assert_int_equal(c.head_dim, 64);
    assert_true(c.rope_theta == 100000.0);
    assert_int_equal(c.rope_scaling, MODEL_ROPE_NONE);
    assert_true(c.tie_word_embeddings);
    assert_int_equal(c.bos_token_id, 0);
    assert_int_equal(c.num_eos_token_ids, 1);
    assert_int_equal(c.eos_token_ids[0], 0);
    assert_int_equal(model_config_num_parameters(&c), 134515008LL);
}

static void test_qwen2_5_0_5b(void **state) {
    (void)state;
    model_config c;
    parse_ok(QWEN2_5_0_5B, &c);
    assert_string_equal(c.architecture, "Qwen2ForCausalLM");
    assert_int_equal(c.arch, MODEL_ARCH_LLAMA);
    assert_int_equal(c.num_heads, 14);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 64);
    assert_true(c.norm_eps == 1e-6);
    assert_true(c.rope_theta == 1e6);
    assert_true(c.attention_bias);      /* q, k, v */
    assert_false(c.attention_out_bias); /* o has none */
    assert_false(c.mlp_bias);
    assert_true(c.tie_word_embeddings);
    assert_int_equal(c.eos_token_ids[0], 151643);
    assert_int_equal(model_config_num_parameters(&c), 494032768LL);
}

static void test_tinyllama(void **state) {
    (void)state;
    model_config c;
    parse_ok(TINYLLAMA, &c);
    assert_int_equal(c.num_kv_heads, 4);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_int_equal(c.bos_token_id, 1);
    assert_int_equal(c.eos_token_ids[0], 2);
    assert_int_equal(model_config_num_parameters(&c), 1100048384LL);
}

static void test_pythia_160m(void **state) {
    (void)state;
    model_config c;
    parse_ok(PYTHIA_160M, &c);
    assert_int_equal(c.arch, MODEL_ARCH_GPT_NEOX);
    assert_int_equal(c.head, MODEL_HEAD_CAUSAL_LM);
    assert_int_equal(c.num_heads, 12);
    assert_int_equal(c.num_kv_heads, 12);
    assert_int_equal(c.head_dim, 64);
    assert_int_equal(c.rotary_dim, 16);
    assert_true(c.rope_theta == 10000.0);
    assert_true(c.norm_eps == 1e-5);
    assert_int_equal(c.activation, MODEL_ACT_GELU);
    assert_true(c.use_parallel_residual);
    assert_true(c.attention_bias);
    assert_true(c.attention_out_bias);
    assert_true(c.mlp_bias);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(model_config_num_parameters(&c), 162322944LL);
}

static void test_defaults_and_variants(void **state) {
    (void)state;
    model_config c;
    /* Llama with every optional key absent: HF defaults. */
    parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
             "\"intermediate_size\":16,\"num_hidden_layers\":2,\"num_attention_heads\":2}",
             &c);
    assert_int_equal(c.num_kv_heads, 2);
    assert_int_equal(c.head_dim, 4);
    assert_true(c.norm_eps == 1e-6);
    assert_true(c.rope_theta == 10000.0);
    assert_int_equal(c.max_position_embeddings, 2048);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.num_eos_token_ids, 0);
    /* Llama biases and an untied head, counted by hand: embed 80; per layer norms 16, q 64+8,
     * k 32+4, v 32+4, o 64+8, mlp 384+40 = 656; two layers; final norm 8; lm_head 80. */
    parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
             "\"intermediate_size\":16,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
             "\"num_key_value_heads\":1,\"attention_bias\":true,\"mlp_bias\":true,"
             "\"pad_token_id\":-1,\"eos_token_id\":null,\"rope_scaling\":{\"type\":\"linear\","
             "\"factor\":2.0}}",
             &c);
    assert_true(c.attention_bias && c.attention_out_bias && c.mlp_bias);
    assert_int_equal(c.pad_token_id, -1);
    assert_int_equal(c.rope_scaling, MODEL_ROPE_LINEAR);
    assert_true(c.rope_factor == 2.0);
    assert_int_equal(model_config_num_parameters(&c), 1480);
    /* head_dim given explicitly and not hidden/heads (Gemma-like shapes are allowed). */
    parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":12,"
             "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":5,"
             "\"head_dim\":8,\"rope_scaling\":{\"rope_type\":\"default\"}}",
             &c);
    assert_int_equal(c.head_dim, 8);
    assert_int_equal(c.rope_scaling, MODEL_ROPE_NONE);
    /* GPT-NeoX defaults and the tanh GELU, sequential residual, no biases. */
    parse_ok("{\"architectures\":[\"GPTNeoXForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
             "\"intermediate_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
             "\"hidden_act\":\"gelu_new\",\"use_parallel_residual\":false,"
             "\"attention_bias\":false}",
             &c);
    assert_int_equal(c.rotary_dim, 4); /* 16 * 0.25 */
    assert_int_equal(c.activation, MODEL_ACT_GELU_TANH);
    assert_false(c.use_parallel_residual);
    assert_false(c.attention_bias);
    assert_true(c.norm_eps == 1e-5);
    parse_ok("{\"architectures\":[\"GPTNeoXForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
             "\"intermediate_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
             "\"hidden_act\":\"gelu_pytorch_tanh\",\"rotary_pct\":1.0,\"rotary_emb_base\":"
             "500.0}",
             &c);
    assert_int_equal(c.rotary_dim, 16);
    assert_true(c.rope_theta == 500.0);
    /* Mistral without a limiting window loads as Llama without biases. */
    parse_ok("{\"architectures\":[\"MistralForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
             "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
             "\"sliding_window\":null,\"attention_bias\":true}",
             &c);
    assert_int_equal(c.arch, MODEL_ARCH_LLAMA);
    assert_false(c.attention_bias);
    /* Newer transformers releases: rope settings inside "rope_parameters". */
    parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
             "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
             "\"rope_parameters\":{\"rope_type\":\"llama3\",\"rope_theta\":500000.0,"
             "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
             "\"original_max_position_embeddings\":8192}}",
             &c);
    assert_true(c.rope_theta == 500000.0);
    assert_int_equal(c.rope_scaling, MODEL_ROPE_LLAMA3);
    assert_true(c.rope_factor == 8.0);
    parse_ok("{\"architectures\":[\"GPTNeoXForCausalLM\"],\"vocab_size\":100,\"hidden_size\":64,"
             "\"intermediate_size\":256,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
             "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":20000,"
             "\"partial_rotary_factor\":0.5}}",
             &c);
    assert_true(c.rope_theta == 20000.0);
    assert_int_equal(c.rotary_dim, 8);
    assert_int_equal(c.rope_scaling, MODEL_ROPE_NONE);
    /* Integral reals are accepted as integers. */
    parse_ok("{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10.0,\"hidden_size\":8,"
             "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2}",
             &c);
    assert_int_equal(c.vocab_size, 10);
}

static void test_sequence_classification(void **state) {
    (void)state;
    model_config c;
    /* A Pythia reward model: one label from id2label, score head replaces embed_out. */
    parse_ok("{\"architectures\":[\"GPTNeoXForSequenceClassification\"],\"vocab_size\":50304,"
             "\"hidden_size\":768,\"intermediate_size\":3072,\"num_hidden_layers\":12,"
             "\"num_attention_heads\":12,\"rotary_pct\":0.25,\"id2label\":{\"0\":\"LABEL_0\"},"
             "\"label2id\":{\"LABEL_0\":0},\"pad_token_id\":1}",
             &c);
    assert_int_equal(c.arch, MODEL_ARCH_GPT_NEOX);
    assert_int_equal(c.head, MODEL_HEAD_SEQUENCE_CLASSIFICATION);
    assert_int_equal(c.num_labels, 1);
    assert_int_equal(c.pad_token_id, 1);
    assert_int_equal(model_config_num_parameters(&c), 162322944LL - 50304LL * 768 + 768);
    parse_ok("{\"architectures\":[\"LlamaForSequenceClassification\"],\"vocab_size\":10,"
             "\"hidden_size\":8,\"intermediate_size\":16,\"num_hidden_layers\":1,"
             "\"num_attention_heads\":2,\"num_labels\":1}",
             &c);
    assert_int_equal(c.head, MODEL_HEAD_SEQUENCE_CLASSIFICATION);
    assert_int_equal(c.num_labels, 1);
    parse_ok("{\"architectures\":[\"Qwen2ForSequenceClassification\"],\"vocab_size\":10,"
             "\"hidden_size\":8,\"intermediate_size\":16,\"num_hidden_layers\":1,"
             "\"num_attention_heads\":2}",
             &c);
    assert_int_equal(c.num_labels, 2); /* transformers' default */
    assert_true(c.attention_bias);
    assert_false(c.attention_out_bias);
}

typedef struct bad_config {
    const char *what;
    const char *text;
    int code;
    const char *message;
} bad_config;

#define LLAMA_BASE                                                                               \
    "\"vocab_size\":32000,\"hidden_size\":4096,\"intermediate_size\":11008,"                     \
    "\"num_hidden_layers\":32"
#define LLAMA(extra)                                                                             \
    "{\"architectures\":[\"LlamaForCausalLM\"]," LLAMA_BASE ",\"num_attention_heads\":32" extra "}"
#define NEOX(extra)                                                                              \
    "{\"architectures\":[\"GPTNeoXForCausalLM\"],\"vocab_size\":50304,\"hidden_size\":768,"     \
    "\"intermediate_size\":3072,\"num_hidden_layers\":12,\"num_attention_heads\":12" extra "}"

static const bad_config bad_configs[] = {
    {"invalid json", "{\"architectures\":", DUEL_EFORMAT, "invalid JSON"},
    {"duplicate key", LLAMA(",\"hidden_size\":4096"), DUEL_EFORMAT, "duplicate"},
    {"not an object", "[1]", DUEL_EFORMAT, "not a JSON object"},
    {"empty", "", DUEL_EFORMAT, "invalid JSON"},
    {"unknown architecture",
     "{\"architectures\":[\"BertForMaskedLM\"]," LLAMA_BASE ",\"num_attention_heads\":32}",
     DUEL_EUNSUPPORTED, "architecture \"BertForMaskedLM\" is not supported"},
    {"no architectures", "{" LLAMA_BASE ",\"num_attention_heads\":32}", DUEL_EFORMAT,
     "\"architectures\" must be a non-empty array of strings"},
    {"architectures empty", "{\"architectures\":[]}", DUEL_EFORMAT, "non-empty array"},
    {"architectures not strings", "{\"architectures\":[1]}", DUEL_EFORMAT, "non-empty array"},
    {"architecture string", "{\"architectures\":\"LlamaForCausalLM\"}", DUEL_EFORMAT,
     "non-empty array"},
    {"missing hidden_size",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"intermediate_size\":16,"
     "\"num_hidden_layers\":1,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"hidden_size\" is missing"},
    {"kv heads not dividing", LLAMA(",\"num_key_value_heads\":5"), DUEL_EFORMAT,
     "\"num_key_value_heads\" (5) must divide \"num_attention_heads\" (32)"},
    {"heads not dividing hidden",
     "{\"architectures\":[\"LlamaForCausalLM\"]," LLAMA_BASE ",\"num_attention_heads\":30}",
     DUEL_EFORMAT, "\"num_attention_heads\" (30) must divide \"hidden_size\" (4096)"},
    {"hidden_size string", LLAMA(",\"head_dim\":\"128\""), DUEL_EFORMAT,
     "\"head_dim\" must be an integer"},
    {"hidden_size fraction",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8.5,"
     "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"hidden_size\" must be an integer"},
    {"hidden_size huge real",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":1e300,"
     "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"hidden_size\" must be an integer"},
    {"hidden_size too big",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":131072,"
     "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"hidden_size\" (131072) is outside [1, 65536]"},
    {"zero layers",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":10,\"hidden_size\":8,"
     "\"intermediate_size\":16,\"num_hidden_layers\":0,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"num_hidden_layers\" (0) is outside"},
    {"negative vocab",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":-5,\"hidden_size\":8,"
     "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"vocab_size\" (-5) is outside"},
    {"vocab too big",
     "{\"architectures\":[\"LlamaForCausalLM\"],\"vocab_size\":4194305,\"hidden_size\":8,"
     "\"intermediate_size\":16,\"num_hidden_layers\":1,\"num_attention_heads\":2}",
     DUEL_EFORMAT, "\"vocab_size\" (4194305) is outside"},
    {"tie not bool", LLAMA(",\"tie_word_embeddings\":\"yes\""), DUEL_EFORMAT,
     "\"tie_word_embeddings\" must be true or false"},
    {"eps string", LLAMA(",\"rms_norm_eps\":\"1e-5\""), DUEL_EFORMAT,
     "\"rms_norm_eps\" must be a number"},
    {"eps negative", LLAMA(",\"rms_norm_eps\":-1e-5"), DUEL_EFORMAT, "\"rms_norm_eps\""},
    {"theta zero", LLAMA(",\"rope_theta\":0"), DUEL_EFORMAT, "\"rope_theta\" (0) must be in"},
    {"unsupported rope", LLAMA(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}"),
     DUEL_EUNSUPPORTED, "rope scaling type \"yarn\" is not supported"},
    {"unsupported rope (type)", LLAMA(",\"rope_scaling\":{\"type\":\"dynamic\",\"factor\":2}"),
     DUEL_EUNSUPPORTED, "\"dynamic\""},
    {"rope without type", LLAMA(",\"rope_scaling\":{\"factor\":2}"), DUEL_EFORMAT,
     "\"rope_type\""},
    {"rope not object", LLAMA(",\"rope_scaling\":4"), DUEL_EFORMAT,
     "\"rope_scaling\" must be an object or null"},
    {"llama3 missing factor",
     LLAMA(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"low_freq_factor\":1,"
           "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}"),
     DUEL_EFORMAT, "rope_scaling: \"factor\" is missing"},
    {"llama3 bad bands",
     LLAMA(",\"rope_scaling\":{\"rope_type\":\"llama3\",\"factor\":8,\"low_freq_factor\":4,"
           "\"high_freq_factor\":4,\"original_max_position_embeddings\":8192}"),
     DUEL_EFORMAT, "\"high_freq_factor\" (4) must exceed \"low_freq_factor\" (4)"},
    {"rope_parameters unsupported",
     LLAMA(",\"rope_parameters\":{\"rope_type\":\"longrope\",\"rope_theta\":10000}"),
     DUEL_EUNSUPPORTED, "rope scaling type \"longrope\" is not supported"},
    {"rope_parameters not object", LLAMA(",\"rope_parameters\":[]"), DUEL_EFORMAT,
     "\"rope_parameters\" must be an object or null"},
    {"linear without factor", LLAMA(",\"rope_scaling\":{\"type\":\"linear\"}"), DUEL_EFORMAT,
     "\"factor\" is missing"},
    {"llama gelu", LLAMA(",\"hidden_act\":\"gelu\""), DUEL_EUNSUPPORTED,
     "\"hidden_act\" \"gelu\" is not supported for LlamaForCausalLM"},
    {"neox relu", NEOX(",\"hidden_act\":\"relu\""), DUEL_EUNSUPPORTED,
     "\"hidden_act\" \"relu\" is not supported for GPTNeoXForCausalLM"},
    {"neox odd rotary", NEOX(",\"rotary_pct\":0.3"), DUEL_EFORMAT,
     "gives rotary_dim 19 of head_dim 64"},
    {"neox rotary over 1", NEOX(",\"rotary_pct\":1.5"), DUEL_EFORMAT, "\"rotary_pct\" (1.5)"},
    {"neox heads not dividing",
     "{\"architectures\":[\"GPTNeoXForCausalLM\"],\"vocab_size\":50304,\"hidden_size\":768,"
     "\"intermediate_size\":3072,\"num_hidden_layers\":12,\"num_attention_heads\":7}",
     DUEL_EFORMAT, "\"num_attention_heads\" (7) must divide \"hidden_size\" (768)"},
    {"odd head_dim", LLAMA(",\"head_dim\":127"), DUEL_EFORMAT,
     "rotary dimension 127 must be even"},
    {"head_dim too big", LLAMA(",\"head_dim\":2048"), DUEL_EFORMAT, "\"head_dim\" (2048)"},
    {"eos outside vocab", LLAMA(",\"eos_token_id\":32000"), DUEL_EFORMAT,
     "\"eos_token_id\" (32000) is outside the vocabulary (vocab_size 32000)"},
    {"eos list bad", LLAMA(",\"eos_token_id\":[1,\"2\"]"), DUEL_EFORMAT,
     "\"eos_token_id\"[1] must be an integer"},
    {"eos list too long", LLAMA(",\"eos_token_id\":[1,2,3,4,5,6,7,8,9]"), DUEL_ELIMIT,
     "at most 8"},
    {"bos string", LLAMA(",\"bos_token_id\":\"<s>\""), DUEL_EFORMAT,
     "\"bos_token_id\" must be an integer"},
    {"qwen2 sliding window",
     "{\"architectures\":[\"Qwen2ForCausalLM\"]," LLAMA_BASE ",\"num_attention_heads\":32,"
     "\"max_position_embeddings\":32768,\"use_sliding_window\":true,\"sliding_window\":4096}",
     DUEL_EUNSUPPORTED, "\"sliding_window\" (4096) below \"max_position_embeddings\" (32768)"},
    {"mistral sliding window",
     "{\"architectures\":[\"MistralForCausalLM\"]," LLAMA_BASE ",\"num_attention_heads\":32,"
     "\"max_position_embeddings\":32768,\"sliding_window\":4096}",
     DUEL_EUNSUPPORTED, "\"sliding_window\" (4096)"},
    {"labels disagree",
     "{\"architectures\":[\"LlamaForSequenceClassification\"]," LLAMA_BASE
     ",\"num_attention_heads\":32,\"num_labels\":3,\"id2label\":{\"0\":\"a\"}}",
     DUEL_EFORMAT, "\"num_labels\" (3) disagrees with \"id2label\" (1 labels)"},
    {"id2label not object",
     "{\"architectures\":[\"LlamaForSequenceClassification\"]," LLAMA_BASE
     ",\"num_attention_heads\":32,\"id2label\":[\"a\"]}",
     DUEL_EFORMAT, "\"id2label\" must be an object"},
    {"two architectures", "{\"architectures\":[\"LlamaForCausalLM\",\"GPTNeoXForCausalLM\"]}",
     DUEL_EUNSUPPORTED, "lists 2 architectures"},
};

static void test_bad_configs(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof bad_configs / sizeof bad_configs[0]; i++) {
        const bad_config *b = &bad_configs[i];
        model_config c;
        duel_error err = {0};
        int rc = model_config_parse(b->text, strlen(b->text), "/models/x/config.json", &c, &err);
        if (rc != b->code || !strstr(err.message, b->message) ||
            !strstr(err.message, "/models/x/config.json"))
            fail_msg("case '%s': rc %d (want %d), message \"%s\" (want \"%s\")", b->what, rc,
                     b->code, err.message, b->message);
    }
}

static void test_load_file(void **state) {
    (void)state;
    char dir[512], path[600];
    test_make_temp_dir("model_config", dir, sizeof dir);
    snprintf(path, sizeof path, "%s/config.json", dir);
    test_write_file(path, PYTHIA_160M, strlen(PYTHIA_160M));
    model_config c;
    duel_error err = {0};
    assert_int_equal(model_config_load(path, &c, &err), 0);
    assert_int_equal(c.rotary_dim, 16);
    /* Errors from a file name the file. */
    test_write_file(path, "{\"architectures\":[\"T5Model\"]}", 29);
    assert_int_equal(model_config_load(path, &c, &err), DUEL_EUNSUPPORTED);
    assert_contains(err.message, path);
    assert_contains(err.message, "T5Model");
    /* Over the size limit. */
    size_t big = MODEL_CONFIG_MAX_JSON_BYTES + 10;
    char *text = malloc(big);
    memset(text, ' ', big);
    text[0] = '{';
    text[big - 1] = '}';
    test_write_file(path, text, big);
    assert_int_equal(model_config_load(path, &c, &err), DUEL_ELIMIT);
    assert_contains(err.message, path);
    assert_int_equal(model_config_parse(text, big, "big.json", &c, &err), DUEL_ELIMIT);
    free(text);
    unlink(path);
    assert_int_equal(model_config_load(path, &c, &err), DUEL_EIO);
    assert_contains(err.message, path);
    rmdir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_3_2_1b),
        cmocka_unit_test(test_smollm2_135m),
        cmocka_unit_test(test_qwen2_5_0_5b),
        cmocka_unit_test(test_tinyllama),
        cmocka_unit_test(test_pythia_160m),
        cmocka_unit_test(test_defaults_and_variants),
        cmocka_unit_test(test_sequence_classification),
        cmocka_unit_test(test_bad_configs),
        cmocka_unit_test(test_load_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
