#!/usr/bin/python3
"""make_random_model.py: writes a small random-initialised Hugging Face model directory
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json)
for the architectures duel serves, and optionally the float64 reference outputs of
torch_reference.py beside it (reference.safetensors).

Run with Debian's /usr/bin/python3 (torch + numpy; no transformers, no safetensors package: the
safetensors format is written here by hand). Weights are random normals with non-trivial norms
(around 1, not all ones) and nonzero biases, so every parameter changes the output.

Options that damage the result (--drop-tensor, --wrong-shape, --architecture) build the bad
inputs of the loader's tests.
"""
import argparse
import json
import os
import re
import struct
import sys

try:
    import torch
except ImportError:
    sys.exit("make_random_model.py: needs PyTorch (Debian: apt-get install python3-torch); "
             "run it with /usr/bin/python3")

PRESETS = {
    # Llama with GQA (4 heads, 2 kv heads), tied embeddings, a non-default rope_theta.
    "tiny-llama": dict(arch="llama", vocab_size=512, hidden_size=64, intermediate_size=172,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True),
    # Qwen2: Llama with q/k/v biases, untied output head.
    "tiny-llama-qwen2": dict(arch="qwen2", vocab_size=512, hidden_size=64, intermediate_size=172,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False),
    # Llama 3 rope scaling with a small original context so that all three frequency bands occur.
    "tiny-llama3-rope": dict(arch="llama", vocab_size=512, hidden_size=64, intermediate_size=172,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                             rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 64}),
    # Llama with every optional bias (attention_bias: q/k/v/o, mlp_bias), an explicit head_dim
    # that differs from hidden/heads, and linear rope scaling.
    "tiny-llama-bias": dict(arch="llama", vocab_size=512, hidden_size=64, intermediate_size=96,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            head_dim=24, rope_theta=10000.0, rms_norm_eps=1e-5,
                            tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                            rope_scaling={"rope_type": "linear", "factor": 2.0}),
    # GPT-NeoX (Pythia): partial rotary 0.25, parallel residual, exact GELU.
    "tiny-neox": dict(arch="neox", vocab_size=512, hidden_size=64, intermediate_size=256,
                      num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.25,
                      rotary_emb_base=20000, layer_norm_eps=1e-5, use_parallel_residual=True,
                      hidden_act="gelu", tie_word_embeddings=False),
    # GPT-NeoX with a sequential residual and the tanh GELU.
    "tiny-neox-seq": dict(arch="neox", vocab_size=512, hidden_size=64, intermediate_size=256,
                          num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.5,
                          rotary_emb_base=10000, layer_norm_eps=1e-5, use_parallel_residual=False,
                          hidden_act="gelu_new", tie_word_embeddings=False),
    # A GPT-NeoX reward model: the sequence-classification head (score, one label).
    "tiny-neox-reward": dict(arch="neox", vocab_size=512, hidden_size=64, intermediate_size=256,
                             num_hidden_layers=2, num_attention_heads=4, rotary_pct=0.25,
                             rotary_emb_base=10000, layer_norm_eps=1e-5,
                             use_parallel_residual=True, hidden_act="gelu",
                             tie_word_embeddings=False, num_labels=1),
    # SmolLM2-135M shapes, for benchmarks.
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                         max_position_embeddings=8192),
    # Llama-3.2-1B shapes (GQA 32/8, head_dim 64, tied head, Llama 3 rope scaling), for the GPU
    # checks and benchmarks of ops/bench_cuda.sh.
    "llama3.2-1b": dict(arch="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                        max_position_embeddings=131072,
                        rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 8192}),
}

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")

TRAINING_TEXT = """The quick brown fox jumps over the lazy dog. A duel is a contest between two
people. In this system two answers are shown to the user, who votes for the better one; the
votes train a reward model and the policy. The model reads the prompt, then writes one token at
a time. Tokens are pieces of words: the tokenizer learns which pairs of bytes occur together
most often and merges them. There are many things to say about language models, and the
simplest is that they predict the next word. What is the capital of France? It is Paris.
How are you today? I am fine, thank you. Please write a short poem about the sea and the sky.
"""


