# ops/vote_checks.sh: the checks that hold a running stack to its vote promise, shared by
# ops/chaos, tests/chaos/test_sentinel.sh and tests/tools/test_sim_gateway.sh (sourced; needs
# redis-cli). Extra redis-cli arguments (a port, --user) come first in REDIS_ARGS.

# The values of one field of every entry of a stream, one per line (Lua, so that binary fields
# stay in Redis). Usage: duel_stream_field STREAM FIELD
duel_stream_field() {
    # shellcheck disable=SC2086
    redis-cli ${REDIS_ARGS:-} --raw EVAL 'local r = redis.call("XRANGE", KEYS[1], "-", "+"); local out = {};
for _, e in ipairs(r) do local f = e[2]; for j = 1, #f, 2 do if f[j] == ARGV[1] then out[#out + 1] = f[j + 1] end end end;
return out' 1 "$1" "$2"
}

# Compares a sim's --acked file with a stream's duel ids: sets DUEL_ACKED (acknowledged votes),
# DUEL_STREAM_VOTES (duel ids in the stream), DUEL_LOST (acknowledged, not in the stream) and
# DUEL_DUPLICATED (duel ids in the stream more than once); the sorted lists stay in DIR.
# Usage: duel_compare_acked ACKED_FILE STREAM DIR
duel_compare_acked() {
    duel_stream_field "$2" duel_id | sort >"$3/stream-ids.txt"
    sort "$1" >"$3/acked-sorted.txt"
    DUEL_ACKED=$(wc -l <"$3/acked-sorted.txt")
    DUEL_STREAM_VOTES=$(wc -l <"$3/stream-ids.txt")
    DUEL_LOST=$(comm -23 "$3/acked-sorted.txt" <(sort -u "$3/stream-ids.txt") | wc -l)
    DUEL_DUPLICATED=$(uniq -d "$3/stream-ids.txt" | wc -l)
}

# True when the trainers' group has been handed every entry of duel:prefs (its last delivered id
# is the stream's last). Stopping `duel train` then puts everything into its last checkpoint; its
# status hash alone lags (ties after its last write are counted there at the next update).
duel_group_read_all() {
    local last delivered
    # shellcheck disable=SC2086
    last=$(redis-cli ${REDIS_ARGS:-} --raw XREVRANGE duel:prefs + - COUNT 1 | head -1)
    # shellcheck disable=SC2086
    delivered=$(redis-cli ${REDIS_ARGS:-} --raw XINFO GROUPS duel:prefs | awk 'p { print; exit } $0 == "last-delivered-id" { p = 1 }')
    [ -n "$last" ] && [ "$last" = "$delivered" ]
}
