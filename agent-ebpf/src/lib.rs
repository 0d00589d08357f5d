//! Types and names shared by crmprof's kernel programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]`, `Copy`, with explicit padding and no `bool`, so the layout the
//! verifier sees is the layout userspace reads. `aya::Pod` is implemented behind the `user`
//! feature, which only the agent enables.
#![no_std]

/// Names of the maps, as both sides spell them.
pub mod maps {
    /// `Array<[u16; 4]>`: the service id of every selected process, indexed by `tgid / 4`.
    pub const PID_SERVICE: &str = "PID_SERVICE";
    /// `Array<u64>`: per thread, the packed start of the syscall in progress (see [`crate::start`]).
    pub const SYSCALL_START: &str = "SYSCALL_START";
    /// `PerCpuHashMap<SyscallKey, SyscallStats>`: latency of the calls that were timed.
    pub const SYSCALL_STATS: &str = "SYSCALL_STATS";
    /// `Array<u64>` (mmapable): every syscall counted, one CPU's rows after another, indexed
    /// by [`crate::syscall_calls_index`].
    pub const SYSCALL_CALLS: &str = "SYSCALL_CALLS";
    /// `PerCpuArray<OnCpu>`: the task running on each CPU, kept by `sched_switch`.
    pub const ON_CPU: &str = "ON_CPU";
    /// `Array<u64>`: bumped whenever `PID_SERVICE` changes, so cached selections are refreshed.
    pub const SELECTION_GEN: &str = "SELECTION_GEN";
    /// `Array<u32>`: `[0]` is 1 while the syscall probes are attached alongside `sched_switch`
    /// (which keeps `ON_CPU`); the net probes read the running task from there only then.
    pub const ON_CPU_KEPT: &str = "ON_CPU_KEPT";
    /// `Array<u32>`: `[0]` is the number of the syscall probes' current attach (1..=127, see
    /// [`crate::start`]), bumped by the agent before each attach when it cycles them.
    pub const SYSCALL_PHASE: &str = "SYSCALL_PHASE";
    /// `Array<u32>`: `[0]` is 1 while `sock_recv_length` is attached (set by the agent, which
    /// may cycle it): `sched_switch` then knows a thread's receives as well as its sends.
    pub const RECEIVES_SEEN: &str = "RECEIVES_SEEN";
    /// `PerCpuHashMap<ErrnoKey, u64>`: failed calls by errno.
    pub const SYSCALL_ERRORS: &str = "SYSCALL_ERRORS";
    /// `HashMap<[u8; 16], u32>`: comm → service id, applied at exec.
    pub const COMM_RULES: &str = "COMM_RULES";
    /// `PerCpuArray<u64>`: counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `RingBuf`: rare process lifecycle events ([`crate::ProcEvent`]).
    pub const PROC_EVENTS: &str = "PROC_EVENTS";
    /// `PerCpuArray<SyscallStats>`: one zeroed value, the source for first inserts (too big for
    /// the 512-byte BPF stack).
    pub const ZERO_STATS: &str = "ZERO_STATS";
    /// `Array<u32>`: syscall number → [`crate::SyscallClass`], filled by the agent at load.
    pub const SYSCALL_CLASS: &str = "SYSCALL_CLASS";
    /// `Array<ThreadState>` (mmapable): per selected thread, its scheduler state, in the slot
    /// its tid selects ([`thread_slot`]), held by the first tracked thread to need it.
    pub const THREAD_SLOTS: &str = "THREAD_SLOTS";
    /// `HashMap<u32, ThreadState>`: the scheduler state of selected threads whose slot in
    /// `THREAD_SLOTS` another thread holds (by tid).
    pub const THREADS: &str = "THREADS";
    /// `PerCpuArray<SchedStats>`: per service id (sized max_services + 1 at load).
    pub const SCHED_STATS: &str = "SCHED_STATS";
    /// `Array<u64>`: index 0 is the monotonic time the current window started; intervals that
    /// straddle it are split there (the agent accounts the part before it).
    pub const WINDOW: &str = "WINDOW";
    /// `PerCpuArray<NetStats>`: per service id (sized max_services + 1 at load).
    pub const NET_STATS: &str = "NET_STATS";
    /// `PerCpuHashMap<PeerKey, PeerStats>`: per (service, remote address:port).
    pub const PEER_STATS: &str = "PEER_STATS";
    /// `HashMap<u64, u32>`: socket (kernel address) → service id, for events that run in
    /// softirq context (established, retransmit, close) on actively opened sockets.
    pub const SOCK_OWNER: &str = "SOCK_OWNER";
    /// `HashMap<u32, u32>`: listening local port → service id, for passively opened sockets.
    pub const LISTEN_OWNER: &str = "LISTEN_OWNER";
    /// `Array<BioWays>`: queued bios of selected services (who queued it and when), in one of
    /// the two ways of the set their kernel address hashes to.
    pub const BIO_OWNER: &str = "BIO_OWNER";
    /// `Array<RqWays>`: issued requests (owner and issue time), in one of the two ways of the
    /// set their kernel address hashes to.
    pub const RQ_START: &str = "RQ_START";
    /// `PerCpuHashMap<DiskKey, DiskStats>`: per (service, device).
    pub const DISK_STATS: &str = "DISK_STATS";
    /// `PerCpuArray<DiskStats>`: one zeroed value for first inserts.
    pub const ZERO_DISK: &str = "ZERO_DISK";
}

