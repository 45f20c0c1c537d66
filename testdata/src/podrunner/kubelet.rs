//! A kubelet's pod directory, laid out as a real kubelet lays it out, for the node strategy.
//!
//! [`KubeletRoot::new`] makes `<root>` a bind mount of itself with *shared* propagation (a
//! systemd host's `/` is shared; this machine's may be private), so that volumes mounted beneath
//! it later reach every pod that mounts `<root>/pods` with `mountPropagation: HostToContainer`.
//! [`KubeletRoot::pod`] then gives a [`PodDir`], and [`PodDir::mount_volume`] bind-mounts a
//! persistent volume's directory, in the host's mount namespace, at
//! - `<root>/pods/<podUID>/volumes/kubernetes.io~csi/<pv>/mount` for CSI volumes;
//! - `<root>/pods/<podUID>/volumes/kubernetes.io~<plugin>/<pv>` for in-tree plugins.
//!
//! Dropping the [`PodDir`] unmounts its volumes and removes only the directories it made (never
//! recursively, so a failed unmount cannot delete a volume's files); dropping the
//! [`KubeletRoot`] unmounts its own bind.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{MountPropagationFlags, UnmountFlags, mount_bind, mount_bind_recursive, mount_change, unmount};

/// A kubelet root directory (`/var/lib/kubelet` on most distributions), shared for propagation.
#[derive(Debug)]
pub struct KubeletRoot {
    root: PathBuf,
}

/// How a volume plugin names its directory under a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePlugin {
    /// A CSI volume: `kubernetes.io~csi/<pv>/mount`.
    Csi,
    /// An in-tree plugin such as `local-volume`, `nfs` or `aws-ebs`: `kubernetes.io~<plugin>/<pv>`.
    InTree(String),
}

impl KubeletRoot {
    /// Makes `root/pods` and binds `root` onto itself with shared propagation.
    pub fn new(root: &Path) -> io::Result<Self> {
        fs::create_dir_all(root.join("pods"))?;
        mount_bind(root, root)?;
        let kubelet = KubeletRoot { root: root.to_path_buf() };
        mount_change(root, MountPropagationFlags::SHARED)?;
        Ok(kubelet)
    }

    /// The kubelet root.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/pods`: what a node agent's `DaemonSet` mounts as a `hostPath`.
    #[must_use]
    pub fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    /// The directory of the pod with this UID, made if missing.
    pub fn pod(&self, uid: &str) -> io::Result<PodDir> {
        if uid.is_empty() || uid.contains('/') || uid == "." || uid == ".." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{uid:?} is not a pod UID")));
        }
        let mut pod = PodDir { dir: self.pods().join(uid), mounts: Vec::new(), made: Vec::new() };
        pod.make_dirs(&pod.dir.clone())?;
        Ok(pod)
    }
}

impl Drop for KubeletRoot {
    fn drop(&mut self) {
        let _ = unmount(&self.root, UnmountFlags::DETACH);
    }
}

/// One pod's directory under the kubelet root, with its volumes mounted.
#[derive(Debug)]
pub struct PodDir {
    dir: PathBuf,
    mounts: Vec<PathBuf>,
    made: Vec<PathBuf>,
}

impl PodDir {
    /// `<root>/pods/<podUID>`.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bind-mounts `source` (a persistent volume's directory) where the kubelet mounts volume
    /// `pv` of `plugin`, and returns that path.
    pub fn mount_volume(&mut self, plugin: &VolumePlugin, pv: &str, source: &Path) -> io::Result<PathBuf> {
        if pv.is_empty() || pv.contains('/') || pv == "." || pv == ".." {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{pv:?} is not a volume name")));
        }
        let volumes = self.dir.join("volumes");
        let target = match plugin {
            VolumePlugin::Csi => volumes.join("kubernetes.io~csi").join(pv).join("mount"),
            VolumePlugin::InTree(name) => volumes.join(format!("kubernetes.io~{name}")).join(pv),
        };
        self.make_dirs(&target)?;
        mount_bind_recursive(source, &target)?;
        self.mounts.push(target.clone());
        Ok(target)
    }

    /// `mkdir -p`, remembering each directory made.
    fn make_dirs(&mut self, dir: &Path) -> io::Result<()> {
        let mut missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
        missing.reverse();
        for d in missing {
            fs::create_dir(d)?;
            self.made.push(d.to_path_buf());
        }
        Ok(())
    }
}

impl Drop for PodDir {
    fn drop(&mut self) {
        for mount in self.mounts.iter().rev() {
            let _ = unmount(mount, UnmountFlags::DETACH);
        }
        for dir in self.made.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}
