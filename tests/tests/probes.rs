//! The socket, disk and scheduler probes against workloads whose truth is known.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{
    os::unix::fs::MetadataExt as _,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use integration_tests::{
    Agent, Netns, Scratch, Workload, dominant, parse_profile, privileged, service, tag,
    time_shares, windows_within,
};
use serde_json::Value;

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn svc<'a>(doc: &'a Value, name: &str) -> &'a Value {
    service(doc, name).unwrap_or_else(|| panic!("no service {name} in {doc:#}"))
}

fn within(actual: u64, expected: u64, tolerance: f64) -> bool {
    (actual as f64 - expected as f64).abs() <= expected as f64 * tolerance
}

/// Moves `bytes` from a source to a sink (the sink optionally in a network namespace) and
/// checks both sides within 1%. Returns the profile.
fn transfer(
    scratch: &Scratch,
    wrapper: &[&str],
    bind: &str,
    connect_host: &str,
    bytes: u64,
) -> Value {
    transfer_with(&[], scratch, wrapper, bind, connect_host, bytes)
}

/// `crmprof profile` (long enough never to end on its own) of the processes named `a` and `b`,
/// with `env` added to its environment.
fn profiling(env: &[(&str, &str)], a: &str, b: &str) -> Agent {
    Agent::start_with_env(
        env,
        &["profile", "--duration", "120s", "--comm", a, "--comm", b],
    )
}