/// Names of the programs, grouped by what they probe. Each group loads and attaches on its own.
pub mod programs {
    pub const SYS_ENTER: &str = "sys_enter";
    pub const SYS_EXIT: &str = "sys_exit";
    /// The same without the scheduler group: per-call selection lookup, per-thread state.
    pub const SYS_ENTER_ALONE: &str = "sys_enter_alone";
    pub const SYS_EXIT_ALONE: &str = "sys_exit_alone";
    pub const PROCESS_FORK: &str = "sched_process_fork";
    pub const PROCESS_EXEC: &str = "sched_process_exec";
    pub const PROCESS_EXIT: &str = "sched_process_exit";
    /// BTF-typed (tp_btf), as `sched_wakeup`, `sock_send_length` and `sock_recv_length`: the
    /// fields of their arguments are plain loads. Each has a raw twin for kernels that refuse it.
    pub const SCHED_SWITCH: &str = "sched_switch";
    pub const SCHED_SWITCH_PLAIN: &str = "sched_switch_plain";
    pub const SCHED_WAKEUP: &str = "sched_wakeup";
    pub const SCHED_WAKEUP_RAW: &str = "sched_wakeup_raw";
    pub const SCHED_WAKEUP_NEW: &str = "sched_wakeup_new";
    pub const SOCK_SEND: &str = "sock_send_length";
    pub const SOCK_RECV: &str = "sock_recv_length";
    pub const SOCK_SEND_RAW: &str = "sock_send_length_raw";
    pub const SOCK_RECV_RAW: &str = "sock_recv_length_raw";
    pub const SOCK_STATE: &str = "inet_sock_set_state";
    pub const TCP_RETRANSMIT: &str = "tcp_retransmit_skb";
    pub const BIO_QUEUE: &str = "block_bio_queue";
    pub const RQ_ISSUE: &str = "block_rq_issue";
    pub const RQ_COMPLETE: &str = "block_rq_complete";
    pub const BIO_SPLIT: &str = "block_split";
    /// Empty programs: the benchmark's floor.
    pub const FLOOR_SYS_ENTER: &str = "floor_sys_enter";
    pub const FLOOR_SYS_EXIT: &str = "floor_sys_exit";
    pub const FLOOR_SCHED_SWITCH: &str = "floor_sched_switch";
}

