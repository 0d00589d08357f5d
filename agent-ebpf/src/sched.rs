//! Scheduler time per selected thread: on CPU, waiting on the run queue, and off CPU by reason —
//! Brendan Gregg's thread-state analysis, in the kernel.
//!
//! sched_switch fires on every context switch of the host, so it exits early: the outgoing task
//! is the one `ON_CPU` names (no helper call), the incoming one costs one field read (its pid
//! and tgid) and an inlined selection lookup; when neither is selected that is all — no clock
//! read, no hash lookup. It also keeps `ON_CPU` for the syscall probes: who runs on this CPU,
//! and the syscall it is in.

use agent_ebpf::{
    Counter, NO_SERVICE, OnCpu, PeerKey, SchedStats, ThreadState, hist, offcpu, start,
    syscall_class, thread_slot,
};
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_task_pt_regs},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::{
    selection::{
        MMAPABLE, ON_CPU, count, load, offset, on_cpu_kept, read_field, refresh_service,
        selection_generation, service_of, syscall_phase,
    },
    syscalls::SYSCALL_START,
};

/// `TASK_UNINTERRUPTIBLE`: a D-state sleep (block I/O, page faults, kernel mutexes).
const TASK_UNINTERRUPTIBLE: u64 = 0x2;
/// `TASK_DEAD`: the task's final switch-out.
const TASK_DEAD: u64 = 0x80;
/// `PF_EXITING` in `task_struct.flags`: set as the task starts to exit.
const PF_EXITING: u32 = 0x4;

/// Per selected thread, its state, in the slot its tid selects: no hash, no lock — a thread's
/// events find it with an index. Sized at load (`agent_ebpf::MAX_THREAD_SLOTS` at most).
#[map(name = "THREAD_SLOTS")]
pub static THREAD_SLOTS: Array<ThreadState> = Array::with_max_entries(1, MMAPABLE);

/// The slots' count minus one, set by the loader.
#[unsafe(no_mangle)]
static THREAD_SLOT_MASK: u32 = 0;

/// Threads whose slot another thread holds (only where `kernel.pid_max` exceeds the slots):
/// 16384, resizable at load (`max_threads`). A full map is counted, never silent.
#[map(name = "THREADS")]
pub static THREADS: HashMap<u32, ThreadState> = HashMap::with_max_entries(16384, 0);

#[inline(always)]
fn slot_of(tid: u32) -> Option<*mut ThreadState> {
    // SAFETY: a read of a loader-filled global.
    let mask = unsafe { core::ptr::read_volatile(&THREAD_SLOT_MASK) };
    THREAD_SLOTS.get_ptr_mut(thread_slot(tid, mask))
}

/// The state of a tracked thread: in its slot, or else in `THREADS`.
#[inline(always)]
pub fn thread(tid: u32) -> Option<*mut ThreadState> {
    if let Some(t) = slot_of(tid) {
        // SAFETY: a live THREAD_SLOTS element.
        let (owner, service) = unsafe { ((*t).tid, (*t).service) };
        if owner == tid && service != 0 {
            return Some(t);
        }
    }
    THREADS.get_ptr_mut(tid)
}

/// Per service id, sized max_services + 1 at load: an inlined lookup on every switch.
#[map(name = "SCHED_STATS")]
static SCHED_STATS: PerCpuArray<SchedStats> = PerCpuArray::with_max_entries(1, 0);

/// Syscall number → `syscall_class`, filled by the agent from syscall names at load.
#[map(name = "SYSCALL_CLASS")]
static SYSCALL_CLASS: Array<u32> = Array::with_max_entries(512, 0);

/// `[0]`: when the current window started (monotonic ns), written by the agent.
#[map(name = "WINDOW")]
static WINDOW: Array<u64> = Array::with_max_entries(1, 0);

/// A futex wait longer than this is a thread parked waiting for work (an idle pool thread, a
/// join), not lock contention: set by the loader (`agent_ebpf::globals::LOCK_IDLE_NS`).
#[unsafe(no_mangle)]
static LOCK_IDLE_NS: u64 = 500_000_000;

/// The reason an off-CPU interval ends up counted as: long futex waits are idle.
#[inline(always)]
pub fn settle_reason(reason: usize, waited_ns: u64) -> usize {
    // SAFETY: a read of a loader-filled global.
    let idle_after = unsafe { core::ptr::read_volatile(&LOCK_IDLE_NS) };
    if reason == offcpu::LOCK && waited_ns > idle_after {
        offcpu::IDLE
    } else {
        reason
    }
}

