//! The agent's configuration: TOML, every key optional, unknown keys rejected. The defaults are
//! the embedded configuration `crmprof run` uses without `--config`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

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
    /// Kernel BTF to read struct offsets from.
    pub btf_path: PathBuf,
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
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464),
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

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            data_dir: PathBuf::from("/var/lib/crmprof"),
            max_services: 256,
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
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
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
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
        let config: Self = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |span| {
                text.get(..span.start)
                    .map_or(1, |before| before.matches('\n').count() + 1)
            });
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                message: e.message().to_owned(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        if self.interval < Duration::from_secs(1) {
            return Err(invalid(format!(
                "interval {:?} is below the 1s minimum",
                self.interval
            )));
        }
        if self.max_services == 0 || self.max_services > 65_000 {
            return Err(invalid(format!(
                "max_services {} is outside 1..=65000",
                self.max_services
            )));
        }
        let export = &self.export;
        if export.jsonl_max_bytes < 4096 {
            return Err(invalid(format!(
                "[export] jsonl_max_bytes {} is below 4096",
                export.jsonl_max_bytes
            )));
        }
        if export.spool_max_bytes < 1 << 20 {
            return Err(invalid(format!(
                "[export] spool_max_bytes {} is below 1 MiB",
                export.spool_max_bytes
            )));
        }
        if export.retry_initial < Duration::from_millis(10)
            || export.retry_max < export.retry_initial
        {
            return Err(invalid(format!(
                "[export] retry_initial {:?} must be at least 10ms and at most retry_max {:?}",
                export.retry_initial, export.retry_max
            )));
        }
        if let Some(sink) = &export.remote_write {
            sink.validate("export.remote_write").map_err(invalid)?;
        }
        if let Some(sink) = &export.otlp {
            sink.validate("export.otlp").map_err(invalid)?;
        }
        Ok(())
    }
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

    #[test]
    fn empty_file_is_the_default() {
        assert_eq!(parse("").ok(), Some(Config::default()));
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
        let e = parse("interval = \"10s\"\nbogus = 1\n")
            .err()
            .map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(e.starts_with("test.toml:2:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("interval = \"banana\"").is_err());
        assert!(parse("interval = \"10ms\"").is_err());
        assert!(parse("max_services = 0").is_err());
        assert!(parse("max_services = \"many\"").is_err());
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