/// Names of the globals the agent sets at load time with `EbpfLoader::set_global`.
pub mod globals {
    /// [`crate::Offsets`]: kernel struct field offsets, read from the running kernel's BTF.
    pub const OFFSETS: &str = "OFFSETS";
    /// `u32`: the agent's own tgid, never selected.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// `u32`: 1 to send an exec event for every process on the host (auto-discovery names new
    /// processes from them), 0 for selected processes only.
    pub const REPORT_ALL_EXECS: &str = "REPORT_ALL_EXECS";
    /// `u64`: futex waits longer than this many ns count as idle, not lock contention.
    pub const LOCK_IDLE_NS: &str = "LOCK_IDLE_NS";
    /// `u32`: 1 to send a LISTEN event when any process starts listening (port rules).
    pub const REPORT_LISTENS: &str = "REPORT_LISTENS";
    /// `u32`: first port of `net.ipv4.ip_local_port_range`.
    pub const EPHEMERAL_PORT_MIN: &str = "EPHEMERAL_PORT_MIN";
    /// `u32`: time one syscall in `mask + 1` (a power of two); 0 times every call.
    pub const SYSCALL_SAMPLE_MASK: &str = "SYSCALL_SAMPLE_MASK";
    /// `u32`: service rows per CPU in `SYSCALL_CALLS` (max_services + 1).
    pub const SYSCALL_ROWS: &str = "SYSCALL_ROWS";
    /// `u32`: the number of `THREAD_SLOTS` (a power of two) minus one.
    pub const THREAD_SLOT_MASK: &str = "THREAD_SLOT_MASK";
}

/// Most slots in `THREAD_SLOTS`: every tid has a slot of its own where `kernel.pid_max` is at
/// most this (6 MiB of kernel memory at most); above it, tids this far apart share one.
pub const MAX_THREAD_SLOTS: u32 = 1 << 16;

/// The `THREAD_SLOTS` element of thread `tid`.
#[inline(always)]
pub const fn thread_slot(tid: u32, mask: u32) -> u32 {
    tid & mask
}

/// Syscall numbers counted per service: x86_64's table ends below 512.
pub const SYSCALL_NR_SLOTS: u32 = 512;

/// The `SYSCALL_CALLS` element of (CPU, service, syscall): each CPU owns `rows` rows of
/// [`SYSCALL_NR_SLOTS`] counters — one 4 KiB page per service — so no two CPUs write a line.
#[inline(always)]
pub const fn syscall_calls_index(cpu: u32, rows: u32, service: u32, nr: u32) -> u32 {
    (cpu * rows + service) * SYSCALL_NR_SLOTS + nr
}

/// Value of `ON_CPU`: who is running on this CPU and the syscall it is in. `sched_switch`
/// parks `call` in `SYSCALL_START` when the task switches out and restores it when it comes
/// back, so the syscall probes touch only this CPU's memory.
///
/// A traced switch is not the only way a task starts running: some kernels switch without
/// the `sched_switch` tracepoint (seen on a PVM guest, where switches away from some threads
/// are never traced). So `task` and `regs` let every program check, almost for free, that
/// the task it runs for is the one named here; see `selection::syscall_task`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OnCpu {
    pub tid: u32,
    pub service: u32,
    /// The `SELECTION_GEN` this selection was read at; a stale one is re-read.
    pub generation: u64,
    /// The packed start ([`start`]) of the syscall in progress, 0 outside one.
    pub call: u64,
    /// State of the sampling generator (an LCG; only its high bits are used).
    pub rng: u32,
    /// 1 when the running task used a socket since it switched in: `peer` and `peer_sent`
    /// then go to its `ThreadState` when it switches out (network waits are charged there).
    pub peer_set: u32,
    pub peer: PeerKey,
    pub peer_sent: u32,
    /// The process of `tid`: a changed selection is re-read from it without a helper call.
    pub tgid: u32,
    /// Bytes this CPU moved to and from `pending_peer`, whichever task moved them, not yet
    /// added to `PEER_STATS` and to the peer's service's `NET_STATS`: they are added when a
    /// socket call here is for another peer, when the CPU goes idle, and at the first switch
    /// here after the agent starts a window — one hash update per change of peer instead of
    /// one per call, and no stats line touched by the calls in between.
    pub pending_peer: PeerKey,
    pub pending_tx: u64,
    pub pending_rx: u64,
    /// Network waits ended on this CPU (by `sched_switch` and `sched_wakeup`, which run with
    /// interrupts off, so apart from the bytes the socket calls add) for `wait_peer`, not yet
    /// added to `PEER_STATS`: added as the bytes are.
    pub wait_peer: PeerKey,
    pub pending_wait_ns: u64,
    /// The window (`WINDOW`) the pending figures were last added to `PEER_STATS` in.
    pub flushed_window: u64,
    /// The `task_struct` that `sched_switch` switched in, 0 when the task was found another
    /// way: the next switch compares it with its `prev` before trusting `tid`.
    pub task: u64,
    /// The `pt_regs` of `tid`'s syscalls (the top of its own kernel stack, so unique to it),
    /// learnt at its first syscall after it switched in; 0 until then.
    pub regs: u64,
    /// This CPU's run-queue clock when `sched_switch` last read the monotonic clock, 0 before
    /// it has; and the monotonic clock minus it then. A switch within a millisecond of that
    /// takes the time from the run-queue clock (`sched::switch_now`).
    pub clock_anchor: u64,
    pub clock_offset: u64,
}

