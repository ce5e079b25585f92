#!/bin/bash
# Fetch the arm64 guest parts (Debian kernel, static busybox, GRUB EFI modules)
# into a cache directory, idempotently.
#
# Why a script and not ./bootstrap alone: the parts are arm64 packages that are
# never installed on the x86_64 host; they are only downloaded and unpacked
# (`dpkg -x`), and the kernel's modules get a `modules.dep` (`depmod`) because
# the deb ships none. Re-running is cheap: a stamp file records what was
# unpacked, and nothing is downloaded again while the stamp matches.
#
# Usage: qemu/fetch-parts.sh [--refresh] [CACHE_DIR]   (default: <workspace>/target/qemu-cache)
#   Without --refresh, an existing complete cache is used as is (no apt calls);
#   --refresh re-resolves the package versions and re-downloads if they changed.
# Prints the cache directory on success. Layout of CACHE_DIR:
#   kernel/Image                 uncompressed arm64 kernel (booti/linux take it as is)
#   kernel/modules/<KVER>/...    the kernel's modules with modules.dep
#   kernel/KVER                  the kernel release string
#   busybox                      static arm64 busybox
#   grub/arm64-efi/              GRUB modules for grub-mkstandalone -d
#   parts.stamp                  package versions that were unpacked
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
refresh=0
if [ "${1:-}" = "--refresh" ]; then refresh=1; shift; fi
cache=${1:-$root/target/qemu-cache}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

log() { echo "fetch-parts: $*" >&2; }
complete() { [ -s "$cache/parts.stamp" ] && [ -f "$cache/kernel/Image" ] && [ -s "$cache/kernel/KVER" ] &&
    [ -x "$cache/busybox" ] && [ -d "$cache/grub/arm64-efi" ]; }

# Two image builds may start at once (the boot tests build both bootloaders in
# parallel): one fetches, the other waits and then finds the cache complete.
exec 9>"$cache/.lock"
flock 9

if [ "$refresh" = 0 ] && complete; then
    echo "$cache"
    exit 0
fi

# arm64 package lists are needed for apt-get download of :arm64 packages.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "adding dpkg architecture arm64"
    dpkg --add-architecture arm64
    apt-get update -qq
fi
if ! apt-cache show busybox-static:arm64 >/dev/null 2>&1; then
    log "arm64 package lists missing: apt-get update"
    apt-get update -qq
fi

# Resolve the kernel ABI package through Debian's metapackage so a point
# release (6.1.0-N) is picked up without editing this script.
kpkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-arm64\)\(:arm64\)\{0,1\}$/\1/p' | head -n1)
if [ -z "$kpkg" ]; then
    log "cannot resolve the arm64 kernel package from linux-image-arm64:arm64"
    exit 1
fi
pkgs=("$kpkg:arm64" "busybox-static:arm64" "grub-efi-arm64-bin:arm64")
want=""
for p in "${pkgs[@]}"; do
    v=$(apt-cache policy "$p" | sed -n 's/^ *Candidate: //p')
    [ -n "$v" ] && [ "$v" != "(none)" ] || { log "no candidate for $p"; exit 1; }
    want+="$p=$v"$'\n'
done
want=${want%$'\n'}

if complete && [ "$(cat "$cache/parts.stamp")" = "$want" ]; then
    echo "$cache"
    exit 0
fi

log "downloading: ${pkgs[*]}"
rm -rf "$cache/debs" "$cache/x" "$cache/kernel" "$cache/grub" "$cache/busybox" "$cache/parts.stamp"
mkdir -p "$cache/debs" "$cache/x"
# apt-get download runs as the _apt user when it can: give it a writable dir.
chmod 777 "$cache/debs"
(cd "$cache/debs" && apt-get download -qq "${pkgs[@]}")
for deb in "$cache"/debs/*.deb; do
    dpkg -x "$deb" "$cache/x"
done

kver=$(ls "$cache/x/lib/modules" | head -n1)
[ -n "$kver" ] && [ -f "$cache/x/boot/vmlinuz-$kver" ] || { log "kernel not found in $kpkg"; exit 1; }
mkdir -p "$cache/kernel/modules"
mv "$cache/x/boot/vmlinuz-$kver" "$cache/kernel/Image"
mv "$cache/x/lib/modules/$kver" "$cache/kernel/modules/$kver"
echo "$kver" >"$cache/kernel/KVER"
# depmod -b wants <base>/lib/modules/<kver>: give it that shape via a symlink.
mkdir -p "$cache/x/depmod/lib/modules"
ln -s "$cache/kernel/modules/$kver" "$cache/x/depmod/lib/modules/$kver"
depmod -b "$cache/x/depmod" "$kver"

mv "$cache/x/bin/busybox" "$cache/busybox"
mkdir -p "$cache/grub"
mv "$cache/x/usr/lib/grub/arm64-efi" "$cache/grub/arm64-efi"
rm -rf "$cache/x" "$cache/debs"
printf '%s' "$want" >"$cache/parts.stamp"
log "done: kernel $kver"
echo "$cache"
