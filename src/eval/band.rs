//! Anomaly bands: where a series' next value is expected to lie, from its own recent
//! history. `zscore` is mean ± k·σ; `mad` is median ± k·MAD, with the MAD scaled by 1.4826
//! so that it estimates σ for normally distributed data and one sensitivity means the same
//! for both. Pure functions over the history a window holds.

/// Which statistic centres and widens the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandAlgorithm {
    Zscore,
    Mad,
    /// A seasonal baseline with a prediction interval (see `forecast::seasonal_band`),
    /// built from a series' history at a fixed step rather than from raw samples.
    Seasonal,
}

/// A compiled `spec.detection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BandSpec {
    pub algorithm: BandAlgorithm,
    /// Band half-width in σ (or scaled MADs).
    pub sensitivity: f64,
    /// No band before the history holds this many values (cold start).
    pub min_samples: usize,
}

/// The expected range of the next value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Band {
    pub center: f64,
    pub lower: f64,
    pub upper: f64,
}

impl Band {
    /// Whether `value` lies outside the band. A flat history (zero spread) makes any
    /// change anomalous.
    pub fn excludes(&self, value: f64) -> bool {
        value < self.lower || value > self.upper
    }
}

/// Scale that turns a median absolute deviation into a σ estimate for normal data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// The band from `history` (finite values, any order); `None` during cold start. Uses
/// `scratch` to sort without allocating per call.
pub fn band(history: &[f64], spec: &BandSpec, scratch: &mut Vec<f64>) -> Option<Band> {
    band_of(history.iter().copied(), spec, scratch)
}

/// [`band`] over values read straight from a window: a z-score reads them twice and
/// copies nothing, a MAD copies them once into `scratch` to select its medians.
pub fn band_of(
    history: impl Iterator<Item = f64> + Clone,
    spec: &BandSpec,
    scratch: &mut Vec<f64>,
) -> Option<Band> {
    let (center, spread) = match spec.algorithm {
        BandAlgorithm::Zscore => {
            let (count, sum) = history
                .clone()
                .fold((0usize, 0.0), |(count, sum), v| (count + 1, sum + v));
            if count < spec.min_samples.max(2) {
                return None;
            }
            let n = count as f64;
            let mean = sum / n;
            let variance = history.map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (mean, variance.sqrt())
        }
        // Needs the history's timing, which this function does not have.
        BandAlgorithm::Seasonal => return None,
        BandAlgorithm::Mad => {
            scratch.clear();
            scratch.extend(history);
            if scratch.len() < spec.min_samples.max(2) {
                return None;
            }
            let median = median(scratch);
            for v in scratch.iter_mut() {
                *v = (*v - median).abs();
            }
            (median, median_of(scratch) * MAD_TO_SIGMA)
        }
    };
    let half = spec.sensitivity * spread;
    Some(Band {
        center,
        lower: center - half,
        upper: center + half,
    })
}

fn median(values: &mut [f64]) -> f64 {
    median_of(values)
}

/// The median by selection, O(n) rather than a sort's O(n log n): a band is recomputed for
/// every sample over a history of up to thousands of values. The same two middle values
/// a sort would find, so the same result.
fn median_of(values: &mut [f64]) -> f64 {
    let len = values.len();
    if len == 0 {
        return f64::NAN;
    }
    let (lower, &mut upper, _) = values.select_nth_unstable_by(len / 2, f64::total_cmp);
    if len % 2 == 1 {
        upper
    } else {
        // Everything left of the selected element is at most it: the lower middle value
        // is their maximum.
        let below = lower
            .iter()
            .copied()
            .max_by(f64::total_cmp)
            .unwrap_or(upper);
        (below + upper) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(algorithm: BandAlgorithm) -> BandSpec {
        BandSpec {
            algorithm,
            sensitivity: 3.0,
            min_samples: 5,
        }
    }

    #[test]
    fn zscore_is_mean_plus_minus_k_sigma() {
        let history = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        let b = band(&history, &spec(BandAlgorithm::Zscore), &mut Vec::new()).unwrap();
        // mean 5, population σ 2.
        assert_eq!((b.center, b.lower, b.upper), (5.0, -1.0, 11.0));
        assert!(b.excludes(11.5) && !b.excludes(10.9));
    }

    #[test]
    fn mad_is_robust_to_the_outliers_in_its_history() {
        let history = [10.0, 11.0, 9.0, 10.0, 10.0, 1000.0, 11.0, 9.0, 10.0];
        let b = band(&history, &spec(BandAlgorithm::Mad), &mut Vec::new()).unwrap();
        // median 10, MAD 1 → scaled 1.4826, band 10 ± 4.4478.
        assert_eq!(b.center, 10.0);
        assert!((b.upper - (10.0 + 3.0 * 1.4826)).abs() < 1e-12);
        assert!(b.excludes(20.0));
        let z = band(&history, &spec(BandAlgorithm::Zscore), &mut Vec::new()).unwrap();
        assert!(
            !z.excludes(20.0),
            "the outlier widened the z-score band: {z:?}"
        );
    }

    #[test]
    fn no_band_during_cold_start_and_a_flat_history_flags_any_change() {
        assert_eq!(
            band(&[1.0; 4], &spec(BandAlgorithm::Zscore), &mut Vec::new()),
            None
        );
        let b = band(&[1.0; 5], &spec(BandAlgorithm::Mad), &mut Vec::new()).unwrap();
        assert!(!b.excludes(1.0) && b.excludes(1.0001));
    }
}
