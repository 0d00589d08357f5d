//! Profiles for a person: `--format text` and the live summary of `crmprof run`.

use std::fmt::Write as _;

use crate::{
    discovery::{Registry, procfs},
    profile::{Profile, ServiceProfile},
    verdict::TimeBudget,
};

/// Durations the way people read them: 850ns, 12.3µs, 1.06ms, 2.50s.
pub fn duration(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", ns_f / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns_f / 1e6)
    } else {
        format!("{:.2}s", ns_f / 1e9)
    }
}

/// The whole profile: per service, the top syscalls by total time with p50/p99, then errors.
pub fn text(profile: &Profile, top: usize) -> String {
    let mut out = String::new();
    let secs = profile.window.duration_ns as f64 / 1e9;
    let _ = writeln!(
        out,
        "crmprof {} on {} (Linux {}, {} CPUs), window {secs:.1}s",
        profile.agent.version, profile.host.hostname, profile.host.kernel, profile.host.cpus
    );
    for (group, report) in &profile.agent.probes {
        if report.status != "attached" {
            let _ = writeln!(
                out,
                "  probe group {group}: {} ({})",
                report.status,
                report.error.as_deref().unwrap_or("no reason given")
            );
        }
    }
    let lost: u64 = profile.agent.dropped.values().sum();
    if lost > 0 {
        let reasons: Vec<String> = profile
            .agent
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(out, "  dropped: {}", reasons.join(", "));
    }
    if profile.services.is_empty() {
        let _ = writeln!(out, "\nno services selected");
    }
    for service in &profile.services {
        out.push('\n');
        service_text(&mut out, service, top);
    }
    out
}

/// The budget as a 50-character bar, one letter per state (legend below it).
pub fn budget_bar(t: &TimeBudget) -> String {
    const WIDTH: f64 = 50.0;
    let parts = [
        ('C', t.on_cpu),
        ('Q', t.runqueue),
        ('D', t.disk_io),
        ('N', t.network_wait),
        ('L', t.lock_wait),
        ('S', t.sleep),
        ('M', t.memory),
        ('o', t.other),
    ];
    let mut bar = String::new();
    let mut filled = 0.0;
    for (c, f) in parts {
        let end = ((filled + f) * WIDTH).round() as usize;
        while bar.chars().count() < end.min(WIDTH as usize) {
            bar.push(c);
        }
        filled += f;
    }
    while bar.chars().count() < WIDTH as usize {
        bar.push('·');
    }
    format!("[{bar}]")
}

fn service_text(out: &mut String, service: &ServiceProfile, top: usize) {
    let calls: u64 = service.syscalls.iter().map(|s| s.count).sum();
    let errors: u64 = service.syscalls.iter().map(|s| s.errors).sum();
    let b = &service.bottleneck;
    let _ = writeln!(out, "{}  pids {}", service.name, pid_list(&service.pids));
    let _ = writeln!(
        out,
        "  verdict: {}/{} — {} (share {:.0}%, confidence {:.0}%)",
        b.class,
        b.resource,
        b.summary,
        b.share * 100.0,
        b.confidence * 100.0
    );
    for e in &b.evidence {
        let _ = writeln!(out, "    · {e}");
    }
    let t = &service.time;
    let _ = writeln!(
        out,
        "  time {} busy {} idle {}",
        budget_bar(t),
        duration(t.thread_ns),
        duration(t.idle_ns)
    );
    let _ = writeln!(
        out,
        "       C on-CPU {:.0}%  Q run queue {:.0}%  D disk {:.0}%  N network {:.0}%  L lock {:.0}%  \
         S sleep {:.0}%  M memory {:.0}%  o other {:.0}%",
        t.on_cpu * 100.0,
        t.runqueue * 100.0,
        t.disk_io * 100.0,
        t.network_wait * 100.0,
        t.lock_wait * 100.0,
        t.sleep * 100.0,
        t.memory * 100.0,
        t.other * 100.0
    );
    let _ = writeln!(out, "  syscalls {calls}  errors {errors}");
    if !service.syscalls.is_empty() {
        let _ = writeln!(
            out,
            "  {:<20} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
            "syscall", "calls", "errors", "total", "p50", "p99", "max"
        );
        for s in service.syscalls.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<20} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
                s.name,
                s.count,
                s.errors,
                duration(s.total_ns),
                duration(s.p50_ns),
                duration(s.p99_ns),
                duration(s.max_ns)
            );
        }
        if service.syscalls.len() > top {
            let _ = writeln!(out, "  … {} more", service.syscalls.len() - top);
        }
    }
    if !service.errors.is_empty() {
        let list: Vec<String> = service
            .errors
            .iter()
            .take(top)
            .map(|e| format!("{} {}×{}", e.syscall, e.errno, e.count))
            .collect();
        let _ = writeln!(out, "  errors: {}", list.join(", "));
    }
    let n = &service.network;
    if n.tx_bytes + n.rx_bytes + n.connections_opened > 0 || n.wait_ns > 0 {
        let _ = writeln!(
            out,
            "  network: sent {} received {}  connections +{} -{} ({} failed)  retransmits {}  \
             waited {}",
            bytes(n.tx_bytes),
            bytes(n.rx_bytes),
            n.connections_opened,
            n.connections_closed,
            n.connects_failed,
            n.retransmits,
            duration(n.wait_ns)
        );
        for p in n.peers.iter().take(5) {
            let svc = p
                .service
                .as_ref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}:{}{svc}  sent {} received {}  waited {}",
                p.address,
                p.port,
                bytes(p.tx_bytes),
                bytes(p.rx_bytes),
                duration(p.wait_ns)
            );
        }
    }
    let d = &service.disk;
    if d.ios > 0 || d.wait_ns > 0 {
        let _ = writeln!(
            out,
            "  disk: read {} written {} in {} I/Os, p50 {} p99 {}, waited {}",
            bytes(d.read_bytes),
            bytes(d.write_bytes),
            d.ios,
            duration(d.p50_ns),
            duration(d.p99_ns),
            duration(d.wait_ns)
        );
        for dev in &d.devices {
            let _ = writeln!(
                out,
                "    {}: {} I/Os, p99 {}, queued {}, at device {}",
                dev.name,
                dev.ios,
                duration(dev.p99_ns),
                duration(dev.queue_ns),
                duration(dev.device_ns)
            );
        }
    }
}

