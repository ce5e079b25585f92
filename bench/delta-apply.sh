#!/usr/bin/env bash
# Side-by-side benchmark of applying ONE static delta between two realistic
# Debian arm64 root trees:
#   (a) ours:     atomup delta apply  (release build, into an empty target,
#                 old content read from a checkout of v1)
#   (b) upstream: ostree static-delta apply-offline into a bare-user repo that
#                 already holds v1, then ostree checkout of v2 (repo and
#                 checkout on the same file system)
# Wall time and peak RSS (GNU time -v) of both, REPS repetitions, medians and
# ratios ours/upstream. Not a test: nothing here asserts; it prints figures.
# Each engine writes into a fresh file system of kind TARGET_FS before every
# run (tmpfs by default; see below); upstream's bare repo lives there too.
#
# Usage: bench/delta-apply.sh [--prepare-only]
# Env:   REPS (default 5), EXTRA_PKGS (default less,nano,curl),
#        TARGET_FS (tmpfs | ext4 | ext4-dio | disk; default tmpfs),
#        BENCH_CACHE (default target/bench-cache), MIRROR (default: read from
#        this machine's apt sources), SUITE (default bookworm),
#        DELTA_OPTS (extra `ostree static-delta generate` options),
#        ATOMUP, PUBLISH (prebuilt binaries; default: build profile bench-host).
# Needs root (uid/gid 0 ownership), ostree, debootstrap, GNU time (apt `time`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${BENCH_CACHE:-$ROOT/target/bench-cache}
REPS=${REPS:-5}
SUITE=${SUITE:-bookworm}
EXTRA_PKGS=${EXTRA_PKGS:-less,nano,curl}
DELTA_OPTS=${DELTA_OPTS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

die() { echo "bench: $*" >&2; exit 1; }
for tool in ostree debootstrap dpkg-deb /usr/bin/time cargo; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (run ./bootstrap)"
done
[ "$(id -u)" = 0 ] || die "run as root: trees are committed and written with uid/gid 0"

# The Debian mirror this machine already uses (deb822 `URIs:` or one-line
# `deb URL SUITE ...`), so the benchmark never hard-codes a host.
apt_mirror() {
    local f line
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        if [[ $f == *.sources ]]; then
            # First stanza whose Suites contain the plain suite name.
            awk -v suite="$SUITE" '
                /^[[:space:]]*$/ { if (uri && ok) { print uri; exit } uri=""; ok=0; next }
                /^URIs:/ { uri=$2 }
                /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite) ok=1 }
                END { if (uri && ok) print uri }' "$f" | head -n1
        else
            while read -r line; do
                set -- $line
                [ "${1:-}" = deb ] || continue
                shift
                [[ ${1:-} == \[* ]] && shift
                if [ "${2:-}" = "$SUITE" ]; then
                    echo "$1"
                    break
                fi
            done <"$f"
        fi
    done | head -n1
}
# `head -n1` may close the pipe early (SIGPIPE, status 141 under pipefail): keep the
# first line whatever the loop's status.
MIRROR=${MIRROR:-$(apt_mirror || true)}
[ -n "$MIRROR" ] || die "no $SUITE mirror found in /etc/apt/sources.list*; set MIRROR="

# Builds a first-stage arm64 minbase tree once; later runs reuse it.
build_tree() {
    local name=$1 include=$2 dir=$CACHE/$1
    [ -e "$dir.done" ] && return 0
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$CACHE"
    echo "bench: debootstrap $name (${include:-minbase only}) from $MIRROR" >&2
    debootstrap --foreign --arch=arm64 --variant=minbase ${include:+--include=$include} \
        "$SUITE" "$dir.tmp" "$MIRROR" >"$CACHE/$name.log" 2>&1 ||
        die "debootstrap failed, see $CACHE/$name.log"
    # The first stage unpacks only the required packages; the rest (incl.
    # --include) wait as .debs for a second stage that needs arm64 execution.
    # Unpack them all so the trees really differ by the package set, then
    # drop what an installed root does not hold: the .debs, debootstrap's
    # scratch dir and device nodes (OSTree refuses them; /dev is devtmpfs).
    local deb
    for deb in "$dir.tmp/var/cache/apt/archives/"*.deb; do
        dpkg-deb -x "$deb" "$dir.tmp"
    done
    rm -rf "$dir.tmp/var/cache/apt/archives/"*.deb "$dir.tmp/debootstrap" "$dir.tmp/dev/"*
    find "$dir.tmp" \( -type b -o -type c -o -type p -o -type s \) -delete
    mv "$dir.tmp" "$dir"
    touch "$dir.done"
}

build_tree v1 ""
build_tree v2 "$EXTRA_PKGS"
[ "${1:-}" = --prepare-only ] && exit 0

# ATOMUP / PUBLISH may name prebuilt binaries; otherwise build them.
if [ -z "${ATOMUP:-}" ] || [ -z "${PUBLISH:-}" ]; then
    echo "bench: building atomup and atomup-publish (profile bench-host)" >&2
    (cd "$ROOT" && cargo build --quiet --profile bench-host -p atomup -p atomup-publish)
