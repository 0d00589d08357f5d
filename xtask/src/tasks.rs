//! build, run and test.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{is_root, release_binary, step, target_dir};

pub fn build() -> anyhow::Result<()> {
    step(
        "build: cargo build --release (kernel programs included, via agent/build.rs)",
        Command::new("cargo").args(["build", "--release", "--package", "crmprof"]),
    )?;
    eprintln!("    binary: {}", release_binary()?.display());
    Ok(())
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    build()?;
    if !is_root() {
        eprintln!(
            "    note: not root; crmprof will say which capability is missing (rerun with sudo -E)"
        );
    }
    let data_dir = target_dir()?.join("crmprof-data");
    let binary = release_binary()?;
    let mut cmd = Command::new(&binary);
    cmd.arg("run");
    if !args
        .iter()
        .any(|a| a == "--data-dir" || a.starts_with("--data-dir="))
    {
        cmd.arg("--data-dir").arg(&data_dir);
    }
    cmd.args(args);
    eprintln!("==> run: {cmd:?} (Ctrl-C to stop)");
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", binary.display()))?;
    if !status.success() {
        bail!("crmprof run exited with {status}");
    }
    Ok(())
}

pub fn test(filter: Option<&str>) -> anyhow::Result<()> {
    step(
        "test: rustfmt (nightly, for the workspace's import grouping)",
        Command::new("cargo").args(["+nightly", "fmt", "--all", "--check"]),
    )?;
    step(
        "test: clippy on the userspace crates",
        Command::new("cargo").args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--exclude",
            "agent-ebpf",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "test: clippy on the kernel programs (nightly, BPF target)",
        Command::new("cargo").args([
            "+nightly",
            "clippy",
            "--package",
            "agent-ebpf",
            "--bins",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step(
        "test: unit tests",
        Command::new("cargo").args([
            "test",
            "--workspace",
            "--exclude",
            "agent-ebpf",
            "--exclude",
            "integration-tests",
        ]),
    )?;
    build()?;
    crate::kubernetes::lint()?;
    if !is_root() {
        eprintln!(
            "    note: not root — the privileged integration tests will skip, each saying why"
        );
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["test", "--release", "--package", "integration-tests", "--"])
        .args(filter)
        .args(["--test-threads=1", "--nocapture"])
        .env("CRMPROF_BIN", release_binary()?)
        // The install, uninstall and package tests run this xtask binary (tests/tests/install.rs):
        // a nested `cargo xtask` would wait for the build lock this cargo test holds.
        .env(
            "CRMPROF_XTASK",
            std::env::current_exe().context("finding the xtask binary")?,
        );
    step(
        "test: privileged integration tests, one at a time",
        &mut cmd,
    )
}
