//! What the power-cut campaigns share (`tests/tests/crash_host.rs`,
//! `tests/tests/crash_qemu.rs`): the agent built with its crash points, the
//! trace of the points an operation passes, the campaign's seed (rotating per
//! run, printed, and given back through `ATOMUP_CRASH_SEED` to reproduce a
//! run), a small seeded generator, and the report table (point, cuts,
//! outcomes, totals).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The agent with its crash points (`--profile faults --features failpoints`,
/// in `target/faults/`, apart from the plain debug `atomup`). Built here on
/// first use (a no-op when fresh; `./test` builds it before the tests): a
/// nested cargo is fine, the `faults` profile has a build lock of its own.
pub fn faults_atomup() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(crate::workspace_root())
            .args([
                "build",
                "--quiet",
                "--locked",
                "--profile",
                "faults",
                "-p",
                "atomup",
                "--features",
                "failpoints",
            ])
            .output()
            .expect("running cargo");
        assert!(
            out.status.success(),
            "building the agent with its crash points failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = crate::target_dir().join("faults").join("atomup");
        assert!(bin.is_file(), "{} is missing", bin.display());
        bin
    })
    .clone()
}

/// One hit of a crash point, as `ATOMUP_FAILPOINT_TRACE` records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub name: String,
    /// Which hit of that point (from 0).
    pub k: u64,
    /// Bytes of the write (0 at a point between two steps).
    pub len: u64,
    /// What was written (a path, a URL), `-` at a point between steps.
    pub label: String,
}

impl Hit {
    /// Whether the point cuts a write (torn at a byte offset) rather than
    /// between two steps.
    pub fn is_write(&self) -> bool {
        WRITE_POINTS.contains(&self.name.as_str())
    }
}

/// The crash points that tear a write at a byte offset (see atomup-faults).
pub const WRITE_POINTS: &[&str] = &[
    "env.write",
    "record.write",
    "persist.write",
    "fetch.download",
];

/// Reads a trace file (`NAME K LEN LABEL` per line).
pub fn read_trace(path: &Path) -> Vec<Hit> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (name, k, len, label) = (f.next(), f.next(), f.next(), f.next());
            let parsed = (|| {
                Some(Hit {
                    name: name?.to_owned(),
                    k: k?.parse().ok()?,
                    len: len?.parse().ok()?,
                    label: label?.to_owned(),
                })
            })();
            parsed.unwrap_or_else(|| panic!("bad trace line `{l}` in {}", path.display()))
        })
        .collect()
}

/// The campaign's seed: `ATOMUP_CRASH_SEED` if set (to reproduce a run),
/// else a new one every run (so CI's subsets rotate). Printed either way.
pub fn seed(campaign: &str, rerun: &str) -> u64 {
    let seed = match std::env::var("ATOMUP_CRASH_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("ATOMUP_CRASH_SEED must be an integer, got `{s}`")),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            (t.as_nanos() as u64 ^ u64::from(std::process::id())) % 1_000_000_000
        }
    };
    eprintln!("{campaign}: seed {seed} (reproduce: ATOMUP_CRASH_SEED={seed} {rerun})");
    seed
}

/// Whether the full campaign was asked for (`ATOMUP_CRASH_FULL=1`) rather
/// than the seeded subset CI runs.
pub fn full() -> bool {
    std::env::var("ATOMUP_CRASH_FULL").is_ok_and(|v| v == "1")
}

/// splitmix64: small, seeded, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// The campaign report: per point, the cuts made and what each led to.
#[derive(Default, Debug)]
pub struct Table {
    rows: BTreeMap<String, Row>,
    columns: Vec<String>,
}

#[derive(Default, Debug)]
struct Row {
    cuts: u64,
    outcomes: BTreeMap<String, u64>,
}

impl Table {
    /// A table whose outcome columns come in this order (others are added
    /// after them as they appear).
    pub fn new(columns: &[&str]) -> Table {
        Table {
            rows: BTreeMap::new(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }
    }

    /// One cut at `point` with these outcomes (each counted once).
    pub fn add(&mut self, point: &str, outcomes: &[&str]) {
        let row = self.rows.entry(point.to_owned()).or_default();
        row.cuts += 1;
        for o in outcomes {
            *row.outcomes.entry(o.to_string()).or_default() += 1;
            if !self.columns.iter().any(|c| c == o) {
                self.columns.push(o.to_string());
            }
        }
    }

    pub fn cuts(&self) -> u64 {
        self.rows.values().map(|r| r.cuts).sum()
    }

    /// How many cuts had outcome `o`.
    pub fn total(&self, o: &str) -> u64 {
        self.rows
            .values()
            .map(|r| r.outcomes.get(o).copied().unwrap_or(0))
            .sum()
    }

    /// The table as text: one row per point, then the totals.
    pub fn render(&self, title: &str) -> String {
        let point_w = self
            .rows
            .keys()
            .map(|k| k.len())
            .chain([5, "total".len()])
            .max()
            .unwrap_or(5);
        let mut out = format!("{title}\n{:<point_w$}  {:>5}", "point", "cuts");
        for c in &self.columns {
            out += &format!("  {c:>w$}", w = c.len().max(3));
        }
        out.push('\n');
        let line = |name: &str, cuts: u64, get: &dyn Fn(&str) -> u64| {
            let mut l = format!("{name:<point_w$}  {cuts:>5}");
            for c in &self.columns {
                l += &format!("  {:>w$}", get(c), w = c.len().max(3));
            }
            l + "\n"
        };
        for (name, row) in &self.rows {
            out += &line(name, row.cuts, &|c| {
                row.outcomes.get(c).copied().unwrap_or(0)
            });
        }
        out += &line("total", self.cuts(), &|c| self.total(c));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator is a pure function of its seed (a campaign is
    /// reproducible from the seed it prints), and different seeds differ.
    #[test]
    fn the_generator_reproduces_from_its_seed() {
        let take = |seed| {
            let mut r = Rng::new(seed);
            (0..8).map(|_| r.below(1000)).collect::<Vec<_>>()
        };
        assert_eq!(take(7), take(7));
        assert_ne!(take(7), take(8));
    }

    /// The table counts cuts and outcomes per point and in total.
    #[test]
    fn the_table_adds_up() {
        let mut t = Table::new(&["old", "new"]);
        t.add("env.write", &["old"]);
        t.add("env.write", &["new"]);
        t.add("apply.seed", &["old", "late"]);
        assert_eq!((t.cuts(), t.total("old"), t.total("late")), (3, 2, 1));
        let text = t.render("t");
        assert!(
            text.contains("\nenv.write       2    1    1     0\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntotal           3    2    1     1\n"),
            "{text}"
        );
    }
}
