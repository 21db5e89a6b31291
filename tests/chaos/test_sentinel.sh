#!/usr/bin/env bash
# test_sentinel.sh: Redis high availability (issue 21; redis_link/redis_link.h). On free loopback
# ports: a master and a replica (ACL user duel with a password: the default user is off, so every
# connection must authenticate; DUEL_REDIS_USER / DUEL_REDIS_PASSWORD from the environment, never
# argv) and three sentinels (Debian's redis-sentinel, down-after 1 s), a `duel serve` (test
# backend: its votes go through the same Redis thread, to duel:prefs:test) and a `duel train`,
# both given only the sentinels (redis.sentinels, redis.master_name) and redis.ack_replicas 1.
# Simulated users chat (`duel sim --gateway`); the master is killed with SIGKILL mid-load, then
# restarted (the sentinels make it a replica of the new master). Checked:
#   - the failover completes (a sentinel names the replica) and its time is printed;
#   - chat goes on: votes are acknowledged after the failover, every ask of the run acknowledged;
#   - 0 acknowledged votes lost: every duel id the sim saw acknowledged is in the new master's
#     stream exactly once (WAIT 1 before vote_ok: an acknowledged vote was on the replica, or in
#     the gateway's spill log until a replica confirmed it);
#   - the trainer followed: it wrote its status to the new master after the failover;
#   - the password appears in no process's argv and no log; a wrong password is refused with a
#     message naming the variables.
# Usage: test_sentinel.sh PATH/TO/duel. Exit 0 when all pass, 1 on a failure, 77 without
# redis-sentinel.
set -u
DUEL=${1:?usage: test_sentinel.sh PATH/TO/duel}
SRC=${DUEL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
PY=${DUEL_PYTHON:-/usr/bin/python3}
command -v redis-sentinel >/dev/null || { echo "SKIP: redis-sentinel is not installed (ops/lib.sh installs it)"; exit 77; }
mkdir -p "${DUEL_TEST_TMP:-/tmp}" 2>/dev/null
TMP=$(mktemp -d "${DUEL_TEST_TMP:-/tmp}/sentinel-XXXXXX")
PIDS=()
failures=0
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    [ "$failures" -eq 0 ] && rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
die() { fail "$*"; exit 1; }
now_ms() { date +%s%3N; }
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

SECRET="s3cret-$RANDOM$RANDOM"
export DUEL_REDIS_USER=duel DUEL_REDIS_PASSWORD=$SECRET
export REDISCLI_AUTH=$SECRET # redis-cli's own variable: the password stays out of argv here too
MPORT=$(free_port) RPORT=$(free_port) GPORT=$(free_port)
SPORTS=("$(free_port)" "$(free_port)" "$(free_port)")
cli() { local port=$1; shift; redis-cli --user duel -p "$port" --no-auth-warning "$@"; }
scli() { local port=$1; shift; env -u REDISCLI_AUTH redis-cli -p "$port" "$@"; } # sentinels: no password

start_redis() { # name port [replicaof-port]
    local conf=$TMP/$1.conf
    {
        printf 'port %s\nbind 127.0.0.1\ndir %s\nsave ""\nappendonly no\n' "$2" "$TMP"
        printf 'user default off\nuser duel on >%s ~* &* +@all\nmasteruser duel\nmasterauth %s\n' "$SECRET" "$SECRET"
        [ -n "${3:-}" ] && printf 'replicaof 127.0.0.1 %s\n' "$3"
    } >"$conf"
    redis-server "$conf" >>"$TMP/$1.log" 2>&1 &
    PIDS+=($!)
    eval "PID_$1=$!"
}
start_redis master "$MPORT"
start_redis replica "$RPORT" "$MPORT"
for i in 0 1 2; do
    printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor duel 127.0.0.1 %s 2\nsentinel down-after-milliseconds duel 1000\nsentinel failover-timeout duel 5000\nsentinel auth-user duel duel\nsentinel auth-pass duel %s\n' \
        "${SPORTS[i]}" "$TMP" "$MPORT" "$SECRET" >"$TMP/sentinel$i.conf"
    redis-sentinel "$TMP/sentinel$i.conf" >"$TMP/sentinel$i.log" 2>&1 &
    PIDS+=($!)
done
# Ready: the replica in sync and every sentinel seeing the replica and the two other sentinels.
for _ in $(seq 300); do
    ok=1
    [ "$(cli "$RPORT" INFO replication | tr -d '\r' | grep -c '^master_link_status:up')" = 1 ] || ok=0
    for s in "${SPORTS[@]}"; do
        [ "$(scli "$s" SENTINEL master duel 2>/dev/null | tr -d '\r' | awk 'p { print; exit } $0 == "num-other-sentinels" { p = 1 }')" = 2 ] || ok=0
        [ "$(scli "$s" SENTINEL master duel 2>/dev/null | tr -d '\r' | awk 'p { print; exit } $0 == "num-slaves" { p = 1 }')" = 1 ] || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
done
[ "$ok" = 1 ] || die "the master, replica and sentinels did not come up (see $TMP/*.log)"
SENTINELS="[\"127.0.0.1:${SPORTS[0]}\",\"127.0.0.1:${SPORTS[1]}\",\"127.0.0.1:${SPORTS[2]}\"]"
# --redis names no server: a port nothing listens on, so only the sentinels can lead to Redis.
DEAD=$(free_port)
SETS=(--set "redis.sentinels=$SENTINELS" --set redis.master_name='"duel"' --set redis.ack_replicas=1
    --set redis.ack_timeout_ms=500)

# A wrong password is refused, with the variables named and the password nowhere in the message.
out=$(DUEL_REDIS_PASSWORD=bad-pw-417 "$DUEL" knobs get --redis "127.0.0.1:$MPORT" 2>&1)
[ $? -ne 0 ] && echo "$out" | grep -q 'DUEL_REDIS_PASSWORD' || fail "a wrong password: $out"
echo "$out" | grep -q bad-pw-417 && fail "the refused password is in the message: $out"

# A bad sentinel address is refused at start, naming the key.
for args in "serve --backend test" "train --quiet"; do
    # shellcheck disable=SC2086
    out=$("$DUEL" $args --set 'redis.sentinels=["127.0.0.1"]' 2>&1 </dev/null)
    [ $? -ne 0 ] && echo "$out" | grep -q 'redis.sentinels\[0\]' || fail "duel $args with a bad sentinel: $out"
done

"$DUEL" serve --port "$GPORT" --redis "127.0.0.1:$DEAD" --backend test --test-step-ms 5 --spill "$TMP/spill.log" \
    --web-root "$SRC/gateway/web" "${SETS[@]}" --set gateway.asks_per_minute_connection=1000000 \
    --set gateway.asks_per_minute_address=1000000 --set gateway.connections_per_address=1000 \
    --set gateway.asks_pending_per_address=1000000 >"$TMP/serve.log" 2>&1 &
PIDS+=($!)
"$DUEL" train --redis "127.0.0.1:$DEAD" --model "$SRC/models/default" --data-dir "$TMP/train" "${SETS[@]}" \
    >"$TMP/train.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$GPORT/readyz" | grep -q '^redis: up' && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$GPORT/readyz" | grep -q '^redis: up' || die "duel serve did not reach Redis through the sentinels: $(tail -3 "$TMP/serve.log")"
for _ in $(seq 600); do grep -q '^duel train: redis ' "$TMP/train.log" && break; sleep 0.1; done

printf '%s\n' '{"prompt": "Define tea.", "reference": "a beverage made by steeping tea leaves in water"}' >"$TMP/asks.jsonl"
VOTES=400
"$DUEL" sim --gateway "ws://127.0.0.1:$GPORT" --users 8 --votes "$VOTES" --prompts "$TMP/asks.jsonl" \
    --think uniform:0:10 --acked "$TMP/acked.txt" --quiet --json >"$TMP/sim.out" 2>"$TMP/sim.err" &
SIM=$!
PIDS+=($SIM)
for _ in $(seq 300); do [ "$(cat "$TMP/acked.txt" 2>/dev/null | wc -l)" -ge 100 ] && break; sleep 0.05; done
BEFORE=$(wc -l <"$TMP/acked.txt")
[ "$BEFORE" -ge 100 ] || die "no load before the kill: $BEFORE votes acknowledged"
T_KILL=$(now_ms)
kill -KILL "$PID_master"
wait "$PID_master" 2>/dev/null
echo "== $(date +%T) killed the master after $BEFORE acknowledged votes"
T_FAILOVER=
for _ in $(seq 300); do
    if [ "$(scli "${SPORTS[0]}" SENTINEL get-master-addr-by-name duel | tail -1)" = "$RPORT" ]; then
        T_FAILOVER=$(now_ms)
        break
    fi
    sleep 0.05
done
[ -n "$T_FAILOVER" ] || die "no failover within 15 s"
AT_FAILOVER=$(wc -l <"$TMP/acked.txt")
# The old master comes back; the sentinels make it the new master's replica, and WAIT 1 can be met
# again (until then new votes are acknowledged as queued, from the spill log).
start_redis master "$MPORT"
wait "$SIM" || fail "duel sim --gateway failed: $(tail -3 "$TMP/sim.err")"
for _ in $(seq 300); do curl -sf "http://127.0.0.1:$GPORT/readyz" | grep -q '^spill_pending: 0' && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$GPORT/readyz" | grep -q '^spill_pending: 0' || fail "the spill log did not drain: $(curl -s "http://127.0.0.1:$GPORT/readyz" | tr '\n' ' ')"

# shellcheck source=ops/vote_checks.sh
source "$SRC/ops/vote_checks.sh"
REDIS_ARGS="--user duel --no-auth-warning -p $RPORT" duel_compare_acked "$TMP/acked.txt" duel:prefs:test "$TMP"
ACKED=$DUEL_ACKED LOST=$DUEL_LOST DUP=$DUEL_DUPLICATED
[ "$LOST" -eq 0 ] || fail "$LOST acknowledged votes are not on the new master"
[ "$DUP" -eq 0 ] || fail "$DUP duel ids are in the stream twice"
"$PY" - "$TMP/sim.out" "$VOTES" <<'EOF' || fail "the sim's figures"
import json, sys
d = json.loads(open(sys.argv[1]).read().splitlines()[-1])
votes = int(sys.argv[2])
# Every ask answered and voted: a duel cut by the failover would show as an unacknowledged vote.
assert d["asked"] == votes and d["votes_acked"] == votes, d
EOF
[ "$ACKED" -gt "$AT_FAILOVER" ] || fail "no vote acknowledged after the failover"
UPDATED=$(cli "$RPORT" --raw HGET duel:trainer:status updated_ms)
[ -n "$UPDATED" ] && [ "$UPDATED" -ge "$T_KILL" ] || fail "the trainer wrote no status to the new master after the failover: $(tail -2 "$TMP/train.log")"
grep -rl -- "$SECRET" "$TMP"/*.log >/dev/null && fail "the password is in a log: $(grep -rl -- "$SECRET" "$TMP"/*.log)"
for pid in "${PIDS[@]}"; do
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$SECRET" &&
        fail "the password is in the argv of pid $pid"
done
QUEUED=$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])["votes_queued"])' "$TMP/sim.out")
echo "test_sentinel: failover in $((T_FAILOVER - T_KILL)) ms (kill -9 of the master -> a sentinel names the replica);" \
    "$ACKED votes acknowledged ($QUEUED from the spill log), $BEFORE before the kill; lost $LOST, duplicated $DUP; $failures failures"
[ "$failures" -eq 0 ]
