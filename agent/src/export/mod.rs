//! Export: where each window's profile goes.
//!
//! - [`jsonl`]: the profile document as a JSON line in the data directory (rotated by size).
//! - [`prometheus`]: `/metrics` (text exposition) on its own task.
//! - [`remote_write`] and [`otlp`]: remote sinks. Each window, the payload of every remote
//!   sink is encoded and written to that sink's on-disk [`spool`] (fsynced) — that is all
//!   collection does; each sink's [`delivery`] task sends from its spool, retrying with backoff,
//!   so a slow or absent receiver never blocks collection and a restart loses nothing.
//!
//! [`metrics`] keeps the running totals all metric sinks render.

pub mod check_service;
pub mod delivery;
pub mod jsonl;
pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod remote_write;
pub mod report;
pub mod spool;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use prost::Message as _;
use tokio::sync::Notify;

use self::{
    delivery::{Sender, SinkKind, Stats},
    jsonl::JsonLines,
    metrics::Totals,
    spool::Spool,
};
use crate::{collection::unix_now_ns, config::ExportConfig, profile::Profile};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("cannot listen on {addr} for /metrics: {source}; set [export.prometheus] listen")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("invalid header in [export] headers: {0}")]
    Header(String),
    #[error("invalid sink URL {0}")]
    Url(String),
}

/// A remote sink as collection sees it: where to spool, whom to wake.
struct Remote {
    kind: SinkKind,
    spool: Arc<Spool>,
    wake: Arc<Notify>,
}

/// The export side of `crmprof run`.
pub struct Exporters {
    jsonl: JsonLines,
    totals: Arc<Mutex<Totals>>,
    stats: Arc<Stats>,
    spools: Arc<Vec<(&'static str, Arc<Spool>)>>,
    remotes: Vec<Remote>,
    /// Address `/metrics` is served on, when it is.
    pub metrics_addr: Option<SocketAddr>,
}

impl Exporters {
    /// Opens the data directory and the spools, starts the senders and `/metrics`. Must run
    /// inside the tokio runtime. A `/metrics` port that is taken is a warning, not an error.
    pub async fn start(cfg: &ExportConfig, data_dir: &Path) -> Result<Self, ExportError> {
        let jsonl =
            JsonLines::open(data_dir, cfg.jsonl_max_bytes, cfg.jsonl_keep).map_err(|source| {
                ExportError::DataDir {
                    path: data_dir.to_owned(),
                    source,
                }
            })?;
        let stats = Arc::new(Stats::default());
        let mut sinks = Vec::new();
        if let Some(sink) = &cfg.otlp {
            let base = sink.url.trim_end_matches('/');
            sinks.push((SinkKind::OtlpMetrics, sink, format!("{base}/v1/metrics")));
            if cfg.otlp_logs {
                sinks.push((SinkKind::OtlpLogs, sink, format!("{base}/v1/logs")));
            }
        }
        if let Some(sink) = &cfg.remote_write {
            sinks.push((SinkKind::RemoteWrite, sink, sink.url.clone()));
        }
        let mut remotes = Vec::new();
        let mut senders = Vec::new();
        for (kind, sink, url) in sinks {
            let url =
                reqwest::Url::parse(&url).map_err(|e| ExportError::Url(format!("{url}: {e}")))?;
            let spool = Arc::new(Spool::open(
                &data_dir.join("spool").join(kind.name()),
                cfg.spool_max_bytes,
            )?);
            let (waiting, bytes) = spool.usage();
            if waiting > 0 {
                log::info!(
                    "{}: replaying {waiting} spooled batches ({bytes} bytes) to {url}",
                    kind.name()
                );
            }
            stats.register(kind.name());
            let wake = Arc::new(Notify::new());
            senders.push(Sender::new(
                kind,
                url,
                sink,
                Arc::clone(&spool),
                Arc::clone(&stats),
                Arc::clone(&wake),
                cfg.retry_initial,
                cfg.retry_max,
            )?);
            remotes.push(Remote { kind, spool, wake });
        }
        for sender in senders {
            tokio::spawn(sender.run());
        }
        let spools: Arc<Vec<(&'static str, Arc<Spool>)>> = Arc::new(
            remotes
                .iter()
                .map(|r| (r.kind.name(), Arc::clone(&r.spool)))
                .collect(),
        );
        let totals = Arc::new(Mutex::new(Totals::new(unix_now_ns())));
        let mut metrics_addr = None;
        if cfg.prometheus.enabled {
            let delivery_stats = Arc::clone(&stats);
            let delivery_spools = Arc::clone(&spools);
            let delivery: prometheus::DeliveryFamilies =
                Arc::new(move || delivery_stats.families(&delivery_spools));
            match prometheus::serve(cfg.prometheus.listen, Arc::clone(&totals), delivery).await {
                Ok(addr) => {
                    log::info!("serving Prometheus metrics on http://{addr}/metrics");
                    metrics_addr = Some(addr);
                }
                Err(e) => log::warn!("{e}; continuing without /metrics"),
            }
        }
        Ok(Self {
            jsonl,
            totals,
            stats,
            spools,
            remotes,
            metrics_addr,
        })
    }

