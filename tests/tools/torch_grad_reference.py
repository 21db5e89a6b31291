#!/usr/bin/python3
"""torch_grad_reference.py: the independent reference for the trainer's whole-model gradients.

Builds tiny Llama- and GPT-NeoX-architecture models (variants below) in PyTorch float64, written
here from the Hugging Face modeling code's definitions and not from the C code, with random
weights rounded to float32; runs a DPO loss on a batch of 2 pairs (4 right-padded sequences of unequal lengths) and
writes, per variant, into OUT/<variant>/:
  manifest.json  config, batch (tokens, targets, mask), reference log-probs, expected sequence
                 log-probs and loss, and the tensor table (HF names, shapes, element offsets)
  weights.f32    every parameter, little-endian float32, in table order
  grads.f64      d(loss)/d(parameter) from torch autograd, little-endian float64, same order
tests/trainer/test_train_model_torch.c loads the weights into trainer/train_model.c (llama_train.c
or neox_train.c), repeats the computation in f32 and compares. Run with Debian's /usr/bin/python3 (python3-torch, numpy).
"""
import argparse
import json
import math
import os
import sys

try:
    import numpy as np
    import torch
except ImportError as exc:  # the ctest fixture must fail loudly, never skip
    sys.stderr.write(
        "FATAL: %s: this reference needs Debian's python3-torch and python3-numpy for %s\n"
        % (exc, sys.executable))
    sys.exit(1)

torch.set_default_dtype(torch.float64)

VARIANTS = {
    # Llama with grouped-query attention, head_dim * heads != hidden, untied head, plain rope.
    "llama_gqa": dict(arch="llama", vocab_size=37, hidden_size=16, intermediate_size=40, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=8, norm_eps=1e-5, rope_theta=100.0,
                      rope_scaling="none", tie_word_embeddings=False, attention_bias=False,
                      attention_out_bias=False, mlp_bias=False),
    # Qwen2-like: q/k/v biases, tied embeddings, multi-query, llama3 rope scaling (both the
    # divided and the smoothed frequency band occur at these sizes).
    "qwen2_tied_mqa": dict(arch="llama", vocab_size=29, hidden_size=16, intermediate_size=24, num_layers=2,
                           num_heads=4, num_kv_heads=1, head_dim=4, norm_eps=1e-6,
                           rope_theta=10000.0, rope_scaling="llama3", rope_factor=8.0,
                           rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                           rope_original_max_positions=8, tie_word_embeddings=True,
                           attention_bias=True, attention_out_bias=False, mlp_bias=False),
    # Every bias Llama allows, multi-head attention, linear rope scaling, one layer.
    "llama_all_biases": dict(arch="llama", vocab_size=23, hidden_size=12, intermediate_size=20, num_layers=1,
                             num_heads=2, num_kv_heads=2, head_dim=6, norm_eps=1e-5,
                             rope_theta=50.0, rope_scaling="linear", rope_factor=2.0,
                             tie_word_embeddings=False, attention_bias=True,
                             attention_out_bias=True, mlp_bias=True),
    # Pythia-like GPT-NeoX: parallel residual, exact GELU, partial rotary (half of each head).
    "neox_parallel": dict(arch="gpt_neox", vocab_size=31, hidden_size=16, intermediate_size=48,
                          num_layers=2, num_heads=4, head_dim=4, rotary_dim=2, norm_eps=1e-5,
                          rope_theta=100.0, rope_scaling="none", activation="gelu",
                          use_parallel_residual=True, tie_word_embeddings=False,
                          attention_bias=True),
    # GPT-NeoX with the sequential residual, tanh GELU, full rotary, tied head, no attention bias.
    "neox_sequential_tied": dict(arch="gpt_neox", vocab_size=23, hidden_size=12,
                                 intermediate_size=20, num_layers=2, num_heads=2, head_dim=6,
                                 rotary_dim=6, norm_eps=1e-5, rope_theta=50.0,
                                 rope_scaling="none", activation="gelu_tanh",
                                 use_parallel_residual=False, tie_word_embeddings=True,
                                 attention_bias=False),
}

DPO_BETA = 0.1
PAD_TOKEN = 0
IGNORE_TARGET = -100


def tensor_table(cfg):
    return neox_tensor_table(cfg) if cfg["arch"] == "gpt_neox" else llama_tensor_table(cfg)


