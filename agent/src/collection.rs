//! Collection: once per window, read the kernel's cumulative maps, subtract the previous read,
//! and turn the difference into a [`Profile`]. Between windows, drain the (rare) process events.

use std::{
    collections::{BTreeMap, HashMap},
    time::{SystemTime, UNIX_EPOCH},
};

use agent_ebpf::{Counter, ProcEvent};
use aya::maps::{MapData, RingBuf};

use crate::{
    discovery::Registry,
    error::ProbeError,
    histogram,
    names::{errno_label, syscall_name},
    probes::{Probes, counter_name, is_loss, syscalls},
    profile::{
        Agent, ErrorProfile, Host, ProbeReport, Profile, SCHEMA, ServiceProfile, SyscallProfile,
        Window,
    },
};

pub struct Collector {
    pub probes: Probes,
    pub registry: Registry,
    events: RingBuf<MapData>,
    host: Host,
    previous: syscalls::Snapshot,
    previous_counters: BTreeMap<&'static str, u64>,
    window_start_ns: u64,
}

impl Collector {
    /// Takes over loaded probes and a started registry; the first window starts now.
    pub fn new(mut probes: Probes, registry: Registry) -> Result<Self, ProbeError> {
        let events = probes.take_proc_events()?;
        let previous = syscalls::read(&probes)?;
        let previous_counters = probes.counters()?;
        let mut collector = Self {
            probes,
            registry,
            events,
            host: Host::current(),
            previous,
            previous_counters,
            window_start_ns: unix_now_ns(),
        };
        collector.drain_events()?;
        collector.registry.next_window();
        Ok(collector)
    }

    /// Applies every pending process event. Cheap; called a few times a second whatever the
    /// event rate, so userspace wake-ups do not follow the workload.
    pub fn drain_events(&mut self) -> Result<usize, ProbeError> {
        let mut n = 0;
        while let Some(item) = self.events.next() {
            if item.len() < size_of::<ProcEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `ProcEvent` (checked length); read_unaligned
            // makes no alignment assumption about the ring buffer's bytes.
            let event: ProcEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            self.registry.on_event(&event, &mut self.probes)?;
            n += 1;
        }
        Ok(n)
    }

    /// Closes the current window and returns its profile; the next window starts now.
    pub fn collect(&mut self) -> Result<Profile, ProbeError> {
        self.drain_events()?;
        let now = syscalls::read(&self.probes)?;
        let counters = self.probes.counters()?;
        let end_ns = unix_now_ns();

        let mut dropped = BTreeMap::new();
        let mut tracking = BTreeMap::new();
        for counter in Counter::ALL {
            let name = counter_name(counter);
            let delta = counters.get(name).copied().unwrap_or(0)
                - self.previous_counters.get(name).copied().unwrap_or(0);
            if is_loss(counter) {
                dropped.insert(name.to_owned(), delta);
            } else {
                tracking.insert(name.to_owned(), delta);
            }
        }
        dropped.insert(
            "services_over_limit".to_owned(),
            self.registry.services_over_limit,
        );

        let services = self.service_profiles(&now);
        let profile = Profile {
            schema: SCHEMA.to_owned(),
            host: self.host.clone(),
            window: Window {
                start_unix_ns: self.window_start_ns,
                end_unix_ns: end_ns,
                duration_ns: end_ns.saturating_sub(self.window_start_ns),
            },
            agent: Agent {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                probes: self
                    .probes
                    .status
                    .iter()
                    .map(|(name, s)| ((*name).to_owned(), ProbeReport::from(s)))
                    .collect(),
                dropped,
                tracking,
            },
            services,
        };
        self.previous = now;
        self.previous_counters = counters;
        self.window_start_ns = end_ns;
        self.registry.next_window();
        Ok(profile)
    }

    fn service_profiles(&self, now: &syscalls::Snapshot) -> Vec<ServiceProfile> {
        let mut by_service: HashMap<u32, Vec<SyscallProfile>> = HashMap::new();
        for (key, totals) in &now.stats {
            let before = self.previous.stats.get(key);
            let Some(delta) = delta(totals, before) else {
                continue;
            };
            by_service
                .entry(key.service)
                .or_default()
                .push(syscall_profile(key.nr, &delta, before));
        }
        let mut errors: HashMap<u32, Vec<ErrorProfile>> = HashMap::new();
        for (key, &count) in &now.errors {
            let count = count
                - self
                    .previous
                    .errors
                    .get(key)
                    .copied()
                    .unwrap_or(0)
                    .min(count);
            if count == 0 {
                continue;
            }
            errors.entry(key.service).or_default().push(ErrorProfile {
                syscall: syscall_name(key.nr),
                errno: errno_label(key.errno),
                count,
            });
        }
        self.registry
            .services()
            .iter()
            .map(|service| {
                let id = u32::from(service.id);
                let mut syscalls = by_service.remove(&id).unwrap_or_default();
                syscalls.sort_by(|a, b| b.total_ns.cmp(&a.total_ns).then(a.nr.cmp(&b.nr)));
                let mut errors = errors.remove(&id).unwrap_or_default();
                errors.sort_by(|a, b| {
                    b.count
                        .cmp(&a.count)
                        .then_with(|| a.syscall.cmp(&b.syscall))
                });
                ServiceProfile {
                    name: service.name.clone(),
                    pids: service.window.iter().copied().collect(),
                    syscalls,
                    errors,
                }
            })
            .collect()
    }
}

/// What happened between two cumulative reads; `None` when nothing did.
fn delta(now: &syscalls::Totals, before: Option<&syscalls::Totals>) -> Option<syscalls::Totals> {
    let zero = syscalls::Totals::default();
    let before = before.unwrap_or(&zero);
    let count = now.count.saturating_sub(before.count);
    if count == 0 {
        return None;
    }
    Some(syscalls::Totals {
        count,
        errors: now.errors.saturating_sub(before.errors),
        total_ns: now.total_ns.saturating_sub(before.total_ns),
        max_ns: now.max_ns,
        buckets: now
            .buckets
            .iter()
            .zip(&before.buckets)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect(),
    })
}

fn syscall_profile(
    nr: u32,
    delta: &syscalls::Totals,
    before: Option<&syscalls::Totals>,
) -> SyscallProfile {
    // The kernel keeps one cumulative maximum. When it grew in this window it is this window's
    // exact maximum; otherwise the window's maximum is bounded by its highest bucket.
    let grew = before.is_none_or(|b| delta.max_ns > b.max_ns);
    let max_ns = if grew {
        delta.max_ns
    } else {
        histogram::highest_upper_bound(&delta.buckets)
            .unwrap_or(0)
            .min(delta.max_ns)
    };
    let q = |q| histogram::quantile(&delta.buckets, q, max_ns).unwrap_or(0);
    SyscallProfile {
        name: syscall_name(nr),
        nr,
        count: delta.count,
        errors: delta.errors,
        total_ns: delta.total_ns,
        p50_ns: q(0.50),
        p90_ns: q(0.90),
        p99_ns: q(0.99),
        max_ns,
        buckets: histogram::nonzero_buckets(&delta.buckets),
    }
}

pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
