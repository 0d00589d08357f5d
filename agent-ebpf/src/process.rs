//! Process lifecycle: keeps [`PID_SERVICE`](crate::selection::PID_SERVICE) true as processes come
//! and go, in the kernel, so a process that starts after the agent is profiled from its first
//! syscall and its exit frees its slot. These tracepoints fire per fork, exec and exit — rare
//! next to syscalls — so a ring buffer event to userspace (for naming) is affordable here.

use agent_ebpf::{COMM_LEN, Counter, NO_SERVICE, ProcEvent, proc_event};
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{map, raw_tracepoint},
    maps::{HashMap, RingBuf},
    programs::RawTracePointContext,
};

use crate::selection::{ON_CPU, agent_tgid, count, offset, read_field, service_of, set_service};

/// comm → service id for rules that must catch processes started later (`--comm NAME`).
#[map(name = "COMM_RULES")]
static COMM_RULES: HashMap<[u8; COMM_LEN], u32> = HashMap::with_max_entries(256, 0);

/// 256 KiB: ~8000 events of 32 bytes, a few seconds of a 10,000-process fork storm even if
/// userspace stalls. Every failed reservation is counted.
#[map(name = "PROC_EVENTS")]
static PROC_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Set by the loader: see `agent_ebpf::globals::REPORT_ALL_EXECS`.
#[unsafe(no_mangle)]
static REPORT_ALL_EXECS: u32 = 0;

#[inline(always)]
pub fn emit(kind: u32, pid: u32, parent_pid: u32, service: u16) {
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    let event = ProcEvent {
        kind,
        pid,
        parent_pid,
        service: service as u32,
        comm,
    };
    if PROC_EVENTS.output::<ProcEvent>(&event, 0).is_err() {
        count(Counter::DropProcEventRingFull);
    }
}

// sched:sched_process_fork — TP_PROTO(struct task_struct *parent, struct task_struct *child)
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    match try_fork(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_fork(ctx: &RawTracePointContext) -> Result<(), ()> {
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let service = service_of(parent_tgid);
    if service == NO_SERVICE {
        return Ok(());
    }
    let child: *const u8 = ctx.arg(1);
    let pid: u32 = read_field(child, offset(|o| &o.task_pid))?;
    let tgid: u32 = read_field(child, offset(|o| &o.task_tgid))?;
    if pid != tgid {
        // A new thread of an already selected process.
        return Ok(());
    }
    set_service(tgid, service);
    count(Counter::ForkInherited);
    emit(proc_event::FORK, tgid, parent_tgid, service);
    Ok(())
}

// sched:sched_process_exec — TP_PROTO(struct task_struct *p, pid_t old_pid,
//                                     struct linux_binprm *bprm); runs as the new program.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn sched_process_exec(_ctx: RawTracePointContext) -> i32 {
    match try_exec() {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_exec() -> Result<(), ()> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // A thread other than the leader that execs takes the leader's pid (de_thread): same
    // task, new tid, no switch. ON_CPU follows.
    if let Some(c) = ON_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's element; this task runs on it.
        unsafe {
            if (*c).tgid == tgid {
                (*c).tid = id as u32;
            }
        }
    }
    if tgid == agent_tgid() {
        return Ok(());
    }
    let comm = bpf_get_current_comm().map_err(|_| ())?;
    let mut service = service_of(tgid);
    // SAFETY: a hash lookup of a plain value; COMM_RULES entries are never removed while
    // programs run.
    if let Some(rule) = unsafe { COMM_RULES.get(comm) } {
        service = *rule as u16;
        set_service(tgid, service);
        count(Counter::ExecMatched);
    }
    if service != NO_SERVICE {
        crate::sched::thread_running(id as u32, service);
    }
    // SAFETY: reading a loader-filled global.
    if service != NO_SERVICE || unsafe { core::ptr::read_volatile(&REPORT_ALL_EXECS) } != 0 {
        emit(proc_event::EXEC, tgid, 0, service);
    }
    Ok(())
}

// sched:sched_process_exit — TP_PROTO(struct task_struct *p[, bool group_dead]); runs as the
// exiting thread, once per thread.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    match try_exit(ctx.arg(0)) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_exit(task: *const u8) -> Result<(), ()> {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    let service = service_of(tgid);
    if service == NO_SERVICE {
        return Ok(());
    }
    crate::syscalls::forget_thread(tid);
    crate::sched::thread_exiting(tid, task);
    // The leader's exit ends the process for us. A leader that exits before its other threads
    // (rare: pthread_exit from main) unselects them early; `group_dead` would tell, but it is
    // absent before Linux 6.16 and reading it would fail to attach there.
    if tid == tgid {
        set_service(tgid, NO_SERVICE);
        emit(proc_event::EXIT, tgid, 0, service);
    }
    Ok(())
}
