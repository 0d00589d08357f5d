//! `crmprof check-service`: a Nagios-compatible plugin (also run by Icinga and Zabbix). It
//! reads the data directory, prints one status line with performance data and returns
//! 0 OK, 1 WARNING, 2 CRITICAL or 3 UNKNOWN.
//!
//! Thresholds use the plugin guidelines' range syntax: `10` alerts above 10 (or below 0),
//! `10:` below 10, `~:10` above 10, `10:20` outside 10..20, `@10:20` inside it.

use std::fmt::Write as _;

use super::report::{Aggregate, ServiceSummary, Summary};

/// What the thresholds apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// 99th percentile syscall latency, in milliseconds.
    P99,
    /// Failed syscalls, percent of calls.
    ErrorRatio,
    /// Syscalls per second.
    Calls,
}

/// A threshold range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    pub start: f64,
    pub end: f64,
    /// `@`: alert inside the range instead of outside.
    pub inside: bool,
}

impl Range {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid threshold {s:?}: write 10, 10:, ~:10, 10:20 or @10:20");
        let (inside, body) = match s.strip_prefix('@') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let number = |t: &str| t.trim().parse::<f64>().map_err(|_| bad());
        let (start, end) = match body.split_once(':') {
            None => (0.0, number(body)?),
            Some((a, b)) => {
                let start = if a.trim() == "~" {
                    f64::NEG_INFINITY
                } else if a.trim().is_empty() {
                    0.0
                } else {
                    number(a)?
                };
                let end = if b.trim().is_empty() {
                    f64::INFINITY
                } else {
                    number(b)?
                };
                (start, end)
            }
        };
        if start > end {
            return Err(bad());
        }
        Ok(Self { start, end, inside })
    }

    pub fn alerts(&self, v: f64) -> bool {
        let within = v >= self.start && v <= self.end;
        if self.inside { within } else { !within }
    }

    /// The range as perfdata writes it.
    fn perf(&self) -> String {
        let num = |v: f64| {
            if v.is_infinite() {
                String::new()
            } else {
                format!("{v}")
            }
        };
        let prefix = if self.inside { "@" } else { "" };
        if self.start == 0.0 && !self.inside {
            return format!("{prefix}{}", num(self.end));
        }
        let start = if self.start == f64::NEG_INFINITY {
            "~".to_owned()
        } else {
            num(self.start)
        };
        format!("{prefix}{start}:{}", num(self.end))
    }
}

/// The plugin's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
    pub code: u8,
    pub line: String,
}

impl Status {
    pub fn unknown(why: &str) -> Self {
        Self {
            code: 3,
            line: format!("CRMPROF UNKNOWN - {why}"),
        }
    }
}

const NAMES: [&str; 4] = ["OK", "WARNING", "CRITICAL", "UNKNOWN"];

fn value(metric: Metric, a: &Aggregate, secs: f64) -> f64 {
    match metric {
        Metric::P99 => a.quantile(0.99) as f64 / 1e6,
        Metric::ErrorRatio => a.error_ratio() * 100.0,
        Metric::Calls => {
            if secs > 0.0 {
                a.calls as f64 / secs
            } else {
                0.0
            }
        }
    }
}

