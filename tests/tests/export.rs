//! Export end to end, against real receivers: a Prometheus server (remote-write and scrape),
//! an OTLP receiver decoding with the official protobuf types, and receivers that misbehave.
#![expect(clippy::expect_used, reason = "tests panic with a message")]

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{
    Agent, Scratch, crmprof,
    export::{
        Behaviour, NamedWorkload, Prometheus, Receiver, decode_logs, decode_metrics,
        exposition_value, free_port, http_get, profiles, wait_until, write_config,
    },
    privileged,
};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{ExponentialHistogramDataPoint, metric::Data},
};
use serde_json::Value;

fn s(v: &AnyValue) -> Option<&str> {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(s)
}

/// One syscall of one service, summed over all windows.
struct Truth {
    /// Every call.
    count: u64,
    /// The timed calls (a random one in `syscall_sample`) and their summed latency: what the
    /// latency histogram holds.
    timed: u64,
    timed_ns: u64,
    /// Upper bound → timed calls.
    buckets: BTreeMap<u64, u64>,
}

fn truth(docs: &[Value], service: &str, syscall: &str) -> Truth {
    let mut t = Truth {
        count: 0,
        timed: 0,
        timed_ns: 0,
        buckets: BTreeMap::new(),
    };
    for doc in docs {
        let Some(svc) = integration_tests::service(doc, service) else {
            continue;
        };
        let Some(sc) = integration_tests::syscall(svc, syscall) else {
            continue;
        };
        let n = |k: &str| u128::from(sc[k].as_u64().unwrap_or_else(|| panic!("{k}: {sc}")));
        t.count += n("count") as u64;
        t.timed += n("timed") as u64;
        // total_ns is scaled up from the timed calls; the histogram's sum is theirs.
        t.timed_ns += (n("total_ns") * n("timed") / n("count")) as u64;
        for b in sc["buckets"].as_array().expect("buckets") {
            *t.buckets.entry(b[0].as_u64().expect("bound")).or_default() +=
                b[1].as_u64().expect("n");
        }
    }
    assert_eq!(
        t.buckets.values().sum::<u64>(),
        t.timed,
        "the buckets hold the timed calls"
    );
    t
}

fn window_ids(docs: &[Value], sink: &str) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{}/{sink}/{}",
                d["host"]["hostname"].as_str().expect("hostname"),
                d["window"]["start_unix_ns"]
            )
        })
        .collect()
}

/// The agent is never blocked by export: consecutive windows follow each other within
/// `interval` + 0.5 s, and the windows cover the run.
fn assert_collection_kept_pace(docs: &[Value], interval: Duration, ran_for: Duration) {
    let slack = interval.as_secs_f64() + 0.5;
    for pair in docs.windows(2) {
        let (a, b) = (
            pair[0]["window"]["end_unix_ns"].as_u64().expect("end"),
            pair[1]["window"]["end_unix_ns"].as_u64().expect("end"),
        );
        let gap = (b.saturating_sub(a)) as f64 / 1e9;
        assert!(
            gap <= slack,
            "windows ended {gap:.3} s apart (interval {interval:?}): collection was held up"
        );
    }
    let expected = (ran_for.as_secs_f64() / interval.as_secs_f64()).floor() as usize;
    assert!(
        docs.len() + 2 >= expected,
        "{} windows in {ran_for:?} at {interval:?}",
        docs.len()
    );
}

/// The sample of a Prometheus classic-histogram bucket, computed independently from the
/// profile's `[upper_bound_ns, count]` buckets: a bucket is under `le` when its bound is.
fn cumulative_at(buckets: &BTreeMap<u64, u64>, le_seconds: f64) -> u64 {
    let le_ns = (le_seconds * 1e9).round() as u64;
    buckets
        .iter()
        .filter(|&(&upper, _)| upper <= le_ns)
        .map(|(_, &n)| n)
        .sum()
}

