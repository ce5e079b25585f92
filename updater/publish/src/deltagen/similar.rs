//! Which old file a new file resembles, whatever its name. Upstream's
//! generator only pairs files by basename; a renamed library, a file moved
//! to another directory, or a config assembled from pieces of another
//! are invisible to it.
//!
//! Each file gets a **sketch**: the set of 64-byte windows that end at a
//! content-defined boundary (a gear rolling hash with 9 zero bits, so about
//! one window every 512 bytes, at the same places in both files wherever
//! their bytes agree). Two files share a feature exactly when they share
//! that 64-byte string, so the number of shared features estimates how many
//! bytes a patch could copy. An inverted index over the old tree's sketches
//! finds the best-matching old files for a new file in time proportional
//! to the new file's sketch. Features present in many old files (zero
//! pages, common headers) say nothing and are dropped.

use std::collections::HashMap;

use super::ObjectId;

/// Boundary when the low bits of the gear hash are zero: one feature per
/// ~512 bytes.
const MASK: u64 = (1 << 9) - 1;
/// A feature in more old files than this is common boilerplate.
const MAX_POSTINGS: usize = 16;

fn gear() -> &'static [u64; 256] {
    static G: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    G.get_or_init(|| {
        // splitmix64: fixed, well-mixed constants.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut g = [0u64; 256];
        for e in g.iter_mut() {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            *e = z ^ (z >> 31);
        }
        g
    })
}

/// The sorted, deduplicated features of `data`.
pub fn sketch(data: &[u8]) -> Vec<u64> {
    let g = gear();
    let mut h = 0u64;
    let mut out = Vec::with_capacity(data.len() / 400 + 1);
    for (i, &b) in data.iter().enumerate() {
        // Each step shifts the oldest byte's contribution out after 64 bytes.
        h = (h << 1).wrapping_add(g[usize::from(b)]);
        if i >= 63 && h & MASK == 0 {
            out.push(h);
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Old files by feature.
#[derive(Default)]
pub struct Index {
    files: Vec<ObjectId>,
    postings: HashMap<u64, Vec<u32>>,
}

impl Index {
    pub fn add(&mut self, id: ObjectId, features: &[u64]) {
        let n = self.files.len() as u32;
        self.files.push(id);
        for f in features {
            let p = self.postings.entry(*f).or_default();
            // One entry past the cap marks the feature as common.
            if p.len() <= MAX_POSTINGS {
                p.push(n);
            }
        }
    }

    /// Old files sharing features with `features`, most shared first (at most `k`).
    pub fn best(&self, features: &[u64], k: usize) -> Vec<(ObjectId, u32)> {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for f in features {
            if let Some(p) = self.postings.get(f) {
                if p.len() <= MAX_POSTINGS {
                    for &i in p {
                        *counts.entry(i).or_default() += 1;
                    }
                }
            }
        }
        let mut v: Vec<(u32, u32)> = counts.into_iter().collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v.into_iter()
            .map(|(i, c)| (self.files[i as usize], c))
            .collect()
    }
}

/// Shared features of two sorted sketches.
pub fn shared(a: &[u64], b: &[u64]) -> u32 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed.max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A file made of an old file's bytes with an insertion is found as that
    /// file's closest match among unrelated ones, whatever the names.
    #[test]
    fn edited_copy_is_found_among_unrelated_files() {
        let mut idx = Index::default();
        for s in 1..20u64 {
            idx.add(ObjectId([s as u8; 32]), &sketch(&noise(s, 50_000)));
        }
        let mut edited = noise(7, 50_000);
        edited.splice(20_000..20_000, noise(99, 3000));
        edited.truncate(45_000);
        let f = sketch(&edited);
        let best = idx.best(&f, 3);
        assert_eq!(best[0].0, ObjectId([7; 32]), "{best:?}");
        assert!(best[0].1 > 50, "{best:?}");
        assert!(best.get(1).is_none_or(|b| b.1 < 5), "{best:?}");
        assert!(shared(&f, &sketch(&noise(7, 50_000))) > 50);
        assert_eq!(shared(&f, &sketch(&noise(3, 50_000))), 0);
    }

    /// Features present in many old files (a shared header, boilerplate)
    /// are ignored: they would make every file look like every other.
    #[test]
    fn common_features_are_ignored() {
        let common = noise(12345, 20_000);
        let with_common = |s: u64| {
            let mut d = common.clone();
            d.extend(noise(s, 10_000));
            d
        };
        let mut few = Index::default();
        let mut many = Index::default();
        for s in 1..40u64 {
            let f = sketch(&with_common(s));
            if s < 3 {
                few.add(ObjectId([s as u8; 32]), &f);
            }
            many.add(ObjectId([s as u8; 32]), &f);
        }
        let probe = sketch(&common);
        assert!(
            !few.best(&probe, 3).is_empty(),
            "two files share the header: found"
        );
        assert!(
            many.best(&probe, 3).is_empty(),
            "39 files share it: boilerplate"
        );
    }
}