/// Evaluates the service in `summary` (already limited to the period and the service).
pub fn evaluate(
    summary: &Summary,
    service: &str,
    syscall: Option<&str>,
    metric: Metric,
    warn: Option<Range>,
    crit: Option<Range>,
) -> Status {
    if summary.windows == 0 {
        return Status::unknown("no profile in the period; is `crmprof run` running?");
    }
    let Some(svc): Option<&ServiceSummary> = summary.services.get(service) else {
        return Status::unknown(&format!(
            "service {service:?} is not in the last {} windows",
            summary.windows
        ));
    };
    let empty = Aggregate::default();
    let a = match syscall {
        Some(name) => svc.syscalls.get(name).unwrap_or(&empty),
        None => &svc.all,
    };
    let secs = summary.covered_ns as f64 / 1e9;
    let v = value(metric, a, secs);
    let code = if crit.is_some_and(|r| r.alerts(v)) {
        2
    } else if warn.is_some_and(|r| r.alerts(v)) {
        1
    } else {
        0
    };
    let what = syscall.map_or_else(|| service.to_owned(), |s| format!("{service} {s}"));
    let p99 = value(Metric::P99, a, secs);
    let errors = value(Metric::ErrorRatio, a, secs);
    let calls = value(Metric::Calls, a, secs);
    let range = |r: Option<Range>| r.map(|r| r.perf()).unwrap_or_default();
    let thresholds = |m: Metric| {
        if m == metric {
            format!("{};{}", range(warn), range(crit))
        } else {
            ";".to_owned()
        }
    };
    let mut line = format!(
        "CRMPROF {} - {what}: p99 {p99:.3} ms, {errors:.2}% errors, {calls:.1} calls/s over {} \
         windows ({secs:.0} s)",
        NAMES[usize::from(code)],
        summary.windows,
    );
    let _ = write!(
        line,
        " | p99={p99:.3}ms;{};0 error_ratio={errors:.3}%;{};0;100 calls_per_second={calls:.2};{};0",
        thresholds(Metric::P99),
        thresholds(Metric::ErrorRatio),
        thresholds(Metric::Calls),
    );
    Status { code, line }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::report::{summarise, tests::profile};

    #[test]
    fn ranges_follow_the_plugin_guidelines() {
        let r = |s: &str| {
            Range::parse(s).unwrap_or(Range {
                start: f64::NAN,
                end: f64::NAN,
                inside: false,
            })
        };
        assert!(r("10").alerts(11.0) && r("10").alerts(-1.0) && !r("10").alerts(10.0));
        assert!(r("10:").alerts(9.0) && !r("10:").alerts(1e9));
        assert!(r("~:10").alerts(11.0) && !r("~:10").alerts(-1e9));
        assert!(r("10:20").alerts(21.0) && !r("10:20").alerts(15.0));
        assert!(r("@10:20").alerts(15.0) && !r("@10:20").alerts(21.0));
        assert!(Range::parse("20:10").is_err());
        assert!(Range::parse("ten").is_err());
        assert_eq!(r("5").perf(), "5");
        assert_eq!(r("~:10").perf(), "~:10");
        assert_eq!(r("@1:2").perf(), "@1:2");
    }

    #[test]
    fn status_and_exit_code_follow_the_thresholds() {
        let profiles = [profile(0, "nginx", 100, 10), profile(10, "nginx", 100, 0)];
        let s = summarise(&profiles, Some("nginx"));
        let warn = Range::parse("1").ok();
        let crit = Range::parse("2").ok();
        // p99 of 1 ms calls is about 1.05 ms: above 1 (warn), not above 2.
        let st = evaluate(&s, "nginx", None, Metric::P99, warn, crit);
        assert_eq!(st.code, 1, "{}", st.line);
        assert!(
            st.line.starts_with("CRMPROF WARNING - nginx: p99 1.0"),
            "{}",
            st.line
        );
        assert!(st.line.contains("| p99=1.0"), "{}", st.line);
        assert!(
            st.line.contains("ms;1;2;0 error_ratio=5.000%;;;0;100"),
            "{}",
            st.line
        );
        // 10 of 200 calls failed: 5%.
        let st = evaluate(
            &s,
            "nginx",
            None,
            Metric::ErrorRatio,
            Range::parse("1").ok(),
            Range::parse("4").ok(),
        );
        assert_eq!(st.code, 2, "{}", st.line);
        let st = evaluate(&s, "nginx", Some("read"), Metric::Calls, None, None);
        assert_eq!(st.code, 0, "{}", st.line);
        assert!(st.line.contains("10.0 calls/s"), "{}", st.line);
        let st = evaluate(&s, "redis", None, Metric::P99, warn, crit);
        assert_eq!(st.code, 3, "{}", st.line);
        let st = evaluate(
            &summarise(&[], None),
            "nginx",
            None,
            Metric::P99,
            warn,
            crit,
        );
        assert_eq!(st.code, 3, "{}", st.line);
    }
}
