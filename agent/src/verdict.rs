//! The verdict: where a service's time goes (thread-state analysis) and what its bottleneck is
//! (the USE method applied to the resource its threads wait on). Every rule and threshold is
//! here; docs/verdict.md explains why each is what it is.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    host::HostUse,
    profile::{CpuProfile, ServiceProfile, SyscallProfile},
    render::duration,
};

/// A service's busy thread time below this share of one thread's window is "mostly idle".
pub const IDLE_BELOW: f64 = 0.05;
/// The largest state must explain at least this share of busy time to be the bottleneck.
pub const DOMINANT: f64 = 0.30;
/// Host CPU utilisation at or above which the CPUs count as saturated.
pub const CPU_SATURATED: f64 = 0.90;
/// PSI cpu "some" at or above which the CPUs count as saturated, whatever the utilisation.
pub const CPU_PRESSURE: f64 = 0.20;
/// Quota throttling above this share of the window makes a CPU-bound service quota-bound.
pub const QUOTA_THROTTLED: f64 = 0.05;
/// PSI memory "some" at or above which memory stalls outrank a larger CPU share.
pub const MEMORY_PRESSURE: f64 = 0.10;
/// Major faults per second (the host's, or a service's own) at or above which memory is
/// visibly short.
pub const MAJOR_FAULTS_PER_SEC: f64 = 1000.0;
/// Share of a service's CPU time in kernel mode at or above which, with that many major faults
/// of its own, its CPU time is the kernel serving those faults.
pub const KERNEL_MOSTLY: f64 = 0.50;
/// Device utilisation at or above which a disk is at capacity.
pub const DISK_BUSY: f64 = 0.80;
/// Share of network waiting spent blocked *sending* above which the link is the limit.
pub const SEND_BLOCKED: f64 = 0.50;
/// Failed calls (benign errnos aside) at or above this share of all calls, and at least
/// [`ERRORS_MIN_PER_SEC`] of them, make failing calls the problem.
pub const ERRORS_SHARE: f64 = 0.50;
pub const ERRORS_MIN_PER_SEC: f64 = 100.0;

/// errnos that are normal flow control, not failures: non-blocking I/O, interrupted and
/// restarted calls, timed waits that timed out.
const BENIGN_ERRNOS: &[&str] = &[
    "EAGAIN",
    "EINTR",
    "EINPROGRESS",
    "ETIMEDOUT",
    "ERESTARTSYS",
    "ERESTARTNOINTR",
    "ERESTARTNOHAND",
    "ERESTART_RESTARTBLOCK",
];

/// Where the service's non-idle thread time went, as fractions summing to 1.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TimeBudget {
    /// Non-idle thread time observed in the window, summed over threads.
    pub thread_ns: u64,
    /// Time threads waited for new work (epoll/poll/select/accept), left out of the fractions.
    pub idle_ns: u64,
    pub on_cpu: f64,
    pub runqueue: f64,
    pub disk_io: f64,
    pub network_wait: f64,
    pub lock_wait: f64,
    pub sleep: f64,
    pub memory: f64,
    pub other: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Bottleneck {
    /// "hardware", "software" or "none".
    pub class: String,
    /// hardware: cpu, disk, network, memory; software: lock, downstream, sleep, compute,
    /// errors; none: none.
    pub resource: String,
    /// The fraction of non-idle thread time the bottleneck explains.
    pub share: f64,
    pub confidence: f64,
    pub summary: String,
    pub evidence: Vec<String>,
}

