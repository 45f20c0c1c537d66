//! Round trips on a copy's critical path, counted through a long link.
//!
//! A [`DelayRelay`] holds every byte `ONE_WAY` in each direction between `mover` and the target
//! agent. Bandwidth is loopback's, so what the relay adds to a copy of a small tree is the
//! round trips the copy waits for: (time through the relay - time direct) / round-trip time.
//! The delay is long (an 800 ms round trip) so that the noise of a shared machine stays
//! well under half a round trip. A change that adds a round trip fails here; one that removes
//! one lowers the numbers below (and docs/how-it-works.md's count).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, bin, certs, text};
use mover_testdata::delay::DelayRelay;

const ONE_WAY: Duration = Duration::from_millis(400);

/// Round trips of a first copy (empty target) and of a re-run with nothing changed, through
/// the CLI -> agent path with the default streams. Measured (6.0 and 6.0): TLS, hello and
/// welcome, the further lanes' TLS, their joining, the entries and their verdicts, the end of
/// the tree and the receiver's report. The relay accepts TCP at once, so TCP's own handshake is
/// not counted.
const INITIAL_BUDGET: u32 = 6;
const NO_CHANGE_BUDGET: u32 = 6;

fn timed_copy(source: &Path, target: &str, certs: &Path) -> Duration {
    let start = Instant::now();
    let output = Command::new(bin("mover"))
        .args(["copy", source.to_str().unwrap(), target, "--certs", certs.to_str().unwrap(), "--output", "json"])
        .env_remove("MOVER_OUTPUT")
        .output()
        .expect("run mover");
    let elapsed = start.elapsed();
    assert!(output.status.success(), "{}", text(&output));
    elapsed
}

fn round_trips(relayed: Duration, direct: Duration) -> f64 {
    relayed.saturating_sub(direct).as_secs_f64() / (2.0 * ONE_WAY.as_secs_f64())
}

/// The median of three (relayed - direct) differences, in round trips.
fn median_round_trips(mut pairs: Vec<(Duration, Duration)>) -> (f64, Duration, Duration) {
    pairs.sort_by_key(|(direct, relayed)| relayed.saturating_sub(*direct));
    let (direct, relayed) = pairs[pairs.len() / 2];
    (round_trips(relayed, direct), direct, relayed)
}

#[test]
fn a_copy_to_an_agent_waits_for_no_more_round_trips_than_counted() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(&dir.path().join("certs"));
    let source = dir.path().join("src");
    std::fs::create_dir(&source).unwrap();
    mover_testdata::generate(&source, &mover_testdata::TreeSpec::with_entries(60)).unwrap();
    // Three fresh targets each way, for three first copies.
    let names: Vec<String> = (0..3).flat_map(|i| [format!("direct{i}"), format!("relayed{i}")]).collect();
    let volumes: Vec<String> = names
        .iter()
        .map(|name| {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            format!("{name}={}", dir.path().join(name).display())
        })
        .collect();
    let agent = Agent::start(&certs, &volumes, dir.path());
    let relay = DelayRelay::start(&agent.addr, ONE_WAY).unwrap();
    let direct = |i: usize| format!("agent://{}/direct{i}", agent.addr);
    let relayed = |i: usize| format!("agent://{}/relayed{i}", relay.addr);

    // Direct and relayed take turns, so that the machine's load hits both alike.
    let first =
        (0..3).map(|i| (timed_copy(&source, &direct(i), &certs), timed_copy(&source, &relayed(i), &certs))).collect();
    let (initial, ..) = median_round_trips(first);
    let again =
        (0..3).map(|_| (timed_copy(&source, &direct(0), &certs), timed_copy(&source, &relayed(0), &certs))).collect();
    let (no_change, direct_time, relayed_time) = median_round_trips(again);
    eprintln!(
        "round trips through a {} ms round trip: initial copy {initial:.2}, no change {no_change:.2} \
         (no change: direct {direct_time:?}, relayed {relayed_time:?})",
        2 * ONE_WAY.as_millis()
    );
    mover_testdata::assert_identical(&source, &dir.path().join("relayed0"));
    assert!(
        initial < f64::from(INITIAL_BUDGET) + 0.5,
        "a first copy now waits for {initial:.1} round trips (budget {INITIAL_BUDGET}): which exchange was added?"
    );
    assert!(
        no_change < f64::from(NO_CHANGE_BUDGET) + 0.5,
        "a no-change copy now waits for {no_change:.1} round trips (budget {NO_CHANGE_BUDGET}): which exchange was added?"
    );
    assert!(relay.connections() >= 6, "the relayed copies did not go through the relay");
}
