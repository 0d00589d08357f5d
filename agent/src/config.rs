//! The agent's configuration: TOML, every key optional, unknown keys rejected with the file and
//! line. The defaults are the embedded configuration `crmprof run` uses without `--config`;
//! `deploy/crmprof.toml` is the commented example.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

/// `crmprof.toml`.
#[derive(Clone, Debug, Deserialize)]
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
    /// Most threads of selected services tracked by the scheduler probes at once; more are
    /// counted in `dropped.threads_map_full`.
    pub max_threads: u32,
    /// Kernel BTF to read struct offsets from.
    pub btf_path: PathBuf,
    pub discovery: Discovery,
    /// Explicit services, checked first, in order.
    #[serde(rename = "service")]
    pub services: Vec<ServiceRule>,
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
#[derive(Clone, Debug, Deserialize)]
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
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            discovery: Discovery::default(),
            services: Vec::new(),
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
    fn bad_values_are_rejected() {
        assert!(parse("interval = \"banana\"").is_err());
        assert!(error("interval = \"10ms\"").starts_with("test.toml:1:"));
        assert!(parse("max_services = 0").is_err());
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
}
