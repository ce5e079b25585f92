//! Errors of the `/etc` carry-over. Each says what was being done and to
//! which path; the underlying cause is the `source`, never repeated.

use std::path::PathBuf;

pub type Result<T, E = EtcError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EtcError {
    #[error("cannot {what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {what}")]
    Deploy {
        what: &'static str,
        #[source]
        source: Box<atomup_deploy::DeployError>,
    },
    #[error("invalid {what}")]
    Format {
        what: &'static str,
        #[source]
        source: atomup_ostree::Error,
    },
    #[error("{what} has more than {limit} {unit}")]
    TooLarge {
        what: String,
        limit: u64,
        unit: &'static str,
    },
    #[error("{path} line {line}: {why}")]
    Owned {
        path: PathBuf,
        line: usize,
        why: &'static str,
    },
    #[error("merge record {path}: {why}")]
    Record { path: PathBuf, why: String },
    #[error(
        "{path} changed while it was being carried into the new slot's /etc (run the update again)"
    )]
    Changed { path: PathBuf },
    #[error("{path} cannot be given to overlayfs (it contains `,`, `:` or `\\`)")]
    BadOverlayPath { path: PathBuf },
    #[error("{path} is already an overlay: /etc is mounted already")]
    AlreadyMounted { path: PathBuf },
    #[error("fault injected at write {index} ({point})")]
    Injected { index: usize, point: &'static str },
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> EtcError {
    let path = path.into();
    move |source| EtcError::Io { what, path, source }
}

pub(crate) fn errno(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(rustix::io::Errno) -> EtcError {
    let path = path.into();
    move |e| EtcError::Io {
        what,
        path,
        source: e.into(),
    }
}

pub(crate) fn deploy(what: &'static str) -> impl FnOnce(atomup_deploy::DeployError) -> EtcError {
    move |source| EtcError::Deploy {
        what,
        source: Box::new(source),
    }
}

pub(crate) fn fmt(what: &'static str) -> impl FnOnce(atomup_ostree::Error) -> EtcError {
    move |source| EtcError::Format { what, source }
}
