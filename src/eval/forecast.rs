//! Forecasts and seasonal baselines for one derived series sampled at a fixed step, with
//! Grafana's `augurs` models: MSTL (a seasonal–trend decomposition) with an AutoETS trend
//! when the history holds at least two seasons, AutoETS alone otherwise.
//!
//! Owns the model choice (which season, which model, when the history is too short), the
//! numerical guards around `augurs` (constant input, scale, non-finite output) and the
//! conversion of a prediction interval into an anomaly [`Band`]. Pure functions: never
//! reads a clock, never does I/O, never returns NaN or an infinity; the caller keeps the
//! series and decides what a forecast means for a rule.
//!
//! Model choice, for a history of `n` values at `step_ms`:
//! - a constant history forecasts itself with a zero-width interval (no model is fitted);
//! - `n ≥ 2` days: MSTL with a daily season, plus a weekly one when `n ≥ 2` weeks;
//! - otherwise AutoETS without season (additive error, no/additive/damped trend), or a
//!   least-squares line if AutoETS finds no model.
//!
//! [`seasonal_band`] uses the same seasons and, under two days, a season found by a
//! periodogram if the decomposition shows it is real; with no season it gives no band.
//!
//! Where this departs from augurs' defaults, and why (each measured; see `fit_seasonal`):
//! the decomposition runs on the history less its least-squares line, with 8 STL inner
//! loops and "periodic" seasons, because with the defaults a trend leaks into the
//! seasonal component and biases forecasts; intervals of seasonal fits are widened for
//! the few cycles the season is estimated from; the trend model sees only the newest
//! [`MAX_TREND_POINTS`] steps: a fit of three days at one minute takes about 16 ms, of
//! two weeks (with the weekly season) about 60 ms (`cargo bench --bench forecast`).

use std::borrow::Cow;

use augurs::ets::AutoETS;
use augurs::ets::trend::AutoETSTrendModel;
use augurs::mstl::stlrs::{self, MstlParams};
use augurs::mstl::{FittedTrendModel, MSTLModel, TrendModel};
use augurs::seasons::PeriodogramDetector;
use augurs::{Fit, Predict};

use super::band::Band;

/// No forecast from fewer values: AutoETS with a trend needs more than 8, and fewer
/// points say nothing about a trend anyway.
pub const MIN_POINTS: usize = 10;

/// Longest horizon, in steps. A bound on the allocation a rule can ask for (augurs
/// computes every step up to the horizon); a week at a one-minute step fits.
pub const MAX_HORIZON_STEPS: usize = 20_160;

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;

/// The trend model (AutoETS, alone or on MSTL's deseasonalised series) is fitted on at
/// most this many of the newest steps, half a day at a one-minute step. Its fit dominates
/// the cost and is linear in the length (about 60 ms for three days at one minute, 11 ms
/// for 720 points), while exponential smoothing weights old values by `(1-α)^age`
/// anyway: forecasts from 720 and from 4320 points differed by under 0.1σ in the
/// module's measurements. The seasonal decomposition still sees the whole history.
const MAX_TREND_POINTS: usize = 720;

/// A season found by the periodogram is used only when the decomposition attributes at
/// least this share of the non-trend variance to it (the seasonal strength of Wang, Smith
/// and Hyndman). A periodogram always has a highest peak, even over white noise, whose
/// "season" then explains about `1 / cycles` of the variance.
const MIN_DETECTED_STRENGTH: f64 = 0.6;

/// STL inner loops (augurs' default is 2); see `fit_seasonal`.
const STL_INNER_LOOPS: usize = 8;

/// MSTL's passes over its seasons (augurs' default is 2). With periodic seasons and
/// enough inner loops a second pass changed no forecast of the module's measurements
/// (to 3 decimals, with daily and weekly seasons) and doubled the cost of two weeks.
const MSTL_ITERATIONS: usize = 1;

/// The level of the interval the band's σ is read from (see [`seasonal_band`]).
const BAND_REFERENCE_LEVEL: f64 = 0.95;

/// A forecast of a series some horizon ahead.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    /// Point forecast at the horizon.
    pub value: f64,
    /// Prediction interval at the requested level.
    pub lower: f64,
    pub upper: f64,
    pub model: ForecastModel,
}

/// Which model made a [`Forecast`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ForecastModel {
    /// MSTL with a season of `period_steps` steps (the daily one; a weekly season is
    /// added when the history holds two weeks), and an AutoETS trend.
    #[serde(rename_all = "camelCase")]
    Seasonal { period_steps: usize },
    /// AutoETS without season, or a least-squares line; also a constant history.
    Trend,
}

