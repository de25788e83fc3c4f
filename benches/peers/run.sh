#!/usr/bin/env bash
# Peer comparison: cranformer against PyTorch (transformers), CTranslate2 (f32, int8), ONNX
# Runtime (fp32, int8), OpenVINO (f32) and llama.cpp (f32, Q8_0) on the same random-weight
# full-size models (BERT-base, GPT-2 124M, T5-small), same machine, same threads.
# Not part of the test suite. See benches/peers/README.md.
#
#   bash benches/peers/run.sh [--threads N[,M...]] [--runs R] [--warmup W] [--rounds K]
#                             [--quick] [--engines E[,E...]] [--isa avx2]
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
RUNS=""
WARMUP=""
ROUNDS=""
REV=""
BIN=""
CHECK=1
WAIT_QUIET=""
RETRIES=""
LABEL=""
QUICK=0
ISA=""
EXTRA=()

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

  --threads N[,M]  thread counts to compare (default 2,1)
  --runs R         timed runs per measurement (default 9); --warmup W untimed ones before (2)
  --rounds K       repeat the whole sweep K times, engines interleaved in each (default 3);
                   cells are medians over the rounds, ratios medians of per-round ratios
  --quick          a quick look: 3 rounds of 3 runs after 1 warm-up, no waiting for a quiet
                   CPU beyond 5 s, no retries (flags given explicitly still win)
  --engines E,..   only these engines, or families of them: cranformer, pytorch (torch),
                   ctranslate2 (ct2), onnxruntime (ort), openvino (ov), llama.cpp (llamacpp),
                   or one precision: ctranslate2-int8, onnxruntime-int8, llama.cpp-q8_0,
                   cranformer-int8, cranformer-bf16, or a family's f32 alone (ct2-f32).
                   cranformer f32 always runs (every ratio needs it), cranformer int8
                   whenever an int8 peer does. Repeatable.
  --isa avx2       hold every engine to AVX2: those with a knob by it (CRANFORMER_ISA,
                   ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS, CT2_FORCE_CPU_ISA,
                   ATEN_CPU_CAPABILITY), llama.cpp by a build of its own, ONNX Runtime and
                   OpenVINO by copies that see no AVX-512 (hold_avx2.py); see README.md
  --rev REV        build cranformer from git revision REV (in target/peers/src-REV, own target
                   directory) instead of the working tree
  --cranformer BIN use this cranformer binary as it is
  --no-check       skip the same-outputs check of the engines
  --wait-quiet S   before each measurement wait up to S s for the CPU to be free of other
                   processes (default 60; 0 to not wait)
  --retries R      measure again, up to R times (default 2), when other processes took the CPU
                   during a measurement (over 15 % of the cores); the least disturbed one is kept
  --label TEXT     how to describe the cranformer binary in the table's notes
  --workload W     only this workload (bert-forward, gpt2-generate, t5-generate); repeatable
  --framework F    only this engine (pytorch, ctranslate2, cranformer, or any engine name
                   above); repeatable
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
        --quick) QUICK=1; shift ;;
        --isa) ISA="$2"; shift 2 ;;
        --isa=*) ISA="${1#*=}"; shift ;;
        --engines) EXTRA+=("$1" "$2"); shift 2 ;;
        --engines=*) EXTRA+=("--engines" "${1#*=}"); shift ;;
        --workload|--framework) EXTRA+=("$1" "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
if [[ "$QUICK" == 1 ]]; then
    : "${RUNS:=3}" "${WARMUP:=1}" "${ROUNDS:=3}" "${WAIT_QUIET:=5}" "${RETRIES:=0}"
fi
: "${RUNS:=9}" "${WARMUP:=2}" "${ROUNDS:=3}" "${WAIT_QUIET:=60}" "${RETRIES:=2}"
if [[ -n "$ISA" && "$ISA" != avx2 ]]; then
    echo "run.sh: --isa takes avx2 (the only narrower ISA the engines can be asked for)" >&2
    exit 2
fi
[[ -n "$ISA" ]] && EXTRA+=("--isa" "$ISA")
if ! [[ "$THREADS" =~ ^[1-9][0-9]*(,[1-9][0-9]*)*$ ]]; then
    echo "run.sh: --threads takes a number or a comma-separated list, e.g. 2 or 2,1" >&2
    exit 2
fi

mkdir -p "$OUT"
step() { printf '\n== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

# llama.cpp's library only: no tools, tests, examples or multimodal helper (both builds below).
LLAMA_LIB_ONLY="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"

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
    echo "installing from PyPI (torch pulls its CUDA packages: a few GB, a few minutes;"
    echo "llama-cpp-python builds llama.cpp from source: several more minutes)..."
    # llama.cpp's default GGML_NATIVE=ON compiles for this machine's ISA (-march=native): see
    # README.md.
    CMAKE_ARGS="${CMAKE_ARGS:-$LLAMA_LIB_ONLY}" \
        "$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
    "$VENV/bin/python" -m pip freeze > "$OUT/pip-freeze.txt"
    echo "$WANT" > "$STAMP"
fi
PY="$VENV/bin/python"
"$PY" -c 'import torch, transformers, ctranslate2, onnxruntime, openvino, llama_cpp, gguf
print("torch", torch.__version__, "| transformers", transformers.__version__, "| ctranslate2", ctranslate2.__version__,
      "| onnxruntime", onnxruntime.__version__, "| openvino", openvino.get_version(), "| llama-cpp-python", llama_cpp.__version__)'

# 1b. Held to AVX2, llama.cpp built for AVX2 in a venv of its own: llama-cpp-python compiles
# llama.cpp for the machine it is installed on (-march=native), so the main venv's keeps
# AVX-512 here. The same pinned version, without AVX-512 and AVX-VNNI (an AVX2 server of Zen
# 3's generation has neither); rebuilt when the pin or the flags change. --no-cache-dir: pip
# would otherwise reuse the wheel it built with other flags.
# Only when the run has llama.cpp on a workload (the driver's selection decides).
if [[ "$ISA" == avx2 ]] &&
    "$PY" "$HERE/driver.py" --models "$MODELS" --cranformer none --out "$OUT" --runs-llama "${EXTRA[@]}"; then
    LLAMA_VENV="$ROOT/target/peers-venv-llama-avx2"
    step "llama.cpp for AVX2: $LLAMA_VENV"
    LLAMA_PIN="$(grep -E '^llama-cpp-python==' "$HERE/requirements.txt")"
    LLAMA_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF $LLAMA_LIB_ONLY"
    LLAMA_WANT="$(printf '%s %s' "$LLAMA_PIN" "$LLAMA_FLAGS" | sha256sum | cut -d' ' -f1)"
    if [[ -x "$LLAMA_VENV/bin/python" && "$(cat "$LLAMA_VENV/.peers-stamp" 2>/dev/null)" == "$LLAMA_WANT" ]]; then
        echo "kept (pin and flags unchanged)"
    else
        echo "building $LLAMA_PIN for AVX2 (several minutes)..."
        [[ -x "$LLAMA_VENV/bin/python" ]] || "$PYTHON" -m venv "$LLAMA_VENV"
        if CMAKE_ARGS="$LLAMA_FLAGS" "$LLAMA_VENV/bin/python" -m pip install --quiet --no-cache-dir \
            --force-reinstall --no-deps "$LLAMA_PIN" &&
            "$LLAMA_VENV/bin/python" -m pip install --quiet "$LLAMA_PIN"; then
            echo "$LLAMA_WANT" > "$LLAMA_VENV/.peers-stamp"
        else
            echo "run.sh: the AVX2 build of llama.cpp failed: llama.cpp runs with this machine's full ISA" >&2
        fi
    fi
    if [[ -f "$LLAMA_VENV/.peers-stamp" ]]; then
        EXTRA+=("--llama-python" "$LLAMA_VENV/bin/python")
    fi
fi

# 1c. Held to AVX2, ONNX Runtime and OpenVINO from copies that see no AVX-512: neither has a
# knob that holds all of it (MLAS picks its kernels from cpuid; part of OpenVINO runs wider
# whatever ONEDNN_MAX_CPU_ISA says). hold_avx2.py rewrites their reads of XCR0 so that the OS
# seems not to save the AVX-512 registers; see README.md. Kept while the packages are unchanged.
if [[ "$ISA" == avx2 ]]; then
    HELD_DIR="$ROOT/target/peers-held-avx2"
    step "ONNX Runtime and OpenVINO held to AVX2: $HELD_DIR"
    SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PY" "$HERE/hold_avx2.py" "$SITE" "$HELD_DIR" ||
        echo "run.sh: see above: the engine named there runs with this machine's full ISA" >&2
    EXTRA+=("--held-path" "$HELD_DIR")
fi

# 2. The models: random weights from a fixed seed, saved once; CTranslate2 conversions.
step "Models: $MODELS"
"$PY" "$HERE/make_models.py" "$MODELS" 2>&1 | grep -v -e 'Loading weights' -e 'Writing model shards' || true
for m in bert-base gpt2 t5-small; do
    [[ -f "$MODELS/$m/stamp.json" ]] || { echo "run.sh: building $m failed" >&2; exit 1; }
done
# The ONNX and GGUF files: without them only those engines fail (the driver says which).
[[ -f "$MODELS/bert-base/onnx/stamp.json" ]] || echo "run.sh: no ONNX BERT (see above): ONNX Runtime and OpenVINO will fail" >&2
[[ -f "$MODELS/gpt2/gguf/stamp.json" ]] || echo "run.sh: no GGUF GPT-2 (see above): llama.cpp will fail" >&2

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

# The cache line round trip between two CPUs, measured before each measurement (placement.c).
PLACEMENT=()
if command -v cc >/dev/null 2>&1 && cc -O2 -pthread "$HERE/placement.c" -o "$OUT/bin/placement"; then
    PLACEMENT=(--placement "$OUT/bin/placement")
else
    echo "run.sh: no C compiler for placement.c: the table will not show the round trip between CPUs" >&2
fi

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
    ${PLACEMENT[@]+"${PLACEMENT[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