pub fn budget(s: &ServiceProfile) -> TimeBudget {
    let parts = [
        s.cpu.on_cpu_ns,
        s.cpu.runqueue_ns,
        s.offcpu.disk_ns,
        s.offcpu.network_ns,
        s.offcpu.lock_ns,
        s.offcpu.sleep_ns,
        s.offcpu.memory_ns,
        s.offcpu.other_ns,
    ];
    let thread_ns: u64 = parts.iter().sum();
    let f = |v: u64| {
        if thread_ns == 0 {
            0.0
        } else {
            v as f64 / thread_ns as f64
        }
    };
    TimeBudget {
        thread_ns,
        idle_ns: s.offcpu.idle_ns,
        on_cpu: f(parts[0]),
        runqueue: f(parts[1]),
        disk_io: f(parts[2]),
        network_wait: f(parts[3]),
        lock_wait: f(parts[4]),
        sleep: f(parts[5]),
        memory: f(parts[6]),
        other: f(parts[7]),
    }
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn verdict(
    class: &str,
    resource: &str,
    share: f64,
    corroborated: bool,
    summary: String,
    evidence: Vec<String>,
) -> Bottleneck {
    // Confidence grows with the share explained (full at 80%) and drops by a third when the
    // resource-side evidence does not corroborate the threads' view.
    let base = (share / 0.8).min(1.0);
    let confidence = if corroborated { base } else { base * 0.67 };
    Bottleneck {
        class: class.to_owned(),
        resource: resource.to_owned(),
        share: (share * 1000.0).round() / 1000.0,
        confidence: (confidence * 100.0).round() / 100.0,
        summary,
        evidence,
    }
}

fn none(summary: String, evidence: Vec<String>) -> Bottleneck {
    Bottleneck {
        class: "none".into(),
        resource: "none".into(),
        share: 0.0,
        confidence: 0.5,
        summary,
        evidence,
    }
}

/// Everything the rules look at.
pub struct Inputs<'a> {
    pub service: &'a ServiceProfile,
    pub budget: &'a TimeBudget,
    pub host: &'a HostUse,
    pub window_ns: u64,
}

