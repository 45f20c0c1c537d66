//! Pod networking as the CNI `ptp` plugin lays it out, with iproute2.
//!
//! Each runner owns one subnet `10.245.<subnet>.0/24`. The host's pod-facing address is
//! `10.245.<subnet>.1` (set on the host end of every pod's veth pair, as `ptp` does with its
//! gateway); pods get `.2` to `.254` as `/32` addresses. For a pod:
//! - its own network namespace `mvpod-<subnet>-<n>` (`ip netns add`), loopback up;
//! - a veth pair: `eth0` in the pod with `10.245.<subnet>.<n>/32`, a link route to the gateway and a
//!   default route via it; `mv<subnet>-<n>` on the host with the gateway address and a `/32` route
//!   to the pod.
//!
//! Pod-to-pod traffic is forwarded by the host, so `net.ipv4.ip_forward` is set to 1 when it is
//! not (and left so: it is the namespace's setting, other runners may rely on it). Nothing is
//! forwarded anywhere else: a policy rule sends every packet from the runner's subnet to a table
//! of its own that holds the routes to its pods and an `unreachable` default. The host's own
//! addresses (the `local` table) stay reachable from pods; no NAT is set up.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};

use crate::pods::StartError;

/// The first two octets of every runner's subnet.
const PREFIX: [u8; 2] = [10, 245];
/// The routing table of the runner on `10.245.<s>.0/24` is `TABLE_BASE + s`.
const TABLE_BASE: u32 = 0x6d76_0000;
/// Priority of the runners' policy rules: before `main` (32766).
const RULE_PRIORITY: u32 = 30_000;
/// The table every runner's pod routes are also in, with an `unreachable` default: pods of one
/// runner reach the pods of another (two simulated clusters' agents talk to each other) and
/// nothing else in `10.245.0.0/16`. Its rule comes just before each runner's own.
const SHARED_TABLE: u32 = TABLE_BASE + 0x1_0000;
/// Every runner's addresses.
const ALL_SUBNETS: &str = "10.245.0.0/16";

/// The subnet of one runner: address allocation and the policy rule that keeps its traffic in.
pub(crate) struct Subnet {
    third_octet: u8,
    used: Mutex<BTreeSet<u8>>,
    rule: Mutex<bool>,
}

impl Subnet {
    pub(crate) fn new(subnet: u8) -> Self {
        Subnet { third_octet: subnet, used: Mutex::new(BTreeSet::new()), rule: Mutex::new(false) }
    }

    /// The host's address on every pod link.
    pub(crate) fn gateway(&self) -> Ipv4Addr {
        self.address(1)
    }

    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(PREFIX[0], PREFIX[1], self.third_octet, host)
    }

    fn cidr(&self) -> String {
        format!("{}/24", self.address(0))
    }

    fn table(&self) -> String {
        (TABLE_BASE + u32::from(self.third_octet)).to_string()
    }

    /// Installs the rule and the table's unreachable default once, and turns on forwarding.
    fn ensure_rule(&self) -> Result<(), String> {
        let mut installed = self.rule.lock().unwrap_or_else(PoisonError::into_inner);
        if *installed {
            return Ok(());
        }
        enable_forwarding()?;
        // A rule or table left by a crashed run of the same subnet is replaced.
        self.remove_rule();
        let table = self.table();
        ip(&["route", "add", "unreachable", "default", "table", &table])?;
        ip(&["rule", "add", "from", &self.cidr(), "lookup", &table, "priority", &RULE_PRIORITY.to_string()])?;
        let shared = SHARED_TABLE.to_string();
        // Another runner may have made it already.
        let _ = ip(&["route", "add", "unreachable", "default", "table", &shared]);
        let priority = (RULE_PRIORITY - 1).to_string();
        ip(&["rule", "add", "from", &self.cidr(), "to", ALL_SUBNETS, "lookup", &shared, "priority", &priority])?;
        *installed = true;
        Ok(())
    }

    fn remove_rule(&self) {
        let table = self.table();
        while ip(&["rule", "del", "from", &self.cidr(), "lookup", &table, "priority", &RULE_PRIORITY.to_string()])
            .is_ok()
        {}
        let (shared, priority) = (SHARED_TABLE.to_string(), (RULE_PRIORITY - 1).to_string());
        while ip(&["rule", "del", "from", &self.cidr(), "to", ALL_SUBNETS, "lookup", &shared, "priority", &priority])
            .is_ok()
        {}
        let _ = ip(&["route", "flush", "table", &table]);
    }
}

