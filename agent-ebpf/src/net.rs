//! Socket throughput, connections and retransmits per service, and bytes and waits per peer.
//!
//! Bytes come from sock:sock_send_length / sock_recv_length, which fire once per
//! `sock_sendmsg`/`sock_recvmsg` with the bytes actually moved — partial sends count what was
//! sent, write()/read() on a socket count too, loopback and other namespaces alike. Data moved
//! by sendfile/splice bypasses them and is not counted (documented in docs/probes.md).

use agent_ebpf::{Counter, NO_SERVICE, NetStats, OnCpu, PeerKey, PeerStats, proc_event};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, RawTracePointContext},
};

use crate::selection::{ON_CPU, count, load, offset, on_cpu, on_cpu_kept, read_field, service_of};

const NO_PREALLOC: u32 = 1;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

// TCP states, include/net/tcp_states.h.
const TCP_ESTABLISHED: u64 = 1;
const TCP_SYN_SENT: u64 = 2;
const TCP_SYN_RECV: u64 = 3;
const TCP_FIN_WAIT1: u64 = 4;
const TCP_CLOSE: u64 = 7;
const TCP_CLOSE_WAIT: u64 = 8;
const TCP_LAST_ACK: u64 = 9;
const TCP_LISTEN: u64 = 10;

/// Per service id, sized max_services + 1 at load: an inlined lookup on every send and receive.
#[map(name = "NET_STATS")]
static NET_STATS: PerCpuArray<NetStats> = PerCpuArray::with_max_entries(1, 0);

/// Sockets this CPU resolved to a peer, direct-mapped by their [`Fingerprint`]
/// ([`PEER_CACHE_SLOTS`] slots): four loads check the cache instead of five reads and a hash
/// lookup. The fingerprint is what the peer is computed from, so a socket freed and reallocated
/// at the same address misses, and two sockets with the same fingerprint share one peer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PeerCache {
    fingerprint: Fingerprint,
    peer: PeerKey,
}

#[map(name = "PEER_CACHE")]
static PEER_CACHE: PerCpuArray<PeerCache> = PerCpuArray::with_max_entries(PEER_CACHE_SLOTS, 0);

/// Enough that the connections one CPU serves in turn seldom share a slot: 50 sockets in 256
/// slots leave ~9 of them sharing one, each missing at every call when an event loop takes
/// them round-robin (Redis's clients: `sock_recv_length` took 114–126 ns a run there, with the
/// statistics); in 1024, ~2 (100–106 ns). 48 KiB per CPU, of which only the slots in use are
/// touched.
const PEER_CACHE_SLOTS: u32 = 1024;
/// log2 of [`PEER_CACHE_SLOTS`]: the slot is the top bits of a 32-bit multiplicative hash.
const PEER_CACHE_BITS: u32 = 10;
const _: () = assert!(PEER_CACHE_SLOTS == 1 << PEER_CACHE_BITS);

/// What tells a socket's peer apart, from the start of its `sock_common`: both IPv4 addresses,
/// the kernel's hash of the connection, both ports and the family. Two connections of the same
/// family differ in their ports or IPv4 addresses or, for IPv6, almost surely in the hash of
/// their addresses.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    addrs: u64,
    hash: u32,
    ports: u32,
    family: u32,
}

impl Fingerprint {
    /// Reads it with plain loads from a BTF-typed socket (tp_btf): one per `sock_common`
    /// member it spans (`skc_addrpair`, `skc_hash`, `skc_portpair`, `skc_family`), the only
    /// loads the verifier accepts there.
    #[inline(always)]
    fn load(sk: *const u8) -> Self {
        let daddr = offset(|o| &o.skc_daddr);
        // SAFETY: `sk` is the tracepoint's BTF-typed socket; the verifier checks each load
        // against the kernel's type, and the JIT makes a faulting one read zero.
        unsafe {
            Self {
                addrs: load::<u64>(sk, daddr),
                hash: load::<u32>(sk, daddr + 8),
                ports: load::<u32>(sk, daddr + 12),
                family: u32::from(load::<u16>(sk, offset(|o| &o.skc_family))),
            }
        }
    }

    /// The same through `bpf_probe_read_kernel`, from an untyped pointer.
    #[inline(always)]
    fn read(sk: *const u8) -> Result<Self, ()> {
        let [addrs, rest]: [u64; 2] = read_field(sk, offset(|o| &o.skc_daddr))?;
        let family: u16 = read_field(sk, offset(|o| &o.skc_family))?;
        Ok(Self {
            addrs,
            hash: rest as u32,
            ports: (rest >> 32) as u32,
            family: u32::from(family),
        })
    }

