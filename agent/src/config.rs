//! The agent's configuration: TOML, every key optional, unknown keys rejected. The defaults are
//! the embedded configuration `crmprof run` uses without `--config`.

use std::{
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
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            data_dir: PathBuf::from("/var/lib/crmprof"),
            max_services: 256,
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
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
        Ok(())
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
        let uncommented: String = SHIPPED
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .filter(|l| l.contains(" = "))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = parse(&uncommented);
        assert!(config.is_ok(), "{:?}\n{uncommented}", config.err());
        assert_eq!(config.ok(), Some(Config::default()), "{uncommented}");
        let keys: Vec<&str> = uncommented
            .lines()
            .filter_map(|l| l.split(" = ").next())
            .collect();
        // Every field of Config, by name; a field added without documenting it fails here.
        let Config {
            interval: _,
            data_dir: _,
            max_services: _,
            btf_path: _,
        } = Config::default();
        assert_eq!(
            keys,
            ["interval", "data_dir", "max_services", "btf_path"],
            "deploy/crmprof.toml documents these keys"
        );
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(parse("interval = \"banana\"").is_err());
        assert!(parse("interval = \"10ms\"").is_err());
        assert!(parse("max_services = 0").is_err());
        assert!(parse("max_services = \"many\"").is_err());
    }
}