/// The bottleneck of one service over one window.
pub fn judge(i: &Inputs<'_>) -> Bottleneck {
    let s = i.service;
    let b = i.budget;
    let name = &s.name;
    let window_s = (i.window_ns as f64 / 1e9).max(1e-9);
    let busy_threads = b.thread_ns as f64 / i.window_ns.max(1) as f64;

    if busy_threads < IDLE_BELOW {
        return none(
            format!("{name} is mostly idle: nothing to fix."),
            vec![format!(
                "busy thread time {} in a {:.0} s window ({} idle waiting for work)",
                duration(b.thread_ns),
                window_s,
                duration(b.idle_ns)
            )],
        );
    }

    if let Some(v) = failing_calls(s, window_s) {
        return v;
    }

    let categories = [
        ("cpu", b.on_cpu + b.runqueue),
        ("disk", b.disk_io),
        ("network", b.network_wait),
        ("lock", b.lock_wait),
        ("sleep", b.sleep),
        ("memory", b.memory),
        ("other", b.other),
    ];
    let (top, share) = categories
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("other", 0.0));
    let budget_line = format!(
        "time: on-CPU {}, run queue {}, disk {}, network {}, lock {}, sleep {}, memory {}, other {}",
        pct(b.on_cpu),
        pct(b.runqueue),
        pct(b.disk_io),
        pct(b.network_wait),
        pct(b.lock_wait),
        pct(b.sleep),
        pct(b.memory),
        pct(b.other)
    );
    if share < DOMINANT {
        return none(
            format!("No single resource or wait dominates {name}'s time."),
            vec![budget_line],
        );
    }
    let mut evidence = vec![budget_line];
    // Reclaim and fault handling run on the stalled thread's own CPU, so a thrashing service
    // also looks busy on CPU: memory stalls corroborated by the host's memory pressure win over
    // a larger CPU share. A service taking many major faults of its own with its CPU time
    // mostly in the kernel is spending that time reading the pages in (on a VM, the disk
    // request itself can take most of it): that time is memory time too.
    let memory_pressure = i.host.psi.get("memory").map_or(0.0, |p| p.some);
    let faulting = i.host.major_faults as f64 / window_s >= MAJOR_FAULTS_PER_SEC;
    let faults = FaultLoad::of(s, window_s);
    let memory = if faults.serving() {
        b.memory + b.on_cpu * faults.kernel_share
    } else {
        b.memory
    };
    let top =
        if top == "cpu" && memory >= DOMINANT && (memory_pressure >= MEMORY_PRESSURE || faulting) {
            "memory"
        } else {
            top
        };
    let share = if top == "memory" { memory } else { share };
    match top {
        "cpu" => cpu(i, share, evidence),
        "disk" => disk(i, share, evidence),
        "network" => network(i, share, evidence),
        "lock" => {
            let futex = syscall(s, &["futex", "futex_wait", "futex_waitv"]);
            if let Some(f) = futex {
                evidence.push(if f.timed == 0 {
                    format!("futex: {} calls, none of them timed", f.count)
                } else {
                    format!(
                        "futex: {} calls, p99 {}, {} in total",
                        f.count,
                        duration(f.p99_ns),
                        duration(f.total_ns)
                    )
                });
            }
            verdict(
                "software",
                "lock",
                share,
                true,
                format!(
                    "{name}'s threads wait on locks for {} of their time: reduce contention \
                     (shorter critical sections, finer-grained locks, fewer threads on one lock).",
                    pct(share)
                ),
                evidence,
            )
        }
        "sleep" => {
            if let Some(n) = syscall(s, &["clock_nanosleep", "nanosleep"]) {
                evidence.push(if n.timed == 0 {
                    format!("{}: {} calls, none of them timed", n.name, n.count)
                } else {
                    format!("{}: {} calls, p50 {}", n.name, n.count, duration(n.p50_ns))
                });
            }
            verdict(
                "software",
                "sleep",
                share,
                true,
                format!(
                    "{name} sleeps on timers for {} of its time: it is paced by its own sleeps or \
                     polling intervals, not by a resource.",
                    pct(share)
                ),
                evidence,
            )
        }
        "memory" => {
            let h = i.host;
            let psi = h.psi.get("memory").map_or(0.0, |p| p.some);
            if faults.serving() {
                evidence.push(format!(
                    "{} major page faults by {name} ({:.0}/s) with {} of its CPU time in the \
                     kernel: {} of its time waiting for pages, {} on CPU serving the faults",
                    faults.count,
                    faults.per_s,
                    pct(faults.kernel_share),
                    pct(b.memory),
                    pct(share - b.memory)
                ));
            } else if faults.count > 0 {
                evidence.push(format!(
                    "{} major page faults by {name} ({:.0}/s)",
                    faults.count, faults.per_s
                ));
            }
            evidence.push(format!(
                "host: memory pressure (PSI some) {}, {} major faults, {} direct-reclaim stalls, \
                 {} pages swapped out",
                pct(psi),
                h.major_faults,
                h.alloc_stalls,
                h.pages_swapped_out
            ));
            let corroborated = psi >= MEMORY_PRESSURE
                || h.major_faults as f64 / window_s >= MAJOR_FAULTS_PER_SEC
                || h.alloc_stalls > 0;
            verdict(
                "hardware",
                "memory",
                share,
                corroborated,
                format!(
                    "{name} stalls on memory (page faults and reclaim) for {} of its time: give it \
                     more memory (or a higher cgroup limit), or shrink its working set.",
                    pct(share)
                ),
                evidence,
            )
        }
        _ => none(
            format!(
                "{name}'s time is mostly in waits crmprof does not classify ({}).",
                pct(share)
            ),
            evidence,
        ),
    }
}

fn syscall<'a>(s: &'a ServiceProfile, names: &[&str]) -> Option<&'a SyscallProfile> {
    s.syscalls.iter().find(|c| names.contains(&c.name.as_str()))
}

fn failing_calls(s: &ServiceProfile, window_s: f64) -> Option<Bottleneck> {
    let calls: u64 = s.syscalls.iter().map(|c| c.count).sum();
    let failed: u64 = s
        .errors
        .iter()
        .filter(|e| !BENIGN_ERRNOS.contains(&e.errno.as_str()))
        .map(|e| e.count)
        .sum();
    if calls == 0 {
        return None;
    }
    let share = failed as f64 / calls as f64;
    if share < ERRORS_SHARE || (failed as f64 / window_s) < ERRORS_MIN_PER_SEC {
        return None;
    }
    let top = s
        .errors
        .iter()
        .find(|e| !BENIGN_ERRNOS.contains(&e.errno.as_str()))?;
    let evidence = s
        .errors
        .iter()
        .filter(|e| !BENIGN_ERRNOS.contains(&e.errno.as_str()))
        .take(3)
        .map(|e| {
            let mut line = format!(
                "{} failed with {} {} times ({:.0}/s)",
                e.syscall,
                e.errno,
                e.count,
                e.count as f64 / window_s
            );
            if e.seen != e.count {
                // The syscall probes were attached for part of the window only.
                let _ = write!(line, ", estimated from {} seen", e.seen);
            }
            line
        })
        .chain(std::iter::once(format!(
            "{failed} of {calls} syscalls failed ({})",
            pct(share)
        )))
        .collect();
    Some(verdict(
        "software",
        "errors",
        share,
        true,
        format!(
            "{} of {}'s syscalls fail, mostly {} with {} ({} times): fix what makes them fail.",
            pct(share),
            s.name,
            top.syscall,
            top.errno,
            top.count
        ),
        evidence,
    ))
}

