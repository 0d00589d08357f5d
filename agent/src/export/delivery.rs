//! Delivery of spooled batches to a remote HTTP sink, on the sink's own task.
//!
//! A sender takes the oldest batch of its spool and sends it; the next batch waits until that
//! one is delivered or given up, so a receiver sees batches in window order (remote-write
//! receivers reject out-of-order samples). Outcomes:
//! - 2xx: delivered, deleted from the spool.
//! - 429 and 5xx, timeouts, refused or reset connections, answers that are not HTTP: retried
//!   after an exponential backoff with jitter (`Retry-After` is honoured up to the maximum).
//! - Any other status (4xx, 3xx): the receiver will never take it; dropped, the reason logged
//!   and counted in `crmprof_dropped_batches_total{sink, reason="http_<code>"}`.
//!
//! The sender never blocks collection: collection only writes to the spool and wakes the
//! sender; a hanging receiver holds nothing but this task, bounded by the request timeout.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use prost::Message as _;
use reqwest::{
    StatusCode,
    header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use tokio::sync::Notify;

use super::{
    ExportError,
    metrics::{Family, Kind},
    spool::{Batch, Spool},
};
use crate::config::HttpSinkConfig;

/// Header carrying the batch id on every request, so any receiver can drop duplicates.
pub const BATCH_ID_HEADER: &str = "x-crmprof-batch-id";

/// The sinks; each has its own spool directory `DATA_DIR/spool/<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SinkKind {
    OtlpMetrics,
    OtlpLogs,
    RemoteWrite,
}

impl SinkKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::OtlpMetrics => "otlp_metrics",
            Self::OtlpLogs => "otlp_logs",
            Self::RemoteWrite => "remote_write",
        }
    }
}

/// Exponential backoff with jitter: the n-th delay is uniform in [d/2, d] with
/// d = min(initial · 2^n, max), so agents that lost the same receiver do not retry in step.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            failures: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Counters of the delivery pipeline, shared by the senders, collection and `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    dropped: BTreeMap<(&'static str, String), u64>,
    sent: BTreeMap<&'static str, u64>,
    retries: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// Makes the always-present series exist at zero.
    pub fn register(&self, sink: &'static str) {
        if let Ok(mut s) = self.inner.lock() {
            s.dropped
                .entry((sink, "spool_full".to_owned()))
                .or_default();
            s.sent.entry(sink).or_default();
            s.retries.entry(sink).or_default();
        }
    }

    pub fn dropped(&self, sink: &'static str, reason: &str, n: u64) {
        if let Ok(mut s) = self.inner.lock() {
            *s.dropped.entry((sink, reason.to_owned())).or_default() += n;
        }
    }

    fn sent(&self, sink: &'static str) {
        if let Ok(mut s) = self.inner.lock() {
            *s.sent.entry(sink).or_default() += 1;
        }
    }

    fn retried(&self, sink: &'static str) {
        if let Ok(mut s) = self.inner.lock() {
            *s.retries.entry(sink).or_default() += 1;
        }
    }

    /// The delivery families; `spools` gives each sink's waiting batches and bytes.
    pub fn families(&self, spools: &[(&'static str, Arc<Spool>)]) -> Vec<Family> {
        let mut dropped = Family::new(
            "crmprof_dropped_batches_total",
            "crmprof.dropped_batches",
            "{batch}",
            Kind::Counter,
            "Batches a remote sink gave up, by sink and reason (spool_full, http_<code>, \
             corrupt, spool_write_failed, encode_failed).",
        );
        let mut sent = Family::new(
            "crmprof_exported_batches_total",
            "crmprof.exported_batches",
            "{batch}",
            Kind::Counter,
            "Batches a remote sink delivered.",
        );
        let mut retries = Family::new(
            "crmprof_export_retries_total",
            "crmprof.export_retries",
            "{attempt}",
            Kind::Counter,
            "Failed send attempts that will be retried.",
        );
        let mut queued = Family::new(
            "crmprof_spool_batches",
            "crmprof.spool.batches",
            "{batch}",
            Kind::Gauge,
            "Batches waiting in a sink's spool.",
        );
        let mut bytes = Family::new(
            "crmprof_spool_bytes",
            "crmprof.spool.size",
            "By",
            Kind::Gauge,
            "Bytes in a sink's spool.",
        );
        if let Ok(s) = self.inner.lock() {
            for ((sink, reason), &n) in &s.dropped {
                dropped.agent_point(
                    vec![("sink", (*sink).to_owned()), ("reason", reason.clone())],
                    n as f64,
                );
            }
            for (sink, &n) in &s.sent {
                sent.agent_point(vec![("sink", (*sink).to_owned())], n as f64);
            }
            for (sink, &n) in &s.retries {
                retries.agent_point(vec![("sink", (*sink).to_owned())], n as f64);
            }
        }
        for (sink, spool) in spools {
            let (n, b) = spool.usage();
            queued.agent_point(vec![("sink", (*sink).to_owned())], n as f64);
            bytes.agent_point(vec![("sink", (*sink).to_owned())], b as f64);
        }
        vec![dropped, sent, retries, queued, bytes]
    }
}

/// How one attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Worth another try, after at least the given delay if the receiver asked for one.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// The receiver will never accept this batch.
    Reject {
        reason: String,
        why: String,
    },
}

