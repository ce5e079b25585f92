//! A JSON writer just big enough for the agent's output: objects written
//! field by field into a `String`, strings escaped per RFC 8259. Writing
//! only (never parsing) keeps a JSON library out of the device binary; the
//! tests parse everything written here with a real parser.

use std::fmt::Write as _;

/// Appends `s` as a JSON string literal.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON value the writer can emit.
pub enum Value<'a> {
    Null,
    Bool(bool),
    U64(u64),
    Str(&'a str),
    /// Already-written JSON (a nested object or array).
    Raw(&'a str),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Self {
        Value::Str(s)
    }
}

impl From<u64> for Value<'_> {
    fn from(n: u64) -> Self {
        Value::U64(n)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

fn push_value(out: &mut String, v: Value<'_>) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if b { "true" } else { "false" }),
        Value::U64(n) => {
            let _ = write!(out, "{n}");
        }
        Value::Str(s) => push_str(out, s),
        Value::Raw(r) => out.push_str(r),
    }
}

/// Builds one JSON object: `Object::new().field("a", 1u64).finish()`.
pub struct Object {
    out: String,
    first: bool,
}

impl Default for Object {
    fn default() -> Self {
        Self::new()
    }
}

impl Object {
    pub fn new() -> Object {
        Object {
            out: String::from("{"),
            first: true,
        }
    }

    pub fn field<'a>(mut self, name: &str, v: impl Into<Value<'a>>) -> Object {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        push_str(&mut self.out, name);
        self.out.push(':');
        push_value(&mut self.out, v.into());
        self
    }

    pub fn finish(mut self) -> String {
        self.out.push('}');
        self.out
    }
}

/// A JSON array of already-written values.
pub fn array<I: IntoIterator<Item = String>>(items: I) -> String {
    let items: Vec<String> = items.into_iter().collect();
    format!("[{}]", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every control character, quotes, backslashes and non-ASCII text
    /// survive a round trip through a real JSON parser.
    #[test]
    fn strings_round_trip_through_a_real_parser() {
        let nasty: String = (0u8..0x80).map(char::from).collect::<String>() + "é✓\u{1F600}";
        let doc = Object::new()
            .field("s", nasty.as_str())
            .field("n", 18_446_744_073_709_551_615u64)
            .field("b", true)
            .field("none", None::<&str>)
            .field(
                "nested",
                Value::Raw(&array([Object::new().field("x", 1u64).finish()])),
            )
            .finish();
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["s"], nasty.as_str());
        assert_eq!(v["n"].as_u64(), Some(u64::MAX));
        assert_eq!(v["b"], true);
        assert!(v["none"].is_null());
        assert_eq!(v["nested"][0]["x"], 1);
    }
}
