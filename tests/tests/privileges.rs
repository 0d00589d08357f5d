//! Least privilege: crmprof run by an unprivileged user holding only the documented
//! capabilities (docs/privileges.md) profiles correctly, and after start-up holds nothing but
//! what it still uses. The failures with a capability missing are in `cli.rs`.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{process::Command, time::Duration};

use integration_tests::{
    Agent, Scratch, ThreadCaps, Workload, crmprof_as_nobody, parse_profile, privileged, service,
    syscall, thread_caps,
};

const CAP_SYS_PTRACE: u64 = 1 << 19;

fn assert_caps(threads: &[ThreadCaps], allowed: u64) {
    assert!(!threads.is_empty());
    for t in threads {
        assert_eq!(t.permitted, allowed, "thread {}: {t:?}", t.tid);
        assert_eq!(t.effective, allowed, "thread {}: {t:?}", t.tid);
        assert_eq!(t.ambient, 0, "thread {}: {t:?}", t.tid);
        assert!(t.no_new_privs, "thread {} lacks no_new_privs: {t:?}", t.tid);
    }
}

/// nobody with CAP_BPF and CAP_PERFMON only, selecting by comm a process of another user
/// (root) that starts later: exactly N sleeps of 1 ms are counted, and once measuring every
/// thread of the agent holds no capability at all.
#[test]
fn profile_as_nobody_with_bpf_and_perfmon_only() {
    if !privileged("profile_as_nobody_with_bpf_and_perfmon_only") {
        return;
    }
    // Enough that the default sample (one in 32) times some: 25 expected.
    const N: u64 = 800;
    let scratch = Scratch::new("lp-comm");
    let name = format!("lpc-{}", std::process::id() % 100_000);
    let agent = Agent::start_command(crmprof_as_nobody(&["bpf", "perfmon"]).args([
        "-v",
        "profile",
        "--duration",
        "60s",
        "--comm",
        &name,
    ]));
    assert_caps(&thread_caps(agent.child.id()), 0);
    let mut workload = Workload::start(&scratch, &name, false, &["sleep", &N.to_string(), "1000"]);
    workload.wait_success();
    let doc = parse_profile(&agent.interrupt_and_output());
    let svc = service(&doc, &name).unwrap_or_else(|| panic!("no service {name} in {doc:#}"));
    let sleeps = syscall(svc, "clock_nanosleep").expect("clock_nanosleep recorded");
    assert_eq!(sleeps["count"], N, "exactly {N} sleeps: {sleeps:#}");
    let p50 = sleeps["p50_ns"].as_u64().expect("p50_ns");
    assert!(
        (1_000_000..=1_500_000).contains(&p50),
        "p50 {p50} ns is not within 1.0-1.5 ms"
    );
}

/// Auto-discovery as nobody holding `caps`: a workload (root) the test starts after the
/// capability drop is named by its executable when it execs — readlink of another user's
/// /proc/PID/exe, which needs CAP_SYS_PTRACE. (It is first in this test process's service by
/// fork, then in its own; the service that holds its sleeps is the one returned.) Returns the
/// workload's service, if any, and the agent's stderr.
fn auto_discovery_as_nobody(caps: &[&str], tag: &str) -> (Option<serde_json::Value>, String) {
    const N: u64 = 50;
    let scratch = Scratch::new(tag);
    let name = format!("{tag}-{}", std::process::id() % 100_000);
    let agent =
        Agent::start_command(crmprof_as_nobody(caps).args(["-v", "profile", "--duration", "60s"]));
    let expected = if caps.contains(&"sys_ptrace") {
        CAP_SYS_PTRACE
    } else {
        0
    };
    assert_caps(&thread_caps(agent.child.id()), expected);
    // The workload execs now and blocks on stdin; the agent applies exec events every 250 ms.
    let mut workload = Workload::start(&scratch, &name, true, &["sleep", &N.to_string(), "1000"]);
    std::thread::sleep(Duration::from_millis(1000));
    workload.release();
    workload.wait_success();
    let pid = workload.pid();
    let (stdout, stderr) = agent.interrupt();
    let doc = parse_profile(&stdout);
    let sleeps_of = |s: &serde_json::Value| {
        syscall(s, "clock_nanosleep").map_or(0, |c| c["count"].as_u64().unwrap_or(0))
    };
    let svc = doc["services"].as_array().and_then(|services| {
        services
            .iter()
            .filter(|s| {
                s["pids"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| *p == pid))
            })
            .max_by_key(|s| sleeps_of(s))
            .cloned()
    });
    if let Some(svc) = &svc {
        let sleeps = syscall(svc, "clock_nanosleep").expect("clock_nanosleep recorded");
        let count = sleeps["count"].as_u64().expect("count");
        assert!(count >= N, "at least the workload's {N} sleeps: {sleeps:#}");
    }
    (svc, stderr)
}

/// The kernel fact the capability set rests on: reading the executable of another user's
/// process needs CAP_SYS_PTRACE; CAP_DAC_READ_SEARCH does not help.
#[test]
fn reading_another_users_exe_needs_sys_ptrace() {
    if !privileged("reading_another_users_exe_needs_sys_ptrace") {
        return;
    }
    let me = std::process::id();
    let readlink_as_nobody = |cap: &str| {
        let set = format!("-all,+{cap}");
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={set}"))
            .arg(format!("--ambient-caps={set}"))
            .args(["--", "readlink", &format!("/proc/{me}/exe")])
            .output()
            .expect("running setpriv readlink")
            .status
            .success()
    };
    assert!(readlink_as_nobody("sys_ptrace"), "CAP_SYS_PTRACE suffices");
    assert!(
        !readlink_as_nobody("dac_read_search"),
        "CAP_DAC_READ_SEARCH does not"
    );
    assert!(!readlink_as_nobody("bpf"), "CAP_BPF does not");
}

#[test]
fn auto_discovery_after_the_drop_keeps_only_sys_ptrace() {
    if !privileged("auto_discovery_after_the_drop_keeps_only_sys_ptrace") {
        return;
    }
    let (svc, stderr) = auto_discovery_as_nobody(&["bpf", "perfmon", "sys_ptrace"], "lpa");
    assert!(
        svc.is_some(),
        "the root workload that started after the drop was not profiled; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("dropped every capability but CAP_SYS_PTRACE"),
        "{stderr}"
    );
}

/// The same without CAP_SYS_PTRACE: the other user's process cannot be named and is not
/// profiled, and the agent says so. This is why the documented set includes it.
#[test]
fn auto_discovery_without_sys_ptrace_misses_other_users() {
    if !privileged("auto_discovery_without_sys_ptrace_misses_other_users") {
        return;
    }
    let (svc, stderr) = auto_discovery_as_nobody(&["bpf", "perfmon"], "lpn");
    assert!(
        svc.is_none(),
        "profiled without CAP_SYS_PTRACE, so the capability would not be needed: {svc:?}"
    );
    assert!(stderr.contains("without CAP_SYS_PTRACE"), "{stderr}");
}