#[test]
fn collector_config_is_valid_and_wired() {
    // There is no OpenTelemetry Collector binary to run it: check its structure instead.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/otel-collector/config.yaml"
    );
    let text = std::fs::read_to_string(path).expect("reading deploy/otel-collector/config.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("valid YAML");
    let doc = &docs[0];
    let http = &doc["receivers"]["otlp"]["protocols"]["http"];
    assert!(!http.is_badvalue(), "an OTLP/HTTP receiver");
    assert!(
        http["endpoint"]
            .as_str()
            .is_some_and(|e| e.ends_with(":4318")),
        "the OTLP/HTTP receiver listens on 4318 (crmprof's [export.otlp] url)"
    );
    let endpoint = doc["exporters"]["prometheusremotewrite"]["endpoint"]
        .as_str()
        .expect("a prometheusremotewrite exporter with an endpoint");
    assert!(endpoint.ends_with("/api/v1/write"), "{endpoint}");
    let pipelines = doc["service"]["pipelines"]
        .as_hash()
        .expect("service.pipelines");
    assert!(!pipelines.is_empty());
    let mut saw_metrics = false;
    for (name, pipeline) in pipelines {
        let name = name.as_str().expect("pipeline name");
        saw_metrics |= name == "metrics" || name.starts_with("metrics/");
        for (kind, section) in [
            ("receivers", "receivers"),
            ("processors", "processors"),
            ("exporters", "exporters"),
        ] {
            for component in pipeline[kind].as_vec().into_iter().flatten() {
                let component = component.as_str().expect("component name");
                assert!(
                    !doc[section][component].is_badvalue(),
                    "pipeline {name} uses {kind} {component}, which is not defined"
                );
            }
        }
    }
    assert!(saw_metrics, "a metrics pipeline");
}