    /// Its cache slot: a multiplicative hash of the ports, the connection hash and the remote
    /// IPv4 address.
    #[inline(always)]
    fn slot(&self) -> u32 {
        (self.ports ^ self.hash ^ self.addrs as u32).wrapping_mul(0x9E37_79B1)
            >> (32 - PEER_CACHE_BITS)
    }
}

/// 8192 (service, peer) pairs. Inbound connections are keyed by client address with port 0, so
/// ephemeral ports do not multiply entries.
#[map(name = "PEER_STATS")]
static PEER_STATS: PerCpuHashMap<PeerKey, PeerStats> =
    PerCpuHashMap::with_max_entries(8192, NO_PREALLOC);

/// Actively opened sockets of selected services, from SYN_SENT until CLOSE.
#[map(name = "SOCK_OWNER")]
static SOCK_OWNER: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);

/// Listening ports of selected services: recorded at listen(), seeded by the agent at start for
/// servers already listening.
#[map(name = "LISTEN_OWNER")]
static LISTEN_OWNER: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// `[0]`: 1 while `sock_recv_length` is attached (the agent may attach it for part of each
/// window only: `socket_receive_duty_cycle`).
#[map(name = "RECEIVES_SEEN")]
static RECEIVES_SEEN: Array<u32> = Array::with_max_entries(1, 0);

/// Whether a thread's receives are seen now, not only its sends.
#[inline(always)]
pub fn receives_seen() -> bool {
    RECEIVES_SEEN.get(0).is_some_and(|v| *v != 0)
}

/// First port of `net.ipv4.ip_local_port_range`, set by the loader: a remote port at or above
/// it talking to a local port below it is a client's ephemeral port.
#[unsafe(no_mangle)]
static EPHEMERAL_PORT_MIN: u32 = 32768;

/// Set by the loader: 1 to report every listen (the agent applies `port` rules to them).
#[unsafe(no_mangle)]
static REPORT_LISTENS: u32 = 0;

#[inline(always)]
fn net_stats(service: u32) -> Option<*mut NetStats> {
    let stats = NET_STATS.get_ptr_mut(service);
    if stats.is_none() {
        count(Counter::DropNetStatsFull);
    }
    stats
}

#[inline(always)]
fn peer_stats(peer: &PeerKey) -> Option<*mut PeerStats> {
    if let Some(s) = PEER_STATS.get_ptr_mut(peer) {
        return Some(s);
    }
    if PEER_STATS.insert(peer, PeerStats::default(), 1).is_err()
        && PEER_STATS.get_ptr_mut(peer).is_none()
    {
        count(Counter::DropPeersFull);
        return None;
    }
    PEER_STATS.get_ptr_mut(peer)
}

/// The remote end of a socket. IPv4 addresses are stored IPv4-mapped.
#[inline(always)]
fn peer_of(sk: *const u8, service: u32) -> Result<PeerKey, ()> {
    peer_from(&Fingerprint::read(sk)?, sk, service)
}

/// [`peer_of`] from the socket's fingerprint, which holds everything but an IPv6 address (read
/// from `sk` then): a cache miss costs no helper call for IPv4 and Unix sockets.
#[inline(always)]
fn peer_from(fingerprint: &Fingerprint, sk: *const u8, service: u32) -> Result<PeerKey, ()> {
    let family = fingerprint.family as u16;
    let mut peer = PeerKey {
        service,
        port: 0,
        family,
        addr: [0; 16],
    };
    match family {
        AF_INET => {
            // `skc_daddr`, the low half of `skc_addrpair`, in memory (network) order.
            let addr = (fingerprint.addrs as u32).to_le_bytes();
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            peer.addr[12] = addr[0];
            peer.addr[13] = addr[1];
            peer.addr[14] = addr[2];
            peer.addr[15] = addr[3];
        }
        AF_INET6 => peer.addr = read_field(sk, offset(|o| &o.skc_v6_daddr))?,
        AF_UNIX => return Ok(peer),
        _ => return Err(()),
    }
    // `skc_portpair`: `skc_dport` (network order), then `skc_num`.
    let remote = u16::from_be(fingerprint.ports as u16);
    let local = (fingerprint.ports >> 16) as u16;
    // SAFETY: a read of a loader-filled global.
    let ephemeral = unsafe { core::ptr::read_volatile(&EPHEMERAL_PORT_MIN) };
    // Inbound: the local port is one a selected service listens on (known at listen(), or
    // seeded by the agent at start), or failing that, a client's ephemeral port talking to a
    // low one.
    // SAFETY: a plain hash lookup; only presence matters.
    let listening = unsafe { LISTEN_OWNER.get(u32::from(local)) }.is_some();
    let inbound = listening || (u32::from(local) < ephemeral && u32::from(remote) >= ephemeral);
    peer.port = if inbound { 0 } else { remote };
    Ok(peer)
}