#[inline(always)]
fn window_start() -> u64 {
    WINDOW.get(0).copied().unwrap_or(0)
}

/// Time since `since`, but only the part inside the current window (which started at
/// `window`, read once a run: [`window_start`]): the agent has already accounted the part
/// before it.
#[inline(always)]
fn in_window(now: u64, since: u64, window: u64) -> u64 {
    now.saturating_sub(since.max(window))
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// How long a CPU's run-queue clock stands in for the monotonic clock after `sched_switch` read
/// both: the two drift apart by at most the kernel's frequency correction (≤ 500 ppm), so by at
/// most 0.5 µs in that time.
const CLOCK_ANCHOR_NS: u64 = 1_000_000;

/// Now, as the monotonic clock (`bpf_ktime_get_ns`) reads it, at a switch on this CPU: from
/// the run-queue clock, which `__schedule` updated just before the tracepoint, re-anchored to
/// the monotonic clock once a millisecond. A clock read through the helper costs ~90 ns under
/// TPC-B here (the BPF statistics of a program with and without it); three plain loads
/// through the incoming task (BTF-typed: `TYPED`) cost a few. `task`'s `se.cfs_rq->rq` is this
/// CPU's run queue: it is the task `__schedule` picked from it. Where the kernel lacks the
/// fields, or the task is untyped, the helper.
#[inline(always)]
fn switch_now<const TYPED: bool>(c: *mut OnCpu, task: *const u8) -> u64 {
    if !TYPED {
        return now_ns();
    }
    let Some(clock) = run_queue_clock::<TYPED>(task) else {
        return now_ns();
    };
    // SAFETY: this CPU's element.
    let (anchor, offset) = unsafe { ((*c).clock_anchor, (*c).clock_offset) };
    if anchor != 0 && clock >= anchor && clock - anchor < CLOCK_ANCHOR_NS {
        return clock.wrapping_add(offset);
    }
    let now = now_ns();
    if clock != 0 {
        // SAFETY: as above.
        unsafe {
            (*c).clock_anchor = clock;
            (*c).clock_offset = now.wrapping_sub(clock);
        }
    }
    now
}

#[inline(always)]
fn stats_of(service: u32) -> Option<*mut SchedStats> {
    let stats = SCHED_STATS.get_ptr_mut(service);
    if stats.is_none() {
        count(Counter::DropSchedStatsFull);
    }
    stats
}

/// The state of a selected thread, created on first sight.
#[inline(always)]
pub fn thread_of(tid: u32, service: u32) -> Option<*mut ThreadState> {
    if let Some(t) = thread(tid) {
        return Some(t);
    }
    let fresh = ThreadState {
        service,
        tid,
        ..ThreadState::default()
    };
    // Its slot, if free. (Two threads sharing a slot, first seen at the same instant on two
    // CPUs, could both take it; the one that lost would start afresh in THREADS at its next
    // switch. Only where pid_max exceeds the slots, and tids that far apart.)
    if let Some(t) = slot_of(tid)
        // SAFETY: a live THREAD_SLOTS element.
        && unsafe { (*t).service } == 0
    {
        // SAFETY: as above; a free slot is no thread's.
        unsafe { *t = fresh };
        return Some(t);
    }
    if THREADS.insert(tid, fresh, 1).is_err() && THREADS.get_ptr_mut(tid).is_none() {
        count(Counter::DropThreadsFull);
        return None;
    }
    THREADS.get_ptr_mut(tid)
}

/// Why a thread that is switching out voluntarily blocks: the syscall it is in, and whether the
/// sleep is uninterruptible (D state: block I/O, page faults) or interruptible (sockets, pipes,
/// futexes, timers). `call`: the call in flight the syscall probes recorded, if any. `TYPED`:
/// the BTF-typed `sched_switch`, which may read the syscall from the thread's saved registers.
#[inline(always)]
fn reason<const TYPED: bool>(call: u64, state: u64, t: *const ThreadState, task: *const u8) -> u32 {
    let d_state = state & TASK_UNINTERRUPTIBLE != 0;
    // A recorded call is current only while the syscall probes are attached, and only if it
    // began in this attach (the probes may be cycled: `syscall_duty_cycle`).
    let nr = if call != 0 && on_cpu_kept() && start::phase(call) == syscall_phase() {
        Some(start::nr(call))
    } else if TYPED {
        // Not seen by the syscall probes: ask the task's saved registers.
        blocked_syscall(task)
    } else {
        None
    };
    let Some(nr) = nr else {
        // Not in a syscall: a D-state sleep is a page fault or reclaim.
        return if d_state {
            offcpu::MEMORY
        } else {
            offcpu::OTHER
        } as u32;
    };
    let class = SYSCALL_CLASS
        .get(nr)
        .copied()
        .unwrap_or(syscall_class::OTHER);
    (match class {
        syscall_class::LOCK => offcpu::LOCK,
        syscall_class::SLEEP => offcpu::SLEEP,
        // An event loop waiting right after it sent a request to an outbound peer is waiting
        // for that peer's response, not for new work.
        syscall_class::WAIT_FOR_WORK if awaiting_response(t) => offcpu::NETWORK,
        syscall_class::WAIT_FOR_WORK => offcpu::IDLE,
        syscall_class::NET => offcpu::NETWORK,
        syscall_class::NET_SEND => offcpu::NETWORK_SEND,
        syscall_class::IO | syscall_class::IO_WRITE if d_state => offcpu::DISK,
        syscall_class::IO => offcpu::NETWORK,
        syscall_class::IO_WRITE => offcpu::NETWORK_SEND,
        _ if d_state => offcpu::DISK,
        _ => offcpu::OTHER,
    }) as u32
}

/// The syscall `task` — the outgoing task, BTF-typed — is blocking in, from the registers its
/// syscall entry saved: `orig_ax` is the number, and `ax` still holds the -ENOSYS the entry put
/// there until the call returns. A page fault also saves registers, but `ax` is then the task's
/// own. One helper call and two plain loads (the registers are BTF-typed), once per blocking
/// switch of a selected thread whose call the syscall probes did not see. Only the typed
/// `sched_switch` asks: `bpf_task_pt_regs` (5.15) is newer than typed tracepoints (5.5), so a
/// kernel that refuses those has no use for a raw variant of this.
#[inline(always)]
fn blocked_syscall(task: *const u8) -> Option<u32> {
    const ENOSYS: u64 = 38;
    let (ax_at, nr_at) = (offset(|o| &o.regs_ax), offset(|o| &o.regs_orig_ax));
    // u32::MAX: a field this kernel lacks.
    if ax_at == u32::MAX || nr_at == u32::MAX {
        return None;
    }
    // SAFETY: `task` is the tracepoint's BTF-typed (trusted) `task_struct`, as the helper
    // requires.
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as *const u8;
    if regs.is_null() {
        return None;
    }
    // SAFETY: `regs` is the BTF-typed `pt_regs` the helper returned; both are `unsigned long`
    // members.
    let (ax, nr) = unsafe { (load::<u64>(regs, ax_at), load::<u64>(regs, nr_at)) };
    (ax == ENOSYS.wrapping_neg() && nr < 512).then_some(nr as u32)
}

/// A task's pid and tgid. `TYPED`: `task` is BTF-typed (a tp_btf argument), so two plain loads;
/// else one probe read of both (adjacent in `task_struct`: the loader checks).
#[inline(always)]
fn task_ids<const TYPED: bool>(task: *const u8) -> Result<[u32; 2], ()> {
    if TYPED {
        // SAFETY: `task` is a BTF-typed `task_struct`; `pid` and `tgid` are `pid_t` members.
        Ok(unsafe {
            [
                load::<u32>(task, offset(|o| &o.task_pid)),
                load::<u32>(task, offset(|o| &o.task_tgid)),
            ]
        })
    } else {
        read_field::<[u32; 2]>(task, offset(|o| &o.task_pid))
    }
}

/// Whether the thread's last socket operation was a send to an outbound peer (a remote port
/// it connected to, not a client's ephemeral port).
#[inline(always)]
fn awaiting_response(t: *const ThreadState) -> bool {
    // SAFETY: `t` points at this thread's live THREADS value.
    let (sent, family, port) = unsafe { ((*t).last_sent, (*t).peer.family, (*t).peer.port) };
    sent != 0 && family != 0 && port != 0
}

/// Ends an off-CPU interval: its time goes to its reason (and, for network waits, to the peer
/// the thread last talked to). `s`: this CPU's stats of the thread's service.
#[inline(always)]
fn end_offcpu(t: *mut ThreadState, s: Option<*mut SchedStats>, now: u64, window: u64) {
    // SAFETY: `t` points at a live THREADS value; only this thread's events touch it.
    let (since, r, peer) = unsafe { ((*t).offcpu_since, (*t).reason as usize, (*t).peer) };
    if since == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { (*t).offcpu_since = 0 };
    let took = in_window(now, since, window);
    let r = settle_reason(r, now.saturating_sub(since));
    if let Some(s) = s
        && r < offcpu::COUNT
    {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            (*s).offcpu_ns[r] += took;
            (*s).offcpu_count[r] += 1;
        }
    }
    if (r == offcpu::NETWORK || r == offcpu::NETWORK_SEND) && peer.family != 0 {
        crate::net::add_peer_wait(&peer, took);
    }
}

