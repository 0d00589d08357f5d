//! Realistic CRM loads: throughput and p99 latency of nginx, PostgreSQL and Redis under their
//! usual load generators, without probes, with the empty floor programs, and with `crmprof run`
//! profiling the three servers (with its defaults, and with the syscall probes attached all the
//! time). The runs themselves are `crm-load` (tests/src/bin), which starts the servers and runs
//! each configuration between two runs without probes.

use std::{fmt::Write as _, path::Path, process::Command};

use anyhow::{Context as _, bail};

use super::{median_of_sorted, stats};

/// Throughput with crmprof ≥ 0.97 × without; p99 latency ≤ 1.05 × without.
pub(super) const TARGET_THROUGHPUT: f64 = 0.97;
pub(super) const TARGET_P99: f64 = 1.05;

/// The configuration the targets apply to, and the floor it is compared with.
const TARGETED: &str = "crmprof";
const FLOOR: &str = "floor";
const WITHOUT: &str = "without";
/// `crm-load`'s lines with per-program statistics instead of a run.
const PROGRAMS: &str = "programs";

/// One load run as `crm-load` prints it.
struct Run {
    load: String,
    /// What the load is, in words.
    what: String,
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

impl Report {
    /// The section `md` closed by its verdict on the targets (`how`: the comparison's name).
    pub(super) fn closed(mut md: String, missed: Vec<String>, how: &str) -> Self {
        let _ = writeln!(
            md,
            "Targets for `crmprof` ({how}): throughput ≥ {TARGET_THROUGHPUT} × without, p99 ≤ \
             {TARGET_P99} × (medians). {}\n",
            if missed.is_empty() {
                "All met.".to_owned()
            } else {
                format!("Missed: {}.", missed.join("; "))
            }
        );
        Self {
            markdown: md,
            missed,
        }
    }
}

/// What one program run costs beyond what the kernel's BPF statistics say, from the
/// per-syscall bench: the statistics time a run (an empty program reads `stats_ns` with them
/// on) but not the tracepoint's call into it (`call_ns`: half the floor's added cost per
/// syscall, without them).
#[derive(Clone, Copy)]
pub struct Accounting {
    pub call_ns: f64,
    pub stats_ns: f64,
}

impl Accounting {
    /// A program's cost per run without the statistics: its average with them, less what they
    /// add, plus the call into it.
    fn per_run_ns(self, average_ns: f64) -> f64 {
        (average_ns - self.stats_ns).max(0.0) + self.call_ns
    }
}

/// Runs `crm-load` and reports its runs; every run, as it printed it, is also kept in `raw`.
pub fn measure(
    crm_load: &Path,
    crmprof: &Path,
    rounds: usize,
    seconds: u64,
    raw: &Path,
    accounting: Option<Accounting>,
) -> anyhow::Result<Report> {
    eprintln!(
        "==> bench: realistic loads, {rounds} rounds of {seconds} s runs (each with probes \
         between two without)"
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
    let mut programs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("crm-load printed {line:?}"))?;
        if v["config"] == PROGRAMS {
            programs.push(ProgramStats::from_json(&v));
            continue;
        }
        runs.push(Run {
            load: v["load"].as_str().unwrap_or_default().to_owned(),
            what: v["what"].as_str().unwrap_or_default().to_owned(),
            config: v["config"].as_str().unwrap_or_default().to_owned(),
            round: v["round"].as_u64().unwrap_or(0),
            seq: v["seq"].as_u64().unwrap_or(0),
            throughput: v["throughput"].as_f64().unwrap_or(0.0),
            p99_ms: v["p99_ms"].as_f64().unwrap_or(0.0),
        });
    }
    let mut report = report(&runs, rounds, seconds);
    program_section(&mut report.markdown, &programs, accounting);
    Ok(report)
}

/// One load's run with the kernel's BPF statistics on, as `crm-load` prints it.
struct ProgramStats {
    load: String,
    seconds: f64,
    /// CPU time the whole machine, and the agent's process, spent during the run (s).
    busy_cpu_s: f64,
    agent_cpu_s: f64,
    /// Program name → (run time ns, runs).
    programs: Vec<(String, u64, u64)>,
}

impl ProgramStats {
    fn from_json(v: &serde_json::Value) -> Self {
        let programs = v["programs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(name, pair)| {
                        let n = |i: usize| pair[i].as_u64().unwrap_or(0);
                        (name.clone(), n(0), n(1))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            load: v["load"].as_str().unwrap_or_default().to_owned(),
            seconds: v["seconds"].as_f64().unwrap_or(0.0),
            busy_cpu_s: v["busy_cpu_s"].as_f64().unwrap_or(0.0),
            agent_cpu_s: v["agent_cpu_s"].as_f64().unwrap_or(0.0),
            programs,
        }
    }
}

