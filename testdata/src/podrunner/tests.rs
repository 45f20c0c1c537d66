//! Real pods: processes in their own network and mount namespaces (root only; each test skips
//! with a reason otherwise). Each test has its own subnet (`10.245.201.0/24` to `.209`), so they
//! run in parallel.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::pods::{PodProcess as _, PodStart};

const TOOLS: &str = "registry.local/test/tools";

fn is_root() -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipped: pods need root (network and mount namespaces)");
    false
}

fn runner(subnet: u8) -> PodRunner {
    let tools = Image::tools("/bin/sh", [PathBuf::from("/usr/bin"), PathBuf::from("/bin")]);
    PodRunner::new(subnet, BTreeMap::from([(TOOLS.to_owned(), tools)]))
}

fn container(name: &str, script: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some(format!("{TOOLS}:1.0")),
        command: Some(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()]),
        ..Container::default()
    }
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), ..EnvVar::default() }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.to_owned(), ..ObjectFieldSelector::default() }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn mount(volume: &str, path: &Path) -> VolumeMount {
    VolumeMount { name: volume.to_owned(), mount_path: path.display().to_string(), ..VolumeMount::default() }
}

fn pod(name: &str, containers: Vec<Container>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some("apps".to_owned()),
            uid: Some(format!("uid-{name}")),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec { node_name: Some("node-1".to_owned()), containers, ..PodSpec::default() }),
        status: None,
    }
}

fn start(runner: &PodRunner, pod: &Pod, volumes: &[(&str, &Path)], log_dir: &Path) -> Result<RunningPod, StartError> {
    let volumes = volumes.iter().map(|(name, dir)| ((*name).to_owned(), dir.to_path_buf())).collect();
    runner.start_pod(&PodStart { pod, volumes, log_dir })
}

/// Waits until `log` contains `text`; panics with the log after 10 s.
fn wait_for_log(log: &Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let content = fs::read_to_string(log).unwrap_or_default();
        if content.contains(text) {
            return;
        }
        assert!(Instant::now() < deadline, "{} never showed {text:?}; it has:\n{content}", log.display());
        thread::sleep(Duration::from_millis(20));
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The first connection to `listener`; panics after `timeout`.
fn accept_within(listener: &TcpListener, timeout: Duration) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("no connection from the pod: {e}"),
        }
    }
}

/// The pod's namespace and host link exist exactly while it runs.
fn assert_network(pod: &RunningPod, present: bool) -> (String, String) {
    let network = pod.network().expect("a running pod has a network");
    let names = (network.namespace().to_owned(), network.host_link().to_owned());
    assert_eq!(command_output("ip", &["netns", "list"]).contains(&names.0), present, "netns {}", names.0);
    assert_eq!(command_output("ip", &["-br", "link"]).contains(&names.1), present, "link {}", names.1);
    names
}

fn assert_gone((namespace, link): &(String, String)) {
    let namespaces = command_output("ip", &["netns", "list"]);
    assert!(!namespaces.lines().any(|l| l.split_whitespace().next() == Some(namespace)), "leaked netns {namespace}");
    let links = command_output("ip", &["-br", "link"]);
    assert!(!links.lines().any(|l| l.split(['@', ' ']).next() == Some(link)), "leaked link {link}:\n{links}");
}