/// [`end_offcpu`] where no switch read the thread's stats and the window's start: a wakeup, or
/// a thread found on CPU.
#[inline(always)]
fn end_offcpu_outside_switch(t: *mut ThreadState, now: u64) {
    // SAFETY: `t` points at this thread's live THREADS value.
    let service = unsafe { (*t).service };
    end_offcpu(t, stats_of(service), now, window_start());
}

// sched:sched_switch — TP_PROTO(bool preempt, struct task_struct *prev,
//                               struct task_struct *next, unsigned int prev_state)
//
// BTF-typed (tp_btf): `prev`, `next` and the saved registers are pointers the verifier knows
// the types of, so their fields are plain loads instead of `bpf_probe_read_kernel` calls.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let args = SwitchArgs {
        preempt: ctx.arg(0),
        prev: ctx.arg(1),
        next: ctx.arg(2),
        state: ctx.arg(3),
    };
    match try_switch::<true>(&args) {
        Ok(()) | Err(()) => 0,
    }
}

/// `sched_switch` for kernels that refuse it (no `bpf_task_pt_regs` before 5.15, or no
/// BTF-typed tracepoints): a raw tracepoint reading through the helper, and without the
/// syscall probes a blocking thread's wait reason is only D state or not.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_plain(ctx: RawTracePointContext) -> i32 {
    let args = SwitchArgs {
        preempt: ctx.arg(0),
        prev: ctx.arg(1),
        next: ctx.arg(2),
        state: ctx.arg(3),
    };
    match try_switch::<false>(&args) {
        Ok(()) | Err(()) => 0,
    }
}

