//! Deterministic generator of realistic, hostile-ish directory trees.
//!
//! Everything is derived from [`TreeSpec::seed`] with a small `SplitMix64` generator, so two
//! generations of the same spec produce trees that [`crate::compare`] finds identical (inode
//! numbers and ctimes aside). Metadata is applied in an order that makes it stick: content, then
//! owner (which clears set-id bits), `user.*` xattrs (which need write permission), mode, ACLs
//! (which adjust the group bits), times; directories get their metadata last, deepest first,
//! after all their contents exist.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{PermissionsExt, lchown, symlink};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use crate::{CHUNK, random_bytes, write_random_to};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Directories nest at most this deep (the root is depth 0).
const MAX_DEPTH: usize = 6;
/// Page size of [`BigFile::Database`] files.
const DB_PAGE: usize = 8192;
/// Number of entries the fixed exotic fixtures (`special/`) create.
const FIXTURE_ENTRIES: usize = 95;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeSpec {
    /// Approximate number of regular files spread over the tree; symlinks (1/16 of it),
    /// extra hardlink names (1/20), FIFOs (1/100, exotic only), big files and fixtures come on top.
    pub files: usize,
    /// Number of directories spread over the tree (depth up to 6), about 1/16 of them left empty.
    pub dirs: usize,
    /// Upper bound of the size of "medium" files (about 0.5% of the files; the others are
    /// empty or log-uniformly distributed up to 8 or 16 KiB).
    pub max_file_size: u64,
    /// Big files, created in the top-level directory `big/`.
    pub big_files: Vec<BigFile>,
    /// Seed everything is derived from.
    pub seed: u64,
    /// Include every exotic kind: special permission bits, FIFOs, xattrs and ACLs, sparse files,
    /// hostile names and the fixed fixtures under `special/`. When false the tree has only
    /// directories, regular files, symlinks and hardlinks (with ordinary modes), for benches.
    pub exotic: bool,
}

/// A big file of [`TreeSpec::big_files`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BigFile {
    /// This many bytes of incompressible random data.
    Random(u64),
    /// This many bytes of compressible text (lines of words).
    Text(u64),
    /// A sparse file: `size` bytes of which `data_len` random bytes are written every
    /// `data_every` bytes (starting at offset 0; no data at all if `data_every` is 0), the rest
    /// being holes.
    Sparse {
        /// Apparent size in bytes.
        size: u64,
        /// Distance between the starts of two data islands.
        data_every: u64,
        /// Length of each data island.
        data_len: u64,
    },
    /// This many bytes of 8 KiB database-like pages: a header, line pointers, repetitive rows at
    /// the end of the page, zeros in between, and every 16th page entirely zero (written, not a
    /// hole).
    Database(u64),
}

/// What [`generate`] created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Directory entries created below the root (every name counts, hardlinks included).
    pub entries: u64,
    /// Regular files (inodes, so a hardlink group counts once).
    pub files: u64,
    /// Apparent size of all regular files (each inode once).
    pub bytes: u64,
}

impl TreeSpec {
    /// About 200 entries including every exotic kind; generates in well under a second.
    #[must_use]
    pub fn small() -> Self {
        Self {
            files: 64,
            dirs: 16,
            max_file_size: 128 * KIB,
            big_files: vec![
                BigFile::Random(300 * KIB),
                BigFile::Text(200 * KIB),
                BigFile::Sparse { size: 4 * MIB, data_every: MIB, data_len: 4 * KIB },
                BigFile::Database(256 * KIB),
            ],
            seed: 0x6d6f_7665_7221,
            exotic: true,
        }
    }

    /// At least `n` entries in total (slightly more for small `n`: the fixtures alone are about
    /// 100), mostly small files, with every exotic kind.
    #[must_use]
    pub fn with_entries(n: usize) -> Self {
        let big_files = vec![
            BigFile::Random(MIB),
            BigFile::Text(MIB),
            BigFile::Sparse { size: 64 * MIB, data_every: 4 * MIB, data_len: 64 * KIB },
            BigFile::Database(2 * MIB),
        ];
        let dirs = n / 16;
        let fixed = FIXTURE_ENTRIES + big_files.len() + 1;
        let rest = n.saturating_sub(dirs + fixed);
        // Each file brings 1/16 symlink, 1/20 hardlink name and 1/100 FIFO along: 1.1225 entries.
        let files = (rest * 10_000).div_ceil(11_225) + 4;
        Self { files, dirs, max_file_size: 256 * KIB, big_files, seed: 0x6d6f_7665_7222, exotic: true }
    }
}

/// Generates the tree described by `spec` into `root`, which must exist and be empty.
///
/// Ownership is only varied when running as root; otherwise everything belongs to the caller
/// (and the mode-0000 fixture gets mode 0400, so the caller can still read it). Extended
/// attributes and ACLs are skipped silently where the filesystem does not support them.
///
/// Note that some directories end up read-only (mode 0500 or 0555): removing the tree as a
/// non-root user requires making them writable first.
pub fn generate(root: &Path, spec: &TreeSpec) -> io::Result<GenStats> {
    if !fs::symlink_metadata(root)?.is_dir() {
        return Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{}: not a directory", root.display())));
    }
    if fs::read_dir(root)?.next().is_some() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: not empty", root.display())));
    }
    let mut generator = Generator {
        root,
        spec,
        rng: Rng::new(spec.seed),
        as_root: rustix::process::geteuid().is_root(),
        next_id: 0,
        dirs: Vec::new(),
        fill_dirs: Vec::new(),
        files: Vec::new(),
        stats: GenStats::default(),
    };
    generator.run()?;
    Ok(generator.stats)
}

