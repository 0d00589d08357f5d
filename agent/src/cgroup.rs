//! A service's cgroup limits, for the verdict's evidence: a CPU quota that throttles it, an I/O
//! limit that holds its bios. cgroup v1 (per-controller hierarchies) and v2 are both read; the
//! mount points come from /proc/self/mountinfo.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where each hierarchy is mounted.
#[derive(Clone, Debug, Default)]
pub struct Mounts {
    /// v1 controller ("cpu", "blkio", "memory") → mount point.
    v1: BTreeMap<String, PathBuf>,
    v2: Option<PathBuf>,
}

impl Mounts {
    pub fn read() -> Self {
        let mut m = Mounts::default();
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return m;
        };
        for line in info.lines() {
            // ... mount_point ... - fstype source super_options
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split_whitespace().nth(4).unwrap_or_default();
            let mut r = right.split_whitespace();
            let fstype = r.next().unwrap_or_default();
            let options = r.nth(1).unwrap_or_default();
            match fstype {
                "cgroup2" => m.v2 = Some(PathBuf::from(mount_point)),
                "cgroup" => {
                    for opt in options.split(',') {
                        if matches!(opt, "cpu" | "blkio" | "memory" | "cpuacct") {
                            m.v1.entry(opt.to_owned())
                                .or_insert_with(|| PathBuf::from(mount_point));
                        }
                    }
                }
                _ => {}
            }
        }
        m
    }

    /// The cgroup directory of `pid` for a v1 controller, or its v2 directory.
    fn dir_of(&self, pid: u32, controller: &str) -> Option<PathBuf> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let mut v2 = None;
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let path = path.trim_start_matches('/');
            if controllers.is_empty() {
                v2 = self.v2.as_ref().map(|root| root.join(path));
            } else if controllers.split(',').any(|c| c == controller)
                && let Some(root) = self.v1.get(controller)
            {
                return Some(root.join(path));
            }
        }
        v2
    }
}

/// Limits and their effect over one window, for one service.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Limits {
    /// CPU quota in cores (quota / period), when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota_cores: Option<f64>,
    /// Time the service's cgroup was throttled by its quota in the window.
    pub cpu_throttled_ns: u64,
    /// I/O limits in force, as the kernel states them ("254:0 write_iops 50").
    pub io_limits: Vec<String>,
}

/// Tracks cumulative throttling per cgroup between windows.
#[derive(Debug, Default)]
pub struct Tracker {
    mounts: Mounts,
    throttled: BTreeMap<PathBuf, u64>,
}

impl Tracker {
    pub fn new() -> Self {
        Self {
            mounts: Mounts::read(),
            throttled: BTreeMap::new(),
        }
    }

    /// The limits of the cgroups `pids` live in, and the throttling since the last call.
    pub fn limits(&mut self, pids: &[u32]) -> Limits {
        let mut limits = Limits::default();
        let cpu_dirs: BTreeSet<PathBuf> = pids
            .iter()
            .filter_map(|&p| self.mounts.dir_of(p, "cpu"))
            .collect();
        for dir in &cpu_dirs {
            if let Some(cores) = cpu_quota(dir) {
                limits.cpu_quota_cores = Some(limits.cpu_quota_cores.unwrap_or(0.0) + cores);
            }
            let total = throttled_ns(dir);
            let before = self.throttled.insert(dir.clone(), total).unwrap_or(total);
            limits.cpu_throttled_ns += total.saturating_sub(before);
        }
        let io_dirs: BTreeSet<PathBuf> = pids
            .iter()
            .filter_map(|&p| self.mounts.dir_of(p, "blkio"))
            .collect();
        for dir in &io_dirs {
            limits.io_limits.extend(io_limits(dir));
        }
        limits.io_limits.sort();
        limits.io_limits.dedup();
        limits
    }
}

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

fn cpu_quota(dir: &Path) -> Option<f64> {
    if let Some(max) = read_trim(&dir.join("cpu.max")) {
        let mut f = max.split_whitespace();
        let quota: f64 = f.next()?.parse().ok()?; // "max" fails to parse: no quota
        let period: f64 = f.next()?.parse().ok()?;
        return Some(quota / period);
    }
    let quota: i64 = read_trim(&dir.join("cpu.cfs_quota_us"))?.parse().ok()?;
    let period: i64 = read_trim(&dir.join("cpu.cfs_period_us"))?.parse().ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// Cumulative throttled time: v1 `throttled_time` (ns) or v2 `throttled_usec`.
fn throttled_ns(dir: &Path) -> u64 {
    let Some(stat) = read_trim(&dir.join("cpu.stat")) else {
        return 0;
    };
    let field = |name: &str| {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    field("throttled_time ")
        .or_else(|| field("throttled_usec ").map(|us| us * 1000))
        .unwrap_or(0)
}

fn io_limits(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (file, what) in [
        ("blkio.throttle.read_bps_device", "read_bps"),
        ("blkio.throttle.write_bps_device", "write_bps"),
        ("blkio.throttle.read_iops_device", "read_iops"),
        ("blkio.throttle.write_iops_device", "write_iops"),
    ] {
        if let Some(text) = read_trim(&dir.join(file)) {
            for line in text.lines() {
                if let Some((dev, value)) = line.split_once(' ') {
                    out.push(format!("{dev} {what} {value}"));
                }
            }
        }
    }
    if let Some(text) = read_trim(&dir.join("io.max")) {
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let Some(dev) = f.next() else { continue };
            for kv in f.filter(|kv| !kv.ends_with("=max")) {
                if let Some((k, v)) = kv.split_once('=') {
                    out.push(format!("{dev} {k} {v}"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_cgroups_resolve() {
        let m = Mounts::read();
        // Whatever the hierarchy here, reading our own limits must not fail or panic.
        let mut t = Tracker {
            mounts: m,
            throttled: BTreeMap::new(),
        };
        let limits = t.limits(&[std::process::id()]);
        assert_eq!(
            limits.cpu_throttled_ns, 0,
            "the first read only sets the baseline"
        );
    }
}
