//! A change to the target as rsync's `--itemize-changes` shows it: `YXcstpoguax PATH`.
//!
//! Y: `>` a file received, `c` a directory, symlink or node created, `h` a hard link, `.` only
//! metadata changes; a deletion is `*deleting` instead of both. X: `f` file, `d` directory, `L`
//! symlink, `D` device, `S` FIFO or socket. Then `+++++++++` for a new entry, or one letter per
//! attribute that differs (`.` where it is the same): `c` content by checksum, `s` size, `t`
//! time, `p` permissions, `o` owner, `g` group, `u` (unused), `a` ACL, `x` extended attributes.
//! mover emits `s`, `t`, `p`, `o`, `g` and `x`; never `c`, `u` or `a`.

use mover_engine::progress::{Change, ChangeAction, ChangeKind};

/// The change as one line (without the newline); a directory's path ends in `/`.
#[must_use]
pub fn line(change: &Change) -> String {
    let slash = if change.kind == ChangeKind::Dir { "/" } else { "" };
    let path = &change.path;
    if change.action == ChangeAction::Delete {
        return format!("*deleting   {path}{slash}");
    }
    let kind = match change.kind {
        ChangeKind::File | ChangeKind::Hardlink => 'f',
        ChangeKind::Dir => 'd',
        ChangeKind::Symlink => 'L',
        ChangeKind::Device => 'D',
        ChangeKind::Special => 'S',
    };
    let how = match (change.action, change.kind) {
        (ChangeAction::Metadata, _) => '.',
        (_, ChangeKind::Hardlink) => 'h',
        (_, ChangeKind::File) => '>',
        _ => 'c',
    };
    let attributes = if change.action == ChangeAction::Create {
        "+++++++++".to_owned()
    } else {
        let d = &change.differs;
        let flag = |on: bool, letter: char| if on { letter } else { '.' };
        [
            '.',
            flag(d.size, 's'),
            flag(d.time, 't'),
            flag(d.perms, 'p'),
            flag(d.owner, 'o'),
            flag(d.group, 'g'),
            '.',
            '.',
            flag(d.xattrs, 'x'),
        ]
        .iter()
        .collect()
    };
    format!("{how}{kind}{attributes} {path}{slash}")
}

#[cfg(test)]
mod tests {
    use mover_engine::progress::Differs;

    use super::*;

    fn change(action: ChangeAction, kind: ChangeKind, differs: Differs) -> Change {
        Change { action, kind, path: "p".into(), differs, entries: 1 }
    }

    #[test]
    fn letters_as_rsync_prints_them() {
        let none = Differs::default();
        let size_time = Differs { size: true, time: true, ..none };
        let perms = Differs { perms: true, ..none };
        let cases = [
            (change(ChangeAction::Create, ChangeKind::File, none), ">f+++++++++ p"),
            (change(ChangeAction::Update, ChangeKind::File, size_time), ">f.st...... p"),
            (change(ChangeAction::Create, ChangeKind::Dir, none), "cd+++++++++ p/"),
            (change(ChangeAction::Create, ChangeKind::Symlink, none), "cL+++++++++ p"),
            (change(ChangeAction::Create, ChangeKind::Hardlink, none), "hf+++++++++ p"),
            (change(ChangeAction::Metadata, ChangeKind::File, perms), ".f...p..... p"),
            (change(ChangeAction::Delete, ChangeKind::File, none), "*deleting   p"),
            (change(ChangeAction::Delete, ChangeKind::Dir, none), "*deleting   p/"),
        ];
        for (change, expected) in cases {
            assert_eq!(line(&change), expected);
        }
    }
}
