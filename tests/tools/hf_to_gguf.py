#!/usr/bin/python3
"""hf_to_gguf.py: converts a Hugging Face LlamaForCausalLM directory (config.json,
model.safetensors, tokenizer.json with a GPT-2 style byte-level BPE) to a GGUF v3 file that
llama.cpp loads, for running llama.cpp side by side with duel on the same weights
(ops/bench_llamacpp.sh).

    /usr/bin/python3 tests/tools/hf_to_gguf.py MODEL_DIR OUT.gguf --type f32|bf16|q8_0

Weights of the linear layers and the token embedding (which a tied model's output head shares)
are written in --type; norms stay F32, as llama.cpp's own converter does, and so does a q8_0
tensor whose rows are not a multiple of 32 values (duel pads those rows instead: such a model's
q8 weights then differ between the two programs; SmolLM2 and models/default have none). bf16 is the
checkpoint's value (rounded to nearest even from f32); q8_0 is ggml's quantize_row_q8_0_ref,
which is also how duel quantises (inference/weight_format.c), so both programs multiply the same
numbers. The q_proj and k_proj rows are permuted as llama.cpp's convert_hf_to_gguf.py does
(LlamaModel.permute): Hugging Face rotates the two halves of each head (rotate_half), llama.cpp's
"llama" graph rotates adjacent pairs; reordering each head's rows as (i, i + d/2) pairs makes the
two the same function. Run it with Debian's /usr/bin/python3 (python3-torch, python3-numpy).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32
# gguf value types
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
# ggml tensor types and llama file types
GGML = {"f32": 0, "bf16": 30, "q8_0": 8}
FILE_TYPE = {"f32": 0, "bf16": 32, "q8_0": 7}
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


def read_weights(path):
    """{name: float32 numpy array} of a safetensors file (F32, BF16 and F16 tensors)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_random_model import read_safetensors  # the one reader of tests/tools (torch)
    return {n: t.numpy().astype(np.float32) for n, t in read_safetensors(path).items()}


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: rows of each head from (half, pair) order to
    (pair, half), i.e. HF's rotate_half layout to llama.cpp's adjacent pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_bf16(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def to_q8_0(x):
    """ggml's quantize_row_q8_0_ref over rows of a multiple of 32 values: per block, d = max|x| /
    127 (f32), q = roundf(x / d) (half away from zero), stored as f16 d and 32 int8."""
    rows, cols = x.shape
    if cols % 32:
        raise ValueError(f"q8_0 needs rows of a multiple of 32 values, not {cols}")
    blocks = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    d = (np.abs(blocks).max(axis=1) / np.float32(127)).astype(np.float32)
    inv = np.zeros_like(d)
    np.divide(np.float32(1), d, out=inv, where=d != 0)
    v = (blocks * inv[:, None]).astype(np.float32).astype(np.float64)
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int8)
    out = np.empty(blocks.shape[0], dtype=[("d", "<f2"), ("qs", "i1", 32)])
    out["d"] = d.astype(np.float16)
    out["qs"] = q
    return out


def encode(x, kind):
    """Bytes of a tensor in GGUF type kind ("f32" for 1-d tensors)."""
    if kind == "f32":
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if kind == "bf16":
        return to_bf16(x).tobytes()
    return to_q8_0(x).tobytes()


