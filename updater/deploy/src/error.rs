//! Errors of the device-side applier. Each says what was being done and to
//! which path or object; the underlying cause is the `source`, never repeated.

use std::path::PathBuf;

use atomup_ostree::ObjectId;

pub type Result<T, E = DeployError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what}")]
    Format {
        what: &'static str,
        #[source]
        source: atomup_ostree::Error,
    },
    #[error("{what} is not signed by a trusted key")]
    Signature {
        what: &'static str,
        #[source]
        source: atomup_ostree::Error,
    },
    #[error("{what} exceeds its size limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("part {index}: {why}")]
    Part { index: usize, why: &'static str },
    #[error("delta starts from commit {from}; --from-root and --from-meta are required")]
    NeedFrom { from: ObjectId },
    #[error("from-meta commit does not match the delta's from-commit {expected}")]
    FromMismatch { expected: ObjectId },
    #[error("metadata object {id} ({kind}) not found in the delta, from-meta or fallback repo")]
    MissingMeta { id: ObjectId, kind: &'static str },
    #[error("content object {id} is neither in the delta nor in the from-commit")]
    MissingContent { id: ObjectId },
    #[error("{what} {id} at {path} does not match its checksum (found {actual})")]
    Corrupt {
        what: &'static str,
        id: ObjectId,
        path: PathBuf,
        actual: ObjectId,
    },
    #[error("fallback object {id} needs --fallback-repo")]
    NeedFallbackRepo { id: ObjectId },
    #[error("written tree does not match the commit: {what} expected {expected}, found {actual}")]
    VerifyMismatch {
        what: &'static str,
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("unsupported file type at {path} in the written tree")]
    BadFileType { path: PathBuf },
    #[error("the target directory must not be the from-root")]
    TargetIsSource,
    #[error("tree is deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("the {which}'s tree expands to more than {limit} {what} (counting each place a shared subtree appears)")]
    TreeTooLarge {
        which: &'static str,
        what: &'static str,
        limit: u64,
    },
    #[error("the commit uses the reserved name {name} at its root")]
    ReservedName { name: &'static str },
    #[error("uid/gid 4294967295 is not a valid owner")]
    BadOwner,
    #[error("the delta's {what} is {found}, expected {expected}")]
    DeltaMismatch {
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error(
        "the delta needs fallback objects, which this build cannot read (feature archive-fallback)"
    )]
    NoFallbackSupport,
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> DeployError {
    let path = path.into();
    move |source| DeployError::Io { what, path, source }
}

pub(crate) fn fmt(what: &'static str) -> impl FnOnce(atomup_ostree::Error) -> DeployError {
    move |source| DeployError::Format { what, source }
}