/// 200 sleeps of 1 ms by a named process; Prometheus receives the remote-write and scrapes
/// /metrics; PromQL returns exactly the profiles' counts, sums and buckets. Then `report` and
/// `check-service` read the same data directory.
#[test]
fn prometheus_receives_remote_write_and_scrapes_metrics() {
    if !privileged("prometheus_receives_remote_write_and_scrapes_metrics")
        || !Prometheus::available("prometheus_receives_remote_write_and_scrapes_metrics")
    {
        return;
    }
    let scratch = Scratch::new("export-prom");
    let metrics_port = free_port();
    let prom = Prometheus::start(&scratch.0.join("prom"), Some(metrics_port));
    let data = scratch.0.join("data");
    let config = write_config(
        &scratch,
        &format!(
            "interval = \"1s\"\nsyscall_duty_cycle = 1\nsyscall_sample = 8\ndata_dir = \"{}\"\n[export]\nretry_initial = \"100ms\"\n\
             retry_max = \"1s\"\n[export.prometheus]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [export.remote_write]\nurl = \"http://127.0.0.1:{}/api/v1/write\"\n",
            data.display(),
            prom.port
        ),
    );
    // Started before the agent, so the agent's scan groups it by its own executable (a
    // process started later would stay in its parent's service: the test binary's).
    let name = format!("rwslp-{}", std::process::id() % 100_000);
    let workload = NamedWorkload::start(&scratch, &name, &["sleep", "200", "1000"]);
    let agent = Agent::start(&["run", "-q", "--config", config.to_str().expect("UTF-8")]);
    // Prometheus applies new scrape targets every 5 s.
    assert!(
        wait_until(Duration::from_secs(30), || prom
            .scalar("up{job=\"crmprof-scrape\"}")
            == Some(1.0)),
        "Prometheus never scraped crmprof's /metrics"
    );
    workload.run_to_end();
    // Two more windows, then a scrape after them (scrape interval 1 s).
    std::thread::sleep(Duration::from_secs(4));
    let scraped = http_get(metrics_port, "/metrics").expect("crmprof serves /metrics");
    assert_eq!(scraped.0, 200);
    agent.interrupt_and_output();
    let docs = profiles(&data);
    let Truth {
        count,
        timed,
        timed_ns,
        buckets,
    } = truth(&docs, &name, "clock_nanosleep");
    assert_eq!(count, 200, "the profiles counted every sleep");
    // One in 8 timed (syscall_sample = 8, set above: enough timed calls out of 200 for the
    // histogram to compare): at least 5 of 200 but for a 1-in-10^6 fluke.
    assert!((5..=80).contains(&timed), "{timed} of 200 sleeps timed");

    let sel = format!("job=\"crmprof\",service=\"{name}\",syscall=\"clock_nanosleep\"");
    let value = |q: &str| {
        prom.scalar(q)
            .unwrap_or_else(|| panic!("no single series for {q}: {:?}", prom.query(q)))
    };
    assert_eq!(
        value(&format!("crmprof_syscall_calls_total{{{sel}}}")),
        200.0
    );
    assert_eq!(
        value(&format!("crmprof_syscall_duration_seconds_count{{{sel}}}")),
        timed as f64
    );
    let sum = value(&format!("crmprof_syscall_duration_seconds_sum{{{sel}}}"));
    assert!(
        (sum - timed_ns as f64 / 1e9).abs() < 1e-9,
        "_sum {sum} s vs profiles {timed_ns} ns"
    );
    let le_series = prom.query(&format!("crmprof_syscall_duration_seconds_bucket{{{sel}}}"));
    assert_eq!(le_series.len(), 15, "14 le bounds and +Inf: {le_series:?}");
    for series in &le_series {
        let le = series["metric"]["le"].as_str().expect("le label");
        let got: f64 = series["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a sample value");
        let want = if le == "+Inf" {
            timed
        } else {
            cumulative_at(&buckets, le.parse().expect("numeric le"))
        };
        assert_eq!(got, want as f64, "bucket le={le}");
    }
    // 1 ms sleeps are all above 262 µs and within 4.19 ms.
    assert_eq!(
        value(&format!(
            "crmprof_syscall_duration_seconds_bucket{{{sel},le=\"0.000262144\"}}"
        )),
        0.0
    );
    // Every window arrived, once each, with the window's end as the sample time.
    let samples = prom.samples("crmprof_window_end_timestamp_seconds{job=\"crmprof\"}[10m]");
    let want: Vec<i64> = docs
        .iter()
        .map(|d| (d["window"]["end_unix_ns"].as_u64().expect("end") / 1_000_000) as i64)
        .collect();
    let got: Vec<i64> = samples.iter().map(|s| s.0).collect();
    assert_eq!(got, want, "one remote-write sample per window");
    for (ts, v) in &samples {
        assert!((v * 1000.0 - *ts as f64).abs() < 1.0, "value {v} at {ts}");
    }
    // The same Prometheus scraped /metrics: same counts under the scrape job (over a range:
    // the failed scrape after crmprof stopped marked the series stale).
    assert_eq!(
        value(&format!(
            "max_over_time(crmprof_syscall_calls_total{{job=\"crmprof-scrape\",\
             service=\"{name}\",syscall=\"clock_nanosleep\"}}[5m])"
        )),
        200.0
    );
    assert_eq!(
        exposition_value(
            &scraped.1,
            "crmprof_dropped_batches_total{sink=\"remote_write\",reason=\"spool_full\"}"
        ),
        Some(0.0)
    );
    println!(
        "remote-write: {} windows, 200 sleeps, sum {sum:.6} s; scrape agrees",
        samples.len()
    );

    // `crmprof report` and `crmprof check-service` over the same data directory.
    let data_arg = data.to_str().expect("UTF-8");
    let out = Command::new(crmprof())
        .args([
            "report",
            "--since",
            "10m",
            "--service",
            &name,
            "--data-dir",
            data_arg,
        ])
        .output()
        .expect("running crmprof report");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "report failed: {text}");
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with("clock_nanosleep"))
        .unwrap_or_else(|| panic!("no clock_nanosleep row:\n{text}"));
    assert_eq!(row.split_whitespace().nth(1), Some("200"), "{row}");
    let check = |extra: &[&str]| {
        let out = Command::new(crmprof())
            .args(["check-service", "--since", "10m", "--data-dir", data_arg])
            .args(extra)
            .output()
            .expect("running check-service");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let sleeps = ["--service", &name, "--syscall", "clock_nanosleep"];
    // A 1 ms sleep's p99 is at least 1 ms: over 0.5 warns, over 0.5 crit is critical, and a
    // 1000 ms limit is fine.
    let (code, line) = check(&[&sleeps[..], &["--warn", "1000", "--crit", "2000"]].concat());
    assert_eq!(code, 0, "{line}");
    assert!(line.starts_with("CRMPROF OK - "), "{line}");
    assert!(line.contains("| p99="), "perfdata: {line}");
    let (code, line) = check(&[&sleeps[..], &["--warn", "0.5", "--crit", "1000"]].concat());
    assert_eq!(code, 1, "{line}");
    let (code, line) = check(&[&sleeps[..], &["--crit", "0.5"]].concat());
    assert_eq!(code, 2, "{line}");
    let (code, line) = check(&["--service", "no-such-service-here"]);
    assert_eq!(code, 3, "{line}");
    assert!(line.starts_with("CRMPROF UNKNOWN"), "{line}");
}

