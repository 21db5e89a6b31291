#!/usr/bin/env python3
"""hf_generate_bench.py: the side-by-side anchor of ops/bench_cuda.sh: Hugging Face transformers'
generate() on the same model directory and machine as `duel bench engine`, greedy, bf16 on the
GPU (f32 on the CPU for the script's dry run): tokens/s at each batch size, counting only the
generated tokens (--new per sequence, no early stop) over the time of generate() after one
warm-up call. Prompts are random token ids of --prompt tokens, as duel bench engine's are.

Exits 77 (the script's SKIP) when transformers or the device is missing. With --json the last
stdout line is one JSON object: {"batches": {"1": tok/s, ...}, "device": ..., "transformers": ...}.
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--batches", default="1,8,64,256")
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM
    except ImportError as e:
        print(f"SKIP: transformers is not installed here ({e})")
        return 77
    if a.device == "cuda" and not torch.cuda.is_available():
        print("SKIP: no CUDA device for torch")
        return 77
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype).to(a.device).eval()
    print(f"loaded {a.model} in {time.time() - t0:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, {dtype}, {a.device}); transformers {transformers.__version__}, torch {torch.__version__}")
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(42)
    out = {"model": a.model, "device": a.device, "dtype": str(dtype), "new": a.new,
           "prompt": a.prompt, "transformers": transformers.__version__, "batches": {}}
    if a.device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    for b in [int(x) for x in a.batches.split(",")]:
        ids = torch.randint(0, vocab, (b, a.prompt), generator=gen).to(a.device)
        mask = torch.ones_like(ids)
        kw = dict(max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False,
                  attention_mask=mask, pad_token_id=0)
        with torch.inference_mode():
            model.generate(ids[:, : min(8, a.prompt)], max_new_tokens=2, min_new_tokens=2,
                           do_sample=False, attention_mask=mask[:, : min(8, a.prompt)],
                           pad_token_id=0)  # warm-up
            sync()
            t = time.time()
            res = model.generate(ids, **kw)
            sync()
            dt = time.time() - t
        generated = (res.shape[1] - a.prompt) * b
        out["batches"][str(b)] = generated / dt
        print(f"batch {b:4d}: {generated} tokens in {dt:.2f} s = {generated / dt:.1f} tokens/s")
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
