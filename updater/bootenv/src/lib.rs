//! Pure bootloader environment formats (U-Boot env copies, GRUB's grubenv
//! block, `/etc/fw_env.config`): parse and serialize bytes, no I/O.
