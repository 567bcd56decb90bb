#!/usr/bin/env bash
# Everything the demo and the tests need, on a fresh Linux x86_64 machine: the venv .venv
# (created if absent, with $PYTHON or python3: 3.11 or 3.12 for the embedded extra), the
# package with its dev extra, promtool (Debian's `prometheus` package, not on PyPI) for
# the alert-rule tests and chromium (Debian's) for the live page's browser test. Safe to run
# again: it only adds what is missing.
#   scripts/setup.sh && . .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")/.."

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    case "$version" in
        3.11 | 3.12) ;;
        *)
            echo "setup: $python is Python $version; the embedded stack needs 3.11 or 3.12 (PYTHON=python3.12 scripts/setup.sh)" >&2
            exit 1
            ;;
    esac
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'

# Debian packages the tests use (their services are not started): promtool (the `prometheus`
# package) for the alert-rule tests, chromium for the live page's browser test (headless). A
# failed install is not fatal (the demo needs neither): a line says which test then fails.
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
    as_root=()
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        as_root=(sudo -n)
    fi
    if [ "$(id -u)" = 0 ] || [ ${#as_root[@]} -gt 0 ]; then
        "${as_root[@]}" apt-get update -qq || true
        for package in "${missing[@]}"; do  # one at a time: one failing leaves the other
            "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
                apt-get install -y -qq --no-install-recommends "$package" >/dev/null || true
        done
    fi
fi
if ! command -v promtool >/dev/null 2>&1; then
    echo "setup: promtool is missing and could not be installed (needs apt-get, as root or with sudo): install Debian's 'prometheus' package, or tests/deployment fails" >&2
fi
if ! command -v chromium >/dev/null 2>&1; then
    echo "setup: chromium is missing and could not be installed (needs apt-get, as root or with sudo): install Debian's 'chromium' package, or tests/integration/test_live_page.py fails" >&2
fi
if ! command -v kubectl >/dev/null 2>&1; then
    echo "setup: kubectl is missing (tests/deployment renders deploy/k8s with \`kubectl kustomize\`): install it, or that test fails" >&2
fi
echo "setup: ready (. .venv/bin/activate)"
