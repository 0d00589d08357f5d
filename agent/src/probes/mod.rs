//! The kernel side as seen from userspace: load the BPF object, attach each probe group on its
//! own, and read the maps the programs aggregate into.
//!
//! Groups degrade independently: a group whose program the verifier rejects or whose tracepoint
//! is missing is reported (with the verifier log) and the others run.

pub mod btf;
mod cycle;
pub mod disk;
mod mapping;
pub mod net;
pub mod privileges;
pub mod sched;
pub mod syscalls;

use std::{collections::BTreeMap, path::Path};

use agent_ebpf::{COMM_LEN, Counter, globals, maps, programs};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{Program, ProgramError, RawTracePoint},
};
use cycle::{Attached, Cycle, Link};
pub use cycle::{Cycled, Step};
use serde::Serialize;

use crate::error::ProbeError;

/// The kernel programs, built by `build.rs` and embedded in the binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/crmprof"));

/// A probe group: programs that only make sense together, attached to tracepoints (raw, or
/// BTF-typed where a program reads fields of its arguments).
pub struct Group {
    pub name: &'static str,
    pub what: &'static str,
    /// (program name, tracepoint name)
    pub programs: &'static [(&'static str, &'static str)],
    /// Programs to attach instead when the group named first is not attached.
    pub without: Option<(&'static str, &'static [(&'static str, &'static str)])>,
}

/// All groups, in attach order: process tracking first, so selection is live before any
/// measuring program runs; the scheduler before the syscalls, whose fast programs read the
/// running task that `sched_switch` keeps.
pub const GROUPS: &[Group] = &[
    Group {
        name: "process",
        what: "follows forks, execs and exits of selected processes",
        programs: &[
            (programs::PROCESS_FORK, "sched_process_fork"),
            (programs::PROCESS_EXEC, "sched_process_exec"),
            (programs::PROCESS_EXIT, "sched_process_exit"),
        ],
        without: None,
    },
    Group {
        name: "sched",
        what: "on-CPU, run-queue and off-CPU time by reason per service",
        programs: &[
            (programs::SCHED_SWITCH, "sched_switch"),
            (programs::SCHED_WAKEUP, "sched_wakeup"),
            (programs::SCHED_WAKEUP_NEW, "sched_wakeup_new"),
        ],
        without: None,
    },
    Group {
        name: "syscalls",
        what: "syscall latency histograms and errors per service",
        programs: &[
            (programs::SYS_ENTER, "sys_enter"),
            (programs::SYS_EXIT, "sys_exit"),
        ],
        without: Some((
            "sched",
            &[
                (programs::SYS_ENTER_ALONE, "sys_enter"),
                (programs::SYS_EXIT_ALONE, "sys_exit"),
            ],
        )),
    },
    Group {
        name: "net",
        what: "socket bytes, connections, retransmits per service and peer",
        programs: &[
            (programs::SOCK_SEND, "sock_send_length"),
            (programs::SOCK_RECV, "sock_recv_length"),
            (programs::SOCK_STATE, "inet_sock_set_state"),
            (programs::TCP_RETRANSMIT, "tcp_retransmit_skb"),
        ],
        without: None,
    },
    Group {
        name: "disk",
        what: "block I/O bytes and latency per service and device",
        programs: &[
            (programs::BIO_QUEUE, "block_bio_queue"),
            (programs::RQ_ISSUE, "block_rq_issue"),
            (programs::RQ_COMPLETE, "block_rq_complete"),
            (programs::BIO_SPLIT, "block_split"),
        ],
        without: None,
    },
];

/// What happened to one group at load and attach.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct GroupStatus {
    /// "attached", "failed" or "disabled" (by the configuration).
    pub status: &'static str,
    /// The tracepoints the group is attached to.
    pub attach_points: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifier_log: Option<String>,
    /// How the group runs when it runs in a degraded mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Options for [`Probes::load`].
pub struct LoadOptions<'a> {
    pub btf_path: &'a Path,
    /// Report every exec on the host (for auto-discovery), not only those of selected processes.
    pub report_all_execs: bool,
    /// Report every TCP listen on the host (for `port` rules).
    pub report_listens: bool,
    /// Size of the THREADS map: selected threads whose slot in THREAD_SLOTS another holds.
    pub max_threads: u32,
    /// Service ids the syscall counts have room for (ids are 1..=max_services).
    pub max_services: u32,
    /// Time one syscall in this many (a power of two).
    pub syscall_sample: u32,
    /// Groups not to load.
    pub disabled: &'a [String],
}

