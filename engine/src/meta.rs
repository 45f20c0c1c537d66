//! Metadata beyond the `stat` basics: extended attributes and which of them mover copies.
//!
//! Copied: `user.*`, POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`), and
//! `security.selinux` when asked. Never copied: `trusted.*`, `security.capability` and other
//! `security.*` names, which grant privileges on the target node. The sender notes what it
//! leaves behind ([`Withheld`]) so the summary says so (`SELinux` labels aside: copying them is
//! an option of its own).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::BorrowedFd;

use crate::confine;
use crate::wire::{Entry, Timestamp, Xattr};

/// Most extended attributes per entry.
pub const MAX_XATTRS: usize = 128;
/// Largest extended attribute value (the Linux VFS limit).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Largest total of names and values per entry.
pub const MAX_XATTR_TOTAL: usize = 1024 * 1024;

/// Which extended attributes a session copies, beyond the ones it always copies (`user.*`,
/// POSIX ACLs) and the ones it never does (`trusted.*`, the other `security.*`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XattrPolicy {
    /// Copy `security.selinux` labels.
    pub selinux: bool,
}

/// Whether mover copies the attribute `name` under `policy`.
#[must_use]
pub fn is_copied(name: &[u8], policy: XattrPolicy) -> bool {
    name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
        || (policy.selinux && name == b"security.selinux")
}

/// What [`unchanged`] compares besides the modification time, which it always compares.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compare {
    /// The size a regular file must have.
    pub size: Option<u64>,
    /// Permission bits (with setuid, setgid and sticky).
    pub mode: bool,
    /// Owner and group: only where the target can set them (it runs as root).
    pub owner: bool,
}

/// Whether an existing entry (`stat`) already has the sender's `entry`'s metadata, as far as
/// `compare` asks, and its modification time. Extended attributes are not compared here: they
/// cost a listing, which the caller makes only once this holds.
#[inline]
#[must_use]
pub fn unchanged(stat: &rustix::fs::Stat, entry: &Entry, compare: Compare) -> bool {
    compare.size.is_none_or(|size| u64::try_from(stat.st_size).ok() == Some(size))
        && (!compare.mode || stat.st_mode & 0o7777 == entry.mode)
        && (!compare.owner || (stat.st_uid == entry.uid && stat.st_gid == entry.gid))
        && same_mtime(stat, entry.mtime)
}

/// Whether `stat`'s modification time is `mtime`, to the nanosecond.
#[inline]
#[must_use]
pub fn same_mtime(stat: &rustix::fs::Stat, mtime: Timestamp) -> bool {
    stat.st_mtime == mtime.sec && u32::try_from(stat.st_mtime_nsec).ok() == Some(mtime.nsec)
}

/// Distinct attribute names [`Withheld`] tells about; more are counted, not named.
const WITHHELD_NAMES: usize = 16;
/// Paths named per attribute.
const WITHHELD_PATHS: usize = 3;

/// The attributes a scan met and did not copy: per name, how many entries carried it and the
/// first few of their paths. Bounded: at most [`WITHHELD_NAMES`] names of [`WITHHELD_PATHS`]
/// paths each.
#[derive(Debug, Default)]
pub struct Withheld {
    names: BTreeMap<Vec<u8>, (u64, Vec<String>)>,
    other_names: u64,
}

impl Withheld {
    /// Notes that the entry at `path` has the attribute `name`, which is not copied.
    pub fn note(&mut self, name: &[u8], path: &[u8]) {
        // Not copying SELinux labels is what the options asked for.
        if name == b"security.selinux" {
            return;
        }
        if !self.names.contains_key(name) && self.names.len() >= WITHHELD_NAMES {
            self.other_names += 1;
            return;
        }
        let (count, paths) = self.names.entry(name.to_vec()).or_default();
        *count += 1;
        if paths.len() < WITHHELD_PATHS {
            paths.push(confine::display_bytes(path));
        }
    }