/// Per program and load: runs per second, average run time and share of one CPU, busiest
/// first — which program a realistic load's cost comes from; then, given the per-run costs
/// the statistics leave out, all of crmprof's cost as a share of the CPU the run used.
fn program_section(md: &mut String, stats: &[ProgramStats], accounting: Option<Accounting>) {
    if stats.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "### Per program under each load\n\nOne more run per load with `crmprof run` (defaults) and \
         the kernel's BPF statistics on, not in the ratios above (timing each run adds to it): \
         runs per second, average ns per run, and the programs' share of one CPU.\n"
    );
    let loads: Vec<&str> = stats.iter().map(|s| s.load.as_str()).collect();
    let _ = writeln!(md, "| program | {} |", loads.join(" | "));
    let _ = writeln!(md, "|{}", " --- |".repeat(loads.len() + 1));
    // Programs in order of their total share over all loads.
    let mut names: Vec<(&str, f64)> = Vec::new();
    for s in stats {
        for (name, ns, _) in &s.programs {
            let share = *ns as f64 / (s.seconds * 1e9).max(1e-9);
            match names.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += share,
                None => names.push((name, share)),
            }
        }
    }
    names.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, _) in &names {
        let cells: Vec<String> = stats
            .iter()
            .map(|s| match s.programs.iter().find(|(n, _, _)| n == name) {
                Some((_, ns, runs)) if *runs > 0 => format!(
                    "{:.0}/s · {:.0} ns · {:.2}%",
                    *runs as f64 / s.seconds.max(1e-9),
                    *ns as f64 / *runs as f64,
                    *ns as f64 / (s.seconds * 1e7).max(1e-9)
                ),
                _ => "—".to_owned(),
            })
            .collect();
        let _ = writeln!(md, "| {name} | {} |", cells.join(" | "));
    }
    let totals: Vec<String> = stats
        .iter()
        .map(|s| {
            let ns: u64 = s.programs.iter().map(|p| p.1).sum();
            format!("{:.2}%", ns as f64 / (s.seconds * 1e7).max(1e-9))
        })
        .collect();
    let _ = writeln!(md, "| all | {} |", totals.join(" | "));
    let Some(accounting) = accounting else {
        md.push('\n');
        return;
    };
    let row = |md: &mut String, label: &str, cell: &dyn Fn(&ProgramStats) -> String| {
        let cells: Vec<String> = stats.iter().map(cell).collect();
        let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
    };
    // ns of CPU the programs took without the statistics, calls into them included.
    let programs_ns = |s: &ProgramStats| -> f64 {
        s.programs
            .iter()
            .filter(|(_, _, runs)| *runs > 0)
            .map(|(_, ns, runs)| *runs as f64 * accounting.per_run_ns(*ns as f64 / *runs as f64))
            .sum()
    };
    let share = |ns: f64, s: &ProgramStats| ns / (s.seconds * 1e7).max(1e-9);
    row(md, "all, without the statistics, calls included", &|s| {
        format!("{:.2}%", share(programs_ns(s), s))
    });
    row(md, "the agent's process", &|s| {
        format!("{:.2}%", share(s.agent_cpu_s * 1e9, s))
    });
    row(md, "**crmprof ÷ the CPU the run used**", &|s| {
        let used = s.busy_cpu_s * 1e9;
        if used <= 0.0 {
            return "—".to_owned();
        }
        format!(
            "**{:.1}%** of {:.2} CPUs",
            (programs_ns(s) + s.agent_cpu_s * 1e9) / used * 100.0,
            s.busy_cpu_s / s.seconds.max(1e-9)
        )
    });
    let _ = writeln!(
        md,
        "\nThe last rows account for crmprof's whole cost in that run: each program's runs × \
         (its average, less the {:.0} ns the statistics add to a run, plus the {:.0} ns the \
         tracepoint's call into a program costs — half the floor's added cost per syscall), \
         then the agent's own CPU time; last, their sum ÷ the CPU time the machine spent busy \
         during the run (/proc/stat, which leaves out what the host takes unseen). That share is \
         what a load keeping every CPU busy loses in throughput to crmprof's own work; what it \
         leaves out is the programs' effect on caches and timing. It comes from counters of \
         one run, so the host's drift moves it far less than the throughput ratios above.\n",
        accounting.stats_ns, accounting.call_ns
    );
}

