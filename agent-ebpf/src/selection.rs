//! Which processes are profiled, and the counters every group shares.
//!
//! Selection happens here, in the kernel: every hot-path program starts with [`service_of`], an
//! array lookup that the verifier inlines into a bounds check and a load, so a process that is
//! not selected costs almost nothing. The syscall probes go further: [`on_cpu`] reads the
//! selection `sched_switch` cached for the running task, which needs no helper call at all.

use agent_ebpf::{Counter, NO_SERVICE, Offsets, OnCpu};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, PerCpuArray},
};

/// `BPF_F_MMAPABLE`: the agent maps the array into its memory.
pub const MMAPABLE: u32 = 1 << 10;

/// Service id per tgid, four `u16`s per element: an array element is at least 8 bytes, so
/// packing keeps the map at 2 bytes per possible pid (64 KiB for the default pid_max of 32768,
/// 8 MiB for 4194304). Resized at load from `kernel.pid_max`; 1 is a placeholder. Mappable, so
/// the agent too writes a pid's two bytes in place, never the element around them.
#[map(name = "PID_SERVICE")]
pub static PID_SERVICE: Array<[u16; 4]> = Array::with_max_entries(1, MMAPABLE);

/// The running task per CPU: written by `sched_switch` at every switch, read by the syscall
/// probes. Per-CPU, so nothing on the syscall path is shared.
#[map(name = "ON_CPU")]
pub static ON_CPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// `[0]`: bumped after every change to `PID_SERVICE` (by the agent and by [`set_service`]); an
/// [`OnCpu`] read at an older generation is re-read. Starts at 1 (set by the agent), so
/// generation 0 marks an `ON_CPU` that names no task yet.
#[map(name = "SELECTION_GEN")]
pub static SELECTION_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// `[0]`: 1 while the syscall probes are attached alongside `sched_switch` (set by the agent):
/// `ON_CPU` then names the running task and its syscall in flight.
#[map(name = "ON_CPU_KEPT")]
static ON_CPU_KEPT: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn on_cpu_kept() -> bool {
    ON_CPU_KEPT.get(0).is_some_and(|v| *v != 0)
}

/// `[0]`: the syscall probes' current attach, tagged on every call's start (`agent_ebpf::start`).
#[map(name = "SYSCALL_PHASE")]
static SYSCALL_PHASE: Array<u32> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn syscall_phase() -> u32 {
    SYSCALL_PHASE.get(0).copied().unwrap_or(0)
}

/// Drop and event counters, indexed by [`Counter`]. Per-CPU so the hot path never shares a line.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

/// The agent's own tgid: never selected, whatever the rules say.
#[unsafe(no_mangle)]
static AGENT_TGID: u32 = 0;

/// Kernel struct offsets from the running kernel's BTF, set by the loader.
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    task_pid: 0,
    task_tgid: 0,
    skc_daddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    rq_bio: 0,
    rq_cmd_flags: 0,
    rq_part: 0,
    bdev_dev: 0,
    bio_private: 0,
    regs_ax: 0,
    regs_orig_ax: 0,
    task_run_delay: 0,
    task_last_queued: 0,
    task_cfs_rq: 0,
    cfs_rq_rq: 0,
    rq_clock: 0,
    task_utime: 0,
    task_maj_flt: 0,
    task_start_time: 0,
    task_flags: 0,
};

/// One member of `OFFSETS`: `offset(|o| &o.task_pid)`. A volatile read of that member alone:
/// volatile so the zero initialiser is not folded, one member so a caller does not pay for all
/// of them (reading the whole struct volatile costs a load of every member, every time).
#[inline(always)]
pub fn offset(member: impl FnOnce(&Offsets) -> &u32) -> u32 {
    // SAFETY: a read of a loader-filled global.
    unsafe { core::ptr::read_volatile(member(&OFFSETS)) }
}

/// Reads a `T` at `base + offset` of a kernel object. Counts a failure.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel tolerates any address; a fault returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .map_err(|_| count(Counter::DropTaskReadFailed))
}

/// Loads a `T` at `base + offset` of a BTF-typed kernel object (a tp_btf argument, or a pointer
/// a `_btf` helper returned): a plain load, no helper call. `offset` must be a load-time
/// constant (a field of [`offsets`]), which the verifier sees through the frozen globals.
///
/// # Safety
/// `base` must be a BTF-typed pointer and `T` the type of the member at `offset` (the verifier
/// refuses the program otherwise); a load that faults reads zero.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: the caller's contract above.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

#[inline(always)]
pub fn agent_tgid() -> u32 {
    // SAFETY: a read of a global the loader fills in; volatile so the compiler keeps the load
    // instead of folding the zero initialiser.
    unsafe { core::ptr::read_volatile(&AGENT_TGID) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a per-CPU array, valid for the program's run.
        unsafe { *slot += 1 };
    }
}

