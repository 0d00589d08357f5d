//! The syscall-latency probe end to end, against workloads whose truth is known.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use integration_tests::{Agent, Scratch, Workload, parse_profile, privileged, service, syscall};

/// Exactly N clock_nanosleep calls of 1 ms by a process that starts *after* the agent (so the
/// in-kernel exec rule selects it): the profile has exactly N calls and p50 in [1.0, 1.5] ms.
/// A second process, not selected, sleeping the same way, must not appear.
#[test]
fn sleeps_are_counted_exactly() {
    if !privileged("sleeps_are_counted_exactly") {
        return;
    }
    const N: u64 = 200;
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