/// Service id 0 means "not selected"; real ids start at 1.
pub const NO_SERVICE: u16 = 0;

/// Maximum comm length, as the kernel's `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;

/// Latency histogram layout.
///
/// The buckets are the OpenTelemetry exponential histogram at scale 2: bucket `i` holds durations
/// in `[2^(i/4), 2^((i+1)/4))` nanoseconds, four buckets per power of two. Each bucket is ~19%
/// wide, so a percentile read from it is within ~10% of the truth — fine enough to tell a 1 ms
/// sleep from a 1.3 ms one — and it exports to OTLP without re-bucketing. Plain log2 buckets
/// (100% wide) cannot place a p50 between 1.0 and 1.5 ms; finer scales double the map size for
/// precision nobody acts on. 160 buckets span 1 ns to 2^40 ns (18 minutes); longer calls land in
/// the last bucket and still count in `max_ns`.
pub mod hist {
    pub const SUB_BUCKETS_LOG2: u32 = 2;
    pub const SCALE: i32 = 2;
    pub const BUCKETS: usize = 160;

    /// Mantissa thresholds for the sub-buckets: the first 8 fraction bits of 2^(1/4), 2^(2/4),
    /// 2^(3/4), rounded up, so `m >= T[k]` means the value is at least `2^(k/4)` of its octave.
    /// The boundary error is below 1/256 of a bucket.
    const T1: u64 = 49; // 2^0.25 = 1.1892 -> 0.1892 * 256 = 48.4
    const T2: u64 = 107; // 2^0.5  = 1.4142 -> 0.4142 * 256 = 106.0
    const T3: u64 = 175; // 2^0.75 = 1.6818 -> 0.6818 * 256 = 174.5

    /// Bucket index of a duration in nanoseconds. Branchy but loop-free, so the verifier sees a
    /// straight line; BPF has no count-leading-zeros instruction.
    #[inline(always)]
    pub fn bucket(ns: u64) -> usize {
        if ns == 0 {
            return 0;
        }
        let mut x = ns;
        let mut msb: u64 = 0;
        if x >= 1 << 32 {
            x >>= 32;
            msb += 32;
        }
        if x >= 1 << 16 {
            x >>= 16;
            msb += 16;
        }
        if x >= 1 << 8 {
            x >>= 8;
            msb += 8;
        }
        if x >= 1 << 4 {
            x >>= 4;
            msb += 4;
        }
        if x >= 1 << 2 {
            x >>= 2;
            msb += 2;
        }
        if x >= 1 << 1 {
            msb += 1;
        }
        // The 8 bits below the leading one.
        let m = if msb >= 8 {
            (ns >> (msb - 8)) & 0xff
        } else {
            (ns << (8 - msb)) & 0xff
        };
        let sub = (m >= T1) as u64 + (m >= T2) as u64 + (m >= T3) as u64;
        let idx = (msb << SUB_BUCKETS_LOG2) + sub;
        if idx >= BUCKETS as u64 {
            BUCKETS - 1
        } else {
            idx as usize
        }
    }

