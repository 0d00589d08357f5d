//! The two ways of measuring: `crmprof profile` (one window, then exit) and `crmprof run` (the
//! daemon: a window every interval, appended to the data directory and summarised live).

use std::{io::Write as _, path::PathBuf, time::Duration};

use anyhow::Context as _;
use caps::Capability;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at},
};

use crate::{
    collection::{Collector, unix_now_ns},
    config::{Config, ExportConfig},
    discovery::{self, Registry, Selection},
    export::Exporters,
    probes::{Cycled, LoadOptions, Probes, Step, privileges},
    profile::Profile,
    render,
};

/// How often pending process events are applied. Fixed, so wake-ups do not follow the load.
const EVENT_DRAIN_PERIOD: Duration = Duration::from_millis(250);

/// How long a stopping daemon waits for its remote sinks to take the spooled windows.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

pub struct Options {
    pub selection: Selection,
    pub config: Config,
}

impl Options {
    fn registry(&self) -> Registry {
        Registry::new(discovery::Options {
            selection: self.selection.clone(),
            rules: self.config.compiled_rules(),
            discovery: self.config.discovery.clone(),
            max_services: self.config.max_services,
        })
    }
}

/// What discovery finds, without loading any probe (`crmprof services`).
pub fn discover(opts: &Options) -> anyhow::Result<Registry> {
    let mut registry = opts.registry();
    registry.start(&mut discovery::DryRun)?;
    Ok(registry)
}

/// Loads the probes and resolves the selection.
pub fn start(opts: &Options) -> anyhow::Result<Collector> {
    let mut registry = opts.registry();
    let mut probes = Probes::load(&LoadOptions {
        btf_path: &opts.config.btf_path,
        report_all_execs: registry.wants_all_execs(),
        report_listens: registry.wants_listens(),
        max_threads: opts.config.max_threads,
        max_services: opts.config.max_services as u32,
        syscall_sample: opts.config.syscall_sample,
        disabled: &opts.config.disable_groups,
    })?;
    for (group, status) in &probes.status {
        if let Some(error) = &status.error {
            log::warn!("probe group {group} is not running: {error}");
        }
    }
    registry.start(&mut probes)?;
    let collector = Collector::new(probes, registry)?;
    drop_privileges(&opts.selection)?;
    // Tests wait for this line: from here on every selected syscall is counted.
    log::info!("measuring {} services", collector.registry.services().len());
    Ok(collector)
}

/// Once the programs are attached, the maps open and the first `/proc` scan done, the agent
/// needs no capability to read and update its maps (the open file descriptors carry the
/// rights). It keeps CAP_SYS_PTRACE only when auto-discovery must name processes that exec
/// later by their executable; everything else goes (docs/privileges.md).
fn drop_privileges(selection: &Selection) -> anyhow::Result<()> {
    let keep: &[Capability] = match selection {
        Selection::Discover => &[Capability::CAP_SYS_PTRACE],
        Selection::Explicit { .. } => &[],
    };
    let kept = privileges::drop_all_except(keep)?;
    if kept.is_empty() {
        log::info!("dropped every capability: the probes are loaded and the maps open");
    } else {
        let names: Vec<String> = kept.iter().map(ToString::to_string).collect();
        log::info!(
            "dropped every capability but {} ({})",
            names.join(", "),
            privileges::SYS_PTRACE_USE
        );
    }
    if *selection == Selection::Discover && !kept.contains(&Capability::CAP_SYS_PTRACE) {
        log::warn!(
            "without CAP_SYS_PTRACE, auto-discovery cannot read the executable of other users' \
             processes and does not profile them; grant it (docs/privileges.md) or select \
             processes with --comm or --pid"
        );
    }
    Ok(())
}

/// Measures for `duration` and returns the profile.
pub async fn profile(opts: &Options, duration: Duration) -> anyhow::Result<Profile> {
    let mut collector = start(opts)?;
    let deadline = Instant::now() + duration;
    let mut drain = interval_at(Instant::now() + EVENT_DRAIN_PERIOD, EVENT_DRAIN_PERIOD);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            _ = drain.tick() => { collector.drain_events()?; }
            _ = interrupt.recv() => break,
        }
    }
    Ok(collector.collect()?)
}

/// Probes attached for the first part of each window only: while attached they cost every
/// call of their kind on the host.
struct DutyCycle {
    which: Cycled,
    /// How long they stay attached in each window.
    on: Duration,
    /// When they come off in this window; `None` once off.
    off_at: Option<Instant>,
}

