//! `mover-agent serve --metrics-listen`: `/healthz` answers, `/metrics` parses as Prometheus
//! text (checked with the Prometheus Python client's `OpenMetrics` parser, which is strict), and
//! its counters match what a real plan run moved, on both the source and the target agent.

mod common;

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Agent, certs, mover_on_plan, text, write_plan};

/// `GET path` over plain HTTP/1.1: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head: {response}"));
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

const PARSER: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value, "type": family.type})
print(json.dumps(samples))
"#;

/// Samples by `name{volume,direction}`, parsed by the Prometheus client library.
fn parse(exposition: &str) -> HashMap<String, (f64, String)> {
    let child = Command::new("python3")
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.as_ref().unwrap().write_all(exposition.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "the Prometheus Python client is missing: `pip install prometheus-client` (scripts/test.sh installs it)"
    );
    assert!(output.status.success(), "not valid OpenMetrics text: {stderr}\n{exposition}");
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    samples
        .into_iter()
        .map(|s| {
            let key = format!(
                "{}{{{},{}}}",
                s["name"].as_str().unwrap(),
                s["labels"]["volume"].as_str().unwrap_or(""),
                s["labels"]["direction"].as_str().unwrap_or("")
            );
            (key, (s["value"].as_f64().unwrap(), s["type"].as_str().unwrap().to_owned()))
        })
        .collect()
}

/// Scrapes until `ready` holds (a target counts its session just after the sender hears it end).
fn scrape_until(addr: &str, ready: impl Fn(&HashMap<String, (f64, String)>) -> bool) -> HashMap<String, (f64, String)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        let samples = parse(&body);
        if ready(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "metrics never got there:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn value(samples: &HashMap<String, (f64, String)>, key: &str) -> u64 {
    samples.get(key).unwrap_or_else(|| panic!("no sample `{key}` in {samples:#?}")).0 as u64
}

#[test]
fn metrics_parse_as_prometheus_text_and_count_what_moved() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certs(&tmp.path().join("certs"));
    let source = tmp.path().join("src");
    fs::create_dir(&source).unwrap();
    for i in 0..4 {
        mover_testdata::write_random(&source.join(format!("f{i}")), 700_000 + i * 1000, i).unwrap();
    }
    fs::write(source.join("text"), "compressible ".repeat(100_000)).unwrap();
    let target = tmp.path().join("dst");
    fs::create_dir(&target).unwrap();
    let metrics = ["--metrics-listen", "127.0.0.1:0"];
    let source_agent = Agent::start_with(&certs, &[format!("data={}:ro", source.display())], tmp.path(), &metrics);
    let target_agent = Agent::start_with(&certs, &[format!("data={}", target.display())], tmp.path(), &metrics);
    let (source_metrics, target_metrics) =
        (source_agent.metrics.clone().unwrap(), target_agent.metrics.clone().unwrap());

    assert_eq!(get(&source_metrics, "/healthz"), ("HTTP/1.1 200 OK".to_owned(), "ok\n".to_owned()));
    assert_eq!(get(&source_metrics, "/nothing").0, "HTTP/1.1 404 Not Found");
    // Before any session: valid, and no volume series yet.
    assert!(parse(&get(&target_metrics, "/metrics").1).is_empty());

    let plan = write_plan(
        tmp.path(),
        &format!(
            "name: metrics\ncerts: ./certs\nvolumes:\n  - name: data\n    source: {}\n    target: {}\n    options: {{compress: 3}}\n",
            source_agent.url("data"),
            target_agent.url("data")
        ),
    );
    let report = tmp.path().join("report.json");
    let output = mover_on_plan(&["plan", "run"], &plan, &["--report", report.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report: serde_json::Value = serde_json::from_str(&fs::read_to_string(&report).unwrap()).unwrap();
    let volume = &report["volumes"][0];
    let (bytes, wire, files) = (
        volume["bytes_transferred"].as_u64().unwrap(),
        volume["bytes_on_wire"].as_u64().unwrap(),
        volume["files_transferred"].as_u64().unwrap(),
    );
    assert!(bytes > 4 * 700_000 && wire > 0 && wire < bytes, "{volume:#}");

    let sent = scrape_until(&source_metrics, |s| s.contains_key("mover_sessions_total{data,sent}"));
    assert_eq!(value(&sent, "mover_transferred_bytes_total{data,sent}"), bytes);
    assert_eq!(value(&sent, "mover_wire_bytes_total{data,sent}"), wire);
    assert_eq!(value(&sent, "mover_transferred_files_total{data,sent}"), files);
    assert_eq!(value(&sent, "mover_errors_total{data,sent}"), 0);
    assert_eq!(value(&sent, "mover_active_sessions{data,sent}"), 0);
    assert_eq!(sent["mover_transferred_bytes_total{data,sent}"].1, "counter");
    assert_eq!(sent["mover_active_sessions{data,sent}"].1, "gauge");

    let received = scrape_until(&target_metrics, |s| s.contains_key("mover_sessions_total{data,received}"));
    assert_eq!(value(&received, "mover_transferred_bytes_total{data,received}"), bytes);
    assert_eq!(value(&received, "mover_transferred_files_total{data,received}"), files);
    let received_wire = value(&received, "mover_wire_bytes_total{data,received}");
    // The target reads every frame the source wrote, plus nothing else but the end of session.
    assert!(received_wire >= wire && received_wire < wire + 4096, "received {received_wire}, sent {wire}");

    // A second, no-op run adds a session and no bytes.
    let output = mover_on_plan(&["plan", "run"], &plan, &[], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let sent = scrape_until(&source_metrics, |s| value(s, "mover_sessions_total{data,sent}") == 2);
    assert_eq!(value(&sent, "mover_transferred_bytes_total{data,sent}"), bytes);
}
