//! One error type for every format in this crate. Each variant names what was
//! being decoded so the binary's error chain says which object or field was bad
//! without re-printing a cause.

use crate::object::ObjectId;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed {what}: {why}")]
    Malformed {
        what: &'static str,
        why: &'static str,
    },
    #[error("invalid tree entry name in {what}")]
    BadName { what: &'static str },
    #[error("{what} entries are not strictly sorted (duplicate or out of order)")]
    NotSorted { what: &'static str },
    #[error("{what} checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        what: &'static str,
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error("{what} exceeds its limit of {limit} bytes")]
    TooLarge { what: &'static str, limit: u64 },
    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: u64 },
    #[error("signature check failed: {why}")]
    Signature { why: &'static str },
    #[error("invalid key in {what}")]
    BadKey { what: &'static str },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) const fn malformed(what: &'static str, why: &'static str) -> Self {
        Error::Malformed { what, why }
    }
}
