//! Latency histograms (HdrHistogram, microseconds) that merge exactly across processes.
//!
//! A child process ships each histogram as its recorded `(value, count)` pairs, where
//! `value` is the highest value equivalent to the bucket. Recording those pairs into a
//! histogram with the same bounds and precision lands every count in the bucket it came
//! from, so the merged percentiles equal those of one histogram that saw every sample.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest recordable value: one hour in microseconds. Larger samples saturate.
const MAX_US: u64 = 3_600_000_000;

/// A latency distribution in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(into = "HistogramData", from = "HistogramData")]
pub struct LatencyHistogram {
    inner: Histogram<u64>,
}

/// The wire form of a [`LatencyHistogram`]: precision plus recorded buckets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistogramData {
    /// Significant decimal digits the histogram keeps (1–5).
    pub sigfig: u8,
    /// `(highest equivalent value in µs, count)` for every non-empty bucket.
    pub buckets: Vec<(u64, u64)>,
}

impl From<LatencyHistogram> for HistogramData {
    fn from(histogram: LatencyHistogram) -> Self {
        Self {
            sigfig: histogram.inner.sigfig(),
            buckets: histogram
                .inner
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        }
    }
}

impl From<HistogramData> for LatencyHistogram {
    fn from(data: HistogramData) -> Self {
        let mut histogram = Self::with_precision(data.sigfig.clamp(1, 5));
        for (value, count) in data.buckets {
            histogram.inner.saturating_record_n(value, count);
        }
        histogram
    }
}

/// Percentiles of a distribution in milliseconds; every value is `null` in JSON when
/// nothing was recorded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Samples recorded.
    pub count: u64,
    /// Smallest sample.
    pub min: Option<f64>,
    /// Arithmetic mean.
    pub mean: Option<f64>,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// Largest sample.
    pub max: Option<f64>,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// A histogram with 3 significant digits from 1 µs to 1 h.
    pub fn new() -> Self {
        Self::with_precision(3)
    }

    /// A histogram keeping `sigfig` significant digits (1–5) from 1 µs to 1 h.
    ///
    /// # Panics
    ///
    /// Panics when `sigfig` is outside 1–5.
    pub fn with_precision(sigfig: u8) -> Self {
        let inner = Histogram::new_with_bounds(1, MAX_US, sigfig)
            .expect("1 µs..1 h with 1-5 significant digits is a valid histogram");
        Self { inner }
    }

    /// Records one sample in microseconds; 0 is recorded as 1 µs and anything beyond
    /// one hour as one hour.
    pub fn record_us(&mut self, us: u64) {
        self.inner.saturating_record(us.max(1));
    }

    /// Records one duration.
    pub fn record(&mut self, duration: Duration) {
        self.record_us(u64::try_from(duration.as_micros()).unwrap_or(MAX_US));
    }

    /// Adds every sample of `other` (which may have another precision).
    pub fn merge(&mut self, other: &Self) {
        if self.inner.sigfig() == other.inner.sigfig() {
            // Same bounds and precision: cannot fail.
            let _ = self.inner.add(&other.inner);
        } else {
            for v in other.inner.iter_recorded() {
                self.inner
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The value at quantile `q` (0–1) in microseconds, or `None` when empty.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        (!self.is_empty()).then(|| self.inner.value_at_quantile(q))
    }

    /// Smallest sample in microseconds.
    pub fn min_us(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.inner.min())
    }

    /// Largest sample in microseconds.
    pub fn max_us(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.inner.max())
    }

    /// Percentiles in milliseconds.
    pub fn summary(&self) -> Summary {
        if self.is_empty() {
            return Summary::default();
        }
        let at = |q: f64| Some(us_to_ms(self.inner.value_at_quantile(q)));
        Summary {
            count: self.len(),
            min: Some(us_to_ms(self.inner.min())),
            mean: Some(self.inner.mean() / 1000.0),
            p50: at(0.5),
            p90: at(0.9),
            p99: at(0.99),
            p999: at(0.999),
            max: Some(us_to_ms(self.inner.max())),
        }
    }

    /// The cumulative distribution: `(latency ms, fraction of samples ≤ it)` for every
    /// non-empty bucket, ascending.
    pub fn cdf_ms(&self) -> Vec<(f64, f64)> {
        let total = self.len() as f64;
        let mut seen = 0u64;
        self.inner
            .iter_recorded()
            .map(|v| {
                seen += v.count_at_value();
                (us_to_ms(v.value_iterated_to()), seen as f64 / total)
            })
            .collect()
    }
}

/// Latency over time: one coarse histogram per time bucket of the hold phase, for the
/// "latency over time" plot. Buckets are allocated only when a sample lands in them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timeline {
    /// Width of one bucket in microseconds (0: timeline disabled).
    pub bucket_us: u64,
    /// `(bucket index, distribution)` for every bucket that has samples.
    pub buckets: Vec<(u32, LatencyHistogram)>,
}

/// Most buckets a timeline keeps; later samples go into the last one.
pub const MAX_TIMELINE_BUCKETS: u32 = 1200;

impl Timeline {
    /// A timeline of `bucket` wide buckets (at least 1 ms).
    pub fn new(bucket: Duration) -> Self {
        Self {
            bucket_us: u64::try_from(bucket.as_micros())
                .unwrap_or(u64::MAX)
                .max(1000),
            buckets: Vec::new(),
        }
    }

