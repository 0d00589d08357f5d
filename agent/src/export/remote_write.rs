//! Prometheus remote-write 1.0: a snappy-compressed (block format) protobuf
//! `prometheus.WriteRequest`, POSTed to Prometheus (`--web.enable-remote-write-receiver`),
//! Mimir, VictoriaMetrics, Thanos Receive, ...
//!
//! No well-kept crate publishes the remote-write types, so the few messages are declared here
//! with prost's derive, field for field from upstream `prompb/remote.proto` and
//! `prompb/types.proto` (prometheus/prometheus). prost does the encoding.
//!
//! Duplicates: a sample is identified by its series and timestamp; Prometheus-compatible stores
//! keep one sample per (series, timestamp), so a batch delivered twice (a retry after a lost
//! response) stores nothing twice. Each sample's timestamp is the end of its window.

use std::collections::BTreeMap;

use prost::Message as _;

use super::{
    metrics::{Family, Value},
    prometheus::{classic_buckets, format_value, point_labels},
};

/// `prometheus.WriteRequest` (remote.proto; field 3 `metadata` is not sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries` (types.proto; exemplars and native histograms are not sent).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    /// Sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`: value, then timestamp in milliseconds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// Request headers the protocol requires, besides `Content-Type: application/x-protobuf`.
pub const HEADERS: [(&str, &str); 2] = [
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

/// The series of `families` at `timestamp_ms`, each with `job` and `instance` labels (a
/// pushed series has no scrape to add them).
pub fn write_request(
    families: &[Family],
    job: &str,
    instance: &str,
    timestamp_ms: i64,
) -> WriteRequest {
    let mut timeseries = Vec::new();
    let mut push = |name: String, pairs: &[(&str, &str)], value: f64| {
        let mut labels: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        labels.insert("__name__", &name);
        labels.insert("job", job);
        labels.insert("instance", instance);
        timeseries.push(TimeSeries {
            labels: labels
                .into_iter()
                .map(|(name, value)| Label {
                    name: name.to_owned(),
                    value: value.to_owned(),
                })
                .collect(),
            samples: vec![Sample {
                value,
                timestamp: timestamp_ms,
            }],
        });
    };
    for family in families {
        for point in &family.points {
            let labels = point_labels(point.service.as_deref(), &point.labels);
            match &point.value {
                Value::Number(v) => push(family.prom_name.to_owned(), &labels, *v),
                Value::Histogram(h) => {
                    for (le, n) in classic_buckets(h) {
                        let le = format_value(le);
                        let mut with_le = labels.clone();
                        with_le.push(("le", &le));
                        push(format!("{}_bucket", family.prom_name), &with_le, n as f64);
                    }
                    push(
                        format!("{}_sum", family.prom_name),
                        &labels,
                        h.sum_ns as f64 / 1e9,
                    );
                    push(
                        format!("{}_count", family.prom_name),
                        &labels,
                        h.count as f64,
                    );
                }
            }
        }
    }
    WriteRequest { timeseries }
}

/// The HTTP body: protobuf, then snappy block compression.
pub fn encode(request: &WriteRequest) -> Result<Vec<u8>, snap::Error> {
    snap::raw::Encoder::new().compress_vec(&request.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::export::metrics::{ExpHistogram, Kind, Point};

    #[test]
    fn encodes_sorted_labels_and_decodes_back() {
        let mut counter = Family::new("a_total", "a", "1", Kind::Counter, "h");
        counter.agent_point(vec![("reason", "x".to_owned())], 7.0);
        let mut h = ExpHistogram::default();
        h.buckets.insert(80, 4);
        h.count = 4;
        h.sum_ns = 4_400_000;
        let mut hist = Family::new("b_seconds", "b", "ns", Kind::Histogram, "h");
        hist.points.push(Point {
            service: Some("nginx".to_owned()),
            labels: vec![("syscall", "read".to_owned())],
            value: Value::Histogram(h),
        });
        let req = write_request(&[counter, hist], "crmprof", "host1", 1_700_000_000_000);
        // 1 counter + 15 buckets + sum + count.
        assert_eq!(req.timeseries.len(), 18);
        let body = encode(&req).unwrap_or_default();
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&body)
            .unwrap_or_default();
        let back = WriteRequest::decode(raw.as_slice()).unwrap_or_default();
        assert_eq!(back, req);
        let first = &back.timeseries[0];
        let names: Vec<&str> = first.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "instance", "job", "reason"]);
        assert_eq!(first.samples[0].value, 7.0);
        assert_eq!(first.samples[0].timestamp, 1_700_000_000_000);
        let sum = back
            .timeseries
            .iter()
            .find(|t| t.labels[0].value == "b_seconds_sum")
            .map(|t| t.samples[0].value);
        assert_eq!(sum, Some(0.0044));
    }
}
