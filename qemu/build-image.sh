#!/bin/bash
# Build a QEMU aarch64 A/B disk image without loop devices or mounts.
#
# Usage: qemu/build-image.sh --bootloader uboot|grub --out DIR [options]
#   --cache DIR        guest parts (qemu/fetch-parts.sh runs if needed; default target/qemu-cache)
#   --image-a TEXT     label slot A's /sbin/init prints as image=TEXT (default A)
#   --image-b TEXT     same for slot B (default B)
#   --bad-slot A|B     that slot's /sbin/init exits at once: kernel panic, panic=1 reboot (a bad image)
#   --guest-bin FILE   copy FILE into /usr/bin of both slots (repeatable), e.g. a static aarch64 atomup
#   --blank-env        leave the A/B env blank (U-Boot: zeroed copies; GRUB: no grubenv files)
#   --uboot-variant raw|saveenv
#                      boot.scr from bootloader-hooks/uboot/atomup-qemu-raw.cmd (default) or
#                      atomup-saveenv.cmd (A/B vars in U-Boot's own env; see --uboot-env)
#   --uboot-env K=V    add K=V to U-Boot's own env in flash1.img (repeatable; saveenv variant)
#   --init FILE        /sbin/init of generated slots (default qemu/guest/test-init.sh)
#   --rootfs-out DIR   only write a generated root tree (busybox, kernel, initramfs, --init,
#                      --guest-bin files) to DIR and exit: the base of a vendor's product tree
#   --root-a-dir DIR   slot A's filesystem is exactly DIR (e.g. an OSTree checkout), not generated
#   --root-b-dir DIR   same for slot B
#   --empty-b          slot B is an empty filesystem (nothing installed there yet)
#   --data-dir DIR     the data partition (/var) starts with DIR's content
#   --extra-tree DIR   copy DIR's content over both generated slots (repeatable): board
#                      profile, init scripts, health checks, configuration of a test image
#
# Output in DIR:
#   disk.img    GPT: 1 boot FAT (U-Boot: /boot.scr; GRUB: /EFI/BOOT/BOOTAA64.EFI + /grub/grubenv{,2}),
#               2 root A ext4, 3 root B ext4, 4 data ext4. U-Boot's A/B env: raw redundant copies at
#               byte 0x80000 and 0x84000 (0x4000 each), in the gap before partition 1.
#   flash1.img  (U-Boot) U-Boot's own env pflash: Debian's default env with bootdelay=0 and
#               boot_targets=virtio0 (attached read-only: saveenv is broken on QEMU 7.2)
#   uboot-env.txt (U-Boot) that env as text, to make variants with mkenvimage -s 0x40000
#   vars.fd     (GRUB) a fresh copy of the AAVMF variable store
#   layout.env  byte offsets of the partitions, for host-side readers (debugfs/mtools)
# Initial A/B env unless --blank-env: ATOMUP_ORDER="A B", ATOMUP_TRIAL empty, ATOMUP_LEFT=0,
# written with the real fw_setenv / grub-editenv.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
hooks=$root/bootloader-hooks

bootloader= out= cache= image_a=A image_b=B bad_slot= blank_env=0 uboot_variant=raw
guest_bins=() uboot_env=() extra_trees=()
init_script=$here/guest/test-init.sh rootfs_out= root_a_dir= root_b_dir= empty_b=0 data_dir=
while [ $# -gt 0 ]; do
    case $1 in
        --bootloader) bootloader=$2; shift 2;;
        --out) out=$2; shift 2;;
        --cache) cache=$2; shift 2;;
        --image-a) image_a=$2; shift 2;;
        --image-b) image_b=$2; shift 2;;
        --bad-slot) bad_slot=$2; shift 2;;
        --guest-bin) guest_bins+=("$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"); shift 2;;
        --blank-env) blank_env=1; shift;;
        --uboot-variant) uboot_variant=$2; shift 2;;
        --uboot-env) uboot_env+=("$2"); shift 2;;
        --init) init_script=$(cd "$(dirname "$2")" && pwd)/$(basename "$2"); shift 2;;
        --rootfs-out) rootfs_out=$2; shift 2;;
        --root-a-dir) root_a_dir=$(cd "$2" && pwd); shift 2;;
        --root-b-dir) root_b_dir=$(cd "$2" && pwd); shift 2;;
        --empty-b) empty_b=1; shift;;
        --data-dir) data_dir=$(cd "$2" && pwd); shift 2;;
        --extra-tree) extra_trees+=("$(cd "$2" && pwd)"); shift 2;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
        *) echo "build-image: unknown option $1" >&2; exit 2;;
    esac
