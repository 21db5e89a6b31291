#!/usr/bin/python3
"""make_reward_models.py ROOT: small random reward models for the rm oracle's tests
(tests/oracle/test_rm.c), written with tests/tools/make_random_model.py (imported, not edited)
plus two presets of its own: a Llama and a GPT-NeoX *ForSequenceClassification with two labels
(so that "label 0" is tested), each with the float64 reference of torch_reference.py, and a
causal LM that the oracle must refuse. Run with Debian's /usr/bin/python3 (torch)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
import make_random_model as mrm  # noqa: E402

mrm.PRESETS["oracle-llama-reward"] = dict(
    arch="llama", vocab_size=512, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, num_labels=2)
mrm.PRESETS["oracle-neox-reward"] = dict(
    arch="neox", vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=10000, layer_norm_eps=1e-5,
    use_parallel_residual=True, hidden_act="gelu", tie_word_embeddings=False, num_labels=2)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_reward_models.py ROOT")
    root = sys.argv[1]
    for preset in ("oracle-llama-reward", "oracle-neox-reward"):
        mrm.main(["--preset", preset, "--out", os.path.join(root, preset), "--reference",
                  "--tokens", "29", "--seed", "77"])
    mrm.main(["--preset", "tiny-llama", "--out", os.path.join(root, "causal-lm")])


if __name__ == "__main__":
    main()
