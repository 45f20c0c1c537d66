//! Metadata beyond the `stat` basics: extended attributes and which of them mover copies.
//!
//! Copied: `user.*`, POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`), and
//! `security.selinux` when asked. Never copied: `trusted.*`, `security.capability` and other
//! `security.*` names, which grant privileges on the target node.

use std::io;
use std::os::fd::BorrowedFd;

use crate::confine;
use crate::wire::{SyncOptions, Xattr};

/// Most extended attributes per entry.
pub const MAX_XATTRS: usize = 128;
/// Largest extended attribute value (the Linux VFS limit).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Largest total of names and values per entry.
pub const MAX_XATTR_TOTAL: usize = 1024 * 1024;

/// Whether mover copies the attribute `name` under `options`.
#[must_use]
pub fn is_copied(name: &[u8], options: &SyncOptions) -> bool {
    name.starts_with(b"user.")
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
        || (options.selinux && name == b"security.selinux")
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
pub fn read_xattrs(dir: BorrowedFd<'_>, name: &[u8], options: &SyncOptions) -> io::Result<Vec<Xattr>> {
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
        if !is_copied(attr, options) {
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
pub fn check_xattrs(xattrs: &[Xattr], options: &SyncOptions) -> Result<(), String> {
    if xattrs.len() > MAX_XATTRS {
        return Err(format!("{} extended attributes (limit {MAX_XATTRS})", xattrs.len()));
    }
    let mut total = 0;
    for xattr in xattrs {
        if xattr.value.len() > MAX_XATTR_VALUE || xattr.name.len() > 255 || xattr.name.contains(&0) {
            return Err("an extended attribute exceeds the size limits".into());
        }
        if !is_copied(&xattr.name, options) {
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
pub fn apply_xattrs(fd: BorrowedFd<'_>, xattrs: &[Xattr], options: &SyncOptions) -> io::Result<()> {
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
        if is_copied(&name, options) && !xattrs.iter().any(|x| x.name == name) {
            rustix::fs::fremovexattr(fd, name.as_slice())?;
        }
    }
    for xattr in xattrs {
        rustix::fs::fsetxattr(fd, xattr.name.as_slice(), &xattr.value, rustix::fs::XattrFlags::empty())?;
    }
    Ok(())
}