/// The service id of a tgid, or [`NO_SERVICE`].
#[inline(always)]
pub fn service_of(tgid: u32) -> u16 {
    match PID_SERVICE.get_ptr(tgid >> 2) {
        // SAFETY: a live element; the index is masked to 0..4. Volatile, so the compiler keeps
        // it after a preceding generation read (see `SELECTION_GEN`): hoisted above it, a stale
        // selection could be cached under a fresh generation.
        Some(group) => unsafe { core::ptr::read_volatile(&(*group)[(tgid & 3) as usize]) },
        None => NO_SERVICE,
    }
}

#[inline(always)]
pub fn selection_generation() -> u64 {
    SELECTION_GEN.get(0).map_or(0, |g| {
        // SAFETY: a live element; volatile so the load is not merged with the selection read
        // that must come after it.
        unsafe { core::ptr::read_volatile(g) }
    })
}

/// This CPU's `ON_CPU`, its selection re-read (from the cached tgid: no helper call) when the
/// selection changed since it was cached. Whether it names the running task is the caller's
/// to know: `sched_switch` checks its `prev`, the syscall probes use [`syscall_task`], and the
/// socket probes trust it while the syscall probes run (a socket call runs inside a syscall
/// whose entry checked) and otherwise compare the task `sched_switch` switched in with the
/// current one.
#[inline(always)]
pub fn on_cpu() -> Option<*mut OnCpu> {
    let c = ON_CPU.get_ptr_mut(0)?;
    refresh_service(c);
    Some(c)
}

/// Re-reads the service of `c`'s task (from the cached tgid: no helper call) when the
/// selection changed since it was cached. `c`: this CPU's `ON_CPU`. Returns the generation it
/// read, for later selection reads in the same run.
#[inline(always)]
pub fn refresh_service(c: *mut OnCpu) -> u64 {
    let generation = selection_generation();
    // SAFETY: this CPU's element; the program runs with migration disabled.
    unsafe {
        if (*c).generation != generation {
            (*c).service = u32::from(service_of((*c).tgid));
            (*c).generation = generation;
        }
    }
    generation
}

/// This CPU's `ON_CPU`, made to name the task in this syscall. `regs` (the syscall's
/// `pt_regs`, at the top of the caller's own kernel stack) identifies the caller: when it is
/// the one learnt at this task's last syscall, nothing more is needed. Otherwise — the first
/// syscall since a switch, or a task the kernel switched to without `sched_switch` — one
/// helper call asks who runs, and a task other than the cached one is taken over.
#[inline(always)]
pub fn syscall_task(regs: u64) -> Option<*mut OnCpu> {
    let c = ON_CPU.get_ptr_mut(0)?;
    // SAFETY: this CPU's element; the program runs with migration disabled.
    unsafe {
        if (*c).regs != regs {
            let id = bpf_get_current_pid_tgid();
            let (tid, tgid) = (id as u32, (id >> 32) as u32);
            if (*c).tid != tid || (*c).tgid != tgid {
                crate::sched::adopt(c, tid, tgid);
            }
            (*c).regs = regs;
        }
    }
    Some(c)
}

/// Sets the service of a tgid. A 2-byte store: it cannot clobber the neighbouring pids that share
/// the element, even when another CPU writes one of them at the same time.
#[inline(always)]
pub fn set_service(tgid: u32, service: u16) {
    let Some(group) = PID_SERVICE.get_ptr_mut(tgid >> 2) else {
        count(Counter::DropPidOutOfRange);
        return;
    };
    let slot = (tgid & 3) as usize;
    // SAFETY: the pointer is to a live array element; the index is masked to 0..4.
    let old = unsafe { (*group)[slot] };
    // SAFETY: as above. Volatile, so it stays before the generation bump below.
    unsafe { core::ptr::write_volatile(&mut (*group)[slot], service) };
    if old != service
        && let Some(g) = SELECTION_GEN.get_ptr_mut(0)
    {
        // SAFETY: a live element. Not atomic: two CPUs bumping at once may lose one increment,
        // but each writer read the value after its own selection change, so the result still
        // differs from anything a CPU cached before either change — all a reader relies on.
        unsafe { core::ptr::write_volatile(g, core::ptr::read_volatile(g).wrapping_add(1)) };
    }
    // Occupancy bookkeeping: the agent reports tracked processes from these two counters.
    if old == NO_SERVICE && service != NO_SERVICE {
        count(Counter::ProcessesSelected);
    } else if old != NO_SERVICE && service == NO_SERVICE {
        count(Counter::ProcessesReleased);
    }
}
