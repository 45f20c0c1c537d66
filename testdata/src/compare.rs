//! Comparison of two directory trees for full metadata fidelity.
//!
//! Both trees are walked with `lstat` (symlinks are never followed) in byte order of the names.
//! For every relative path the comparator checks presence, type, permission bits, owner, mtime
//! (seconds and nanoseconds, for every type), size and content of regular files, symlink
//! targets, device numbers, `user.*` and `system.posix_acl_*` xattrs, the allocation of sparse
//! files, and finally that both trees partition their paths into the same hardlink groups.
//! Access and change times, inode numbers, link counts and directory sizes are not compared.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use crate::CHUNK;

/// What [`compare`] checks besides what it always checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompareOptions {
    /// Compare numeric uid and gid. Default: true when running as root.
    pub ownership: bool,
    /// For regular files that are sparse in tree A (allocated size below the apparent size),
    /// require that tree B allocates at most 64 KiB + 10% more than A, i.e. that holes stayed
    /// holes. Default: true.
    pub allocation: bool,
    /// Compare the mode, owner, mtime and xattrs of the two roots themselves. Default: true.
    pub root_metadata: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self { ownership: rustix::process::geteuid().is_root(), allocation: true, root_metadata: true }
    }
}

/// One difference between the two trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Path relative to the roots (`.` for the roots themselves), lossily converted to UTF-8.
    pub path: String,
    /// What differs, value in tree A first, e.g. `mtime 1.000000001 vs 1.000000002`.
    pub what: String,
}

impl fmt::Display for Difference {
    /// `path: what`, with control characters of the path (e.g. newlines) escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.path.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        write!(f, ": {}", self.what)
    }
}

/// Compares the trees at `a` and `b`, returning every difference found (empty if identical).
///
/// Differences are listed in walk order (hardlink differences last). An entry present on one
/// side only is reported once, without descending into it. Errors reading either tree (other
/// than missing xattr support) are returned as errors, with the offending path in the message.
pub fn compare(a: &Path, b: &Path, opts: &CompareOptions) -> io::Result<Vec<Difference>> {
    let mut comparer =
        Comparer { a: Side::new(a), b: Side::new(b), opts, diffs: Vec::new(), linked: Vec::new(), buf: vec![0; CHUNK] };
    let ma = lstat(a)?;
    let mb = lstat(b)?;
    comparer.entry(&[], &ma, &mb, opts.root_metadata)?;
    comparer.hardlinks();
    Ok(comparer.diffs)
}

/// Panics unless [`compare`] with default options finds the trees identical, listing the first
/// 20 differences and their total count.
#[track_caller]
pub fn assert_identical(a: &Path, b: &Path) {
    let diffs = match compare(a, b, &CompareOptions::default()) {
        Ok(diffs) => diffs,
        Err(e) => panic!("comparing {} with {}: {e}", a.display(), b.display()),
    };
    if diffs.is_empty() {
        return;
    }
    let mut msg = format!("{} and {} differ ({} differences):\n", a.display(), b.display(), diffs.len());
    for diff in diffs.iter().take(20) {
        let _ = writeln!(msg, "  {diff}");
    }
    if diffs.len() > 20 {
        let _ = writeln!(msg, "  ... and {} more", diffs.len() - 20);
    }
    panic!("{msg}");
}

/// The kind of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn of(meta: &Metadata) -> Self {
        let t = meta.file_type();
        if t.is_dir() {
            Self::Dir
        } else if t.is_file() {
            Self::File
        } else if t.is_symlink() {
            Self::Symlink
        } else if t.is_fifo() {
            Self::Fifo
        } else if t.is_socket() {
            Self::Socket
        } else if t.is_char_device() {
            Self::CharDevice
        } else {
            Self::BlockDevice
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Dir => "directory",
            Self::File => "regular file",
            Self::Symlink => "symlink",
            Self::Fifo => "fifo",
            Self::Socket => "socket",
            Self::CharDevice => "char device",
            Self::BlockDevice => "block device",
        }
    }
}

/// One of the two trees, with its multiply linked inodes.
struct Side<'a> {
    root: &'a Path,
    /// (dev, ino) of every visited non-directory with more than one link, to its paths.
    links: HashMap<(u64, u64), Vec<Vec<u8>>>,
    /// Path to (dev, ino), for the same entries.
    inode_of: HashMap<Vec<u8>, (u64, u64)>,
}

impl<'a> Side<'a> {
    fn new(root: &'a Path) -> Self {
        Self { root, links: HashMap::new(), inode_of: HashMap::new() }
    }

    fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() { self.root.to_path_buf() } else { self.root.join(std::ffi::OsStr::from_bytes(rel)) }
    }

    fn record(&mut self, rel: &[u8], meta: &Metadata) {
        if !meta.is_dir() && meta.nlink() > 1 {
            let inode = (meta.dev(), meta.ino());
            self.links.entry(inode).or_default().push(rel.to_vec());
            self.inode_of.insert(rel.to_vec(), inode);
        }
    }

    /// The sorted paths sharing `rel`'s inode (just `rel` if it is not multiply linked).
    fn group(&self, rel: &[u8]) -> Vec<Vec<u8>> {
        let mut group = match self.inode_of.get(rel) {
            Some(inode) => self.links[inode].clone(),
            None => vec![rel.to_vec()],
        };
        group.sort();
        group
    }
}

