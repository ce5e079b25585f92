# atomup A/B boot script for U-Boot boards whose A/B env is a raw, redundant
# libubootenv-format env on the boot disk (the QEMU layout; also any board whose
# saveenv cannot be trusted). Contract: bootloader-hooks/README.md.
# Compile: mkimage -A arm64 -O linux -T script -C none -d atomup-qemu-raw.cmd boot.scr
#
# Env copies on the boot disk (${au_if} ${au_devnum}: virtio 0 on QEMU, mmc 0 on a
# Raspberry Pi 4): copy 1 at byte 0x80000 (LBA 0x400), copy 2 at byte 0x84000
# (LBA 0x420), 0x4000 bytes each:
#   crc32 (LE, over the 0x3ffb data bytes) | flags (1 byte) | "k=v\0...\0\0" zero padded
# Newer copy = higher flags (0xff -> 0x00 wraps), as in libubootenv; a copy whose
# CRC fails is ignored. The env is written ONLY on a trial boot (ATOMUP_LEFT - 1),
# always to the copy that was NOT used, with flags + 1: a power cut during that
# write leaves the used copy intact, so the worst case is one uncounted attempt.
# A confirmed boot and the fallback boot write nothing.

echo "ATOMUP-UBOOT: script start"
# Board values: the defaults are the QEMU machine's; a board sets its own
# before this script runs (board-support/profiles/rpi4-uboot/boot.cmd).
test -n "${au_if}" || setenv au_if virtio
test -n "${au_devnum}" || setenv au_devnum 0
test -n "${au_part_a}" || setenv au_part_a 2
test -n "${au_part_b}" || setenv au_part_b 3
test -n "${au_root_a}" || setenv au_root_a /dev/vda2
test -n "${au_root_b}" || setenv au_root_b /dev/vda3
test -n "${au_console}" || setenv au_console console=ttyAMA0
test -n "${au_buf1}" || setenv au_buf1 0x50000000
test -n "${au_buf2}" || setenv au_buf2 0x50010000
test -n "${au_tmp}" || setenv au_tmp 0x50020000
setenv au_blk1 0x400
setenv au_blk2 0x420
setenv au_cnt  0x20

${au_if} dev ${au_devnum}
${au_if} read ${au_buf1} ${au_blk1} ${au_cnt}
${au_if} read ${au_buf2} ${au_blk2} ${au_cnt}

# flags bytes
setexpr au_t ${au_buf1} + 4
setexpr.b au_f1 *${au_t}
setexpr au_t ${au_buf2} + 4
setexpr.b au_f2 *${au_t}
# 'env import -c' wants crc|data contiguous: move the CRC one byte up, over the flags byte
setexpr au_p1 ${au_buf1} + 1
setexpr au_p2 ${au_buf2} + 1
cp.b ${au_buf1} ${au_tmp} 4
cp.b ${au_tmp} ${au_p1} 4
cp.b ${au_buf2} ${au_tmp} 4
cp.b ${au_tmp} ${au_p2} 4

# which copy is newer (by flags; equal flags -> copy 1, as libubootenv)
setenv au_newer 1
if itest ${au_f1} == ff && itest ${au_f2} == 0; then
  setenv au_newer 2
elif itest ${au_f2} == ff && itest ${au_f1} == 0; then
  setenv au_newer 1
elif itest ${au_f2} > ${au_f1}; then
  setenv au_newer 2
fi

# Import the older copy first, then the newer one: a copy whose CRC fails is not
# imported, so a corrupt newer copy leaves the older copy's values in place.
# Importing with a variable list carries only these three (never bootcmd & co.)
# and deletes any of them missing from the imported copy.
setenv ATOMUP_ORDER
setenv ATOMUP_TRIAL
setenv ATOMUP_LEFT
setenv au_cur 0
if test ${au_newer} = 2; then
  if env import -c ${au_p1} 0x3fff ATOMUP_ORDER ATOMUP_TRIAL ATOMUP_LEFT; then setenv au_cur 1; fi
  if env import -c ${au_p2} 0x3fff ATOMUP_ORDER ATOMUP_TRIAL ATOMUP_LEFT; then setenv au_cur 2; fi
else
  if env import -c ${au_p2} 0x3fff ATOMUP_ORDER ATOMUP_TRIAL ATOMUP_LEFT; then setenv au_cur 2; fi
  if env import -c ${au_p1} 0x3fff ATOMUP_ORDER ATOMUP_TRIAL ATOMUP_LEFT; then setenv au_cur 1; fi
fi
echo "ATOMUP-UBOOT: env copy=${au_cur} flags=${au_f1}/${au_f2} ORDER=${ATOMUP_ORDER} TRIAL=${ATOMUP_TRIAL} LEFT=${ATOMUP_LEFT}"