/// Bytes with binary units.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One line per service, busiest first: the live view of `crmprof run`.
pub fn summary(profile: &Profile, max_services: usize) -> String {
    let mut out = String::new();
    let secs = (profile.window.duration_ns as f64 / 1e9).max(1e-9);
    let _ = writeln!(
        out,
        "── {} · {} services · window {secs:.1}s · CPUs {:.0}% busy ──",
        profile.host.hostname,
        profile.services.len(),
        profile.host.usage.cpu_utilization * 100.0
    );
    let mut rows: Vec<&ServiceProfile> = profile
        .services
        .iter()
        .filter(|s| s.time.thread_ns > 0 || !s.syscalls.is_empty())
        .collect();
    rows.sort_by_key(|s| std::cmp::Reverse(s.time.thread_ns));
    let _ = writeln!(
        out,
        "{:<20} {:>5} {:>8} {:>7}  {:<22} {:<52}",
        "service",
        "pids",
        "calls/s",
        "err/s",
        "verdict",
        "time (C cpu Q runq D disk N net L lock S sleep M mem)"
    );
    for s in rows.iter().take(max_services) {
        let calls: u64 = s.syscalls.iter().map(|c| c.count).sum();
        let errors: u64 = s.syscalls.iter().map(|c| c.errors).sum();
        let verdict = format!("{}/{}", s.bottleneck.class, s.bottleneck.resource);
        let _ = writeln!(
            out,
            "{:<20} {:>5} {:>8.0} {:>7.1}  {:<22} {}",
            truncate(&s.name, 20),
            s.pids.len(),
            calls as f64 / secs,
            errors as f64 / secs,
            verdict,
            budget_bar(&s.time)
        );
    }
    let idle = profile.services.len() - rows.len();
    if idle > 0 {
        let _ = writeln!(out, "({idle} services idle)");
    }
    out
}

/// `crmprof services --format json`: each service, its rule and its processes.
pub fn services_json(registry: &Registry) -> serde_json::Value {
    let services: Vec<serde_json::Value> = registry
        .services()
        .iter()
        .map(|s| {
            let processes: Vec<serde_json::Value> = s
                .live
                .iter()
                .map(|&pid| {
                    serde_json::json!({
                        "pid": pid,
                        "comm": procfs::read_comm(pid).unwrap_or_default(),
                    })
                })
                .collect();
            serde_json::json!({
                "name": s.name,
                "rule": s.rule.describe(),
                "processes": processes,
            })
        })
        .collect();
    serde_json::json!({ "services": services })
}

/// `crmprof services`: one block per service.
pub fn services_text(registry: &Registry) -> String {
    let mut out = String::new();
    let mut services: Vec<_> = registry.services().iter().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    for s in services {
        let _ = writeln!(
            out,
            "{:<28} {:>4} processes  ({})",
            s.name,
            s.live.len(),
            s.rule.describe()
        );
        let pids: Vec<String> = s
            .live
            .iter()
            .take(8)
            .map(|&p| format!("{p} {}", procfs::read_comm(p).unwrap_or_default()))
            .collect();
        let more = s.live.len().saturating_sub(8);
        let _ = writeln!(
            out,
            "    {}{}",
            pids.join(", "),
            if more > 0 {
                format!(", … {more} more")
            } else {
                String::new()
            }
        );
    }
    if registry.services_over_limit > 0 {
        let _ = writeln!(
            out,
            "{} processes were left out: max_services reached",
            registry.services_over_limit
        );
    }
    out
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn pid_list(pids: &[u32]) -> String {
    const SHOWN: usize = 8;
    let mut list: Vec<String> = pids.iter().take(SHOWN).map(u32::to_string).collect();
    if pids.len() > SHOWN {
        list.push(format!("… ({} in all)", pids.len()));
    }
    list.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(12_345), "12.3µs");
        assert_eq!(duration(1_060_000), "1.06ms");
        assert_eq!(duration(2_500_000_000), "2.50s");
    }

    #[test]
    fn the_budget_bar_is_proportional() {
        let t = TimeBudget {
            on_cpu: 0.5,
            disk_io: 0.3,
            lock_wait: 0.2,
            ..TimeBudget::default()
        };
        let bar = budget_bar(&t);
        assert_eq!(bar.chars().filter(|&c| c == 'C').count(), 25, "{bar}");
        assert_eq!(bar.chars().filter(|&c| c == 'D').count(), 15, "{bar}");
        assert_eq!(bar.chars().filter(|&c| c == 'L').count(), 10, "{bar}");
        assert_eq!(
            budget_bar(&TimeBudget::default())
                .chars()
                .filter(|&c| c == '·')
                .count(),
            50
        );
        assert_eq!(bytes(1536), "1.5 KiB");
    }

    #[test]
    fn long_names_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