    /// Waits until every spool is empty or `limit` has passed: on shutdown, so the last window
    /// reaches a receiver that is up. What is left is sent after the next start.
    pub async fn flush(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.spools.iter().all(|(_, s)| s.usage().0 == 0) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for (name, spool) in self.spools.iter() {
            let (n, _) = spool.usage();
            if n > 0 {
                log::info!("{name}: {n} batches stay spooled for the next start");
            }
        }
    }

    pub fn jsonl_path(&self) -> &Path {
        &self.jsonl.path
    }

    /// Hands one window to every sink. Never waits on the network; failures are logged and
    /// counted, and collection goes on.
    pub fn window(&mut self, profile: &Profile) {
        let json = match serde_json::to_string(profile) {
            Ok(json) => json,
            Err(e) => {
                log::warn!("encoding the profile failed, window not exported: {e}");
                return;
            }
        };
        self.spool_remotes(profile, &json);
        // The local line goes last: a window in profiles.jsonl is in every spool, even when
        // the agent is killed in between (then the receivers may get one window more).
        if let Err(e) = self.jsonl.append(json.as_bytes()) {
            log::warn!("appending to {}: {e}", self.jsonl.path.display());
        }
    }

    fn spool_remotes(&self, profile: &Profile, json: &str) {
        let Ok(mut totals) = self.totals.lock() else {
            return;
        };
        totals.add(profile);
        if self.remotes.is_empty() {
            return;
        }
        let families = totals.families(&self.stats.families(&self.spools));
        let mut batches = Vec::with_capacity(self.remotes.len());
        for remote in &self.remotes {
            let id = batch_id(&totals.host_name, remote.kind, profile.window.start_unix_ns);
            let payload = match remote.kind {
                SinkKind::OtlpMetrics => {
                    Ok(otlp::metrics_request(&totals, &families).encode_to_vec())
                }
                SinkKind::OtlpLogs => Ok(otlp::logs_request(
                    &totals,
                    json,
                    profile.window.start_unix_ns,
                    &id,
                    unix_now_ns(),
                )
                .encode_to_vec()),
                SinkKind::RemoteWrite => {
                    let ms =
                        i64::try_from(profile.window.end_unix_ns / 1_000_000).unwrap_or(i64::MAX);
                    remote_write::encode(&remote_write::write_request(
                        &families,
                        "crmprof",
                        &totals.host_name,
                        ms,
                    ))
                    .map_err(|e| e.to_string())
                }
            };
            batches.push((id, payload));
        }
        drop(totals);
        for (remote, (id, payload)) in self.remotes.iter().zip(batches) {
            self.spool_one(remote, &id, payload);
        }
    }

    fn spool_one(&self, remote: &Remote, id: &str, payload: Result<Vec<u8>, String>) {
        let name = remote.kind.name();
        let payload = match payload {
            Ok(p) => p,
            Err(e) => {
                log::warn!("{name}: encoding batch {id} failed: {e}");
                self.stats.dropped(name, "encode_failed", 1);
                return;
            }
        };
        match remote.spool.push(id, &payload) {
            Ok(outcome) => {
                if outcome.evicted > 0 {
                    log::warn!(
                        "{name}: spool full; dropped the {} oldest batches",
                        outcome.evicted
                    );
                    self.stats.dropped(name, "spool_full", outcome.evicted);
                }
                if outcome.rejected {
                    log::warn!("{name}: batch {id} is larger than the whole spool; dropped");
                    self.stats.dropped(name, "spool_full", 1);
                }
                remote.wake.notify_one();
            }
            Err(e) => {
                log::warn!("{name}: could not spool batch {id}: {e}");
                self.stats.dropped(name, "spool_write_failed", 1);
            }
        }
    }
}

/// The stable id of a sink's batch for one window: the same after retries and restarts.
pub fn batch_id(host: &str, kind: SinkKind, window_start_ns: u64) -> String {
    format!("{host}/{}/{window_start_ns}", kind.name())
}
