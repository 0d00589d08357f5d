//! `cargo xtask setup`: the toolchain the kernel programs need, installed when missing.
//!
//! - the nightly toolchain with rust-src (aya-build builds `core` for the BPF target with
//!   `-Z build-std`);
//! - bpf-linker, built from crates.io against the nightly's own libLLVM (no LLVM package
//!   needed, and the linker's LLVM always matches the compiler's bitcode);
//! - tracefs mounted, when root (classic tracepoints and bpftrace need it; crmprof's raw
//!   tracepoints do not).

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

use crate::util::{is_root, output, step};

const BPF_LINKER_VERSION: &str = "0.13.0";

pub struct Toolchain {
    pub sysroot: PathBuf,
}

pub fn run() -> anyhow::Result<Toolchain> {
    eprintln!("==> setup: checking the toolchain");
    let toolchain = nightly()?;
    rust_src(&toolchain)?;
    lint_components(&toolchain)?;
    bpf_linker(&toolchain)?;
    tracefs();
    Ok(toolchain)
}

fn nightly() -> anyhow::Result<Toolchain> {
    if output(Command::new("rustup").args(["--version"])).is_none() {
        bail!(
            "rustup is not installed; install it from rustup.rs, then run cargo xtask setup again"
        );
    }
    let listed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if listed.lines().any(|l| l.starts_with("nightly")) {
        eprintln!("    nightly toolchain: found");
    } else {
        step(
            "setup: installing the nightly toolchain (minimal, with rust-src)",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src,rustfmt,clippy",
            ]),
        )
        .context(
            "no nightly toolchain and it could not be installed; the kernel programs need \
             nightly (or stable with RUSTC_BOOTSTRAP=1 and rust-src)",
        )?;
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .ok_or_else(|| anyhow!("rustc +nightly does not run"))?;
    Ok(Toolchain {
        sysroot: PathBuf::from(sysroot.trim()),
    })
}

fn rust_src(toolchain: &Toolchain) -> anyhow::Result<()> {
    let src = toolchain.sysroot.join("lib/rustlib/src/rust/library/core");
    if src.exists() {
        eprintln!("    rust-src (nightly): found");
        return Ok(());
    }
    step(
        "setup: installing rust-src for nightly",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )?;
    Ok(())
}

/// rustfmt and clippy on nightly: the workspace's rustfmt options and the eBPF crate's lints
/// need them.
fn lint_components(toolchain: &Toolchain) -> anyhow::Result<()> {
    for (component, binary) in [("rustfmt", "rustfmt"), ("clippy", "clippy-driver")] {
        if toolchain.sysroot.join("bin").join(binary).exists() {
            continue;
        }
        step(
            &format!("setup: installing {component} for nightly"),
            Command::new("rustup").args(["component", "add", component, "--toolchain", "nightly"]),
        )?;
    }
    Ok(())
}

/// The nightly's LLVM: major version (from `rustc -vV`) and its shared library in the sysroot.
fn nightly_llvm(toolchain: &Toolchain) -> anyhow::Result<(String, PathBuf)> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"]))
        .ok_or_else(|| anyhow!("rustc +nightly -vV failed"))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .ok_or_else(|| anyhow!("rustc +nightly -vV names no LLVM version"))?;
    let major = version
        .split('.')
        .next()
        .ok_or_else(|| anyhow!("unparsable LLVM version {version}"))?
        .to_owned();
    let libdir = toolchain.sysroot.join("lib");
    // The real library is `libLLVM.so.<ver>-rust-<rustc-ver>`; `libLLVM-<major>-rust-*.so` is a
    // linker script pointing at it.
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .ok_or_else(|| {
            anyhow!(
                "no libLLVM.so.* in {}; this toolchain does not ship its LLVM as a shared library",
                libdir.display()
            )
        })?;
    Ok((major, lib))
}

fn bpf_linker_works() -> bool {
    output(Command::new("bpf-linker").arg("--version")).is_some()
}

fn bpf_linker(toolchain: &Toolchain) -> anyhow::Result<()> {
    let (major, lib) = nightly_llvm(toolchain)?;
    if bpf_linker_works() {
        eprintln!("    bpf-linker: found (nightly LLVM {major})");
        return Ok(());
    }
    // A stable prefix: the linker's rpath points here, so it must outlive this run.
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let prefix = home.join(".local/share/crmprof/llvm-prefix");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    let soname = lib
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", lib.display()))?;
    for link in [prefix_lib.join("libLLVM.so"), prefix_lib.join(soname)] {
        replace_symlink(&lib, &link)?;
    }
    eprintln!(
        "    bpf-linker: missing; building {BPF_LINKER_VERSION} against {} (LLVM {major}, about a minute)",
        lib.display()
    );
    step(
        "setup: cargo install bpf-linker",
        Command::new("cargo")
            .args([
                "+nightly",
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but does not run; is ~/.cargo/bin on PATH? (LLVM prefix {})",
            prefix.display()
        );
    }
    Ok(())
}

fn replace_symlink(target: &Path, link: &Path) -> anyhow::Result<()> {
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

fn tracefs() {
    if Path::new("/sys/kernel/tracing/events").exists() {
        eprintln!("    tracefs: mounted");
        return;
    }
    if !is_root() {
        eprintln!(
            "    tracefs: not mounted, and mounting needs root (crmprof itself does not need it)"
        );
        return;
    }
    let mounted = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .is_ok_and(|s| s.success());
    eprintln!(
        "    tracefs: {}",
        if mounted {
            "mounted at /sys/kernel/tracing"
        } else {
            "could not be mounted (not needed by crmprof)"
        }
    );
}