def neox_tensor_table(cfg):
    """(name, shape) in transformers' state_dict order for GPTNeoXForCausalLM."""
    C, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    table = [("gpt_neox.embed_in.weight", [V, C])]
    for l in range(cfg["num_layers"]):
        p = "gpt_neox.layers.%d." % l
        rows = [("input_layernorm.weight", [C]), ("input_layernorm.bias", [C]),
                ("post_attention_layernorm.weight", [C]), ("post_attention_layernorm.bias", [C]),
                ("attention.query_key_value.weight", [3 * C, C]),
                ("attention.query_key_value.bias", [3 * C]),
                ("attention.dense.weight", [C, C]), ("attention.dense.bias", [C]),
                ("mlp.dense_h_to_4h.weight", [F, C]), ("mlp.dense_h_to_4h.bias", [F]),
                ("mlp.dense_4h_to_h.weight", [C, F]), ("mlp.dense_4h_to_h.bias", [C])]
        for suffix, shape in rows:
            if suffix.startswith("attention.") and suffix.endswith(".bias") \
                    and not cfg["attention_bias"]:
                continue
            table.append((p + suffix, shape))
    table += [("gpt_neox.final_layer_norm.weight", [C]), ("gpt_neox.final_layer_norm.bias", [C])]
    if not cfg["tie_word_embeddings"]:
        table.append(("embed_out.weight", [V, C]))
    return table


def llama_tensor_table(cfg):
    """(name, shape) in transformers' state_dict order for LlamaForCausalLM."""
    C, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    QD = cfg["num_heads"] * cfg["head_dim"]
    KD = cfg["num_kv_heads"] * cfg["head_dim"]
    table = [("model.embed_tokens.weight", [V, C])]
    for l in range(cfg["num_layers"]):
        p = "model.layers.%d." % l
        rows = [("self_attn.q_proj.weight", [QD, C]), ("self_attn.q_proj.bias", [QD]),
                ("self_attn.k_proj.weight", [KD, C]), ("self_attn.k_proj.bias", [KD]),
                ("self_attn.v_proj.weight", [KD, C]), ("self_attn.v_proj.bias", [KD]),
                ("self_attn.o_proj.weight", [C, QD]), ("self_attn.o_proj.bias", [C]),
                ("mlp.gate_proj.weight", [F, C]), ("mlp.gate_proj.bias", [F]),
                ("mlp.up_proj.weight", [F, C]), ("mlp.up_proj.bias", [F]),
                ("mlp.down_proj.weight", [C, F]), ("mlp.down_proj.bias", [C]),
                ("input_layernorm.weight", [C]), ("post_attention_layernorm.weight", [C])]
        for suffix, shape in rows:
            if suffix.endswith(".bias"):
                if suffix.startswith("self_attn.o_proj"):
                    if not cfg["attention_out_bias"]:
                        continue
                elif suffix.startswith("self_attn."):
                    if not cfg["attention_bias"]:
                        continue
                elif not cfg["mlp_bias"]:
                    continue
            table.append((p + suffix, shape))
    table.append(("model.norm.weight", [C]))
    if not cfg["tie_word_embeddings"]:
        table.append(("lm_head.weight", [V, C]))
    return table


def init_weights(cfg, gen):
    """Random weights, rounded to float32 so that C sees exactly the same values."""
    weights = {}
    for name, shape in tensor_table(cfg):
        if name.endswith("norm.weight") or name.endswith("layernorm.weight") \
                or name.endswith("layer_norm.weight"):
            w = 1.0 + 0.2 * torch.randn(shape, generator=gen)
        elif name.endswith(".bias"):
            w = 0.2 * torch.randn(shape, generator=gen)
        elif name in ("model.embed_tokens.weight", "gpt_neox.embed_in.weight"):
            w = torch.randn(shape, generator=gen)
        else:  # projections: keep activations O(1); the head a little sharper
            scale = 1.5 if name in ("lm_head.weight", "embed_out.weight") else 1.0
            w = scale * torch.randn(shape, generator=gen) / math.sqrt(shape[1])
        weights[name] = w.float().double().requires_grad_(True)
    return weights