struct Comparer<'a> {
    a: Side<'a>,
    b: Side<'a>,
    opts: &'a CompareOptions,
    diffs: Vec<Difference>,
    /// Paths of same-type non-directories present in both trees and multiply linked in one.
    linked: Vec<Vec<u8>>,
    /// Read buffer for hashing.
    buf: Vec<u8>,
}

impl Comparer<'_> {
    fn diff(&mut self, rel: &[u8], what: String) {
        let path = if rel.is_empty() { ".".to_owned() } else { String::from_utf8_lossy(rel).into_owned() };
        self.diffs.push(Difference { path, what });
    }

    /// Compares an entry present in both trees, descending into directories.
    fn entry(&mut self, rel: &[u8], ma: &Metadata, mb: &Metadata, metadata: bool) -> io::Result<()> {
        let (ka, kb) = (Kind::of(ma), Kind::of(mb));
        self.a.record(rel, ma);
        self.b.record(rel, mb);
        if ka != kb {
            self.diff(rel, format!("type {} vs {}", ka.name(), kb.name()));
            return Ok(());
        }
        if ka != Kind::Dir && (ma.nlink() > 1 || mb.nlink() > 1) {
            self.linked.push(rel.to_vec());
        }
        if metadata {
            self.metadata(rel, ka, ma, mb)?;
        }
        if ka == Kind::Dir {
            self.dir(rel)?;
        }
        Ok(())
    }

    fn metadata(&mut self, rel: &[u8], kind: Kind, ma: &Metadata, mb: &Metadata) -> io::Result<()> {
        // Symlink permissions are always 0777 on Linux and cannot be changed.
        if kind != Kind::Symlink && ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            self.diff(rel, format!("mode {:04o} vs {:04o}", ma.mode() & 0o7777, mb.mode() & 0o7777));
        }
        if self.opts.ownership {
            if ma.uid() != mb.uid() {
                self.diff(rel, format!("uid {} vs {}", ma.uid(), mb.uid()));
            }
            if ma.gid() != mb.gid() {
                self.diff(rel, format!("gid {} vs {}", ma.gid(), mb.gid()));
            }
        }
        if (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()) {
            let what = format!("mtime {}.{:09} vs {}.{:09}", ma.mtime(), ma.mtime_nsec(), mb.mtime(), mb.mtime_nsec());
            self.diff(rel, what);
        }
        match kind {
            Kind::File => self.file(rel, ma, mb)?,
            Kind::Symlink => {
                let ta = fs::read_link(self.a.path(rel))?.into_os_string().into_vec();
                let tb = fs::read_link(self.b.path(rel))?.into_os_string().into_vec();
                if ta != tb {
                    let what = format!(
                        "symlink target {:?} vs {:?}",
                        String::from_utf8_lossy(&ta),
                        String::from_utf8_lossy(&tb)
                    );
                    self.diff(rel, what);
                }
            }
            Kind::CharDevice | Kind::BlockDevice if ma.rdev() != mb.rdev() => {
                self.diff(rel, format!("rdev {:#x} vs {:#x}", ma.rdev(), mb.rdev()));
            }
            _ => {}
        }
        self.xattrs(rel)
    }

    fn file(&mut self, rel: &[u8], ma: &Metadata, mb: &Metadata) -> io::Result<()> {
        if ma.size() == mb.size() {
            let ha = hash_file(&self.a.path(rel), &mut self.buf)?;
            let hb = hash_file(&self.b.path(rel), &mut self.buf)?;
            if ha != hb {
                self.diff(rel, format!("content blake3 {} vs {}", &ha.to_hex()[..16], &hb.to_hex()[..16]));
            }
        } else {
            self.diff(rel, format!("size {} vs {}", ma.size(), mb.size()));
        }
        let (alloc_a, alloc_b) = (ma.blocks() * 512, mb.blocks() * 512);
        if self.opts.allocation && alloc_a < ma.size() && alloc_b > alloc_a + 64 * 1024 + alloc_a / 10 {
            self.diff(rel, format!("allocated {alloc_a} vs {alloc_b} bytes of {} (holes filled in)", ma.size()));
        }
        Ok(())
    }

    fn xattrs(&mut self, rel: &[u8]) -> io::Result<()> {
        let xa = read_xattrs(&self.a.path(rel))?;
        let xb = read_xattrs(&self.b.path(rel))?;
        let (mut ia, mut ib) = (xa.iter().peekable(), xb.iter().peekable());
        loop {
            let order = match (ia.peek(), ib.peek()) {
                (None, None) => return Ok(()),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((na, _)), Some((nb, _))) => na.cmp(nb),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (name, _) = ia.next().expect("peeked");
                    self.diff(rel, format!("xattr {} missing in b", String::from_utf8_lossy(name)));
                }
                std::cmp::Ordering::Greater => {
                    let (name, _) = ib.next().expect("peeked");
                    self.diff(rel, format!("xattr {} missing in a", String::from_utf8_lossy(name)));
                }
                std::cmp::Ordering::Equal => {
                    let ((name, va), (_, vb)) = (ia.next().expect("peeked"), ib.next().expect("peeked"));
                    if va != vb {
                        let name = String::from_utf8_lossy(name);
                        self.diff(rel, format!("xattr {name} value {} vs {}", hex(va), hex(vb)));
                    }
                }
            }
        }
    }

    /// Merges the sorted listings of a directory present in both trees.
    fn dir(&mut self, rel: &[u8]) -> io::Result<()> {
        let names_a = read_names(&self.a.path(rel))?;
        let names_b = read_names(&self.b.path(rel))?;
        let (mut i, mut j) = (0, 0);
        while i < names_a.len() || j < names_b.len() {
            let order = match (names_a.get(i), names_b.get(j)) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            let name = if order.is_gt() { &names_b[j] } else { &names_a[i] };
            let child = if rel.is_empty() { name.clone() } else { [rel, b"/", name].concat() };
            match order {
                std::cmp::Ordering::Less => {
                    let meta = lstat(&self.a.path(&child))?;
                    self.a.record(&child, &meta);
                    self.diff(&child, format!("missing in b ({} only in a)", Kind::of(&meta).name()));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let meta = lstat(&self.b.path(&child))?;
                    self.b.record(&child, &meta);
                    self.diff(&child, format!("missing in a ({} only in b)", Kind::of(&meta).name()));
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let ma = lstat(&self.a.path(&child))?;
                    let mb = lstat(&self.b.path(&child))?;
                    self.entry(&child, &ma, &mb, true)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// Checks that the paths present in both trees are partitioned into the same hardlink groups.
    fn hardlinks(&mut self) {
        for rel in std::mem::take(&mut self.linked) {
            let (ga, gb) = (self.a.group(&rel), self.b.group(&rel));
            if ga != gb {
                let show = |g: &[Vec<u8>]| {
                    g.iter().map(|p| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(", ")
                };
                self.diff(&rel, format!("hardlinks [{}] vs [{}]", show(&ga), show(&gb)));
            }
        }
    }
}

fn with_path(path: &Path, e: impl Into<io::Error>) -> io::Error {
    let e = e.into();
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn lstat(path: &Path) -> io::Result<Metadata> {
    fs::symlink_metadata(path).map_err(|e| with_path(path, e))
}

/// The names in a directory, sorted bytewise.
fn read_names(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(path).map_err(|e| with_path(path, e))? {
        names.push(entry.map_err(|e| with_path(path, e))?.file_name().into_vec());
    }
    names.sort_unstable();
    Ok(names)
}

/// BLAKE3 of a file's content, read in pieces the size of `buf`.
fn hash_file(path: &Path, buf: &mut [u8]) -> io::Result<blake3::Hash> {
    let mut file = File::open(path).map_err(|e| with_path(path, e))?;
    let mut hasher = blake3::Hasher::new();
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(hasher.finalize()),
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(with_path(path, e)),
        }
    }
}

/// The `user.*` and `system.posix_acl_*` xattrs of `path` (not following symlinks), sorted by
/// name; empty where the filesystem does not support xattrs.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let list = loop {
        let len = match rustix::fs::llistxattr_query(path) {
            Ok(len) => len,
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(with_path(path, e)),
        };
        let mut list = vec![0; len];
        match rustix::fs::llistxattr(path, &mut list[..]) {
            Ok(n) => {
                list.truncate(n);
                break list;
            }
            Err(Errno::RANGE) => {}
            Err(e) => return Err(with_path(path, e)),
        }
    };
    let mut xattrs = Vec::new();
    for name in list.split(|&b| b == 0) {
        if !(name.starts_with(b"user.") || name.starts_with(b"system.posix_acl_")) {
            continue;
        }
        let value = loop {
            let len = match rustix::fs::lgetxattr_query(path, name) {
                Ok(len) => len,
                Err(e) => return Err(with_path(path, e)),
            };
            let mut value = vec![0; len];
            if len == 0 {
                break value;
            }
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => {
                    value.truncate(n);
                    break value;
                }
                Err(Errno::RANGE) => {}
                Err(e) => return Err(with_path(path, e)),
            }
        };
        xattrs.push((name.to_vec(), value));
    }
    xattrs.sort();
    Ok(xattrs)
}

/// Hex of the first 32 bytes of `value`, with its length when longer.
fn hex(value: &[u8]) -> String {
    let mut out = String::new();
    for b in value.iter().take(32) {
        let _ = write!(out, "{b:02x}");
    }
    if value.len() > 32 {
        let _ = write!(out, "... ({} bytes)", value.len());
    }
    if value.is_empty() {
        out.push_str("(empty)");
    }
    out
}
