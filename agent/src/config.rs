//! The agent's configuration: TOML, every key optional, unknown keys rejected with the file and
//! line. The defaults are the embedded configuration `crmprof run` uses without `--config`;
//! `deploy/crmprof.toml` is the commented example.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

/// The default `syscall_sample` (see [`Config::syscall_sample`]), which `crmprof check` also
/// loads the probes with.
pub const DEFAULT_SYSCALL_SAMPLE: u32 = 32;

/// `crmprof.toml`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How often a profile is cut and shipped. Default 10 s: short enough to see an incident
    /// while it happens, long enough that percentiles rest on enough samples.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// Where profile documents are appended as JSON lines.
    pub data_dir: PathBuf,
    /// Most services tracked at once; more are counted in `dropped.services_over_limit`.
    pub max_services: usize,
    /// Most threads of selected services the scheduler probes track in their hash map: those
    /// whose tid's slot another thread holds (only where `kernel.pid_max` exceeds 65536; every
    /// tid has a slot of its own below that). More are counted in `dropped.threads_map_full`.
    pub max_threads: u32,
    /// Time one syscall in this many for the latency histograms (a power of two; 1 times every
    /// call). Counts and errors are exact either way. Default 32: a timed call costs ~185 ns
    /// more than an untimed one here (two clock reads and a hash update), against ~14 ns that
    /// the probes add to an untimed call over the empty floor; one in 8 spent 60% of the
    /// probes' added cost on the clock, one in 32 spends 30% (docs/probes.md).
    pub syscall_sample: u32,
    /// The share of each window `crmprof run` keeps the syscall probes attached, in (0, 1];
    /// 1 keeps them attached. While attached they cost every process on the host, selected or
    /// not, ~120 ns per syscall (the kernel's tracing slow path); detached, nothing. Counts
    /// and errors seen while attached are scaled to the window (`seen` keeps the raw figure).
    /// Default 0.1: the first second of a 10 s window. `crmprof profile` always keeps them
    /// attached.
    pub syscall_duty_cycle: f64,
    /// The share of each window `crmprof run` keeps the socket receive probe
    /// (`sock_recv_length`) attached, in (0, 1]; 1 keeps it attached. It runs on every socket
    /// read of the host, the commonest call of a busy server; detached, it costs nothing.
    /// Received bytes seen while attached are scaled to the window. Sent bytes stay exact,
    /// and so do the network waits, which need the sends only. Default 0.1, as the syscall
    /// probes. `crmprof profile` always keeps it attached.
    pub socket_receive_duty_cycle: f64,
    /// Probe groups not to load (`process`, `sched`, `syscalls`, `net`, `disk`): each is
    /// reported as disabled. Without `sched`, the syscall probes look the task up per call,
    /// which costs more per syscall; without `syscalls`, nothing runs per syscall and waits are
    /// still classified, but syscall counts and errors are not collected (docs/probes.md).
    pub disable_groups: Vec<String>,
    /// Kernel BTF to read struct offsets from.
    pub btf_path: PathBuf,
    pub discovery: Discovery,
    /// Explicit services, checked first, in order.
    #[serde(rename = "service")]
    pub services: Vec<ServiceRule>,
    /// Where profiles go besides the data directory: `[export]`.
    pub export: ExportConfig,
}

/// `[export]`: local JSON lines, `/metrics`, remote sinks and their spools.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// `profiles.jsonl` is rotated (to `.1`, `.2`, …) when a line would take it past this size.
    /// Default 64 MiB: about a day of a busy host at a 10 s interval.
    #[serde(with = "byte_size")]
    pub jsonl_max_bytes: u64,
    /// Rotated files kept besides the current one. Default 4.
    pub jsonl_keep: u32,
    /// Bytes each remote sink may hold on disk while its receiver is away (under
    /// `DATA_DIR/spool/<sink>/`); beyond it the oldest batches are dropped and counted.
    /// Default 512 MiB.
    #[serde(with = "byte_size")]
    pub spool_max_bytes: u64,
    /// First retry delay after a failed send; doubles per failure, with jitter. Default 1 s.
    #[serde(with = "humantime_serde_compat")]
    pub retry_initial: Duration,
    /// Longest retry delay. Default 30 s: a receiver back from an outage gets the backlog
    /// within half a minute.
    #[serde(with = "humantime_serde_compat")]
    pub retry_max: Duration,
    /// Also send each profile document as an OTLP log record (`/v1/logs`). Default true.
    pub otlp_logs: bool,
    pub prometheus: PrometheusConfig,
    /// Prometheus remote-write; off unless `url` is set.
    pub remote_write: Option<HttpSinkConfig>,
    /// OTLP/HTTP; off unless set. `url` is the base (`http://127.0.0.1:4318`): `/v1/metrics`
    /// and `/v1/logs` are appended.
    pub otlp: Option<HttpSinkConfig>,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            jsonl_max_bytes: 64 << 20,
            jsonl_keep: 4,
            spool_max_bytes: 512 << 20,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            otlp_logs: true,
            prometheus: PrometheusConfig::default(),
            remote_write: None,
            otlp: None,
        }
    }
}

