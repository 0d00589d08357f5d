//! The two ways of measuring: `crmprof profile` (one window, then exit) and `crmprof run` (the
//! daemon: a window every interval, appended to the data directory and summarised live).

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use caps::Capability;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at},
};

use crate::{
    collection::Collector,
    discovery::{Registry, Selection},
    probes::{LoadOptions, Probes, privileges},
    profile::Profile,
    render,
};

/// How often pending process events are applied. Fixed, so wake-ups do not follow the load.
const EVENT_DRAIN_PERIOD: Duration = Duration::from_millis(250);

pub struct Options {
    pub selection: Selection,
    pub btf_path: PathBuf,
    pub max_services: usize,
}

/// Loads the probes and resolves the selection.
pub fn start(opts: &Options) -> anyhow::Result<Collector> {
    let mut probes = Probes::load(&LoadOptions {
        btf_path: &opts.btf_path,
        report_all_execs: opts.selection == Selection::Auto,
    })?;
    for (group, status) in &probes.status {
        if let Some(error) = &status.error {
            log::warn!("probe group {group} is not running: {error}");
        }
    }
    let mut registry = Registry::new(opts.selection.clone(), opts.max_services);
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
        Selection::Auto => &[Capability::CAP_SYS_PTRACE],
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
    if *selection == Selection::Auto && !kept.contains(&Capability::CAP_SYS_PTRACE) {
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

pub struct DaemonOptions {
    pub interval: Duration,
    pub data_dir: PathBuf,
    /// Print the per-service summary to stdout every interval.
    pub live: bool,
}

/// Runs until SIGINT or SIGTERM; the last, partial window is written before exiting.
pub async fn daemon(opts: &Options, daemon: &DaemonOptions) -> anyhow::Result<()> {
    let mut sink = JsonLines::open(&daemon.data_dir)?;
    let mut collector = start(opts)?;
    log::info!(
        "profiling {} services; a profile every {:?} into {}",
        collector.registry.services().len(),
        daemon.interval,
        sink.path.display()
    );
    let mut window = interval_at(Instant::now() + daemon.interval, daemon.interval);
    window.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut drain = interval_at(Instant::now() + EVENT_DRAIN_PERIOD, EVENT_DRAIN_PERIOD);
    drain.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    loop {
        let last = tokio::select! {
            _ = window.tick() => false,
            _ = drain.tick() => { collector.drain_events()?; continue; }
            _ = interrupt.recv() => true,
            _ = terminate.recv() => true,
        };
        let profile = collector.collect()?;
        sink.append(&profile)?;
        if daemon.live {
            print!("{}", render::summary(&profile, 20));
            let _ = std::io::stdout().flush();
        }
        if last {
            log::info!("stopping; the last window is in {}", sink.path.display());
            return Ok(());
        }
    }
}

/// Profiles appended to `DATA_DIR/profiles.jsonl`, one document per line. The directory is
/// created 0700 and the file 0600: profiles name processes and peers. The file is opened once,
/// before the agent drops its capabilities, so a data directory owned by another user (root
/// running the agent on the service user's directory) stays writable afterwards.
struct JsonLines {
    path: PathBuf,
    file: File,
}

impl JsonLines {
    fn open(dir: &Path) -> anyhow::Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let path = dir.join("profiles.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { path, file })
    }

    fn append(&mut self, profile: &Profile) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(profile).context("encoding a profile")?;
        line.push(b'\n');
        // One write of the whole line in append mode: a crash leaves whole lines only.
        self.file
            .write_all(&line)
            .with_context(|| format!("appending to {}", self.path.display()))
    }
}