    /// Lower bound of bucket `i` in nanoseconds: `2^(i/4)`. Userspace only: BPF has no floats.
    #[cfg(not(target_arch = "bpf"))]
    pub fn lower_bound(i: usize) -> f64 {
        const QUARTERS: [f64; 4] = [
            1.0,
            1.189_207_115_002_721,
            core::f64::consts::SQRT_2,
            1.681_792_830_507_429,
        ];
        (1u64 << (i >> SUB_BUCKETS_LOG2).min(63)) as f64 * QUARTERS[i & 3]
    }

    /// Upper bound of bucket `i` in nanoseconds.
    #[cfg(not(target_arch = "bpf"))]
    pub fn upper_bound(i: usize) -> f64 {
        lower_bound(i + 1)
    }
}

/// Packing of [`maps::SYSCALL_START`] values: the start time in the high 48 bits (wraps every 78
/// hours; durations are computed modulo 2^48, so only a syscall longer than that is misread), the
/// syscall number in the low 9 bits and, between them, the attach phase the call started in
/// ([`maps::SYSCALL_PHASE`]): a start left over from an earlier phase is not this call's. One
/// `u64` per thread keeps the array at 8 bytes per possible tid.
pub mod start {
    pub const LOW_BITS: u32 = 16;
    pub const LOW_MASK: u64 = (1 << LOW_BITS) - 1;
    /// x86_64's syscall table ends below 512 ([`crate::SYSCALL_NR_SLOTS`]).
    pub const NR_BITS: u32 = 9;
    pub const NR_MASK: u64 = (1 << NR_BITS) - 1;
    /// Phases are numbered 1..=[`PHASE_MASK`], then wrap to 1.
    pub const PHASE_MASK: u64 = (1 << (LOW_BITS - NR_BITS)) - 1;
    /// The start time of a call that is counted but not timed (no clock read).
    pub const UNTIMED: u64 = 1;

    /// The start time of a packed start: [`UNTIMED`] or a `bpf_ktime_get_ns` reading.
    #[inline(always)]
    pub fn time(packed: u64) -> u64 {
        packed >> LOW_BITS
    }

    #[inline(always)]
    pub fn nr(packed: u64) -> u32 {
        (packed & NR_MASK) as u32
    }

    #[inline(always)]
    pub fn phase(packed: u64) -> u32 {
        ((packed >> NR_BITS) & PHASE_MASK) as u32
    }

    #[inline(always)]
    pub fn pack(now_ns: u64, nr: u64, phase: u32) -> u64 {
        (now_ns << LOW_BITS) | ((u64::from(phase) & PHASE_MASK) << NR_BITS) | (nr & NR_MASK)
    }

    /// The elapsed nanoseconds since a packed start.
    #[inline(always)]
    pub fn elapsed(now_ns: u64, packed: u64) -> u64 {
        (now_ns << LOW_BITS).wrapping_sub(packed & !LOW_MASK) >> LOW_BITS
    }
}

/// Key of [`maps::SYSCALL_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub service: u32,
    pub nr: u32,
}

/// Value of [`maps::SYSCALL_STATS`]: the timed calls (all of them, or a random sample; see
/// [`globals::SYSCALL_SAMPLE_MASK`]), cumulative since load. Userspace diffs successive reads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStats {
    pub timed: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; hist::BUCKETS],
}

/// Key of [`maps::SYSCALL_ERRORS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrnoKey {
    pub service: u32,
    pub nr: u32,
    pub errno: u32,
    pub _pad: u32,
}