/// `[export.prometheus]`: the `/metrics` endpoint.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Serve `/metrics`. Default true.
    pub enabled: bool,
    /// Listen address. Default 127.0.0.1:9464 (loopback: profiles name processes).
    pub listen: SocketAddr,
    /// `/metrics` is plain HTTP: a non-loopback `listen` needs this explicit opt-in (for a
    /// scraper on another host or pod, on a network you trust).
    pub allow_non_loopback: bool,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464),
            allow_non_loopback: false,
        }
    }
}

/// A remote HTTP sink: `[export.remote_write]` or `[export.otlp]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// `https://…`; `http://` only to a loopback address or with `allow_plain_http`.
    pub url: String,
    /// A file holding the bearer token (`Authorization: Bearer …`), read at every send so a
    /// rotated token is picked up. The token is never logged.
    pub bearer_token_file: Option<PathBuf>,
    /// Extra request headers (`X-Scope-OrgID = "tenant"`).
    pub headers: BTreeMap<String, String>,
    /// PEM bundle of CAs to trust besides the system's.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) and its key, for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    /// Allow `http://` to a non-loopback host (profiles then cross the network in clear text).
    pub allow_plain_http: bool,
    /// Per-request timeout, connection included. Default 10 s.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            bearer_token_file: None,
            headers: BTreeMap::new(),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            allow_plain_http: false,
            timeout: Duration::from_secs(10),
        }
    }
}

impl HttpSinkConfig {
    /// Checks the URL, the plain-HTTP rule and the certificate pair; `what` names the section.
    pub fn validate(&self, what: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("[{what}] url {:?} is not a URL: {e}", self.url))?;
        match url.scheme() {
            "https" => {}
            "http" => {
                let host = url.host_str().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let loopback =
                    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                if !loopback && !self.allow_plain_http {
                    return Err(format!(
                        "[{what}] url {} is plain http to a non-loopback host; use https, or \
                         set allow_plain_http = true to send profiles in clear text",
                        self.url
                    ));
                }
            }
            other => {
                return Err(format!(
                    "[{what}] url {}: scheme {other:?} is not http or https",
                    self.url
                ));
            }
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return Err(format!(
                "[{what}] client_cert_file and client_key_file go together; set both or neither"
            ));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(format!(
                "[{what}] timeout {:?} is below 100ms",
                self.timeout
            ));
        }
        Ok(url)
    }
}

/// `[discovery]`: what becomes a service without an explicit rule.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Discovery {
    /// Profile every process: systemd units and containers as services, well-known servers by
    /// name, the rest grouped by executable. With `false`, only `[[service]]` rules select.
    pub auto: bool,
    /// Profile kernel threads too (grouped as "kernel").
    pub kernel_threads: bool,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            auto: true,
            kernel_threads: false,
        }
    }
}

