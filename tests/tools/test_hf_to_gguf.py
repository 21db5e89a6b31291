#!/usr/bin/python3
"""test_hf_to_gguf.py: tests/tools/hf_to_gguf.py on a random tiny Llama (make_random_model.py),
read back with a GGUF reader written here from the format's description:

- the header, the metadata llama.cpp reads (head counts, rms eps, rope base, the tokenizer: every
  token, merge and special token type) and every tensor's name, shape and type;
- the q/k permutation is the right one: RoPE as Hugging Face applies it (rotate_half on the
  checkpoint's rows) and as llama.cpp's "llama" graph applies it (adjacent pairs on the GGUF's
  rows) give the same attention scores q.k at every position pair (float64), and the f32
  tensors are the checkpoint's values in that order;
- bf16 tensors hold torch's round-to-nearest-even bf16 of the f32 checkpoint, q8_0 tensors
  (those whose rows are a multiple of 32 values; others stay F32) dequantise to
  torch_reference.round_q8 (the torch implementation the C forward pass is tested
  against), so llama.cpp, duel and the references multiply the same numbers;
- bad inputs (a GPT-NeoX model) are refused with a message.

llama.cpp itself runs on the converted model in ops/bench_llamacpp.sh (its greedy text must
equal duel's). Needs Debian's python3-torch (make_random_model.py); exit 77 without it."""
import json
import math
import os
import struct
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import numpy as np
    import torch
except ImportError:
    print("SKIP: needs python3-torch and python3-numpy")
    sys.exit(77)
import hf_to_gguf  # noqa: E402
import make_random_model  # noqa: E402
import torch_reference  # noqa: E402