/// Why no forecast was made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    #[error("history too short to forecast: {have} points, need {need}")]
    TooShort { have: usize, need: usize },
    #[error("step must be positive, got {0} ms")]
    InvalidStep(i64),
    #[error("prediction level must lie strictly between 0 and 1, got {0}")]
    InvalidLevel(f64),
    #[error("horizon of {steps} steps is longer than the {max} supported")]
    HorizonTooLong { steps: i64, max: usize },
    #[error("history value {index} is not finite")]
    NonFiniteHistory { index: usize },
    #[error("the model gave no finite forecast")]
    NonFiniteForecast,
}

/// Forecasts `history` (oldest first, one finite value per `step_ms`, gaps already
/// filled) `horizon_ms / step_ms` steps ahead (at least one), with a prediction interval
/// at `level` (e.g. 0.95).
pub fn forecast(
    history: &[f64],
    step_ms: i64,
    horizon_ms: i64,
    level: f64,
) -> Result<Forecast, ForecastError> {
    if step_ms <= 0 {
        return Err(ForecastError::InvalidStep(step_ms));
    }
    if !(level > 0.0 && level < 1.0) {
        return Err(ForecastError::InvalidLevel(level));
    }
    let steps = (horizon_ms / step_ms).max(1);
    let horizon = usize::try_from(steps)
        .ok()
        .filter(|h| *h <= MAX_HORIZON_STEPS)
        .ok_or(ForecastError::HorizonTooLong {
            steps,
            max: MAX_HORIZON_STEPS,
        })?;
    let fit = match prepare(history)? {
        Prepared::Constant { last, min, max } => Fitted {
            value: last,
            lower: min,
            upper: max,
            model: ForecastModel::Trend,
        },
        Prepared::Varying { z, mean, scale } => {
            let periods = calendar_periods(z.len(), step_ms);
            // A seasonal fit that fails falls back on the trend model rather than
            // leaving the rule without a forecast.
            let seasonal = (!periods.is_empty())
                .then(|| fit_seasonal(&z, &periods, horizon, level, None))
                .flatten();
            let recent = newest(&z);
            seasonal
                .or_else(|| fit_ets(recent, horizon, level))
                .unwrap_or_else(|| fit_line(recent, horizon, level))
                .unscale(mean, scale)
        }
    };
    if !fit.is_finite() {
        return Err(ForecastError::NonFiniteForecast);
    }
    Ok(Forecast {
        value: fit.value,
        lower: fit.lower,
        upper: fit.upper,
        model: fit.model,
    })
}

/// The expected range of the value one step after `history` (oldest first, at a fixed
/// `step_ms`): a seasonal baseline with a prediction interval `sensitivity` standard
/// deviations wide on each side. `None` before `min_samples` values (and before
/// [`MIN_POINTS`]), and when no season is known or found: the caller reports a cold
/// start. A constant history gives a zero-width band, so any change is anomalous.
pub fn seasonal_band(
    history: &[f64],
    step_ms: i64,
    sensitivity: f64,
    min_samples: usize,
) -> Option<Band> {
    seasonal_bands(history, step_ms, sensitivity, min_samples, 1)?
        .first()
        .copied()
}

/// [`seasonal_band`] for each of the `ahead` values after `history`, from one fit: a
/// caller that judges a value per step can refit once per `ahead` steps instead of at
/// every step (a fit of three days at one-minute steps costs ~16 ms). The intervals widen
/// with the distance, as the model's uncertainty does.
pub fn seasonal_bands(
    history: &[f64],
    step_ms: i64,
    sensitivity: f64,
    min_samples: usize,
    ahead: usize,
) -> Option<Vec<Band>> {
    if history.len() < min_samples.max(MIN_POINTS)
        || step_ms <= 0
        || ahead == 0
        || ahead > MAX_HORIZON_STEPS
        || !(sensitivity.is_finite() && sensitivity >= 0.0)
    {
        return None;
    }
    let (z, mean, scale) = match prepare(history).ok()? {
        Prepared::Constant { last, min, max } => {
            let band = Band {
                center: last,
                lower: min,
                upper: max,
            };
            return Some(vec![band; ahead]);
        }
        Prepared::Varying { z, mean, scale } => (z, mean, scale),
    };
    // A series sampled slower than the step reaches here as a staircase: each sample
    // held over the steps until the next (PromQL's lookback, and the caller's carrying
    // over). Fitted as it is, the trend model sees a series whose next value mostly
    // equals its last, picks a level that follows the last value, and its interval grows
    // with the horizon like a random walk's: over an hour of bands, 5-minute noise gave
    // a band about 4× wider than the same noise at 1 minute, widening between refits.
    // So fit one value per sample, at the sampling interval, and give each step the
    // band of the sample it will hold.
    let hold = hold_steps(&z);
    if hold > 1 {
        // The newest run may be partial: its first step is where its sample arrived.
        let run = z.iter().rev().take_while(|v| **v == z[z.len() - 1]).count();
        let start = z.len() - run;
        let mut sampled: Vec<f64> = (0..=start / hold).map(|k| z[start - k * hold]).collect();
        sampled.reverse();
        let horizon = ((ahead - 1 + run) / hold).max(1);
        let bands = bands_of(
            &sampled,
            step_ms * hold as i64,
            sensitivity,
            horizon,
            mean,
            scale,
        )?;
        return (0..ahead)
            .map(|j| bands.get(((j + run) / hold).max(1) - 1).copied())
            .collect();
    }
    bands_of(&z, step_ms, sensitivity, ahead, mean, scale)
}

