//! The simulated kubelet's pod runner: a scheduled pod's containers as real processes in their own
//! namespaces (Linux, root).
//!
//! - **Network** ([`netns`]): each pod gets a network namespace and a veth pair as the CNI `ptp`
//!   plugin makes them, with an address from the runner's subnet `10.245.<subnet>.0/24`; the host
//!   ([`PodRunner::host_ip`]) and every other pod of the runner reach it, nothing outside the
//!   subnet is routed. Pod-to-pod traffic needs `net.ipv4.ip_forward=1`, which the first pod sets.
//! - **Mounts** ([`mounts`]): each container has its own mount namespace: a read-only view of the
//!   host with tmpfs of its own at `/tmp` and `/dev/shm`, and its `volumeMounts` bind-mounted at their
//!   `mountPath`s (`readOnly`, `HostToContainer`). The host never sees them, and nothing the
//!   container writes lands outside its volumes.
//! - **Images** ([`images`]): a map from image repository to a local program ([`Image`]); an image
//!   not in it fails with `ErrImagePull`, as a kubelet does.
//! - **Processes** ([`process`]): `command`/`args` with `$(VAR)` expansion, `env` (values and the
//!   downward API's `fieldRef`), `workingDir`, `runAsUser`/`runAsGroup`/`supplementalGroups`,
//!   output to `<log_dir>/<container>.log`.
//! - **Node strategy** ([`kubelet`]): a kubelet pod directory with CSI and in-tree volume layouts.
//!
//! What the simulation does not do: there is no image root filesystem (a container sees the
//! host's files, read-only, around its volumes; `HOME` is not writable, so a tool that writes
//! there needs `HOME` set under `/tmp` in its [`Image`]), no PID, UTS or IPC namespace, no cgroup
//! limits, and capabilities are not dropped (a container running as uid 0 keeps root's
//! capabilities and could remount its view writable; a non-zero `runAsUser` loses them as any
//! `setuid` does). `initContainers`, `envFrom`, `subPath`, `Bidirectional` propagation and `env`
//! from Secrets or `ConfigMaps` are refused with a `StartError`; containers are not restarted (a
//! `restartPolicy` is the server's business). A `mountPath` that does not exist is created on the
//! host unless it lies under `/tmp` or inside another volume (see [`mounts`]).

mod images;
mod kubelet;
mod mounts;
mod netns;
mod process;
mod pull;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::Child;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

pub use images::{DEFAULT_PATH, Image, repository};
pub use kubelet::{KubeletRoot, PodDir, VolumePlugin};
use netns::{PodNetwork, Subnet};
use process::PodContext;

use crate::pods::{PodProcess, PodStart, Pods, StartError};

/// How long [`PodProcess::stop`] waits after `SIGTERM` before `SIGKILL`.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs pods' containers as processes, on one subnet.
pub struct PodRunner {
    subnet: Arc<Subnet>,
    images: BTreeMap<String, Image>,
    env: Vec<(String, String)>,
}

impl PodRunner {
    /// A runner whose pods get addresses in `10.245.<subnet>.0/24` (no two live runners may share
    /// a subnet) and whose test registry holds `images`, keyed by repository (the image reference
    /// without tag or digest, e.g. `registry.local/mover/mover-agent`).
    #[must_use]
    pub fn new(subnet: u8, images: BTreeMap<String, Image>) -> Self {
        PodRunner { subnet: Arc::new(Subnet::new(subnet)), images, env: Vec::new() }
    }

    /// Gives every container the variable `name` (as a kubelet gives `KUBERNETES_SERVICE_HOST`);
    /// a container's own `env` overrides it.
    #[must_use]
    pub fn with_env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The host's address on every pod link: what pods reach the host at.
    #[must_use]
    pub fn host_ip(&self) -> Ipv4Addr {
        self.subnet.gateway()
    }

