//! Grants given and withdrawn while the agent serves, over real loopback mutual TLS.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::certs::{self, MigrationCerts};
use crate::client::{self, CopyError};
use crate::progress::NoProgress;

struct Served {
    agent: Agent,
    addr: String,
    coordinator: Identity,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

fn grant(name: &str, path: &Path) -> VolumeGrant {
    VolumeGrant { name: name.into(), path: path.to_owned(), read_only: false, mount: false }
}

async fn serve(generated: &MigrationCerts, grants: Vec<VolumeGrant>) -> Served {
    let agent = Agent::new(Identity::from_generated(generated, Role::Agent).unwrap(), grants).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = agent.clone();
    let server = tokio::spawn(async move {
        serving
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await;
    });
    let coordinator = Identity::from_generated(generated, Role::Coordinator).unwrap();
    Served { agent, addr, coordinator, stop, server }
}

impl Served {
    async fn volumes(&self) -> Vec<String> {
        client::ping(&self.coordinator, &self.addr).await.unwrap()
    }

    async fn copy_into(&self, source: &Path, volume: &str) -> Result<crate::progress::Summary, CopyError> {
        let reporter = Arc::new(NoProgress);
        client::copy_to_agent(
            &self.coordinator,
            source,
            (&self.addr, volume),
            None,
            crate::CopyOptions::default(),
            reporter,
        )
        .await
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

#[tokio::test]
async fn a_volume_granted_while_serving_takes_copies() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, source) = (dir.path().join("first"), dir.path().join("second"), dir.path().join("source"));
    for made in [&first, &second, &source] {
        std::fs::create_dir(made).unwrap();
    }
    std::fs::write(source.join("file"), b"content").unwrap();
    let served = serve(&certs::generate().unwrap(), vec![grant("first", &first)]).await;
    assert_eq!(served.volumes().await, ["first"]);

    served.agent.grant(grant("second", &second)).unwrap();
    assert_eq!(served.volumes().await, ["first", "second"]);
    served.copy_into(&source, "second").await.unwrap();
    assert_eq!(std::fs::read(second.join("file")).unwrap(), b"content");
    served.stop().await;
}

#[tokio::test]
async fn an_idle_volume_is_revoked_and_then_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let (volume, source) = (dir.path().join("volume"), dir.path().join("source"));
    std::fs::create_dir(&volume).unwrap();
    std::fs::create_dir(&source).unwrap();
    let served = serve(&certs::generate().unwrap(), vec![grant("vol", &volume)]).await;

    served.agent.revoke("vol").unwrap();
    assert!(served.volumes().await.is_empty());
    match served.copy_into(&source, "vol").await {
        Err(CopyError::Session(crate::client::SessionError::Refused { error, .. })) => {
            assert_eq!(error.kind, RemoteErrorKind::UnknownVolume, "{error}");
        }
        other => panic!("expected an unknown volume, got {other:?}"),
    }
    let again = served.agent.revoke("vol").unwrap_err();
    assert_eq!(again.to_string(), "no volume `vol` is granted to this agent");
    // Granted again, it serves again.
    served.agent.grant(grant("vol", &volume)).unwrap();
    served.copy_into(&source, "vol").await.unwrap();
    served.stop().await;
}

#[tokio::test]
async fn a_volume_in_use_is_not_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let served = serve(&certs::generate().unwrap(), vec![grant("vol", &volume)]).await;
    // A receive is running (welcomed, waiting for entries).
    let receive = Request::Receive { volume: "vol".into(), options: SyncOptions::default(), lanes: vec![1; 32] };
    let (session, _) = client::open(&served.coordinator, &served.addr, receive, None).await.unwrap();

    let error = served.agent.revoke("vol").unwrap_err();
    assert!(matches!(error, AgentError::InUse { ref name, sessions: 1 } if name == "vol"), "{error:?}");
    assert_eq!(error.to_string(), "volume `vol` is in use by 1 session(s): revoke it once they have ended");

    // Once the session has ended, the revoke goes through.
    drop(session);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Err(AgentError::InUse { .. }) = served.agent.revoke("vol") {
        assert!(std::time::Instant::now() < deadline, "the session never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(served.volumes().await.is_empty());
    served.stop().await;
}

#[tokio::test]
async fn a_grant_that_overlaps_or_repeats_a_name_is_refused_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir_all(volume.join("inner")).unwrap();
    let served = serve(&certs::generate().unwrap(), vec![grant("vol", &volume)]).await;

    let inside = served.agent.grant(grant("inner", &volume.join("inner"))).unwrap_err();
    assert!(matches!(inside, AgentError::Overlap(VolumeError::Overlap { .. })), "{inside:?}");
    let above = served.agent.grant(grant("above", dir.path())).unwrap_err();
    assert!(matches!(above, AgentError::Overlap(VolumeError::Overlap { .. })), "{above:?}");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let twice = served.agent.grant(grant("vol", &elsewhere)).unwrap_err();
    assert!(matches!(twice, AgentError::Duplicate(ref name) if name == "vol"), "{twice:?}");
    let missing = served.agent.grant(grant("missing", &dir.path().join("missing"))).unwrap_err();
    assert!(matches!(missing, AgentError::Volume { ref name, .. } if name == "missing"), "{missing:?}");
    // None of them was granted.
    assert_eq!(served.volumes().await, ["vol"]);
    served.stop().await;
}

#[tokio::test]
async fn another_migrations_identity_drops_the_old_ones_tokens_and_refuses_its_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let (first, second) = (certs::generate().unwrap(), certs::generate().unwrap());
    let served = serve(&first, vec![grant("vol", &volume)]).await;
    let open = Request::OpenSession { volume: "vol".into(), options: SyncOptions::default() };
    let (_, welcome) = client::open(&served.coordinator, &served.addr, open.clone(), None).await.unwrap();

    // A renewed certificate of the same migration keeps its opened sessions.
    let change = served.agent.set_identity(Some(Identity::from_generated(&first, Role::Agent).unwrap())).unwrap();
    assert_eq!(change.before, change.after);
    let (_, kept) = client::open(&served.coordinator, &served.addr, open, None).await.unwrap();

    let change = served.agent.set_identity(Some(Identity::from_generated(&second, Role::Agent).unwrap())).unwrap();
    assert_ne!(change.before, change.after);
    // The old coordinator no longer gets through the handshake.
    let old = client::ping(&served.coordinator, &served.addr).await;
    assert!(matches!(old, Err(CopyError::Session(client::SessionError::Tunnel(_)))), "{old:?}");
    // The new migration's agent cannot join what the old one opened.
    let new_agent = Identity::from_generated(&second, Role::Agent).unwrap();
    for token in [welcome.token, kept.token] {
        let join = Request::JoinSession { token, lanes: vec![1; 32] };
        match client::open(&new_agent, &served.addr, join, None).await {
            Err(CopyError::Session(client::SessionError::Refused { error, .. })) => {
                assert_eq!(error.kind, RemoteErrorKind::BadToken, "{error}");
            }
            other => panic!("expected an unknown token, got {other:?}"),
        }
    }
    let new_coordinator = Identity::from_generated(&second, Role::Coordinator).unwrap();
    assert_eq!(client::ping(&new_coordinator, &served.addr).await.unwrap(), ["vol"]);

    // Without an identity, everyone is refused.
    let change = served.agent.set_identity(None).unwrap();
    assert_eq!(change.after, None);
    assert!(client::ping(&new_coordinator, &served.addr).await.is_err());
    served.stop().await;
}