/// A service's own major page faults in the window, and how its CPU time splits by mode.
struct FaultLoad {
    count: u64,
    per_s: f64,
    /// [`kernel_share`] of its CPU time.
    kernel_share: f64,
}

impl FaultLoad {
    fn of(s: &ServiceProfile, window_s: f64) -> Self {
        let c = &s.cpu;
        FaultLoad {
            count: c.major_faults,
            per_s: c.major_faults as f64 / window_s,
            kernel_share: kernel_share(c),
        }
    }

    /// Whether its CPU time is mostly the kernel serving its own major faults.
    fn serving(&self) -> bool {
        self.per_s >= MAJOR_FAULTS_PER_SEC && self.kernel_share >= KERNEL_MOSTLY
    }
}

/// Kernel-mode share of a service's CPU time, as the ticks split it (0 when they sampled none).
fn kernel_share(c: &CpuProfile) -> f64 {
    let sampled = c.user_ns + c.system_ns;
    if sampled == 0 {
        0.0
    } else {
        c.system_ns as f64 / sampled as f64
    }
}

fn cpu(i: &Inputs<'_>, share: f64, mut evidence: Vec<String>) -> Bottleneck {
    let (s, b, h) = (i.service, i.budget, i.host);
    let name = &s.name;
    let psi = h.psi.get("cpu").map_or(0.0, |p| p.some);
    let throttled = s.limits.cpu_throttled_ns as f64 / i.window_ns.max(1) as f64;
    evidence.push(format!(
        "run-queue latency p50 {}, p99 {}; {} involuntary context switches",
        duration(s.cpu.runqueue_p50_ns),
        duration(s.cpu.runqueue_p99_ns),
        s.cpu.involuntary_switches
    ));
    evidence.push(format!(
        "host CPUs {} busy (PSI cpu some {})",
        pct(h.cpu_utilization),
        pct(psi)
    ));
    if throttled >= QUOTA_THROTTLED {
        let quota = s.limits.cpu_quota_cores.map_or_else(
            || "a CPU quota".to_owned(),
            |q| format!("a quota of {q:.2} cores"),
        );
        evidence.push(format!(
            "cgroup CPU quota: throttled {} of the window ({})",
            pct(throttled),
            quota
        ));
        return verdict(
            "hardware",
            "cpu",
            share,
            true,
            format!(
                "{name} is held back by its cgroup CPU quota ({quota}): it waits runnable for {} of \
                 its time; raise the quota.",
                pct(b.runqueue)
            ),
            evidence,
        );
    }
    let saturated = h.cpu_utilization >= CPU_SATURATED || psi >= CPU_PRESSURE;
    if saturated && b.runqueue >= 0.5 * b.on_cpu.min(0.5) {
        return verdict(
            "hardware",
            "cpu",
            share,
            true,
            format!(
                "{name} waits for a CPU for {} of its time on a saturated host ({} busy): add CPUs \
                 or move work off this host.",
                pct(b.runqueue),
                pct(h.cpu_utilization)
            ),
            evidence,
        );
    }
    let threads = s.cpu.on_cpu_ns as f64 / i.window_ns.max(1) as f64;
    let kernel = kernel_share(&s.cpu);
    evidence.push(format!(
        "on CPU for {} ({threads:.2} CPUs' worth, {} of it in the kernel) while the host has \
         spare capacity",
        duration(s.cpu.on_cpu_ns),
        pct(kernel)
    ));
    verdict(
        "software",
        "compute",
        share,
        !saturated,
        format!(
            "{name} is busy on CPU ({} of its time) while the host has spare CPU ({} busy): its \
             own code is the limit — profile its hot paths; more hardware will not help.",
            pct(b.on_cpu),
            pct(h.cpu_utilization)
        ),
        evidence,
    )
}

