//! Workloads with a known truth, for the integration tests. Each makes exactly the syscalls it
//! is asked for; with `--wait` it first blocks on one byte of stdin, so a test can start the
//! agent in between and count only what follows.
//!
//! usage: workload [--wait] sleep N MICROS | fail-open N | spin SECONDS

use std::{ffi::CString, io::Read as _, process::ExitCode};

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--wait") {
        args.remove(0);
        let mut byte = [0u8; 1];
        // Returns on a byte or on EOF: either releases the workload.
        let _ = std::io::stdin().read(&mut byte);
    }
    let arg = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok());
    match (args.first().map(String::as_str), arg(1), arg(2)) {
        (Some("sleep"), Some(n), Some(micros)) => {
            let ts = libc::timespec {
                tv_sec: (micros / 1_000_000) as libc::time_t,
                tv_nsec: ((micros % 1_000_000) * 1_000) as libc::c_long,
            };
            for _ in 0..n {
                // SAFETY: a valid timespec; a null remainder is allowed.
                unsafe {
                    libc::clock_nanosleep(libc::CLOCK_MONOTONIC, 0, &ts, std::ptr::null_mut())
                };
            }
        }
        (Some("fail-open"), Some(n), _) => {
            let Ok(path) = CString::new("/nonexistent-crmprof-test/file") else {
                return ExitCode::FAILURE;
            };
            for _ in 0..n {
                // SAFETY: a valid NUL-terminated path; the call fails with ENOENT.
                unsafe { libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) };
            }
        }
        (Some("spin"), Some(secs), _) => {
            let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
            while std::time::Instant::now() < end {
                std::hint::spin_loop();
            }
        }
        _ => {
            eprintln!("usage: workload [--wait] sleep N MICROS | fail-open N | spin SECONDS");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