    /// Starts the pod; see [`Pods::start`].
    pub fn start_pod(&self, start: &PodStart<'_>) -> Result<RunningPod, StartError> {
        let spec = start.pod.spec.as_ref().ok_or_else(|| StartError {
            reason: "CreateContainerConfigError".to_owned(),
            message: "the pod has no spec".to_owned(),
        })?;
        if spec.init_containers.as_ref().is_some_and(|init| !init.is_empty()) {
            return Err(StartError {
                reason: "CreateContainerConfigError".to_owned(),
                message: "initContainers are not supported by the simulated kubelet".to_owned(),
            });
        }
        // Every image is checked before anything is set up, as a kubelet pulls before it creates.
        let images = spec
            .containers
            .iter()
            .map(|container| images::find(&self.images, container.image.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let network = PodNetwork::create(&self.subnet)?;
        let netns = Arc::new(network.open()?);
        let mut pod = RunningPod { containers: Vec::new(), network: Some(network), grace: STOP_GRACE };
        let context = PodContext {
            pod: start.pod,
            ip: pod.ip(),
            host_ip: self.host_ip(),
            runner_env: &self.env,
            volumes: &start.volumes,
            log_dir: start.log_dir,
            netns: &netns,
        };
        for (container, image) in spec.containers.iter().zip(images) {
            // On an error, dropping `pod` stops the containers already started.
            let child = process::spawn(container, image, &context)?;
            pod.containers.push(Running { child, exit: None });
        }
        Ok(pod)
    }
}

impl Pods for PodRunner {
    fn start(&self, start: PodStart<'_>) -> Result<Box<dyn PodProcess>, StartError> {
        Ok(Box::new(self.start_pod(&start)?))
    }

    fn router_address(&self) -> Option<Ipv4Addr> {
        Some(self.host_ip())
    }
}

/// A container's process and, once it ended, its exit code.
struct Running {
    child: Child,
    exit: Option<i32>,
}

impl Running {
    /// Reaps the process if it ended; its exit code (128 + signal when killed).
    fn poll(&mut self) -> Option<i32> {
        if self.exit.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.exit = Some(status.code().or(status.signal().map(|s| 128 + s)).unwrap_or(128));
        }
        self.exit
    }

    /// Signals the container's process group (its process and whatever it started).
    fn signal(&self, signal: Signal) {
        if let Some(pid) = Pid::from_raw(self.child.id().cast_signed()) {
            let _ = kill_process_group(pid, signal);
        }
    }
}

/// A started pod: its containers' processes and its network. Stopped on drop.
pub struct RunningPod {
    containers: Vec<Running>,
    network: Option<PodNetwork>,
    grace: Duration,
}

impl RunningPod {
    /// Waits up to `timeout` for every container to end; the result of [`PodProcess::try_wait`].
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let exit = self.try_wait();
            if exit.is_some() || Instant::now() >= deadline {
                return exit;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets how long [`PodProcess::stop`] waits after `SIGTERM` ([`STOP_GRACE`] by default).
    pub fn set_grace(&mut self, grace: Duration) {
        self.grace = grace;
    }

    #[cfg(test)]
    fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }
}

impl PodProcess for RunningPod {
    fn ip(&self) -> Ipv4Addr {
        self.network.as_ref().map_or(Ipv4Addr::UNSPECIFIED, PodNetwork::ip)
    }

    fn try_wait(&mut self) -> Option<i32> {
        let mut first = None;
        for (index, container) in self.containers.iter_mut().enumerate() {
            let exit = container.poll()?;
            if index == 0 {
                first = Some(exit);
            }
        }
        first
    }

    fn stop(&mut self) {
        for container in &mut self.containers {
            if container.poll().is_none() {
                container.signal(Signal::TERM);
            }
        }
        let deadline = Instant::now() + self.grace;
        while self.containers.iter_mut().any(|c| c.poll().is_none()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        for container in &mut self.containers {
            // Also kills what a container started and left behind when it ended.
            container.signal(Signal::KILL);
            if container.exit.is_none() {
                let _ = container.child.wait();
                container.poll();
            }
        }
        self.network = None;
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stop();
    }
}
