# shellcheck shell=bash
# ops/lib.sh: shared steps of ops/up and ops/test (sourced, not run): section headers, installing
# the missing Debian packages (one apt-get update, only when something is missing), `npm ci`, and
# the release build. Every step is idempotent and quick when there is nothing to do.

DUEL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DUEL_JOBS=$(nproc 2>/dev/null || echo 2)

# Debian packages the build, the tests and the tools need (the gateway: redis, hiredis, lws; the
# Sentinel test: redis-sentinel; the browser tests: chromium; models/build.sh: wordnet-base;
# ops/prometheus: prometheus, with promtool, for the rule checks and the scrape test; duel sim
# sweep's plots: matplotlib; the load balancer in front of several gateways (ops/lb) and its
# test: nginx; the wss test: openssl makes its self-signed certificate, libssl-dev its client).
DUEL_PACKAGES=(build-essential cmake pkg-config libjansson-dev libopenblas-dev libcmocka-dev
    python3-torch python3-numpy clang libclang-rt-14-dev redis-server redis-sentinel libhiredis-dev
    libwebsockets-dev chromium wordnet-base prometheus python3-matplotlib nginx openssl libssl-dev)

duel_section() { printf '\n===== %s =====\n' "$*"; }

# Installs what is missing from DUEL_PACKAGES (plus nodejs/npm when node/npm are not on PATH).
duel_install_packages() {
    local wanted=("${DUEL_PACKAGES[@]}") missing=() p
    command -v node >/dev/null 2>&1 || wanted+=(nodejs)
    command -v npm >/dev/null 2>&1 || wanted+=(npm)
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        echo "all ${#wanted[@]} packages present"
        return 0
    fi
    echo "missing: ${missing[*]}"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "not root and no sudo: install them with apt-get and run again" >&2
            return 1
        fi
        sudo=(sudo)
    fi
    # Keep package scripts from starting services (redis-server) on this machine: the tests
    # start their own instances on free ports.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null &&
            "${sudo[@]}" chmod 755 "$policy" && made_policy=1
    fi
    local rc=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q &&
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}" || rc=$?
    [ $made_policy -eq 1 ] && "${sudo[@]}" rm -f "$policy"
    return $rc
}

# `npm ci` when the repository has a package.json, unless node_modules is already up to date.
duel_npm_ci() {
    if [ ! -f "$DUEL_ROOT/package.json" ]; then
        echo "no package.json: nothing to install"
        return 0
    fi
    if [ -f "$DUEL_ROOT/node_modules/.package-lock.json" ] &&
        [ "$DUEL_ROOT/node_modules/.package-lock.json" -nt "$DUEL_ROOT/package-lock.json" ] &&
        [ "$DUEL_ROOT/node_modules/.package-lock.json" -nt "$DUEL_ROOT/package.json" ]; then
        echo "node_modules up to date"
        return 0
    fi
    (cd "$DUEL_ROOT" && npm ci --no-audit --no-fund)
}

# CMake arguments that turn CUDA on when nvcc exists (on PATH or in /usr/local/cuda).
duel_cuda_args() {
    if command -v nvcc >/dev/null 2>&1; then
        echo "-DDUEL_CUDA=ON"
    elif [ -x /usr/local/cuda/bin/nvcc ]; then
        echo "-DDUEL_CUDA=ON -DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc"
    else
        echo "-DDUEL_CUDA=OFF"
    fi
}

# duel_build DIR [cmake args...]: configure (quick when cached) and build with nproc jobs.
duel_build() {
    local dir=$1
    shift
    mkdir -p "$DUEL_ROOT/$dir"
    cmake -S "$DUEL_ROOT" -B "$DUEL_ROOT/$dir" "$@" >"$DUEL_ROOT/$dir/configure.log" 2>&1 || {
        cat "$DUEL_ROOT/$dir/configure.log"
        return 1
    }
    cmake --build "$DUEL_ROOT/$dir" -j "$DUEL_JOBS"
}

# Exports OPENBLAS_CORETYPE when this OpenBLAS does not know the CPU and would run its generic
# kernels (8x slower sgemm, cli/blas_core.c): `duel` fixes that for itself by re-executing, the
# test programs that link the libraries directly inherit the variable from here.
duel_blas_env() {
    [ -n "${OPENBLAS_CORETYPE:-}" ] && return 0
    local core
    core=$("$DUEL_ROOT/build/cli/duel" info --blas-coretype 2>/dev/null)
    if [ -n "$core" ]; then
        export OPENBLAS_CORETYPE=$core
        echo "OpenBLAS does not know this CPU: OPENBLAS_CORETYPE=$core for the tests"
    fi
}

# The release build in build/ (what ops/up runs and benchmarks use).
duel_build_release() {
    # shellcheck disable=SC2046
    duel_build build $(duel_cuda_args)
}