/// The loaded programs and their maps.
pub struct Probes {
    ebpf: Ebpf,
    pub status: BTreeMap<&'static str, GroupStatus>,
    pid_max: u32,
    /// Processes the agent itself put into services, minus those it took out.
    selected_by_agent: i64,
    /// The syscall counts, mapped into the agent.
    calls: Option<syscalls::CallCounts>,
    /// The syscall probes, when attached: a daemon may cycle them (`syscall_duty_cycle`).
    syscall_cycle: Option<Cycle>,
    /// The socket receive probe, when attached: a daemon may cycle it
    /// (`socket_receive_duty_cycle`).
    receive_cycle: Option<Cycle>,
    /// Every other measuring group's programs (not the process group's, which keeps the
    /// selection), in attach order: detached and attached again only by [`Self::pause`] and
    /// [`Self::resume`].
    rest: Vec<Cycle>,
    /// Whether `sched_switch_plain` (kernels without `bpf_task_pt_regs`) runs: it classifies
    /// waits only from the calls the syscall probes record, so they may not be cycled.
    plain_switch: bool,
    /// `PID_SERVICE`, mapped into the agent: a process's service is written as the two bytes
    /// it is, never as the whole element it shares with three neighbouring pids.
    pids: mapping::Mapping,
    /// `THREAD_SLOTS`, mapped into the agent, and its number of slots: the open intervals are
    /// read from it at every window's end without a syscall per thread.
    threads: (mapping::Mapping, u32),
    /// The highest service id the agent handed to the kernel (rules and selections).
    max_service: u16,
}

impl Probes {
    /// Checks privileges and BTF, loads the object and attaches every group it can.
    pub fn load(opts: &LoadOptions<'_>) -> Result<Self, ProbeError> {
        privileges::require_bpf()?;
        let mut offsets = btf::offsets(opts.btf_path)?;
        if std::env::var(WAKEUP_ENV).is_ok_and(|v| v == "1") {
            // As on a kernel without `sched_info.last_queued`: sched_wakeup marks wakeups.
            offsets.task_last_queued = btf::MISSING;
        }
        let pid_max = read_pid_max();
        raise_memlock_rlimit();
        let agent_tgid = std::process::id();
        let report_all_execs = u32::from(opts.report_all_execs);
        let report_listens = u32::from(opts.report_listens);
        let ephemeral_min = read_ephemeral_port_min();
        let sample_mask = opts.syscall_sample.max(1).next_power_of_two() - 1;
        let rows = opts.max_services + 1;
        let thread_slots = thread_slots(pid_max)?;
        let thread_slot_mask = thread_slots - 1;
        let cpus = aya::util::nr_cpus().map_err(|(path, e)| {
            ProbeError::Load(format!("reading the possible CPUs from {path}: {e}"))
        })? as u32;
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::OFFSETS, &offsets, true)
            .override_global(globals::AGENT_TGID, &agent_tgid, true)
            .override_global(globals::EPHEMERAL_PORT_MIN, &ephemeral_min, true)
            .override_global(globals::LOCK_IDLE_NS, &sched::LOCK_IDLE_NS, true)
            .override_global(globals::REPORT_ALL_EXECS, &report_all_execs, true)
            .override_global(globals::REPORT_LISTENS, &report_listens, true)
            .override_global(globals::SYSCALL_SAMPLE_MASK, &sample_mask, true)
            .override_global(globals::SYSCALL_ROWS, &rows, true)
            .override_global(globals::THREAD_SLOT_MASK, &thread_slot_mask, true)
            .map_max_entries(maps::NET_STATS, rows)
            .map_max_entries(maps::SCHED_STATS, rows)
            .map_max_entries(
                maps::SYSCALL_CALLS,
                cpus * rows * agent_ebpf::SYSCALL_NR_SLOTS,
            )
            .map_max_entries(maps::THREAD_SLOTS, thread_slots)
            .map_max_entries(maps::THREADS, opts.max_threads)
            // One element per four tgids, one start slot per tid: see the map comments.
            .map_max_entries(maps::PID_SERVICE, pid_max.div_ceil(4))
            .map_max_entries(maps::SYSCALL_START, pid_max)
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;

