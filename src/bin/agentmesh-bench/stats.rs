//! Latency samples and their summary (median, p99, mean) in microseconds.

use std::time::Duration;

/// Round-trip times of one contender at one payload size.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples {
    times: Vec<Duration>,
}

/// What the table and the JSON show of a [`Samples`].
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
}

impl Samples {
    pub(crate) fn push(&mut self, d: Duration) {
        self.times.push(d);
    }

    /// Percentiles by nearest rank over the sorted samples.
    pub(crate) fn summary(&self) -> Summary {
        let mut t: Vec<f64> = self.times.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        t.sort_by(f64::total_cmp);
        let n = t.len();
        let rank = |q: f64| -> f64 {
            if n == 0 {
                return f64::NAN;
            }
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            t[i]
        };
        let mean = if n == 0 {
            f64::NAN
        } else {
            t.iter().sum::<f64>() / n as f64
        };
        Summary {
            n,
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            mean_us: mean,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s = Samples::default();
        for us in 1..=100u64 {
            s.push(Duration::from_micros(us));
        }
        let m = s.summary();
        assert_eq!(m.n, 100);
        assert!((m.p50_us - 50.0).abs() < 1e-6, "{m:?}");
        assert!((m.p99_us - 99.0).abs() < 1e-6, "{m:?}");
        assert!((m.mean_us - 50.5).abs() < 1e-6, "{m:?}");
    }
}
