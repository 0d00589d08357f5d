//! Throughput and tail latency of real CRM servers with and without crmprof profiling them:
//! the realistic half of `cargo xtask bench`.
//!
//! usage: crm-load CRMPROF ROUNDS SECONDS [LOAD,...|all] [CONFIG,...]
//!        crm-load CRMPROF toggled SECONDS [LOAD,...|all] [CONFIG,...]
//!        crm-load preflight
//!
//! `preflight` checks that the host has every server, load generator and tool the loads run
//! (as [`servers`] finds them, and bpftool) and exits 1 naming the ones it lacks, before
//! anything starts: `cargo xtask bench` runs it right after building.
//!
//! Starts nginx (serving a 16 KiB page), PostgreSQL and Redis on loopback, then per round runs
//! every load (or the ones named) — wrk on nginx, pgbench select-only and TPC-B-like,
//! redis-benchmark GET/SET — under three configurations, each between two runs without probes
//! (`without`), so every run with probes has one without right before and right after it; the
//! configurations' order rotates each round. They are: only the empty floor programs (`floor`,
//! `crmprof bench-floor`); `crmprof run` with its defaults profiling the three servers as
//! configured services (`crmprof`: the load generators stand in for clients on other hosts);
//! and the same with the syscall probes and the socket receive probe attached all the time
//! (`crmprof-always`: `syscall_duty_cycle = 1`, `socket_receive_duty_cycle = 1`). Every run
//! follows one-second runs of its load that are not kept, for as long as the tracer (if any)
//! takes to start: no run starts on an idle machine. The agent's window is the run's length,
//! so each run with `crmprof` is one window long, at whatever phase the agent's windows stand:
//! a tenth of it with the syscall probes and the receive probe attached and one window's
//! collection, as any such stretch of a long-running agent. Each load's
//! sequence starts with a warm-up run that is not kept. Many short rounds beat a few long ones
//! here: neighbouring runs share the machine's drift. Prints one
//! JSON line per run, `seq` its place in the round:
//! `{"load":…,"what":…,"config":…,"round":…,"seq":…,"throughput":…,"p99_ms":…}`. Then one
//! more run per load with `crmprof` and the kernel's BPF statistics on (bpftool), not in the
//! ratios, with the CPU time the machine and the agent's process spent meanwhile:
//! `{"load":…,"config":"programs","seconds":…,"busy_cpu_s":…,"agent_cpu_s":…,
//! "programs":{NAME:[RUN_TIME_NS,RUNS],…}}`.
//!
//! `toggled` instead runs each load without a break under `crmprof run --bench-toggle` (its
//! probes detached and attached again every 250 ms), with the `crmprof` settings for SECONDS
//! and the `crmprof-always` ones for half that (or the configurations named, but `floor`),
//! its window the default 10 s; clients stamp
//! every request (nginx and Redis: [`clients`], in wrk's and redis-benchmark's shape;
//! PostgreSQL: pgbench's per-transaction log). Prints one line per block of adjacent
//! stretches, half with the probes, half without ([`toggled`]; 40 stretches for `crmprof`, one
//! window, 8 for `crmprof-always`): `{"load":…,"what":…,"config":"toggled:CONFIG","block":…,
//! "on_s":…,"on_requests":…,"on_p99_ms":…,"off_s":…,"off_requests":…,"off_p99_ms":…}`, then
//! per load and configuration `{"load":…,"config":"toggled-run:CONFIG","transitions":…,
//! "longest_transition_ms":…,"longest_transition_step":…,"requests":…}` (the longest change's
//! slowest program step, as the agent logged it, or null).
#![expect(
    clippy::expect_used,
    reason = "a bench driver: a failure is a message and exit"
)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use integration_tests::{
    Agent, Scratch,
    servers::{self, Server},
};

mod clients;
mod toggled;

use clients::Request;