done
[ -n "$rootfs_out" ] || case $bootloader in uboot|grub) ;; *) echo "build-image: --bootloader uboot|grub is required" >&2; exit 2;; esac
[ -n "$out" ] || [ -n "$rootfs_out" ] || { echo "build-image: --out DIR is required" >&2; exit 2; }
if [ -n "$rootfs_out" ]; then
    # Only a tree is wanted: work next to it, not inside it.
    mkdir -p "$rootfs_out"
    rootfs_out=$(cd "$rootfs_out" && pwd)
    out=$(dirname "$rootfs_out")
fi
case $bad_slot in ""|A|B) ;; *) echo "build-image: --bad-slot A|B" >&2; exit 2;; esac
case $uboot_variant in
    raw) uboot_cmd=$hooks/uboot/atomup-qemu-raw.cmd;;
    saveenv) uboot_cmd=$hooks/uboot/atomup-saveenv.cmd;;
    *) echo "build-image: --uboot-variant raw|saveenv" >&2; exit 2;;
esac

cache=$("$here/fetch-parts.sh" ${cache:+"$cache"})
kver=$(cat "$cache/kernel/KVER")
mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Geometry in 512-byte sectors. The env copies (LBA 0x400, 0x420) sit between
# the GPT entries (end at LBA 33) and partition 1 (LBA 2048).
esp_start=2048 esp_size=32768        # 16 MiB
a_start=34816 root_size=131072       # 64 MiB each
b_start=$((a_start + root_size))
data_start=$((b_start + root_size)) data_size=131072  # 64 MiB: /var, download cache
disk_sectors=$((data_start + data_size + 2048))

