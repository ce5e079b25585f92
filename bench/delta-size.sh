#!/usr/bin/env bash
# Side-by-side benchmark of static delta GENERATION, ours against upstream's,
# on the same commits. Pairs of Debian arm64 minbase trees (cached by
# bench/delta-apply.sh): "add" = v1 -> v2 (v2 = v1 + EXTRA_PKGS), "upgrade" =
# v2 -> v3 (v3 = v2 with every package that has a newer version in the
# configured bookworm-updates/-security suites unpacked over it), "mixed" =
# v1 -> v3 (those updates plus the added packages); and "product", a
# from-scratch delta of the QEMU demo's product root (qemu/build-image.sh
# --rootfs-out with the static aarch64 device binary, as qemu/demo-update.sh
# builds it).
#
# Every tree is committed with atomup-publish; the commit ids are
# cross-checked against upstream `ostree commit`. Per pair, in one run:
#   upstream: ostree static-delta generate --min-fallback-size=0
#   default:  atomup-publish delta (default options: 8 MiB device -> 2 MiB
#             window, atomup's `G` op for gzip files: upstream's apply-offline
#             must refuse a delta with G ops; the device applies it)
#   best:     atomup-publish delta --best
#   ostree:   atomup-publish delta --ostree-compatible (upstream's format only)
# with bytes (superblock + parts) and ratio ours/upstream, generation wall
# time and ratio (REPS runs each, interleaved; median and range), a check
# that upstream's apply-offline accepts ours and gives back the tree (or
# refuses it, if it has G ops), and the peak RSS of the device engine
# (`atomup delta apply --stats`) applying ours with the private peak of its
# gzip helper (RSS_REPS runs; range). zstd is measured only (no code path ships):
# our default parts' payloads recompressed with `zstd -19 --long` at the
# same 2 MiB window, bytes and host decode time against xz's.
# Not a test: nothing here asserts a target; it prints figures.
#
# Usage: bench/delta-size.sh
# Env:   REPS (default 1), RSS_REPS (default 3), EXTRA_PKGS, BENCH_CACHE,
#        MIRROR, SUITE (as bench/delta-apply.sh), DEVICE_BIN (a prebuilt
#        static aarch64 atomup for the product root; default: built by
#        scripts/build-device.sh).
# Needs root (uid/gid 0), ostree, debootstrap, GNU time (apt `time`), zstd,
# xz, and apt lists for arm64 (`dpkg --add-architecture arm64 && apt-get
# update`) for the upgrade and mixed pairs (skipped with a note when nothing
# is newer).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${BENCH_CACHE:-$ROOT/target/bench-cache}
export BENCH_CACHE=$CACHE
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TS=2024-01-01T00:00:00Z

die() { echo "bench: $*" >&2; exit 1; }
REPS=${REPS:-1}
RSS_REPS=${RSS_REPS:-3}
for tool in ostree /usr/bin/time cargo zstd xz; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (run ./bootstrap)"
done
[ "$(id -u)" = 0 ] || die "run as root: trees are committed with uid/gid 0"

# One tree cache for both benchmarks: delta-apply.sh builds (or reuses) it.
"$ROOT/bench/delta-apply.sh" --prepare-only

echo "bench: building atomup-publish and atomup (profile bench-host)" >&2
(cd "$ROOT" && cargo build --quiet --profile bench-host -p atomup-publish -p atomup)
PUBLISH=$CARGO_TARGET_DIR/bench-host/atomup-publish
ATOMUP=$CARGO_TARGET_DIR/bench-host/atomup
# The device's peak RSS is measured with the device's own build: static musl
# (its allocator returns freed blocks; glibc's keeps them and reads 2-3 MiB
# higher) at the device profile, on this host's architecture. Needs
# `rustup target add x86_64-unknown-linux-musl`; without it the glibc bench
# build is used and the figures say so.
RSS_ATOMUP=${RSS_ATOMUP:-}
RSS_BUILD="glibc bench-host build"
if [ -z "$RSS_ATOMUP" ] && rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
    (cd "$ROOT" && CC_x86_64_unknown_linux_musl=${CC_x86_64_unknown_linux_musl:-gcc} \
        cargo build --quiet --release --target x86_64-unknown-linux-musl -p atomup)
    RSS_ATOMUP=$CARGO_TARGET_DIR/x86_64-unknown-linux-musl/release/atomup
    RSS_BUILD="static musl release build, as on the device"
