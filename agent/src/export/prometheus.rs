//! Prometheus: the text exposition format (version 0.0.4) served on `/metrics`, and the
//! conversion of exponential histograms into classic `le` buckets shared with remote-write.
//!
//! Series are per service (label `service`), never per process: a PID label would make a new
//! series for every restart of every worker.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, header::CONTENT_TYPE, server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::{
    ExportError,
    metrics::{ExpHistogram, Family, Kind, Totals, Value},
};

/// The classic histogram boundaries, as exponents in quarter powers of two of nanoseconds:
/// `le` = 4^k · 256 ns for k = 0..=13, i.e. 256 ns, 1.024 µs, 4.096 µs, … 4.29 s, 17.2 s, then
/// `+Inf`. Each is a boundary of the scale-2 buckets, so the cumulative counts are exact (no
/// bucket straddles an `le`).
pub const LE_QUARTER_EXPONENTS: [i32; 14] =
    [32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136];

/// `le` in seconds for a quarter exponent (exact in binary: a power of two times 1e-9).
pub fn le_seconds(quarter_exp: i32) -> f64 {
    2f64.powi(quarter_exp / 4) / 1e9
}

/// Cumulative classic buckets `(le_seconds, count)` for a histogram, `+Inf` last.
pub fn classic_buckets(h: &ExpHistogram) -> Vec<(f64, u64)> {
    let mut out: Vec<(f64, u64)> = LE_QUARTER_EXPONENTS
        .iter()
        .map(|&q| (le_seconds(q), h.count_at_or_below_boundary(q)))
        .collect();
    out.push((f64::INFINITY, h.count));
    out
}

/// Formats a sample value the way Prometheus parses it.
pub fn format_value(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.is_nan() {
        "NaN".to_owned()
    } else {
        format!("{v}")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_set(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// The labels of a point: `service` first, then its own.
pub fn point_labels<'a>(
    service: Option<&'a str>,
    labels: &'a [(&'static str, String)],
) -> Vec<(&'a str, &'a str)> {
    let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(labels.len() + 1);
    if let Some(service) = service {
        pairs.push(("service", service));
    }
    pairs.extend(labels.iter().map(|(k, v)| (*k, v.as_str())));
    pairs
}

/// The text exposition of `families`.
pub fn render_text(families: &[Family]) -> String {
    let mut out = String::new();
    for family in families.iter().filter(|f| !f.points.is_empty()) {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let name = family.prom_name;
        let _ = writeln!(out, "# HELP {name} {}", family.help);
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for point in &family.points {
            let labels = point_labels(point.service.as_deref(), &point.labels);
            match &point.value {
                Value::Number(v) => {
                    let _ = writeln!(out, "{name}{} {}", label_set(&labels), format_value(*v));
                }
                Value::Histogram(h) => {
                    for (le, n) in classic_buckets(h) {
                        let le = format_value(le);
                        let mut with_le = labels.clone();
                        with_le.push(("le", &le));
                        let _ = writeln!(out, "{name}_bucket{} {n}", label_set(&with_le));
                    }
                    let set = label_set(&labels);
                    let _ = writeln!(
                        out,
                        "{name}_sum{set} {}",
                        format_value(h.sum_ns as f64 / 1e9)
                    );
                    let _ = writeln!(out, "{name}_count{set} {}", h.count);
                }
            }
        }
    }
    out
}

/// What `/metrics` serves: the totals of the last window plus the live delivery counters.
pub type Shared = Arc<Mutex<Totals>>;

/// A source of the delivery families at scrape time.
pub type DeliveryFamilies = Arc<dyn Fn() -> Vec<Family> + Send + Sync>;

/// Binds `addr` (so the caller learns at once if the port is taken) and serves `/metrics`
/// on its own task until the runtime stops.
pub async fn serve(
    addr: SocketAddr,
    totals: Shared,
    delivery: DeliveryFamilies,
) -> Result<SocketAddr, ExportError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ExportError::Listen { addr, source })?;
    let bound = listener.local_addr().unwrap_or(addr);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("/metrics: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let totals = Arc::clone(&totals);
            let delivery = Arc::clone(&delivery);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let totals = Arc::clone(&totals);
                    let delivery = Arc::clone(&delivery);
                    async move { Ok::<_, Infallible>(respond(&req, &totals, &delivery)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    log::debug!("/metrics: connection ended: {e}");
                }
            });
        }
    });
    Ok(bound)
}

fn respond<B>(
    req: &Request<B>,
    totals: &Shared,
    delivery: &DeliveryFamilies,
) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response
    };
    if req.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "crmprof serves /metrics only\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n");
    }
    let families = match totals.lock() {
        Ok(t) => t.families(&delivery()),
        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "state poisoned\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from(render_text(&families))));
    if let Ok(v) = "text/plain; version=0.0.4; charset=utf-8".parse() {
        response.headers_mut().insert(CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::metrics::Point;

    #[test]
    fn le_bounds_are_powers_of_four_from_256ns() {
        assert_eq!(le_seconds(32), 256e-9);
        assert_eq!(le_seconds(40), 1.024e-6);
        assert_eq!(format_value(le_seconds(136)), "17.179869184");
        assert_eq!(format_value(le_seconds(32)), "0.000000256");
        for w in LE_QUARTER_EXPONENTS.windows(2) {
            assert_eq!(w[1] - w[0], 8, "each le is 4x the previous");
        }
    }

    #[test]
    fn histogram_renders_cumulative_buckets_in_seconds() {
        let mut h = ExpHistogram::default();
        // 3 values in bucket 39 (≤ 1024 ns), 2 in bucket 80 (1 ms region: > 2^20 ns = le 40+40).
        h.buckets.insert(39, 3);
        h.buckets.insert(80, 2);
        h.count = 5;
        h.sum_ns = 2_500_000;
        let family = Family {
            prom_name: "x_seconds",
            otel_name: "x",
            unit: "ns",
            help: "test",
            kind: Kind::Histogram,
            points: vec![Point {
                service: Some("ng\"inx".to_owned()),
                labels: vec![("syscall", "read".to_owned())],
                value: Value::Histogram(h),
            }],
        };
        let text = render_text(&[family]);
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
        assert!(
            text.contains(
                "x_seconds_bucket{service=\"ng\\\"inx\",syscall=\"read\",le=\"0.000000256\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "x_seconds_bucket{service=\"ng\\\"inx\",syscall=\"read\",le=\"0.000001024\"} 3\n"
            ),
            "{text}"
        );
        // Bucket 80 is (2^20, 2^20.25] ns: above le 2^20 ns, within 2^22 ns.
        assert!(text.contains("le=\"0.001048576\"} 3\n"), "{text}");
        assert!(text.contains("le=\"0.004194304\"} 5\n"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 5\n"), "{text}");
        assert!(
            text.contains("x_seconds_sum{service=\"ng\\\"inx\",syscall=\"read\"} 0.0025\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{service=\"ng\\\"inx\",syscall=\"read\"} 5\n"));
    }
}