        sched::fill_syscall_classes(&mut ebpf)?;
        // Generation 1: a zeroed ON_CPU (generation 0) is one that names no task yet.
        bump_generation(&mut ebpf)?;
        let pids = mapping::Mapping::array(
            &ebpf,
            maps::PID_SERVICE,
            pid_max.div_ceil(4) as usize * size_of::<[u16; 4]>(),
            true,
        )?;
        let threads = mapping::Mapping::array(
            &ebpf,
            maps::THREAD_SLOTS,
            thread_slots as usize * size_of::<agent_ebpf::ThreadState>(),
            true,
        )?;
        let calls = syscalls::CallCounts::map(&ebpf, cpus, rows);
        let first_phase = Cycle::first_phase(&mut ebpf)?;
        let mut syscall_cycle = None;
        let mut receive_cycle = None;
        let mut rest = Vec::new();
        let mut status: BTreeMap<&'static str, GroupStatus> = BTreeMap::new();
        // sched_switch reads when a woken thread joined the run queue from the thread itself
        // where the kernel keeps it: no program on every wakeup of the host.
        let wakeup_in_task = btf::run_queue_wait_in_task(&offsets);
        for group in GROUPS {
            if opts.disabled.iter().any(|d| d == group.name) {
                let mut s = failed("disabled by disable_groups in the configuration".into());
                s.status = "disabled";
                status.insert(group.name, s);
                continue;
            }
            if group.name == "syscalls"
                && let Err(e) = &calls
            {
                status.insert(group.name, failed(format!("counting calls needs {e}")));
                continue;
            }
            let missing = btf::missing_fields(&offsets, group.name);
            let (programs, note) = match group.without {
                Some((needed, alone))
                    if status.get(needed).is_none_or(|s| s.status != "attached") =>
                {
                    let note = format!(
                        "without the {needed} group: the task is looked up on every call, \
                         which costs about twice as much per syscall (docs/probes.md)"
                    );
                    (alone, Some(note))
                }
                _ => (group.programs, None),
            };
            let wanted: Vec<(&'static str, &'static str)> = programs
                .iter()
                .copied()
                .filter(|&(p, _)| !(p == programs::SCHED_WAKEUP && wakeup_in_task))
                .collect();
            let (result, links) = if missing.is_empty() {
                let (mut s, links) = attach_group(&mut ebpf, &wanted);
                if s.status == "attached" && note.is_some() {
                    s.note = note;
                }
                (s, links)
            } else {
                let why = format!(
                    "this kernel's BTF lacks {}; the group is not attached",
                    missing.join(", ")
                );
                (failed(why), Vec::new())
            };
            let now = crate::collection::monotonic_now_ns();
            if group.name == "syscalls" && result.status == "attached" {
                // With the scheduler group, ON_CPU names the running task from now on — kept
                // by sched_switch, checked at every syscall entry — so the socket probes,
                // which run inside syscalls, may use it.
                let keeps_on_cpu = programs == group.programs;
                let flag = keeps_on_cpu.then_some(maps::ON_CPU_KEPT);
                syscall_cycle = Some(Cycle::attached(
                    &mut ebpf,
                    Cycled::Syscalls.what(),
                    links,
                    flag,
                    Some(first_phase),
                    now,
                )?);
            } else if group.name == "net" && result.status == "attached" {
                let (receive, others): (Vec<Attached>, Vec<Attached>) = links
                    .into_iter()
                    .partition(|a| a.tracepoint == "sock_recv_length");
                receive_cycle = Some(Cycle::attached(
                    &mut ebpf,
                    Cycled::Receives.what(),
                    receive,
                    Some(maps::RECEIVES_SEEN),
                    None,
                    now,
                )?);
                rest.push(Cycle::attached(
                    &mut ebpf, group.what, others, None, None, now,
                )?);
            } else if group.name != "process" && result.status == "attached" {
                rest.push(Cycle::attached(
                    &mut ebpf, group.what, links, None, None, now,
                )?);
            }
            status.insert(group.name, result);
        }
        if status.values().all(|s| s.status != "attached") {
            let why = status
                .iter()
                .map(|(name, s)| format!("{name}: {}", s.error.as_deref().unwrap_or("unknown")))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ProbeError::NothingAttached(why));
        }
        let plain_switch = ebpf
            .program(programs::SCHED_SWITCH_PLAIN)
            .is_some_and(|p| p.fd().is_ok());
        Ok(Self {
            ebpf,
            status,
            pid_max,
            selected_by_agent: 0,
            calls: calls.ok(),
            syscall_cycle,
            receive_cycle,
            rest,
            plain_switch,
            pids,
            threads: (threads, thread_slots),
            max_service: 0,
        })
    }

    pub fn pid_max(&self) -> u32 {
        self.pid_max
    }

    pub(crate) fn call_counts(&self) -> Option<&syscalls::CallCounts> {
        self.calls.as_ref()
    }

    /// The service ids to read from a per-service map of `rows` rows: 1..= the highest id the
    /// agent handed to the kernel (the kernel only copies ids it was given), within the map.
    pub(crate) fn service_ids(&self, rows: u32) -> std::ops::RangeInclusive<u32> {
        1..=u32::from(self.max_service).min(rows.saturating_sub(1))
    }

    /// The object and one cycled set, borrowed together.
    fn cycle_mut(&mut self, which: Cycled) -> (&mut Ebpf, &mut Option<Cycle>) {
        let cycle = match which {
            Cycled::Syscalls => &mut self.syscall_cycle,
            Cycled::Receives => &mut self.receive_cycle,
        };
        (&mut self.ebpf, cycle)
    }

    /// Attaches cycled probes again, if they are detached; returns the slowest program step, if
    /// it changed anything. A failure leaves them detached: the syscall group is then reported
    /// as failed, and the net group says receives are no longer counted.
    pub fn cycle_on(&mut self, which: Cycled) -> Result<Option<Step>, ProbeError> {
        let now = crate::collection::monotonic_now_ns();
        let (ebpf, slot) = self.cycle_mut(which);
        let Some(cycle) = slot.as_mut() else {
            return Ok(None);
        };
        let e = match cycle.attach(ebpf, now) {
            Ok(slowest) => return Ok(slowest),
            Err(e) => e,
        };
        // Whatever attached comes off again: half a pair counts nothing right.
        let _ = cycle.detach(ebpf, now);
        *slot = None;
        if let Some(s) = self.status.get_mut(which.group()) {
            match which {
                Cycled::Syscalls => *s = failed(e.to_string()),
                Cycled::Receives => {
                    s.note = Some(format!("{e}; received bytes are no longer counted"));
                }
            }
        }
        Err(e)
    }

    /// Detaches cycled probes until [`Self::cycle_on`]; returns the slowest program step, if
    /// it changed anything.
    pub fn cycle_off(&mut self, which: Cycled) -> Result<Option<Step>, ProbeError> {
        let now = crate::collection::monotonic_now_ns();
        let (ebpf, slot) = self.cycle_mut(which);
        slot.as_mut().map_or(Ok(None), |c| c.detach(ebpf, now))
    }

    /// How long cycled probes were attached since the last call, up to `now` (monotonic
    /// ns); the next measuring window starts at `now`. 0 when they are not loaded.
    pub fn take_probe_ns(&mut self, which: Cycled, now: u64) -> u64 {
        self.cycle_mut(which)
            .1
            .as_mut()
            .map_or(0, |c| c.take_attached_ns(now))
    }

    /// Detaches every measuring program — the cycled probes, then the other groups' in the
    /// reverse of their attach order — leaving the process group's: for `crmprof run
    /// --bench-toggle`, which compares the host with and without the agent's probes in one
    /// continuous load. A failure stops the agent there (a bench has no use for half a pause).
    /// Returns the slowest program step.
    pub fn pause(&mut self) -> Result<Option<Step>, ProbeError> {
        let mut slowest = None;
        for which in [Cycled::Syscalls, Cycled::Receives] {
            slowest = Step::slower(slowest, self.cycle_off(which)?);
        }
        let now = crate::collection::monotonic_now_ns();
        for cycle in self.rest.iter_mut().rev() {
            slowest = Step::slower(slowest, cycle.detach(&mut self.ebpf, now)?);
        }
        Ok(slowest)
    }

    /// Attaches what [`Self::pause`] detached, in attach order: the scheduler's programs before
    /// the syscall probes that read the task they keep. Cycled probes their duty cycle has
    /// off (`cycled_off`) stay detached. Returns the slowest program step.
    pub fn resume(&mut self, cycled_off: &[Cycled]) -> Result<Option<Step>, ProbeError> {
        let now = crate::collection::monotonic_now_ns();
        let mut slowest = None;
        for cycle in &mut self.rest {
            slowest = Step::slower(slowest, cycle.attach(&mut self.ebpf, now)?);
        }
        for which in [Cycled::Receives, Cycled::Syscalls] {
            if !cycled_off.contains(&which) {
                slowest = Step::slower(slowest, self.cycle_on(which)?);
            }
        }
        Ok(slowest)
    }

    /// Whether the probes can be detached for part of each window: they are attached, and
    /// for the syscall probes, the scheduler group does not need them to classify waits
    /// (`sched_switch_plain`, for kernels without `bpf_task_pt_regs`, does).
    pub fn cyclable(&self, which: Cycled) -> bool {
        match which {
            Cycled::Syscalls => self.syscall_cycle.is_some() && !self.plain_switch,
            Cycled::Receives => self.receive_cycle.is_some(),
        }
    }

    pub fn attached(&self, group: &str) -> bool {
        self.status
            .get(group)
            .is_some_and(|s| s.status == "attached")
    }

    /// Puts a process in a service (or takes it out with service 0): a two-byte store into the
    /// shared mapping, so a neighbouring pid the kernel sets at the same instant (at a fork or
    /// exec) keeps its value.
    pub fn set_service(&mut self, tgid: u32, service: u16) -> Result<(), ProbeError> {
        let slot = self.pid_slot(tgid).ok_or_else(|| ProbeError::MapWrite {
            name: maps::PID_SERVICE,
            reason: format!("pid {tgid} is not below kernel.pid_max {}", self.pid_max),
        })?;
        self.max_service = self.max_service.max(service);
        // SAFETY: an aligned u16 inside the mapping.
        let old = unsafe { slot.read_volatile() };
        if old == service {
            // Already so (the kernel applied a comm rule at exec, or a fork inherited it).
            return Ok(());
        }
        // SAFETY: as above; the kernel's programs store this pid's slot the same way.
        unsafe { slot.write_volatile(service) };
        if old == 0 && service != 0 {
            self.selected_by_agent += 1;
        } else if old != 0 && service == 0 {
            self.selected_by_agent -= 1;
        }
        // Then the generation, so CPUs that cached the old selection re-read it.
        bump_generation(&mut self.ebpf)
    }

    /// The service the kernel currently has for a tgid.
    pub fn service_of(&self, tgid: u32) -> Result<u16, ProbeError> {
        let slot = self.pid_slot(tgid).ok_or_else(|| ProbeError::MapRead {
            name: maps::PID_SERVICE,
            reason: format!("pid {tgid} is not below kernel.pid_max {}", self.pid_max),
        })?;
        // SAFETY: an aligned u16 inside the mapping.
        Ok(unsafe { slot.read_volatile() })
    }

    /// The two bytes of `PID_SERVICE` that hold `tgid`'s service.
    fn pid_slot(&self, tgid: u32) -> Option<*mut u16> {
        if tgid >= self.pid_max {
            return None;
        }
        self.pids.element::<u16>(tgid as usize)
    }

    /// Records that a selected service listens on a TCP port (servers that were listening
    /// before the agent started; the kernel records later listens itself).
    pub fn add_listener(&mut self, port: u16, service: u16) -> Result<(), ProbeError> {
        let mut map: HashMap<&mut MapData, u32, u32> = map_mut(&mut self.ebpf, maps::LISTEN_OWNER)?;
        map.insert(u32::from(port), u32::from(service), 0)
            .map_err(|e| ProbeError::MapWrite {
                name: maps::LISTEN_OWNER,
                reason: e.to_string(),
            })
    }

    /// Adds a comm rule applied by the kernel at every exec.
    pub fn add_comm_rule(&mut self, comm: &str, service: u16) -> Result<(), ProbeError> {
        let mut key = [0u8; COMM_LEN];
        let bytes = comm.as_bytes();
        let n = bytes.len().min(COMM_LEN - 1);
        key[..n].copy_from_slice(&bytes[..n]);
        self.max_service = self.max_service.max(service);
        let mut map: HashMap<&mut MapData, [u8; COMM_LEN], u32> =
            map_mut(&mut self.ebpf, maps::COMM_RULES)?;
        map.insert(key, u32::from(service), 0)
            .map_err(|e| ProbeError::MapWrite {
                name: maps::COMM_RULES,
                reason: e.to_string(),
            })
    }

    /// The counters, summed over CPUs, cumulative since load.
    pub fn counters(&self) -> Result<BTreeMap<&'static str, u64>, ProbeError> {
        let map: PerCpuArray<&MapData, u64> = map_ref(&self.ebpf, maps::COUNTERS)?;
        let mut out = BTreeMap::new();
        for counter in Counter::ALL {
            let values = map
                .get(&(counter as u32), 0)
                .map_err(|e| ProbeError::MapRead {
                    name: maps::COUNTERS,
                    reason: e.to_string(),
                })?;
            out.insert(counter_name(counter), values.iter().sum());
        }
        Ok(out)
    }

    /// Processes in a service now, from the kernel's and the agent's bookkeeping (an O(1)
    /// answer: walking PID_SERVICE would cost a syscall per four pids).
    pub fn tracked_processes(&self) -> Result<i64, ProbeError> {
        let c = self.counters()?;
        let n = |k: Counter| c.get(counter_name(k)).copied().unwrap_or(0) as i64;
        Ok(self.selected_by_agent + n(Counter::ProcessesSelected) - n(Counter::ProcessesReleased))
    }

    /// Every `THREAD_SLOTS` slot, with a copy of its state (a slot no thread holds has service
    /// 0). The kernel updates them meanwhile: a copy may be a moment old.
    pub(crate) fn thread_slots(&self) -> impl Iterator<Item = (usize, agent_ebpf::ThreadState)> {
        let (map, slots) = &self.threads;
        (0..*slots as usize).filter_map(|i| {
            let t = map.element::<agent_ebpf::ThreadState>(i)?;
            // SAFETY: an aligned element inside the mapping; a volatile copy, as the kernel
            // writes it concurrently.
            Some((i, unsafe { std::ptr::read_volatile(t) }))
        })
    }

    /// Frees slot `i` (of a thread that no longer exists).
    pub(crate) fn free_thread_slot(&self, i: usize) {
        if let Some(t) = self.threads.0.element::<agent_ebpf::ThreadState>(i) {
            // SAFETY: as in `thread_slots`; the slot's thread is gone, so no program writes it
            // (but a new thread taking the slot this instant would lose its first interval).
            unsafe { std::ptr::write_volatile(t, agent_ebpf::ThreadState::default()) };
        }
    }

    /// The ring buffer of process lifecycle events; taken once by the collector.
    pub fn take_proc_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(maps::PROC_EVENTS)
            .ok_or(ProbeError::Map {
                name: maps::PROC_EVENTS,
                reason: "not in the object".into(),
            })?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map {
            name: maps::PROC_EVENTS,
            reason: e.to_string(),
        })
    }

    pub(crate) fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub(crate) fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