/// `[[service]]`: a named service and how to recognise its processes. Every given matcher must
/// match; children of a matched process join the service too.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    pub name: Spanned<String>,
    /// The process name (`/proc/PID/comm`, at most 15 characters).
    pub comm: Option<String>,
    /// The executable's full path.
    pub exe: Option<PathBuf>,
    /// A regular expression searched in the command line (arguments joined by spaces).
    pub cmdline: Option<Spanned<String>>,
    /// A TCP port the process listens on.
    pub port: Option<u16>,
    /// The user (name or uid) the process runs as.
    pub user: Option<String>,
    /// A regular expression searched in the process's cgroup paths.
    pub cgroup: Option<Spanned<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            data_dir: PathBuf::from("/var/lib/crmprof"),
            max_services: 256,
            max_threads: 16384,
            syscall_sample: DEFAULT_SYSCALL_SAMPLE,
            syscall_duty_cycle: 0.1,
            socket_receive_duty_cycle: 0.1,
            disable_groups: Vec::new(),
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            discovery: Discovery::default(),
            services: Vec::new(),
            export: ExportConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// A `[[service]]` rule ready to match: regexes compiled.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub name: String,
    pub comm: Option<String>,
    pub exe: Option<PathBuf>,
    pub cmdline: Option<Regex>,
    pub port: Option<u16>,
    pub uid: Option<u32>,
    pub cgroup: Option<Regex>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let line_of = |offset: usize| {
            text.get(..offset)
                .map_or(1, |before| before.matches('\n').count() + 1)
        };
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            line: e.span().map_or(1, |span| line_of(span.start)),
            message: e.message().to_owned(),
        })?;
        let invalid = |line: usize, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line,
            message,
        };
        let key_line = |key: &str| {
            text.lines()
                .position(|l| l.trim_start().starts_with(key))
                .map_or(1, |i| i + 1)
        };
        if config.interval < Duration::from_secs(1) {
            return Err(invalid(
                key_line("interval"),
                format!("interval {:?} is below the 1s minimum", config.interval),
            ));
        }
        if config.max_services == 0 || config.max_services > 65_000 {
            return Err(invalid(
                key_line("max_services"),
                format!("max_services {} is outside 1..=65000", config.max_services),
            ));
        }
        if config.max_threads < 64 {
            return Err(invalid(
                key_line("max_threads"),
                format!(
                    "max_threads {} is below the minimum of 64",
                    config.max_threads
                ),
            ));
        }
        for (key, share, what) in [
            (
                "syscall_duty_cycle",
                config.syscall_duty_cycle,
                "the syscall probes are",
            ),
            (
                "socket_receive_duty_cycle",
                config.socket_receive_duty_cycle,
                "the socket receive probe is",
            ),
        ] {
            if !(share > 0.0 && share <= 1.0) {
                return Err(invalid(
                    key_line(key),
                    format!(
                        "{key} {share} is outside (0, 1]: it is the share of each window {what} \
                         attached (1 keeps it attached)"
                    ),
                ));
            }
        }
        if !config.syscall_sample.is_power_of_two() || config.syscall_sample > 1024 {
            return Err(invalid(
                key_line("syscall_sample"),
                format!(
                    "syscall_sample {} is not a power of two in 1..=1024",
                    config.syscall_sample
                ),
            ));
        }
        if let Some(unknown) = config
            .disable_groups
            .iter()
            .find(|g| !crate::probes::GROUPS.iter().any(|known| known.name == *g))
        {
            let known: Vec<&str> = crate::probes::GROUPS.iter().map(|g| g.name).collect();
            return Err(invalid(
                key_line("disable_groups"),
                format!(
                    "disable_groups: no probe group {unknown:?}; the groups are {}",
                    known.join(", ")
                ),
            ));
        }
        let export = &config.export;
        if export.jsonl_max_bytes < 4096 {
            return Err(invalid(
                key_line("jsonl_max_bytes"),
                format!(
                    "[export] jsonl_max_bytes {} is below 4096",
                    export.jsonl_max_bytes
                ),
            ));
        }
        if export.spool_max_bytes < 1 << 20 {
            return Err(invalid(
                key_line("spool_max_bytes"),
                format!(
                    "[export] spool_max_bytes {} is below 1 MiB",
                    export.spool_max_bytes
                ),
            ));
        }
        if export.retry_initial < Duration::from_millis(10)
            || export.retry_max < export.retry_initial
        {
            return Err(invalid(
                key_line("retry_"),
                format!(
                    "[export] retry_initial {:?} must be at least 10ms and at most retry_max {:?}",
                    export.retry_initial, export.retry_max
                ),
            ));
        }
        let prom = &export.prometheus;
        if prom.enabled && !prom.listen.ip().is_loopback() && !prom.allow_non_loopback {
            return Err(invalid(
                key_line("listen"),
                format!(
                    "[export.prometheus] listen {} is not a loopback address and /metrics has no \
                     TLS; set allow_non_loopback = true to serve it there anyway",
                    prom.listen
                ),
            ));
        }
        if let Some(sink) = &export.remote_write {
            sink.validate("export.remote_write")
                .map_err(|m| invalid(key_line("[export.remote_write]"), m))?;
        }
        if let Some(sink) = &export.otlp {
            sink.validate("export.otlp")
                .map_err(|m| invalid(key_line("[export.otlp]"), m))?;
        }
        // Compiling checks every regex and user, with the line they are on.
        config.compiled_rules_with(&|span: std::ops::Range<usize>, message| {
            invalid(line_of(span.start), message)
        })?;
        Ok(config)
    }

    /// The `[[service]]` rules, compiled. Infallible for a config that came from [`Config::parse`].
    pub fn compiled_rules(&self) -> Vec<CompiledRule> {
        self.compiled_rules_with(&|_, message| ConfigError::Invalid {
            path: PathBuf::new(),
            line: 0,
            message,
        })
        .unwrap_or_default()
    }

    fn compiled_rules_with(
        &self,
        invalid: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    ) -> Result<Vec<CompiledRule>, ConfigError> {
        let regex = |field: &Option<Spanned<String>>, what: &str| -> Result<_, ConfigError> {
            field
                .as_ref()
                .map(|r| {
                    Regex::new(r.get_ref()).map_err(|e| {
                        let first = e.to_string().lines().last().unwrap_or_default().to_owned();
                        invalid(
                            r.span(),
                            format!("{what} regex {:?} does not compile: {first}", r.get_ref()),
                        )
                    })
                })
                .transpose()
        };
        let mut out = Vec::new();
        for rule in &self.services {
            let name = rule.name.get_ref();
            if name.is_empty() {
                return Err(invalid(
                    rule.name.span(),
                    "a service name cannot be empty".into(),
                ));
            }
            if rule.comm.is_none()
                && rule.exe.is_none()
                && rule.cmdline.is_none()
                && rule.port.is_none()
                && rule.user.is_none()
                && rule.cgroup.is_none()
            {
                return Err(invalid(
                    rule.name.span(),
                    format!(
                        "service {name:?} has no matcher; give at least one of comm, exe, \
                         cmdline, port, user, cgroup"
                    ),
                ));
            }
            if let Some(comm) = &rule.comm
                && comm.len() > 15
            {
                return Err(invalid(
                    rule.name.span(),
                    format!("comm {comm:?} is longer than the kernel's 15 characters"),
                ));
            }
            let uid = match &rule.user {
                None => None,
                Some(user) => Some(resolve_user(user).ok_or_else(|| {
                    invalid(
                        rule.name.span(),
                        format!("user {user:?} does not exist here"),
                    )
                })?),
            };
            out.push(CompiledRule {
                name: name.clone(),
                comm: rule.comm.clone(),
                exe: rule.exe.clone(),
                cmdline: regex(&rule.cmdline, "cmdline")?,
                port: rule.port,
                uid,
                cgroup: regex(&rule.cgroup, "cgroup")?,
            });
        }
        Ok(out)
    }
}

