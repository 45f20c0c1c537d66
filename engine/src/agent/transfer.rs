//! The two transfers an agent runs: receiving a volume, and pushing one into another agent's
//! session (reporting progress, and then the summary or a typed error, to the coordinator).

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::info;

use super::observe::{Direction, Observed, SessionStats};
use super::sessions::Lanes;
use super::{State, Tls, claim};
use crate::progress::{Event, Reporter, Summary};
use crate::session::{SessionError, open_sending};
use crate::sync::{self, SyncError};
use crate::tunnel;
use crate::volume::VolumeRoot;
use crate::wire::{FrameWriter, Message, RemoteError, RemoteErrorKind, Request, SyncOptions};

pub(super) type SessionResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Receives into `volume` on `stream` (and its further lanes).
pub(super) async fn receive(
    (state, tls): (&Arc<State>, &Arc<Tls>),
    (stream, lanes): (tunnel::ServerStream, Option<Lanes>),
    (volume, root, claim): (&str, VolumeRoot, &claim::Claim),
    options: SyncOptions,
    peer: &str,
) -> SessionResult {
    let mut observed = Observed::start(state.observer.as_ref(), volume, Direction::Received);
    let mut stream = stream;
    let lanes = match lanes {
        Some(lanes) => match lanes.gather(&stream, options.streams as usize - 1).await {
            Ok(lanes) => lanes,
            Err(message) => {
                // The source hears why before the connection closes.
                let error = RemoteError::new(RemoteErrorKind::Other, message.clone());
                let _ = FrameWriter::new(&mut stream).send(&Message::Error(error)).await;
                return Err(message.into());
            }
        },
        None => Vec::new(),
    };
    let wire = &claim.heard;
    let stream = crate::tunnel::Counted::sharing(stream, wire);
    let lanes = lanes.into_iter().map(|lane| crate::tunnel::Counted::sharing(lane, wire)).collect();
    let reporter = Arc::new(crate::progress::LogProgress);
    let receiving = sync::receive_volume(stream, lanes, root, options, reporter, &claim.cancel);
    tokio::pin!(receiving);
    // The agent no longer serves this session's migration: cancelled, as a newer session would.
    let report = tokio::select! {
        report = &mut receiving => report,
        () = tls.ended.cancelled() => {
            claim.cancel.cancel();
            receiving.await
        }
    };
    observed.stats.bytes_on_wire = wire.read();
    let report = report?;
    observed.stats = SessionStats {
        bytes: report.bytes_written,
        bytes_on_wire: wire.read(),
        files: report.files_written,
        errors: 0,
    };
    info!(%peer, %volume, files = report.files_written, bytes = report.bytes_written, "received");
    Ok(())
}

/// Forwards progress events to the coordinator's connection; drops them when it lags.
struct Forward(mpsc::Sender<Message>);

impl Reporter for Forward {
    fn on_event(&self, event: &Event) {
        let message = Message::Progress(event.clone());
        // A change (a deletion above all) is a record the coordinator must get: it waits for
        // room. Changes come only from the sender's tree thread (a blocking thread, never a
        // task); counters may be dropped, the next one says the same.
        if matches!(event, Event::Change(_)) {
            let _ = self.0.blocking_send(message);
        } else {
            let _ = self.0.try_send(message);
        }
    }

    /// The coordinator may be showing a progress bar: give it totals early.
    fn wants_early_totals(&self) -> bool {
        true
    }
}

/// Why a push could not reach its target, as the coordinator hears it: the target's refusal
/// keeps its kind (a busy or read-only volume), prefixed with who refused.
fn setup_error(target: &str, error: &SessionError) -> RemoteError {
    let message = sync::full_message(error);
    match error {
        SessionError::Refused { error, .. } => {
            RemoteError::new(error.kind, format!("target agent `{target}` refused the push: {}", error.message))
        }
        SessionError::Handshake { .. } => RemoteError::new(RemoteErrorKind::Protocol, message),
        SessionError::Tunnel(_) => RemoteError::new(RemoteErrorKind::Other, message),
    }
}