# ---------------------------------------------------------------------------------------------
# safetensors writing (the format: u64 little-endian header length, JSON header padded with
# spaces to a multiple of 8, packed little-endian data).

DTYPE_NAMES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
               torch.float64: "F64", torch.int32: "I32", torch.int64: "I64"}


def tensor_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, torch tensor) in file order."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    blobs = []
    offset = 0
    for name, t in tensors:
        data = tensor_bytes(t)
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_safetensors(path):
    """Returns {name: float64 or integer torch tensor}; parses the format by hand."""
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[base + a:base + b]
        shape = info["shape"]
        dt = info["dtype"]
        if dt == "F32":
            arr = np.frombuffer(buf, dtype="<f4").astype(np.float64)
        elif dt == "F64":
            arr = np.frombuffer(buf, dtype="<f8").astype(np.float64)
        elif dt == "F16":
            arr = np.frombuffer(buf, dtype="<f2").astype(np.float64)
        elif dt == "BF16":
            u = np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32).astype(np.float64)
        elif dt == "I32":
            arr = np.frombuffer(buf, dtype="<i4").astype(np.int64)
        elif dt == "I64":
            arr = np.frombuffer(buf, dtype="<i8").astype(np.int64)
        else:
            raise ValueError(f"{path}: unsupported dtype {dt} for {name}")
        out[name] = torch.from_numpy(arr.copy()).reshape(shape)
    return out


# ---------------------------------------------------------------------------------------------
# Config and weights.

def make_config(preset, p, dtype_name, architecture=None):
    torch_dtype = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[dtype_name]
    v = p["vocab_size"]
    eos = v - 1  # <|im_end|>
    if p["arch"] in ("llama", "qwen2"):
        cfg = {
            "architectures": ["Qwen2ForCausalLM" if p["arch"] == "qwen2" else "LlamaForCausalLM"],
            "model_type": "qwen2" if p["arch"] == "qwen2" else "llama",
            "vocab_size": v,
            "hidden_size": p["hidden_size"],
            "intermediate_size": p["intermediate_size"],
            "num_hidden_layers": p["num_hidden_layers"],
            "num_attention_heads": p["num_attention_heads"],
            "num_key_value_heads": p["num_key_value_heads"],
            "hidden_act": "silu",
            "max_position_embeddings": p.get("max_position_embeddings", 2048),
            "rms_norm_eps": p["rms_norm_eps"],
            "rope_theta": p["rope_theta"],
            "rope_scaling": p.get("rope_scaling"),
            "tie_word_embeddings": p["tie_word_embeddings"],
            "initializer_range": 0.02,
            "bos_token_id": v - 3,
            "eos_token_id": eos,
            "use_cache": True,
            "torch_dtype": torch_dtype,
            "transformers_version": "4.45.0",
        }
        if p["arch"] == "qwen2":
            cfg.update({"use_sliding_window": False, "sliding_window": 4096,
                        "max_window_layers": p["num_hidden_layers"]})
        else:
            cfg.update({"attention_bias": p.get("attention_bias", False),
                        "mlp_bias": p.get("mlp_bias", False), "pretraining_tp": 1})
        if "head_dim" in p:
            cfg["head_dim"] = p["head_dim"]
    else:
        cfg = {
            "architectures": ["GPTNeoXForCausalLM"],
            "model_type": "gpt_neox",
            "vocab_size": v,
            "hidden_size": p["hidden_size"],
            "intermediate_size": p["intermediate_size"],
            "num_hidden_layers": p["num_hidden_layers"],
            "num_attention_heads": p["num_attention_heads"],
            "hidden_act": p["hidden_act"],
            "rotary_pct": p["rotary_pct"],
            "rotary_emb_base": p["rotary_emb_base"],
            "max_position_embeddings": p.get("max_position_embeddings", 2048),
            "layer_norm_eps": p["layer_norm_eps"],
            "use_parallel_residual": p["use_parallel_residual"],
            "tie_word_embeddings": p["tie_word_embeddings"],
            "initializer_range": 0.02,
            "bos_token_id": v - 3,
            "eos_token_id": eos,
            "use_cache": True,
            "torch_dtype": torch_dtype,
            "transformers_version": "4.45.0",
        }
    if p.get("num_labels"):
        cfg["architectures"] = [cfg["architectures"][0].replace("ForCausalLM",
                                                                 "ForSequenceClassification")]
        cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(p["num_labels"])}
        cfg["label2id"] = {f"LABEL_{i}": i for i in range(p["num_labels"])}
        cfg["pad_token_id"] = v - 3
    if architecture:
        cfg["architectures"] = [architecture]
    return cfg