/// Indexes of [`maps::COUNTERS`]. Every event the kernel side could not record has one, so
/// nothing is lost silently.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A syscall's stats entry could not be created: `SYSCALL_STATS` is full.
    DropSyscallStatsFull = 0,
    /// An errno entry could not be created: `SYSCALL_ERRORS` is full.
    DropErrnoFull = 1,
    /// A lifecycle event was lost: the `PROC_EVENTS` ring buffer was full.
    DropProcEventRingFull = 2,
    /// A pid or tid beyond the arrays sized from `kernel.pid_max` at load time.
    DropPidOutOfRange = 3,
    /// A syscall exit with no recorded entry whose number could not be read from its saved
    /// registers either: the call is not counted.
    UnmatchedExit = 4,
    /// Processes that joined a service by fork.
    ForkInherited = 5,
    /// Processes that joined a service by an exec matching a comm rule.
    ExecMatched = 6,
    /// Reading a kernel struct field failed (`bpf_probe_read_kernel`).
    DropTaskReadFailed = 7,
    /// A selected thread could not be tracked: `THREADS` is full.
    DropThreadsFull = 8,
    /// A service's scheduler stats could not be found: its id is beyond `SCHED_STATS`.
    DropSchedStatsFull = 9,
    /// A service's network stats could not be found: its id is beyond `NET_STATS`.
    DropNetStatsFull = 10,
    /// A peer could not be recorded: `PEER_STATS` is full (its bytes still count in totals).
    DropPeersFull = 11,
    /// A socket owner could not be recorded: `SOCK_OWNER` is full.
    DropSockOwnerFull = 12,
    /// An issued request was displaced from `RQ_START` before it completed (both ways of its
    /// set held other requests): its I/O is not counted.
    DropBlockTrackFull = 13,
    /// A service's disk stats could not be created: `DISK_STATS` is full.
    DropDiskStatsFull = 14,
    /// Processes the kernel put into a service (fork, exec rule).
    ProcessesSelected = 15,
    /// Processes the kernel took out of a service (exit).
    ProcessesReleased = 16,
    /// A syscall not counted: its number is beyond [`SYSCALL_NR_SLOTS`] or its service beyond
    /// the rows `SYSCALL_CALLS` was sized for.
    DropSyscallOutsideTable = 17,
    /// A task found running on a CPU that no `sched_switch` had switched it to (the kernel
    /// switched without the tracepoint); the probes took it over from there.
    UntracedSwitch = 18,
    /// A syscall exit with no entry recorded in the current attach (the call began before the
    /// probes attached or its process was selected): counted from its saved registers, not
    /// timed.
    ExitWithoutEntry = 19,
    /// A selected service's request issued again at the same address while `RQ_START` still
    /// held it from an earlier issue: that one's completion was never seen (the kernel skips a
    /// program run that would nest in a run of the same program on its CPU), so its I/O is not
    /// counted.
    BlockCompletionUnseen = 20,
}

impl Counter {
    pub const COUNT: u32 = 21;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::DropSyscallStatsFull,
        Counter::DropErrnoFull,
        Counter::DropProcEventRingFull,
        Counter::DropPidOutOfRange,
        Counter::UnmatchedExit,
        Counter::ForkInherited,
        Counter::ExecMatched,
        Counter::DropTaskReadFailed,
        Counter::DropThreadsFull,
        Counter::DropSchedStatsFull,
        Counter::DropNetStatsFull,
        Counter::DropPeersFull,
        Counter::DropSockOwnerFull,
        Counter::DropBlockTrackFull,
        Counter::DropDiskStatsFull,
        Counter::ProcessesSelected,
        Counter::ProcessesReleased,
        Counter::DropSyscallOutsideTable,
        Counter::UntracedSwitch,
        Counter::ExitWithoutEntry,
        Counter::BlockCompletionUnseen,
    ];
}

/// Kinds of [`ProcEvent`].
pub mod proc_event {
    pub const FORK: u32 = 1;
    pub const EXEC: u32 = 2;
    pub const EXIT: u32 = 3;
    /// A process started listening on a TCP port (`parent_pid` carries the port).
    pub const LISTEN: u32 = 4;
}