# Slot choice (contract): first slot in ORDER; the trial slot only while LEFT > 0.
# LEFT is decremented by comparison (9..1), so a value outside 1..9 counts as
# exhausted instead of being misread (setexpr would parse it as hex).
# Pass 2 runs only if recording a trial attempt failed (au_skip_trial=1): an attempt that cannot
# be counted is not spent, the trial slot is skipped instead.
setenv au_slot
setenv au_trial 0
setenv au_skip_trial 0
for au_pass in 1 2; do
  if test -z "${au_slot}"; then
    for s in "${ATOMUP_ORDER}"; do
      if test -n "${au_slot}"; then
        true
      elif test "${s}" != A -a "${s}" != B; then
        echo "ATOMUP-UBOOT: ignoring unknown slot '${s}' in ATOMUP_ORDER"
      elif test "${s}" = "${ATOMUP_TRIAL}"; then
        setenv au_left
        if test ${au_skip_trial} = 0; then
          if test "${ATOMUP_LEFT}" = 9; then setenv au_left 8
          elif test "${ATOMUP_LEFT}" = 8; then setenv au_left 7
          elif test "${ATOMUP_LEFT}" = 7; then setenv au_left 6
          elif test "${ATOMUP_LEFT}" = 6; then setenv au_left 5
          elif test "${ATOMUP_LEFT}" = 5; then setenv au_left 4
          elif test "${ATOMUP_LEFT}" = 4; then setenv au_left 3
          elif test "${ATOMUP_LEFT}" = 3; then setenv au_left 2
          elif test "${ATOMUP_LEFT}" = 2; then setenv au_left 1
          elif test "${ATOMUP_LEFT}" = 1; then setenv au_left 0
          fi
        fi
        if test -n "${au_left}"; then
          setenv au_slot ${s}
          setenv au_trial 1
        else
          echo "ATOMUP-UBOOT: skipping trial slot ${s} (no attempts left, or the attempt cannot be recorded)"
        fi
      else
        setenv au_slot ${s}
      fi
    done
    if test ${au_trial} = 1; then
      # Record the attempt: write the copy that was NOT used, with flags + 1.
      setenv au_keep_left ${ATOMUP_LEFT}
      setenv ATOMUP_LEFT ${au_left}
      if test ${au_cur} = 1; then
        setenv au_wbuf ${au_buf2}; setenv au_wblk ${au_blk2}; setenv au_wcopy 2; setenv au_fc ${au_f1}
      else
        setenv au_wbuf ${au_buf1}; setenv au_wblk ${au_blk1}; setenv au_wcopy 1; setenv au_fc ${au_f2}
      fi
      setexpr au_fn ${au_fc} + 1
      setexpr au_fn ${au_fn} \& ff
      setexpr au_wp ${au_wbuf} + 1
      setenv au_ok 0
      if env export -c -s 0x3fff ${au_wp} ATOMUP_ORDER ATOMUP_TRIAL ATOMUP_LEFT; then
        cp.b ${au_wp} ${au_tmp} 4
        cp.b ${au_tmp} ${au_wbuf} 4
        setexpr au_t ${au_wbuf} + 4
        mw.b ${au_t} ${au_fn}
        if ${au_if} write ${au_wbuf} ${au_wblk} ${au_cnt}; then setenv au_ok 1; fi
      fi
      if test ${au_ok} = 1; then
        echo "ATOMUP-UBOOT: wrote copy=${au_wcopy} flags=${au_fn} LEFT=${ATOMUP_LEFT}"
      else
        echo "ATOMUP-UBOOT: could not record the attempt, not booting trial slot ${au_slot}"
        setenv ATOMUP_LEFT ${au_keep_left}
        setenv au_slot
        setenv au_trial 0
        setenv au_skip_trial 1
      fi
    fi
  fi
done

if test -z "${au_slot}"; then
  # Last resort, never brick: env missing/corrupt/empty, or only an exhausted
  # trial slot. No write: the agent sees atomup.fallback=1 and repairs the env.
  setenv au_slot A
  setenv au_args "atomup.slot=A atomup.fallback=1"
elif test ${au_trial} = 1; then
  setenv au_args "atomup.slot=${au_slot} atomup.trial=1"
else
  setenv au_args "atomup.slot=${au_slot}"
fi
if test "${au_slot}" = B; then
  setenv au_part ${au_part_b}; setenv au_root ${au_root_b}
else
  setenv au_part ${au_part_a}; setenv au_root ${au_root_a}
fi
echo "ATOMUP-UBOOT: boot slot=${au_slot} trial=${au_trial} (${au_if} ${au_devnum}:${au_part}) ${au_args}"
setenv bootargs "${au_console} root=${au_root} rootfstype=ext4 ro rootwait panic=1 quiet ${au_args}"
if load ${au_if} ${au_devnum}:${au_part} ${kernel_addr_r} /boot/Image; then
  if load ${au_if} ${au_devnum}:${au_part} ${ramdisk_addr_r} /boot/initrd.img; then
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
  fi
fi
# A trial slot that cannot load has had its attempt counted: the reset moves on.
echo "ATOMUP-UBOOT: slot ${au_slot} failed to load/boot -> reset"
reset
