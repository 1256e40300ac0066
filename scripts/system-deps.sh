#!/usr/bin/env bash
# The system packages the test suite needs, in one place (`make test` and .ci/run
# both call this, so they cannot drift):
#
#   swtpm, swtpm-tools, tpm2-tools   a software TPM and its tools: the broker's TPM
#                                    attestation tests (crates/sealtensors-broker/tests/attest.rs)
#   postgresql                       the server programs (initdb, pg_ctl) behind
#                                    scripts/pg-test-server.sh: the broker's PostgreSQL store
#   softhsm2                         a software PKCS#11 token: hardware-held keys
#                                    (crates/sealtensors/tests/pkcs11.rs, the CLI and Python)
#   nginx-light                      an HTTPS range server: https:// sources
#                                    (python/tests/test_remote.py)
#
#   scripts/system-deps.sh           install what is missing (Debian, as root), or, when
#                                    not root, stop with the one command to run
#   scripts/system-deps.sh --check   only report; exit 1 when something is missing
#
# PostgreSQL's programs are not needed when SEALTENSORS_TEST_POSTGRES_URL already
# names a server, and are looked up in $PG_BIN when that is set (as
# scripts/pg-test-server.sh does).
set -euo pipefail

check_only=0
case "${1:-}" in
"") ;;
--check) check_only=1 ;;
*)
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac

say() {
    echo "system-deps: $*" >&2
}

has_pg_server() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/initdb" && -x "$PG_BIN/pg_ctl" ]]
        return
    fi
    local b
    for b in /usr/lib/postgresql/*/bin; do
        [[ -x "$b/initdb" && -x "$b/pg_ctl" ]] && return 0
    done
    return 1
}

# Each missing package once, in a fixed order.
missing=()
need() {
    local pkg=$1 p
    for p in "${missing[@]+"${missing[@]}"}"; do
        [[ "$p" == "$pkg" ]] && return
    done
    missing+=("$pkg")
}

probe() {
    missing=()
    command -v swtpm >/dev/null || need swtpm
    command -v swtpm_setup >/dev/null || need swtpm-tools
    local tool
    for tool in tpm2_createek tpm2_createak tpm2_quote tpm2_pcrextend; do
        command -v "$tool" >/dev/null || need tpm2-tools
    done
    command -v softhsm2-util >/dev/null || need softhsm2
    command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need nginx-light
    if [[ -z "${SEALTENSORS_TEST_POSTGRES_URL:-}" ]]; then
        has_pg_server || need postgresql
        # As root, pg-test-server.sh runs the server as `postgres` (the package makes it).
        if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
            need postgresql
        fi
    fi
}

probe
if [[ ${#missing[@]} -eq 0 ]]; then
    exit 0
fi

install_cmd="apt-get install -y ${missing[*]}"
if [[ $check_only -eq 1 ]]; then
    say "missing: ${missing[*]} (install: $install_cmd)"
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    say "the test suite needs system packages that are not installed: ${missing[*]}"
    say "run this once, then run the tests again:"
    echo "    sudo apt-get update && sudo $install_cmd" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    say "missing: ${missing[*]}, and there is no apt-get here: install them with this system's package manager"
    exit 1
fi

say "installing ${missing[*]} (apt-get)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null

probe
if [[ ${#missing[@]} -ne 0 ]]; then
    say "still missing after apt-get install: ${missing[*]}"
    exit 1
fi
say "installed"
