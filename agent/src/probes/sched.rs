//! Reading the sched group: per-service scheduler stats, plus the intervals still open at the
//! end of a window (a thread spinning on an idle CPU may not switch out for seconds; a sleeping
//! one may not wake), which the kernel only accounts when they end.

use std::collections::HashMap;

use agent_ebpf::{OnCpu, SchedStats, ThreadState, hist, maps, offcpu, syscall_class};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray},
};

use super::{Probes, map_mut, map_ref};
use crate::{error::ProbeError, names::syscall_name};

/// One service's scheduler totals, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub offcpu_ns: [u64; offcpu::COUNT],
    pub offcpu_count: [u64; offcpu::COUNT],
    pub runqueue_buckets: Vec<u64>,
    pub user_ns: u64,
    pub system_ns: u64,
    pub major_faults: u64,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            on_cpu_ns: 0,
            runqueue_ns: 0,
            voluntary_switches: 0,
            involuntary_switches: 0,
            offcpu_ns: [0; offcpu::COUNT],
            offcpu_count: [0; offcpu::COUNT],
            runqueue_buckets: vec![0; hist::BUCKETS],
            user_ns: 0,
            system_ns: 0,
            major_faults: 0,
        }
    }
}

impl Totals {
    fn add(&mut self, s: &SchedStats) {
        self.on_cpu_ns += s.on_cpu_ns;
        self.runqueue_ns += s.runqueue_ns;
        self.voluntary_switches += s.voluntary_switches;
        self.involuntary_switches += s.involuntary_switches;
        self.user_ns += s.user_ns;
        self.system_ns += s.system_ns;
        self.major_faults += s.major_faults;
        for i in 0..offcpu::COUNT {
            self.offcpu_ns[i] += s.offcpu_ns[i];
            self.offcpu_count[i] += s.offcpu_count[i];
        }
        for (sum, n) in self
            .runqueue_buckets
            .iter_mut()
            .zip(s.runqueue_buckets.iter())
        {
            *sum += n;
        }
    }

    /// `self - before`, saturating (a service's entry never shrinks).
    pub fn minus(&self, before: &Totals) -> Totals {
        let mut d = Totals {
            on_cpu_ns: self.on_cpu_ns.saturating_sub(before.on_cpu_ns),
            runqueue_ns: self.runqueue_ns.saturating_sub(before.runqueue_ns),
            voluntary_switches: self
                .voluntary_switches
                .saturating_sub(before.voluntary_switches),
            involuntary_switches: self
                .involuntary_switches
                .saturating_sub(before.involuntary_switches),
            user_ns: self.user_ns.saturating_sub(before.user_ns),
            system_ns: self.system_ns.saturating_sub(before.system_ns),
            major_faults: self.major_faults.saturating_sub(before.major_faults),
            ..Totals::default()
        };
        for i in 0..offcpu::COUNT {
            d.offcpu_ns[i] = self.offcpu_ns[i].saturating_sub(before.offcpu_ns[i]);
            d.offcpu_count[i] = self.offcpu_count[i].saturating_sub(before.offcpu_count[i]);
        }
        for (i, b) in d.runqueue_buckets.iter_mut().enumerate() {
            *b = self.runqueue_buckets[i].saturating_sub(before.runqueue_buckets[i]);
        }
        d
    }
}

/// Cumulative per-service stats.
pub fn read(probes: &Probes) -> Result<HashMap<u32, Totals>, ProbeError> {
    let map: PerCpuArray<&MapData, SchedStats> = map_ref(probes.ebpf(), maps::SCHED_STATS)?;
    let mut out = HashMap::new();
    // One row per service id the kernel may use; a row never scheduled stays zero.
    for service in probes.service_ids(map.len()) {
        let per_cpu = map.get(&service, 0).map_err(|e| ProbeError::MapRead {
            name: maps::SCHED_STATS,
            reason: e.to_string(),
        })?;
        let mut t = Totals::default();
        for cpu in per_cpu.iter() {
            t.add(cpu);
        }
        if t != Totals::default() {
            out.insert(service, t);
        }
    }
    Ok(out)
}

