//! mover's own names on a volume: the temporary files it creates, their exact forms, and the
//! test that a file found on disk is one mover left behind.
//!
//! Every temporary name is [`PREFIX`] followed by one of three exact forms:
//! - `<session>-<id>`: a file, link or node being received ([`session_temp`]); `<session>` is
//!   16 lowercase hex digits drawn for each receiving session, `<id>` the entry's id in decimal;
//! - `part-<key>`: a file being received, kept across an interruption for the next run to resume
//!   ([`partial`]); `<key>` is 24 lowercase hex digits of blake3 over the file's path, size and
//!   mtime;
//! - `preflight-<random>`: preflight's write probe ([`preflight`]), 16 lowercase hex digits.
//!
//! Only names of these forms are mover's ([`is_generated`]). A peer may not send one (the
//! receiver would take the entry for a temporary file of its own: resume from it, overwrite it
//! or clean it), so a scan skips them and reports the skip. Any other name that starts with the
//! prefix (`.mover-tmp-notes`) is user data, copied, kept and deleted like any other.
//!
//! A file under a generated name is removed as a leftover only when [`is_leftover`] proves mover
//! made it: a regular file, owned by this process's effective user, mode 0600, one link (what
//! [`crate::confine::create_file`] makes and nothing else touches); under a session's name also
//! a symlink, a special file or a hard link, whose removal loses no content. Anything else under
//! such a name is left alone.

use std::ffi::CString;

use rustix::fs::{FileType, Stat};


/// The start of every temporary name mover gives.
pub const PREFIX: &[u8] = b".mover-tmp-";

const PART: &[u8] = b"part-";
const PREFLIGHT: &[u8] = b"preflight-";
const SESSION_DIGITS: usize = 16;
const PART_DIGITS: usize = 24;
const PREFLIGHT_DIGITS: usize = 16;

/// The id of a receiving session, as its temporary names carry it.
#[must_use]
pub fn session(token: u64) -> String {
    format!("{token:016x}")
}

/// The start shared by the temporary names of one session (see [`session`]).
#[must_use]
pub fn session_prefix(session: &str) -> Vec<u8> {
    [PREFIX, session.as_bytes(), b"-"].concat()
}

/// The temporary name of entry `id` in session `session` (see [`session`]).
#[must_use]
pub fn session_temp(session: &str, id: u64) -> CString {
    let mut name = session_prefix(session);
    name.extend_from_slice(id.to_string().as_bytes());
    CString::new(name).expect("a generated name has no NUL")
}

/// The temporary name of a partial file, from the blake3 `key` of what it will hold.
#[must_use]
pub fn partial(key: &blake3::Hash) -> CString {
    let name = [PREFIX, PART, &key.to_hex().as_bytes()[..PART_DIGITS]].concat();
    CString::new(name).expect("a generated name has no NUL")
}

/// The name of preflight's write probe.
#[must_use]
pub fn preflight(random: u64) -> String {
    format!("{}{}{random:016x}", String::from_utf8_lossy(PREFIX), String::from_utf8_lossy(PREFLIGHT))
}

fn is_hex(digits: &[u8], len: usize) -> bool {
    digits.len() == len && digits.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The three forms of mover's temporary names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// A partial file kept for a resume ([`partial`]).
    Partial,
    /// Preflight's write probe ([`preflight`]).
    Preflight,
    /// An entry of a receiving session before its rename ([`session_temp`]): a file, a
    /// symlink or a special file.
    Session,
}

fn form(name: &[u8]) -> Option<Form> {
    let rest = name.strip_prefix(PREFIX)?;
    if let Some(key) = rest.strip_prefix(PART) {
        return is_hex(key, PART_DIGITS).then_some(Form::Partial);
    }
    if let Some(random) = rest.strip_prefix(PREFLIGHT) {
        return is_hex(random, PREFLIGHT_DIGITS).then_some(Form::Preflight);
    }
    let (session, id) = rest.split_at_checked(SESSION_DIGITS)?;
    let id = id.strip_prefix(b"-")?;
    let canonical = std::str::from_utf8(id)
        .ok()
        .and_then(|id| id.parse::<u64>().ok())
        .is_some_and(|n| n.to_string().as_bytes() == id);
    (is_hex(session, SESSION_DIGITS) && canonical).then_some(Form::Session)
}

/// Whether `name` has one of the exact forms of mover's temporary names.
#[must_use]
pub fn is_generated(name: &[u8]) -> bool {
    form(name).is_some()
}

/// The directory `fsck` keeps at the root of ext2/3/4 volumes (every fresh block-backed volume
/// has one).
pub const LOST_FOUND: &[u8] = b"lost+found";

/// Whether `name` in directory `parent` (relative to the volume root) is file-system furniture:
/// `lost+found` at the root. It is never sent, never deleted and never counted by the
/// mass-delete guard: a fresh ext4 target holds it whatever the source is.
#[must_use]
pub fn is_furniture(parent: &[u8], name: &[u8]) -> bool {
    parent.is_empty() && name == LOST_FOUND
}