/// When a switch happens, and when the current window started: read once a run.
#[derive(Clone, Copy)]
struct Switch {
    now: u64,
    window: u64,
}

struct SwitchArgs {
    preempt: u64,
    prev: *const u8,
    next: *const u8,
    state: u64,
}

/// `TYPED`: the task pointers are BTF-typed, and a blocking thread's syscall may be read from its
/// saved registers.
#[inline(always)]
fn try_switch<const TYPED: bool>(args: &SwitchArgs) -> Result<(), ()> {
    let prev = args.prev;
    let c = ON_CPU.get_ptr_mut(0).ok_or(())?;
    // The outgoing task is this CPU's ON_CPU task when the last traced switch here put it on
    // (a pointer compare, no helper call). Otherwise ask prev who it is.
    // SAFETY: this CPU's element; programs run with migration disabled.
    if unsafe { (*c).task } != prev as u64 {
        let Ok([tid, tgid]) = task_ids::<TYPED>(prev) else {
            forget_on_cpu(c);
            return Err(());
        };
        // SAFETY: as above.
        if unsafe { (*c).tid != tid || (*c).tgid != tgid } {
            adopt(c, tid, tgid);
        }
    }
    // Read once a run, here: the selection's generation (before any selection read) and the
    // window's start.
    let generation = refresh_service(c);
    let window = window_start();
    // SAFETY: as above. The peer it used while on CPU, if any, is read before the incoming
    // task replaces it.
    let (tid, service, peer) = unsafe {
        (
            (*c).tid,
            (*c).service,
            ((*c).peer_set != 0).then(|| ((*c).peer, (*c).peer_sent)),
        )
    };
    let state = args.state;
    let call = park_call(c, tid, state);
    let next = args.next;
    let Ok([next_tid, next_tgid]) = task_ids::<TYPED>(next) else {
        forget_on_cpu(c);
        return Err(());
    };
    crate::net::flush_pending(c, next_tid == 0, window);
    let next_service = restore_call(c, next_tid, next_tgid, next as u64, generation);
    if state & TASK_DEAD != 0 && service == u32::from(NO_SERVICE) && tid != 0 {
        // A thread's final switch after its process left its service: its leader exited
        // first, and a switch of this thread after its own exit tracepoint (which forgot it)
        // tracked it again. Forgotten with the thread, not left with an interval that never
        // closes. (One hash delete per exiting thread of the host.)
        forget_thread(tid);
    }
    if service == u32::from(NO_SERVICE) && next_service == NO_SERVICE {
        // Neither side is selected: the common case on a busy host, and no clock read.
        return Ok(());
    }
    let at = Switch {
        now: switch_now::<TYPED>(c, next),
        window,
    };
    if service != u32::from(NO_SERVICE) && tid != 0 {
        let preempt = args.preempt & 0xff != 0;
        switch_out::<TYPED>(prev, tid, service, peer, preempt, state, call, at);
    }
    if next_service != NO_SERVICE
        && let Some(t) = thread(next_tid)
    {
        switch_in::<TYPED>(t, next, at);
    }
    Ok(())
}

