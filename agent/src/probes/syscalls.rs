//! Reading the syscall group's maps: cumulative per-(service, syscall) stats summed over CPUs.

use std::collections::HashMap;

use agent_ebpf::{ErrnoKey, SyscallKey, SyscallStats, hist, maps};
use aya::maps::{MapData, PerCpuHashMap};

use super::{Probes, map_ref};
use crate::error::ProbeError;

/// One (service, syscall) pair's counters, summed over CPUs, cumulative since load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub count: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: Vec<u64>,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            count: 0,
            errors: 0,
            total_ns: 0,
            max_ns: 0,
            buckets: vec![0; hist::BUCKETS],
        }
    }
}

/// Everything the syscall group has recorded so far.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub stats: HashMap<SyscallKey, Totals>,
    pub errors: HashMap<ErrnoKey, u64>,
}

/// Reads both maps once. Cost: one syscall per entry, entries = (service, syscall) pairs seen.
pub fn read(probes: &Probes) -> Result<Snapshot, ProbeError> {
    let read_err = |name| {
        move |e: aya::maps::MapError| ProbeError::MapRead {
            name,
            reason: e.to_string(),
        }
    };
    let mut snapshot = Snapshot::default();
    let stats: PerCpuHashMap<&MapData, SyscallKey, SyscallStats> =
        map_ref(probes.ebpf(), maps::SYSCALL_STATS)?;
    for entry in stats.iter() {
        let (key, per_cpu) = entry.map_err(read_err(maps::SYSCALL_STATS))?;
        let mut totals = Totals::default();
        for cpu in per_cpu.iter() {
            totals.count += cpu.count;
            totals.errors += cpu.errors;
            totals.total_ns += cpu.total_ns;
            totals.max_ns = totals.max_ns.max(cpu.max_ns);
            for (sum, n) in totals.buckets.iter_mut().zip(cpu.buckets.iter()) {
                *sum += n;
            }
        }
        snapshot.stats.insert(key, totals);
    }
    let errors: PerCpuHashMap<&MapData, ErrnoKey, u64> =
        map_ref(probes.ebpf(), maps::SYSCALL_ERRORS)?;
    for entry in errors.iter() {
        let (key, per_cpu) = entry.map_err(read_err(maps::SYSCALL_ERRORS))?;
        snapshot.errors.insert(key, per_cpu.iter().sum());
    }
    Ok(snapshot)
}