/// A process lifecycle event of a selected process, sent on [`maps::PROC_EVENTS`]. Rare by
/// nature (fork, exec, exit), so a ring buffer is the right channel.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcEvent {
    pub kind: u32,
    pub pid: u32,
    pub parent_pid: u32,
    pub service: u32,
    pub comm: [u8; COMM_LEN],
}

/// Kernel struct field offsets in bytes, from the running kernel's BTF (Rust eBPF has no CO-RE
/// relocations). `u32::MAX` marks a field this kernel does not have; the programs that need it
/// are then not attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    /// `struct sock_common` fields (at the start of `struct sock`).
    pub skc_daddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    /// `struct request` fields.
    pub rq_bio: u32,
    pub rq_cmd_flags: u32,
    pub rq_part: u32,
    /// `struct block_device.bd_dev`.
    pub bdev_dev: u32,
    /// `struct bio.bi_private`: a split-off bio's parent (`bio_chain`).
    pub bio_private: u32,
    /// `struct pt_regs` fields: `ax` holds -ENOSYS while the task is inside a syscall,
    /// `orig_ax` the syscall's number.
    pub regs_ax: u32,
    pub regs_orig_ax: u32,
    /// `task_struct.sched_info` fields (`CONFIG_SCHED_INFO`): the task's total time waiting on
    /// run queues so far, and when it last joined one (0 while running or blocked), in its run
    /// queue's clock.
    pub task_run_delay: u32,
    pub task_last_queued: u32,
    /// `task_struct.se.cfs_rq`, `cfs_rq.rq` and `rq.clock`: the clock `last_queued` is in, read
    /// through the task's run queue.
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    /// `task_struct.utime` (`stime` follows it: the loader checks), `maj_flt`, `start_time`
    /// (monotonic ns) and `flags` (`PF_*`).
    pub task_utime: u32,
    pub task_maj_flt: u32,
    pub task_start_time: u32,
    pub task_flags: u32,
}

/// What kind of wait a syscall is, for the off-CPU reason (see [`OffCpuReason`]).
pub mod syscall_class {
    pub const OTHER: u32 = 0;
    /// futex: waiting for a lock (or a condition).
    pub const LOCK: u32 = 1;
    /// nanosleep, clock_nanosleep.
    pub const SLEEP: u32 = 2;
    /// epoll/poll/select/accept: waiting for new work.
    pub const WAIT_FOR_WORK: u32 = 3;
    /// recv/send/connect: waiting on a socket.
    pub const NET: u32 = 4;
    /// read and friends: disk when uninterruptible, a socket or pipe otherwise.
    pub const IO: u32 = 5;
    /// send/sendto/sendmsg: blocked sending.
    pub const NET_SEND: u32 = 6;
    /// write/fsync and friends: disk when uninterruptible, a full socket or pipe otherwise.
    pub const IO_WRITE: u32 = 7;
}

/// Why a selected thread was off CPU. Index into [`SchedStats::offcpu_ns`].
pub mod offcpu {
    pub const LOCK: usize = 0;
    pub const NETWORK: usize = 1;
    pub const DISK: usize = 2;
    pub const SLEEP: usize = 3;
    pub const MEMORY: usize = 4;
    pub const IDLE: usize = 5;
    pub const OTHER: usize = 6;
    /// Blocked sending: a full socket send buffer (or pipe).
    pub const NETWORK_SEND: usize = 7;
    pub const COUNT: usize = 8;
}

/// A remote endpoint of a service: IPv4 addresses are stored IPv4-mapped in `addr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub service: u32,
    /// Host byte order.
    pub port: u16,
    /// AF_INET (2) or AF_INET6 (10).
    pub family: u16,
    pub addr: [u8; 16],
}

