//! Bad input and missing privileges: one clear line, a non-zero exit, never a panic.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::process::{Command, Output};

use integration_tests::{crmprof, privileged};

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

/// As an unprivileged user (nobody, no capabilities), profile and check name what is missing.
#[test]
fn missing_privileges_are_explained() {
    if !privileged("missing_privileges_are_explained") {
        return;
    }
    let as_nobody = |args: &[&str]| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(crmprof())
        .args(args);
        run(&mut cmd)
    };
    let (out, stderr) = as_nobody(&["profile", "--duration", "1s", "--comm", "x"]);
    assert!(!out.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("CAP_BPF and CAP_PERFMON"), "{stderr}");
    let (out, _) = as_nobody(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "check must fail unprivileged");
    assert!(stdout.contains("setcap cap_bpf,cap_perfmon+ep"), "{stdout}");
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