#[test]
fn pods_reach_each_other_the_host_and_their_loopback_but_nothing_outside() {
    if !is_root() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let runner = runner(201);
    // A listener on 0.0.0.0:7443 that first checks its own loopback, then greets each client.
    let server = "import socket\n\
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('0.0.0.0', 7443)); s.listen()\n\
        c = socket.create_connection(('127.0.0.1', 7443)); a, _ = s.accept(); a.sendall(b'x')\n\
        print('loopback', c.recv(1).decode(), flush=True)\n\
        while True:\n    a, _ = s.accept(); a.sendall(b'hello from $(POD_NAME)\\n'); a.close()\n";
    let mut listener = container("server", "");
    listener.command = Some(vec!["python3".into(), "-c".into(), server.into()]);
    listener.env = Some(vec![field_env("POD_NAME", "metadata.name")]);
    let mut a = start(&runner, &pod("pod-a", vec![listener]), &[], logs.path()).unwrap();
    wait_for_log(&logs.path().join("server.log"), "loopback x");

    // The host reaches the pod.
    let mut greeting = String::new();
    let address = SocketAddr::from((a.ip(), 7443));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
    stream.read_to_string(&mut greeting).unwrap();
    assert_eq!(greeting, "hello from pod-a\n");

    // Another pod reaches the first one and the host's pod-facing address.
    let host = TcpListener::bind((runner.host_ip(), 0)).unwrap();
    let mut client = container(
        "client",
        "exec 3<>/dev/tcp/$(PEER)/7443 && cat <&3 && exec 4<>/dev/tcp/$(HOST)/$(HOST_PORT) && echo from $(HOSTNAME) >&4",
    );
    client.command = Some(vec!["bash".into(), "-c".into(), client.command.unwrap().pop().unwrap()]);
    client.env = Some(vec![
        env("PEER", &a.ip().to_string()),
        env("HOST", &runner.host_ip().to_string()),
        env("HOST_PORT", &host.local_addr().unwrap().port().to_string()),
    ]);
    let mut b = start(&runner, &pod("pod-b", vec![client]), &[], logs.path()).unwrap();
    assert_ne!(a.ip(), b.ip());
    let mut from_pod = accept_within(&host, Duration::from_secs(10));
    let mut said = String::new();
    from_pod.read_to_string(&mut said).unwrap();
    assert_eq!(said, "from pod-b\n");
    assert_eq!(
        b.wait_timeout(Duration::from_secs(10)),
        Some(0),
        "{}",
        command_output("cat", &[&logs.path().join("client.log").display().to_string()])
    );
    assert_eq!(fs::read_to_string(logs.path().join("client.log")).unwrap(), "hello from pod-a\n");

    // Traffic from a pod to anywhere outside the subnet has no route (asked of the routing table;
    // nothing is sent).
    let names = assert_network(&a, true);
    let route = command_output("ip", &["route", "get", "198.51.100.7", "from", &a.ip().to_string(), "iif", &names.1]);
    assert!(route.contains("unreachable") || route.contains("No route to host"), "{route}");

    let names_b = assert_network(&b, true);
    a.stop();
    b.stop();
    assert_eq!(a.try_wait(), Some(143), "SIGTERM ends the listener");
    assert_gone(&names);
    assert_gone(&names_b);
    drop(runner);
    assert!(!command_output("ip", &["rule"]).contains("10.245.201.0/24"), "the runner's rule is removed with it");
}

#[test]
fn volumes_are_private_binds_read_only_refuses_writes_and_writable_reaches_the_host() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (read_only_volume, writable_volume) = (tmp.path().join("ro-volume"), tmp.path().join("rw-volume"));
    fs::create_dir_all(&read_only_volume).unwrap();
    fs::create_dir_all(&writable_volume).unwrap();
    fs::write(read_only_volume.join("seed"), "seed").unwrap();
    // Mount points that do not exist yet; the nested one lies inside the writable volume.
    let (ro_path, rw_path) = (tmp.path().join("pod/ro"), tmp.path().join("pod/rw"));
    let nested = rw_path.join("inner");
    let runner = runner(202);
    // A host path outside every volume (not under /tmp): the pod cannot write there.
    let target_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    let host_dir = tempfile::tempdir_in(&target_dir).unwrap();
    let outside = host_dir.path().join("probe");
    let mut app = container(
        "app",
        "if touch $(RO)/x 2>/dev/null; then exit 10; fi; test -f $(RO)/seed || exit 11; \
         echo written > $(RW)/out || exit 12; pwd > $(RW)/pwd; test -f $(NESTED)/seed || exit 13; \
         echo \"$MY_NAMESPACE $MY_NODE $MY_IP\" > $(RW)/env; \
         if touch $(OUTSIDE) 2>/dev/null; then exit 14; fi; \
         mkdir -p $(SCRATCH) && echo scratch > $(SCRATCH)/file || exit 15; echo ready; exec sleep 30",
    );
    let mut ro_mount = mount("ro", &ro_path);
    ro_mount.read_only = Some(true);
    let mut nested_mount = mount("ro", &nested);
    nested_mount.read_only = Some(true);
    app.volume_mounts = Some(vec![ro_mount, mount("rw", &rw_path), nested_mount]);
    app.working_dir = Some(rw_path.display().to_string());
    app.env = Some(vec![
        env("RO", &ro_path.display().to_string()),
        env("RW", &rw_path.display().to_string()),
        env("NESTED", &nested.display().to_string()),
        field_env("MY_NAMESPACE", "metadata.namespace"),
        field_env("MY_NODE", "spec.nodeName"),
        field_env("MY_IP", "status.podIP"),
        env("OUTSIDE", &outside.display().to_string()),
        env("SCRATCH", &tmp.path().join("scratch").display().to_string()),
    ]);
    let mut pod =
        start(&runner, &pod("volumes", vec![app]), &[("ro", &read_only_volume), ("rw", &writable_volume)], tmp.path())
            .unwrap();
    wait_for_log(&tmp.path().join("app.log"), "ready");

    // The host sees neither mount: its mount table lacks them and its mount points stay empty.
    let host_mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host_mounts.contains(&tmp.path().join("pod").display().to_string()), "{host_mounts}");
    // Mount points under /tmp were made in the pod's own tmpfs, not on the host; so were its
    // scratch files; the write outside every volume failed (and the pod went on).
    assert!(!ro_path.exists() && !tmp.path().join("scratch").exists());
    assert!(!outside.exists(), "the pod wrote outside its volumes");
    // The writable volume got the pod's files; the read-only one did not.
    assert!(!read_only_volume.join("x").exists());
    assert_eq!(fs::read_to_string(writable_volume.join("out")).unwrap(), "written\n");
    assert_eq!(fs::read_to_string(writable_volume.join("pwd")).unwrap(), format!("{}\n", rw_path.display()));
    assert_eq!(fs::read_to_string(writable_volume.join("env")).unwrap(), format!("apps node-1 {}\n", pod.ip()));
    // The nested mount point was made inside the volume it lies in, not on the host beneath it.
    assert!(writable_volume.join("inner").is_dir() && !nested.exists());
    assert_eq!(pod.try_wait(), None);
    pod.stop();
}