/// Loads the object and attaches only empty floor programs: on sys_enter/sys_exit, the baseline
/// cost of having any BPF program there, for `cargo xtask bench`; or (`sched`) on sched_switch,
/// the floor of the scheduler probe.
pub fn load_floor(sched: bool) -> Result<Ebpf, ProbeError> {
    privileges::require_bpf()?;
    raise_memlock_rlimit();
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| ProbeError::Load(error_chain(&e)))?;
    let syscalls = [
        (programs::FLOOR_SYS_ENTER, "sys_enter"),
        (programs::FLOOR_SYS_EXIT, "sys_exit"),
    ];
    let switch = [(programs::FLOOR_SCHED_SWITCH, "sched_switch")];
    let floor: &[(&str, &str)] = if sched { &switch } else { &syscalls };
    for &(program, tracepoint) in floor {
        attach_one(&mut ebpf, program, tracepoint)
            .map_err(|e| ProbeError::NothingAttached(format!("{program}: {e}")))?;
    }
    Ok(ebpf)
}

/// The stable name of a counter in profiles and `crmprof check`.
pub fn counter_name(counter: Counter) -> &'static str {
    match counter {
        Counter::DropSyscallStatsFull => "syscall_stats_map_full",
        Counter::DropErrnoFull => "syscall_errors_map_full",
        Counter::DropProcEventRingFull => "proc_events_ring_full",
        Counter::DropPidOutOfRange => "pid_above_pid_max",
        Counter::UnmatchedExit => "syscall_exits_unidentified",
        Counter::ForkInherited => "forks_inherited",
        Counter::ExecMatched => "execs_matched",
        Counter::DropTaskReadFailed => "kernel_read_failed",
        Counter::DropThreadsFull => "threads_map_full",
        Counter::DropSchedStatsFull => "sched_stats_map_full",
        Counter::DropNetStatsFull => "net_stats_map_full",
        Counter::DropPeersFull => "peers_map_full",
        Counter::DropSockOwnerFull => "socket_owner_map_full",
        Counter::DropBlockTrackFull => "block_requests_displaced",
        Counter::DropDiskStatsFull => "disk_stats_map_full",
        Counter::ProcessesSelected => "processes_selected",
        Counter::DropSyscallOutsideTable => "syscall_outside_table",
        Counter::ProcessesReleased => "processes_released",
        Counter::UntracedSwitch => "untraced_switches",
        Counter::ExitWithoutEntry => "syscall_exits_without_entry",
        Counter::BlockCompletionUnseen => "block_completions_unseen",
    }
}

