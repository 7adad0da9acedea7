//! Cost of one forecast or seasonal band, which the evaluator refits at every step of
//! event time (once a minute per PredictiveScale series or seasonal-band result).
//!
//! - `forecast/seasonal_3d`: three days at a one-minute step (4320 points), a daily
//!   pattern with noise, forecast an hour ahead: MSTL + AutoETS.
//! - `forecast/trend_6h`: six hours (360 points) of a noisy rise, 30 minutes ahead:
//!   AutoETS alone.
//! - `forecast/seasonal_band_3d`: the band of the next value after the same three days.
//! - `forecast/seasonal_2w`: two weeks (20160 points), where a weekly season joins the
//!   daily one, forecast an hour ahead.
//!
//! Run: `cargo bench --bench forecast`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prophet::eval::forecast::{ForecastModel, forecast, seasonal_band};

const MINUTE_MS: i64 = 60_000;

/// Deterministic pseudo-noise in [-1, 1]: a SplitMix64 hash of `i`.
fn noise(i: usize) -> f64 {
    let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
}

fn benches(c: &mut Criterion) {
    let daily: Vec<f64> = (0..3 * 1440)
        .map(|i| 100.0 + 50.0 * (std::f64::consts::TAU * i as f64 / 1440.0).sin() + noise(i))
        .collect();
    let weeks: Vec<f64> = (0..14 * 1440)
        .map(|i| {
            let weekend = if (i / 1440) % 7 >= 5 { -20.0 } else { 0.0 };
            100.0 + weekend + 50.0 * (std::f64::consts::TAU * i as f64 / 1440.0).sin() + noise(i)
        })
        .collect();
    let rise: Vec<f64> = (0..360)
        .map(|i| 100.0 * i as f64 / 359.0 + 0.5 * noise(i))
        .collect();
    // Check that each case takes the path it is named after before measuring it.
    let seasonal = forecast(&daily, MINUTE_MS, 60 * MINUTE_MS, 0.95).unwrap();
    assert_eq!(
        seasonal.model,
        ForecastModel::Seasonal { period_steps: 1440 }
    );
    let trend = forecast(&rise, MINUTE_MS, 30 * MINUTE_MS, 0.95).unwrap();
    assert_eq!(trend.model, ForecastModel::Trend);
    assert!(seasonal_band(&daily, MINUTE_MS, 3.0, 100).is_some());

    let mut group = c.benchmark_group("forecast");
    group.sample_size(30);
    group.bench_function("seasonal_3d", |b| {
        b.iter(|| forecast(black_box(&daily), MINUTE_MS, 60 * MINUTE_MS, 0.95))
    });
    group.bench_function("trend_6h", |b| {
        b.iter(|| forecast(black_box(&rise), MINUTE_MS, 30 * MINUTE_MS, 0.95))
    });
    group.bench_function("seasonal_band_3d", |b| {
        b.iter(|| seasonal_band(black_box(&daily), MINUTE_MS, 3.0, 100))
    });
    group.bench_function("seasonal_2w", |b| {
        b.iter(|| forecast(black_box(&weeks), MINUTE_MS, 60 * MINUTE_MS, 0.95))
    });
    group.finish();
}

criterion_group!(forecasts, benches);
criterion_main!(forecasts);