#[test]
fn images_exit_codes_users_and_stop_clean_up() {
    if !is_root() {
        return;
    }
    let logs = tempfile::tempdir().unwrap();
    let mut runner = runner(203);
    // A program (a script) under /tmp, which the pod's own /tmp would hide.
    let program = logs.path().join("bin/hello");
    fs::create_dir_all(program.parent().unwrap()).unwrap();
    fs::write(&program, "#!/bin/sh\necho hello from $0 \"$@\"\n").unwrap();
    fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    runner.images.insert("registry.local/test/hello".into(), Image::program(&program));

    let mut unknown = container("app", "true");
    unknown.image = Some("registry.local/nowhere/app:2".into());
    let error = start(&runner, &pod("unknown", vec![unknown]), &[], logs.path()).err().expect("an unknown image fails");
    assert_eq!(error.reason, "ErrImagePull");
    assert!(
        error.message.contains("image \"registry.local/nowhere/app\" not found in the test registry"),
        "{}",
        error.message
    );
    assert!(
        !command_output("ip", &["netns", "list"]).contains("mvpod-203-"),
        "nothing is set up for a pod that cannot pull"
    );

    // The first container's exit code, once every container has ended; the user is switched.
    // (Without a workingDir, a container starts in `/`.)
    let mut first =
        container("first", "[ \"$PWD\" = / ] || exit 9; exit $(( $(id -u) == 1234 && $(id -g) == 2345 ? 7 : 1 ))");
    first.security_context =
        Some(SecurityContext { run_as_user: Some(1234), run_as_group: Some(2345), ..SecurityContext::default() });
    let second = container("second", "sleep 0.3; exit 4");
    let mut exits = start(&runner, &pod("exits", vec![first, second]), &[], logs.path()).unwrap();
    let names = assert_network(&exits, true);
    thread::sleep(Duration::from_millis(100));
    assert_eq!(exits.try_wait(), None, "the second container still runs");
    assert_eq!(exits.wait_timeout(Duration::from_secs(10)), Some(7));
    drop(exits);
    assert_gone(&names);

    // A program under /tmp runs, with its arguments, as the image's entrypoint.
    let mut hello = container("hello", "");
    hello.image = Some("registry.local/test/hello@sha256:0123".into());
    hello.command = None;
    hello.args = Some(vec!["$(WHO)".into()]);
    hello.env = Some(vec![env("WHO", "world")]);
    let mut hello = start(&runner, &pod("hello", vec![hello]), &[], logs.path()).unwrap();
    assert_eq!(hello.wait_timeout(Duration::from_secs(10)), Some(0));
    let said = fs::read_to_string(logs.path().join("hello.log")).unwrap();
    assert_eq!(said, format!("hello from {} world\n", program.display()));
    drop(hello);

    // stop: SIGTERM to the container's processes, SIGKILL after the grace period.
    let mut sleeper =
        start(&runner, &pod("sleeper", vec![container("app", "sleep 30 & wait")]), &[], logs.path()).unwrap();
    let mut stubborn = start(
        &runner,
        &pod("stubborn", vec![container("app", "trap '' TERM; echo up; while :; do sleep 0.1; done")]),
        &[],
        logs.path(),
    )
    .unwrap();
    stubborn.set_grace(Duration::from_millis(300));
    wait_for_log(&logs.path().join("app.log"), "up");
    let names = (assert_network(&sleeper, true), assert_network(&stubborn, true));
    let started = Instant::now();
    sleeper.stop();
    stubborn.stop();
    assert!(started.elapsed() < Duration::from_secs(4), "stop took {:?}", started.elapsed());
    assert_eq!(sleeper.try_wait(), Some(143));
    assert_eq!(stubborn.try_wait(), Some(137));
    assert_gone(&names.0);
    assert_gone(&names.1);
}

