//! The end of the tree: once every requested file has arrived or failed, the deletions, then
//! the metadata of directories, deepest first.

use std::os::fd::AsFd;

use super::group::DirCache;
use super::{Receiver, protocol};
use crate::confine;
use crate::sync::{Result, SyncError};
use crate::wire::{Entry, Message};

impl Receiver {
    /// The end of the tree: waits until every requested file has arrived or failed (on any
    /// lane), then deletes what the source lacks and sets directory metadata.
    pub(super) fn finish(&mut self) -> Result<()> {
        if self.lane.current.is_some() {
            return Err(protocol("end of entries while a file is incomplete"));
        }
        // The end of the tree may come before the sender has our verdicts (a session with
        // further lanes): the files they ask for come on those lanes.
        self.flush_replies()?;
        self.wait_for_files()?;
        self.dirs_cache = DirCache::default();
        // Nothing is deleted, and no success reported, in a directory hidden under a mount since.
        self.group.watch.check()?;
        let root = self.group.root.clone();
        let mut deletions = Vec::new();
        let deleted = self.deletions.finish(root.as_fd(), self.group.options.allow_mass_delete, |change| {
            deletions.push(change);
            Ok(())
        })?;
        self.group.files().report.entries_deleted = deleted;
        for kept in self.deletions.take_kept_mounts() {
            self.group.warn(kept);
        }
        // Every deletion is reported, whatever the session asked for.
        for change in deletions {
            self.reply(&Message::Change(change))?;
        }
        if self.group.options.dry_run {
            return Ok(());
        }
        // Deepest first, so setting a directory's times is not undone by work inside it.
        let group = &self.group;
        let read_error =
            |source| SyncError::Io { op: "cannot read back the list of directories for", path: ".".into(), source };
        self.dirs.drain_deepest_first(read_error, |entry| {
            let shown = if entry.path.is_empty() { ".".to_owned() } else { confine::display_bytes(&entry.path) };
            let dir = confine::open_dir(root.as_fd(), &entry.path).map_err(|source| SyncError::Io {
                op: "cannot open directory",
                path: shown.clone(),
                source,
            })?;
            if !group.metadata_matches(dir.as_fd(), &entry) {
                group.apply_metadata(dir.as_fd(), &entry).map_err(|source| SyncError::Io {
                    op: "cannot set metadata of",
                    path: shown,
                    source,
                })?;
            }
            Ok(())
        })
    }

    /// Waits until every requested file has arrived or failed, on any lane.
    fn wait_for_files(&self) -> Result<()> {
        let mut files = self.group.files();
        loop {
            if let Some(error) = files.error.take() {
                return Err(error);
            }
            if files.pending.is_empty() && files.receiving.is_empty() {
                return Ok(());
            }
            if files.lanes_open == 0 {
                return Err(protocol("end of entries while requested files are still undelivered"));
            }
            files = self.group.settled.wait(files).expect("no lane panics holding the files lock");
        }
    }

    /// Keeps a directory entry for the last pass, which sets its metadata.
    pub(super) fn keep_dir(&mut self, entry: &Entry) {
        if let Some(error) = self.dirs.push(entry) {
            self.group.warn(format!(
                "cannot keep the list of directories in an unnamed file on the target volume ({error}): \
                 it stays in memory, about 200 bytes per directory"
            ));
        }
    }
}