/// How long the toggled agent keeps its probes in each state, and how near a change a request
/// may complete and still count (`GUARD_NS`, either side).
const TOGGLE: &str = "250ms";
const GUARD_NS: u64 = 25_000_000;
/// The configurations the toggled runs compare unless told others (any but `floor`). A block
/// is 40 stretches, one whole 10 s window, so each holds the cycled probes' attached tenth; with
/// those attached all the time (`crmprof-always`), 8 (2 s) do, and half of SECONDS gives as
/// many blocks again.
const TOGGLED: [&str; 2] = ["crmprof", "crmprof-always"];
/// The toggled agent's window: the default.
const TOGGLED_WINDOW_S: u64 = 10;

/// The configurations compared with runs without probes.
const COMPARED: [&str; 3] = ["floor", "crmprof", "crmprof-always"];
/// Each load's name and what it is (printed with its runs, for the bench's report).
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

/// Exits: 0 when the host has everything the loads run, else 1 with one line naming what it
/// lacks.
fn preflight() -> ! {
    let mut missing = servers::missing();
    if !integration_tests::on_path("bpftool") {
        missing.push("bpftool");
    }
    if missing.is_empty() {
        std::process::exit(0);
    }
    eprintln!(
        "crm-load: this host lacks {}: install the packages with `bash \
         deploy/ci/install-packages.sh` (as root)",
        missing.join(", ")
    );
    std::process::exit(1);
}

struct Loads {
    dir: PathBuf,
    nginx: Server,
    postgres: Server,
    redis: Server,
    pgbench: PathBuf,
    seconds: u64,
}

