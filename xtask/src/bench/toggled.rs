//! Realistic CRM loads, toggled: each load runs without a break while `crmprof run
//! --bench-toggle` detaches its probes and attaches them again every 250 ms, and every request
//! is sorted by when it completed into the stretches with and without them (`crm-load ...
//! toggled`). Separate runs here differ by ±10% within minutes; stretches a quarter of a
//! second apart share the machine's state, so a few minutes of them resolve a few percent.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{
    load::{Median, Report, TARGET_P99, TARGET_THROUGHPUT},
    stats,
};

/// The configuration the targets apply to (`crmprof run` with its defaults) and the one with
/// the cycled probes attached all the time, which bounds it from above.
const TARGETED: &str = "crmprof";
const ALWAYS: &str = "crmprof-always";

/// One block as `crm-load` prints it: adjacent stretches, half with the probes, half without.
struct Block {
    load: String,
    what: String,
    config: String,
    on_s: f64,
    on_requests: f64,
    on_p99_ms: f64,
    off_s: f64,
    off_requests: f64,
    off_p99_ms: f64,
}

impl Block {
    fn from_json(v: &serde_json::Value) -> Self {
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let config = v["config"].as_str().unwrap_or_default();
        Self {
            load: v["load"].as_str().unwrap_or_default().to_owned(),
            what: v["what"].as_str().unwrap_or_default().to_owned(),
            config: config.trim_start_matches("toggled:").to_owned(),
            on_s: f("on_s"),
            on_requests: f("on_requests"),
            on_p99_ms: f("on_p99_ms"),
            off_s: f("off_s"),
            off_requests: f("off_requests"),
            off_p99_ms: f("off_p99_ms"),
        }
    }

    fn throughput_without(&self) -> f64 {
        self.off_requests / self.off_s.max(1e-9)
    }

    fn throughput_ratio(&self) -> f64 {
        (self.on_requests / self.on_s.max(1e-9)) / self.throughput_without().max(1e-9)
    }

    fn p99_ratio(&self) -> f64 {
        self.on_p99_ms / self.off_p99_ms.max(1e-9)
    }
}

/// A toggled run's own account: how many times the probes changed state and the longest
/// change (the agent's detach or attach of all its programs).
struct RunInfo {
    load: String,
    config: String,
    transitions: u64,
    longest_ms: f64,
    /// The longest change's slowest program step (`detaching PROGRAM took MS ms`), when the
    /// agent logged one.
    longest_step: Option<String>,
}

/// Runs `crm-load ... toggled` for `seconds` per load and configuration; every line it printed
/// is kept in `raw`.
pub fn measure(
    crm_load: &Path,
    crmprof: &Path,
    seconds: u64,
    raw: &Path,
) -> anyhow::Result<Report> {
    eprintln!(
        "==> bench: realistic loads toggled, {seconds} s per load and configuration (the probes \
         detached and attached again every 250 ms)"
    );
    let out = Command::new(crm_load)
        .arg(crmprof)
        .arg("toggled")
        .arg(seconds.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running crm-load toggled")?;
    if !out.status.success() {
        bail!("crm-load toggled failed ({})", out.status);
    }
    std::fs::write(raw, &out.stdout).with_context(|| format!("writing {}", raw.display()))?;
    let (blocks, runs) = parse(&String::from_utf8_lossy(&out.stdout))?;
    Ok(report(&blocks, &runs, seconds))
}

fn parse(out: &str) -> anyhow::Result<(Vec<Block>, Vec<RunInfo>)> {
    let mut blocks = Vec::new();
    let mut runs = Vec::new();
    for line in out.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("crm-load printed {line:?}"))?;
        let config = v["config"].as_str().unwrap_or_default();
        if let Some(config) = config.strip_prefix("toggled-run:") {
            runs.push(RunInfo {
                load: v["load"].as_str().unwrap_or_default().to_owned(),
                config: config.to_owned(),
                transitions: v["transitions"].as_u64().unwrap_or(0),
                longest_ms: v["longest_transition_ms"].as_f64().unwrap_or(0.0),
                longest_step: v["longest_transition_step"].as_str().map(str::to_owned),
            });
        } else if config.starts_with("toggled:") {
            blocks.push(Block::from_json(&v));
        }
    }
    Ok((blocks, runs))
}