/// Pushes `volume` into the session `token` names on the agent at `target`, reporting to the
/// coordinator on `stream`.
pub(super) async fn push(
    (state, tls): (&Arc<State>, &Arc<Tls>),
    stream: tunnel::ServerStream,
    ((volume, root), target): ((&str, VolumeRoot), &str),
    token: Vec<u8>,
    proxy: Option<tunnel::Proxy>,
    options: SyncOptions,
) -> SessionResult {
    let mut observed = Observed::start(state.observer.as_ref(), volume, Direction::Sent);
    let (events_tx, mut events_rx) = mpsc::channel::<Message>(1024);
    let migration_id = tls.migration_id.clone();
    let client = tls.client.clone();
    let target = target.to_owned();
    let started = Instant::now();
    // The push lives as long as the coordinator that asked for it: when its connection closes
    // (Ctrl-C, a killed CLI), the push is cancelled at once, so the target stops writing too.
    // Ended too when the agent no longer serves this migration.
    let cancel = tls.ended.child_token();
    let transfer = {
        let cancel = cancel.clone();
        async move {
            let dialler = (&client, migration_id.as_str());
            let join = Request::JoinSession { token, lanes: crate::session::lane_token(options.streams) };
            let setup = open_sending(dialler, &target, join, proxy.as_ref(), options.streams);
            let (tunnel, lanes) = tokio::select! {
                ready = setup => ready.map_err(|error| setup_error(&target, &error))?,
                () = cancel.cancelled() => return Err(SyncError::Cancelled.to_remote()),
            };
            let first = sync::First::Greeted(tunnel);
            sync::send_volume(first, lanes, root, options, Arc::new(Forward(events_tx)), &cancel).await.map_err(
                |error| match SessionError::of_greeting(&target, error) {
                    Ok(refused) => setup_error(&target, &refused),
                    Err(error) => error.to_remote(),
                },
            )
        }
    };
    let (mut from_coordinator, to_coordinator) = tokio::io::split(stream);
    let coordinator_gone = async move {
        // The coordinator sends nothing after its hello: any read that returns means it is gone.
        let mut byte = [0u8; 1];
        let _ = tokio::io::AsyncReadExt::read(&mut from_coordinator, &mut byte).await;
    };
    let mut writer = FrameWriter::new(to_coordinator);
    tokio::pin!(transfer, coordinator_gone);
    let mut listening = true;
    let outcome: Result<Summary, RemoteError> = loop {
        tokio::select! {
            outcome = &mut transfer => break outcome,
            // Drained to the end, also once the coordinator is gone: a change waits for room
            // (see `Forward`), and must not wait forever.
            Some(event) = events_rx.recv() => {
                if listening && writer.send(&event).await.is_err() {
                    listening = false;
                    cancel.cancel();
                }
            }
            () = &mut coordinator_gone, if listening => {
                listening = false;
                cancel.cancel();
            }
        }
    };
    if !listening {
        info!(%volume, "push cancelled: the coordinator went away");
        return Ok(());
    }
    while let Ok(event) = events_rx.try_recv() {
        writer.send(&event).await?;
    }
    let last = match outcome {
        Ok(mut summary) => {
            summary.elapsed_s = started.elapsed().as_secs_f64();
            // Counted before the coordinator hears the summary, so a scrape after it sees them.
            observed.stats = SessionStats {
                bytes: summary.bytes_transferred,
                bytes_on_wire: summary.bytes_on_wire,
                files: summary.files_transferred,
                errors: summary.errors.len() as u64,
            };
            drop(observed);
            Message::Summary(summary)
        }
        Err(error) => Message::Error(error),
    };
    writer.send(&last).await?;
    let _ = writer.shutdown().await;
    Ok(())
}

/// Refuses a push of `volume` into the session `token` names when that session is this
/// agent's own and its volume overlaps `volume`: a copy of a tree into itself reads what it
/// writes and deletes what it reads.
pub(super) async fn refuse_push_into_itself(state: &State, volume: &str, token: &[u8]) -> Result<(), RemoteError> {
    let Some(target) = state.sessions.volume(token) else { return Ok(()) };
    let ((source_root, _), (target_root, _)) =
        (state.volumes.resolve(volume).await?, state.volumes.resolve(&target).await?);
    let overlap = crate::volume::overlap(source_root.fd().as_fd(), target_root.fd().as_fd()).map_err(|error| {
        RemoteError::new(RemoteErrorKind::Io, format!("cannot compare volumes `{volume}` and `{target}`: {error}"))
    })?;
    match overlap {
        None => Ok(()),
        Some(_) => Err(RemoteError::new(
            RemoteErrorKind::Other,
            format!(
                "refusing to copy volume `{volume}` into volume `{target}` of the same agent: they are the same \
                 directory or one holds the other, so the copy would read what it writes and delete what it \
                 reads; copy into a volume that does not overlap the source"
            ),
        )),
    }
}
