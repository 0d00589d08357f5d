//! Collection: once per window, read the kernel's cumulative maps, subtract the previous read,
//! and turn the difference into a [`Profile`]. Between windows, drain the (rare) process events.

use std::{
    collections::{BTreeMap, HashMap},
    time::{SystemTime, UNIX_EPOCH},
};

use agent_ebpf::{Counter, DiskKey, ProcEvent, offcpu};
use aya::maps::{MapData, RingBuf};

use crate::{
    cgroup,
    discovery::Registry,
    error::ProbeError,
    histogram, host,
    names::{errno_label, syscall_name},
    probes::{Cycled, Probes, counter_name, disk, is_loss, net, sched, syscalls},
    profile::{
        Agent, CpuProfile, DeviceProfile, DiskProfile, ErrorProfile, Host, NetworkProfile,
        OffCpuProfile, PeerProfile, ProbeReport, Profile, SCHEMA, ServiceProfile, SyscallProfile,
        Window,
    },
    verdict,
};

/// Cumulative kernel figures at one instant.
struct Reading {
    syscalls: syscalls::Snapshot,
    sched: HashMap<u32, sched::Totals>,
    net: net::Snapshot,
    disk: HashMap<DiskKey, disk::Totals>,
    counters: BTreeMap<&'static str, u64>,
    host: host::Sample,
}

impl Reading {
    fn take(probes: &Probes) -> Result<Self, ProbeError> {
        Ok(Self {
            syscalls: syscalls::read(probes)?,
            sched: sched::read(probes)?,
            net: net::read(probes)?,
            disk: disk::read(probes)?,
            counters: probes.counters()?,
            host: host::Sample::read(),
        })
    }
}

pub struct Collector {
    pub probes: Probes,
    pub registry: Registry,
    events: RingBuf<MapData>,
    host: Host,
    previous: Reading,
    window_start_ns: u64,
    /// The same instant on the monotonic clock the kernel programs use.
    window_start_mono: u64,
    cgroups: cgroup::Tracker,
    /// The registry's cumulative over-limit count at the last window's end.
    services_over_limit_before: u64,
}

