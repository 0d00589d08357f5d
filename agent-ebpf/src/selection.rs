//! Which processes are profiled, and the counters every group shares.
//!
//! Selection happens here, in the kernel: every hot-path program starts with [`service_of`], an
//! array lookup that the verifier inlines into a bounds check and a load, so a process that is
//! not selected costs almost nothing.

use agent_ebpf::{Counter, NO_SERVICE, Offsets};
use aya_ebpf::{
    helpers::bpf_probe_read_kernel,
    macros::map,
    maps::{Array, PerCpuArray},
};

/// Service id per tgid, four `u16`s per element: an array element is at least 8 bytes, so
/// packing keeps the map at 2 bytes per possible pid (64 KiB for the default pid_max of 32768,
/// 8 MiB for 4194304). Resized at load from `kernel.pid_max`; 1 is a placeholder.
#[map(name = "PID_SERVICE")]
pub static PID_SERVICE: Array<[u16; 4]> = Array::with_max_entries(1, 0);

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
    _pad: 0,
};

#[inline(always)]
pub fn offsets() -> Offsets {
    // SAFETY: a read of a loader-filled global; volatile so the zero initialiser is not folded.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

/// Reads a `T` at `base + offset` of a kernel object. Counts a failure.
#[inline(always)]
pub fn read_field<T>(base: *const u8, offset: u32) -> Result<T, ()> {
    // SAFETY: bpf_probe_read_kernel tolerates any address; a fault returns an error.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .map_err(|_| count(Counter::DropTaskReadFailed))
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
    match PID_SERVICE.get(tgid >> 2) {
        Some(group) => group[(tgid & 3) as usize],
        None => NO_SERVICE,
    }
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
    // SAFETY: as above.
    unsafe { (*group)[slot] = service };
    // Occupancy bookkeeping: the agent reports tracked processes from these two counters.
    if old == NO_SERVICE && service != NO_SERVICE {
        count(Counter::ProcessesSelected);
    } else if old != NO_SERVICE && service == NO_SERVICE {
        count(Counter::ProcessesReleased);
    }
}
