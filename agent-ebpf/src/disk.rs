//! Block I/O per service and device.
//!
//! A bio is charged to the service of the task that queued it (block:block_bio_queue runs in
//! the submitter's context for direct I/O, fsync-driven and synchronous writes), and a request
//! to the owner of its first bio — never to the task that happens to issue it. A request is
//! timed from issue to completion (device time) and from queueing to issue (time in
//! the block layer's queues). Write-back by kernel flusher threads, readahead and journal I/O
//! run in kernel threads and cannot be charged to a service this way; they are left out here
//! and show in the host-level device figures. A cgroup I/O throttle holds bios *before* they
//! reach block_bio_queue: that delay is in the service's off-CPU disk time (the submitting
//! thread waits in D state), not in these device figures. A bio split on its way in (larger
//! than one request can carry) hands its owner to the front part, a new bio (block:block_split).

use agent_ebpf::{
    BioOwner, BioWays, Counter, DiskKey, DiskStats, NO_SERVICE, RqStart, RqWays, hist,
};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, raw_tracepoint},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::selection::{MMAPABLE, count, offset, read_field, service_of};

const NO_PREALLOC: u32 = 1;
/// `REQ_OP_MASK`: the low 8 bits of `cmd_flags` are the operation.
const REQ_OP_MASK: u32 = 0xff;
const REQ_OP_READ: u32 = 0;
const REQ_OP_WRITE: u32 = 1;

/// Sets in `BIO_OWNER` and `RQ_START`, a power of two. Each set is two ways in one cache line,
/// so a table is 64 KiB, an eighth of the direct-mapped tables of 16384 slots it replaced, at
/// the same odds of losing a request with a device queue in flight (docs/probes.md § Disk).
const SETS: u32 = 1024;

/// Queued bios of selected services, by address: a bio's way is written in place (a few
/// stores, no hash insert — an LRU hash insert cost ~1 µs here) and taken back when the bio
/// reaches a device as a request's first bio. A bio merged into a request never comes back;
/// being the older of its set's two, its way is the next one taken. Mappable only so that the
/// values start on a page, each set on a line of its own; the agent never maps it.
#[map(name = "BIO_OWNER")]
static BIO_OWNER: Array<BioWays> = Array::with_max_entries(SETS, MMAPABLE);

/// Issued requests of selected services, by address, until they complete. A request displaced
/// before it completes — both ways of its set held requests issued later — is counted
/// (`Counter::DropBlockTrackFull`): with a device queue's depth (128 here) in flight in 1024
/// sets of two, under 1% of requests even then. Mappable as `BIO_OWNER`.
#[map(name = "RQ_START")]
static RQ_START: Array<RqWays> = Array::with_max_entries(SETS, MMAPABLE);

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

/// The set of a kernel object: a multiplicative hash of its address (slab objects share their
/// low bits).
#[inline(always)]
fn set_of(addr: u64) -> u32 {
    let folded = ((addr >> 4) ^ (addr >> 32)) as u32;
    folded.wrapping_mul(0x9E37_79B1) >> (32 - SETS.trailing_zeros())
}

// The sets are shared between CPUs, and another CPU may write a way while this one reads it
// (two objects whose addresses share a set). So a way starts with a tag, the address of the
// object it holds (0: empty): a writer clears the tag, writes the value, then sets the tag; a
// reader reads the tag, the value, and the tag again, and keeps the value only if both reads
// name its object. x86_64 (the only architecture crmprof builds for) keeps stores and loads in
// program order, which is all this needs; volatile keeps the compiler from reordering them.
const _: () =
    assert!(core::mem::offset_of!(BioOwner, bio) == 0 && core::mem::offset_of!(RqStart, rq) == 0);

