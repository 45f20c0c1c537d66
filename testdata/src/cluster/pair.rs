//! Two simulated clusters, `source` and `target`, whose pods run as real processes
//! ([`crate::podrunner`]), with a kubeconfig naming both: what `mover-testdata cluster up DIR`,
//! the demo and the Kubernetes tests start.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Flavor, SimCluster, write_kubeconfig};
use crate::podrunner::{Image, PodRunner};

/// The repository of mover's agent image (`mover_kube::objects::DEFAULT_IMAGE` without its tag):
/// the test registry's pods of it run the workspace's `mover-agent`.
pub const AGENT_REPOSITORY: &str = "ghcr.io/mover-dev/mover-agent";
/// An image whose programs are this machine's (`sleep`, `sh`, `ansible-playbook`): for
/// applications and hook Jobs in the simulated clusters.
pub const TOOLS_REPOSITORY: &str = "registry.sim/tools";

/// The source and target clusters.
pub struct ClusterPair {
    /// The cluster named `source`.
    pub source: SimCluster,
    /// The cluster named `target`.
    pub target: SimCluster,
    /// A kubeconfig with contexts `source` and `target` (user `admin`).
    pub kubeconfig: PathBuf,
}

impl ClusterPair {
    /// Starts both under `dir` (`dir/source`, `dir/target`, `dir/kubeconfig`). Pods get
    /// addresses in `10.245.<subnets.0>.0/24` and `10.245.<subnets.1>.0/24`: tests running at
    /// once must use subnets of their own. `agent` is the `mover-agent` binary pods run.
    pub fn start(dir: &Path, agent: &Path, subnets: (u8, u8)) -> io::Result<ClusterPair> {
        ClusterPair::start_flavored(dir, agent, subnets, Flavor::Kubernetes)
    }

    /// As [`ClusterPair::start`], both clusters serving the API of `flavor`.
    pub fn start_flavored(dir: &Path, agent: &Path, subnets: (u8, u8), flavor: Flavor) -> io::Result<ClusterPair> {
        ClusterPair::start_with_images(dir, agent, subnets, flavor, BTreeMap::new())
    }

    /// As [`ClusterPair::start_flavored`], the test registry also holding `images` (by
    /// repository), e.g. the agent image a test pushed into a real registry
    /// ([`Image::pulled`]).
    pub fn start_with_images(
        dir: &Path,
        agent: &Path,
        subnets: (u8, u8),
        flavor: Flavor,
        images: BTreeMap<String, Image>,
    ) -> io::Result<ClusterPair> {
        let mut images = images;
        images.insert(AGENT_REPOSITORY.to_owned(), Image::program(agent));
        images.insert(TOOLS_REPOSITORY.to_owned(), Image::host_tools());
        let runner = |subnet| Arc::new(PodRunner::new(subnet, images.clone()));
        let source = SimCluster::start_flavored("source", &dir.join("source"), runner(subnets.0), flavor)?;
        let target = SimCluster::start_flavored("target", &dir.join("target"), runner(subnets.1), flavor)?;
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &[&source, &target])?;
        Ok(ClusterPair { source, target, kubeconfig })
    }
}