/// The metrics named `metric` in the resource of `service`.
fn metrics_of<'a>(
    req: &'a opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    service: &'a str,
    metric: &'a str,
) -> impl Iterator<Item = &'a opentelemetry_proto::tonic::metrics::v1::Metric> {
    req.resource_metrics
        .iter()
        .filter(move |rm| {
            rm.resource
                .as_ref()
                .is_some_and(|r| attr(&r.attributes, "service.name") == Some(service))
        })
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(move |m| m.name == metric)
}

fn exp_point<'a>(
    req: &'a opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    service: &'a str,
    metric: &'a str,
    syscall: &str,
) -> Option<&'a ExponentialHistogramDataPoint> {
    metrics_of(req, service, metric).find_map(|m| match &m.data {
        Some(Data::ExponentialHistogram(h)) => h
            .data_points
            .iter()
            .find(|dp| attr(&dp.attributes, "syscall") == Some(syscall)),
        _ => None,
    })
}

/// The value of a cumulative sum's point for one syscall of one service.
fn sum_point(
    req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
    service: &str,
    metric: &str,
    syscall: &str,
) -> Option<f64> {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as N;
    metrics_of(req, service, metric).find_map(|m| match &m.data {
        Some(Data::Sum(sum)) => sum
            .data_points
            .iter()
            .find(|dp| attr(&dp.attributes, "syscall") == Some(syscall))
            .and_then(|dp| match dp.value {
                Some(N::AsDouble(v)) => Some(v),
                Some(N::AsInt(v)) => Some(v as f64),
                None => None,
            }),
        _ => None,
    })
}

