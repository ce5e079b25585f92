use super::*;
use std::io::Cursor;
use std::process::Command;

fn scratch(name: &str) -> atomup_scratch::ScratchDir {
    atomup_scratch::ScratchDir::new(&format!("bundle-{name}"))
}

const LONG: &str = "deltas/Ab/CdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefghijk-\
                    LmNoPqRsTuVwXyZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ/superblock";

fn sample() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "atomup/stable/qemu-virt/release",
            b"atomup-release 1\n".to_vec(),
        ),
        (LONG, vec![7u8; 1000]),
        ("deltas/Ab/CdEf/0", vec![1u8; 512]),
        ("deltas/Ab/CdEf/1", Vec::new()),
    ]
}

fn build(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut w = Writer::new(Vec::new(), 1_700_000_000);
    for (name, data) in members {
        w.add(name, data.len() as u64, &mut data.as_slice())
            .unwrap();
    }
    let (bytes, size) = w.finish().unwrap();
    assert_eq!(size, bytes.len() as u64);
    bytes
}

/// What we write, scan finds at the right offsets, long names included.
#[test]
fn written_bundles_scan_back_exactly() {
    let members = sample();
    let bytes = build(&members);
    let mut r = Cursor::new(&bytes);
    let first = first(&mut r).unwrap();
    assert_eq!(first.name, "atomup/stable/qemu-virt/release");
    let found = scan(&mut r).unwrap();
    assert_eq!(found.len(), members.len());
    for (m, (name, data)) in found.iter().zip(&members) {
        assert_eq!(&m.name, name);
        assert_eq!(
            &bytes[m.offset as usize..(m.offset + m.size) as usize],
            &data[..]
        );
    }
}

