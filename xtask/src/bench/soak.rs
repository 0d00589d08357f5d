//! The soak: `crmprof run` (defaults: auto-discovery, a window every 10 s, the syscall probes
//! and the socket receive probe attached for its first second) for many minutes under a steady
//! 100k syscalls/s and constant process churn, its resident memory and CPU sampled every 30 s.
//! Memory must stay under 64 MiB and flat.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{LOOP_NAME, Tools, cpu_ns, rss_kib, start_tracer};

const TARGET_RSS_MIB: f64 = 64.0;
/// "Flat": no more than this much growth from the end of the warm-up to the end.
const FLAT_MIB: f64 = 2.0;
const SAMPLE: Duration = Duration::from_secs(30);
const WARM_UP: Duration = Duration::from_secs(300);

pub struct Report {
    pub markdown: String,
    pub missed: Vec<String>,
}

pub fn measure(tools: &Tools, minutes: u64) -> anyhow::Result<Report> {
    eprintln!("==> bench: soak, {minutes} minutes (samples every 30 s)");
    let total = Duration::from_secs(minutes * 60);
    let mut c = Command::new(&tools.crmprof);
    c.args(["-v", "run", "--quiet", "--data-dir"])
        .arg(tools.scratch.join("soak-data"));
    let tracer = start_tracer(c, "measuring")?;
    let pid = tracer.pid();
    let mut load = Command::new(tools.scratch.join(LOOP_NAME))
        .args(["syscall-rate", "100000", &total.as_millis().to_string()])
        .spawn()
        .context("starting the soak's syscall load")?;

    let start = Instant::now();
    let mut samples: Vec<(f64, f64, f64)> = Vec::new(); // (minute, RSS MiB, CPU % of a core)
    let (mut last_cpu, mut last_at) = (cpu_ns(pid), Instant::now());
    let mut next_sample = start + SAMPLE;
    let mut spawned = 0u64;
    while start.elapsed() < total {
        // Churn: ten short-lived processes a second, each one a discovery event.
        let _ = Command::new("true").stdout(Stdio::null()).status();
        spawned += 1;
        std::thread::sleep(Duration::from_millis(100));
        if Instant::now() >= next_sample {
            let (cpu, at) = (cpu_ns(pid), Instant::now());
            let pct = cpu.saturating_sub(last_cpu) as f64
                / 1e9
                / at.duration_since(last_at).as_secs_f64()
                * 100.0;
            (last_cpu, last_at) = (cpu, at);
            let minute = start.elapsed().as_secs_f64() / 60.0;
            let rss = rss_kib(pid) as f64 / 1024.0;
            eprintln!("    soak: {minute:.1} min, RSS {rss:.1} MiB, CPU {pct:.2}% of a core");
            samples.push((minute, rss, pct));
            next_sample += SAMPLE;
        }
    }
    let _ = load.wait();
    tracer.stop()?;

    let warm = WARM_UP.as_secs_f64() / 60.0;
    let after_warm: Vec<&(f64, f64, f64)> = samples.iter().filter(|s| s.0 >= warm).collect();
    let first = after_warm.first().map_or(0.0, |s| s.1);
    let last = samples.last().map_or(0.0, |s| s.1);
    let max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let cpu_mean = samples.iter().map(|s| s.2).sum::<f64>() / samples.len().max(1) as f64;
    let mut missed = Vec::new();
    if max > TARGET_RSS_MIB {
        missed.push(format!(
            "soak: RSS reached {max:.1} MiB > {TARGET_RSS_MIB} MiB"
        ));
    }
    if last - first > FLAT_MIB {
        missed.push(format!(
            "soak: RSS grew {:.1} MiB after the warm-up (> {FLAT_MIB} MiB)",
            last - first
        ));
    }

    let mut md = String::new();
    let _ = writeln!(md, "## Soak\n");
    let _ = writeln!(
        md,
        "`crmprof run` with its defaults (auto-discovery, a window every 10 s, the syscall probes \
         and the socket receive probe attached for its first second: attached and detached six \
         times a minute) for {minutes} minutes while a process makes 100,000 getppid/s and \
         {spawned} short-lived processes start and exit (ten a second). Resident memory and CPU \
         sampled every 30 s.\n"
    );
    let _ = writeln!(md, "| figure | value |");
    let _ = writeln!(md, "| --- | --- |");
    let _ = writeln!(
        md,
        "| RSS at the end of the {:.0}-minute warm-up, MiB | {first:.1} |",
        warm
    );
    let _ = writeln!(md, "| RSS at the end, MiB | {last:.1} |");
    let _ = writeln!(md, "| RSS maximum, MiB | {max:.1} |");
    let _ = writeln!(md, "| CPU, mean % of one core | {cpu_mean:.2} |");
    let _ = writeln!(
        md,
        "\nRSS every 5 minutes (MiB): {}\n",
        samples
            .iter()
            // Every tenth 30-second sample.
            .skip(9)
            .step_by(10)
            .map(|s| format!("{:.0} min {:.1}", s.0, s.1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        md,
        "Targets: ≤ {TARGET_RSS_MIB} MiB resident and flat (≤ {FLAT_MIB} MiB growth after \
         the warm-up). {}\n",
        if missed.is_empty() {
            "Met.".to_owned()
        } else {
            format!("Missed: {}.", missed.join("; "))
        }
    );
    Ok(Report {
        markdown: md,
        missed,
    })
}