impl Drop for Subnet {
    fn drop(&mut self) {
        if *self.rule.get_mut().unwrap_or_else(PoisonError::into_inner) {
            self.remove_rule();
        }
    }
}

/// One pod's network: its namespace and veth pair, removed on drop.
pub(crate) struct PodNetwork {
    subnet: Arc<Subnet>,
    host: u8,
    namespace: String,
    host_link: String,
}

impl PodNetwork {
    /// Creates the pod's namespace, link, addresses and routes.
    pub(crate) fn create(subnet: &Arc<Subnet>) -> Result<Self, StartError> {
        let fail = |message: String| StartError {
            reason: "CreateContainerError".to_owned(),
            message: format!("failed to set up the pod's network: {message}"),
        };
        subnet.ensure_rule().map_err(fail)?;
        let host = {
            let mut used = subnet.used.lock().unwrap_or_else(PoisonError::into_inner);
            let free = (2..=254)
                .find(|n| !used.contains(n))
                .ok_or_else(|| fail(format!("no free address left in {}", subnet.cidr())))?;
            used.insert(free);
            free
        };
        let network = PodNetwork {
            subnet: Arc::clone(subnet),
            host,
            namespace: format!("mvpod-{}-{host}", subnet.third_octet),
            host_link: format!("mv{}-{host}", subnet.third_octet),
        };
        // Leftovers of a crashed run with the same subnet would collide: remove them first.
        network.remove();
        network.set_up().map_err(fail)?;
        Ok(network)
    }

    fn set_up(&self) -> Result<(), String> {
        let (ns, link) = (self.namespace.as_str(), self.host_link.as_str());
        let gateway = self.subnet.gateway().to_string();
        let pod = format!("{}/32", self.ip());
        let table = self.subnet.table();
        ip(&["netns", "add", ns])?;
        ip(&["link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
        ip(&["addr", "add", &format!("{gateway}/32"), "dev", link])?;
        ip(&["link", "set", link, "up"])?;
        ip(&["route", "add", &pod, "dev", link])?;
        ip(&["route", "add", &pod, "dev", link, "table", &table])?;
        ip(&["route", "add", &pod, "dev", link, "table", &SHARED_TABLE.to_string()])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "addr", "add", &pod, "dev", "eth0"])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "route", "add", &gateway, "dev", "eth0", "scope", "link"])?;
        ip(&["-n", ns, "route", "add", "default", "via", &gateway, "dev", "eth0"])
    }

    /// The pod's address.
    pub(crate) fn ip(&self) -> Ipv4Addr {
        self.subnet.address(self.host)
    }

    /// The namespace's name (`ip netns list` shows it).
    #[cfg(test)]
    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The host end's name (`ip link` shows it).
    #[cfg(test)]
    pub(crate) fn host_link(&self) -> &str {
        &self.host_link
    }

    /// Opens the namespace for `setns` in a container's child process.
    pub(crate) fn open(&self) -> Result<File, StartError> {
        let path = PathBuf::from("/run/netns").join(&self.namespace);
        File::open(&path).map_err(|e| StartError {
            reason: "CreateContainerError".to_owned(),
            message: format!("cannot open the pod's network namespace {}: {e}", path.display()),
        })
    }

    /// Deletes the link (its peer and routes go with it) and the namespace; missing ones are fine.
    fn remove(&self) {
        let _ = ip(&["link", "del", &self.host_link]);
        let _ = ip(&["netns", "del", &self.namespace]);
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        self.remove();
        self.subnet.used.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.host);
    }
}

/// Sets `net.ipv4.ip_forward` to 1 unless it is.
fn enable_forwarding() -> Result<(), String> {
    const KNOB: &str = "/proc/sys/net/ipv4/ip_forward";
    let current = fs::read_to_string(KNOB).map_err(|e| format!("cannot read {KNOB}: {e}"))?;
    if current.trim() != "1" {
        fs::write(KNOB, "1").map_err(|e| format!("cannot set {KNOB} to 1 (pod-to-pod traffic needs it): {e}"))?;
    }
    Ok(())
}

/// Runs `ip ARGS`, returning its error output when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
    }
}
