//! Helpers for end-to-end tests: real `mover` and `mover-agent` processes on loopback.
#![allow(dead_code, reason = "each test binary uses a different subset")]

pub mod k8s;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary (built by `cargo test --workspace`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "`{}` is missing: run the tests with `cargo test --workspace`", path.display());
    path
}

/// Runs `mover` with arguments and returns its output.
pub fn mover(args: &[&str]) -> Output {
    Command::new(bin("mover")).args(args).env_remove("MOVER_OUTPUT").output().expect("run mover")
}

/// Text of an output, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The `summary` object printed last by `--output json`.
pub fn summary(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no output\n{}", text(output)));
    let value: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}\n{}", text(output)));
    assert_eq!(value["type"], "summary", "{}", text(output));
    value
}

/// Creates a migration certificate directory.
pub fn certs(dir: &Path) -> PathBuf {
    let output = mover(&["certs", "init", dir.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    dir.to_owned()
}

/// A running `mover-agent`, killed on drop.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub log: PathBuf,
    /// `HOST:PORT` of `/metrics`, when started with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Agent {
    /// Starts an agent on an ephemeral loopback port with the given `--volume` specs.
    pub fn start(certs: &Path, volumes: &[String], log_dir: &Path) -> Agent {
        Agent::start_with(certs, volumes, log_dir, &[])
    }

    /// Starts an agent with more `serve` arguments; `--metrics-listen 127.0.0.1:0` fills
    /// [`Agent::metrics`].
    pub fn start_with(certs: &Path, volumes: &[String], log_dir: &Path, extra: &[&str]) -> Agent {
        let log = log_dir.join(format!("agent-{}.log", rand_suffix()));
        let mut command = Command::new(bin("mover-agent"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--certs"]).arg(certs).args(extra);
        for volume in volumes {
            command.arg("--volume").arg(volume);
        }
        let mut child = command.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().expect("spawn agent");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).unwrap();
            let mut sent = false;
            let mut metrics = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                use std::io::Write;
                let _ = writeln!(file, "{line}");
                if !sent && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    let listen = || value["fields"]["listen"].as_str().unwrap().to_owned();
                    if value["fields"]["message"] == "metrics" {
                        metrics = Some(listen());
                    }
                    if value["fields"]["message"] == "serving" {
                        let _ = tx.send((listen(), metrics.take()));
                        sent = true;
                    }
                }
            }
        });
        let (addr, metrics) = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("agent did not start; log: {}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        Agent { child, addr, log, metrics }
    }

    /// `agent://ADDR/VOLUME`.
    pub fn url(&self, volume: &str) -> String {
        format!("agent://{}/{volume}", self.addr)
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = rustix_pid(&self.child);
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "agent did not stop after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rustix_pid(child: &Child) -> u32 {
    child.id()
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Waits until something accepts connections on loopback `port` (a server just spawned).
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when running as root (ownership, mounts).
pub fn is_root() -> bool {
    // SAFETY-free: `id -u` keeps the tests free of libc.
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop (root only).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir).status().unwrap();
        assert!(status.success(), "mount tmpfs at {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    pub fn remount(&self, options: &str) {
        let status = Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remount {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A fresh XFS filesystem (reflinks on, as `mkfs.xfs` makes it) in a sparse image of `size`
/// bytes, loop-mounted at `dir` and unmounted on drop (root and xfsprogs only).
pub struct LoopXfs(pub PathBuf);

impl LoopXfs {
    /// Whether this machine can make one.
    pub fn available() -> bool {
        is_root()
            && Path::new("/dev/loop-control").exists()
            && Command::new("mkfs.xfs").arg("-V").output().is_ok_and(|o| o.status.success())
    }

    pub fn mount(dir: &Path, size: u64) -> LoopXfs {
        let image = dir.with_extension("img");
        std::fs::File::create(&image).unwrap().set_len(size).unwrap();
        let status = Command::new("mkfs.xfs").arg("-q").arg(&image).status().unwrap();
        assert!(status.success(), "mkfs.xfs {}", image.display());
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount").args(["-o", "loop"]).arg(&image).arg(dir).status().unwrap();
        assert!(status.success(), "mount {} at {}", image.display(), dir.display());
        LoopXfs(dir.to_owned())
    }
}

impl Drop for LoopXfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Writes `plan.yaml` in `dir`: the header, then `body`.
pub fn write_plan(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("plan.yaml");
    std::fs::write(&path, format!("apiVersion: mover/v1alpha1\nkind: MigrationPlan\n{body}")).unwrap();
    path
}

/// Runs `mover ARGS... plan.yaml` from the plan's directory (as a user would), with `env`.
pub fn mover_on_plan(args: &[&str], plan: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin("mover"))
        .current_dir(plan.parent().unwrap())
        .args(args)
        .arg(plan.file_name().unwrap())
        .args(extra)
        .envs(env.iter().copied())
        .env_remove("MOVER_OUTPUT")
        .output()
        .expect("run mover")
}

/// A real `tinyproxy` with Basic auth (`alice`) that allows CONNECT only to one port; killed on
/// drop. `None` (with a note) when tinyproxy is not installed.
pub struct Tinyproxy {
    child: Child,
    pub port: u16,
    log: PathBuf,
}

impl Tinyproxy {
    pub fn start(dir: &Path, password: &str, connect_port: u16) -> Option<Tinyproxy> {
        Tinyproxy::start_for(dir, password, connect_port, Some("127.0.0.1"), &["127.0.0.1"])
    }

    /// As [`Tinyproxy::start`], listening on `listen` (every address when `None`: the simulated
    /// clusters' pod gateways appear with their pods) for clients from `allow` (addresses or
    /// CIDRs).
    #[allow(dead_code, reason = "not every test file reaches pods")]
    pub fn start_for(
        dir: &Path,
        password: &str,
        connect_port: u16,
        listen: Option<&str>,
        allow: &[&str],
    ) -> Option<Tinyproxy> {
        if Command::new("tinyproxy").arg("-v").output().is_err() {
            eprintln!("skipped: tinyproxy is not installed (scripts/test.sh installs it)");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let config = dir.join(format!("tinyproxy-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "Port {port}\n{}{}BasicAuth alice {password}\nConnectPort {connect_port}\nLogFile \"{}\"\nLogLevel Info\nMaxClients 20\n",
                listen.map(|host| format!("Listen {host}\n")).unwrap_or_default(),
                allow.iter().fold(String::new(), |lines, client| lines + "Allow " + client + "\n"),
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "tinyproxy");
        Some(Tinyproxy { child, port, log })
    }

    pub fn url(&self, password: &str) -> String {
        self.url_at("127.0.0.1", password)
    }

    /// Its URL at `host` (an address it listens on).
    pub fn url_at(&self, host: &str, password: &str) -> String {
        format!("http://alice:{password}@{host}:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