/// Counters that are events, not losses.
pub fn is_loss(counter: Counter) -> bool {
    !matches!(
        counter,
        Counter::ForkInherited
            | Counter::ExecMatched
            | Counter::ProcessesSelected
            | Counter::ProcessesReleased
            | Counter::UntracedSwitch
            | Counter::ExitWithoutEntry
    )
}

fn failed(error: String) -> GroupStatus {
    GroupStatus {
        status: "failed",
        attach_points: Vec::new(),
        error: Some(error),
        verifier_log: None,
        note: None,
    }
}

/// A program's simpler twin, for kernels that refuse the program itself, and what it lacks.
/// The BTF-typed programs (tp_btf, Linux 5.5 with kernel BTF) have raw twins that read the same
/// fields through a helper call.
fn fallback(program: &str) -> Option<(&'static str, &'static str)> {
    const RAW_SOCKETS: &str = "the raw socket programs read each socket through a helper call, \
                               which costs more per socket call";
    match program {
        programs::SCHED_SWITCH => Some((
            programs::SCHED_SWITCH_PLAIN,
            "sched_switch_plain cannot read a blocking thread's syscall from its saved registers \
             (bpf_task_pt_regs, Linux 5.15): without the syscalls group, waits are then told \
             apart only by D state",
        )),
        programs::SCHED_WAKEUP => Some((
            programs::SCHED_WAKEUP_RAW,
            "sched_wakeup_raw reads the woken task through a helper call",
        )),
        programs::SOCK_SEND => Some((programs::SOCK_SEND_RAW, RAW_SOCKETS)),
        programs::SOCK_RECV => Some((programs::SOCK_RECV_RAW, RAW_SOCKETS)),
        _ => None,
    }
}

