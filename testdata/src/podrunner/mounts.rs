//! A container's mount namespace: its `volumeMounts` as bind mounts that only it sees.
//!
//! The plan is made in the parent ([`MountPlan::new`]: paths checked, mount points made, C strings
//! built), and applied in the child between `fork` and `exec` ([`MountPlan::apply`]), where only
//! system calls may run:
//! 1. `unshare(CLONE_NEWNS)`, then `/` becomes a recursive *slave*: nothing mounted in the pod
//!    propagates to the host, while host mounts still reach volumes that ask for
//!    `HostToContainer` (a private `/` would cut them off; runc makes `/` a slave for the same
//!    reason).
//! 2. Each volume, parents before children, is bind-mounted recursively at its `mountPath`;
//!    `readOnly: true` remounts the bind `MS_RDONLY`; `mountPropagation: HostToContainer` keeps it
//!    a recursive slave, anything else makes it recursively private.
//!
//! There is no image root filesystem: a container sees the host's files around its volumes. A
//! missing mount point is created with `mkdir -p` before the pod starts: inside the enclosing
//! volume's directory when the mount point lies in another volume, on the host otherwise (left
//! there when the pod stops: removing a directory that is a mount point in another pod's
//! namespace would unmount it there).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::Container;
use rustix::mount::{MountFlags, MountPropagationFlags, mount_bind_recursive, mount_change, mount_remount};

use crate::pods::StartError;

/// One bind mount of a container.
struct Bind {
    source: CString,
    target: CString,
    read_only: bool,
    host_to_container: bool,
}

/// The bind mounts of one container, ready for the child.
pub(crate) struct MountPlan {
    binds: Vec<Bind>,
}

impl MountPlan {
    /// Checks the container's `volumeMounts` against the pod's volumes and makes the mount points.
    pub(crate) fn new(container: &Container, volumes: &BTreeMap<String, PathBuf>) -> Result<Self, StartError> {
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let refuse = |what: String| config_error(&container.name, &format!("volumeMount {:?}: {what}", mount.name));
            if mount.sub_path.as_deref().is_some_and(|s| !s.is_empty())
                || mount.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
            {
                return Err(refuse("subPath is not supported by the simulated kubelet; mount the whole volume".into()));
            }
            let host_to_container = match mount.mount_propagation.as_deref() {
                None | Some("None") => false,
                Some("HostToContainer") => true,
                Some(other) => {
                    return Err(refuse(format!(
                        "mountPropagation {other} is not supported by the simulated kubelet (None and HostToContainer are)"
                    )));
                }
            };
            let target = Path::new(&mount.mount_path);
            if !target.is_absolute() || target.components().any(|c| c == Component::ParentDir) {
                return Err(refuse(format!(
                    "mountPath {:?} must be an absolute path without \"..\"",
                    mount.mount_path
                )));
            }
            let source = volumes.get(&mount.name).ok_or_else(|| refuse("the pod has no volume of that name".into()))?;
            mounts.push((target.to_path_buf(), source.clone(), mount.read_only == Some(true), host_to_container));
        }
        // Parents before children: a mount inside another volume's mount point goes on top of it.
        mounts.sort_by(|a, b| a.0.cmp(&b.0));
        let mut binds = Vec::with_capacity(mounts.len());
        for (index, (target, source, read_only, host_to_container)) in mounts.iter().enumerate() {
            let enclosing = mounts[..index].iter().rev().find(|m| target.starts_with(&m.0));
            let mount_point = match enclosing {
                Some((outer, outer_source, ..)) => outer_source.join(target.strip_prefix(outer).unwrap_or(target)),
                None => target.clone(),
            };
            fs::create_dir_all(&mount_point).map_err(|e| {
                config_error(&container.name, &format!("cannot create the mount point {}: {e}", mount_point.display()))
            })?;
            binds.push(Bind {
                source: c_path(source)?,
                target: c_path(target)?,
                read_only: *read_only,
                host_to_container: *host_to_container,
            });
        }
        Ok(MountPlan { binds })
    }

    /// Enters a new mount namespace and mounts the volumes. Runs in the child before `exec`: system
    /// calls only, no allocation.
    pub(crate) fn apply(&self) -> io::Result<()> {
        // SAFETY: called in the single-threaded child between fork and exec; the file descriptor
        // table is not unshared (only the mount namespace is).
        #[allow(unsafe_code)]
        unsafe {
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
        }
        mount_change(c"/", MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC)?;
        for bind in &self.binds {
            mount_bind_recursive(bind.source.as_c_str(), bind.target.as_c_str())?;
            if bind.read_only {
                mount_remount(bind.target.as_c_str(), MountFlags::BIND | MountFlags::RDONLY, c"")?;
            }
            let propagation =
                if bind.host_to_container { MountPropagationFlags::DOWNSTREAM } else { MountPropagationFlags::PRIVATE };
            mount_change(bind.target.as_c_str(), propagation | MountPropagationFlags::REC)?;
        }
        Ok(())
    }
}

/// A kubelet's `CreateContainerConfigError` for container `name`.
pub(crate) fn config_error(name: &str, what: &str) -> StartError {
    StartError { reason: "CreateContainerConfigError".to_owned(), message: format!("container {name:?}: {what}") }
}

/// `path` as a C string for the child.
pub(crate) fn c_path(path: &Path) -> Result<CString, StartError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| StartError {
        reason: "CreateContainerConfigError".to_owned(),
        message: format!("the path {} contains a NUL byte", path.display()),
    })
}