/// Futex waits longer than this are a parked thread waiting for work (an idle pool thread, a
/// join), not lock contention: contended locks are held for a critical section, not for half a
/// second. The kernel side applies the same rule when a wait ends.
pub const LOCK_IDLE_NS: u64 = 500_000_000;

/// Time of the intervals still open at `now` (monotonic ns), from `window_start` on, per
/// service: (on CPU, run queue, off CPU by reason).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Open {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub offcpu_ns: [u64; offcpu::COUNT],
}

/// The intervals still open at `now`, per service ([`Open`]), and how many threads the
/// scheduler probes track (in their slots and in THREADS).
///
/// A thread that no longer exists holds no open interval: its entry is removed (the kernel
/// forgets exiting threads, but one that a switch after its exit tracked again, as its process
/// left its service, could otherwise count a whole window every window).
pub fn open_intervals(
    probes: &mut Probes,
    window_start: u64,
    now: u64,
) -> Result<(HashMap<u32, Open>, usize), ProbeError> {
    let since = |t: u64| now.saturating_sub(t.max(window_start));
    let mut threads: Vec<ThreadState> = Vec::new();
    for (i, t) in probes.thread_slots() {
        if t.service == 0 {
            continue;
        }
        if thread_exists(t.tid) {
            threads.push(t);
        } else {
            // Gone already, or a moment ago: either way nothing of it is open.
            probes.free_thread_slot(i);
        }
    }
    let mut map: BpfHashMap<&mut MapData, u32, ThreadState> =
        map_mut(probes.ebpf_mut(), maps::THREADS)?;
    // Entries vanish while we iterate (threads exit); a failed read of one is skipped.
    let entries: Vec<(u32, ThreadState)> = map.iter().filter_map(Result::ok).collect();
    for (tid, t) in entries {
        if thread_exists(tid) {
            threads.push(t);
        } else {
            let _ = map.remove(&tid);
        }
    }
    let tracked = threads.len();
    let mut out: HashMap<u32, Open> = HashMap::new();
    for t in threads {
        let open = out.entry(t.service).or_default();
        if t.oncpu_since != 0 {
            open.on_cpu_ns += since(t.oncpu_since);
        }
        if t.runnable_since != 0 {
            open.runqueue_ns += since(t.runnable_since);
        }
        if t.offcpu_since != 0 && (t.reason as usize) < offcpu::COUNT {
            let mut reason = t.reason as usize;
            if reason == offcpu::LOCK && now.saturating_sub(t.offcpu_since) > LOCK_IDLE_NS {
                reason = offcpu::IDLE;
            }
            open.offcpu_ns[reason] += since(t.offcpu_since);
        }
    }
    Ok((out, tracked))
}

/// Whether thread `tid` (host pid namespace, as the kernel programs see it) still exists.
fn thread_exists(tid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tid}")).exists()
}

/// Tells the kernel a new window starts at `start` (monotonic ns): intervals ending later count
/// only from there. Each CPU holds the bytes and waits of its last peer until it meets another
/// (`OnCpu`) and adds them to `PEER_STATS` at its first context switch after this, so the agent
/// then runs once on every CPU that holds some (none, on an idle host: an idle CPU has added
/// them), and the figures up to `start` are there to read when this returns.
pub fn start_window(probes: &mut Probes, start: u64) -> Result<(), ProbeError> {
    super::set_scalar(probes.ebpf_mut(), maps::WINDOW, start)?;
    switch_on(&cpus_holding_peer_figures(probes));
    Ok(())
}

/// The CPUs whose `ON_CPU` holds per-peer figures not yet in `PEER_STATS`; all of them when
/// that cannot be read.
fn cpus_holding_peer_figures(probes: &Probes) -> Vec<usize> {
    let values = map_ref::<PerCpuArray<&MapData, OnCpu>>(probes.ebpf(), maps::ON_CPU)
        .ok()
        .and_then(|m| m.get(&0, 0).ok());
    match values {
        Some(values) => values
            .iter()
            .enumerate()
            .filter(|(_, c)| c.pending_tx != 0 || c.pending_rx != 0 || c.pending_wait_ns != 0)
            .map(|(cpu, _)| cpu)
            .collect(),
        None => (0..libc::CPU_SETSIZE as usize).collect(),
    }
}