/// One load run: requests (or transactions) per second and the 99th percentile latency.
struct Run {
    throughput: f64,
    p99_ms: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args == ["preflight"] {
        preflight();
    }
    let (crmprof, rounds, seconds, only, configs) = match args.as_slice() {
        [crmprof, rounds, seconds] => (crmprof, rounds, seconds, None, None),
        [crmprof, rounds, seconds, only] => (crmprof, rounds, seconds, Some(only), None),
        [crmprof, rounds, seconds, only, configs] => {
            (crmprof, rounds, seconds, Some(only), Some(configs))
        }
        _ => {
            eprintln!(
                "usage: crm-load CRMPROF ROUNDS SECONDS [LOAD,...|all] [CONFIG,...]\n       \
                 crm-load CRMPROF toggled SECONDS [LOAD,...|all] [CONFIG,...]"
            );
            std::process::exit(2);
        }
    };
    let is_toggled = rounds == "toggled";
    // Besides the three compared by the bench, `crmprof-no-GROUP[+GROUP...]` runs the defaults
    // without those probe groups, `crmprof+KEY=VALUE` with one setting changed, and
    // `crmprof@PATH` the defaults with another build of crmprof: for finding where a cost
    // comes from, and for comparing two builds in the same rounds.
    let compared: Vec<&str> = match configs {
        None if is_toggled => TOGGLED.to_vec(),
        None => COMPARED.to_vec(),
        Some(configs) => configs.split(',').collect(),
    };
    if let Some(unknown) = compared.iter().find(|c| {
        (!COMPARED.contains(c) || (is_toggled && **c == "floor"))
            && !c.starts_with("crmprof-no-")
            && !c.starts_with("crmprof+")
            && !c.starts_with("crmprof@")
    }) {
        eprintln!(
            "crm-load: unknown configuration {unknown:?}; they are {}, crmprof-no-GROUP, \
             crmprof+KEY=VALUE, crmprof@PATH",
            COMPARED.join(", ")
        );
        std::process::exit(2);
    }
    let known: Vec<&str> = LOADS.iter().map(|(name, _)| *name).collect();
    let names: Vec<&str> = match only {
        None => known.clone(),
        Some(only) if only == "all" => known.clone(),
        Some(only) => only.split(',').collect(),
    };
    if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
        eprintln!(
            "crm-load: unknown load {unknown:?}; the loads are {}",
            known.join(", ")
        );
        std::process::exit(2);
    }
    let crmprof = PathBuf::from(crmprof);
    let rounds: usize = if is_toggled {
        0
    } else {
        rounds.parse().expect("ROUNDS is a number or \"toggled\"")
    };
    let seconds: u64 = seconds.parse().expect("SECONDS is a number");

    // Removed at the end, and at the next start if a killed run left it.
    let scratch = Scratch::new("crm-load");
    let dir = scratch.0.clone();
    integration_tests::sh(&format!("chmod 755 {}", dir.display()));
    let page: Vec<u8> = (0..16 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
    let loads = Loads {
        nginx: servers::nginx_serving(&dir.join("nginx"), 2, &page),
        postgres: servers::postgres(&dir),
        redis: servers::redis(&dir),
        pgbench: servers::postgres_bin("pgbench"),
        dir: dir.clone(),
        seconds,
    };
    loads.init_pgbench();

    if is_toggled {
        for load in &names {
            for config in &compared {
                // With the cycled probes attached all the time, 2 s blocks in half the time.
                let (per_block, seconds) = if *config == "crmprof-always" {
                    (8, loads.seconds / 2)
                } else {
                    (40, loads.seconds)
                };
                toggled_run(&loads, &crmprof, load, config, per_block, seconds);
            }
        }
        drop(loads);
        drop(scratch);
        return;
    }
    for round in 0..rounds {
        for (i, load) in names.iter().enumerate() {
            let what = what(load);
            let mut order = compared.clone();
            order.rotate_left((round + i) % compared.len());
            let sequence = std::iter::once("without")
                .chain(order.into_iter().flat_map(|config| [config, "without"]));
            // The first run of a load after another one runs cold (PostgreSQL's select-only
            // ran 13% below the round's median there): it warms up and is not kept, or it would
            // skew the ratios of the run after it.
            eprintln!("crm-load: round {}/{rounds}, {load}, warm-up", round + 1);
            loads.run(load);
            for (seq, config) in sequence.enumerate() {
                eprintln!("crm-load: round {}/{rounds}, {load}, {config}", round + 1);
                let agent =
                    loads.lead_in(load, || start_tracer(&crmprof, config, &dir, seconds, &[]));
                let run = loads.run(load);
                if let Some(agent) = agent {
                    agent.interrupt();
                }
                println!(
                    "{{\"load\":\"{load}\",\"what\":\"{what}\",\"config\":\"{config}\",\
                     \"round\":{round},\"seq\":{seq},\"throughput\":{:.1},\"p99_ms\":{:.3}}}",
                    run.throughput, run.p99_ms
                );
            }
        }
    }
    // Where the cost goes: one more run per load with crmprof's defaults and the kernel's BPF
    // statistics on (they time every program run, so these runs are not in the ratios).
    for load in &names {
        eprintln!("crm-load: {load}, crmprof with the kernel's BPF statistics");
        match program_stats(&crmprof, &dir, seconds, || loads.run(load)) {
            Ok(ProgramsRun {
                elapsed,
                busy_cpu_s,
                agent_cpu_s,
                programs,
            }) => {
                let programs: Vec<String> = programs
                    .iter()
                    .map(|(name, (ns, runs))| format!("\"{name}\":[{ns},{runs}]"))
                    .collect();
                println!(
                    "{{\"load\":\"{load}\",\"config\":\"programs\",\"seconds\":{elapsed:.3},\
                     \"busy_cpu_s\":{busy_cpu_s:.3},\"agent_cpu_s\":{agent_cpu_s:.6},\
                     \"programs\":{{{}}}}}",
                    programs.join(",")
                );
            }
            Err(why) => eprintln!("crm-load: no BPF statistics for {load}: {why}"),
        }
    }
    // The servers stop before their scratch directory goes.
    drop(loads);
    drop(scratch);
}

/// What a load is, in words.
fn what(load: &str) -> &'static str {
    LOADS
        .iter()
        .find_map(|(name, what)| (*name == load).then_some(*what))
        .unwrap_or_default()
}

