//! Where the migration's certificate files live and how they are written (issue 19 item 8,
//! issue 20 defects 10 and 11): `certs init` makes its directory 0700 whatever the umask and says
//! which files go to the nodes; `--agent-dir` writes the node set alone; loading an identity
//! refuses files or directories others may write; `certs fetch -o` never writes through a
//! symlink.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use common::{Agent, bin, certs, mover, text};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs an agent that should refuse to start; one that serves instead is killed after 20 s.
fn refused_agent(certs: &Path, volume: &Path) -> std::process::Output {
    let mut child = Command::new(bin("mover-agent"))
        .args(["serve", "--listen", "127.0.0.1:0", "--certs", certs.to_str().unwrap(), "--volume"])
        .arg(format!("data={}", volume.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// `mover ARGS` under `umask 000`, as a careless service account would run it.
fn mover_umask_000(args: &[&str]) -> std::process::Output {
    Command::new("sh").arg("-c").arg("umask 000; exec \"$0\" \"$@\"").arg(bin("mover")).args(args).output().unwrap()
}

/// Issue 20 defect 11: under umask 000 the directory was 0777, so anyone could swap `ca.crt`.
#[test]
fn init_makes_its_directory_0700_under_umask_000() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let nodes = tmp.path().join("nodes");
    let output = mover_umask_000(&["certs", "init", dir.to_str().unwrap(), "--agent-dir", nodes.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    for dir in [&dir, &nodes] {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let expected = if path.extension().unwrap() == "key" { 0o600 } else { 0o644 };
            assert_eq!(mode(&path), expected, "{}", path.display());
        }
    }
}

/// Issue 20 defect 11: a directory or key that others may write was loaded without a word.
#[test]
fn an_identity_others_may_write_is_refused_naming_the_path_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = certs(&tmp.path().join("certs"));
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let copy = || mover(&["copy", src.to_str().unwrap(), "agent://127.0.0.1:1/data", "--certs", dir.to_str().unwrap()]);
    for (path, loose) in [(dir.clone(), 0o777), (dir.join("coordinator.key"), 0o666), (dir.join("ca.crt"), 0o664)] {
        let tight = mode(&path);
        chmod(&path, loose);
        let output = copy();
        chmod(&path, tight);
        assert_eq!(output.status.code(), Some(1), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(&format!("`{}` can be written by users other than its owner", path.display()))
                && stderr.contains(&format!("chmod go-w {}", path.display())),
            "{}",
            text(&output)
        );
    }
    for (path, loose) in [(dir.clone(), 0o770), (dir.join("agent.key"), 0o622)] {
        let tight = mode(&path);
        chmod(&path, loose);
        let output = refused_agent(&dir, &src);
        chmod(&path, tight);
        assert_eq!(output.status.code(), Some(64), "{}", text(&output));
        assert!(String::from_utf8_lossy(&output.stderr).contains("chmod go-w"), "{}", text(&output));
    }
}

/// A Kubernetes Secret volume: a sticky world-writable tmpfs root holding root's symlinks into a
/// 0755 directory. Others cannot replace entries there, so an agent must start from it.
#[test]
fn a_secret_volume_layout_with_a_sticky_directory_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let generated = certs(&tmp.path().join("generated"));
    let mount = tmp.path().join("secret");
    let data = mount.join("..2026_12_05_10_00_00.000000001");
    fs::create_dir_all(&data).unwrap();
    chmod(&data, 0o755);
    for name in ["ca.crt", "agent.crt", "agent.key"] {
        fs::copy(generated.join(name), data.join(name)).unwrap();
        chmod(&data.join(name), 0o644);
    }
    symlink(data.file_name().unwrap(), mount.join("..data")).unwrap();
    for name in ["ca.crt", "agent.crt", "agent.key"] {
        symlink(Path::new("..data").join(name), mount.join(name)).unwrap();
    }
    chmod(&mount, 0o1777);
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    let agent = Agent::start(&mount, &[format!("data={}", volume.display())], tmp.path());
    // The same layout without the sticky bit lets anyone rename another `ca.crt` in.
    chmod(&mount, 0o777);
    let output = refused_agent(&mount, &volume);
    assert_eq!(output.status.code(), Some(64), "{}", text(&output));
    assert_eq!(agent.terminate().code(), Some(0));
}

/// Issue 19 item 8 (ux-trial #14): `certs init` printed six `wrote` lines and nothing about
/// which files belong on the nodes.
#[test]
fn init_says_which_files_go_to_the_nodes_and_writes_them_alone_with_agent_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let nodes = tmp.path().join("nodes");
    let output = mover(&["certs", "init", dir.to_str().unwrap(), "--agent-dir", nodes.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("for each node that runs an agent") && stdout.contains("ca.crt, agent.crt, agent.key"),
        "{stdout}"
    );
    assert!(stdout.contains("keep on the coordinator only: ca.key, coordinator.crt, coordinator.key"), "{stdout}");
    let mut node_files: Vec<_> = fs::read_dir(&nodes).unwrap().map(|e| e.unwrap().file_name()).collect();
    node_files.sort();
    assert_eq!(node_files, ["agent.crt", "agent.key", "ca.crt"]);
    assert_eq!(fs::read(nodes.join("ca.crt")).unwrap(), fs::read(dir.join("ca.crt")).unwrap());

    // The node set is enough for an agent, and the coordinator's set reaches it.
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("file"), b"x").unwrap();
    let agent = Agent::start(&nodes, &[format!("data={}", volume.display())], tmp.path());
    let output = mover(&["copy", src.to_str().unwrap(), &agent.url("data"), "--certs", dir.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(fs::read(volume.join("file")).unwrap(), b"x");

    let without_force = mover(&["certs", "init", dir.to_str().unwrap()]);
    assert_eq!(without_force.status.code(), Some(1), "{}", text(&without_force));
    assert!(String::from_utf8_lossy(&without_force.stderr).contains("pass `--force`"), "{}", text(&without_force));
}

/// Issue 20 defect 10: `certs fetch -o FILE` wrote through a dangling symlink at FILE.
#[test]
fn fetch_never_writes_through_a_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = certs(&tmp.path().join("certs"));
    let volume = tmp.path().join("volume");
    fs::create_dir(&volume).unwrap();
    // Any TLS endpoint will do: an agent presents its certificate.
    let agent = Agent::start(&dir, &[format!("data={}", volume.display())], tmp.path());
    let fetch = |out: &Path, force: bool| {
        let mut args = vec!["certs", "fetch", agent.addr.as_str(), "-o", out.to_str().unwrap()];
        if force {
            args.push("--force");
        }
        mover(&args)
    };

    let victim = tmp.path().join("victim");
    let out = tmp.path().join("bundle.pem");
    symlink(&victim, &out).unwrap();
    let output = fetch(&out, false);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("already exists"), "{}", text(&output));
    assert!(!victim.exists(), "the bundle was written through the dangling symlink");
    assert!(fs::symlink_metadata(&out).unwrap().file_type().is_symlink());

    // With --force the symlink itself is replaced; what it pointed at stays untouched.
    fs::write(&victim, b"someone else's file").unwrap();
    let output = fetch(&out, true);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(fs::symlink_metadata(&out).unwrap().file_type().is_file());
    assert!(fs::read_to_string(&out).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(fs::read(&victim).unwrap(), b"someone else's file");
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|name| name.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(agent);
}