/// Attaches a group's programs; with the status, the programs attached and their links.
fn attach_group(
    ebpf: &mut Ebpf,
    programs: &[(&'static str, &'static str)],
) -> (GroupStatus, Vec<Attached>) {
    let mut attached = Vec::new();
    let mut links = Vec::new();
    // Twins attached instead of their programs, and what they lack.
    let mut twins: Vec<&str> = Vec::new();
    let mut lacking: Vec<&str> = Vec::new();
    let raw_only = std::env::var_os(RAW_ONLY).is_some_and(|v| v == "1");
    for &(program, tracepoint) in programs {
        let mut result = match fallback(program) {
            Some(_) if raw_only => Err(AttachError::NotAsked),
            _ => attach_one(ebpf, program, tracepoint),
        };
        let mut attached_program = program;
        if let Err(AttachError::Program(ProgramError::LoadError { .. }) | AttachError::Btf(_))
        | Err(AttachError::NotAsked) = &result
            && let Some((twin, lacks)) = fallback(program)
        {
            result = attach_one(ebpf, twin, tracepoint);
            attached_program = twin;
            twins.push(twin);
            if !lacking.contains(&lacks) {
                lacking.push(lacks);
            }
        }
        match result {
            Ok(link) => links.push(Attached {
                program: attached_program,
                tracepoint,
                link,
            }),
            Err(e) => return (group_failed(program, tracepoint, &e, attached), links),
        }
        attached.push(tracepoint);
    }
    let note = (!twins.is_empty()).then(|| {
        let why = if raw_only {
            format!("as {RAW_ONLY}=1 asks")
        } else {
            "as this kernel refused the originals".to_owned()
        };
        format!(
            "{} attached instead, {why}: {}",
            twins.join(", "),
            lacking.join("; ")
        )
    });
    let status = GroupStatus {
        status: "attached",
        attach_points: attached,
        error: None,
        verifier_log: None,
        note,
    };
    (status, links)
}

