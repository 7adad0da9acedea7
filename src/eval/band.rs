//! Anomaly bands: where a series' next value is expected to lie, from its own recent
//! history. `zscore` is mean ± k·σ; `mad` is median ± k·MAD, with the MAD scaled by 1.4826
//! so that it estimates σ for normally distributed data and one sensitivity means the same
//! for both. Pure functions over the history a window holds, and [`Moments`], which keep
//! a z-score's history summed as it slides through a window.
//!
//! `likelihood` ([`Surprise`]) judges how surprising the series has been lately rather
//! than one value: Numenta's anomaly likelihood over three simple predictors. Each
//! value's surprises are its distances from what was expected: the mean of the
//! detection window; a Holt-Winters forecast with a daily season; and a slow one, whose
//! level moves over a day. The mean of each over its last values (ten; 48 for the slow
//! one) is compared with its own usual level and spread, learnt over days, and with its
//! largest of the last month; any one far enough above both trips, as does a single
//! value far beyond the largest of the month (its distance from the window's mean or
//! the value a day earlier, whichever is nearer). Chosen by measurement on the
//! NAB benchmark (`cargo bench --bench detection`, see the README).

use crate::ingest::Sample;
use crate::window::SeriesWindow;

/// Which statistic centres and widens the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandAlgorithm {
    Zscore,
    Mad,
    /// A seasonal baseline with a prediction interval (see `forecast::seasonal_band`),
    /// built from a series' history at a fixed step rather than from raw samples.
    Seasonal,
    /// The recent mean surprise against its usual level (see [`Surprise`]).
    Likelihood,
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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// The times `[from_ms, until_ms)` a running history holds the window's samples of.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    from_ms: i64,
    until_ms: i64,
}

impl Span {
    /// Before a history is first built.
    const UNBUILT: Span = Span {
        from_ms: i64::MIN,
        until_ms: i64::MIN,
    };

    fn is(self, from_ms: i64, until_ms: i64) -> bool {
        self != Self::UNBUILT && self == Span { from_ms, until_ms }
    }

    /// Whether the history can slide to `to` by adding the samples after it and taking
    /// out those before `to` starts: not before it is built, not backwards, and not across
    /// a gap longer than it (nothing of it would be left).
    fn slides_to(self, to: Span) -> bool {
        self != Self::UNBUILT
            && to.from_ms >= self.from_ms
            && to.until_ms >= self.until_ms
            && to.from_ms < self.until_ms
    }

    /// The samples sliding to `to` adds: `[until, to's until)`, all after `to` starts.
    fn entering(self, to: Span, window: &SeriesWindow) -> impl Iterator<Item = &Sample> {
        window.samples_in(self.until_ms, to.until_ms)
    }

    /// The samples sliding to `to` takes out: `[from, to's from)`, all before `until`.
    fn leaving(self, to: Span, window: &SeriesWindow) -> impl Iterator<Item = &Sample> {
        window.samples_in(self.from_ms, to.from_ms)
    }

    /// The finite values of the window's samples in the span, oldest first.
    fn values(self, window: &SeriesWindow) -> impl DoubleEndedIterator<Item = f64> + Clone + '_ {
        window
            .samples_in(self.from_ms, self.until_ms)
            .map(|s| s.value)
            .filter(|v| v.is_finite())
    }
}

/// Running moments of a z-score band's history: the finite values of a window's samples
/// timed in `[from_ms, until_ms)`. As a series' history slides with each new sample, the
/// values entering and leaving it are added and taken out, so a band costs O(1) per sample
/// (amortized) instead of a pass over an hour or a day of samples.
///
/// Values are summed as offsets from `shift`, the newest value of the history when the
/// sums were last rebuilt: the variance of values far from zero but close together keeps
/// its precision, and a flat history at that value has exactly zero spread. The sums are
/// rebuilt from the window once the updates since the last rebuild outnumber the history
/// (or 64), so rounding cannot build up; when the history has moved far from the shift;
/// and whenever it did not slide forward.
#[derive(Debug, Clone, Copy)]
pub struct Moments {
    span: Span,
    count: usize,
    shift: f64,
    sum: f64,
    sum_sq: f64,
    updates: usize,
    /// The largest squared offset added since the last rebuild: the sums' rounding is
    /// relative to it, not to what is left of them once it has gone.
    peak_sq: f64,
}

impl Default for Moments {
    fn default() -> Self {
        Self {
            span: Span::UNBUILT,
            count: 0,
            shift: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            updates: 0,
            peak_sq: 0.0,
        }
    }
}

impl Moments {
    /// Moves the history to `[from_ms, until_ms)` of `window`. The samples leaving the
    /// history are read from the window to be taken out: call this before the window is
    /// trimmed for the sample at `until_ms`, while it still holds them.
    pub fn advance(&mut self, window: &SeriesWindow, from_ms: i64, until_ms: i64) {
        let to = Span { from_ms, until_ms };
        if !self.span.slides_to(to) || self.updates > self.count.max(64) {
            return self.rebuild(window, to);
        }
        for s in self.span.entering(to, window) {
            self.add(s.value, 1.0);
        }
        for s in self.span.leaving(to, window) {
            self.add(s.value, -1.0);
        }
        self.span = to;
        // Once the history has moved far from the shift (a level change has settled), or
        // a value far out has left it (a spike, an old level), the variance is a small
        // difference of large sums: rebuild around what is left rather than lose its
        // digits. Right after a rebuild around the newest value neither ratio can hold
        // (the peak is at most 4 n σ²), so this cannot loop.
        if self.count >= 2 && self.sum_sq.is_finite() {
            let n = self.count as f64;
            let mean_offset = self.sum / n;
            let variance = (self.sum_sq / n - mean_offset * mean_offset).max(0.0);
            if mean_offset * mean_offset > 1e6 * variance || self.peak_sq > 1e3 * n * variance {
                self.rebuild(window, to);
            }
        }
    }

    fn rebuild(&mut self, window: &SeriesWindow, span: Span) {
        let mut values = span.values(window);
        // The newest value: after a level change, the level the history is moving to.
        let shift = values.clone().next_back().unwrap_or(0.0);
        *self = Self {
            span,
            shift,
            ..Self::default()
        };
        for value in &mut values {
            self.add(value, 1.0);
        }
        self.updates = 0;
    }

    /// Adds (`sign` 1) or takes out (−1) one value; non-finite values are not history.
    fn add(&mut self, value: f64, sign: f64) {
        if !value.is_finite() {
            return;
        }
        let offset = value - self.shift;
        self.sum += sign * offset;
        self.sum_sq += sign * offset * offset;
        if sign > 0.0 {
            self.peak_sq = self.peak_sq.max(offset * offset);
            self.count += 1;
        } else {
            self.count = self.count.saturating_sub(1);
        }
        self.updates += 1;
    }

    /// The mean of the history (NaN when empty).
    fn mean(&self) -> f64 {
        self.shift + self.sum / self.count as f64
    }

    /// Whether these moments are of the history `[from_ms, until_ms)`, and usable: values
    /// whose squares overflow leave sums that only a recount can replace.
    pub fn covers(&self, from_ms: i64, until_ms: i64) -> bool {
        self.span.is(from_ms, until_ms) && self.sum.is_finite() && self.sum_sq.is_finite()
    }

    /// The z-score band of the history, as [`band`] computes it, up to rounding.
    pub fn band(&self, spec: &BandSpec) -> Option<Band> {
        if self.count < spec.min_samples.max(2) {
            return None;
        }
        let n = self.count as f64;
        let mean_offset = self.sum / n;
        let center = self.shift + mean_offset;
        let variance = (self.sum_sq / n - mean_offset * mean_offset).max(0.0);
        let half = spec.sensitivity * variance.sqrt();
        Some(Band {
            center,
            lower: center - half,
            upper: center + half,
        })
    }
}

/// A MAD band's history kept sorted: the finite values of a window's samples timed in
/// `[from_ms, until_ms)`, inserted and removed by binary search as the history slides.
/// The median is then read off the middle and the MAD found among the deviations on
/// either side of it in O(log n) (a new value costs a move of the values above it), where
/// a recount copies and selects the whole history for every sample. Exact: the band is
/// the one [`band`] computes, bit for bit.
#[derive(Debug, Clone)]
pub struct SortedHistory {
    span: Span,
    /// In `f64::total_cmp` order.
    values: Vec<f64>,
}

impl Default for SortedHistory {
    fn default() -> Self {
        Self {
            span: Span::UNBUILT,
            values: Vec::new(),
        }
    }
}

