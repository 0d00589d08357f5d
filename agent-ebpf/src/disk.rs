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
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::selection::{count, offset, read_field, service_of};

const NO_PREALLOC: u32 = 1;
/// `REQ_OP_MASK`: the low 8 bits of `cmd_flags` are the operation.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

/// Slots in `BIO_OWNER` and `RQ_START`, a power of two.
const SLOTS: u32 = 16384;

/// Queued bios of selected services, direct-mapped by address: a bio's slot is written in
/// place (a few stores, no hash insert — an LRU hash insert cost ~1 µs here) and taken back
/// when the bio reaches a device as a request's first bio. A bio merged into a request never
/// comes back; a later bio with the same slot overwrites it.
#[map(name = "BIO_OWNER")]
static BIO_OWNER: Array<BioOwner> = Array::with_max_entries(SLOTS, 0);

/// Issued requests of selected services, direct-mapped by address until they complete. A
/// request whose slot another takes before it completes is counted
/// (`Counter::DropBlockTrackFull`); with at most a device queue's depth in flight in 16384
/// slots, that is rare.
#[map(name = "RQ_START")]
static RQ_START: Array<RqStart> = Array::with_max_entries(SLOTS, 0);

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

/// The slot of a kernel object: a multiplicative hash of its address (slab objects share their
/// low bits).
#[inline(always)]
fn slot_of(addr: u64) -> u32 {
    let folded = ((addr >> 4) ^ (addr >> 32)) as u32;
    folded.wrapping_mul(0x9E37_79B1) >> (32 - SLOTS.trailing_zeros())
}

// The slots are shared between CPUs, and another CPU may write a slot while this one reads it
// (two objects whose addresses share a slot). So a slot value starts with a tag, the address
// of the object it holds (0: empty): a writer clears the tag, writes the value, then sets the
// tag; a reader reads the tag, the value, and the tag again, and keeps the value only if both
// reads name its object. x86_64 (the only architecture crmprof builds for) keeps stores and
// loads in program order, which is all this needs; volatile keeps the compiler from reordering
// them.
const _: () =
    assert!(core::mem::offset_of!(BioOwner, bio) == 0 && core::mem::offset_of!(RqStart, rq) == 0);

/// Puts `value` (its tag field left 0) into `slot` for `object`, by the tag protocol. Returns
/// the tag it replaced.
///
/// # Safety
/// `slot` is a live array element of a `T` that starts with its `u64` tag.
#[inline(always)]
unsafe fn put_tagged<T: Copy>(slot: *mut T, object: u64, value: T) -> u64 {
    let tag = slot.cast::<u64>();
    // SAFETY: the caller's contract.
    unsafe {
        let held = core::ptr::read_volatile(tag);
        core::ptr::write_volatile(tag, 0);
        core::ptr::write_volatile(slot, value);
        core::ptr::write_volatile(tag, object);
        held
    }
}

/// Takes the value out of `slot` if it holds `object`, by the tag protocol.
///
/// # Safety
/// As [`put_tagged`].
#[inline(always)]
unsafe fn take_tagged<T: Copy>(slot: *mut T, object: u64) -> Option<T> {
    let tag = slot.cast::<u64>();
    // SAFETY: the caller's contract.
    unsafe {
        if core::ptr::read_volatile(tag) != object {
            return None;
        }
        let value = core::ptr::read_volatile(slot);
        if core::ptr::read_volatile(tag) != object {
            return None;
        }
        core::ptr::write_volatile(tag, 0);
        Some(value)
    }
}

// block:block_bio_queue — TP_PROTO(struct bio *bio)
#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn block_bio_queue(ctx: RawTracePointContext) -> i32 {
    let service = current_service();
    if service == u32::from(NO_SERVICE) {
        return 0;
    }
    let bio: u64 = ctx.arg(0);
    if let Some(slot) = BIO_OWNER.get_ptr_mut(slot_of(bio)) {
        let owner = BioOwner {
            bio: 0,
            service,
            _pad: 0,
            queued_ns: now_ns(),
        };
        // SAFETY: a live element of BIO_OWNER, whose values start with their tag.
        unsafe { put_tagged(slot, bio, owner) };
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
    let bio: u64 = read_field(rq, offset(|o| &o.rq_bio))?;
    let owner = BIO_OWNER
        .get_ptr_mut(slot_of(bio))
        // SAFETY: a live element of BIO_OWNER, whose values start with their tag.
        .and_then(|slot| unsafe { take_tagged(slot, bio) });
    let (service, queued_ns) =
        owner.map_or_else(|| (current_service(), 0), |o| (o.service, o.queued_ns));
    if service == u32::from(NO_SERVICE) {
        return Ok(());
    }
    let flags: u32 = read_field(rq, offset(|o| &o.rq_cmd_flags))?;
    let part: *const u8 = read_field(rq, offset(|o| &o.rq_part))?;
    let dev: u32 = read_field(part, offset(|o| &o.bdev_dev))?;
    let op = match flags & REQ_OP_MASK {
        REQ_OP_READ => 0,
        REQ_OP_WRITE => 1,
        _ => 2,
    };
    let slot = RQ_START.get_ptr_mut(slot_of(rq as u64)).ok_or(())?;
    let start = RqStart {
        rq: 0,
        service,
        dev,
        queued_ns,
        issued_ns: now_ns(),
        op,
        _pad: 0,
    };
    // SAFETY: a live element of RQ_START, whose values start with their tag.
    let held = unsafe { put_tagged(slot, rq as u64, start) };
    if held != 0 && held != rq as u64 {
        // Another request still in flight (or one whose completion was never traced).
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
    let slot = RQ_START.get_ptr_mut(slot_of(rq)).ok_or(())?;
    // SAFETY: a live element of RQ_START, whose values start with their tag.
    let Some(start) = (unsafe { take_tagged(slot, rq) }) else {
        return Ok(());
    };
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
