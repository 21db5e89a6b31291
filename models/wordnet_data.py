#!/usr/bin/env python3
"""wordnet_data.py: question/answer and pretraining data for the default model (DESIGN.md
section 12) from Debian's wordnet-base (/usr/share/wordnet). Standard library only.

For every single-word lemma (letters, optionally one inner hyphen) it finds the senses (synsets)
and their tag counts (cntlist.rev, the sense frequencies in the SemCor corpus); the primary sense
is the most frequent one (ties: WordNet's own sense order, nouns first). Headwords are split into
train / validation / test by a seeded shuffle, so no test headword's *questions* are trained on.
The knowledge set is the headwords of every split that SemCor has seen at least
--knowledge-min-count times (the common words). Their primary senses, each written in four
definition forms plus an example sentence, are the pretraining text (held-out headwords
included): it is the model's knowledge source. The questions about training headwords are mixed
into that text too, so pretraining learns to answer a question from an entry read in other words.
SFT asks questions only about training headwords of the knowledge set, so it teaches the chat
format and to answer from what was read;
the held-out evaluation measures whether the model answers about words it never saw a question
for (the standard pretrain-then-instruction-tune setup). test.jsonl marks which held-out
headwords are in the pretraining text.

Writes into OUT_DIR:
  pretrain_train.txt  one document per line: "word (noun): definition. Synonyms: ...",
                      "The word X means ...", ... and 'An example of X (noun): "..."', and
                      for training headwords "Question: What does X mean? Answer: ..."
  pretrain_valid.txt  the "The word X means ..." form of validation headwords, whose other
                      forms are in train: recall of a fact read in other words
  sft_{train,valid}.jsonl  {"prompt": ..., "response": ...}: "What does X mean?" with the
                      primary definition, plus synonym and example-sentence variants
  test.jsonl          held-out headwords: {"headword", "prompt", "gloss", "glosses",
                      "tag_count", "in_pretraining"} for the F1 evaluation
"""
import argparse
import json
import os
import random
import re

POS_FILES = [("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r")]
SS_TYPE_POS = {"1": "noun", "2": "verb", "3": "adj", "4": "adv", "5": "adj"}
WORD_RE = re.compile(r"^[a-z]+(-[a-z]+)?$")