#[test]
fn host_to_container_sees_kubelet_volumes_mounted_after_the_pod_started() {
    if !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let kubelet = KubeletRoot::new(&tmp.path().join("kubelet")).unwrap();
    let runner = runner(204);
    let marker = "uid-1/volumes/kubernetes.io~csi/pv-1/mount/marker";
    let watcher = |name: &str, propagation: Option<&str>| {
        let host_pods = tmp.path().join(name).join("host_pods");
        let mut agent = container(
            "agent",
            &format!(
                "echo started; for i in $(seq 30); do test -f {}/{marker} && exit 0; sleep 0.1; done; exit 1",
                host_pods.display()
            ),
        );
        let mut pods_mount = mount("pods", &host_pods);
        pods_mount.mount_propagation = propagation.map(str::to_owned);
        pods_mount.read_only = Some(true);
        agent.volume_mounts = Some(vec![pods_mount]);
        let logs = tmp.path().join(name);
        let pod = start(&runner, &pod(name, vec![agent]), &[("pods", &kubelet.pods())], &logs).unwrap();
        wait_for_log(&logs.join("agent.log"), "started");
        pod
    };
    let mut propagated = watcher("propagated", Some("HostToContainer"));
    let mut private = watcher("private", None);

    // The kubelet mounts a CSI and an in-tree volume after both agents started.
    let (pv1, pv2) = (tmp.path().join("pv1"), tmp.path().join("pv2"));
    fs::create_dir_all(&pv1).unwrap();
    fs::create_dir_all(&pv2).unwrap();
    fs::write(pv1.join("marker"), "pv1").unwrap();
    let mut pod_dir = kubelet.pod("uid-1").unwrap();
    let csi = pod_dir.mount_volume(&VolumePlugin::Csi, "pv-1", &pv1).unwrap();
    let in_tree = pod_dir.mount_volume(&VolumePlugin::InTree("local-volume".into()), "pv-2", &pv2).unwrap();
    assert_eq!(csi, kubelet.pods().join("uid-1/volumes/kubernetes.io~csi/pv-1/mount"));
    assert_eq!(in_tree, kubelet.pods().join("uid-1/volumes/kubernetes.io~local-volume/pv-2"));
    assert_eq!(fs::read_to_string(csi.join("marker")).unwrap(), "pv1");

    assert_eq!(propagated.wait_timeout(Duration::from_secs(10)), Some(0), "HostToContainer sees the new mount");
    assert_eq!(private.wait_timeout(Duration::from_secs(10)), Some(1), "without propagation the mount stays unseen");

    // Dropping the pod directory unmounts and removes what it made, never the volumes' files.
    drop(pod_dir);
    assert!(!kubelet.pods().join("uid-1").exists());
    // (Other tests' clusters mount pods' claims meanwhile: look at this kubelet root's only.)
    let pods = kubelet.pods().display().to_string();
    assert!(!fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&format!("{pods}/")));
    assert_eq!(fs::read_to_string(pv1.join("marker")).unwrap(), "pv1");
    let root = kubelet.root().display().to_string();
    drop(kubelet);
    assert!(!fs::read_to_string("/proc/self/mountinfo").unwrap().contains(&root));
}

