#!/bin/sh
# /sbin/init of a QEMU test slot. Prints one marker line that the host tests
# match, then runs the test's script (if QEMU was given one with
#   -fw_cfg name=opt/atomup/test.sh,file=...)
# sourced, with $slot $trial $fallback $image set, so it can power off, exit
# (-> kernel panic -> panic=1 reboot, i.e. a bad image), or inspect the env.
# Without a script it powers off. A slot built with --bad-slot exits at once.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
slot=- trial=0 fallback=0
for x in $(cat /proc/cmdline); do
  case $x in
    atomup.slot=*) slot=${x#atomup.slot=};;
    atomup.trial=1) trial=1;;
    atomup.fallback=1) fallback=1;;
  esac
done
image=$(cat /etc/atomup-image 2>/dev/null)
echo "ATOMUP-BOOTED slot=$slot trial=$trial fallback=$fallback image=$image"
if [ -e /etc/atomup-bad-image ]; then
  echo "ATOMUP-BAD-IMAGE: init exits (kernel panics, panic=1 reboots)"
  exit 1
fi
script=/sys/firmware/qemu_fw_cfg/by_name/opt/atomup/test.sh/raw
if [ -r "$script" ]; then
  cp "$script" /tmp/test.sh
  . /tmp/test.sh
fi
echo "ATOMUP-POWEROFF"
sync
poweroff -f
