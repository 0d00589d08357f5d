//! Reading the syscall group's maps: per (service, syscall) the exact call count (a shared
//! mapping of `SYSCALL_CALLS`, no syscall per entry), errors by errno, and the latency of the
//! timed calls, each summed over CPUs and cumulative since load.

use std::collections::HashMap;

use agent_ebpf::{
    ErrnoKey, SYSCALL_NR_SLOTS, SyscallKey, SyscallStats, hist, maps, start, syscall_calls_index,
};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap},
    programs::{ProgramError, RawTracePoint, raw_trace_point::RawTracePointLinkId},
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

/// The syscall group's attachment. A daemon may cycle it (`syscall_duty_cycle`): attached for
/// part of each window, detached — no cost to any process — for the rest. Each attach gets a
/// new number in `SYSCALL_PHASE`, so the programs tell a call begun in this attach from one
/// left over from an earlier one.
pub struct Switch {
    programs: &'static [(&'static str, &'static str)],
    links: Vec<RawTracePointLinkId>,
    /// Whether the scheduler group runs too: `ON_CPU` is then kept while attached.
    keeps_on_cpu: bool,
    phase: u32,
    /// Monotonic ns of the current attach; `None` while detached.
    since: Option<u64>,
    /// Start of the window being measured, and the attached time already ended in it.
    window_start: u64,
    banked_ns: u64,
}

impl Switch {
    /// Numbers the first attach; call before the group's programs are attached.
    pub fn first_phase(ebpf: &mut Ebpf) -> Result<u32, ProbeError> {
        super::set_scalar(ebpf, maps::SYSCALL_PHASE, 1_u32)?;
        Ok(1)
    }

    /// The group as [`Probes::load`] attached it, with phase `phase`.
    pub fn attached(
        ebpf: &mut Ebpf,
        programs: &'static [(&'static str, &'static str)],
        links: Vec<RawTracePointLinkId>,
        keeps_on_cpu: bool,
        phase: u32,
        now: u64,
    ) -> Result<Self, ProbeError> {
        if keeps_on_cpu {
            super::set_scalar(ebpf, maps::ON_CPU_KEPT, 1_u32)?;
        }
        Ok(Self {
            programs,
            links,
            keeps_on_cpu,
            phase,
            since: Some(now),
            window_start: now,
            banked_ns: 0,
        })
    }

    pub fn is_attached(&self) -> bool {
        self.since.is_some()
    }

    /// Attaches the programs again, under a new phase number.
    pub fn attach(&mut self, ebpf: &mut Ebpf, now: u64) -> Result<(), ProbeError> {
        if self.since.is_some() {
            return Ok(());
        }
        self.phase = self.phase % start::PHASE_MASK as u32 + 1;
        super::set_scalar(ebpf, maps::SYSCALL_PHASE, self.phase)?;
        for &(program, tracepoint) in self.programs {
            let link = raw_tracepoint(ebpf, program)?
                .attach(tracepoint)
                .map_err(|e| attach_error(program, tracepoint, &e))?;
            self.links.push(link);
        }
        self.since = Some(now);
        // Only now, with both programs in place, does `ON_CPU` name every caller again.
        if self.keeps_on_cpu {
            super::set_scalar(ebpf, maps::ON_CPU_KEPT, 1_u32)?;
        }
        Ok(())
    }

    /// Detaches the programs: from here on no syscall on the host pays for them.
    /// Also takes off what a failed [`Self::attach`] left attached.
    pub fn detach(&mut self, ebpf: &mut Ebpf, now: u64) -> Result<(), ProbeError> {
        if let Some(since) = self.since.take() {
            if self.keeps_on_cpu {
                super::set_scalar(ebpf, maps::ON_CPU_KEPT, 0_u32)?;
            }
            self.banked_ns += now.saturating_sub(since.max(self.window_start));
        }
        for (&(program, tracepoint), link) in self.programs.iter().zip(self.links.drain(..)) {
            raw_tracepoint(ebpf, program)?
                .detach(link)
                .map_err(|e| attach_error(program, tracepoint, &e))?;
        }
        Ok(())
    }

    /// How long the programs were attached since the last call (or since they were first
    /// attached), up to `now`; the next window starts at `now`.
    pub fn take_attached_ns(&mut self, now: u64) -> u64 {
        let open = self
            .since
            .map_or(0, |since| now.saturating_sub(since.max(self.window_start)));
        let total = self.banked_ns + open;
        self.banked_ns = 0;
        self.window_start = now;
        total
    }
}

fn raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    program: &str,
) -> Result<&'a mut RawTracePoint, ProbeError> {
    super::raw_tracepoint(ebpf, program)
        .map_err(|e| ProbeError::SyscallCycle(format!("{program}: {e}")))
}

fn attach_error(program: &str, tracepoint: &str, e: &ProgramError) -> ProbeError {
    ProbeError::SyscallCycle(format!(
        "{program} on raw tracepoint {tracepoint}: {}",
        super::error_chain(e)
    ))
}