/// After a failed read of a task: nothing in `ON_CPU` is trusted until a program learns the
/// running task again (its call in flight, if any, was parked or is lost and counted).
#[inline(always)]
fn forget_on_cpu(c: *mut OnCpu) {
    // SAFETY: this CPU's element.
    unsafe {
        (*c).generation = 0;
        (*c).call = 0;
        (*c).task = 0;
        (*c).regs = 0;
        (*c).tid = 0;
        (*c).tgid = 0;
    }
}

/// Makes `ON_CPU` name `tid`, which runs on this CPU although no traced switch put it there
/// (or a failed read left `ON_CPU` unknown). As at a switch, the task `ON_CPU` named parks
/// its call in flight in its own slot and the running one gets its parked call back.
#[inline(always)]
pub fn adopt(c: *mut OnCpu, tid: u32, tgid: u32) {
    // SAFETY: this CPU's element.
    let (old_tid, known) = unsafe { ((*c).tid, (*c).generation != 0) };
    if known {
        count(Counter::UntracedSwitch);
    }
    park_call(c, old_tid, 0);
    let service = restore_call(c, tid, tgid, 0, selection_generation());
    if service != NO_SERVICE
        && tid != 0
        && let Some(t) = thread(tid)
    {
        unseen_switch_in(t, now_ns());
    }
}

/// A selected thread found on CPU with no switch-in seen: on CPU since it became runnable
/// when that is known (its wait in the run queue, if any, counts as on CPU: the switch time
/// is unknown, and the untraced switches seen are prompt), else from now.
#[inline(always)]
fn unseen_switch_in(t: *mut ThreadState, now: u64) {
    end_offcpu_outside_switch(t, now);
    // SAFETY: `t` points at this thread's live THREADS value.
    unsafe {
        if (*t).oncpu_since == 0 {
            let since = core::mem::replace(&mut (*t).runnable_since, 0);
            (*t).oncpu_since = if since != 0 { since } else { now };
        }
    }
}

/// The outgoing task's syscall in flight moves from this CPU's `ON_CPU` to its own slot, where
/// it waits for the task to run again (on any CPU). Returns it, for the off-CPU reason.
#[inline(always)]
fn park_call(c: *mut OnCpu, tid: u32, state: u64) -> u64 {
    // SAFETY: this CPU's element.
    let call = unsafe { core::mem::replace(&mut (*c).call, 0) };
    // A dying task never returns from its call: nothing to park.
    if call != 0
        && state & TASK_DEAD == 0
        && let Some(slot) = SYSCALL_START.get_ptr_mut(tid)
    {
        // SAFETY: the outgoing thread's element; it is not running anywhere now.
        unsafe { *slot = call };
    }
    call
}

