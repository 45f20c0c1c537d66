//! Confined file access: every operation is relative to a volume root directory handle and
//! never follows a symlink.
//!
//! Invariants:
//! - a path from the peer is a [`RelPath`]: relative, `/`-separated, no empty, `.` or `..`
//!   component, no NUL, each name at most 255 bytes, at most [`MAX_PATH`] bytes in all;
//! - parent directories are opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)`, so a symlink planted anywhere on the way makes the
//!   open fail (`ELOOP`) instead of leading outside the root, and a file system mounted inside
//!   the volume is never entered (`EXDEV`, reported as a [`MountPoint`]): a walk stays on the
//!   volume's own file system, as `du -x` does (only a source scan asked to cross mounts uses
//!   [`Mounts::Cross`]);
//! - the last component is always handled with `*at` calls and `AT_SYMLINK_NOFOLLOW` /
//!   `O_NOFOLLOW`: a symlink there is replaced or reported, never traversed.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps};

/// Longest relative path accepted from a peer.
pub const MAX_PATH: usize = 4096;
/// Longest single name.
pub const MAX_NAME: usize = 255;

/// Why a path from the peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty path.
    #[error("empty path")]
    Empty,
    /// Starts with `/`.
    #[error("absolute path `{0}`")]
    Absolute(String),
    /// Contains `.`, `..` or an empty component.
    #[error("path `{0}` is not normalised (empty, `.` or `..` component)")]
    NotNormal(String),
    /// Contains a NUL byte.
    #[error("path `{0}` contains a NUL byte")]
    Nul(String),
    /// Too long.
    #[error("path `{0}` is too long")]
    TooLong(String),
    /// A name has the exact form of mover's temporary files ([`crate::reserved`]).
    #[error("path `{0}` has a name of the form mover gives its temporary files")]
    Reserved(String),
}

/// A validated relative path: safe to resolve beneath a root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Validates raw bytes from a peer.
    pub fn new(bytes: &[u8]) -> Result<Self, PathError> {
        let shown = || String::from_utf8_lossy(bytes).into_owned();
        if bytes.is_empty() {
            return Err(PathError::Empty);
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(shown()));
        }
        if bytes.len() > MAX_PATH {
            return Err(PathError::TooLong(shown()));
        }
        for name in bytes.split(|&b| b == b'/') {
            if name.is_empty() || name == b"." || name == b".." {
                return Err(PathError::NotNormal(shown()));
            }
            if name.len() > MAX_NAME {
                return Err(PathError::TooLong(shown()));
            }
            if crate::reserved::is_generated(name) {
                return Err(PathError::Reserved(shown()));
            }
        }
        Ok(RelPath(bytes.to_vec()))
    }

    /// The raw bytes.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The parent directory (empty for a name at the root) and the last name.
    #[must_use]
    pub fn split(&self) -> (&[u8], &[u8]) {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (&[], &self.0),
        }
    }

    /// The path for display (lossy UTF-8).
    #[must_use]
    pub fn display(&self) -> String {
        display_bytes(&self.0)
    }
}

/// Bytes shown as a path: lossy UTF-8.
#[must_use]
pub fn display_bytes(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A name as a C string (names are validated NUL-free).
#[must_use]
pub fn cname(name: &[u8]) -> CString {
    CString::new(name).expect("validated names contain no NUL")
}

/// Opens a volume root as a directory handle (following nothing but the given path itself).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(io::Error::from)
}

fn beneath() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// Whether a path resolution may enter file systems mounted inside the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounts {
    /// Stay on the volume's file system: a mount point is an error ([`MountPoint`]).
    Stay,
    /// Enter them (a source scanned across mounts on request).
    Cross,
}

impl Mounts {
    fn resolve(self) -> ResolveFlags {
        match self {
            Mounts::Stay => beneath(),
            Mounts::Cross => beneath() - ResolveFlags::NO_XDEV,
        }
    }
}

/// A walk or a path resolution met a mount point inside the volume and did not enter it.
#[derive(Debug, thiserror::Error)]
#[error(
    "another file system is mounted at `{}` or on the way to it (mover stays on the volume's own file system)",
    display_bytes(.0)
)]
pub struct MountPoint(pub Vec<u8>);

