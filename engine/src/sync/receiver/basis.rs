//! What a changed file is rebuilt from ([`Basis`]): nothing, the file at its name, that file
//! written in place, or the partial file an interrupted run left. Chosen when the file is
//! requested ([`Receiver::request`]), opened when its content starts ([`open_with_basis`], for
//! the lane that receives it), read where the sender sent nothing (the lane's `fill_gap`) or a
//! delta copies from ([`BasisWindow`]).

use std::ffi::CString;
use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::AtFlags;

use super::group::{Basis, Pending};
use super::{Receiver, io_at};
use crate::confine::{self, RelPath};
use crate::sync::{Result, SyncError, blocks, links};
use crate::wire::{Entry, EntryKind, Message};

/// The temporary name of a file being received: derived from its path, size and mtime, so an
/// interrupted run's partial file is found again by the next run for the same source version,
/// and ignored (then cleaned) once the source has changed.
pub(super) fn partial_name(entry: &Entry) -> CString {
    let mut key = blake3::Hasher::new();
    key.update(&entry.path);
    if let EntryKind::File { size, .. } = entry.kind {
        key.update(&size.to_le_bytes());
    }
    key.update(&entry.mtime.sec.to_le_bytes());
    key.update(&entry.mtime.nsec.to_le_bytes());
    crate::reserved::partial(&key.finalize())
}

