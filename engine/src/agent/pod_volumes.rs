//! The node strategy's grants: a coordinator grants a node agent one volume of a pod at run
//! time, by pod UID and volume name ([`Request::GrantPodVolume`]), never by a path. The agent
//! finds the directory itself, beneath the kubelet's pods directory it was given:
//!
//! - `<pods>/<podUID>/volumes/kubernetes.io~csi/<volume>/mount` (CSI, and in-tree volumes
//!   migrated to CSI);
//! - `<pods>/<podUID>/volumes/kubernetes.io~<plugin>/<volume>` (in-tree plugins).
//!
//! Exactly one of them must exist, be a directory, and be a mount point. Every step is opened
//! relative to the pods directory's handle with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`, so a symlink anywhere on the way, or `..`,
//! is refused and nothing outside the pods directory is opened. The directory found becomes a
//! normal mount grant ([`Volumes::grant`]): each session resolves it afresh and checks it is
//! still a mount point, grants may not overlap, and a read-only grant is never written.
//!
//! A pod grant belongs to the migration whose coordinator made it: it is withdrawn when the
//! agent's identity moves to another migration ([`PodVolumes::withdraw_migration`]).
//!
//! [`Request::GrantPodVolume`]: crate::wire::Request::GrantPodVolume

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::AgentError;
use super::volumes::Volumes;
use crate::confine::{self, Mounts};
use crate::sync::CancellationToken;
use crate::volume::VolumeGrant;
use crate::wire::{RemoteError, RemoteErrorKind};

/// The CSI plugin's directory: its volumes are mounted one level deeper, at `<volume>/mount`.
const CSI: &str = "kubernetes.io~csi";
/// Longest pod UID accepted (a UUID is 36; a static pod's hash is 32).
const MAX_UID: usize = 64;
/// Longest volume name: a DNS-1123 subdomain.
const MAX_VOLUME: usize = 253;

/// A volume of a pod, as a coordinator asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Asked {
    pub(super) name: String,
    pub(super) pod_uid: String,
    pub(super) volume: String,
    pub(super) read_only: bool,
}

/// A grant made by a coordinator.
struct PodGrant {
    path: PathBuf,
    read_only: bool,
    migration: String,
}

/// The kubelet's pods directory and the grants made beneath it.
pub(super) struct PodVolumes {
    pods: PathBuf,
    grants: Mutex<HashMap<String, PodGrant>>,
}

/// Why a pod volume was not found or not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FindError {
    /// The request itself is malformed.
    #[error("{0}")]
    Invalid(String),
    /// No candidate exists.
    #[error("pod {uid} has no volume {volume} on this node: is the pod running on this node?")]
    NotFound {
        /// The pod's UID.
        uid: String,
        /// The volume.
        volume: String,
    },
    /// More than one plugin directory holds the volume.
    #[error("volume {volume} of pod {uid} is ambiguous: it is found at {}; grant one by another name", .found.join(" and "))]
    Ambiguous {
        /// The pod's UID.
        uid: String,
        /// The volume.
        volume: String,
        /// The candidates, relative to the pod's `volumes` directory.
        found: Vec<String>,
    },
    /// A symlink, or something that is not a directory, on the way.
    #[error("`{}` is {what}: refused (a pod volume is reached through directories only, never a link)", .path.display())]
    NotADirectory {
        /// The path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// The candidate is not a mount point.
    #[error(
        "`{}` is not a mount point: the kubelet has not mounted volume {volume} there (yet); wait until the \
         pod runs",
        .path.display()
    )]
    NotMounted {
        /// The path.
        path: PathBuf,
        /// The volume.
        volume: String,
    },
    /// A file system operation failed.
    #[error("cannot read `{}`", .path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl FindError {
    fn to_remote(&self) -> RemoteError {
        let kind = match self {
            FindError::Invalid(_) => RemoteErrorKind::Protocol,
            FindError::NotFound { .. } => RemoteErrorKind::UnknownVolume,
            FindError::NotADirectory { .. } => RemoteErrorKind::Forbidden,
            FindError::Ambiguous { .. } | FindError::NotMounted { .. } => RemoteErrorKind::Other,
            FindError::Io { .. } => RemoteErrorKind::Io,
        };
        RemoteError::new(kind, crate::sync::full_message(self))
    }
}

/// Checks a request's names: `name` as volume names are (non-empty, no `/`), `pod_uid` 1 to
/// [`MAX_UID`] of `[0-9a-f-]`, `volume` a DNS-1123 subdomain.
pub(crate) fn check_names(name: &str, pod_uid: &str, volume: &str) -> Result<(), FindError> {
    if name.is_empty() || name.contains('/') || name.contains('\0') {
        return Err(FindError::Invalid(format!(
            "volume name `{}` is not valid: give a non-empty name without `/`",
            name.escape_debug()
        )));
    }
    check_pod_names(pod_uid, volume)
}