/// What a load is when toggled: nginx and Redis are then driven by [`clients`].
fn toggled_what(load: &str) -> &'static str {
    match load {
        "nginx-wrk" => "nginx (2 workers) serving a 16 KiB page, 2 client threads × 16 connections",
        "redis-get-set" => "Redis, SET and GET in turn, 50 connections",
        _ => what(load),
    }
}

/// One load for `seconds` without a break under the agent in `config`, its probes toggled;
/// prints its blocks of `per_block` stretches.
fn toggled_run(
    loads: &Loads,
    crmprof: &Path,
    load: &str,
    config: &str,
    per_block: usize,
    seconds: u64,
) {
    eprintln!("crm-load: {load}, {config} toggled, warm-up");
    loads.run_for(load, 2);
    eprintln!(
        "crm-load: {load}, {config} toggled: {seconds} s, the probes detached and attached again every \
         {TOGGLE}"
    );
    let agent = loads
        .lead_in(load, || {
            start_tracer(
                crmprof,
                config,
                &loads.dir,
                TOGGLED_WINDOW_S,
                &["--bench-toggle", TOGGLE],
            )
        })
        .expect("the toggled agent");
    let mut requests = loads.stamped(load, seconds);
    let (_, stderr) = agent.interrupt();
    let transitions = integration_tests::toggle_changes(&stderr);
    let blocks = toggled::blocks(&transitions, &mut requests, GUARD_NS, per_block);
    let what = toggled_what(load);
    for (i, b) in blocks.iter().enumerate() {
        println!(
            "{{\"load\":\"{load}\",\"what\":\"{what}\",\"config\":\"toggled:{config}\",\
             \"block\":{i},\"on_s\":{:.4},\"on_requests\":{},\"on_p99_ms\":{:.3},\
             \"off_s\":{:.4},\"off_requests\":{},\"off_p99_ms\":{:.3}}}",
            b.on.seconds, b.on.requests, b.on.p99_ms, b.off.seconds, b.off.requests, b.off.p99_ms
        );
    }
    let took_ns = |t: &integration_tests::Transition| t.end_ns.saturating_sub(t.start_ns);
    let longest = transitions.iter().max_by_key(|t| took_ns(t));
    let step = longest
        .and_then(|t| t.slowest.as_deref())
        .map_or_else(|| "null".to_owned(), |s| format!("{s:?}"));
    println!(
        "{{\"load\":\"{load}\",\"config\":\"toggled-run:{config}\",\"transitions\":{},\
         \"longest_transition_ms\":{:.3},\"longest_transition_step\":{step},\"requests\":{}}}",
        transitions.len(),
        longest.map_or(0, took_ns) as f64 / 1e6,
        requests.len()
    );
}

/// The 99th percentile of `sorted` (ascending): the smallest value at least 99% of them do
/// not exceed; 0 when empty.
fn p99(sorted: &[u64]) -> u64 {
    let i = (sorted.len() * 99).div_ceil(100).saturating_sub(1);
    sorted.get(i).copied().unwrap_or(0)
}

/// Every loaded BPF program's id, name, run time (ns) and run count, from bpftool.
fn bpf_programs() -> Result<Vec<(u64, String, u64, u64)>, String> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .map_err(|e| format!("running bpftool: {e}"))?;
    if !out.status.success() {
        return Err(format!("bpftool prog show: {}", out.status));
    }
    let all: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bpftool's JSON: {e}"))?;
    Ok(all
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()?,
                p["name"].as_str()?.to_owned(),
                p["run_time_ns"].as_u64().unwrap_or(0),
                p["run_cnt"].as_u64().unwrap_or(0),
            ))
        })
        .collect())
}

/// Per program name: run time (ns) and runs.
type ProgramRuns = std::collections::BTreeMap<String, (u64, u64)>;

/// A load's run under `crmprof run` with the kernel's BPF statistics on.
struct ProgramsRun {
    /// How long the load ran, s.
    elapsed: f64,
    /// CPU time the whole machine spent meanwhile (not idle, not stolen), s.
    busy_cpu_s: f64,
    /// CPU time the agent's process spent meanwhile, s.
    agent_cpu_s: f64,
    /// Per program of that agent, the run time and runs the load added.
    programs: ProgramRuns,
}

