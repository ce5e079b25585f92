#!/bin/sh
# /sbin/init of the demo product image (the root tree the vendor commits and
# atomup updates). One boot = confirm or reject the running slot, then run
# the update service (atomup daemon) for one poll; install → reboot into the
# new slot on trial.
# Markers (`ATOMUP-DEMO: ...`) are what the host-side demo and tests match.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
# A trial boot is guarded from here to the health verdict: the board's watchdog
# (board.conf) is armed now and left running; `atomup health` feeds it.
atomup health --arm-watchdog || echo "ATOMUP-DEMO: cannot arm the watchdog"
# /var is the data partition: persistent, never written by an update.
mount -t ext4 /dev/vda4 /var || { echo "ATOMUP-DEMO: cannot mount /var"; poweroff -f; }

slot=- trial=0
for x in $(cat /proc/cmdline); do
  case $x in
    atomup.slot=*) slot=${x#atomup.slot=};;
    atomup.trial=1) trial=1;;
  esac
done
state=/var/lib/atomup
# /etc: the slot's own (the vendor defaults, read-only) under the device's
# changes, the slot's layer on /var. Before anything else reads /etc.
if [ "$slot" != - ]; then
  atomup etc mount --slot "$slot" --state-dir "$state" || echo "ATOMUP-DEMO: /etc overlay FAILED"
fi
. /etc/atomup/device.conf
# GRUB boards keep the A/B env (the grubenv pair) on the ESP: mounted read-write
# for atomup's one-block writes, unmounted before every reboot or poweroff.
if [ -n "${ESP:-}" ]; then
  mount -t vfat -o rw,sync,flush "$ESP" /boot/efi || { echo "ATOMUP-DEMO: cannot mount the ESP"; poweroff -f; }
fi
finish() { sync; [ -z "${ESP:-}" ] || umount /boot/efi; umount /etc 2>/dev/null; umount /var; }
echo "ATOMUP-DEMO: booted slot=$slot trial=$trial version=$(cat /etc/atomup/version)"

# Health: on a trial boot the release's own checks (/etc/atomup/health.d) run
# under the hardware watchdog; pass confirms the slot, fail marks it bad and
# reboots into the confirmed one. On a confirmed boot nothing is written.
wd=; [ -c /dev/watchdog ] && wd="--watchdog /dev/watchdog"
atomup health --state-dir "$state" $wd || { echo "ATOMUP-DEMO: health did not pass"; finish; reboot -f; }
atomup status --state-dir "$state"

# The device's own configuration: written once, on the factory release; every
# later boot shows it survived, with what the device changed in /etc.
if [ "$(cat /etc/atomup/version)" = 1 ] && [ ! -e /etc/site.conf ]; then
  echo "site=demo-device-0001" >/etc/site.conf
  echo "ATOMUP-DEMO: wrote /etc/site.conf"
fi
echo "ATOMUP-DEMO: etc site.conf=$(cat /etc/site.conf 2>/dev/null) image=$(cat /etc/atomup-image)"
atomup config-diff --state-dir "$state" | sed 's/^/ATOMUP-DEMO: config-diff: /'

# A USB stick (device.conf's STICK, set by `demo-update.sh --stick`): the
# technician's offline update instead of the server, as udev or mdev would
# start it on insertion; the root is read-only, so its runtime dir is in /tmp.
stick_run() { # $1 = block device: atomup-stick on it; reboots after an install
  # On the console as it happens (the host's --stick-pull acts on it).
  { ATOMUP_STICK_RUN=/tmp/atomup ATOMUP_STICK_REBOOT=no ATOMUP_STICK_LINGER=0 \
    atomup-stick "$1" 2>&1; echo $? >/tmp/stick.rc; } | tee /tmp/stick.log
  rc=$(cat /tmp/stick.rc)
  echo "ATOMUP-DEMO: stick $1 done: exit $rc"
  if [ "$rc" = 0 ] && grep -q "^installed version" /tmp/stick.log; then
    echo "ATOMUP-DEMO: installed from the stick, rebooting into the new slot"
    finish; reboot -f
  fi
  return "$rc"
}
if [ -n "${STICK:-}" ] && [ -b "$STICK" ]; then
  # STICK_REINSERT (`--stick-pull`): after a failed run, show what it left,
  # wait for the stick to go and come back (QMP device_del / device_add), and
  # run again on the new disk, as a new insertion would.
  if ! stick_run "$STICK" && [ -n "${STICK_REINSERT:-}" ]; then
    echo "ATOMUP-DEMO: env after the failed install: $(atomup env show | tr '\n' ';')"
    atomup status --state-dir "$state" | sed 's/^/ATOMUP-DEMO: status: /'
    n=0
    while [ -b "$STICK" ] && [ "$n" -lt 60 ]; do sleep 1; n=$((n + 1)); done
    echo "ATOMUP-DEMO: waiting for the stick"
    dev= n=0
    while [ -z "$dev" ] && [ "$n" -lt 120 ]; do
      for d in /dev/vd[b-z]; do [ -b "$d" ] && dev=$d; done
      [ -n "$dev" ] || sleep 1
      n=$((n + 1))
    done
    [ -z "$dev" ] || { echo "ATOMUP-DEMO: stick inserted again as $dev"; stick_run "$dev"; }
  fi
  echo "ATOMUP-DEMO: done on slot $slot version $(cat /etc/atomup/version)"
  finish; poweroff -f