/// A timestamp as (seconds since the epoch, nanoseconds).
type Time = (i64, i64);

/// 2023-11-14 with nanoseconds.
const T_RECENT: Time = (1_700_000_000, 123_456_789);
/// 2001 with a single nanosecond.
const T_2001: Time = (978_307_200 + 12_345, 1);
/// Year 2100, last nanosecond of its second.
const T_2100: Time = (4_102_444_800 + 777, 999_999_999);
/// 1969-12-31 00:00:00.000000123.
const T_PRE_1970: Time = (-86_400, 123);
/// One nanosecond before the epoch.
const T_JUST_BEFORE_EPOCH: Time = (-1, 999_999_999);
/// The epoch itself, which some tools mistake for "unset".
const T_EPOCH: Time = (0, 0);

/// Metadata to apply to a created entry.
#[derive(Debug, Clone)]
struct Meta {
    mode: u32,
    /// (uid, gid), applied only when running as root.
    owner: Option<(u32, u32)>,
    mtime: Time,
    /// `user.*` ones are applied before the mode, `system.*` ones (ACLs) after it.
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn new(mode: u32, mtime: Time) -> Self {
        Self { mode, owner: None, mtime, xattrs: Vec::new() }
    }

    fn owned(mut self, uid: u32, gid: u32) -> Self {
        self.owner = Some((uid, gid));
        self
    }

    fn xattr(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.push((name.to_owned(), value.into()));
        self
    }
}

/// A directory of the tree, whose metadata is applied at the very end.
struct DirInfo {
    rel: PathBuf,
    depth: usize,
    meta: Meta,
}

struct Generator<'a> {
    root: &'a Path,
    spec: &'a TreeSpec,
    rng: Rng,
    as_root: bool,
    /// Makes every generated name unique.
    next_id: u64,
    /// Every directory including the root (index 0).
    dirs: Vec<DirInfo>,
    /// Indexes into `dirs` of the directories random entries may be put in.
    fill_dirs: Vec<usize>,
    /// Randomly generated regular files: candidates for hardlinks and symlink targets.
    files: Vec<PathBuf>,
    stats: GenStats,
}