/// How many steps each value of a standardised history is held for: the median length
/// of its runs of equal values when it is a staircase of them (a series sampled every
/// `n` steps: runs of `n`, give or take one for scrape jitter), else 1. The first run,
/// which the window may cut, and the newest, which may be partial, are not counted.
fn hold_steps(z: &[f64]) -> usize {
    let mut runs: Vec<usize> = Vec::new();
    let mut length = 1;
    for pair in z.windows(2) {
        if pair[0] == pair[1] {
            length += 1;
        } else {
            runs.push(length);
            length = 1;
        }
    }
    if runs.len() < 2 * MIN_POINTS {
        return 1;
    }
    let runs = &mut runs[1..];
    runs.sort_unstable();
    let median = runs[runs.len() / 2];
    // Quantised values (a gauge of small integers) have runs of every length; only a
    // regular staircase is a slower sampling, and only one that leaves enough samples.
    let regular = runs.iter().filter(|r| r.abs_diff(median) <= 1).count();
    if median < 2 || regular * 4 < runs.len() * 3 || z.len() / median < MIN_POINTS {
        return 1;
    }
    median
}

/// The bands of [`seasonal_bands`] from a varying standardised history `z` at `step_ms`.
fn bands_of(
    z: &[f64],
    step_ms: i64,
    sensitivity: f64,
    ahead: usize,
    mean: f64,
    scale: f64,
) -> Option<Vec<Band>> {
    let calendar = calendar_periods(z.len(), step_ms);
    let path = if calendar.is_empty() {
        let period = detect_period(z)?;
        fit_seasonal_path(
            z,
            &[period],
            ahead,
            BAND_REFERENCE_LEVEL,
            Some(MIN_DETECTED_STRENGTH),
        )?
    } else {
        fit_seasonal_path(z, &calendar, ahead, BAND_REFERENCE_LEVEL, None)?
    };
    path.into_iter()
        .map(|fit| {
            let fit = fit.unscale(mean, scale);
            // A prediction interval at level erf(k/√2) is the point ± k σ. Asking augurs
            // for that level directly breaks down for large k (erf rounds to 1 and the
            // quantile is infinite), so take σ from a 95% interval, which is symmetric
            // for additive-error models, and scale it.
            let sigma =
                (fit.upper - fit.lower) / 2.0 / normal_quantile(0.5 + BAND_REFERENCE_LEVEL / 2.0);
            let half = sensitivity * sigma;
            let band = Band {
                center: fit.value,
                lower: fit.value - half,
                upper: fit.value + half,
            };
            (band.lower.is_finite() && band.upper.is_finite()).then_some(band)
        })
        .collect()
}

/// A forecast `horizon` steps ahead in the history's units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fitted {
    value: f64,
    lower: f64,
    upper: f64,
    model: ForecastModel,
}

/// A validated history, ready to fit.
#[derive(Debug, Clone, PartialEq)]
enum Prepared {
    /// Constant up to rounding: every model's variance is zero, and AutoETS then finds
    /// no model or divides by it, so nothing is fitted.
    Constant { last: f64, min: f64, max: f64 },
    /// Standardised values, `history = mean + scale · z`.
    Varying { z: Vec<f64>, mean: f64, scale: f64 },
}

/// Checks `history` and standardises it.
fn prepare(history: &[f64]) -> Result<Prepared, ForecastError> {
    if history.len() < MIN_POINTS {
        return Err(ForecastError::TooShort {
            have: history.len(),
            need: MIN_POINTS,
        });
    }
    if let Some(index) = history.iter().position(|v| !v.is_finite()) {
        return Err(ForecastError::NonFiniteHistory { index });
    }
    let (min, max) = history
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(*v), hi.max(*v))
        });
    if max - min <= 1e-12 * max.abs().max(min.abs()) {
        let last = history[history.len() - 1];
        return Ok(Prepared::Constant { last, min, max });
    }
    // Fit on standardised values: MSTL works in f32 (7 significant digits, so a byte
    // rate near 1e12 would lose its variation), and the ETS optimiser's starting points
    // and tolerances assume values of order one.
    let n = history.len() as f64;
    let mean = history.iter().sum::<f64>() / n;
    let scale = (history.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n).sqrt();
    let z = history.iter().map(|v| (v - mean) / scale).collect();
    Ok(Prepared::Varying { z, mean, scale })
}

