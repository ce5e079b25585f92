# atomup A/B boot script for U-Boot boards whose own env storage works
# (`saveenv` writes it reliably). Contract: bootloader-hooks/README.md.
# Compile: mkimage -A arm64 -O linux -T script -C none -d atomup-saveenv.cmd boot.scr
#
# The A/B variables live in U-Boot's own env, which U-Boot loaded (and CRC-
# checked) at power-on. Use a REDUNDANT env (CONFIG_SYS_REDUNDAND_ENVIRONMENT /
# CONFIG_ENV_OFFSET_REDUND): saveenv then writes the other copy with a new flags
# byte, so a power cut keeps the previous copy. With a single-copy env a cut
# during saveenv can lose the whole env (U-Boot then boots its default env:
# no ATOMUP_ORDER -> the fallback below boots slot A). The device's
# /etc/fw_env.config must describe the same storage for the agent.
# Board-specific: set au_dev / au_part_a / au_part_b / au_root_a / au_root_b
# in the board's default env to override the QEMU-like defaults below.
#
# saveenv stores the WHOLE running env: the script's own temporaries are
# removed first, and the env is saved only on a trial boot.

echo "ATOMUP-UBOOT: script start (saveenv variant)"
test -n "${au_dev}" || setenv au_dev "virtio 0"
test -n "${au_part_a}" || setenv au_part_a 2
test -n "${au_part_b}" || setenv au_part_b 3
test -n "${au_root_a}" || setenv au_root_a /dev/vda2
test -n "${au_root_b}" || setenv au_root_b /dev/vda3
echo "ATOMUP-UBOOT: env ORDER=${ATOMUP_ORDER} TRIAL=${ATOMUP_TRIAL} LEFT=${ATOMUP_LEFT}"

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
      setenv au_keep_left ${ATOMUP_LEFT}
      setenv ATOMUP_LEFT ${au_left}
      # Keep only persistent variables in the saved env.
      setenv au_save_slot ${au_slot}
      setenv au_slot; setenv au_left; setenv au_trial; setenv au_skip_trial; setenv s; setenv bootargs
      if saveenv; then
        setenv au_slot ${au_save_slot}
        setenv au_trial 1
        echo "ATOMUP-UBOOT: saved env LEFT=${ATOMUP_LEFT}"
      else
        echo "ATOMUP-UBOOT: could not record the attempt, not booting trial slot ${au_save_slot}"
        setenv ATOMUP_LEFT ${au_keep_left}
        setenv au_trial 0
        setenv au_skip_trial 1
      fi
    fi
  fi
done

if test -z "${au_slot}"; then
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
echo "ATOMUP-UBOOT: boot slot=${au_slot} trial=${au_trial} (${au_dev}:${au_part}) ${au_args}"
setenv bootargs "console=ttyAMA0 root=${au_root} rootfstype=ext4 ro rootwait panic=1 quiet ${au_args}"
if load ${au_dev}:${au_part} ${kernel_addr_r} /boot/Image; then
  if load ${au_dev}:${au_part} ${ramdisk_addr_r} /boot/initrd.img; then
    booti ${kernel_addr_r} ${ramdisk_addr_r}:${filesize} ${fdtcontroladdr}
  fi
fi
echo "ATOMUP-UBOOT: slot ${au_slot} failed to load/boot -> reset"
reset
