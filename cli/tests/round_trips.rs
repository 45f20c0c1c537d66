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
/// the CLI -> agent path with one stream. Measured at this commit (5.2 and 6.2); the relay
/// accepts TCP at once, so TCP's own handshake is not counted.
const INITIAL_BUDGET: u32 = 5;
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

#[test]
fn a_copy_to_an_agent_waits_for_no_more_round_trips_than_counted() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(&dir.path().join("certs"));
    let source = dir.path().join("src");
    std::fs::create_dir(&source).unwrap();
    mover_testdata::generate(&source, &mover_testdata::TreeSpec::with_entries(60)).unwrap();
    for target in ["direct", "relayed"] {
        std::fs::create_dir(dir.path().join(target)).unwrap();
    }
    let agent = Agent::start(
        &certs,
        &[
            format!("direct={}", dir.path().join("direct").display()),
            format!("relayed={}", dir.path().join("relayed").display()),
        ],
        dir.path(),
    );
    let relay = DelayRelay::start(&agent.addr, ONE_WAY).unwrap();
    let direct = format!("agent://{}/direct", agent.addr);
    let relayed = format!("agent://{}/relayed", relay.addr);

    let initial = round_trips(timed_copy(&source, &relayed, &certs), timed_copy(&source, &direct, &certs));
    // The no-change runs, each the median of three, direct and relayed taking turns.
    let mut pairs: Vec<(Duration, Duration)> =
        (0..3).map(|_| (timed_copy(&source, &direct, &certs), timed_copy(&source, &relayed, &certs))).collect();
    pairs.sort_by_key(|(direct, relayed)| relayed.saturating_sub(*direct));
    let (direct_time, relayed_time) = pairs[1];
    let no_change = round_trips(relayed_time, direct_time);
    eprintln!(
        "round trips through a {} ms round trip: initial copy {initial:.2}, no change {no_change:.2} \
         (no change: direct {direct_time:?}, relayed {relayed_time:?})",
        2 * ONE_WAY.as_millis()
    );
    mover_testdata::assert_identical(&source, &dir.path().join("relayed"));
    assert!(
        initial < f64::from(INITIAL_BUDGET) + 0.5,
        "a first copy now waits for {initial:.1} round trips (budget {INITIAL_BUDGET}): which exchange was added?"
    );
    assert!(
        no_change < f64::from(NO_CHANGE_BUDGET) + 0.5,
        "a no-change copy now waits for {no_change:.1} round trips (budget {NO_CHANGE_BUDGET}): which exchange was added?"
    );
    assert!(relay.connections() >= 4, "the relayed copies did not go through the relay");
}
