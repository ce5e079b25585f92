//! Reading an env of the largest size the agent accepts holds it about once
//! (issue 11.6): a redundant U-Boot env of `MAX_ENV_SIZE` per copy, both
//! copies valid and full of the smallest variables (the worst case for
//! per-variable overhead), is read with a peak of allocated bytes below 2.5
//! times one copy (1.53 measured), where reading both copies, parsing both
//! into a list of pairs and cloning one came to 33 times (and, parsing with
//! a linear search per variable, 275 s). Measured with a counting global
//! allocator (this test binary has it to itself: one test).

use atomup_bootctl::uboot::MAX_ENV_SIZE;
use atomup_bootctl::{Bootloader, UbootEnv};
use atomup_bootenv::uboot::{serialize_copy, Layout};
use atomup_bootenv::Vars;
use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static NOW: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: AllocLayout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            let now = NOW.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: AllocLayout) {
        System.dealloc(p, l);
        NOW.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated (above what was live before) while `f` runs.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = NOW.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    (out, PEAK.load(Ordering::SeqCst) - base)
}

#[test]
fn reading_the_largest_env_holds_it_about_once() {
    let dir = std::env::temp_dir().join(format!("atomup-env-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let size = MAX_ENV_SIZE;
    // Short unique names, empty values: ~8 bytes per variable.
    let mut data = Vec::new();
    let mut n = 0usize;
    while data.len() + 16 < size - 8 {
        data.extend_from_slice(format!("v{n:x}=\0").as_bytes());
        n += 1;
    }
    data.push(0);
    let vars = Vars::parse_uboot(&data).unwrap();
    drop(data);
    let img = dir.join("env.img");
    let mut bytes = serialize_copy(&vars, Layout::Redundant, size, 1).unwrap();
    bytes.extend(serialize_copy(&vars, Layout::Redundant, size, 2).unwrap());
    std::fs::write(&img, &bytes).unwrap();
    drop(bytes);
    let cfg = dir.join("fw_env.config");
    std::fs::write(
        &cfg,
        format!(
            "{0} 0x0 {size:#x}\n{0} {size:#x} {size:#x}\n",
            img.display()
        ),
    )
    .unwrap();
    let mut env = UbootEnv::from_config_file(&cfg, &dir).unwrap();
    let (read, peak) = peak_during(|| env.read().unwrap().unwrap());
    assert_eq!(read, vars, "the env did not read back");
    eprintln!(
        "{n} variables in a {size}-byte copy: peak {peak} bytes allocated while reading ({:.2} x the copy)",
        peak as f64 / size as f64
    );
    assert!(
        peak < size * 5 / 2,
        "reading a {size}-byte env allocated up to {peak} bytes"
    );
    // Sizes above the bound are refused before anything is read.
    std::fs::write(&cfg, format!("{} 0x0 {:#x}\n", img.display(), size + 1)).unwrap();
    assert!(UbootEnv::from_config_file(&cfg, &dir).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