/// The way of `ways` to put `object` in: the one holding it already, else an empty one, else
/// the one whose object came first by `since` (its queueing or issue time) — a way whose object
/// never came back (a merged bio, a completion not traced) is the older. Two CPUs putting into
/// one set at once may pick the same way: one object is then lost, as in any full set.
///
/// # Safety
/// `ways` is a live array element of two `T`s, each starting with its `u64` tag.
#[inline(always)]
unsafe fn way_for<T: Copy>(
    ways: *mut [T; 2],
    object: u64,
    since: impl Fn(*const T) -> u64,
) -> *mut T {
    let (first, second) = (ways.cast::<T>(), ways.cast::<T>().wrapping_add(1));
    // SAFETY: the caller's contract; racing writers may tear a value, which only makes this
    // choice a worse one.
    unsafe {
        let tags = [
            core::ptr::read_volatile(first.cast::<u64>()),
            core::ptr::read_volatile(second.cast::<u64>()),
        ];
        if tags[0] == object {
            first
        } else if tags[1] == object {
            second
        } else if tags[0] == 0 {
            first
        } else if tags[1] == 0 || since(second) < since(first) {
            second
        } else {
            first
        }
    }
}

/// A copy of `object`'s value in whichever way of `ways` holds it, left there.
///
/// # Safety
/// As [`way_for`].
#[inline(always)]
unsafe fn peek_way<T: Copy>(ways: *mut [T; 2], object: u64) -> Option<T> {
    // SAFETY: the caller's contract.
    unsafe {
        peek_tagged(ways.cast::<T>(), object)
            .or_else(|| peek_tagged(ways.cast::<T>().wrapping_add(1), object))
    }
}

/// Takes `object`'s value out of whichever way of `ways` holds it.
///
/// # Safety
/// As [`way_for`].
#[inline(always)]
unsafe fn take_way<T: Copy>(ways: *mut [T; 2], object: u64) -> Option<T> {
    // SAFETY: the caller's contract.
    unsafe {
        take_tagged(ways.cast::<T>(), object)
            .or_else(|| take_tagged(ways.cast::<T>().wrapping_add(1), object))
    }
}

/// Puts `value` (its tag field left 0) into `slot` for `object`, by the tag protocol. Returns
/// the tag it replaced.
///
/// # Safety
/// `slot` is a live way of a `T` that starts with its `u64` tag.
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

/// A copy of the value in `slot` if it holds `object`, by the tag protocol. Object 0 is no
/// object (a request without a bio: a device flush) and is never held: tag 0 means empty.
///
/// # Safety
/// As [`put_tagged`].
#[inline(always)]
unsafe fn peek_tagged<T: Copy>(slot: *mut T, object: u64) -> Option<T> {
    let tag = slot.cast::<u64>();
    // SAFETY: the caller's contract.
    unsafe {
        if object == 0 || core::ptr::read_volatile(tag) != object {
            return None;
        }
        let value = core::ptr::read_volatile(slot);
        (core::ptr::read_volatile(tag) == object).then_some(value)
    }
}

/// Takes the value out of `slot` if it holds `object`, by the tag protocol.
///
/// # Safety
/// As [`put_tagged`].
#[inline(always)]
unsafe fn take_tagged<T: Copy>(slot: *mut T, object: u64) -> Option<T> {
    // SAFETY: the caller's contract.
    let value = unsafe { peek_tagged(slot, object) }?;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(slot.cast::<u64>(), 0) };
    Some(value)
}

// block:block_bio_queue — TP_PROTO(struct bio *bio)
#[raw_tracepoint(tracepoint = "block_bio_queue")]
pub fn block_bio_queue(ctx: RawTracePointContext) -> i32 {
    let service = current_service();
    if service == u32::from(NO_SERVICE) {
        return 0;
    }
    let owner = BioOwner {
        bio: 0,
        service,
        _pad: 0,
        queued_ns: now_ns(),
    };
    record_owner(ctx.arg(0), owner);
    0
}

/// Records who queued `bio` (and when) in `BIO_OWNER`. `owner`'s tag field is 0: `put_tagged`
/// writes the tag last.
#[inline(always)]
fn record_owner(bio: u64, owner: BioOwner) {
    if let Some(ways) = owner_ways(bio) {
        // SAFETY: `owner_ways`' ways.
        unsafe { put_tagged(way_for(ways, bio, |o| (*o).queued_ns), bio, owner) };
    }
}