fn mount_point_error(path: Vec<u8>) -> io::Error {
    io::Error::new(io::ErrorKind::CrossesDevices, MountPoint(path))
}

/// The mount point an error stopped at, if it stopped at one (see [`Mounts::Stay`]).
#[must_use]
pub fn mount_point(error: &io::Error) -> Option<&MountPoint> {
    error.get_ref().and_then(|inner| inner.downcast_ref::<MountPoint>())
}

/// Whether an error is a path resolution refusing to cross a mount point.
#[must_use]
pub fn is_mount_crossing(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) || mount_point(error).is_some()
}

/// Opens the directory `rel` (empty = the root itself) beneath `root`, refusing any symlink
/// and any mount point on the way.
pub fn open_dir(root: BorrowedFd<'_>, rel: &[u8]) -> io::Result<OwnedFd> {
    open_dir_in(root, rel, Mounts::Stay)
}

/// [`open_dir`], entering mounted file systems on the way when `mounts` says so.
pub fn open_dir_in(root: BorrowedFd<'_>, rel: &[u8], mounts: Mounts) -> io::Result<OwnedFd> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    rustix::fs::openat2(
        root,
        cname(path).as_c_str(),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        mounts.resolve(),
    )
    .map_err(|errno| match errno {
        rustix::io::Errno::XDEV => mount_point_error(rel.to_vec()),
        other => other.into(),
    })
}

/// Opens the *regular file* `name` in `dir`, without following a symlink and without ever
/// opening anything else: the name is first opened `O_PATH` (no side effects, whatever it is),
/// checked to be a regular file, and only then reopened for I/O through that handle. A FIFO or
/// device node swapped in under the name is refused instead of blocking or being read from or
/// written to.
fn open_regular(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags) -> io::Result<std::fs::File> {
    let handle = rustix::fs::openat(
        dir,
        cname(name).as_c_str(),
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let stat = rustix::fs::fstat(&handle)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(io::Error::other(format!(
            "`{}` is not a regular file (it changed type under us)",
            display_bytes(name)
        )));
    }
    let reopen = proc_path(handle.as_fd(), b"");
    let reopen = CString::new(&reopen.as_bytes()[..reopen.as_bytes().len() - 1]).expect("no NUL");
    let open = |flags| rustix::fs::open(reopen.as_c_str(), flags | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty());
    let fd = match open(flags | OFlags::NOATIME) {
        // O_NOATIME needs ownership or CAP_FOWNER.
        Err(rustix::io::Errno::PERM) => open(flags)?,
        other => other?,
    };
    let reopened = rustix::fs::fstat(&fd)?;
    if reopened.st_ino != stat.st_ino || reopened.st_dev != stat.st_dev {
        return Err(io::Error::other(format!("`{}` changed while it was opened", display_bytes(name))));
    }
    Ok(std::fs::File::from(fd))
}

/// Opens the regular file `name` in `dir` for reading (see [`open_regular`]); `O_NOATIME` keeps
/// the source's access times untouched when allowed.
pub fn open_file_read(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    open_regular(dir, name, OFlags::RDONLY)
}

