//! Block I/O per service and device.
//!
//! A bio is charged to the service of the task that queued it (block:block_bio_queue runs in
//! the submitter's context for direct I/O, fsync-driven and synchronous writes). The request it
//! becomes is timed from issue to completion (device time) and from queueing to issue (time in
//! the block layer's queues). Write-back by kernel flusher threads, readahead and journal I/O
//! run in kernel threads and cannot be charged to a service this way; they are left out here
//! and show in the host-level device figures. A cgroup I/O throttle holds bios *before* they
//! reach block_bio_queue: that delay is in the service's off-CPU disk time (the submitting
//! thread waits in D state), not in these device figures.

use agent_ebpf::{BioOwner, Counter, DiskKey, DiskStats, NO_SERVICE, RqStart, hist};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::selection::{count, offsets, read_field, service_of};

const NO_PREALLOC: u32 = 1;
/// `REQ_OP_MASK`: the low 8 bits of `cmd_flags` are the operation.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

/// LRU: a bio merged into an existing request never shows up as `rq->bio`; eviction reclaims
/// its entry instead of leaking it.
#[map(name = "BIO_OWNER")]
static BIO_OWNER: LruHashMap<u64, BioOwner> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "RQ_START")]
static RQ_START: LruHashMap<u64, RqStart> = LruHashMap::with_max_entries(16384, 0);

#[map(name = "DISK_STATS")]
static DISK_STATS: PerCpuHashMap<DiskKey, DiskStats> =
    PerCpuHashMap::with_max_entries(1024, NO_PREALLOC);

#[map(name = "ZERO_DISK")]
static ZERO_DISK: PerCpuArray<DiskStats> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn current_service() -> u32 {
    u32::from(service_of((bpf_get_current_pid_tgid() >> 32) as u32))
}

// block:block_bio_queue — TP_PROTO(struct bio *bio)
#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn block_bio_queue(ctx: RawTracePointContext) -> i32 {
    let service = current_service();
    if service != u32::from(NO_SERVICE) {
        let bio: u64 = ctx.arg(0);
        let owner = BioOwner {
            service,
            _pad: 0,
            queued_ns: now_ns(),
        };
        if BIO_OWNER.insert(bio, owner, 0).is_err() {
            count(Counter::DropBlockTrackFull);
        }
    }
    0
}

// block:block_rq_issue — TP_PROTO(struct request *rq)
#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn block_rq_issue(ctx: RawTracePointContext) -> i32 {
    match try_issue(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_issue(ctx: &RawTracePointContext) -> Result<(), ()> {
    let rq: *const u8 = ctx.arg(0);
    let o = offsets();
    let bio: u64 = read_field(rq, o.rq_bio)?;
    let (service, queued_ns) = match BIO_OWNER.get_ptr(bio) {
        Some(owner) => {
            // SAFETY: a live LRU value, copied out before removal.
            let owner = unsafe { *owner };
            let _ = BIO_OWNER.remove(bio);
            (owner.service, owner.queued_ns)
        }
        None => (current_service(), 0),
    };
    if service == u32::from(NO_SERVICE) {
        return Ok(());
    }
    let flags: u32 = read_field(rq, o.rq_cmd_flags)?;
    let part: *const u8 = read_field(rq, o.rq_part)?;
    let dev: u32 = read_field(part, o.bdev_dev)?;
    let op = match flags & REQ_OP_MASK {
        REQ_OP_READ => 0,
        REQ_OP_WRITE => 1,
        _ => 2,
    };
    let start = RqStart {
        service,
        dev,
        queued_ns,
        issued_ns: now_ns(),
        op,
        _pad: 0,
    };
    if RQ_START.insert(rq as u64, start, 0).is_err() {
        count(Counter::DropBlockTrackFull);
    }
    Ok(())
}

// block:block_rq_complete — TP_PROTO(struct request *rq, blk_status_t error,
//                                    unsigned int nr_bytes)
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn block_rq_complete(ctx: RawTracePointContext) -> i32 {
    match try_complete(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_complete(ctx: &RawTracePointContext) -> Result<(), ()> {
    let rq: u64 = ctx.arg(0);
    let start = match RQ_START.get_ptr(rq) {
        // SAFETY: a live LRU value, copied out before removal.
        Some(s) => unsafe { *s },
        None => return Ok(()),
    };
    let _ = RQ_START.remove(rq);
    let bytes = ctx.arg::<u64>(2) & 0xffff_ffff;
    let now = now_ns();
    let key = DiskKey {
        service: start.service,
        dev: start.dev,
    };
    let stats = disk_stats(&key).ok_or(())?;
    let from = if start.queued_ns != 0 {
        start.queued_ns
    } else {
        start.issued_ns
    };
    let b = hist::bucket(now.saturating_sub(from));
    // SAFETY: this CPU's value of a per-CPU hash entry; `b` is bounded by `hist::bucket`.
    unsafe {
        match start.op {
            0 => {
                (*stats).reads += 1;
                (*stats).read_bytes += bytes;
            }
            1 => {
                (*stats).writes += 1;
                (*stats).write_bytes += bytes;
            }
            _ => {}
        }
        (*stats).device_ns += now.saturating_sub(start.issued_ns);
        if start.queued_ns != 0 {
            (*stats).queue_ns += start.issued_ns.saturating_sub(start.queued_ns);
        }
        if b < hist::BUCKETS {
            (*stats).buckets[b] += 1;
        }
    }
    Ok(())
}

#[inline(always)]
fn disk_stats(key: &DiskKey) -> Option<*mut DiskStats> {
    if let Some(s) = DISK_STATS.get_ptr_mut(key) {
        return Some(s);
    }
    let zero = ZERO_DISK.get(0)?;
    if DISK_STATS.insert(key, zero, 1).is_err() && DISK_STATS.get_ptr_mut(key).is_none() {
        count(Counter::DropDiskStatsFull);
        return None;
    }
    DISK_STATS.get_ptr_mut(key)
}
