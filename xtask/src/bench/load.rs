//! Realistic CRM loads: throughput and p99 latency of nginx, PostgreSQL and Redis under their
//! usual load generators, without probes, with the empty floor programs, and with `crmprof run`
//! profiling the three servers (with its defaults, and with the syscall probes attached all the
//! time). The runs themselves are `crm-load` (tests/src/bin), which starts the servers and runs
//! each configuration between two runs without probes.

use std::{fmt::Write as _, path::Path, process::Command};

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
/// The configurations compared with `without`, as the table names them.
const COMPARED: [(&str, &str); 3] = [
    ("crmprof", "crmprof"),
    ("floor", "floor"),
    ("crmprof-always", "always attached"),
];

/// One load run as `crm-load` prints it.
struct Run {
    load: String,
    config: String,
    round: u64,
    /// Its place in the round's sequence for its load: runs without probes are at even places.
    seq: u64,
    throughput: f64,
    p99_ms: f64,
}

pub struct Report {
    pub markdown: String,
    /// Loads whose ratios missed a target.
    pub missed: Vec<String>,
}

/// Runs `crm-load` and reports its runs; every run, as it printed it, is also kept in `raw`.
pub fn measure(
    crm_load: &Path,
    crmprof: &Path,
    rounds: usize,
    seconds: u64,
    raw: &Path,
) -> anyhow::Result<Report> {
    eprintln!(
        "==> bench: realistic loads, {rounds} rounds × {} loads × {} configurations (each \
         between two runs without probes) × {seconds} s",
        LOADS.len(),
        COMPARED.len()
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
    std::fs::write(raw, &out.stdout).with_context(|| format!("writing {}", raw.display()))?;
    let mut runs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("crm-load printed {line:?}"))?;
        runs.push(Run {
            load: v["load"].as_str().unwrap_or_default().to_owned(),
            config: v["config"].as_str().unwrap_or_default().to_owned(),
            round: v["round"].as_u64().unwrap_or(0),
            seq: v["seq"].as_u64().unwrap_or(0),
            throughput: v["throughput"].as_f64().unwrap_or(0.0),
            p99_ms: v["p99_ms"].as_f64().unwrap_or(0.0),
        });
    }
    Ok(report(&runs, rounds, seconds))
}

/// The median over a configuration's runs of its figure divided by the mean of the runs
/// without probes right before and right after it: pairing neighbours in time cancels most of
/// the machine's drift, which here moves throughput by ±10% within a minute.
fn paired_ratio(runs: &[Run], load: &str, config: &str, figure: fn(&Run) -> f64) -> f64 {
    let without = |round: u64, seq: u64| {
        runs.iter()
            .find(|r| r.load == load && r.config == "without" && r.round == round && r.seq == seq)
    };
    let ratios: Vec<f64> = runs
        .iter()
        .filter(|r| r.load == load && r.config == config)
        .filter_map(|r| {
            let before = without(r.round, r.seq.checked_sub(1)?)?;
            let after = without(r.round, r.seq + 1)?;
            Some(figure(r) / ((figure(before) + figure(after)) / 2.0).max(1e-9))
        })
        .collect();
    if ratios.is_empty() {
        return 0.0;
    }
    stats(&ratios).1
}

fn report(runs: &[Run], rounds: usize, seconds: u64) -> Report {
    let mut md = String::new();
    let mut missed = Vec::new();
    let _ = writeln!(md, "## Realistic CRM loads\n");
    let _ = writeln!(
        md,
        "Each load for {seconds} s under three configurations — the empty floor programs; \
         `crmprof run` with its defaults profiling the three servers as configured services \
         (the load generators stand in for clients on other hosts), which keeps the syscall \
         probes attached for the first tenth of each 10 s window (`syscall_duty_cycle = 0.1`; a \
         run starts with the agent, so its first second has them attached: an eighth of an \
         8 s run); and the same with them attached all the time (*always attached*, \
         `syscall_duty_cycle = 1`) — each between two runs without probes, {rounds} rounds, \
         the order rotated each round. Servers and load generators share the machine's CPUs. \
         Throughput is the median (min–max) over runs; each ratio is the median over rounds of \
         a run divided by the mean of the runs without probes right before and after it; every \
         run is in `target/bench-realistic.jsonl`. The targets apply to `crmprof`.\n"
    );
    let labels: Vec<&str> = COMPARED.iter().map(|(_, label)| *label).collect();
    let _ = writeln!(
        md,
        "| load | throughput without | throughput crmprof | throughput ÷ without: {} | p99 ms \
         without | p99 ratio: {} |",
        labels.join(" | "),
        labels.join(" | ")
    );
    let columns = 4 + 2 * COMPARED.len();
    let _ = writeln!(md, "|{}", " --- |".repeat(columns));
    let throughput = |r: &Run| r.throughput;
    let p99 = |r: &Run| r.p99_ms;
    for (load, what) in LOADS {
        let get = |config: &str, figure: fn(&Run) -> f64| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.load == load && r.config == config)
                .map(figure)
                .collect()
        };
        if get("without", throughput).is_empty() {
            continue;
        }
        let range = |s: (f64, f64, f64)| format!("{:.0} ({:.0}–{:.0})", s.1, s.0, s.2);
        let ratios = |figure: fn(&Run) -> f64, digits: usize| -> String {
            COMPARED
                .iter()
                .map(|(config, _)| format!("{:.digits$}", paired_ratio(runs, load, config, figure)))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {:.2} | {} |",
            range(stats(&get("without", throughput))),
            range(stats(&get("crmprof", throughput))),
            ratios(throughput, 3),
            stats(&get("without", p99)).1,
            ratios(p99, 2),
        );
        let ratio = paired_ratio(runs, load, "crmprof", throughput);
        let p99_ratio = paired_ratio(runs, load, "crmprof", p99);
        if ratio < TARGET_THROUGHPUT || p99_ratio > TARGET_P99 {
            let floor_ratio = paired_ratio(runs, load, "floor", throughput);
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
