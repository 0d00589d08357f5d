//! Bad input and missing privileges: one clear line, a non-zero exit, never a panic.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::process::{Command, Output};

use integration_tests::{crmprof, crmprof_as_nobody, privileged};

fn run(cmd: &mut Command) -> (Output, String) {
    let out = cmd.output().expect("running crmprof");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

fn assert_clear_failure(args: &[&str], expect: &str) {
    let (out, stderr) = run(Command::new(crmprof()).args(args));
    assert!(
        !out.status.success(),
        "{args:?} should fail; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains("error"),
        "{args:?}: first line is not an error: {stderr}"
    );
    assert!(
        first.contains(expect),
        "{args:?}: the error line does not say {expect:?}: {first}"
    );
}

#[test]
fn usage_errors_are_one_line() {
    if !integration_tests::crmprof().exists() {
        panic!("run through cargo xtask test");
    }
    assert_clear_failure(&["profile", "--bogus"], "--bogus");
    assert_clear_failure(&["profile", "--duration", "0"], "greater than zero");
    assert_clear_failure(&["profile", "--duration", "banana"], "banana");
    assert_clear_failure(&["profile", "--pid", "0"], "0");
    assert_clear_failure(&["profile", "--format", "xml"], "xml");
}

#[test]
fn nonexistent_pid_is_named() {
    if !privileged("nonexistent_pid_is_named") {
        return;
    }
    // A pid that existed and is gone: spawn, reap, reuse its number.
    let mut child = Command::new("true").spawn().expect("spawning true");
    let pid = child.id();
    child.wait().expect("reaping true");
    assert_clear_failure(
        &["profile", "--duration", "1s", "--pid", &pid.to_string()],
        &format!("no process with pid {pid}"),
    );
}

#[test]
fn missing_btf_is_explained() {
    if !privileged("missing_btf_is_explained") {
        return;
    }
    assert_clear_failure(
        &[
            "--btf",
            "/nonexistent/vmlinux",
            "profile",
            "--duration",
            "1s",
            "--comm",
            "x",
        ],
        "kernel BTF is not readable at /nonexistent/vmlinux",
    );
    let (out, stdout_err) =
        run(Command::new(crmprof()).args(["--btf", "/nonexistent/vmlinux", "check"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "check must fail without BTF: {stdout}{stdout_err}"
    );
    assert!(stdout.contains("CONFIG_DEBUG_INFO_BTF"), "{stdout}");
}

/// As an unprivileged user (nobody) with no capability, or with one of the two needed removed,
/// profile fails with one line naming exactly what is missing, and check names it with the fix.
#[test]
fn missing_privileges_are_explained() {
    if !privileged("missing_privileges_are_explained") {
        return;
    }
    for (held, missing) in [
        (&[][..], "CAP_BPF and CAP_PERFMON"),
        (&["bpf"][..], "CAP_PERFMON"),
        (&["perfmon"][..], "CAP_BPF"),
        (&["bpf", "sys_ptrace"][..], "CAP_PERFMON"),
    ] {
        let (out, stderr) =
            run(crmprof_as_nobody(held).args(["profile", "--duration", "1s", "--comm", "x"]));
        assert!(!out.status.success(), "holding {held:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.starts_with(&format!("crmprof: error: crmprof lacks {missing}:")),
            "holding {held:?}, the error must name {missing}: {stderr}"
        );
        assert!(stderr.contains("setcap cap_bpf,cap_perfmon+ep"), "{stderr}");

        let (out, _) = run(crmprof_as_nobody(held).arg("check"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "check must fail holding {held:?}");
        assert!(
            stdout.contains(&format!("grant {missing}: setcap cap_bpf,cap_perfmon+ep")),
            "holding {held:?}: {stdout}"
        );
    }
}

#[test]
fn check_passes_here() {
    if !privileged("check_passes_here") {
        return;
    }
    let (out, stderr) = run(Command::new(crmprof()).arg("check"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "check failed here:\n{stdout}{stderr}");
    for needle in [
        "probes.syscalls",
        "probes.process",
        "btf",
        "privileges",
        "can run here",
    ] {
        assert!(
            stdout.contains(needle),
            "check does not report {needle}:\n{stdout}"
        );
    }
}
