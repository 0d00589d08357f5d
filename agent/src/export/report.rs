//! `crmprof report`: the JSON lines of the data directory, summarised for a person; and the
//! per-service aggregation that `crmprof check-service` shares.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    time::{Duration, UNIX_EPOCH},
};

use agent_ebpf::hist;

use super::{jsonl, metrics::bucket_index};
use crate::{histogram, profile::Profile};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(
        "no profiles in {0}: is `crmprof run` writing there? (see --data-dir, and the \
         data_dir key of the configuration)"
    )]
    NoData(PathBuf),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The windows that ended at or after `since_ns`, oldest first, and how many lines were not
/// profile documents.
pub fn load(dir: &Path, since_ns: u64) -> Result<(Vec<Profile>, u64), ReportError> {
    let files = jsonl::files(dir);
    if files.is_empty() {
        return Err(ReportError::NoData(dir.to_owned()));
    }
    let mut profiles = Vec::new();
    let mut bad = 0;
    for path in files {
        let file = std::fs::File::open(&path).map_err(|source| ReportError::Read {
            path: path.clone(),
            source,
        })?;
        for line in BufReader::new(file).lines() {
            let Ok(line) = line else {
                bad += 1;
                continue;
            };
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Profile>(&line) {
                Ok(p) if p.window.end_unix_ns >= since_ns => profiles.push(p),
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
    }
    profiles.sort_by_key(|p| p.window.end_unix_ns);
    Ok((profiles, bad))
}

/// One syscall (or a whole service) over many windows.
#[derive(Clone, Debug)]
pub struct Aggregate {
    pub calls: u64,
    pub errors: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Kernel bucket counts (`hist::BUCKETS` long).
    pub buckets: Vec<u64>,
}

impl Default for Aggregate {
    fn default() -> Self {
        Self {
            calls: 0,
            errors: 0,
            total_ns: 0,
            max_ns: 0,
            buckets: vec![0; hist::BUCKETS],
        }
    }
}

impl Aggregate {
    fn add(&mut self, calls: u64, errors: u64, total_ns: u64, max_ns: u64, buckets: &[(u64, u64)]) {
        self.calls += calls;
        self.errors += errors;
        self.total_ns += total_ns;
        self.max_ns = self.max_ns.max(max_ns);
        for &(upper, n) in buckets {
            let i = usize::try_from(bucket_index(upper))
                .unwrap_or(0)
                .min(hist::BUCKETS - 1);
            if let Some(slot) = self.buckets.get_mut(i) {
                *slot += n;
            }
        }
    }

    /// A quantile of the merged histogram, in ns.
    pub fn quantile(&self, q: f64) -> u64 {
        histogram::quantile(&self.buckets, q, self.max_ns).unwrap_or(0)
    }

    /// Failed calls per call, 0 when there were no calls.
    pub fn error_ratio(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.errors as f64 / self.calls as f64
        }
    }
}

/// One service over the report's windows.
#[derive(Clone, Debug, Default)]
pub struct ServiceSummary {
    pub windows: u64,
    pub max_processes: usize,
    pub all: Aggregate,
    pub syscalls: BTreeMap<String, Aggregate>,
    pub errors: BTreeMap<(String, String), u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub windows: u64,
    pub first_start_ns: u64,
    pub last_end_ns: u64,
    /// Sum of the windows' durations.
    pub covered_ns: u64,
    pub dropped: BTreeMap<String, u64>,
    pub services: BTreeMap<String, ServiceSummary>,
}

/// Adds up the windows, for every service or only `service`.
pub fn summarise(profiles: &[Profile], service: Option<&str>) -> Summary {
    let mut s = Summary {
        first_start_ns: profiles.first().map_or(0, |p| p.window.start_unix_ns),
        last_end_ns: profiles.last().map_or(0, |p| p.window.end_unix_ns),
        ..Summary::default()
    };
    for p in profiles {
        s.windows += 1;
        s.covered_ns += p.window.duration_ns;
        for (reason, &n) in &p.agent.dropped {
            *s.dropped.entry(reason.clone()).or_default() += n;
        }
        for svc in p
            .services
            .iter()
            .filter(|svc| service.is_none_or(|name| svc.name == name))
        {
            let out = s.services.entry(svc.name.clone()).or_default();
            out.windows += 1;
            out.max_processes = out.max_processes.max(svc.pids.len());
            for sc in &svc.syscalls {
                out.all
                    .add(sc.count, sc.errors, sc.total_ns, sc.max_ns, &sc.buckets);
                out.syscalls.entry(sc.name.clone()).or_default().add(
                    sc.count,
                    sc.errors,
                    sc.total_ns,
                    sc.max_ns,
                    &sc.buckets,
                );
            }
            for e in &svc.errors {
                *out.errors
                    .entry((e.syscall.clone(), e.errno.clone()))
                    .or_default() += e.count;
            }
        }
    }
    s
}

/// A duration in ns for a person: "840 ns", "12.3 µs", "1.05 ms", "2.50 s".
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{:.1} µs", v / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2} ms", v / 1e6)
    } else {
        format!("{:.2} s", v / 1e9)
    }
}

