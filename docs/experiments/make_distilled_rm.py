#!/usr/bin/python3
"""make_distilled_rm.py PAIRS.bin BASE_MODEL OUT_DIR: a reward-model oracle the ERM can learn
(docs/EXPERIMENTS.md, "An oracle the ERM can model"). Fits a linear head by logistic regression
on the lexical oracle's own votes, as the trainer logged them (PAIRS.bin: a run's
data/trainer/erm_pairs.*.bin, records of [chosen, rejected] ERM features, each [last prompt
token, last answer token] hidden states of BASE_MODEL), on the answer half; then writes BASE_MODEL
as a LlamaForSequenceClassification with that head (score.weight, f32), so that the rm oracle's
r*(x, y) = w . h(last token of the rendered conversation): a function of the very features the
ERM sees. Standard library and numpy only (Debian's /usr/bin/python3)."""
import json
import os
import shutil
import struct
import sys

import numpy as np


def fit(pairs_path, hidden, lam=1.0, steps=2000, lr=0.1):
    raw = np.fromfile(pairs_path, dtype=np.float32)
    n = raw.size // (4 * hidden)
    p = raw[: n * 4 * hidden].reshape(n, 2, 2 * hidden).astype(np.float64)
    d = p[:, 0, hidden:] - p[:, 1, hidden:]  # chosen - rejected, answer half
    sd = d.std(0) + 1e-6
    x = np.concatenate([d, -d]) / sd
    y = np.concatenate([np.ones(n), np.zeros(n)])
    w = np.zeros(hidden)
    for _ in range(steps):
        g = x.T @ (1 / (1 + np.exp(-x @ w)) - y) / len(y) + lam * w
        w -= lr * g
    acc = np.mean((d / sd) @ w > 0)
    return w / sd, n, acc


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    pairs, base, out = sys.argv[1:]
    cfg = json.load(open(os.path.join(base, "config.json")))
    w, n, acc = fit(pairs, cfg["hidden_size"])
    with open(os.path.join(base, "model.safetensors"), "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        data = f.read()
    meta = header.pop("__metadata__", None)
    blobs, entries, off = [], {}, 0
    for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        a, b = t["data_offsets"]
        blobs.append(data[a:b])
        entries[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [off, off + b - a]}
        off += b - a
    score = w.astype("<f4").tobytes()
    entries["score.weight"] = {"dtype": "F32", "shape": [1, cfg["hidden_size"]], "data_offsets": [off, off + len(score)]}
    blobs.append(score)
    if meta:
        entries["__metadata__"] = meta
    head = json.dumps(entries, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    cfg["architectures"] = ["LlamaForSequenceClassification"]
    cfg["num_labels"] = 1
    cfg["id2label"] = {"0": "LABEL_0"}
    cfg["label2id"] = {"LABEL_0": 0}
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(base, name), out)
    print(f"{out}: head fitted on {n} votes, agrees with {acc:.3f} of them")


if __name__ == "__main__":
    main()
