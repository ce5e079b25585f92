//! The agent's one error type: any error, with its sources. `main` prints
//! the chain once (`error: ...` then ` -> cause` lines); library errors never
//! repeat their source in their own message.

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;