/// The two ways of `BIO_OWNER` that may hold `bio`: live, each starting with its tag, as
/// [`way_for`] and the lookups require.
#[inline(always)]
fn owner_ways(bio: u64) -> Option<*mut [BioOwner; 2]> {
    let set = BIO_OWNER.get_ptr_mut(set_of(bio))?;
    // SAFETY: a live element of BIO_OWNER; no reference is made.
    Some(unsafe { &raw mut (*set).ways })
}

// block:block_split — TP_PROTO(struct bio *bio, unsigned int new_sector)
//
// A bio larger than the device takes in one request (more segments, more sectors) is split as
// it reaches the block layer: the front part becomes a new bio, chained to the original
// (`bi_private`), while the rest goes round again as the original, which `block_bio_queue`
// saw. The new bio gets its parent's owner and queueing time, so the request it becomes is
// found at issue like any other — issued from another context (a busy queue is run by whoever
// completes or submits next, or a kernel worker), it would otherwise be charged to that
// context or lost.
#[raw_tracepoint(tracepoint = "block_split")]
pub fn block_split(ctx: RawTracePointContext) -> i32 {
    match try_split(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_split(ctx: &RawTracePointContext) -> Result<(), ()> {
    let split: *const u8 = ctx.arg(0);
    let parent: u64 = read_field(split, offset(|o| &o.bio_private))?;
    // SAFETY: `owner_ways`' ways.
    let owner = unsafe { peek_way(owner_ways(parent).ok_or(())?, parent) }.ok_or(())?;
    record_owner(split as u64, BioOwner { bio: 0, ..owner });
    Ok(())
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
    // Only a request whose first bio a selected task queued: the task issuing it is whoever ran
    // the queue — often another process submitting its own I/O, a completion, or a kernel
    // worker — so it says nothing about whose request it is. A request without one (a device
    // flush, `bio` 0) is no one's.
    // SAFETY: `owner_ways`' ways.
    let owner = unsafe { take_way(owner_ways(bio).ok_or(())?, bio) }.ok_or(())?;
    let (service, queued_ns) = (owner.service, owner.queued_ns);
    let flags: u32 = read_field(rq, offset(|o| &o.rq_cmd_flags))?;
    let part: *const u8 = read_field(rq, offset(|o| &o.rq_part))?;
    let dev: u32 = read_field(part, offset(|o| &o.bdev_dev))?;
    let op = match flags & REQ_OP_MASK {
        REQ_OP_READ => 0,
        REQ_OP_WRITE => 1,
        _ => 2,
    };
    let ways = RQ_START.get_ptr_mut(set_of(rq as u64)).ok_or(())?;
    let start = RqStart {
        rq: 0,
        // Service ids are 16-bit (`NO_SERVICE`'s type).
        service: service as u16,
        op,
        dev,
        queued_ns,
        issued_ns: now_ns(),
    };
    // SAFETY: a live element of RQ_START: two ways, each starting with its tag.
    let held = unsafe {
        let way = way_for(&raw mut (*ways).ways, rq as u64, |s| (*s).issued_ns);
        put_tagged(way, rq as u64, start)
    };
    if held == rq as u64 {
        // This request's earlier issue never came back: its completion went unseen.
        count(Counter::BlockCompletionUnseen);
    } else if held != 0 {
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
    let ways = RQ_START.get_ptr_mut(set_of(rq)).ok_or(())?;
    // SAFETY: a live element of RQ_START: two ways, each starting with its tag.
    let Some(start) = (unsafe { take_way(&raw mut (*ways).ways, rq) }) else {
        return Ok(());
    };
    let bytes = ctx.arg::<u64>(2) & 0xffff_ffff;
    let now = now_ns();
    let key = DiskKey {
        service: u32::from(start.service),
        dev: start.dev,
    };
    let stats = disk_stats(&key).ok_or(())?;
    let b = hist::bucket(now.saturating_sub(start.queued_ns));
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
        (*stats).queue_ns += start.issued_ns.saturating_sub(start.queued_ns);
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