fi
ATOMUP=${ATOMUP:-$CARGO_TARGET_DIR/bench-host/atomup}
PUBLISH=${PUBLISH:-$CARGO_TARGET_DIR/bench-host/atomup-publish}

WORK=$CACHE/run
# Unmounts $1 if mounted, and detaches the loop device under it.
unmount_fs() {
    local m=$1 dev
    mountpoint -q "$m" 2>/dev/null || return 0
    dev=$(findmnt -no SOURCE "$m")
    umount "$m"
    # `mount -o loop` devices detach themselves; `losetup` ones do not.
    case $dev in /dev/loop*) losetup -d "$dev" 2>/dev/null || true ;; esac
}
for m in "$WORK/out-ours" "$WORK/out-upstream"; do unmount_fs "$m"; done
rm -rf "$WORK"
mkdir -p "$WORK/out-ours" "$WORK/out-upstream"
# Where each engine writes its tree: a file system of kind TARGET_FS, made
# afresh before every measured run, one for ours and one for upstream's.
#   tmpfs (default): this machine's ext4 may run without a journal, and then
#     the kernel avoids reusing inodes freed in the last 60 s (300 s if not yet
#     written back), so creating thousands of files right after deleting
#     thousands costs whatever earlier deletions left behind (`perf` showed
#     68 % of one run in ext4's recently_deleted()). A fresh tmpfs has no
#     history: both engines get the same file system every time.
#   ext4: a fresh journaled ext4 on a loop device, as an inactive slot would
#     be; includes writeback where an engine syncs (ours does, before it
#     returns; upstream's checkout does not, so its `sync -f` is reported
#     separately). The loop device caches its backing file, so write-back
#     copies every byte once more in the kernel, a CPU cost a real block
#     device does not have.
#   ext4-dio: the same with the loop device in direct-I/O mode (no second
#     page cache under the file system), closer to an eMMC or disk slot.
#   disk: a directory next to the cache (history-dependent, see above).
TARGET_FS=${TARGET_FS:-tmpfs}
case $TARGET_FS in
tmpfs | disk) ;;
ext4 | ext4-dio) command -v mkfs.ext4 >/dev/null || die "missing tool: mkfs.ext4" ;;
*) die "TARGET_FS must be tmpfs, ext4, ext4-dio or disk" ;;
esac
trap 'for m in "$WORK/out-ours" "$WORK/out-upstream"; do unmount_fs "$m"; done; rm -f "$WORK"/*.img' EXIT
# Makes mount point $1 an empty file system of kind TARGET_FS.
fresh_fs() {
    local m=$1
    unmount_fs "$m"
    case $TARGET_FS in
    tmpfs) mount -t tmpfs -o size=4g,mode=0755 atomup-bench "$m" ;;
    ext4 | ext4-dio)
        rm -f "$m.img"
        truncate -s 2G "$m.img"
        mkfs.ext4 -q -F "$m.img"
        if [ "$TARGET_FS" = ext4 ]; then
            mount -o loop "$m.img" "$m"
        else
            mount "$(losetup -f --show --direct-io=on "$m.img")" "$m"
        fi
        ;;
    disk) rm -rf "${m:?}"/* ;;
    esac
}
REPO=$WORK/repo
ostree --repo="$REPO" init --mode=archive
commit() {
    ostree --repo="$REPO" commit -b bench/main --owner-uid=0 --owner-gid=0 \
        --timestamp=2024-01-01T00:00:00Z -s "$1" "$CACHE/$1"
}
V1=$(commit v1)
V2=$(commit v2)
DELTA=$WORK/delta
mkdir -p "$DELTA"
# shellcheck disable=SC2086 # DELTA_OPTS is a list of options
ostree --repo="$REPO" static-delta generate --from="$V1" --to="$V2" \
    --min-fallback-size=0 $DELTA_OPTS --filename="$DELTA/superblock" >/dev/null 2>&1
"$PUBLISH" keygen --secret-out "$WORK/secret.key" --public-out "$WORK/trusted.pub" >/dev/null
"$PUBLISH" sign --key "$WORK/secret.key" --delta "$DELTA" >/dev/null
ostree --repo="$REPO" checkout "$V1" "$WORK/active-v1"

# shellcheck source=bench/measure.sh
. "$ROOT/bench/measure.sh"
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

# Runs REPS pairs on one delta dir and prints the summary for it.
bench_delta() {
    local label=$1 delta=$2 rep w1 r1 w2 r2
    : >"$WORK/$label-ours.txt"
    : >"$WORK/$label-upstream.txt"
    : >"$WORK/$label-upstream-sync.txt"
    local OUT=$WORK/out-ours UP=$WORK/out-upstream w3 r3
    for rep in $(seq 1 "$REPS"); do
        # (a) ours: empty target, old content from the active v1 checkout.
        fresh_fs "$OUT"
        mkdir "$OUT/target"
        sync
        measure "$ATOMUP" delta apply --delta "$delta" --from-root "$WORK/active-v1" \
            --from-meta "$REPO" --to "$OUT/target" --trusted-keys "$WORK/trusted.pub" \
            --stats >>"$WORK/$label-ours.txt"
        grep '^phases_ms:' "$WORK/cmd.out" >>"$WORK/$label-phases.txt" || true

        # (b) upstream: a bare-user repo holding v1 (not timed) on the same
        # fresh file system as its checkout, as on an OSTree device where the
        # repo and the deployments share one; then apply-offline + checkout
        # of v2 (timed; walls add, RSS is the max).
        fresh_fs "$UP"
        ostree --repo="$UP/bare" init --mode=bare-user
        ostree --repo="$UP/bare" pull-local "$REPO" "$V1" >/dev/null
        sync
        read -r w1 r1 < <(measure ostree --repo="$UP/bare" static-delta apply-offline "$delta")
        read -r w2 r2 < <(measure ostree --repo="$UP/bare" checkout "$V2" "$UP/upstream-co")
        echo "$((w1 + w2)) $((r1 > r2 ? r1 : r2))" >>"$WORK/$label-upstream.txt"
        # What it would cost upstream to make its tree durable, as ours does.
        read -r w3 r3 < <(measure sync -f "$UP/upstream-co")
        echo "$((w1 + w2 + w3))" >>"$WORK/$label-upstream-sync.txt"
        echo "bench: $label rep $rep ours=[$(tail -n1 "$WORK/$label-ours.txt")] upstream=[$(tail -n1 "$WORK/$label-upstream.txt")] (wall_ms rss_kib)" >&2
    done

    # The two writers must agree on the result (contents, type, mode, owner,
    # link target) before their timings mean anything.
    diff -r --no-dereference "$OUT/target" "$UP/upstream-co" >/dev/null ||
        die "$label: atomup's tree differs from ostree checkout of v2"
    [ "$(listing "$OUT/target")" = "$(listing "$UP/upstream-co")" ] ||
        die "$label: modes/owners/links differ from ostree checkout of v2"

    local ours_wall ours_rss up_wall up_rss up_sync delta_bytes parts
    ours_wall=$(cut -d' ' -f1 "$WORK/$label-ours.txt" | median)
    ours_rss=$(cut -d' ' -f2 "$WORK/$label-ours.txt" | median)
    up_wall=$(cut -d' ' -f1 "$WORK/$label-upstream.txt" | median)
    up_rss=$(cut -d' ' -f2 "$WORK/$label-upstream.txt" | median)
    up_sync=$(median <"$WORK/$label-upstream-sync.txt")
    delta_bytes=$(du -sb "$delta" | cut -f1)
    parts=$(find "$delta" -type f ! -name superblock | wc -l)
    cat <<EOF
== $label: ${parts} part files, ${delta_bytes} bytes; reps=${REPS} (medians); trees written to ${TARGET_FS}
ours:     wall_ms=${ours_wall} peak_rss_kib=${ours_rss}
upstream: wall_ms=${up_wall} peak_rss_kib=${up_rss}   (apply-offline + checkout)
ratio wall (ours/upstream) = $(awk -v a="$ours_wall" -v b="$up_wall" 'BEGIN { printf "%.2f", a / b }')   target <= 0.5
upstream + sync -f of its tree: wall_ms=${up_sync}   ratio ours/that = $(awk -v a="$ours_wall" -v b="$up_sync" 'BEGIN { printf "%.2f", a / b }')
ratio rss  (ours/upstream) = $(awk -v a="$ours_rss" -v b="$up_rss" 'BEGIN { printf "%.2f", a / b }')
our peak RSS = $(awk -v a="$ours_rss" 'BEGIN { printf "%.1f", a / 1024 }') MiB   target <= 8 MiB with small-dictionary parts
ours, last rep: $(tail -n1 "$WORK/$label-phases.txt")
EOF
}
listing() { (cd "$1" && find . -printf '%p %y %m %U %G %l\n' | sort); }

echo "trees: v1 $(find "$CACHE/v1" | wc -l) entries $(du -sb "$CACHE/v1" | cut -f1) bytes; v2 (+${EXTRA_PKGS}) $(find "$CACHE/v2" | wc -l) entries $(du -sb "$CACHE/v2" | cut -f1) bytes"
bench_delta upstream-parts "$DELTA"

# The same update with small-dictionary parts made by our publisher (what
# the 8 MiB RSS target is about; upstream format, as both sides apply it);
# SMALL_DICT=0 skips it.
SMALL_DICT=${SMALL_DICT:-1048576}
if [ "$SMALL_DICT" != 0 ]; then
    "$PUBLISH" delta --repo "$REPO" --from "$V1" --to "$V2" --xz-dict "$SMALL_DICT" --ostree-compatible \
        --min-fallback-size 0 --quiet >/dev/null
    small=$(find "$REPO/deltas" -name superblock -newer "$DELTA/superblock" | head -n1)
    [ -n "$small" ] || die "atomup-publish delta wrote no superblock under $REPO/deltas"
    rm -rf "$WORK/delta-small"
    cp -r "$(dirname "$small")" "$WORK/delta-small"
    "$PUBLISH" sign --key "$WORK/secret.key" --delta "$WORK/delta-small" >/dev/null
    bench_delta "small-dict-$SMALL_DICT" "$WORK/delta-small"
fi
