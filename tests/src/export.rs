//! Helpers for the export tests: a real Prometheus server, an OTLP receiver built on the
//! official protobuf types that can misbehave on demand, a tiny HTTP/1.0 client, and readers
//! for crmprof's data directory.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
};
use prost::Message as _;
use serde_json::Value;

use crate::{Scratch, workload_bin};

/// A TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET path` over HTTP/1.0 (so the answer is never chunked): status and body, or `None` when
/// nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// A value from a Prometheus text exposition: the sample whose name and labels (as written,
/// e.g. `crmprof_spool_batches{sink="otlp_logs"}`) match exactly.
pub fn exposition_value(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A Prometheus server from the Debian package, on loopback, with the remote-write receiver
/// enabled, scraping `scrape_port` (crmprof's /metrics) every second.
pub struct Prometheus {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    /// Its stderr, in the test's own directory (removed with it).
    log: PathBuf,
}

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

impl Prometheus {
    /// `None` (with the reason printed) when the package is not installed.
    pub fn available(test: &str) -> bool {
        if Path::new(PROMETHEUS).exists() {
            return true;
        }
        println!(
            "SKIP {test}: {PROMETHEUS} is missing (apt-get install prometheus; \
             deploy/ci/install-packages.sh does)"
        );
        false
    }

    pub fn start(dir: &Path, scrape_port: Option<u16>) -> Self {
        std::fs::create_dir_all(dir).expect("creating the Prometheus directory");
        let config = dir.join("prometheus.yml");
        let mut yaml = "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n".to_owned();
        if let Some(port) = scrape_port {
            yaml.push_str(&format!(
                "scrape_configs:\n  - job_name: crmprof-scrape\n    static_configs:\n      \
                 - targets: [\"127.0.0.1:{port}\"]\n"
            ));
        }
        std::fs::write(&config, yaml).expect("writing prometheus.yml");
        let port = free_port();
        let args = vec![
            "--web.enable-remote-write-receiver".to_owned(),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--config.file={}", config.display()),
        ];
        let mut p = Self {
            port,
            child: None,
            args,
            log: dir.join("prometheus.log"),
        };
        p.restart();
        p
    }

    /// Starts (again) on the same port and storage; waits until it is ready.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "Prometheus is already running");
        let log = std::fs::File::create(&self.log).expect("creating the Prometheus log");
        let child = Command::new(PROMETHEUS)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if http_get(self.port, "/-/ready").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("Prometheus on port {} was not ready within 60 s", self.port);
    }

    /// Stops it (SIGTERM, then waits): its port refuses connections until `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with the pid of our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// `data.result` of an instant query.
    pub fn query(&self, promql: &str) -> Vec<Value> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let (status, body) = http_get(self.port, &path)
            .unwrap_or_else(|| panic!("Prometheus did not answer {promql}"));
        let doc: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("Prometheus answered {status} with non-JSON ({e}): {body}"));
        assert_eq!(doc["status"], "success", "query {promql}: {body}");
        doc["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The single value of an instant-vector query, if exactly one series matches.
    pub fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql);
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// The raw samples `(timestamp_ms, value)` of a range-vector query with one series.
    pub fn samples(&self, range_query: &str) -> Vec<(i64, f64)> {
        let result = self.query(range_query);
        assert!(
            result.len() <= 1,
            "{range_query} matched {} series: {result:?}",
            result.len()
        );
        result
            .first()
            .and_then(|s| s["values"].as_array())
            .map(|values| {
                values
                    .iter()
                    .filter_map(|v| {
                        let ts = v[0].as_f64()?;
                        let value = v[1].as_str()?.parse().ok()?;
                        Some(((ts * 1000.0).round() as i64, value))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the test receiver answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 with an empty OTLP response.
    Accept,
    /// This status (429 with `Retry-After: 1`).
    Status(u16),
    /// 200, after this delay.
    Slow(Duration),
    /// Reads the request, never answers, holds the connection.
    Hang,
    /// Reads the request, then resets the connection (RST).
    Reset,
    /// Answers bytes that are not HTTP.
    Garbage,
}

/// A request the receiver read, and what it answered (0: no HTTP answer).
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub answered: u16,
}

/// An OTLP/HTTP receiver on loopback that records every request.
pub struct Receiver {
    pub port: u16,
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    pub fn start(behaviour: Behaviour) -> Self {
        let mut r = Self {
            port: free_port(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            received: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        r.restart();
        r
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }

    /// Closes the port: connections are refused until `restart`.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.thread.is_none(), "receiver already running");
        self.stop.store(false, Ordering::SeqCst);
        let listener =
            TcpListener::bind(("127.0.0.1", self.port)).expect("binding the receiver's port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let (behaviour, received, stop) = (
            Arc::clone(&self.behaviour),
            Arc::clone(&self.received),
            Arc::clone(&self.stop),
        );
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (behaviour, received, stop) = (
                            Arc::clone(&behaviour),
                            Arc::clone(&received),
                            Arc::clone(&stop),
                        );
                        std::thread::spawn(move || serve(stream, &behaviour, &received, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }));
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("received lock").clone()
    }

    /// Requests to `path` answered 2xx.
    pub fn accepted(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && (200..300).contains(&r.answered))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_request(stream: &mut TcpStream) -> Option<(String, BTreeMap<String, String>, Vec<u8>)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((path, headers, body))
}

fn serve(
    mut stream: TcpStream,
    behaviour: &Mutex<Behaviour>,
    received: &Mutex<Vec<Received>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_nonblocking(false);
    let Some((path, headers, body)) = read_request(&mut stream) else {
        return;
    };
    let behaviour = *behaviour.lock().expect("behaviour lock");
    let ok_body = if path == "/v1/logs" {
        opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::default()
            .encode_to_vec()
    } else {
        opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse::default()
            .encode_to_vec()
    };
    let answer = |stream: &mut TcpStream, status: u16, extra: &str, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: \
             {}\r\nConnection: close\r\n{extra}\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        let _ = stream.flush();
    };
    let record = |answered: u16| {
        received.lock().expect("received lock").push(Received {
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            answered,
        });
    };
    match behaviour {
        Behaviour::Accept => {
            record(200);
            answer(&mut stream, 200, "", &ok_body);
        }
        Behaviour::Status(code) => {
            record(code);
            let extra = if code == 429 {
                "Retry-After: 1\r\n"
            } else {
                ""
            };
            answer(&mut stream, code, extra, b"test receiver says no");
        }
        Behaviour::Slow(delay) => {
            std::thread::sleep(delay);
            record(200);
            answer(&mut stream, 200, "", &ok_body);
        }
        Behaviour::Hang => {
            record(0);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Behaviour::Reset => {
            record(0);
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid socket of ours and a properly sized linger struct; closing it
            // after SO_LINGER 0 sends a RST instead of a FIN.
            unsafe {
                libc::setsockopt(
                    stream.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
        Behaviour::Garbage => {
            record(0);
            let _ = stream.write_all(b"\x00\x17\xff not http at all \r\n\r\n\x01\x02");
        }
    }
}

pub fn decode_metrics(body: &[u8]) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest::decode(body).expect("an OTLP metrics request")
}

pub fn decode_logs(body: &[u8]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest::decode(body).expect("an OTLP logs request")
}

/// Every profile document of a data directory, oldest first (rotated files included).
pub fn profiles(data_dir: &Path) -> Vec<Value> {
    let current = data_dir.join("profiles.jsonl");
    let mut files: Vec<PathBuf> = (1..100)
        .rev()
        .map(|n| data_dir.join(format!("profiles.jsonl.{n}")))
        .filter(|p| p.exists())
        .collect();
    files.push(current);
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| {
            text.lines()
                .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Writes `crmprof.toml` into the scratch directory.
pub fn write_config(scratch: &Scratch, toml: &str) -> PathBuf {
    let path = scratch.0.join("crmprof.toml");
    std::fs::write(&path, toml).expect("writing crmprof.toml");
    path
}

/// A copy of the workload binary named `name` (`crmprof run` names services after the
/// executable, so a copy — not a symlink — gives the workload a service of its own), started
/// with `--wait`: start it before the agent, release it once the agent measures.
pub struct NamedWorkload {
    pub child: Child,
    stdin: Option<ChildStdin>,
}

impl NamedWorkload {
    pub fn start(scratch: &Scratch, name: &str, args: &[&str]) -> Self {
        let bin = scratch.0.join(name);
        std::fs::copy(workload_bin(), &bin).expect("copying the workload");
        let mut child = Command::new(&bin)
            .arg("--wait")
            .args(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("starting the workload");
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    /// Lets it run and waits for its successful exit.
    pub fn run_to_end(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"g").expect("releasing the workload");
        }
        let status = self.child.wait().expect("waiting for the workload");
        assert!(status.success(), "workload failed: {status}");
    }
}

/// Waits until `done` holds, polling every 200 ms; false on timeout.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    done()
}