/// Creates a new file `name` in `dir` (fails if it exists), mode 0600.
pub fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    let fd = rustix::fs::openat(
        dir,
        cname(name).as_c_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Opens the existing regular file `name` in `dir` for writing, without truncation (see
/// [`open_regular`]).
pub fn open_file_write(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<std::fs::File> {
    open_regular(dir, name, OFlags::WRONLY)
}

/// `lstat` of `name` in `dir`; `Ok(None)` when it does not exist.
pub fn lstat(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, cname(name).as_c_str(), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(stat)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// Removes `name` in `dir` if it is not a directory; `Ok(false)` when it is one.
fn unlink_non_dir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match rustix::fs::unlinkat(dir, cname(name).as_c_str(), AtFlags::empty()) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(true),
        Err(rustix::io::Errno::ISDIR) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

/// Opens the directory `name` in `dir`, not following a symlink; a mount point there is a
/// [`MountPoint`] error unless `mounts` is [`Mounts::Cross`].
pub(crate) fn open_subdir_in(dir: BorrowedFd<'_>, name: &[u8], mounts: Mounts) -> io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        cname(name).as_c_str(),
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        mounts.resolve(),
    )
    .map_err(|errno| match errno {
        rustix::io::Errno::XDEV => mount_point_error(name.to_vec()),
        other => other.into(),
    })
}

/// Opens the directory `name` in `dir` on the same file system (see [`open_subdir_in`]).
pub(crate) fn open_subdir(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<OwnedFd> {
    open_subdir_in(dir, name, Mounts::Stay)
}

/// One directory being walked: its handle, its own name, and the names still to visit.
type Level = (OwnedFd, Vec<u8>, NamesIter);

/// Removes `name` in `dir` whatever it is; a directory is removed with everything beneath it,
/// walking with directory handles, never following symlinks, and with an explicit stack (a
/// deeply nested tree planted in a volume cannot overflow the thread's stack). A mount point
/// on the way is never entered: the removal stops there with a [`MountPoint`] error.
pub fn remove_any(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    if unlink_non_dir(dir, name)? {
        return Ok(());
    }
    let top = open_subdir(dir, name)?;
    let names = list_dir(top.as_fd())?;
    let mut stack: Vec<Level> = vec![(top, name.to_vec(), names.into_iter())];
    while let Some(depth) = stack.len().checked_sub(1) {
        if let Some(child) = stack[depth].2.next() {
            if !unlink_non_dir(stack[depth].0.as_fd(), &child)? {
                let sub = open_subdir(stack[depth].0.as_fd(), &child)?;
                let names = list_dir(sub.as_fd())?;
                stack.push((sub, child, names.into_iter()));
            }
            continue;
        }
        let (handle, own, _) = stack.pop().expect("not empty");
        drop(handle);
        let parent = stack.last().map_or(dir, |level| level.0.as_fd());
        rustix::fs::unlinkat(parent, cname(&own).as_c_str(), AtFlags::REMOVEDIR)?;
    }
    Ok(())
}

/// Whether opening a directory failed because there is none under the name: nothing, a
/// symlink (never followed) or something else.
#[must_use]
pub fn no_directory_there(error: &io::Error) -> bool {
    [rustix::io::Errno::NOTDIR, rustix::io::Errno::LOOP, rustix::io::Errno::NOENT]
        .iter()
        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()))
}

/// How many entries lie beneath `name` in `dir` (0 unless it is a directory), not following
/// symlinks, with an explicit stack. A mount point at or below `name` ends the count with a
/// [`MountPoint`] error naming its path from `dir`: nothing there may be deleted.
pub fn count_below(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<u64> {
    let top = match open_subdir(dir, name) {
        Ok(top) => top,
        Err(error) if no_directory_there(&error) => return Ok(0),
        Err(error) => return Err(error),
    };
    let names = list_dir(top.as_fd())?;
    let mut stack: Vec<Level> = vec![(top, name.to_vec(), names.into_iter())];
    let mut count = 0;
    while let Some(depth) = stack.len().checked_sub(1) {
        let Some(child) = stack[depth].2.next() else {
            stack.pop();
            continue;
        };
        count += 1;
        let parent = stack[depth].0.as_fd();
        let is_dir =
            lstat(parent, &child)?.is_some_and(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::Directory);
        if is_dir {
            let sub = open_subdir(parent, &child).map_err(|error| at_depth(error, &stack, &child))?;
            let names = list_dir(sub.as_fd())?;
            stack.push((sub, child, names.into_iter()));
        }
    }
    Ok(count)
}

/// A [`MountPoint`] met at `child` of the walk's current level names its path from where the
/// walk started; other errors pass unchanged.
fn at_depth(error: io::Error, stack: &[Level], child: &[u8]) -> io::Error {
    if mount_point(&error).is_none() {
        return error;
    }
    let mut path: Vec<u8> = stack.iter().flat_map(|level| level.1.iter().copied().chain([b'/'])).collect();
    path.extend_from_slice(child);
    mount_point_error(path)
}

/// The names of a directory, sorted bytewise, held in one buffer: a directory of a million
/// entries costs its names' bytes and 8 bytes more for each, not an allocation per name (both
/// ends of a sync hold the listing of every directory level they are in).
#[derive(Debug, Default)]
pub struct Names {
    bytes: Vec<u8>,
    /// Start in `bytes` and length of each name, in sorted order.
    spans: Vec<(u32, u16)>,
}

impl Names {
    /// How many names.
    #[must_use]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are none.
    #[cfg(any(test, fuzzing, feature = "test-util"))]
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The `index`th name in sorted order.
    #[must_use]
    pub fn get(&self, index: usize) -> &[u8] {
        name_at(&self.bytes, self.spans[index])
    }

    /// The names in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len()).map(|index| self.get(index))
    }

    fn push(&mut self, name: &[u8]) -> io::Result<()> {
        // Names are at most 255 bytes on Linux filesystems, 255 UTF-16 units (up to 765 bytes)
        // where the kernel translates (CIFS, ntfs3).
        let len = u16::try_from(name.len()).map_err(|_| io::Error::other("a name longer than 64 KiB"))?;
        let start = u32::try_from(self.bytes.len())
            .map_err(|_| io::Error::other("a directory whose names take more than 4 GiB"))?;
        self.bytes.extend_from_slice(name);
        self.spans.push((start, len));
        Ok(())
    }

    /// Sorted, and once each even where a listing repeats a name (some network filesystems, or
    /// a name unlinked and made again while the directory is read): the deletion pass walks the
    /// listing alongside the names it was sent, and a second copy would look unsent.
    fn sorted(mut self) -> Self {
        let bytes = &self.bytes;
        self.spans.sort_unstable_by(|&a, &b| name_at(bytes, a).cmp(name_at(bytes, b)));
        self.spans.dedup_by(|&mut a, &mut b| name_at(bytes, a) == name_at(bytes, b));
        self
    }
}

fn name_at(bytes: &[u8], (start, len): (u32, u16)) -> &[u8] {
    &bytes[start as usize..start as usize + usize::from(len)]
}

/// The names of a [`Names`] in sorted order, each as its own buffer.
#[derive(Debug)]
pub struct NamesIter {
    names: Names,
    next: usize,
}

impl Iterator for NamesIter {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let name = (self.next < self.names.len()).then(|| self.names.get(self.next).to_vec());
        self.next += usize::from(name.is_some());
        name
    }
}

impl IntoIterator for Names {
    type Item = Vec<u8>;
    type IntoIter = NamesIter;

    fn into_iter(self) -> NamesIter {
        NamesIter { names: self, next: 0 }
    }
}

/// The names in a directory (without `.` and `..`), sorted bytewise.
///
/// Read through `dir` itself, from its start: `rustix::fs::Dir::read_from` would first reopen
/// it (`fcntl`, `openat` of `.`, `close`), three system calls per directory on both ends of a
/// re-sync, where one `lseek` does.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Names> {
    use std::mem::MaybeUninit;
    rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(0))?;
    let mut buffer = [MaybeUninit::<u8>::uninit(); 16 * 1024];
    let mut entries = rustix::fs::RawDir::new(dir, &mut buffer);
    let mut names = Names::default();
    while let Some(entry) = entries.next() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(name)?;
        }
    }
    Ok(names.sorted())
}