fn disk(i: &Inputs<'_>, share: f64, mut evidence: Vec<String>) -> Bottleneck {
    let (s, h) = (i.service, i.host);
    let name = &s.name;
    let d = &s.disk;
    let mut busiest = None::<&crate::host::DeviceUse>;
    for dev in &d.devices {
        if let Some(u) = h.devices.iter().find(|u| u.name == dev.name) {
            evidence.push(format!(
                "{}: {} I/Os by {name}, p99 {}, device {} busy, queue depth {:.1}, {:.0} IOPS",
                dev.name,
                dev.ios,
                duration(dev.p99_ns),
                pct(u.utilization),
                u.avg_queue_depth,
                u.iops
            ));
            if busiest.is_none_or(|b| u.utilization > b.utilization) {
                busiest = Some(u);
            }
        }
    }
    let device_time: u64 = d.devices.iter().map(|x| x.device_ns + x.queue_ns).sum();
    evidence.push(format!(
        "{name} waited {} on disk for {} I/Os that spent {} in the queue and at the device",
        duration(d.wait_ns),
        d.ios,
        duration(device_time)
    ));
    let limited = !s.limits.io_limits.is_empty();
    if limited {
        evidence.push(format!("I/O limit: {}", s.limits.io_limits.join(", ")));
    }
    let held = d.wait_ns > 3 * device_time.max(1);
    let at_capacity = busiest.is_some_and(|u| u.utilization >= DISK_BUSY);
    let summary = if limited && held {
        format!(
            "{name} is blocked on disk for {} of its time, held by its I/O limit ({}) rather than \
             the device: raise the limit or provision more IOPS/bandwidth.",
            pct(share),
            s.limits.io_limits.join(", ")
        )
    } else {
        format!(
            "{name} is blocked on disk I/O for {} of its time{}: faster storage, more IOPS, or \
             fewer synchronous writes would help.",
            pct(share),
            if at_capacity {
                " on a saturated device"
            } else {
                ""
            }
        )
    };
    verdict(
        "hardware",
        "disk",
        share,
        limited || at_capacity || held,
        summary,
        evidence,
    )
}