/// A configuration's runs, each divided by the mean of the runs without probes right before
/// and right after it: pairing neighbours in time cancels most of the machine's drift, which
/// here moves throughput by ±10% within a minute.
fn paired_ratios(runs: &[Run], load: &str, config: &str, figure: fn(&Run) -> f64) -> Vec<f64> {
    let without = |round: u64, seq: u64| {
        runs.iter()
            .find(|r| r.load == load && r.config == WITHOUT && r.round == round && r.seq == seq)
    };
    runs.iter()
        .filter(|r| r.load == load && r.config == config)
        .filter_map(|r| {
            let before = without(r.round, r.seq.checked_sub(1)?)?;
            let after = without(r.round, r.seq + 1)?;
            Some(figure(r) / ((figure(before) + figure(after)) / 2.0).max(1e-9))
        })
        .collect()
}

/// The median of paired ratios with its distribution-free 95% confidence interval: the order
/// statistics the median lies between with probability ≥ 0.95 whatever the noise's shape
/// (binomial, p = ½). With fewer than 6 ratios no such interval exists; it is then min–max.
#[derive(Clone, Copy)]
pub(super) struct Median {
    pub(super) median: f64,
    low: f64,
    high: f64,
}

impl Median {
    pub(super) fn of(ratios: &[f64]) -> Self {
        let mut s = ratios.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        if n == 0 {
            return Self {
                median: 0.0,
                low: 0.0,
                high: 0.0,
            };
        }
        let median = median_of_sorted(&s);
        // The largest k with P(Binomial(n, ½) < k) ≤ 2.5%: [s[k-1], s[n-k]] covers the median
        // with probability ≥ 95%.
        let mut k = 0;
        let mut below = 0.0;
        for i in 0..n {
            below += binomial_half(n, i);
            if below > 0.025 {
                break;
            }
            k = i + 1;
        }
        let (low, high) = if k == 0 {
            (s[0], s[n - 1])
        } else {
            (s[k - 1], s[n - k])
        };
        Self { median, low, high }
    }

    pub(super) fn show(&self, digits: usize) -> String {
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.low, self.high
        )
    }
}

/// P(Binomial(n, ½) = i).
fn binomial_half(n: usize, i: usize) -> f64 {
    let ln_choose: f64 = (0..i)
        .map(|j| ((n - j) as f64).ln() - ((j + 1) as f64).ln())
        .sum();
    (ln_choose - n as f64 * std::f64::consts::LN_2).exp()
}

fn report(runs: &[Run], rounds: usize, seconds: u64) -> Report {
    let mut md = String::new();
    let mut missed = Vec::new();
    let _ = writeln!(md, "## Realistic CRM loads\n");
    let _ = writeln!(
        md,
        "Each load in {rounds} rounds of {seconds} s runs under three configurations — the \
         empty floor programs; `crmprof run` with its defaults profiling the three servers as \
         configured services (the load generators stand in for clients on other hosts), its \
         window set to the run's length, so that each run — started wherever the agent's \
         windows stand — holds one window's share of what it does: the syscall probes and the \
         socket receive probe attached for a tenth of it (`syscall_duty_cycle = 0.1`, \
         `socket_receive_duty_cycle = 0.1`) and one collection, as any stretch of a \
         long-running agent; and the same with them attached all the time \
         (`crmprof-always`, both 1) — each run between two runs without probes, the order \
         rotated each round, after a warm-up run that is not kept (a load's first run \
         after another load runs cold). Every run follows one-second runs of its load, not \
         kept, for as long as the agent takes to start (one when there is none): no run starts \
         on an idle machine. Servers and load generators share the machine's CPUs. \
         Throughput is the median (min–max) over runs. Each ratio is a run divided by the mean \
         of the runs without probes right before and after it; the table gives the median over \
         rounds and, in brackets, its distribution-free 95% confidence interval (order \
         statistics), so a figure whose interval spans the target is not resolved by this \
         machine. Every run is in `target/bench-realistic.jsonl`. The targets apply to \
         `crmprof`; a short window makes its userspace collect five times as often as the 10 s \
         default, so its figure errs on the side of cost.\n"
    );
    // Loads and configurations as crm-load ran them: the targeted one first.
    let mut loads: Vec<(&str, &str)> = Vec::new();
    let mut compared: Vec<&str> = vec![TARGETED];
    for r in runs {
        if !loads.iter().any(|(load, _)| *load == r.load) {
            loads.push((&r.load, &r.what));
        }
        if r.config != WITHOUT && !compared.contains(&r.config.as_str()) {
            compared.push(&r.config);
        }
    }
    let labels = compared.join(" | ");
    let _ = writeln!(
        md,
        "| load | throughput without | throughput crmprof | throughput ÷ without: {} | p99 ms \
         without | p99 ratio: {} |",
        labels, labels
    );
    let columns = 4 + 2 * compared.len();
    let _ = writeln!(md, "|{}", " --- |".repeat(columns));
    let throughput = |r: &Run| r.throughput;
    let p99 = |r: &Run| r.p99_ms;
    for (load, what) in loads {
        let get = |config: &str, figure: fn(&Run) -> f64| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.load == load && r.config == config)
                .map(figure)
                .collect()
        };
        let medians = |figure: fn(&Run) -> f64| -> Vec<Median> {
            compared
                .iter()
                .map(|config| Median::of(&paired_ratios(runs, load, config, figure)))
                .collect()
        };
        let (by_throughput, by_p99) = (medians(throughput), medians(p99));
        let show = |ms: &[Median], digits: usize| -> String {
            ms.iter()
                .map(|m| m.show(digits))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        let range = |s: (f64, f64, f64)| format!("{:.0} ({:.0}–{:.0})", s.1, s.0, s.2);
        let _ = writeln!(
            md,
            "| {what} | {} | {} | {} | {:.2} | {} |",
            range(stats(&get(WITHOUT, throughput))),
            range(stats(&get(TARGETED, throughput))),
            show(&by_throughput, 3),
            stats(&get(WITHOUT, p99)).1,
            show(&by_p99, 2),
        );
        let (crmprof, crmprof_p99) = (by_throughput[0], by_p99[0]);
        let floor = compared
            .iter()
            .position(|c| *c == FLOOR)
            .map_or(Median::of(&[]), |i| by_throughput[i]);
        if crmprof.median < TARGET_THROUGHPUT || crmprof_p99.median > TARGET_P99 {
            missed.push(format!(
                "{load}: throughput {} × without (floor alone {:.3}), p99 {} ×",
                crmprof.show(3),
                floor.median,
                crmprof_p99.show(2)
            ));
        }
    }
    md.push('\n');
    Report::closed(md, missed, "runs in turn")
}