def parse_data(wordnet_dir):
    """synsets[(pos, offset)] = (words, definition, examples); lexkey -> (pos, offset)."""
    synsets, lexkeys = {}, {}
    for pos, _ in POS_FILES:
        with open(os.path.join(wordnet_dir, "data." + pos), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                offset, lex_filenum = fields[0], int(fields[1])
                w_cnt = int(fields[3], 16)
                words = []
                for i in range(w_cnt):
                    word = fields[4 + 2 * i]
                    lex_id = int(fields[5 + 2 * i], 16)
                    word = re.sub(r"\([a-z]+\)$", "", word)  # adjective markers: (a), (p), (ip)
                    words.append(word.replace("_", " "))
                    lexkeys[(word.lower(), pos, lex_filenum, lex_id)] = (pos, offset)
                gloss = gloss.strip()
                examples = re.findall(r'"([^"]+)"', gloss)
                definition = gloss.split('"')[0].strip().rstrip(";").strip()
                synsets[(pos, offset)] = (words, definition, examples)
    return synsets, lexkeys


def parse_counts(wordnet_dir, lexkeys):
    counts = {}
    with open(os.path.join(wordnet_dir, "cntlist.rev"), encoding="latin-1") as f:
        for line in f:
            key, _, cnt = line.split()
            lemma, _, rest = key.partition("%")
            parts = rest.split(":")
            pos = SS_TYPE_POS[parts[0]]
            ref = lexkeys.get((lemma.replace("_", " ").lower() if False else lemma, pos,
                               int(parts[1]), int(parts[2])))
            if ref is not None:
                counts[(lemma, ref)] = counts.get((lemma, ref), 0) + int(cnt)
    return counts


def parse_index(wordnet_dir):
    """lemma -> list of (pos, offset) in WordNet's sense order, nouns first."""
    senses = {}
    for pos, _ in POS_FILES:
        with open(os.path.join(wordnet_dir, "index." + pos), encoding="latin-1") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                fields = line.split()
                lemma, synset_cnt, p_cnt = fields[0], int(fields[2]), int(fields[3])
                offsets = fields[6 + p_cnt:6 + p_cnt + synset_cnt]
                senses.setdefault(lemma, []).extend((pos, o) for o in offsets)
    return senses


def has_word(sentence, word):
    return re.search(r"\b" + re.escape(word) + r"\b", sentence, re.IGNORECASE) is not None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--valid-fraction", type=float, default=0.04)
    ap.add_argument("--test-fraction", type=float, default=0.04)
    ap.add_argument("--knowledge-min-count", type=int, default=5,
                    help="SemCor tag count from which a headword is in the knowledge set "
                         "(pretraining text and questions)")
    args = ap.parse_args()

    synsets, lexkeys = parse_data(args.wordnet)
    counts = parse_counts(args.wordnet, lexkeys)
    index = parse_index(args.wordnet)

    entries = []
    for lemma in sorted(index):
        if not WORD_RE.match(lemma) or len(lemma) < 2:
            continue
        refs = index[lemma]
        scored = [(-counts.get((lemma, ref), 0), i, ref) for i, ref in enumerate(refs)]
        scored.sort()
        ordered = [ref for _, _, ref in scored]
        tag_count = sum(counts.get((lemma, ref), 0) for ref in refs)
        entries.append((lemma, ordered, tag_count))

    rng = random.Random(args.seed)
    rng.shuffle(entries)
    n = len(entries)
    n_test = int(n * args.test_fraction)
    n_valid = int(n * args.valid_fraction)
    splits = {"test": entries[:n_test], "valid": entries[n_test:n_test + n_valid],
              "train": entries[n_test + n_valid:]}
    splits_all = dict(splits)
    # Questions only about headwords the model has read (the knowledge set): instruction tuning
    # teaches it to answer from what it read, not to invent definitions of unknown words.
    for name in ("train", "valid"):
        splits[name] = [e for e in splits[name] if e[2] >= args.knowledge_min_count]

    os.makedirs(args.out_dir, exist_ok=True)
    stats = {}
    # Pretraining text: the dictionary entries of the *knowledge set*, the headwords SemCor has
    # seen at least --knowledge-min-count times, of every split (held-out ones included): it is
    # the model's knowledge source. Each entry is written in several forms (definition templates
    # and an example sentence), so that a fact read in one form can be recalled in another: a
    # model that read a fact in one fixed form learns that form, not the fact. Compute is the
    # limit: a few million tokens of training fit the time budget, so the set is the ~5,700
    # common headwords, each read tens of times, rather than all 80k once or twice.
    in_pretraining = set()
    train_docs, valid_docs = [], []
    for name in ("test", "valid", "train"):
        for lemma, ordered, tag_count in splits_all[name]:
            if tag_count < args.knowledge_min_count:
                continue
            in_pretraining.add(lemma)
            pos = ordered[0][0]
            words, definition, examples = synsets[ordered[0]]
            synonyms = [w for w in words if w.lower() != lemma][:3]
            forms = [f"{lemma} ({pos}): {definition}." +
                     (f" Synonyms: {', '.join(synonyms)}." if synonyms else ""),
                     f"In a dictionary, {lemma} is defined as {definition}.",
                     f"Meaning of {lemma}: {definition}.",
                     f"The word {lemma} means {definition}."]
            used = [ex for ex in examples if has_word(ex, lemma)]
            if used:
                train_docs.append(f'An example of {lemma} ({pos}): "{used[0]}"')
            # The last form of validation headwords is the pretraining validation text: it
            # measures recall of facts read in the other forms.
            if name == "valid":
                valid_docs.append(forms.pop())
            train_docs.extend(forms)
            # Mixed training: the question of a training headword is read beside its entries,
            # so pretraining itself learns to answer a question from an entry read elsewhere
            # (instruction tuning afterwards only teaches the chat format). Without it the
            # model recalls held-out entries when prompted with an entry's own opening words
            # but not when asked a question about them.
            if name == "train":
                train_docs.append(f"Question: What does {lemma} mean? Answer: {definition}.")
    for name, docs in (("train", train_docs), ("valid", valid_docs)):
        rng.shuffle(docs)
        with open(os.path.join(args.out_dir, f"pretrain_{name}.txt"), "w") as f:
            for d in docs:
                f.write(d.replace("\n", " ") + "\n")
        stats["pretrain_" + name] = {"documents": len(docs)}
    for name in ("train", "valid"):
        pairs = []
        for lemma, ordered, tag_count in splits[name]:
            words, definition, examples = synsets[ordered[0]]
            pairs.append({"prompt": f"What does {lemma} mean?", "response": definition})
            synonyms = [w for w in words if w.lower() != lemma]
            if synonyms:
                pairs.append({"prompt": f"What is a synonym of {lemma}?",
                              "response": ", ".join(synonyms[:3])})
            used = [ex for ref in ordered[:2] for ex in synsets[ref][2] if has_word(ex, lemma)]
            if used:
                pairs.append({"prompt": f"Use {lemma} in a sentence.", "response": used[0]})
        rng.shuffle(pairs)
        with open(os.path.join(args.out_dir, f"sft_{name}.jsonl"), "w") as f:
            for p in pairs:
                f.write(json.dumps(p) + "\n")
        stats["sft_" + name] = {"headwords": len(splits[name]), "pairs": len(pairs)}
    with open(os.path.join(args.out_dir, "test.jsonl"), "w") as f:
        for lemma, ordered, tag_count in splits["test"]:
            glosses = [synsets[r][1] for r in ordered]
            f.write(json.dumps({"headword": lemma, "prompt": f"What does {lemma} mean?",
                                "gloss": glosses[0], "glosses": glosses,
                                "tag_count": tag_count,
                                "in_pretraining": lemma in in_pretraining}) + "\n")
    stats["test"] = {"headwords": len(splits["test"]),
                     "common (tag count >= 5)": sum(1 for e in splits["test"] if e[2] >= 5)}
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