/// The OTLP export, decoded with the official types: per-service resources, an exponential
/// histogram with exactly the profile's buckets, cumulative counts, the profile document as a
/// log record with its batch id, the bearer token and custom header on every request.
#[test]
fn otlp_export_decodes_into_metrics_and_logs() {
    if !privileged("otlp_export_decodes_into_metrics_and_logs") {
        return;
    }
    let scratch = Scratch::new("export-otlp");
    let receiver = Receiver::start(Behaviour::Accept);
    let token = "s3cr3t-token-never-logged";
    let token_file = scratch.0.join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("writing the token");
    let data = scratch.0.join("data");
    let config = write_config(
        &scratch,
        &format!(
            "interval = \"1s\"\nsyscall_duty_cycle = 1\nsyscall_sample = 8\ndata_dir = \"{}\"\n[export.prometheus]\nenabled = false\n\
             [export.otlp]\nurl = \"http://127.0.0.1:{}\"\nbearer_token_file = \"{}\"\n\
             headers = {{ \"X-Scope-OrgID\" = \"tenant-7\" }}\n",
            data.display(),
            receiver.port,
            token_file.display()
        ),
    );
    let name = format!("otslp-{}", std::process::id() % 100_000);
    let workload = NamedWorkload::start(&scratch, &name, &["sleep", "200", "1000"]);
    let mut agent = Agent::start(&["run", "-q", "--config", config.to_str().expect("UTF-8")]);
    workload.run_to_end();
    std::thread::sleep(Duration::from_secs(3));
    agent.drain_stderr();
    let stderr = agent.stderr_seen.join("\n");
    agent.interrupt_and_output();
    assert!(!stderr.contains(token), "the token was logged:\n{stderr}");
    let docs = profiles(&data);
    let Truth {
        count,
        timed,
        timed_ns,
        buckets,
    } = truth(&docs, &name, "clock_nanosleep");
    assert_eq!(count, 200);

    let metrics = receiver.accepted("/v1/metrics");
    let logs = receiver.accepted("/v1/logs");
    for r in metrics.iter().chain(&logs) {
        assert_eq!(
            r.headers.get("authorization").map(String::as_str),
            Some(format!("Bearer {token}").as_str())
        );
        assert_eq!(
            r.headers.get("x-scope-orgid").map(String::as_str),
            Some("tenant-7")
        );
        assert_eq!(
            r.headers.get("content-type").map(String::as_str),
            Some("application/x-protobuf")
        );
    }
    // One metrics request per window, in window order, with the window's batch id.
    let ids: Vec<String> = metrics
        .iter()
        .map(|r| {
            r.headers
                .get("x-crmprof-batch-id")
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(ids, window_ids(&docs, "otlp_metrics"));

    // Cumulative: the sleep histogram's count never decreases and ends at the timed calls.
    let mut last_count = 0;
    let mut start_time = None;
    for r in &metrics {
        let req = decode_metrics(&r.body);
        if let Some(dp) = exp_point(&req, &name, "crmprof.syscall.duration", "clock_nanosleep") {
            assert!(dp.count >= last_count, "cumulative count went down");
            last_count = dp.count;
            assert_eq!(
                *start_time.get_or_insert(dp.start_time_unix_nano),
                dp.start_time_unix_nano
            );
        }
    }
    assert_eq!(last_count, timed);
    let last = decode_metrics(&metrics.last().expect("metrics arrived").body);
    let dp = exp_point(&last, &name, "crmprof.syscall.duration", "clock_nanosleep")
        .expect("the sleep histogram");
    assert_eq!(dp.scale, 2);
    assert_eq!(dp.sum, Some(timed_ns as f64));
    assert_eq!(
        sum_point(&last, &name, "crmprof.syscall.calls", "clock_nanosleep"),
        Some(200.0),
        "every sleep counted"
    );
    assert!(dp.time_unix_nano > dp.start_time_unix_nano);
    // Exactly the profile's buckets: OTLP bucket offset+k has upper bound 2^((offset+k+1)/4).
    let positive = dp.positive.as_ref().expect("positive buckets");
    let mut otlp_buckets = BTreeMap::new();
    for (k, &n) in positive.bucket_counts.iter().enumerate() {
        if n > 0 {
            let index = f64::from(positive.offset) + k as f64;
            let upper = 2f64.powf((index + 1.0) / 4.0).ceil() as u64;
            otlp_buckets.insert(upper, n);
        }
    }
    assert_eq!(
        otlp_buckets, buckets,
        "OTLP buckets differ from the profiles'"
    );
    let resource = last
        .resource_metrics
        .iter()
        .filter_map(|rm| rm.resource.as_ref())
        .find(|r| attr(&r.attributes, "service.name") == Some(name.as_str()))
        .expect("a resource for the service");
    assert_eq!(
        attr(&resource.attributes, "host.name"),
        docs[0]["host"]["hostname"].as_str()
    );
    assert_eq!(attr(&resource.attributes, "os.type"), Some("linux"));
    assert!(
        resource.attributes.iter().all(|a| a.key != "process.pid"),
        "no per-process identity"
    );

    // Logs: every window's document, verbatim, once, with its batch id.
    let mut bodies = Vec::new();
    for r in &logs {
        let req = decode_logs(&r.body);
        for record in req
            .resource_logs
            .iter()
            .flat_map(|rl| &rl.scope_logs)
            .flat_map(|sl| &sl.log_records)
        {
            let body = record.body.as_ref().and_then(s).expect("a string body");
            let doc: Value = serde_json::from_str(body).expect("the body is a profile document");
            let id = attr(&record.attributes, "crmprof.batch.id").expect("batch id attribute");
            assert_eq!(
                r.headers.get("x-crmprof-batch-id").map(String::as_str),
                Some(id)
            );
            assert_eq!(record.event_name, "crmprof.profile");
            bodies.push((id.to_owned(), doc));
        }
    }
    assert_eq!(
        bodies.iter().map(|b| b.0.clone()).collect::<Vec<_>>(),
        window_ids(&docs, "otlp_logs")
    );
    for ((_, doc), line) in bodies.iter().zip(&docs) {
        assert_eq!(doc, line, "the log record is the JSON line's document");
    }
    println!(
        "otlp: {} metrics requests, {} log records, 200 sleeps in {} buckets",
        metrics.len(),
        bodies.len(),
        otlp_buckets.len()
    );
}

/// Runs crmprof against a receiver that misbehaves for `bad_for`, then behaves. Returns the
/// profiles, the receiver and crmprof's /metrics text taken just before it stopped.
fn against(tag: &str, behaviour: Behaviour, bad_for: Duration) -> (Vec<Value>, Receiver, String) {
    let scratch = Scratch::new(tag);
    let receiver = Receiver::start(behaviour);
    let metrics_port = free_port();
    let data = scratch.0.join("data");
    let config = write_config(
        &scratch,
        &format!(
            "interval = \"1s\"\nsyscall_duty_cycle = 1\ndata_dir = \"{}\"\n[export]\nretry_initial = \"100ms\"\n\
             retry_max = \"1s\"\n[export.prometheus]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [export.otlp]\nurl = \"http://127.0.0.1:{}\"\ntimeout = \"2s\"\n",
            data.display(),
            receiver.port
        ),
    );
    let started = Instant::now();
    let agent = Agent::start(&["run", "-q", "--config", config.to_str().expect("UTF-8")]);
    std::thread::sleep(bad_for);
    receiver.set(Behaviour::Accept);
    // Everything spooled so far goes out once the receiver behaves.
    let drained = wait_until(Duration::from_secs(30), || {
        http_get(metrics_port, "/metrics").is_some_and(|(_, text)| {
            ["otlp_metrics", "otlp_logs"].iter().all(|sink| {
                exposition_value(&text, &format!("crmprof_spool_batches{{sink=\"{sink}\"}}"))
                    == Some(0.0)
            })
        })
    });
    assert!(
        drained,
        "{tag}: the spool did not drain within 30 s of recovery"
    );
    let text = http_get(metrics_port, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default();
    let ran_for = started.elapsed();
    agent.interrupt_and_output();
    let docs = profiles(&data);
    assert_collection_kept_pace(&docs, Duration::from_secs(1), ran_for);
    (docs, receiver, text)
}

/// Every window arrived exactly once on both OTLP paths.
fn assert_all_once(docs: &[Value], receiver: &Receiver) {
    for (path, sink) in [("/v1/metrics", "otlp_metrics"), ("/v1/logs", "otlp_logs")] {
        let got: Vec<String> = receiver
            .accepted(path)
            .iter()
            .map(|r| {
                r.headers
                    .get("x-crmprof-batch-id")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            got,
            window_ids(docs, sink),
            "{path}: lost, duplicated or reordered"
        );
    }
}

/// The receiver misbehaved at least `n` times per path and crmprof retried the same batch.
fn assert_retried(receiver: &Receiver, n: usize) {
    let received = receiver.received();
    for path in ["/v1/metrics", "/v1/logs"] {
        let mut attempts: BTreeMap<String, usize> = BTreeMap::new();
        let mut bad = 0;
        for r in received.iter().filter(|r| r.path == path) {
            if !(200..300).contains(&r.answered) {
                bad += 1;
            }
            *attempts
                .entry(
                    r.headers
                        .get("x-crmprof-batch-id")
                        .cloned()
                        .unwrap_or_default(),
                )
                .or_default() += 1;
        }
        assert!(bad >= n, "{path}: only {bad} bad answers were exercised");
        let most = attempts.values().max().copied().unwrap_or(0);
        assert!(most >= 2, "{path}: no batch was retried ({attempts:?})");
    }
}

const BAD_FOR: Duration = Duration::from_secs(6);

#[test]
fn receiver_answering_503_is_retried() {
    if !privileged("receiver_answering_503_is_retried") {
        return;
    }
    let (docs, receiver, _) = against("export-503", Behaviour::Status(503), BAD_FOR);
    assert_retried(&receiver, 3);
    assert_all_once(&docs, &receiver);
}

#[test]
fn receiver_answering_429_is_retried() {
    if !privileged("receiver_answering_429_is_retried") {
        return;
    }
    let (docs, receiver, _) = against("export-429", Behaviour::Status(429), BAD_FOR);
    // Retry-After: 1 is honoured: no more than about one attempt a second per path.
    let attempts = receiver
        .received()
        .iter()
        .filter(|r| r.path == "/v1/logs" && r.answered == 429)
        .count();
    assert!(
        (2..=8).contains(&attempts),
        "{attempts} attempts in 6 s despite Retry-After: 1"
    );
    assert_retried(&receiver, 2);
    assert_all_once(&docs, &receiver);
}

#[test]
fn receiver_resetting_connections_is_retried() {
    if !privileged("receiver_resetting_connections_is_retried") {
        return;
    }
    let (docs, receiver, _) = against("export-reset", Behaviour::Reset, BAD_FOR);
    assert_retried(&receiver, 3);
    assert_all_once(&docs, &receiver);
}

#[test]
fn receiver_answering_garbage_is_retried() {
    if !privileged("receiver_answering_garbage_is_retried") {
        return;
    }
    let (docs, receiver, _) = against("export-garbage", Behaviour::Garbage, BAD_FOR);
    assert_retried(&receiver, 3);
    assert_all_once(&docs, &receiver);
}

#[test]
fn hanging_receiver_times_out_and_is_retried() {
    if !privileged("hanging_receiver_times_out_and_is_retried") {
        return;
    }
    let (docs, receiver, _) = against("export-hang", Behaviour::Hang, BAD_FOR);
    // A 2 s timeout in 6 s: two or three attempts per path hang.
    assert_retried(&receiver, 2);
    assert_all_once(&docs, &receiver);
}

#[test]
fn slow_receiver_does_not_hold_up_collection() {
    if !privileged("slow_receiver_does_not_hold_up_collection") {
        return;
    }
    // 1.5 s per answer (under the 2 s timeout) for two paths, one window a second: a backlog
    // builds up while collection keeps its pace (checked in `against`), then drains.
    let (docs, receiver, _) = against(
        "export-slow",
        Behaviour::Slow(Duration::from_millis(1500)),
        BAD_FOR,
    );
    assert_all_once(&docs, &receiver);
}

#[test]
fn receiver_answering_400_drops_and_counts() {
    if !privileged("receiver_answering_400_drops_and_counts") {
        return;
    }
    let (docs, receiver, metrics) = against("export-400", Behaviour::Status(400), BAD_FOR);
    let received = receiver.received();
    for (path, sink) in [("/v1/metrics", "otlp_metrics"), ("/v1/logs", "otlp_logs")] {
        let rejected: BTreeSet<String> = received
            .iter()
            .filter(|r| r.path == path && r.answered == 400)
            .map(|r| {
                r.headers
                    .get("x-crmprof-batch-id")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let rejected_answers = received
            .iter()
            .filter(|r| r.path == path && r.answered == 400)
            .count();
        assert!(rejected.len() >= 3, "{path}: {} rejections", rejected.len());
        assert_eq!(
            rejected.len(),
            rejected_answers,
            "{path}: a 400 was retried"
        );
        let counted = exposition_value(
            &metrics,
            &format!("crmprof_dropped_batches_total{{sink=\"{sink}\",reason=\"http_400\"}}"),
        );
        assert_eq!(
            counted,
            Some(rejected.len() as f64),
            "{path}: drops counted"
        );
        // The rest arrived, once each and in order.
        let want: Vec<String> = window_ids(&docs, sink)
            .into_iter()
            .filter(|id| !rejected.contains(id))
            .collect();
        let got: Vec<String> = receiver
            .accepted(path)
            .iter()
            .map(|r| {
                r.headers
                    .get("x-crmprof-batch-id")
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(got, want, "{path}");
    }
}

/// The acceptance outage: both receivers (Prometheus remote-write, OTLP) are down for
/// CRMPROF_OUTAGE_SECS (default 120); halfway, crmprof is SIGKILLed and restarted. After
/// recovery every window crmprof recorded has arrived, none twice.
#[test]
fn outage_with_sigkill_loses_and_duplicates_nothing() {
    if !privileged("outage_with_sigkill_loses_and_duplicates_nothing")
        || !Prometheus::available("outage_with_sigkill_loses_and_duplicates_nothing")
    {
        return;
    }
    let outage = Duration::from_secs(
        std::env::var("CRMPROF_OUTAGE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(120),
    );
    let scratch = Scratch::new("export-outage");
    let mut prom = Prometheus::start(&scratch.0.join("prom"), None);
    let mut receiver = Receiver::start(Behaviour::Accept);
    let metrics_port = free_port();
    let data = scratch.0.join("data");
    let config = write_config(
        &scratch,
        &format!(
            "interval = \"1s\"\nsyscall_duty_cycle = 1\ndata_dir = \"{}\"\n[export]\nretry_initial = \"200ms\"\n\
             retry_max = \"2s\"\n[export.prometheus]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [export.otlp]\nurl = \"http://127.0.0.1:{}\"\ntimeout = \"2s\"\n\
             [export.remote_write]\nurl = \"http://127.0.0.1:{}/api/v1/write\"\ntimeout = \"2s\"\n",
            data.display(),
            receiver.port,
            prom.port
        ),
    );
    let args = ["run", "-q", "--config", config.to_str().expect("UTF-8")];
    let mut first = Agent::start(&args);
    std::thread::sleep(Duration::from_secs(4));
    println!("outage of {outage:?} starts");
    prom.stop();
    receiver.stop();
    std::thread::sleep(outage / 2);
    first.kill();
    let killed_windows = profiles(&data).len();
    let second = Agent::start(&args);
    let replay = second
        .stderr_seen
        .iter()
        .filter(|l| l.contains("replaying"))
        .count();
    assert_eq!(
        replay, 3,
        "each of 3 sinks replays its spool: {:?}",
        second.stderr_seen
    );
    std::thread::sleep(outage / 2);
    prom.restart();
    receiver.restart();
    println!("receivers back; {killed_windows} windows before the SIGKILL");
    let recovery = Instant::now();
    let drained = wait_until(Duration::from_secs(60), || {
        http_get(metrics_port, "/metrics").is_some_and(|(_, text)| {
            ["otlp_metrics", "otlp_logs", "remote_write"]
                .iter()
                .all(|sink| {
                    exposition_value(&text, &format!("crmprof_spool_batches{{sink=\"{sink}\"}}"))
                        == Some(0.0)
                })
        })
    });
    assert!(drained, "the spools did not drain within 60 s of recovery");
    println!("spools drained {:.1?} after recovery", recovery.elapsed());
    second.interrupt_and_output();
    let docs = profiles(&data);
    assert!(
        docs.len() as f64 >= outage.as_secs_f64() * 0.9,
        "{} windows",
        docs.len()
    );

    // Every recorded window arrived, in order, once. A window the SIGKILL cut between the
    // spools and profiles.jsonl (written last) is spooled but not recorded: it may arrive as
    // the one extra window, right after the last recorded one of the first run.
    let last_before_kill = docs[killed_windows - 1]["window"]["end_unix_ns"]
        .as_u64()
        .expect("end");
    let check = |what: &str, got: Vec<u64>, want: Vec<u64>, key_of_extra: u64| {
        let unique: BTreeSet<&u64> = got.iter().collect();
        assert_eq!(unique.len(), got.len(), "{what}: duplicates arrived");
        let extra: Vec<&u64> = got.iter().filter(|g| !want.contains(g)).collect();
        assert!(
            extra.is_empty() || extra == [&key_of_extra],
            "{what}: unexpected windows {extra:?}"
        );
        let without: Vec<u64> = got.iter().copied().filter(|g| want.contains(g)).collect();
        assert_eq!(without, want, "{what}: lost or reordered windows");
        extra.len()
    };
    let mut extras = 0;
    for path in ["/v1/metrics", "/v1/logs"] {
        // Batch ids end in the window start.
        let got = receiver
            .accepted(path)
            .iter()
            .filter_map(|r| {
                r.headers
                    .get("x-crmprof-batch-id")?
                    .rsplit('/')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        let want = docs
            .iter()
            .map(|d| d["window"]["start_unix_ns"].as_u64().expect("start"))
            .collect();
        extras = extras.max(check(path, got, want, last_before_kill));
    }
    let samples = prom.samples("crmprof_window_end_timestamp_seconds{job=\"crmprof\"}[1h]");
    let got: Vec<u64> = samples.iter().map(|s| s.0 as u64).collect();
    let want: Vec<u64> = docs
        .iter()
        .map(|d| d["window"]["end_unix_ns"].as_u64().expect("end") / 1_000_000)
        .collect();
    // The extra window's end is not recorded anywhere: it ends within a window of the kill.
    let last_ms = last_before_kill / 1_000_000;
    let extra_end = got
        .iter()
        .copied()
        .find(|t| *t > last_ms && *t < last_ms + 2_000 && !want.contains(t))
        .unwrap_or(0);
    let _ = check("Prometheus", got, want, extra_end);
    println!(
        "outage {outage:?}: {} windows (SIGKILL after {killed_windows}), all delivered once to \
         OTLP and Prometheus; {extras} spooled-but-unrecorded window(s) at the kill",
        docs.len()
    );
}
