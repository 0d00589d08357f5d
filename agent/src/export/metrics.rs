//! The exporter's running totals and the metric families every remote sink renders.
//!
//! Profiles are per-window deltas; Prometheus counters and OTLP cumulative sums must be
//! monotonic from the agent's start. [`Totals`] adds each window into running totals, one small
//! `add_*` function per profile section, and [`Totals::families`] turns the totals into
//! sink-neutral [`Family`]s, one small `*_families` function per section. The Prometheus text,
//! remote-write and OTLP encoders only render families, so a new profile section (network,
//! disk, cpu, time budget, verdict) is one `add_*` and one `*_families` function here.
//!
//! Names: each family has a Prometheus name (base units, `_total`, `_seconds`) and an
//! OpenTelemetry name (dotted, with a UCUM unit). See `docs/metrics.md`.

use std::collections::BTreeMap;

use agent_ebpf::hist;

use crate::profile::{Profile, ServiceProfile};

/// A service absent from every profile for this long is forgotten; its counters restart from
/// zero if it comes back (a counter reset, which `rate()` and cumulative OTLP both handle).
const SERVICE_TTL_NS: u64 = 3_600 * 1_000_000_000;

/// A cumulative histogram in nanoseconds on the OpenTelemetry exponential scale 2: bucket `i`
/// spans `2^(i/4)` to `2^((i+1)/4)` ns, exactly the kernel's buckets (`agent_ebpf::hist`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpHistogram {
    /// Bucket index → count; only non-empty buckets.
    pub buckets: BTreeMap<i32, u64>,
    /// Sum of the bucket counts.
    pub count: u64,
    pub sum_ns: u64,
}

impl ExpHistogram {
    /// Adds a profile's `[upper_bound_ns, count]` buckets and the window's total time.
    pub fn add(&mut self, buckets: &[(u64, u64)], sum_ns: u64) {
        for &(upper, n) in buckets {
            *self.buckets.entry(bucket_index(upper)).or_default() += n;
            self.count += n;
        }
        self.sum_ns += sum_ns;
    }

    /// How many values are at most `2^(exp/4)` ns: exact, because that bound is a bucket
    /// boundary of scale 2 (every bucket lies wholly below or above it).
    pub fn count_at_or_below_boundary(&self, quarter_exp: i32) -> u64 {
        // Bucket i's upper bound is 2^((i+1)/4): i + 1 <= quarter_exp.
        self.buckets.range(..quarter_exp).map(|(_, &n)| n).sum()
    }
}

/// The scale-2 bucket index of a profile bucket given by its upper bound, exactly.
///
/// The profile writes `ceil(2^((i+1)/4))`. For the smallest buckets several indices share one
/// rounded bound, but only one of them can hold an integer number of nanoseconds — the bucket
/// of `bound - 1` — and only buckets that held a value are written. So the index is that of
/// `bound - 1` when its rounded bound matches, else the highest index with that bound.
pub fn bucket_index(upper_ns: u64) -> i32 {
    let rounded = |i: usize| hist::upper_bound(i).ceil() as u64;
    let guess = hist::bucket(upper_ns.saturating_sub(1));
    if rounded(guess) == upper_ns {
        return guess as i32;
    }
    (0..hist::BUCKETS)
        .rev()
        .find(|&i| rounded(i) == upper_ns)
        .map_or(guess as i32, |i| i as i32)
}

