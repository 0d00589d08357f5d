//! Closed-loop clients that stamp every request: the toggled comparison sorts requests into
//! the windows the agent's probes were attached or detached in, which needs each one's
//! completion time and latency — wrk and redis-benchmark give only totals. Each keeps the
//! shape of the tool it stands in for: connections, threads, one request in flight per
//! connection.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinSet,
};

/// One request: when its reply was complete (ns since the epoch, as the agent's toggle log and
/// pgbench's per-transaction log stamp time) and how long it took, ns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Request {
    pub end_ns: u64,
    pub latency_ns: u64,
}

/// Wall-clock time, ns since the epoch.
pub fn epoch_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// HTTP/1.1 GETs of `/` on 127.0.0.1:`port` over keep-alive connections, `threads` threads of
/// `connections` each, for `length`: wrk's shape (`-t2 -c32` is 2 threads of 16).
pub fn http(port: u16, threads: usize, connections: usize, length: Duration) -> Vec<Request> {
    let until = epoch_ns() + length.as_nanos() as u64;
    let per_thread: Vec<Vec<Request>> = std::thread::scope(|s| {
        let running: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || {
                    on_one_thread(connections, |_| http_connection(port, until), "nginx")
                })
            })
            .collect();
        running
            .into_iter()
            .map(|t| t.join().expect("an HTTP client thread"))
            .collect()
    });
    per_thread.into_iter().flatten().collect()
}

/// Redis SET and GET in turn (a 3-byte value, one key per connection) on `connections`
/// connections from one thread, for `length`: redis-benchmark's shape.
pub fn redis(port: u16, connections: usize, length: Duration) -> Vec<Request> {
    let until = epoch_ns() + length.as_nanos() as u64;
    on_one_thread(connections, |c| redis_connection(port, c, until), "Redis")
}

/// Runs `connections` clients made by `client` on a single-threaded runtime (an event loop,
/// as wrk's threads and redis-benchmark are) and gathers their requests.
fn on_one_thread<F>(
    connections: usize,
    client: impl Fn(usize) -> F,
    server: &'static str,
) -> Vec<Request>
where
    F: Future<Output = std::io::Result<Vec<Request>>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut set = JoinSet::new();
        for c in 0..connections {
            set.spawn(client(c));
        }
        let mut all = Vec::new();
        while let Some(done) = set.join_next().await {
            match done.expect("a client task") {
                Ok(requests) => all.extend(requests),
                Err(e) => panic!("a {server} client failed: {e}"),
            }
        }
        all
    })
}

const HTTP_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

async fn http_connection(port: u16, until: u64) -> std::io::Result<Vec<Request>> {
    let connect = || async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        std::io::Result::Ok(stream)
    };
    let mut stream = connect().await?;
    let mut buf = vec![0_u8; 64 * 1024];
    let mut done = Vec::new();
    loop {
        let start = epoch_ns();
        if start >= until {
            return Ok(done);
        }
        stream.write_all(HTTP_GET).await?;
        let mut have = 0;
        let mut response = None;
        while response.is_none_or(|(len, _)| have < len) {
            if have == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = stream.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if response.is_none() {
                response = http_response(&buf[..have])?;
            }
        }
        let end = epoch_ns();
        done.push(Request {
            end_ns: end,
            latency_ns: end - start,
        });
        // nginx ends a keep-alive connection after `keepalive_requests` (1000), saying so in
        // the last response; wrk connects again, and so does this.
        if response.is_some_and(|(_, closes)| closes) {
            stream = connect().await?;
        }
    }
}

/// Once the head of a response is in `got`: the length of the whole response (head and
/// body), and whether the server closes the connection after it.
fn http_response(got: &[u8]) -> std::io::Result<Option<(usize, bool)>> {
    let Some(head) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&got[..head]);
    let header = |wanted: &str| {
        text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim())
        })
    };
    let body = header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
        .ok_or_else(|| std::io::Error::other(format!("no Content-Length in {text:?}")))?;
    let closes = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(Some((head + 4 + body, closes)))
}

async fn redis_connection(port: u16, c: usize, until: u64) -> std::io::Result<Vec<Request>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let key = format!("key:{c}");
    let set = format!(
        "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$3\r\nxxx\r\n",
        key.len()
    );
    let get = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    let mut buf = [0_u8; 256];
    let mut done = Vec::new();
    for command in [set.as_bytes(), get.as_bytes()].into_iter().cycle() {
        let start = epoch_ns();
        if start >= until {
            break;
        }
        stream.write_all(command).await?;
        let mut have = 0;
        loop {
            let n = stream.read(&mut buf[have..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            have += n;
            if redis_reply_complete(&buf[..have])? {
                break;
            }
            if have == buf.len() {
                return Err(std::io::Error::other("a Redis reply longer than expected"));
            }
        }
        let end = epoch_ns();
        done.push(Request {
            end_ns: end,
            latency_ns: end - start,
        });
    }
    Ok(done)
}

/// Whether `got` holds a whole RESP reply of the kinds SET and GET return: a status or error
/// line, or a bulk string (or nil).
fn redis_reply_complete(got: &[u8]) -> std::io::Result<bool> {
    let Some(line) = got.windows(2).position(|w| w == b"\r\n") else {
        return Ok(false);
    };
    match got.first() {
        Some(b'+' | b':') => Ok(true),
        Some(b'$') => {
            let len: i64 = String::from_utf8_lossy(&got[1..line])
                .parse()
                .map_err(|_| std::io::Error::other("a malformed bulk length"))?;
            Ok(len < 0 || got.len() >= line + 2 + len as usize + 2)
        }
        _ => Err(std::io::Error::other(format!(
            "Redis replied {:?}",
            String::from_utf8_lossy(got)
        ))),
    }
}