/// Runs `load` under `crmprof run` (defaults) with the kernel's BPF statistics on.
fn program_stats(
    crmprof: &Path,
    dir: &Path,
    seconds: u64,
    load: impl FnOnce() -> Run,
) -> Result<ProgramsRun, String> {
    const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";
    let before: Vec<u64> = bpf_programs()?.iter().map(|p| p.0).collect();
    let agent = start_tracer(crmprof, "crmprof", dir, seconds, &[]);
    let ours = || -> Result<Vec<(u64, String, u64, u64)>, String> {
        Ok(bpf_programs()?
            .into_iter()
            .filter(|p| !before.contains(&p.0))
            .collect())
    };
    let stats_were = std::fs::read_to_string(STATS).unwrap_or_default();
    std::fs::write(STATS, "1").map_err(|e| format!("enabling {STATS}: {e}"))?;
    let result = (|| {
        let agent_pid = agent.as_ref().map_or(0, |a| a.child.id());
        let start = ours()?;
        let (busy0, agent0) = (machine_busy_ticks(), process_cpu_ns(agent_pid));
        let clock = std::time::Instant::now();
        load();
        let elapsed = clock.elapsed().as_secs_f64();
        let (busy1, agent1) = (machine_busy_ticks(), process_cpu_ns(agent_pid));
        let end = ours()?;
        let added = end
            .into_iter()
            .map(|(id, name, ns, runs)| {
                let (ns0, runs0) = start
                    .iter()
                    .find(|p| p.0 == id)
                    .map_or((0, 0), |p| (p.2, p.3));
                (name, (ns.saturating_sub(ns0), runs.saturating_sub(runs0)))
            })
            .filter(|(_, (_, runs))| *runs > 0)
            .collect();
        Ok(ProgramsRun {
            elapsed,
            busy_cpu_s: busy1.saturating_sub(busy0) as f64 / TICKS_PER_S,
            agent_cpu_s: agent1.saturating_sub(agent0) as f64 / 1e9,
            programs: added,
        })
    })();
    let _ = std::fs::write(STATS, stats_were.trim());
    if let Some(agent) = agent {
        agent.interrupt();
    }
    result
}

/// USER_HZ, the unit of /proc's CPU times (100 on every Linux architecture this runs on).
const TICKS_PER_S: f64 = 100.0;

/// CPU time all CPUs spent busy so far, in ticks: /proc/stat's first line without idle, iowait
/// and steal.
fn machine_busy_ticks() -> u64 {
    let v = integration_tests::cpu_ticks();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    // user, nice, system, irq, softirq.
    at(0) + at(1) + at(2) + at(5) + at(6)
}

