//! Reading the syscall group's maps: per (service, syscall) the exact call count (a shared
//! mapping of `SYSCALL_CALLS`, no syscall per entry), errors by errno, and the latency of the
//! timed calls, each summed over CPUs and cumulative since load.

use std::collections::HashMap;

use agent_ebpf::{
    ErrnoKey, SYSCALL_NR_SLOTS, SyscallKey, SyscallStats, hist, maps, syscall_calls_index,
};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
};

use super::{Probes, map_ref, mapping::Mapping};
use crate::error::ProbeError;

/// One (service, syscall) pair's counters, summed over CPUs, cumulative since load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    /// Every call.
    pub count: u64,
    /// Calls that returned an errno.
    pub errors: u64,
    /// Calls that were timed (all, or a sample): the latency figures below are theirs.
    pub timed: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: Vec<u64>,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            count: 0,
            errors: 0,
            timed: 0,
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

/// `SYSCALL_CALLS` mapped read-only into the agent: `cpus` blocks of `rows` service rows.
pub struct CallCounts {
    mapping: Mapping,
    cpus: u32,
    rows: u32,
}

impl CallCounts {
    pub fn map(ebpf: &Ebpf, cpus: u32, rows: u32) -> Result<Self, ProbeError> {
        let len = cpus as usize * rows as usize * SYSCALL_NR_SLOTS as usize * 8;
        Ok(Self {
            mapping: Mapping::array(ebpf, maps::SYSCALL_CALLS, len, false)?,
            cpus,
            rows,
        })
    }

    /// Calls of `service` (summed over CPUs) for every syscall number with any.
    fn service(&self, service: u32) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0..SYSCALL_NR_SLOTS).filter_map(move |nr| {
            let total: u64 = (0..self.cpus)
                .filter_map(|cpu| {
                    let i = syscall_calls_index(cpu, self.rows, service, nr) as usize;
                    let n = self.mapping.element::<u64>(i)?;
                    // SAFETY: an element inside the mapping; the kernel writes aligned u64s,
                    // so a volatile load sees a whole value.
                    Some(unsafe { n.read_volatile() })
                })
                .sum();
            (total > 0).then_some((nr, total))
        })
    }
}

/// Reads the counts of services 1..=`max_service` and both hash maps. Cost: one syscall per
/// hash entry (pairs with timed calls or errors); counts are plain memory reads.
pub fn read(probes: &Probes) -> Result<Snapshot, ProbeError> {
    let read_err = |name| {
        move |e: aya::maps::MapError| ProbeError::MapRead {
            name,
            reason: e.to_string(),
        }
    };
    let mut snapshot = Snapshot::default();
    if let Some(calls) = probes.call_counts() {
        for service in probes.service_ids(calls.rows) {
            for (nr, count) in calls.service(service) {
                snapshot
                    .stats
                    .entry(SyscallKey { service, nr })
                    .or_default()
                    .count = count;
            }
        }
    }
    let stats: PerCpuHashMap<&MapData, SyscallKey, SyscallStats> =
        map_ref(probes.ebpf(), maps::SYSCALL_STATS)?;
    for entry in stats.iter() {
        let (key, per_cpu) = entry.map_err(read_err(maps::SYSCALL_STATS))?;
        let totals = snapshot.stats.entry(key).or_default();
        for cpu in per_cpu.iter() {
            totals.timed += cpu.timed;
            totals.total_ns += cpu.total_ns;
            totals.max_ns = totals.max_ns.max(cpu.max_ns);
            for (sum, n) in totals.buckets.iter_mut().zip(cpu.buckets.iter()) {
                *sum += n;
            }
        }
    }
    let errors: PerCpuHashMap<&MapData, ErrnoKey, u64> =
        map_ref(probes.ebpf(), maps::SYSCALL_ERRORS)?;
    for entry in errors.iter() {
        let (key, per_cpu) = entry.map_err(read_err(maps::SYSCALL_ERRORS))?;
        let n: u64 = per_cpu.iter().sum();
        snapshot.errors.insert(key, n);
        let pair = SyscallKey {
            service: key.service,
            nr: key.nr,
        };
        snapshot.stats.entry(pair).or_default().errors += n;
    }
    Ok(snapshot)
}
