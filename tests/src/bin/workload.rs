//! Workloads with a known truth, for the integration tests. Each makes exactly the calls it is
//! asked for; with `--wait` it first blocks on one byte of stdin, so a test can start the agent
//! (or move it into a cgroup) in between and count only what follows.
//!
//! usage: workload [--wait] MODE ARGS...
//!   sleep N MICROS            N clock_nanosleep calls; prints the voluntary and involuntary
//!                             switches the kernel counted during them
//!   fail-open N               N openat calls failing with ENOENT
//!   spin CPU_MILLIS THREADS   each thread burns CPU_MILLIS of its own CPU time
//!   spin-wall MILLIS THREADS  each thread spins for MILLIS of wall time
//!   wake-busy MILLIS THREADS SLEEP_MICROS  for MILLIS, each thread spins ~200 µs of CPU and
//!                             sleeps SLEEP_MICROS, over and over; prints the time its threads
//!                             waited on run queues meanwhile, in ns, as the kernel counted it
//!                             (the sum of their `run_delay` growth in /proc/thread-self/schedstat)
//!   mutex MILLIS THREADS      threads contend on one mutex, each holding it ~1 ms at a time
//!   tcp-sink ADDR             listen on ADDR (port 0: any), print the port, read one
//!                             connection to EOF, print the byte count
//!   tcp-source ADDR BYTES     connect, write exactly BYTES, close
//!   tcp-paced ADDR BYTES MILLIS  connect, write BYTES every millisecond for MILLIS, close
//!   slow-server ADDR DELAY_MS N  answer N one-byte requests after DELAY_MS each
//!   slow-client ADDR N        N request/response round trips
//!   poll-client ADDR N IDLE_MS  N round trips as an event loop makes them — send, poll for
//!                             the reply, read it — each followed by IDLE_MS polling a pipe
//!                             that never becomes readable (waiting for work that is not there)
//!   dio-write PATH BYTES      O_DIRECT writes of 1 MiB, then fsync
//!   dio-read PATH BYTES [THREADS]  O_DIRECT reads of 1 MiB, from THREADS threads at once
//!                             (default 1), each reading its own stretch of the file
//!   make-file PATH MIB        write a file, fsync it and drop it from the page cache
//!   fault-pages PATH          drop PATH from the page cache and read each page once through a
//!                             mapping (no readahead); prints the loop's major faults, then the
//!                             process's major faults, user and system µs (getrusage)
//!   mmap-thrash PATH MILLIS   touch random pages of a mapped file (no readahead) for MILLIS
//!   fork-storm N              fork N children that exit at once, reaping each
//!   syscall-loop N            N getppid calls; prints the mean ns per call
//!   syscall-rate RATE MILLIS  getppid at RATE calls/s for MILLIS, in 1 ms batches

use std::{
    ffi::CString,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const USAGE: &str = "usage: workload [--wait] sleep N MICROS | fail-open N | spin CPU_MS THREADS \
                     | spin-wall MS THREADS | mutex MS THREADS | tcp-sink ADDR \
                     | tcp-source ADDR BYTES | tcp-paced ADDR BYTES MS | slow-server ADDR DELAY_MS N \
                     | slow-client ADDR N | poll-client ADDR N IDLE_MS | dio-write PATH BYTES | dio-read PATH BYTES [THREADS]";

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--wait") {
        args.remove(0);
        let mut byte = [0u8; 1];
        // Returns on a byte or on EOF: either releases the workload.
        let _ = std::io::stdin().read(&mut byte);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("workload: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn num(args: &[String], i: usize) -> Result<u64, String> {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("argument {i} must be a number"))
}

fn text(args: &[String], i: usize) -> Result<&str, String> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| format!("argument {i} is missing"))
}