impl Fitted {
    /// Back from standardised values to the history's.
    fn unscale(self, mean: f64, scale: f64) -> Fitted {
        Fitted {
            value: mean + scale * self.value,
            lower: mean + scale * self.lower,
            upper: mean + scale * self.upper,
            model: self.model,
        }
    }

    fn is_finite(&self) -> bool {
        self.value.is_finite() && self.lower.is_finite() && self.upper.is_finite()
    }
}

/// The daily season, and the weekly one, that `len` steps hold twice, shortest first.
fn calendar_periods(len: usize, step_ms: i64) -> Vec<usize> {
    [DAY_MS, WEEK_MS]
        .into_iter()
        .filter_map(|season| period_steps(season, step_ms))
        .filter(|period| len >= 2 * period)
        .collect()
}

/// Steps in one `season_ms`, if a season of at least two steps.
fn period_steps(season_ms: i64, step_ms: i64) -> Option<usize> {
    // Rounded: a step that does not divide the season lets the phase drift by under
    // half a step per cycle, which the decomposition's smoothing absorbs.
    let steps = (season_ms as f64 / step_ms as f64).round();
    (steps >= 2.0).then_some(steps as usize)
}

/// The period of the strongest peak of the history's periodogram, if any.
fn detect_period(z: &[f64]) -> Option<usize> {
    // welch-sde panics on fewer than 4 values; callers pass at least MIN_POINTS.
    if z.len() < MIN_POINTS {
        return None;
    }
    // The periodogram's longest period is a third of the history (three cycles), and
    // its peaks come sorted by ascending power. 0.9 is augurs' default threshold.
    let strongest = PeriodogramDetector::builder()
        .build()
        .periodogram(z)
        .peaks(0.9)
        .last()?;
    // Its periods are a power-of-two segment divided by a whole number (an hourly season
    // at a one-minute step shows as 64), so take the lag between the peak's neighbours
    // at which the history best matches itself.
    let neighbours = [
        strongest.prev_period,
        strongest.period,
        strongest.next_period,
    ];
    let candidates = neighbours.iter().filter(|p| **p > 0);
    let low = usize::try_from(*candidates.clone().min()?).ok()?;
    let high = usize::try_from(*candidates.max()?).ok()?;
    (low.max(2)..=high.min(z.len() / 2))
        .max_by(|a, b| autocorrelation(z, *a).total_cmp(&autocorrelation(z, *b)))
}

/// The mean product of standardised values `lag` steps apart.
fn autocorrelation(z: &[f64], lag: usize) -> f64 {
    let pairs = z.len().saturating_sub(lag).max(1);
    z.iter()
        .zip(&z[lag.min(z.len())..])
        .map(|(a, b)| a * b)
        .sum::<f64>()
        / pairs as f64
}

/// MSTL over `periods` (shortest first) with an AutoETS trend, `horizon` steps ahead.
/// With `min_strength`, refuses a decomposition whose first season is weaker.
fn fit_seasonal(
    z: &[f64],
    periods: &[usize],
    horizon: usize,
    level: f64,
    min_strength: Option<f64>,
) -> Option<Fitted> {
    fit_seasonal_path(z, periods, horizon, level, min_strength)?
        .last()
        .copied()
}

