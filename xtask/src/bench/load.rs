//! Realistic CRM loads: throughput and p99 latency of nginx, PostgreSQL and Redis under their
//! usual load generators, without probes, with the empty floor programs, and with `crmprof
//! run` profiling every one of them. The runs themselves are `crm-load` (tests/src/bin), which
//! starts the servers and interleaves the configurations round by round.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::stats;

/// Throughput with crmprof ≥ 0.97 × without; p99 latency ≤ 1.05 × without.
const TARGET_THROUGHPUT: f64 = 0.97;
const TARGET_P99: f64 = 1.05;

const LOADS: [(&str, &str); 4] = [
    (
        "nginx-wrk",
        "nginx (2 workers) serving a 16 KiB page, wrk 2 threads × 32 connections",
    ),
    (
        "pgbench-select",
        "PostgreSQL, pgbench select-only, 8 clients (scale 10)",
    ),
    (
        "pgbench-tpcb",
        "PostgreSQL, pgbench TPC-B-like, 8 clients (scale 10)",
    ),
    (
        "redis-get-set",
        "Redis, redis-benchmark GET and SET, 50 clients",
    ),
];
const CONFIGS: [&str; 3] = ["without", "floor", "crmprof"];

/// (load, config) → per-round (throughput, p99 ms).
type Runs = BTreeMap<(String, String), Vec<(f64, f64)>>;

pub struct Report {
    pub markdown: String,
    /// Loads whose ratios missed a target.
    pub missed: Vec<String>,
}

pub fn measure(
    crm_load: &Path,
    crmprof: &Path,
    rounds: usize,
    seconds: u64,
) -> anyhow::Result<Report> {
    eprintln!(
        "==> bench: realistic loads, {rounds} rounds × {} loads × {} configurations × {seconds} s",
        LOADS.len(),
        CONFIGS.len()
    );
    let out = Command::new(crm_load)
        .arg(crmprof)
        .arg(rounds.to_string())
        .arg(seconds.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running crm-load")?;
    if !out.status.success() {
        bail!("crm-load failed ({})", out.status);
    }
    let mut runs = Runs::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("crm-load printed {line:?}"))?;
        let key = (
            v["load"].as_str().unwrap_or_default().to_owned(),
            v["config"].as_str().unwrap_or_default().to_owned(),
        );
        let run = (
            v["throughput"].as_f64().unwrap_or(0.0),
            v["p99_ms"].as_f64().unwrap_or(0.0),
        );
        runs.entry(key).or_default().push(run);
    }
    Ok(report(&runs, rounds, seconds))
}

fn report(runs: &Runs, rounds: usize, seconds: u64) -> Report {
    let mut md = String::new();
    let mut missed = Vec::new();
    let _ = writeln!(md, "## Realistic CRM loads\n");
    let _ = writeln!(
        md,
        "Each load for {seconds} s under three configurations — no probes, the empty floor \
         programs, `crmprof run` with auto-discovery profiling every server and load generator \
         — {rounds} rounds, the order rotated each round. Servers and load generators share \
         the machine's CPUs. Medians (min–max); ratios are the medians' ratio to the run \
         without probes.\n"
    );
    let _ = writeln!(
        md,
        "| load | throughput without | floor | crmprof | crmprof ÷ without | floor ÷ without | \
         p99 ms without | crmprof | p99 ratio |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for (load, what) in LOADS {
        let get = |config: &str, i: usize| -> Vec<f64> {
            runs.get(&(load.to_owned(), config.to_owned()))
                .map(|v| v.iter().map(|r| if i == 0 { r.0 } else { r.1 }).collect())
                .unwrap_or_default()
        };
        let (t_without, t_floor, t_crm) = (
            stats(&get("without", 0)),
            stats(&get("floor", 0)),
            stats(&get("crmprof", 0)),
        );
        let (p_without, p_crm) = (stats(&get("without", 1)), stats(&get("crmprof", 1)));
        let ratio = t_crm.1 / t_without.1.max(1e-9);
        let floor_ratio = t_floor.1 / t_without.1.max(1e-9);
        let p99_ratio = p_crm.1 / p_without.1.max(1e-9);
        let range = |s: (f64, f64, f64)| format!("{:.0} ({:.0}–{:.0})", s.1, s.0, s.2);
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {ratio:.3} | {floor_ratio:.3} | {:.2} | {:.2} | {p99_ratio:.2} |",
            range(t_without),
            range(t_floor),
            range(t_crm),
            p_without.1,
            p_crm.1,
        );
        if ratio < TARGET_THROUGHPUT || p99_ratio > TARGET_P99 {
            missed.push(format!(
                "{load}: throughput {ratio:.3} × without (floor alone {floor_ratio:.3}), p99 \
                 {p99_ratio:.2} ×"
            ));
        }
    }
    let _ = writeln!(
        md,
        "\nTargets: throughput with crmprof ≥ {TARGET_THROUGHPUT} × without, p99 ≤ \
         {TARGET_P99} ×. {}\n",
        if missed.is_empty() {
            "All met.".to_owned()
        } else {
            format!("Missed: {}.", missed.join("; "))
        }
    );
    Report {
        markdown: md,
        missed,
    }
}
