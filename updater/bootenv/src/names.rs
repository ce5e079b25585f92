//! The env variable names of the A/B contract (bootloader-hooks/README.md),
//! defined once: the policy reads and writes the first three, the GRUB pair
//! scheme adds its generation and seal.

/// Slots to try, in order (`A B`, `B A`, `A`, `B` or empty).
pub const ORDER: &str = "ATOMUP_ORDER";
/// The slot on trial (`A`, `B` or empty).
pub const TRIAL: &str = "ATOMUP_TRIAL";
/// Boot attempts left for the trial slot (one decimal digit).
pub const LEFT: &str = "ATOMUP_LEFT";
/// GRUB pair only: the block's generation.
pub const SEQ: &str = "ATOMUP_SEQ";
/// GRUB pair only: `SEQ:ORDER:TRIAL:LEFT`, always the last line.
pub const SEAL: &str = "ATOMUP_SEAL";