fi

# Network: QEMU user networking; the host's loopback is 10.0.2.2.
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2 ||
  echo "ATOMUP-DEMO: no network"

# A test may hand the device a script (run-vm.sh --script: QEMU fw_cfg
# opt/atomup/test.sh), sourced here, before the update: the Ctrl-C test
# interrupts an update with it. Devices have none.
hook=/sys/firmware/qemu_fw_cfg/by_name/opt/atomup/test.sh/raw
if [ -r "$hook" ]; then
  cp "$hook" /tmp/test.sh; . /tmp/test.sh
  # The power-cut campaign times the update's phases on the console: with a
  # test script the update runs once, in the foreground, its progress on the
  # console (the same `atomup update` the service runs).
  if atomup --log-level info update --server "$SERVER" --channel "$CHANNEL" \
      --trusted-keys /etc/atomup/trusted.pub --state-dir "$state" \
      --machine-id "$state/machine-id" --from-root / \
      >/tmp/atomup.log; then
    cat /tmp/atomup.log
    if grep -q "^installed version" /tmp/atomup.log; then
      echo "ATOMUP-DEMO: installed, rebooting into the new slot"
      finish; reboot -f
    fi
  else
    cat /tmp/atomup.log
    echo "ATOMUP-DEMO: update failed"
  fi
  echo "ATOMUP-DEMO: done on slot $slot version $(cat /etc/atomup/version)"
  finish
  poweroff -f
fi

# The update agent runs as a service, through the busybox init script the
# image ships (/etc/init.d/S99zz-atomup; settings in /usr/lib/atomup/config.d,
# board name, env location and the other slot's device in
# /etc/atomup/board.conf). The health verdict above confirmed this boot.
mkdir -p /tmp/atomup && : >/tmp/atomup/boot-complete
/etc/init.d/S99zz-atomup start
# One poll per boot in the demo: wait until the daemon asked for the reboot
# (after an install) or says when it polls next, then stop the service.
n=0
while [ ! -e /tmp/atomup-reboot ] && ! grep -q "next poll in" /tmp/atomup.log 2>/dev/null; do
  n=$((n + 1)); [ "$n" -lt 600 ] || break
  sleep 1
done
# The sleeping daemon's memory, its peak since it started and now (its
# polls run in child processes, which log their own peaks).
if [ ! -e /tmp/atomup-reboot ]; then
  for p in /proc/[0-9]*; do
    case "$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null)" in
      *"atomup daemon"*)
        echo "ATOMUP-DEMO: idle daemon memory: $(grep -E '^Vm(HWM|RSS)' "$p/status" | tr -s ' \t\n' ' ')" ;;
    esac
  done
fi
/etc/init.d/S99zz-atomup stop
cat /tmp/atomup.log
if [ -e /tmp/atomup-reboot ]; then
  echo "ATOMUP-DEMO: installed, rebooting into the new slot"
  finish; reboot -f
fi
grep -q "^error" /tmp/atomup.log && echo "ATOMUP-DEMO: update failed"
echo "ATOMUP-DEMO: done on slot $slot version $(cat /etc/atomup/version)"
finish
poweroff -f
