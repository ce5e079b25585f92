//! The `G` op's rebuild in a helper process. The rebuilding library
//! (preflate) asserts on some damaged correction streams, and the device
//! binary aborts on panic: run in the applier, a damaged record (it takes a
//! signing key to ship one) would kill the update half way. In a helper,
//! that is one failed object with a clear error, and the applier refuses the
//! part as for any other bad op; the target is an inactive slot, so nothing
//! live is touched either way.
//!
//! Protocol: the helper (`atomup gzip-rebuild`, set by [`use_helper`])
//! reads `u32 LE record length ‖ record ‖ text` from stdin, to its end,
//! and writes `u32 LE private peak in KiB ‖ the rebuilt file` to stdout
//! (its own VmHWM, which starts afresh at exec, minus its RssFile: the pages
//! of the executable, the engine's own binary and so already in the
//! device's RAM; `wait4`'s figure would include the fork's copy of the
//! parent); exit 0 means success, 1 a record
//! that does not rebuild (said on stderr), anything else (a signal) a
//! crash. It reads all its input before it writes, so the parent can write
//! everything, then read: no deadlock on full pipes.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use atomup_ostree::gzip;

static HELPER: OnceLock<PathBuf> = OnceLock::new();
static PEAK_KIB: AtomicU64 = AtomicU64::new(0);

/// The largest private peak (KiB: VmHWM minus the pages of the executable) a
/// helper of this process reported, 0 if none ran. What a rebuild adds to
/// the device's RAM on top of the engine.
pub fn helper_peak_kib() -> u64 {
    PEAK_KIB.load(Ordering::Relaxed)
}

/// Runs every later `G` rebuild of this process in `program gzip-rebuild`
/// (the agent passes its own executable). Without it, rebuilds run in
/// process, as for library users and tests that never meet damaged records.
pub fn use_helper(program: PathBuf) {
    let _ = HELPER.set(program);
}

pub(crate) fn helper() -> Option<&'static Path> {
    HELPER.get().map(PathBuf::as_path)
}

/// The largest file a rebuild can produce: the text, deflate's stored-block
/// overhead (5 bytes per 64 KiB), the header and the trailer.
const MAX_OUTPUT: u64 = gzip::MAX_TEXT + gzip::MAX_TEXT / 8192 + gzip::MAX_HEADER + 64;

/// Rebuilds in `program`; the outer error is a helper that cannot run, the
/// inner one a record that does not rebuild or crashed the helper.
pub(crate) fn rebuild_in(
    program: &Path,
    record: &[u8],
    text: &[u8],
) -> std::io::Result<atomup_ostree::Result<Vec<u8>>> {
    let mut child = Command::new(program)
        .arg("gzip-rebuild")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut input = child.stdin.take().expect("piped stdin");
    let written = input
        .write_all(&(record.len() as u32).to_le_bytes())
        .and_then(|()| input.write_all(record))
        .and_then(|()| input.write_all(text));
    drop(input);
    let mut out = Vec::new();
    let read = child
        .stdout
        .take()
        .expect("piped stdout")
        .take(MAX_OUTPUT + 5)
        .read_to_end(&mut out);
    let status = child.wait()?;
    let fault = |why| {
        Ok(Err(atomup_ostree::Error::Malformed {
            what: "gzip rebuild",
            why,
        }))
    };
    match status.code() {
        Some(0)
            if written.is_ok()
                && read.is_ok()
                && (4..=MAX_OUTPUT + 4).contains(&(out.len() as u64)) =>
        {
            let peak = u32::from_le_bytes([out[0], out[1], out[2], out[3]]);
            PEAK_KIB.fetch_max(u64::from(peak), Ordering::Relaxed);
            out.drain(..4);
            Ok(Ok(out))
        }
        Some(0) => {
            written?;
            read?;
            fault("the helper wrote more than a rebuilt file can be")
        }
        Some(1) => fault("the record does not rebuild the file"),
        _ => fault("the rebuilding helper crashed on the record (a damaged record)"),
    }
}

/// The helper's side: one rebuild from stdin to stdout. Input beyond the
/// caps is refused before it is read whole.
pub fn serve() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut stdin = std::io::stdin().lock();
    let mut len = [0u8; 4];
    stdin.read_exact(&mut len)?;
    let record_len = u64::from(u32::from_le_bytes(len));
    if record_len > gzip::MAX_RECORD {
        return Err("gzip-rebuild: record over its cap".into());
    }
    let mut record = vec![0u8; record_len as usize];
    stdin.read_exact(&mut record)?;
    let mut text = Vec::new();
    (&mut stdin)
        .take(gzip::MAX_TEXT + 1)
        .read_to_end(&mut text)?;
    let file = gzip::rebuild_encoded(&record, &text)?;
    // File pages only grow while the helper runs (nothing reclaims them on
    // a device with room to spare), so peak minus file pages is what the
    // helper itself held at its peak, give or take pages first touched late.
    let kib = |key| atomup_fsio::proc_self("status", key).unwrap_or(0);
    let peak = u32::try_from(kib("VmHWM:").saturating_sub(kib("RssFile:"))).unwrap_or(u32::MAX);
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&peak.to_le_bytes())?;
    stdout.write_all(&file)?;
    stdout.flush()?;
    Ok(())
}
