//! Field paths, field errors, and the rules for what operators name things.
//!
//! The node's config file and the orchestrator's workload spec are checked the same way: every
//! error names the field at fault by its path, as the file would write it (`labels."bad key"`,
//! `requirements.near.lat`, `args[3]`), and quotes at most [`SHOWN_CHARS`] characters of what
//! the user wrote, escaped, so that a hostile value can neither flood a log nor forge a line in
//! it. [`FieldPath`] builds such paths, [`FieldError`] carries one with its message, and
//! [`shown`] quotes a user's string.
//!
//! The rules for names, labels and coordinates live here once, and their bounds are the wire's:
//! [`MAX_NAME_LEN`], [`Label::MAX_KEY_LEN`], [`Label::MAX_VALUE_BYTES`],
//! [`Capabilities::MAX_LABELS`], [`Location::MAX_LAT`] and [`Location::MAX_LON`] are the
//! capacities of the fields that carry these values. So a value that passes a rule reaches the
//! peer whole, never cut to fit.
//!
//! Like the rest of the crate this is `no_std` + `alloc` and does no I/O. Paths and messages are
//! only built when a check fails.

use alloc::format;
use alloc::string::String;
use core::fmt;

use crate::msg::{Capabilities, Label, Location};

pub use crate::msg::MAX_NAME_LEN;

/// How many characters of a user's string an error may quote.
pub const SHOWN_CHARS: usize = 40;

/// The most labels a node carries, and a workload may require.
pub const MAX_LABELS: usize = Capabilities::MAX_LABELS;
/// The longest label key, in characters (keys are ASCII).
pub const MAX_LABEL_KEY_LEN: usize = Label::MAX_KEY_LEN;
/// The longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = Label::MAX_VALUE_BYTES;

/// A user's string as an error message may quote it: Debug-escaped, so a newline shows as `\n`
/// and cannot start a forged log line, and cut after [`SHOWN_CHARS`] characters with `…`.
pub fn shown(s: &str) -> Shown<'_> {
    shown_max(s, SHOWN_CHARS)
}

/// [`shown`], cut after `max_chars` characters.
pub fn shown_max(s: &str, max_chars: usize) -> Shown<'_> {
    let end = s.char_indices().nth(max_chars).map_or(s.len(), |(i, _)| i);
    Shown {
        head: &s[..end],
        cut: end < s.len(),
    }
}

/// What [`shown`] returns: formats as the quoted, escaped, cut string.
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    head: &'a str,
    cut: bool,
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.head, f)?;
        if self.cut {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// Where a field sits in a document, written as TOML would: `location.lat`, `labels."bad key"`,
/// `args[3]`. Map keys chosen by the user are quoted with [`shown`] unless they are short bare
/// keys, so a path never carries more than [`SHOWN_CHARS`] characters of any one of them.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(String);

impl FieldPath {
    /// The document itself, for an error about no field in particular.
    pub const fn root() -> Self {
        Self(String::new())
    }

    /// A field named by the program: `name`, or a nested one at once, `location.lat`.
    pub fn new(name: &str) -> Self {
        Self(name.into())
    }

    /// The field `name` of this one: `location` and `lat` make `location.lat`.
    pub fn field(&self, name: &str) -> Self {
        if self.is_root() {
            Self::new(name)
        } else {
            Self(format!("{}.{name}", self.0))
        }
    }

    /// The entry `key` of this map: `labels.site`, or `labels."example.com/zone"` when the key
    /// is not a bare TOML key (or is too long to show whole).
    pub fn key(&self, key: &str) -> Self {
        let bare = !key.is_empty()
            && key.chars().count() <= SHOWN_CHARS
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let key = if bare {
            String::from(key)
        } else {
            format!("{}", shown(key))
        };
        self.field(&key)
    }

    /// The item at `index` of this list: `args` and 3 make `args[3]`.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the document itself rather than a field in it.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({})", self.0)
    }
}

