//! `cargo xtask`: what cargo alone cannot do — toolchain setup, running the agent as root,
//! the privileged test suite, installing and packaging the agent.

mod bench;
mod deploy;
mod kubernetes;
mod setup;
mod tasks;
mod util;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "crmprof's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building needs (rust-src, bpf-linker) and mount tracefs; idempotent.
    Setup,
    /// Build the release binary (TARGET_DIR/release/crmprof; CARGO_TARGET_DIR is honoured).
    Build,
    /// Build and run `crmprof run` on this host (arguments after `--` go to crmprof run).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure crmprof's overhead against the empty-probe floor and bpftrace; writes
    /// BENCHMARKS.md. With --quick (under 3 minutes), fails when the per-syscall ratio exceeds
    /// its target by more than the machine's noise explains.
    Bench {
        #[arg(long)]
        quick: bool,
        /// Minutes of soak in the full bench (memory and CPU over time); 0 skips it.
        #[arg(long, default_value_t = bench::DEFAULT_SOAK_MINUTES)]
        soak_minutes: u64,
    },
    /// Formatting, lints, unit tests, the deployment files' checks, then the privileged
    /// integration tests one at a time.
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
    /// Build the release binary and install it as a system service: binary, systemd unit,
    /// docs, a commented /etc/crmprof/crmprof.toml (an existing one is kept), and
    /// /var/lib/crmprof (0700, owned by the system user crmprof, created if missing).
    Install {
        #[command(flatten)]
        target: InstallTarget,
        /// Install this binary instead of building one.
        #[arg(long, value_name = "FILE")]
        bin: Option<PathBuf>,
    },
    /// Remove what install installed; the configuration and the data stay unless --purge.
    Uninstall {
        #[command(flatten)]
        target: InstallTarget,
        /// Also remove /etc/crmprof, /var/lib/crmprof and (without --destdir) the user crmprof.
        #[arg(long)]
        purge: bool,
    },
    /// Build a .deb with the same files (prefix /usr) and maintainer scripts that create the
    /// service user.
    Package {
        /// Directory for the .deb [default: TARGET_DIR/debian].
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Package this binary instead of building one.
        #[arg(long, value_name = "FILE")]
        bin: Option<PathBuf>,
    },
    /// Validate deploy/kubernetes against the Kubernetes API schemas and the privilege policy
    /// (installs kubernetes-validate from PyPI into TARGET_DIR/venv on first use).
    LintKubernetes,
}

#[derive(clap::Args)]
struct InstallTarget {
    /// Installation prefix of the binary, the unit and the docs.
    #[arg(long, value_name = "DIR", default_value = "/usr/local")]
    prefix: PathBuf,
    /// Stage the files under DIR instead of the running system; no user is created and no
    /// owner is changed.
    #[arg(long, value_name = "DIR")]
    destdir: Option<PathBuf>,
}

impl InstallTarget {
    fn layout(&self) -> anyhow::Result<deploy::Layout> {
        deploy::Layout::new(&self.prefix, self.destdir.as_deref())
    }
}

/// Setup is needed only when building.
fn build_setup(bin: Option<&Path>) -> anyhow::Result<()> {
    if bin.is_none() {
        setup::run()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Build => setup::run().and_then(|_| tasks::build()),
        Task::Run { args } => setup::run().and_then(|_| tasks::run(&args)),
        Task::Bench {
            quick,
            soak_minutes,
        } => setup::run().and_then(|_| {
            bench::run(&bench::Options {
                quick,
                soak_minutes,
            })
        }),
        Task::Test { filter } => setup::run().and_then(|_| tasks::test(filter.as_deref())),
        Task::Install { target, bin } => build_setup(bin.as_deref()).and_then(|()| {
            deploy::install(&deploy::InstallOptions {
                layout: target.layout()?,
                binary: bin.as_deref(),
            })
        }),
        Task::Uninstall { target, purge } => target
            .layout()
            .and_then(|layout| deploy::uninstall(&deploy::UninstallOptions { layout, purge })),
        Task::Package { out_dir, bin } => build_setup(bin.as_deref()).and_then(|()| {
            deploy::package(&deploy::PackageOptions {
                out_dir: out_dir.as_deref(),
                binary: bin.as_deref(),
            })
            .map(|_| ())
        }),
        Task::LintKubernetes => kubernetes::lint(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
