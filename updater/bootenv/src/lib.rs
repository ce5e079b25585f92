//! Pure bootloader environment formats (U-Boot env copies, GRUB's grubenv
//! block, `/etc/fw_env.config`): parse and serialize bytes, no I/O. Kept apart
//! from the device I/O so every parser is a plain function of its bytes that
//! tests and fuzzers can drive.

pub mod fuzz;
pub mod fwconfig;
pub mod grub;
pub mod grub_pair;
pub mod names;
pub mod uboot;
pub mod vars;

pub use fwconfig::{ConfigError, EnvDevice, FwEnvConfig};
pub use vars::{Vars, VarsError};