# --- initramfs: busybox, modules for virtio/ext4/fw_cfg/vfat/overlay, /init ---
moddir=$cache/kernel/modules/$kver
ird=$work/initramfs
mkdir -p "$ird/bin" "$ird/lib/modules"
cp "$cache/busybox" "$ird/bin/busybox"
cp "$here/guest/initramfs-init.sh" "$ird/init"
# Resolve dependencies from modules.dep so a kernel point release that moves a
# dependency does not silently break the image.
declare -A seen=()
order=()
add_module() { # $1 = module name
    local line path dep
    line=$(grep -E "(^|/)$1\.ko(\.[a-z]+)?:" "$moddir/modules.dep" | head -n1) ||
        { echo "build-image: module $1 not in modules.dep" >&2; exit 1; }
    path=${line%%:*}
    [ -z "${seen[$path]:-}" ] || return 0
    seen[$path]=1
    for dep in ${line#*:}; do
        dep=$(basename "$dep"); add_module "${dep%%.ko*}"
    done
    order+=("$path")
}
for m in virtio_pci virtio_mmio virtio_blk virtio_net crc32c_generic ext4 qemu_fw_cfg vfat nls_cp437 nls_ascii nls_iso8859-1 nls_utf8 i6300esb overlay; do
    add_module "$m"
done
: >"$ird/lib/modules/load-order"
for p in "${order[@]}"; do
    name=$(basename "$p"); name=${name%%.ko*}
    cp "$moddir/$p" "$ird/lib/modules/$name.ko"
    echo "$name" >>"$ird/lib/modules/load-order"
done
(cd "$ird" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/initrd.img"

# --- root slots ---------------------------------------------------------------
applets=$(qemu-aarch64-static "$cache/busybox" --list)
populate_root() { # $1 = directory, $2 = image label, $3 = slot letter (or -)
    local r=$1 a
    mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc,dev,proc,sys,tmp,data,boot,var}
    cp "$cache/busybox" "$r/bin/busybox"
    for a in $applets; do
        [ "$a" = busybox ] || [ -e "$r/bin/$a" ] || ln -s busybox "$r/bin/$a"
    done
    rm -f "$r/bin/init"
    cp "$init_script" "$r/sbin/init"
    cp "$cache/kernel/Image" "$r/boot/Image"
    cp "$work/initrd.img" "$r/boot/initrd.img"
    echo "$2" >"$r/etc/atomup-image"
    [ "$bad_slot" != "$3" ] || : >"$r/etc/atomup-bad-image"
    cp "$root/board-support/profiles/qemu-virt-uboot/fw_env.config" "$r/etc/fw_env.config"
    for b in "${guest_bins[@]}"; do cp "$b" "$r/usr/bin/"; done
    for t in "${extra_trees[@]}"; do cp -a "$t/." "$r/"; done
}
if [ -n "$rootfs_out" ]; then
    find "$rootfs_out" -mindepth 1 -delete
    populate_root "$rootfs_out" "$image_a" -
    echo "build-image: root tree in $rootfs_out" >&2
    exit 0
fi
make_root() { # $1 = slot letter, $2 = image label, $3 = output image, $4 = given tree (optional)
    local r=${4:-$work/root$1}
    if [ -z "${4:-}" ]; then
        populate_root "$r" "$2" "$1"
    fi
    mkfs.ext4 -q -F -L "root$1" -E root_owner=0:0 -d "$r" "$3" $((root_size / 2))k >/dev/null
}
make_root A "$image_a" "$work/rootA.ext4" "$root_a_dir"
if [ "$empty_b" = 1 ]; then
    mkdir -p "$work/emptyB"
    make_root B "$image_b" "$work/rootB.ext4" "$work/emptyB"
else
    make_root B "$image_b" "$work/rootB.ext4" "$root_b_dir"
fi
mkdir -p "$work/data"
mkfs.ext4 -q -F -L data -d "${data_dir:-$work/data}" "$work/data.ext4" $((data_size / 2))k >/dev/null

# --- boot partition -------------------------------------------------------------
esp=$work/esp.vfat
mkfs.vfat -n BOOT -C "$esp" $((esp_size / 2)) >/dev/null
if [ "$bootloader" = uboot ]; then
    mkimage -q -A arm64 -O linux -T script -C none -n "atomup A/B" \
        -d "$uboot_cmd" "$work/boot.scr" >/dev/null
    mcopy -i "$esp" "$work/boot.scr" ::/boot.scr
else
    grub-mkstandalone -O arm64-efi -d "$cache/grub/arm64-efi" \
        --modules="part_gpt fat ext2 loadenv test regexp echo linux reboot halt normal" \
        --locales= --fonts= --themes= \
        -o "$work/BOOTAA64.EFI" "boot/grub/grub.cfg=$hooks/grub/grub.cfg"
    mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/grub
    mcopy -i "$esp" "$work/BOOTAA64.EFI" ::/EFI/BOOT/BOOTAA64.EFI
    if [ "$blank_env" = 0 ]; then
        # Both files of the torn-write scheme (bootloader-hooks/README.md): file 1 newer.
        for n in 1 2; do
            f=$work/grubenv$n
            grub-editenv "$f" create
            seq=$((n == 1 ? 1 : 0))
            grub-editenv "$f" set "ATOMUP_SEQ=$seq" "ATOMUP_ORDER=A B" "ATOMUP_TRIAL=" \
                "ATOMUP_LEFT=0" "ATOMUP_SEAL=$seq:A B::0"
        done
        mcopy -i "$esp" "$work/grubenv1" ::/grub/grubenv
        mcopy -i "$esp" "$work/grubenv2" ::/grub/grubenv2
    fi
fi

# --- assemble -------------------------------------------------------------------
disk=$out/disk.img
rm -f "$disk"
truncate -s $((disk_sectors * 512)) "$disk"
sgdisk -Z "$disk" >/dev/null 2>&1 || true
sgdisk \
    -n 1:$esp_start:+$esp_size -t 1:ef00 -c 1:boot \
    -n 2:$a_start:+$root_size -t 2:8300 -c 2:rootA \
    -n 3:$b_start:+$root_size -t 3:8300 -c 3:rootB \
    -n 4:$data_start:+$data_size -t 4:8300 -c 4:data \
    "$disk" >/dev/null
put() { dd if="$1" of="$disk" bs=512 seek="$2" conv=notrunc,sparse status=none; }
put "$esp" $esp_start
put "$work/rootA.ext4" $a_start
put "$work/rootB.ext4" $b_start
put "$work/data.ext4" $data_start

if [ "$bootloader" = uboot ] && [ "$blank_env" = 0 ]; then
    # libubootenv wants absolute device paths in its config.
    printf '%s 0x80000 0x4000\n%s 0x84000 0x4000\n' "$disk" "$disk" >"$work/fw_env.config"
    # On a blank env fw_setenv starts from the -f file (name=value lines).
    printf 'ATOMUP_ORDER=A B\nATOMUP_LEFT=0\n' >"$work/initial-env"
    fw_setenv -c "$work/fw_env.config" -f "$work/initial-env" ATOMUP_LEFT 0 2>/dev/null
    fw_printenv -c "$work/fw_env.config" ATOMUP_ORDER >/dev/null
fi

cat >"$out/layout.env" <<EOF
ESP_OFFSET=$((esp_start * 512))
ROOT_A_OFFSET=$((a_start * 512))
ROOT_B_OFFSET=$((b_start * 512))
DATA_OFFSET=$((data_start * 512))
UBOOT_ENV1_OFFSET=$((0x80000))
UBOOT_ENV2_OFFSET=$((0x84000))
UBOOT_ENV_SIZE=$((0x4000))
BOOTLOADER=$bootloader
EOF

if [ "$bootloader" = uboot ]; then
    # U-Boot's own env: Debian's built-in default env (read from u-boot.bin, so
    # it matches the installed U-Boot), with no boot delay and only virtio0.
    ubin=/usr/lib/u-boot/qemu_arm64/u-boot.bin
    tr '\0' '\n' <"$ubin" | sed -n '/^bootcmd=run distro_bootcmd$/,/^$/p' | sed '/^$/d' |
        sed -e 's/^bootdelay=.*/bootdelay=0/' -e 's/^boot_targets=.*/boot_targets=virtio0/' >"$work/uboot-env.txt"
    for kv in "${uboot_env[@]}"; do echo "$kv" >>"$work/uboot-env.txt"; done
    grep -q '^distro_bootcmd=' "$work/uboot-env.txt" ||
        { echo "build-image: default env not found in $ubin" >&2; exit 1; }
    mkenvimage -s 0x40000 -o "$work/uboot-env.bin" "$work/uboot-env.txt"
    cp "$work/uboot-env.txt" "$out/uboot-env.txt"
    rm -f "$out/flash1.img"
    truncate -s 64M "$out/flash1.img"
    dd if="$work/uboot-env.bin" of="$out/flash1.img" conv=notrunc status=none
else
    cp /usr/share/AAVMF/AAVMF_VARS.fd "$out/vars.fd"
fi
echo "build-image: $bootloader image in $out" >&2
