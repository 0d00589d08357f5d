//! OTLP/HTTP with protobuf bodies (`application/x-protobuf`) to `/v1/metrics` and `/v1/logs`,
//! built from the official OpenTelemetry protobuf types (`opentelemetry-proto`).
//!
//! - One resource per service (`service.name`, `host.name`, `os.type`, `os.version`), plus the
//!   agent's own resource (`service.name` = `crmprof`, `service.version`) for agent health.
//! - Counters are cumulative monotonic sums, gauges are gauges, latency histograms are
//!   exponential histograms at scale 2 in nanoseconds: the kernel's buckets are exactly those
//!   buckets, so they are passed on without re-bucketing (a unit of seconds would move every
//!   boundary off the scale).
//! - The profile document is one log record per window (body: the JSON document), with the
//!   batch id in the record attribute `crmprof.batch.id` so a receiver can drop duplicates.
//!   Metric points are idempotent by (resource, name, attributes, `time_unix_nano`).

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::{
    collector::{logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    metrics::v1::{
        AggregationTemporality, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    },
    resource::v1::Resource,
};

use super::metrics::{ExpHistogram, Family, Kind, Point, Totals, Value};

/// The service name of the agent's own resource.
pub const AGENT_SERVICE: &str = "crmprof";
/// Log record attribute with the batch id.
pub const BATCH_ID_ATTRIBUTE: &str = "crmprof.batch.id";
/// `event.name` of the profile log records.
pub const PROFILE_EVENT: &str = "crmprof.profile";

pub fn kv_str(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

fn resource(service: &str, totals: &Totals) -> Resource {
    let mut attributes = vec![
        kv_str("service.name", service),
        kv_str("host.name", &totals.host_name),
        kv_str("os.type", "linux"),
        kv_str("os.version", &totals.kernel),
    ];
    if service == AGENT_SERVICE {
        attributes.push(kv_str("service.version", &totals.agent_version));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

fn scope(totals: &Totals) -> InstrumentationScope {
    InstrumentationScope {
        name: "crmprof".to_owned(),
        version: totals.agent_version.clone(),
        ..Default::default()
    }
}

fn attributes(point: &Point) -> Vec<KeyValue> {
    point.labels.iter().map(|(k, v)| kv_str(k, v)).collect()
}

/// The OTLP exponential-histogram buckets of a histogram: scale 2, dense from the lowest
/// non-empty index. The indices are the kernel's, unchanged.
pub fn positive_buckets(h: &ExpHistogram) -> Option<Buckets> {
    let (&offset, _) = h.buckets.first_key_value()?;
    let (&last, _) = h.buckets.last_key_value()?;
    let mut bucket_counts = vec![0u64; usize::try_from(last - offset + 1).unwrap_or(0)];
    for (&i, &n) in &h.buckets {
        if let Some(slot) = usize::try_from(i - offset)
            .ok()
            .and_then(|k| bucket_counts.get_mut(k))
        {
            *slot = n;
        }
    }
    Some(Buckets {
        offset,
        bucket_counts,
    })
}

fn metric(family: &Family, points: &[&Point], start: u64, time: u64) -> Metric {
    let number = |p: &Point| match &p.value {
        Value::Number(v) => Some(NumberDataPoint {
            attributes: attributes(p),
            start_time_unix_nano: start,
            time_unix_nano: time,
            value: Some(number_data_point::Value::AsDouble(*v)),
            ..Default::default()
        }),
        Value::Histogram(_) => None,
    };
    let data = match family.kind {
        Kind::Counter => Data::Sum(Sum {
            data_points: points.iter().filter_map(|p| number(p)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        Kind::Gauge => Data::Gauge(Gauge {
            data_points: points
                .iter()
                .filter_map(|p| number(p))
                .map(|mut p| {
                    p.start_time_unix_nano = 0;
                    p
                })
                .collect(),
        }),
        Kind::Histogram => Data::ExponentialHistogram(ExponentialHistogram {
            data_points: points
                .iter()
                .filter_map(|p| match &p.value {
                    Value::Histogram(h) => Some(ExponentialHistogramDataPoint {
                        attributes: attributes(p),
                        start_time_unix_nano: start,
                        time_unix_nano: time,
                        count: h.count,
                        sum: Some(h.sum_ns as f64),
                        scale: agent_ebpf::hist::SCALE,
                        zero_count: 0,
                        positive: positive_buckets(h),
                        ..Default::default()
                    }),
                    Value::Number(_) => None,
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
    };
    Metric {
        name: family.otel_name.to_owned(),
        description: family.help.to_owned(),
        unit: family.unit.to_owned(),
        data: Some(data),
        ..Default::default()
    }
}

/// The metrics request of one window: the families grouped by service into resources.
pub fn metrics_request(totals: &Totals, families: &[Family]) -> ExportMetricsServiceRequest {
    let time = totals.last_window_end_ns;
    let start = totals.start_unix_ns;
    // service → family index → points.
    let mut by_service: BTreeMap<&str, BTreeMap<usize, Vec<&Point>>> = BTreeMap::new();
    for (i, family) in families.iter().enumerate() {
        for point in &family.points {
            let service = point.service.as_deref().unwrap_or(AGENT_SERVICE);
            by_service
                .entry(service)
                .or_default()
                .entry(i)
                .or_default()
                .push(point);
        }
    }
    let resource_metrics = by_service
        .into_iter()
        .map(|(service, by_family)| ResourceMetrics {
            resource: Some(resource(service, totals)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope(totals)),
                metrics: by_family
                    .into_iter()
                    .filter_map(|(i, points)| {
                        families.get(i).map(|f| metric(f, &points, start, time))
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// The logs request of one window: the profile document as one log record.
pub fn logs_request(
    totals: &Totals,
    profile_json: &str,
    window_start_ns: u64,
    batch_id: &str,
    observed_ns: u64,
) -> ExportLogsServiceRequest {
    let record = LogRecord {
        time_unix_nano: totals.last_window_end_ns,
        observed_time_unix_nano: observed_ns,
        severity_number: SeverityNumber::Info as i32,
        severity_text: "INFO".to_owned(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(profile_json.to_owned())),
        }),
        attributes: vec![
            kv_str(BATCH_ID_ATTRIBUTE, batch_id),
            kv_str("crmprof.schema", crate::profile::SCHEMA),
            kv_int(
                "crmprof.window.start_unix_ns",
                i64::try_from(window_start_ns).unwrap_or(i64::MAX),
            ),
        ],
        event_name: PROFILE_EVENT.to_owned(),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(AGENT_SERVICE, totals)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope(totals)),
                log_records: vec![record],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    fn totals() -> Totals {
        let mut t = Totals::new(1_000);
        t.host_name = "h1".to_owned();
        t.last_window_end_ns = 5_000;
        t
    }

    #[test]
    fn buckets_keep_the_kernel_indices() {
        let mut h = ExpHistogram::default();
        h.buckets.insert(80, 2);
        h.buckets.insert(83, 5);
        let b = positive_buckets(&h);
        assert_eq!(b.as_ref().map(|b| b.offset), Some(80));
        assert_eq!(b.map(|b| b.bucket_counts), Some(vec![2, 0, 0, 5]));
        assert_eq!(positive_buckets(&ExpHistogram::default()), None);
    }

    #[test]
    fn metrics_group_by_service_and_decode() {
        let mut h = ExpHistogram::default();
        h.buckets.insert(80, 2);
        h.count = 2;
        h.sum_ns = 2_200_000;
        let mut hist = Family::new("d_seconds", "d", "ns", Kind::Histogram, "h");
        hist.points.push(Point {
            service: Some("nginx".to_owned()),
            labels: vec![("syscall", "read".to_owned())],
            value: Value::Histogram(h),
        });
        let mut counter = Family::new("c_total", "c", "1", Kind::Counter, "h");
        counter.agent_point(vec![("reason", "r".to_owned())], 3.0);
        let req = metrics_request(&totals(), &[hist, counter]);
        let back =
            ExportMetricsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap_or_default();
        assert_eq!(back, req);
        // BTreeMap order: "crmprof" before "nginx".
        assert_eq!(back.resource_metrics.len(), 2);
        let service_of = |rm: &ResourceMetrics| {
            rm.resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.clone())
                .and_then(|v| v.value)
        };
        assert_eq!(
            service_of(&back.resource_metrics[1]),
            Some(any_value::Value::StringValue("nginx".to_owned()))
        );
        let metric = &back.resource_metrics[1].scope_metrics[0].metrics[0];
        let Some(Data::ExponentialHistogram(eh)) = &metric.data else {
            panic!("not an exponential histogram: {metric:?}");
        };
        let dp = &eh.data_points[0];
        assert_eq!((dp.scale, dp.count, dp.sum), (2, 2, Some(2_200_000.0)));
        assert_eq!((dp.start_time_unix_nano, dp.time_unix_nano), (1_000, 5_000));
        assert_eq!(
            eh.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let Some(Data::Sum(sum)) = &back.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("not a sum");
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsDouble(3.0))
        );
    }

    #[test]
    fn log_record_carries_the_document_and_batch_id() {
        let req = logs_request(
            &totals(),
            "{\"schema\":1}",
            4_000,
            "h1/otlp_logs/4000",
            6_000,
        );
        let back =
            ExportLogsServiceRequest::decode(req.encode_to_vec().as_slice()).unwrap_or_default();
        let record = &back.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.time_unix_nano, 5_000);
        assert_eq!(
            record.attributes[0],
            kv_str(BATCH_ID_ATTRIBUTE, "h1/otlp_logs/4000")
        );
        assert_eq!(
            record.body.as_ref().and_then(|b| b.value.clone()),
            Some(any_value::Value::StringValue("{\"schema\":1}".to_owned()))
        );
    }
}
