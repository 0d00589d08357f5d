//! Syscalls per (service, syscall): every call counted, errors by errno, and latency
//! histograms of the calls that are timed — all of them, or a random one in N.
//!
//! Why sample the timing: on these machines a helper call costs ~12 ns (return thunks), a
//! clock read ~44 ns and a per-CPU hash lookup ~36 ns, against ~58 ns for an empty program. A
//! call counted without a clock read costs a few ns: two inlined per-CPU lookups and a store.
//! The counts and errors stay exact; the histogram is of the timed calls (docs/probes.md).
//!
//! The agent may attach these programs for part of each window only (`syscall_duty_cycle`):
//! every start carries the attach it was made in, and an exit whose start is missing or from
//! an earlier attach is counted from the syscall number its registers saved, but not timed.
//!
//! Two program pairs: `sys_enter`/`sys_exit` read the running task from `ON_CPU`, which
//! `sched_switch` keeps, and keep the call in flight there; they check it names the caller by
//! the syscall's `pt_regs` pointer, a helper call only at a task's first syscall after a switch
//! (`selection::syscall_task`). `*_alone` run without the scheduler group: a helper call for
//! the pid and a per-thread slot.

use agent_ebpf::{
    Counter, ErrnoKey, NO_SERVICE, SYSCALL_NR_SLOTS, SyscallKey, SyscallStats, hist, start,
    syscall_calls_index,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::selection::{
    MMAPABLE, ON_CPU, count, offset, read_field, refresh_service, service_of, syscall_phase,
    syscall_task,
};

/// `BPF_F_NO_PREALLOC`: per-CPU hash values are allocated on first use, so memory follows the
/// (service, syscall) pairs actually seen rather than `max_entries × CPUs × 1.3 KiB`.
const NO_PREALLOC: u32 = 1;

/// Packed syscall start per tid ([`start::pack`]), indexed by tid, resized at load from
/// `kernel.pid_max`. With the scheduler group it holds only the calls of threads switched out
/// mid-call; without it, every call in flight.
#[map(name = "SYSCALL_START")]
pub static SYSCALL_START: Array<u64> = Array::with_max_entries(1, 0);

/// Calls per (CPU, service, syscall): see [`syscall_calls_index`]. Sized at load to
/// CPUs × (max_services + 1) × 512. Mappable: the agent reads the counts without a syscall.
#[map(name = "SYSCALL_CALLS")]
static SYSCALL_CALLS: Array<u64> = Array::with_max_entries(1, MMAPABLE);

/// 4096 (service, syscall) pairs: 64 services using 64 distinct syscalls each. Resizable at load.
#[map(name = "SYSCALL_STATS")]
static SYSCALL_STATS: PerCpuHashMap<SyscallKey, SyscallStats> =
    PerCpuHashMap::with_max_entries(4096, NO_PREALLOC);

#[map(name = "SYSCALL_ERRORS")]
static SYSCALL_ERRORS: PerCpuHashMap<ErrnoKey, u64> =
    PerCpuHashMap::with_max_entries(4096, NO_PREALLOC);

/// A zeroed stats value to insert from: 1.3 KiB does not fit the 512-byte BPF stack.
#[map(name = "ZERO_STATS")]
static ZERO_STATS: PerCpuArray<SyscallStats> = PerCpuArray::with_max_entries(1, 0);

/// Time one call in `mask + 1`; set by the loader (`agent_ebpf::globals::SYSCALL_SAMPLE_MASK`).
/// Read-only after load, so the verifier folds it.
#[unsafe(no_mangle)]
static SYSCALL_SAMPLE_MASK: u32 = 0;

/// Service rows per CPU in `SYSCALL_CALLS`; set by the loader.
#[unsafe(no_mangle)]
static SYSCALL_ROWS: u32 = 1;

/// Largest errno the kernel returns (`MAX_ERRNO`); smaller negative returns are not errors
/// (e.g. `lseek` offsets, `mmap` addresses never reach this range).
const MAX_ERRNO: i64 = 4095;

// raw_syscalls:sys_enter — TP_PROTO(struct pt_regs *regs, long id)
//
// The cached selection as it is, without the generation check: a task selected while running
// is picked up at its next sys_exit (that one call counts as unmatched), one taken out stops
// counting there. One lookup less on every syscall of every process.
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    match try_sys_enter(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), ()> {
    let c = syscall_task(ctx.arg(0)).ok_or(())?;
    // SAFETY: this CPU's ON_CPU element; programs run with migration disabled.
    unsafe {
        if (*c).service != u32::from(NO_SERVICE) {
            (*c).call = begin(&mut (*c).rng, ctx.arg(1));
        }
    }
    Ok(())
}

// raw_syscalls:sys_exit — TP_PROTO(struct pt_regs *regs, long ret)
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    match try_sys_exit(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), ()> {
    let c = syscall_task(ctx.arg(0)).ok_or(())?;
    refresh_service(c);
    // SAFETY: as in sys_enter.
    let (service, packed) = unsafe { ((*c).service, core::mem::replace(&mut (*c).call, 0)) };
    if service != u32::from(NO_SERVICE) {
        finish(service, packed, ctx.arg(0), ctx.arg(1));
    }
    Ok(())
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter_alone(ctx: RawTracePointContext) -> i32 {
    match try_sys_enter_alone(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_sys_enter_alone(ctx: &RawTracePointContext) -> Result<(), ()> {
    let id = bpf_get_current_pid_tgid();
    if service_of((id >> 32) as u32) == NO_SERVICE {
        return Ok(());
    }
    let slot = SYSCALL_START.get_ptr_mut(id as u32).ok_or(())?;
    let c = ON_CPU.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this tid's element, written only by this thread; this CPU's ON_CPU element (only
    // its generator is used here).
    unsafe { *slot = begin(&mut (*c).rng, ctx.arg(1)) };
    Ok(())
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_alone(ctx: RawTracePointContext) -> i32 {
    match try_sys_exit_alone(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_sys_exit_alone(ctx: &RawTracePointContext) -> Result<(), ()> {
    let id = bpf_get_current_pid_tgid();
    let service = service_of((id >> 32) as u32);
    if service == NO_SERVICE {
        return Ok(());
    }
    let slot = SYSCALL_START.get_ptr_mut(id as u32).ok_or(())?;
    // SAFETY: this tid's element, written only by this thread.
    let packed = unsafe { core::mem::replace(&mut *slot, 0) };
    finish(u32::from(service), packed, ctx.arg(0), ctx.arg(1));
    Ok(())
}

/// The packed start of a call: timed (a clock read) for one call in `SYSCALL_SAMPLE_MASK + 1`,
/// chosen by a per-CPU generator so no syscall pattern can line up with it.
#[inline(always)]
fn begin(rng: &mut u32, nr: u64) -> u64 {
    // SAFETY: a read of a loader-filled global.
    let mask = unsafe { core::ptr::read_volatile(&SYSCALL_SAMPLE_MASK) };
    *rng = rng.wrapping_mul(1_103_515_245).wrapping_add(12_345);
    let time = if (*rng >> 16) & mask == 0 {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        unsafe { bpf_ktime_get_ns() }
    } else {
        start::UNTIMED
    };
    start::pack(time, nr, syscall_phase())
}

/// Counts a finished call, its error, and its latency if it was timed. `regs`: the caller's
/// saved registers, which name the call when its start was not seen.
#[inline(always)]
fn finish(service: u32, packed: u64, regs: *const u8, ret: i64) {
    // The call's number, and its start when this attach timed it.
    let (nr, timed) = if packed != 0 && start::phase(packed) == syscall_phase() {
        let timed = start::time(packed) != start::UNTIMED;
        (start::nr(packed), timed.then_some(packed))
    } else {
        match exit_without_entry(regs, ret) {
            Some(nr) => (nr, None),
            None => return,
        }
    };
    // SAFETY: a read of a loader-filled global.
    let rows = unsafe { core::ptr::read_volatile(&SYSCALL_ROWS) };
    // SAFETY: bpf_get_smp_processor_id has no preconditions (the verifier inlines it).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let calls = if nr < SYSCALL_NR_SLOTS && service < rows {
        SYSCALL_CALLS.get_ptr_mut(syscall_calls_index(cpu, rows, service, nr))
    } else {
        None
    };
    match calls {
        // SAFETY: an element of this CPU's rows, written only on this CPU.
        Some(n) => unsafe { *n += 1 },
        None => {
            count(Counter::DropSyscallOutsideTable);
            return;
        }
    }
    let key = SyscallKey { service, nr };
    if (-MAX_ERRNO..0).contains(&ret) {
        record_errno(&key, (-ret) as u32);
    }
    if let Some(packed) = timed {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let elapsed = start::elapsed(unsafe { bpf_ktime_get_ns() }, packed);
        record_latency(&key, elapsed);
    }
}

/// The number of a call whose start this attach did not see — it began before the probes
/// attached, or before its process was selected — from the registers its entry saved. `None`
/// for a new task's return from the fork or clone its parent made (the parent counts that
/// call) and when the registers cannot be read (counted as a loss).
#[inline(always)]
fn exit_without_entry(regs: *const u8, ret: i64) -> Option<u32> {
    // x86_64: clone, fork, vfork, clone3.
    const FORKS: [u64; 4] = [56, 57, 58, 435];
    let at = offset(|o| &o.regs_orig_ax);
    // u32::MAX: a field this kernel lacks.
    let read = if at == u32::MAX {
        Err(())
    } else {
        read_field::<u64>(regs, at)
    };
    let Ok(nr) = read else {
        count(Counter::UnmatchedExit);
        return None;
    };
    if ret == 0 && FORKS.contains(&nr) {
        return None;
    }
    count(Counter::ExitWithoutEntry);
    Some(nr as u32)
}

#[inline(always)]
fn record_latency(key: &SyscallKey, elapsed: u64) {
    let Some(stats) = stats_entry(key) else {
        return;
    };
    // SAFETY: this CPU's value of a per-CPU hash entry; programs do not migrate mid-run.
    unsafe {
        (*stats).timed += 1;
        (*stats).total_ns += elapsed;
        if elapsed > (*stats).max_ns {
            (*stats).max_ns = elapsed;
        }
        let b = hist::bucket(elapsed);
        if b < hist::BUCKETS {
            (*stats).buckets[b] += 1;
        }
    }
}

#[inline(always)]
fn stats_entry(key: &SyscallKey) -> Option<*mut SyscallStats> {
    if let Some(stats) = SYSCALL_STATS.get_ptr_mut(key) {
        return Some(stats);
    }
    let zero = ZERO_STATS.get(0)?;
    // BPF_NOEXIST: another CPU may have created it meanwhile; the lookup below finds either.
    if SYSCALL_STATS.insert(key, zero, 1).is_err() && SYSCALL_STATS.get_ptr_mut(key).is_none() {
        count(Counter::DropSyscallStatsFull);
        return None;
    }
    SYSCALL_STATS.get_ptr_mut(key)
}

#[inline(always)]
fn record_errno(key: &SyscallKey, errno: u32) {
    let key = ErrnoKey {
        service: key.service,
        nr: key.nr,
        errno,
        _pad: 0,
    };
    if let Some(n) = SYSCALL_ERRORS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe { *n += 1 };
        return;
    }
    if SYSCALL_ERRORS.insert(key, 1u64, 1).is_err() {
        // Lost a race with another CPU creating it (then add to ours), or the map is full.
        match SYSCALL_ERRORS.get_ptr_mut(key) {
            // SAFETY: as above.
            Some(n) => unsafe { *n += 1 },
            None => count(Counter::DropErrnoFull),
        }
    }
}

/// Clears a thread's syscall start when it exits: its tid may be reused, and a thread that died
/// inside `exit_group` never reached `sys_exit`.
#[inline(always)]
pub fn forget_thread(tid: u32) {
    if let Some(slot) = SYSCALL_START.get_ptr_mut(tid) {
        // SAFETY: the exiting thread's own element.
        unsafe { *slot = 0 };
    }
}
