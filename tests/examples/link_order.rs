//! Makes the agent's function order (`updater/agent/link/<target>.order`,
//! read by lld through `updater/agent/build.rs`) from what the agent ran.
//! Run by `scripts/link-order`, not by the tests.
//!
//! Inputs: the static release binary, the linker map of that very build
//! (`ATOMUP_LINK_MAP`, with `--no-demangle`), and the logs of QEMU user mode
//! (`-d in_asm`, one per process) while the service benchmark's idle stage
//! ran it: one `atomup update` (a whole install) and one `atomup daemon`
//! (start, an up-to-date poll in a forked child, sleep, a reload and a
//! second poll). Each log lists the code blocks in the order they first ran.
//!
//! Output, one symbol per line, in this order:
//! 1. what the daemon ran up to its first `fork`: start-up, configuration,
//!    the loop (the part that stays resident while it sleeps);
//! 2. what only the daemon's log holds (its loop after the fork: the wait,
//!    the backoff, the sleep, the reload);
//! 3. the rest of the daemon's log (the poll, in its child);
//! 4. the rest of the install.
//!
//! Usage: link_order --elf BIN --map MAP LOG... > ORDER

use std::collections::HashSet;

/// A function's place in the binary: link-time address, size, symbol.
struct Func {
    start: u64,
    size: u64,
    name: String,
}

fn main() {
    let mut elf = None;
    let mut map = None;
    let mut logs = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--elf" => elf = args.next(),
            "--map" => map = args.next(),
            _ => logs.push(a),
        }
    }
    let (Some(elf), Some(map)) = (elf, map) else {
        eprintln!("usage: link_order --elf BIN --map MAP LOG...");
        std::process::exit(2);
    };
    let entry = entry_point(&std::fs::read(&elf).expect("reading the binary"));
    let funcs = functions(&std::fs::read_to_string(&map).expect("reading the map"));
    assert!(!funcs.is_empty(), "{map}: no .text input sections");

    // Per log, the function of each block in the order the blocks ran first.
    let mut runs: Vec<Vec<&str>> = Vec::new();
    for log in &logs {
        let text = std::fs::read_to_string(log).expect("reading a log");
        let blocks = block_addresses(&text);
        let Some(&first) = blocks.first() else {
            continue;
        };
        // The first block is the entry point: the load bias of a PIE.
        let bias = first.wrapping_sub(entry);
        let run: Vec<&str> = blocks
            .iter()
            .filter_map(|&a| containing(&funcs, a.wrapping_sub(bias)))
            .map(|f| f.name.as_str())
            .collect();
        eprintln!("{log}: {} blocks", run.len());
        runs.push(run);
    }
    let daemon = runs
        .iter()
        .position(|r| r.contains(&"fork"))
        .expect("no log of the daemon (none ran fork)");
    let d = runs.remove(daemon);
    // The daemon's log holds its children's blocks too (QEMU's log file is
    // inherited). A child starts in `worker::child` (never inlined) and
    // ends in `std::process::exit`; a child translates again what it runs,
    // the daemon only what it never ran. So: the daemon up to the first
    // child; the daemon again from the first child's exit to the second
    // child (the benchmark's reload polls again).
    let fork = d.iter().position(|n| *n == "fork").unwrap();
    let is_child_start = |n: &str| n.contains("6worker5child");
    let child1 = fork
        + d[fork..]
            .iter()
            .position(|n| is_child_start(n))
            .expect("no poll closure after the fork");
    let exit1 = child1
        + d[child1..]
            .iter()
            .position(|n| n.contains("3std7process4exit"))
            .expect("the first child did not exit");
    let child2 = exit1
        + d[exit1..]
            .iter()
            .position(|n| is_child_start(n))
            .expect("no second poll (the benchmark reloads and polls again)");
    let groups: [Vec<&str>; 4] = [
        d[..child1].to_vec(),
        d[exit1..child2].to_vec(),
        d.clone(),
        runs.iter().flatten().copied().collect(),
    ];
    let sizes: std::collections::HashMap<&str, u64> =
        funcs.iter().map(|f| (f.name.as_str(), f.size)).collect();
    let size_of = |n: &str| sizes.get(n).copied().unwrap_or(0);
    let mut out: Vec<&str> = Vec::new();
    let mut placed = HashSet::new();
    for (i, group) in groups.iter().enumerate() {
        let (mut count, mut bytes) = (0, 0);
        for &name in group {
            if placed.insert(name) {
                out.push(name);
                count += 1;
                bytes += size_of(name);
            }
        }
        eprintln!("group {}: {count} functions, {bytes} bytes", i + 1);
    }
    for name in out {
        println!("{name}");
    }
}

/// `e_entry` of a little-endian ELF64.
fn entry_point(elf: &[u8]) -> u64 {
    assert!(
        elf.len() > 32 && &elf[..4] == b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a little-endian ELF64"
    );
    u64::from_le_bytes(elf[24..32].try_into().unwrap())
}

/// The `.text` input sections of an lld map (`VMA LMA Size Align
/// file:(section)`), each named by its function: `.text.SYM` is SYM's own
/// section; a whole `.text` (C code built without function sections) is
/// named by the first real symbol in it (not `$x`/`$d`, aarch64's mapping
/// symbols).
fn functions(map: &str) -> Vec<Func> {
    let mut funcs: Vec<Func> = Vec::new();
    let mut pending: Option<(u64, u64)> = None;
    for line in map.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 {
            continue;
        }
        let (Ok(start), Ok(size)) = (u64::from_str_radix(f[0], 16), u64::from_str_radix(f[2], 16))
        else {
            continue;
        };
        if let Some((_, sec)) = f[4].rsplit_once(":(") {
            pending = None;
            let sec = sec.trim_end_matches(')');
            if let Some(name) = sec.strip_prefix(".text.") {
                funcs.push(Func {
                    start,
                    size,
                    name: name.to_owned(),
                });
            } else if sec == ".text" && size > 0 {
                pending = Some((start, size));
            }
        } else if let Some((s, len)) = pending {
            if !f[4].starts_with('$') {
                funcs.push(Func {
                    start: s,
                    size: len,
                    name: f[4].to_owned(),
                });
                pending = None;
            }
        }
    }
    funcs.sort_by_key(|f| f.start);
    funcs
}

fn containing(funcs: &[Func], addr: u64) -> Option<&Func> {
    let i = funcs.partition_point(|f| f.start <= addr);
    let f = funcs.get(i.checked_sub(1)?)?;
    (addr < f.start + f.size.max(1)).then_some(f)
}

/// The address of each block in a QEMU `-d in_asm` log: the first
/// instruction line after each `IN:` header.
fn block_addresses(log: &str) -> Vec<u64> {
    let mut out = Vec::new();
    let mut want = false;
    for line in log.lines() {
        if line.starts_with("IN:") {
            want = true;
        } else if want {
            if let Some(hex) = line.strip_prefix("0x") {
                let hex = hex.split(':').next().unwrap_or("");
                if let Ok(a) = u64::from_str_radix(hex, 16) {
                    out.push(a);
                }
                want = false;
            }
        }
    }
    out
}