impl SortedHistory {
    /// As [`Moments::advance`]: call before the window is trimmed for the sample at
    /// `until_ms`.
    pub fn advance(&mut self, window: &SeriesWindow, from_ms: i64, until_ms: i64) {
        let to = Span { from_ms, until_ms };
        if self.span.slides_to(to) {
            for s in self.span.entering(to, window) {
                self.insert(s.value);
            }
            let mut consistent = true;
            for s in self.span.leaving(to, window) {
                consistent &= self.remove(s.value);
            }
            if consistent {
                self.span = to;
                return;
            }
        }
        self.values.clear();
        self.values.extend(to.values(window));
        self.values.sort_unstable_by(f64::total_cmp);
        self.span = to;
    }

    fn insert(&mut self, value: f64) {
        if value.is_finite() {
            let at = self.values.partition_point(|v| v.total_cmp(&value).is_lt());
            self.values.insert(at, value);
        }
    }

    /// Whether the value was there to remove (always, unless the window changed under
    /// the history: then it is rebuilt).
    fn remove(&mut self, value: f64) -> bool {
        if !value.is_finite() {
            return true;
        }
        match self.values.binary_search_by(|v| v.total_cmp(&value)) {
            Ok(at) => {
                self.values.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether this is the history `[from_ms, until_ms)`.
    pub fn covers(&self, from_ms: i64, until_ms: i64) -> bool {
        self.span.is(from_ms, until_ms)
    }

    /// The MAD band of the history, exactly as [`band`] computes it.
    pub fn band(&self, spec: &BandSpec) -> Option<Band> {
        let values = &self.values;
        let n = values.len();
        if n < spec.min_samples.max(2) {
            return None;
        }
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        // The deviations below the median, nearest first, and those at or above it: two
        // ascending runs, whose merged middle is the MAD.
        let split = values.partition_point(|v| *v < median);
        let below = |i: usize| median - values[split - 1 - i];
        let above = |i: usize| values[split + i] - median;
        let nth = |k: usize| kth_of_two(below, split, above, n - split, k);
        let mad = if n % 2 == 1 {
            nth(n / 2)
        } else {
            (nth(n / 2 - 1) + nth(n / 2)) / 2.0
        };
        let spread = if mad > 0.0 {
            mad * MAD_TO_SIGMA
        } else {
            // Rare (more than half the history equal), so a pass over it is affordable:
            // the deviations in ascending order, merged from the two runs, as the
            // recount sums them.
            let (mut i, mut j, mut sum) = (0, 0, 0.0);
            while i < split || j < n - split {
                if j == n - split || (i < split && below(i) <= above(j)) {
                    sum += below(i);
                    i += 1;
                } else {
                    sum += above(j);
                    j += 1;
                }
            }
            sum / n as f64 * MEAN_DEVIATION_TO_SIGMA
        };
        let half = spec.sensitivity * spread;
        Some(Band {
            center: median,
            lower: median - half,
            upper: median + half,
        })
    }
}

/// The `k`-th smallest (from 0) of two ascending runs `a` (`a_len` long) and `b`, by
/// binary search over how many of the smallest `k + 1` come from `a`.
fn kth_of_two(
    a: impl Fn(usize) -> f64,
    a_len: usize,
    b: impl Fn(usize) -> f64,
    b_len: usize,
    k: usize,
) -> f64 {
    let (mut lo, mut hi) = ((k + 1).saturating_sub(b_len), (k + 1).min(a_len));
    while lo < hi {
        let from_a = (lo + hi) / 2;
        let from_b = k + 1 - from_a;
        // Too few from `a` if its next one is smaller than the last taken from `b`.
        if from_a < a_len && from_b > 0 && a(from_a) < b(from_b - 1) {
            lo = from_a + 1;
        } else {
            hi = from_a;
        }
    }
    let from_b = k + 1 - lo;
    match (lo.checked_sub(1).map(&a), from_b.checked_sub(1).map(&b)) {
        (Some(x), Some(y)) => x.max(y),
        (Some(x), None) => x,
        (None, Some(y)) => y,
        (None, None) => f64::NAN,
    }
}

/// The running histories of one band rule, per series (indexed by series id), of the
/// kind its algorithm needs.
#[derive(Debug, Default)]
pub enum RunningBands {
    /// Seasonal bands, and rules without one.
    #[default]
    None,
    Zscore(Vec<Moments>),
    Mad(Vec<SortedHistory>),
    /// The window's mean (as a z-score keeps it) and the surprise state.
    Likelihood(Vec<(Moments, Surprise)>),
}

impl RunningBands {
    pub fn for_spec(spec: Option<&BandSpec>) -> Self {
        match spec.map(|s| s.algorithm) {
            Some(BandAlgorithm::Zscore) => Self::Zscore(Vec::new()),
            Some(BandAlgorithm::Mad) => Self::Mad(Vec::new()),
            Some(BandAlgorithm::Likelihood) => Self::Likelihood(Vec::new()),
            Some(BandAlgorithm::Seasonal) | None => Self::None,
        }
    }

    /// For `likelihood`: the band `sample` of series `series` is judged against, with its
    /// history `[from_ms, sample's time)` of `window` (the running mean must cover it:
    /// [`Self::advance`] first), then learns from the sample. `None` for other
    /// algorithms.
    pub fn judge(
        &mut self,
        series: usize,
        spec: &BandSpec,
        window: &SeriesWindow,
        from_ms: i64,
        sample: Sample,
    ) -> Option<Option<Band>> {
        let Self::Likelihood(all) = self else {
            return None;
        };
        if series >= all.len() {
            all.resize_with(series + 1, Default::default);
        }
        let (moments, surprise) = &mut all[series];
        let until_ms = sample.timestamp_ms;
        if !moments.covers(from_ms, until_ms) {
            moments.rebuild(window, Span { from_ms, until_ms });
        }
        let expected = moments.mean();
        Some(surprise.judge(spec, expected, moments.count, sample))
    }

    /// Slides series `series`' history to `[from_ms, until_ms)` of `window`, before the
    /// window is trimmed for the sample at `until_ms`.
    pub fn advance(&mut self, series: usize, window: &SeriesWindow, from_ms: i64, until_ms: i64) {
        fn entry<T: Default>(all: &mut Vec<T>, series: usize) -> &mut T {
            if series >= all.len() {
                all.resize_with(series + 1, T::default);
            }
            &mut all[series]
        }
        match self {
            Self::None => {}
            Self::Zscore(all) => entry(all, series).advance(window, from_ms, until_ms),
            Self::Mad(all) => entry(all, series).advance(window, from_ms, until_ms),
            Self::Likelihood(all) => entry(all, series).0.advance(window, from_ms, until_ms),
        }
    }

    /// The band of series `series` over `[from_ms, until_ms)`, when its running history
    /// is of exactly that; `None` when the caller must count the history itself.
    pub fn band(
        &self,
        series: usize,
        spec: &BandSpec,
        from_ms: i64,
        until_ms: i64,
    ) -> Option<Option<Band>> {
        match self {
            // Judged with the value (see `judge`).
            Self::None | Self::Likelihood(_) => None,
            Self::Zscore(all) => all
                .get(series)
                .filter(|m| m.covers(from_ms, until_ms))
                .map(|m| m.band(spec)),
            Self::Mad(all) => all
                .get(series)
                .filter(|h| h.covers(from_ms, until_ms))
                .map(|h| h.band(spec)),
        }
    }

    /// Drops a series' history: its id may be reused by another series.
    pub fn forget(&mut self, series: usize) {
        match self {
            Self::None => {}
            Self::Zscore(all) => {
                if let Some(m) = all.get_mut(series) {
                    *m = Moments::default();
                }
            }
            Self::Mad(all) => {
                if let Some(h) = all.get_mut(series) {
                    *h = SortedHistory::default();
                }
            }
            Self::Likelihood(all) => {
                if let Some(h) = all.get_mut(series) {
                    *h = Default::default();
                }
            }
        }
    }

    /// For `likelihood`: the band series `series`' latest value was judged against
    /// (`Some(None)` during warm-up); `None` for other algorithms.
    pub fn last_band(&self, series: usize) -> Option<Option<Band>> {
        let Self::Likelihood(all) = self else {
            return None;
        };
        Some(all.get(series).and_then(|(_, s)| s.last_band))
    }

    /// The likelihood state of every series that has one, by id, for saving.
    pub fn export_surprise(&self) -> Vec<(u32, SavedSurprise)> {
        let Self::Likelihood(all) = self else {
            return Vec::new();
        };
        all.iter()
            .enumerate()
            .filter_map(|(id, (_, s))| Some((id as u32, s.save()?)))
            .collect()
    }

    /// Puts a series' saved likelihood state back under its id now (its running mean
    /// is rebuilt from the restored window at its next sample).
    pub fn restore_surprise(&mut self, series: usize, saved: &SavedSurprise) {
        let Self::Likelihood(all) = self else {
            return;
        };
        if let Some(surprise) = Surprise::load(saved) {
            if series >= all.len() {
                all.resize_with(series + 1, Default::default);
            }
            all[series] = (Moments::default(), surprise);
        }
    }

    /// Drops every series' history (their ids were remapped).
    pub fn clear(&mut self) {
        match self {
            Self::None => {}
            Self::Zscore(all) => all.clear(),
            Self::Mad(all) => all.clear(),
            Self::Likelihood(all) => all.clear(),
        }
    }
}

/// How many of the newest values' surprises are averaged: one odd value among them is
/// diluted, a run of them (a level shift, a burst) adds up. Numenta's choice.
pub const SURPRISE_RUN: usize = 10;

/// The time over which the usual level and spread of each mean surprise are learnt: the
/// time constant of their exponentially weighted mean and variance, 10 days. Memory is
/// then O(1) per series, whatever the scrape interval. A shorter one lets the usual
/// spread follow incidents: NAB standard score, in the Python replica of the first,
/// single-surprise version of this detector, 65.8 at 2 days, 67.9 at 3.5, 69.6 at 5,
/// 69.0 at 7; with today's judgments (Rust replica), 80.8 at 5 and 7 days, 80.6 at 10,
/// 79.3 at 14, but 10 is the one whose neighbouring sensitivities (4.9σ and 5.1σ) stay
/// above 80.4 (see [`SURPRISE_SIGMAS_PER_SENSITIVITY`]).
pub const SURPRISE_MEMORY_MS: i64 = 10 * DAY_MS;

/// Standard deviations of a mean surprise per unit of sensitivity: the default 3 flags
/// a mean surprise 5σ above its usual level. Surprises are distances, so their mean
/// has a long right tail, and 3σ of it is passed several times as often as a z-score's
/// 3σ by normal data. Measured on NAB (standard profile, Rust replica of this detector,
/// which the bench matches): 79.1 at 4.5σ, 80.0 at 4.75σ, 80.4 at 4.9σ, 80.6 at 5σ,
/// 80.8 at 5.1σ, 75.6 at 5.25σ (four incidents fewer found): 5σ is inside the plateau,
/// a tenth of a σ from its steep edge.
pub const SURPRISE_SIGMAS_PER_SENSITIVITY: f64 = 5.0 / 3.0;

/// A run of surprises must also be at least this share of the largest run of the same
/// surprise in the last month ([`SURPRISE_PEAK_MEMORY_MS`]) to trip. The usual spread
/// is learnt over days, so a week after a burst of tweets, or an incident, its smaller
/// echoes look rare again; a series is anomalous when it does something it has not
/// done lately, not merely something uncommon. Measured on NAB (standard profile,
/// replica): no share 80.4, 0.4 80.5, 0.5 80.6, 0.6 79.3 (one incident fewer).
const SURPRISE_PEAK_SHARE: f64 = 0.5;

/// How long the largest run of each surprise, and the largest single surprise (the
/// record), are remembered: the time constant of their decay, 30 days (NAB, replica:
/// 14 days 79.9, 30 days 80.6, 60 days 78.2).
const SURPRISE_PEAK_MEMORY_MS: i64 = 30 * DAY_MS;

/// A value's own surprise (distance from the window's mean or the day-ago value,
/// whichever is nearer) beyond this multiple of the record per unit of sensitivity is
/// anomalous at once, whatever the run: a single value far beyond anything the series
/// did in a month (a sensor reading 23 on a road doing 65 ± 3) is diluted below the
/// trip level by the run's mean of ten. The default sensitivity 3 gives 1.5 times the
/// record; NAB (replica, with the other three judgments): none 78.1, 1.25× 79.8, 1.5×
/// 80.6, 2× 79.6.
const SURPRISE_RECORD_PER_SENSITIVITY: f64 = 0.5;

/// How many values the slow surprise averages: 48, four hours of 5-minute samples,
/// two days of hourly ones, twelve minutes of 15-second ones (a run counts values, as
/// the fast ones' ten do: what dilutes one odd value is how many values share the
/// mean, not how long they took to come). A level that drifts up over hours (a topic that trends for
/// an afternoon) is followed by the hour-long forecast and the hour-long window, so
/// neither is surprised for long; against a forecast whose level moves over a day, its
/// run adds up. NAB (replica): none 76.7, 36 values 80.5, 48 80.6, 72 80.6, 96 80.5.
const SLOW_SURPRISE_RUN: usize = 48;

/// The time constant of the slow forecast's level: a day (NAB, replica: 12 hours
/// 79.2, a day 80.6, two days 80.6).
const SLOW_FORECAST_LEVEL_MS: i64 = DAY_MS;

/// How long a silent series keeps its likelihood state (and window): two days, so
/// that a scrape outage or a slow series (one sample an hour, or less often) resumes
/// with what it had learnt.
pub const SURPRISE_KEEP_MS: i64 = 2 * DAY_MS;

/// A series' first day only fills its daily pattern: surprises then, with no day
/// before to compare with, say nothing about the usual ones (a daily swing would look
/// like days of surprise). The usual surprise is learnt from then on, and verdicts
/// start a day later: no verdict in a series' first two days.
pub const SURPRISE_WARMUP_MS: i64 = DAY_MS;

/// The time constant of the forecast's level (Holt-Winters' exponential smoothing,
/// additive daily season): an hour, as the detection window's default. Measured on NAB
/// (standard profile, in the replica of the three-surprise version): 70.1 at 30
/// minutes, 74.3 at 1 hour, 72.9 at 2 hours.
const FORECAST_LEVEL_MS: i64 = 3_600_000;

/// How far a day's value in a slot of the day moves the forecast's season there towards
/// what the series did: 0.2, about the last five days weighed. Measured on NAB
/// (standard profile, in the replica of the three-surprise version): 73.0 at 0.1, 74.3
/// at 0.2, 74.6 at 0.3. A value less than a day after the slot's previous one moves it
/// in proportion (a 15-second series visits each 5-minute slot 20 times a day), so
/// that days weigh the same whatever the scrape interval.
const FORECAST_SEASON_GAIN: f64 = 0.2;

const DAY_MS: i64 = 86_400_000;

/// The daily pattern is kept as the newest value in each slot of this length: 288
/// slots a day, so the lookup "one day earlier" is within 5 minutes whatever the scrape
/// interval, in a fixed 4.5 KiB per series (and each forecast's season, 2.25 KiB).
const PROFILE_SLOT_MS: i64 = 300_000;
const PROFILE_SLOTS: usize = (DAY_MS / PROFILE_SLOT_MS) as usize;

/// One surprise's recent run (the `N` values before the newest) and the usual level
/// and spread of its mean.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Usual<const N: usize> {
    recent: [f64; N],
    /// How many of `recent` are filled, and where the next goes.
    filled: usize,
    next: usize,
    /// Exponentially weighted mean and sum of squared deviations of the run's mean
    /// surprise (West's weighted update), and the total weight: each value weighs 1,
    /// decayed by `exp(−age / SURPRISE_MEMORY_MS)`. Exact weighted moments from the
    /// first value on: with an initial level and variance to decay from instead, the
    /// usual spread was overestimated for days (the level starts far from the
    /// surprises), so that a level shift went unflagged on a series' third day.
    level: f64,
    spread_sq: f64,
    weight: f64,
    /// When this surprise began to be learnt (`None` before): it judges a day later.
    since: Option<i64>,
    /// The largest run mean learnt, decayed by `exp(−age / SURPRISE_PEAK_MEMORY_MS)`.
    peak: f64,
}

/// The run of the two fast surprises: [`SURPRISE_RUN`] values.
const FAST: usize = SURPRISE_RUN - 1;
/// The slow surprise's run: [`SLOW_SURPRISE_RUN`] values.
const SLOW: usize = SLOW_SURPRISE_RUN - 1;

impl<const N: usize> Default for Usual<N> {
    fn default() -> Self {
        Self {
            recent: [0.0; N],
            filled: 0,
            next: 0,
            level: 0.0,
            spread_sq: 0.0,
            weight: 0.0,
            since: None,
            peak: 0.0,
        }
    }
}

impl<const N: usize> Usual<N> {
    fn previous(&self) -> f64 {
        self.recent[..self.filled].iter().sum()
    }

    /// How much surprise a value at `t` may carry before the run's mean passes both the
    /// usual level by `sigmas` standard deviations and [`SURPRISE_PEAK_SHARE`] of the
    /// peak; `None` before a day of learning. None left after a burst.
    fn room(&self, t: i64, sigmas: f64) -> Option<f64> {
        let since = self.since?;
        if t.saturating_sub(since) < SURPRISE_WARMUP_MS || self.weight <= 0.0 {
            return None;
        }
        let variance = (self.spread_sq / self.weight).max(0.0);
        let limit = (self.level + sigmas * variance.sqrt()).max(SURPRISE_PEAK_SHARE * self.peak);
        let run = (self.filled + 1) as f64;
        Some((run * limit.max(self.level) - self.previous()).max(0.0))
    }

    /// Adds a value's surprise `s` to the run, and (when `learning`) its run's mean to
    /// the usual level and spread, older ones decayed by `dt` since the last value (so
    /// that days count the same for a 5-minute and a 15-second series).
    fn learn(&mut self, s: f64, t: i64, dt: f64, learning: bool) {
        if !s.is_finite() {
            return;
        }
        let mean = (self.previous() + s) / (self.filled + 1) as f64;
        if learning && mean.is_finite() {
            self.since.get_or_insert(t);
            let decay = (-dt / SURPRISE_MEMORY_MS as f64).exp();
            let before = self.level;
            self.weight = decay * self.weight + 1.0;
            self.level = before + (mean - before) / self.weight;
            self.spread_sq = decay * self.spread_sq + (mean - before) * (mean - self.level);
            self.peak = decay_max(self.peak, mean, dt);
        }
        self.recent[self.next] = s;
        self.next = (self.next + 1) % self.recent.len();
        self.filled = (self.filled + 1).min(self.recent.len());
    }

    fn save(&self) -> SavedUsual {
        SavedUsual {
            recent: self.recent.iter().map(|v| v.to_bits()).collect(),
            filled: self.filled,
            next: self.next,
            level: self.level.to_bits(),
            spread_sq: self.spread_sq.to_bits(),
            weight: self.weight.to_bits(),
            since: self.since,
            peak: Some(self.peak.to_bits()),
        }
    }

    /// The saved state, checked: anything out of range (a tampered file) is `None`.
    fn load(saved: &SavedUsual) -> Option<Usual<N>> {
        let mut recent = [0.0; N];
        if saved.recent.len() != recent.len()
            || saved.filled > recent.len()
            || saved.next >= recent.len()
        {
            return None;
        }
        for (r, bits) in recent.iter_mut().zip(&saved.recent) {
            *r = f64::from_bits(*bits);
        }
        Some(Usual {
            recent,
            filled: saved.filled,
            next: saved.next,
            level: f64::from_bits(saved.level),
            spread_sq: f64::from_bits(saved.spread_sq),
            weight: f64::from_bits(saved.weight),
            since: saved.since,
            peak: saved.peak.map_or(0.0, f64::from_bits),
        })
    }
}

/// `peak` decayed over `dt` ms by [`SURPRISE_PEAK_MEMORY_MS`], or `value` if larger.
fn decay_max(peak: f64, value: f64, dt: f64) -> f64 {
    (peak * (-dt / SURPRISE_PEAK_MEMORY_MS as f64).exp()).max(value)
}

/// Moves a Holt-Winters forecast towards `x`, `dt` ms after its last value: its
/// `level` by the share a smoothing over `level_ms` gives that time (starting at `x`),
/// and the `season` of this slot of the day towards what is left, by `gain`.
fn smooth(level: &mut f64, season: &mut f64, x: f64, dt: f64, level_ms: i64, gain: f64) {
    let before = if season.is_nan() { 0.0 } else { *season };
    if level.is_finite() {
        let share = 1.0 - (-dt / level_ms as f64).exp();
        *level += share * (x - before - *level);
    } else {
        *level = x;
    }
    let left = x - *level;
    *season = if season.is_nan() {
        left
    } else {
        before + gain * (left - before)
    };
}

/// A series' last day: the newest sample in each 5-minute slot (the value "a day
/// earlier"), and the two forecasts' seasons there (NaN before the slot is first
/// visited).
#[derive(Debug, Clone)]
struct Day {
    last: [(i64, f64); PROFILE_SLOTS],
    season: [f64; PROFILE_SLOTS],
    slow_season: [f64; PROFILE_SLOTS],
}

impl Day {
    fn empty() -> Box<Day> {
        Box::new(Day {
            last: [(i64::MIN, 0.0); PROFILE_SLOTS],
            season: [f64::NAN; PROFILE_SLOTS],
            slow_season: [f64::NAN; PROFILE_SLOTS],
        })
    }
}

fn slot(at_ms: i64) -> usize {
    (at_ms.div_euclid(PROFILE_SLOT_MS) as usize) % PROFILE_SLOTS
}

/// One series' surprise state for a `likelihood` band: the run and usual level of
/// each of its three surprises, its record, its last day (one value per 5-minute
/// slot) and its two forecasts (level and daily season).
///
/// A value `x` is anomalous when, for any of the three surprises `s(x)`, the mean of
/// the last run, `(Σ previous + s(x)) / run`, exceeds both that surprise's usual level
/// by more than `sensitivity` × [`SURPRISE_SIGMAS_PER_SENSITIVITY`] standard
/// deviations of it and half its largest run of the last month; or when its distance
/// from the window's mean or the value a day earlier, whichever is nearer, is beyond
/// `sensitivity` × [`SURPRISE_RECORD_PER_SENSITIVITY`] times the record. Solving each
/// for `x` gives an interval (around the window's mean, a forecast, or the value a day
/// earlier, ± what the run leaves for `s(x)`); the band is their intersection, so the
/// rules endpoint and the hysteresis see an ordinary band. After a run of surprises
/// the band can have no width left: anything but the expected value is anomalous
/// until the run calms down.
#[derive(Debug, Clone)]
pub struct Surprise {
    /// The distance from the detection window's mean: a day that does not repeat the
    /// day before (such as a jump that does not come) is a surprise.
    mean: Usual<FAST>,
    /// The distance from a Holt-Winters forecast (a level smoothed over an hour plus a
    /// daily season averaged over days): a daily pattern is no surprise.
    forecast: Usual<FAST>,
    /// The distance from the slow forecast (its level smoothed over a day), over
    /// [`SLOW_SURPRISE_RUN`] values: a level that drifts away over hours.
    slow: Usual<SLOW>,
    /// The largest distance of a single value from the window's mean or the value a
    /// day earlier, whichever is nearer (a daily pattern is no surprise), decayed over
    /// [`SURPRISE_PEAK_MEMORY_MS`] (0 before the first day is learnt).
    record: f64,
    /// First and newest sample times (`None` before the first).
    seen: Option<(i64, i64)>,
    /// Values seen: no band before the rule's `minSamples` (the detection window itself
    /// may hold a single value of an hourly series).
    samples: usize,
    /// The forecasts' levels (NaN before the first value).
    forecast_level: f64,
    slow_level: f64,
    day: Option<Box<Day>>,
    /// The band the latest value was judged against, for the rules endpoint.
    last_band: Option<Band>,
}

/// A [`Surprise`] as saved across a restart (`--state-dir`): floats as their bits, so
/// that the restored state is the saved one exactly; the filled slots of the day.
/// Older files restore what they hold and the rest learns afresh (a day before it
/// judges): those of the single-surprise version only the day's values, those of the
/// three-surprise version the mean and forecast surprises too (the nearest-value
/// surprise they hold at the top level is no longer judged, and is ignored).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedSurprise {
    seen: Option<(i64, i64)>,
    samples: usize,
    /// `(slot, time, value bits)` of the slots holding a value.
    profile: Vec<(usize, i64, u64)>,
    /// The window-mean and forecast surprises (absent from the oldest files).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    others: Vec<SavedUsual>,
    /// The forecast's level, and `(slot, bits)` of its season's visited slots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forecast_level: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    season: Vec<(usize, u64)>,
    /// The slow surprise, the record, and the slow forecast as the forecast above (all
    /// absent from older files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slow: Option<SavedUsual>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    record: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slow_level: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    slow_season: Vec<(usize, u64)>,
}

/// One surprise's [`Usual`] as saved.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedUsual {
    recent: Vec<u64>,
    filled: usize,
    next: usize,
    level: u64,
    spread_sq: u64,
    weight: u64,
    since: Option<i64>,
    /// The largest run mean, decayed (absent from older files: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peak: Option<u64>,
}