/// The duty cycles the configuration asks for, of probes that can be cycled; each says so in
/// its group's note.
fn duty_cycles(collector: &mut Collector, config: &Config, interval: Duration) -> Vec<DutyCycle> {
    let mut cycles = Vec::new();
    for (which, share, effect) in [
        (
            Cycled::Syscalls,
            config.syscall_duty_cycle,
            "counts and errors are scaled to the window, `seen` keeps what was counted",
        ),
        (
            Cycled::Receives,
            config.socket_receive_duty_cycle,
            "received bytes are scaled to the window",
        ),
    ] {
        if share >= 1.0 || !collector.probes.cyclable(which) {
            continue;
        }
        let on = interval.mul_f64(share);
        let note = format!(
            "{} attached for the first {on:?} of every {interval:?} window ({} = {share}); \
             {effect}",
            which.what(),
            which.key()
        );
        log::info!("{note}");
        if let Some(status) = collector.probes.status.get_mut(which.group()) {
            status.note = Some(match status.note.take() {
                Some(earlier) => format!("{earlier}; {note}"),
                None => note,
            });
        }
        cycles.push(DutyCycle {
            which,
            on,
            off_at: Some(Instant::now() + on),
        });
    }
    cycles
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Waits for the interval's next tick, or forever when there is none.
async fn tick_some(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

pub struct DaemonOptions {
    pub interval: Duration,
    pub data_dir: PathBuf,
    /// Print the per-service summary to stdout every interval.
    pub live: bool,
    pub export: ExportConfig,
    /// `--bench-toggle`: the measuring probes detached and attached again in turn, each state
    /// this long (cycled probes only while their duty cycle has them on), each change logged
    /// with its wall-clock start and end (ns since the epoch) as `bench toggle: probes on|off
    /// START END` (`integration_tests::toggle_changes` reads it).
    pub bench_toggle: Option<Duration>,
}

/// Runs until SIGINT or SIGTERM; the last, partial window is exported before exiting (remote
/// sinks get it from their spool, at once or after the next start).
pub async fn daemon(opts: &Options, daemon: &DaemonOptions) -> anyhow::Result<()> {
    let mut sinks = Exporters::start(&daemon.export, &daemon.data_dir)
        .await
        .context("starting the exporters")?;
    let mut collector = start(opts)?;
    log::info!(
        "profiling {} services; a profile every {:?} into {}",
        collector.registry.services().len(),
        daemon.interval,
        sinks.jsonl_path().display()
    );
    let mut window = interval_at(Instant::now() + daemon.interval, daemon.interval);
    window.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut cycles = duty_cycles(&mut collector, &opts.config, daemon.interval);
    let mut toggle = daemon.bench_toggle.map(|period| {
        let mut t = interval_at(Instant::now() + period, period);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    });
    let mut paused = false;
    let mut drain = interval_at(Instant::now() + EVENT_DRAIN_PERIOD, EVENT_DRAIN_PERIOD);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    loop {
        let last = tokio::select! {
            _ = window.tick() => false,
            _ = drain.tick() => { collector.drain_events()?; continue; }
            () = sleep_until_some(cycles.iter().filter_map(|c| c.off_at).min()) => {
                let now = Instant::now();
                for cycle in cycles.iter_mut().filter(|c| c.off_at.is_some_and(|at| at <= now)) {
                    cycle.off_at = None;
                    match collector.probes.cycle_off(cycle.which) {
                        Ok(step) => warn_if_slow(step),
                        Err(e) => log::warn!("{e}; left attached"),
                    }
                }
                continue;
            }
            () = tick_some(toggle.as_mut()) => {
                // Wall-clock ns: what load generators' logs are stamped with.
                let start = unix_now_ns();
                let slowest = if paused {
                    let off: Vec<Cycled> =
                        cycles.iter().filter(|c| c.off_at.is_none()).map(|c| c.which).collect();
                    collector.probes.resume(&off)?
                } else {
                    collector.probes.pause()?
                };
                paused = !paused;
                let state = if paused { "off" } else { "on" };
                let slowest = slowest.map(|s| format!(" slowest {}", s.words())).unwrap_or_default();
                log::info!("bench toggle: probes {state} {start} {}{slowest}", unix_now_ns());
                continue;
            }
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        let profile = collector.collect()?;
        // The next window starts with every cycled probe attached (while the bench toggle
        // has every probe off, at the toggle's next resume).
        for cycle in cycles.iter_mut() {
            if last || !collector.probes.cyclable(cycle.which) {
                continue;
            }
            if paused {
                cycle.off_at = Some(Instant::now() + cycle.on);
                continue;
            }
            match collector.probes.cycle_on(cycle.which) {
                Ok(step) => {
                    warn_if_slow(step);
                    cycle.off_at = Some(Instant::now() + cycle.on);
                }
                Err(e) => log::warn!("{e}; left detached"),
            }
        }
        // Local file and spools only: delivery runs on the sinks' own tasks.
        sinks.window(&profile);
        if daemon.live {
            print!("{}", render::summary(&profile, 20));
            let _ = std::io::stdout().flush();
        }
        if last {
            sinks.flush(SHUTDOWN_FLUSH).await;
            log::info!(
                "stopping; the last window is in {}",
                sinks.jsonl_path().display()
            );
            return Ok(());
        }
    }
}

/// A probe change that keeps the agent's loop this long is worth a line: windows and exports
/// wait for it.
const SLOW_STEP: Duration = Duration::from_secs(1);

/// Says so when one program's attach or detach took the kernel [`SLOW_STEP`] or longer.
fn warn_if_slow(step: Option<Step>) {
    if let Some(step) = step.filter(|s| s.took >= SLOW_STEP) {
        log::warn!("{step}: the kernel was slow to change the probes; this window ends late");
    }
}
