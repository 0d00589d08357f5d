//! The profile document, `crmprof.profile/v1`: what one window of measurement says about each
//! service. Field names are a public interface (JSON Schema in `docs/profile.schema.json`);
//! add fields, never rename them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::probes::GroupStatus;

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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Window {
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub duration_ns: u64,
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
}

impl From<&GroupStatus> for ProbeReport {
    fn from(s: &GroupStatus) -> Self {
        Self {
            status: s.status.to_owned(),
            attach_points: s.attach_points.iter().map(|&p| p.to_owned()).collect(),
            error: s.error.clone(),
            verifier_log: s.verifier_log.clone(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceProfile {
    pub name: String,
    pub pids: Vec<u32>,
    /// Sorted by total time, largest first.
    pub syscalls: Vec<SyscallProfile>,
    /// Failed calls by syscall and errno, most frequent first.
    pub errors: Vec<ErrorProfile>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyscallProfile {
    pub name: String,
    pub nr: u32,
    pub count: u64,
    pub errors: u64,
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
    pub count: u64,
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
        }
    }
}
