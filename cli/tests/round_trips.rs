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
/// the CLI -> agent path with the default streams. Measured (3.0 and 2.0; 4 and 3 before the
/// hello travelled with the first entries, 6 and 6 before the further lanes joined beside the
/// first and the tree ended before its verdicts): TLS (all the streams' handshakes at once),
/// then the hello followed by the entries without waiting for the welcome, answered by the
/// welcome and the verdicts (the further lanes say their hello with the client's lane token
/// at the same moment; the end of the tree follows the entries, so with nothing to send the
/// receiver's report comes with the verdicts), and, when files are requested, their content
/// and the receiver's report. The relay accepts TCP at once, so TCP's own handshake is not
/// counted.
const INITIAL_BUDGET: u32 = 3;
const NO_CHANGE_BUDGET: u32 = 2;

/// Round trips of `mover copy agent://A/v agent://B/v` when the relay stands between the
/// coordinator and B, which is also the way A pushes into B (the coordinator reaches A
/// directly). Measured (5.0 and 4.0): the coordinator opening the session on B (TLS, then its
/// hello and welcome), then what a copy to an agent waits for, between A and B.
const PUSH_INITIAL_BUDGET: u32 = 5;
const PUSH_NO_CHANGE_BUDGET: u32 = 4;

fn timed_copy(source: &str, target: &str, certs: &Path) -> Duration {
    let start = Instant::now();
    let output = Command::new(bin("mover"))
        .args(["copy", source, target, "--certs", certs.to_str().unwrap(), "--output", "json"])
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

/// A source tree, and a target agent with three fresh volumes `direct{i}` and `relayed{i}`
/// each, for three first copies each way; the relay stands in front of the agent.
struct Setup {
    dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    source: std::path::PathBuf,
    agent: Agent,
    relay: DelayRelay,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(&dir.path().join("certs"));
    let source = dir.path().join("src");
    std::fs::create_dir(&source).unwrap();
    mover_testdata::generate(&source, &mover_testdata::TreeSpec::with_entries(60)).unwrap();
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
    Setup { dir, certs, source, agent, relay }
}

/// Round trips of three first copies from `source` and of three re-runs with nothing changed
/// (medians), printed under `what` and checked against the budgets.
fn measure(setup: &Setup, source: &str, what: &str, (initial_budget, no_change_budget): (u32, u32)) {
    let direct = |i: usize| format!("agent://{}/direct{i}", setup.agent.addr);
    let relayed = |i: usize| format!("agent://{}/relayed{i}", setup.relay.addr);
    let certs = &setup.certs;
    // Direct and relayed take turns, so that the machine's load hits both alike.
    let first =
        (0..3).map(|i| (timed_copy(source, &direct(i), certs), timed_copy(source, &relayed(i), certs))).collect();
    let (initial, ..) = median_round_trips(first);
    let again =
        (0..3).map(|_| (timed_copy(source, &direct(0), certs), timed_copy(source, &relayed(0), certs))).collect();
    let (no_change, direct_time, relayed_time) = median_round_trips(again);
    eprintln!(
        "{what}: round trips through a {} ms round trip: initial copy {initial:.2}, no change {no_change:.2} \
         (no change: direct {direct_time:?}, relayed {relayed_time:?})",
        2 * ONE_WAY.as_millis()
    );
    mover_testdata::assert_identical(&setup.source, &setup.dir.path().join("relayed0"));
    assert!(
        initial < f64::from(initial_budget) + 0.5,
        "{what}: a first copy now waits for {initial:.1} round trips (budget {initial_budget}): which exchange was added?"
    );
    assert!(
        no_change < f64::from(no_change_budget) + 0.5,
        "{what}: a no-change copy now waits for {no_change:.1} round trips (budget {no_change_budget}): which \
         exchange was added?"
    );
    assert!(setup.relay.connections() >= 6, "the relayed copies did not go through the relay");
}

#[test]
fn a_copy_to_an_agent_waits_for_no_more_round_trips_than_counted() {
    let setup = setup();
    let source = setup.source.to_str().unwrap().to_owned();
    measure(&setup, &source, "CLI -> agent", (INITIAL_BUDGET, NO_CHANGE_BUDGET));
}

#[test]
fn a_push_between_agents_waits_for_no_more_round_trips_than_counted() {
    let setup = setup();
    let source_agent = Agent::start(&setup.certs, &[format!("src={}", setup.source.display())], setup.dir.path());
    let source = format!("agent://{}/src", source_agent.addr);
    measure(&setup, &source, "agent -> agent", (PUSH_INITIAL_BUDGET, PUSH_NO_CHANGE_BUDGET));
}