impl From<&str> for FieldPath {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl PartialEq<str> for FieldPath {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for FieldPath {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// A field whose value is not acceptable, and why. Shown as `path: message`, or the message
/// alone for the document itself. Never worth retrying unchanged: the user has to fix the
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    path: FieldPath,
    message: String,
}

impl FieldError {
    /// `message` says what is wrong with the value; it quotes the user's input only through
    /// [`shown`].
    pub fn new(path: impl Into<FieldPath>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }

    /// The field at fault.
    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// What is wrong with its value.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl core::error::Error for FieldError {}

/// A list or map at `path` has `count` entries; at most `max` are allowed. `what` names the
/// entries in the plural: "33 labels; at most 32 are allowed".
pub fn check_count(
    path: &FieldPath,
    count: usize,
    max: usize,
    what: &str,
) -> Result<(), FieldError> {
    if count > max {
        return Err(FieldError::new(
            path.clone(),
            format!("{count} {what}; at most {max} are allowed"),
        ));
    }
    Ok(())
}

/// A node's or a workload's name, unique in the fleet: a DNS label, 1 to [`MAX_NAME_LEN`] of
/// `[a-z0-9-]`, not starting or ending with `-`.
pub fn check_name(path: &FieldPath, name: &str) -> Result<(), FieldError> {
    let invalid = |message: String| FieldError::new(path.clone(), message);
    if name.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(invalid(format!(
            "{} contains {c:?}; use lowercase letters, digits and '-'",
            shown(name)
        )));
    }
    // ASCII only from here on, so bytes are characters.
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(format!(
            "is {} characters long; at most {MAX_NAME_LEN} are allowed",
            name.len()
        )));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(invalid(format!(
            "{} must not start or end with '-'",
            shown(name)
        )));
    }
    Ok(())
}

/// A set of labels at `path` (a map of key to value): at most [`MAX_LABELS`], each as
/// [`check_label`] wants it. Errors about one label name its entry, `labels."bad key"`.
pub fn check_labels<K, V>(
    path: &FieldPath,
    labels: impl ExactSizeIterator<Item = (K, V)>,
) -> Result<(), FieldError>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    check_count(path, labels.len(), MAX_LABELS, "labels")?;
    for (key, value) in labels {
        check_label(path, key.as_ref(), value.as_ref())?;
    }
    Ok(())
}

/// One label of the set at `labels`: see [`check_label_key`] and [`check_label_value`].
pub fn check_label(labels: &FieldPath, key: &str, value: &str) -> Result<(), FieldError> {
    let entry = || labels.key(key);
    check_label_key(key).map_err(|message| FieldError::new(entry(), message))?;
    check_label_value(value).map_err(|message| FieldError::new(entry(), message))
}

/// A label key: 1 to [`MAX_LABEL_KEY_LEN`] letters, digits and `. _ / -`, so that
/// `example.com/zone` works. Returns the reason on failure; the caller knows the path.
pub fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the key must not be empty".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(format!(
            "the key contains {c:?}; use letters, digits and . _ / -"
        ));
    }
    // ASCII only from here on, so bytes are characters.
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "the key is {} characters long; at most {MAX_LABEL_KEY_LEN} are allowed",
            key.len()
        ));
    }
    Ok(())
}

/// A label value: at most [`MAX_LABEL_VALUE_BYTES`] bytes of any text without control
/// characters; empty is allowed. Returns the reason on failure.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(format!(
            "the value is {} bytes long; at most {MAX_LABEL_VALUE_BYTES} are allowed",
            value.len()
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(format!("the value contains the control character {c:?}"));
    }
    Ok(())
}

/// A number that must be finite: not NaN, not infinite (TOML can write both).
pub fn check_finite(path: &FieldPath, v: f64) -> Result<f64, FieldError> {
    if !v.is_finite() {
        return Err(FieldError::new(
            path.clone(),
            format!("{v} is not a finite number"),
        ));
    }
    Ok(v)
}

/// A latitude in WGS84 degrees: finite, within ±[`Location::MAX_LAT`].
pub fn check_latitude(path: &FieldPath, v: f64) -> Result<f64, FieldError> {
    check_coordinate(path, v, Location::MAX_LAT)
}

