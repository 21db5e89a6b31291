#!/usr/bin/python3
"""torch_reference.py: an independent float64 re-implementation of the forward pass of Hugging
Face's LlamaForCausalLM (also Qwen2ForCausalLM) and GPTNeoXForCausalLM, written from the HF
modeling code (modeling_llama.py, modeling_gpt_neox.py), for checking duel's C forward pass.

    /usr/bin/python3 tests/tools/torch_reference.py MODEL_DIR [--tokens 37] [--seed 1]

reads MODEL_DIR/config.json and MODEL_DIR/model.safetensors (parsed by hand) and writes
MODEL_DIR/reference.safetensors with
    tokens       I32 [T]      the input ids (random, seeded)
    logits       F64 [T, V]   output scores of every position
    hidden_last  F64 [H]      the final-norm hidden state of the last position

--round bf16|q8 first rounds the weights duel stores in that format (engine.weights: the linear
layers and the output head, which a tied model shares with its input embedding; norms and
biases stay as they are) exactly as inference/weight_format.c does: bf16 to nearest even; q8 in
blocks of 32 along each row, the last one zero-padded, as ggml's quantize_row_q8_0_ref (scale
max|x| / 127 in f32 stored as f16, quants x / scale rounded half away from zero). It writes
MODEL_DIR/reference_bf16.safetensors (or _q8) instead.
"""
import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_random_model import read_safetensors, write_safetensors  # noqa: E402


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def default_inv_freq(dim, base):
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))


def llama3_inv_freq(inv_freq, rs):
    """transformers' _compute_llama3_parameters."""
    factor = rs["factor"]
    low = rs["low_freq_factor"]
    high = rs["high_freq_factor"]
    old_ctx = rs["original_max_position_embeddings"]
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def rope_cos_sin(inv_freq, T):
    pos = torch.arange(T, dtype=torch.float64)
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def attention(q, k, v, scale):
    """q: [nh, T, d], k/v: [nh, T, d] (kv already repeated). Causal softmax attention."""
    T = q.shape[1]
    scores = torch.matmul(q, k.transpose(1, 2)) * scale
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v)


def linear(x, w, b=None):
    y = x @ w.T
    return y + b if b is not None else y


