# shellcheck shell=bash
# cli_test_lib.sh: what the shell tests of the `duel` executable share (sourced): a temporary
# folder removed at exit, failure and check counters, and `expect`. The sourcing script sets DUEL
# (the binary) first and TAG (the temporary folder's prefix).
mkdir -p "${DUEL_TEST_TMP:-/tmp}" 2>/dev/null
TMP=$(mktemp -d "${DUEL_TEST_TMP:-/tmp}/${TAG:-cli}-XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
checks=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { checks=$((checks + 1)); }

# expect CODE PATTERN -- ARGS...: runs duel ARGS, checks the exit code and that stdout+stderr
# matches the extended regex PATTERN (empty: no check).
expect() {
    local code=$1 pattern=$2
    shift 3
    local out rc
    out=$("$DUEL" "$@" 2>&1 </dev/null)
    rc=$?
    if [ "$rc" -ne "$code" ]; then
        fail "duel $* exited $rc, expected $code; output: $(echo "$out" | head -5)"
        return
    fi
    if [ -n "$pattern" ] && ! grep -Eq -- "$pattern" <<<"$out"; then
        fail "duel $*: output does not match /$pattern/: $(echo "$out" | head -5)"
        return
    fi
    pass
}
