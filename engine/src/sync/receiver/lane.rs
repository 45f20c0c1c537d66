//! A lane's share of the session: file content, one file at a time ([`Lane`]), written to its
//! temporary name, checked against the sender's digest, given its metadata and only then
//! renamed into place ([`VerifiedFile`]).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rustix::fs::AtFlags;

use super::basis::{BasisWindow, open_with_basis, partial_name};
use super::direct::{DIRECT_MIN, DirectWrites, write_pages};
use super::group::{Basis, DirCache, Group, Leader, Pending, replace};
use super::{io_at, protocol};
use crate::compress::Decompressor;
use crate::confine::{self, RelPath};
use crate::sync::{Result, SyncError, blocks, links};
use crate::wire::{CHUNK_SIZE, DataChunkRef, DeltaChunk, Entry, EntryKind, FileFailure, Incoming, Message};

/// A file being received into its temporary name.
pub(super) struct OpenFile {
    pub(super) id: u64,
    pub(super) entry: Entry,
    pub(super) path: RelPath,
    pub(super) dir: Arc<OwnedFd>,
    pub(super) tmp: CString,
    pub(super) file: std::fs::File,
    /// The file this one replaces, when only changed blocks are sent: unsent ranges come
    /// from here.
    pub(super) basis: Option<std::fs::File>,
    /// The basis is the file being written (a resumed partial, or the final file itself with
    /// `--inplace`): unsent ranges are already in place and only need hashing.
    pub(super) resumed: bool,
    /// The file being written started as a clone of the basis (a reflink, on filesystems that
    /// share extents: XFS, btrfs): unsent ranges are already in place and only need hashing,
    /// read from the basis.
    pub(super) cloned: bool,
    /// `--inplace`: `file` is the final name itself; nothing to rename, nothing to discard.
    pub(super) inplace: bool,
    pub(super) hasher: crate::sync::digest::FileDigest,
    /// Everything before this offset has been hashed.
    pub(super) position: u64,
    /// The end of the last range written to `file` (zero pages are holes, not written): its
    /// size, when it started empty.
    pub(super) written_end: u64,
    /// Set while `file` is written past the page cache.
    pub(super) direct: Option<DirectWrites>,
}

/// A received file whose content matched the sender's digest.
pub(super) struct VerifiedFile(OpenFile);

/// Receives file content on one connection: one file at a time, each verified and put in place.
pub(super) struct Lane {
    pub(super) group: Arc<Group>,
    pub(super) dirs: DirCache,
    pub(super) current: Option<OpenFile>,
    pub(super) decompressor: Option<Decompressor>,
    pub(super) buffer: Vec<u8>,
    pub(super) gap_buffer: Vec<u8>,
    pub(super) delta_buffer: Vec<u8>,
    pub(super) window: Option<BasisWindow>,
    /// Files this lane put in place, and their content bytes it wrote.
    pub(super) files: u64,
    pub(super) bytes: u64,
}

impl Lane {
    pub(super) fn new(group: Arc<Group>) -> Lane {
        Lane {
            group,
            dirs: DirCache::default(),
            current: None,
            decompressor: None,
            buffer: Vec::with_capacity(CHUNK_SIZE),
            gap_buffer: Vec::new(),
            delta_buffer: Vec::new(),
            window: None,
            files: 0,
            bytes: 0,
        }
    }

