//! libubootenv on the host as the oracle for U-Boot env tests: a disk-image
//! file holding the QEMU layout's redundant env, and the real `fw_printenv`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A zeroed image with room for a redundant env at 0x80000/0x84000 (the QEMU
/// layout) and an fw_env.config naming it by absolute path, as libubootenv
/// needs on a host. Returns (image, config).
pub fn redundant_image(dir: &Path) -> (PathBuf, PathBuf) {
    let img = std::path::absolute(dir.join("disk.img")).unwrap();
    std::fs::write(&img, vec![0u8; 0x90000]).unwrap();
    let cfg = dir.join("fw_env.config");
    let text = format!("{0} 0x80000 0x4000\n{0} 0x84000 0x4000\n", img.display());
    std::fs::write(&cfg, text).unwrap();
    (img, cfg)
}

/// Every `name=value` the real `fw_printenv -c cfg` prints, in its order.
pub fn fw_printenv(cfg: &Path) -> Vec<(String, String)> {
    let out = Command::new("fw_printenv")
        .arg("-c")
        .arg(cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fw_printenv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
        .collect()
}