#[test]
fn a_hook_runner_image_runs_ansible_playbook_from_a_volume() {
    if !is_root() {
        return;
    }
    let tools = Image::host_tools();
    if tools.resolve(&["ansible-playbook".to_owned()]).is_err() {
        eprintln!("skipped: ansible-playbook is not installed (scripts/test.sh installs ansible-core)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (playbook, out) = (tmp.path().join("playbook"), tmp.path().join("out"));
    fs::create_dir_all(&playbook).unwrap();
    fs::create_dir_all(&out).unwrap();
    fs::write(
        playbook.join("playbook.yml"),
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n    - copy:\n        \
         content: \"{{ lookup('env', 'MIGRATION_PLAN_NAME') }}\\n\"\n        dest: /tmp/out/plan\n",
    )
    .unwrap();
    let runner = PodRunner::new(205, BTreeMap::from([("quay.io/konveyor/hook-runner".to_owned(), tools)]));
    // As MTC runs a playbook hook: the ConfigMap at /tmp/playbook, a Job's container named after
    // the plan and phase.
    let mut hook = container("plan-prebackup", "");
    hook.image = Some("quay.io/konveyor/hook-runner:latest".into());
    hook.command = Some(vec!["ansible-playbook".into(), "/tmp/playbook/playbook.yml".into()]);
    hook.env = Some(vec![env("MIGRATION_PLAN_NAME", "plan-1")]);
    let mut playbook_mount = mount("playbook", Path::new("/tmp/playbook"));
    playbook_mount.read_only = Some(true);
    hook.volume_mounts = Some(vec![playbook_mount, mount("out", Path::new("/tmp/out"))]);
    let mut pod =
        start(&runner, &pod("hook", vec![hook]), &[("playbook", &playbook), ("out", &out)], tmp.path()).unwrap();
    let exit = pod.wait_timeout(Duration::from_secs(60));
    let log = fs::read_to_string(tmp.path().join("plan-prebackup.log")).unwrap_or_default();
    assert_eq!(exit, Some(0), "{log}");
    assert_eq!(fs::read_to_string(out.join("plan")).unwrap(), "plan-1\n", "{log}");
}

#[test]
fn the_real_agent_in_a_pod_receives_a_copy_on_its_pod_address() {
    if !is_root() {
        return;
    }
    // The workspace's binaries sit next to the test binary's `deps` directory.
    let bin_dir = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_path_buf();
    let (mover, agent) = (bin_dir.join("mover"), bin_dir.join("mover-agent"));
    if !mover.is_file() || !agent.is_file() {
        eprintln!("skipped: build the workspace first (no {} or {})", mover.display(), agent.display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (certs, data, source) = (tmp.path().join("certs"), tmp.path().join("data"), tmp.path().join("source"));
    let init = Command::new(&mover).args(["certs", "init"]).arg(&certs).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    fs::create_dir_all(&data).unwrap();
    fs::create_dir_all(source.join("sub")).unwrap();
    fs::write(source.join("a.txt"), "alpha").unwrap();
    crate::write_random(&source.join("sub/big.bin"), 3 << 20, 7).unwrap();

    let image = "registry.local/mover/mover-agent";
    let runner = PodRunner::new(206, BTreeMap::from([(image.to_owned(), Image::program(&agent))]));
    let mut serve = container("agent", "");
    serve.image = Some(format!("{image}:0.1.0"));
    serve.command = Some(
        [
            "mover-agent",
            "serve",
            "--listen",
            ":7443",
            "--certs",
            "/tmp/mover/certs",
            "--volume",
            "data=/tmp/mover/data",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let mut certs_mount = mount("certs", Path::new("/tmp/mover/certs"));
    certs_mount.read_only = Some(true);
    serve.volume_mounts = Some(vec![certs_mount, mount("data", Path::new("/tmp/mover/data"))]);
    let mut pod =
        start(&runner, &pod("transfer", vec![serve]), &[("certs", &certs), ("data", &data)], tmp.path()).unwrap();
    wait_for_log(&tmp.path().join("agent.log"), "serving");

    let copy = Command::new(&mover)
        .arg("copy")
        .arg(&source)
        .arg(format!("agent://{}:7443/data", pod.ip()))
        .arg("--certs")
        .arg(&certs)
        .output()
        .unwrap();
    let log = fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
    assert!(copy.status.success(), "{}\nagent:\n{log}", String::from_utf8_lossy(&copy.stderr));
    crate::assert_identical(&source, &data);
    pod.stop();
    assert_eq!(pod.try_wait(), Some(0), "the agent ends cleanly on SIGTERM:\n{log}");
}