    /// One line per attribute name, for [`crate::progress::Summary::not_preserved`]: what,
    /// how many entries, which (the first few), and why.
    #[must_use]
    pub fn messages(&self) -> Vec<String> {
        let mut messages: Vec<String> = self
            .names
            .iter()
            .map(|(name, (count, paths))| {
                let name = String::from_utf8_lossy(name);
                let what = if name == "security.capability" {
                    format!("file capabilities (`{name}`)")
                } else {
                    format!("extended attribute `{name}`")
                };
                let paths: Vec<String> = paths.iter().map(|path| format!("`{}`", display_path(path))).collect();
                let more = if *count > paths.len() as u64 { ", …" } else { "" };
                let why = if name.starts_with("trusted.") || name.starts_with("security.") {
                    "privileged attributes are never copied: they would grant rights on the target node"
                } else {
                    "mover copies only `user.*` attributes and POSIX ACLs"
                };
                let entries = if *count == 1 { "entry" } else { "entries" };
                format!("{what} of {count} {entries} ({}{more}): {why}", paths.join(", "))
            })
            .collect();
        if self.other_names > 0 {
            messages.push(format!("{} more extended attribute(s) of other names, not copied", self.other_names));
        }
        messages
    }
}

fn display_path(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

fn split_names(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    list.split(|&b| b == 0).filter(|name| !name.is_empty())
}

fn unsupported(error: rustix::io::Errno) -> bool {
    error == rustix::io::Errno::OPNOTSUPP || error == rustix::io::Errno::NOTSUP
}

/// Reads the copied extended attributes of `name` in `dir` (not following a symlink).
///
/// Called for every entry on both sides, so the common case (no attributes) costs one listing
/// ([`confine::list_xattrs`]) into a small buffer and no allocation.
pub fn read_xattrs(dir: BorrowedFd<'_>, name: &[u8], policy: XattrPolicy) -> io::Result<Vec<Xattr>> {
    read_xattrs_and(dir, name, policy, |_| {})
}

/// [`read_xattrs`], handing the name of each attribute it does not copy to `withheld`.
pub fn read_xattrs_and(
    dir: BorrowedFd<'_>,
    name: &[u8],
    policy: XattrPolicy,
    mut withheld: impl FnMut(&[u8]),
) -> io::Result<Vec<Xattr>> {
    let mut small = [0u8; 1024];
    let mut large = Vec::new();
    let list: &[u8] = match confine::list_xattrs(dir, name, &mut small[..]) {
        Ok(0) => return Ok(Vec::new()),
        Ok(len) => &small[..len],
        Err(rustix::io::Errno::RANGE) => {
            let len = confine::list_xattrs(dir, name, &mut []).map_err(io::Error::from)?;
            if len > MAX_XATTR_TOTAL {
                return Err(io::Error::other("extended attribute list exceeds the size limit"));
            }
            large.resize(len, 0);
            let len = confine::list_xattrs(dir, name, &mut large[..])?;
            &large[..len]
        }
        Err(error) if unsupported(error) => return Ok(Vec::new()),
        Err(error) => return Err(error.into()),
    };
    // Entries with copied attributes are rare: their values are read through `/proc`.
    let path = confine::proc_path(dir, name);
    let mut xattrs = Vec::new();
    let mut value = Vec::new();
    for attr in split_names(list) {
        if !is_copied(attr, policy) {
            withheld(attr);
            continue;
        }
        if value.is_empty() {
            value.resize(MAX_XATTR_VALUE, 0);
        }
        match rustix::fs::lgetxattr(path.as_c_str(), attr, &mut value[..]) {
            Ok(n) => xattrs.push(Xattr { name: attr.to_vec(), value: value[..n].to_vec() }),
            // Removed since it was listed: nothing to copy.
            Err(rustix::io::Errno::NODATA) => {}
            Err(error) => return Err(error.into()),
        }
        if xattrs.len() > MAX_XATTRS {
            return Err(io::Error::other(format!("more than {MAX_XATTRS} extended attributes")));
        }
    }
    xattrs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(xattrs)
}

/// Checks that a peer's extended attributes are within our caps and are ones we copy.
pub fn check_xattrs(xattrs: &[Xattr], policy: XattrPolicy) -> Result<(), String> {
    if xattrs.len() > MAX_XATTRS {
        return Err(format!("{} extended attributes (limit {MAX_XATTRS})", xattrs.len()));
    }
    let mut total = 0;
    for xattr in xattrs {
        if xattr.value.len() > MAX_XATTR_VALUE || xattr.name.len() > 255 || xattr.name.contains(&0) {
            return Err("an extended attribute exceeds the size limits".into());
        }
        if !is_copied(&xattr.name, policy) {
            return Err(format!("extended attribute `{}` is not allowed", String::from_utf8_lossy(&xattr.name)));
        }
        total += xattr.name.len() + xattr.value.len();
    }
    if total > MAX_XATTR_TOTAL {
        return Err("extended attributes exceed the total size limit".into());
    }
    Ok(())
}

/// Makes the copied extended attributes of an open file or directory exactly `xattrs`.
pub fn apply_xattrs(fd: BorrowedFd<'_>, xattrs: &[Xattr], policy: XattrPolicy) -> io::Result<()> {
    let mut list = vec![0u8; 4096];
    let existing = loop {
        match rustix::fs::flistxattr(fd, &mut list[..]) {
            Ok(len) => break split_names(&list[..len]).map(<[u8]>::to_vec).collect::<Vec<_>>(),
            Err(rustix::io::Errno::RANGE) if list.len() < MAX_XATTR_TOTAL => {
                let len = list.len() * 4;
                list.resize(len, 0);
            }
            Err(error) if unsupported(error) && xattrs.is_empty() => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    };
    for name in existing {
        if is_copied(&name, policy) && !xattrs.iter().any(|x| x.name == name) {
            rustix::fs::fremovexattr(fd, name.as_slice())?;
        }
    }
    for xattr in xattrs {
        rustix::fs::fsetxattr(fd, xattr.name.as_slice(), &xattr.value, rustix::fs::XattrFlags::empty())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Compare, Withheld, unchanged};
    use crate::wire::{Entry, EntryKind, Timestamp};

    #[test]
    fn unchanged_always_compares_the_mtime_and_the_rest_as_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        let stat = rustix::fs::stat(&path).unwrap();
        let mtime = Timestamp { sec: stat.st_mtime, nsec: u32::try_from(stat.st_mtime_nsec).unwrap() };
        let same = Entry {
            id: 0,
            path: b"f".to_vec(),
            kind: EntryKind::File { size: 3, leader: false },
            mode: stat.st_mode & 0o7777,
            uid: stat.st_uid,
            gid: stat.st_gid,
            mtime,
            atime: mtime,
            xattrs: Vec::new(),
        };
        assert!(unchanged(&stat, &same, Compare { size: Some(3), mode: true, owner: true }));
        assert!(!unchanged(&stat, &same, Compare { size: Some(4), ..Compare::default() }));
        let later = Entry { mtime: Timestamp { nsec: (mtime.nsec + 1) % 1_000_000_000, ..mtime }, ..same.clone() };
        assert!(!unchanged(&stat, &later, Compare::default()));
        let other = Entry { mode: (stat.st_mode & 0o7777) ^ 0o100, uid: stat.st_uid + 1, ..same.clone() };
        assert!(unchanged(&stat, &other, Compare { size: Some(3), ..Compare::default() }));
        assert!(!unchanged(&stat, &other, Compare { mode: true, ..Compare::default() }));
        assert!(!unchanged(&stat, &other, Compare { owner: true, ..Compare::default() }));
    }

    #[test]
    fn withheld_names_paths_and_bounds() {
        let mut withheld = Withheld::default();
        withheld.note(b"security.selinux", b"a");
        for i in 0..5 {
            withheld.note(b"security.capability", format!("bin/tool{i}").as_bytes());
        }
        withheld.note(b"trusted.foo", b"");
        for i in 0..40 {
            withheld.note(format!("trusted.x{i}").as_bytes(), b"f");
        }
        let messages = withheld.messages();
        assert!(!messages.iter().any(|m| m.contains("selinux")), "{messages:?}");
        let capability = messages.iter().find(|m| m.contains("security.capability")).unwrap();
        assert!(
            capability.starts_with(
                "file capabilities (`security.capability`) of 5 entries (`bin/tool0`, `bin/tool1`, `bin/tool2`, …)"
            ),
            "{capability}"
        );
        assert!(
            messages.iter().any(|m| m.starts_with("extended attribute `trusted.foo` of 1 entry (`.`)")),
            "{messages:?}"
        );
        assert_eq!(messages.len(), 17, "{messages:?}");
    }
}
