//! `cargo xtask`: what cargo alone cannot do — toolchain setup, running the agent as root,
//! the privileged test suite.

mod setup;
mod tasks;
mod util;

use std::process::ExitCode;

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
    /// Formatting, lints, unit tests, then the privileged integration tests one at a time.
    Test {
        /// Only run integration tests whose name contains this.
        #[arg(long)]
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run().map(|_| ()),
        Task::Build => setup::run().and_then(|_| tasks::build()),
        Task::Run { args } => setup::run().and_then(|_| tasks::run(&args)),
        Task::Test { filter } => setup::run().and_then(|_| tasks::test(filter.as_deref())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
