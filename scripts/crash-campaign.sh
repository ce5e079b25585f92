#!/usr/bin/env bash
# The full power-cut campaigns (issue 17), each a command of its own (CI runs
# a seeded subset of both inside ./test):
#   host  tests/tests/crash_host.rs: the agent built with its crash points is
#         killed at every crash point of update, mark-good, mark-bad and the
#         rollback record, and inside every write at byte offsets, on a U-Boot
#         image and a GRUB pair (1108 cuts, about 13 min on 2 cores)
#   qemu  tests/tests/crash_qemu.rs: a QEMU aarch64 device (U-Boot, Linux, the
#         static agent) is killed at random moments of the download, apply,
#         sync, env flip and trial boot of a real update, 10 cuts per phase
#         (50 cuts), plus Ctrl-C in the guest (about 20 min on 2 cores)
# Each prints its seed, a table (point, cuts, outcomes) and the totals.
#
# Usage: scripts/crash-campaign.sh [host|qemu|all] [--seed N]
#   --seed N   reproduce a run (the seed a campaign printed); default: a new one
set -euo pipefail
cd "$(dirname "$0")/.."
which=all
while [ $# -gt 0 ]; do
    case $1 in
        host|qemu|all) which=$1; shift;;
        --seed) export ATOMUP_CRASH_SEED=$2; shift 2;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
        *) echo "crash-campaign: unknown argument $1" >&2; exit 2;;
    esac
done
export ATOMUP_CRASH_FULL=1
cargo build --workspace --bins --locked
cargo build --profile faults -p atomup --features failpoints --locked
if [ "$which" != host ]; then scripts/build-device.sh; fi
run() { cargo test --locked -p atomup-tests --test "$1" -- --nocapture; }
case $which in
    host) run crash_host;;
    qemu) run crash_qemu;;
    all) run crash_host; run crash_qemu;;
esac
