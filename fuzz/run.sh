#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS on its committed seeds (fuzz/seeds/<target>)
# plus what earlier runs found (fuzz/corpus/<target>, not committed), two at a time.
# A crash, a leak, a timeout or running out of memory fails the run; the input that did it is
# in fuzz/artifacts/<target>/ and the fuzzer's log in fuzz/logs/<target>.log.
#
#   bash fuzz/run.sh SECONDS [TARGET...]      (needs `cargo +nightly` and cargo-fuzz)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(safetensors_header shard_index config_json forward_input tokenizer program_blob)
fi

cargo +nightly fuzz build
bin=target/x86_64-unknown-linux-gnu/release
mkdir -p logs

run() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  # One input may take at most 10 s (a hang), the whole process 2 GB.
  "$bin/$t" "corpus/$t" "seeds/$t" -dict=dicts/json.dict -max_total_time="$secs" \
    -timeout=10 -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
}

failed=()
pids=()
names=()
for t in "${targets[@]}"; do
  run "$t" &
  pids+=($!)
  names+=("$t")
  if [ ${#pids[@]} -eq 2 ]; then
    for i in 0 1; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done
    pids=()
    names=()
  fi
done
for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=("${names[$i]}"); done

for t in "${targets[@]}"; do
  echo "fuzz $t: $(grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units)' "logs/$t.log" | tr '\n' ' ')"
done
if [ ${#failed[@]} -ne 0 ]; then
  for t in "${failed[@]}"; do
    echo "fuzz target $t FAILED; log fuzz/logs/$t.log, input in fuzz/artifacts/$t/:" >&2
    grep -E -A15 'ERROR|panicked|SUMMARY' "logs/$t.log" | head -40 >&2
  done
  exit 1
fi
