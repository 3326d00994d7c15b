//! An image's `User` resolved to the ids the process runs as, from the text of the rootfs's
//! `/etc/passwd` and `/etc/group`. The texts come from the image, so they are untrusted:
//! a line that does not parse is skipped, and nothing here panics or grows without bound.

use edge_proto::field::shown;
use std::collections::BTreeSet;

/// The longest `User` string accepted. Linux user names are at most 32 bytes; this leaves
/// room for `name:group` and numeric forms with leading zeros.
pub const MAX_USER_BYTES: usize = 256;

/// The most supplementary groups a process may have (the kernel's `NGROUPS_MAX`).
pub const MAX_ADDITIONAL_GIDS: usize = 65_536;

/// The ids a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    /// The primary group.
    pub gid: u32,
    /// The supplementary groups: those `/etc/group` lists the user in, without the primary
    /// group, in file order.
    pub additional_gids: Vec<u32>,
}

impl User {
    /// uid 0, gid 0, no supplementary groups.
    pub const ROOT: User = User {
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
    };
}

/// Why an image's `User` could not be resolved. None is worth retrying: the image (or the
/// workload's `user`) has to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// The string is not `user` or `user:group` with non-empty parts, or is longer than
    /// [`MAX_USER_BYTES`].
    #[error("user {user}: {reason}")]
    Malformed { user: String, reason: &'static str },
    /// A numeric uid or gid above 4294967294 (`(uid_t)-1` means "no id" to the kernel).
    #[error("user {user}: id {id} is out of range (at most 4294967294)")]
    IdOutOfRange { user: String, id: String },
    /// A user name that the rootfs's `/etc/passwd` does not list (or the file is missing).
    #[error("user {name} is not in the image's /etc/passwd; use a numeric uid or add the user")]
    UnknownUser { name: String },
    /// A group name that the rootfs's `/etc/group` does not list (or the file is missing).
    #[error("group {name} is not in the image's /etc/group; use a numeric gid or add the group")]
    UnknownGroup { name: String },
    /// `/etc/group` puts the user in more than [`MAX_ADDITIONAL_GIDS`] groups.
    #[error("user {name} is in more than {MAX_ADDITIONAL_GIDS} groups in the image's /etc/group")]
    TooManyGroups { name: String },
}

/// Resolves an image's `User` (or the workload's, which overrides it: the caller picks) as
/// Docker and runc do:
///
/// - none or `""`: root, `0:0`, plus root's groups from `/etc/group`;
/// - `name` or `uid`: the passwd entry's uid and primary gid, plus the groups that list the
///   user's name. A uid that passwd does not list runs with gid 0 and no supplementary
///   groups; a name it does not list is an error;
/// - `user:group`, where each part is a name or a number: that group as the primary one and
///   no supplementary groups (an explicit group replaces them, as in runc).
///
/// A part made only of ASCII digits is always an id, never a name. `passwd` and `group` are
/// the files' text, empty when a file is missing: numeric ids still resolve, names do not.
pub fn resolve_user(user: Option<&str>, passwd: &str, group: &str) -> Result<User, UserError> {
    let spec = user.unwrap_or("");
    if spec.len() > MAX_USER_BYTES {
        return Err(malformed(spec, "longer than 256 bytes"));
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if spec.is_empty() {
        return with_groups(Id::Number(0), None, passwd, group);
    }
    if user_part.is_empty() {
        return Err(malformed(spec, "the user part before `:` is empty"));
    }
    let group_id = match group_part {
        None => None,
        Some("") => return Err(malformed(spec, "the group part after `:` is empty")),
        Some(g) if g.contains(':') => return Err(malformed(spec, "more than one `:`")),
        Some(g) => Some(Id::parse(g, spec)?),
    };
    with_groups(Id::parse(user_part, spec)?, group_id, passwd, group)
}

fn with_groups(
    user_id: Id<'_>,
    group_id: Option<Id<'_>>,
    passwd: &str,
    group: &str,
) -> Result<User, UserError> {
    let (uid, entry) = match user_id {
        Id::Number(uid) => (uid, passwd_entries(passwd).find(|e| e.uid == uid)),
        Id::Name(name) => {
            let entry = passwd_entries(passwd)
                .find(|e| e.name == name)
                .ok_or_else(|| UserError::UnknownUser {
                    name: shown(name).to_string(),
                })?;
            (entry.uid, Some(entry))
        }
    };
    if let Some(group_id) = group_id {
        let gid = match group_id {
            Id::Number(gid) => gid,
            Id::Name(name) => group_entries(group)
                .find(|g| g.name == name)
                .map(|g| g.gid)
                .ok_or_else(|| UserError::UnknownGroup {
                    name: shown(name).to_string(),
                })?,
        };
        return Ok(User {
            uid,
            gid,
            additional_gids: Vec::new(),
        });
    }
    let Some(entry) = entry else {
        return Ok(User {
            uid,
            gid: 0,
            additional_gids: Vec::new(),
        });
    };
    let mut seen = BTreeSet::from([entry.gid]);
    let mut additional_gids = Vec::new();
    for g in group_entries(group) {
        if g.members.split(',').any(|m| m.trim() == entry.name) && seen.insert(g.gid) {
            if additional_gids.len() == MAX_ADDITIONAL_GIDS {
                return Err(UserError::TooManyGroups {
                    name: shown(entry.name).to_string(),
                });
            }
            additional_gids.push(g.gid);
        }
    }
    Ok(User {
        uid,
        gid: entry.gid,
        additional_gids,
    })
}

/// One part of a `User` string.
#[derive(Clone, Copy)]
enum Id<'a> {
    Number(u32),
    Name(&'a str),
}

impl<'a> Id<'a> {
    fn parse(part: &'a str, spec: &str) -> Result<Self, UserError> {
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Id::Name(part));
        }
        match part.parse::<u32>() {
            Ok(id) if id != u32::MAX => Ok(Id::Number(id)),
            _ => Err(UserError::IdOutOfRange {
                user: shown(spec).to_string(),
                id: shown(part).to_string(),
            }),
        }
    }
}

fn malformed(spec: &str, reason: &'static str) -> UserError {
    UserError::Malformed {
        user: shown(spec).to_string(),
        reason,
    }
}

/// A numeric id field of passwd or group; `None` for anything else, `(uid_t)-1` included.
fn id_field(field: &str) -> Option<u32> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok().filter(|&id| id != u32::MAX)
}

/// Lines that are blank, comments, or NIS compat entries (`+`/`-`) describe no one.
fn entry_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with(['#', '+', '-']))
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

/// `name:password:uid:gid:gecos:home:shell`; only the first four fields matter here.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    entry_lines(text).filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let _password = fields.next()?;
        let uid = id_field(fields.next()?)?;
        let gid = id_field(fields.next()?)?;
        Some(PasswdEntry { name, uid, gid })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    /// The comma-separated member list, split lazily: a hostile line may list millions.
    members: &'a str,
}

/// `name:password:gid:member,member`.
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    entry_lines(text).filter_map(|line| {
        let mut fields = line.splitn(4, ':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let _password = fields.next()?;
        let gid = id_field(fields.next()?)?;
        let members = fields.next().unwrap_or("");
        if members.contains(':') {
            return None;
        }
        Some(GroupEntry { name, gid, members })
    })
}