impl Receiver {
    /// Requests a file the target lacks or has otherwise: whole, or as the blocks its basis
    /// lacks. The basis is the partial file an interrupted run left of this very version if
    /// there is one, else the file at the final name (`existing_size` bytes).
    pub(super) fn request(
        &mut self,
        entry: Entry,
        path: &RelPath,
        (dir, name): (BorrowedFd<'_>, &[u8]),
        size: u64,
        existing_size: u64,
    ) -> Result<()> {
        let io = io_at(path);
        let id = entry.id;
        // An interrupted earlier run may have left part of this very version.
        let partial = partial_name(&entry);
        self.deletions.claim(partial.as_bytes());
        // Only a partial this agent could have written: a regular file it owns, mode
        // 0600, one link. Anything else under that name is ignored (and left alone).
        // None beneath a directory this session made.
        let partial_size = if self.beneath_made {
            0
        } else {
            confine::lstat(dir, partial.as_bytes())
                .map_err(|e| io("cannot inspect", e))?
                .filter(crate::reserved::is_own_file)
                .map_or(0, |stat| u64::try_from(stat.st_size).unwrap_or(0))
        };
        let (basis, basis_name, basis_size) = if partial_size > 0 && partial_size <= size {
            (Basis::Partial, partial.as_bytes(), partial_size)
        } else {
            (Basis::Existing, name, existing_size)
        };
        // A changed or resumed file travels as the blocks the basis lacks.
        if basis_size == 0 || basis_size > blocks::MAX_DELTA_FILE {
            self.group.files().pending.insert(id, Pending { entry, basis: Basis::None });
            self.reply(&Message::Need { id })?;
            return Ok(());
        }
        let file = confine::open_file_read(dir, basis_name).map_err(|e| io("cannot open", e))?;
        // `--inplace` writes the file at its name only if that is its inode's one
        // name (see `links`); otherwise the new version is written beside it.
        let alone = rustix::fs::fstat(&file).is_ok_and(|stat| links::alone(&stat));
        let basis =
            if basis == Basis::Existing && self.group.options.inplace && alone { Basis::InPlace } else { basis };
        // Content copied from elsewhere in the basis needs a basis that is not
        // being written.
        let shifts = basis == Basis::Existing;
        // Pending before the request can leave.
        self.group.files().pending.insert(id, Pending { entry, basis });
        self.request_blocks(id, path, file, basis_size, shifts)
    }
}

/// The file content is written to and the basis, for a file requested with `basis`: the
/// partial file itself, the file at its name (`inplace_file`, in place), or a new temporary
/// file `tmp`, which starts as a clone of the file at its name where extents can be shared
/// (then the third value is true).
pub(super) fn open_with_basis(
    dir: BorrowedFd<'_>,
    (name, tmp): (&[u8], &CString),
    basis: Basis,
    inplace_file: Option<std::fs::File>,
    size: u64,
    io: &impl Fn(&'static str, io::Error) -> SyncError,
) -> Result<(std::fs::File, Option<std::fs::File>, bool)> {
    let mut cloned = false;
    let (file, basis_file) = match basis {
        Basis::Partial => {
            let reopen = |e| io("cannot reopen the partial file of", e);
            let file = confine::open_file_write(dir, tmp.as_bytes()).map_err(reopen)?;
            let stat = rustix::fs::fstat(&file).map_err(|e| reopen(e.into()))?;
            if !crate::reserved::is_own_file(&stat) {
                return Err(reopen(io::Error::other(
                    "it is no longer a private file of ours with one link (it changed during the session)",
                )));
            }
            (file, Some(confine::open_file_read(dir, tmp.as_bytes()).map_err(reopen)?))
        }
        Basis::InPlace | Basis::Existing if let Some(file) = inplace_file => (
            file,
            Some(confine::open_file_read(dir, name).map_err(|e| io("cannot reopen the previous version of", e))?),
        ),
        Basis::InPlace | Basis::Existing => {
            let file = create_temporary(dir, tmp).map_err(|e| io("cannot create a temporary file for", e))?;
            let basis =
                confine::open_file_read(dir, name).map_err(|e| io("cannot reopen the previous version of", e))?;
            // Where extents can be shared, the new version starts as the old one and
            // only what changed is written; elsewhere (ext4, tmpfs) this fails at once.
            cloned = rustix::fs::ioctl_ficlone(&file, &basis).is_ok();
            let old_size = basis.metadata().map_err(|e| io("cannot inspect", e))?.len();
            if !cloned {
                // A clone that failed part way (no space, quota) may have shared some
                // extents: the file must be the empty hole the copy path expects.
                file.set_len(0).map_err(|e| io("cannot write", e))?;
            } else if old_size > size {
                // Cut to the new size now (nothing is written yet, so this is cheap), so
                // that a partial left by an interruption can be resumed.
                file.set_len(size).map_err(|e| io("cannot write", e))?;
            }
            (file, Some(basis))
        }
        Basis::None => (create_temporary(dir, tmp).map_err(|e| io("cannot create a temporary file for", e))?, None),
    };
    Ok((file, basis_file, cloned))
}

/// Creates the temporary file `tmp` (never through a link: `O_EXCL|O_NOFOLLOW`); one left by
/// an earlier session is removed first, only when there is one (one system call per new file,
/// not an `unlinkat` that fails and then the `openat`).
fn create_temporary(dir: BorrowedFd<'_>, tmp: &CString) -> io::Result<std::fs::File> {
    match confine::create_file(dir, tmp.as_bytes()) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let _ = rustix::fs::unlinkat(dir, tmp.as_c_str(), AtFlags::empty());
            confine::create_file(dir, tmp.as_bytes())
        }
        created => created,
    }
}

/// The part of a basis file the current deltas copy from. Consecutive windows of one file
/// overlap (they slide along with the content), so only what is new is read.
#[derive(Default)]
pub(super) struct BasisWindow {
    pub(super) id: u64,
    pub(super) start: u64,
    pub(super) bytes: Vec<u8>,
}

impl BasisWindow {
    /// The basis bytes `[start, start + len)` of file `id` (fewer at the end of the basis).
    pub(super) fn load(&mut self, id: u64, basis: &std::fs::File, start: u64, len: u64) -> io::Result<&[u8]> {
        let cached_end = self.start + self.bytes.len() as u64;
        if self.id == id && start >= self.start && start <= cached_end && !self.bytes.is_empty() {
            self.bytes.drain(..(start - self.start) as usize);
        } else {
            self.bytes.clear();
        }
        self.id = id;
        self.start = start;
        let have = self.bytes.len() as u64;
        if have < len {
            let want = (len - have) as usize;
            self.bytes.resize(have as usize + want, 0);
            let got = blocks::read_full(basis, &mut self.bytes[have as usize..], start + have)?;
            self.bytes.truncate(have as usize + got);
        }
        Ok(&self.bytes[..(len as usize).min(self.bytes.len())])
    }
}

