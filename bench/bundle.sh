#!/usr/bin/env bash
# Offline bundles (issue 16), two figures; not a test (nothing asserts):
#   1. container overhead: bundle size vs the release file + the delta files
#      it carries (tar headers, padding, end marker);
#   2. install time of the same update (v1 -> v2) from a bundle on "the stick"
#      (`atomup install FILE`) vs over the network (`atomup update` from a local
#      HTTP server), each into a fresh copy of the same simulated device
#      (slot directories, U-Boot env image, state dir), REPS times, medians.
# Trees are synthetic: FILES files of SIZE_KIB KiB of random data (v1); v2
# rewrites CHANGED of them and adds ADDED. Deltas by upstream `ostree
# static-delta generate` (v1 -> v2 and from scratch), signed by atomup-publish.
#
# Usage: bench/bundle.sh
# Env:   REPS (5), FILES (400), SIZE_KIB (64), CHANGED (40), ADDED (20),
#        WORK (scratch dir, default target/bench-bundle), ATOMUP, PUBLISH
#        (binaries; default the workspace's debug builds: `cargo build --workspace --bins`),
#        STICK_DIR (where the bundle is read from; default WORK: put it on a
#        mounted USB stick to measure a real one).
# Needs ostree, python3 (its http.server is the "network"), GNU time.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
FILES=${FILES:-400}
SIZE_KIB=${SIZE_KIB:-64}
CHANGED=${CHANGED:-40}
ADDED=${ADDED:-20}
WORK=${WORK:-$ROOT/target/bench-bundle}
TGT=${CARGO_TARGET_DIR:-$ROOT/target}
ATOMUP=${ATOMUP:-$TGT/debug/atomup}
PUBLISH=${PUBLISH:-$TGT/debug/atomup-publish}
STICK_DIR=${STICK_DIR:-$WORK}
die() { echo "bench: $*" >&2; exit 1; }
for t in ostree python3 /usr/bin/time "$ATOMUP" "$PUBLISH"; do
    command -v "$t" >/dev/null || die "missing: $t"
done
rm -rf "$WORK"; mkdir -p "$WORK"; cd "$WORK"

# --- the vendor side -------------------------------------------------------
ostree --repo=repo init --mode=archive >/dev/null
mkdir -p tree/usr/lib tree/etc
for i in $(seq 1 "$FILES"); do
    head -c $((SIZE_KIB * 1024)) /dev/urandom > "tree/usr/lib/f$i"
done
echo v1 > tree/etc/version
commit() { ostree --repo=repo commit --branch=os --owner-uid=0 --owner-gid=0 \
    --timestamp=2026-01-01T00:00:00Z --subject="$1" --tree=dir=tree; }
v1=$(commit v1)
for i in $(seq 1 "$CHANGED"); do
    head -c $((SIZE_KIB * 1024)) /dev/urandom > "tree/usr/lib/f$i"
done
for i in $(seq 1 "$ADDED"); do
    head -c $((SIZE_KIB * 1024)) /dev/urandom > "tree/usr/lib/new$i"
done
echo v2 > tree/etc/version
v2=$(commit v2)
"$PUBLISH" keygen --secret-out vendor.secret --public-out vendor.pub >/dev/null
delta() { # from|"" to
    local from=$1 to=$2 args=(--empty)
    [ -n "$from" ] && args=(--from="$from")
    ostree --repo=repo static-delta generate --min-fallback-size=0 "${args[@]}" --to="$to" >/dev/null 2>&1
}
delta "$v1" "$v2"; delta "" "$v2"
# The factory image's delta, outside the repository (not part of release 2).
mkdir -p factory
ostree --repo=repo static-delta generate --min-fallback-size=0 --empty --to="$v1" \
    --filename="$PWD/factory/superblock" >/dev/null 2>&1
for sb in $(find repo/deltas -name superblock) factory/superblock; do
    "$PUBLISH" sign --key vendor.secret --delta "$(dirname "$sb")" >/dev/null
done
T0=1767225600
"$PUBLISH" release --repo repo --key vendor.secret --channel stable --board bench \
    --version 2 --to "$v2" --timestamp $T0 --expires-in-days 30 >/dev/null
"$PUBLISH" bundle --repo repo --channel stable --board bench --out "$STICK_DIR/update.atomup" > bundle-report.txt
rel_size=$(stat -c %s repo/atomup/stable/bench/release)
bundle_size=$(stat -c %s "$STICK_DIR/update.atomup")
members=$(tar tf "$STICK_DIR/update.atomup")
payload=0
while read -r m; do
    payload=$((payload + $(stat -c %s "repo/$m")))
done <<< "$members"
echo "== bundle: $(echo "$members" | wc -l) members =="
cat bundle-report.txt
awk -v b="$bundle_size" -v p="$payload" 'BEGIN {
    printf "bundle %d bytes; release + delta files %d bytes; container overhead %d bytes (%.3f %%)\n",
        b, p, b - p, (b - p) * 100 / p }'

# --- the device ------------------------------------------------------------
mkdir -p dev0/slot-a dev0/slot-b dev0/state/slots
"$ATOMUP" delta apply --delta factory --to dev0/slot-a --meta-out dev0/state/meta \
    --trusted-keys vendor.pub >/dev/null
printf 'format=1\ncommit=%s\nversion=1\n' "$v1" > dev0/state/slots/A
echo bench-device > dev0/machine-id
truncate -s 1M dev0/disk.img
"$ATOMUP" env init --order A --env-image dev0/disk.img --state-dir dev0/state >/dev/null

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory repo "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null' EXIT
sleep 1

common() { # device dir
    echo --server "http://127.0.0.1:$port/" --channel stable --board bench --booted-slot A \
        --trusted-keys vendor.pub --machine-id "$1/machine-id" --now $((T0 + 60)) \
        --env-image "$1/disk.img" --state-dir "$1/state" --from-root "$1/slot-a" --target-dir "$1/slot-b"
}
run() { # kind rep -> seconds
    local d=dev-$1-$2
    rm -rf "$d"; cp -a dev0 "$d"; sync
    local cmd
    if [ "$1" = stick ]; then
        cmd=("$ATOMUP" install "$STICK_DIR/update.atomup" --no-log $(common "$d"))
    else
        cmd=("$ATOMUP" update $(common "$d"))
    fi
    /usr/bin/time -f %e -o "time-$1-$2" "${cmd[@]}" > "out-$1-$2" 2>&1 || { cat "out-$1-$2" >&2; die "$1 run failed"; }
    grep -q "boots next on trial" "out-$1-$2" || die "$1 did not install"
    cat "time-$1-$2"
    rm -rf "$d"
}
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
for r in $(seq 1 "$REPS"); do
    echo "stick $(run stick "$r") network $(run network "$r")"
done > times.txt
cat times.txt
s=$(awk '{ print $2 }' times.txt | median)
n=$(awk '{ print $4 }' times.txt | median)
awk -v s="$s" -v n="$n" -v r="$REPS" 'BEGIN {
    printf "install v1 -> v2, median of %d: from the bundle %.2f s, over the network (local HTTP) %.2f s, ratio %.2f\n", r, s, n, s / n }'
