//! Errors from the parsers, with the path of the field at fault: serde's path becomes a
//! [`FieldPath`] (`resources.memory_bytes`, `args[3]`, `env."BAD NAME"`), a TOML error one
//! line with its line and column, and any parser's message is cut to a bounded length. The
//! paths, the quoting of the user's strings and the rules are `edge_proto::field`'s.

use edge_proto::field::{FieldPath, SHOWN_CHARS};

use super::SpecError;

/// How long a parser's message may be once it is part of ours.
const MAX_MESSAGE_CHARS: usize = 300;

/// A parser's message, cut to about [`MAX_MESSAGE_CHARS`]. serde quotes whole strings in
/// "invalid type: string \"...\", expected i64": the user's string is cut, what was
/// expected is kept.
pub(super) fn clip(message: &str) -> String {
    if message.chars().count() <= MAX_MESSAGE_CHARS {
        return message.to_owned();
    }
    match message.rfind(", expected ") {
        Some(i) => format!(
            "{}{}",
            cut(&message[..i], SHOWN_CHARS * 2),
            cut(&message[i..], MAX_MESSAGE_CHARS)
        ),
        None => cut(message, MAX_MESSAGE_CHARS),
    }
}

fn cut(s: &str, max_chars: usize) -> String {
    let mut chars = s.chars();
    let head: String = chars.by_ref().take(max_chars).collect();
    if chars.next().is_some() {
        format!("{head}…")
    } else {
        head
    }
}

/// An error from deserializing, at `path`. serde reports a missing field at the struct that
/// lacks it; we name the field itself, so `resources` + "missing field `cpu_millis`" becomes
/// `resources.cpu_millis: missing`.
pub(super) fn field_error(path: &serde_path_to_error::Path, message: &str) -> SpecError {
    use serde_path_to_error::Segment;
    let mut field = FieldPath::root();
    for segment in path {
        field = match segment {
            Segment::Seq { index } => field.index(*index),
            Segment::Map { key } => field.key(key),
            Segment::Enum { .. } => field,
            Segment::Unknown => field.field("?"),
        };
    }
    let named = |prefix: &str| -> Option<(FieldPath, String)> {
        let rest = message.strip_prefix(prefix)?;
        let (key, tail) = rest.split_once('`')?;
        Some((field.key(key), tail.to_owned()))
    };
    if let Some((path, tail)) = named("missing field `") {
        return SpecError::invalid(path, format!("missing{tail}"));
    }
    if let Some((path, tail)) = named("unknown field `") {
        // serde_path_to_error has already stepped into the unknown key.
        let path = if field.is_root() { path } else { field };
        let tail = tail.trim_start_matches(',').trim_start();
        let reason = if tail.is_empty() {
            "unknown field".to_owned()
        } else {
            format!("unknown field; {tail}")
        };
        return SpecError::invalid(path, reason);
    }
    SpecError::invalid(field, message)
}

/// A TOML error as one line: `line L, column C: message`.
pub(super) fn toml_message(e: &toml::de::Error, text: &str) -> String {
    let message = clip(e.message().trim());
    match e.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