fn report(blocks: &[Block], runs: &[RunInfo], seconds: u64) -> Report {
    let mut md = String::new();
    let mut missed = Vec::new();
    let _ = writeln!(
        md,
        "### Toggled: with and without the probes in one continuous load\n"
    );
    let _ = writeln!(
        md,
        "Each load runs without a break — {seconds} s under `crmprof`, {} s under \
         `crmprof-always` — while `crmprof run --bench-toggle 250ms` (otherwise as above, its \
         window the default 10 s) detaches \
         every measuring probe and attaches it again every 250 ms — all but the process \
         group's, which keeps the selection; the cycled probes attach only while their duty \
         cycle has them on. Every request is counted in the stretch it completed in, from 25 ms \
         after a change to 25 ms before the next, so the changes themselves are left out. \
         nginx and Redis are driven by clients in crm-load that stamp every request, in wrk's \
         and redis-benchmark's shape (2 threads × 16 keep-alive connections; 50 connections \
         on one thread, SET and GET in turn); PostgreSQL by pgbench, whose per-transaction log \
         stamps them. A block is adjacent stretches, as many with the probes as without: for \
         `crmprof`, forty (10 s, one window, so each holds its cycled probes' attached tenth); \
         for `crmprof-always`, eight (2 s). Each ratio is a block's throughput (or p99) with the \
         probes ÷ without; the table gives the median over blocks and its distribution-free \
         95% confidence interval. The agent's userspace runs throughout, so its own cost (in \
         the table of each program's cost above) is not in these ratios.\n",
        seconds / 2
    );
    let mut loads: Vec<(&str, &str)> = Vec::new();
    for b in blocks {
        if !loads.iter().any(|(load, _)| *load == b.load) {
            loads.push((&b.load, &b.what));
        }
    }
    let _ = writeln!(
        md,
        "| load | blocks: {TARGETED} \\| {ALWAYS} | throughput without | throughput ÷ \
         without: {TARGETED} \\| {ALWAYS} | p99 ms without | p99 ÷ without: {TARGETED} \\| \
         {ALWAYS} |"
    );
    let _ = writeln!(md, "|{}", " --- |".repeat(6));
    for (load, what) in loads {
        let of = |config: &str| -> Vec<&Block> {
            blocks
                .iter()
                .filter(|b| b.load == load && b.config == config)
                .collect()
        };
        let (targeted, always) = (of(TARGETED), of(ALWAYS));
        let median = |bs: &[&Block], f: fn(&Block) -> f64| -> Median {
            Median::of(&bs.iter().map(|b| f(b)).collect::<Vec<_>>())
        };
        let without: Vec<f64> = targeted
            .iter()
            .chain(&always)
            .map(|b| b.throughput_without())
            .collect();
        let p99_without: Vec<f64> = targeted
            .iter()
            .chain(&always)
            .map(|b| b.off_p99_ms)
            .collect();
        let (t_throughput, t_p99) = (
            median(&targeted, Block::throughput_ratio),
            median(&targeted, Block::p99_ratio),
        );
        let range = |s: (f64, f64, f64), digits: usize| {
            format!("{:.digits$} ({:.digits$}–{:.digits$})", s.1, s.0, s.2)
        };
        let _ = writeln!(
            md,
            "| {what} | {} \\| {} | {} | {} \\| {} | {} | {} \\| {} |",
            targeted.len(),
            always.len(),
            range(stats(&without), 0),
            t_throughput.show(3),
            median(&always, Block::throughput_ratio).show(3),
            range(stats(&p99_without), 2),
            t_p99.show(2),
            median(&always, Block::p99_ratio).show(2),
        );
        if targeted.is_empty()
            || t_throughput.median < TARGET_THROUGHPUT
            || t_p99.median > TARGET_P99
        {
            missed.push(format!(
                "{load} (toggled): throughput {} × without, p99 {} ×",
                t_throughput.show(3),
                t_p99.show(2)
            ));
        }
    }
    let changes: Vec<String> = runs
        .iter()
        .map(|r| {
            let step = r
                .longest_step
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            format!(
                "{} {}: {} changes, the longest {:.1} ms{step}",
                r.load, r.config, r.transitions, r.longest_ms
            )
        })
        .collect();
    let _ = writeln!(
        md,
        "\nThe probes' changes of state, as the agent logged them: {}.\n",
        changes.join("; ")
    );
    Report::closed(md, missed, "toggled")
}

#[cfg(test)]
mod tests {
    use super::{parse, report};

    /// Blocks with known requests and p99s: the table's medians are theirs, and a load whose
    /// `crmprof` blocks lose 5% of their throughput misses the target while one losing 1%
    /// meets it.
    #[test]
    fn blocks_give_the_medians_and_the_verdict() -> anyhow::Result<()> {
        let mut out = String::new();
        for (load, loss) in [("fast", 0.01), ("slow", 0.05)] {
            for (config, n) in [("crmprof", 7), ("crmprof-always", 9)] {
                for i in 0..n {
                    // Without: 1000 requests a second; with: `loss` fewer, ±0.5% by block.
                    let wobble = (i as f64 - (n - 1) as f64 / 2.0) * 0.001;
                    let on = 1000.0 * (1.0 - loss + wobble);
                    out.push_str(&format!(
                        "{{\"load\":\"{load}\",\"what\":\"{load} load\",\
                         \"config\":\"toggled:{config}\",\"block\":{i},\"on_s\":2.0,\
                         \"on_requests\":{},\"on_p99_ms\":1.02,\"off_s\":2.0,\
                         \"off_requests\":2000,\"off_p99_ms\":1.0}}\n",
                        on * 2.0
                    ));
                }
                out.push_str(&format!(
                    "{{\"load\":\"{load}\",\"config\":\"toggled-run:{config}\",\
                     \"transitions\":80,\"longest_transition_ms\":0.9,\
                     \"longest_transition_step\":\"detaching sys_enter took 0.4 ms\",\
                     \"requests\":1}}\n"
                ));
            }
        }
        let (blocks, runs) = parse(&out)?;
        assert_eq!((blocks.len(), runs.len()), (32, 4));
        let r = report(&blocks, &runs, 60);
        assert!(
            r.markdown.contains(
                "| fast load | 7 \\| 9 | 1000 (1000–1000) | 0.990 (0.987–0.993) \\| \
                 0.990 (0.987–0.993) | 1.00 (1.00–1.00) | 1.02 (1.02–1.02) \\| 1.02 (1.02–1.02) |"
            ),
            "{}",
            r.markdown
        );
        assert_eq!(r.missed.len(), 1, "{:?}", r.missed);
        assert!(r.missed[0].starts_with("slow (toggled): throughput 0.950"));
        assert!(r.markdown.contains(
            "fast crmprof: 80 changes, the longest 0.9 ms (detaching sys_enter took 0.4 ms)"
        ));
        Ok(())
    }
}