/// Checks a pod UID and a volume name: one directory name each, of the characters allowed.
fn check_pod_names(pod_uid: &str, volume: &str) -> Result<(), FindError> {
    let invalid = |what: String| Err(FindError::Invalid(what));
    let uid_ok = (1..=MAX_UID).contains(&pod_uid.len())
        && pod_uid.bytes().all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte) || byte == b'-');
    if !uid_ok {
        return invalid(format!(
            "pod UID `{}` is not valid: a pod's UID is 1 to {MAX_UID} characters of lowercase hex digits and `-` \
             (its metadata.uid)",
            pod_uid.escape_debug()
        ));
    }
    let volume_ok = (1..=MAX_VOLUME).contains(&volume.len())
        && volume
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'.' || byte == b'-')
        && !volume.starts_with(['.', '-']);
    if !volume_ok {
        return invalid(format!(
            "volume `{}` is not valid: a volume is named by 1 to {MAX_VOLUME} characters of lowercase letters, \
             digits, `.` and `-`, starting with a letter or digit (a DNS-1123 subdomain, as a PV's name is)",
            volume.escape_debug()
        ));
    }
    Ok(())
}

/// Opens the directory `name` in `dir` as the search does: beneath it, never through a link;
/// `None` when nothing is there.
fn open_step(dir: BorrowedFd<'_>, name: &str, path: &Path) -> Result<Option<OwnedFd>, FindError> {
    if !exists_as_dir(dir, name, path)? {
        return Ok(None);
    }
    confine::open_subdir_in(dir, name.as_bytes(), Mounts::Cross).map(Some).map_err(|error| step_error(error, path))
}