/// The outcome of an HTTP status.
pub fn classify(status: StatusCode) -> Option<String> {
    if status.is_success() {
        None
    } else {
        Some(format!("http_{}", status.as_u16()))
    }
}

pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// One remote sink's sender.
pub struct Sender {
    kind: SinkKind,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    token_file: Option<PathBuf>,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    wake: Arc<Notify>,
    backoff: Backoff,
}

fn read_pem(path: &PathBuf, what: &str) -> Result<Vec<u8>, ExportError> {
    std::fs::read(path)
        .map_err(|e| ExportError::Tls(format!("reading {what} {}: {e}", path.display())))
}

/// The HTTP client of a sink: timeouts, TLS roots (system + `ca_file`), client certificate.
pub fn client(cfg: &HttpSinkConfig) -> Result<reqwest::Client, ExportError> {
    let mut builder = reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("crmprof/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(1);
    if let Some(ca) = &cfg.ca_file {
        let pem = read_pem(ca, "ca_file")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ExportError::Tls(format!("ca_file {}: {e}", ca.display())))?;
        if certs.is_empty() {
            return Err(ExportError::Tls(format!(
                "ca_file {} holds no PEM certificate",
                ca.display()
            )));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let (Some(cert), Some(key)) = (&cfg.client_cert_file, &cfg.client_key_file) {
        let mut pem = read_pem(cert, "client_cert_file")?;
        pem.push(b'\n');
        pem.extend(read_pem(key, "client_key_file")?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            ExportError::Tls(format!(
                "client certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| ExportError::Tls(format!("building the HTTP client: {e}")))
}

/// The fixed headers of a sink: its content type, protocol headers and the configured ones.
pub fn headers(kind: SinkKind, cfg: &HttpSinkConfig) -> Result<HeaderMap, ExportError> {
    let mut map = HeaderMap::new();
    for (name, value) in &cfg.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ExportError::Header(format!("{name:?}: {e}")))?;
        let mut value = HeaderValue::from_str(value)
            .map_err(|e| ExportError::Header(format!("value of {name}: {e}")))?;
        value.set_sensitive(true);
        map.insert(name, value);
    }
    map.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    if kind == SinkKind::RemoteWrite {
        for (name, value) in super::remote_write::HEADERS {
            map.insert(name, HeaderValue::from_static(value));
        }
    }
    Ok(map)
}

impl Sender {
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    pub fn new(
        kind: SinkKind,
        url: reqwest::Url,
        cfg: &HttpSinkConfig,
        spool: Arc<Spool>,
        stats: Arc<Stats>,
        wake: Arc<Notify>,
        initial: Duration,
        max: Duration,
    ) -> Result<Self, ExportError> {
        Ok(Self {
            kind,
            url,
            client: client(cfg)?,
            headers: headers(kind, cfg)?,
            token_file: cfg.bearer_token_file.clone(),
            spool,
            stats,
            wake,
            backoff: Backoff::new(initial, max),
        })
    }

    fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Runs forever: replays what the spool holds, then whatever collection adds.
    pub async fn run(mut self) {
        loop {
            let batch = match self.spool.oldest() {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    self.wake.notified().await;
                    continue;
                }
                Err((seq, e)) => {
                    log::warn!(
                        "{}: spooled batch {seq} is unreadable, dropped: {e}",
                        self.name()
                    );
                    self.stats.dropped(self.name(), "corrupt", 1);
                    continue;
                }
            };
            self.deliver(&batch).await;
        }
    }

    /// Sends one batch until it is delivered, rejected or evicted from the spool.
    async fn deliver(&mut self, batch: &Batch) {
        let mut failures = 0u32;
        loop {
            match self.attempt(batch).await {
                Outcome::Delivered => {
                    if failures > 0 {
                        log::info!(
                            "{}: batch {} delivered after {failures} failed attempts",
                            self.name(),
                            batch.id
                        );
                    }
                    self.spool.remove(batch.seq);
                    self.stats.sent(self.name());
                    self.backoff.reset();
                    return;
                }
                Outcome::Reject { reason, why } => {
                    log::warn!(
                        "{}: {} rejected batch {} ({why}); dropped, counted as {reason}",
                        self.name(),
                        self.url,
                        batch.id
                    );
                    if self.spool.remove(batch.seq) {
                        self.stats.dropped(self.name(), &reason, 1);
                    }
                    self.backoff.reset();
                    return;
                }
                Outcome::Retry { why, after } => {
                    failures += 1;
                    self.stats.retried(self.name());
                    let delay = self.backoff.next_delay().max(after.unwrap_or_default());
                    let delay = delay.min(self.backoff.max);
                    let (waiting, _) = self.spool.usage();
                    let msg = format!(
                        "{}: sending batch {} to {} failed ({why}); retry in {delay:.1?}, \
                         {waiting} batches waiting",
                        self.name(),
                        batch.id,
                        self.url
                    );
                    if failures == 1 {
                        log::warn!("{msg}");
                    } else {
                        log::debug!("{msg}");
                    }
                    tokio::time::sleep(delay).await;
                    if !self.spool.contains(batch.seq) {
                        // Evicted while the receiver was away (already counted).
                        return;
                    }
                }
            }
        }
    }

    async fn attempt(&self, batch: &Batch) -> Outcome {
        let mut headers = self.headers.clone();
        if let Ok(id) = HeaderValue::from_str(&batch.id) {
            headers.insert(BATCH_ID_HEADER, id);
        }
        if let Some(path) = &self.token_file {
            match std::fs::read_to_string(path) {
                Ok(token) => match HeaderValue::from_str(&format!("Bearer {}", token.trim())) {
                    Ok(mut v) => {
                        v.set_sensitive(true);
                        headers.insert(AUTHORIZATION, v);
                    }
                    Err(_) => {
                        return Outcome::Retry {
                            why: format!(
                                "the token in {} is not a valid header value",
                                path.display()
                            ),
                            after: None,
                        };
                    }
                },
                Err(e) => {
                    return Outcome::Retry {
                        why: format!("reading bearer_token_file {}: {e}", path.display()),
                        after: None,
                    };
                }
            }
        }
        let response = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(batch.payload.clone())
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Retry {
                    why: error_text(&e),
                    after: None,
                };
            }
        };
        let status = response.status();
        let after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // The body matters only for logs; a receiver that stalls on it is cut by the timeout.
        let body = response.bytes().await.unwrap_or_default();
        if status.is_success() {
            self.check_partial_success(&body);
            return Outcome::Delivered;
        }
        let why = format!("HTTP {status}: {}", snippet(&body));
        if is_retryable(status) {
            return Outcome::Retry { why, after };
        }
        Outcome::Reject {
            reason: classify(status).unwrap_or_default(),
            why,
        }
    }

    /// OTLP answers 200 with a partial success when it refused some points: log it.
    fn check_partial_success(&self, body: &[u8]) {
        use opentelemetry_proto::tonic::collector::{
            logs::v1::ExportLogsServiceResponse, metrics::v1::ExportMetricsServiceResponse,
        };
        let rejected = match self.kind {
            SinkKind::OtlpMetrics => ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_data_points, p.error_message)),
            SinkKind::OtlpLogs => ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_log_records, p.error_message)),
            SinkKind::RemoteWrite => None,
        };
        if let Some((n, message)) = rejected
            && n > 0
        {
            log::warn!("{}: receiver refused {n} items: {message}", self.name());
        }
    }
}

