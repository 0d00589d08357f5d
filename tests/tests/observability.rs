//! The collector-side files in deploy/: the Prometheus configuration passes promtool, and every
//! query of the Grafana dashboard is valid PromQL that returns data from a real agent scraped by
//! a real Prometheus.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{path::Path, process::Command, time::Duration};

use integration_tests::{
    Agent, Scratch, Workload,
    export::{Prometheus, free_port, http_get, wait_until, write_config},
    privileged,
};
use serde_json::Value;

fn deploy(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

#[test]
fn prometheus_config_passes_promtool() {
    let out = Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.yml"))
        .output()
        .expect("promtool (apt-get install prometheus; deploy/ci/install-packages.sh does)");
    assert!(
        out.status.success(),
        "promtool rejects deploy/prometheus/prometheus.yml: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(deploy("grafana/crmprof-dashboard.json"))
        .expect("reading the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// (panel title, expression) for every query of the dashboard.
fn queries(d: &Value) -> Vec<(String, String)> {
    d["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or_default().to_owned();
            p["targets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_owned())))
        })
        .collect()
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    let panels = d["panels"].as_array().expect("panels");
    let mut ids: Vec<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        assert!(
            p["gridPos"]["w"].as_u64().is_some_and(|w| w <= 24),
            "{}",
            p["title"]
        );
        assert!(
            !p["targets"].as_array().is_none_or(Vec::is_empty),
            "{}",
            p["title"]
        );
    }
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance", "service"]);
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_agent() {
    if !privileged("every_dashboard_query_returns_data_from_a_real_agent")
        || !Prometheus::available("every_dashboard_query_returns_data_from_a_real_agent")
    {
        return;
    }
    let scratch = Scratch::in_dir("/var/tmp", "dashboard");
    let metrics_port = free_port();
    let config = write_config(
        &scratch,
        &format!("[export.prometheus]\nlisten = \"127.0.0.1:{metrics_port}\"\n"),
    );
    let data = scratch.0.join("data");
    let prometheus = Prometheus::start(&scratch.0.join("prometheus"), Some(metrics_port));
    let agent = Agent::start(&[
        "run",
        "--quiet",
        "--interval",
        "1s",
        "--config",
        config.to_str().expect("UTF-8"),
        "--data-dir",
        data.to_str().expect("UTF-8"),
    ]);
    // Something for every panel: a client waiting on a slow server, direct I/O, failing calls.
    let mut server = Workload::start(
        &scratch,
        "dash-server",
        false,
        &["slow-server", "127.0.0.1:0", "20", "150"],
    );
    let port = server.read_line();
    let mut client = Workload::start(
        &scratch,
        "dash-client",
        false,
        &["slow-client", &format!("127.0.0.1:{port}"), "150"],
    );
    let file = scratch.0.join("dio");
    let mut disk = Workload::start(
        &scratch,
        "dash-disk",
        false,
        &[
            "dio-write",
            file.to_str().expect("UTF-8"),
            &(64u64 << 20).to_string(),
        ],
    );
    let mut errors = Workload::start(&scratch, "dash-errors", false, &["fail-open", "200000"]);
    for w in [&mut client, &mut server, &mut disk, &mut errors] {
        w.wait_success();
    }
    assert!(
        wait_until(Duration::from_secs(30), || http_get(
            metrics_port,
            "/metrics"
        )
        .is_some_and(
            |(_, body)| body.contains("crmprof_peer_wait_seconds_total")
        )),
        "the agent's /metrics never showed the peer wait"
    );
    // Two more scrapes so rate() has points on both sides.
    std::thread::sleep(Duration::from_secs(4));

    let mut empty = Vec::new();
    for (title, expr) in queries(&dashboard()) {
        let promql = expr
            .replace("$service", ".+")
            .replace("$instance", ".+")
            .replace("$__rate_interval", "30s");
        // `query` asserts status "success": the expression is valid PromQL.
        let result = prometheus.query(&promql);
        // Dropped batches exist only once a remote sink dropped one; none is configured here.
        if result.is_empty() && !expr.contains("crmprof_dropped_batches_total") {
            empty.push(format!("{title}: {promql}"));
        }
    }
    drop(agent);
    assert!(
        empty.is_empty(),
        "dashboard queries with no data:\n{}",
        empty.join("\n")
    );
}