/// Whether `stat` is of a file as mover creates its temporary files: regular, owned by this
/// process's effective user, mode 0600, one link. Nothing else may be resumed from or cleaned.
#[must_use]
pub fn is_own_file(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile
        && stat.st_uid == rustix::process::geteuid().as_raw()
        && stat.st_mode & 0o7777 == 0o600
        && stat.st_nlink == 1
}

/// Whether `name`, whose `lstat` is `stat`, is a temporary entry mover left:
/// - a regular file of its own ([`is_own_file`]) under any generated name;
/// - a symlink or special file (FIFO, socket, device node) under a session's name: a session
///   creates those under its temporary names and gives them their owner before the rename, so
///   an interruption can leave one that is not ours. The name carries the session's random
///   64-bit id, and removing a symlink or special file writes nothing and follows nothing;
/// - a regular file with other names under a session's name: a hard link a session made under
///   its temporary name and did not rename into place before it was interrupted. Removing the
///   name removes no content: the file's other names keep it.
#[must_use]
pub fn is_leftover(name: &[u8], stat: &Stat) -> bool {
    let kind = FileType::from_raw_mode(stat.st_mode);
    let node = !matches!(kind, FileType::RegularFile | FileType::Directory);
    let linked = kind == FileType::RegularFile && stat.st_nlink > 1;
    match form(name) {
        Some(Form::Session) if node || linked => true,
        Some(_) => is_own_file(stat),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_generated_forms_are_reserved() {
        let key = blake3::hash(b"key");
        let generated = [
            session_temp(&session(0xfeed), 0).into_bytes(),
            session_temp(&session(u64::MAX), u64::MAX).into_bytes(),
            partial(&key).into_bytes(),
            preflight(7).into_bytes(),
        ];
        for name in &generated {
            assert!(is_generated(name), "{}", String::from_utf8_lossy(name));
        }
        let user = [
            &b".mover-tmp-notes"[..],
            b".mover-tmp-",
            b".mover-tmp-part-",
            b".mover-tmp-part-0123456789abcdef0123456",
            b".mover-tmp-part-0123456789abcdef012345678",
            b".mover-tmp-part-0123456789ABCDEF01234567",
            b".mover-tmp-preflight-0123456789abcdeg",
            b".mover-tmp-0123456789abcdef-",
            b".mover-tmp-0123456789abcdef-01",
            b".mover-tmp-0123456789abcdef-1x",
            b".mover-tmp-0123456789abcdef-18446744073709551616",
            b".mover-tmp-0123456789abcde-1",
            b"x.mover-tmp-0123456789abcdef-1",
        ];
        for name in user {
            assert!(!is_generated(name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn a_leftover_is_a_private_single_link_regular_file_of_ours() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = crate::confine::open_root(dir.path()).unwrap();
        let name = partial(&blake3::hash(b"x"));
        let path = dir.path().join(name.to_str().unwrap());
        drop(crate::confine::create_file(std::os::fd::AsFd::as_fd(&root), name.as_bytes()).unwrap());
        let stat = |path: &std::path::Path| rustix::fs::lstat(path).unwrap();
        assert!(is_leftover(name.as_bytes(), &stat(&path)));
        assert!(!is_leftover(b".mover-tmp-notes", &stat(&path)), "not a generated name");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!is_leftover(name.as_bytes(), &stat(&path)), "mode 0644");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::hard_link(&path, dir.path().join("other")).unwrap();
        assert!(!is_leftover(name.as_bytes(), &stat(&path)), "two links");
        std::fs::remove_file(dir.path().join("other")).unwrap();
        assert!(is_leftover(name.as_bytes(), &stat(&path)));
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(!is_leftover(name.as_bytes(), &stat(&path)), "a directory");
    }

    #[test]
    fn a_symlink_special_file_or_hard_link_under_a_session_name_is_a_leftover_a_foreign_file_is_not() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let name = session_temp(&session(0x96d4_eb9e_6dbe_0f80), 653);
        let path = dir.path().join(name.to_str().unwrap());
        let stat = |path: &std::path::Path| rustix::fs::lstat(path).unwrap();
        // An interrupted session left the symlink it was about to rename into place.
        std::os::unix::fs::symlink("anywhere", &path).unwrap();
        assert!(is_leftover(name.as_bytes(), &stat(&path)), "a symlink");
        std::fs::remove_file(&path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        assert!(is_leftover(name.as_bytes(), &stat(&path)), "a FIFO");
        std::fs::remove_file(&path).unwrap();
        // An interrupted session left a hard link it was about to rename into place: the name
        // goes, the content stays under its other name.
        let linked = dir.path().join("linked");
        std::fs::write(&linked, b"content").unwrap();
        std::fs::set_permissions(&linked, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::hard_link(&linked, &path).unwrap();
        assert!(is_leftover(name.as_bytes(), &stat(&path)), "a hard link under a session's name");
        assert!(!is_leftover(partial(&blake3::hash(b"x")).as_bytes(), &stat(&path)), "a hard link under a partial name");
        std::fs::remove_file(&path).unwrap();
        // A regular file must still be provably ours.
        std::fs::write(&path, b"x").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!is_leftover(name.as_bytes(), &stat(&path)), "a file that is not 0600");
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(!is_leftover(name.as_bytes(), &stat(&path)), "a directory");
    }
}