/// CPU time all threads of process `pid` spent so far, in ns, from each thread's schedstat
/// (ns, where /proc/PID/stat counts 10 ms ticks: the agent spends a few ms in a run); 0 for
/// pid 0 or a process that is gone.
fn process_cpu_ns(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// The `crmprof` configuration's services: the three servers (PostgreSQL's backends are
/// children of the postmaster and join it), nothing discovered.
const SERVERS_ONLY: &str = "[discovery]\nauto = false\n\
    [[service]]\nname = \"nginx\"\ncomm = \"nginx\"\n\
    [[service]]\nname = \"postgresql\"\ncomm = \"postgres\"\n\
    [[service]]\nname = \"redis\"\ncomm = \"redis-server\"\n";

/// crmprof for one run: the floor programs or `crmprof run` (its window `seconds` long),
/// started and waited for as the tests do ([`Agent`]); `None` for the run without probes.
fn start_tracer(
    crmprof: &Path,
    config: &str,
    dir: &Path,
    seconds: u64,
    extra: &[&str],
) -> Option<Agent> {
    // `crmprof@PATH`: the defaults, run by the build at PATH.
    let (crmprof, config) = match config.split_once('@') {
        Some(("crmprof", other)) => (Path::new(other), "crmprof"),
        _ => (crmprof, config),
    };
    let mut cmd = Command::new(crmprof);
    match config {
        "floor" => {
            cmd.arg("bench-floor");
        }
        _ if config.starts_with("crmprof") => {
            let conf = dir.join(format!("{config}.toml"));
            let mut text = format!(
                "data_dir = \"{}\"\ninterval = \"{seconds}s\"\n\
                 [export.prometheus]\nenabled = false\n",
                dir.join("data").display()
            );
            if config == "crmprof-always" {
                text.insert_str(0, "syscall_duty_cycle = 1\nsocket_receive_duty_cycle = 1\n");
            }
            if let Some(setting) = config.strip_prefix("crmprof+") {
                text.insert_str(0, &format!("{}\n", setting.replacen('=', " = ", 1)));
            }
            if let Some(groups) = config.strip_prefix("crmprof-no-") {
                let quoted: Vec<String> = groups.split('+').map(|g| format!("{g:?}")).collect();
                text.insert_str(0, &format!("disable_groups = [{}]\n", quoted.join(", ")));
            }
            text.push_str(SERVERS_ONLY);
            std::fs::write(&conf, text).expect("writing the crmprof config");
            cmd.args(["-v", "run", "--quiet", "--config"])
                .arg(&conf)
                .args(extra);
        }
        _ => return None,
    }
    // Both log a line containing "measuring" once their programs are attached.
    Some(Agent::start_command(&mut cmd))
}

impl Loads {
    fn init_pgbench(&self) {
        let out = Command::new(&self.pgbench)
            .args(["-i", "-q", "-s", "10", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.postgres.port.to_string(), "postgres"])
            .output()
            .expect("running pgbench -i");
        assert!(
            out.status.success(),
            "pgbench -i: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `start` (the tracer, or nothing) while the load runs in one-second runs that are
    /// not kept, until it has returned. So every measured run starts on a machine busy with its
    /// load right up to it, with or without probes — starting an agent takes about a second,
    /// which used to leave the machine idle before every run with probes and never before one
    /// without — and a run with `crmprof` starts wherever the agent's windows stand, not at the
    /// start of its first one: being one window long, it holds one window's share of all the
    /// agent does (its cycled probes' attached tenth, a collection) at any phase, as any stretch
    /// of a long-running agent does.
    fn lead_in<T: Send>(&self, load: &str, start: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            let starting = s.spawn(start);
            loop {
                self.run_for(load, 1);
                if starting.is_finished() {
                    break;
                }
            }
            starting.join().expect("starting the tracer")
        })
    }

    fn run(&self, load: &str) -> Run {
        self.run_for(load, self.seconds)
    }

    /// The load for `seconds` without a break, every request stamped ([`Request`]): nginx and
    /// Redis by [`clients`] in wrk's and redis-benchmark's shape, PostgreSQL by pgbench's own
    /// per-transaction log.
    fn stamped(&self, load: &str, seconds: u64) -> Vec<Request> {
        let length = std::time::Duration::from_secs(seconds);
        match load {
            "nginx-wrk" => clients::http(self.nginx.port, 2, 16, length),
            "pgbench-select" | "pgbench-tpcb" => {
                let prefix = self.dir.join(format!("pglog-{load}"));
                self.pgbench(load, seconds, &prefix);
                pgbench_log(&prefix)
            }
            _ => clients::redis(self.redis.port, 50, length),
        }
    }

    /// pgbench's run of `load` (8 clients, 2 threads), logging every transaction under
    /// `prefix`; its summary.
    fn pgbench(&self, load: &str, seconds: u64, prefix: &Path) -> String {
        let mut cmd = Command::new(&self.pgbench);
        cmd.args(["-n", "-c", "8", "-j", "2", "-T", &seconds.to_string(), "-l"])
            .arg(format!("--log-prefix={}", prefix.display()))
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &self.postgres.port.to_string(), "postgres"]);
        if load == "pgbench-select" {
            cmd.arg("-S");
        }
        output(&mut cmd)
    }

    fn run_for(&self, load: &str, seconds: u64) -> Run {
        let secs = seconds.to_string();
        match load {
            "nginx-wrk" => {
                let out = output(
                    Command::new("wrk")
                        .args(["-t2", "-c32", "-d", &format!("{secs}s"), "--latency"])
                        .arg(format!("http://127.0.0.1:{}/", self.nginx.port)),
                );
                Run {
                    throughput: field(&out, "Requests/sec:"),
                    p99_ms: wrk_ms(&out, "99%"),
                }
            }
            "pgbench-select" | "pgbench-tpcb" => {
                let prefix = self.dir.join(format!("pglog-{load}"));
                let out = self.pgbench(load, seconds, &prefix);
                Run {
                    throughput: field(&out, "tps ="),
                    p99_ms: pgbench_p99_ms(&prefix),
                }
            }
            _ => {
                // GET and SET, about `seconds` in all at ~80k requests/s each.
                let n = (40_000 * seconds).to_string();
                let out = output(
                    Command::new("redis-benchmark")
                        .args(["-p", &self.redis.port.to_string(), "-c", "50", "-n", &n])
                        .args(["-t", "get,set", "--csv"]),
                );
                let rows: Vec<Vec<f64>> = out
                    .lines()
                    .filter(|l| l.starts_with("\"GET\"") || l.starts_with("\"SET\""))
                    .map(|l| {
                        l.split(',')
                            .skip(1)
                            .filter_map(|v| v.trim_matches('"').parse().ok())
                            .collect()
                    })
                    .collect();
                assert_eq!(rows.len(), 2, "redis-benchmark printed: {out}");
                // Columns: rps, avg, min, p50, p95, p99, max. Throughput over both tests is the
                // harmonic mean (equal request counts); p99 the worse of the two.
                let rps = 2.0 / rows.iter().map(|r| 1.0 / r[0]).sum::<f64>();
                let p99 = rows.iter().map(|r| r[5]).fold(0.0, f64::max);
                Run {
                    throughput: rps,
                    p99_ms: p99,
                }
            }
        }
    }
}