fn run(args: &[String]) -> Result<(), String> {
    match text(args, 0)? {
        "sleep" => {
            let (n, micros) = (num(args, 1)?, num(args, 2)?);
            let ts = libc::timespec {
                tv_sec: (micros / 1_000_000) as libc::time_t,
                tv_nsec: ((micros % 1_000_000) * 1_000) as libc::c_long,
            };
            let before = switches();
            for _ in 0..n {
                // SAFETY: a valid timespec; a null remainder is allowed.
                unsafe {
                    libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
                };
            }
            let after = switches();
            // The kernel's own count: a sleep whose timer fires before the thread gets to
            // block (a short sleep, a vCPU stalled by its host) returns without a switch.
            println!("{} {}", after.0 - before.0, after.1 - before.1);
        }
        "fail-open" => {
            let n = num(args, 1)?;
            let path = CString::new("/nonexistent-crmprof-test/file").map_err(|e| e.to_string())?;
            for _ in 0..n {
                // SAFETY: a valid NUL-terminated path; the call fails with ENOENT.
                unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
            }
        }
        "spin" => {
            let (millis, threads) = (num(args, 1)?, num(args, 2)?);
            in_threads(threads, move || spin_cpu(Duration::from_millis(millis)));
        }
        "spin-wall" => {
            let (millis, threads) = (num(args, 1)?, num(args, 2)?);
            in_threads(threads, move || {
                let end = Instant::now() + Duration::from_millis(millis);
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
            });
        }
        "wake-busy" => {
            let (millis, threads, micros) = (num(args, 1)?, num(args, 2)?, num(args, 3)?);
            let waited = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let total = Arc::clone(&waited);
            let end = Instant::now() + Duration::from_millis(millis);
            in_threads(threads, move || {
                let before = run_delay_ns();
                while Instant::now() < end {
                    spin_cpu(Duration::from_micros(200));
                    std::thread::sleep(Duration::from_micros(micros));
                }
                let after = run_delay_ns();
                total.fetch_add(after - before, std::sync::atomic::Ordering::Relaxed);
            });
            println!("{}", waited.load(std::sync::atomic::Ordering::Relaxed));
        }
        "mutex" => {
            let (millis, threads) = (num(args, 1)?, num(args, 2)?);
            let lock = Arc::new(Mutex::new(0u64));
            let end = Instant::now() + Duration::from_millis(millis);
            in_threads(threads, move || {
                while Instant::now() < end {
                    let mut held = lock.lock().unwrap_or_else(|p| p.into_inner());
                    let until = Instant::now() + Duration::from_millis(1);
                    while Instant::now() < until {
                        *held += 1;
                    }
                }
            });
        }
        "tcp-sink" => {
            let listener = TcpListener::bind(text(args, 1)?).map_err(|e| e.to_string())?;
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            println!("{port}");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e) => return Err(e.to_string()),
                }
            }
            println!("{total}");
        }
        "tcp-source" => {
            let (addr, bytes) = (text(args, 1)?, num(args, 2)?);
            let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let buf = vec![0x5au8; 1 << 16];
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                conn.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                left -= n as u64;
            }
            conn.shutdown(std::net::Shutdown::Both)
                .map_err(|e| e.to_string())?;
        }
        "tcp-paced" => {
            // Sends `per_ms` bytes every millisecond for `millis` ms: a known byte rate.
            let (addr, per_ms, millis) = (text(args, 1)?, num(args, 2)?, num(args, 3)?);
            let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let buf = vec![0x5au8; per_ms as usize];
            let start = Instant::now();
            let mut tick = 0u64;
            while start.elapsed() < Duration::from_millis(millis) {
                conn.write_all(&buf).map_err(|e| e.to_string())?;
                tick += 1;
                let next = start + Duration::from_millis(tick);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            conn.shutdown(std::net::Shutdown::Both)
                .map_err(|e| e.to_string())?;
        }
        "slow-server" => {
            let (addr, delay, n) = (text(args, 1)?, num(args, 2)?, num(args, 3)?);
            let listener = TcpListener::bind(addr).map_err(|e| e.to_string())?;
            let port = listener.local_addr().map_err(|e| e.to_string())?.port();
            println!("{port}");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            for _ in 0..n {
                conn.read_exact(&mut byte).map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(delay));
                conn.write_all(&byte).map_err(|e| e.to_string())?;
            }
        }
        "slow-client" => {
            let (addr, n) = (text(args, 1)?, num(args, 2)?);
            let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let mut byte = [1u8; 1];
            for _ in 0..n {
                conn.write_all(&byte).map_err(|e| e.to_string())?;
                conn.read_exact(&mut byte).map_err(|e| e.to_string())?;
            }
        }
        "poll-client" => {
            let (addr, n, idle) = (text(args, 1)?, num(args, 2)?, num(args, 3)?);
            let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
            let (idle_fd, _writer) = std::io::pipe().map_err(|e| e.to_string())?;
            let poll = |fd: i32, millis: i32| {
                let mut p = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut p, 1, millis) }
            };
            let mut byte = [1u8; 1];
            for _ in 0..n {
                conn.write_all(&byte).map_err(|e| e.to_string())?;
                poll(conn.as_raw_fd(), -1);
                conn.read_exact(&mut byte).map_err(|e| e.to_string())?;
                poll(idle_fd.as_raw_fd(), idle as i32);
            }
        }
        "dio-write" => {
            let (path, bytes) = (text(args, 1)?, num(args, 2)?);
            direct_io(path, 0..bytes, true)?;
        }
        "dio-read" => {
            let (path, bytes) = (text(args, 1)?, num(args, 2)?);
            let threads = if args.len() > 3 {
                num(args, 3)?.max(1)
            } else {
                1
            };
            // Stretches of whole 1 MiB blocks, so every read stays aligned.
            let stretch = bytes.div_ceil(threads).next_multiple_of(1 << 20);
            std::thread::scope(|s| {
                let readers: Vec<_> = (0..threads)
                    .map(|i| {
                        let from = (i * stretch).min(bytes);
                        let to = (from + stretch).min(bytes);
                        s.spawn(move || direct_io(path, from..to, false))
                    })
                    .collect();
                readers
                    .into_iter()
                    .try_for_each(|r| r.join().unwrap_or_else(|_| Err("a reader panicked".into())))
            })?;
        }
        "make-file" => {
            let (path, mib) = (text(args, 1)?, num(args, 2)?);
            let mut file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
            let block = vec![0xa5u8; 1 << 20];
            for _ in 0..mib {
                file.write_all(&block).map_err(|e| e.to_string())?;
            }
            file.sync_all().map_err(|e| e.to_string())?;
            // SAFETY: a valid fd; advice only.
            unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
        "fault-pages" => {
            let path = text(args, 1)?;
            let (faults, own) = fault_pages(path)?;
            println!("{faults} {own}");
        }
        "mmap-thrash" => {
            let (path, millis) = (text(args, 1)?, num(args, 2)?);
            mmap_thrash(path, Duration::from_millis(millis))?;
        }
        "fork-storm" => {
            let n = num(args, 1)?;
            for _ in 0..n {
                // SAFETY: the child calls only async-signal-safe _exit.
                match unsafe { libc::fork() } {
                    0 => unsafe { libc::_exit(0) },
                    -1 => return Err(format!("fork: {}", std::io::Error::last_os_error())),
                    child => {
                        let mut status = 0;
                        // SAFETY: waiting for our own child.
                        unsafe { libc::waitpid(child, &mut status, 0) };
                    }
                }
            }
        }
        "syscall-loop" => {
            let n = num(args, 1)?;
            let start = Instant::now();
            for _ in 0..n {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::getppid() };
            }
            println!("{:.1}", start.elapsed().as_nanos() as f64 / n.max(1) as f64);
        }
        "syscall-rate" => {
            let (rate, millis) = (num(args, 1)?, num(args, 2)?);
            let per_ms = rate / 1000;
            let start = Instant::now();
            let mut tick = 0u64;
            while start.elapsed() < Duration::from_millis(millis) {
                for _ in 0..per_ms {
                    // SAFETY: getppid has no preconditions.
                    unsafe { libc::getppid() };
                }
                tick += 1;
                let next = start + Duration::from_millis(tick);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
        }
        other => return Err(format!("unknown mode {other}")),
    }
    Ok(())
}

