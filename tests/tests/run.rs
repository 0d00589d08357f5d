//! `crmprof run`: a profile document per interval, appended to the data directory.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::time::Duration;

use integration_tests::{Agent, Scratch, privileged, toggle_changes, validate_profile};

#[test]
fn run_appends_a_profile_per_interval() {
    if !privileged("run_appends_a_profile_per_interval") {
        return;
    }
    let scratch = Scratch::new("run");
    let data = scratch.0.join("data");
    let data_arg = data.to_str().expect("UTF-8 path");
    let agent = Agent::start(&["run", "--interval", "1s", "--data-dir", data_arg]);
    // The live summary goes to stdout; wait for three windows on the file.
    let file = data.join("profiles.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let lines = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .count();
        if lines >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let stdout = agent.interrupt_and_output();
    assert!(
        stdout.contains("services"),
        "live summary missing:\n{stdout}"
    );
    let text = std::fs::read_to_string(&file).expect("profiles.jsonl written");
    let docs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect();
    assert!(
        docs.len() >= 3,
        "expected at least 3 windows, got {}",
        docs.len()
    );
    let mut any_busy = false;
    for doc in &docs {
        validate_profile(doc);
        any_busy |= doc["services"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| !s["syscalls"].as_array().is_some_and(Vec::is_empty))
        });
    }
    assert!(
        any_busy,
        "auto-discovery profiled no process making syscalls"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "profiles are private to the agent's user");
}

/// `crmprof run --bench-toggle 300ms` (for `cargo xtask bench`'s toggled comparison): every
/// measuring probe comes off and goes back on in turn — the agent's BPF links, read from its
/// file descriptors every 20 ms for 3 s, take exactly two values, the process group's three
/// alone and every group's — and each change is logged, off and on in turn, 200–450 ms apart
/// (300 ms, give or take the agent's timer on a busy host), with its slowest program step.
#[test]
fn bench_toggle_detaches_every_measuring_probe_and_attaches_it_again() {
    if !privileged("bench_toggle_detaches_every_measuring_probe_and_attaches_it_again") {
        return;
    }
    let scratch = Scratch::new("toggle");
    let conf = scratch.0.join("toggle.toml");
    std::fs::write(
        &conf,
        format!(
            "syscall_duty_cycle = 1\nsocket_receive_duty_cycle = 1\ndata_dir = \"{}\"\n\
             [export.prometheus]\nenabled = false\n",
            scratch.0.join("data").display()
        ),
    )
    .expect("writing the config");
    let conf = conf.to_str().expect("UTF-8 path");
    let agent = Agent::start(&[
        "run",
        "--quiet",
        "--config",
        conf,
        "--bench-toggle",
        "300ms",
    ]);
    let pid = agent.child.id();
    let mut seen: std::collections::BTreeMap<usize, u32> = std::collections::BTreeMap::new();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < until {
        *seen.entry(links_of(pid)).or_default() += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, stderr) = agent.interrupt();
    // A sample may land inside a change (about a millisecond in 300): only counts seen in at
    // least five samples are states.
    let states: Vec<usize> = seen
        .iter()
        .filter(|&(_, &n)| n >= 5)
        .map(|(&links, _)| links)
        .collect();
    assert_eq!(
        states.len(),
        2,
        "link counts seen (count: samples): {seen:?}"
    );
    assert_eq!(
        states[0], 3,
        "detached, only the process group's links: {seen:?}"
    );
    assert!(
        states[1] >= 3 + 8,
        "attached, every group's links: {seen:?}"
    );
    let changes = toggle_changes(&stderr);
    assert!(changes.len() >= 8, "changes logged: {changes:?}");
    for (i, change) in changes.iter().enumerate() {
        assert_eq!(change.on, i % 2 == 1, "change {i} (off first): {changes:?}");
        assert!(change.start_ns <= change.end_ns, "change {i}: {changes:?}");
        // Its slowest program step, detaching going off and attaching going on, within it.
        let verb = if change.on {
            "attaching "
        } else {
            "detaching "
        };
        let step_ms: f64 = change
            .slowest
            .as_deref()
            .filter(|s| s.starts_with(verb))
            .and_then(|s| s.strip_suffix(" ms")?.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("change {i} names no {verb}step: {changes:?}"));
        let change_ms = (change.end_ns - change.start_ns) as f64 / 1e6;
        assert!(
            step_ms <= change_ms + 0.05,
            "change {i}: a step of {step_ms} ms in a change of {change_ms} ms: {changes:?}"
        );
        if i > 0 {
            let apart_ms = (change.start_ns - changes[i - 1].start_ns) / 1_000_000;
            assert!(
                (200..=450).contains(&apart_ms),
                "changes {} and {i} {apart_ms} ms apart: {changes:?}",
                i - 1
            );
        }
    }
}

/// The BPF links process `pid` holds, from its file descriptors' fdinfo.
fn links_of(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter(|info| info.contains("link_id:"))
        .count()
}
