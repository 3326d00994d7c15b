//! Entry paths as archives spell them, turned into clean relative paths.
//!
//! Both the image archive and every layer name their entries with peer-supplied bytes. This
//! module is the one place that decides whether such a name is a clean path below a root:
//! no `..`, not absolute, no NUL, within the length Linux accepts. It must never resolve a
//! name against the filesystem: it only looks at bytes.

/// Longest entry path accepted, in bytes: Linux's `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 4096;
/// Longest single path component accepted, in bytes: Linux's `NAME_MAX`.
pub const MAX_NAME_BYTES: usize = 255;

/// Why an entry's name is not a clean relative path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// Starts with `/`.
    Absolute,
    /// Has a `..` component.
    Parent,
    /// Longer than [`MAX_PATH_BYTES`], or a component longer than [`MAX_NAME_BYTES`].
    TooLong,
    /// Holds a NUL byte (only a PAX record can carry one), which no file name can.
    Nul,
}

/// A clean relative path: components joined by single `/`, no `.` or `..`, no leading or
/// trailing `/`. Empty means the root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPath {
    pub bytes: Vec<u8>,
    /// The name ended in `/`: old tar writers mark a directory this way.
    pub trailing_slash: bool,
}

impl CleanPath {
    /// The proper prefixes of this path that are directories on the way to it, shortest
    /// first (`a`, `a/b` for `a/b/c`).
    pub fn parents(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes
            .iter()
            .enumerate()
            .filter(|&(_, &b)| b == b'/')
            .map(|(i, _)| &self.bytes[..i])
    }

    /// The directory holding this path (empty for a top-level name).
    pub fn parent(&self) -> &[u8] {
        parent_of(&self.bytes)
    }

    /// The last component.
    pub fn name(&self) -> &[u8] {
        name_of(&self.bytes)
    }
}

/// The last component of a clean path.
pub fn name_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// The directory part of a clean path.
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// Normalises an archive entry name: a leading `./`, repeated `/` and `.` components are
/// dropped (writers differ in these and they name the same place).
pub fn clean(raw: &[u8]) -> Result<CleanPath, PathProblem> {
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    if raw.len() > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong);
    }
    let mut bytes = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => return Err(PathProblem::Parent),
            name if name.len() > MAX_NAME_BYTES => return Err(PathProblem::TooLong),
            name => {
                if !bytes.is_empty() {
                    bytes.push(b'/');
                }
                bytes.extend_from_slice(name);
            }
        }
    }
    Ok(CleanPath {
        bytes,
        trailing_slash: raw.last() == Some(&b'/'),
    })
}

/// Resolves a relative link target lexically from the directory `from` (a clean path),
/// the way the kernel would if every component were a directory. `None` when it climbs
/// above the root.
pub fn resolve_relative(from: &[u8], target: &[u8]) -> Option<Vec<u8>> {
    let mut stack: Vec<&[u8]> = from
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => {
                stack.pop()?;
            }
            name => stack.push(name),
        }
    }
    Some(stack.join(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cleaned(raw: &str) -> Result<String, PathProblem> {
        clean(raw.as_bytes()).map(|p| String::from_utf8_lossy(&p.bytes).into_owned())
    }

    #[test]
    fn normalises_what_writers_differ_in() {
        assert_eq!(cleaned("./usr//bin/./sh"), Ok("usr/bin/sh".into()));
        assert_eq!(cleaned("./"), Ok(String::new()));
        assert_eq!(cleaned("etc/"), Ok("etc".into()));
        assert_eq!(cleaned("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(cleaned("a/../../b"), Err(PathProblem::Parent));
        assert_eq!(cleaned(&"a".repeat(256)), Err(PathProblem::TooLong));
        assert_eq!(cleaned("a\0b"), Err(PathProblem::Nul));
    }

    #[test]
    fn resolves_relative_targets_lexically() {
        assert_eq!(
            resolve_relative(b"usr/bin", b"../lib/x"),
            Some(b"usr/lib/x".to_vec())
        );
        assert_eq!(resolve_relative(b"usr", b"../etc"), Some(b"etc".to_vec()));
        assert_eq!(resolve_relative(b"usr", b"../../etc"), None);
        assert_eq!(resolve_relative(b"", b".."), None);
    }

    #[test]
    fn lists_parents_shortest_first() {
        let path = clean(b"a/b/c").expect("clean");
        assert_eq!(path.parents().collect::<Vec<_>>(), vec![&b"a"[..], b"a/b"]);
        assert_eq!(path.parent(), b"a/b");
        assert_eq!(path.name(), b"c");
    }
}
