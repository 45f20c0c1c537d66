//! A container's mount namespace: its `volumeMounts` as bind mounts that only it sees, over a
//! read-only view of the host.
//!
//! The plan is made in the parent ([`MountPlan::new`]: paths checked, mount points made, C strings
//! built), and applied in the child between `fork` and `exec` ([`MountPlan::apply`]), where only
//! system calls may run:
//! 1. `unshare(CLONE_NEWNS)`, then `/` becomes a recursive *slave*: nothing mounted in the pod
//!    propagates to the host, while host mounts still reach volumes that ask for
//!    `HostToContainer` (a private `/` would cut them off; runc makes `/` a slave for the same
//!    reason).
//! 2. Each volume's directory is cloned as a detached mount tree (`open_tree(OPEN_TREE_CLONE |
//!    AT_RECURSIVE)`), while every source is still in sight (a volume may lie under `/tmp`).
//! 3. Every mount becomes read-only (`mount_setattr(AT_RECURSIVE, MOUNT_ATTR_RDONLY)`), and a
//!    fresh tmpfs is mounted at `/tmp` and one at `/dev/shm`: there is no image root filesystem,
//!    so the container sees the host's files, but nothing it writes lands outside its volumes
//!    (`/tmp` and `/dev/shm` are its own scratch space, gone when the container ends).
//! 4. Each volume's tree, parents before children, is attached at its `mountPath`
//!    (`move_mount`); it is then made writable, or read-only for `readOnly: true` (recursively),
//!    and a recursive slave for `mountPropagation: HostToContainer` (a clone of a slave mount is
//!    a slave of the same master), recursively private otherwise. A program under `/tmp` is
//!    attached the same way at its own path, read-only, so that it can still be executed.
//!
//! A missing mount point is made with `mkdir -p`: under `/tmp` or `/dev/shm`, in the container's
//! tmpfs; inside another
//! volume's `mountPath`, in that volume's directory; anywhere else, on the host before the pod
//! starts, and left there when the pod stops (removing a directory that is a mount point in
//! another pod's namespace would unmount it there).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::Container;
use rustix::fs::{CWD, Mode, OFlags};
use rustix::mount::{
    MountFlags, MountPropagationFlags, MoveMountFlags, OpenTreeFlags, mount, mount_change, move_mount, open_tree,
};

use crate::pods::StartError;

/// The container's scratch directories: each a tmpfs of its own (mounted in [`MountPlan::apply`]).
const SCRATCH: [&str; 2] = ["/tmp", "/dev/shm"];

/// The scratch directory `path` lies in (or is).
fn scratch_root(path: &Path) -> Option<&'static Path> {
    SCRATCH.iter().map(Path::new).find(|root| path.starts_with(root))
}

/// One bind mount of a container.
struct Bind {
    source: CString,
    /// The detached clone of `source`, made in the child.
    tree: Option<OwnedFd>,
    target: CString,
    /// Directories to make in the pod's scratch tmpfs before mounting, outermost first.
    make: Vec<CString>,
    /// The target is a file (the container's program), made empty before mounting.
    file: bool,
    read_only: bool,
    host_to_container: bool,
}

/// The bind mounts of one container, ready for the child.
pub(crate) struct MountPlan {
    binds: Vec<Bind>,
}