def read_gguf(path):
    """(metadata dict, {name: (shape ne0-first, ggml type, bytes)}) of a GGUF v3 file."""
    with open(path, "rb") as f:
        raw = f.read()
    pos = 0

    def take(fmt):
        nonlocal pos
        vals = struct.unpack_from("<" + fmt, raw, pos)
        pos += struct.calcsize("<" + fmt)
        return vals if len(vals) > 1 else vals[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = raw[pos:pos + n].decode("utf-8")
        pos += n
        return s

    def value(t):
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
        if t in scalar:
            v = take(scalar[t])
            return bool(v) if t == 7 else v
        if t == 8:
            return string()
        assert t == 9, t
        et, n = take("I"), take("Q")
        return [value(et) for _ in range(n)]

    assert raw[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("I"), take("Q"), take("Q")
    assert version == 3
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        nd = take("I")
        shape = [take("Q") for _ in range(nd)]
        infos.append((name, shape, take("I"), take("Q")))
    align = meta.get("general.alignment", 32)
    base = (pos + align - 1) // align * align
    sizes = {0: lambda n: 4 * n, 30: lambda n: 2 * n, 8: lambda n: n // 32 * 34}
    tensors = {}
    for name, shape, t, off in infos:
        assert off % align == 0
        n = math.prod(shape)
        tensors[name] = (shape, t, raw[base + off:base + off + sizes[t](n)])
    return meta, tensors


def decode(shape, t, data):
    """float64 [ne1][ne0] (rows of the original [out][in] matrix) of an F32/BF16/Q8_0 tensor."""
    if t == 0:
        a = np.frombuffer(data, dtype="<f4").astype(np.float64)
    elif t == 30:
        a = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    else:
        blocks = np.frombuffer(data, dtype=[("d", "<f2"), ("qs", "i1", 32)])
        a = (blocks["d"].astype(np.float64)[:, None] * blocks["qs"].astype(np.float64)).reshape(-1)
    return a.reshape(list(reversed(shape)))


def rope_hf(x, pos, theta):
    """Hugging Face: rotate_half over halves of each head (x: [heads, d])."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    ang = np.concatenate([pos * inv, pos * inv])
    rot = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * np.cos(ang) + rot * np.sin(ang)


def rope_pairs(x, pos, theta):
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: element pairs (2i, 2i + 1) rotated by theta^(-2i/d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (np.arange(0, d, 2) / d)
    c, s = np.cos(pos * inv), np.sin(pos * inv)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


class ConverterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.model = os.path.join(cls.tmp.name, "tiny-llama")
        make_random_model.main(["--preset", "tiny-llama", "--dtype", "f32", "--out", cls.model])
        with open(os.path.join(cls.model, "config.json"), encoding="utf-8") as f:
            cls.cfg = json.load(f)
        cls.W = make_random_model.read_safetensors(os.path.join(cls.model, "model.safetensors"))
        cls.gguf = {}
        for kind in ("f32", "bf16", "q8_0"):
            path = os.path.join(cls.tmp.name, f"tiny-{kind}.gguf")
            hf_to_gguf.main([cls.model, path, "--type", kind])
            cls.gguf[kind] = read_gguf(path)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_metadata_and_tensors(self):
        c = self.cfg
        meta, tensors = self.gguf["q8_0"]
        self.assertEqual(meta["general.architecture"], "llama")
        self.assertEqual(meta["llama.block_count"], c["num_hidden_layers"])
        self.assertEqual(meta["llama.attention.head_count"], c["num_attention_heads"])
        self.assertEqual(meta["llama.attention.head_count_kv"], c["num_key_value_heads"])
        self.assertAlmostEqual(meta["llama.attention.layer_norm_rms_epsilon"], c["rms_norm_eps"], places=9)
        self.assertEqual(meta["llama.rope.freq_base"], c["rope_theta"])
        self.assertEqual(meta["general.file_type"], 7)
        with open(os.path.join(self.model, "tokenizer.json"), encoding="utf-8") as f:
            tok = json.load(f)
        self.assertEqual(len(meta["tokenizer.ggml.tokens"]), c["vocab_size"])
        self.assertEqual(len(meta["tokenizer.ggml.merges"]), len(tok["model"]["merges"]))
        for a in tok["added_tokens"]:
            self.assertEqual(meta["tokenizer.ggml.tokens"][a["id"]], a["content"])
            self.assertEqual(meta["tokenizer.ggml.token_type"][a["id"]], 3)
        self.assertEqual(meta["tokenizer.ggml.eos_token_id"], c["eos_token_id"])
        L = c["num_hidden_layers"]
        self.assertEqual(len(tensors), 2 + 9 * L)  # tied: no output.weight
        shape, t, _ = tensors["blk.0.ffn_gate.weight"]
        self.assertEqual(shape, [c["hidden_size"], c["intermediate_size"]])
        self.assertEqual(t, 8)
        self.assertEqual(tensors["blk.0.attn_norm.weight"][1], 0)  # norms stay F32
        # rows of 172 values (tiny-llama's FFN) cannot be Q8_0: kept F32, as llama.cpp does
        self.assertEqual(tensors["blk.0.ffn_down.weight"][1], 0)

    def test_permutation_gives_the_same_attention(self):
        c = self.cfg
        _, tensors = self.gguf["f32"]
        nh, nkv, H = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
        d = H // nh
        theta = c["rope_theta"]
        Wq, Wk = self.W["model.layers.1.self_attn.q_proj.weight"].numpy(), self.W["model.layers.1.self_attn.k_proj.weight"].numpy()
        Gq, Gk = decode(*tensors["blk.1.attn_q.weight"]), decode(*tensors["blk.1.attn_k.weight"])
        # the same numbers, reordered within each head
        self.assertEqual(sorted(Gq.reshape(-1)), sorted(Wq.reshape(-1)))
        rng = np.random.default_rng(3)
        xs = rng.standard_normal((5, H))
        for p1 in range(5):
            for p2 in range(5):
                qh = rope_hf((Wq @ xs[p1]).reshape(nh, d), p1, theta)
                kh = rope_hf((Wk @ xs[p2]).reshape(nkv, d), p2, theta)
                qg = rope_pairs((Gq @ xs[p1]).reshape(nh, d), p1, theta)
                kg = rope_pairs((Gk @ xs[p2]).reshape(nkv, d), p2, theta)
                for h in range(nh):
                    g = h // (nh // nkv)
                    self.assertAlmostEqual(float(qh[h] @ kh[g]), float(qg[h] @ kg[g]), places=9)
        # without the permutation the scores differ (the test can tell)
        q_wrong = rope_pairs((Wq @ xs[3]).reshape(nh, d), 3, theta)
        k_wrong = rope_pairs((Wk @ xs[1]).reshape(nkv, d), 1, theta)
        qh = rope_hf((Wq @ xs[3]).reshape(nh, d), 3, theta)
        kh = rope_hf((Wk @ xs[1]).reshape(nkv, d), 1, theta)
        self.assertGreater(abs(float(q_wrong[0] @ k_wrong[0]) - float(qh[0] @ kh[0])), 1e-6)

    def test_rounded_values(self):
        cfg, W = self.cfg, self.W
        for kind, rounding in (("bf16", "bf16"), ("q8_0", "q8")):
            _, tensors = self.gguf[kind]
            R = torch_reference.round_weights(cfg, W, rounding)
            got = decode(*tensors["blk.0.ffn_gate.weight"])
            self.assertTrue(np.array_equal(got, R["model.layers.0.mlp.gate_proj.weight"].numpy()), kind)
            got = decode(*tensors["token_embd.weight"])  # tied: the output head too
            self.assertTrue(np.array_equal(got, R["model.embed_tokens.weight"].numpy()), kind)
            nh = cfg["num_attention_heads"]
            got = decode(*tensors["blk.0.attn_q.weight"])
            want = hf_to_gguf.permute(R["model.layers.0.self_attn.q_proj.weight"].numpy(), nh)
            self.assertTrue(np.array_equal(got, want), kind)
            self.assertFalse(np.array_equal(got, hf_to_gguf.permute(W["model.layers.0.self_attn.q_proj.weight"].numpy(), nh)))

    def test_refuses_other_architectures(self):
        neox = os.path.join(self.tmp.name, "neox")
        make_random_model.main(["--preset", "tiny-neox", "--out", neox])
        with self.assertRaises(SystemExit) as e:
            hf_to_gguf.main([neox, os.path.join(self.tmp.name, "x.gguf")])
        self.assertIn("GPTNeoXForCausalLM", str(e.exception.code))
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "x.gguf")))


if __name__ == "__main__":
    unittest.main()
