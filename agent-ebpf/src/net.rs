//! Socket throughput, connections and retransmits per service, and bytes and waits per peer.
//!
//! Bytes come from sock:sock_send_length / sock_recv_length, which fire once per
//! `sock_sendmsg`/`sock_recvmsg` with the bytes actually moved — partial sends count what was
//! sent, write()/read() on a socket count too, loopback and other namespaces alike. Data moved
//! by sendfile/splice bypasses them and is not counted (documented in docs/probes.md).

use agent_ebpf::{Counter, NO_SERVICE, NetStats, PeerKey, PeerStats, proc_event};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::{HashMap, PerCpuHashMap},
    programs::RawTracePointContext,
};

use crate::selection::{count, offsets, read_field, service_of};

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

#[map(name = "NET_STATS")]
static NET_STATS: PerCpuHashMap<u32, NetStats> = PerCpuHashMap::with_max_entries(1024, NO_PREALLOC);

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

/// First port of `net.ipv4.ip_local_port_range`, set by the loader: a remote port at or above
/// it talking to a local port below it is a client's ephemeral port.
#[unsafe(no_mangle)]
static EPHEMERAL_PORT_MIN: u32 = 32768;

/// Set by the loader: 1 to report every listen (the agent applies `port` rules to them).
#[unsafe(no_mangle)]
static REPORT_LISTENS: u32 = 0;

#[inline(always)]
fn net_stats(service: u32) -> Option<*mut NetStats> {
    if let Some(s) = NET_STATS.get_ptr_mut(service) {
        return Some(s);
    }
    if NET_STATS.insert(service, NetStats::default(), 1).is_err()
        && NET_STATS.get_ptr_mut(service).is_none()
    {
        count(Counter::DropNetStatsFull);
        return None;
    }
    NET_STATS.get_ptr_mut(service)
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
    let o = offsets();
    let family: u16 = read_field(sk, o.skc_family)?;
    let mut peer = PeerKey {
        service,
        port: 0,
        family,
        addr: [0; 16],
    };
    match family {
        AF_INET => {
            let addr: [u8; 4] = read_field(sk, o.skc_daddr)?;
            peer.addr[10] = 0xff;
            peer.addr[11] = 0xff;
            peer.addr[12] = addr[0];
            peer.addr[13] = addr[1];
            peer.addr[14] = addr[2];
            peer.addr[15] = addr[3];
        }
        AF_INET6 => peer.addr = read_field(sk, o.skc_v6_daddr)?,
        AF_UNIX => return Ok(peer),
        _ => return Err(()),
    }
    let remote = u16::from_be(read_field(sk, o.skc_dport)?);
    let local: u16 = read_field(sk, o.skc_num)?;
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
fn current_service() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (u32::from(service_of((id >> 32) as u32)), id as u32)
}

// sock:sock_send_length / sock:sock_recv_length — TP_PROTO(struct sock *sk, int ret, int flags)
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    match try_bytes(&ctx, true) {
        Ok(()) | Err(()) => 0,
    }
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    match try_bytes(&ctx, false) {
        Ok(()) | Err(()) => 0,
    }
}

#[inline(always)]
fn try_bytes(ctx: &RawTracePointContext, send: bool) -> Result<(), ()> {
    let (service, tid) = current_service();
    if service == u32::from(NO_SERVICE) {
        return Ok(());
    }
    let ret = ctx.arg::<u64>(1) as i32;
    if ret <= 0 {
        return Ok(());
    }
    let bytes = ret as u64;
    let stats = net_stats(service).ok_or(())?;
    // SAFETY: this CPU's value of a per-CPU hash entry.
    unsafe {
        if send {
            (*stats).tx_bytes += bytes;
        } else {
            (*stats).rx_bytes += bytes;
        }
    }
    let sk: *const u8 = ctx.arg(0);
    let peer = peer_of(sk, service)?;
    if let Some(p) = peer_stats(&peer) {
        // SAFETY: as above.
        unsafe {
            if send {
                (*p).tx_bytes += bytes;
            } else {
                (*p).rx_bytes += bytes;
            }
        }
    }
    crate::sched::set_last_peer(tid, service, &peer, send);
    Ok(())
}

/// Adds a thread's network wait to the peer it last talked to.
#[inline(always)]
pub fn add_peer_wait(peer: &PeerKey, ns: u64) {
    if let Some(p) = peer_stats(peer) {
        // SAFETY: this CPU's value of a per-CPU hash entry.
        unsafe { (*p).wait_ns += ns };
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
    let local: u16 = read_field(sk, offsets().skc_num).ok()?;
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
            let (service, _) = current_service();
            // SAFETY: a read of a loader-filled global.
            let report = unsafe { core::ptr::read_volatile(&REPORT_LISTENS) } != 0;
            if new == TCP_LISTEN && report {
                let port: u16 = read_field(sk, offsets().skc_num)?;
                let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
                crate::process::emit(proc_event::LISTEN, tgid, u32::from(port), service as u16);
            }
            if service == u32::from(NO_SERVICE) {
                return Ok(());
            }
            if new == TCP_LISTEN {
                let port: u16 = read_field(sk, offsets().skc_num)?;
                let _ = LISTEN_OWNER.insert(u32::from(port), service, 0);
            } else if SOCK_OWNER.insert(sk as u64, service, 0).is_err() {
                count(Counter::DropSockOwnerFull);
            }
        }
        (TCP_LISTEN, TCP_CLOSE) => {
            let port: u16 = read_field(sk, offsets().skc_num)?;
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
                let (s, _) = current_service();
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
