//! The `crmprof` command line: parses arguments and calls into the library.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use crmprof::{
    check,
    collection::unix_now_ns,
    config::Config,
    discovery::Selection,
    export::{check_service, report},
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
        /// For `cargo xtask bench` only: detach every measuring probe and attach it again in
        /// turn, each state this long, logging when (cycled probes attach only while their
        /// duty cycle has them on).
        #[arg(long, value_parser = parse_duration, hide = true)]
        bench_toggle: Option<Duration>,
    },
    /// List the services discovery finds and which rule matched each (no probes loaded).
    Services {
        /// Configuration file (TOML) with `[[service]]` rules and `[discovery]` settings.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Summarise the profiles in the data directory for a person.
    Report {
        /// How far back to look ("1h", "30m").
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        since: Duration,
        /// Only this service.
        #[arg(long, value_name = "NAME")]
        service: Option<String>,
        /// Rows per table.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// Data directory (default: the configuration's).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Nagios/Icinga/Zabbix plugin: one status line with perfdata about a service; exits
    /// 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    CheckService {
        #[arg(long, value_name = "NAME")]
        service: String,
        /// Only this syscall (default: all of the service's syscalls).
        #[arg(long, value_name = "NAME")]
        syscall: Option<String>,
        /// What --warn and --crit apply to: p99 (ms), error-ratio (%), calls (per second).
        #[arg(long, value_enum, default_value_t = CheckMetric::P99)]
        metric: CheckMetric,
        /// Warning range (plugin syntax: 10, 10:, ~:10, 10:20, @10:20).
        #[arg(long, short, value_parser = check_service::Range::parse, allow_hyphen_values = true)]
        warn: Option<check_service::Range>,
        /// Critical range.
        #[arg(long, short, value_parser = check_service::Range::parse, allow_hyphen_values = true)]
        crit: Option<check_service::Range>,
        /// Period to evaluate: the windows that ended within it ("1m").
        #[arg(long, default_value = "1m", value_parser = parse_duration)]
        since: Duration,
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        #[arg(long, short = 'f', value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Report whether crmprof can run here and what to fix if not.
    Check {
        #[arg(long, short, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Attach only empty programs on the syscall tracepoints until interrupted: the cost floor
    /// for `cargo xtask bench`.
    #[command(hide = true)]
    BenchFloor {
        /// Attach an empty program on sched_switch only: the scheduler probe's floor.
        #[arg(long)]
        sched: bool,
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
enum CheckMetric {
    P99,
    ErrorRatio,
    Calls,
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
    // A monitoring plugin answers UNKNOWN (3), never a generic failure, whatever goes wrong.
    if let Command::CheckService { .. } = cli.command {
        return check_service_main(cli.command);
    }
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

fn check_service_main(command: Command) -> ExitCode {
    let Command::CheckService {
        service,
        syscall,
        metric,
        warn,
        crit,
        since,
        data_dir,
        config,
    } = command
    else {
        return ExitCode::from(3);
    };
    let status = match load_config(config.as_ref()) {
        Err(e) => check_service::Status::unknown(&format!("{e:#}")),
        Ok(cfg) => {
            let dir = data_dir.unwrap_or(cfg.data_dir);
            let since_ns = unix_now_ns().saturating_sub(since.as_nanos() as u64);
            match report::load(&dir, since_ns) {
                Err(e) => check_service::Status::unknown(&e.to_string()),
                Ok((profiles, _)) => {
                    let summary = report::summarise(&profiles, Some(&service));
                    let metric = match metric {
                        CheckMetric::P99 => check_service::Metric::P99,
                        CheckMetric::ErrorRatio => check_service::Metric::ErrorRatio,
                        CheckMetric::Calls => check_service::Metric::Calls,
                    };
                    check_service::evaluate(
                        &summary,
                        &service,
                        syscall.as_deref(),
                        metric,
                        warn,
                        crit,
                    )
                }
            }
        }
    };
    println!("{}", status.line);
    ExitCode::from(status.code)
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
            let mut config = load_config(config.as_ref())?;
            if let Some(btf) = cli.btf {
                config.btf_path = btf;
            }
            let selection = if comm.is_empty() && pid.is_empty() {
                Selection::Discover
            } else {
                Selection::Explicit {
                    comms: comm,
                    pids: pid,
                }
            };
            let opts = Options { selection, config };
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
            bench_toggle,
        } => {
            let mut config = load_config(config.as_ref())?;
            if let Some(btf) = cli.btf {
                config.btf_path = btf;
            }
            let daemon = DaemonOptions {
                interval: interval.unwrap_or(config.interval),
                data_dir: data_dir.unwrap_or_else(|| config.data_dir.clone()),
                live: !quiet,
                export: config.export.clone(),
                bench_toggle,
            };
            let opts = Options {
                selection: Selection::Discover,
                config,
            };
            runtime.block_on(run::daemon(&opts, &daemon))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Services { config, format } => {
            let opts = Options {
                selection: Selection::Discover,
                config: load_config(config.as_ref())?,
            };
            let registry = run::discover(&opts)?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&render::services_json(&registry))
                        .context("encoding the services")?
                ),
                Format::Text => print!("{}", render::services_text(&registry)),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            since,
            service,
            top,
            data_dir,
            config,
        } => {
            let dir = data_dir.unwrap_or(load_config(config.as_ref())?.data_dir);
            let since_ns = unix_now_ns().saturating_sub(since.as_nanos() as u64);
            let (profiles, bad) = report::load(&dir, since_ns)?;
            if profiles.is_empty() {
                anyhow::bail!(
                    "no window in {} ended in the last {}; try a longer --since",
                    dir.display(),
                    humantime::format_duration(since)
                );
            }
            let summary = report::summarise(&profiles, service.as_deref());
            if let Some(name) = &service
                && summary.services.is_empty()
            {
                anyhow::bail!(
                    "no service named {name:?} in the last {}; `crmprof report` lists them",
                    humantime::format_duration(since)
                );
            }
            print!("{}", report::text(&summary, top));
            if bad > 0 {
                eprintln!(
                    "note: {bad} lines in {} are not profile documents",
                    dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckService { .. } => Ok(ExitCode::from(3)),
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
        Command::BenchFloor { sched } => {
            let _floor = crmprof::probes::load_floor(sched)?;
            eprintln!("crmprof: measuring the floor (empty programs attached); Ctrl-C to stop");
            runtime
                .block_on(async {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
                    tokio::select! {
                        r = tokio::signal::ctrl_c() => r,
                        _ = term.recv() => Ok(()),
                    }
                })
                .context("waiting for a signal")?;
            Ok(ExitCode::SUCCESS)
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