def inv_freq(cfg):
    """transformers' rope init: default, linear and llama3 (in float64 here), over the rotated
    dimensions (all of a head for Llama, rotary_pct of it for GPT-NeoX)."""
    dim = cfg.get("rotary_dim", cfg["head_dim"])
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    kind = cfg["rope_scaling"]
    if kind == "linear":
        inv = inv / cfg["rope_factor"]
    elif kind == "llama3":
        factor = cfg["rope_factor"]
        low, high = cfg["rope_low_freq_factor"], cfg["rope_high_freq_factor"]
        old = cfg["rope_original_max_positions"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def linear(x, weights, prefix):
    y = x @ weights[prefix + ".weight"].T
    bias = weights.get(prefix + ".bias")
    return y + bias if bias is not None else y


def head_logprobs(x, head, targets, mask):
    """Sum over positions of mask * log p(target), and the mask sums, per sequence."""
    logp = torch.log_softmax(x @ head.T, dim=-1)
    safe_targets = torch.where(mask > 0, targets, torch.zeros_like(targets))
    token_lp = logp.gather(-1, safe_targets[..., None])[..., 0]
    return (token_lp * mask).sum(-1), mask.sum(-1)


def causal_attention(q, k, v):
    T, D = q.shape[-2], q.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v


def rope_cos_sin(cfg, T):
    angles = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq(cfg)[None, :]
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def neox_sequence_logprobs(cfg, weights, tokens, targets, mask):
    """GPTNeoXForCausalLM: fused per-head [q|k|v], partial rotary, (parallel) residual."""
    B, T = tokens.shape
    C, H, D, R = cfg["hidden_size"], cfg["num_heads"], cfg["head_dim"], cfg["rotary_dim"]
    eps = cfg["norm_eps"]
    gelu_approx = "tanh" if cfg["activation"] == "gelu_tanh" else "none"

    def ln(x, prefix):
        return torch.nn.functional.layer_norm(x, (C,), weights[prefix + ".weight"],
                                              weights[prefix + ".bias"], eps)

    def rotate(x, cos, sin):
        rot, rest = x[..., :R], x[..., R:]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)

    def mlp(x, p):
        h = linear(x, weights, p + "mlp.dense_h_to_4h")
        h = torch.nn.functional.gelu(h, approximate=gelu_approx)
        return linear(h, weights, p + "mlp.dense_4h_to_h")

    cos, sin = rope_cos_sin(cfg, T)
    x = weights["gpt_neox.embed_in.weight"][tokens]
    for l in range(cfg["num_layers"]):
        p = "gpt_neox.layers.%d." % l
        qkv = linear(ln(x, p + "input_layernorm"), weights, p + "attention.query_key_value")
        qkv = qkv.view(B, T, H, 3 * D).transpose(1, 2)
        q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
        att = causal_attention(rotate(q, cos, sin), rotate(k, cos, sin), v)
        att = linear(att.transpose(1, 2).reshape(B, T, C), weights, p + "attention.dense")
        if cfg["use_parallel_residual"]:
            x = mlp(ln(x, p + "post_attention_layernorm"), p) + att + x
        else:
            x = x + att
            x = mlp(ln(x, p + "post_attention_layernorm"), p) + x
    x = ln(x, "gpt_neox.final_layer_norm")
    head = weights["gpt_neox.embed_in.weight" if cfg["tie_word_embeddings"] else "embed_out.weight"]
    return head_logprobs(x, head, targets, mask)


def sequence_logprobs(cfg, weights, tokens, targets, mask):
    if cfg["arch"] == "gpt_neox":
        return neox_sequence_logprobs(cfg, weights, tokens, targets, mask)
    return llama_sequence_logprobs(cfg, weights, tokens, targets, mask)