/// The real `tar` lists and extracts what we write, byte for byte.
#[test]
fn gnu_tar_lists_and_extracts_our_bundles() {
    let d = scratch("tar-reads");
    let members = sample();
    std::fs::write(d.join("b.tar"), build(&members)).unwrap();
    let out = Command::new("tar")
        .arg("tf")
        .arg(d.join("b.tar"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let names: Vec<&str> = members.iter().map(|m| m.0).collect();
    assert_eq!(listed, names);
    let x = d.join("x");
    std::fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .arg("xf")
        .arg(d.join("b.tar"))
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    for (name, data) in &members {
        assert_eq!(&std::fs::read(x.join(name)).unwrap(), data, "{name}");
    }
    std::fs::remove_dir_all(&d).unwrap();
}

/// A ustar archive made by the real `tar` scans too (directories skipped).
#[test]
fn we_read_what_gnu_tar_writes_in_ustar_format() {
    let d = scratch("tar-writes");
    let src = d.join("src");
    std::fs::create_dir_all(src.join("deltas/x")).unwrap();
    std::fs::write(src.join("release"), b"r").unwrap();
    std::fs::write(src.join("deltas/x/superblock"), vec![3u8; 700]).unwrap();
    let st = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(d.join("t.tar"))
        .arg("-C")
        .arg(&src)
        .args(["release", "deltas"])
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(d.join("t.tar")).unwrap();
    let found = scan(&mut Cursor::new(&bytes)).unwrap();
    let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["release", "deltas/x/superblock"]);
    assert_eq!(found[1].size, 700);
    std::fs::remove_dir_all(&d).unwrap();
}

fn refuses(bytes: &[u8]) -> String {
    scan(&mut Cursor::new(bytes)).unwrap_err().to_string()
}

/// A flipped bit in a header, a member cut short and a header cut short are
/// refused with the offset or the member.
#[test]
fn corrupt_and_truncated_bundles_are_refused() {
    let bytes = build(&sample());
    let mut flipped = bytes.clone();
    flipped[BLOCK * 2 + 3] ^= 1; // inside the second header's name
    assert_eq!(
        refuses(&flipped),
        "not a bundle: the header at byte 1024 fails its checksum"
    );
    let cut = &bytes[..BLOCK * 3 + 10];
    assert!(refuses(cut).starts_with("bundle ends inside member `deltas/Ab/"));
    let cut = &bytes[..BLOCK + 100];
    assert_eq!(
        refuses(cut),
        "bundle ends inside member `atomup/stable/qemu-virt/release` (truncated?)"
    );
    // Cut exactly between members: the missing end marker gives it away.
    let cut = &bytes[..BLOCK * 2];
    assert_eq!(
        refuses(cut),
        "not a bundle: the header at byte 1024 is missing or cut short: no end marker (truncated?)"
    );
    assert_eq!(
        first(&mut Cursor::new(&[0u8; 1024][..]))
            .unwrap_err()
            .to_string(),
        "not a bundle: the header at byte 0 is an empty archive"
    );
    assert_eq!(
        refuses(&[b'x'; 512]),
        "not a bundle: the header at byte 0 is not a POSIX ustar header"
    );
}

/// Links, FIFOs, pax headers, unsafe names and repeated names are refused.
#[test]
fn members_a_device_must_not_act_on_are_refused() {
    let bytes = build(&sample()[..1]);
    let retype = |t: u8| {
        let mut h: [u8; BLOCK] = bytes[..BLOCK].try_into().unwrap();
        h[156] = t;
        let s = format!("{:06o}", checksum(&h));
        h[148..154].copy_from_slice(s.as_bytes());
        let mut b = h.to_vec();
        b.extend_from_slice(&bytes[BLOCK..]);
        b
    };
    assert!(refuses(&retype(b'2')).ends_with("is a symbolic link, not a regular file"));
    assert!(refuses(&retype(b'6')).ends_with("is a FIFO, not a regular file"));
    assert!(refuses(&retype(b'x')).contains("tar extension header"));
    for name in ["/etc/passwd", "a/../b", "a//b", ".", "a\\b"] {
        assert!(encode_header(name, 1, 0).is_err(), "{name}");
        let mut h = encode_header("placeholder", 1, 0).unwrap();
        h[..100].fill(0);
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{:06o}", checksum(&h));
        h[148..154].copy_from_slice(s.as_bytes());
        assert!(
            matches!(parse_header(&h, 0), Err(BundleError::BadName { .. })),
            "{name}"
        );
    }
    let twice = build(&[("a", vec![1]), ("a", vec![2])]);
    assert_eq!(refuses(&twice), "bundle member `a` appears twice");
}

/// A bundle of many tiny members stops at the member limit instead of
/// growing memory without bound.
#[test]
fn member_count_is_bounded() {
    let mut w = Writer::new(Vec::new(), 0);
    for i in 0..=MAX_MEMBERS {
        w.add(&format!("m{i}"), 0, &mut io::empty()).unwrap();
    }
    let (bytes, _) = w.finish().unwrap();
    assert_eq!(
        refuses(&bytes),
        format!("bundle holds more than {MAX_MEMBERS} members")
    );
}

/// The header parser never panics on arbitrary blocks (a quick sweep; the
/// fuzz target does the rest).
#[test]
fn header_parser_survives_arbitrary_blocks() {
    let base = encode_header("deltas/x/0", 12345, 99).unwrap();
    for i in 0..BLOCK {
        for v in [0u8, 0xff, b'7', b'/', b' '] {
            let mut h = base;
            h[i] = v;
            let _ = parse_header(&h, 0);
        }
    }
    assert_eq!(
        parse_header(&base, 0).unwrap(),
        Header::File {
            name: "deltas/x/0".into(),
            size: 12345
        }
    );
}

/// A member is copied only when its size and digest hold, through a
/// `.partial` that never looks complete; a cut stream or a wrong digest
/// leaves nothing in the cache; a good copy is reused.
#[test]
fn members_are_extracted_only_when_their_digest_holds() {
    use sha2::Digest;
    let members = sample();
    let bytes = build(&members);
    let found = scan(&mut Cursor::new(&bytes)).unwrap();
    let m = &found[1];
    let data = &members[1].1;
    let good = Expect {
        size: data.len() as u64,
        sha256: sha2::Sha256::digest(data).into(),
    };
    let cache = scratch("extract");
    let p = extract_verified(&mut Cursor::new(&bytes), m, good, &cache)
        .unwrap()
        .path;
    assert_eq!(&std::fs::read(&p).unwrap(), data);
    // Reused: a bundle that no longer holds the bytes still finds the copy.
    let mut gone = bytes.clone();
    gone[m.offset as usize] ^= 1;
    assert_eq!(
        extract_verified(&mut Cursor::new(&gone), m, good, &cache)
            .unwrap()
            .path,
        p
    );
    std::fs::remove_file(&p).unwrap();
    let e = extract_verified(&mut Cursor::new(&gone), m, good, &cache).unwrap_err();
    assert!(e.to_string().contains("sha256 differs"), "{e}");
    // A stick pulled mid-copy: the stream ends early.
    let cut = &bytes[..(m.offset + 10) as usize];
    let e = extract_verified(&mut Cursor::new(cut), m, good, &cache).unwrap_err();
    assert!(matches!(e, BundleError::Truncated { .. }), "{e}");
    let left: Vec<_> = std::fs::read_dir(&*cache).unwrap().collect();
    assert!(left.is_empty(), "nothing half-written stays in the cache");
    let wrong_size = Expect { size: 1, ..good };
    assert!(extract_verified(&mut Cursor::new(&bytes), m, wrong_size, &cache).is_err());
}

/// The bundle as a stick that is pulled once `cut_at` bytes of it were
/// read (every later read fails, as an unplugged USB disk does), counting
/// the bytes read from it.
struct Stick<'a> {
    bytes: Cursor<&'a [u8]>,
    cut_at: Option<u64>,
    read: u64,
}

