//! Verdicts on regular files: the quick check (size and mtime, then mode, owner and extended
//! attributes, see [`crate::meta::unchanged`]) that answers `Skip`, bringing metadata up to
//! date where it may, or a request for content ([`Receiver::request`]).

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::FileType;

use super::group::Leader;
use super::{MAX_PENDING, Receiver, io_at, protocol};
use crate::confine::{self, RelPath};
use crate::meta;
use crate::progress::{ChangeAction, ChangeKind, Differs};
use crate::sync::{Result, links};
use crate::wire::{Entry, Message};

impl Receiver {
    /// A regular file of `size` bytes: answered `Skip` when it is unchanged (its metadata
    /// brought up to date where it may be), requested otherwise.
    pub(super) fn file_entry(
        &mut self,
        entry: Entry,
        path: RelPath,
        (parent, name): (&[u8], &[u8]),
        size: u64,
        leader: bool,
    ) -> Result<()> {
        let group = self.group.clone();
        let io = io_at(&path);
        let dir = self.parent_dir(parent)?;
        let dir = dir.as_fd();
        // Beneath a directory this session made, nothing was there.
        let existing =
            if self.beneath_made { None } else { confine::lstat(dir, name).map_err(|e| io("cannot inspect", e))? };
        let regular = existing.filter(|stat| FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile);
        let up_to_date = !group.options.checksum
            && regular.is_some_and(|stat| {
                meta::unchanged(&stat, &entry, meta::Compare { size: Some(size), ..meta::Compare::default() })
            });
        if up_to_date {
            let stat = regular.expect("up to date means it exists");
            if self.settle_unchanged(&entry, &path, (dir, name), &stat, size)? {
                if leader {
                    let inode = Some((stat.st_dev, stat.st_ino));
                    group.files().leaders.insert(entry.id, Leader { path, inode });
                }
                self.reply(&Message::Skip { id: entry.id })?;
                return Ok(());
            }
        }
        self.await_room_for_request()?;
        self.check_new_request(entry.id)?;
        match regular {
            Some(stat) => {
                let differs = group.differs(&stat, &entry, Some(size));
                self.report(ChangeAction::Update, ChangeKind::File, &entry.path, differs)?;
            }
            None => self.report(ChangeAction::Create, ChangeKind::File, &entry.path, Differs::default())?,
        }
        if group.options.dry_run {
            return self.skip_as_written(&entry, size, leader);
        }
        let existing_size = regular.map_or(0, |stat| u64::try_from(stat.st_size).unwrap_or(0));
        self.request(entry, &path, (dir, name), size, existing_size)
    }

    /// A file whose size and mtime match (`stat`): compares the rest of its metadata and, where
    /// it differs, sets it. False when the file must be replaced instead (its inode has other
    /// names).
    fn settle_unchanged(
        &mut self,
        entry: &Entry,
        path: &RelPath,
        (dir, name): (BorrowedFd<'_>, &[u8]),
        stat: &rustix::fs::Stat,
        size: u64,
    ) -> Result<bool> {
        let io = io_at(path);
        // Most re-synced files are untouched: one stat and one xattr listing prove it.
        let mut differs = self.group.differs(stat, entry, Some(size));
        differs.xattrs = differs == Differs::default()
            && !meta::read_xattrs(dir, name, self.group.xattrs).is_ok_and(|xattrs| xattrs == entry.xattrs);
        let same = differs == Differs::default();
        // New metadata goes onto the inode only if this is its one name; otherwise
        // the file is replaced (see `links`). A dry run only says so.
        let settled = same
            || self.group.options.dry_run
            || match links::open_alone(dir, name).map_err(|e| io("cannot open", e))? {
                Some(file) => {
                    self.group.apply_metadata(file.as_fd(), entry).map_err(|e| io("cannot set metadata of", e))?;
                    true
                }
                None => false,
            };
        if settled && !same {
            self.report(ChangeAction::Metadata, ChangeKind::File, &entry.path, differs)?;
        }
        Ok(settled)
    }

    /// Waits while [`MAX_PENDING`] requested files are undelivered, until another lane
    /// delivers some: the tree stops here (and the sender's window, full of files waiting for
    /// a verdict, stops the sender's scan), and the session does not fail.
    ///
    /// Many small files are far more than a lane's frames: a lane slow to write (or a link
    /// that buffers megabytes) holds thousands of them in flight while the first lane's
    /// entries race ahead. Waiting cannot deadlock: at most [`crate::sync::WINDOW`] requests
    /// (those the sender had not taken when the first lane stopped) and one job per lane and
    /// per worker wait on the first lane; the other requests are on lanes that keep going.
    /// With no other lane open, an honest sender cannot get here: its window keeps the
    /// requests of one lane below [`MAX_PENDING`].
    fn await_room_for_request(&mut self) -> Result<()> {
        if self.group.files().pending.len() < MAX_PENDING {
            return Ok(());
        }
        // Requests not yet handed to the writer would never be answered.
        self.flush_replies()?;
        let mut files = self.group.files();
        loop {
            if let Some(error) = files.error.take() {
                return Err(error);
            }
            if files.pending.len() < MAX_PENDING {
                return Ok(());
            }
            if files.lanes_open == 0 {
                return Err(protocol(format!(
                    "more than {MAX_PENDING} files requested and not delivered, with no other connection \
                     to deliver them: the sender does not keep its window"
                )));
            }
            files = self.group.settled.wait(files).expect("no lane panics holding the files lock");
        }
    }

    /// Refuses to request file `id` twice.
    fn check_new_request(&self, id: u64) -> Result<()> {
        let files = self.group.files();
        if files.pending.contains_key(&id) || files.receiving.contains(&id) || files.leaders.contains_key(&id) {
            return Err(protocol(format!("entry id {id} used twice")));
        }
        Ok(())
    }

    /// A file the dry run would write: counted as written, answered `Skip`.
    pub(super) fn skip_as_written(&mut self, entry: &Entry, size: u64, leader: bool) -> Result<()> {
        {
            let mut files = self.group.files();
            files.report.files_written += 1;
            files.report.bytes_written += size;
            if leader {
                let path = RelPath::new(&entry.path).map_err(|e| protocol(e.to_string()))?;
                files.leaders.insert(entry.id, Leader { path, inode: None });
            }
        }
        self.reply(&Message::Skip { id: entry.id })
    }
}