impl Generator<'_> {
    fn run(&mut self) -> io::Result<()> {
        let root_meta = if self.spec.exotic {
            self.dir_meta().owned(0, 1000).xattr("user.volume", "root")
        } else {
            self.dir_meta()
        };
        let root_meta = Meta { mode: if self.spec.exotic { 0o2775 } else { 0o755 }, ..root_meta };
        self.dirs.push(DirInfo { rel: PathBuf::new(), depth: 0, meta: root_meta });
        self.fill_dirs.push(0);

        self.random_dirs()?;
        self.random_files()?;
        self.big_files()?;
        if self.spec.exotic {
            self.fixtures()?;
        }
        self.random_hardlinks()?;
        self.random_symlinks()?;
        if self.spec.exotic {
            self.random_fifos()?;
        }
        self.finish_dirs()
    }

    fn abs(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() { self.root.to_path_buf() } else { self.root.join(rel) }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ----- primitives -----

    /// Applies owner, `user.*` xattrs (while the entry is still writable by its owner), mode,
    /// ACLs (which then have the last word on the group bits) and mtime. Symlinks only get owner
    /// and mtime.
    fn apply(&self, path: &Path, meta: &Meta, is_symlink: bool) -> io::Result<()> {
        if self.as_root
            && let Some((uid, gid)) = meta.owner
        {
            lchown(path, Some(uid), Some(gid))?;
        }
        if !is_symlink {
            let (acls, user): (Vec<_>, Vec<_>) = meta.xattrs.iter().partition(|(name, _)| name.starts_with("system."));
            for (name, value) in user {
                set_xattr(path, name, value)?;
            }
            fs::set_permissions(path, Permissions::from_mode(meta.mode))?;
            for (name, value) in acls {
                set_xattr(path, name, value)?;
            }
        }
        set_mtime(path, meta.mtime)
    }

    fn add_dir(&mut self, rel: PathBuf, depth: usize, meta: Meta) -> io::Result<usize> {
        fs::create_dir(self.abs(&rel))?;
        self.stats.entries += 1;
        self.dirs.push(DirInfo { rel, depth, meta });
        Ok(self.dirs.len() - 1)
    }

    /// Creates a regular file with `content`, applying `meta`.
    fn add_file(&mut self, rel: &Path, content: &[u8], meta: &Meta) -> io::Result<()> {
        let path = self.abs(rel);
        fs::write(&path, content)?;
        self.file_done(&path, content.len() as u64, meta)
    }

    fn file_done(&mut self, path: &Path, size: u64, meta: &Meta) -> io::Result<()> {
        self.apply(path, meta, false)?;
        self.stats.entries += 1;
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }

    fn add_symlink(&mut self, target: &[u8], rel: &Path, meta: &Meta) -> io::Result<()> {
        let path = self.abs(rel);
        symlink(OsString::from_vec(target.to_vec()), &path)?;
        self.apply(&path, meta, true)?;
        self.stats.entries += 1;
        Ok(())
    }

    fn add_hardlink(&mut self, existing: &Path, rel: &Path) -> io::Result<()> {
        fs::hard_link(self.abs(existing), self.abs(rel))?;
        self.stats.entries += 1;
        Ok(())
    }

    fn add_fifo(&mut self, rel: &Path, meta: &Meta) -> io::Result<()> {
        let path = self.abs(rel);
        rustix::fs::mknodat(CWD, &path, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
        self.apply(&path, meta, false)?;
        self.stats.entries += 1;
        Ok(())
    }

    // ----- random choices -----

    fn time(&mut self) -> Time {
        let ns = 1 + self.rng.below(999_999_999).cast_signed();
        let year = 31_536_000;
        if !self.spec.exotic {
            return (1_500_000_000 + self.rng.below(200_000_000).cast_signed(), ns);
        }
        match self.rng.below(100) {
            0..60 => (1_500_000_000 + self.rng.below(200_000_000).cast_signed(), ns),
            60..70 => (T_2001.0 + self.rng.below(year).cast_signed(), ns),
            70..78 => (T_2100.0 + self.rng.below(year).cast_signed(), ns),
            78..84 => (-86_400 * (1 + self.rng.below(20_000).cast_signed()), ns),
            84..86 => T_PRE_1970,
            86..88 => T_JUST_BEFORE_EPOCH,
            88..95 => (1_500_000_000 + self.rng.below(200_000_000).cast_signed(), 0),
            _ => (1_600_000_000 + self.rng.below(100_000_000).cast_signed(), if ns % 2 == 0 { 1 } else { 999_999_999 }),
        }
    }

    fn owner(&mut self) -> (u32, u32) {
        self.rng.weighted(&[
            (50, (0, 0)),
            (20, (1000, 1000)),
            (10, (1001, 1000)),
            (8, (65534, 65534)),
            (7, (123_456, 123_456)),
            (5, (1000, 123_457)),
        ])
    }

    fn file_mode(&mut self) -> u32 {
        if !self.spec.exotic {
            return self.rng.weighted(&[(70, 0o644), (10, 0o600), (15, 0o755), (5, 0o444)]);
        }
        let zero = if self.as_root { 0o000 } else { 0o400 };
        self.rng.weighted(&[
            (40, 0o644),
            (10, 0o600),
            (8, 0o640),
            (6, 0o444),
            (10, 0o755),
            (4, 0o700),
            (3, 0o4755),
            (3, 0o2755),
            (1, 0o6755),
            (1, 0o1644),
            (3, 0o400),
            (3, 0o666),
            (2, zero),
        ])
    }

    fn dir_mode(&mut self) -> u32 {
        if !self.spec.exotic {
            return self.rng.weighted(&[(80, 0o755), (10, 0o700), (10, 0o750)]);
        }
        self.rng.weighted(&[(50, 0o755), (10, 0o700), (10, 0o750), (8, 0o2775), (7, 0o1777), (5, 0o500), (5, 0o555)])
    }

    /// A few `user.*` xattrs: text, binary with NULs, and an empty value.
    fn random_xattrs(&mut self, meta: &mut Meta) {
        let id = self.id();
        meta.xattrs.push(("user.comment".into(), format!("generated entry {id}").into_bytes()));
        if self.rng.below(2) == 0 {
            meta.xattrs.push(("user.empty".into(), Vec::new()));
        }
        for k in 0..self.rng.below(3) {
            let len = 1 + self.rng.below(200) as usize;
            let mut value = random_bytes(self.rng.next_u64(), len);
            value[0] = 0;
            meta.xattrs.push((format!("user.bin.{k}"), value));
        }
    }

    fn file_meta(&mut self) -> Meta {
        let mode = self.file_mode();
        let mtime = self.time();
        let mut meta = Meta { owner: Some(self.owner()), ..Meta::new(mode, mtime) };
        if self.spec.exotic {
            match self.rng.below(200) {
                0..8 => self.random_xattrs(&mut meta),
                8 => meta.xattrs.push(("system.posix_acl_access".into(), file_acl())),
                _ => {}
            }
        }
        meta
    }

    fn dir_meta(&mut self) -> Meta {
        let mode = self.dir_mode();
        let mtime = self.time();
        let mut meta = Meta { owner: Some(self.owner()), ..Meta::new(mode, mtime) };
        if self.spec.exotic && self.rng.below(10) == 0 {
            self.random_xattrs(&mut meta);
        }
        meta
    }

    fn simple_meta(&mut self, mode: u32) -> Meta {
        let mtime = self.time();
        Meta { owner: Some(self.owner()), ..Meta::new(mode, mtime) }
    }

    /// A unique name; with `exotic`, one in five is hostile (non-UTF-8, newline, spaces, leading
    /// dash, unicode, 255 bytes long, ...).
    fn name(&mut self, prefix: &str) -> OsString {
        let id = self.id();
        if !self.spec.exotic || self.rng.below(5) != 0 {
            let ext = self.rng.weighted(&[(3, ""), (3, ".txt"), (2, ".bin"), (1, ".log"), (1, ".json")]);
            return format!("{prefix}-{id:05}{ext}").into();
        }
        let name: Vec<u8> = match self.rng.below(10) {
            0 => [&b"\xff\xfe name-"[..], id.to_string().as_bytes()].concat(),
            1 => format!("new\nline-{id}").into_bytes(),
            2 => format!(" with  spaces {id} ").into_bytes(),
            3 => format!("-{prefix}-{id}").into_bytes(),
            4 => format!("Ünïcødé-{id}.txt").into_bytes(),
            5 => format!("日本語-{id}").into_bytes(),
            6 => format!(".hidden-{id}").into_bytes(),
            7 => format!("UPPER-{id}.TXT").into_bytes(),
            8 => [&b"latin1-\xe9t\xe9-"[..], id.to_string().as_bytes()].concat(),
            _ => {
                let mut long = format!("long-{id}-").into_bytes();
                long.resize(255, b'x');
                long
            }
        };
        OsString::from_vec(name)
    }

    /// A random directory that random entries may go into.
    fn fill_dir(&mut self) -> usize {
        self.fill_dirs[self.rng.index(self.fill_dirs.len())]
    }

    // ----- random population -----

    fn random_dirs(&mut self) -> io::Result<()> {
        let dirs = self.spec.dirs;
        let empty = if dirs >= 4 { dirs / 16 + 1 } else { 0 };
        for i in 0..dirs {
            let parent = loop {
                let candidate = if self.rng.below(4) == 0 { 0 } else { self.fill_dir() };
                if self.dirs[candidate].depth < MAX_DEPTH {
                    break candidate;
                }
            };
            let name = self.name("dir");
            let rel = self.dirs[parent].rel.join(name);
            let depth = self.dirs[parent].depth + 1;
            let meta = self.dir_meta();
            let index = self.add_dir(rel, depth, meta)?;
            if i < dirs - empty {
                self.fill_dirs.push(index);
            }
        }
        Ok(())
    }

    fn random_files(&mut self) -> io::Result<()> {
        let max = self.spec.max_file_size;
        let mut buf = Vec::new();
        for _ in 0..self.spec.files {
            let dir = self.fill_dir();
            let name = self.name("file");
            let rel = self.dirs[dir].rel.join(name);
            let path = self.abs(&rel);
            let seed = self.rng.next_u64();
            let size = match self.rng.below(200) {
                0..10 => 0,
                10..100 => {
                    let len = self.rng.log_size(8192.min(max)) as usize;
                    buf.clear();
                    push_text(&mut Rng::new(seed), &mut buf, len);
                    fs::write(&path, &buf)?;
                    len as u64
                }
                100..199 => {
                    let len = self.rng.log_size(16_384.min(max));
                    fs::write(&path, random_bytes(seed, len as usize))?;
                    len
                }
                _ => {
                    let len = self.rng.range(max / 8, max);
                    if self.rng.below(2) == 0 {
                        write_text(&path, len, seed)?;
                    } else {
                        crate::write_random(&path, len, seed)?;
                    }
                    len
                }
            };
            if size == 0 {
                fs::write(&path, b"")?;
            }
            let meta = self.file_meta();
            self.file_done(&path, size, &meta)?;
            self.files.push(rel);
        }
        Ok(())
    }

    fn big_files(&mut self) -> io::Result<()> {
        if self.spec.big_files.is_empty() {
            return Ok(());
        }
        let meta = self.simple_meta(0o755);
        let dir = PathBuf::from("big");
        self.add_dir(dir.clone(), 1, meta)?;
        for (i, big) in self.spec.big_files.clone().into_iter().enumerate() {
            let seed = self.rng.next_u64();
            let (name, size) = match big {
                BigFile::Random(size) => (format!("random-{i}.bin"), size),
                BigFile::Text(size) => (format!("text-{i}.log"), size),
                BigFile::Sparse { size, .. } => (format!("sparse-{i}.img"), size),
                BigFile::Database(size) => (format!("database-{i}.db"), size),
            };
            let path = self.abs(&dir.join(name));
            match big {
                BigFile::Random(size) => crate::write_random(&path, size, seed)?,
                BigFile::Text(size) => write_text(&path, size, seed)?,
                BigFile::Sparse { size, data_every, data_len } => {
                    let islands: Vec<(u64, u64)> = if data_every == 0 {
                        Vec::new()
                    } else {
                        (0..size).step_by(data_every as usize).map(|at| (at, data_len.min(size - at))).collect()
                    };
                    write_sparse(&path, size, &islands, seed)?;
                }
                BigFile::Database(size) => write_database(&path, size, seed)?,
            }
            let mode = self.rng.weighted(&[(1, 0o644), (1, 0o600)]);
            let meta = self.simple_meta(mode);
            self.file_done(&path, size, &meta)?;
        }
        Ok(())
    }

    fn random_hardlinks(&mut self) -> io::Result<()> {
        let target = self.spec.files / 20;
        let mut linked = HashSet::new();
        let mut added = 0;
        while added < target && linked.len() < self.files.len() {
            let file = self.rng.index(self.files.len());
            if !linked.insert(file) {
                continue;
            }
            for _ in 0..=self.rng.below(2) {
                let dir = self.fill_dir();
                let name = self.name("hardlink");
                let rel = self.dirs[dir].rel.join(name);
                let existing = self.files[file].clone();
                self.add_hardlink(&existing, &rel)?;
                added += 1;
            }
        }
        Ok(())
    }

    fn random_symlinks(&mut self) -> io::Result<()> {
        for _ in 0..self.spec.files / 16 {
            let dir = self.fill_dir();
            let name = self.name("symlink");
            let rel = self.dirs[dir].rel.join(name);
            let up = "../".repeat(self.dirs[dir].depth).into_bytes();
            let id = self.id();
            let target: Vec<u8> = match self.rng.below(if self.spec.exotic { 10 } else { 9 }) {
                0..4 if !self.files.is_empty() => {
                    let file = &self.files[self.rng.index(self.files.len())];
                    [&up[..], file.as_os_str().as_bytes()].concat()
                }
                4 => {
                    let other = &self.dirs[self.rng.index(self.dirs.len())].rel;
                    [&up[..], other.as_os_str().as_bytes()].concat()
                }
                5 => b"/etc/passwd".to_vec(),
                6 => format!("/nonexistent/{id}").into_bytes(),
                7 => b"..".to_vec(),
                9 => [&b"\xff\xfe target-"[..], id.to_string().as_bytes()].concat(),
                _ => format!("missing-{id}/nowhere").into_bytes(),
            };
            // A link to the root directory from the root itself would have an empty target,
            // which no file system accepts.
            let target = if target.is_empty() { b".".to_vec() } else { target };
            let meta = self.simple_meta(0o777);
            self.add_symlink(&target, &rel, &meta)?;
        }
        Ok(())
    }

    fn random_fifos(&mut self) -> io::Result<()> {
        for _ in 0..self.spec.files / 100 {
            let dir = self.fill_dir();
            let name = self.name("fifo");
            let rel = self.dirs[dir].rel.join(name);
            let mode = self.rng.weighted(&[(3, 0o644), (2, 0o600), (1, 0o666), (1, 0o620)]);
            let meta = self.simple_meta(mode);
            self.add_fifo(&rel, &meta)?;
        }
        Ok(())
    }

    /// Applies the directories' metadata, deepest first and the root last, so that their
    /// mtimes are not disturbed by later changes to their contents.
    fn finish_dirs(&mut self) -> io::Result<()> {
        let mut order: Vec<usize> = (0..self.dirs.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(self.dirs[i].depth));
        for i in order {
            let dir = &self.dirs[i];
            self.apply(&self.abs(&dir.rel), &dir.meta, false)?;
        }
        Ok(())
    }

    // ----- fixed fixtures -----

    /// Creates `special/` with one of every exotic kind, in known places (the crate's tests
    /// rely on some of these paths).
    fn fixtures(&mut self) -> io::Result<()> {
        let s = Path::new("special");
        self.add_dir(s.into(), 1, Meta::new(0o755, T_RECENT))?;
        self.fixture_files(s)?;
        self.fixture_dirs(s)?;
        self.fixture_xattrs(s)?;
        self.fixture_sparse(&s.join("sparse"))?;
        self.fixture_names(&s.join("names"))?;
        self.fixture_symlinks(&s.join("links"))?;
        self.fixture_hardlinks(s)?;
        Ok(())
    }

    fn fixture_files(&mut self, s: &Path) -> io::Result<()> {
        let script = b"#!/bin/sh\necho hello\n";
        let zero = if self.as_root { 0o000 } else { 0o400 };
        self.add_file(&s.join("empty"), b"", &Meta::new(0o644, T_RECENT))?;
        self.add_file(&s.join("setuid"), script, &Meta::new(0o4755, T_RECENT))?;
        self.add_file(&s.join("setgid"), script, &Meta::new(0o2755, T_2001).owned(0, 1001))?;
        self.add_file(&s.join("setuid-setgid"), script, &Meta::new(0o6755, T_RECENT).owned(1000, 1000))?;
        self.add_file(&s.join("mode-0000"), &random_bytes(1, 1000), &Meta::new(zero, T_RECENT).owned(1001, 1001))?;
        self.add_file(&s.join("readonly"), b"read only\n", &Meta::new(0o444, T_2001))?;
        self.add_file(&s.join("private"), &random_bytes(2, 3000), &Meta::new(0o600, T_RECENT).owned(123_456, 123_456))?;
        self.add_file(&s.join("epoch"), b"epoch\n", &Meta::new(0o644, T_EPOCH))?;
        self.add_file(&s.join("pre-1970"), b"old\n", &Meta::new(0o644, T_PRE_1970).owned(65534, 65534))?;
        self.add_file(&s.join("just-before-epoch"), b"-1ns\n", &Meta::new(0o644, T_JUST_BEFORE_EPOCH))?;
        self.add_file(&s.join("year-2100"), b"future\n", &Meta::new(0o644, T_2100))?;
        self.add_fifo(&s.join("fifo"), &Meta::new(0o644, T_RECENT))?;
        self.add_fifo(&s.join("fifo-private"), &Meta::new(0o600, T_PRE_1970).owned(1000, 1000))
    }

    fn fixture_dirs(&mut self, s: &Path) -> io::Result<()> {
        self.add_dir(s.join("dir-setgid"), 2, Meta::new(0o2755, T_2001).owned(0, 1001))?;
        self.add_file(&s.join("dir-setgid/inside"), b"x\n", &Meta::new(0o664, T_RECENT))?;
        self.add_dir(s.join("dir-sticky"), 2, Meta::new(0o1777, T_RECENT))?;
        self.add_file(&s.join("dir-sticky/tmpfile"), b"tmp\n", &Meta::new(0o600, T_RECENT).owned(65534, 65534))?;
        // Read-only directories with contents: the contents exist before the mode is applied.
        self.add_dir(s.join("dir-readonly"), 2, Meta::new(0o500, T_2100))?;
        self.add_file(&s.join("dir-readonly/a"), b"a\n", &Meta::new(0o644, T_RECENT))?;
        self.add_file(&s.join("dir-readonly/b"), &random_bytes(3, 100), &Meta::new(0o600, T_2001))?;
        self.add_dir(s.join("dir-readonly/sub"), 3, Meta::new(0o555, T_PRE_1970))?;
        self.add_file(&s.join("dir-readonly/sub/c"), b"c\n", &Meta::new(0o444, T_RECENT))?;
        self.add_dir(s.join("empty-dir"), 2, Meta::new(0o755, T_RECENT))?;
        self.add_dir(s.join("empty-dir-0700"), 2, Meta::new(0o700, T_2001).owned(1000, 1000))?;
        let mut rel = s.join("deep");
        for depth in 2..=7_u8 {
            self.add_dir(rel.clone(), depth.into(), Meta::new(0o755, (T_RECENT.0 + i64::from(depth), 1)))?;
            rel.push(depth.to_string());
        }
        self.add_file(&rel.with_file_name("bottom"), b"deep\n", &Meta::new(0o644, T_RECENT))
    }

    fn fixture_xattrs(&mut self, s: &Path) -> io::Result<()> {
        let mut binary = random_bytes(4, 64);
        binary[..4].copy_from_slice(b"\0\x01\xff\0");
        let meta = Meta::new(0o644, T_RECENT)
            .xattr("user.text", "hello world")
            .xattr("user.empty", "")
            .xattr("user.binary", binary)
            .xattr("user.big", random_bytes(5, 1000));
        self.add_file(&s.join("xattrs-file"), b"has xattrs\n", &meta)?;
        let meta = Meta::new(0o755, T_2001).xattr("user.dir", "yes").xattr("user.empty", "");
        self.add_dir(s.join("xattrs-dir"), 2, meta)?;
        self.add_file(&s.join("xattrs-dir/plain"), b"plain\n", &Meta::new(0o644, T_RECENT))?;

        let meta = Meta::new(0o640, T_RECENT).owned(1000, 1000).xattr("system.posix_acl_access", file_acl());
        self.add_file(&s.join("acl-file"), b"acl\n", &meta)?;
        // The default ACL is set right away so the entries created below inherit from it, as
        // they would on a real volume; the access ACL is applied with the rest of the metadata.
        let dir = s.join("acl-dir");
        let meta = Meta::new(0o770, T_RECENT).xattr("system.posix_acl_access", dir_acl());
        self.add_dir(dir.clone(), 2, meta)?;
        set_xattr(&self.abs(&dir), "system.posix_acl_default", &dir_acl())?;
        self.add_file(&dir.join("inherited-file"), b"inherits\n", &Meta::new(0o640, T_2001))?;
        self.add_dir(dir.join("inherited-dir"), 3, Meta::new(0o750, T_2100))?;
        Ok(())
    }

    fn fixture_sparse(&mut self, dir: &Path) -> io::Result<()> {
        self.add_dir(dir.into(), 2, Meta::new(0o755, T_RECENT))?;
        let sparse = [
            (
                "islands",
                8 * MIB,
                vec![(0, 4 * KIB), (MIB, 4 * KIB), (3 * MIB + 17, 100), (5 * MIB, 64 * KIB), (8 * MIB - 10, 10)],
            ),
            ("all-hole", 10 * MIB, vec![]),
            ("hole-at-end", 4 * MIB, vec![(0, 16 * KIB)]),
            ("hole-at-start", 6 * MIB, vec![(6 * MIB - 5000, 5000)]),
        ];
        for (i, (name, size, islands)) in sparse.into_iter().enumerate() {
            let path = self.abs(&dir.join(name));
            write_sparse(&path, size, &islands, 100 + i as u64)?;
            self.file_done(&path, size, &Meta::new(0o644, T_2001))?;
        }
        Ok(())
    }

    fn fixture_names(&mut self, dir: &Path) -> io::Result<()> {
        self.add_dir(dir.into(), 2, Meta::new(0o755, T_RECENT))?;
        let mut long_unicode = "é".repeat(127);
        long_unicode.push('x');
        let fixed: &[&[u8]] = &[
            b"\xff\xfe name",
            b"new\nline",
            b"tab\tname",
            b"  spaces  around  ",
            b"-rf",
            b"--help",
            b"back\\slash",
            b"star*?[x]",
            b"quote'\"",
            "日本語のファイル名.txt".as_bytes(),
            "emoji-🦀.rs".as_bytes(),
            // These sort differently in byte order and in most locales.
            b"B",
            b"a",
            b"Z",
            b"_underscore",
            b"e",
            "é".as_bytes(),
            b"E",
            "ä".as_bytes(),
            "ß".as_bytes(),
            b"10",
            b"9",
            b"~tilde",
            b".dot",
        ];
        let names: Vec<Vec<u8>> = fixed
            .iter()
            .map(|n| n.to_vec())
            .chain([[b"long-".to_vec(), vec![b'x'; 250]].concat(), long_unicode.into_bytes()])
            .collect();
        for (i, name) in names.iter().enumerate() {
            let content = format!("name #{i}\n");
            let i = i64::try_from(i).expect("few names");
            let meta = Meta::new(0o644, (T_RECENT.0 + i, 1 + i));
            self.add_file(&dir.join(OsString::from_vec(name.clone())), content.as_bytes(), &meta)?;
        }
        let odd = dir.join(OsString::from_vec(b"dir-\xc3\x28".to_vec()));
        self.add_dir(odd.clone(), 3, Meta::new(0o755, T_2001))?;
        self.add_file(&odd.join("inside"), b"inside\n", &Meta::new(0o644, T_RECENT))
    }

    fn fixture_symlinks(&mut self, dir: &Path) -> io::Result<()> {
        self.add_dir(dir.into(), 2, Meta::new(0o755, T_2001))?;
        let long = b"a/".repeat(1000);
        let links: [(&str, &[u8], Time); 11] = [
            ("rel-file", b"../private", T_RECENT),
            ("rel-dir", b"../names", T_2001),
            ("dangling", b"no/such/target", T_2100),
            ("abs-passwd", b"/etc/passwd", T_PRE_1970),
            ("abs-missing", b"/nonexistent/x", T_JUST_BEFORE_EPOCH),
            ("non-utf8-target", b"\xff\xfe target", T_RECENT),
            ("self-loop", b"self-loop", T_RECENT),
            ("dot", b".", T_EPOCH),
            ("chain", b"rel-file", T_RECENT),
            ("long-target", &long, T_RECENT),
            ("to-root", b"../..", T_2001),
        ];
        for (name, target, time) in links {
            let meta = Meta::new(0o777, time).owned(1000, 1000);
            self.add_symlink(target, &dir.join(name), &meta)?;
        }
        Ok(())
    }

    fn fixture_hardlinks(&mut self, s: &Path) -> io::Result<()> {
        let dir = s.join("hardlinks");
        self.add_dir(dir.clone(), 2, Meta::new(0o755, T_RECENT))?;
        let meta = Meta::new(0o644, T_2001).owned(1000, 1000);
        self.add_file(&dir.join("pair-a"), &random_bytes(6, 5000), &meta)?;
        self.add_hardlink(&dir.join("pair-a"), &s.join("names/pair-b"))?;
        let meta = Meta::new(0o640, T_RECENT).xattr("user.linked", "three names");
        self.add_file(&dir.join("triple-1"), b"three names\n", &meta)?;
        self.add_hardlink(&dir.join("triple-1"), &s.join("dir-setgid/triple-2"))?;
        self.add_hardlink(&dir.join("triple-1"), &s.join("links/triple-3"))?;
        self.add_file(&dir.join("empty-1"), b"", &Meta::new(0o600, T_PRE_1970))?;
        self.add_hardlink(&dir.join("empty-1"), &dir.join("empty-2"))?;
        self.add_hardlink(&s.join("setuid"), &dir.join("setuid-too"))?;
        self.add_hardlink(&s.join("dir-readonly/a"), &dir.join("readonly-dir-a"))
    }
}

// ----- content writers -----

const WORDS: [&str; 32] = [
    "the",
    "volume",
    "mover",
    "copies",
    "every",
    "byte",
    "and",
    "inode",
    "with",
    "its",
    "metadata",
    "from",
    "source",
    "to",
    "target",
    "while",
    "pods",
    "keep",
    "running",
    "kubernetes",
    "cluster",
    "node",
    "storage",
    "class",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "again",
];

/// Appends exactly `len` bytes of lines of words to `out`.
fn push_text(rng: &mut Rng, out: &mut Vec<u8>, len: usize) {
    let end = out.len() + len;
    while out.len() < end {
        for i in 0..4 + rng.below(12) {
            if i > 0 {
                out.push(b' ');
            }
            out.extend_from_slice(WORDS[rng.index(WORDS.len())].as_bytes());
        }
        out.push(b'\n');
    }
    out.truncate(end);
}

/// Writes `len` bytes of text, 1 MiB at a time.
fn write_text(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    let mut rng = Rng::new(seed);
    let mut buf = Vec::with_capacity(CHUNK);
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64);
        buf.clear();
        push_text(&mut rng, &mut buf, n as usize);
        file.write_all(&buf)?;
        left -= n;
    }
    Ok(())
}