    /// Handles a content frame (data, delta, end or failure of a file); hands anything else back.
    pub(super) fn content(&mut self, incoming: Incoming<'_>) -> Result<Option<Message>> {
        self.group.watch.check_now_and_then()?;
        let message = match incoming {
            Incoming::Data(chunk) => {
                self.data(&chunk)?;
                return Ok(None);
            }
            Incoming::Message(message) => message,
        };
        match message {
            Message::FileEnd { id, blake3 } => self.file_end(id, blake3)?,
            Message::FileFailed { id, reason } => self.file_failed(id, reason)?,
            Message::Delta(delta) => self.delta(&delta)?,
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    /// After the lane's last frame: a broken connection (`interrupted`) keeps what arrived of
    /// the current file (the next run resumes from it), unless the session failed otherwise;
    /// any other failure (bad data, full disk) removes it.
    pub(super) fn close(&mut self, interrupted: bool) {
        if let Some(open) = self.current.take() {
            if !interrupted || self.group.abandoned.load(Ordering::Acquire) {
                discard(&open);
            }
            self.group.settle(open.id);
        }
    }

    /// The open file for `id`, created on its first chunk (or at its end, for empty files).
    pub(super) fn open_file(&mut self, id: u64) -> Result<&mut OpenFile> {
        if let Some(open) = &self.current {
            if open.id != id {
                return Err(protocol(format!("data for entry {id} while entry {} is incomplete", open.id)));
            }
        } else {
            let pending = {
                let mut files = self.group.files();
                let pending = files
                    .pending
                    .remove(&id)
                    .ok_or_else(|| protocol(format!("data for entry {id}, which was not requested")))?;
                files.receiving.insert(id);
                pending
            };
            self.current = Some(self.open_pending(id, pending)?);
        }
        Ok(self.current.as_mut().expect("set above"))
    }

    pub(super) fn data(&mut self, chunk: &DataChunkRef<'_>) -> Result<()> {
        if chunk.raw_len as usize > CHUNK_SIZE || chunk.bytes.len() > CHUNK_SIZE + 1024 {
            return Err(protocol(format!("data chunk of {} bytes exceeds the chunk size", chunk.raw_len)));
        }
        let mut buffer = std::mem::take(&mut self.buffer);
        let mut gap_buffer = std::mem::take(&mut self.gap_buffer);
        let decompressor = self.decompressor()?;
        // Raw chunks are written straight from the frame; compressed ones through `buffer`.
        let unpacked = if chunk.compressed {
            decompressor.unpack(true, chunk.bytes, chunk.raw_len as usize, &mut buffer)
        } else if chunk.bytes.len() == chunk.raw_len as usize {
            Ok(())
        } else {
            Err(io::Error::other("raw chunk length differs from its declared length"))
        };
        let content: &[u8] = if chunk.compressed { &buffer } else { chunk.bytes };
        let result = (|| {
            let open = self.open_file(chunk.id)?;
            check_range(open, chunk.offset, chunk.raw_len)?;
            unpacked.map_err(|e| protocol(format!("`{}`: {e}", open.path.display())))?;
            write_content(open, chunk.offset, content, &mut gap_buffer)?;
            self.bytes += u64::from(chunk.raw_len);
            self.group.files().report.bytes_written += u64::from(chunk.raw_len);
            Ok(())
        })();
        self.buffer = buffer;
        self.gap_buffer = gap_buffer;
        result
    }

    /// The lane's decompressor, made on first use.
    pub(super) fn decompressor(&mut self) -> Result<&mut Decompressor> {
        if self.decompressor.is_none() {
            self.decompressor = Some(Decompressor::new().map_err(|e| protocol(e.to_string()))?);
        }
        Ok(self.decompressor.as_mut().expect("just set"))
    }

    /// Content made by applying an rsync delta to a window of the basis.
    pub(super) fn delta(&mut self, chunk: &DeltaChunk) -> Result<()> {
        // A delta of all-literal data is its data plus a few bytes per command.
        let max_delta = 2 * CHUNK_SIZE + 4096;
        if chunk.len as usize > CHUNK_SIZE
            || u64::from(chunk.window_len) > blocks::MAX_WINDOW
            || chunk.delta_len as usize > max_delta
            || chunk.bytes.len() > max_delta + 1024
        {
            return Err(protocol(format!(
                "delta of {} bytes against a window of {} exceeds the chunk or window size",
                chunk.len, chunk.window_len
            )));
        }
        let mut delta = std::mem::take(&mut self.delta_buffer);
        let mut made = std::mem::take(&mut self.buffer);
        let mut gap_buffer = std::mem::take(&mut self.gap_buffer);
        let mut window = self.window.take();
        let decompressor = self.decompressor()?;
        let unpacked = decompressor.unpack(chunk.compressed, &chunk.bytes, chunk.delta_len as usize, &mut delta);
        let result = (|| {
            let open = self.open_file(chunk.id)?;
            check_range(open, chunk.offset, chunk.len)?;
            let shown = open.path.display();
            unpacked.map_err(|e| protocol(format!("`{shown}`: {e}")))?;
            let Some(basis) = open.basis.as_ref().filter(|_| !open.resumed) else {
                return Err(protocol(format!("a delta for `{shown}`, whose basis cannot serve one")));
            };
            let base = window
                .get_or_insert_with(BasisWindow::default)
                .load(chunk.id, basis, chunk.window_start, u64::from(chunk.window_len))
                .map_err(|source| SyncError::Io {
                    op: "cannot read the previous version of",
                    path: shown.clone(),
                    source,
                })?;
            made.clear();
            fast_rsync::apply_limited(base, &delta, &mut made, chunk.len as usize)
                .map_err(|e| protocol(format!("bad delta for `{shown}`: {e}")))?;
            if made.len() != chunk.len as usize {
                return Err(protocol(format!(
                    "a delta for `{shown}` makes {} bytes, not the {} declared",
                    made.len(),
                    chunk.len
                )));
            }
            write_content(open, chunk.offset, &made, &mut gap_buffer)?;
            self.bytes += u64::from(chunk.len);
            self.group.files().report.bytes_written += u64::from(chunk.len);
            Ok(())
        })();
        self.delta_buffer = delta;
        self.buffer = made;
        self.gap_buffer = gap_buffer;
        self.window = window;
        result
    }

    pub(super) fn file_end(&mut self, id: u64, expected: [u8; 32]) -> Result<()> {
        self.open_file(id)?;
        let open = self.current.take().expect("opened above");
        // On failure the file stays counted as being received: the session ends with the error.
        let verified = self.verify(open, expected)?;
        let path = verified.0.path.clone();
        let leader = matches!(verified.0.entry.kind, EntryKind::File { leader: true, .. });
        let installed = install(verified);
        let links = {
            let mut files = self.group.files();
            if installed.is_ok() {
                self.files += 1;
                files.report.files_written += 1;
                if leader {
                    files.leaders.insert(id, Leader { path: path.clone(), inode: None });
                }
            }
            let links = files.deferred.remove(&id).unwrap_or_default();
            files.deferred_count -= links.len();
            links
        };
        // The file counts as received only once its links exist: the end of the session waits.
        installed?;
        let leader = Leader { path, inode: None };
        for link in links {
            let link_path = RelPath::new(&link.path).map_err(|e| protocol(e.to_string()))?;
            self.group.link(&leader, &link_path, link.id, None)?;
        }
        self.group.settle(id);
        Ok(())
    }

    pub(super) fn file_failed(&mut self, id: u64, reason: FileFailure) -> Result<()> {
        let links = {
            let mut files = self.group.files();
            if self.current.as_ref().is_some_and(|open| open.id == id) {
                discard(&self.current.take().expect("checked"));
            } else if files.pending.remove(&id).is_none() {
                return Err(protocol(format!("failure reported for entry {id}, which was not requested")));
            }
            files.failed.insert(id);
            let links = files.deferred.remove(&id).unwrap_or_default();
            files.deferred_count -= links.len();
            links
        };
        for link in links {
            self.group.warn(format!(
                "hard link `{}` not created: its source file failed ({reason:?})",
                confine::display_bytes(&link.path)
            ));
        }
        self.group.settle(id);
        Ok(())
    }

    /// Checks the content against the sender's digest and applies metadata; on any failure the
    /// temporary file is removed and the final name is left untouched.
    pub(super) fn verify(&mut self, mut open: OpenFile, expected: [u8; 32]) -> Result<VerifiedFile> {
        match self.check_and_finish(&mut open, expected) {
            Ok(()) => Ok(VerifiedFile(open)),
            Err(error) => {
                discard(&open);
                Err(error)
            }
        }
    }

    pub(super) fn check_and_finish(&mut self, open: &mut OpenFile, expected: [u8; 32]) -> Result<()> {
        let EntryKind::File { size, .. } = open.entry.kind else { unreachable!("only files are opened") };
        let shown = open.path.display();
        let io = |op, source| SyncError::Io { op, path: shown.clone(), source };
        fill_gap(open, size, &mut self.gap_buffer).map_err(|e| io("cannot write", e))?;
        // What the write thread holds is on the file before its size, metadata and name.
        let direct = open.direct.take();
        let sized_by_writes = direct.is_none() && !open.resumed && !open.cloned && open.written_end == size;
        if let Some(mut writes) = direct {
            writes.finish().map_err(|e| io("cannot write", e))?;
        }
        // Only when it differs (a hole at the end, a shorter clone or partial): on XFS, setting
        // the size of a file whose data is not written out yet writes it out at once. A file
        // that started empty and was written up to its size is known to have it.
        if !sized_by_writes && open.file.metadata().map_err(|e| io("cannot inspect", e))?.len() != size {
            open.file.set_len(size).map_err(|e| io("cannot write", e))?;
        }
        if open.hasher.finalize() != expected {
            return Err(SyncError::Verification { path: open.path.display() });
        }
        self.group.apply_metadata(open.file.as_fd(), &open.entry).map_err(|e| io("cannot set metadata of", e))?;
        if self.group.options.fsync {
            open.file.sync_all().map_err(|e| io("cannot fsync", e))?;
        }
        Ok(())
    }
}

pub(super) fn discard(open: &OpenFile) {
    if open.inplace {
        return;
    }
    let _ = rustix::fs::unlinkat(open.dir.as_fd(), open.tmp.as_c_str(), AtFlags::empty());
}

/// Renames a verified file over its final name.
pub(super) fn install(verified: VerifiedFile) -> Result<()> {
    let open = verified.0;
    if open.inplace {
        return Ok(());
    }
    let (_, name) = open.path.split();
    replace(open.dir.as_fd(), &open.tmp, name).map_err(|source| {
        discard(&open);
        SyncError::Io { op: "cannot rename into place", path: open.path.display(), source }
    })
}

/// Checks that `len` bytes at `offset` come in order and within the file's size.
pub(super) fn check_range(open: &OpenFile, offset: u64, len: u32) -> Result<()> {
    let EntryKind::File { size, .. } = open.entry.kind else { unreachable!("only files are requested") };
    let end = offset.checked_add(u64::from(len));
    if offset < open.position || end.is_none_or(|end| end > size) {
        return Err(protocol(format!(
            "content at offset {offset} for `{}` is out of order or beyond its size",
            open.path.display()
        )));
    }
    Ok(())
}

/// Writes content at `offset` (checked by [`check_range`]), after what lies between the last
/// content and it, and hashes it.
pub(super) fn write_content(open: &mut OpenFile, offset: u64, content: &[u8], gap_buffer: &mut Vec<u8>) -> Result<()> {
    let shown = open.path.display();
    let write_error = |source| SyncError::Io { op: "cannot write", path: shown.clone(), source };
    fill_gap(open, offset, gap_buffer).map_err(write_error)?;
    open.hasher.update(content);
    // A resumed partial or a clone is not a fresh hole: its zero pages are punched out.
    let punch = open.resumed || open.cloned;
    if let Some(end) = write_pages(&open.file, content, offset, punch, &mut open.direct).map_err(write_error)? {
        open.written_end = end;
    }
    open.position = offset + content.len() as u64;
    Ok(())
}

impl Lane {
    /// Opens what requested file `id` is written to and the basis its unsent ranges come from.
    pub(super) fn open_pending(&mut self, id: u64, Pending { entry, basis }: Pending) -> Result<OpenFile> {
        let path = RelPath::new(&entry.path).map_err(|e| protocol(e.to_string()))?;
        let tmp = partial_name(&entry);
        let (parent, name) = path.split();
        let dir = self.dirs.get(self.group.root.as_fd(), parent)?;
        let io = io_at(&path);
        // Checked again on the handle: a link made since the entry was checked is seen.
        let inplace_file = if basis == Basis::InPlace {
            links::open_alone_for_write(dir.as_fd(), name).map_err(|e| io("cannot open for an in-place update", e))?
        } else {
            None
        };
        let inplace = inplace_file.is_some();
        let EntryKind::File { size, .. } = entry.kind else { unreachable!("only files are requested") };
        let (file, basis_file, cloned) = open_with_basis(dir.as_fd(), (name, &tmp), basis, inplace_file, size, &io)?;
        let resumed = basis == Basis::Partial || inplace;
        // Not the live file of `--inplace` (another process may have it mapped, and its
        // cached pages would then disagree with what is written past them), nor a clone,
        // where only the changed blocks are written: small writes, each of which would wait
        // for the device (and, on XFS, remap an extent) instead of landing in the cache.
        let direct = if size >= DIRECT_MIN && !inplace && !cloned {
            DirectWrites::enable(&file, &self.group.buffers, !resumed)
        } else {
            None
        };
        Ok(OpenFile {
            id,
            entry,
            path,
            dir,
            tmp,
            file,
            basis: basis_file,
            resumed,
            cloned,
            inplace,
            hasher: crate::sync::digest::FileDigest::default(),
            position: 0,
            written_end: 0,
            direct,
        })
    }
}

/// Brings a file being received up to `offset`: the range the sender did not send is a hole
/// (new files) or comes from the basis (changed files). Either way it is hashed.
pub(super) fn fill_gap(open: &mut OpenFile, offset: u64, buffer: &mut Vec<u8>) -> io::Result<()> {
    let Some(basis) = &open.basis else {
        open.hasher.zeros(offset - open.position);
        open.position = offset;
        return Ok(());
    };
    buffer.resize(CHUNK_SIZE, 0);
    let basis_size = basis.metadata()?.len();
    let sparse = blocks::is_sparse(basis, basis_size);
    while open.position < offset {
        if sparse {
            // A hole of the basis is zeros: hash them, write nothing (the new file is a hole there).
            let (data_start, _) = blocks::data_range(basis, open.position, basis_size);
            let hole_end = data_start.min(offset);
            if hole_end > open.position {
                open.hasher.zeros(hole_end - open.position);
                open.position = hole_end;
                continue;
            }
        }
        let want = (offset - open.position).min(CHUNK_SIZE as u64) as usize;
        let got = blocks::read_full(basis, &mut buffer[..want], open.position)?;
        // Past the end of the basis the sender must have sent data; zeros keep the hash honest.
        buffer[got..want].fill(0);
        open.hasher.update(&buffer[..want]);
        if !open.resumed
            && !open.cloned
            && let Some(end) = write_pages(&open.file, &buffer[..want], open.position, false, &mut open.direct)?
        {
            open.written_end = end;
        }
        open.position += want as u64;
    }
    Ok(())
}
