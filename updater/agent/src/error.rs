//! The agent's one error type: any error, with its sources. `main` prints
//! the chain once (`error: ...` then ` -> cause` lines); library errors never
//! repeat their source in their own message.

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// `error: <top>` then one ` -> <cause>` line per source, each line ended.
/// Library errors never repeat their source in their own message, so
/// nothing prints twice.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = format!("error: {err}\n");
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(&format!(" -> {cause}\n"));
        source = cause.source();
    }
    out
}

/// The chain on one line (`a -> b -> c`), for reports and progress events.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(&format!(" -> {cause}"));
        source = cause.source();
    }
    out
}

/// A daemon told to stop (SIGTERM) ended this at a safe point: nothing is
/// wrong, what was done is kept for the next start.
#[derive(Debug)]
pub struct Stopped(pub String);

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stopped {}