def llama_forward(cfg, W, ids):
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or h // nh
    eps = cfg["rms_norm_eps"]
    T = len(ids)
    qwen2 = cfg["architectures"][0].startswith("Qwen2")
    attn_bias = qwen2 or cfg.get("attention_bias", False)
    inv_freq = default_inv_freq(hd, cfg.get("rope_theta", 10000.0))
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "llama3":
            inv_freq = llama3_inv_freq(inv_freq, rs)
        elif kind == "linear":
            inv_freq = inv_freq / rs["factor"]
        else:
            raise ValueError(f"rope type {kind}")
    cos, sin = rope_cos_sin(inv_freq, T)

    def rmsnorm(x, w):
        return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))

    x = W["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        res = x
        hs = rmsnorm(x, W[p + "input_layernorm.weight"])
        q = linear(hs, W[p + "self_attn.q_proj.weight"], W.get(p + "self_attn.q_proj.bias") if attn_bias else None)
        k = linear(hs, W[p + "self_attn.k_proj.weight"], W.get(p + "self_attn.k_proj.bias") if attn_bias else None)
        v = linear(hs, W[p + "self_attn.v_proj.weight"], W.get(p + "self_attn.v_proj.bias") if attn_bias else None)
        q = q.view(T, nh, hd).transpose(0, 1)
        k = k.view(T, nkv, hd).transpose(0, 1)
        v = v.view(T, nkv, hd).transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv  # repeat_kv
        k = k.repeat_interleave(rep, dim=0)
        v = v.repeat_interleave(rep, dim=0)
        a = attention(q, k, v, 1.0 / math.sqrt(hd)).transpose(0, 1).reshape(T, nh * hd)
        o_bias = W.get(p + "self_attn.o_proj.bias") if (cfg.get("attention_bias", False) and not qwen2) else None
        x = res + linear(a, W[p + "self_attn.o_proj.weight"], o_bias)
        res = x
        hs = rmsnorm(x, W[p + "post_attention_layernorm.weight"])
        mb = cfg.get("mlp_bias", False)
        gate = linear(hs, W[p + "mlp.gate_proj.weight"], W.get(p + "mlp.gate_proj.bias") if mb else None)
        up = linear(hs, W[p + "mlp.up_proj.weight"], W.get(p + "mlp.up_proj.bias") if mb else None)
        act = gate * torch.sigmoid(gate)
        x = res + linear(act * up, W[p + "mlp.down_proj.weight"], W.get(p + "mlp.down_proj.bias") if mb else None)
    x = rmsnorm(x, W["model.norm.weight"])
    if "score.weight" in W and cfg["architectures"][0].endswith("ForSequenceClassification"):
        head = W["score.weight"]
    elif cfg.get("tie_word_embeddings", False):  # LlamaConfig default
        head = W["model.embed_tokens.weight"]
    else:
        head = W["lm_head.weight"]
    return x @ head.T, x[-1]


def gelu(x, kind):
    if kind == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if kind in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    raise ValueError(f"activation {kind}")


def neox_forward(cfg, W, ids):
    h = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    hd = h // nh
    eps = cfg["layer_norm_eps"]
    T = len(ids)
    rot = int(hd * cfg.get("rotary_pct", 1.0))
    base = cfg.get("rotary_emb_base", cfg.get("rope_theta", 10000))
    cos, sin = rope_cos_sin(default_inv_freq(rot, base), T)
    parallel = cfg.get("use_parallel_residual", True)
    act = cfg.get("hidden_act", "gelu")

    def layernorm(x, w, b):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * w + b

    x = W["gpt_neox.embed_in.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"gpt_neox.layers.{i}."

        def attn(hs):
            qkv = linear(hs, W[p + "attention.query_key_value.weight"],
                         W[p + "attention.query_key_value.bias"])
            # HF: view(..., num_heads, 3 * head_size), then split the last dim in three.
            qkv = qkv.view(T, nh, 3 * hd).transpose(0, 1)
            q, k, v = qkv[..., :hd], qkv[..., hd:2 * hd], qkv[..., 2 * hd:]
            q_rot, q_pass = q[..., :rot], q[..., rot:]
            k_rot, k_pass = k[..., :rot], k[..., rot:]
            q_rot = q_rot * cos + rotate_half(q_rot) * sin
            k_rot = k_rot * cos + rotate_half(k_rot) * sin
            q = torch.cat((q_rot, q_pass), dim=-1)
            k = torch.cat((k_rot, k_pass), dim=-1)
            a = attention(q, k, v, 1.0 / math.sqrt(hd)).transpose(0, 1).reshape(T, h)
            return linear(a, W[p + "attention.dense.weight"], W[p + "attention.dense.bias"])

        def mlp(hs):
            y = gelu(linear(hs, W[p + "mlp.dense_h_to_4h.weight"], W[p + "mlp.dense_h_to_4h.bias"]), act)
            return linear(y, W[p + "mlp.dense_4h_to_h.weight"], W[p + "mlp.dense_4h_to_h.bias"])

        ln1 = layernorm(x, W[p + "input_layernorm.weight"], W[p + "input_layernorm.bias"])
        a = attn(ln1)
        if parallel:
            ln2 = layernorm(x, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"])
            x = x + a + mlp(ln2)
        else:
            a = a + x
            ln2 = layernorm(a, W[p + "post_attention_layernorm.weight"], W[p + "post_attention_layernorm.bias"])
            x = mlp(ln2) + a
    x = layernorm(x, W["gpt_neox.final_layer_norm.weight"], W["gpt_neox.final_layer_norm.bias"])
    if cfg["architectures"][0].endswith("ForSequenceClassification"):
        head = W["score.weight"]
    elif cfg.get("tie_word_embeddings", False):
        head = W["gpt_neox.embed_in.weight"]
    else:
        head = W["embed_out.weight"]
    return x @ head.T, x[-1]


# Suffixes of the linear layers' weights (Llama, Qwen2, GPT-NeoX).
LINEAR_SUFFIXES = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                   "gate_proj.weight", "up_proj.weight", "down_proj.weight",
                   "query_key_value.weight", "attention.dense.weight", "dense_h_to_4h.weight",
                   "dense_4h_to_h.weight")


def stored_weight_names(cfg, W):
    """The tensors inference/model.c holds in the chosen weight format."""
    names = [n for n in W if n.endswith(LINEAR_SUFFIXES)]
    arch = cfg["architectures"][0]
    neox = arch.startswith("GPTNeoX")
    if arch.endswith("ForSequenceClassification"):
        names.append("score.weight")
    elif cfg.get("tie_word_embeddings", False):
        names.append("gpt_neox.embed_in.weight" if neox else "model.embed_tokens.weight")
    else:
        names.append("embed_out.weight" if neox else "lm_head.weight")
    return names


def round_bf16(t):
    return t.to(torch.float32).to(torch.bfloat16).to(torch.float64)


def round_q8(t):
    """Dequantised Q8_0 of a [rows, cols] tensor, blocks of 32 along each row."""
    x = t.to(torch.float32)
    rows, cols = x.shape
    xp = torch.nn.functional.pad(x, (0, (-cols) % 32)).view(rows, -1, 32)
    d = xp.abs().amax(-1, keepdim=True) / 127.0  # f32, as the C code
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    v = (xp * inv).to(torch.float64)  # the f32 product, then exact rounding half away from 0
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return (d.to(torch.float16).to(torch.float64) * q).view(rows, -1)[:, :cols]


def round_weights(cfg, W, rounding):
    if not rounding:
        return W
    fn = {"bf16": round_bf16, "q8": round_q8}[rounding]
    W = dict(W)
    for n in stored_weight_names(cfg, W):
        W[n] = fn(W[n])
    return W


def forward(model_dir, ids, rounding=None):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    W = round_weights(cfg, read_safetensors(os.path.join(model_dir, "model.safetensors")), rounding)
    arch = cfg["architectures"][0]
    ids = torch.as_tensor(ids, dtype=torch.long)
    with torch.no_grad():
        if arch in ("LlamaForCausalLM", "Qwen2ForCausalLM", "LlamaForSequenceClassification",
                    "Qwen2ForSequenceClassification"):
            return llama_forward(cfg, W, ids)
        if arch in ("GPTNeoXForCausalLM", "GPTNeoXForSequenceClassification"):
            return neox_forward(cfg, W, ids)
    raise ValueError(f"{model_dir}: architecture {arch} not in the reference")


def write_reference(model_dir, n_tokens, seed, rounding=None):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        vocab = json.load(f)["vocab_size"]
    gen = torch.Generator().manual_seed(seed + 7)
    ids = torch.randint(0, vocab, (n_tokens,), generator=gen)
    logits, hidden_last = forward(model_dir, ids, rounding)
    name = f"reference_{rounding}.safetensors" if rounding else "reference.safetensors"
    write_safetensors(os.path.join(model_dir, name),
                      [("tokens", ids.to(torch.int32)), ("logits", logits.to(torch.float64)),
                       ("hidden_last", hidden_last.to(torch.float64))])


def main():
    ap = argparse.ArgumentParser(description="float64 reference forward pass")
    ap.add_argument("model_dir")
    ap.add_argument("--tokens", type=int, default=37)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--round", choices=["bf16", "q8"], help="round the stored weights first")
    args = ap.parse_args()
    write_reference(args.model_dir, args.tokens, args.seed, args.round)


if __name__ == "__main__":
    main()