/// The incoming task becomes this CPU's `ON_CPU`, with its selection and any call it was in.
/// `task` is its `task_struct` when a traced switch brings it in, else 0. `generation`: the
/// selection's, read before this (a selection change after that read bumps it again). Returns
/// its service.
#[inline(always)]
fn restore_call(c: *mut OnCpu, tid: u32, tgid: u32, task: u64, generation: u64) -> u16 {
    let service = if tid == 0 {
        NO_SERVICE
    } else {
        service_of(tgid)
    };
    // Only a selected task's call is ever parked, and only while the syscall probes run: skip
    // the lookup — a cache miss in an array indexed by tid — for the rest. (A thread
    // deselected with a call parked keeps it until it exits or its process is selected again;
    // one parked as the probes were detached keeps it until they are attached again, when its
    // earlier phase marks it stale, as a call whose start was not seen.)
    let mut call = 0;
    if service != NO_SERVICE
        && on_cpu_kept()
        && let Some(slot) = SYSCALL_START.get_ptr_mut(tid)
    {
        // SAFETY: the incoming thread's element; it is not running anywhere else.
        unsafe {
            call = *slot;
            if call != 0 {
                *slot = 0;
            }
        }
    }
    // SAFETY: this CPU's element.
    unsafe {
        (*c).tid = tid;
        (*c).tgid = tgid;
        (*c).service = u32::from(service);
        (*c).generation = generation;
        (*c).call = call;
        (*c).peer_set = 0;
        // Volatile: with `task` 0 (`adopt`), the two stores would merge into a `memset` call.
        core::ptr::write_volatile(&mut (*c).task, task);
        core::ptr::write_volatile(&mut (*c).regs, 0);
    }
    service
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn switch_out<const TYPED: bool>(
    task: *const u8,
    tid: u32,
    service: u32,
    peer: Option<(PeerKey, u32)>,
    preempt: bool,
    state: u64,
    call: u64,
    Switch { now, window }: Switch,
) {
    let Some(t) = thread_of(tid, service) else {
        return;
    };
    if let Some((peer, sent)) = peer {
        // SAFETY: `t` is this thread's THREADS value.
        unsafe {
            (*t).peer = peer;
            (*t).last_sent = sent;
        }
    } else if !crate::net::receives_seen() {
        // No socket call seen in this time slice, and receives are not being seen: a reply
        // the thread may have read since its last send would go unnoticed, so a send counts
        // as awaiting a response only in the slice it was made in.
        // SAFETY: as above.
        unsafe { (*t).last_sent = 0 };
    }
    let Some(s) = stats_of(service) else {
        return;
    };
    // SAFETY: `t` is this thread's THREADS value, `s` this CPU's stats value.
    unsafe {
        (*t).service = service;
        if (*t).oncpu_since != 0 {
            (*s).on_cpu_ns += in_window(now, (*t).oncpu_since, window);
            (*t).oncpu_since = 0;
        }
        add_task_counters::<TYPED>(task, t, s, false, window);
        if state & TASK_DEAD != 0 {
            forget_thread(tid);
        } else if preempt || state == 0 {
            // Still runnable: the wait for a CPU starts now.
            (*s).involuntary_switches += 1;
            (*t).runnable_since = now;
        } else {
            (*s).voluntary_switches += 1;
            // It ran, so it waits on no run queue: nothing left of a wait whose end no traced
            // switch-in saw may outlive the block, where the next switch-in would count it.
            (*t).runnable_since = 0;
            (*t).offcpu_since = now;
            (*t).reason = reason::<TYPED>(call, state, t, task);
            (*t).run_delay = run_delay::<TYPED>(task);
        }
    }
}

/// `task`: the incoming thread's `task_struct`, BTF-typed when `TYPED`.
#[inline(always)]
fn switch_in<const TYPED: bool>(
    t: *mut ThreadState,
    task: *const u8,
    Switch { now, window }: Switch,
) {
    // SAFETY: `t` points at a live THREADS value.
    let (offcpu_since, runnable_since, service) =
        unsafe { ((*t).offcpu_since, (*t).runnable_since, (*t).service) };
    let s = stats_of(service);
    // Woken from a block: the kernel's own figures say how long it has waited on the run
    // queue, so when it was woken (where it has them, sched_wakeup is not attached).
    if offcpu_since != 0
        && runnable_since == 0
        && let Some(waited) = queued_since_wakeup::<TYPED>(t, task)
    {
        let woken = now - waited.min(now.saturating_sub(offcpu_since));
        end_offcpu(t, s, woken, window);
        // SAFETY: as above.
        unsafe { (*t).runnable_since = woken };
    }
    // A wakeup not seen either way still ends the off-CPU interval here.
    end_offcpu(t, s, now, window);
    // SAFETY: as above.
    let runnable_since = unsafe { (*t).runnable_since };
    if runnable_since != 0
        && let Some(s) = s
    {
        let latency = now.saturating_sub(runnable_since);
        let b = hist::bucket(latency);
        // SAFETY: this CPU's stats value; `b` is bounded by `hist::bucket`.
        unsafe {
            (*s).runqueue_ns += in_window(now, runnable_since, window);
            if b < hist::BUCKETS {
                (*s).runqueue_buckets[b] += 1;
            }
        }
    }
    // SAFETY: as above.
    unsafe {
        (*t).runnable_since = 0;
        (*t).oncpu_since = now;
    }
}

/// Adds what the task's own counters gained since they were last read — CPU time by mode and
/// major page faults — to its service. The kernel keeps them for it: three loads at a selected
/// thread's switch-out (probe reads untyped), no program on the page-fault path. A thread
/// read for the first time counts from zero if it started in this window, else from now; so
/// does one seen again after its exit was accounted (`at_exit`: this is that accounting).
/// `window`: when the current window started.
#[inline(always)]
fn add_task_counters<const TYPED: bool>(
    task: *const u8,
    t: *mut ThreadState,
    s: *mut SchedStats,
    at_exit: bool,
    window: u64,
) {
    let (utime_at, maj_flt_at) = (offset(|o| &o.task_utime), offset(|o| &o.task_maj_flt));
    let (started_at, flags_at) = (offset(|o| &o.task_start_time), offset(|o| &o.task_flags));
    if [utime_at, maj_flt_at, started_at, flags_at].contains(&u32::MAX) {
        return;
    }
    let (Some(utime), Some(stime), Some(maj_flt)) = (
        task_field::<u64, TYPED>(task, utime_at),
        task_field::<u64, TYPED>(task, utime_at + 8),
        task_field::<u64, TYPED>(task, maj_flt_at),
    ) else {
        return;
    };
    // SAFETY: `t` is this thread's value, `s` this CPU's stats value.
    unsafe {
        if (*t).counted == 0 {
            (*t).counted = 1;
            let started = task_field::<u64, TYPED>(task, started_at).unwrap_or(0);
            let exiting = !at_exit
                && task_field::<u32, TYPED>(task, flags_at).unwrap_or(PF_EXITING) & PF_EXITING != 0;
            if started < window || exiting {
                (*t).utime = utime;
                (*t).stime = stime;
                (*t).maj_flt = maj_flt;
            }
        }
        (*s).user_ns += utime.saturating_sub((*t).utime);
        (*s).system_ns += stime.saturating_sub((*t).stime);
        (*s).major_faults += maj_flt.saturating_sub((*t).maj_flt);
        (*t).utime = utime;
        (*t).stime = stime;
        (*t).maj_flt = maj_flt;
    }
}

/// The task's `sched_info.run_delay` (0 where the kernel has none).
#[inline(always)]
fn run_delay<const TYPED: bool>(task: *const u8) -> u64 {
    let at = offset(|o| &o.task_run_delay);
    if at == u32::MAX {
        return 0;
    }
    task_field::<u64, TYPED>(task, at).unwrap_or(0)
}

/// A member of a task: a plain load when `task` is BTF-typed, else a probe read (None if it
/// fails, counted). `T` must be the member's type.
#[inline(always)]
fn task_field<T: Copy, const TYPED: bool>(task: *const u8, offset: u32) -> Option<T> {
    if TYPED {
        // SAFETY: a BTF-typed `task_struct`; the caller names a member of type `T`.
        Some(unsafe { load::<T>(task, offset) })
    } else {
        read_field::<T>(task, offset).ok()
    }
}

/// How long a thread being switched in has been runnable since it was woken, from its
/// `sched_info`: the kernel adds each finished wait on a run queue to `run_delay` (a queued
/// task that migrates finishes one) and stamps `last_queued` when the task joins one, in that
/// run queue's clock — read here through the task's own run queue (`se.cfs_rq->rq`), which
/// `__schedule` has just updated. None where the kernel lacks the fields: then `sched_wakeup`
/// marks the wakeup.
#[inline(always)]
fn queued_since_wakeup<const TYPED: bool>(t: *const ThreadState, task: *const u8) -> Option<u64> {
    let (run_delay_at, last_queued_at) = (
        offset(|o| &o.task_run_delay),
        offset(|o| &o.task_last_queued),
    );
    if run_delay_at == u32::MAX || last_queued_at == u32::MAX {
        return None;
    }
    let run_delay = task_field::<u64, TYPED>(task, run_delay_at)?;
    let last_queued = task_field::<u64, TYPED>(task, last_queued_at)?;
    let clock = run_queue_clock::<TYPED>(task)?;
    // SAFETY: `t` points at this thread's live THREADS value.
    let before = unsafe { (*t).run_delay };
    let this_queue = if last_queued != 0 {
        clock.saturating_sub(last_queued)
    } else {
        0
    };
    Some(run_delay.saturating_sub(before) + this_queue)
}

/// The clock of `task`'s run queue (`se.cfs_rq->rq->clock`); None where the kernel lacks the
/// fields or a read fails. Plain loads when `task` is BTF-typed (`TYPED`), else probe reads.
#[inline(always)]
fn run_queue_clock<const TYPED: bool>(task: *const u8) -> Option<u64> {
    let at = [
        offset(|o| &o.task_cfs_rq),
        offset(|o| &o.cfs_rq_rq),
        offset(|o| &o.rq_clock),
    ];
    if at.contains(&u32::MAX) {
        return None;
    }
    let [cfs_rq_at, rq_at, clock_at] = at;
    if TYPED {
        // SAFETY: `task` is a BTF-typed `task_struct`; `se.cfs_rq` and `cfs_rq.rq` are pointer
        // members (the verifier types what they load), `rq.clock` a `u64`. A load through a
        // null pointer faults and reads zero.
        Some(unsafe {
            let cfs_rq = load::<*const u8>(task, cfs_rq_at);
            let rq = load::<*const u8>(cfs_rq, rq_at);
            load::<u64>(rq, clock_at)
        })
    } else {
        let cfs_rq = read_field::<u64>(task, cfs_rq_at).ok()? as *const u8;
        let rq = read_field::<u64>(cfs_rq, rq_at).ok()? as *const u8;
        read_field::<u64>(rq, clock_at).ok()
    }
}

// sched:sched_wakeup and sched:sched_wakeup_new — TP_PROTO(struct task_struct *p)
//
// sched_wakeup is BTF-typed (tp_btf), as sched_switch: the woken task's ids are plain loads.
// Its `_raw` twin is for kernels that refuse it; sched_wakeup_new is rare and stays raw.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    match try_wakeup::<true>(ctx.arg(0)) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    match try_wakeup::<false>(ctx.arg(0)) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: RawTracePointContext) -> i32 {
    match try_wakeup_new(ctx.arg(0)) {
        Ok(()) | Err(()) => 0,
    }
}

