//! The syscall-latency probe end to end, against workloads whose truth is known.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use integration_tests::{
    Agent, Scratch, Workload, parse_profile, privileged, service, syscall, windows_within,
};

/// Exactly N clock_nanosleep calls of 1 ms by a process that starts *after* the agent (so the
/// in-kernel exec rule selects it): the profile has exactly N calls and p50 in [1.0, 1.5] ms.
/// A second process, not selected, sleeping the same way, must not appear.
#[test]
fn sleeps_are_counted_exactly() {
    if !privileged("sleeps_are_counted_exactly") {
        return;
    }
    const N: u64 = 800;
    let scratch = Scratch::new("sleep");
    let name = format!("slp-{}", std::process::id() % 100_000);
    let other = format!("oth-{}", std::process::id() % 100_000);
    let agent = Agent::start(&["profile", "--duration", "60s", "--comm", &name]);
    let mut selected = Workload::start(&scratch, &name, false, &["sleep", &N.to_string(), "1000"]);
    let mut unselected = Workload::start(&scratch, &other, false, &["sleep", "50", "1000"]);
    selected.wait_success();
    unselected.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());

    let svc = service(&doc, &name).unwrap_or_else(|| panic!("no service {name} in {doc:#}"));
    let pids = svc["pids"].as_array().expect("pids");
    assert!(
        pids.iter().any(|p| p == selected.pid()),
        "pid {} not in {pids:?}",
        selected.pid()
    );
    let sleeps = syscall(svc, "clock_nanosleep").expect("clock_nanosleep recorded");
    assert_eq!(sleeps["count"], N, "exactly {N} sleeps: {sleeps:#}");
    assert_eq!(sleeps["errors"], 0);
    // One call in 32 timed by default: 25 expected (binomial sd 4.9); outside 5..=60 is a
    // one-in-a-million fluke or a broken sampler.
    let timed = sleeps["timed"].as_u64().expect("timed");
    assert!(
        (5..=60).contains(&timed),
        "{timed} of {N} timed: {sleeps:#}"
    );
    let p50 = sleeps["p50_ns"].as_u64().expect("p50_ns");
    assert!(
        (1_000_000..=1_500_000).contains(&p50),
        "p50 {p50} ns is not within 1.0-1.5 ms"
    );
    assert!(sleeps["max_ns"].as_u64().expect("max_ns") >= p50);
    assert!(
        service(&doc, &other).is_none(),
        "unselected process {other} appears in the profile"
    );
    let in_profile = doc["services"].as_array().expect("services");
    assert_eq!(
        in_profile.len(),
        1,
        "only the selected service: {in_profile:#?}"
    );
}

/// Exactly N failing openat calls by a process selected with --pid: N errors, all ENOENT.
/// The workload waits on stdin until the agent is measuring, so nothing is in flight.
#[test]
fn failing_opens_report_enoent() {
    if !privileged("failing_opens_report_enoent") {
        return;
    }
    const N: u64 = 333;
    let scratch = Scratch::new("open");
    let name = format!("opn-{}", std::process::id() % 100_000);
    let mut workload = Workload::start(&scratch, &name, true, &["fail-open", &N.to_string()]);
    let pid = workload.pid().to_string();
    let agent = Agent::start(&["profile", "--duration", "60s", "--pid", &pid]);
    workload.release();
    workload.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());

    let svc = service(&doc, &name).unwrap_or_else(|| panic!("no service {name} in {doc:#}"));
    let opens = syscall(svc, "openat").expect("openat recorded");
    assert_eq!(opens["count"], N, "{opens:#}");
    assert_eq!(opens["errors"], N, "{opens:#}");
    let errors = svc["errors"].as_array().expect("errors");
    assert_eq!(
        errors.len(),
        1,
        "only openat ENOENT failed after release: {errors:#?}"
    );
    assert_eq!(errors[0]["syscall"], "openat");
    assert_eq!(errors[0]["errno"], "ENOENT");
    assert_eq!(errors[0]["count"], N);
}

/// The text format renders the same measurement for a person.
#[test]
fn text_format_shows_top_syscalls_and_errors() {
    if !privileged("text_format_shows_top_syscalls_and_errors") {
        return;
    }
    let scratch = Scratch::new("text");
    let name = format!("txt-{}", std::process::id() % 100_000);
    let mut workload = Workload::start(&scratch, &name, true, &["fail-open", "50"]);
    let pid = workload.pid().to_string();
    let agent = Agent::start(&[
        "profile",
        "--duration",
        "60s",
        "--pid",
        &pid,
        "--format",
        "text",
    ]);
    workload.release();
    workload.wait_success();
    let text = agent.interrupt_and_output();
    assert!(text.contains(&name), "{text}");
    assert!(text.contains("openat"), "{text}");
    assert!(text.contains("openat ENOENT×50"), "{text}");
}

