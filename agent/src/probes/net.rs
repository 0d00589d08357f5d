//! Reading the net group: per-service socket totals and per-peer traffic.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use agent_ebpf::{NetStats, PeerKey, PeerStats, maps};
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};

use super::{Probes, map_ref};
use crate::error::ProbeError;

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: HashMap<u32, NetStats>,
    pub peers: HashMap<PeerKey, PeerStats>,
}

pub fn read(probes: &Probes) -> Result<Snapshot, ProbeError> {
    let read_err = |name| {
        move |e: aya::maps::MapError| ProbeError::MapRead {
            name,
            reason: e.to_string(),
        }
    };
    let mut snap = Snapshot::default();
    let services: PerCpuArray<&MapData, NetStats> = map_ref(probes.ebpf(), maps::NET_STATS)?;
    // One row per service id the kernel may use; rows of services that never used a socket
    // stay zero and are left out.
    for service in probes.service_ids(services.len()) {
        let per_cpu = services
            .get(&service, 0)
            .map_err(read_err(maps::NET_STATS))?;
        if per_cpu.iter().all(|c| {
            c.tx_bytes == 0
                && c.rx_bytes == 0
                && c.connections_opened == 0
                && c.connections_closed == 0
                && c.connects_failed == 0
                && c.retransmits == 0
        }) {
            continue;
        }
        let t = snap.services.entry(service).or_default();
        for c in per_cpu.iter() {
            t.tx_bytes += c.tx_bytes;
            t.rx_bytes += c.rx_bytes;
            t.connections_opened += c.connections_opened;
            t.connections_closed += c.connections_closed;
            t.connects_failed += c.connects_failed;
            t.retransmits += c.retransmits;
        }
    }
    let peers: PerCpuHashMap<&MapData, PeerKey, PeerStats> =
        map_ref(probes.ebpf(), maps::PEER_STATS)?;
    for entry in peers.iter() {
        let (key, per_cpu) = entry.map_err(read_err(maps::PEER_STATS))?;
        let t = snap.peers.entry(key).or_default();
        for c in per_cpu.iter() {
            t.tx_bytes += c.tx_bytes;
            t.rx_bytes += c.rx_bytes;
            t.connections += c.connections;
            t.wait_ns += c.wait_ns;
        }
    }
    Ok(snap)
}

/// The peer's address as text: IPv4 for IPv4-mapped addresses, "unix" for Unix sockets.
pub fn peer_address(key: &PeerKey) -> String {
    match key.family {
        1 => "unix".to_owned(),
        _ => {
            let v6 = Ipv6Addr::from(key.addr);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4).to_string(),
                None => IpAddr::V6(v6).to_string(),
            }
        }
    }
}

/// Listening ports of selected services: port → service id.
pub fn listeners(probes: &Probes) -> Result<HashMap<u16, u32>, ProbeError> {
    let map: aya::maps::HashMap<&MapData, u32, u32> = map_ref(probes.ebpf(), maps::LISTEN_OWNER)?;
    Ok(map
        .iter()
        .filter_map(Result::ok)
        .map(|(port, service)| (port as u16, service))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_print_naturally() {
        let mut key = PeerKey {
            family: 2,
            ..PeerKey::default()
        };
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        key.addr[12..].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(peer_address(&key), "127.0.0.1");
        key.family = 1;
        assert_eq!(peer_address(&key), "unix");
    }
}
