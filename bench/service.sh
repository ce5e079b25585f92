#!/usr/bin/env bash
# Benchmark of the agent as a service (issue 13): wire efficiency (bytes on
# the wire / delta bytes) on a clean link, with a disconnect every 256 KiB and
# after 10 kill -9 restarts; the peak RSS of a whole update; the idle
# daemon's peak and current RSS. All with the device's own build: the release
# profile (opt-level z, LTO, panic=abort), static musl, for x86_64 so it runs
# here (the aarch64 device binary is the same code for the same profile).
# Not a test: it prints figures (tests/examples/service_bench.rs).
#
# Usage: bench/service.sh [--only wire|idle]
# Env:   AGENT (a prebuilt static agent instead of building one)
# Needs: ostree, nginx, GNU time (apt `time`), the x86_64-unknown-linux-musl
#        rust target (`rustup target add x86_64-unknown-linux-musl`).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$ROOT/$CARGO_TARGET_DIR ;; esac
for tool in ostree nginx /usr/bin/time; do
    command -v "$tool" >/dev/null || { echo "bench: missing tool: $tool (run ./bootstrap)" >&2; exit 1; }
done
if [ -z "${AGENT:-}" ]; then
    CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-gcc} \
        cargo build --quiet --release --locked --target x86_64-unknown-linux-musl -p atomup
    AGENT=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/atomup
fi
# The fixture (commits, deltas, releases, provisioning) uses the debug tools.
cargo build --quiet --locked --workspace --bins
cargo run --quiet --locked -p atomup-tests --example service_bench -- --agent "$AGENT" "$@"