impl MountPlan {
    /// Checks the container's `volumeMounts` against the pod's volumes and makes the mount points.
    /// A `program` under `/tmp` or `/dev/shm` is bound into the container's tmpfs at its own path, so that it
    /// can still be executed.
    pub(crate) fn new(
        container: &Container,
        volumes: &BTreeMap<String, PathBuf>,
        program: &Path,
    ) -> Result<Self, StartError> {
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
            let fail = |what: String| config_error(&container.name, &what);
            let enclosing = mounts[..index].iter().rev().find(|m| target.starts_with(&m.0));
            let mut make = Vec::new();
            if let Some((outer, outer_source, ..)) = enclosing {
                let mount_point = outer_source.join(target.strip_prefix(outer).unwrap_or(target));
                fs::create_dir_all(&mount_point)
                    .map_err(|e| fail(format!("cannot create the mount point {}: {e}", mount_point.display())))?;
            } else if let Some(root) = scratch_root(target) {
                make = scratch_dirs(target, root)?;
            } else {
                fs::create_dir_all(target).map_err(|e| {
                    fail(format!("cannot create the mount point {} on the host: {e}", target.display()))
                })?;
            }
            if !source.is_dir() {
                return Err(fail(format!("the volume directory {} is missing", source.display())));
            }
            binds.push(Bind {
                source: c_path(source)?,
                tree: None,
                target: c_path(target)?,
                make,
                file: false,
                read_only: *read_only,
                host_to_container: *host_to_container,
            });
        }
        if let Some(root) = scratch_root(program) {
            binds.push(Bind {
                source: c_path(program)?,
                tree: None,
                target: c_path(program)?,
                make: scratch_dirs(program.parent().unwrap_or(program), root)?,
                file: true,
                read_only: true,
                host_to_container: false,
            });
        }
        Ok(MountPlan { binds })
    }

    /// Enters a new mount namespace and mounts the volumes. Runs in the child before `exec`: system
    /// calls only, no allocation.
    pub(crate) fn apply(&mut self) -> io::Result<()> {
        // SAFETY: called in the single-threaded child between fork and exec; the file descriptor
        // table is not unshared (only the mount namespace is).
        #[allow(unsafe_code)]
        unsafe {
            rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
        }
        mount_change(c"/", MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC)?;
        let clone = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC | OpenTreeFlags::AT_RECURSIVE;
        for bind in &mut self.binds {
            bind.tree = Some(open_tree(CWD, bind.source.as_c_str(), clone)?);
        }
        set_attributes(c"/", true, None)?;
        // A container's own scratch space: /tmp, and /dev/shm (POSIX shared memory, which Python's
        // multiprocessing and so Ansible need).
        mount(c"tmpfs", c"/tmp", c"tmpfs", MountFlags::NOSUID | MountFlags::NODEV, c"mode=1777,size=256m")?;
        mount(c"shm", c"/dev/shm", c"tmpfs", MountFlags::NOSUID | MountFlags::NODEV, c"mode=1777,size=64m")?;
        for bind in &self.binds {
            let Some(tree) = &bind.tree else { continue };
            for dir in &bind.make {
                match rustix::fs::mkdir(dir.as_c_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if bind.file {
                let flags = OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC;
                drop(rustix::fs::open(bind.target.as_c_str(), flags, Mode::from_raw_mode(0o755))?);
            }
            move_mount(tree, c"", CWD, bind.target.as_c_str(), MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH)?;
            let propagation =
                if bind.host_to_container { MountPropagationFlags::DOWNSTREAM } else { MountPropagationFlags::PRIVATE };
            set_attributes(bind.target.as_c_str(), bind.read_only, Some(propagation))?;
        }
        Ok(())
    }
}

/// The directories from just below the scratch directory `root` down to `dir`, outermost first.
fn scratch_dirs(dir: &Path, root: &Path) -> Result<Vec<CString>, StartError> {
    let mut ancestors: Vec<&Path> = dir.ancestors().take_while(|d| *d != root).collect();
    ancestors.reverse();
    ancestors.into_iter().map(c_path).collect()
}

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(AT_FDCWD, path, AT_RECURSIVE, …)`: sets or clears read-only on the mount at
/// `path` and every mount beneath it, and sets their propagation when given. rustix does not wrap
/// this system call (Linux 5.12) yet.
fn set_attributes(
    path: &std::ffi::CStr,
    read_only: bool,
    propagation: Option<MountPropagationFlags>,
) -> io::Result<()> {
    let (attr_set, attr_clr) = if read_only { (libc::MOUNT_ATTR_RDONLY, 0) } else { (0, libc::MOUNT_ATTR_RDONLY) };
    let attr =
        MountAttr { attr_set, attr_clr, propagation: propagation.map_or(0, |p| u64::from(p.bits())), userns_fd: 0 };
    // SAFETY: `path` is a NUL-terminated string and `attr` a valid `struct mount_attr` of the size
    // passed; the kernel only reads both.
    #[allow(unsafe_code)]
    let result = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_RECURSIVE,
            &raw const attr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::VolumeMount;

    use super::*;

    fn refusal(mount: VolumeMount) -> String {
        let container = Container { name: "app".into(), volume_mounts: Some(vec![mount]), ..Container::default() };
        let volumes = BTreeMap::from([("data".to_owned(), PathBuf::from("/nonexistent-volume"))]);
        let error = MountPlan::new(&container, &volumes, Path::new("/bin/sh")).err().expect("refused");
        assert_eq!(error.reason, "CreateContainerConfigError");
        error.message
    }

    #[test]
    fn unsupported_mounts_are_refused_before_anything_is_made() {
        let mount = |path: &str| VolumeMount { name: "data".into(), mount_path: path.into(), ..VolumeMount::default() };
        let sub_path = VolumeMount { sub_path: Some("x".into()), ..mount("/tmp/a") };
        assert!(refusal(sub_path).contains("subPath is not supported"));
        let bidirectional = VolumeMount { mount_propagation: Some("Bidirectional".into()), ..mount("/tmp/a") };
        assert!(refusal(bidirectional).contains("mountPropagation Bidirectional is not supported"));
        assert!(refusal(mount("relative/path")).contains("must be an absolute path"));
        assert!(refusal(mount("/tmp/../etc")).contains("must be an absolute path"));
        let other = VolumeMount { name: "other".into(), ..mount("/tmp/a") };
        assert!(refusal(other).contains("the pod has no volume of that name"));
        assert!(refusal(mount("/tmp/a")).contains("the volume directory /nonexistent-volume is missing"));
    }
}
