#!/usr/bin/env bash
# What a user gets from `pip install .` with no extras: a fresh virtual environment with
# the CPU torch and the package alone, then the commands that must work without extras
# and one that must name its missing extra. `make check-install` runs it; `make test` too.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
step() { printf 'check-install: %s\n' "$*"; }
expect() {  # expect CODE PATTERN -- command...: exit code CODE, stderr matching PATTERN, no traceback
  local code=$1 pattern=$2; shift 3
  set +e; "$@" >"$work/out" 2>"$work/err"; local got=$?; set -e
  if [ "$got" != "$code" ] || grep -q Traceback "$work/out" "$work/err" || ! grep -Eq -- "$pattern" "$work/err" "$work/out"; then
    echo "check-install: FAILED: $* (exit $got, wanted $code, looked for '$pattern')"; cat "$work/out" "$work/err"; exit 1
  fi
  step "ok: $* (exit $got)"
}

step "fresh venv in $work/venv"
"$PYTHON" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip install -q)
"${pip[@]}" "$TORCH" >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
"${pip[@]}" . >"$work/pip.log" 2>&1 || { cat "$work/pip.log"; exit 1; }
step "installed: torch and the package alone"
csa=$work/venv/bin/csa
expect 0 "Usage: csa" -- "$csa" --help
expect 0 "side by side" -- "$csa" demo -o "$work/demo"
test -s "$work/demo/demo_result.png"
expect 0 "wrote 3 masks" -- "$csa" masks generate "$work/masks" --kind freeform --count 3
expect 2 "^error: No such option: --bogus" -- "$csa" inpaint --bogus
expect 2 "needs the \[serve\] extra" -- "$csa" serve
expect 2 "needs the \[eval\] extra" -- "$csa" inpaint "$work/demo/demo_result.png" -m src/csa/assets/sample_mask.png -o "$work/x.png" --method biharmonic
step "passed"
