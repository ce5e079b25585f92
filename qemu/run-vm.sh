#!/bin/bash
# Run an image made by qemu/build-image.sh in qemu-system-aarch64 (TCG).
#
# Usage: qemu/run-vm.sh --dir DIR [options]
#   --dir DIR          image directory (disk.img + flash1.img or vars.fd + layout.env)
#   --disk FILE        use this disk instead of DIR/disk.img (e.g. a per-test copy)
#   --log FILE         serial console to FILE (default: console on stdio)
#   --timeout SECS     kill QEMU after SECS (default 90); exit status 124 then
#   --script FILE      guest test script, given as fw_cfg opt/atomup/test.sh (see qemu/guest/test-init.sh)
#   --no-reboot        exit QEMU instead of rebooting (a panic then ends the run)
#   --watchdog         add an i6300esb watchdog whose expiry resets the VM
#   --net              user-mode network: the guest is 10.0.2.15, the host's loopback is 10.0.2.2
#   --gpio-trace FILE  log every level change of the machine's PL061 GPIO lines to FILE
#                      (QEMU's pl061_set_output trace event): the status LED's sequence
#   --stick FILE       attach FILE (raw, e.g. a FAT image) as a second virtio disk, the
#                      guest's /dev/vdb: a USB stick. It sits on a hot-pluggable PCIe root
#                      port (id stickport; the disk's id is stick, its block node
#                      stickdrive), so QMP device_del / device_add can pull and re-insert it
#   --stick-bps N      the stick reads at most N bytes/s (a slow stick)
#   --qmp PATH         QMP monitor on the FIFO pair PATH.in (commands) / PATH.out (replies),
#                      made if absent
# The boot path follows DIR/layout.env: U-Boot (Debian's qemu_arm64 u-boot.bin,
# its env pflash read-only) or GRUB (AAVMF code read-only + DIR/vars.fd).
# Exit status: QEMU's (0 after a guest poweroff), or 124 on timeout.
set -euo pipefail

dir= disk= log= timeout=90 script= noreboot=0 watchdog=0 net=0 gpio_trace= stick= stick_bps= qmp=
while [ $# -gt 0 ]; do
    case $1 in
        --dir) dir=$2; shift 2;;
        --disk) disk=$2; shift 2;;
        --log) log=$2; shift 2;;
        --timeout) timeout=$2; shift 2;;
        --script) script=$2; shift 2;;
        --no-reboot) noreboot=1; shift;;
        --watchdog) watchdog=1; shift;;
        --net) net=1; shift;;
        --gpio-trace) gpio_trace=$2; shift 2;;
        --stick) stick=$2; shift 2;;
        --stick-bps) stick_bps=$2; shift 2;;
        --qmp) qmp=$2; shift 2;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0;;
        *) echo "run-vm: unknown option $1" >&2; exit 2;;
    esac
done
[ -n "$dir" ] && [ -f "$dir/layout.env" ] || { echo "run-vm: --dir DIR with layout.env is required" >&2; exit 2; }
disk=${disk:-$dir/disk.img}
bootloader=$(sed -n 's/^BOOTLOADER=//p' "$dir/layout.env")

# cortex-a57: -cpu max is ~4x slower under TCG (pointer-auth emulation);
# one vCPU: more do not speed up TCG boots. acpi=off: the kernel gets the
# device tree, whose PL061 GPIO controller (/dev/gpiochip0) is the boards'
# status LED (with ACPI, virt has a GED power button and no PL061).
args=(-M virt,acpi=off -cpu cortex-a57 -smp 1 -m 512 -accel tcg -no-user-config)
if [ "$net" = 1 ]; then
    args+=(-nic user,model=virtio-net-pci)
else
    args+=(-nic none)
fi
case $bootloader in
    uboot)
        args+=(-bios /usr/lib/u-boot/qemu_arm64/u-boot.bin
            -drive "if=pflash,unit=1,format=raw,readonly=on,file=$dir/flash1.img");;
    grub)
        args+=(-drive "if=pflash,unit=0,format=raw,readonly=on,file=/usr/share/AAVMF/AAVMF_CODE.fd"
            -drive "if=pflash,unit=1,format=raw,file=$dir/vars.fd"
            # No boot-manager countdown: saves ~5 s of EDK2 time per boot.
            -boot menu=on,splash-time=0);;
    *) echo "run-vm: unknown BOOTLOADER '$bootloader' in $dir/layout.env" >&2; exit 2;;
esac
args+=(-drive "if=none,id=hd0,format=raw,file=$disk" -device virtio-blk-pci,drive=hd0)
# After the system disk, so the firmware's virtio0 and the kernel's vda stay the system disk.
# -blockdev, not -drive: its node outlives a device_del, so device_add can re-insert it.
if [ -n "$stick" ]; then
    args+=(-blockdev "driver=file,filename=$stick,node-name=stickfile")
    if [ -n "$stick_bps" ]; then
        args+=(-object "throttle-group,id=stickthrottle,x-bps-read=$stick_bps"
            -blockdev driver=raw,file=stickfile,node-name=stickraw
            -blockdev driver=throttle,throttle-group=stickthrottle,file=stickraw,node-name=stickdrive)
    else
        args+=(-blockdev driver=raw,file=stickfile,node-name=stickdrive)
    fi
    args+=(-device pcie-root-port,id=stickport,chassis=1
        -device virtio-blk-pci,drive=stickdrive,id=stick,bus=stickport)
fi
if [ -n "$qmp" ]; then
    for f in "$qmp.in" "$qmp.out"; do [ -p "$f" ] || mkfifo "$f"; done
    args+=(-chardev "pipe,id=qmp,path=$qmp" -mon chardev=qmp,mode=control)
fi
[ -z "$script" ] || args+=(-fw_cfg "name=opt/atomup/test.sh,file=$script")
[ "$noreboot" = 0 ] || args+=(-no-reboot)
[ "$watchdog" = 0 ] || args+=(-device i6300esb -watchdog-action reset)
[ -z "$gpio_trace" ] || args+=(-trace "pl061_set_output,file=$gpio_trace")
if [ -n "$log" ]; then
    args+=(-display none -monitor none -serial "file:$log")
else
    args+=(-nographic)
fi

rc=0
timeout -k 5 "$timeout" qemu-system-aarch64 "${args[@]}" </dev/null || rc=$?
[ "$rc" != 124 ] || echo "run-vm: timed out after ${timeout}s" >&2
exit "$rc"