def make_weights(p, gen, dtype):
    """Returns a list of (name, tensor in dtype). Generated in float32, then rounded once."""
    h = p["hidden_size"]
    f = p["intermediate_size"]
    v = p["vocab_size"]
    nh = p["num_attention_heads"]
    hd = p.get("head_dim", h // nh)
    std = 0.08 if h <= 128 else 0.03

    def randn(*shape, s=std):
        return torch.randn(*shape, generator=gen, dtype=torch.float32) * s

    def norm_weight(n):
        return 1.0 + randn(n, s=0.1)

    out = []
    if p["arch"] in ("llama", "qwen2"):
        kvh = p["num_key_value_heads"]
        out.append(("model.embed_tokens.weight", randn(v, h, s=0.5 if h <= 128 else 0.05)))
        for i in range(p["num_hidden_layers"]):
            pre = f"model.layers.{i}."
            out.append((pre + "input_layernorm.weight", norm_weight(h)))
            out.append((pre + "self_attn.q_proj.weight", randn(nh * hd, h, s=std * 2)))
            out.append((pre + "self_attn.k_proj.weight", randn(kvh * hd, h, s=std * 2)))
            out.append((pre + "self_attn.v_proj.weight", randn(kvh * hd, h)))
            if p["arch"] == "qwen2" or p.get("attention_bias"):
                out.append((pre + "self_attn.q_proj.bias", randn(nh * hd, s=0.1)))
                out.append((pre + "self_attn.k_proj.bias", randn(kvh * hd, s=0.1)))
                out.append((pre + "self_attn.v_proj.bias", randn(kvh * hd, s=0.1)))
            out.append((pre + "self_attn.o_proj.weight", randn(h, nh * hd)))
            if p.get("attention_bias"):
                out.append((pre + "self_attn.o_proj.bias", randn(h, s=0.05)))
            out.append((pre + "post_attention_layernorm.weight", norm_weight(h)))
            out.append((pre + "mlp.gate_proj.weight", randn(f, h)))
            out.append((pre + "mlp.up_proj.weight", randn(f, h)))
            out.append((pre + "mlp.down_proj.weight", randn(h, f)))
            if p.get("mlp_bias"):
                out.append((pre + "mlp.gate_proj.bias", randn(f, s=0.1)))
                out.append((pre + "mlp.up_proj.bias", randn(f, s=0.1)))
                out.append((pre + "mlp.down_proj.bias", randn(h, s=0.05)))
        out.append(("model.norm.weight", norm_weight(h)))
        if not p["tie_word_embeddings"]:
            out.append(("lm_head.weight", randn(v, h)))
    else:
        out.append(("gpt_neox.embed_in.weight", randn(v, h, s=0.5 if h <= 128 else 0.05)))
        for i in range(p["num_hidden_layers"]):
            pre = f"gpt_neox.layers.{i}."
            out.append((pre + "input_layernorm.weight", norm_weight(h)))
            out.append((pre + "input_layernorm.bias", randn(h, s=0.1)))
            out.append((pre + "post_attention_layernorm.weight", norm_weight(h)))
            out.append((pre + "post_attention_layernorm.bias", randn(h, s=0.1)))
            out.append((pre + "attention.query_key_value.weight", randn(3 * h, h, s=std * 2)))
            out.append((pre + "attention.query_key_value.bias", randn(3 * h, s=0.1)))
            out.append((pre + "attention.dense.weight", randn(h, h)))
            out.append((pre + "attention.dense.bias", randn(h, s=0.05)))
            out.append((pre + "mlp.dense_h_to_4h.weight", randn(f, h)))
            out.append((pre + "mlp.dense_h_to_4h.bias", randn(f, s=0.1)))
            out.append((pre + "mlp.dense_4h_to_h.weight", randn(h, f)))
            out.append((pre + "mlp.dense_4h_to_h.bias", randn(h, s=0.05)))
        out.append(("gpt_neox.final_layer_norm.weight", norm_weight(h)))
        out.append(("gpt_neox.final_layer_norm.bias", randn(h, s=0.1)))
        if not p.get("num_labels"):
            out.append(("embed_out.weight", randn(v, h)))
    if p.get("num_labels"):
        out.append(("score.weight", randn(p["num_labels"], h, s=0.3)))
    return [(n, t.to(dtype)) for n, t in out]


# ---------------------------------------------------------------------------------------------
# Tokenizer: a small valid byte-level BPE.

def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode map, in its canonical order."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return list(zip(bs, [chr(c) for c in cs]))


PRETOKENIZE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def make_tokenizer(vocab_size):
    byte_map = bytes_to_unicode()
    b2u = dict(byte_map)
    vocab = {}
    for _, u in byte_map:
        vocab[u] = len(vocab)
    n_merges = vocab_size - len(SPECIAL_TOKENS) - len(vocab)
    merges = []
    # Greedy BPE learning on the built-in text.
    words = {}
    for w in PRETOKENIZE.findall(TRAINING_TEXT):
        key = tuple(b2u[b] for b in w.encode("utf-8"))
        words[key] = words.get(key, 0) + 1
    while len(merges) < n_merges:
        pairs = {}
        for w, c in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        if best[1] < 2:
            break
        a, b = best[0]
        if a + b in vocab:
            break
        merges.append((a, b))
        vocab[a + b] = len(vocab)
        new_words = {}
        for w, c in words.items():
            out = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + c
        words = new_words
    # Fill the rest with arbitrary pairs of existing tokens (valid, if rarely used).
    printable = [u for b, u in byte_map if 32 <= b < 127]
    existing = list(vocab.keys())
    i = 0
    while len(merges) < n_merges:
        a = existing[i % len(existing)]
        for b in printable:
            if len(merges) >= n_merges:
                break
            if a + b not in vocab:
                merges.append((a, b))
                vocab[a + b] = len(vocab)
                existing.append(a + b)
        i += 1
    added = []
    for s in SPECIAL_TOKENS:
        vocab[s] = len(vocab)
        added.append({"id": vocab[s], "content": s, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    assert len(vocab) == vocab_size, (len(vocab), vocab_size)
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    tok_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in a if k != "id"} for a in added},
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "tokenizer_class": "GPT2Tokenizer",
    }
    return tok, tok_config