class Writer:
    def __init__(self):
        self.kv = []

    def add(self, key, vtype, value):
        self.kv.append((key, vtype, value))

    @staticmethod
    def _str(s):
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def _value(self, vtype, value):
        if vtype == T_UINT32:
            return struct.pack("<I", value)
        if vtype == T_INT32:
            return struct.pack("<i", value)
        if vtype == T_FLOAT32:
            return struct.pack("<f", value)
        if vtype == T_BOOL:
            return struct.pack("<B", 1 if value else 0)
        if vtype == T_STRING:
            return self._str(value)
        elem, items = value
        body = b"".join(self._value(elem, v) for v in items)
        return struct.pack("<IQ", elem, len(items)) + body

    def write(self, path, tensors):
        """tensors: list of (name, shape in ggml order (ne0 first), ggml type, bytes)."""
        head = GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(self.kv))
        for key, vtype, value in self.kv:
            head += self._str(key) + struct.pack("<I", vtype) + self._value(vtype, value)
        offset = 0
        infos = b""
        for name, shape, gtype, data in tensors:
            infos += self._str(name) + struct.pack("<I", len(shape))
            infos += b"".join(struct.pack("<Q", d) for d in shape)
            infos += struct.pack("<IQ", gtype, offset)
            offset += (len(data) + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        head += infos
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(b"\0" * ((-len(head)) % ALIGNMENT))
            for _, _, _, data in tensors:
                f.write(data)
                f.write(b"\0" * ((-len(data)) % ALIGNMENT))
        os.replace(tmp, path)


def convert(model_dir, out, kind):
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg["architectures"][0] != "LlamaForCausalLM":
        raise ValueError(f"{model_dir}: {cfg['architectures'][0]} (this converter does Llama only)")
    if cfg.get("attention_bias") or cfg.get("mlp_bias") or cfg.get("rope_scaling"):
        raise ValueError(f"{model_dir}: biases and rope scaling are not converted")
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    pre = tok.get("pre_tokenizer") or {}
    if tok["model"]["type"] != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise ValueError(f"{model_dir}: not a GPT-2 style byte-level BPE tokenizer")
    W = read_weights(os.path.join(model_dir, "model.safetensors"))
    H, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    tied = cfg.get("tie_word_embeddings", False)

    w = Writer()
    w.add("general.architecture", T_STRING, "llama")
    w.add("general.name", T_STRING, os.path.basename(os.path.abspath(model_dir)))
    w.add("general.file_type", T_UINT32, FILE_TYPE[kind])
    w.add("general.alignment", T_UINT32, ALIGNMENT)
    w.add("llama.context_length", T_UINT32, cfg["max_position_embeddings"])
    w.add("llama.embedding_length", T_UINT32, H)
    w.add("llama.block_count", T_UINT32, L)
    w.add("llama.feed_forward_length", T_UINT32, cfg["intermediate_size"])
    w.add("llama.attention.head_count", T_UINT32, nh)
    w.add("llama.attention.head_count_kv", T_UINT32, nkv)
    w.add("llama.attention.key_length", T_UINT32, hd)
    w.add("llama.attention.value_length", T_UINT32, hd)
    w.add("llama.rope.dimension_count", T_UINT32, hd)
    w.add("llama.rope.freq_base", T_FLOAT32, float(cfg.get("rope_theta", 10000.0)))
    w.add("llama.attention.layer_norm_rms_epsilon", T_FLOAT32, float(cfg["rms_norm_eps"]))
    w.add("llama.vocab_size", T_UINT32, cfg["vocab_size"])

    vocab = tok["model"]["vocab"]
    tokens = [None] * cfg["vocab_size"]
    for s, i in vocab.items():
        tokens[i] = s
    types = [TOKEN_NORMAL] * len(tokens)
    for a in tok.get("added_tokens", []):
        tokens[a["id"]] = a["content"]
        if a.get("special"):
            types[a["id"]] = TOKEN_CONTROL
    for i, t in enumerate(tokens):
        if t is None:  # ids the tokenizer does not use (a vocabulary padded for the model)
            tokens[i], types[i] = f"[PAD{i}]", TOKEN_CONTROL
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add("tokenizer.ggml.model", T_STRING, "gpt2")
    w.add("tokenizer.ggml.pre", T_STRING, "gpt-2")  # llama.cpp's name of the GPT-2 regex
    w.add("tokenizer.ggml.tokens", T_ARRAY, (T_STRING, tokens))
    w.add("tokenizer.ggml.token_type", T_ARRAY, (T_INT32, types))
    w.add("tokenizer.ggml.merges", T_ARRAY, (T_STRING, merges))
    for key, name in (("bos_token_id", "bos"), ("eos_token_id", "eos"), ("pad_token_id", "padding")):
        value = cfg.get(key)
        if isinstance(value, list):
            value = value[0]
        if isinstance(value, int):
            w.add(f"tokenizer.ggml.{name}_token_id", T_UINT32, value)
    w.add("tokenizer.ggml.add_bos_token", T_BOOL, False)  # duel generate adds none either
    w.add("tokenizer.ggml.add_eos_token", T_BOOL, False)

    tensors = []

    def put(name, x, linear):
        k = kind if linear else "f32"
        if k == "q8_0" and x.shape[-1] % 32:  # as llama.cpp's converter: not quantisable
            print(f"hf_to_gguf.py: {name} has rows of {x.shape[-1]} values, kept F32",
                  file=sys.stderr)
            k = "f32"
        tensors.append((name, list(reversed(x.shape)), GGML[k], encode(x, k)))

    put("token_embd.weight", W["model.embed_tokens.weight"], True)
    for i in range(L):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", W[p + "input_layernorm.weight"], False)
        put(f"blk.{i}.attn_q.weight", permute(W[p + "self_attn.q_proj.weight"], nh), True)
        put(f"blk.{i}.attn_k.weight", permute(W[p + "self_attn.k_proj.weight"], nkv), True)
        put(f"blk.{i}.attn_v.weight", W[p + "self_attn.v_proj.weight"], True)
        put(f"blk.{i}.attn_output.weight", W[p + "self_attn.o_proj.weight"], True)
        put(f"blk.{i}.ffn_norm.weight", W[p + "post_attention_layernorm.weight"], False)
        put(f"blk.{i}.ffn_gate.weight", W[p + "mlp.gate_proj.weight"], True)
        put(f"blk.{i}.ffn_up.weight", W[p + "mlp.up_proj.weight"], True)
        put(f"blk.{i}.ffn_down.weight", W[p + "mlp.down_proj.weight"], True)
    put("output_norm.weight", W["model.norm.weight"], False)
    if not tied:
        put("output.weight", W["lm_head.weight"], True)
    w.write(out, tensors)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(GGML), default="bf16")
    args = ap.parse_args(argv)
    try:
        convert(args.model_dir, args.out, args.type)
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"hf_to_gguf.py: {e}")


if __name__ == "__main__":
    main()
