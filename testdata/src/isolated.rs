//! A machine that reaches the API servers but not the pod network, as a user's laptop outside a
//! cluster's network: a network namespace with nothing but loopback, where the given loopback
//! ports lead to the same ports of the host's loopback (each connection relayed, its bytes
//! counted). Programs run in it with `ip netns exec` ([`Isolated::command`]); a pod's address
//! is unreachable from there. Root only.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// The namespace, removed (and its relays stopped) on drop.
pub struct Isolated {
    name: String,
    relayed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

fn ip(args: &[&str]) -> io::Result<()> {
    let output = Command::new("ip").args(args).output()?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())))
    }
}

impl Isolated {
    /// Makes namespace `name` (one left by a crashed run is replaced), with loopback up and
    /// `ports` relayed to the host's loopback.
    pub fn new(name: &str, ports: &[u16]) -> io::Result<Isolated> {
        let _ = ip(&["netns", "delete", name]);
        ip(&["netns", "add", name])?;
        let isolated =
            Isolated { name: name.to_owned(), relayed: Arc::default(), stop: Arc::new(AtomicBool::new(false)) };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        let namespace = File::open(Path::new("/var/run/netns").join(name))?;
        // Sockets belong to the namespace they are made in: a thread enters it, binds, and ends.
        let listeners = std::thread::scope(|scope| {
            scope
                .spawn(|| -> io::Result<Vec<TcpListener>> {
                    rustix::thread::move_into_link_name_space(
                        namespace.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )?;
                    ports.iter().map(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port))).collect()
                })
                .join()
                .map_err(|_| io::Error::other("the thread entering the namespace panicked"))?
        })?;
        for (listener, &port) in listeners.into_iter().zip(ports) {
            listener.set_nonblocking(true)?;
            let (relayed, stop) = (isolated.relayed.clone(), isolated.stop.clone());
            std::thread::spawn(move || accept(&listener, port, &relayed, &stop));
        }
        Ok(isolated)
    }

    /// `program` to run in the namespace.
    #[must_use]
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Every byte relayed so far, both ways.
    #[must_use]
    pub fn relayed_bytes(&self) -> u64 {
        self.relayed.load(Ordering::SeqCst)
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = ip(&["netns", "delete", &self.name]);
    }
}

fn accept(listener: &TcpListener, port: u16, relayed: &Arc<AtomicU64>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((inside, _)) => {
                let Ok(outside) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else { continue };
                let _ = inside.set_nonblocking(false);
                for (from, to) in [(&inside, &outside), (&outside, &inside)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else { continue };
                    let relayed = relayed.clone();
                    std::thread::spawn(move || copy(from, to, &relayed));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return,
        }
    }
}

/// Copies until `from` ends, then ends `to`'s writing.
fn copy(mut from: TcpStream, mut to: TcpStream, relayed: &AtomicU64) {
    let mut buffer = [0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buffer) {
        if n == 0 || to.write_all(&buffer[..n]).is_err() {
            break;
        }
        relayed.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown(Shutdown::Write);
}
