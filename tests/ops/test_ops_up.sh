#!/usr/bin/env bash
# shellcheck disable=SC2015  # pass never fails: A && pass || fail is an if-then-else here
# test_ops_up.sh: ops/up with two gateways and its supervision (issue 21). ops/up runs the built
# duel (--duel, no build), the gateways on the test backend, the trainer on the fixture model,
# on free loopback ports in a temporary data folder. It checks that:
#   - both gateways answer on --port and --port+1, each with its own spill log, pids in DATA/run/;
#   - a gateway, redis-server, nginx (--lb-port, when installed) and the trainer killed with
#     SIGKILL are each started again (the log says which part, how it ended and when it
#     restarts) while the other parts keep their pids; the trainer reconnects to the restarted
#     Redis instead of dying; nginx's orphaned workers, which would keep its port, are ended;
#   - a part that keeps dying (more than --max-restarts exits within 5 minutes) stops the whole
#     stack: ops/up exits 1 naming the part, and no process of the stack is left (--max-restarts
#     0, the first exit, is the same branch).
# Usage: test_ops_up.sh DUEL (ctest passes the built binary).
set -uo pipefail
DUEL=$1
TAG=ops-up
SRC=${DUEL_SOURCE_DIR:?}
# shellcheck source=tests/tools/cli_test_lib.sh
source "$SRC/tests/tools/cli_test_lib.sh"
MODEL=${DUEL_BUILD_DIR:?}/test-models/tiny-llama-f32
DATA=$TMP/data

# A free port P with P+1 free too (the two gateways), Redis's and nginx's.
read -r PORT RPORT LBPORT < <(python3 - <<'PY'
import random, socket
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        s.close()
while True:
    p = random.randint(20000, 60000)
    if all(free(p + i) for i in range(4)):
        print(p, p + 2, p + 3)
        break
PY
)

# wait_until SECONDS DESCRIPTION COMMAND...: polls every 0.1 s.
wait_until() {
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq $((seconds * 10))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    fail "timed out after ${seconds}s waiting for $what"
    return 1
}
ready() { curl -sf "http://127.0.0.1:$1/readyz"; }
pid_of() { cat "$DATA/run/$1.pid" 2>/dev/null; }
in_log() { grep -Eq -- "$1" "$TMP/up.log"; }
alive() { kill -0 "$1" 2>/dev/null; }
up_pid=0
cleanup() {
    [ "$up_pid" -gt 0 ] && kill -TERM "$up_pid" 2>/dev/null && wait "$up_pid"
    rm -rf "$TMP"
}
trap cleanup EXIT

# nginx in front when it is installed (ops/test installs it; test_lb_nginx tests the balancing).
lb=(--lb-port 0)
PATH=$PATH:/usr/sbin command -v nginx >/dev/null && lb=(--lb-port "$LBPORT")
echo "== two gateways on $PORT and $((PORT + 1)), redis on $RPORT, ${lb[*]}"
PATH=$PATH:/usr/sbin "$SRC/ops/up" --skip-install --duel "$DUEL" --backend test --gateways 2 --port "$PORT" \
    --redis-port "$RPORT" --data-dir "$DATA" --trainer-metrics-port 0 --max-restarts 2 "${lb[@]}" \
    --set "model.path=$MODEL" --set trainer.stats_interval_ms=0 >"$TMP/up.log" 2>&1 &
up_pid=$!
if ! wait_until 60 "ops/up to print 'duel is up'" in_log 'duel is up'; then
    cat "$TMP/up.log"
    exit 1
fi
for p in "$PORT" "$((PORT + 1))"; do ready "$p" >/dev/null && pass || fail "gateway $p is not ready"; done
for part in redis trainer "gateway-$PORT" "gateway-$((PORT + 1))"; do
    alive "$(pid_of "$part")" && pass || fail "no live pid in $DATA/run/$part.pid"
done
[ -f "$DATA/gateway-$((PORT + 1))-spill.log" ] && pass || fail "the second gateway has no spill log of its own"