/// A path naming `name` inside the directory handle `dir` through `/proc/self/fd`, for the
/// `l*xattr` calls that have no `*at` form. The directory is pinned by its handle and the last
/// component is not followed, so this stays race-free.
#[must_use]
pub fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> CString {
    use std::os::fd::AsRawFd;
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    CString::new(path).expect("validated names contain no NUL")
}

/// Lists the extended attribute names of `name` in `dir` (of `dir` itself when `name` is empty)
/// into `buffer`, without following a symlink; an empty `buffer` asks for the size needed.
///
/// `listxattrat(2)` (Linux 6.13) looks up the one name under the handle, like `lstat`. Kernels
/// without it, and seccomp profiles that refuse it, get `llistxattr` on a [`proc_path`], whose
/// walk through `/proc` costs about three times as much: with nothing changed, a re-sync does
/// this for every entry on both ends (listing 19,742 entries: 80 ms that way, 30 ms this way).
pub fn list_xattrs(dir: BorrowedFd<'_>, name: &[u8], buffer: &mut [u8]) -> rustix::io::Result<usize> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // 465 on these; MIPS and alpha number it differently.
    const KNOWN: bool = cfg!(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "powerpc64",
        target_arch = "s390x",
        target_arch = "arm"
    ));
    static MISSING: AtomicBool = AtomicBool::new(!KNOWN);
    if !MISSING.load(Ordering::Relaxed) {
        let flags = if name.is_empty() { AtFlags::EMPTY_PATH } else { AtFlags::SYMLINK_NOFOLLOW };
        match listxattrat(dir, cname(name).as_c_str(), flags, buffer) {
            Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => MISSING.store(true, Ordering::Relaxed),
            other => return other,
        }
    }
    rustix::fs::llistxattr(proc_path(dir, name).as_c_str(), buffer)
}

