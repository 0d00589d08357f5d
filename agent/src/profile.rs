//! The profile document, `crmprof.profile/v1`: what one window of measurement says about each
//! service. Field names are a public interface (JSON Schema in `docs/profile.schema.json`);
//! add fields, never rename them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    cgroup::Limits,
    host::HostUse,
    probes::GroupStatus,
    verdict::{Bottleneck, TimeBudget},
};

pub const SCHEMA: &str = "crmprof.profile/v1";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Profile {
    pub schema: String,
    pub host: Host,
    pub window: Window,
    pub agent: Agent,
    pub services: Vec<ServiceProfile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Host {
    pub hostname: String,
    pub kernel: String,
    pub cpus: u32,
    /// Resource use over the window (USE method: utilisation and saturation).
    #[serde(flatten)]
    pub usage: HostUse,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub duration_ns: u64,
    /// How long the syscall probes were attached in the window: all of it, or the share
    /// `syscall_duty_cycle` gives them. Syscall counts and errors are what was seen in that
    /// time scaled to the window (`seen` keeps the raw figure); 0 when the group is not
    /// attached.
    #[serde(default)]
    pub syscall_probe_ns: u64,
    /// How long the socket receive probe was attached in the window: all of it, or the share
    /// `socket_receive_duty_cycle` gives it. Received bytes (per service and per peer) are what
    /// it saw in that time scaled to the window; sent bytes, connections, retransmits and
    /// network waits are measured the whole window. 0 when the net group is not attached.
    #[serde(default)]
    pub socket_receive_probe_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Agent {
    pub version: String,
    /// Per probe group: attached or failed, and why.
    pub probes: BTreeMap<String, ProbeReport>,
    /// Events the agent could not record in this window, by reason. Always lists every reason,
    /// zero included, so a reader can tell "none lost" from "not reported".
    pub dropped: BTreeMap<String, u64>,
    /// Process tracking activity in this window (not losses).
    pub tracking: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeReport {
    pub status: String,
    pub attach_points: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verifier_log: Option<String>,
    /// How the group runs when it runs in a degraded mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl From<&GroupStatus> for ProbeReport {
    fn from(s: &GroupStatus) -> Self {
        Self {
            status: s.status.to_owned(),
            attach_points: s.attach_points.iter().map(|&p| p.to_owned()).collect(),
            error: s.error.clone(),
            verifier_log: s.verifier_log.clone(),
            note: s.note.clone(),
        }
    }
}

/// Fields added after the first release default when reading older documents.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceProfile {
    pub name: String,
    pub pids: Vec<u32>,
    /// Sorted by total time, largest first.
    pub syscalls: Vec<SyscallProfile>,
    /// Failed calls by syscall and errno, most frequent first.
    pub errors: Vec<ErrorProfile>,
    pub cpu: CpuProfile,
    /// Off-CPU time of the service's threads by why they blocked.
    pub offcpu: OffCpuProfile,
    pub network: NetworkProfile,
    pub disk: DiskProfile,
    /// cgroup limits of the service and how much they held it back in the window.
    pub limits: Limits,
    /// Where the service's non-idle thread time went.
    pub time: TimeBudget,
    /// What holds the service back, with evidence.
    pub bottleneck: Bottleneck,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CpuProfile {
    pub on_cpu_ns: u64,
    /// Runnable but waiting for a CPU (wakeup or preemption → switch-in).
    pub runqueue_ns: u64,
    pub runqueue_p50_ns: u64,
    pub runqueue_p99_ns: u64,
    /// Run-queue latency histogram: non-empty buckets as `[upper_bound_ns, count]`, the same
    /// exponential buckets as the syscalls'.
    pub runqueue_buckets: Vec<(u64, u64)>,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    /// The kernel's split of CPU time into user and kernel mode (`utime`/`stime`, sampled at
    /// each timer tick: exact over many ticks, not per slice).
    pub user_ns: u64,
    pub system_ns: u64,
    /// Page faults that read from disk (a mapped file's page, or swap).
    pub major_faults: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OffCpuProfile {
    /// futex waits.
    pub lock_ns: u64,
    /// Blocked on sockets (recv/send/connect, reads and writes that sleep interruptibly),
    /// sending included.
    pub network_ns: u64,
    /// The part of `network_ns` blocked *sending*: full send buffers.
    pub network_send_ns: u64,
    /// Uninterruptible waits in file I/O syscalls (block I/O, including cgroup throttling).
    pub disk_ns: u64,
    /// nanosleep / clock_nanosleep.
    pub sleep_ns: u64,
    /// Uninterruptible waits outside syscalls (page faults, reclaim).
    pub memory_ns: u64,
    /// Waiting for new work: epoll/poll/select/accept.
    pub idle_ns: u64,
    pub other_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkProfile {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connects_failed: u64,
    pub retransmits: u64,
    /// Time the service's threads were blocked waiting on sockets (= offcpu.network_ns).
    pub wait_ns: u64,
    /// By remote endpoint, busiest first.
    pub peers: Vec<PeerProfile>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerProfile {
    /// IP address, or "unix".
    pub address: String,
    /// Remote port; 0 for inbound connections (clients' ephemeral ports are grouped).
    pub port: u16,
    /// The local service listening on that port, when the peer is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub connections: u64,
    pub wait_ns: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DiskProfile {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub ios: u64,
    /// Time the service's threads were blocked on disk (= offcpu.disk_ns); includes time held by
    /// an I/O throttle, which the per-request latencies below do not.
    pub wait_ns: u64,
    /// Per-request latency, queued → completed.
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub buckets: Vec<(u64, u64)>,
    pub devices: Vec<DeviceProfile>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeviceProfile {
    pub name: String,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub ios: u64,
    pub p50_ns: u64,
    pub p99_ns: u64,
    /// Summed time requests spent queued in the block layer before issue.
    pub queue_ns: u64,
    /// Summed time requests spent at the device (issue → complete).
    pub device_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyscallProfile {
    pub name: String,
    pub nr: u32,
    /// Calls in the window: `seen`, scaled to the window when the syscall probes were attached
    /// for part of it (`window.syscall_probe_ns`).
    pub count: u64,
    /// Calls seen while the syscall probes were attached.
    #[serde(default)]
    pub seen: u64,
    /// Calls that failed, scaled as `count`.
    pub errors: u64,
    /// Calls whose latency was measured (every call, or a random one in `syscall_sample`):
    /// the percentiles, `max_ns` and `buckets` are theirs.
    pub timed: u64,
    /// Time in the call: measured, or `count` × the timed calls' mean when sampling.
    pub total_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Non-empty histogram buckets as `[upper_bound_ns, count]`; the buckets are OpenTelemetry
    /// exponential buckets at scale 2 (each spans a factor of 2^(1/4)).
    pub buckets: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorProfile {
    pub syscall: String,
    pub errno: String,
    /// Scaled as `SyscallProfile::count`.
    pub count: u64,
    /// Failures seen while the syscall probes were attached.
    #[serde(default)]
    pub seen: u64,
}

impl Host {
    pub fn current() -> Self {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            usage: HostUse::default(),
        }
    }
}