fn fmt_time(ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// The report as text; `top` rows per table.
pub fn text(s: &Summary, top: usize) -> String {
    let mut out = String::new();
    let secs = s.covered_ns as f64 / 1e9;
    let _ = writeln!(
        out,
        "crmprof report: {} windows covering {:.0} s, {} to {}; {} services",
        s.windows,
        secs,
        fmt_time(s.first_start_ns),
        fmt_time(s.last_end_ns),
        s.services.len()
    );
    let lost: Vec<String> = s
        .dropped
        .iter()
        .filter(|&(_, &n)| n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "events lost: {}",
        if lost.is_empty() {
            "none".to_owned()
        } else {
            lost.join(", ")
        }
    );
    let mut services: Vec<(&String, &ServiceSummary)> = s.services.iter().collect();
    services.sort_by(|a, b| b.1.all.total_ns.cmp(&a.1.all.total_ns).then(a.0.cmp(b.0)));
    for (name, svc) in services {
        let rate = if secs > 0.0 {
            svc.all.calls as f64 / secs
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "\n{name}: {} calls ({rate:.1}/s), {:.2}% failed, {} in syscalls, p50 {} p99 {}, \
             up to {} processes, in {} of {} windows",
            svc.all.calls,
            svc.all.error_ratio() * 100.0,
            fmt_ns(svc.all.total_ns),
            fmt_ns(svc.all.quantile(0.5)),
            fmt_ns(svc.all.quantile(0.99)),
            svc.max_processes,
            svc.windows,
            s.windows
        );
        let mut syscalls: Vec<(&String, &Aggregate)> = svc.syscalls.iter().collect();
        syscalls.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
        if !syscalls.is_empty() {
            let _ = writeln!(
                out,
                "  {:<18} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
                "syscall", "calls", "errors", "total", "p50", "p99", "max"
            );
        }
        for (sc, a) in syscalls.into_iter().take(top) {
            let _ = writeln!(
                out,
                "  {:<18} {:>10} {:>8} {:>10} {:>10} {:>10} {:>10}",
                sc,
                a.calls,
                a.errors,
                fmt_ns(a.total_ns),
                fmt_ns(a.quantile(0.5)),
                fmt_ns(a.quantile(0.99)),
                fmt_ns(a.max_ns)
            );
        }
        let mut errors: Vec<(&(String, String), &u64)> = svc.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if !errors.is_empty() {
            let list: Vec<String> = errors
                .into_iter()
                .take(top)
                .map(|((sc, errno), n)| format!("{sc} {errno} ×{n}"))
                .collect();
            let _ = writeln!(out, "  errors: {}", list.join(", "));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::profile::{
        Agent, ErrorProfile, Host, Profile, SCHEMA, ServiceProfile, SyscallProfile, Window,
    };

    /// A profile with one service making `calls` calls of about 1 ms, `errors` failing.
    pub fn profile(start_s: u64, service: &str, calls: u64, errors: u64) -> Profile {
        let bucket = hist::bucket(1_050_000);
        let upper = hist::upper_bound(bucket).ceil() as u64;
        Profile {
            schema: SCHEMA.to_owned(),
            host: Host {
                hostname: "h".to_owned(),
                kernel: "6.18".to_owned(),
                cpus: 2,
                usage: Default::default(),
            },
            window: Window {
                start_unix_ns: start_s * 1_000_000_000,
                end_unix_ns: (start_s + 10) * 1_000_000_000,
                duration_ns: 10_000_000_000,
                syscall_probe_ns: 10_000_000_000,
                socket_receive_probe_ns: 10_000_000_000,
            },
            agent: Agent {
                version: "0".to_owned(),
                probes: BTreeMap::new(),
                dropped: BTreeMap::from([("x".to_owned(), 1)]),
                tracking: BTreeMap::new(),
            },
            services: vec![ServiceProfile {
                name: service.to_owned(),
                pids: vec![1, 2],
                syscalls: vec![SyscallProfile {
                    name: "read".to_owned(),
                    nr: 0,
                    count: calls,
                    seen: calls,
                    errors,
                    timed: calls,
                    total_ns: calls * 1_050_000,
                    p50_ns: 1_050_000,
                    p90_ns: 1_050_000,
                    p99_ns: 1_050_000,
                    max_ns: 1_060_000,
                    buckets: vec![(upper, calls)],
                }],
                errors: if errors > 0 {
                    vec![ErrorProfile {
                        syscall: "read".to_owned(),
                        errno: "EAGAIN".to_owned(),
                        count: errors,
                        seen: errors,
                    }]
                } else {
                    vec![]
                },
                ..ServiceProfile::default()
            }],
        }
    }

    #[test]
    fn summary_adds_windows_and_merges_histograms() {
        let profiles = [
            profile(0, "nginx", 100, 10),
            profile(10, "nginx", 300, 0),
            profile(20, "redis", 5, 0),
        ];
        let s = summarise(&profiles, Some("nginx"));
        assert_eq!(s.windows, 3);
        assert_eq!(s.dropped.get("x"), Some(&3));
        assert_eq!(s.services.len(), 1);
        let nginx = &s.services["nginx"];
        assert_eq!(
            (nginx.windows, nginx.all.calls, nginx.all.errors),
            (2, 400, 10)
        );
        let p99 = nginx.all.quantile(0.99);
        assert!((1_000_000..=1_060_000).contains(&p99), "p99 {p99}");
        assert_eq!(
            nginx.errors.get(&("read".to_owned(), "EAGAIN".to_owned())),
            Some(&10)
        );
        let t = text(&s, 5);
        assert!(t.contains("nginx: 400 calls (13.3/s), 2.50% failed"), "{t}");
        assert!(t.contains("read EAGAIN ×10"), "{t}");
    }
}
