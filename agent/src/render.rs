//! Profiles for a person: `--format text` and the live summary of `crmprof run`.

use std::fmt::Write as _;

use crate::profile::{Profile, ServiceProfile};

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

fn service_text(out: &mut String, service: &ServiceProfile, top: usize) {
    let calls: u64 = service.syscalls.iter().map(|s| s.count).sum();
    let errors: u64 = service.syscalls.iter().map(|s| s.errors).sum();
    let _ = writeln!(
        out,
        "{}  pids {}  syscalls {calls}  errors {errors}",
        service.name,
        pid_list(&service.pids)
    );
    if service.syscalls.is_empty() {
        return;
    }
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
    if !service.errors.is_empty() {
        let list: Vec<String> = service
            .errors
            .iter()
            .take(top)
            .map(|e| format!("{} {}×{}", e.syscall, e.errno, e.count))
            .collect();
        let _ = writeln!(out, "  errors: {}", list.join(", "));
    }
}

/// One line per service, busiest first: the live view of `crmprof run`.
pub fn summary(profile: &Profile, max_services: usize) -> String {
    let mut out = String::new();
    let secs = (profile.window.duration_ns as f64 / 1e9).max(1e-9);
    let _ = writeln!(
        out,
        "── {} · {} services · window {secs:.1}s ──",
        profile.host.hostname,
        profile.services.len()
    );
    let mut rows: Vec<(&ServiceProfile, u64, u64, u64)> = profile
        .services
        .iter()
        .map(|s| {
            let calls = s.syscalls.iter().map(|c| c.count).sum();
            let errors = s.syscalls.iter().map(|c| c.errors).sum();
            let time = s.syscalls.iter().map(|c| c.total_ns).sum();
            (s, calls, errors, time)
        })
        .filter(|r| r.1 > 0)
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.3));
    let _ = writeln!(
        out,
        "{:<24} {:>6} {:>10} {:>8} {:>12}  top syscall (p99)",
        "service", "pids", "calls/s", "err/s", "in syscalls"
    );
    for (s, calls, errors, time) in rows.iter().take(max_services) {
        let top = s
            .syscalls
            .first()
            .map(|c| format!("{} ({})", c.name, duration(c.p99_ns)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<24} {:>6} {:>10.0} {:>8.1} {:>12}  {top}",
            truncate(&s.name, 24),
            s.pids.len(),
            *calls as f64 / secs,
            *errors as f64 / secs,
            duration(*time),
        );
    }
    let idle = profile.services.len() - rows.len();
    if idle > 0 {
        let _ = writeln!(out, "({idle} services made no syscalls)");
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
    fn long_names_are_cut() {
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