impl std::io::Read for Stick<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let pos = self.bytes.position();
        if self.cut_at.is_some_and(|c| pos >= c) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        let room = self.cut_at.map_or(buf.len() as u64, |c| c - pos) as usize;
        let len = buf.len().min(room);
        let n = self.bytes.read(&mut buf[..len])?;
        self.read += n as u64;
        Ok(n)
    }
}

impl std::io::Seek for Stick<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.bytes.seek(to)
    }
}

/// A copy cut by a pulled stick keeps its `.partial`; the next extraction
/// hashes that prefix and reads only the rest of the member from the bundle;
/// a `.partial` whose bytes are wrong is copied again whole, not refused.
#[test]
fn a_copy_cut_by_a_pulled_stick_resumes_where_it_stopped() {
    use sha2::Digest;
    let data: Vec<u8> = (0..300 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let members = vec![
        ("atomup/stable/b/release", b"meta".to_vec()),
        ("deltas/Ab/CdEf/0", data.clone()),
    ];
    let bytes = build(&members);
    let found = scan(&mut Cursor::new(&bytes)).unwrap();
    let m = &found[1];
    let good = Expect {
        size: data.len() as u64,
        sha256: sha2::Sha256::digest(&data).into(),
    };
    let cache = scratch("resume");
    let cut = 100 * 1024;
    let mut pulled = Stick {
        bytes: Cursor::new(&bytes),
        cut_at: Some(m.offset + cut),
        read: 0,
    };
    let e = extract_verified(&mut pulled, m, good, &cache).unwrap_err();
    assert!(matches!(e, BundleError::Io(_)), "{e}");
    let hex: String = good.sha256.iter().map(|b| format!("{b:02x}")).collect();
    let partial = cache.join(format!("{hex}.partial"));
    assert_eq!(std::fs::metadata(&partial).unwrap().len(), cut);

    let mut again = Stick {
        bytes: Cursor::new(&bytes),
        cut_at: None,
        read: 0,
    };
    let got = extract_verified(&mut again, m, good, &cache).unwrap();
    assert_eq!(got.resumed, cut);
    assert_eq!(again.read, m.size - cut, "only the rest was read");
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert!(!partial.exists());

    // A damaged prefix: the digest fails, the member is copied once more whole.
    std::fs::remove_file(&got.path).unwrap();
    let mut bad = data[..cut as usize].to_vec();
    bad[10] ^= 1;
    std::fs::write(&partial, &bad).unwrap();
    let mut whole = Stick {
        bytes: Cursor::new(&bytes),
        cut_at: None,
        read: 0,
    };
    let got = extract_verified(&mut whole, m, good, &cache).unwrap();
    assert_eq!(got.resumed, 0);
    assert_eq!(whole.read, m.size - cut + m.size);
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
}