/// An error with its causes: reqwest's top-level message alone says only "error sending
/// request".
fn error_text(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_owned()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The start of a response body, printable, for a log line.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body.get(..200).unwrap_or(body));
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let ceiling = b.ceiling();
            let d = b.next_delay();
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} not in [{ceiling:?}/2, {ceiling:?}]"
            );
            ceilings.push(ceiling.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        // Many failures never overflow.
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn statuses_are_classified() {
        for code in [429u16, 500, 502, 503, 504] {
            let s = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            assert!(is_retryable(s), "{code}");
        }
        for code in [400u16, 401, 403, 404, 413, 301] {
            let s = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
            assert!(!is_retryable(s), "{code}");
            assert_eq!(classify(s), Some(format!("http_{code}")));
        }
        assert_eq!(classify(StatusCode::NO_CONTENT), None);
    }

    #[test]
    fn configured_headers_are_kept_and_protocol_headers_added() {
        let mut cfg = HttpSinkConfig::default();
        cfg.headers
            .insert("X-Scope-OrgID".to_owned(), "t1".to_owned());
        let h = headers(SinkKind::RemoteWrite, &cfg).unwrap_or_default();
        assert_eq!(
            h.get("x-scope-orgid").map(|v| v.as_bytes()),
            Some(&b"t1"[..])
        );
        assert_eq!(
            h.get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"snappy"[..])
        );
        cfg.headers.insert("bad header".to_owned(), "x".to_owned());
        assert!(headers(SinkKind::OtlpMetrics, &cfg).is_err());
    }
}