/// Set to 1, the environment variable that makes the agent attach the raw twins of its
/// BTF-typed programs: for a kernel whose typed tracepoints misbehave, and for testing the twins.
pub const RAW_ONLY: &str = "CRMPROF_RAW_TRACEPOINTS";

/// The status of a group that `program` failed to load or attach to `tracepoint` in.
fn group_failed(
    program: &str,
    tracepoint: &str,
    e: &AttachError,
    attached: Vec<&'static str>,
) -> GroupStatus {
    let verifier_log = match e {
        AttachError::Program(ProgramError::LoadError { verifier_log, .. }) => {
            Some(verifier_log.to_string())
        }
        _ => None,
    };
    GroupStatus {
        status: "failed",
        attach_points: attached,
        error: Some(format!("{program} on tracepoint {tracepoint}: {e}")),
        verifier_log,
        note: None,
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum AttachError {
    #[error("program not found in the object")]
    Missing,
    #[error("{0}")]
    Program(#[from] ProgramError),
    #[error("reading the kernel's BTF for a BTF-typed tracepoint: {0}")]
    Btf(#[from] aya::BtfError),
    /// Not attached because its raw twin is wanted instead ([`RAW_ONLY`]).
    #[error("not attached: {RAW_ONLY}=1 asks for its raw twin")]
    NotAsked,
}

/// Loads and attaches one program: a raw tracepoint or a BTF-typed one (typed against the
/// running kernel's own BTF). Its link is for programs that are detached and attached again.
fn attach_one(ebpf: &mut Ebpf, program: &str, tracepoint: &str) -> Result<Link, AttachError> {
    match ebpf.program_mut(program).ok_or(AttachError::Missing)? {
        Program::BtfTracePoint(prog) => {
            prog.load(tracepoint, &Btf::from_sys_fs()?)?;
            Ok(Link::Typed(prog.attach()?))
        }
        prog => {
            let prog: &mut RawTracePoint = prog.try_into()?;
            prog.load()?;
            Ok(Link::Raw(prog.attach(tracepoint)?))
        }
    }
}

/// Bumps `SELECTION_GEN`. Not atomic with the kernel's own bumps, but a lost increment still
/// leaves a value no CPU cached before this change, which is all that matters.
fn bump_generation(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    let current = map_ref::<Array<&MapData, u64>>(ebpf, maps::SELECTION_GEN)?
        .get(&0, 0)
        .unwrap_or(0);
    set_scalar(ebpf, maps::SELECTION_GEN, current.wrapping_add(1))
}

/// Writes `value` into element 0 of the array map `name`: the one-value maps through which
/// the agent tells the programs something (a generation, a window start, a phase).
pub(crate) fn set_scalar<V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    value: V,
) -> Result<(), ProbeError> {
    let mut map: Array<&mut MapData, V> = map_mut(ebpf, name)?;
    map.set(0, value, 0).map_err(|e| ProbeError::MapWrite {
        name,
        reason: e.to_string(),
    })
}

pub(crate) fn map_ref<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map(name).ok_or(ProbeError::Map {
        name,
        reason: "not in the object".into(),
    })?;
    T::try_from(map).map_err(|e| ProbeError::Map {
        name,
        reason: e.to_string(),
    })
}

pub(crate) fn map_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T, ProbeError>
where
    T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.map_mut(name).ok_or(ProbeError::Map {
        name,
        reason: "not in the object".into(),
    })?;
    T::try_from(map).map_err(|e| ProbeError::Map {
        name,
        reason: e.to_string(),
    })
}

/// The first port of `net.ipv4.ip_local_port_range`: clients' ephemeral ports start there.
fn read_ephemeral_port_min() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768)
}