/// Moves this thread onto each of `cpus` it may run on, one after another, and back: a
/// context switch on each. CPUs it may not use (a cpuset) add their figures at their own next
/// switch instead, in time for the next window's reading.
fn switch_on(cpus: &[usize]) {
    if cpus.is_empty() {
        return;
    }
    // SAFETY: `cpu_set_t` is plain data; the calls read and set this thread's own affinity.
    unsafe {
        let mut allowed: libc::cpu_set_t = std::mem::zeroed();
        let size = size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &raw mut allowed) != 0 {
            return;
        }
        let Ok(here) = usize::try_from(libc::sched_getcpu()) else {
            return;
        };
        let may = |cpu: usize| cpu < libc::CPU_SETSIZE as usize && libc::CPU_ISSET(cpu, &allowed);
        let only = |cpu: usize| {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, size, &raw const set) == 0
        };
        let mut moved = false;
        for &cpu in cpus.iter().filter(|&&cpu| cpu != here && may(cpu)) {
            moved |= only(cpu);
        }
        if cpus.contains(&here) {
            if moved {
                // Back: the switch there adds this CPU's figures.
                only(here);
            } else {
                // A short sleep switches away from this thread here.
                std::thread::sleep(std::time::Duration::from_micros(1));
            }
        }
        if moved {
            libc::sched_setaffinity(0, size, &raw const allowed);
        }
    }
}

/// The class of each syscall, by name (x86_64).
pub fn class_of(name: &str) -> u32 {
    match name {
        "futex" | "futex_waitv" | "futex_wait" | "futex_requeue" => syscall_class::LOCK,
        "nanosleep" | "clock_nanosleep" => syscall_class::SLEEP,
        "epoll_wait" | "epoll_pwait" | "epoll_pwait2" | "poll" | "ppoll" | "select"
        | "pselect6" | "accept" | "accept4" | "pause" | "rt_sigsuspend" | "rt_sigtimedwait"
        | "io_uring_enter" | "msgrcv" | "semop" | "semtimedop" => syscall_class::WAIT_FOR_WORK,
        "recvfrom" | "recvmsg" | "recvmmsg" | "connect" | "shutdown" => syscall_class::NET,
        "sendto" | "sendmsg" | "sendmmsg" => syscall_class::NET_SEND,
        "read" | "readv" | "pread64" | "preadv" | "preadv2" | "io_getevents" | "io_pgetevents"
        | "openat" | "open" | "close" => syscall_class::IO,
        "write" | "writev" | "pwrite64" | "pwritev" | "pwritev2" | "fsync" | "fdatasync"
        | "sync_file_range" | "sync" | "syncfs" | "sendfile" | "splice" | "copy_file_range"
        | "io_submit" | "fallocate" | "ftruncate" | "truncate" => syscall_class::IO_WRITE,
        _ => syscall_class::OTHER,
    }
}

pub(super) fn fill_syscall_classes(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let mut map: Array<&mut MapData, u32> = map_mut(ebpf, maps::SYSCALL_CLASS)?;
    for nr in 0..map.len() {
        let class = class_of(&syscall_name(nr));
        if class != syscall_class::OTHER {
            map.set(nr, class, 0).map_err(|e| ProbeError::MapWrite {
                name: maps::SYSCALL_CLASS,
                reason: e.to_string(),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_classified_by_what_they_wait_for() {
        assert_eq!(class_of("futex"), syscall_class::LOCK);
        assert_eq!(class_of("clock_nanosleep"), syscall_class::SLEEP);
        assert_eq!(class_of("epoll_wait"), syscall_class::WAIT_FOR_WORK);
        assert_eq!(class_of("recvfrom"), syscall_class::NET);
        assert_eq!(class_of("pwrite64"), syscall_class::IO_WRITE);
        assert_eq!(class_of("read"), syscall_class::IO);
        assert_eq!(class_of("sendto"), syscall_class::NET_SEND);
        assert_eq!(class_of("getpid"), syscall_class::OTHER);
    }
}