impl Collector {
    /// Takes over loaded probes and a started registry; the first window starts now.
    pub fn new(mut probes: Probes, registry: Registry) -> Result<Self, ProbeError> {
        let events = probes.take_proc_events()?;
        let window_start_mono = monotonic_now_ns();
        sched::start_window(&mut probes, window_start_mono)?;
        for which in [Cycled::Syscalls, Cycled::Receives] {
            probes.take_probe_ns(which, window_start_mono);
        }
        let previous = Reading::take(&probes)?;
        let mut collector = Self {
            probes,
            registry,
            events,
            host: Host::current(),
            previous,
            window_start_ns: unix_now_ns(),
            window_start_mono,
            cgroups: cgroup::Tracker::new(),
            services_over_limit_before: 0,
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
        // The kernel splits intervals that straddle this instant; the part before it is
        // accounted below from the still-open intervals.
        let end_mono = monotonic_now_ns();
        sched::start_window(&mut self.probes, end_mono)?;
        let now = Reading::take(&self.probes)?;
        let (open, tracked_threads) =
            sched::open_intervals(&mut self.probes, self.window_start_mono, end_mono)?;
        let listeners = net::listeners(&self.probes).unwrap_or_default();
        let end_ns = unix_now_ns();
        let duration_ns = end_ns.saturating_sub(self.window_start_ns);
        let window_mono = end_mono.saturating_sub(self.window_start_mono);
        let syscall_probe_ns = self.probes.take_probe_ns(Cycled::Syscalls, end_mono);
        let receive_probe_ns = self.probes.take_probe_ns(Cycled::Receives, end_mono);
        let scale = Scales {
            syscalls: Scale::new(window_mono, syscall_probe_ns),
            receives: Scale::new(window_mono, receive_probe_ns),
        };

        let mut dropped = BTreeMap::new();
        let mut tracking = BTreeMap::new();
        for counter in Counter::ALL {
            let name = counter_name(counter);
            let delta = now.counters.get(name).copied().unwrap_or(0)
                - self.previous.counters.get(name).copied().unwrap_or(0);
            if is_loss(counter) {
                dropped.insert(name.to_owned(), delta);
            } else {
                tracking.insert(name.to_owned(), delta);
            }
        }
        dropped.insert(
            "services_over_limit".to_owned(),
            self.registry.services_over_limit - self.services_over_limit_before,
        );
        self.services_over_limit_before = self.registry.services_over_limit;
        tracking.insert(
            "processes_tracked".to_owned(),
            self.probes.tracked_processes()?.max(0) as u64,
        );
        tracking.insert("threads_tracked".to_owned(), tracked_threads as u64);

        let mut host = self.host.clone();
        host.usage = now.host.since(&self.previous.host, duration_ns);
        let mut services = self.service_profiles(&now, &open, &listeners, scale);
        for s in &mut services {
            s.limits = self.cgroups.limits(&s.pids);
            s.time = verdict::budget(s);
            s.bottleneck = verdict::judge(&verdict::Inputs {
                service: s,
                budget: &s.time,
                host: &host.usage,
                window_ns: duration_ns,
            });
        }
        let profile = Profile {
            schema: SCHEMA.to_owned(),
            host,
            window: Window {
                start_unix_ns: self.window_start_ns,
                end_unix_ns: end_ns,
                duration_ns,
                syscall_probe_ns: syscall_probe_ns.min(duration_ns),
                socket_receive_probe_ns: receive_probe_ns.min(duration_ns),
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
        self.window_start_ns = end_ns;
        self.window_start_mono = end_mono;
        self.registry.next_window();
        Ok(profile)
    }

    fn service_profiles(
        &self,
        now: &Reading,
        open: &HashMap<u32, sched::Open>,
        listeners: &HashMap<u16, u32>,
        scale: Scales,
    ) -> Vec<ServiceProfile> {
        let mut by_service: HashMap<u32, Vec<SyscallProfile>> = HashMap::new();
        for (key, totals) in &now.syscalls.stats {
            let before = self.previous.syscalls.stats.get(key);
            let Some(delta) = delta(totals, before) else {
                continue;
            };
            by_service
                .entry(key.service)
                .or_default()
                .push(syscall_profile(key.nr, &delta, before, scale.syscalls));
        }
        let mut errors: HashMap<u32, Vec<ErrorProfile>> = HashMap::new();
        for (key, &count) in &now.syscalls.errors {
            let count = count
                - self
                    .previous
                    .syscalls
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
                count: scale.syscalls.apply(count),
                seen: count,
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
                let (cpu, offcpu) = self.sched_profile(id, now, open.get(&id));
                let network =
                    self.network_profile(id, now, offcpu.network_ns, listeners, scale.receives);
                let disk = self.disk_profile(id, now, offcpu.disk_ns);
                ServiceProfile {
                    name: service.name.clone(),
                    pids: service.window.iter().copied().collect(),
                    syscalls,
                    errors,
                    cpu,
                    offcpu,
                    network,
                    disk,
                    limits: Default::default(),
                    time: Default::default(),
                    bottleneck: Default::default(),
                }
            })
            .collect()
    }

    fn sched_profile(
        &self,
        id: u32,
        now: &Reading,
        open: Option<&sched::Open>,
    ) -> (CpuProfile, OffCpuProfile) {
        let zero = sched::Totals::default();
        let d = now
            .sched
            .get(&id)
            .unwrap_or(&zero)
            .minus(self.previous.sched.get(&id).unwrap_or(&zero));
        let open = open.cloned().unwrap_or_default();
        let q = |q| histogram::quantile(&d.runqueue_buckets, q, 0).unwrap_or(0);
        let cpu = CpuProfile {
            on_cpu_ns: d.on_cpu_ns + open.on_cpu_ns,
            runqueue_ns: d.runqueue_ns + open.runqueue_ns,
            runqueue_p50_ns: q(0.50),
            runqueue_p99_ns: q(0.99),
            runqueue_buckets: histogram::nonzero_buckets(&d.runqueue_buckets),
            voluntary_switches: d.voluntary_switches,
            involuntary_switches: d.involuntary_switches,
            user_ns: d.user_ns,
            system_ns: d.system_ns,
            major_faults: d.major_faults,
        };
        let r = |i: usize| d.offcpu_ns[i] + open.offcpu_ns[i];
        let offcpu = OffCpuProfile {
            lock_ns: r(offcpu::LOCK),
            network_ns: r(offcpu::NETWORK) + r(offcpu::NETWORK_SEND),
            network_send_ns: r(offcpu::NETWORK_SEND),
            disk_ns: r(offcpu::DISK),
            sleep_ns: r(offcpu::SLEEP),
            memory_ns: r(offcpu::MEMORY),
            idle_ns: r(offcpu::IDLE),
            other_ns: r(offcpu::OTHER),
        };
        (cpu, offcpu)
    }

    fn network_profile(
        &self,
        id: u32,
        now: &Reading,
        wait_ns: u64,
        listeners: &HashMap<u16, u32>,
        receives: Scale,
    ) -> NetworkProfile {
        let zero = Default::default();
        let t = now.net.services.get(&id).unwrap_or(&zero);
        let b = self.previous.net.services.get(&id).unwrap_or(&zero);
        let mut peers: Vec<PeerProfile> = now
            .net
            .peers
            .iter()
            .filter(|(k, _)| k.service == id)
            .filter_map(|(k, p)| {
                let before = self.previous.net.peers.get(k).copied().unwrap_or_default();
                let peer = PeerProfile {
                    address: net::peer_address(k),
                    port: k.port,
                    service: None,
                    tx_bytes: p.tx_bytes.saturating_sub(before.tx_bytes),
                    rx_bytes: receives.apply(p.rx_bytes.saturating_sub(before.rx_bytes)),
                    connections: p.connections.saturating_sub(before.connections),
                    wait_ns: p.wait_ns.saturating_sub(before.wait_ns),
                };
                let active = peer.tx_bytes + peer.rx_bytes + peer.connections + peer.wait_ns > 0;
                active.then_some(peer)
            })
            .map(|mut peer| {
                if peer.port != 0
                    && is_local(&peer.address)
                    && let Some(&svc) = listeners.get(&peer.port)
                {
                    peer.service = self.registry.service(svc as u16).map(|s| s.name.clone());
                }
                peer
            })
            .collect();
        peers.sort_by_key(|p| std::cmp::Reverse((p.wait_ns, p.tx_bytes + p.rx_bytes)));
        NetworkProfile {
            tx_bytes: t.tx_bytes.saturating_sub(b.tx_bytes),
            rx_bytes: receives.apply(t.rx_bytes.saturating_sub(b.rx_bytes)),
            connections_opened: t.connections_opened.saturating_sub(b.connections_opened),
            connections_closed: t.connections_closed.saturating_sub(b.connections_closed),
            connects_failed: t.connects_failed.saturating_sub(b.connects_failed),
            retransmits: t.retransmits.saturating_sub(b.retransmits),
            wait_ns,
            peers,
        }
    }

    fn disk_profile(&self, id: u32, now: &Reading, wait_ns: u64) -> DiskProfile {
        let mut all = disk::Totals::default();
        let mut devices = Vec::new();
        for (key, t) in now.disk.iter().filter(|(k, _)| k.service == id) {
            let d = match self.previous.disk.get(key) {
                Some(b) => t.minus(b),
                None => t.clone(),
            };
            if d.reads + d.writes == 0 {
                continue;
            }
            all.add(&d);
            devices.push(DeviceProfile {
                name: disk::device_name(key.dev),
                read_bytes: d.read_bytes,
                write_bytes: d.write_bytes,
                ios: d.reads + d.writes,
                p50_ns: histogram::quantile(&d.buckets, 0.5, 0).unwrap_or(0),
                p99_ns: histogram::quantile(&d.buckets, 0.99, 0).unwrap_or(0),
                queue_ns: d.queue_ns,
                device_ns: d.device_ns,
            });
        }
        devices.sort_by_key(|d| std::cmp::Reverse(d.read_bytes + d.write_bytes));
        DiskProfile {
            read_bytes: all.read_bytes,
            write_bytes: all.write_bytes,
            ios: all.reads + all.writes,
            wait_ns,
            p50_ns: histogram::quantile(&all.buckets, 0.5, 0).unwrap_or(0),
            p99_ns: histogram::quantile(&all.buckets, 0.99, 0).unwrap_or(0),
            buckets: histogram::nonzero_buckets(&all.buckets),
            devices,
        }
    }
}

/// Loopback or one of this host's addresses (loopback is what matters for local services).
fn is_local(address: &str) -> bool {
    address
        .parse::<std::net::IpAddr>()
        .is_ok_and(|a| a.is_loopback() || a.is_unspecified())
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
        timed: now.timed.saturating_sub(before.timed),
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

/// From what the cycled probes saw to the window.
#[derive(Clone, Copy, Debug)]
struct Scales {
    syscalls: Scale,
    receives: Scale,
}

/// From what cycled probes saw to the window: they may have been attached for part of it only
/// (`syscall_duty_cycle`, `socket_receive_duty_cycle`).
#[derive(Clone, Copy, Debug)]
struct Scale {
    window_ns: u64,
    seen_ns: u64,
}

impl Scale {
    fn new(window_ns: u64, seen_ns: u64) -> Self {
        Self { window_ns, seen_ns }
    }

    /// `seen` events over the attached time, as a count over the whole window.
    fn apply(self, seen: u64) -> u64 {
        if self.seen_ns == 0 || self.seen_ns >= self.window_ns {
            return seen;
        }
        (seen as f64 * self.window_ns as f64 / self.seen_ns as f64).round() as u64
    }
}

fn syscall_profile(
    nr: u32,
    delta: &syscalls::Totals,
    before: Option<&syscalls::Totals>,
    scale: Scale,
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
    // Time in the call: measured when every call in the window was timed, else the count
    // times the timed calls' mean.
    let count = scale.apply(delta.count);
    let total_ns = if delta.timed >= count || delta.timed == 0 {
        delta.total_ns
    } else {
        (delta.total_ns as u128 * u128::from(count) / u128::from(delta.timed)) as u64
    };
    SyscallProfile {
        name: syscall_name(nr),
        nr,
        count,
        seen: delta.count,
        errors: scale.apply(delta.errors),
        timed: delta.timed,
        total_ns,
        p50_ns: q(0.50),
        p90_ns: q(0.90),
        p99_ns: q(0.99),
        max_ns,
        buckets: histogram::nonzero_buckets(&delta.buckets),
    }
}

/// CLOCK_MONOTONIC in ns: the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::Scale;

    #[test]
    fn what_the_syscall_probes_saw_is_scaled_to_the_window() {
        // Attached 1 s of a 10 s window: 1,000 seen is 10,000 in the window.
        assert_eq!(
            Scale::new(10_000_000_000, 1_000_000_000).apply(1_000),
            10_000
        );
        assert_eq!(Scale::new(10_000_000_000, 3_000_000_000).apply(1), 3);
        // Attached all the window (or, by clock skew, a hair longer): as seen.
        assert_eq!(Scale::new(10_000_000_000, 10_000_000_000).apply(777), 777);
        assert_eq!(Scale::new(10_000_000_000, 10_000_000_100).apply(777), 777);
        // Not attached at all: nothing was seen, nothing is made up.
        assert_eq!(Scale::new(10_000_000_000, 0).apply(0), 0);
    }
}