/// Set to 1, the environment variable that makes `sched_wakeup` mark each wakeup, as on kernels
/// whose tasks do not say when they joined the run queue: for testing that path, and for a
/// kernel whose `sched_info` misleads.
pub const WAKEUP_ENV: &str = "CRMPROF_SCHED_WAKEUP";

/// Set to a power of two, the environment variable that sizes `THREAD_SLOTS` (fewer slots than
/// tids puts the threads that share one in `THREADS`): for testing that path, and for hosts
/// that want less kernel memory.
pub const THREAD_SLOTS_ENV: &str = "CRMPROF_THREAD_SLOTS";

/// `THREAD_SLOTS`' size: a slot per possible tid, up to `MAX_THREAD_SLOTS`.
fn thread_slots(pid_max: u32) -> Result<u32, ProbeError> {
    let max = agent_ebpf::MAX_THREAD_SLOTS;
    match std::env::var(THREAD_SLOTS_ENV) {
        Ok(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= max)
            .ok_or_else(|| {
                ProbeError::Load(format!(
                    "{THREAD_SLOTS_ENV}={v}: must be a power of two from 1 to {max}; unset it \
                     for one slot per possible tid"
                ))
            }),
        Err(_) => Ok(pid_max.next_power_of_two().min(max)),
    }
}

/// `kernel.pid_max`, which bounds every pid and tid; the default when unreadable.
fn read_pid_max() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 22)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; newer ones to the memory cgroup.
/// Without CAP_SYS_RESOURCE the raise fails, which is harmless on a cgroup-charging kernel.
fn raise_memlock_rlimit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    let ret = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if ret != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK ({}); fine on Linux 5.11+, which charges BPF memory to \
             the cgroup",
            std::io::Error::last_os_error()
        );
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