/// A user name or numeric uid, resolved through /etc/passwd.
fn resolve_user(user: &str) -> Option<u32> {
    if let Ok(uid) = user.parse() {
        return Some(uid);
    }
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == user).then(|| f.nth(1)?.parse().ok())?
        })
}

/// Sizes in the config: a number of bytes, or a string with a unit ("512MiB", "64 MB").
mod byte_size {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }

    pub fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: u64 = number.parse().ok()?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return None,
        };
        number.checked_mul(factor)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(s) => parse(&s).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid size {s:?} (try \"512MiB\" or a number of bytes)"
                ))
            }),
        }
    }
}

/// Durations in the config are human strings ("10s", "1m 30s").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("invalid duration {s:?}: {e} (try \"10s\")"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.toml"))
    }

    fn error(text: &str) -> String {
        parse(text).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = parse("").ok();
        assert_eq!(
            c.as_ref().map(|c| c.interval),
            Some(Duration::from_secs(10))
        );
        assert_eq!(c.map(|c| c.discovery), Some(Discovery::default()));
    }

    #[test]
    fn values_are_read() {
        let c = parse("interval = \"30s\"\nmax_services = 10\n").ok();
        assert_eq!(
            c.as_ref().map(|c| c.interval),
            Some(Duration::from_secs(30))
        );
        assert_eq!(c.map(|c| c.max_services), Some(10));
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let e = error("interval = \"10s\"\nbogus = 1\n");
        assert!(e.starts_with("test.toml:2:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
        let e = error("[[service]]\nname = \"a\"\ncomm = \"a\"\ncolour = \"red\"\n");
        assert!(e.starts_with("test.toml:4:") && e.contains("colour"), "{e}");
    }

    #[test]
    fn duty_cycles_are_shares_in_0_to_1() {
        let read = |c: &Config, key: &str| match key {
            "syscall_duty_cycle" => c.syscall_duty_cycle,
            _ => c.socket_receive_duty_cycle,
        };
        for key in ["syscall_duty_cycle", "socket_receive_duty_cycle"] {
            for (text, share) in [("1", 1.0), ("1.0", 1.0), ("0.25", 0.25)] {
                let c = parse(&format!("{key} = {text}\n")).ok();
                assert_eq!(c.map(|c| read(&c, key)), Some(share), "{key} = {text}");
            }
            for bad in ["0", "-0.5", "1.5", "nan"] {
                let e = error(&format!("interval = \"10s\"\n{key} = {bad}\n"));
                assert!(
                    e.starts_with("test.toml:2:")
                        && e.contains(key)
                        && e.contains("outside (0, 1]"),
                    "{key} = {bad}: {e}"
                );
            }
        }
    }

    /// The commented default configuration that `cargo xtask install` and the .deb ship.
    const SHIPPED: &str = include_str!("../../deploy/crmprof.toml");

    #[test]
    fn shipped_config_is_the_default() {
        assert_eq!(parse(SHIPPED).ok(), Some(Config::default()));
    }

    /// Uncommenting every `#key = value` line gives the defaults too: the file documents every
    /// key of [`Config`] with its real default value.
    #[test]
    fn shipped_config_documents_every_key_with_its_default() {
        // Section headers stay; `#key = value` lines (no space after '#') are the documented
        // defaults; `#   example` lines are prose and stay comments.
        let uncommented: String = SHIPPED
            .lines()
            .filter_map(|l| {
                if l.starts_with('[') {
                    Some(l)
                } else {
                    l.strip_prefix('#')
                        .filter(|l| l.starts_with(|c: char| c.is_ascii_lowercase()))
                        .filter(|l| l.contains(" = "))
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let config = parse(&uncommented);
        assert!(config.is_ok(), "{:?}\n{uncommented}", config.err());
        assert_eq!(config.ok(), Some(Config::default()), "{uncommented}");
        let keys: Vec<&str> = uncommented
            .lines()
            .filter(|l| !l.starts_with('['))
            .filter_map(|l| l.split(" = ").next())
            .collect();
        // Every field of Config, by name; a field added without documenting it fails here.
        let Config {
            interval: _,
            data_dir: _,
            max_services: _,
            max_threads: _,
            syscall_sample: _,
            syscall_duty_cycle: _,
            socket_receive_duty_cycle: _,
            disable_groups: _,
            btf_path: _,
            discovery:
                Discovery {
                    auto: _,
                    kernel_threads: _,
                },
            services: _,
            export:
                ExportConfig {
                    jsonl_max_bytes: _,
                    jsonl_keep: _,
                    spool_max_bytes: _,
                    retry_initial: _,
                    retry_max: _,
                    otlp_logs: _,
                    prometheus:
                        PrometheusConfig {
                            enabled: _,
                            listen: _,
                            allow_non_loopback: _,
                        },
                    remote_write: _,
                    otlp: _,
                },
        } = Config::default();
        assert_eq!(
            keys,
            [
                "interval",
                "data_dir",
                "max_services",
                "max_threads",
                "syscall_sample",
                "syscall_duty_cycle",
                "socket_receive_duty_cycle",
                "disable_groups",
                "btf_path",
                "auto",
                "kernel_threads",
                "jsonl_max_bytes",
                "jsonl_keep",
                "spool_max_bytes",
                "retry_initial",
                "retry_max",
                "otlp_logs",
                "enabled",
                "listen",
                "allow_non_loopback",
            ],
            "deploy/crmprof.toml documents these keys"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("interval = \"banana\"").is_err());
        assert!(error("interval = \"10ms\"").starts_with("test.toml:1:"));
        assert!(parse("max_services = 0").is_err());
        assert!(parse("syscall_sample = 3").is_err());
        assert!(error("disable_groups = [\"sched\", \"gpu\"]").contains("no probe group \"gpu\""));
        assert_eq!(
            parse("disable_groups = [\"disk\"]")
                .map(|c| c.disable_groups)
                .ok(),
            Some(vec!["disk".to_owned()])
        );
        assert!(parse("syscall_sample = 0").is_err());
        assert_eq!(
            parse("syscall_sample = 1").map(|c| c.syscall_sample).ok(),
            Some(1)
        );
        assert!(parse("max_services = \"many\"").is_err());
        assert!(error("x = = 1").starts_with("test.toml:1:"));
    }

    #[test]
    fn rules_compile_and_bad_regexes_name_the_line() {
        let ok = parse(
            "[[service]]\nname = \"api\"\ncmdline = \"gunicorn.*crm\"\n\n[[service]]\nname = \"web\"\nport = 8080\n",
        )
        .ok();
        let rules = ok.map(|c| c.compiled_rules()).unwrap_or_default();
        assert_eq!(rules.len(), 2);
        assert!(
            rules[0]
                .cmdline
                .as_ref()
                .is_some_and(|r| r.is_match("gunicorn app:crm"))
        );
        assert_eq!(rules[1].port, Some(8080));
        let e = error("[[service]]\nname = \"api\"\ncmdline = \"(unclosed\"\n");
        assert!(e.starts_with("test.toml:3:"), "{e}");
        assert!(e.contains("does not compile"), "{e}");
        let e = error("[[service]]\nname = \"api\"\n");
        assert!(e.contains("no matcher"), "{e}");
        assert!(
            error("[[service]]\nname = \"a\"\nuser = \"no-such-user-here\"\n")
                .contains("does not exist")
        );
    }

    #[test]
    fn export_section_is_read() {
        let c = parse(
            "[export]\nspool_max_bytes = \"64MiB\"\njsonl_max_bytes = 100000\n\
             retry_max = \"5s\"\n[export.prometheus]\nlisten = \"127.0.0.1:9999\"\n\
             [export.remote_write]\nurl = \"http://127.0.0.1:9090/api/v1/write\"\n\
             [export.otlp]\nurl = \"https://otel.example:4318\"\nbearer_token_file = \"/t\"\n\
             headers = { \"X-Scope-OrgID\" = \"a\" }\n",
        );
        let e = c.as_ref().map(|c| c.export.clone()).ok();
        assert_eq!(e.as_ref().map(|e| e.spool_max_bytes), Some(64 << 20));
        assert_eq!(e.as_ref().map(|e| e.jsonl_max_bytes), Some(100_000));
        assert_eq!(e.as_ref().map(|e| e.prometheus.listen.port()), Some(9999));
        let otlp = e.and_then(|e| e.otlp);
        assert_eq!(
            otlp.as_ref()
                .and_then(|o| o.headers.get("X-Scope-OrgID").cloned()),
            Some("a".to_owned())
        );
        assert_eq!(otlp.map(|o| o.timeout), Some(Duration::from_secs(10)));
    }

    #[test]
    fn metrics_off_loopback_needs_consent() {
        let e = error("[export.prometheus]\nlisten = \"0.0.0.0:9464\"\n");
        assert!(
            e.starts_with("test.toml:2:") && e.contains("allow_non_loopback"),
            "{e}"
        );
        assert!(
            parse("[export.prometheus]\nlisten = \"0.0.0.0:9464\"\nallow_non_loopback = true\n")
                .is_ok()
        );
        assert!(parse("[export.prometheus]\nlisten = \"[::1]:9464\"\n").is_ok());
    }

    #[test]
    fn plain_http_needs_loopback_or_consent() {
        let remote = |url: &str, extra: &str| {
            parse(&format!("[export.otlp]\nurl = \"{url}\"\n{extra}"))
                .err()
                .map(|e| e.to_string())
        };
        assert_eq!(remote("http://127.0.0.1:4318", ""), None);
        assert_eq!(remote("http://localhost:4318", ""), None);
        assert_eq!(remote("http://[::1]:4318", ""), None);
        assert_eq!(remote("https://collector:4318", ""), None);
        let e = remote("http://collector:4318", "").unwrap_or_default();
        assert!(e.contains("allow_plain_http"), "{e}");
        assert_eq!(
            remote("http://collector:4318", "allow_plain_http = true"),
            None
        );
        assert!(remote("ftp://x", "").is_some());
        assert!(remote("https://x", "client_cert_file = \"/c\"").is_some());
        assert!(parse("[export]\nspool_max_bytes = \"lots\"").is_err());
        assert!(parse("[export]\nbogus = 1").is_err());
        assert!(parse("[export.otlp]\nurl = \"https://x\"\nbogus = 1").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(byte_size::parse("512MiB"), Some(512 << 20));
        assert_eq!(byte_size::parse("64 MB"), Some(64_000_000));
        assert_eq!(byte_size::parse("4096"), Some(4096));
        assert_eq!(byte_size::parse("1GiB"), Some(1 << 30));
        assert_eq!(byte_size::parse("1TB"), None);
        assert_eq!(byte_size::parse("MiB"), None);
    }
}