/// A series' labels besides `service`.
type Labels = Vec<(&'static str, String)>;

/// Per-service running totals.
#[derive(Clone, Debug, Default)]
pub struct ServiceTotals {
    last_seen_ns: u64,
    /// Processes in the service during the last window it appeared in (a gauge).
    processes: u64,
    /// Per syscall name: latency of the timed calls, and every call.
    syscalls: BTreeMap<String, ExpHistogram>,
    calls: BTreeMap<String, u64>,
    /// Per (syscall, errno).
    errors: BTreeMap<(String, String), u64>,
    /// Counters of the `network`, `disk`, `cpu` and `offcpu` sections, by metric and labels.
    counters: BTreeMap<(&'static str, Labels), f64>,
    runqueue: ExpHistogram,
    disk_io: ExpHistogram,
    /// The last window's time budget (state → fraction) and verdict.
    budget: Vec<(&'static str, f64)>,
    verdict: Option<(String, String, f64, f64)>,
}

impl ServiceTotals {
    fn count(&mut self, metric: &'static str, labels: Labels, by: f64) {
        *self.counters.entry((metric, labels)).or_default() += by;
    }
}

/// Everything the exporters have seen since the agent started.
#[derive(Clone, Debug)]
pub struct Totals {
    /// Start of the cumulative series (OTLP `start_time_unix_nano`).
    pub start_unix_ns: u64,
    pub host_name: String,
    pub kernel: String,
    pub agent_version: String,
    pub windows: u64,
    pub last_window_start_ns: u64,
    pub last_window_end_ns: u64,
    pub services: BTreeMap<String, ServiceTotals>,
    dropped_events: BTreeMap<String, u64>,
    /// Probe group → attached.
    probes: BTreeMap<String, bool>,
}

impl Totals {
    pub fn new(start_unix_ns: u64) -> Self {
        Self {
            start_unix_ns,
            host_name: String::new(),
            kernel: String::new(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            windows: 0,
            last_window_start_ns: start_unix_ns,
            last_window_end_ns: start_unix_ns,
            services: BTreeMap::new(),
            dropped_events: BTreeMap::new(),
            probes: BTreeMap::new(),
        }
    }

    /// Adds one window.
    pub fn add(&mut self, profile: &Profile) {
        let end = profile.window.end_unix_ns;
        self.add_agent(profile);
        for service in &profile.services {
            let totals = self.services.entry(service.name.clone()).or_default();
            totals.last_seen_ns = end;
            totals.processes = service.pids.len() as u64;
            add_syscalls(totals, service);
            add_errors(totals, service);
            add_resources(totals, service);
            add_verdict(totals, service);
        }
        self.services
            .retain(|_, s| end.saturating_sub(s.last_seen_ns) <= SERVICE_TTL_NS);
    }

    fn add_agent(&mut self, profile: &Profile) {
        self.host_name.clone_from(&profile.host.hostname);
        self.kernel.clone_from(&profile.host.kernel);
        self.agent_version.clone_from(&profile.agent.version);
        self.windows += 1;
        self.last_window_start_ns = profile.window.start_unix_ns;
        self.last_window_end_ns = profile.window.end_unix_ns;
        for (reason, &n) in &profile.agent.dropped {
            *self.dropped_events.entry(reason.clone()).or_default() += n;
        }
        self.probes = profile
            .agent
            .probes
            .iter()
            .map(|(group, report)| (group.clone(), report.status == "attached"))
            .collect();
    }

    /// The families of every section, for the sinks to render. `delivery` holds the
    /// export pipeline's own counters (they live with the senders, not in profiles).
    pub fn families(&self, delivery: &[Family]) -> Vec<Family> {
        let mut families = Vec::new();
        families.extend(agent_families(self));
        families.extend(service_families(self));
        families.extend(syscall_families(self));
        families.extend(resource_families(self));
        families.extend(verdict_families(self));
        families.extend(delivery.iter().cloned());
        families
    }
}

fn add_syscalls(totals: &mut ServiceTotals, service: &ServiceProfile) {
    for syscall in &service.syscalls {
        // The histogram is of the timed calls; `total_ns` is scaled up to all calls.
        let timed_ns = if syscall.count == 0 {
            0
        } else {
            (u128::from(syscall.total_ns) * u128::from(syscall.timed) / u128::from(syscall.count))
                as u64
        };
        totals
            .syscalls
            .entry(syscall.name.clone())
            .or_default()
            .add(&syscall.buckets, timed_ns);
        *totals.calls.entry(syscall.name.clone()).or_default() += syscall.count;
    }
}

fn add_errors(totals: &mut ServiceTotals, service: &ServiceProfile) {
    for error in &service.errors {
        *totals
            .errors
            .entry((error.syscall.clone(), error.errno.clone()))
            .or_default() += error.count;
    }
}

/// The `network`, `disk`, `cpu` and `offcpu` sections: counters and latency histograms.
fn add_resources(totals: &mut ServiceTotals, s: &ServiceProfile) {
    let secs = |ns: u64| ns as f64 / 1e9;
    let n = &s.network;
    totals.count(NET_TX, vec![], n.tx_bytes as f64);
    totals.count(NET_RX, vec![], n.rx_bytes as f64);
    totals.count(NET_OPENED, vec![], n.connections_opened as f64);
    totals.count(NET_CLOSED, vec![], n.connections_closed as f64);
    totals.count(NET_FAILED, vec![], n.connects_failed as f64);
    totals.count(NET_RETRANS, vec![], n.retransmits as f64);
    // Outbound peers only (a known port): the service's dependencies, a bounded set. Inbound
    // clients stay in the profile document, not in metric labels.
    for p in n.peers.iter().filter(|p| p.port != 0) {
        let peer = vec![
            ("peer", format!("{}:{}", p.address, p.port)),
            ("peer_service", p.service.clone().unwrap_or_default()),
        ];
        totals.count(PEER_WAIT, peer.clone(), secs(p.wait_ns));
        totals.count(PEER_TX, peer.clone(), p.tx_bytes as f64);
        totals.count(PEER_RX, peer, p.rx_bytes as f64);
    }
    let d = &s.disk;
    totals.count(DISK_READ, vec![], d.read_bytes as f64);
    totals.count(DISK_WRITE, vec![], d.write_bytes as f64);
    for dev in &d.devices {
        totals.count(DISK_IOS, vec![("device", dev.name.clone())], dev.ios as f64);
    }
    let disk_time: u64 = d.devices.iter().map(|x| x.queue_ns + x.device_ns).sum();
    totals.disk_io.add(&d.buckets, disk_time);
    let c = &s.cpu;
    totals.count(CPU_ON, vec![], secs(c.on_cpu_ns));
    totals.count(CPU_RUNQ, vec![], secs(c.runqueue_ns));
    totals.count(
        CPU_SWITCH,
        vec![("kind", "voluntary".into())],
        c.voluntary_switches as f64,
    );
    totals.count(
        CPU_SWITCH,
        vec![("kind", "involuntary".into())],
        c.involuntary_switches as f64,
    );
    for (mode, ns) in [("user", c.user_ns), ("system", c.system_ns)] {
        totals.count(CPU_MODE, vec![("mode", mode.into())], secs(ns));
    }
    totals.count(MAJOR_FAULTS, vec![], c.major_faults as f64);
    totals.runqueue.add(&c.runqueue_buckets, c.runqueue_ns);
    let o = &s.offcpu;
    for (reason, ns) in [
        ("lock", o.lock_ns),
        ("network", o.network_ns),
        ("disk", o.disk_ns),
        ("sleep", o.sleep_ns),
        ("memory", o.memory_ns),
        ("idle", o.idle_ns),
        ("other", o.other_ns),
    ] {
        totals.count(OFFCPU, vec![("reason", reason.into())], secs(ns));
    }
}

fn add_verdict(totals: &mut ServiceTotals, s: &ServiceProfile) {
    let t = &s.time;
    totals.budget = vec![
        ("on_cpu", t.on_cpu),
        ("runqueue", t.runqueue),
        ("disk_io", t.disk_io),
        ("network_wait", t.network_wait),
        ("lock_wait", t.lock_wait),
        ("sleep", t.sleep),
        ("memory", t.memory),
        ("other", t.other),
    ];
    let b = &s.bottleneck;
    totals.verdict =
        (!b.class.is_empty()).then(|| (b.class.clone(), b.resource.clone(), b.share, b.confidence));
}

// Counter families of the resource sections: (Prometheus name, OpenTelemetry name, unit, help).
const NET_TX: &str = "crmprof_network_transmit_bytes_total";
const NET_RX: &str = "crmprof_network_receive_bytes_total";
const NET_OPENED: &str = "crmprof_network_connections_opened_total";
const NET_CLOSED: &str = "crmprof_network_connections_closed_total";
const NET_FAILED: &str = "crmprof_network_connect_failures_total";
const NET_RETRANS: &str = "crmprof_network_retransmits_total";
const PEER_WAIT: &str = "crmprof_peer_wait_seconds_total";
const PEER_TX: &str = "crmprof_peer_transmit_bytes_total";
const PEER_RX: &str = "crmprof_peer_receive_bytes_total";
const DISK_READ: &str = "crmprof_disk_read_bytes_total";
const DISK_WRITE: &str = "crmprof_disk_write_bytes_total";
const DISK_IOS: &str = "crmprof_disk_ios_total";
const CPU_ON: &str = "crmprof_cpu_seconds_total";
const CPU_RUNQ: &str = "crmprof_runqueue_seconds_total";
const CPU_SWITCH: &str = "crmprof_context_switches_total";
const CPU_MODE: &str = "crmprof_cpu_mode_seconds_total";
const MAJOR_FAULTS: &str = "crmprof_major_page_faults_total";
const OFFCPU: &str = "crmprof_offcpu_seconds_total";

const COUNTERS: &[(&str, &str, &str, &str)] = &[
    (
        NET_TX,
        "crmprof.network.io.transmit",
        "By",
        "Bytes the service sent on sockets.",
    ),
    (
        NET_RX,
        "crmprof.network.io.receive",
        "By",
        "Bytes the service received on sockets, scaled to the window when the receive probe \
         was attached for part of it (socket_receive_duty_cycle).",
    ),
    (
        NET_OPENED,
        "crmprof.network.connections.opened",
        "{connection}",
        "TCP connections opened (connect or accept).",
    ),
    (
        NET_CLOSED,
        "crmprof.network.connections.closed",
        "{connection}",
        "TCP connections the service closed.",
    ),
    (
        NET_FAILED,
        "crmprof.network.connect.failures",
        "{connection}",
        "TCP connects that failed.",
    ),
    (
        NET_RETRANS,
        "crmprof.network.retransmits",
        "{segment}",
        "TCP retransmissions on the service's sockets.",
    ),
    (
        PEER_WAIT,
        "crmprof.peer.wait",
        "s",
        "Time the service's threads waited on a downstream peer.",
    ),
    (
        PEER_TX,
        "crmprof.peer.io.transmit",
        "By",
        "Bytes sent to a downstream peer.",
    ),
    (
        PEER_RX,
        "crmprof.peer.io.receive",
        "By",
        "Bytes received from a downstream peer, scaled as the service's received bytes.",
    ),
    (
        DISK_READ,
        "crmprof.disk.io.read",
        "By",
        "Bytes the service read from block devices.",
    ),
    (
        DISK_WRITE,
        "crmprof.disk.io.write",
        "By",
        "Bytes the service wrote to block devices.",
    ),
    (
        DISK_IOS,
        "crmprof.disk.operations",
        "{operation}",
        "Block I/O requests of the service, per device.",
    ),
    (
        CPU_ON,
        "crmprof.cpu.time",
        "s",
        "Time the service's threads ran on a CPU.",
    ),
    (
        CPU_RUNQ,
        "crmprof.cpu.runqueue.time",
        "s",
        "Time the service's threads were runnable, waiting for a CPU.",
    ),
    (
        CPU_SWITCH,
        "crmprof.cpu.context_switches",
        "{switch}",
        "Context switches, voluntary (blocked) or involuntary (preempted).",
    ),
    (
        CPU_MODE,
        "crmprof.cpu.mode.time",
        "s",
        "CPU time of the service's threads in user or kernel (system) mode, as the kernel's \
         timer ticks sample it.",
    ),
    (
        MAJOR_FAULTS,
        "crmprof.memory.major_page_faults",
        "{fault}",
        "Page faults of the service that read from disk (a mapped file's page, or swap).",
    ),
    (
        OFFCPU,
        "crmprof.offcpu.time",
        "s",
        "Time the service's threads were off CPU, by why they blocked.",
    ),
];

fn resource_families(t: &Totals) -> Vec<Family> {
    let mut families: Vec<Family> = COUNTERS
        .iter()
        .map(|&(prom, otel, unit, help)| Family::new(prom, otel, unit, Kind::Counter, help))
        .collect();
    let mut runqueue = Family::new(
        "crmprof_runqueue_latency_seconds",
        "crmprof.cpu.runqueue.latency",
        "ns",
        Kind::Histogram,
        "Wakeup or preemption to running again, per service.",
    );
    let mut disk = Family::new(
        "crmprof_disk_io_duration_seconds",
        "crmprof.disk.io.duration",
        "ns",
        Kind::Histogram,
        "Block I/O request latency, queued to completed, per service.",
    );
    for (service, s) in &t.services {
        for ((metric, labels), &value) in &s.counters {
            if let Some(f) = families.iter_mut().find(|f| f.prom_name == *metric) {
                f.service_point(service, labels.clone(), Value::Number(value));
            }
        }
        if s.runqueue.count > 0 {
            runqueue.service_point(service, vec![], Value::Histogram(s.runqueue.clone()));
        }
        if s.disk_io.count > 0 {
            disk.service_point(service, vec![], Value::Histogram(s.disk_io.clone()));
        }
    }
    families.push(runqueue);
    families.push(disk);
    families
}

/// The time budget and the verdict of each service's last window, as gauges.
fn verdict_families(t: &Totals) -> Vec<Family> {
    let mut budget = Family::new(
        "crmprof_time_budget_ratio",
        "crmprof.time.budget",
        "1",
        Kind::Gauge,
        "Share of the service's non-idle thread time in each state, last window.",
    );
    let mut share = Family::new(
        "crmprof_bottleneck_share_ratio",
        "crmprof.bottleneck.share",
        "1",
        Kind::Gauge,
        "The verdict (class, resource labels) and the share of thread time it explains.",
    );
    let mut confidence = Family::new(
        "crmprof_bottleneck_confidence_ratio",
        "crmprof.bottleneck.confidence",
        "1",
        Kind::Gauge,
        "Confidence of the verdict, 0-1.",
    );
    for (service, s) in &t.services {
        for &(state, v) in &s.budget {
            budget.service_point(service, vec![("state", state.into())], Value::Number(v));
        }
        if let Some((class, resource, sh, conf)) = &s.verdict {
            let labels = vec![("class", class.clone()), ("resource", resource.clone())];
            share.service_point(service, labels.clone(), Value::Number(*sh));
            confidence.service_point(service, labels, Value::Number(*conf));
        }
    }
    vec![budget, share, confidence]
}

/// Counter, gauge or histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since `Totals::start_unix_ns`.
    Counter,
    Gauge,
    /// An [`ExpHistogram`] in nanoseconds; Prometheus renders it in seconds.
    Histogram,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    Histogram(ExpHistogram),
}

/// One series: the service it belongs to (a resource in OTLP, a `service` label in
/// Prometheus; `None` for the agent's own metrics) and its other labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub service: Option<String>,
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    /// Prometheus name: base units, `_total` on counters.
    pub prom_name: &'static str,
    /// OpenTelemetry name (dotted).
    pub otel_name: &'static str,
    /// UCUM unit for OTLP (`ns`, `1`, `{call}`).
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub points: Vec<Point>,
}

impl Family {
    pub fn new(
        prom_name: &'static str,
        otel_name: &'static str,
        unit: &'static str,
        kind: Kind,
        help: &'static str,
    ) -> Self {
        Self {
            prom_name,
            otel_name,
            unit,
            help,
            kind,
            points: Vec::new(),
        }
    }

    /// Adds a numeric point of the agent itself.
    pub fn agent_point(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.points.push(Point {
            service: None,
            labels,
            value: Value::Number(value),
        });
    }

    fn service_point(&mut self, service: &str, labels: Vec<(&'static str, String)>, value: Value) {
        self.points.push(Point {
            service: Some(service.to_owned()),
            labels,
            value,
        });
    }
}

fn agent_families(t: &Totals) -> Vec<Family> {
    let mut info = Family::new(
        "crmprof_build_info",
        "crmprof.build.info",
        "1",
        Kind::Gauge,
        "Always 1; the agent's version as a label.",
    );
    info.agent_point(vec![("version", t.agent_version.clone())], 1.0);
    let mut windows = Family::new(
        "crmprof_windows_total",
        "crmprof.windows",
        "{window}",
        Kind::Counter,
        "Profile windows closed since the agent started.",
    );
    windows.agent_point(vec![], t.windows as f64);
    let mut end = Family::new(
        "crmprof_window_end_timestamp_seconds",
        "crmprof.window.end",
        "s",
        Kind::Gauge,
        "End of the last closed window, Unix time.",
    );
    end.agent_point(vec![], t.last_window_end_ns as f64 / 1e9);
    let mut duration = Family::new(
        "crmprof_window_duration_seconds",
        "crmprof.window.duration",
        "s",
        Kind::Gauge,
        "Length of the last closed window.",
    );
    duration.agent_point(
        vec![],
        t.last_window_end_ns.saturating_sub(t.last_window_start_ns) as f64 / 1e9,
    );
    let mut dropped = Family::new(
        "crmprof_dropped_events_total",
        "crmprof.dropped_events",
        "{event}",
        Kind::Counter,
        "Events the agent could not record, by reason (profile field agent.dropped).",
    );
    for (reason, &n) in &t.dropped_events {
        dropped.agent_point(vec![("reason", reason.clone())], n as f64);
    }
    let mut probes = Family::new(
        "crmprof_probe_attached",
        "crmprof.probe.attached",
        "1",
        Kind::Gauge,
        "1 when the probe group is attached, 0 when it failed (see crmprof check).",
    );
    for (group, &attached) in &t.probes {
        probes.agent_point(
            vec![("group", group.clone())],
            f64::from(u8::from(attached)),
        );
    }
    vec![info, windows, end, duration, dropped, probes]
}

fn service_families(t: &Totals) -> Vec<Family> {
    let mut processes = Family::new(
        "crmprof_service_processes",
        "crmprof.service.processes",
        "{process}",
        Kind::Gauge,
        "Processes in the service during the last window.",
    );
    for (name, s) in &t.services {
        processes.service_point(name, vec![], Value::Number(s.processes as f64));
    }
    vec![processes]
}

/// The `syscalls` and `errors` sections.
fn syscall_families(t: &Totals) -> Vec<Family> {
    let mut duration = Family::new(
        "crmprof_syscall_duration_seconds",
        "crmprof.syscall.duration",
        "ns",
        Kind::Histogram,
        "Time from syscall entry to exit of the timed calls (every call, or a random one in \
         syscall_sample, while the syscall probes are attached), per service and syscall.",
    );
    let mut calls = Family::new(
        "crmprof_syscall_calls_total",
        "crmprof.syscall.calls",
        "{call}",
        Kind::Counter,
        "Syscalls made, per service and syscall: every call, scaled to the window when the \
         syscall probes were attached for part of it (syscall_duty_cycle).",
    );
    let mut errors = Family::new(
        "crmprof_syscall_errors_total",
        "crmprof.syscall.errors",
        "{call}",
        Kind::Counter,
        "Syscalls that returned an error, per service, syscall and errno.",
    );
    for (service, s) in &t.services {
        for (syscall, h) in &s.syscalls {
            duration.service_point(
                service,
                vec![("syscall", syscall.clone())],
                Value::Histogram(h.clone()),
            );
        }
        for (syscall, &n) in &s.calls {
            calls.service_point(
                service,
                vec![("syscall", syscall.clone())],
                Value::Number(n as f64),
            );
        }
        for ((syscall, errno), &n) in &s.errors {
            errors.service_point(
                service,
                vec![("syscall", syscall.clone()), ("errno", errno.clone())],
                Value::Number(n as f64),
            );
        }
    }
    vec![duration, calls, errors]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_index_inverts_the_profile_bound_exactly() {
        // Every bucket a real integer value can land in, over the whole range.
        let mut values: Vec<u64> = (1..=70_000).collect();
        for k in 16..63 {
            for d in 0..4u64 {
                values.push((1u64 << k) - d);
                values.push((1u64 << k) + d);
            }
            // Inside each quarter of the octave.
            for q in 1..4 {
                values.push(((1u64 << k) as f64 * 2f64.powf(f64::from(q) / 4.0)) as u64 + 1);
            }
        }
        for v in values {
            let i = hist::bucket(v);
            let upper = hist::upper_bound(i).ceil() as u64;
            assert_eq!(bucket_index(upper), i as i32, "value {v} bound {upper}");
        }
    }

    #[test]
    fn totals_are_cumulative_and_forget_absent_services() {
        use crate::export::report::tests::profile;
        let mut t = Totals::new(0);
        t.add(&profile(0, "nginx", 100, 10));
        t.add(&profile(10, "nginx", 300, 5));
        let families = t.families(&[]);
        let find = |name: &str| {
            families
                .iter()
                .find(|f| f.prom_name == name)
                .map(|f| f.points.clone())
                .unwrap_or_default()
        };
        let duration = find("crmprof_syscall_duration_seconds");
        let Some(Value::Histogram(h)) = duration.first().map(|p| p.value.clone()) else {
            panic!("no histogram: {duration:?}");
        };
        assert_eq!((h.count, h.sum_ns), (400, 400 * 1_050_000));
        assert_eq!(duration[0].service.as_deref(), Some("nginx"));
        let errors = find("crmprof_syscall_errors_total");
        assert_eq!(errors[0].value, Value::Number(15.0));
        assert_eq!(find("crmprof_windows_total")[0].value, Value::Number(2.0));
        // `x` is dropped once per window in the test profile.
        assert_eq!(
            find("crmprof_dropped_events_total")[0].value,
            Value::Number(2.0)
        );
        // Two hours later, without nginx: forgotten.
        t.add(&profile(7_200, "redis", 1, 0));
        assert!(!t.services.contains_key("nginx"));
        assert!(t.services.contains_key("redis"));
    }

    #[test]
    fn histogram_adds_and_counts_at_boundaries() {
        let mut h = ExpHistogram::default();
        // 1024 ns is 2^10: bucket 40 in the kernel (lower-inclusive), bound 2^(41/4) → 1218.
        let b40 = hist::upper_bound(40).ceil() as u64;
        let b39 = hist::upper_bound(39).ceil() as u64; // 1024
        h.add(&[(b39, 3), (b40, 5)], 8_000);
        h.add(&[(b40, 1)], 1_100);
        assert_eq!(h.count, 9);
        assert_eq!(h.sum_ns, 9_100);
        assert_eq!(h.buckets.get(&39), Some(&3));
        assert_eq!(h.buckets.get(&40), Some(&6));
        // At or below 2^10 ns = 2^(40/4): bucket 39 only.
        assert_eq!(h.count_at_or_below_boundary(40), 3);
        assert_eq!(h.count_at_or_below_boundary(41), 9);
        assert_eq!(h.count_at_or_below_boundary(0), 0);
    }

    #[test]
    fn resource_and_verdict_sections_become_families() {
        use crate::{
            profile::{CpuProfile, NetworkProfile, PeerProfile},
            verdict::{Bottleneck, TimeBudget},
        };
        let mut t = Totals::new(0);
        let mut p = crate::export::report::tests::profile(0, "api", 10, 0);
        p.services[0].network = NetworkProfile {
            tx_bytes: 1000,
            peers: vec![
                PeerProfile {
                    address: "127.0.0.1".into(),
                    port: 5432,
                    service: Some("postgres".into()),
                    wait_ns: 2_000_000_000,
                    ..PeerProfile::default()
                },
                PeerProfile {
                    address: "10.0.0.9".into(),
                    port: 0,
                    wait_ns: 1,
                    ..PeerProfile::default()
                },
            ],
            ..NetworkProfile::default()
        };
        p.services[0].cpu = CpuProfile {
            on_cpu_ns: 1_500_000_000,
            runqueue_buckets: vec![(1_000_000, 3)],
            system_ns: 500_000_000,
            major_faults: 7,
            ..CpuProfile::default()
        };
        p.services[0].time = TimeBudget {
            on_cpu: 0.25,
            network_wait: 0.75,
            ..TimeBudget::default()
        };
        p.services[0].bottleneck = Bottleneck {
            class: "software".into(),
            resource: "downstream".into(),
            share: 0.75,
            confidence: 0.9,
            ..Bottleneck::default()
        };
        t.add(&p);
        t.add(&p);
        let families = t.families(&[]);
        let number = |name: &str, label: Option<(&str, &str)>| -> Vec<f64> {
            families
                .iter()
                .filter(|f| f.prom_name == name)
                .flat_map(|f| f.points.iter())
                .filter(|pt| {
                    label.is_none_or(|(k, v)| pt.labels.iter().any(|(a, b)| *a == k && b == v))
                })
                .filter_map(|pt| match pt.value {
                    Value::Number(n) => Some(n),
                    Value::Histogram(_) => None,
                })
                .collect()
        };
        assert_eq!(
            number("crmprof_network_transmit_bytes_total", None),
            vec![2000.0]
        );
        assert_eq!(number("crmprof_cpu_seconds_total", None), vec![3.0]);
        assert_eq!(
            number("crmprof_cpu_mode_seconds_total", Some(("mode", "system"))),
            vec![1.0]
        );
        assert_eq!(number("crmprof_major_page_faults_total", None), vec![14.0]);
        // Only the outbound peer, cumulative over both windows.
        assert_eq!(number("crmprof_peer_wait_seconds_total", None), vec![4.0]);
        assert_eq!(
            number("crmprof_time_budget_ratio", Some(("state", "network_wait"))),
            vec![0.75],
            "a gauge: the last window, not a sum"
        );
        assert_eq!(
            number(
                "crmprof_bottleneck_share_ratio",
                Some(("resource", "downstream"))
            ),
            vec![0.75]
        );
        let rq = families
            .iter()
            .find(|f| f.prom_name == "crmprof_runqueue_latency_seconds")
            .and_then(|f| f.points.first())
            .map(|p| p.value.clone());
        assert!(matches!(rq, Some(Value::Histogram(h)) if h.count == 6));
    }
}
