#!/usr/bin/env python3
"""make_define_prompts.py: the prompt files of the "Define X." experiments (docs/EXPERIMENTS.md)
from the output folder of models/wordnet_data.py. Standard library only.

  ASKS  what the simulated users ask: "Define X." for every training headword the model was
        taught "What does X mean?" about (sft_train.jsonl), with that answer, X's primary gloss,
        as the lexical oracle's reference; in the file's order (a run shuffles them by its seed)
  HELD  the evaluation prompts: "Define Y." for the held-out headwords that are in the
        pretraining text (test.jsonl, in_pretraining), with Y's gloss

Usage: make_define_prompts.py WORDNET_DIR ASKS HELD
"""
import json
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.split("\n\n")[-1].strip())
    src, asks_path, held_path = sys.argv[1:]
    asks = held = 0
    with open(asks_path, "w") as out:
        for line in open(f"{src}/sft_train.jsonl"):
            d = json.loads(line)
            if d["prompt"].startswith("What does ") and d["prompt"].endswith(" mean?"):
                word = d["prompt"][len("What does "):-len(" mean?")]
                out.write(json.dumps({"prompt": f"Define {word}.", "reference": d["response"]}) + "\n")
                asks += 1
    with open(held_path, "w") as out:
        for line in open(f"{src}/test.jsonl"):
            d = json.loads(line)
            if d["in_pretraining"]:
                out.write(json.dumps({"prompt": f"Define {d['headword']}.", "reference": d["gloss"]}) + "\n")
                held += 1
    print(f"{asks_path}: {asks} asks; {held_path}: {held} held-out prompts")


if __name__ == "__main__":
    main()