def llama_sequence_logprobs(cfg, weights, tokens, targets, mask):
    """LlamaForCausalLM: RMSNorm, GQA with repeat_kv, rotate_half rope, SwiGLU."""
    B, T = tokens.shape
    Hq, Hkv, D = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    eps = cfg["norm_eps"]
    x = weights["model.embed_tokens.weight"][tokens]
    cos, sin = rope_cos_sin(cfg, T)
    for l in range(cfg["num_layers"]):
        p = "model.layers.%d." % l
        h = rms_norm(x, weights[p + "input_layernorm.weight"], eps)
        q = linear(h, weights, p + "self_attn.q_proj").view(B, T, Hq, D).transpose(1, 2)
        k = linear(h, weights, p + "self_attn.k_proj").view(B, T, Hkv, D).transpose(1, 2)
        v = linear(h, weights, p + "self_attn.v_proj").view(B, T, Hkv, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(Hq // Hkv, dim=1)  # repeat_kv
        v = v.repeat_interleave(Hq // Hkv, dim=1)
        att = causal_attention(q, k, v).transpose(1, 2).reshape(B, T, Hq * D)
        x = x + linear(att, weights, p + "self_attn.o_proj")
        h = rms_norm(x, weights[p + "post_attention_layernorm.weight"], eps)
        gate = linear(h, weights, p + "mlp.gate_proj")
        up = linear(h, weights, p + "mlp.up_proj")
        x = x + linear(torch.nn.functional.silu(gate) * up, weights, p + "mlp.down_proj")
    x = rms_norm(x, weights["model.norm.weight"], eps)
    head = weights["model.embed_tokens.weight" if cfg["tie_word_embeddings"] else "lm_head.weight"]
    return head_logprobs(x, head, targets, mask)


def make_batch(cfg, gen):
    """2 pairs as 4 sequences [chosen0, rejected0, chosen1, rejected1]: prompt + response,
    unequal lengths, right-padded with PAD_TOKEN; targets IGNORE_TARGET on padding."""
    V = cfg["vocab_size"]
    prompt_lens, response_lens = [3, 5], [(4, 2), (1, 6)]
    seqs, prompt_of = [], []
    for pair in range(2):
        prompt = torch.randint(1, V, (prompt_lens[pair],), generator=gen).tolist()
        for resp_len in response_lens[pair]:
            seqs.append(prompt + torch.randint(1, V, (resp_len,), generator=gen).tolist())
            prompt_of.append(len(prompt))
    T = max(len(s) for s in seqs) - 1
    tokens = torch.full((4, T), PAD_TOKEN, dtype=torch.long)
    targets = torch.full((4, T), IGNORE_TARGET, dtype=torch.long)
    mask = torch.zeros(4, T)
    for b, s in enumerate(seqs):
        n = len(s) - 1
        tokens[b, :n] = torch.tensor(s[:-1])
        targets[b, :n] = torch.tensor(s[1:])
        mask[b, prompt_of[b] - 1:n] = 1.0  # targets that are response tokens
    return tokens, targets, mask


def run_variant(name, cfg, out_dir, seed):
    gen = torch.Generator().manual_seed(seed)
    cfg = dict(cfg)
    cfg.setdefault("max_position_embeddings", 64)
    weights = init_weights(cfg, gen)
    tokens, targets, mask = make_batch(cfg, gen)
    seq_lp, seq_count = sequence_logprobs(cfg, weights, tokens, targets, mask)
    with torch.no_grad():  # the frozen reference's log-probs: the policy's, moved a little
        ref = seq_lp.detach() + 2.0 * torch.randn(4, generator=gen)
    policy_c, policy_r = seq_lp[0::2], seq_lp[1::2]
    delta = (policy_c - policy_r) - (ref[0::2] - ref[1::2])
    loss = -torch.nn.functional.logsigmoid(DPO_BETA * delta).mean()
    loss.backward()

    table = tensor_table(cfg)
    os.makedirs(out_dir, exist_ok=True)
    tensors, offset = [], 0
    with open(os.path.join(out_dir, "weights.f32"), "wb") as fw, \
            open(os.path.join(out_dir, "grads.f64"), "wb") as fg:
        for tname, shape in table:
            w = weights[tname]
            fw.write(w.detach().numpy().astype("<f4").tobytes())
            fg.write(w.grad.numpy().astype("<f8").tobytes())
            tensors.append({"name": tname, "shape": shape, "offset": offset})
            offset += int(np.prod(shape))
    manifest = {
        "variant": name,
        "config": cfg,
        "batch": {"batch_size": 4, "seq_len": int(tokens.shape[1]),
                  "tokens": tokens.flatten().tolist(), "targets": targets.flatten().tolist(),
                  "mask": mask.flatten().tolist()},
        "dpo": {"beta": DPO_BETA, "reference_chosen": ref[0::2].tolist(),
                "reference_rejected": ref[1::2].tolist()},
        "expected": {"seq_logprob": seq_lp.detach().tolist(), "seq_count": seq_count.tolist(),
                     "loss": loss.item()},
        "num_elements": offset,
        "tensors": tensors,
    }
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (one subdirectory per variant)")
    args = ap.parse_args()
    for i, (name, cfg) in enumerate(sorted(VARIANTS.items())):
        run_variant(name, cfg, os.path.join(args.out, name), seed=1234 + i)
    with open(os.path.join(args.out, "variants.txt"), "w") as f:
        f.write("\n".join(sorted(VARIANTS)) + "\n")
    print("torch_grad_reference: wrote %s for %s (torch %s)"
          % (args.out, ", ".join(sorted(VARIANTS)), torch.__version__))


if __name__ == "__main__":
    main()