#[cfg(test)]
mod tests {
    use super::{Accounting, Median, ProgramStats, program_section};

    #[test]
    fn programs_are_listed_busiest_first_with_rate_average_and_share() {
        let line = serde_json::json!({
            "load": "redis-get-set", "config": "programs", "seconds": 2.0,
            "programs": {"sched_wakeup": [2_000_000, 10_000], "sock_send_length": [40_000_000, 200_000]}
        });
        let mut md = String::new();
        program_section(&mut md, &[ProgramStats::from_json(&line)], None);
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| s")).collect();
        assert_eq!(
            rows,
            [
                "| sock_send_length | 100000/s · 200 ns · 2.00% |",
                "| sched_wakeup | 5000/s · 200 ns · 0.10% |",
            ]
        );
        assert!(md.contains("| all | 2.10% |"), "{md}");
    }

    #[test]
    fn the_whole_cost_is_programs_without_statistics_plus_the_agent_over_the_cpu_used() {
        let line = serde_json::json!({
            "load": "redis-get-set", "config": "programs", "seconds": 2.0,
            "busy_cpu_s": 3.0, "agent_cpu_s": 0.02,
            "programs": {"sched_wakeup": [2_000_000, 10_000], "sock_send_length": [40_000_000, 200_000]}
        });
        let mut md = String::new();
        let accounting = Accounting {
            call_ns: 20.0,
            stats_ns: 40.0,
        };
        program_section(&mut md, &[ProgramStats::from_json(&line)], Some(accounting));
        // Each run 200 - 40 + 20 = 180 ns: 210,000 runs are 37.8 ms of 2 s.
        assert!(
            md.contains("| all, without the statistics, calls included | 1.89% |"),
            "{md}"
        );
        assert!(md.contains("| the agent's process | 1.00% |"), "{md}");
        // (37.8 ms + 20 ms) ÷ 3 s busy.
        assert!(md.contains("| **1.9%** of 1.50 CPUs |"), "{md}");
        // A program faster than the statistics' own time costs its call, not less.
        assert!((accounting.per_run_ns(10.0) - 20.0).abs() < 1e-9);
    }

    #[test]
    fn the_medians_interval_is_the_binomial_order_statistics() {
        // n = 20: P(Bin(20, ½) ≤ 5) = 2.07%, ≤ 6 = 5.77% — the 6th and 15th values.
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        let m = Median::of(&v);
        assert_eq!((m.median, m.low, m.high), (10.5, 6.0, 15.0));
        // n = 5: no interval reaches 95%; min–max.
        let m = Median::of(&[3.0, 1.0, 2.0, 5.0, 4.0]);
        assert_eq!((m.median, m.low, m.high), (3.0, 1.0, 5.0));
        // n = 6: P(Bin(6, ½) = 0) = 1.6%: min–max is a 96.9% interval.
        let m = Median::of(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!((m.low, m.high), (1.0, 6.0));
    }
}