/// [`fit_seasonal`] at every step from 1 to `horizon`.
fn fit_seasonal_path(
    z: &[f64],
    periods: &[usize],
    horizon: usize,
    level: f64,
    min_strength: Option<f64>,
) -> Option<Vec<Fitted>> {
    // The decomposition is fitted to the history less its least-squares line, with
    // more inner loops. STL's seasonal smoothing averages each phase over the cycles, so
    // a trend first leaks into the seasonal component as a ramp within each cycle, which
    // only the inner loops take back out. With augurs' defaults (two loops, no line
    // removed), three days of a daily swing of ±50 plus noise of σ 0.58 rising 14 a day
    // gave next-value forecasts 2.6 too high, rising 144 a day 35 too high. Without the
    // line the error no longer depends on the slope, and the loops bring its RMS down
    // to the noise-limited one: 2.6× that with 2 loops over three days; 1.2× with 5 and
    // 1.02× with 8 over two. The trend model gets the line back.
    let line = Line::fit(z);
    let detrended: Vec<f64> = z
        .iter()
        .enumerate()
        .map(|(i, v)| v - line.at(i as f64))
        .collect();
    let trend = RecentTrend {
        model: trend_ets()?.into_trend_model(),
        line,
    };
    let mut stl = stlrs::params();
    stl.inner_loops(STL_INNER_LOOPS);
    let mut params = MstlParams::new();
    // "Periodic" seasons, as R's `stl(s.window = "periodic")`: each phase is the plain
    // mean over all cycles. The default smoothing span weights the newest cycle most,
    // whose noise then goes into every forecast; with the plain mean the widening
    // below holds (measured: band σ within 4% of the actual error's RMS).
    params
        .seasonal_lengths(&vec![10 * z.len() + 1; periods.len()])
        .iterations(MSTL_ITERATIONS)
        .stl_params(stl);
    let fitted = MSTLModel::new(periods.to_vec(), trend)
        .mstl_params(params)
        .fit(&detrended)
        .ok()?;
    if let Some(min) = min_strength {
        // A NaN strength (no variance left) is no evidence of a season either.
        let strength = fitted.fit().seasonal_strength();
        if !strength.first().is_some_and(|s| *s >= min) {
            return None;
        }
    }
    let predicted = fitted.predict(horizon, level).ok()?;
    // The seasonal component is the mean over the k cycles the history holds, so it
    // carries 1/k of their noise into the forecast and takes it out of the remainder the
    // interval is estimated from. Widen the interval by the ratio of the two variances,
    // (1 + 1/k) / (1 - 1/k): √3 for two cycles. The longest season counts, since its
    // phases refine the shorter one's (a week of days). Not rounded down: a history a
    // step short of three cycles has three values in all phases but one, and was widened
    // as if it had two (22% more).
    let cycles = z.len() as f64 / *periods.last()? as f64;
    let widen = ((cycles + 1.0) / (cycles - 1.0)).sqrt();
    let model = ForecastModel::Seasonal {
        period_steps: *periods.first()?,
    };
    (1..=horizon)
        .map(|step| {
            let (value, lower, upper) = at_horizon(&predicted, step)?;
            let fit = Fitted {
                value,
                lower: value - (value - lower) * widen,
                upper: value + (upper - value) * widen,
                model,
            };
            fit.is_finite().then_some(fit)
        })
        .collect()
}

/// AutoETS without season, `horizon` steps ahead; `None` when it finds no model or no
/// finite forecast.
fn fit_ets(z: &[f64], horizon: usize, level: f64) -> Option<Fitted> {
    let fitted = trend_ets()?.fit(z).ok()?;
    let predicted = fitted.predict(horizon, level).ok()?;
    let (value, lower, upper) = at_horizon(&predicted, horizon)?;
    let fit = Fitted {
        value,
        lower,
        upper,
        model: ForecastModel::Trend,
    };
    fit.is_finite().then_some(fit)
}

/// The AutoETS search both paths use: additive error only, and no, additive or damped
/// additive trend. Additive error because standardised values are not positive (which a
/// multiplicative error needs) and because augurs computes intervals for the
/// multiplicative models it cannot express in closed form by simulation with a
/// thread-local random generator, which would make forecasts irreproducible.
fn trend_ets() -> Option<AutoETS> {
    // `None` only if augurs stopped accepting this specification string.
    AutoETS::new(1, "AZN").ok()
}

/// The newest [`MAX_TREND_POINTS`] of `z`.
fn newest(z: &[f64]) -> &[f64] {
    &z[z.len().saturating_sub(MAX_TREND_POINTS)..]
}

/// MSTL's trend model: AutoETS on the newest [`MAX_TREND_POINTS`] of the deseasonalised
/// series, with the line taken out before the decomposition added back.
#[derive(Debug)]
struct RecentTrend {
    model: AutoETSTrendModel,
    line: Line,
}

impl TrendModel for RecentTrend {
    fn name(&self) -> Cow<'_, str> {
        Cow::Borrowed("AutoETS on recent steps")
    }

    fn fit(
        &self,
        y: &[f64],
    ) -> Result<
        Box<dyn FittedTrendModel + Sync + Send>,
        Box<dyn std::error::Error + Send + Sync + 'static>,
    > {
        // The fitted model's in-sample predictions cover only these steps; only its
        // out-of-sample forecast is used.
        let start = y.len().saturating_sub(MAX_TREND_POINTS);
        let recent: Vec<f64> = (start..y.len())
            .map(|i| y[i] + self.line.at(i as f64))
            .collect();
        self.model.fit(&recent)
    }
}

/// The point forecast and interval of the last of `horizon` steps.
fn at_horizon(predicted: &augurs::Forecast, horizon: usize) -> Option<(f64, f64, f64)> {
    let i = horizon.checked_sub(1)?;
    let value = *predicted.point.get(i)?;
    let intervals = predicted.intervals.as_ref()?;
    Some((value, *intervals.lower.get(i)?, *intervals.upper.get(i)?))
}

/// A least-squares line through values at steps 0, 1, 2, …
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    intercept: f64,
    slope: f64,
}