/// Per selected thread. Timestamps are `bpf_ktime_get_ns`; 0 means "not in that state".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ThreadState {
    pub service: u32,
    /// [`offcpu`] reason of the current off-CPU interval.
    pub reason: u32,
    pub oncpu_since: u64,
    pub offcpu_since: u64,
    pub runnable_since: u64,
    /// The last socket peer this thread sent to or received from (`peer.family == 0`: none),
    /// to which a network wait is attributed.
    pub peer: PeerKey,
    /// 1 when the thread's last socket operation was a send (it may be awaiting a response).
    pub last_sent: u32,
    /// The thread (tid) whose state this is: a `THREAD_SLOTS` slot is shared by every tid that
    /// selects it, and held by one at a time.
    pub tid: u32,
    /// 1 once `utime`, `stime` and `maj_flt` below hold the task's counters.
    pub counted: u32,
    /// The task's `sched_info.run_delay` when it last blocked: at its switch-in, the growth
    /// since is the time it waited on run queues it left (a migration) before the one it runs
    /// from.
    pub run_delay: u64,
    /// The task's CPU time in user and kernel mode and its major page faults when they were
    /// last added to its service (`task_struct.utime`, `stime`, `maj_flt`).
    pub utime: u64,
    pub stime: u64,
    pub maj_flt: u64,
}

/// Per service, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SchedStats {
    pub on_cpu_ns: u64,
    pub runqueue_ns: u64,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub offcpu_ns: [u64; offcpu::COUNT],
    pub offcpu_count: [u64; offcpu::COUNT],
    /// Run-queue latency (wakeup or preemption → back on CPU), histogram as [`hist`].
    pub runqueue_buckets: [u64; hist::BUCKETS],
    /// CPU time in user and in kernel mode, as the kernel's tick sampling splits it
    /// (`task_struct.utime/stime`).
    pub user_ns: u64,
    pub system_ns: u64,
    /// Page faults that had to read from disk (`task_struct.maj_flt`).
    pub major_faults: u64,
}

/// Per service, cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub connects_failed: u64,
    pub retransmits: u64,
}

/// Per (service, peer), cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerStats {
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub connections: u64,
    pub wait_ns: u64,
}

/// Who queued a bio.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BioOwner {
    /// The bio (kernel address) the way holds, 0 when empty.
    pub bio: u64,
    pub service: u32,
    pub _pad: u32,
    pub queued_ns: u64,
}

/// A set of [`maps::BIO_OWNER`]: two ways in one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BioWays {
    pub ways: [BioOwner; 2],
    pub _pad: [u64; 2],
}

/// An issued request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RqStart {
    /// The request (kernel address) the way holds, 0 when empty.
    pub rq: u64,
    pub service: u16,
    /// 0 read, 1 write, 2 other (flush, discard, ...).
    pub op: u16,
    /// `dev_t` of the disk.
    pub dev: u32,
    /// When its first bio was queued, and when it was issued (monotonic ns).
    pub queued_ns: u64,
    pub issued_ns: u64,
}

/// A set of [`maps::RQ_START`]: two ways in one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RqWays {
    pub ways: [RqStart; 2],
}

const _: () = assert!(
    core::mem::size_of::<BioWays>() == 64 && core::mem::size_of::<RqWays>() == 64,
    "a set is one cache line"
);

/// Key of [`maps::DISK_STATS`]; service 0 is I/O no selected service can be charged with
/// (write-back by kernel threads, readahead, journal).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DiskKey {
    pub service: u32,
    pub dev: u32,
}

/// Per (service, device), cumulative.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DiskStats {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    /// Issue → complete, summed.
    pub device_ns: u64,
    /// Queued (bio) → issued, summed: time in the block layer's queues.
    pub queue_ns: u64,
    /// Queued (or issued, if the queueing was not seen) → complete, histogram as [`hist`].
    pub buckets: [u64; hist::BUCKETS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, `Copy`, made only of integers with explicit
    // padding, so every bit pattern is a valid value.
    unsafe impl aya::Pod for super::SyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ErrnoKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Offsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ThreadState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SchedStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DiskKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DiskStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OnCpu {}
}