#[inline(always)]
fn current_service() -> u32 {
    u32::from(service_of((bpf_get_current_pid_tgid() >> 32) as u32))
}

// sock:sock_send_length / sock:sock_recv_length — TP_PROTO(struct sock *sk, int ret, int flags)
//
// BTF-typed (tp_btf): `sk` is a pointer the verifier knows the type of, so the socket's fields
// are plain loads instead of `bpf_probe_read_kernel` calls — these run on every socket call of
// the host. The `_raw` twins, for kernels that refuse them, read through the helper.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> i32 {
    match try_bytes::<true>(ctx.arg(0), ctx.arg(1), true) {
        Ok(()) | Err(()) => 0,
    }
}

#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> i32 {
    match try_bytes::<true>(ctx.arg(0), ctx.arg(1), false) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length_raw(ctx: RawTracePointContext) -> i32 {
    match try_bytes::<false>(ctx.arg(0), ctx.arg(1), true) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length_raw(ctx: RawTracePointContext) -> i32 {
    match try_bytes::<false>(ctx.arg(0), ctx.arg(1), false) {
        Ok(()) | Err(()) => 0,
    }
}

/// `TYPED`: `sk` is a BTF-typed pointer (tp_btf), whose fields may be loaded directly.
#[inline(always)]
fn try_bytes<const TYPED: bool>(sk: *const u8, ret: u64, send: bool) -> Result<(), ()> {
    // A read that found nothing (EAGAIN at the end of an event loop's read burst) or failed
    // moved no bytes: done before any lookup.
    let ret = ret as i32;
    if ret <= 0 {
        return Ok(());
    }
    let bytes = ret as u64;
    // Process context (sendmsg/recvmsg): the caller is this CPU's running task, which ON_CPU
    // names when it can be vouched for; otherwise ask for the pid.
    let c = running_task();
    let service = match c {
        // SAFETY: this CPU's element; programs run with migration disabled.
        Some(c) => unsafe { (*c).service },
        None => current_service(),
    };
    if service == u32::from(NO_SERVICE) {
        return Ok(());
    }
    let peer = cached_peer::<TYPED>(sk, service);
    let (Some(c), Ok(peer)) = (c, peer) else {
        // Counted per call: no ON_CPU vouches for the sender, or no peer holds the bytes (the
        // service's total still counts them).
        add_service_bytes(service, send, bytes);
        let peer = peer?;
        add_peer_bytes(&peer, send, bytes);
        return Ok(());
    };
    // SAFETY: this CPU's ON_CPU element, as above.
    unsafe {
        // The task's last peer, for its waits (see `OnCpu::peer_set`).
        (*c).peer = peer;
        (*c).peer_set = 1;
        (*c).peer_sent = u32::from(send);
        // This CPU's bytes to one peer add up here and reach PEER_STATS (a hash) and the
        // peer's service's NET_STATS once per change of peer: no stats line of its own touched
        // per call.
        if (*c).pending_peer != peer {
            flush_pending_bytes(c);
            (*c).pending_peer = peer;
        }
        if send {
            (*c).pending_tx += bytes;
        } else {
            (*c).pending_rx += bytes;
        }
    }
    Ok(())
}

/// This CPU's ON_CPU when it names the running task: while the syscall probes run, their entry
/// checked it; otherwise when the task `sched_switch` last switched in here is the current one
/// (one helper call, as asking for the pid would be). `None` when neither holds — no
/// scheduler group, or a switch the tracepoint did not see (docs/probes.md).
#[inline(always)]
fn running_task() -> Option<*mut OnCpu> {
    let c = on_cpu()?;
    if on_cpu_kept() {
        return Some(c);
    }
    // SAFETY: bpf_get_current_task has no preconditions.
    let current = unsafe { bpf_get_current_task() };
    // SAFETY: this CPU's element; `task` is 0 unless a traced switch set it.
    (unsafe { (*c).task } == current && current != 0).then_some(c)
}

#[inline(always)]
fn add_service_bytes(service: u32, send: bool, bytes: u64) {
    if let Some(stats) = net_stats(service) {
        // SAFETY: this CPU's element of a per-CPU array.
        unsafe {
            if send {
                (*stats).tx_bytes += bytes;
            } else {
                (*stats).rx_bytes += bytes;
            }
        }
    }
}

#[inline(always)]
fn add_peer_bytes(peer: &PeerKey, send: bool, bytes: u64) {
    if let Some(p) = peer_stats(peer) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            if send {
                (*p).tx_bytes += bytes;
            } else {
                (*p).rx_bytes += bytes;
            }
        }
    }
}

