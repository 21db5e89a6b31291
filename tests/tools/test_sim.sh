#!/usr/bin/env bash
# test_sim.sh: `duel sim` in process and the sweep runner (cli/sim_inprocess.c, cli/sim_sweep.c)
# on the shipped default model (models/default):
#   - bad input fails before any work, naming the file or the option: a malformed prompt file, an
#     unknown strategy or mode, an oracle that cannot work (an rm checkpoint that is not there, a
#     judge that does not answer, a judge for a sweep that needs scores); no output folder is made;
#   - a smoke sweep (passive, ee_ts and pilaf, one seed, online and offline, a few dozen
#     queries): the shape of every output (each run's JSONL, points.csv, summary.csv, table.md,
#     the plots when matplotlib is there), the measures in range; pilaf's votes train the policy
#     but never the ERM (no features: no ERM accuracy, no synthetic pairs);
#   - determinism: the same run again (ee_ts, and pilaf but under sanitizers), as
#     `duel sim --inprocess` in another process, writes a byte-identical JSONL;
#   - --report: an interrupted sweep's table and CSVs from its finished runs, none started;
#   - resume: the same sweep again redoes nothing (also from a folder an older build wrote, which
#     lacks keys added since, unless one of them is set); a sweep with another configuration into the
#     same folder is refused; one naming another strategy grows the folder's plan (finished runs
#     kept, the whole plan run; naming fewer afterwards does not shrink it); more seeds grow it too.
#   - ops/experiment: bad command lines and folders refused; a recorded experiment's "Define X."
#     prompt files made from wordnet-base when missing (and only then); a finished folder resumed.
# A sanitizer build (DUEL_SANITIZED=ON) runs the sweep online only and shorter.
# Usage: test_sim.sh PATH/TO/duel. Exits 0 when all pass, 1 on a failure.
set -u
DUEL=${1:?usage: test_sim.sh PATH/TO/duel}
SRC=${DUEL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${DUEL_PYTHON:-/usr/bin/python3}
MODEL="$SRC/models/default"
TAG=sim
# shellcheck source=tests/tools/cli_test_lib.sh
source "$(dirname "$0")/cli_test_lib.sh"
export TMPDIR="$TMP" # the runs' work folders

# What users ask the dictionary model: "Define X." with the gloss as the lexical oracle's reference.
"$PY" - "$TMP" <<'EOF'
import json, sys
words = [("tea", "a beverage made by steeping tea leaves in water"), ("dog", "a domesticated carnivorous mammal"),
         ("river", "a large natural stream of water"), ("bread", "food made from dough of flour and baked"),
         ("chair", "a seat for one person with a back"), ("music", "an artistic form of auditory communication"),
         ("winter", "the coldest season of the year"), ("garden", "a plot of ground where plants are cultivated"),
         ("doctor", "a licensed medical practitioner"), ("window", "a framework of wood or metal that contains glass"),
         ("apple", "fruit with red or yellow or green skin and crisp flesh"), ("bridge", "a structure that allows people or vehicles to cross an obstacle"),
         ("candle", "stick of wax with a wick in the middle"), ("forest", "the trees and other plants in a large densely wooded area"),
         ("letter", "a written message addressed to a person"), ("mountain", "a land mass that projects well above its surroundings"),
         ("ocean", "a large body of water constituting a principal part of the hydrosphere"), ("pencil", "a thin cylindrical pointed writing implement"),
         ("school", "an educational institution"), ("teacher", "a person whose occupation is teaching")]
held = [("salt", "a compound used to season food"), ("horse", "solid-hoofed herbivorous quadruped domesticated since prehistoric times"),
        ("milk", "a white nutritious liquid secreted by mammals"), ("book", "a written work or composition that has been published")]
with open(f"{sys.argv[1]}/asks.jsonl", "w") as f:
    for w, g in words:
        f.write(json.dumps({"prompt": f"Define {w}.", "reference": g}) + "\n")
with open(f"{sys.argv[1]}/held.jsonl", "w") as f:
    for w, g in held:
        f.write(json.dumps({"prompt": f"Define {w}.", "reference": g}) + "\n")
EOF
printf '%s\n' '{"prompt": "Define tea.", "reference": "a beverage"}' 'not json' >"$TMP/bad.jsonl"
printf '%s\n' '{"prompt": "Define tea."}' >"$TMP/noref.jsonl"

if [ "${DUEL_SANITIZED:-OFF}" = "ON" ]; then
    Q=12 EVERY=6 MODES=online
else
    Q=16 EVERY=8 MODES=online,offline
fi
POINTS=3
BASE=(--model "$MODEL" --prompts "$TMP/asks.jsonl" --held-out "$TMP/held.jsonl" --held-out-count 3 --kl-prompts 2
      --max-new-tokens 12 --queries "$Q" --eval-every "$EVERY" --set trainer.batch_size=4)

echo "== bad input: clear errors before any work"
expect 1 "$TMP/bad.jsonl:2: not JSON" -- sim sweep "${BASE[@]}" --prompts "$TMP/bad.jsonl" --out "$TMP/never"
expect 1 "$TMP/noref.jsonl:1: no \"reference\"" -- sim sweep "${BASE[@]}" --held-out "$TMP/noref.jsonl" --out "$TMP/never"
expect 1 "$TMP/missing.jsonl: No such file" -- sim sweep "${BASE[@]}" --prompts "$TMP/missing.jsonl" --out "$TMP/never"
expect 2 "--strategies: unknown duel strategy \"best\"" -- sim sweep "${BASE[@]}" --strategies passive,best --out "$TMP/never"
expect 2 "--strategies: arena: a simulated user votes on one policy's answers" -- sim sweep "${BASE[@]}" --strategies arena --out "$TMP/never"
expect 1 "--strategy arena: a simulated user votes on one policy's answers" -- sim --inprocess "${BASE[@]}" --strategy arena
expect 2 "--modes: unknown mode \"batch\"" -- sim sweep "${BASE[@]}" --modes batch --out "$TMP/never"
expect 1 "engine.features: \"base\": reference or policy" -- sim sweep "${BASE[@]}" --set engine.features=base --out "$TMP/never"
expect 2 "engine.features: \"base\": reference or policy" -- sim --inprocess "${BASE[@]}" --set engine.features=base
expect 1 "oracle.rm_path" -- sim sweep "${BASE[@]}" --set oracle.kind=rm --set oracle.rm_path="$TMP/no-rm" --out "$TMP/never"
expect 1 "judge gives no scores" -- sim sweep "${BASE[@]}" --set oracle.kind=judge --out "$TMP/never"
expect 2 "--mode must be online or offline" -- sim --inprocess "${BASE[@]}" --mode batch
expect 2 "--strategy: unknown duel strategy \"best\"" -- sim --inprocess "${BASE[@]}" --strategy best
expect 1 "oracle.judge.url http://127.0.0.1:1/v1/chat/completions: the probe comparison failed" -- \
    sim --gateway ws://127.0.0.1:1 --prompts "$TMP/asks.jsonl" --set oracle.kind=judge \
    --set oracle.judge.url=http://127.0.0.1:1/v1/chat/completions --set oracle.judge.max_attempts=1 --acked "$TMP/never-acked"
expect 2 "is not on this machine" -- sim --gateway ws://10.1.2.3:80 --prompts "$TMP/asks.jsonl"
expect 2 "expected ws://HOST:PORT" -- sim --gateway http://127.0.0.1:80 --prompts "$TMP/asks.jsonl"
expect 2 "say which form" -- sim
[ -e "$TMP/never" ] && fail "a refused sweep made its folder"
[ -e "$TMP/never-acked" ] && fail "a refused gateway sim made its acked file"
pass

echo "== --help documents every flag"
for form in "--inprocess" "sweep" "--gateway"; do
    out=$("$DUEL" sim $form --help 2>&1) || fail "duel sim $form --help exited $?"
    grep -q "^usage: duel sim" <<<"$out" || fail "duel sim $form --help has no usage line"
done
expect 0 "--queries N" -- sim sweep --help
expect 0 "--acked FILE" -- sim --gateway --help
expect 0 "--mode M" -- sim --inprocess --help

echo "== smoke sweep: passive, ee_ts and pilaf, one seed, $MODES, $Q queries"
OUT="$TMP/sweep"
SWEEP=(sim sweep "${BASE[@]}" --strategies passive,ee_ts,pilaf --modes "$MODES" --seeds 1 --seed 7 --jobs 2 --out "$OUT")
"$DUEL" "${SWEEP[@]}" --json >"$TMP/sweep.out" 2>"$TMP/sweep.err" || fail "sweep failed: $(tail -5 "$TMP/sweep.err")"
"$PY" - "$OUT" "$MODES" "$Q" "$EVERY" "$TMP/sweep.out" <<'EOF' || fail "sweep outputs"
import csv, json, os, sys
out, modes, q, every, stdout = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
last = json.loads(open(stdout).read().splitlines()[-1])
runs = [(s, m) for m in modes for s in ("passive", "ee_ts", "pilaf")]
assert last["bench"] == "sim sweep" and last["runs"] == len(runs) and last["failed"] == 0, last
queries = list(range(0, q + 1, every))
for s, m in runs:
    lines = open(f"{out}/runs/{s}-{m}-s7.jsonl").read().splitlines()
    assert len(lines) == len(queries), (s, m, len(lines))
    for i, line in enumerate(lines):
        d = json.loads(line)
        assert (d["strategy"], d["mode"], d["seed"], d["queries"]) == (s, m, 7, queries[i]), d
        assert d["ab"] + d["ties"] + d["both_bad"] == d["queries"], d
        for k in ("win_share", "mean_p"):
            assert 0 <= d[k] <= 1, (k, d)
        assert isinstance(d["score"], float) and isinstance(d["kl"], float), d
        if i == 0:  # the base model against itself
            assert d["mean_p"] == 0.5 and d["win_share"] == 0 and d["online_score"] is None and d["kl"] == 0, d
        else:
            assert isinstance(d["online_score"], float) and 0 <= d["interval_tie_share"] <= 1, d
    assert lines[-1] and json.loads(lines[-1])["updates"] >= 1, f"{s} {m}: the trainer never updated"
    if s == "pilaf":  # no features: the policy learns, the ERM never does
        d = json.loads(lines[-1])
        assert d["erm_accuracy"] is None and d["synthetic"] == 0 and d["train_kl"] is not None, d
    assert not os.path.exists(f"{out}/runs/{s}-{m}-s7.jsonl.partial")
rows = list(csv.DictReader(open(f"{out}/points.csv")))
assert len(rows) == len(runs) * len(queries), len(rows)
summary = list(csv.DictReader(open(f"{out}/summary.csv")))
assert len(summary) == len(runs) * len(queries), len(summary)
for col in ("win_share_mean", "win_share_se", "online_score_mean", "tie_share_mean", "kl_mean"):
    assert col in summary[0], col
assert all(r["seeds"] == "1" and float(r["win_share_se"]) == 0 for r in summary)
table = open(f"{out}/table.md").read()
for s, m in runs:
    assert f"| {s} | {m} |" in table, (s, m)
assert "queries to passive's final win rate" in table
assert json.load(open(f"{out}/config.json"))["sim"]["queries"] == q
try:
    import matplotlib  # noqa: F401
    for name in ("offline_win_rate", "offline_mean_p", "online_score", "kl"):
        data = open(f"{out}/{name}.png", "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", name
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert w >= 300 and h >= 200, (name, w, h)
except ImportError:
    print("(no matplotlib: plots not checked)")
EOF
pass

echo "== determinism: the same run in another process, byte for byte"
OPENBLAS_NUM_THREADS=1 "$DUEL" sim --inprocess --config "$OUT/config.json" --strategy ee_ts --mode online --seed 7 \
    --out "$TMP/again.jsonl" --quiet 2>"$TMP/again.err" || fail "sim --inprocess failed: $(tail -3 "$TMP/again.err")"
cmp "$OUT/runs/ee_ts-online-s7.jsonl" "$TMP/again.jsonl" || fail "the same seed gave a different JSONL"
if [ "${DUEL_SANITIZED:-OFF}" != "ON" ]; then # the sanitizers see pilaf's run in the sweep
    OPENBLAS_NUM_THREADS=1 "$DUEL" sim --inprocess --config "$OUT/config.json" --strategy pilaf --mode online --seed 7 \
        --out "$TMP/again-pilaf.jsonl" --quiet 2>"$TMP/again.err" || fail "sim --inprocess pilaf failed: $(tail -3 "$TMP/again.err")"
    cmp "$OUT/runs/pilaf-online-s7.jsonl" "$TMP/again-pilaf.jsonl" || fail "pilaf: the same seed gave a different JSONL"
fi
pass

echo "== the SEA mixture labelled by the oracle"
"$DUEL" sim --inprocess "${BASE[@]}" --strategy ee_ts --labels oracle --set trainer.burn_in=0 --queries 12 \
    --eval-every 12 --out "$TMP/oracle-labels.jsonl" --quiet 2>"$TMP/oracle-labels.err" ||
    fail "sim --labels oracle failed: $(tail -3 "$TMP/oracle-labels.err")"
"$PY" - "$TMP/oracle-labels.jsonl" <<'EOF' || fail "--labels oracle: the synthetic pairs were not labelled by the oracle"
import json, sys
d = json.loads(open(sys.argv[1]).read().splitlines()[-1])
assert d["labels"] == "oracle" and d["synthetic"] > 0 and d["oracle_labels"] == d["synthetic"], d
EOF
expect 2 "--labels must be erm or oracle" -- sim sweep "${BASE[@]}" --labels human --out "$TMP/never"

echo "== resume: done runs are kept; another configuration is refused"
cp -r "$OUT/runs" "$TMP/runs-before"
"$DUEL" "${SWEEP[@]}" >/dev/null 2>"$TMP/resume.err" || fail "resumed sweep failed: $(tail -3 "$TMP/resume.err")"
grep -q "already done in $OUT: resuming" "$TMP/resume.err" || fail "the resumed sweep did not say so"
for f in "$TMP"/runs-before/*.jsonl; do
    cmp "$f" "$OUT/runs/$(basename "$f")" || fail "resume changed $(basename "$f")"
done
expect 1 "holds a sweep with another configuration \\(sim.queries differs\\)" -- "${SWEEP[@]}" --queries $((Q + 1))
# A folder written by an older build lacks the keys added since: it resumes with them at their
# defaults (what its runs, reading the folder's file, get), and refuses one set otherwise.
"$PY" - "$OUT/config.json" <<'EOF' || fail "could not edit $OUT/config.json"
import json, sys
c = json.load(open(sys.argv[1]))
del c["engine"]["max_pilaf_jobs"]
json.dump(c, open(sys.argv[1], "w"), indent=2, sort_keys=True)
EOF
"$DUEL" "${SWEEP[@]}" >/dev/null 2>"$TMP/resume-old.err" || fail "a folder of an older build did not resume: $(tail -3 "$TMP/resume-old.err")"
grep -q "lacks 1 configuration key this build added" "$TMP/resume-old.err" || fail "the resume did not say which keys were added"
expect 1 "engine.max_pilaf_jobs is set, and the folder's configuration predates it" -- "${SWEEP[@]}" --set engine.max_pilaf_jobs=3
pass

echo "== --report: an interrupted sweep's finished runs, nothing started"
# ee_ts unfinished (its JSONL back to .partial, as a killed run leaves it); passive and pilaf done.
for f in "$OUT"/runs/ee_ts-*.jsonl; do mv "$f" "$f.partial"; done
"$DUEL" sim sweep --out "$OUT" --report >/dev/null 2>"$TMP/report.err" || fail "--report failed: $(tail -3 "$TMP/report.err")"
grep -q "done in $OUT: reporting those" "$TMP/report.err" || fail "--report did not say what it reports"
ls "$OUT"/runs/ee_ts-*.jsonl >/dev/null 2>&1 && fail "--report ran the unfinished runs"
"$PY" - "$OUT" "$MODES" <<'EOF' || fail "--report outputs"
import csv, sys
out, modes = sys.argv[1], sys.argv[2].split(",")
table = open(f"{out}/table.md").read()
for m in modes:
    assert f"| passive | {m} | 1 | 0." in table, (m, table)
    assert f"| ee_ts | {m} | 0 | - |" in table, (m, table)
summary = list(csv.DictReader(open(f"{out}/summary.csv")))
assert summary and {r["strategy"] for r in summary} == {"passive", "pilaf"}, {r["strategy"] for r in summary}
EOF
expect 1 "no sweep there" -- sim sweep --out "$TMP/never" --report
expect 2 "--report takes --out DIR" -- sim sweep --experiment "$OUT/config.json" --out "$OUT" --report
[ -e "$TMP/never" ] && fail "--report made a folder"
pass

echo "== a rerun naming another strategy grows the folder's plan; the finished runs stay"
# ee_ts is still unfinished (above); uncertainty is new. The plan becomes both, every mode of the
# folder; passive and pilaf are not run again, ee_ts finishes, uncertainty runs.
"$DUEL" sim sweep "${BASE[@]}" --strategies uncertainty --modes online --seeds 1 --seed 7 --jobs 2 --out "$OUT" \
    >/dev/null 2>"$TMP/grow.err" || fail "growing the sweep failed: $(tail -3 "$TMP/grow.err")"
grep -qF 'the plan grows to strategies ["passive","ee_ts","pilaf","uncertainty"]' "$TMP/grow.err" ||
    fail "the grown sweep did not say its plan: $(grep plan "$TMP/grow.err")"
for f in "$TMP"/runs-before/passive-*.jsonl "$TMP"/runs-before/pilaf-*.jsonl; do
    cmp "$f" "$OUT/runs/$(basename "$f")" || fail "growing the plan changed $(basename "$f")"
done
"$PY" - "$OUT" "$MODES" <<'EOF' || fail "the grown sweep's outputs"
import json, os, sys
out, modes = sys.argv[1], sys.argv[2].split(",")
sim = json.load(open(f"{out}/config.json"))["sim"]
assert sim["strategies"] == ["passive", "ee_ts", "pilaf", "uncertainty"] and sim["modes"] == modes, sim
table = open(f"{out}/table.md").read()
for s in ("passive", "ee_ts", "pilaf", "uncertainty"):
    for m in modes:
        assert os.path.exists(f"{out}/runs/{s}-{m}-s7.jsonl"), (s, m)
        assert f"| {s} | {m} | 1 | 0." in table, (s, m, table)
EOF
# The folder's whole plan is done: the original command (fewer strategies) starts nothing and
# leaves the plan as it is.
cp "$OUT/config.json" "$TMP/config-grown.json"
RUNS=$((4 * $(tr ',' '\n' <<<"$MODES" | wc -l)))
"$DUEL" "${SWEEP[@]}" >/dev/null 2>"$TMP/regrow.err" || fail "resuming the grown sweep failed: $(tail -3 "$TMP/regrow.err")"
grep -q "$RUNS of $RUNS runs already done" "$TMP/regrow.err" ||
    fail "the grown plan was not resumed whole: $(grep -E 'done|plan' "$TMP/regrow.err")"
cmp "$OUT/config.json" "$TMP/config-grown.json" || fail "a command naming fewer strategies shrank the plan"
expect 1 "holds a sweep with another configuration \\(sim.queries differs\\)" -- sim sweep "${BASE[@]}" --strategies bai_ts \
    --seeds 1 --seed 7 --out "$OUT" --queries $((Q + 1))
[ -e "$OUT/runs/bai_ts-online-s7.jsonl" ] && fail "a refused growth ran a run"
pass

echo "== a rerun with more seeds grows the plan too"
G=$TMP/grow-seeds
"$DUEL" sim sweep "${BASE[@]}" --strategies passive --modes online --seeds 1 --jobs 1 --out "$G" >/dev/null 2>"$TMP/gs1.err" ||
    fail "the one-seed sweep failed: $(tail -3 "$TMP/gs1.err")"
cp "$G/runs/passive-online-s1.jsonl" "$TMP/gs-s1.jsonl"
"$DUEL" sim sweep "${BASE[@]}" --strategies passive --modes online --seeds 2 --jobs 1 --out "$G" >/dev/null 2>"$TMP/gs2.err" ||
    fail "growing the seeds failed: $(tail -3 "$TMP/gs2.err")"
grep -qF 'the plan grows to strategies ["passive"], modes ["online"], 2 seeds (2 runs)' "$TMP/gs2.err" ||
    fail "the sweep did not say its grown plan: $(grep -E 'plan|done' "$TMP/gs2.err")"
[ -f "$G/runs/passive-online-s2.jsonl" ] || fail "the second seed was not run"
cmp "$G/runs/passive-online-s1.jsonl" "$TMP/gs-s1.jsonl" || fail "growing the seeds changed seed 1's run"
grep -q '| passive | online | 2 | 0.' "$G/table.md" || fail "the table does not count both seeds: $(grep passive "$G/table.md")"
pass

echo "== ops/experiment: a recorded sweep's prompt files made from wordnet-base, the sweep finished"
EXP="$SRC/ops/experiment"
expect_ops() { # expect_ops CODE PATTERN ARGS...: ops/experiment's exit status and message
    local code=$1 pattern=$2 out rc
    shift 2
    out=$("$EXP" --duel "$DUEL" "$@" 2>&1 </dev/null)
    rc=$?
    [ "$rc" -eq "$code" ] || { fail "ops/experiment $*: exited $rc, expected $code: $(head -3 <<<"$out")"; return; }
    grep -Eq -- "$pattern" <<<"$out" || { fail "ops/experiment $*: no /$pattern/ in: $(head -3 <<<"$out")"; return; }
    pass
}
expect_ops 2 "which sweep" 
expect_ops 2 "$TMP/nowhere/config.json: no such file" "$TMP/nowhere"
mkdir -p "$TMP/exp"
echo '{"sim": {}}' >"$TMP/exp/config.json"
expect_ops 2 "names no sim.prompts or sim.held_out" "$TMP/exp"
if [ -d /usr/share/wordnet ]; then
    "$PY" - "$OUT/config.json" "$TMP/exp/config.json" "$TMP/made" <<'EOF' || fail "could not write the experiment"
import json, sys
c = json.load(open(sys.argv[1]))
c["sim"]["prompts"], c["sim"]["held_out"] = f"{sys.argv[3]}/asks.jsonl", f"{sys.argv[3]}/held.jsonl"
json.dump(c, open(sys.argv[2], "w"))
EOF
    expect_ops 0 "5279 asks; .* 241 held-out prompts" "$TMP/exp" --data-only
    "$PY" - "$TMP/made" <<'EOF' || fail "the made prompt files"
import json, sys
asks = [json.loads(l) for l in open(f"{sys.argv[1]}/asks.jsonl")]
held = [json.loads(l) for l in open(f"{sys.argv[1]}/held.jsonl")]
assert len(asks) == 5279 and len(held) == 241, (len(asks), len(held))
for d in asks + held:
    assert d["prompt"].startswith("Define ") and d["prompt"].endswith(".") and d["reference"], d
assert not {d["prompt"] for d in asks} & {d["prompt"] for d in held}, "a held-out word is asked"
EOF
    touch -d '2000-01-01' "$TMP/made/asks.jsonl"
    "$EXP" --duel "$DUEL" "$TMP/exp" --data-only 2>/dev/null
    [ "$(stat -c %Y "$TMP/made/asks.jsonl")" = "$(date -d 2000-01-01 +%s)" ] || fail "ops/experiment made files that were there"
else
    echo "(no wordnet-base: the prompt files not made)"
fi
# The smoke sweep's folder, every run finished: ops/experiment resumes it and starts nothing.
"$EXP" --duel "$DUEL" "$OUT" --jobs 1 >/dev/null 2>"$TMP/exp.err" || fail "ops/experiment on a finished sweep failed: $(tail -3 "$TMP/exp.err")"
grep -q "runs already done in $OUT" "$TMP/exp.err" || fail "ops/experiment did not resume the folder: $(tail -3 "$TMP/exp.err")"
pass

echo "test_sim: $checks checks, $failures failures"
[ "$failures" -eq 0 ]
