#!/usr/bin/env bash
# Peer comparison: cranformer against PyTorch (transformers) and CTranslate2 on the same
# random-weight full-size models (BERT-base, GPT-2 124M, T5-small), same machine, same threads.
# Not part of the test suite. See benches/peers/README.md.
#
#   bash benches/peers/run.sh [--threads N[,M...]] [--runs R] [--warmup W] [--rounds K]
#                             [--rev REV | --cranformer BIN [--label TEXT]] [--no-check]
#                             [--wait-quiet S] [--retries R]
#                             [--workload W]... [--framework F]...
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="$ROOT/target/peers-venv"
OUT="$ROOT/target/peers"
MODELS="$OUT/models"
PYTHON="${PYTHON:-python3}"

THREADS="2,1"
RUNS=9
WARMUP=2
ROUNDS=1
REV=""
BIN=""
CHECK=1
WAIT_QUIET=60
RETRIES=2
LABEL=""
EXTRA=()

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

  --threads N[,M]  thread counts to compare (default 2,1)
  --runs R         timed runs per measurement (default 9); --warmup W untimed ones before (2)
  --rounds K       repeat the whole sweep K times; the table shows the median of the rounds (1)
  --rev REV        build cranformer from git revision REV (in target/peers/src-REV, own target
                   directory) instead of the working tree
  --cranformer BIN use this cranformer binary as it is
  --no-check       skip the same-outputs check of the three frameworks
  --wait-quiet S   before each measurement wait up to S s for the CPU to be free of other
                   processes (default 60; 0 to not wait)
  --retries R      measure again, up to R times (default 2), when other processes took the CPU
                   during a measurement (over 15 % of the cores); the least disturbed one is kept
  --label TEXT     how to describe the cranformer binary in the table's notes
  --workload W     only this workload (bert-forward, gpt2-generate, t5-generate); repeatable
  --framework F    only this framework (pytorch, ctranslate2, cranformer); repeatable
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --threads) THREADS="$2"; shift 2 ;;
        --threads=*) THREADS="${1#*=}"; shift ;;
        --runs) RUNS="$2"; shift 2 ;;
        --warmup) WARMUP="$2"; shift 2 ;;
        --rounds) ROUNDS="$2"; shift 2 ;;
        --rev) REV="$2"; shift 2 ;;
        --cranformer) BIN="$2"; shift 2 ;;
        --no-check) CHECK=0; shift ;;
        --wait-quiet) WAIT_QUIET="$2"; shift 2 ;;
        --retries) RETRIES="$2"; shift 2 ;;
        --label) LABEL="$2"; shift 2 ;;
        --workload|--framework) EXTRA+=("$1" "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if ! [[ "$THREADS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
    echo "run.sh: --threads takes a number or a comma-separated list, e.g. 2 or 2,1" >&2
    exit 2
fi

mkdir -p "$OUT"
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# 1. The virtual environment: made once, remade when requirements.txt changes.
step "Python environment: $VENV"
STAMP="$VENV/.peers-stamp"
WANT="$(cat "$HERE/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
    echo "kept (requirements unchanged)"
else
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 9), "Python 3.9 or newer needed"'
    [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    echo "installing from PyPI (torch pulls its CUDA packages: a few GB, a few minutes)..."
    "$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
    "$VENV/bin/python" -m pip freeze > "$OUT/pip-freeze.txt"
    echo "$WANT" > "$STAMP"
fi
PY="$VENV/bin/python"
"$PY" -c 'import torch, transformers, ctranslate2; print("torch", torch.__version__, "| transformers", transformers.__version__, "| ctranslate2", ctranslate2.__version__)'

# 2. The models: random weights from a fixed seed, saved once; CTranslate2 conversions.
step "Models: $MODELS"
"$PY" "$HERE/make_models.py" "$MODELS" 2>&1 | grep -v -e 'Loading weights' -e 'Writing model shards' || true
for m in bert-base gpt2 t5-small; do
    [[ -f "$MODELS/$m/stamp.json" ]] || { echo "run.sh: building $m failed" >&2; exit 1; }
done

# 3. cranformer, copied aside so that a concurrent build cannot swap it mid-run.
mkdir -p "$OUT/bin"
if [[ -n "$BIN" ]]; then
    step "cranformer: $BIN"
    SOURCE="${LABEL:-$BIN as given}"
    [[ -x "$BIN" ]] || { echo "run.sh: $BIN is not an executable" >&2; exit 2; }
    [[ "$BIN" -ef "$OUT/bin/cranformer" ]] || cp "$BIN" "$OUT/bin/cranformer"
elif [[ -n "$REV" ]]; then
    SHA="$(git -C "$ROOT" rev-parse --verify "$REV^{commit}")"
    step "cranformer: building revision ${SHA:0:12}"
    SRC="$OUT/src-${SHA:0:12}"
    if [[ ! -f "$SRC/Cargo.toml" ]]; then
        rm -rf "$SRC"; mkdir -p "$SRC"
        git -C "$ROOT" archive "$SHA" | tar -x -C "$SRC"
    fi
    (cd "$SRC" && CARGO_TARGET_DIR="$OUT/cargo-target" cargo build --release --bin cranformer)
    cp "$OUT/cargo-target/release/cranformer" "$OUT/bin/cranformer"
    SOURCE="commit ${SHA:0:12} ($(git -C "$ROOT" log -1 --format=%cd --date=iso-strict "$SHA"))"
else
    step "cranformer: cargo build --release (working tree)"
    (cd "$ROOT" && cargo build --release --bin cranformer)
    cp "$ROOT/target/release/cranformer" "$OUT/bin/cranformer"
    HEAD_SHA="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
    DIRTY=""
    if [[ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
        DIRTY=" plus uncommitted changes"
    fi
    SOURCE="working tree at commit $HEAD_SHA$DIRTY, built $(date -u +%Y-%m-%dT%H:%MZ)"
fi
echo "$SOURCE"

# 4. Same outputs on the same ids, before any timing.
CHECK_FILE="$OUT/check.txt"
rm -f "$CHECK_FILE"
if [[ "$CHECK" == 1 ]]; then
    step "Same outputs check"
    OMP_NUM_THREADS=2 "$PY" "$HERE/check.py" "$MODELS" "$OUT/bin/cranformer" "$CHECK_FILE" \
        2> "$OUT/check.log" || echo "run.sh: the outputs differ (see above); timing anyway" >&2
fi

# 5. Timing, and the table.
step "Timing: threads $THREADS, $RUNS runs after $WARMUP warm-up, $ROUNDS round(s)"
"$PY" "$HERE/driver.py" --models "$MODELS" --cranformer "$OUT/bin/cranformer" \
    --cranformer-source "$SOURCE" --out "$OUT" --threads "$THREADS" --runs "$RUNS" \
    --warmup "$WARMUP" --rounds "$ROUNDS" --wait-quiet "$WAIT_QUIET" --retries "$RETRIES" --check "$CHECK_FILE" \
    ${EXTRA[@]+"${EXTRA[@]}"}