/// Creates a `size`-byte file that is all hole except for the (offset, length) `islands` of
/// random data.
fn write_sparse(path: &Path, size: u64, islands: &[(u64, u64)], seed: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.set_len(size)?;
    for (i, &(at, len)) in islands.iter().enumerate() {
        file.seek(SeekFrom::Start(at))?;
        write_random_to(&mut file, len, seed.wrapping_add(i as u64))?;
    }
    Ok(())
}

/// Writes `len` bytes of database-like 8 KiB pages, 1 MiB at a time.
fn write_database(path: &Path, len: u64, seed: u64) -> io::Result<()> {
    let mut file = File::create(path)?;
    let mut buf = vec![0; CHUNK];
    let mut page_no = 0;
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        for page in buf[..n.next_multiple_of(DB_PAGE)].chunks_mut(DB_PAGE) {
            db_page(seed, page_no, page);
            page_no += 1;
        }
        file.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Fills one page: a header, line pointers growing up, rows growing down from the end, zeros
/// in between; every 16th page is an unused all-zero page.
fn db_page(seed: u64, page_no: u64, page: &mut [u8]) {
    page.fill(0);
    if page_no % 16 == 15 {
        return;
    }
    let mut rng = Rng::new(seed ^ page_no.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let header = 24;
    page[0..8].copy_from_slice(&(seed.wrapping_add(page_no * 4096)).to_le_bytes());
    page[8..12].copy_from_slice(&(page_no as u32).to_le_bytes());
    page[20..24].copy_from_slice(&0x2004_u32.to_le_bytes());
    let mut lower = header;
    let mut upper = DB_PAGE;
    for _ in 0..5 + rng.below(40) {
        let id = page_no * 64 + rng.below(64);
        let row = format!(
            "{id:010}|customer-{:05}|{}|status=active|balance={}.{:02}|",
            rng.below(50_000),
            WORDS[rng.index(WORDS.len())],
            rng.below(100_000),
            rng.below(100)
        );
        if upper - lower < row.len() + 4 {
            break;
        }
        upper -= row.len();
        page[upper..upper + row.len()].copy_from_slice(row.as_bytes());
        page[lower..lower + 2].copy_from_slice(&(upper as u16).to_le_bytes());
        page[lower + 2..lower + 4].copy_from_slice(&(row.len() as u16).to_le_bytes());
        lower += 4;
    }
    page[16..18].copy_from_slice(&(lower as u16).to_le_bytes());
    page[18..20].copy_from_slice(&(upper as u16).to_le_bytes());
    let checksum = blake3::hash(&page[16..]);
    page[12..14].copy_from_slice(&checksum.as_bytes()[..2]);
}

// ----- metadata helpers -----

fn set_mtime(path: &Path, (secs, nanos): Time) -> io::Result<()> {
    let time = Timespec { tv_sec: secs, tv_nsec: nanos };
    let times = Timestamps { last_access: time, last_modification: time };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Sets an xattr, silently doing nothing where the filesystem does not support it.
fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    match rustix::fs::lsetxattr(path, name, value, XattrFlags::empty()) {
        Ok(()) | Err(Errno::OPNOTSUPP) => Ok(()),
        Err(e) => {
            let e = io::Error::from(e);
            Err(io::Error::new(e.kind(), format!("{}: setxattr {name}: {e}", path.display())))
        }
    }
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_GROUP: u16 = 0x08;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// Encodes POSIX ACL entries (tag, permissions, id) in the kernel's xattr format; the entries
/// must already be sorted by tag, then id.
fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut out = 2_u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// `u::rw-,u:1000:r--,u:123456:rw-,g::r--,g:1001:r--,m::rw-,o::---`: the file's mode becomes 0660.
fn file_acl() -> Vec<u8> {
    acl_xattr(&[
        (ACL_USER_OBJ, 6, ACL_UNDEFINED_ID),
        (ACL_USER, 4, 1000),
        (ACL_USER, 6, 123_456),
        (ACL_GROUP_OBJ, 4, ACL_UNDEFINED_ID),
        (ACL_GROUP, 4, 1001),
        (ACL_MASK, 6, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ])
}

/// `u::rwx,u:1000:rwx,g::r-x,g:1001:r-x,m::rwx,o::---`, used as access and default ACL.
fn dir_acl() -> Vec<u8> {
    acl_xattr(&[
        (ACL_USER_OBJ, 7, ACL_UNDEFINED_ID),
        (ACL_USER, 7, 1000),
        (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
        (ACL_GROUP, 5, 1001),
        (ACL_MASK, 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ])
}

// ----- randomness -----

/// `SplitMix64`: tiny, fast and good enough for choosing test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed ^ 0x243F_6A88_85A3_08D3)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// In `lo..=hi` (`lo` if the range is empty).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    /// Log-uniform-ish in `1..=max` (0 if `max` is 0): a random power of two, then uniform
    /// between it and the next one.
    fn log_size(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let bits = u64::from(u64::BITS - max.leading_zeros());
        let low = 1 << self.below(bits);
        self.range(low, (2 * low - 1).min(max))
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    /// One of the values, with probability proportional to its weight.
    fn weighted<T: Copy>(&mut self, table: &[(u64, T)]) -> T {
        let mut roll = self.below(table.iter().map(|&(w, _)| w).sum());
        for &(weight, value) in table {
            if roll < weight {
                return value;
            }
            roll -= weight;
        }
        table[table.len() - 1].1
    }
}

#[cfg(test)]
pub(crate) const FIXTURE_ENTRIES_FOR_TESTS: usize = FIXTURE_ENTRIES;