/// Adds this CPU's pending peer bytes to `PEER_STATS` and to their service's `NET_STATS`.
#[inline(always)]
fn flush_pending_bytes(c: *mut OnCpu) {
    // SAFETY: this CPU's ON_CPU element.
    let (tx, rx) = unsafe { ((*c).pending_tx, (*c).pending_rx) };
    if tx == 0 && rx == 0 {
        return;
    }
    // SAFETY: as above. Volatile, so the two stores stay two stores: merged, they become a call
    // to a byte-at-a-time `memset` subprogram.
    unsafe {
        core::ptr::write_volatile(&mut (*c).pending_tx, 0);
        core::ptr::write_volatile(&mut (*c).pending_rx, 0);
    }
    // SAFETY: as above.
    let peer = unsafe { &(*c).pending_peer };
    if let Some(stats) = net_stats(peer.service) {
        // SAFETY: this CPU's element of a per-CPU array.
        unsafe {
            (*stats).tx_bytes += tx;
            (*stats).rx_bytes += rx;
        }
    }
    if let Some(p) = peer_stats(peer) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe {
            (*p).tx_bytes += tx;
            (*p).rx_bytes += rx;
        }
    }
}

/// Adds this CPU's pending network waits to `PEER_STATS`.
#[inline(always)]
fn flush_pending_wait(c: *mut OnCpu) {
    // SAFETY: this CPU's ON_CPU element.
    let wait = unsafe { core::mem::replace(&mut (*c).pending_wait_ns, 0) };
    if wait == 0 {
        return;
    }
    // SAFETY: as above.
    if let Some(p) = peer_stats(unsafe { &(*c).wait_peer }) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe { (*p).wait_ns += wait };
    }
}

/// Adds everything this CPU holds pending to `PEER_STATS`: from `sched_switch`, when the CPU
/// goes idle or the agent started a window since the last time (`window`), so that the agent,
/// which runs on every CPU still holding figures after it starts one, reads the figures up to
/// its start.
#[inline(always)]
pub fn flush_pending(c: *mut OnCpu, idle: bool, window: u64) {
    // SAFETY: this CPU's ON_CPU element.
    unsafe {
        if !idle && (*c).flushed_window == window {
            return;
        }
        (*c).flushed_window = window;
    }
    flush_pending_bytes(c);
    flush_pending_wait(c);
}

/// [`peer_of`], through this CPU's socket cache. `TYPED`: `sk` is BTF-typed.
#[inline(always)]
fn cached_peer<const TYPED: bool>(sk: *const u8, service: u32) -> Result<PeerKey, ()> {
    let fingerprint = if TYPED {
        Fingerprint::load(sk)
    } else {
        Fingerprint::read(sk)?
    };
    let cache = PEER_CACHE.get_ptr_mut(fingerprint.slot()).ok_or(())?;
    // SAFETY: this CPU's element.
    unsafe {
        if (*cache).fingerprint == fingerprint && (*cache).peer.service == service {
            return Ok((*cache).peer);
        }
    }
    let peer = peer_from(&fingerprint, sk, service)?;
    // SAFETY: as above.
    unsafe {
        (*cache).fingerprint = fingerprint;
        (*cache).peer = peer;
    }
    Ok(peer)
}

/// Adds a thread's network wait to the peer it last talked to: to this CPU's pending wait,
/// which reaches `PEER_STATS` once per change of peer. Called with interrupts off
/// (`sched_switch`, `sched_wakeup`), so nothing else on this CPU touches the pending wait
/// meanwhile.
#[inline(always)]
pub fn add_peer_wait(peer: &PeerKey, ns: u64) {
    let Some(c) = ON_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's ON_CPU element.
    unsafe {
        if (*c).wait_peer != *peer {
            flush_pending_wait(c);
            (*c).wait_peer = *peer;
        }
        (*c).pending_wait_ns += ns;
    }
}

