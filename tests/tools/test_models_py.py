#!/usr/bin/env python3
"""test_models_py.py: the Python side of the default model's build (models/).

- models/evaluate.py: word-overlap F1 and the "about its headword" share on hand-made answers,
  including answers that overlap another word's gloss more than their own; the --question
  template.
- models/wordnet_data.py on Debian's WordNet: no held-out (test) headword is ever asked about in
  the pretraining or SFT text (that would contaminate the held-out evaluation); the pretraining
  questions are exactly those of the training headwords of the knowledge set, with their primary
  definition; test.jsonl's in_pretraining flag says whether the headword's entries are in the
  pretraining text.

Standard library only. Exit 77 (skip) when /usr/share/wordnet is missing."""
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

SOURCE = os.environ.get("DUEL_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
WORDNET = "/usr/share/wordnet"


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(SOURCE, "models", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


evaluate = load("evaluate")


def row(headword, answer, gloss):
    return {"headword": headword, "answer": answer, "gloss": gloss,
            "f1_primary": evaluate.f1(answer, gloss), "f1_best_sense": evaluate.f1(answer, gloss)}


class EvaluateTest(unittest.TestCase):
    def test_f1(self):
        self.assertEqual(evaluate.f1("a hot drink", "a hot drink"), 1.0)
        self.assertEqual(evaluate.f1("Cold!", "a hot drink"), 0.0)
        self.assertEqual(evaluate.f1("", "a hot drink"), 0.0)
        # 2 of 4 answer words, 2 of 3 reference words: P 1/2, R 2/3, F1 4/7. Case and punctuation
        # do not count; repeated words count as often as both sides have them.
        self.assertAlmostEqual(evaluate.f1("A HOT, hot soup", "a hot drink"), 4 / 7)
        self.assertAlmostEqual(evaluate.f1("hot hot", "hot hot drink"), 0.8)

    def test_about_headword(self):
        tea = "a beverage made by steeping leaves in boiling water"
        river = "a large natural stream of water"
        lamp = "an artificial source of visible light"
        rows = [row("tea", "a drink made by steeping leaves", tea),         # its own gloss wins
                row("river", "leaves steeped in boiling water", river),     # tea's gloss wins
                row("lamp", "a large stream", lamp),                        # no overlap with its own
                row("brook", "a small natural stream of water", river)]     # ties with the river row's
        evaluate.identified(rows)
        self.assertEqual([r["about_headword"] for r in rows], [True, False, False, True])
        s = evaluate.summary(rows)
        self.assertEqual(s["count"], 4)
        self.assertAlmostEqual(s["share_about_headword"], 0.5)
        self.assertAlmostEqual(s["mean_f1_primary"], sum(r["f1_primary"] for r in rows) / 4)
        self.assertAlmostEqual(s["share_f1_best_sense_at_least_half"],
                               sum(r["f1_best_sense"] >= 0.5 for r in rows) / 4)

    def test_question(self):
        self.assertEqual(evaluate.ask("What does {} mean?", "tea"), "What does tea mean?")
        self.assertEqual(evaluate.ask("Define {}.", "tea"), "Define tea.")
        for bad in ("Define tea.", "{} or {}?"):  # no place for the headword, or two
            with self.assertRaises(ValueError):
                evaluate.ask(bad, "tea")

    def test_alone_in_its_set(self):
        # With no other word to beat, an answer is about its word when it overlaps its gloss at all.
        alone = [row("tea", "cold stones", "a hot drink")]
        evaluate.identified(alone)
        self.assertFalse(alone[0]["about_headword"])
        alone = [row("tea", "a drink", "a hot drink")]
        evaluate.identified(alone)
        self.assertTrue(alone[0]["about_headword"])

    def test_empty_summary(self):
        self.assertEqual(evaluate.summary([])["count"], 0)


QUESTION = re.compile(r"^Question: What does (\S+) mean\? Answer: (.*)\.$")


@unittest.skipUnless(os.path.isdir(WORDNET), "no WordNet")
class WordnetDataTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory(prefix="wordnet-data-")
        out = subprocess.run([sys.executable, os.path.join(SOURCE, "models", "wordnet_data.py"),
                              cls.tmp.name], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError("wordnet_data.py failed: " + out.stderr)
        cls.stats = json.loads(out.stdout.strip().splitlines()[-1])

        def lines(name):
            with open(os.path.join(cls.tmp.name, name), encoding="utf-8") as f:
                return f.read().splitlines()

        cls.pretrain = lines("pretrain_train.txt")
        cls.pretrain_valid = lines("pretrain_valid.txt")
        cls.sft = [json.loads(l) for name in ("sft_train.jsonl", "sft_valid.jsonl") for l in lines(name)]
        cls.test = [json.loads(l) for l in lines("test.jsonl")]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_no_held_out_question_is_trained_on(self):
        held_out = {t["headword"] for t in self.test}
        self.assertGreater(len(held_out), 1000)
        asked_in_pretraining = {m.group(1) for m in map(QUESTION.match, self.pretrain) if m}
        asked_in_sft = {re.sub(r"^(What does|What is a synonym of|Use) (\S+?)( mean\?|\?| in a sentence\.)$",
                               r"\2", p["prompt"]) for p in self.sft}
        self.assertFalse(held_out & asked_in_pretraining)
        self.assertFalse(held_out & asked_in_sft)

    def test_pretraining_questions_are_the_training_knowledge_set(self):
        questions = dict(m.groups() for m in map(QUESTION.match, self.pretrain) if m)
        sft_train = {}
        with open(os.path.join(self.tmp.name, "sft_train.jsonl"), encoding="utf-8") as f:
            for line in f:
                p = json.loads(line)
                m = re.match(r"^What does (\S+) mean\?$", p["prompt"])
                if m:
                    sft_train[m.group(1)] = p["response"]
        # SFT asks about the training headwords of the knowledge set; pretraining asks the same
        # questions with the same (primary) definitions.
        self.assertEqual(questions, sft_train)
        self.assertEqual(len(questions), self.stats["sft_train"]["headwords"])
        # Every question's headword also has its entries in the pretraining text.
        entries = {line.split(" ", 1)[0] for line in self.pretrain if not line.startswith(("Question:", "An example", "In a", "Meaning", "The word"))}
        self.assertFalse(set(questions) - entries)

    def test_in_pretraining_flag(self):
        text = set(self.pretrain) | set(self.pretrain_valid)
        flagged = [t for t in self.test if t["in_pretraining"]]
        self.assertGreater(len(flagged), 100)
        self.assertGreater(len(self.test) - len(flagged), 100)
        for t in self.test:
            form = f"Meaning of {t['headword']}: {t['gloss']}."
            self.assertEqual(form in text, t["in_pretraining"], t["headword"])


if __name__ == "__main__":
    if not os.path.isdir(WORDNET):
        print(f"SKIP: {WORDNET} is missing (apt-get install wordnet-base)")
        sys.exit(77)
    unittest.main()