# ---------------------------------------------------------------------------------------------

def write_json(path, obj):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(path + ".tmp", path)


# The models of the forward-pass tests (tests/inference/fwd.cmake): (dir name, preset, dtype,
# extra options). Reference outputs for the good ones; the bad ones must fail to load.
FIXTURE = [
    ("tiny-llama-f32", "tiny-llama", "f32", []),
    ("tiny-llama-bf16", "tiny-llama", "bf16", []),
    ("tiny-llama-f16", "tiny-llama", "f16", []),
    ("tiny-llama-qwen2-f32", "tiny-llama-qwen2", "f32", []),
    ("tiny-llama-qwen2-bf16", "tiny-llama-qwen2", "bf16", []),
    ("tiny-llama-bias-f32", "tiny-llama-bias", "f32", []),
    ("tiny-llama3-rope-f32", "tiny-llama3-rope", "f32", []),
    ("tiny-llama3-rope-bf16", "tiny-llama3-rope", "bf16", []),
    ("tiny-neox-f32", "tiny-neox", "f32", []),
    ("tiny-neox-bf16", "tiny-neox", "bf16", []),
    ("tiny-neox-seq-f32", "tiny-neox-seq", "f32", []),
    ("tiny-neox-seq-bf16", "tiny-neox-seq", "bf16", []),
    ("tiny-neox-reward-f32", "tiny-neox-reward", "f32", []),
    ("bad-missing-tensor", "tiny-llama", "f32", ["--drop-tensor", "model.layers.1.mlp.up_proj.weight"]),
    ("bad-wrong-shape", "tiny-neox", "bf16", ["--wrong-shape", "gpt_neox.layers.0.attention.dense.weight"]),
    ("bad-architecture", "tiny-llama", "f32", ["--architecture", "FalconForCausalLM"]),
]