/// A confined open that failed: `RESOLVE_BENEATH` refuses a way out (`EXDEV`), and
/// `RESOLVE_NO_SYMLINKS` a link (`ELOOP`, or `ENOTDIR` with `O_DIRECTORY`).
fn step_error(error: io::Error, path: &Path) -> FindError {
    let what = if confine::is_mount_crossing(&error) {
        "outside the pods directory"
    } else {
        match rustix::io::Errno::from_io_error(&error) {
            Some(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => "a symlink or not a directory",
            _ => return FindError::Io { path: path.to_owned(), source: error },
        }
    };
    FindError::NotADirectory { path: path.to_owned(), what }
}

/// Whether `name` exists in `dir` (not following it); refuses a symlink or a non-directory.
fn exists_as_dir(dir: BorrowedFd<'_>, name: &str, path: &Path) -> Result<bool, FindError> {
    let stat =
        confine::lstat(dir, name.as_bytes()).map_err(|source| FindError::Io { path: path.to_owned(), source })?;
    let Some(stat) = stat else { return Ok(false) };
    match rustix::fs::FileType::from_raw_mode(stat.st_mode) {
        rustix::fs::FileType::Directory => Ok(true),
        rustix::fs::FileType::Symlink => Err(FindError::NotADirectory { path: path.to_owned(), what: "a symlink" }),
        _ => Err(FindError::NotADirectory { path: path.to_owned(), what: "not a directory" }),
    }
}

/// Finds volume `volume` of pod `uid` beneath the pods directory `pods` (shown as
/// `pods_path`); returns its path relative to `pods`. Blocking.
pub(crate) fn find(pods: BorrowedFd<'_>, pods_path: &Path, uid: &str, volume: &str) -> Result<PathBuf, FindError> {
    check_pod_names(uid, volume)?;
    let not_found = || FindError::NotFound { uid: uid.to_owned(), volume: volume.to_owned() };
    let pod_path = pods_path.join(uid);
    let pod = open_step(pods, uid, &pod_path)?.ok_or_else(not_found)?;
    let volumes_path = pod_path.join("volumes");
    let volumes = open_step(pod.as_fd(), "volumes", &volumes_path)?.ok_or_else(not_found)?;
    let plugins =
        confine::list_dir(volumes.as_fd()).map_err(|source| FindError::Io { path: volumes_path.clone(), source })?;
    let mut plugins: Vec<String> = plugins
        .iter()
        .filter_map(|name| std::str::from_utf8(name).ok())
        .filter(|name| name.contains('~'))
        .map(str::to_owned)
        .collect();
    plugins.sort_unstable();
    let mut found = Vec::new();
    for plugin in &plugins {
        let plugin_path = volumes_path.join(plugin);
        let Some(plugin_dir) = open_step(volumes.as_fd(), plugin, &plugin_path)? else { continue };
        let volume_path = plugin_path.join(volume);
        if !exists_as_dir(plugin_dir.as_fd(), volume, &volume_path)? {
            continue;
        }
        if plugin == CSI {
            let Some(volume_dir) = open_step(plugin_dir.as_fd(), volume, &volume_path)? else { continue };
            if !exists_as_dir(volume_dir.as_fd(), "mount", &volume_path.join("mount"))? {
                continue;
            }
            found.push(format!("{plugin}/{volume}/mount"));
        } else {
            found.push(format!("{plugin}/{volume}"));
        }
    }
    let candidate = match found.len() {
        0 => return Err(not_found()),
        1 => found.remove(0),
        _ => return Err(FindError::Ambiguous { uid: uid.to_owned(), volume: volume.to_owned(), found }),
    };
    let path = volumes_path.join(&candidate);
    // Opened once more from the `volumes` handle, in one confined resolution.
    let dir = confine::open_dir_in(volumes.as_fd(), candidate.as_bytes(), Mounts::Cross)
        .map_err(|error| step_error(error, &path))?;
    let mounted =
        crate::volume::is_mount_root(dir.as_fd()).map_err(|source| FindError::Io { path: path.clone(), source })?;
    if !mounted {
        return Err(FindError::NotMounted { path, volume: volume.to_owned() });
    }
    Ok(Path::new(uid).join("volumes").join(candidate))
}

impl PodVolumes {
    /// Pod grants beneath `pods`.
    pub(super) fn new(pods: PathBuf) -> PodVolumes {
        PodVolumes { pods, grants: Mutex::default() }
    }

    /// Finds the asked volume and grants it for `migration`. A grant that repeats one made
    /// before (same name, same directory, same access) succeeds; another grant under a name
    /// taken is refused. Blocking.
    /// `ended` is the migration's end: a grant that would outlive it is refused.
    pub(super) fn grant(
        &self,
        volumes: &Volumes,
        asked: &Asked,
        (migration, ended): (&str, &CancellationToken),
    ) -> Result<(), RemoteError> {
        check_names(&asked.name, &asked.pod_uid, &asked.volume).map_err(|error| error.to_remote())?;
        let pods = confine::open_root(&self.pods)
            .map_err(|source| FindError::Io { path: self.pods.clone(), source }.to_remote())?;
        let relative =
            find(pods.as_fd(), &self.pods, &asked.pod_uid, &asked.volume).map_err(|error| error.to_remote())?;
        let path = self.pods.join(relative);
        let mut grants = self.grants.lock().expect("pod grants lock");
        // Checked under the lock [`Self::withdraw_migration`] takes after the migration ended.
        if ended.is_cancelled() {
            return Err(RemoteError::new(
                RemoteErrorKind::Forbidden,
                "this agent no longer serves the migration that asked for the grant",
            ));
        }
        let name = &asked.name;
        if let Some(granted) = grants.get(name) {
            if granted.path == path && granted.read_only == asked.read_only && granted.migration == migration {
                return Ok(());
            }
            return Err(RemoteError::new(
                RemoteErrorKind::Other,
                format!(
                    "volume `{name}` is already granted to this agent as `{}`{}: revoke it first, or grant this one \
                     under another name",
                    granted.path.display(),
                    if granted.read_only { " (read-only)" } else { "" }
                ),
            ));
        }
        if volumes.read_only(name).is_some() {
            return Err(RemoteError::new(
                RemoteErrorKind::Other,
                format!("volume `{name}` was given to this agent when it started: grant this one under another name"),
            ));
        }
        let grant = VolumeGrant { name: name.clone(), path: path.clone(), read_only: asked.read_only, mount: true };
        volumes.grant(grant).map_err(|error| {
            let kind = match error {
                AgentError::Volume { .. } => RemoteErrorKind::Io,
                _ => RemoteErrorKind::Other,
            };
            RemoteError::new(kind, crate::sync::full_message(&error))
        })?;
        grants.insert(name.clone(), PodGrant { path, read_only: asked.read_only, migration: migration.to_owned() });
        Ok(())
    }

    /// Withdraws the pod grant `name`: refused for a volume given at start, for one sessions
    /// use ([`RemoteErrorKind::Busy`]), and for an unknown one.
    pub(super) fn revoke(&self, volumes: &Volumes, name: &str) -> Result<(), RemoteError> {
        let mut grants = self.grants.lock().expect("pod grants lock");
        if !grants.contains_key(name) {
            if volumes.read_only(name).is_some() {
                return Err(RemoteError::new(
                    RemoteErrorKind::Forbidden,
                    format!(
                        "volume `{name}` was given to this agent when it started, not granted at run time: only \
                         run-time grants are revoked"
                    ),
                ));
            }
            return Err(RemoteError::new(
                RemoteErrorKind::UnknownVolume,
                format!("no volume `{name}` is granted to this agent"),
            ));
        }
        match volumes.revoke(name) {
            Ok(_) | Err(AgentError::NotGranted(_)) => {
                grants.remove(name);
                Ok(())
            }
            Err(AgentError::InUse { sessions, .. }) => Err(RemoteError::new(
                RemoteErrorKind::Busy,
                format!("volume `{name}` is in use by {sessions} session(s): revoke it once they have ended"),
            )),
            Err(other) => Err(RemoteError::new(RemoteErrorKind::Other, crate::sync::full_message(&other))),
        }
    }

    /// Withdraws every grant of `migration`, in use or not (its sessions are being ended);
    /// returns their names.
    pub(super) fn withdraw_migration(&self, volumes: &Volumes, migration: &str) -> Vec<String> {
        let mut grants = self.grants.lock().expect("pod grants lock");
        let mut names: Vec<String> =
            grants.iter().filter(|(_, grant)| grant.migration == migration).map(|(name, _)| name.clone()).collect();
        names.sort_unstable();
        for name in &names {
            grants.remove(name);
            volumes.withdraw(name);
        }
        names
    }
}

#[cfg(test)]
mod tests;