/// Runs `work` on `n` threads, the main thread being one of them.
/// This thread's voluntary and involuntary context switches so far (`getrusage`).
fn switches() -> (i64, i64) {
    // SAFETY: getrusage fills the zeroed struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// This thread's time waiting on run queues so far: the second field of its schedstat.
fn run_delay_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn in_threads(n: u64, work: impl Fn() + Send + Sync + 'static) {
    let work = Arc::new(work);
    let handles: Vec<_> = (1..n.max(1))
        .map(|_| {
            let work = Arc::clone(&work);
            std::thread::spawn(move || work())
        })
        .collect();
    work();
    for h in handles {
        let _ = h.join();
    }
}

/// Burns `cpu` of this thread's own CPU time, however long that takes in wall time.
fn spin_cpu(cpu: Duration) {
    let thread_cpu = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let start = thread_cpu();
    while thread_cpu() - start < cpu {
        for _ in 0..1000 {
            std::hint::spin_loop();
        }
    }
}

/// O_DIRECT reads or writes over `range` of the file in 1 MiB blocks from a 4 KiB-aligned
/// buffer, then (writes) fsync.
fn direct_io(path: &str, range: std::ops::Range<u64>, write: bool) -> Result<(), String> {
    const BLOCK: usize = 1 << 20;
    let layout = std::alloc::Layout::from_size_align(BLOCK, 4096).map_err(|e| e.to_string())?;
    // SAFETY: a non-zero-sized layout; the buffer is freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    if buf.is_null() {
        return Err("out of memory".into());
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let fd = file.as_raw_fd();
    let mut done = range.start;
    let mut result = Ok(());
    while done < range.end {
        let n = (range.end - done).min(BLOCK as u64) as usize;
        // SAFETY: `buf` holds BLOCK bytes; `n` ≤ BLOCK; the offset is block-aligned.
        let r = unsafe {
            if write {
                libc::pwrite(fd, buf.cast(), n, done as libc::off_t)
            } else {
                libc::pread(fd, buf.cast(), n, done as libc::off_t)
            }
        };
        if r <= 0 {
            result = Err(format!(
                "{path}: I/O failed at {done}: {}",
                std::io::Error::last_os_error()
            ));
            break;
        }
        done += r as u64;
    }
    if write && result.is_ok() {
        file.sync_all().map_err(|e| e.to_string())?;
    }
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    result
}

/// A read-only shared mapping of the file at `path`, readahead off (`MADV_RANDOM`): each page
/// not in the page cache is read alone, at its own major fault. Unmapped on drop.
struct RandomMap {
    file: std::fs::File,
    addr: *const u8,
    len: usize,
}

impl RandomMap {
    fn open(path: &str) -> Result<Self, String> {
        let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: a fresh read-only shared mapping of a file we hold open; unmapped in drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!("mmap {path}: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: advice on the mapping just made.
        unsafe { libc::madvise(addr, len, libc::MADV_RANDOM) };
        Ok(Self {
            file,
            addr: addr.cast(),
            len,
        })
    }

    fn pages(&self) -> usize {
        self.len / 4096
    }

    /// Reads the first byte of page `page` (below [`Self::pages`]).
    fn touch(&self, page: usize) -> u8 {
        assert!(page < self.pages());
        // SAFETY: `page * 4096` is inside the mapping.
        unsafe { std::ptr::read_volatile(self.addr.add(page * 4096)) }
    }
}

impl Drop for RandomMap {
    fn drop(&mut self) {
        // SAFETY: unmapping what `open` mapped.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// Drops `path` from the page cache, then reads each of its pages once through a mapping with
/// readahead off: one major fault per page. Returns the major faults the loop took and the
/// process's whole count so far, with its CPU time split by mode (`getrusage`).
fn fault_pages(path: &str) -> Result<(u64, String), String> {
    let map = RandomMap::open(path)?;
    // SAFETY: a valid fd; advice only (the file is clean: `make-file` synced it).
    unsafe { libc::posix_fadvise(map.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let before = rusage();
    let sum = (0..map.pages()).fold(0u64, |sum, page| {
        sum.wrapping_add(u64::from(map.touch(page)))
    });
    std::hint::black_box(sum);
    let after = rusage();
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let own = format!(
        "{} {} {}",
        after.ru_majflt,
        micros(after.ru_utime),
        micros(after.ru_stime)
    );
    Ok(((after.ru_majflt - before.ru_majflt) as u64, own))
}

fn rusage() -> libc::rusage {
    // SAFETY: getrusage fills the zeroed struct it is given.
    unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    }
}

/// Touches random pages of a read-only mapping of `path` for `how_long`, with readahead off, so
/// every page that does not fit in memory is a major fault.
fn mmap_thrash(path: &str, how_long: Duration) -> Result<(), String> {
    let map = RandomMap::open(path)?;
    let pages = map.pages().max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut sum = 0u64;
    let end = Instant::now() + how_long;
    while Instant::now() < end {
        for _ in 0..64 {
            // xorshift: a cheap, well-spread page order.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sum = sum.wrapping_add(u64::from(map.touch((x as usize) % pages)));
        }
    }
    std::hint::black_box(sum);
    Ok(())
}