impl Line {
    fn fit(y: &[f64]) -> Line {
        let n = y.len() as f64;
        let x_mean = (n - 1.0) / 2.0;
        let y_mean = y.iter().sum::<f64>() / n;
        let (mut sxx, mut sxy) = (0.0, 0.0);
        for (i, v) in y.iter().enumerate() {
            let dx = i as f64 - x_mean;
            sxx += dx * dx;
            sxy += dx * (v - y_mean);
        }
        // One value has no slope.
        let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
        Line {
            intercept: y_mean - slope * x_mean,
            slope,
        }
    }

    fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// A least-squares line through `z` with the classical prediction interval for a new
/// observation, normal rather than Student's t (the histories are long enough for the
/// difference not to matter). The fallback when AutoETS finds no model.
fn fit_line(z: &[f64], horizon: usize, level: f64) -> Fitted {
    let line = Line::fit(z);
    let n = z.len() as f64;
    let x_mean = (n - 1.0) / 2.0;
    let sxx: f64 = (0..z.len()).map(|i| (i as f64 - x_mean).powi(2)).sum();
    let sse: f64 = z
        .iter()
        .enumerate()
        .map(|(i, v)| (v - line.at(i as f64)).powi(2))
        .sum();
    let sigma = (sse / (n - 2.0)).sqrt();
    let x = n - 1.0 + horizon as f64;
    let value = line.at(x);
    let half = normal_quantile(0.5 + level / 2.0)
        * sigma
        * (1.0 + 1.0 / n + (x - x_mean).powi(2) / sxx).sqrt();
    Fitted {
        value,
        lower: value - half,
        upper: value + half,
        model: ForecastModel::Trend,
    }
}

/// The standard normal quantile of `p` in (0, 1), by Acklam's rational approximation
/// (relative error under 1.2e-9), enough for interval widths.
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    const LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = 60_000;