/// Timing every call (`syscall_sample = 1`), on both program pairs: the fast one, which reads
/// the running task that sched_switch keeps, and the one that runs without the scheduler
/// group. Either way exactly N sleeps, every one timed, p50 in [1.0, 1.5] ms.
#[test]
fn every_call_timed_with_and_without_the_scheduler_group() {
    if !privileged("every_call_timed_with_and_without_the_scheduler_group") {
        return;
    }
    const N: u64 = 100;
    for (tag, extra, sched) in [
        ("fast", "", "attached"),
        ("alone", "disable_groups = [\"sched\"]\n", "disabled"),
    ] {
        let scratch = Scratch::new(&format!("timed-{tag}"));
        let config = integration_tests::export::write_config(
            &scratch,
            &format!("syscall_sample = 1\n{extra}"),
        );
        let name = format!("tm{tag}-{}", std::process::id() % 100_000);
        let agent = Agent::start(&[
            "profile",
            "--duration",
            "60s",
            "--config",
            config.to_str().expect("UTF-8"),
            "--comm",
            &name,
        ]);
        let mut w = Workload::start(&scratch, &name, false, &["sleep", &N.to_string(), "1000"]);
        w.wait_success();
        let doc = parse_profile(&agent.interrupt_and_output());
        assert_eq!(doc["agent"]["probes"]["sched"]["status"], sched, "{tag}");
        assert_eq!(
            doc["agent"]["probes"]["syscalls"]["status"], "attached",
            "{tag}"
        );
        let svc = service(&doc, &name).unwrap_or_else(|| panic!("{tag}: no {name} in {doc:#}"));
        let sleeps = syscall(svc, "clock_nanosleep").expect("clock_nanosleep recorded");
        assert_eq!(sleeps["count"], N, "{tag}: {sleeps:#}");
        assert_eq!(sleeps["timed"], N, "{tag}: every call timed: {sleeps:#}");
        let p50 = sleeps["p50_ns"].as_u64().expect("p50_ns");
        assert!(
            (1_000_000..=1_500_000).contains(&p50),
            "{tag}: p50 {p50} ns is not within 1.0-1.5 ms"
        );
        // Time in the call is measured, not scaled: N sleeps of at least 1 ms each.
        let total = sleeps["total_ns"].as_u64().expect("total_ns");
        assert!(total >= N * 1_000_000, "{tag}: total {total} ns");
        println!("{tag}: {N} sleeps, {N} timed, p50 {p50} ns, sched {sched}");
    }
}

/// A process selected by `--pid` while it is in a tight syscall loop: its calls are counted
/// from when it is selected (the agent bumps the selection generation, and the CPU it runs on
/// re-reads its selection at its next syscall). On this busy 2-core machine the loop also
/// switches out now and then, so this shows counting of a running process works; it cannot
/// isolate the generation bump from the next context switch.
#[test]
fn a_running_syscall_loop_is_counted_once_selected() {
    if !privileged("a_running_syscall_loop_is_counted_once_selected") {
        return;
    }
    let scratch = Scratch::new("running-loop");
    let name = format!("rloop-{}", std::process::id() % 100_000);
    // 30 M getppid: far longer than the test; killed at the end.
    let mut w = Workload::start(&scratch, &name, false, &["syscall-loop", "30000000"]);
    let pid = w.pid().to_string();
    let agent = Agent::start(&["profile", "--duration", "60s", "--pid", &pid]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let doc = parse_profile(&agent.interrupt_and_output());
    w.kill();
    let svc = service(&doc, &name).unwrap_or_else(|| panic!("no service {name} in {doc:#}"));
    let calls = syscall(svc, "getppid").map_or(0, |c| c["count"].as_u64().unwrap_or(0));
    // ~300 ns a call under the probes: 1 s is ~3 M calls; a third of that proves counting began
    // within the first second even on a loaded 2-core machine.
    assert!(
        calls >= 1_000_000,
        "only {calls} getppid counted in ~1 s: {svc:#}"
    );
    println!("{calls} getppid counted in ~1 s");
}

/// Processes already running when the agent starts (selected from userspace by `--pid`), each
/// released in turn to sleep N times: every one has exactly N sleeps, and the voluntary
/// switches the kernel itself counted during them (`getrusage`, printed by the workload — a
/// sleep whose timer fires before the thread blocks has none, ~1 in 10^5 here). This is where
/// trusting the last traced context switch went wrong: on a kernel that switches without the
/// `sched_switch` tracepoint (this PVM guest, about once a second), a sleep could be lost
/// together with its switch — in ~15% of single runs.
#[test]
fn sleeps_of_running_processes_are_counted_exactly() {
    if !privileged("sleeps_of_running_processes_are_counted_exactly") {
        return;
    }
    const N: u64 = 400;
    const PROCESSES: usize = 10;
    let scratch = Scratch::new("sleep-running");
    let names: Vec<String> = (0..PROCESSES)
        .map(|i| format!("run{i}-{}", std::process::id() % 100_000))
        .collect();
    let mut workloads: Vec<Workload> = names
        .iter()
        .map(|name| Workload::start(&scratch, name, true, &["sleep", &N.to_string(), "1000"]))
        .collect();
    let mut args = vec!["profile".to_owned(), "--duration".into(), "60s".into()];
    for w in &workloads {
        args.extend(["--pid".to_owned(), w.pid().to_string()]);
    }
    let agent = Agent::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut kernel_counts = Vec::new();
    for w in &mut workloads {
        w.release();
        let line = w.read_line();
        w.wait_success();
        let voluntary: u64 = line
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("the workload printed {line:?}, not its switch counts"));
        kernel_counts.push(voluntary);
    }
    let doc = parse_profile(&agent.interrupt_and_output());
    for (name, kernel) in names.iter().zip(kernel_counts) {
        let svc = service(&doc, name).unwrap_or_else(|| panic!("no service {name} in {doc:#}"));
        let sleeps = syscall(svc, "clock_nanosleep")
            .unwrap_or_else(|| panic!("{name}: no clock_nanosleep in {svc:#}"));
        assert_eq!(sleeps["count"], N, "{name}: exactly {N} sleeps: {sleeps:#}");
        let voluntary = svc["cpu"]["voluntary_switches"]
            .as_u64()
            .expect("voluntary");
        // The profile also covers the workload's release and exit (a page fault there blocks
        // too): at most 2 switches more than the kernel counted around the sleeps.
        assert!(
            (kernel..=kernel + 2).contains(&voluntary),
            "{name}: {voluntary} voluntary switches, the kernel counted {kernel} for its {N} \
             sleeps: {:#}",
            svc["cpu"]
        );
    }
}

