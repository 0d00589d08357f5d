//! How steady the host is: a thread spinning on each CPU, with nothing else running, counts
//! the fixed units of work it gets done in each half second. On a dedicated machine every
//! half second does the same work; on a shared virtual machine the host's other tenants (a
//! busy sibling hyperthread, the vCPU not running at all) take some of it, mostly without the
//! guest's steal time showing it. That variation is the floor under every throughput ratio the
//! realistic loads measure, so the report states it beside them.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use super::{cpu_ticks, stats};

const WINDOW: Duration = Duration::from_millis(500);

pub struct Capacity {
    pub seconds: u64,
    /// Each window's work ÷ the best window of its CPU, over all CPUs.
    pub windows: Vec<f64>,
    /// Steal time the kernel counted over the measurement, as a share of all CPU time.
    pub steal: f64,
}

/// Spins one thread pinned to each CPU for `seconds`.
pub fn measure(seconds: u64) -> Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let steal_before = steal_and_total();
    let per_cpu: Vec<Vec<u64>> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..cpus)
            .map(|cpu| s.spawn(move || spin_on(cpu, seconds)))
            .collect();
        threads.into_iter().filter_map(|t| t.join().ok()).collect()
    });
    let steal_after = steal_and_total();
    let mut windows = Vec::new();
    for units in &per_cpu {
        let best = units.iter().copied().max().unwrap_or(0).max(1) as f64;
        windows.extend(units.iter().map(|&u| u as f64 / best));
    }
    let total = steal_after.1.saturating_sub(steal_before.1).max(1) as f64;
    Capacity {
        seconds,
        windows,
        steal: steal_after.0.saturating_sub(steal_before.0) as f64 / total,
    }
}

impl Capacity {
    /// One sentence for the report's header.
    pub fn sentence(&self) -> String {
        let (min, median, _) = stats(&self.windows);
        format!(
            "Host steadiness: a thread spinning on each CPU with nothing else running did \
             between {:.0}% and 100% of its best half second's work over {} s (median {:.0}%), \
             while the kernel counted {:.1}% of the CPU time as stolen — the host's variation, \
             mostly invisible to the guest, under every throughput figure below.",
            min * 100.0,
            self.seconds,
            median * 100.0,
            self.steal * 100.0
        )
    }
}

/// Units of work done in each window, pinned to `cpu`.
fn spin_on(cpu: usize, seconds: u64) -> Vec<u64> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes within it, and
    // sched_setaffinity reads `size_of` bytes of it for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
    let windows = (Duration::from_secs(seconds).as_millis() / WINDOW.as_millis()).max(1);
    let mut out = Vec::new();
    let start = Instant::now();
    let mut acc = 0u64;
    for w in 1..=windows {
        let end = start + WINDOW * u32::try_from(w).unwrap_or(u32::MAX);
        let mut units = 0;
        while Instant::now() < end {
            // One unit: a few microseconds of arithmetic the compiler cannot drop.
            for i in 0..2_000u64 {
                acc = black_box(acc.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i));
            }
            units += 1;
        }
        out.push(units);
    }
    black_box(acc);
    out
}

/// (steal, total) ticks of all CPUs so far.
fn steal_and_total() -> (u64, u64) {
    let v = cpu_ticks();
    (v.get(7).copied().unwrap_or(0), v.iter().take(8).sum())
}

#[cfg(test)]
mod tests {
    use super::measure;

    #[test]
    fn each_cpu_reports_every_window_against_its_best() {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let c = measure(1);
        assert_eq!(c.windows.len(), 2 * cpus, "two half seconds per CPU");
        assert!(
            c.windows.iter().all(|w| *w > 0.0 && *w <= 1.0),
            "{:?}",
            c.windows
        );
        // Each CPU's best window is the 100% the others are measured against.
        let ones = c.windows.iter().filter(|w| **w == 1.0).count();
        assert!(ones >= cpus, "{:?}", c.windows);
        assert!((0.0..=1.0).contains(&c.steal));
        assert!(c.sentence().contains("over 1 s"), "{}", c.sentence());
    }
}