impl Default for Surprise {
    fn default() -> Self {
        Self {
            mean: Usual::default(),
            forecast: Usual::default(),
            slow: Usual::default(),
            record: 0.0,
            seen: None,
            samples: 0,
            // No level before the first value: the forecast starts at it, not at 0 (a
            // level climbing from 0 for hours would leave its offset in the season).
            forecast_level: f64::NAN,
            slow_level: f64::NAN,
            day: None,
            last_band: None,
        }
    }
}

/// A forecast's level as saved: its bits, once there is one.
fn level_bits(level: f64) -> Option<u64> {
    level.is_finite().then(|| level.to_bits())
}

/// A forecast's season as saved: `(slot, bits)` of the slots visited.
fn season_bits(season: &[f64; PROFILE_SLOTS]) -> Vec<(usize, u64)> {
    season
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_nan())
        .map(|(slot, s)| (slot, s.to_bits()))
        .collect()
}

impl Surprise {
    fn save(&self) -> Option<SavedSurprise> {
        self.seen?;
        let day = self.day.as_deref();
        Some(SavedSurprise {
            seen: self.seen,
            samples: self.samples,
            profile: day
                .iter()
                .flat_map(|d| d.last.iter().enumerate())
                .filter(|(_, (t, _))| *t != i64::MIN)
                .map(|(slot, (t, v))| (slot, *t, v.to_bits()))
                .collect(),
            others: vec![self.mean.save(), self.forecast.save()],
            forecast_level: level_bits(self.forecast_level),
            season: day.map(|d| season_bits(&d.season)).unwrap_or_default(),
            slow: Some(self.slow.save()),
            record: Some(self.record.to_bits()),
            slow_level: level_bits(self.slow_level),
            slow_season: day.map(|d| season_bits(&d.slow_season)).unwrap_or_default(),
        })
    }