/// [`transfer`], with the agent's environment extended by `env`.
fn transfer_with(
    env: &[(&str, &str)],
    scratch: &Scratch,
    wrapper: &[&str],
    bind: &str,
    connect_host: &str,
    bytes: u64,
) -> Value {
    let (sink_name, source_name) = (tag("snk"), tag("src"));
    let agent = profiling(env, &sink_name, &source_name);
    let mut sink = Workload::start_in(scratch, wrapper, &sink_name, false, &["tcp-sink", bind]);
    let port = sink.read_line();
    let mut source = Workload::start(
        scratch,
        &source_name,
        false,
        &[
            "tcp-source",
            &format!("{connect_host}:{port}"),
            &bytes.to_string(),
        ],
    );
    source.wait_success();
    let received: u64 = sink
        .read_line()
        .parse()
        .expect("the sink prints its byte count");
    sink.wait_success();
    assert_eq!(received, bytes, "the transfer itself is exact");
    let doc = parse_profile(&agent.interrupt_and_output());

    let tx = u(&svc(&doc, &source_name)["network"]["tx_bytes"]);
    let rx = u(&svc(&doc, &sink_name)["network"]["rx_bytes"]);
    assert!(
        within(tx, bytes, 0.01),
        "sender tx_bytes {tx}, sent {bytes}"
    );
    assert!(
        within(rx, bytes, 0.01),
        "receiver rx_bytes {rx}, received {bytes}"
    );
    let peers = svc(&doc, &source_name)["network"]["peers"]
        .as_array()
        .expect("peers");
    let peer = peers
        .iter()
        .find(|p| p["port"].as_u64() == port.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no peer on port {port}: {peers:#?}"));
    assert_eq!(peer["address"], connect_host);
    assert!(within(u(&peer["tx_bytes"]), bytes, 0.01), "{peer:#}");
    assert_eq!(u(&peer["connections"]), 1, "{peer:#}");
    assert_eq!(
        u(&svc(&doc, &source_name)["network"]["connections_opened"]),
        1
    );
    assert_eq!(
        u(&svc(&doc, &sink_name)["network"]["connections_opened"]),
        1
    );
    doc
}

#[test]
fn loopback_transfer_bytes_are_exact() {
    if !privileged("loopback_transfer_bytes_are_exact") {
        return;
    }
    let scratch = Scratch::new("loopback");
    let doc = transfer(&scratch, &[], "127.0.0.1:0", "127.0.0.1", 128 << 20);
    let net = &doc["agent"]["probes"]["net"];
    assert!(
        net["note"].is_null(),
        "the BTF-typed socket programs ran: {net:#}"
    );
}

/// The agent's environment that attaches the raw twins of its BTF-typed programs.
const RAW_TWINS: (&str, &str) = ("CRMPROF_RAW_TRACEPOINTS", "1");

/// The raw twins of the BTF-typed programs (attached when a kernel refuses those) count the
/// same: the loopback transfer's bytes, exactly.
#[test]
fn raw_twins_count_the_same_bytes() {
    if !privileged("raw_twins_count_the_same_bytes") {
        return;
    }
    let scratch = Scratch::new("rawtwin");
    let doc = transfer_with(
        &[RAW_TWINS],
        &scratch,
        &[],
        "127.0.0.1:0",
        "127.0.0.1",
        32 << 20,
    );
    let note = doc["agent"]["probes"]["net"]["note"].as_str().unwrap_or("");
    assert!(
        note.contains("sock_send_length_raw, sock_recv_length_raw attached instead"),
        "net group note: {note:?}"
    );
}

#[test]
fn transfer_into_a_network_namespace() {
    if !privileged("transfer_into_a_network_namespace") {
        return;
    }
    let ns = Netns::new(&tag("crmt"), "10.213.0");
    let scratch = Scratch::new("netns");
    transfer(
        &scratch,
        &ns.exec(),
        "10.213.0.2:0",
        "10.213.0.2",
        100 << 20,
    );
}

/// The block device a path lives on, by kernel name ("vda").
fn device_of(path: &std::path::Path) -> String {
    let dev = std::fs::metadata(path).expect("stat").dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .expect("the scratch directory is on a block device");
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .expect("DEVNAME")
        .to_owned()
}

#[test]
fn direct_io_bytes_land_on_the_right_device() {
    if !privileged("direct_io_bytes_land_on_the_right_device") {
        return;
    }
    const BYTES: u64 = 64 << 20;
    // The reads come from this many threads at once: a queue of requests in flight, which must
    // all find their way in the block tables (two ways per set) until they complete, and which
    // the queue often issues from another context than the reader's. A 1 MiB read is split
    // here (more pages than the disk takes segments): its front part reaches the device as a
    // bio `block_bio_queue` never saw (before block_split, 22–48 MiB of the 64 were counted).
    const READERS: u64 = 32;
    // /var/tmp rather than /tmp: /tmp may be a tmpfs, which has no block device.
    let scratch = Scratch::in_dir("/var/tmp", "dio");
    let file = scratch.0.join("data");
    let device = device_of(&scratch.0);
    let name = tag("dio");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    let path = file.to_str().expect("UTF-8");
    Workload::start(
        &scratch,
        &name,
        false,
        &["dio-write", path, &BYTES.to_string()],
    )
    .wait_success();
    Workload::start(
        &scratch,
        &name,
        false,
        &["dio-read", path, &BYTES.to_string(), &READERS.to_string()],
    )
    .wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let disk = &svc(&doc, &name)["disk"];
    let (written, read) = (u(&disk["write_bytes"]), u(&disk["read_bytes"]));
    // A request displaced from the tables before it completes is lost (and counted): at most
    // 1% of them, which the byte checks below would also notice.
    let displaced = u(&doc["agent"]["dropped"]["block_requests_displaced"]);
    println!(
        "write_bytes {written}, read_bytes {read} ({READERS} readers), {} requests, {displaced} \
         displaced",
        u(&disk["ios"])
    );
    assert!(
        displaced * 100 <= u(&disk["ios"]),
        "{displaced} requests displaced of {}: {disk:#}",
        u(&disk["ios"])
    );
    assert!(
        within(written, BYTES, 0.05),
        "write_bytes {written}, wrote {BYTES}: {disk:#}"
    );
    assert!(
        within(read, BYTES, 0.05),
        "read_bytes {read}, read {BYTES}: {disk:#}"
    );
    let devices = disk["devices"].as_array().expect("devices");
    let on_device = devices
        .iter()
        .find(|d| d["name"] == device.as_str())
        .unwrap_or_else(|| panic!("nothing on {device}: {devices:#?}"));
    assert!(
        within(u(&on_device["write_bytes"]), BYTES, 0.05),
        "{on_device:#}"
    );
    assert!(u(&disk["p50_ns"]) > 0 && u(&disk["ios"]) >= 128, "{disk:#}");
}

#[test]
fn a_neighbours_direct_io_is_not_charged_to_the_service() {
    if !privileged("a_neighbours_direct_io_is_not_charged_to_the_service") {
        return;
    }
    const OWN: u64 = 256 << 20;
    const NEIGHBOUR: u64 = 1 << 30;
    // The neighbour, a process no rule selects, reads from many threads at once, so the device
    // queue holds its requests while the service's own reads go in: a queue is run by whoever
    // submits next, so the service's reader issues some of the neighbour's requests. Charged to
    // the task issuing them, they would count as the service's bytes.
    const NEIGHBOUR_READERS: &str = "32";
    const OWN_READERS: &str = "4";
    let scratch = Scratch::in_dir("/var/tmp", "dio-neighbour");
    let (own_file, their_file) = (scratch.0.join("own"), scratch.0.join("theirs"));
    let (own_path, their_path) = (
        own_file.to_str().expect("UTF-8"),
        their_file.to_str().expect("UTF-8"),
    );
    let (name, neighbour) = (tag("dioown"), tag("dionb"));
    // Both files are written by the neighbour, before the agent starts: nothing of it counts.
    for (path, bytes) in [(own_path, OWN), (their_path, NEIGHBOUR)] {
        Workload::start(
            &scratch,
            &neighbour,
            false,
            &["dio-write", path, &bytes.to_string()],
        )
        .wait_success();
    }
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    // The neighbour reads over and over until the service's reads are done.
    let done = AtomicBool::new(false);
    let neighbour_runs = std::thread::scope(|scope| {
        let neighbour_runs = scope.spawn(|| {
            let mut runs = 0;
            while !done.load(Ordering::Relaxed) {
                Workload::start(
                    &scratch,
                    &neighbour,
                    false,
                    &[
                        "dio-read",
                        their_path,
                        &NEIGHBOUR.to_string(),
                        NEIGHBOUR_READERS,
                    ],
                )
                .wait_success();
                runs += 1;
            }
            runs
        });
        // The neighbour's queue fills before the service's reads start.
        std::thread::sleep(Duration::from_millis(200));
        Workload::start(
            &scratch,
            &name,
            false,
            &["dio-read", own_path, &OWN.to_string(), OWN_READERS],
        )
        .wait_success();
        done.store(true, Ordering::Relaxed);
        neighbour_runs.join().expect("the neighbour's thread")
    });
    let doc = parse_profile(&agent.interrupt_and_output());
    let disk = &svc(&doc, &name)["disk"];
    let read = u(&disk["read_bytes"]);
    // Counted losses: requests displaced from the block tables, and requests whose completion
    // went unseen.
    let displaced = u(&doc["agent"]["dropped"]["block_requests_displaced"])
        + u(&doc["agent"]["dropped"]["block_completions_unseen"]);
    println!(
        "read_bytes {read} of {OWN} read, {} requests, {displaced} displaced or unseen, while a \
         neighbour read {NEIGHBOUR} {neighbour_runs} times",
        u(&disk["ios"])
    );
    // No neighbour's byte counts: never more than the service read. Short by at most the
    // service's own requests lost and counted — displaced from the block tables before they
    // completed, or completed unseen — each at most one read of 1 MiB (a reader has one read
    // in flight at a time, so no request joins two), and by up to three more, uncounted: CI on
    // 2026-12-08 read 1 MiB short with none counted, and so did 2 of 15 local runs with
    // bpftrace on the block tracepoints (2 and 3 MiB short); runs without it are exact. Its
    // cause is not found (docs/probes.md § Disk).
    assert!(
        read <= OWN && OWN - read <= (displaced + 3) << 20,
        "read_bytes {read}, read {OWN}, {displaced} requests displaced or unseen: {disk:#}"
    );
}

#[test]
fn one_spinning_thread_is_on_cpu_for_its_cpu_time() {
    if !privileged("one_spinning_thread_is_on_cpu_for_its_cpu_time") {
        return;
    }
    const CPU_MS: u64 = 3000;
    let scratch = Scratch::new("spin");
    let name = tag("spn");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    Workload::start(&scratch, &name, false, &["spin", &CPU_MS.to_string(), "1"]).wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let on_cpu = u(&svc(&doc, &name)["cpu"]["on_cpu_ns"]);
    println!("on_cpu_ns {on_cpu} for {CPU_MS} ms of the thread's own CPU time");
    // The process also starts and exits: a few ms on top of the spin.
    assert!(
        within(on_cpu, CPU_MS * 1_000_000, 0.05),
        "on_cpu_ns {on_cpu} for {CPU_MS} ms of CPU time"
    );
}

#[test]
fn more_spinners_than_cores_wait_on_the_run_queue() {
    if !privileged("more_spinners_than_cores_wait_on_the_run_queue") {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let threads = cores * 2;
    const WALL_MS: u64 = 3000;
    let scratch = Scratch::new("rq");
    let name = tag("rqw");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    let args = [
        "spin-wall".to_owned(),
        WALL_MS.to_string(),
        threads.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Workload::start(&scratch, &name, false, &args).wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let cpu = &svc(&doc, &name)["cpu"];
    let (on, rq) = (u(&cpu["on_cpu_ns"]), u(&cpu["runqueue_ns"]));
    // Two threads per core: at most half the thread time can be on CPU, so at least half is
    // spent runnable on the run queue (more if anything else competes for the CPUs).
    let thread_time = on + rq;
    let waiting = rq as f64 / thread_time as f64;
    let must_wait = 1.0 - cores as f64 / threads as f64;
    assert!(
        waiting >= must_wait - 0.05,
        "run-queue share {waiting:.2} below the {must_wait:.2} the core count forces: {cpu:#}"
    );
    // And the thread time is conserved: every nanosecond of each thread is on CPU or waiting.
    assert!(
        within(thread_time, threads * WALL_MS * 1_000_000, 0.10),
        "on_cpu + runqueue {thread_time} for {threads} threads × {WALL_MS} ms: {cpu:#}"
    );
    assert!(u(&cpu["involuntary_switches"]) > 0 && u(&cpu["runqueue_p99_ns"]) > 0);
}

/// Threads that sleep and wake onto CPUs busy with another process wait on the run queue after
/// each wakeup: the time the agent counts is the time the kernel itself counts for them (their
/// `run_delay` in /proc/PID/task/TID/schedstat), within 2% — the kernel's figure is taken inside
/// the threads' loop, the agent's also holds their first wait and their exit.
#[test]
fn run_queue_waits_after_wakeups_match_the_kernels_count() {
    if !privileged("run_queue_waits_after_wakeups_match_the_kernels_count") {
        return;
    }
    run_queue_waits_match(&[]);
}

/// The same through the raw `sched_switch`, which reads the task's figures through helper calls.
#[test]
fn raw_sched_switch_counts_the_same_run_queue_waits() {
    if !privileged("raw_sched_switch_counts_the_same_run_queue_waits") {
        return;
    }
    run_queue_waits_match(&[RAW_TWINS]);
}

/// The same with `sched_wakeup` marking each wakeup, as on kernels whose tasks do not say when
/// they joined the run queue (no `CONFIG_SCHED_INFO`).
#[test]
fn sched_wakeup_counts_the_same_run_queue_waits() {
    if !privileged("sched_wakeup_counts_the_same_run_queue_waits") {
        return;
    }
    run_queue_waits_match(&[("CRMPROF_SCHED_WAKEUP", "1")]);
}

/// The same with two thread slots for four threads: those whose slot another holds are kept
/// in the kernel's hash map instead (as on a host whose pid_max exceeds the slots).
#[test]
fn threads_sharing_a_slot_count_the_same_run_queue_waits() {
    if !privileged("threads_sharing_a_slot_count_the_same_run_queue_waits") {
        return;
    }
    run_queue_waits_match(&[("CRMPROF_THREAD_SLOTS", "2")]);
}

fn run_queue_waits_match(env: &[(&str, &str)]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    const WALL_MS: u64 = 3000;
    let scratch = Scratch::new("rqwake");
    let (name, hog) = (tag("wake"), tag("hog"));
    let agent = Agent::start_with_env(env, &["profile", "--duration", "120s", "--comm", &name]);
    // Not selected: it only keeps every CPU busy, a bit longer than the sleepers run.
    let hog_args = [
        "spin-wall".to_owned(),
        (WALL_MS + 1000).to_string(),
        cores.to_string(),
    ];
    let hog_args: Vec<&str> = hog_args.iter().map(String::as_str).collect();
    let mut hog = Workload::start(&scratch, &hog, false, &hog_args);
    let args = ["wake-busy", &WALL_MS.to_string(), "4", "500"];
    let mut sleepers = Workload::start(&scratch, &name, false, &args);
    let kernel: u64 = sleepers
        .read_line()
        .parse()
        .expect("the kernel's run_delay");
    sleepers.wait_success();
    hog.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let sched = &doc["agent"]["probes"]["sched"];
    let attached = sched["attach_points"].to_string();
    let marks_wakeups = env.contains(&("CRMPROF_SCHED_WAKEUP", "1"));
    assert_eq!(
        attached.contains("\"sched_wakeup\""),
        marks_wakeups,
        "sched_wakeup only where asked for (the task's sched_info tells its wait): {sched:#}"
    );
    let cpu = &svc(&doc, &name)["cpu"];
    let rq = u(&cpu["runqueue_ns"]);
    println!("run-queue time: agent {rq} ns, kernel {kernel} ns");
    assert!(
        kernel > 100_000_000,
        "the sleepers waited {kernel} ns on busy CPUs: too little to compare"
    );
    assert!(
        within(rq, kernel, 0.02),
        "runqueue_ns {rq} against the kernel's run_delay {kernel}: {cpu:#}"
    );
}

/// Major page faults and CPU time by mode come from the task's own counters (`maj_flt`,
/// `utime`, `stime`), read at each switch-out and at exit: a process that reads each page of a
/// 64 MiB file once through a mapping takes one major fault per page, and the agent's count is
/// the kernel's count for the process (getrusage), exactly. CPU time by mode is the ticks'
/// split, which getrusage scales to the scheduler's exact runtime: the kernel share matches
/// within 2 points. The totals differ by design — on a VM each tick leaves out the time stolen
/// by the hypervisor, which the exact runtime includes (this workload's page reads exit to
/// the hypervisor: 5–30% here) — so the total is only held to at least half of it.
#[test]
fn major_faults_and_cpu_modes_match_the_kernels_counts() {
    if !privileged("major_faults_and_cpu_modes_match_the_kernels_counts") {
        return;
    }
    fault_counts_match(&[]);
}

/// The same through the raw `sched_switch`, which reads the counters through helper calls.
#[test]
fn raw_sched_switch_counts_the_same_major_faults() {
    if !privileged("raw_sched_switch_counts_the_same_major_faults") {
        return;
    }
    fault_counts_match(&[RAW_TWINS]);
}

fn fault_counts_match(env: &[(&str, &str)]) {
    const MIB: u64 = 64;
    let scratch = Scratch::in_dir("/var/tmp", "faults");
    let file = scratch.0.join("mapped");
    let path = file.to_str().expect("UTF-8");
    Workload::start(
        &scratch,
        "mkfile",
        false,
        &["make-file", path, &MIB.to_string()],
    )
    .wait_success();
    let name = tag("flt");
    let agent = Agent::start_with_env(env, &["profile", "--duration", "120s", "--comm", &name]);
    let mut w = Workload::start(&scratch, &name, false, &["fault-pages", path]);
    let line = w.read_line();
    w.wait_success();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let &[in_loop, majflt, user_us, system_us] = numbers.as_slice() else {
        panic!("fault-pages printed {line:?}");
    };
    let doc = parse_profile(&agent.interrupt_and_output());
    let cpu = &svc(&doc, &name)["cpu"];
    let (faults, user, system) = (
        u(&cpu["major_faults"]),
        u(&cpu["user_ns"]),
        u(&cpu["system_ns"]),
    );
    println!(
        "major faults: agent {faults}, process {majflt} ({in_loop} reading {MIB} MiB); CPU \
         user/system: agent {user}/{system} ns, getrusage {user_us}/{system_us} µs"
    );
    assert_eq!(in_loop, MIB * 256, "one major fault per 4 KiB page");
    assert_eq!(
        faults, majflt,
        "the process's own major-fault count: {cpu:#}"
    );
    // `utime`/`stime` are the timer tick's samples (4 ms each at this kernel's HZ = 250):
    // over a run of n ticks' worth of CPU their sum is off by about √n ticks either way
    // (~7 ticks, 30 ms, for this workload's ~225 ms in short bursts between faults), where
    // getrusage scales them to the scheduler's exact runtime. Above: three of those standard
    // deviations. Below: half, for the time a hypervisor stole (no tick lands then).
    const TICK_NS: f64 = 4_000_000.0;
    let (ours, theirs) = (user + system, (user_us + system_us) * 1000);
    let sampling = (3.0 * (theirs as f64 / TICK_NS).sqrt() * TICK_NS) as u64;
    assert!(
        ours >= theirs / 2 && ours <= theirs + sampling.max(8_000_000),
        "CPU time {ours} ns against getrusage's {theirs} ns (+{sampling} ns allowed for the \
         ticks' sampling): {cpu:#}"
    );
    // The split between user and system is the same ticks' split, read at different moments:
    // the process calls getrusage before it prints and exits, and the agent reads the counters
    // at its last switch-out, so a tick that lands in between (user mode, in the exit path) is
    // the agent's alone. One tick moves the share by TICK_NS / ours (~0.02 for this workload);
    // allowed: one tick, or 0.02 where the run is long enough for that to be less.
    let share = |k: u64, t: u64| k as f64 / t.max(1) as f64;
    let (kernel, rusage_kernel) = (share(system, ours), share(system_us * 1000, theirs));
    let one_tick = TICK_NS / ours.max(1) as f64;
    assert!(
        (kernel - rusage_kernel).abs() <= one_tick.max(0.02) + 1e-9,
        "kernel share {kernel:.3} against getrusage's {rusage_kernel:.3} (one tick moves it by \
         {one_tick:.3}): {cpu:#}"
    );
}

fn assert_dominated_by(doc: &Value, name: &str, expected: &str) {
    let s = svc(doc, name);
    let (top, share) = dominant(s);
    assert_eq!(
        top,
        expected,
        "{name} should be dominated by {expected}: shares {:?}",
        time_shares(s)
    );
    assert!(
        share > 0.5,
        "{name}: {expected} is only {share:.2} of thread time"
    );
}

#[test]
fn a_sleeper_sleeps() {
    if !privileged("a_sleeper_sleeps") {
        return;
    }
    let scratch = Scratch::new("slp");
    let name = tag("zzz");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    Workload::start(&scratch, &name, false, &["sleep", "100", "10000"]).wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    assert_dominated_by(&doc, &name, "sleep");
}

#[test]
fn contended_mutex_is_lock_wait() {
    if !privileged("contended_mutex_is_lock_wait") {
        return;
    }
    let scratch = Scratch::new("mtx");
    let name = tag("mtx");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    Workload::start(&scratch, &name, false, &["mutex", "2000", "6"]).wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    assert_dominated_by(&doc, &name, "lock");
}

#[test]
fn a_client_of_a_slow_server_waits_on_the_network() {
    if !privileged("a_client_of_a_slow_server_waits_on_the_network") {
        return;
    }
    let doc = slow_server_round_trips(&[]);
    let sched = &doc["agent"]["probes"]["sched"];
    assert!(
        sched["note"].is_null(),
        "the BTF-typed scheduler programs ran: {sched:#}"
    );
}

/// The raw twins of the BTF-typed scheduler and socket programs tell the same wait.
#[test]
fn raw_twins_tell_the_same_network_wait() {
    if !privileged("raw_twins_tell_the_same_network_wait") {
        return;
    }
    let doc = slow_server_round_trips(&[RAW_TWINS]);
    let note = doc["agent"]["probes"]["sched"]["note"]
        .as_str()
        .unwrap_or("");
    assert!(
        note.contains("sched_switch_plain attached instead"),
        "sched group note: {note:?}"
    );
}

/// 50 round trips to a server that holds each 20 ms, profiled by an agent with `env` added to
/// its environment: the client waits on the network, for that server, ≥ 1 s; the server
/// sleeps. Returns the profile.
fn slow_server_round_trips(env: &[(&str, &str)]) -> Value {
    let scratch = Scratch::new("slow");
    let (server, client) = (tag("srv"), tag("cli"));
    let agent = profiling(env, &server, &client);
    let mut srv = Workload::start(
        &scratch,
        &server,
        false,
        &["slow-server", "127.0.0.1:0", "20", "50"],
    );
    let port = srv.read_line();
    Workload::start(
        &scratch,
        &client,
        false,
        &["slow-client", &format!("127.0.0.1:{port}"), "50"],
    )
    .wait_success();
    srv.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    assert_dominated_by(&doc, &client, "network");
    assert_dominated_by(&doc, &server, "sleep");
    let peers = svc(&doc, &client)["network"]["peers"]
        .as_array()
        .expect("peers");
    let peer = peers
        .iter()
        .find(|p| p["port"].as_u64() == port.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no peer on port {port}: {peers:#?}"));
    // 50 round trips held 20 ms each by the server: ≥ 1 s of waiting on that peer.
    assert!(u(&peer["wait_ns"]) >= 900_000_000, "{peer:#}");
    assert_eq!(
        peer["service"],
        server.as_str(),
        "the peer is named as the local service"
    );
    doc
}

#[test]
fn throttled_direct_io_is_disk_wait() {
    if !privileged("throttled_direct_io_is_disk_wait") {
        return;
    }
    let scratch = Scratch::in_dir("/var/tmp", "thr");
    let file = scratch.0.join("data");
    let dev = std::fs::metadata(&scratch.0).expect("stat").dev();
    let cgroup = format!("/sys/fs/cgroup/blkio/{}", tag("crmprof-thr"));
    std::fs::create_dir_all(&cgroup).expect("creating a blkio cgroup (cgroup v1)");
    let limit = format!("{}:{} 50", libc::major(dev), libc::minor(dev));
    std::fs::write(format!("{cgroup}/blkio.throttle.write_iops_device"), &limit)
        .expect("setting a write IOPS limit");
    let name = tag("thr");
    let agent = Agent::start(&["profile", "--duration", "120s", "--comm", &name]);
    let path = file.to_str().expect("UTF-8");
    // 40 writes of 1 MiB at 50 IOPS: ~0.8 s held by the throttle.
    let mut w = Workload::start(
        &scratch,
        &name,
        true,
        &["dio-write", path, &(40u64 << 20).to_string()],
    );
    std::fs::write(format!("{cgroup}/cgroup.procs"), w.pid().to_string())
        .expect("moving the workload into the cgroup");
    w.release();
    w.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let _ = std::fs::remove_dir(&cgroup);
    assert_dominated_by(&doc, &name, "disk");
    let disk = &svc(&doc, &name)["disk"];
    assert!(u(&disk["wait_ns"]) >= 500_000_000, "{disk:#}");
    std::thread::sleep(Duration::from_millis(10));
}

/// `crmprof run` with `socket_receive_duty_cycle = 0.25` and 2 s windows: the receive probe is
/// attached for the first 0.5 s of each window only, and what it sees is scaled to the
/// window; sends are counted the whole window. A source sends exactly 16 KiB every
/// millisecond, so in every window wholly inside its run the sink received, and the source
/// sent, 16,384,000 bytes/s × the window (±3%: the source paces itself in 1 ms steps on a
/// busy machine, as the syscall duty-cycle test's workload does).
#[test]
fn a_receive_duty_cycle_scales_received_bytes_and_counts_every_send() {
    if !privileged("a_receive_duty_cycle_scales_received_bytes_and_counts_every_send") {
        return;
    }
    const PER_MS: u64 = 16_384;
    let scratch = Scratch::new("rx-duty");
    let (sink_name, source_name) = (tag("rxs"), tag("rxp"));
    let (_agent, data) = cycled_agent(&scratch, "0.25", &[&sink_name, &source_name]);
    let mut sink = Workload::start(&scratch, &sink_name, false, &["tcp-sink", "127.0.0.1:0"]);
    let port = sink.read_line();
    let started = std::time::SystemTime::now();
    Workload::start(
        &scratch,
        &source_name,
        false,
        &[
            "tcp-paced",
            &format!("127.0.0.1:{port}"),
            &PER_MS.to_string(),
            "9000",
        ],
    )
    .wait_success();
    let ended = std::time::SystemTime::now();
    sink.read_line();
    sink.wait_success();
    // One more window after the run, so every window of it is on file.
    std::thread::sleep(Duration::from_millis(2500));
    let windows = windows_within(&data, started, ended);
    assert!(
        windows.len() >= 3,
        "{} whole windows in the 9 s run",
        windows.len()
    );
    for doc in &windows {
        let window = &doc["window"];
        let (duration, attached) = (
            u(&window["duration_ns"]),
            u(&window["socket_receive_probe_ns"]),
        );
        let share = attached as f64 / duration as f64;
        assert!(
            (0.24..=0.26).contains(&share),
            "receive probe attached {attached} ns of {duration} ns"
        );
        let expected = PER_MS * duration / 1_000_000;
        let rx = u(&svc(doc, &sink_name)["network"]["rx_bytes"]);
        let tx = u(&svc(doc, &source_name)["network"]["tx_bytes"]);
        println!(
            "window {duration} ns, receives seen {attached} ns: rx {rx}, tx {tx}, expected {expected}"
        );
        assert!(
            within(rx, expected, 0.03),
            "sink rx_bytes {rx}, expected {expected}"
        );
        assert!(
            within(tx, expected, 0.03),
            "source tx_bytes {tx}, expected {expected}"
        );
        // Per peer, the bytes each CPU holds for its last peer reach the window they were
        // sent in (as a window starts, the agent switches on every CPU still holding some).
        let peer_tx: u64 = svc(doc, &source_name)["network"]["peers"]
            .as_array()
            .expect("peers")
            .iter()
            .map(|p| u(&p["tx_bytes"]))
            .sum();
        assert!(
            within(peer_tx, expected, 0.03),
            "source's peer tx_bytes {peer_tx}, expected {expected}"
        );
    }
}

/// With the receive probe detached for most of each window (`socket_receive_duty_cycle =
/// 0.1`), an event loop that sends a request, polls for the reply, reads it and then polls for
/// work that does not come is still told apart: the poll for the reply is a network wait, the
/// poll for work is idle — its read of the reply went unseen, but a send counts as awaiting a
/// response only in the time slice it was made in. 100 round trips with 30 ms of idle polling
/// each: ≥ 2.4 s idle (80% of 3 s: the first window may start late), and network wait under a
/// tenth of that (an echo on loopback answers in well under a millisecond).
#[test]
fn an_event_loop_waiting_for_work_is_idle_while_receives_go_unseen() {
    if !privileged("an_event_loop_waiting_for_work_is_idle_while_receives_go_unseen") {
        return;
    }
    let scratch = Scratch::new("rx-idle");
    let (server, client) = (tag("ecs"), tag("ecc"));
    let (agent, data) = cycled_agent(&scratch, "0.1", &[&client]);
    let mut srv = Workload::start(
        &scratch,
        &server,
        false,
        &["slow-server", "127.0.0.1:0", "0", "100"],
    );
    let port = srv.read_line();
    Workload::start(
        &scratch,
        &client,
        false,
        &["poll-client", &format!("127.0.0.1:{port}"), "100", "30"],
    )
    .wait_success();
    srv.wait_success();
    std::thread::sleep(Duration::from_millis(2500));
    drop(agent.interrupt_and_output());
    let text = std::fs::read_to_string(data.join("profiles.jsonl")).expect("profiles");
    let (mut idle, mut network) = (0, 0);
    for line in text.lines() {
        let doc: Value = serde_json::from_str(line).expect("JSON line");
        if let Some(s) = service(&doc, &client) {
            idle += u(&s["offcpu"]["idle_ns"]);
            network += u(&s["offcpu"]["network_ns"]);
        }
    }
    println!("idle {idle} ns, network {network} ns");
    assert!(
        idle >= 2_400_000_000,
        "idle {idle} ns, network {network} ns"
    );
    assert!(network * 10 < idle, "idle {idle} ns, network {network} ns");
}

/// `crmprof run` with 2 s windows and `socket_receive_duty_cycle = share`, profiling the
/// processes named `names`; with the directory its profiles go to.
fn cycled_agent(scratch: &Scratch, share: &str, names: &[&str]) -> (Agent, std::path::PathBuf) {
    let data = scratch.0.join("data");
    let mut toml = format!(
        "interval = \"2s\"\nsocket_receive_duty_cycle = {share}\ndata_dir = \"{}\"\n\
         [export.prometheus]\nenabled = false\n[discovery]\nauto = false\n",
        data.display()
    );
    for name in names {
        toml.push_str(&format!(
            "[[service]]\nname = \"{name}\"\ncomm = \"{name}\"\n"
        ));
    }
    let config = integration_tests::export::write_config(scratch, &toml);
    let agent = Agent::start(&["run", "-q", "--config", config.to_str().expect("UTF-8")]);
    (agent, data)
}
