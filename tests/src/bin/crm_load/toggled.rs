//! The toggled comparison: one continuous load while the agent (`crmprof run --bench-toggle`)
//! detaches and attaches its probes in turn, every request sorted by its completion time into
//! the stretches with and without them. Runs minutes apart differ here by ±10%; stretches a
//! quarter of a second apart share the machine's state, and a run holds hundreds of them.

use integration_tests::Transition;

use crate::clients::Request;

/// A stretch with the probes in one state: from `guard` after the transition into it to
/// `guard` before the next one, so no request counted in it overlaps a transition by more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    on: bool,
    from_ns: u64,
    to_ns: u64,
}

fn windows(transitions: &[Transition], guard_ns: u64) -> Vec<Window> {
    transitions
        .windows(2)
        .map(|pair| Window {
            on: pair[0].on,
            from_ns: pair[0].end_ns + guard_ns,
            to_ns: pair[1].start_ns.saturating_sub(guard_ns),
        })
        .collect()
}

/// One state's share of a block: its seconds, the requests completed in them, their p99.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Side {
    pub seconds: f64,
    pub requests: u64,
    pub p99_ms: f64,
}

/// `per_block` adjacent windows — as many with the probes as without, interleaved — compared
/// as one: throughput and p99 of each side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Block {
    pub on: Side,
    pub off: Side,
}

/// The blocks of a run: its windows `per_block` (even) at a time, in order; a last partial
/// block is left out. `requests` is sorted by completion here.
pub fn blocks(
    transitions: &[Transition],
    requests: &mut [Request],
    guard_ns: u64,
    per_block: usize,
) -> Vec<Block> {
    requests.sort_unstable_by_key(|r| r.end_ns);
    let windows = windows(transitions, guard_ns);
    windows
        .chunks_exact(per_block)
        .filter(|chunk| chunk.iter().all(|w| w.to_ns > w.from_ns))
        .map(|chunk| {
            let side = |on: bool| {
                let mut seconds = 0.0;
                let mut latencies = Vec::new();
                for w in chunk.iter().filter(|w| w.on == on) {
                    seconds += (w.to_ns - w.from_ns) as f64 / 1e9;
                    let from = requests.partition_point(|r| r.end_ns < w.from_ns);
                    let to = requests.partition_point(|r| r.end_ns < w.to_ns);
                    latencies.extend(requests[from..to].iter().map(|r| r.latency_ns));
                }
                latencies.sort_unstable();
                Side {
                    seconds,
                    requests: latencies.len() as u64,
                    p99_ms: crate::p99(&latencies) as f64 / 1e6,
                }
            };
            Block {
                on: side(true),
                off: side(false),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{Block, Request, Transition, blocks};

    const MS: u64 = 1_000_000;

    /// Four 250 ms windows (off, on, off, on) with a transition of 1 ms before each, and one
    /// request completing every ms, those in the windows with probes taking 2 ms and the others
    /// 1 ms, except one slow request per window: each side holds exactly the requests that
    /// completed inside its windows' guards, and its p99 is the 99th percentile of theirs.
    #[test]
    fn requests_fall_into_the_windows_they_completed_in() {
        let transitions: Vec<Transition> = (0..5)
            .map(|i| Transition {
                on: i % 2 == 1,
                start_ns: i * 251 * MS,
                end_ns: i * 251 * MS + MS,
                slowest: None,
            })
            .collect();
        let mut requests: Vec<Request> = (0..1004)
            .map(|ms| {
                let window = ms / 251;
                let on = window % 2 == 1;
                let slow = ms % 251 == 100;
                Request {
                    end_ns: ms * MS + MS / 2,
                    latency_ns: if slow {
                        50 * MS
                    } else {
                        MS * (1 + u64::from(on))
                    },
                }
            })
            .rev()
            .collect();
        let guard = 25 * MS;
        let got = blocks(&transitions, &mut requests, guard, 4);
        assert_eq!(got.len(), 1);
        let Block { on, off } = got[0];
        // Each window runs from 1 ms + 25 ms after its start to 25 ms before the next: 200 ms;
        // requests end at x.5 ms, so 200 of them complete in it.
        assert!((on.seconds - 0.4).abs() < 1e-9, "{on:?}");
        assert!((off.seconds - 0.4).abs() < 1e-9, "{off:?}");
        assert_eq!((on.requests, off.requests), (400, 400));
        // 2 slow ones in 400: the 396th fastest (99th percentile) is an ordinary one.
        assert_eq!((on.p99_ms, off.p99_ms), (2.0, 1.0));
        // A block needs all its windows: with three, there is none.
        assert!(blocks(&transitions[..4], &mut requests, guard, 4).is_empty());
    }
}
