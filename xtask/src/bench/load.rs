//! Realistic CRM loads: throughput and p99 latency of nginx, PostgreSQL and Redis under their
//! usual load generators, without probes, with the empty floor programs, with `crmprof run`
//! profiling the three servers, with its auto-discovery profiling the load generators too, and
//! profiling the servers without the syscall probes.
//! The runs themselves are `crm-load` (tests/src/bin), which starts the servers and interleaves
//! the configurations round by round.

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
const CONFIGS: [&str; 5] = [
    "without",
    "floor",
    "crmprof",
    "crmprof-auto",
    "crmprof-nosys",
];

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

/// The median over rounds of a configuration's figure divided by the same round's figure
/// without probes: pairing runs from one round cancels the drift between rounds.
fn paired_ratio(runs: &Runs, load: &str, config: &str, figure: fn(&(f64, f64)) -> f64) -> f64 {
    let of = |c: &str| runs.get(&(load.to_owned(), c.to_owned()));
    let (Some(with), Some(without)) = (of(config), of("without")) else {
        return 0.0;
    };
    let ratios: Vec<f64> = with
        .iter()
        .zip(without)
        .map(|(w, o)| figure(w) / figure(o).max(1e-9))
        .collect();
    stats(&ratios).1
}

fn report(runs: &Runs, rounds: usize, seconds: u64) -> Report {
    let mut md = String::new();
    let mut missed = Vec::new();
    let _ = writeln!(md, "## Realistic CRM loads\n");
    let _ = writeln!(
        md,
        "Each load for {seconds} s under five configurations — no probes, the empty floor \
         programs, `crmprof run` profiling the three servers as configured services (the load \
         generators stand in for clients on other hosts), `crmprof run` with auto-discovery, \
         which profiles the load generators too (*auto*), and the servers profiled with \
         `disable_groups = [\"syscalls\"]` (*no syscalls*: no per-syscall cost on the host; \
         wait reasons still classified, syscall counts and errors not collected) — {rounds} \
         rounds, the order \
         rotated each round. Servers and load generators share the machine's CPUs. Figures are \
         medians (min–max); each ratio is the median over rounds of that round's run divided \
         by the same round's run without probes. The targets apply to `crmprof`.\n"
    );
    let _ = writeln!(
        md,
        "| load | throughput without | floor | crmprof | crmprof ÷ without | floor ÷ without | \
         auto ÷ without | no syscalls ÷ without | p99 ms without | crmprof | p99 ratio | auto \
         p99 ratio | no syscalls p99 ratio |"
    );
    let _ = writeln!(
        md,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    let throughput = |r: &(f64, f64)| r.0;
    let p99 = |r: &(f64, f64)| r.1;
    for (load, what) in LOADS {
        let get = |config: &str, figure: fn(&(f64, f64)) -> f64| -> Vec<f64> {
            runs.get(&(load.to_owned(), config.to_owned()))
                .map(|v| v.iter().map(figure).collect())
                .unwrap_or_default()
        };
        if get("without", throughput).is_empty() {
            continue;
        }
        let (t_without, t_floor, t_crm) = (
            stats(&get("without", throughput)),
            stats(&get("floor", throughput)),
            stats(&get("crmprof", throughput)),
        );
        let (p_without, p_crm) = (stats(&get("without", p99)), stats(&get("crmprof", p99)));
        let ratio = paired_ratio(runs, load, "crmprof", throughput);
        let floor_ratio = paired_ratio(runs, load, "floor", throughput);
        let auto_ratio = paired_ratio(runs, load, "crmprof-auto", throughput);
        let p99_ratio = paired_ratio(runs, load, "crmprof", p99);
        let auto_p99_ratio = paired_ratio(runs, load, "crmprof-auto", p99);
        let lean_ratio = paired_ratio(runs, load, "crmprof-nosys", throughput);
        let lean_p99_ratio = paired_ratio(runs, load, "crmprof-nosys", p99);
        let range = |s: (f64, f64, f64)| format!("{:.0} ({:.0}–{:.0})", s.1, s.0, s.2);
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {ratio:.3} | {floor_ratio:.3} | {auto_ratio:.3} | \
             {lean_ratio:.3} | {:.2} | {:.2} | {p99_ratio:.2} | {auto_p99_ratio:.2} | \
             {lean_p99_ratio:.2} |",
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
