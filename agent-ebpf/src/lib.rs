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
    /// `PerCpuHashMap<SyscallKey, SyscallStats>`.
    pub const SYSCALL_STATS: &str = "SYSCALL_STATS";
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
}

/// Names of the programs, grouped by what they probe. Each group loads and attaches on its own.
pub mod programs {
    pub const SYS_ENTER: &str = "sys_enter";
    pub const SYS_EXIT: &str = "sys_exit";
    pub const PROCESS_FORK: &str = "sched_process_fork";
    pub const PROCESS_EXEC: &str = "sched_process_exec";
    pub const PROCESS_EXIT: &str = "sched_process_exit";
}

/// Names of the globals the agent sets at load time with `EbpfLoader::set_global`.
pub mod globals {
    /// `u32`: byte offset of `task_struct.pid`, read from the running kernel's BTF.
    pub const TASK_PID_OFFSET: &str = "TASK_PID_OFFSET";
    /// `u32`: byte offset of `task_struct.tgid`, read from the running kernel's BTF.
    pub const TASK_TGID_OFFSET: &str = "TASK_TGID_OFFSET";
    /// `u32`: the agent's own tgid, never selected.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// `u32`: 1 to send an exec event for every process on the host (auto-discovery names new
    /// processes from them), 0 for selected processes only.
    pub const REPORT_ALL_EXECS: &str = "REPORT_ALL_EXECS";
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
/// syscall number in the low 16. One `u64` per thread keeps the array at 8 bytes per possible tid.
pub mod start {
    pub const NR_BITS: u32 = 16;
    pub const NR_MASK: u64 = (1 << NR_BITS) - 1;

    #[inline(always)]
    pub fn pack(now_ns: u64, nr: u64) -> u64 {
        (now_ns << NR_BITS) | (nr & NR_MASK)
    }

    /// The elapsed nanoseconds since a packed start, and the syscall number.
    #[inline(always)]
    pub fn unpack(now_ns: u64, packed: u64) -> (u64, u64) {
        let elapsed = (now_ns << NR_BITS).wrapping_sub(packed & !NR_MASK) >> NR_BITS;
        (elapsed, packed & NR_MASK)
    }
}

/// Key of [`maps::SYSCALL_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    pub service: u32,
    pub nr: u32,
}

/// Value of [`maps::SYSCALL_STATS`]: cumulative since load. Userspace diffs successive reads.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallStats {
    pub count: u64,
    pub errors: u64,
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
    /// A syscall exit with no recorded entry (the thread was mid-syscall when probes attached).
    UnmatchedExit = 4,
    /// Processes that joined a service by fork.
    ForkInherited = 5,
    /// Processes that joined a service by an exec matching a comm rule.
    ExecMatched = 6,
    /// Reading a task field failed (`bpf_probe_read_kernel`).
    DropTaskReadFailed = 7,
}

impl Counter {
    pub const COUNT: u32 = 8;
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::DropSyscallStatsFull,
        Counter::DropErrnoFull,
        Counter::DropProcEventRingFull,
        Counter::DropPidOutOfRange,
        Counter::UnmatchedExit,
        Counter::ForkInherited,
        Counter::ExecMatched,
        Counter::DropTaskReadFailed,
    ];
}

/// Kinds of [`ProcEvent`].
pub mod proc_event {
    pub const FORK: u32 = 1;
    pub const EXEC: u32 = 2;
    pub const EXIT: u32 = 3;
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
}