/// A new task's first wakeup: if it belongs to a selected process (fork already put a new
/// process in its parent's service), track it from now, so its first time slice counts too.
#[inline(always)]
fn try_wakeup_new(task: *const u8) -> Result<(), ()> {
    let [tid, tgid] = task_ids::<false>(task)?;
    let service = service_of(tgid);
    if service == NO_SERVICE {
        return Ok(());
    }
    thread_of(tid, u32::from(service)).ok_or(())?;
    try_wakeup::<false>(task)
}

/// A selected thread that is running right now (it just exec'd): track it from now, so the
/// time until its first switch-out counts.
#[inline(always)]
pub fn thread_running(tid: u32, service: u16) {
    if let Some(t) = thread_of(tid, u32::from(service)) {
        // SAFETY: this thread's THREADS value; it is on this CPU now.
        unsafe {
            if (*t).oncpu_since == 0 {
                (*t).oncpu_since = now_ns();
            }
        }
    }
}

/// `TYPED`: `task` is BTF-typed.
#[inline(always)]
fn try_wakeup<const TYPED: bool>(task: *const u8) -> Result<(), ()> {
    // pid and tgid; an unselected task costs no map lookup beyond selection.
    let [tid, tgid] = task_ids::<TYPED>(task)?;
    if service_of(tgid) == NO_SERVICE {
        return Ok(());
    }
    let t = thread(tid).ok_or(())?;
    let now = now_ns();
    end_offcpu_outside_switch(t, now);
    // SAFETY: `t` points at a live THREADS value.
    unsafe {
        if (*t).oncpu_since == 0 {
            (*t).runnable_since = now;
        }
    }
    Ok(())
}

/// A selected thread is exiting (sched_process_exit, in its own context, on CPU; `task` is its
/// `task_struct`): account its last time slice and its counters now — its final switch-out
/// comes after its process has left the service — and stop tracking it.
#[inline(always)]
pub fn thread_exiting(tid: u32, task: *const u8) {
    if let Some(t) = thread(tid) {
        // SAFETY: this thread's THREADS value.
        let (service, since) = unsafe { ((*t).service, (*t).oncpu_since) };
        if let Some(s) = stats_of(service) {
            let window = window_start();
            if since != 0 {
                // SAFETY: this CPU's stats value.
                unsafe { (*s).on_cpu_ns += in_window(now_ns(), since, window) };
            }
            add_task_counters::<false>(task, t, s, true, window);
        }
    }
    forget_thread(tid);
}

#[inline(always)]
pub fn forget_thread(tid: u32) {
    if let Some(t) = slot_of(tid)
        // SAFETY: a live THREAD_SLOTS element.
        && unsafe { (*t).tid } == tid
    {
        // SAFETY: as above: the slot is this thread's, and free from now on.
        unsafe { *t = ThreadState::default() };
    } else {
        let _ = THREADS.remove(tid);
    }
}