/// The service a socket belongs to, in any context: actively opened sockets are recorded at
/// SYN_SENT, passively opened ones are found by their listening port.
#[inline(always)]
fn owner_of(sk: *const u8) -> Option<u32> {
    // SAFETY: a plain hash lookup; values are copied out.
    if let Some(s) = unsafe { SOCK_OWNER.get(sk as u64) } {
        return Some(*s);
    }
    let local: u16 = read_field(sk, offset(|o| &o.skc_num)).ok()?;
    // SAFETY: as above.
    unsafe { LISTEN_OWNER.get(u32::from(local)) }.copied()
}

// sock:inet_sock_set_state — TP_PROTO(const struct sock *sk, const int oldstate,
//                                     const int newstate)
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    match try_state(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_state(ctx: &RawTracePointContext) -> Result<(), ()> {
    let sk: *const u8 = ctx.arg(0);
    let old = ctx.arg::<u64>(1) & 0xffff_ffff;
    let new = ctx.arg::<u64>(2) & 0xffff_ffff;
    match (old, new) {
        // listen() and connect() run in the owner's context.
        (_, TCP_LISTEN) | (_, TCP_SYN_SENT) => {
            let service = current_service();
            // SAFETY: a read of a loader-filled global.
            let report = unsafe { core::ptr::read_volatile(&REPORT_LISTENS) } != 0;
            if new == TCP_LISTEN && report {
                let port: u16 = read_field(sk, offset(|o| &o.skc_num))?;
                let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
                crate::process::emit(proc_event::LISTEN, tgid, u32::from(port), service as u16);
            }
            if service == u32::from(NO_SERVICE) {
                return Ok(());
            }
            if new == TCP_LISTEN {
                let port: u16 = read_field(sk, offset(|o| &o.skc_num))?;
                let _ = LISTEN_OWNER.insert(u32::from(port), service, 0);
            } else if SOCK_OWNER.insert(sk as u64, service, 0).is_err() {
                count(Counter::DropSockOwnerFull);
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let port: u16 = read_field(sk, offset(|o| &o.skc_num))?;
            let _ = LISTEN_OWNER.remove(u32::from(port));
        }
        // Handshakes complete in softirq context: find the owner by socket or port.
        (TCP_SYN_SENT, TCP_ESTABLISHED) | (TCP_SYN_RECV, TCP_ESTABLISHED) => {
            let service = owner_of(sk).ok_or(())?;
            let stats = net_stats(service).ok_or(())?;
            // SAFETY: this CPU's value of a per-CPU hash entry.
            unsafe { (*stats).connections_opened += 1 };
            if let Ok(peer) = peer_of(sk, service)
                && let Some(p) = peer_stats(&peer)
            {
                // SAFETY: as above.
                unsafe { (*p).connections += 1 };
            }
        }
        (TCP_SYN_SENT, TCP_CLOSE) => {
            if let Some(service) = owner_of(sk)
                && let Some(stats) = net_stats(service)
            {
                // SAFETY: as above.
                unsafe { (*stats).connects_failed += 1 };
            }
            let _ = SOCK_OWNER.remove(sk as u64);
        }
        // The local side closing (close()/shutdown(), in the owner's context).
        (TCP_ESTABLISHED, TCP_FIN_WAIT1)
        | (TCP_CLOSE_WAIT, TCP_LAST_ACK)
        | (TCP_ESTABLISHED, TCP_CLOSE)
        | (TCP_CLOSE_WAIT, TCP_CLOSE) => {
            let service = owner_of(sk).or_else(|| {
                let s = current_service();
                (s != u32::from(NO_SERVICE)).then_some(s)
            });
            if let Some(service) = service
                && let Some(stats) = net_stats(service)
            {
                // SAFETY: as above.
                unsafe { (*stats).connections_closed += 1 };
            }
            if new == TCP_CLOSE {
                let _ = SOCK_OWNER.remove(sk as u64);
            }
        }
        (_, TCP_CLOSE) => {
            let _ = SOCK_OWNER.remove(sk as u64);
        }
        _ => {}
    }
    Ok(())
}

// tcp:tcp_retransmit_skb — TP_PROTO(const struct sock *sk, const struct sk_buff *skb[, reason])
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: RawTracePointContext) -> i32 {
    match try_retransmit(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_retransmit(ctx: &RawTracePointContext) -> Result<(), ()> {
    let sk: *const u8 = ctx.arg(0);
    let service = owner_of(sk).ok_or(())?;
    let stats = net_stats(service).ok_or(())?;
    // SAFETY: this CPU's value of a per-CPU hash entry.
    unsafe { (*stats).retransmits += 1 };
    Ok(())
}
