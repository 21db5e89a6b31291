#!/usr/bin/env python3
"""evaluate.py: scores a model's greedy answers to "What does X mean?" (or another --question) on
held-out headwords (test.jsonl from wordnet_data.py) against the WordNet gloss: mean word-overlap
F1 (bag of lower-case words, as in SQuAD) with the headword's primary gloss, and with its
best-matching sense. Runs `duel generate --chat --temperature 0` once per question. Standard library only.

Reports two sets: the common held-out words (SemCor tag count >= 5) and a seeded random sample
of all held-out words; prints a sample of answers and writes everything to --out as JSON. Besides
the mean F1 it reports the share of answers with F1 >= 0.5 and the share that are recognisably
about their word: whose overlap with the word's gloss beats the overlap with every other gloss
of the set (the answer identifies the word among the set's words)."""
import argparse
import collections
import json
import random
import re
import subprocess
import time

WORD = re.compile(r"[a-z0-9]+")


def words(text):
    return WORD.findall(text.lower())


def f1(answer, reference):
    a, r = collections.Counter(words(answer)), collections.Counter(words(reference))
    common = sum((a & r).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def answer(duel, model, prompt, max_new_tokens):
    out = subprocess.run([duel, "generate", "--model", model, "--chat", "--temperature", "0",
                          "--max-new-tokens", str(max_new_tokens), "--prompt", prompt],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"duel generate failed: {out.stderr.strip()}")
    return out.stdout.strip()


def ask(question, headword):
    """The question about headword: question with {} replaced by the headword."""
    if question.count("{}") != 1:
        raise ValueError(f"--question must hold {{}} once, where the headword goes: {question!r}")
    return question.replace("{}", headword)


def score(duel, model, items, max_new_tokens, question):
    rows = []
    for item in items:
        prompt = ask(question, item["headword"])
        text = answer(duel, model, prompt, max_new_tokens)
        rows.append({"headword": item["headword"], "prompt": prompt, "answer": text,
                     "gloss": item["gloss"],
                     "f1_primary": f1(text, item["gloss"]),
                     "f1_best_sense": max(f1(text, g) for g in item["glosses"]),
                     "in_pretraining": item.get("in_pretraining")})
    identified(rows)
    result = summary(rows)
    # Held-out headwords whose glosses are / are not in the pretraining text (test.jsonl from
    # an older wordnet_data.py has no such field: then there is no split).
    for name, flag in (("in_pretraining", True), ("not_in_pretraining", False)):
        part = [r for r in rows if r["in_pretraining"] is flag]
        if part:
            result[name] = summary(part)
    result["rows"] = rows
    return result


def identified(rows):
    """Marks each row "about_headword": its answer overlaps its own headword's primary gloss more
    than the primary gloss of every other headword of the set (a recognisable answer picks its
    word out of the set; chance is 1 / len(rows))."""
    for r in rows:
        own = r["f1_primary"]
        r["about_headword"] = own > 0 and all(
            f1(r["answer"], o["gloss"]) < own for o in rows
            if o is not r and o["gloss"] != r["gloss"])


def summary(rows):
    n = max(len(rows), 1)
    return {"count": len(rows),
            "mean_f1_primary": sum(r["f1_primary"] for r in rows) / n,
            "mean_f1_best_sense": sum(r["f1_best_sense"] for r in rows) / n,
            "share_f1_best_sense_at_least_half": sum(r["f1_best_sense"] >= 0.5 for r in rows) / n,
            "share_about_headword": sum(r["about_headword"] for r in rows) / n}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duel", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--sample", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--question", default="What does {} mean?",
                    help='the question, {} standing for the headword (default "What does {} mean?")')
    args = ap.parse_args()
    try:
        ask(args.question, "x")
    except ValueError as e:
        ap.error(str(e))
    items = [json.loads(line) for line in open(args.test)]
    common = [i for i in items if i["tag_count"] >= 5]
    sample = random.Random(args.seed).sample(items, min(args.sample, len(items)))
    t0 = time.time()
    result = {"question": args.question,
              "common": score(args.duel, args.model, common, args.max_new_tokens, args.question),
              "random_sample": score(args.duel, args.model, sample, args.max_new_tokens, args.question)}
    result["seconds"] = time.time() - t0
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for name in ("common", "random_sample"):
        r = result[name]
        print(f"{name}: {r['count']} held-out headwords, mean F1 vs primary gloss "
              f"{r['mean_f1_primary']:.3f}, vs best sense {r['mean_f1_best_sense']:.3f}; "
              f"F1 >= 0.5 {r['share_f1_best_sense_at_least_half']:.1%}; answer picks its word "
              f"out of the set {r['share_about_headword']:.1%} (chance {1 / max(r['count'], 1):.1%})")
        for part in ("in_pretraining", "not_in_pretraining"):
            if part in r:
                p = r[part]
                print(f"  {part}: {p['count']} headwords, F1 vs primary gloss "
                      f"{p['mean_f1_primary']:.3f}, vs best sense {p['mean_f1_best_sense']:.3f}")
    for row in result["common"]["rows"][:15]:
        print(f"  {row['headword']}: {row['answer']!r}  [gloss: {row['gloss']}]  "
              f"F1 {row['f1_best_sense']:.2f}")


if __name__ == "__main__":
    main()