    /// The saved state, checked: anything out of range (a tampered file) starts afresh.
    fn load(saved: &SavedSurprise) -> Option<Surprise> {
        let (mean, forecast) = match saved.others.as_slice() {
            [] => Default::default(),
            [mean, forecast] => (Usual::load(mean)?, Usual::load(forecast)?),
            _ => return None,
        };
        let slow = match &saved.slow {
            Some(slow) => Usual::load(slow)?,
            None => Usual::default(),
        };
        let mut day = Day::empty();
        for &(slot, t, bits) in &saved.profile {
            *day.last.get_mut(slot)? = (t, f64::from_bits(bits));
        }
        for (season, saved) in [
            (&mut day.season, &saved.season),
            (&mut day.slow_season, &saved.slow_season),
        ] {
            for &(slot, bits) in saved {
                *season.get_mut(slot)? = f64::from_bits(bits);
            }
        }
        let level = |bits: Option<u64>| bits.map_or(f64::NAN, f64::from_bits);
        Some(Surprise {
            mean,
            forecast,
            slow,
            record: saved.record.map_or(0.0, f64::from_bits),
            seen: saved.seen,
            samples: saved.samples,
            forecast_level: level(saved.forecast_level),
            slow_level: level(saved.slow_level),
            day: Some(day),
            last_band: None,
        })
    }

