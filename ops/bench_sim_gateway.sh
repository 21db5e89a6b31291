#!/usr/bin/env bash
# ops/bench_sim_gateway.sh: the gateway's ceiling under simulated users (docs/BENCHMARKS.md,
# "Simulated users"). Starts the whole stack with ops/up on free ports and a data folder of its
# own (redis-server, `duel train`, `duel serve` on the shipped configuration unless --set), then
# runs `duel sim --gateway` at a ladder of paced rates (asks per second over all users, think
# time 0) for about --seconds each, and prints time to duel p50/p95/p99 per rate. The ceiling is
# the first rate whose time-to-duel p95 is at least twice the lowest rate's (the load at which a
# user's wait doubles). The stack is stopped at the end (ops/up's own Ctrl-C path).
#
# Options:
#   --rates "R1 R2 ..."   asks per second to try, ascending (default "0.5 1 2 3 4 6 8")
#   --seconds S           duration of each step (default 40)
#   --users N             simulated users (default 32)
#   --prompts FILE        JSONL the users ask (default: "Define X." for WordNet headwords,
#                         written by models/wordnet_data.py into the data folder)
#   --set K=V             passed to both servers (ops/up), repeatable
#   --keep                keep the data folder (default: removed)
set -euo pipefail
cd "$(dirname "$0")/.."
rates="0.5 1 2 3 4 6 8" seconds=40 users=32 prompts="" keep=0 sets=()
while [ $# -gt 0 ]; do
    case $1 in
    --rates) rates=$2; shift ;;
    --seconds) seconds=$2; shift ;;
    --users) users=$2; shift ;;
    --prompts) prompts=$2; shift ;;
    --set) sets+=(--set "$2"); shift ;;
    --keep) keep=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "ops/bench_sim_gateway.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port) redis_port=$(free_port)
data=$(mktemp -d "${TMPDIR:-/tmp}/bench-sim-gateway-XXXXXX")
if [ -z "$prompts" ]; then
    python3 models/wordnet_data.py "$data/wn" >/dev/null
    python3 - "$data/wn" <<'EOF'
import json, sys
with open(f"{sys.argv[1]}/define_asks.jsonl", "w") as out:
    for line in open(f"{sys.argv[1]}/sft_train.jsonl"):
        d = json.loads(line)
        if d["prompt"].startswith("What does "):
            word = d["prompt"][len("What does "):-len(" mean?")]
            out.write(json.dumps({"prompt": f"Define {word}.", "reference": d["response"]}) + "\n")
EOF
    prompts="$data/wn/define_asks.jsonl"
fi
# Users come from one address: the per-address limits would refuse them, not the server's speed.
ops/up --skip-install --port "$port" --redis-port "$redis_port" --data-dir "$data" \
    --set gateway.asks_per_minute_connection=1000000 --set gateway.asks_per_minute_address=1000000 \
    --set gateway.connections_per_address=100000 --set gateway.asks_pending_per_address=1000000 ${sets[@]+"${sets[@]}"} >"$data/up.log" 2>&1 &
up=$!
stop() {
    kill -TERM "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    [ "$keep" -eq 1 ] || rm -rf "$data"
}
trap stop EXIT
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the stack did not start: $(tail -5 "$data/up.log")" >&2; exit 1; }
echo "stack up on port $port ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)); $users users, ${seconds} s per rate"
printf '%8s %8s %10s %10s %10s %10s %8s\n' rate duels/s p50_ms p95_ms p99_ms ack_p95 errors
base="" ceiling=""
for r in $rates; do
    votes=$(python3 -c "import math; print(max(10, math.ceil($r * $seconds)))")
    build/cli/duel sim --gateway "ws://127.0.0.1:$port" --users "$users" --votes "$votes" --rate "$r" \
        --duration $((seconds * 3)) --prompts "$prompts" --acked "$data/acked-$r.txt" --quiet --json \
        >"$data/sim-$r.out" 2>"$data/sim-$r.err" || { echo "rate $r: duel sim failed: $(tail -3 "$data/sim-$r.err")" >&2; exit 1; }
    line=$(tail -1 "$data/sim-$r.out")
    read -r dps p50 p95 p99 ack errors < <(python3 -c '
import json, sys
d = json.loads(sys.argv[1])
print(round(d["duels_per_second"], 2), round(d["time_to_duel_p50_ms"]), round(d["time_to_duel_p95_ms"]),
      round(d["time_to_duel_p99_ms"]), round(d["vote_ack_p95_ms"], 1), sum(d["errors"].values()))' "$line")
    printf '%8s %8s %10s %10s %10s %10s %8s\n' "$r" "$dps" "$p50" "$p95" "$p99" "$ack" "$errors"
    [ -z "$base" ] && base=$p95
    if [ -z "$ceiling" ] && [ "$p95" -ge $((2 * base)) ]; then ceiling=$r; fi
done
if [ -n "$ceiling" ]; then
    echo "ceiling: time-to-duel p95 doubles (>= $((2 * base)) ms) at $ceiling asks/s"
else
    echo "ceiling: not reached at the rates tried (p95 stayed below $((2 * base)) ms)"
fi