    /// Deterministic pseudo-noise, uniform in [-1, 1] (σ = 1/√3): a SplitMix64 hash of `i`.
    fn noise(i: usize) -> f64 {
        let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// 100 + 50·sin(2π·t/day), t in minutes, peaking at 06:00.
    fn daily(minute: usize) -> f64 {
        100.0 + 50.0 * (std::f64::consts::TAU * minute as f64 / 1440.0).sin()
    }

    fn series(len: usize, f: impl Fn(usize) -> f64) -> Vec<f64> {
        (0..len).map(f).collect()
    }

    #[test]
    fn linear_growth_is_extrapolated_within_a_few_percent() {
        // 0 → 100 over six hours at one minute, ±0.5 noise; 30 minutes ahead the line is
        // at 100·389/359 ≈ 108.36, 8.4% above the current value.
        let line = |i: usize| 100.0 * i as f64 / 359.0;
        let history = series(360, |i| line(i) + 0.5 * noise(i));
        let f = forecast(&history, MINUTE_MS, 30 * MINUTE_MS, 0.95).unwrap();
        let truth = line(389);
        assert_eq!(f.model, ForecastModel::Trend);
        assert!(
            (f.value - truth).abs() / truth < 0.02,
            "{f:?}, truth {truth}"
        );
        let current = history[359];
        let percent = (f.value - current) / current * 100.0;
        assert!((percent - 8.36).abs() < 1.0, "predicted change {percent}%");
        assert!(f.lower < truth && truth < f.upper, "{f:?}, truth {truth}");
    }

    #[test]
    fn a_daily_pattern_is_forecast_up_to_its_peak() {
        // Three days ending at 05:00, an hour before the daily peak of 150 at 06:00.
        let start = 301;
        let history = series(3 * 1440, |i| daily(start + i) + noise(i));
        let now = start + 3 * 1440 - 1;
        assert_eq!(now % 1440, 300);
        let f = forecast(&history, MINUTE_MS, 60 * MINUTE_MS, 0.95).unwrap();
        assert_eq!(f.model, ForecastModel::Seasonal { period_steps: 1440 });
        let truth = daily(now + 60);
        assert_eq!(truth, 150.0);
        assert!((f.value - truth).abs() < 1.0, "{f:?}");
        assert!(f.lower < truth && truth < f.upper, "{f:?}");
        // The sinusoid rises by 1.70 in that hour; the forecast sees the rise.
        let rise = f.value - daily(now);
        assert!((rise - 1.70).abs() < 1.0, "forecast rise {rise}");
        assert!(f.value > history[history.len() - 1], "{f:?}");
    }

    #[test]
    fn a_growing_daily_pattern_keeps_its_trend_out_of_the_season() {
        // The daily swing on a rise of 144 a day. With augurs' default decomposition
        // (two inner loops, no detrending) the forecast was 35 too high.
        let growing = |i: usize| daily(i) + 0.1 * i as f64;
        let history = series(3 * 1440, |i| growing(i) + noise(i));
        let now = 3 * 1440 - 1;
        let f = forecast(&history, MINUTE_MS, 60 * MINUTE_MS, 0.95).unwrap();
        let truth = growing(now + 60);
        assert!((f.value - truth).abs() < 1.0, "{f:?}, truth {truth}");
        assert!(f.lower < truth && truth < f.upper, "{f:?}, truth {truth}");
    }

    #[test]
    fn band_width_matches_the_error_of_the_next_value() {
        // Two days (the fewest a daily season needs) of a daily pattern with a trend,
        // and 48 next values over a day: the band's σ is the RMS of the actual errors,
        // so a 3σ band rarely flags a normal value.
        let value = |i: usize| daily(i) + 0.01 * i as f64 + noise(i);
        let (mut squares, mut sigmas, mut flagged) = (0.0, 0.0, 0);
        let ends: Vec<usize> = (0..48).map(|j| 2 * 1440 + 30 * j).collect();
        for &end in &ends {
            let history = series(2 * 1440, |i| value(end - 2 * 1440 + i));
            let band = seasonal_band(&history, MINUTE_MS, 3.0, 100).unwrap();
            squares += (value(end) - band.center).powi(2);
            sigmas += (band.upper - band.lower) / 6.0;
            flagged += usize::from(band.excludes(value(end)));
        }
        let rms = (squares / ends.len() as f64).sqrt();
        let sigma = sigmas / ends.len() as f64;
        assert!((0.8..1.25).contains(&(rms / sigma)), "rms {rms}, σ {sigma}");
        assert!(flagged <= 1, "{flagged} normal values flagged");
    }

    #[test]
    fn the_same_noise_gives_the_same_band_at_one_and_five_minutes() {
        // Three days of the daily pattern with noise of the same spread, sampled every
        // minute and every 5 minutes; the 5-minute samples reach the band held over the
        // one-minute steps until the next (as PromQL's lookback returns them), the newest
        // 3 minutes in. Before the fit took one value per sample, the 5-minute band was
        // about 4× wider, and widened over the hour of bands one fit gives.
        let len = 3 * 1440 - 2;
        let one = series(len, |i| daily(i) + noise(i));
        let five = series(len, |i| {
            let sampled = i / 5 * 5;
            daily(sampled) + noise(1_000_000 + sampled)
        });
        let mut widths = Vec::new();
        for history in [&one, &five] {
            let bands = seasonal_bands(history, MINUTE_MS, 3.0, 100, 60).unwrap();
            let width = |b: &Band| b.upper - b.lower;
            let mean = bands.iter().map(width).sum::<f64>() / bands.len() as f64;
            let (first, last) = (width(&bands[0]), width(&bands[59]));
            assert!(last < 1.25 * first, "widens from {first} to {last}");
            // The noise is uniform on ±1 (σ 0.58): a 3σ band is about 3.5 wide.
            assert!((2.5..5.0).contains(&mean), "mean width {mean}");
            // And it is centred on the pattern: the next hour's values are inside.
            for (j, band) in bands.iter().enumerate() {
                assert!(!band.excludes(daily(len + j)), "{j}: {band:?}");
            }
            widths.push(mean);
        }
        let ratio = widths[1] / widths[0];
        assert!((0.8..1.25).contains(&ratio), "widths {widths:?}");
    }

    #[test]
    fn a_flat_noisy_series_forecasts_its_level() {
        for (len, model) in [
            (360, ForecastModel::Trend),
            (3 * 1440, ForecastModel::Seasonal { period_steps: 1440 }),
        ] {
            let history = series(len, |i| 50.0 + noise(i));
            let f = forecast(&history, MINUTE_MS, 30 * MINUTE_MS, 0.95).unwrap();
            assert_eq!(f.model, model);
            assert!((f.value - 50.0).abs() < 1.0, "{f:?}");
            assert!(f.lower < 50.0 && 50.0 < f.upper, "{f:?}");
        }
    }

    #[test]
    fn a_constant_series_forecasts_itself_with_no_width() {
        for len in [10, 360, 3 * 1440] {
            let f = forecast(&vec![42.5; len], MINUTE_MS, 30 * MINUTE_MS, 0.95).unwrap();
            assert_eq!(
                f,
                Forecast {
                    value: 42.5,
                    lower: 42.5,
                    upper: 42.5,
                    model: ForecastModel::Trend
                }
            );
            let band = seasonal_band(&vec![42.5; len], MINUTE_MS, 3.0, 10).unwrap();
            assert!(!band.excludes(42.5) && band.excludes(42.500001), "{band:?}");
        }
    }

    #[test]
    fn large_offsets_keep_their_variation() {
        // A byte counter's rate near 1e12: MSTL works in f32, which would round the
        // ±50 daily swing away without standardisation.
        let start = 301;
        let history = series(3 * 1440, |i| 1e12 + daily(start + i) + noise(i));
        let f = forecast(&history, MINUTE_MS, 60 * MINUTE_MS, 0.95).unwrap();
        assert!((f.value - (1e12 + 150.0)).abs() < 1.0, "{f:?}");
    }

    #[test]
    fn too_short_and_invalid_inputs_are_errors() {
        let flat = |len| series(len, |i| 5.0 + noise(i));
        assert_eq!(
            forecast(&flat(9), MINUTE_MS, MINUTE_MS, 0.95),
            Err(ForecastError::TooShort { have: 9, need: 10 })
        );
        assert!(forecast(&flat(10), MINUTE_MS, MINUTE_MS, 0.95).is_ok());
        assert_eq!(
            forecast(&flat(30), 0, MINUTE_MS, 0.95),
            Err(ForecastError::InvalidStep(0))
        );
        assert_eq!(
            forecast(&flat(30), MINUTE_MS, MINUTE_MS, 1.0),
            Err(ForecastError::InvalidLevel(1.0))
        );
        assert!(matches!(
            forecast(&flat(30), MINUTE_MS, 30 * 86_400_000, 0.95),
            Err(ForecastError::HorizonTooLong { steps: 43_200, .. })
        ));
        let mut gap = flat(30);
        gap[7] = f64::NAN;
        assert_eq!(
            forecast(&gap, MINUTE_MS, MINUTE_MS, 0.95),
            Err(ForecastError::NonFiniteHistory { index: 7 })
        );
        // A horizon under one step forecasts the next step.
        assert_eq!(
            forecast(&flat(30), MINUTE_MS, 1, 0.95),
            forecast(&flat(30), MINUTE_MS, MINUTE_MS, 0.95)
        );
        assert_eq!(seasonal_band(&flat(9), MINUTE_MS, 3.0, 0), None);
    }

    #[test]
    fn seasonal_band_excludes_a_spike_and_includes_the_normal_value() {
        // Three days ending mid-rise, where the pattern moves fastest (0.22 a minute).
        let history = series(3 * 1440, |i| daily(i) + noise(i));
        let next = 3 * 1440;
        assert_eq!(next % 1440, 0);
        let band = seasonal_band(&history, MINUTE_MS, 3.0, 100).unwrap();
        let normal = daily(next) + noise(next);
        assert!(!band.excludes(normal), "{normal} outside {band:?}");
        assert!(band.excludes(normal + 5.0), "spike inside {band:?}");
        assert!(band.excludes(normal - 5.0), "dip inside {band:?}");
        // The daily peak, normal six hours later, is anomalous now.
        assert!(band.excludes(daily(next + 360)), "{band:?}");
        assert_eq!(seasonal_band(&history, MINUTE_MS, 3.0, 3 * 1440 + 1), None);
    }

    #[test]
    fn seasonal_band_under_two_days_needs_a_season_it_can_find() {
        // Twelve hours of an hourly pattern: the periodogram finds it.
        let hourly = |i: usize| 10.0 * (std::f64::consts::TAU * i as f64 / 60.0).sin();
        let history = series(720, |i| hourly(i) + noise(i));
        assert_eq!(detect_period(&history), Some(60));
        let band = seasonal_band(&history, MINUTE_MS, 3.0, 100).unwrap();
        assert!(!band.excludes(hourly(720) + noise(720)), "{band:?}");
        assert!(band.excludes(hourly(720) + 5.0), "{band:?}");
        // Noise or a trend has no season: cold start.
        assert_eq!(
            seasonal_band(&series(720, |i| 10.0 + noise(i)), MINUTE_MS, 3.0, 100),
            None
        );
        assert_eq!(
            seasonal_band(&series(720, |i| i as f64 + noise(i)), MINUTE_MS, 3.0, 100),
            None
        );
    }

    #[test]
    fn forecasts_serialize_in_camel_case() {
        let f = Forecast {
            value: 1.0,
            lower: 0.5,
            upper: 1.5,
            model: ForecastModel::Seasonal { period_steps: 1440 },
        };
        assert_eq!(
            serde_json::to_value(f).unwrap(),
            serde_json::json!({"value": 1.0, "lower": 0.5, "upper": 1.5,
                "model": {"seasonal": {"periodSteps": 1440}}})
        );
        assert_eq!(
            serde_json::to_value(ForecastModel::Trend).unwrap(),
            serde_json::json!("trend")
        );
    }

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.998_650_101_968_369_9, 3.0),
            (0.001, -3.090_232_306_167_813),
        ] {
            assert!((normal_quantile(p) - z).abs() < 1e-8, "{p}");
        }
    }
}