    /// Records `latency_us` at `offset_us` after the start of the hold.
    pub fn record(&mut self, offset_us: u64, latency_us: u64) {
        if self.bucket_us == 0 {
            return;
        }
        let index = u32::try_from(offset_us / self.bucket_us)
            .unwrap_or(u32::MAX)
            .min(MAX_TIMELINE_BUCKETS - 1);
        // Samples arrive in time order, so the wanted bucket is almost always the last.
        let position = match self.buckets.iter().rposition(|(i, _)| *i <= index) {
            Some(p) if self.buckets[p].0 == index => p,
            Some(p) => {
                self.buckets
                    .insert(p + 1, (index, LatencyHistogram::with_precision(1)));
                p + 1
            }
            None => {
                self.buckets
                    .insert(0, (index, LatencyHistogram::with_precision(1)));
                0
            }
        };
        self.buckets[position].1.record_us(latency_us);
    }

    /// Adds `other`'s samples bucket by bucket (the bucket widths must match; a
    /// timeline with width 0 is empty and adopts `other`'s width).
    pub fn merge(&mut self, other: &Self) {
        if other.buckets.is_empty() {
            return;
        }
        if self.bucket_us == 0 {
            self.bucket_us = other.bucket_us;
        }
        debug_assert_eq!(
            self.bucket_us, other.bucket_us,
            "timelines of different widths"
        );
        for (index, histogram) in &other.buckets {
            match self.buckets.binary_search_by_key(index, |(i, _)| *i) {
                Ok(p) => self.buckets[p].1.merge(histogram),
                Err(p) => self.buckets.insert(p, (*index, histogram.clone())),
            }
        }
    }

    /// `(bucket start in s since hold start, p50 ms, p99 ms, max ms)` per bucket.
    pub fn series(&self) -> Vec<(f64, f64, f64, f64)> {
        self.buckets
            .iter()
            .map(|(index, h)| {
                let ms = |v: Option<u64>| v.map_or(0.0, us_to_ms);
                (
                    f64::from(*index) * self.bucket_us as f64 / 1e6,
                    ms(h.quantile_us(0.5)),
                    ms(h.quantile_us(0.99)),
                    ms(h.max_us()),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(values: impl IntoIterator<Item = u64>) -> LatencyHistogram {
        let mut h = LatencyHistogram::new();
        for v in values {
            h.record_us(v);
        }
        h
    }

    #[test]
    fn merging_shipped_halves_equals_one_histogram() {
        let values: Vec<u64> = (0..10_000u64).map(|i| (i * 7919) % 250_000 + 1).collect();
        let whole = filled(values.iter().copied());
        let (a, b) = values.split_at(3_333);
        let shipped_a: LatencyHistogram =
            serde_json::from_str(&serde_json::to_string(&filled(a.iter().copied())).unwrap())
                .unwrap();
        let shipped_b: LatencyHistogram =
            serde_json::from_str(&serde_json::to_string(&filled(b.iter().copied())).unwrap())
                .unwrap();
        let mut merged = LatencyHistogram::new();
        merged.merge(&shipped_a);
        merged.merge(&shipped_b);
        assert_eq!(merged.len(), whole.len());
        for q in [0.0, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.quantile_us(q), whole.quantile_us(q), "q={q}");
        }
        assert_eq!(merged.summary(), whole.summary());
    }

    #[test]
    fn empty_summary_is_all_null() {
        let summary = LatencyHistogram::new().summary();
        assert_eq!(summary.count, 0);
        let json = serde_json::to_value(summary).unwrap();
        assert!(json["p99"].is_null() && json["max"].is_null());
    }

    #[test]
    fn summary_is_in_milliseconds() {
        let h = filled([1_000, 2_000, 3_000]);
        let s = h.summary();
        assert_eq!(s.count, 3);
        assert_eq!(s.min, Some(1.0));
        assert!((s.max.unwrap() - 3.0).abs() < 0.01);
        assert!((s.p50.unwrap() - 2.0).abs() < 0.01);
    }

    #[test]
    fn zero_and_huge_samples_saturate() {
        let h = filled([0, u64::MAX]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min_us(), Some(1));
        assert!(h.max_us().unwrap() >= MAX_US);
    }

    #[test]
    fn cdf_ends_at_one() {
        let cdf = filled([5, 50, 500, 5000]).cdf_ms();
        assert_eq!(cdf.len(), 4);
        assert!(cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert_eq!(cdf.last().unwrap().1, 1.0);
    }

    #[test]
    fn timeline_buckets_and_merges() {
        let mut a = Timeline::new(Duration::from_secs(1));
        a.record(100, 1_000);
        a.record(1_500_000, 2_000);
        a.record(200_000, 3_000); // out of order: lands in bucket 0
        let mut b = Timeline::new(Duration::from_secs(1));
        b.record(5_000_000, 4_000);
        b.record(1_000_000, 5_000);
        let shipped: Timeline = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        a.merge(&shipped);
        let indexes: Vec<u32> = a.buckets.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, [0, 1, 5]);
        assert_eq!(a.buckets[0].1.len(), 2);
        assert_eq!(a.buckets[1].1.len(), 2);
        let series = a.series();
        assert_eq!(series[2].0, 5.0);
    }

    #[test]
    fn timeline_caps_its_bucket_count() {
        let mut t = Timeline::new(Duration::from_millis(1));
        t.record(u64::MAX, 1);
        assert_eq!(t.buckets[0].0, MAX_TIMELINE_BUCKETS - 1);
    }

    #[test]
    fn empty_timeline_adopts_the_width_it_merges() {
        let mut empty = Timeline::default();
        let mut other = Timeline::new(Duration::from_millis(250));
        other.record(0, 10);
        empty.merge(&other);
        assert_eq!(empty.bucket_us, 250_000);
        assert_eq!(empty.buckets.len(), 1);
    }
}