def make_fixture(root):
    for name, preset, dtype, extra in FIXTURE:
        argv = ["--preset", preset, "--dtype", dtype, "--out", os.path.join(root, name)] + extra
        if not name.startswith("bad-"):
            argv.append("--reference")
        main(argv)
    print(f"make_random_model.py: wrote {len(FIXTURE)} models under {root}")


def main(argv=None):
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--test-fixture":
        return make_fixture(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="Or: make_random_model.py --test-fixture ROOT (all the "
                                        "models of the forward-pass tests)")
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--arch", choices=["llama", "neox"],
                    help="checked against the preset's family (llama covers qwen2)")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--out", required=True)
    ap.add_argument("--reference", action="store_true",
                    help="also write reference.safetensors (float64 logits of all positions and "
                         "the last position's final hidden state) from torch_reference.py, and "
                         "reference_bf16/_q8.safetensors with the stored weights rounded")
    ap.add_argument("--tokens", type=int, default=37, help="reference sequence length")
    ap.add_argument("--drop-tensor", action="append", default=[],
                    help="leave this tensor out (a bad input for loader tests)")
    ap.add_argument("--wrong-shape", action="append", default=[],
                    help="give this tensor one row too many (a bad input)")
    ap.add_argument("--architecture", help="override config.json's architectures[0]")
    args = ap.parse_args(argv)

    p = PRESETS[args.preset]
    if args.arch:
        family = "neox" if p["arch"] == "neox" else "llama"
        if family != args.arch:
            ap.error(f"preset {args.preset} is {family}, not {args.arch}")
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)

    cfg = make_config(args.preset, p, args.dtype, args.architecture)
    weights = make_weights(p, gen, dtype)
    names = {n for n, _ in weights}
    for n in args.drop_tensor + args.wrong_shape:
        if n not in names:
            ap.error(f"no tensor named {n}")
    weights = [(n, t) for n, t in weights if n not in args.drop_tensor]
    weights = [(n, torch.cat([t, t[:1]], 0) if n in args.wrong_shape else t) for n, t in weights]

    write_json(os.path.join(args.out, "config.json"), cfg)
    write_safetensors(os.path.join(args.out, "model.safetensors"), weights,
                      metadata={"format": "pt", "generator": "duel make_random_model.py",
                                "preset": args.preset, "seed": str(args.seed)})
    tok, tok_config = make_tokenizer(p["vocab_size"])
    write_json(os.path.join(args.out, "tokenizer.json"), tok)
    write_json(os.path.join(args.out, "tokenizer_config.json"), tok_config)
    write_json(os.path.join(args.out, "generation_config.json"),
               {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"],
                "transformers_version": "4.45.0"})

    if args.reference:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import torch_reference
        for rounding in (None, "bf16", "q8"):  # f32 weights, then as engine.weights stores them
            torch_reference.write_reference(args.out, args.tokens, args.seed, rounding)


if __name__ == "__main__":
    main()
