# atomup boot script for the Raspberry Pi 4 (U-Boot rpi_4_defconfig, SD card).
# The board's values for the shared A/B script, which does the rest (choice,
# attempt counting, the one env write on a trial boot): see README.md here and
# bootloader-hooks/README.md for the contract.
#   mkimage -A arm64 -O linux -T script -C none -d boot.cmd boot.scr
#   mkimage -A arm64 -O linux -T script -C none \
#       -d ../../../bootloader-hooks/uboot/atomup-qemu-raw.cmd atomup-ab.scr
# and copy both to the boot partition.

echo "ATOMUP-RPI4: board script"
# The SD card is mmc 0 (emmc2) on the Pi 4's U-Boot: `mmc list` shows it.
setenv au_if mmc
setenv au_devnum 0
setenv au_part_a 2
setenv au_part_b 3
setenv au_root_a /dev/mmcblk0p2
setenv au_root_b /dev/mmcblk0p3
# The PL011 UART on GPIO 14/15 (enable_uart=1, dtoverlay=disable-bt in config.txt).
setenv au_console "console=ttyAMA0,115200 console=tty1"
# Work buffers for the two env copies: above U-Boot's load addresses
# (kernel_addr_r 0x00080000 .. ramdisk_addr_r 0x02700000), below 1 GiB (the
# smallest Pi 4).
setenv au_buf1 0x30000000
setenv au_buf2 0x30010000
setenv au_tmp 0x30020000

if load mmc 0:1 ${pxefile_addr_r} atomup-ab.scr; then
  source ${pxefile_addr_r}
fi
echo "ATOMUP-RPI4: cannot run atomup-ab.scr from the boot partition -> reset"
reset
