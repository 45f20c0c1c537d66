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
        let existing = confine::lstat(dir, name).map_err(|e| io("cannot inspect", e))?;
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

    /// Refuses to request file `id` past [`MAX_PENDING`] undelivered files, or twice.
    fn check_new_request(&self, id: u64) -> Result<()> {
        let files = self.group.files();
        if files.pending.len() >= MAX_PENDING {
            return Err(protocol(format!("more than {MAX_PENDING} files requested and not delivered")));
        }
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