    /// The band for `sample`, given the window's `expected` mean over `count` values;
    /// then learns the sample. `None` during warm-up.
    fn judge(
        &mut self,
        spec: &BandSpec,
        expected: f64,
        count: usize,
        sample: Sample,
    ) -> Option<Band> {
        let (t, x) = (sample.timestamp_ms, sample.value);
        if !x.is_finite() {
            return None;
        }
        let expected = if count > 0 && expected.is_finite() {
            expected
        } else {
            x
        };
        let day = self.day.get_or_insert_with(Day::empty);
        let day_ago = t.saturating_sub(DAY_MS);
        let (then_ms, then) = day.last[slot(day_ago)];
        let yesterday =
            (then_ms != i64::MIN && (then_ms - day_ago).abs() <= PROFILE_SLOT_MS).then_some(then);
        let now = slot(t);
        let forecast_of = |level: f64, season: f64| {
            level
                .is_finite()
                .then(|| level + if season.is_nan() { 0.0 } else { season })
        };
        let forecast = forecast_of(self.forecast_level, day.season[now]);
        let slow_forecast = forecast_of(self.slow_level, day.slow_season[now]);
        let from_mean = (x - expected).abs();
        let nearest = yesterday.map_or(from_mean, |y| from_mean.min((x - y).abs()));
        let from_forecast = forecast.map_or(0.0, |f| (x - f).abs());
        let from_slow = slow_forecast.map_or(0.0, |f| (x - f).abs());
        let (first, last) = self.seen.unwrap_or((t, t));
        let age = t.saturating_sub(first);
        let sigmas = spec.sensitivity * SURPRISE_SIGMAS_PER_SENSITIVITY;
        let band = (self.samples >= spec.min_samples && age >= 2 * SURPRISE_WARMUP_MS)
            .then(|| {
                let around = |center: f64, room: f64| Band {
                    center,
                    lower: center - room,
                    upper: center + room,
                };
                // The record takes as normal what is within its room of the window's
                // mean or of the day-ago value: around the one `x` is near. It judges
                // once there is one (learnt from the second day on, as the others).
                let record = (self.record > 0.0).then(|| {
                    let room = spec.sensitivity * SURPRISE_RECORD_PER_SENSITIVITY * self.record;
                    let center = match yesterday {
                        Some(y) if (x - y).abs() <= room && (x - y).abs() < from_mean => y,
                        _ => expected,
                    };
                    around(center, room)
                });
                // Each judgment's interval of values it takes as normal.
                let intervals = [
                    self.mean.room(t, sigmas).map(|room| around(expected, room)),
                    self.forecast
                        .room(t, sigmas)
                        .zip(forecast)
                        .map(|(room, f)| around(f, room)),
                    self.slow
                        .room(t, sigmas)
                        .zip(slow_forecast)
                        .map(|(room, f)| around(f, room)),
                    record,
                ];
                let mut judged = intervals.iter().flatten();
                let first = *judged.next()?;
                let all = judged.fold(first, |a, b| Band {
                    center: a.center,
                    lower: a.lower.max(b.lower),
                    upper: a.upper.min(b.upper),
                });
                Some(if all.lower <= all.upper {
                    Band {
                        center: all.center.clamp(all.lower, all.upper),
                        ..all
                    }
                } else {
                    // No value is normal to all: `x` is outside one of them (it would
                    // be inside their intersection otherwise); that one says so.
                    intervals
                        .iter()
                        .flatten()
                        .find(|b| b.excludes(x))
                        .copied()
                        .unwrap_or(all)
                })
            })
            .flatten()
            .filter(|b| b.lower.is_finite() && b.upper.is_finite());
        let dt = t.saturating_sub(last).max(0) as f64;
        let learning = age >= SURPRISE_WARMUP_MS;
        self.mean.learn(from_mean, t, dt, learning);
        self.forecast.learn(from_forecast, t, dt, learning);
        self.slow.learn(from_slow, t, dt, learning);
        if learning && nearest.is_finite() {
            self.record = decay_max(self.record, nearest, dt);
        }
        // The forecasts learn the value. A value less than a day after this slot's
        // previous one moves its seasons in proportion (see `FORECAST_SEASON_GAIN`).
        let (previous_ms, _) = day.last[now];
        let gain = if previous_ms == i64::MIN {
            FORECAST_SEASON_GAIN
        } else {
            FORECAST_SEASON_GAIN * (t.saturating_sub(previous_ms) as f64 / DAY_MS as f64).min(1.0)
        };
        smooth(
            &mut self.forecast_level,
            &mut day.season[now],
            x,
            dt,
            FORECAST_LEVEL_MS,
            gain,
        );
        smooth(
            &mut self.slow_level,
            &mut day.slow_season[now],
            x,
            dt,
            SLOW_FORECAST_LEVEL_MS,
            gain,
        );
        self.seen = Some((first, t.max(last)));
        self.samples += 1;
        day.last[now] = (t, x);
        self.last_band = band;
        band
    }
}

/// Scale that turns a median absolute deviation into a σ estimate for normal data.
const MAD_TO_SIGMA: f64 = 1.4826;

/// Scale that turns a mean absolute deviation into a σ estimate for normal data (√(π/2)).
const MEAN_DEVIATION_TO_SIGMA: f64 = 1.253_314_137_315_500_3;