/// `crmprof run` with `syscall_duty_cycle = 0.25` and 2 s windows, on both program pairs: the
/// syscall probes are attached for the first 0.5 s of each window only, and what they see is
/// scaled to the window. A process makes getppid at exactly 20,000/s, so in every window
/// wholly inside its run the probes see 20,000 × the attached time (±3%: the workload paces
/// itself in 1 ms batches on a busy machine) — a quarter of the calls, which a probe left
/// attached would not give — and the scaled count is 20,000 × the window (±3%).
#[test]
fn a_duty_cycle_sees_its_share_of_each_window_and_scales_it() {
    if !privileged("a_duty_cycle_sees_its_share_of_each_window_and_scales_it") {
        return;
    }
    const RATE: f64 = 20_000.0;
    for (tag, extra) in [("fast", ""), ("alone", "disable_groups = [\"sched\"]\n")] {
        let scratch = Scratch::new(&format!("duty-{tag}"));
        let name = format!("dc{tag}-{}", std::process::id() % 100_000);
        let data = scratch.0.join("data");
        let config = integration_tests::export::write_config(
            &scratch,
            &format!(
                "interval = \"2s\"\nsyscall_duty_cycle = 0.25\n{extra}data_dir = \"{}\"\n\
                 [export.prometheus]\nenabled = false\n[discovery]\nauto = false\n\
                 [[service]]\nname = \"{name}\"\ncomm = \"{name}\"\n",
                data.display()
            ),
        );
        let agent = Agent::start(&["run", "-q", "--config", config.to_str().expect("UTF-8")]);
        let started = std::time::SystemTime::now();
        let mut w = Workload::start(&scratch, &name, false, &["syscall-rate", "20000", "9000"]);
        w.wait_success();
        let ended = std::time::SystemTime::now();
        // One more window after the workload, so every window of its run is on file.
        std::thread::sleep(std::time::Duration::from_millis(2500));
        drop(agent.interrupt_and_output());
        let windows = windows_within(&data, started, ended);
        for doc in &windows {
            let window = &doc["window"];
            let n = |v: &serde_json::Value| v.as_u64().expect("a number");
            let (duration, attached) = (n(&window["duration_ns"]), n(&window["syscall_probe_ns"]));
            let share = attached as f64 / duration as f64;
            assert!(
                (0.24..=0.26).contains(&share),
                "{tag}: probes attached {attached} ns of {duration} ns"
            );
            let svc = service(doc, &name).unwrap_or_else(|| panic!("{tag}: no {name}: {doc:#}"));
            let calls = syscall(svc, "getppid").expect("getppid recorded");
            let (seen, count) = (n(&calls["seen"]) as f64, n(&calls["count"]) as f64);
            let expect_seen = RATE * attached as f64 / 1e9;
            let expect_count = RATE * duration as f64 / 1e9;
            println!(
                "{tag}: window {duration} ns, attached {attached} ns: seen {seen} (expected \
                 {expect_seen:.0}), count {count} (expected {expect_count:.0})"
            );
            assert!(
                (seen - expect_seen).abs() <= 0.03 * expect_seen,
                "{tag}: seen {seen}, expected {expect_seen:.0}: {calls:#}"
            );
            assert!(
                (count - expect_count).abs() <= 0.03 * expect_count,
                "{tag}: count {count}, expected {expect_count:.0}: {calls:#}"
            );
        }
        assert!(
            windows.len() >= 3,
            "{tag}: {} whole windows in the 9 s run",
            windows.len()
        );
    }
}
