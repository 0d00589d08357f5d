//! Host-level resource figures for the USE method: per-CPU utilisation, per-device utilisation
//! and queue depth, pressure stall information and memory-pressure counters. Read from /proc
//! once per window; the kernel already keeps these, so no probe is needed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Cumulative counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Per CPU: (busy jiffies, total jiffies).
    cpus: BTreeMap<u32, (u64, u64)>,
    /// Per device: /proc/diskstats counters.
    devices: BTreeMap<String, DiskCounters>,
    /// "cpu" | "io" | "memory" → (some total µs, full total µs).
    psi: BTreeMap<String, (u64, Option<u64>)>,
    vmstat: BTreeMap<String, u64>,
}

#[derive(Clone, Copy, Debug, Default)]
struct DiskCounters {
    ios: u64,
    sectors_read: u64,
    sectors_written: u64,
    ms_doing_io: u64,
    weighted_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CpuUse {
    pub cpu: u32,
    /// Busy fraction of the window, 0–1.
    pub utilization: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DeviceUse {
    pub name: String,
    /// Fraction of the window the device had I/O in flight, 0–1.
    pub utilization: f64,
    /// Average number of I/Os in flight or queued.
    pub avg_queue_depth: f64,
    pub iops: f64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

/// Share of the window in which some (or all) runnable tasks stalled on a resource.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Pressure {
    pub some: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct HostUse {
    pub per_cpu: Vec<CpuUse>,
    /// Mean over CPUs.
    pub cpu_utilization: f64,
    pub devices: Vec<DeviceUse>,
    /// "cpu", "io", "memory" when /proc/pressure exists.
    pub psi: BTreeMap<String, Pressure>,
    pub major_faults: u64,
    /// Direct-reclaim stalls (allocstall_*).
    pub alloc_stalls: u64,
    pub pages_swapped_out: u64,
}

impl Sample {
    pub fn read() -> Self {
        let mut s = Sample::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            for line in stat.lines() {
                let mut f = line.split_whitespace();
                let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")) else {
                    continue;
                };
                let Ok(cpu) = cpu.parse::<u32>() else {
                    continue;
                };
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal guest guest_nice
                let total: u64 = v.iter().take(8).sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                s.cpus.insert(cpu, (total.saturating_sub(idle), total));
            }
        }
        if let Ok(stats) = std::fs::read_to_string("/proc/diskstats") {
            for line in stats.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let Some(name) = f.get(2) else { continue };
                if name.starts_with("loop") || name.starts_with("ram") {
                    continue;
                }
                let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                s.devices.insert(
                    (*name).to_owned(),
                    DiskCounters {
                        ios: n(3) + n(7),
                        sectors_read: n(5),
                        sectors_written: n(9),
                        ms_doing_io: n(12),
                        weighted_ms: n(13),
                    },
                );
            }
        }
        for resource in ["cpu", "io", "memory"] {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/pressure/{resource}")) {
                let total = |kind: &str| {
                    text.lines()
                        .find(|l| l.starts_with(kind))?
                        .split_whitespace()
                        .find_map(|kv| kv.strip_prefix("total="))?
                        .parse::<u64>()
                        .ok()
                };
                if let Some(some) = total("some") {
                    s.psi.insert(resource.to_owned(), (some, total("full")));
                }
            }
        }
        if let Ok(vm) = std::fs::read_to_string("/proc/vmstat") {
            for line in vm.lines() {
                let mut f = line.split_whitespace();
                if let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse().ok())) {
                    s.vmstat.insert(k.to_owned(), v);
                }
            }
        }
        s
    }

    /// What happened between `before` and `self`, over `window_ns`.
    pub fn since(&self, before: &Sample, window_ns: u64) -> HostUse {
        let window_ms = (window_ns as f64 / 1e6).max(1.0);
        let window_us = window_ms * 1e3;
        let per_cpu: Vec<CpuUse> = self
            .cpus
            .iter()
            .map(|(&cpu, &(busy, total))| {
                let (b0, t0) = before.cpus.get(&cpu).copied().unwrap_or((0, 0));
                let dt = total.saturating_sub(t0);
                CpuUse {
                    cpu,
                    utilization: if dt == 0 {
                        0.0
                    } else {
                        busy.saturating_sub(b0) as f64 / dt as f64
                    },
                }
            })
            .collect();
        let cpu_utilization = if per_cpu.is_empty() {
            0.0
        } else {
            per_cpu.iter().map(|c| c.utilization).sum::<f64>() / per_cpu.len() as f64
        };
        let devices = self
            .devices
            .iter()
            .filter_map(|(name, now)| {
                let b = before.devices.get(name).copied().unwrap_or_default();
                let ios = now.ios.saturating_sub(b.ios);
                let busy = now.ms_doing_io.saturating_sub(b.ms_doing_io);
                if ios == 0 && busy == 0 {
                    return None;
                }
                Some(DeviceUse {
                    name: name.clone(),
                    utilization: (busy as f64 / window_ms).min(1.0),
                    avg_queue_depth: now.weighted_ms.saturating_sub(b.weighted_ms) as f64
                        / window_ms,
                    iops: ios as f64 / (window_ms / 1e3),
                    read_bytes: now.sectors_read.saturating_sub(b.sectors_read) * 512,
                    write_bytes: now.sectors_written.saturating_sub(b.sectors_written) * 512,
                })
            })
            .collect();
        let psi = self
            .psi
            .iter()
            .map(|(r, &(some, full))| {
                let (s0, f0) = before.psi.get(r).copied().unwrap_or((some, full));
                let frac =
                    |now: u64, then: u64| (now.saturating_sub(then) as f64 / window_us).min(1.0);
                (
                    r.clone(),
                    Pressure {
                        some: frac(some, s0),
                        full: full.map(|f| frac(f, f0.unwrap_or(f))),
                    },
                )
            })
            .collect();
        let vm = |prefix: &str| -> u64 {
            self.vmstat
                .iter()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| v.saturating_sub(before.vmstat.get(k).copied().unwrap_or(*v)))
                .sum()
        };
        HostUse {
            per_cpu,
            cpu_utilization,
            devices,
            psi,
            major_faults: vm("pgmajfault"),
            alloc_stalls: vm("allocstall"),
            pages_swapped_out: vm("pswpout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_of_this_machine_is_plausible() {
        let a = Sample::read();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        let b = Sample::read();
        let use_ = b.since(&a, 100_000_000);
        assert!(!use_.per_cpu.is_empty());
        assert!(
            use_.per_cpu
                .iter()
                .all(|c| (0.0..=1.0).contains(&c.utilization))
        );
    }
}