fi
RSS_ATOMUP=${RSS_ATOMUP:-$ATOMUP}
echo "bench: device peak RSS measured with the $RSS_BUILD ($RSS_ATOMUP)" >&2

WORK=$CACHE/size-run
rm -rf "$WORK"
mkdir -p "$WORK"
REPO=$WORK/repo

# shellcheck source=bench/measure.sh
. "$ROOT/bench/measure.sh"
bytes() { du -sb "$1" | cut -f1; }

# v3: v2 plus newer versions of packages it already has (download once).
build_upgrade() {
    local dir=$CACHE/v3 name version cand
    [ -e "$dir.done" ] && return 0
    local pkgs=()
    while read -r _ _ name version _; do
        cand=$(apt-cache policy "$name:arm64" 2>/dev/null | awk '/Candidate:/ { print $2 }')
        if [ -n "$cand" ] && [ "$cand" != "(none)" ] && [ "$cand" != "$version" ]; then
            pkgs+=("$name:arm64=$cand")
        fi
    done < <(grep -h '^I: Retrieving ' "$CACHE/v2.log")
    [ ${#pkgs[@]} -gt 0 ] || return 1
    echo "bench: upgrade pair: ${pkgs[*]}" >&2
    rm -rf "$dir.tmp" "$CACHE/v3-debs"
    mkdir -p "$CACHE/v3-debs"
    (cd "$CACHE/v3-debs" && apt-get download "${pkgs[@]}") >&2
    cp -a "$CACHE/v2" "$dir.tmp"
    for deb in "$CACHE/v3-debs"/*.deb; do dpkg -x "$deb" "$dir.tmp"; done
    find "$dir.tmp" \( -type b -o -type c -o -type p -o -type s \) -delete
    mv "$dir.tmp" "$dir"
    touch "$dir.done"
}
TREES=(v1 v2)
build_upgrade && TREES+=(v3) || echo "bench: no newer versions of v2's packages: upgrade pair skipped" >&2

# The QEMU demo's product root: busybox, kernel, initramfs, modules and the
# static aarch64 device binary.
if [ -z "${DEVICE_BIN:-}" ]; then
    (cd "$ROOT" && scripts/build-device.sh) >&2
    DEVICE_BIN=$CARGO_TARGET_DIR/aarch64-unknown-linux-musl/release/atomup
fi
PRODUCT=$WORK/product
"$ROOT/qemu/build-image.sh" --rootfs-out "$PRODUCT" --init "$ROOT/qemu/guest/device-init.sh" \
    --guest-bin "$DEVICE_BIN" >&2

"$PUBLISH" init --repo "$REPO"
UP=$WORK/upstream-repo
ostree --repo="$UP" init --mode=archive
declare -A ID CMS UMS
ids=same
declare -A DIR
for t in "${TREES[@]}"; do DIR[$t]=$CACHE/$t; done
DIR[product]=$PRODUCT
for t in "${TREES[@]}" product; do
    branch=bench/main
    [ "$t" = product ] && branch=bench/product
    read -r CMS[$t] _ < <(measure "$PUBLISH" commit --repo "$REPO" --tree "${DIR[$t]}" --branch $branch \
        --owner-uid 0 --owner-gid 0 --timestamp "$TS" --subject "$t" --quiet)
    ID[$t]=$(cat "$WORK/cmd.out")
    # Byte-exactness: upstream's commit of the same tree must have the same id.
    read -r UMS[$t] _ < <(measure ostree --repo="$UP" commit -b $branch --owner-uid=0 --owner-gid=0 \
        --timestamp="$TS" -s "$t" "${DIR[$t]}")
    [ "$(cat "$WORK/cmd.out")" = "${ID[$t]}" ] || ids="DIFFERENT for $t"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

echo "commit ids (atomup-publish vs ostree commit): $ids"
for t in "${TREES[@]}" product; do
    echo "commit $t: atomup-publish ${CMS[$t]} ms, ostree ${UMS[$t]} ms"
done

median() { sort -n | awk '{ v[NR] = $1 } END { printf "%d", v[int((NR + 1) / 2)] }'; }
range() { sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%d-%d", lo, hi }'; }

# The device engine's peak RSS applying delta $1 (from-root $2, or none), RSS_REPS times.
device_rss() {
    local dir=$1 from_root=$2 i
    for i in $(seq "$RSS_REPS"); do
        rm -rf "$WORK/target"
        mkdir "$WORK/target"
        "$RSS_ATOMUP" delta apply --delta "$dir" ${from_root:+--from-root "$from_root" --from-meta "$REPO"} \
            --to "$WORK/target" --no-verify --stats >"$WORK/apply.stats"
        awk -F= '/^wall_ms=/ { print $2 }' "$WORK/apply.stats" >>"$WORK/apply.walls"
        awk -F= '/^helper_private_peak_kib=/ { print $2 }' "$WORK/apply.stats" >>"$WORK/apply.helpers"
        awk -F= '/^peak_rss_kib=/ { print $2 }' "$WORK/apply.stats"
    done
}

# The device engine's last apply (left in $WORK/target by device_rss) gave back tree $1.
check_device() {
    diff -r --no-dereference "$WORK/target" "$1" >/dev/null || die "the device's apply did not give back $1"
}

# Upstream's apply-offline accepts delta $1 (from commit $2 or scratch) and gives back tree $4 (commit $3).
check_upstream() {
    local dir=$1 from=$2 to=$3 tree=$4
    rm -rf "$WORK/bare" "$WORK/co"
    ostree --repo="$WORK/bare" init --mode=bare-user
    [ -n "$from" ] && ostree --repo="$WORK/bare" pull-local "$REPO" "$from" >/dev/null
    ostree --repo="$WORK/bare" static-delta apply-offline "$dir"
    ostree --repo="$WORK/bare" fsck >/dev/null
    ostree --repo="$WORK/bare" checkout "$to" "$WORK/co"
    diff -r --no-dereference "$WORK/co" "$tree" >/dev/null || die "apply-offline of $dir did not give back $tree"
}

# Does upstream's apply-offline accept delta $1 (from commit $2 or scratch)?
upstream_accepts() {
    rm -rf "$WORK/bare"
    ostree --repo="$WORK/bare" init --mode=bare-user
    [ -n "$2" ] && ostree --repo="$WORK/bare" pull-local "$REPO" "$2" >/dev/null
    ostree --repo="$WORK/bare" static-delta apply-offline "$1" 2>/dev/null
}

# zstd, measured only: our parts' payloads (xz-decoded) recompressed with
# zstd -19 at the same window; bytes and host decode times (ms) of both.
zstd_measure() {
    local dir=$1 label=$2 part xzb=0 zb=0 xms=0 zms=0 win t0
    win=21 # 2^21 = 2 MiB, the default xz window
    for part in "$dir"/[0-9]*; do
        tail -c +2 "$part" >"$WORK/p.xz"
        xz -dc "$WORK/p.xz" >"$WORK/p.bin"
        zstd -q -19 --long="$win" -f "$WORK/p.bin" -o "$WORK/p.zst"
        xzb=$((xzb + $(stat -c %s "$WORK/p.xz")))
        zb=$((zb + $(stat -c %s "$WORK/p.zst")))
        t0=$(date +%s%N); xz -dc "$WORK/p.xz" >/dev/null; xms=$((xms + ($(date +%s%N) - t0) / 1000000))
        t0=$(date +%s%N); zstd -q -dc --long="$win" "$WORK/p.zst" >/dev/null; zms=$((zms + ($(date +%s%N) - t0) / 1000000))
    done
    printf '[%s] zstd -19 --long=%s of our payloads (measured only): %s bytes vs xz %s (%s); host decode %s ms vs xz %s ms\n' \
        "$label" "$win" "$zb" "$xzb" "$(ratio "$zb" "$xzb")" "$zms" "$xms"
}

# One pair: upstream's generator and ours (default, --best) on the same commits.
# $1 label, $2 from tree name (or "" for scratch), $3 to tree name, $4 to tree dir.
pair() {
    local label=$1 from=$2 to=$3 tree=$4
    local F=${from:+${ID[$from]}} T=${ID[$to]}
    local UPD=$WORK/$label-upstream mode r up_ms=() ms_default=() ms_best=() ms_ostree=()
    local from_opt=(--empty) ours_from=(--scratch)
    [ -n "$from" ] && from_opt=(--from="$F") && ours_from=(--from "$F")
    echo "[$label] ${from:-scratch} -> $to ($(find "$tree" | wc -l) entries)"
    for r in $(seq "$REPS"); do
        rm -rf "$UPD"; mkdir -p "$UPD"
        read -r ms _ < <(measure ostree --repo="$REPO" static-delta generate "${from_opt[@]}" --to="$T" \
            --min-fallback-size=0 --filename="$UPD/superblock")
        up_ms+=("$ms")
        for mode in default best ostree; do
            local extra=()
            [ "$mode" = best ] && extra=(--best)
            [ "$mode" = ostree ] && extra=(--ostree-compatible)
            read -r ms _ < <(measure "$PUBLISH" delta --repo "$REPO" "${ours_from[@]}" --to "$T" --quiet "${extra[@]}")
            local dir=$WORK/$label-$mode
            rm -rf "$dir"
            cp -r "$REPO/$(cat "$WORK/cmd.out")" "$dir"
            { grep -o '[0-9]* gzip-rebuilt' "$WORK/cmd.err" || echo "0 gzip-rebuilt"; } >"$dir.rebuilt"
            case $mode in
                default) ms_default+=("$ms") ;;
                best) ms_best+=("$ms") ;;
                ostree) ms_ostree+=("$ms") ;;
            esac
        done
    done
    local up_bytes up_med
    up_bytes=$(bytes "$UPD")
    up_med=$(printf '%s\n' "${up_ms[@]}" | median)
    echo "[$label] upstream: $up_bytes bytes, $(find "$UPD" -type f ! -name superblock | wc -l) parts, $up_med ms (range $(printf '%s\n' "${up_ms[@]}" | range))"
    for mode in default best ostree; do
        local dir=$WORK/$label-$mode b med rss times walls upstream_says rebuilt
        b=$(bytes "$dir")
        case $mode in
            default) times=("${ms_default[@]}") ;;
            best) times=("${ms_best[@]}") ;;
            ostree) times=("${ms_ostree[@]}") ;;
        esac
        med=$(printf '%s\n' "${times[@]}" | median)
        rebuilt=$(cat "$dir.rebuilt")
        if [ "$rebuilt" = "0 gzip-rebuilt" ]; then
            # No G op (--ostree-compatible, or no gzip file to rebuild): a
            # plain upstream-format delta.
            check_upstream "$dir" "$F" "$T" "$tree"
            upstream_says="$rebuilt, apply-offline ok"
        elif [ "$mode" = ostree ]; then
            die "--ostree-compatible made G ops in $dir ($rebuilt)"
        elif upstream_accepts "$dir" "$F"; then
            # atomup's extension: upstream must refuse it, not mis-apply it.
            die "apply-offline accepted $dir, which has G ops ($rebuilt)"
        else
            upstream_says="$rebuilt, apply-offline refuses it (atomup extension)"
        fi
        rm -f "$WORK/apply.walls" "$WORK/apply.helpers"
        rss=$(device_rss "$dir" "${from:+$WORK/active-$from}" | range)
        check_device "$tree"
        walls=$(range <"$WORK/apply.walls")
        # The `G` op's helper process (0: none ran) is its own figure: it
        # runs beside the engine, so the device needs both (its private
        # peak: its code pages are the engine's executable).
        helper=$(range <"$WORK/apply.helpers")
        printf '[%s] ours %-7s: %s bytes, ratio %s; %s ms (range %s), wall ratio %s; %s; device apply ok, peak RSS %s KiB (gzip helper, private peak %s KiB), wall %s ms (%s runs)\n' \
            "$label" "$mode" "$b" "$(ratio "$b" "$up_bytes")" "$med" "$(printf '%s\n' "${times[@]}" | range)" \
            "$(ratio "$med" "$up_med")" "$upstream_says" "$rss" "$helper" "$walls" "$RSS_REPS"
    done
    zstd_measure "$WORK/$label-default" "$label"
}

for t in "${TREES[@]}"; do
    [ -d "$WORK/active-$t" ] || ostree --repo="$REPO" checkout "${ID[$t]}" "$WORK/active-$t"
done
pair add v1 v2 "$CACHE/v2"
if [ "${#TREES[@]}" -ge 3 ]; then
    pair upgrade v2 v3 "$CACHE/v3"
    pair mixed v1 v3 "$CACHE/v3"
fi
pair product "" product "$PRODUCT"