fn network(i: &Inputs<'_>, share: f64, mut evidence: Vec<String>) -> Bottleneck {
    let s = i.service;
    let name = &s.name;
    let n = &s.network;
    let window_s = (i.window_ns as f64 / 1e9).max(1e-9);
    let send_share = if s.offcpu.network_ns == 0 {
        0.0
    } else {
        s.offcpu.network_send_ns as f64 / s.offcpu.network_ns as f64
    };
    let mbit = |bytes: u64| bytes as f64 * 8.0 / window_s / 1e6;
    evidence.push(format!(
        "sent {:.1} Mbit/s, received {:.1} Mbit/s; {} of the network wait blocked sending; {} \
         retransmits",
        mbit(n.tx_bytes),
        mbit(n.rx_bytes),
        pct(send_share),
        n.retransmits
    ));
    let peer = n.peers.iter().max_by_key(|p| p.wait_ns);
    let peer_name = peer.map(|p| {
        let svc = p
            .service
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        if p.port == 0 {
            format!("{}{svc}", p.address)
        } else {
            format!("{}:{}{svc}", p.address, p.port)
        }
    });
    if let (Some(p), Some(pn)) = (peer, &peer_name) {
        evidence.push(format!(
            "most waiting on {pn}: {} waited, {} sent, {} received",
            duration(p.wait_ns),
            p.tx_bytes,
            p.rx_bytes
        ));
    }
    if send_share >= SEND_BLOCKED {
        return verdict(
            "hardware",
            "network",
            share,
            n.tx_bytes > 0,
            format!(
                "{name} is blocked sending for {} of its time at {:.1} Mbit/s: the link or its \
                 queue is at capacity{} — more bandwidth (or less data) would help.",
                pct(share * send_share),
                mbit(n.tx_bytes),
                peer_name
                    .as_ref()
                    .map(|p| format!(" towards {p}"))
                    .unwrap_or_default()
            ),
            evidence,
        );
    }
    let target = peer_name.unwrap_or_else(|| "its peers".to_owned());
    verdict(
        "software",
        "downstream",
        share,
        peer.is_some(),
        format!(
            "{name} spends {} of its time waiting for responses from {target} while its link is \
             far from capacity: look at that service, not this one.",
            pct(share)
        ),
        evidence,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        cgroup::Limits,
        host::{DeviceUse, Pressure},
        profile::{
            CpuProfile, DeviceProfile, DiskProfile, ErrorProfile, NetworkProfile, OffCpuProfile,
            PeerProfile,
        },
    };

    const WINDOW: u64 = 10_000_000_000;

    fn service(cpu: CpuProfile, off: OffCpuProfile) -> ServiceProfile {
        ServiceProfile {
            name: "svc".into(),
            pids: vec![1],
            syscalls: Vec::new(),
            errors: Vec::new(),
            cpu,
            offcpu: off,
            network: NetworkProfile::default(),
            disk: DiskProfile::default(),
            limits: Limits::default(),
            time: TimeBudget::default(),
            bottleneck: Bottleneck::default(),
        }
    }

    fn host(util: f64) -> HostUse {
        HostUse {
            cpu_utilization: util,
            ..HostUse::default()
        }
    }

    fn judge_with(s: &ServiceProfile, h: &HostUse) -> Bottleneck {
        let b = budget(s);
        judge(&Inputs {
            service: s,
            budget: &b,
            host: h,
            window_ns: WINDOW,
        })
    }

    fn on_rq(on: u64, rq: u64) -> CpuProfile {
        CpuProfile {
            on_cpu_ns: on,
            runqueue_ns: rq,
            ..CpuProfile::default()
        }
    }

    #[test]
    fn budget_fractions_sum_to_one_and_exclude_idle() {
        let s = service(
            on_rq(3_000_000_000, 1_000_000_000),
            OffCpuProfile {
                disk_ns: 2_000_000_000,
                idle_ns: 50_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        let b = budget(&s);
        let sum = b.on_cpu
            + b.runqueue
            + b.disk_io
            + b.network_wait
            + b.lock_wait
            + b.sleep
            + b.memory
            + b.other;
        assert!((sum - 1.0).abs() < 1e-9);
        assert_eq!(b.thread_ns, 6_000_000_000);
        assert_eq!(b.idle_ns, 50_000_000_000);
    }

    #[test]
    fn saturated_host_and_run_queue_is_hardware_cpu() {
        let s = service(
            on_rq(10_000_000_000, 10_000_000_000),
            OffCpuProfile::default(),
        );
        let v = judge_with(&s, &host(0.99));
        assert_eq!((v.class.as_str(), v.resource.as_str()), ("hardware", "cpu"));
        assert!(v.share > 0.99);
    }

    #[test]
    fn one_hot_thread_on_an_idle_host_is_compute() {
        let s = service(on_rq(9_800_000_000, 100_000_000), OffCpuProfile::default());
        let v = judge_with(&s, &host(0.52));
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("software", "compute")
        );
    }

    #[test]
    fn quota_throttling_is_hardware_cpu_with_quota_evidence() {
        let mut s = service(
            on_rq(2_000_000_000, 6_000_000_000),
            OffCpuProfile::default(),
        );
        s.limits.cpu_quota_cores = Some(0.2);
        s.limits.cpu_throttled_ns = 7_000_000_000;
        let v = judge_with(&s, &host(0.3));
        assert_eq!((v.class.as_str(), v.resource.as_str()), ("hardware", "cpu"));
        assert!(v.summary.contains("quota"), "{}", v.summary);
        assert!(
            v.evidence.iter().any(|e| e.contains("0.20 cores")),
            "{:?}",
            v.evidence
        );
    }

    #[test]
    fn borderline_dominance_is_none() {
        // Nothing reaches 30%: on-CPU 25%, disk 25%, network 25%, lock 25%.
        let q = 2_500_000_000;
        let s = service(
            on_rq(q, 0),
            OffCpuProfile {
                disk_ns: q,
                network_ns: q,
                lock_ns: q,
                ..OffCpuProfile::default()
            },
        );
        let v = judge_with(&s, &host(0.3));
        assert_eq!(v.class, "none");
        // Just over the line, the largest wins.
        let s = service(
            on_rq(q, 0),
            OffCpuProfile {
                disk_ns: q,
                network_ns: q,
                lock_ns: q + 1_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        assert_eq!(judge_with(&s, &host(0.3)).resource, "lock");
    }

    #[test]
    fn mostly_idle_is_none_even_when_one_wait_dominates() {
        let s = service(
            on_rq(10_000_000, 0),
            OffCpuProfile {
                lock_ns: 100_000_000,
                idle_ns: 9_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        let v = judge_with(&s, &host(0.1));
        assert_eq!(v.class, "none");
        assert!(v.summary.contains("idle"));
    }

    #[test]
    fn waiting_for_a_peer_is_downstream_and_names_it() {
        let mut s = service(
            on_rq(500_000_000, 0),
            OffCpuProfile {
                network_ns: 9_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        s.network.peers = vec![PeerProfile {
            address: "127.0.0.1".into(),
            port: 5432,
            service: Some("postgres".into()),
            wait_ns: 8_000_000_000,
            ..PeerProfile::default()
        }];
        let v = judge_with(&s, &host(0.2));
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("software", "downstream")
        );
        assert!(
            v.summary.contains("127.0.0.1:5432 (postgres)"),
            "{}",
            v.summary
        );
    }

    #[test]
    fn blocked_sending_is_hardware_network() {
        let mut s = service(
            on_rq(500_000_000, 0),
            OffCpuProfile {
                network_ns: 9_000_000_000,
                network_send_ns: 8_500_000_000,
                ..OffCpuProfile::default()
            },
        );
        s.network.tx_bytes = 50_000_000;
        let v = judge_with(&s, &host(0.2));
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("hardware", "network")
        );
        assert!(v.summary.contains("40.0 Mbit/s"), "{}", v.summary);
    }

    #[test]
    fn throttled_disk_names_the_limit() {
        let mut s = service(
            on_rq(100_000_000, 0),
            OffCpuProfile {
                disk_ns: 8_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        s.disk = DiskProfile {
            wait_ns: 8_000_000_000,
            ios: 400,
            devices: vec![DeviceProfile {
                name: "vda".into(),
                ios: 400,
                device_ns: 40_000_000,
                ..DeviceProfile::default()
            }],
            ..DiskProfile::default()
        };
        s.limits.io_limits = vec!["254:0 write_iops 50".into()];
        let mut h = host(0.1);
        h.devices = vec![DeviceUse {
            name: "vda".into(),
            utilization: 0.05,
            avg_queue_depth: 0.1,
            iops: 50.0,
            read_bytes: 0,
            write_bytes: 0,
        }];
        let v = judge_with(&s, &h);
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("hardware", "disk")
        );
        assert!(v.summary.contains("write_iops 50"), "{}", v.summary);
        assert!(
            v.evidence.iter().any(|e| e.starts_with("vda:")),
            "{:?}",
            v.evidence
        );
    }

    #[test]
    fn memory_stalls_are_hardware_memory() {
        let s = service(
            on_rq(1_000_000_000, 0),
            OffCpuProfile {
                memory_ns: 7_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        let mut h = host(0.4);
        h.psi = BTreeMap::from([(
            "memory".to_owned(),
            Pressure {
                some: 0.4,
                full: Some(0.2),
            },
        )]);
        h.major_faults = 50_000;
        let v = judge_with(&s, &h);
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("hardware", "memory")
        );
        assert!(v.confidence > 0.8);
    }

    /// The memory-pressure scenario as measured on this VM: 72% on CPU, nearly all of it in the
    /// kernel, 12,000 major faults/s of its own, 26% waiting for pages, host PSI memory 2%.
    #[test]
    fn cpu_time_serving_its_own_major_faults_is_memory_time() {
        let faulting = |user_ns: u64, system_ns: u64| {
            let mut s = service(
                CpuProfile {
                    user_ns,
                    system_ns,
                    major_faults: 120_000,
                    ..on_rq(7_200_000_000, 200_000_000)
                },
                OffCpuProfile {
                    memory_ns: 2_600_000_000,
                    ..OffCpuProfile::default()
                },
            );
            s.name = "mem".into();
            s
        };
        let mut h = host(0.4);
        h.major_faults = 120_000;
        let v = judge_with(&faulting(20_000_000, 7_180_000_000), &h);
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("hardware", "memory"),
            "{v:?}"
        );
        // 26% waiting for pages + 72% × 99.7% on CPU in the kernel.
        assert!((v.share - 0.978).abs() < 0.001, "{}", v.share);
        assert!(
            v.evidence
                .iter()
                .any(|e| e.contains("120000 major page faults by mem (12000/s)")),
            "{:?}",
            v.evidence
        );
        // The same faults while its CPU time is its own code's: that code is the limit.
        let v = judge_with(&faulting(6_500_000_000, 700_000_000), &h);
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("software", "compute"),
            "{v:?}"
        );
        assert!(
            v.evidence
                .iter()
                .any(|e| e.contains("10% of it in the kernel")),
            "{:?}",
            v.evidence
        );
        // Fewer than 1000 major faults/s of its own: CPU time stays CPU time.
        let mut few = faulting(20_000_000, 7_180_000_000);
        few.cpu.major_faults = 9_000;
        assert_eq!(judge_with(&few, &h).resource, "compute");
    }

    #[test]
    fn thrashing_outranks_the_cpu_time_it_causes() {
        let s = service(
            on_rq(4_000_000_000, 2_500_000_000),
            OffCpuProfile {
                memory_ns: 4_500_000_000,
                ..OffCpuProfile::default()
            },
        );
        let mut h = host(0.95);
        assert_eq!(
            judge_with(&s, &h).resource,
            "cpu",
            "no memory pressure: CPU"
        );
        h.psi = BTreeMap::from([(
            "memory".to_owned(),
            Pressure {
                some: 0.3,
                full: Some(0.1),
            },
        )]);
        let v = judge_with(&s, &h);
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("hardware", "memory")
        );
        assert!((v.share - 0.409).abs() < 1e-9, "{}", v.share);
    }

    #[test]
    fn sleeping_is_software_sleep() {
        let s = service(
            on_rq(10_000_000, 0),
            OffCpuProfile {
                sleep_ns: 9_000_000_000,
                ..OffCpuProfile::default()
            },
        );
        let v = judge_with(&s, &host(0.1));
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("software", "sleep")
        );
    }

    fn calls(s: &mut ServiceProfile, count: u64, errno: &str, failed: u64) {
        s.syscalls = vec![SyscallProfile {
            name: "openat".into(),
            nr: 257,
            count,
            seen: count,
            errors: failed,
            timed: count,
            total_ns: 0,
            p50_ns: 0,
            p90_ns: 0,
            p99_ns: 0,
            max_ns: 0,
            buckets: Vec::new(),
        }];
        s.errors = vec![ErrorProfile {
            syscall: "openat".into(),
            errno: errno.into(),
            count: failed,
            seen: failed,
        }];
    }

    #[test]
    fn a_failure_storm_is_software_errors_but_eagain_is_not() {
        let mut s = service(on_rq(9_000_000_000, 0), OffCpuProfile::default());
        calls(&mut s, 100_000, "ENOENT", 90_000);
        let v = judge_with(&s, &host(0.5));
        assert_eq!(
            (v.class.as_str(), v.resource.as_str()),
            ("software", "errors")
        );
        assert!(v.summary.contains("openat with ENOENT"), "{}", v.summary);
        calls(&mut s, 100_000, "EAGAIN", 90_000);
        assert_eq!(judge_with(&s, &host(0.5)).resource, "compute");
        // Many failures but a small share of the calls: not the problem.
        calls(&mut s, 1_000_000, "ENOENT", 100_000);
        assert_eq!(judge_with(&s, &host(0.5)).resource, "compute");
    }
}
