#!/usr/bin/env bash
# Builds the device binary `atomup` fully static for aarch64-unknown-linux-musl,
# proves it is a static aarch64 ELF that runs, prints its size and fails if it
# grew past the budget.
set -euo pipefail
cd "$(dirname "$0")/.."

budget=$((5 * 1024 * 1024 / 2))   # 2.5 MiB, stripped
target=aarch64-unknown-linux-musl
cargo build --release --locked --target "$target" -p atomup
bin="${CARGO_TARGET_DIR:-target}/$target/release/atomup"

info=$(file -b "$bin")
case "$info" in
    *"ARM aarch64"*"statically linked"*) ;;
    *) echo "build-device: $bin is not a static aarch64 ELF: $info" >&2; exit 1 ;;
esac
qemu-aarch64-static "$bin" --help >/dev/null
# Fault injection never reaches the device: its trigger variable must not be
# in the binary (atomup-bootctl's `failpoints` feature also refuses to build
# without debug assertions; this catches any other way in).
if grep -q -a ATOMUP_FAILPOINT "$bin"; then
    echo "build-device: FAIL: $bin contains fault-injection code (ATOMUP_FAILPOINT)" >&2
    exit 1
fi

# The unwind tables are discarded (updater/agent/build.rs: panic=abort never
# unwinds); only the C runtime's few frames may stay.
eh=$(aarch64-linux-gnu-readelf -SW "$bin" | sed -n 's/.* \.eh_frame  *PROGBITS  *[0-9a-f]*  *[0-9a-f]*  *\([0-9a-f]*\) .*/\1/p')
if [ $((16#${eh:-0})) -gt 4096 ]; then
    echo "build-device: FAIL: $bin carries $((16#$eh)) bytes of .eh_frame (the discard script did not apply)" >&2
    exit 1
fi

# The function order (updater/agent/build.rs): how much of the order file
# this build found. Symbol hashes change with the toolchain; a stale file
# links fine but leaves the sleeping daemon's code spread out again.
order=updater/agent/link/$target.order
map=$(scripts/link-map "$target")
read -r found named < <(awk 'NR == FNR { if ($1 !~ /^#/ && $1 != "") { want[$1] = 1; n++ } next }
    { name = ""
      if (match($0, /:\(\.text\.[^)]*\)/)) name = substr($0, RSTART + 8, RLENGTH - 9)
      else if (NF == 5) name = $5
      if (name in want && !(name in seen)) { seen[name] = 1; f++ } }
    END { print f + 0, n + 0 }' "$order" "$map")
echo "function order: $found of the $named functions $order names are in this build"
if [ $((found * 100)) -lt $((named * 80)) ]; then
    echo "build-device: FAIL: the function order is stale (under 80% found): run scripts/link-order and commit its files" >&2
    exit 1
fi

size=$(stat -c %s "$bin")
awk -v b="$bin" -v i="$info" -v s="$size" -v m="$budget" 'BEGIN {
    printf "device binary: %s\n  %s\n  size %d bytes (%.2f MiB) of budget %d bytes (%.2f MiB): %d%%\n",
        b, i, s, s / 1048576, m, m / 1048576, s * 100 / m }'
if [ "$size" -gt "$budget" ]; then
    echo "build-device: FAIL: atomup is $size bytes, over the $budget-byte budget" >&2
    exit 1
fi
