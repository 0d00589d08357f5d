//! Reading the disk group: per (service, device) block I/O.

use std::collections::HashMap;

use agent_ebpf::{DiskKey, DiskStats, hist, maps};
use aya::maps::{MapData, PerCpuHashMap};

use super::{Probes, map_ref};
use crate::error::ProbeError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Totals {
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub reads: u64,
    pub writes: u64,
    pub device_ns: u64,
    pub queue_ns: u64,
    pub buckets: Vec<u64>,
}

impl Default for Totals {
    fn default() -> Self {
        Self {
            read_bytes: 0,
            write_bytes: 0,
            reads: 0,
            writes: 0,
            device_ns: 0,
            queue_ns: 0,
            buckets: vec![0; hist::BUCKETS],
        }
    }
}

impl Totals {
    pub fn add(&mut self, s: &Totals) {
        self.read_bytes += s.read_bytes;
        self.write_bytes += s.write_bytes;
        self.reads += s.reads;
        self.writes += s.writes;
        self.device_ns += s.device_ns;
        self.queue_ns += s.queue_ns;
        for (sum, n) in self.buckets.iter_mut().zip(&s.buckets) {
            *sum += n;
        }
    }

    pub fn minus(&self, b: &Totals) -> Totals {
        Totals {
            read_bytes: self.read_bytes.saturating_sub(b.read_bytes),
            write_bytes: self.write_bytes.saturating_sub(b.write_bytes),
            reads: self.reads.saturating_sub(b.reads),
            writes: self.writes.saturating_sub(b.writes),
            device_ns: self.device_ns.saturating_sub(b.device_ns),
            queue_ns: self.queue_ns.saturating_sub(b.queue_ns),
            buckets: self
                .buckets
                .iter()
                .zip(&b.buckets)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }
}

pub fn read(probes: &Probes) -> Result<HashMap<DiskKey, Totals>, ProbeError> {
    let map: PerCpuHashMap<&MapData, DiskKey, DiskStats> =
        map_ref(probes.ebpf(), maps::DISK_STATS)?;
    let mut out = HashMap::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry.map_err(|e| ProbeError::MapRead {
            name: maps::DISK_STATS,
            reason: e.to_string(),
        })?;
        let t: &mut Totals = out.entry(key).or_default();
        for c in per_cpu.iter() {
            t.read_bytes += c.read_bytes;
            t.write_bytes += c.write_bytes;
            t.reads += c.reads;
            t.writes += c.writes;
            t.device_ns += c.device_ns;
            t.queue_ns += c.queue_ns;
            for (sum, n) in t.buckets.iter_mut().zip(c.buckets.iter()) {
                *sum += n;
            }
        }
    }
    Ok(out)
}

/// The kernel's `dev_t` (major << 20 | minor) as the device name from sysfs ("vda"), or
/// "MAJ:MIN" when sysfs does not say.
pub fn device_name(dev: u32) -> String {
    let (major, minor) = (dev >> 20, dev & 0xfffff);
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}
