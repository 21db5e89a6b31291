#!/usr/bin/env python3
"""bench_cuda_report.py: the summary of ops/bench_cuda.sh from its results.jsonl (one
{"step": ..., "r": <the step's JSON>} per line): the equivalence checks per model, batch-1 decode
against the HBM roofline, tokens/s at each batch against transformers' generate(), time to duel,
vote -> serving; the goals of issue 23 (H100: batch-1 decode >= 80 % of the roofline, >= 2x
transformers at batch 64, time to duel under 1 s) marked met or not. Writes results.json (all of
it) and, when matplotlib is there, throughput.png into --out.

Roofline of a batch-1 decode step: it must read every weight once (bf16: the model file's data
bytes; a tied head is read again as the output head, which the file counts once: added) and the
K/V of the context so far (kv_bytes_per_token x the mean context of the run); divided into the
device-to-device copy bandwidth measured in the same run (bench_cuda_kernels: bytes read and
written per second, the rate the memory sustains)."""
import argparse
import json
import os
import struct


def load(path):
    out = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                o = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = o["step"] + (":" + o["name"] if "name" in o else "")
            out[key] = o["r"]
    return out


def model_bytes(model_dir):
    """Data bytes of model.safetensors and, for a tied head, the embedding's bytes again."""
    path = os.path.join(model_dir, "model.safetensors")
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    data = os.path.getsize(path) - 8 - n
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    extra = 0
    if cfg.get("tie_word_embeddings"):
        for name, t in header.items():
            if name.endswith("embed_tokens.weight") or name.endswith("embed_in.weight"):
                extra = t["data_offsets"][1] - t["data_offsets"][0]
    return data, extra, cfg


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", required=True, help="the model of the speed figures")
    ap.add_argument("--dry-run", type=int, default=0)
    a = ap.parse_args()
    r = load(a.results)
    lines = []
    say = lines.append
    say("== equivalence (cpu against %s) ==" % ("reference (dry run)" if a.dry_run else "cuda"))
    for k, v in sorted(r.items()):
        if not k.startswith("equal:"):
            continue
        g = "identical" if v["greedy_identical"] else (
            "part at a near tie (step %d, margin %.3g)" % (v["first_divergence"], v["divergence_margin"])
            if v["divergence_near_tie"] else "PART at step %d" % v["first_divergence"])
        say("%-14s greedy %d steps %s; logits rel. err. max %.3g (mean %.3g); duels %d/%d same "
            "pair (%d/%d same candidates, %d at a reward tie), features rel. err. %.3g%s" % (
                k[6:], v["greedy_steps"], g, v["logits_rel_err_max"], v["logits_rel_err_mean"],
                v["duels_same_pair"], v["duels"], v["duels_same_candidates"], v["duels"],
                v.get("duels_tied", 0), v.get("features_rel_err_max", -1),
                "" if v["pass"] else "  FAIL"))
    dec, duel, hf, ker, loop = r.get("decode"), r.get("duel"), r.get("hf"), r.get("kernels"), r.get("loop")
    goals = {}
    if dec:
        say("== decode (%s, %s) ==" % (os.path.basename(a.model), dec.get("compute", "?")))
        rates = dec.get("decode_tokens_per_s", {})
        for b, t in sorted(rates.items(), key=lambda x: int(x[0])):
            anchor = hf["batches"].get(b) if hf else None
            say("  %4s sequences: %10.1f tokens/s%s" % (
                b, t, "   transformers %.1f (%.2fx)" % (anchor, t / anchor) if anchor else ""))
        if hf and "64" in rates and "64" in hf["batches"]:
            goals["2x transformers at batch 64"] = rates["64"] / hf["batches"]["64"] >= 2
        if ker and "1" in rates:
            data, extra, cfg = model_bytes(a.model)
            mean_ctx = 128 + 128 / 2  # ops/bench_cuda.sh's --prompt 128 --decode 128
            kv = dec.get("kv_bytes_per_token", 0) * mean_ctx
            step_bytes = data + extra + kv
            bw = ker["copy_gbps"] * 1e9
            roof = bw / step_bytes
            frac = rates["1"] / roof
            say("  batch 1 against the roofline: %.1f of %.1f tokens/s = %.0f %% (a step reads "
                "%.2f GB: weights %.2f GB%s, K/V %.1f MB; copy bandwidth %.0f GB/s)" % (
                    rates["1"], roof, 100 * frac, step_bytes / 1e9, data / 1e9,
                    " + tied head %.2f GB" % (extra / 1e9) if extra else "", kv / 1e6,
                    ker["copy_gbps"]))
            goals["batch-1 decode >= 80 % of the roofline"] = frac >= 0.8
    if duel:
        td = duel.get("duel_overhead", {})
        say("== time to duel (M = %s x %s tokens): p50 %.0f ms with features, scoring and "
            "selection (plain %.0f ms; features %.1f ms) ==" % (
                td.get("m"), td.get("new_tokens"), td.get("duel_p50_ms", -1),
                td.get("plain_p50_ms", -1), td.get("features_p50_ms", -1)))
        goals["time to duel under 1 s"] = td.get("duel_p50_ms", 1e9) < 1000
    if loop:
        say("== loop (train + serve, %s) == %d votes, %d snapshots loaded (%d refused), vote -> "
            "serving p50 %.2f s, p95 %.2f s" % (
                "dry run" if a.dry_run else "cuda_ipc", loop.get("votes", 0),
                loop.get("snapshots_loaded", 0), loop.get("snapshots_refused", 0),
                loop.get("latency_p50_s", -1), loop.get("latency_p95_s", -1)))
    if goals:
        say("== goals (issue 23, on an H100) ==")
        for g, ok in goals.items():
            say("  %-45s %s" % (g, "met" if ok else "NOT met"))
    print("\n".join(lines))
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"results": r, "goals": goals, "summary": lines}, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no figure)")
        return 0
    if dec:
        rates = dec.get("decode_tokens_per_s", {})
        bs = sorted(rates, key=int)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([int(b) for b in bs], [rates[b] for b in bs], "o-", label="duel (%s)" % dec.get("compute"))
        if hf:
            hb = sorted(hf["batches"], key=int)
            ax.plot([int(b) for b in hb], [hf["batches"][b] for b in hb], "s--", label="transformers generate()")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sequences")
        ax.set_ylabel("decode tokens/s")
        ax.set_title(os.path.basename(a.model))
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(a.out, "throughput.png"), dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
