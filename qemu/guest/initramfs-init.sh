#!/bin/busybox sh
# initramfs /init for the QEMU test images: Debian's arm64 kernel has virtio,
# ext4 and fw_cfg as modules, so load them, mount root= read-only and hand over
# to the slot's /sbin/init. A root that cannot be mounted reboots: the
# bootloader then counts the attempt (trial) or boots the same confirmed slot.
/bin/busybox mkdir -p /proc /sys /dev /newroot
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox --install -s /bin
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" 2>/dev/null || echo "initramfs: insmod $m failed"
done
root=
for x in $(cat /proc/cmdline); do case $x in root=*) root=${x#root=};; esac; done
i=0
while [ ! -b "$root" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
if ! mount -t ext4 -o ro "$root" /newroot; then
  echo "initramfs: FAILED to mount root '$root' -> reboot"
  reboot -f
fi
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