fn output(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running a load generator");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number after `label` on its line.
fn field(out: &str, label: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} in:\n{out}"))
}

/// A latency percentile from wrk's `--latency` distribution ("99%    6.49ms"), in ms.
fn wrk_ms(out: &str, pct: &str) -> f64 {
    let value = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(pct))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {pct} line in:\n{out}"));
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 1e-3)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1e3)
    } else {
        panic!("unknown unit in {value:?}")
    };
    number.parse::<f64>().expect("a latency") * scale
}

/// p99 of the per-transaction latencies pgbench logged, ms.
fn pgbench_p99_ms(prefix: &Path) -> f64 {
    let mut latencies: Vec<u64> = pgbench_log(prefix).iter().map(|r| r.latency_ns).collect();
    latencies.sort_unstable();
    p99(&latencies) as f64 / 1e6
}

/// The transactions pgbench logged (`-l`: `client transaction latency_µs script epoch_s µs`,
/// the last two when it completed), from every log file of the run; the files are removed
/// afterwards.
fn pgbench_log(prefix: &Path) -> Vec<Request> {
    let dir = prefix.parent().expect("a directory");
    let stem = prefix
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a UTF-8 prefix");
    let mut requests = Vec::new();
    for entry in std::fs::read_dir(dir).expect("reading the log directory") {
        let path = entry.expect("a directory entry").path();
        if !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(stem))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("reading a pgbench log");
        requests.extend(text.lines().filter_map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .map(|w| w.parse().ok())
                .collect::<Option<_>>()?;
            let [_, _, latency_us, _, epoch_s, us] = v[..] else {
                return None;
            };
            Some(Request {
                end_ns: epoch_s * 1_000_000_000 + us * 1_000,
                latency_ns: latency_us * 1_000,
            })
        }));
        let _ = std::fs::remove_file(&path);
    }
    assert!(!requests.is_empty(), "pgbench logged no transactions");
    requests
}
