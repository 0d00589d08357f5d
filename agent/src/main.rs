//! The `crmprof` command line: parses arguments and calls into the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use crmprof::{
    check,
    config::Config,
    discovery::Selection,
    probes::error_chain,
    render,
    run::{self, DaemonOptions, Options},
};

/// Host-level eBPF profiler for CRM server stacks: where each service's time goes.
#[derive(Parser)]
#[command(name = "crmprof", version, propagate_version = true)]
struct Cli {
    /// Kernel BTF to read struct layouts from.
    #[arg(long, global = true, env = "CRMPROF_BTF", value_name = "PATH")]
    btf: Option<PathBuf>,
    /// More log output (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure for a while, print one profile document, exit.
    Profile {
        /// How long to measure ("10s", "1m").
        #[arg(long, short, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Profile the processes whose comm equals NAME (one service per NAME), including those
        /// that start during the window.
        #[arg(long, value_name = "NAME")]
        comm: Vec<String>,
        /// Profile this process, its threads and its children (one service per PID).
        #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
        pid: Vec<u32>,
        #[arg(long, short, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Configuration file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Run the agent: a profile every interval, appended to the data directory, with a live
    /// per-service summary.
    Run {
        /// Configuration file (TOML); without it the embedded defaults apply.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override the configuration's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Override the configuration's interval ("10s").
        #[arg(long, value_parser = parse_duration)]
        interval: Option<Duration>,
        /// No live summary on stdout.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Report whether crmprof can run here and what to fix if not.
    Check {
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Configuration file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file without running anything.
    Check { file: PathBuf },
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Text,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e}; write a duration such as \"10s\" or \"1m\""))?;
    if d.is_zero() {
        return Err("the duration must be greater than zero".to_owned());
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("crmprof: error: {}", error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Profile {
            duration,
            comm,
            pid,
            format,
            config,
        } => {
            let config = load_config(config.as_ref())?;
            let selection = if comm.is_empty() && pid.is_empty() {
                Selection::Auto
            } else {
                Selection::Explicit {
                    comms: comm,
                    pids: pid,
                }
            };
            let opts = Options {
                selection,
                btf_path: cli.btf.unwrap_or(config.btf_path),
                max_services: config.max_services,
            };
            let profile = runtime.block_on(run::profile(&opts, duration))?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&profile).context("encoding the profile")?
                ),
                Format::Text => print!("{}", render::text(&profile, 10)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            data_dir,
            interval,
            quiet,
        } => {
            let config = load_config(config.as_ref())?;
            let opts = Options {
                selection: Selection::Auto,
                btf_path: cli.btf.unwrap_or(config.btf_path),
                max_services: config.max_services,
            };
            let daemon = DaemonOptions {
                interval: interval.unwrap_or(config.interval),
                data_dir: data_dir.unwrap_or(config.data_dir),
                live: !quiet,
                export: config.export,
            };
            runtime.block_on(run::daemon(&opts, &daemon))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { format } => {
            let btf = cli.btf.unwrap_or_else(|| Config::default().btf_path);
            let report = check::run(&btf);
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("encoding the report")?
                ),
                Format::Text => print!("{}", check::text(&report)),
            }
            Ok(if report.can_run {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