/// The raw `listxattrat` system call, which rustix does not wrap yet.
#[allow(unsafe_code)]
fn listxattrat(dir: BorrowedFd<'_>, name: &CStr, flags: AtFlags, buffer: &mut [u8]) -> rustix::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // New system calls share their number on the architectures `list_xattrs` calls this on.
    const SYS_LISTXATTRAT: libc::c_long = 465;
    // SAFETY: `dir` is a descriptor borrowed for the call, `name` is NUL-terminated and lives
    // through it, and the kernel writes at most `buffer.len()` bytes to `buffer`.
    let result = unsafe {
        libc::syscall(SYS_LISTXATTRAT, dir.as_raw_fd(), name.as_ptr(), flags.bits(), buffer.as_mut_ptr(), buffer.len())
    };
    match usize::try_from(result) {
        Ok(len) => Ok(len),
        Err(_) => Err(rustix::io::Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(rustix::io::Errno::IO)),
    }
}

/// Converts a timestamp of the wire into the kernel's.
#[must_use]
pub fn timestamps(atime: crate::wire::Timestamp, mtime: crate::wire::Timestamp) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: atime.sec, tv_nsec: i64::from(atime.nsec) },
        last_modification: Timespec { tv_sec: mtime.sec, tv_nsec: i64::from(mtime.nsec) },
    }
}

