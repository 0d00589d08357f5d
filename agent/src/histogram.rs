//! Percentiles from the kernel's exponential histograms (OpenTelemetry scale 2: bucket `i` is
//! `[2^(i/4), 2^((i+1)/4))` ns; see `agent_ebpf::hist`).

use agent_ebpf::hist;

/// The `q`-quantile (0 < q ≤ 1) of a histogram, interpolated geometrically inside the bucket
/// where it falls (the buckets are exponential, so a geometric interpolation is the unbiased
/// guess), then clamped to the observed maximum. `None` for an empty histogram.
pub fn quantile(buckets: &[u64], q: f64, max_ns: u64) -> Option<u64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    // The rank of the quantile among `total` samples, 1-based.
    let rank = (q * total as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let lower = hist::lower_bound(i);
            let upper = hist::upper_bound(i);
            let within = (rank - seen as f64) / n as f64;
            let value = lower * (upper / lower).powf(within);
            let value = value as u64;
            return Some(if max_ns > 0 { value.min(max_ns) } else { value });
        }
        seen += n;
    }
    Some(max_ns)
}

/// Non-empty buckets as `[upper_bound_ns, count]` pairs, for the profile document.
pub fn nonzero_buckets(buckets: &[u64]) -> Vec<(u64, u64)> {
    buckets
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .map(|(i, &n)| (hist::upper_bound(i).ceil() as u64, n))
        .collect()
}

/// Upper bound of the highest non-empty bucket: a bound on the largest value in a window whose
/// exact maximum the cumulative kernel counter cannot give.
pub fn highest_upper_bound(buckets: &[u64]) -> Option<u64> {
    buckets
        .iter()
        .rposition(|&n| n > 0)
        .map(|i| hist::upper_bound(i).ceil() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: &[u64]) -> Vec<u64> {
        let mut buckets = vec![0; hist::BUCKETS];
        for &v in values {
            buckets[hist::bucket(v)] += 1;
        }
        buckets
    }

    #[test]
    fn buckets_follow_the_exponential_scale() {
        assert_eq!(hist::bucket(0), 0);
        assert_eq!(hist::bucket(1), 0);
        assert_eq!(hist::bucket(2), 4);
        assert_eq!(hist::bucket(1 << 20), 80);
        // Every value lies inside its bucket's bounds (within the 1/256 boundary rounding).
        for v in [
            3u64,
            7,
            100,
            999,
            1_000,
            65_537,
            1_060_000,
            123_456_789,
            1 << 39,
        ] {
            let b = hist::bucket(v);
            let (lo, hi) = (hist::lower_bound(b), hist::upper_bound(b));
            assert!(
                v as f64 >= lo * 0.996 && (v as f64) < hi * 1.004,
                "{v} in bucket {b} [{lo}, {hi})"
            );
        }
        assert_eq!(hist::bucket(u64::MAX), hist::BUCKETS - 1);
    }

    #[test]
    fn quantiles_are_within_a_bucket() {
        let values: Vec<u64> = (0..1000).map(|i| 1_000_000 + i * 100).collect();
        let h = histogram_of(&values);
        let p50 = quantile(&h, 0.5, 1_099_900).unwrap_or(0);
        // True p50 is 1.05 ms; a bucket here is 19% wide.
        assert!((1_000_000..1_200_000).contains(&p50), "p50 {p50}");
        let p100 = quantile(&h, 1.0, 1_099_900).unwrap_or(0);
        assert_eq!(p100, 1_099_900, "clamped to the max");
        assert_eq!(quantile(&vec![0; hist::BUCKETS], 0.5, 0), None);
    }

    #[test]
    fn sleep_of_one_ms_reads_between_1_and_1_5_ms() {
        let h = histogram_of(&[1_060_000; 50]);
        let p50 = quantile(&h, 0.5, 1_070_000).unwrap_or(0);
        assert!((1_000_000..1_500_000).contains(&p50), "p50 {p50}");
    }
}
