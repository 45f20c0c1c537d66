//! Pushes between agents over real loopback mutual TLS: into an in-process target serving a
//! local directory (`mover copy agent://HOST:PORT/VOL ./dir`), and a push whose target refuses,
//! whose kind reaches the coordinator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mover_engine::CopyOptions;
use mover_engine::agent::{Agent, VolumeGrant};
use mover_engine::certs::{self, Identity, MigrationCerts, Role};
use mover_engine::client::{self, CopyError, PullTarget};
use mover_engine::progress::NoProgress;
use mover_engine::wire::{RemoteErrorKind, Request, SyncOptions};

/// A source agent serving `volume` as `vol`, until the test ends.
async fn source_agent(generated: &MigrationCerts, volume: &Path) -> String {
    let grant = VolumeGrant { name: "vol".into(), path: volume.to_owned(), read_only: true, mount: false };
    let agent = Agent::new(Identity::from_generated(generated, Role::Agent).unwrap(), vec![grant]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { agent.serve(listener, std::future::pending()).await });
    addr
}

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::write(root.join("top"), b"top").unwrap();
    std::fs::write(root.join("dir/sub/deep"), vec![7u8; 300_000]).unwrap();
}

/// Pulls `vol` of the agent at `addr` into `target`, the in-process target presenting `agent`.
async fn pull(
    (coordinator, agent): (&Identity, Identity),
    addr: &str,
    target: &Path,
    options: CopyOptions,
) -> Result<mover_engine::progress::Summary, CopyError> {
    let target = PullTarget { dir: target.to_owned(), listen: "127.0.0.1:0".into(), advertise: None };
    client::pull_from_agent((coordinator, agent), (addr, "vol"), &target, None, options, Arc::new(NoProgress)).await
}

/// A source agent serving a small tree, a target directory, and the migration's certificates.
struct Pull {
    _dir: tempfile::TempDir,
    target: PathBuf,
    generated: MigrationCerts,
    addr: String,
    coordinator: Identity,
}

impl Pull {
    async fn new() -> Pull {
        let dir = tempfile::tempdir().unwrap();
        let (source, target) = (dir.path().join("source"), dir.path().join("target"));
        tree(&source);
        let generated = certs::generate().unwrap();
        let addr = source_agent(&generated, &source).await;
        let coordinator = Identity::from_generated(&generated, Role::Coordinator).unwrap();
        Pull { _dir: dir, target, generated, addr, coordinator }
    }
}

#[tokio::test]
async fn an_agent_volume_is_pulled_into_a_local_directory() {
    let Pull { _dir, target, generated, addr, coordinator } = Pull::new().await;
    // The in-process target presents the migration's agent certificate: the source agent
    // pushes only into agents of its own migration.
    let agent = Identity::from_generated(&generated, Role::Agent).unwrap();
    let options = CopyOptions { streams: 2, ..CopyOptions::default() };
    let summary = pull((&coordinator, agent), &addr, &target, options).await.unwrap();
    assert!(summary.is_success(), "{summary:?}");
    assert_eq!(summary.files_transferred, 2);
    assert_eq!(std::fs::read(target.join("top")).unwrap(), b"top");
    assert_eq!(std::fs::read(target.join("dir/sub/deep")).unwrap(), vec![7u8; 300_000]);

    // Run again: nothing to move.
    let agent = Identity::from_generated(&generated, Role::Agent).unwrap();
    let again = pull((&coordinator, agent), &addr, &target, CopyOptions::default()).await.unwrap();
    assert_eq!(again.files_transferred, 0, "{again:?}");
}

#[tokio::test]
async fn a_pull_whose_target_is_not_of_the_migration_is_refused() {
    let Pull { _dir, target, addr, coordinator, .. } = Pull::new().await;
    let stranger = Identity::from_generated(&certs::generate().unwrap(), Role::Agent).unwrap();
    let pulled = pull((&coordinator, stranger), &addr, &target, CopyOptions::default()).await;
    assert!(pulled.is_err(), "a target outside the migration took the copy");
    assert!(!target.join("top").exists());
}

/// A push whose target refuses (its volume is busy) reports the target's kind, and which
/// agent said so, to the coordinator: a typed error it can give a hint for, not a string.
#[tokio::test]
async fn a_push_refused_by_a_busy_target_keeps_the_kind() {
    let dir = tempfile::tempdir().unwrap();
    let (source, target) = (dir.path().join("source"), dir.path().join("target"));
    tree(&source);
    std::fs::create_dir(&target).unwrap();
    let generated = certs::generate().unwrap();
    let source_addr = source_agent(&generated, &source).await;
    let grant = VolumeGrant { name: "target".into(), path: target.clone(), read_only: false, mount: false };
    let target_agent = Agent::new(Identity::from_generated(&generated, Role::Agent).unwrap(), vec![grant]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { target_agent.serve(listener, std::future::pending()).await });
    let coordinator = Identity::from_generated(&generated, Role::Coordinator).unwrap();
    // Another copy is receiving into the target volume, and keeps talking (so it is not stale).
    let receive = Request::Receive { volume: "target".into(), options: SyncOptions::default(), lanes: vec![1; 32] };
    let (busy, _) = client::open(&coordinator, &target_addr, receive, None).await.unwrap();
    let keepalive = tokio::spawn(async move {
        let mut busy = busy;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if tokio::io::AsyncWriteExt::write_all(&mut busy, &[0, 0, 0, 0]).await.is_err() {
                return;
            }
        }
    });
    let pushed = client::push_between_agents(
        &coordinator,
        (&source_addr, "vol"),
        (&target_addr, &target_addr, "target"),
        None,
        CopyOptions::default(),
        Arc::new(NoProgress),
    )
    .await;
    keepalive.abort();
    match pushed {
        Err(error @ CopyError::Remote { .. }) => {
            let CopyError::Remote { agent, error: remote } = &error else { unreachable!() };
            assert_eq!(agent, &source_addr);
            assert_eq!(remote.kind, RemoteErrorKind::Busy, "{remote}");
            assert!(remote.message.contains(&format!("target agent `{target_addr}` refused the push")), "{remote}");
            assert!(error.is_retryable());
        }
        other => panic!("expected the source agent's typed error, got {other:?}"),
    }
}