/// Sets times on `name` in `dir` without following a symlink.
pub fn set_times_at(dir: BorrowedFd<'_>, name: &CStr, times: &Timestamps) -> io::Result<()> {
    rustix::fs::utimensat(dir, name, times, AtFlags::SYMLINK_NOFOLLOW).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_hostile_paths() {
        for bad in [
            &b""[..],
            b"/abs",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"a/.",
            b"a\0b",
            b"a/",
            b".mover-tmp-part-0123456789abcdef01234567",
            b"d/.mover-tmp-0123456789abcdef-1",
        ] {
            assert!(RelPath::new(bad).is_err(), "accepted {:?}", display_bytes(bad));
        }
        // Other names with mover's prefix are user data.
        assert!(RelPath::new(b"d/.mover-tmp-notes").is_ok());
        let long = vec![b'n'; 256];
        assert!(matches!(RelPath::new(&long), Err(PathError::TooLong(_))));
    }

    #[test]
    fn only_regular_files_are_opened_for_io() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(dir.path()).unwrap();
        rustix::fs::mknodat(&root, "fifo", FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("file"), b"ok").unwrap();
        // A FIFO would block a plain open forever; a directory or symlink is no file to read.
        for name in [&b"fifo"[..], b"dir", b"link"] {
            assert!(open_file_read(root.as_fd(), name).is_err(), "{}", display_bytes(name));
            assert!(open_file_write(root.as_fd(), name).is_err(), "{}", display_bytes(name));
        }
        use std::io::Read;
        let mut text = String::new();
        open_file_read(root.as_fd(), b"file").unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "ok");
    }

    #[test]
    fn a_directory_lists_whole_and_sorted_through_one_handle_as_often_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        // About 90 KiB of directory entries: several reads of the 16 KiB buffer.
        let mut expected: Vec<Vec<u8>> = (0..2000)
            .map(|i| format!("entry-with-a-name-of-some-length-{:05}", (i * 7919) % 2000).into_bytes())
            .collect();
        for name in &expected {
            std::fs::write(dir.path().join(std::str::from_utf8(name).unwrap()), b"").unwrap();
        }
        expected.sort();
        let root = open_root(dir.path()).unwrap();
        let handle = open_dir(root.as_fd(), b"").unwrap();
        let listed = |names: Names| {
            let borrowed: Vec<Vec<u8>> = names.iter().map(<[u8]>::to_vec).collect();
            let owned: Vec<Vec<u8>> = names.into_iter().collect();
            assert_eq!(borrowed, owned);
            owned
        };
        // A second listing through the same handle starts over, not where the first ended.
        assert_eq!(listed(list_dir(handle.as_fd()).unwrap()), expected);
        assert_eq!(listed(list_dir(handle.as_fd()).unwrap()), expected);
        let names = list_dir(open_dir(root.as_fd(), b"").unwrap().as_fd()).unwrap();
        assert_eq!((names.len(), names.get(0), names.get(1999)), (2000, &expected[0][..], &expected[1999][..]));
    }

    #[test]
    fn a_listing_that_repeats_a_name_holds_it_once() {
        let mut names = Names::default();
        for name in [&b"b"[..], b"a", b"b", b"c", b"a", &[b'n'; 700]] {
            names.push(name).unwrap();
        }
        let names: Vec<Vec<u8>> = names.sorted().into_iter().collect();
        assert_eq!(names, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), vec![b'n'; 700]]);
    }

    #[test]
    fn xattr_listing_by_handle_matches_the_proc_path_and_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = open_root(dir.path()).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", dir.path().join("link")).unwrap();
        // Longer than read_xattrs' first 1 KiB buffer, so its size query is exercised too.
        for i in 0..40 {
            let name = format!("user.attribute-with-a-long-name-{i:04}");
            rustix::fs::setxattr(dir.path().join("file"), name.as_str(), b"v", rustix::fs::XattrFlags::empty())
                .unwrap();
        }
        rustix::fs::setxattr(dir.path(), "user.root", b"r", rustix::fs::XattrFlags::empty()).unwrap();
        let by_path = |name: &[u8]| {
            let mut buffer = vec![0u8; 8192];
            let len = rustix::fs::llistxattr(proc_path(root.as_fd(), name).as_c_str(), &mut buffer[..]).unwrap();
            buffer.truncate(len);
            buffer
        };
        for name in [&b"file"[..], b"link", b""] {
            let size = list_xattrs(root.as_fd(), name, &mut []).unwrap();
            let mut buffer = vec![0u8; size];
            let len = list_xattrs(root.as_fd(), name, &mut buffer[..]).unwrap();
            assert_eq!(buffer[..len], by_path(name)[..], "{}", display_bytes(name));
        }
        assert!(by_path(b"file").len() > 1024);
        assert_eq!(by_path(b"").as_slice(), b"user.root\0");
        // The symlink's own (empty) list, not its target's.
        assert_eq!(list_xattrs(root.as_fd(), b"link", &mut [0u8; 64][..]).unwrap(), 0);
        let mut small = [0u8; 16];
        assert_eq!(list_xattrs(root.as_fd(), b"file", &mut small[..]), Err(rustix::io::Errno::RANGE));
        let policy = crate::meta::XattrPolicy::default();
        assert_eq!(crate::meta::read_xattrs(root.as_fd(), b"file", policy).unwrap().len(), 40);
    }

    #[test]
    fn removes_and_counts_deep_trees_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("canary"), b"x").unwrap();
        let mut path = dir.path().join("top");
        for _ in 0..300 {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("leaf"), b"leaf").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("top/d/link")).unwrap();
        let root = open_root(dir.path()).unwrap();
        // 300 nested directories below `top`, the leaf and the link.
        assert_eq!(count_below(root.as_fd(), b"top").unwrap(), 300 + 2);
        remove_any(root.as_fd(), b"top").unwrap();
        assert!(!dir.path().join("top").exists());
        assert_eq!(std::fs::read(outside.path().join("canary")).unwrap(), b"x");
        assert_eq!(count_below(root.as_fd(), b"top").unwrap(), 0);
    }

    #[test]
    fn accepts_odd_but_legal_names() {
        for good in [&b"a"[..], b"a/b/c", b"with space", b"new\nline", b"\xff\xfe", b"..a", b"a.."] {
            assert!(RelPath::new(good).is_ok(), "refused {:?}", display_bytes(good));
        }
        assert!(RelPath::new(&vec![b'n'; 255]).is_ok());
        let path = RelPath::new(b"a/b/c").unwrap();
        assert_eq!(path.split(), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(RelPath::new(b"c").unwrap().split(), (&b""[..], &b"c"[..]));
    }
}
