//! Syscall latency: a start timestamp per thread at `sys_enter`, an in-kernel histogram per
//! (service, syscall) at `sys_exit`, and errors by errno. Raw tracepoints: the cheapest way in.

use agent_ebpf::{Counter, ErrnoKey, NO_SERVICE, SyscallKey, SyscallStats, hist, start};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::selection::{count, service_of};

/// `BPF_F_NO_PREALLOC`: per-CPU hash values are allocated on first use, so memory follows the
/// (service, syscall) pairs actually seen rather than `max_entries × CPUs × 1.3 KiB`.
const NO_PREALLOC: u32 = 1;

/// Packed syscall start per tid ([`start::pack`]). An array indexed by tid, resized at load from
/// `kernel.pid_max`: the lookup is inlined and the store needs no map update call.
#[map(name = "SYSCALL_START")]
pub static SYSCALL_START: Array<u64> = Array::with_max_entries(1, 0);

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

/// Largest errno the kernel returns (`MAX_ERRNO`); smaller negative returns are not errors
/// (e.g. `lseek` offsets, `mmap` addresses never reach this range).
const MAX_ERRNO: i64 = 4095;

// raw_syscalls:sys_enter — TP_PROTO(struct pt_regs *regs, long id)
#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    match try_sys_enter(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Result<(), ()> {
    let id = bpf_get_current_pid_tgid();
    if service_of((id >> 32) as u32) == NO_SERVICE {
        return Ok(());
    }
    let nr: i64 = ctx.arg(1);
    let slot = SYSCALL_START.get_ptr_mut(id as u32).ok_or(())?;
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the pointer is to this tid's element, which only this thread writes.
    unsafe { *slot = start::pack(now, nr as u64) };
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
    let id = bpf_get_current_pid_tgid();
    let service = service_of((id >> 32) as u32);
    if service == NO_SERVICE {
        return Ok(());
    }
    let slot = SYSCALL_START.get_ptr_mut(id as u32).ok_or(())?;
    // SAFETY: this tid's element; only this thread writes it.
    let packed = unsafe { *slot };
    if packed == 0 {
        // Entered before we attached, or a new thread returning from clone.
        count(Counter::UnmatchedExit);
        return Ok(());
    }
    // SAFETY: as above.
    unsafe { *slot = 0 };
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let (elapsed, nr) = start::unpack(unsafe { bpf_ktime_get_ns() }, packed);
    let ret: i64 = ctx.arg(1);

    let key = SyscallKey {
        service: service as u32,
        nr: nr as u32,
    };
    let stats = stats_entry(&key).ok_or(())?;
    // SAFETY: this CPU's value of a per-CPU hash entry; programs do not migrate mid-run.
    unsafe {
        (*stats).count += 1;
        (*stats).total_ns += elapsed;
        if elapsed > (*stats).max_ns {
            (*stats).max_ns = elapsed;
        }
        let b = hist::bucket(elapsed);
        if b < hist::BUCKETS {
            (*stats).buckets[b] += 1;
        }
    }
    if (-MAX_ERRNO..0).contains(&ret) {
        // SAFETY: as above.
        unsafe { (*stats).errors += 1 };
        record_errno(&key, (-ret) as u32);
    }
    Ok(())
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
