#!/usr/bin/env bash
# The core package (no embedded extra) on every Python it supports beyond CI's 3.11: install it
# with the `test` extra into a fresh venv per version, check the CLI starts and the shipped
# topologies validate, and run the fast loop (tests/unit and tests/operators: no process started,
# nothing beyond the test extra; the deployment checks in tests/deployment need the dev extra's tools).
#   scripts/check_pythons.sh [3.12 3.13]
set -euo pipefail
cd "$(dirname "$0")/.."
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(3.12 3.13)
for version in "${versions[@]}"; do
    # pyenv's shims answer for versions that are not global: take the interpreter itself.
    python="$(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)/versions/$version".*/bin/python 2>/dev/null \
        | sort -V | tail -1 || true)"
    [ -n "$python" ] || python="$(command -v "python$version" || true)"
    if [ -z "$python" ] || ! "$python" --version >/dev/null 2>&1; then
        echo "check_pythons: python$version not found" >&2
        exit 1
    fi
    venv="$(mktemp -d)/py$version"
    echo "== Python $version ($("$python" --version)) in $venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet '.[test,tracing]'
    "$venv/bin/pipeline" --version
    for topology in topologies/*.yaml; do
        "$venv/bin/pipeline" validate "$topology" >/dev/null
    done
    "$venv/bin/python" -m pytest tests/unit tests/operators -q -p no:cacheprovider
    rm -rf "$(dirname "$venv")"
done