/// The mean of absolute deviations (ascending): a MAD band's spread when its MAD is
/// zero. On quantised data (error counts, replica counts, percentages rounded by
/// the exporter) more than half of a window is often one value, so the MAD is 0 and a
/// band of any sensitivity has zero width: every change trips (a quarter of all MAD trips
/// on real cloud metrics were such). The mean deviation still sees the values that
/// differ, and scaled by √(π/2) it estimates σ as the scaled MAD does (the fallback of
/// Iglewicz and Hoaglin's modified z-score), so the sensitivity keeps its meaning. It is
/// zero only for a flat history, which then flags any change.
fn mean_deviation(deviations: &[f64]) -> f64 {
    if deviations.is_empty() {
        return 0.0;
    }
    deviations.iter().sum::<f64>() / deviations.len() as f64
}

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
        // Need the history's timing, or state of their own, which this function does
        // not have.
        BandAlgorithm::Seasonal | BandAlgorithm::Likelihood => return None,
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
            let mad = median_of(scratch);
            let spread = if mad > 0.0 {
                mad * MAD_TO_SIGMA
            } else {
                // Summed in ascending order, as a sorted history sums them, so that the
                // two agree bit for bit.
                scratch.sort_unstable_by(f64::total_cmp);
                mean_deviation(scratch) * MEAN_DEVIATION_TO_SIGMA
            };
            (median, spread)
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
    use crate::ingest::Sample;
    use crate::labels::Labels;
    use crate::window::{SelectorWindows, SeriesId, WindowSpec};

    fn spec(algorithm: BandAlgorithm) -> BandSpec {
        BandSpec {
            algorithm,
            sensitivity: 3.0,
            min_samples: 5,
        }
    }

    /// The default detector, as `detection: {}` compiles.
    fn likelihood() -> BandSpec {
        BandSpec {
            min_samples: 10,
            ..spec(BandAlgorithm::Likelihood)
        }
    }

    /// A surprise that has been `surprise` on every value, learnt since `since` with
    /// no spread: the next value may carry `surprise` (unless a peak says more).
    fn steady<const N: usize>(surprise: f64, since: i64) -> Usual<N> {
        Usual {
            recent: [surprise; N],
            filled: N,
            next: 0,
            level: surprise,
            spread_sq: 0.0,
            weight: 100.0,
            since: Some(since),
            peak: 0.0,
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

    /// One series' windows, kept for 10 minutes (for a longer reader sharing them, say):
    /// the histories below are shorter.
    fn one_series_windows() -> (SelectorWindows, SeriesId) {
        let mut windows = SelectorWindows::new(WindowSpec {
            retention_ms: 600_000,
            idle_ms: 3_600_000,
            series_limit: 1,
            reclaim_ms: i64::MAX,
            label_bytes_limit: usize::MAX,
        });
        let labels = Labels::from_pairs([("__name__", "m")]);
        let id = windows.get_or_insert(1, labels.as_canonical()).unwrap();
        (windows, id)
    }

    /// Inserts the sample at `t` as the evaluator does, after the running history was
    /// advanced, and recounts the history `[from_ms, t)` it is judged against.
    fn insert_and_recount(
        windows: &mut SelectorWindows,
        id: SeriesId,
        t: i64,
        value: f64,
        from_ms: i64,
    ) -> Vec<f64> {
        windows.insert(
            id,
            Sample {
                timestamp_ms: t,
                value,
            },
            t,
        );
        windows
            .get(id)
            .unwrap()
            .samples_in(from_ms, t)
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .collect()
    }

    /// Slides moments through a window as the evaluator does (advanced before each
    /// insert) and checks every band against a full recount of the same history.
    #[test]
    fn running_moments_give_the_recounted_band_as_the_history_slides() {
        let spec = BandSpec {
            algorithm: BandAlgorithm::Zscore,
            sensitivity: 3.0,
            min_samples: 3,
        };
        let (mut windows, id) = one_series_windows();
        let history_ms = 240_000;
        let mut moments = Moments::default();
        let mut t = 1_700_000_000_000_i64;
        let mut checked = 0;
        for i in 0..3_000u64 {
            // Scrapes 15 s apart, some late, a gap of 10 minutes, NaNs and a stale marker,
            // a level shift to a flat run (not at the sums' shift) and large values.
            t += match i {
                1_000 => 600_000,
                _ if i % 7 == 0 => 29_000,
                _ => 15_000,
            };
            let value = match i {
                _ if i % 97 == 0 => f64::NAN,
                _ if i % 331 == 0 => f64::from_bits(crate::ingest::STALE_NAN_BITS),
                1_500..=1_800 => 0.1,
                1_801..=2_200 => 1e12 + (i % 5) as f64,
                _ => (i % 13) as f64 * 1.5 - 4.0,
            };
            let from_ms = t - history_ms;
            moments.advance(windows.get(id).unwrap(), from_ms, t);
            let history = insert_and_recount(&mut windows, id, t, value, from_ms);
            let recounted = band(&history, &spec, &mut Vec::new());
            assert!(moments.covers(from_ms, t));
            let running = moments.band(&spec);
            match (recounted, running) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    let scale = a.center.abs().max(a.upper - a.center).max(1.0);
                    for (x, y) in [(a.center, b.center), (a.lower, b.lower), (a.upper, b.upper)] {
                        assert!((x - y).abs() <= 1e-9 * scale, "step {i}: {a:?} vs {b:?}");
                    }
                    // The flat run flags no repeat of its value, and any real change.
                    if (1_520..=1_800).contains(&i) {
                        assert!(!b.excludes(0.1) && b.excludes(0.1000001), "step {i}: {b:?}");
                    }
                    checked += 1;
                }
                other => panic!("step {i}: {other:?}"),
            }
        }
        assert!(checked > 2_500, "{checked}");
    }

    /// As above for a MAD band's sorted history, which must equal the recount exactly,
    /// ties, ±0 and runs of equal values included.
    #[test]
    fn a_sorted_history_gives_the_recounted_mad_band_exactly() {
        let spec = BandSpec {
            algorithm: BandAlgorithm::Mad,
            sensitivity: 2.5,
            min_samples: 2,
        };
        let (mut windows, id) = one_series_windows();
        let mut history = SortedHistory::default();
        let mut t = 0_i64;
        let mut checked = 0;
        for i in 0..4_000u64 {
            t += match i {
                2_000 => 900_000,
                _ if i % 5 == 0 => 31_000,
                _ => 15_000,
            };
            let value = match i {
                _ if i % 89 == 0 => f64::NAN,
                _ if i % 53 == 0 => -0.0,
                _ if i % 61 == 0 => 0.0,
                2_500..=2_700 => 7.0,
                _ => ((i * 7919) % 23) as f64 * 0.5 - 3.0,
            };
            // A history of 4, 3 or 2 minutes: the reader's, in a window kept for 10.
            let from_ms = t - [240_000, 180_000, 120_000][(i / 700 % 3) as usize];
            history.advance(windows.get(id).unwrap(), from_ms, t);
            let recount = insert_and_recount(&mut windows, id, t, value, from_ms);
            assert!(history.covers(from_ms, t));
            let want = band(&recount, &spec, &mut Vec::new());
            assert_eq!(history.band(&spec), want, "step {i}: {recount:?}");
            checked += usize::from(want.is_some());
        }
        assert!(checked > 3_500, "{checked}");
    }

    #[test]
    fn the_kth_of_two_runs_is_the_kth_of_their_merge() {
        let a = [0.5, 1.0, 1.0, 4.0];
        let b = [0.0, 1.0, 2.0, 3.0, 9.0];
        for (a_len, b_len) in [(4, 5), (0, 5), (4, 0), (1, 1), (2, 5)] {
            let mut want: Vec<f64> = a[..a_len].iter().chain(&b[..b_len]).copied().collect();
            want.sort_by(f64::total_cmp);
            for (k, w) in want.iter().enumerate() {
                assert_eq!(kth_of_two(|i| a[i], a_len, |i| b[i], b_len, k), *w);
            }
        }
    }

    #[test]
    fn a_mad_band_over_quantised_values_has_a_width_that_follows_the_sensitivity() {
        // 60% at 10, the rest one step either side: the MAD is 0. The band must still
        // be wide enough that a sensitivity of 3 takes a one-step change as normal, and
        // narrow enough to flag a jump of a few steps.
        let history: Vec<f64> = (0..100)
            .map(|i| match i % 10 {
                0 | 1 => 9.0,
                2 | 3 => 11.0,
                _ => 10.0,
            })
            .collect();
        let mad = |k: f64| {
            let spec = BandSpec {
                sensitivity: k,
                ..spec(BandAlgorithm::Mad)
            };
            band(&history, &spec, &mut Vec::new()).unwrap()
        };
        let b = mad(3.0);
        assert_eq!(b.center, 10.0);
        assert!(!b.excludes(11.0) && !b.excludes(9.0), "{b:?}");
        assert!(b.excludes(12.0) && b.excludes(8.0), "{b:?}");
        // Mean deviation 0.4, × √(π/2) ≈ 0.50 as σ: twice the sensitivity, twice the width.
        let (narrow, wide) = (mad(1.0), mad(2.0));
        assert!(narrow.upper > 10.4 && narrow.upper < 10.6, "{narrow:?}");
        assert!(((wide.upper - 10.0) / (narrow.upper - 10.0) - 2.0).abs() < 1e-12);
        // The running sorted history gives the same band.
        let mut values = history.clone();
        values.sort_by(f64::total_cmp);
        let sorted = SortedHistory {
            values,
            ..SortedHistory::default()
        };
        assert_eq!(sorted.band(&spec(BandAlgorithm::Mad)), Some(b));
    }

    /// Pseudo-noise in [-1, 1] (SplitMix64 of `i`).
    fn noise(i: u64) -> f64 {
        let mut x = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }

    /// Replays `value(i)` every 5 minutes through a likelihood band over a 1h window,
    /// as the evaluator does; returns each sample's band.
    fn likelihood_bands(samples: u64, value: impl Fn(u64) -> f64) -> Vec<(f64, Option<Band>)> {
        let spec = likelihood();
        let mut windows = SelectorWindows::new(WindowSpec {
            retention_ms: 3_600_000,
            idle_ms: 3_600_000,
            series_limit: 1,
            reclaim_ms: i64::MAX,
            label_bytes_limit: usize::MAX,
        });
        let id = windows
            .get_or_insert(1, Labels::from_pairs([("__name__", "m")]).as_canonical())
            .unwrap();
        let mut running = RunningBands::for_spec(Some(&spec));
        let mut out = Vec::new();
        for i in 0..samples {
            let t = 1_700_000_000_000 + i as i64 * 300_000;
            let from = t - 3_600_000;
            if let Some(w) = windows.get(id) {
                running.advance(0, w, from, t);
            }
            let sample = Sample {
                timestamp_ms: t,
                value: value(i),
            };
            windows.insert(id, sample, t);
            let band = running.judge(0, &spec, windows.get(id).unwrap(), from, sample);
            out.push((sample.value, band.expect("a likelihood band")));
        }
        out
    }

    #[test]
    fn a_likelihood_band_knows_the_daily_pattern_and_flags_what_breaks_it() {
        const DAY: u64 = 288;
        let daily = |i: u64| 100.0 + 50.0 * (std::f64::consts::TAU * i as f64 / DAY as f64).sin();
        // An hour at +15 on the fourth day.
        let spike = 3 * DAY + 100;
        let bands = likelihood_bands(4 * DAY, |i| {
            let bump = if (spike..spike + 12).contains(&i) {
                15.0
            } else {
                0.0
            };
            daily(i) + noise(i) + bump
        });
        // No verdict in the first two days: the daily pattern, then the usual surprise,
        // are not known yet.
        assert!(bands[..2 * DAY as usize].iter().all(|(_, b)| b.is_none()));
        assert!(bands[2 * DAY as usize].1.is_some());
        let flagged: Vec<usize> = bands
            .iter()
            .enumerate()
            .filter(|(_, (v, b))| b.is_some_and(|b| b.excludes(*v)))
            .map(|(i, _)| i)
            .collect();
        // The daily swing (±50, 1.1 per sample at its steepest) is no surprise; +15
        // inside the day's range, unlike the same time yesterday, is, within two
        // samples (the mean surprise of the last ten must add up).
        let first = *flagged.first().expect("the bump flagged");
        assert!((spike..spike + 2).contains(&(first as u64)), "{flagged:?}");
    }

    /// Each surprise trips on its own, and the band is the intersection of what each
    /// takes as normal: a value near the window's mean and the slow forecast but far
    /// from the forecast is anomalous (and outside the band it is given), as is one near
    /// both forecasts but far from the mean; a value all expect is not.
    #[test]
    fn any_surprise_trips_and_the_band_is_what_all_take_as_normal() {
        let spec = likelihood();
        let t = 1_700_000_000_000_i64;
        // Each surprise has been 1 on every value lately, and always: with no spread,
        // the room for the next value's surprise is 1.
        let since = t - 3 * DAY_MS;
        let judge = |forecast: f64, slow: f64, x: f64| {
            let mut day = Day::empty();
            day.last[slot(t - DAY_MS)] = (t - DAY_MS, 50.0);
            day.season[slot(t)] = 0.0;
            day.slow_season[slot(t)] = 0.0;
            Surprise {
                mean: steady(1.0, since),
                forecast: steady(1.0, since),
                slow: steady(1.0, since),
                // The largest single surprise lately: 2, so up to 3 from the mean or
                // yesterday's value is no record.
                record: 2.0,
                seen: Some((t - 4 * DAY_MS, t - 300_000)),
                samples: 1_000,
                forecast_level: forecast,
                slow_level: slow,
                day: Some(day),
                last_band: None,
            }
            .judge(
                &spec,
                50.0,
                12,
                Sample {
                    timestamp_ms: t,
                    value: x,
                },
            )
            .expect("a band")
        };
        // Near the mean, yesterday and the slow forecast, 50 away from the forecast.
        let b = judge(100.0, 50.0, 50.0);
        assert!(b.excludes(50.0), "{b:?}");
        assert_eq!((b.lower, b.upper), (99.0, 101.0));
        // At both forecasts, 50 away from the mean (and yesterday).
        let b = judge(100.0, 100.0, 100.0);
        assert!(b.excludes(100.0), "{b:?}");
        // Expected by all: within each one's room, the band is their overlap.
        let b = judge(50.5, 50.0, 50.2);
        assert!(!b.excludes(50.2), "{b:?}");
        assert_eq!((b.lower, b.upper), (49.5, 51.0));
        assert!(b.excludes(49.4) && b.excludes(51.1));
    }

    /// A run must pass half the largest run of the last month, however rare the
    /// usual spread makes it; that largest run fades over a month.
    #[test]
    fn a_run_must_pass_half_the_largest_of_the_last_month() {
        let t = 1_700_000_000_000_i64;
        let mut usual = steady::<FAST>(1.0, t - 3 * DAY_MS);
        // No spread: the next value may carry a surprise of 1.
        assert_eq!(usual.room(t, 5.0), Some(1.0));
        // A run of 10 last week: this run's mean may reach 5, so the value 41.
        usual.peak = 10.0;
        assert_eq!(usual.room(t, 5.0), Some(41.0));
        // A month on, the peak has decayed by e.
        usual.learn(1.0, t, SURPRISE_PEAK_MEMORY_MS as f64, true);
        assert!(
            (usual.peak - 10.0 / std::f64::consts::E).abs() < 1e-9,
            "{}",
            usual.peak
        );
    }

    /// A road doing 65 with quiet and noisy hours: the run of ten dilutes one reading
    /// of 23 below what the noisy hours taught the usual spread, but the reading is far
    /// beyond anything of the last month, and the record flags it.
    #[test]
    fn a_value_far_beyond_the_record_trips_though_its_run_dilutes_it() {
        const DAY: u64 = 288;
        let drop = 3 * DAY + 100;
        let value = |i: u64| {
            let noisy = (i / 12).is_multiple_of(2);
            if i == drop {
                23.0
            } else {
                65.0 + noise(i) * if noisy { 6.0 } else { 1.0 }
            }
        };
        let spec = likelihood();
        let mut surprise = Surprise::default();
        let mut window = std::collections::VecDeque::new();
        for i in 0..=drop {
            let t = 1_700_000_000_000 + i as i64 * 300_000;
            let mean = window.iter().sum::<f64>() / window.len().max(1) as f64;
            if i == drop {
                for (name, room) in [
                    ("mean", surprise.mean.room(t, 5.0)),
                    ("forecast", surprise.forecast.room(t, 5.0)),
                    ("slow", surprise.slow.room(t, 5.0)),
                ] {
                    let room = room.unwrap();
                    assert!(
                        room > 42.0,
                        "the {name} run alone would take it: room {room}"
                    );
                }
                assert!(surprise.record < 15.0, "record {}", surprise.record);
            }
            let sample = Sample {
                timestamp_ms: t,
                value: value(i),
            };
            let band = surprise.judge(&spec, mean, window.len(), sample);
            if i == drop {
                let band = band.expect("a band");
                assert!(band.excludes(23.0), "{band:?}");
            }
            window.push_back(value(i));
            if window.len() > 12 {
                window.pop_front();
            }
        }
    }

    /// The slow surprise judges against its own forecast: a value every fast surprise
    /// expects, but far from where the level has been over the day, is anomalous once
    /// the slow run has added up.
    #[test]
    fn the_slow_surprise_flags_a_level_the_day_has_not_had() {
        let spec = likelihood();
        let t = 1_700_000_000_000_i64;

        let mut day = Day::empty();
        day.season[slot(t)] = 0.0;
        day.slow_season[slot(t)] = 0.0;
        let surprise = Surprise {
            // The fast surprises expect anything within 10 of 130.
            mean: steady(10.0, t - 3 * DAY_MS),
            forecast: steady(10.0, t - 3 * DAY_MS),
            slow: steady(1.0, t - 3 * DAY_MS),
            seen: Some((t - 4 * DAY_MS, t - 300_000)),
            samples: 1_000,
            forecast_level: 130.0,
            slow_level: 125.0,
            day: Some(day),
            ..Surprise::default()
        };
        let judge = |x: f64| {
            let sample = Sample {
                timestamp_ms: t,
                value: x,
            };
            surprise
                .clone()
                .judge(&spec, 130.0, 12, sample)
                .expect("a band")
        };
        // 5 from the slow forecast, whose run leaves room for 1.
        let b = judge(130.0);
        assert!(b.excludes(130.0), "{b:?}");
        assert_eq!((b.lower, b.upper), (124.0, 126.0));
        let b = judge(125.5);
        assert!(!b.excludes(125.5), "{b:?}");
        assert_eq!((b.lower, b.upper), (124.0, 126.0));
    }

    /// The forecast's season weighs days, not samples: an unusual hour moves the
    /// season of a series scraped every minute as much as that of one scraped every 5
    /// minutes (it visits each slot of the day five times as often), where a gain per
    /// visit would take it in three times as fast (1-minute effect 2.31 against 0.56 in
    /// the middle of the hour).
    #[test]
    fn the_forecast_season_weighs_days_whatever_the_scrape_interval() {
        let spec = likelihood();
        let t0 = 1_700_000_100_000_i64 - 1_700_000_100_000_i64 % DAY_MS;
        let minute = 60_000;
        // A daily swing, and (when `bump`) on the fourth day an hour 5 higher from 10:00.
        let value = |t: i64, bump: bool| {
            let of_day = (t - t0).rem_euclid(DAY_MS);
            let bumped = bump && t - t0 >= 3 * DAY_MS && (36_000_000..39_600_000).contains(&of_day);
            10.0 * (std::f64::consts::TAU * of_day as f64 / DAY_MS as f64).sin()
                + if bumped { 5.0 } else { 0.0 }
        };
        let learn = |step: i64, bump: bool| {
            let mut surprise = Surprise::default();
            let mut t = t0;
            while t < t0 + 4 * DAY_MS {
                let sample = Sample {
                    timestamp_ms: t,
                    value: value(t, bump),
                };
                surprise.judge(&spec, sample.value, 1, sample);
                t += step;
            }
            surprise.day.unwrap().season
        };
        let effect = |step: i64, at: usize| learn(step, true)[at] - learn(step, false)[at];
        for at in [120, 126, 131].map(|s| slot(t0 + s * 5 * minute)) {
            let (every_minute, every_five) = (effect(minute, at), effect(5 * minute, at));
            assert!(every_five > 0.3, "slot {at}: {every_five}");
            assert!(
                (every_minute - every_five).abs() < 0.2,
                "slot {at}: moved {every_minute} every minute, {every_five} every 5 minutes"
            );
        }
    }

    /// A fresh series' forecast starts at its first value (a level starting at 0 would
    /// climb for hours and leave its offset in the season of the first day).
    #[test]
    fn the_forecast_starts_at_the_first_value() {
        let spec = likelihood();
        let mut surprise = Surprise::default();
        let t = 1_700_000_000_000_i64;
        surprise.judge(
            &spec,
            100.0,
            0,
            Sample {
                timestamp_ms: t,
                value: 100.0,
            },
        );
        assert_eq!(surprise.forecast_level, 100.0);
        assert_eq!(surprise.day.as_ref().unwrap().season[slot(t)], 0.0);
    }

    /// The learnt state of every surprise, the record and both forecasts is saved and
    /// restored exactly; a file of the three-surprise version restores its mean and
    /// forecast surprises (the slow one learns for a day), and one of the
    /// single-surprise version its day's values.
    #[test]
    fn a_surprise_saves_and_restores_and_reads_the_older_formats() {
        let spec = likelihood();
        let mut surprise = Surprise::default();
        let t0 = 1_700_000_000_000_i64;
        let at = |i: i64| t0 + i * 300_000;
        let value = |i: i64| 50.0 + 10.0 * (i as f64 / 40.0).sin() + noise(i as u64);
        for i in 0..700 {
            surprise.judge(
                &spec,
                50.0,
                12,
                Sample {
                    timestamp_ms: at(i),
                    value: value(i),
                },
            );
        }
        let saved = surprise.save().unwrap();
        let json = serde_json::to_value(&saved).unwrap();
        let added = ["slow", "record", "slowLevel", "slowSeason"];
        for key in ["others", "forecastLevel", "season"].iter().chain(&added) {
            assert!(json.get(*key).is_some(), "{key} missing from {json}");
        }
        let mut restored = Surprise::load(&saved).unwrap();
        assert_eq!(restored.save().unwrap(), saved);
        let next = Sample {
            timestamp_ms: at(700),
            value: value(700),
        };
        let want = surprise.clone().judge(&spec, 50.0, 12, next);
        assert!(want.is_some());
        assert_eq!(restored.judge(&spec, 50.0, 12, next), want);

        // The three-surprise version: the nearest-value surprise at the top level, the
        // others without a peak, no slow surprise, record or slow forecast.
        let mut old = json.clone();
        let fields = old.as_object_mut().unwrap();
        for key in added {
            fields.remove(key);
        }
        for usual in fields["others"].as_array_mut().unwrap() {
            usual.as_object_mut().unwrap().remove("peak");
        }
        let nearest = serde_json::json!({
            "recent": vec![0; FAST], "filled": FAST, "next": 0, "level": 0, "spreadSq": 0,
            "weight": 0, "since": t0,
        });
        fields.extend(nearest.as_object().unwrap().clone());
        let old: SavedSurprise = serde_json::from_value(old).unwrap();
        let mut upgraded = Surprise::load(&old).unwrap();
        assert_eq!(upgraded.mean.level, surprise.mean.level);
        assert_eq!(upgraded.forecast.spread_sq, surprise.forecast.spread_sq);
        assert_eq!(upgraded.forecast_level, surprise.forecast_level);
        assert_eq!((upgraded.record, upgraded.slow.since), (0.0, None));
        let band = upgraded
            .judge(&spec, 50.0, 12, next)
            .expect("the mean and forecast surprises judge");
        assert!(band.upper - band.lower > 0.0, "{band:?}");
        assert_eq!(
            upgraded.slow.since,
            Some(at(700)),
            "the slow one learns from now"
        );
        assert!(
            upgraded
                .slow
                .room(at(700) + SURPRISE_WARMUP_MS - 1, 5.0)
                .is_none()
        );

        // The single-surprise version: only the day's values are left to restore.
        let mut oldest = serde_json::to_value(&old).unwrap();
        let fields = oldest.as_object_mut().unwrap();
        for key in ["others", "forecastLevel", "season"] {
            fields.remove(key);
        }
        let oldest: SavedSurprise = serde_json::from_value(oldest).unwrap();
        let mut upgraded = Surprise::load(&oldest).unwrap();
        assert_eq!(
            upgraded.day.as_ref().unwrap().last,
            surprise.day.as_ref().unwrap().last
        );
        assert_eq!(
            upgraded.judge(&spec, 50.0, 12, next),
            None,
            "a day of learning first"
        );

        // A tampered file starts afresh.
        let mut bad = saved.clone();
        bad.others.pop();
        assert!(Surprise::load(&bad).is_none());
    }

    #[test]
    fn a_likelihood_band_flags_a_level_shift_at_once() {
        const DAY: u64 = 288;
        let shift = 2 * DAY + 50;
        let bands = likelihood_bands(3 * DAY, |i| {
            let level = if i >= shift { 130.0 } else { 100.0 };
            level + 3.0 * noise(i)
        });
        let flagged: Vec<usize> = bands
            .iter()
            .enumerate()
            .filter(|(_, (v, b))| b.is_some_and(|b| b.excludes(*v)))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(flagged.first(), Some(&(shift as usize)), "{flagged:?}");
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
