#!/usr/bin/env bash
# Provision a Vagrant box for netguard, as root: Python >= 3.11, scripts/bootstrap --test,
# `netguard doctor`, then the test suite. Reruns are cheap (each step skips what is done).
#   vagrant/provision.sh                      what the Vagrantfile runs (environment below)
#   vagrant/provision.sh --plan OS_RELEASE    print how this release gets Python >= 3.11, nothing else
#   vagrant/provision.sh --test-packages      print the test packages scripts/bootstrap --test wants
# Environment: NETGUARD_REPO (/netguard), NETGUARD_EXPECT_KERNEL (e.g. 5.4: warn if the box has
# moved on), NETGUARD_PYTHON_PLAN (what the Vagrantfile expects; the plan from os-release wins),
# NETGUARD_TESTS (0: skip the suite).
set -euo pipefail

repo="${NETGUARD_REPO:-/netguard}"
here="$(cd "$(dirname "$0")" && pwd)"
# Source build where no package has 3.11 (Debian 10). Hash from pyenv's build definition 3.11.11.
PY_SRC_VERSION=3.11.11
PY_SRC_URL="https://www.python.org/ftp/python/$PY_SRC_VERSION/Python-$PY_SRC_VERSION.tar.xz"
PY_SRC_SHA256=2a9920c7a0cd236de33644ed980a13cbbc21058bfdc528febb6081575ed73be3

say() { echo "provision: $*"; }

# How a release gets Python >= 3.11: system (its python3 is new enough), deadsnakes (Ubuntu PPA),
# source (build $PY_SRC_VERSION into /usr/local). Reads an os-release file.
python_plan() {
    local id version
    id="$(. "$1" && echo "${ID:-}")"
    version="$(. "$1" && echo "${VERSION_ID:-0}")"
    case "$id" in
        debian) if [ "${version%%.*}" -ge 12 ]; then echo system; else echo source; fi ;;
        ubuntu) if [ "${version%%.*}" -ge 23 ]; then echo system; else echo deadsnakes; fi ;;
        *) echo source ;;
    esac
}

# The packages scripts/bootstrap --test adds (read from it, so the two lists cannot drift apart).
test_packages() {
    sed -n '/^test_pkgs=(/,/)/p' "$repo/scripts/bootstrap" | sed -e 's/^test_pkgs=(//' -e 's/)//' | xargs
}

case "${1:-}" in
    --plan) python_plan "$2"; exit 0 ;;
    --test-packages) repo="${NETGUARD_REPO:-$(dirname "$here")}"; test_packages; exit 0 ;;
    "") ;;
    *) echo "provision: unknown argument $1" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "provision: run as root" >&2; exit 2; }
export DEBIAN_FRONTEND=noninteractive
apt_install() { apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "$@"; }

# Debian 10 left deb.debian.org for archive.debian.org: switch when the mirror no longer has it.
if ! apt-get update -q -o DPkg::Lock::Timeout=600; then
    if grep -q '^VERSION_ID="10"' /etc/os-release; then
        say "buster is archived: using archive.debian.org"
        printf 'deb http://archive.debian.org/debian buster main\ndeb http://archive.debian.org/debian-security buster/updates main\n' \
            > /etc/apt/sources.list
        apt-get -o Acquire::Check-Valid-Until=false update -q
    else
        exit 1
    fi
fi

release="$(uname -r)"
say "kernel $release (box expected ${NETGUARD_EXPECT_KERNEL:-?})"
case "$release" in
    "${NETGUARD_EXPECT_KERNEL:-}".*|"${NETGUARD_EXPECT_KERNEL:-}"-*) ;;
    *) say "WARNING: the box no longer ships a ${NETGUARD_EXPECT_KERNEL:-?} kernel; vagrant/README.md's expectations may not hold" ;;
esac

plan="$(python_plan /etc/os-release)"
[ "$plan" = "${NETGUARD_PYTHON_PLAN:-$plan}" ] || say "note: Vagrantfile expected '$NETGUARD_PYTHON_PLAN', os-release says '$plan'"
py=""
for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        py="$(command -v "$candidate")"
        break
    fi
done
if [ -z "$py" ] && [ "$plan" = deadsnakes ]; then
    say "Python >= 3.11 from the deadsnakes PPA"
    apt_install software-properties-common gpg-agent
    if add-apt-repository -y ppa:deadsnakes/ppa && apt_install python3.11 python3.11-venv python3.11-dev; then
        py=/usr/bin/python3.11
    else
        say "deadsnakes failed: building Python from source instead"
        plan=source
    fi
fi
if [ -z "$py" ]; then
    py=/usr/local/bin/python3.11
    if [ ! -x "$py" ]; then
        say "building Python $PY_SRC_VERSION from source into /usr/local (a few minutes)"
        apt_install build-essential ca-certificates curl xz-utils libssl-dev zlib1g-dev libffi-dev \
            libbz2-dev libreadline-dev libsqlite3-dev liblzma-dev uuid-dev
        work="$(mktemp -d)"
        curl -fsSL -o "$work/py.tar.xz" "$PY_SRC_URL"
        echo "$PY_SRC_SHA256  $work/py.tar.xz" | sha256sum -c -
        tar -xJf "$work/py.tar.xz" -C "$work"
        (cd "$work/Python-$PY_SRC_VERSION" && ./configure -q --prefix=/usr/local --with-ensurepip=install \
            && make -s -j "$(nproc)" && make -s altinstall)
        rm -rf "$work"
    fi
fi
say "Python: $py ($("$py" --version))"
export PYTHON="$py"

cd "$repo"
# bootstrap --test installs every test tool; older releases lack some (Ubuntu has no `chromium`
# deb, Debian 10 / Ubuntu 20.04 no skopeo or podman). Then: the runtime bootstrap, the test
# packages the release has, the Python test extras, and the suite run by pytest directly.
full=1
if ! scripts/bootstrap --test; then
    full=0
    say "scripts/bootstrap --test failed on this release: installing what it has"
    scripts/bootstrap
    have=() missing=()
    for p in $(test_packages); do
        # the whole output first: apt-cache piped into a quiet grep under pipefail can die of SIGPIPE
        if [[ "$(apt-cache policy "$p" 2>/dev/null || true)" =~ Candidate:\ [0-9] ]]; then have+=("$p"); else missing+=("$p"); fi
    done
    [ "${#have[@]}" = 0 ] || apt_install "${have[@]}"
    say "not available on this release: ${missing[*]:-none} (tests that need them fail or skip)"
    .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt --no-build-isolation -e '.[test]'
fi

set +e
.venv/bin/netguard doctor
doctor_rc=$?
.venv/bin/netguard doctor --json > /var/tmp/netguard-doctor.json 2>&1
set -e
say "doctor exit $doctor_rc (0 can enforce, 1 degraded, 2 cannot); JSON in /var/tmp/netguard-doctor.json"

if [ "${NETGUARD_TESTS:-1}" = 0 ]; then
    say "NETGUARD_TESTS=0: not running the test suite"
elif [ "$full" = 1 ]; then
    scripts/test -q
else
    .venv/bin/python -m pytest -q
fi
say "done"