echo "== SIGKILL of the second gateway: started again, the rest untouched"
g2=$(pid_of "gateway-$((PORT + 1))") g1=$(pid_of "gateway-$PORT") trainer=$(pid_of trainer)
kill -KILL "$g2"
wait_until 10 "the restart line" in_log "gateway-$((PORT + 1)) \(pid $g2\) was killed by signal 9 \(SIGKILL\); starting it again in 1s" && pass
wait_until 30 "the second gateway to be ready again" ready "$((PORT + 1))" && pass
[ "$(pid_of "gateway-$((PORT + 1))")" != "$g2" ] && pass || fail "the second gateway's pid did not change"
[ "$(pid_of "gateway-$PORT")" = "$g1" ] && [ "$(pid_of trainer)" = "$trainer" ] && pass ||
    fail "another part was restarted too"

echo "== SIGKILL of redis-server: started again; the trainer reconnects"
kill -KILL "$(pid_of redis)"
wait_until 10 "redis's restart line" in_log "redis \(pid [0-9]+\) was killed by signal 9" && pass
wait_until 30 "redis to answer again" redis-cli -p "$RPORT" ping && pass
wait_until 30 "the trainer to reconnect" grep -q "is back after" "$DATA/train.log" && pass
[ "$(pid_of trainer)" = "$trainer" ] && alive "$trainer" && pass || fail "the trainer did not survive the Redis restart"

if [ "${lb[1]}" != 0 ]; then
    echo "== SIGKILL of nginx: started again (its orphaned workers, which keep the port, ended)"
    nginx_pid=$(pid_of lb)
    ready "$LBPORT" >/dev/null && pass || fail "nginx on $LBPORT is not ready"
    kill -KILL "$nginx_pid"
    wait_until 10 "nginx's restart line" in_log "lb \(pid $nginx_pid\) was killed by signal 9" && pass
    wait_until 10 "nginx started again" in_log "lb started again" && pass
    wait_until 10 "nginx to answer again" ready "$LBPORT" && pass
    # The old workers (its process group) are gone, or they would keep answering on the port
    # while every new master fails to bind it.
    # (Zombies do not count: they hold no port, and PID 1 reaps them when it gets to it.)
    wait_until 10 "the killed nginx's workers to end" bash -c \
        "! ps -eo pgid=,stat= | awk -v g=$nginx_pid '\$1 == g && \$2 !~ /^Z/' | grep -q ." && pass
    alive "$(pid_of lb)" && [ "$(pid_of lb)" != "$nginx_pid" ] && pass ||
        fail "the new nginx is not running: $(tail -3 "$DATA/lb/error.log")"
fi

echo "== SIGKILL of the trainer: started again"
kill -KILL "$trainer"
wait_until 10 "the trainer's restart line" in_log "trainer \(pid $trainer\) was killed by signal 9" && pass
wait_until 10 "a new trainer" bash -c "[ -n \"\$(cat '$DATA/run/trainer.pid' 2>/dev/null)\" ] && [ \"\$(cat '$DATA/run/trainer.pid')\" != $trainer ]" && pass

echo "== the second gateway dies twice more (3 exits > --max-restarts 2): everything stops"
wait_until 30 "the second gateway (exit 1)" ready "$((PORT + 1))"
kill -KILL "$(pid_of "gateway-$((PORT + 1))")"
wait_until 10 "the second restart (2s)" in_log "starting it again in 2s" && pass
wait_until 30 "the second gateway (exit 2)" ready "$((PORT + 1))"
stack=$(cat "$DATA"/run/*.pid)
g2=$(pid_of "gateway-$((PORT + 1))")
kill -KILL "$g2"
wait_until 30 "ops/up to exit" bash -c "! kill -0 $up_pid 2>/dev/null"
wait "$up_pid"
rc=$?
up_pid=0
[ "$rc" -eq 1 ] && pass || fail "ops/up exited $rc after giving up, expected 1"
in_log "gateway-$((PORT + 1)) \(pid $g2\) was killed by signal 9 \(SIGKILL\), exit 3 within 5 minutes \(--max-restarts 2\): stopping everything" &&
    pass || fail "ops/up did not say which part made it stop: $(tail -5 "$TMP/up.log")"
for pid in $stack; do alive "$pid" && fail "process $pid of the stack is still running"; done
pass
ls "$DATA"/run/*.pid >/dev/null 2>&1 && fail "pid files left: $(ls "$DATA/run")" || pass

echo "$checks checks, $failures failures"
[ "$failures" -eq 0 ]