/// A longitude in WGS84 degrees: finite, within ±[`Location::MAX_LON`].
pub fn check_longitude(path: &FieldPath, v: f64) -> Result<f64, FieldError> {
    check_coordinate(path, v, Location::MAX_LON)
}

fn check_coordinate(path: &FieldPath, v: f64, bound: f64) -> Result<f64, FieldError> {
    check_finite(path, v)?;
    if !(-bound..=bound).contains(&v) {
        return Err(FieldError::new(
            path.clone(),
            format!("{v} is out of range -{bound}..={bound}"),
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{
        AdmissionReply, Assignment, EnrollRequest, List, LogsRequest, Text, Unassign,
        WorkloadReport,
    };
    use alloc::string::ToString;
    use alloc::vec::Vec;

    /// The capacity of a text field, read from the field's type.
    fn text_cap<T, const N: usize>(_: fn(&T) -> &Text<N>) -> usize {
        N
    }

    fn list_cap<T, I, const N: usize>(_: fn(&T) -> &List<I, N>) -> usize {
        N
    }

    #[test]
    fn the_rules_bounds_are_the_wire_fields_capacities() {
        assert_eq!(text_cap(|m: &EnrollRequest| &m.name), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &Assignment| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &Unassign| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &AdmissionReply| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &WorkloadReport| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|m: &LogsRequest| &m.workload), MAX_NAME_LEN);
        assert_eq!(text_cap(|l: &Label| &l.key), MAX_LABEL_KEY_LEN);
        assert_eq!(text_cap(|l: &Label| &l.value), MAX_LABEL_VALUE_BYTES);
        assert_eq!(list_cap(|c: &Capabilities| &c.labels), MAX_LABELS);
    }

    #[test]
    fn what_passes_the_rules_fits_the_wire_whole() {
        let path = FieldPath::new("x");
        let name = "a".repeat(MAX_NAME_LEN);
        check_name(&path, &name).expect("a name of the limit");
        assert!(Text::<MAX_NAME_LEN>::try_from(name.as_str()).is_ok());
        check_name(&path, &"a".repeat(MAX_NAME_LEN + 1)).expect_err("over the limit");

        let key = "k".repeat(MAX_LABEL_KEY_LEN);
        let value = "é".repeat(MAX_LABEL_VALUE_BYTES / 2);
        check_label(&path, &key, &value).expect("a label of the limit");
        let label = Label {
            key: key.as_str().try_into().expect("key fits"),
            value: value.as_str().try_into().expect("value fits"),
        };
        assert_eq!(label.key.len(), MAX_LABEL_KEY_LEN);
        check_label_key(&"k".repeat(MAX_LABEL_KEY_LEN + 1)).expect_err("key over the limit");
        check_label_value(&"é".repeat(MAX_LABEL_VALUE_BYTES / 2 + 1))
            .expect_err("value over the limit, counted in bytes");

        let labels: Vec<(String, String)> = (0..MAX_LABELS)
            .map(|i| (alloc::format!("k{i}"), String::new()))
            .collect();
        check_labels(&path, labels.iter().map(|(k, v)| (k, v))).expect("a full set");
        let wire: List<Label, { Capabilities::MAX_LABELS }> = labels
            .iter()
            .map(|(k, v)| Label {
                key: crate::msg::text(k),
                value: crate::msg::text(v),
            })
            .collect();
        assert_eq!(wire.len(), MAX_LABELS);
        let mut one_more = labels;
        one_more.push(("extra".into(), String::new()));
        check_labels(&path, one_more.iter().map(|(k, v)| (k, v))).expect_err("too many");

        for (lat, lon) in [(90.0, 180.0), (-90.0, -180.0), (0.0, 0.0), (52.52, 13.405)] {
            let location = Location {
                lat: check_latitude(&path, lat).expect("lat"),
                lon: check_longitude(&path, lon).expect("lon"),
                alt_m: None,
            };
            assert!(location.is_valid());
        }
        for bad in [90.0001, -91.0, f64::NAN, f64::INFINITY] {
            check_latitude(&path, bad).expect_err("lat off the globe");
        }
        for bad in [180.5, -181.0, f64::NEG_INFINITY] {
            check_longitude(&path, bad).expect_err("lon off the globe");
        }
    }

    #[test]
    fn paths_render_as_toml_writes_them() {
        let labels = FieldPath::new("labels");
        assert_eq!(labels.key("site"), "labels.site");
        assert_eq!(labels.key("bad key"), r#"labels."bad key""#);
        assert_eq!(labels.key(""), r#"labels."""#);
        assert_eq!(labels.key("a\nb"), r#"labels."a\nb""#);
        assert_eq!(
            labels.key("example.com/zone"),
            r#"labels."example.com/zone""#
        );
        let long = "k".repeat(64);
        assert_eq!(
            labels.key(&long).to_string(),
            alloc::format!("labels.\"{}\"…", "k".repeat(40))
        );
        assert_eq!(
            FieldPath::new("requirements").field("near").field("lat"),
            "requirements.near.lat"
        );
        assert_eq!(FieldPath::new("args").index(3), "args[3]");
        assert_eq!(FieldPath::root().field("name"), "name");
        assert_eq!(FieldPath::root().key("bad key"), r#""bad key""#);
        assert_eq!(
            FieldPath::new("join_file").index(1).as_str(),
            "join_file[1]"
        );
    }

    #[test]
    fn errors_name_the_path_unless_it_is_the_document() {
        let e = FieldError::new("location.lat", "91 is out of range -90..=90");
        assert_eq!(e.to_string(), "location.lat: 91 is out of range -90..=90");
        assert_eq!(e.path(), &"location.lat");
        assert_eq!(e.message(), "91 is out of range -90..=90");
        let e = FieldError::new(FieldPath::root(), "expected a table");
        assert_eq!(e.to_string(), "expected a table");
    }

    #[test]
    fn shown_escapes_and_cuts() {
        assert_eq!(shown("plain").to_string(), r#""plain""#);
        assert_eq!(shown("a\nb\"").to_string(), r#""a\nb\"""#);
        let forty = "é".repeat(SHOWN_CHARS);
        assert_eq!(shown(&forty).to_string(), alloc::format!("\"{forty}\""));
        assert_eq!(
            shown(&"é".repeat(SHOWN_CHARS + 1)).to_string(),
            alloc::format!("\"{forty}\"…")
        );
        assert_eq!(shown_max("abcdef", 3).to_string(), r#""abc"…"#);
        assert_eq!(shown("").to_string(), r#""""#);
    }

    #[test]
    fn rule_messages() {
        let name = FieldPath::new("name");
        let msg = |r: Result<(), FieldError>| r.expect_err("refused").to_string();
        assert_eq!(msg(check_name(&name, "")), "name: must not be empty");
        assert_eq!(
            msg(check_name(&name, "Shop")),
            r#"name: "Shop" contains 'S'; use lowercase letters, digits and '-'"#
        );
        assert_eq!(
            msg(check_name(&name, &"a".repeat(64))),
            "name: is 64 characters long; at most 63 are allowed"
        );
        assert_eq!(
            msg(check_name(&name, "-a")),
            r#"name: "-a" must not start or end with '-'"#
        );
        let labels = FieldPath::new("labels");
        assert_eq!(
            msg(check_label(&labels, "a:b", "x")),
            r#"labels."a:b": the key contains ':'; use letters, digits and . _ / -"#
        );
        assert_eq!(
            msg(check_label(&labels, "site", "a\u{7}")),
            r"labels.site: the value contains the control character '\u{7}'"
        );
        assert_eq!(
            check_latitude(&FieldPath::new("lat"), 91.0)
                .expect_err("off the globe")
                .to_string(),
            "lat: 91 is out of range -90..=90"
        );
        assert_eq!(
            check_longitude(&FieldPath::new("lon"), f64::NAN)
                .expect_err("not a number")
                .to_string(),
            "lon: NaN is not a finite number"
        );
    }
}
