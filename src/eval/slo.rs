//! The SLO detector: error-budget accounting and multi-window, multi-burn-rate alerting
//! over counter increases, in event time.
//!
//! Counter samples become increases per series (a drop in value is a counter reset: the
//! new value is the increase since the reset, as in PromQL's `increase`), and increases
//! are kept as per-minute rollups covering the SLO period, so memory is proportional to
//! period ÷ resolution per SLO, never to samples. From the rollups: the burn rate over any
//! window (error ratio ÷ error budget), the event-weighted budget remaining over the
//! period, and the time to exhaustion. No traffic means a burn rate of 0, never NaN.
//!
//! Pure: nothing here reads a clock or does I/O; the caller feeds samples and asks for the
//! state at an event time. What must outlive a restart is exported as an
//! [`SloDetectorState`] and imported into the detector of the (possibly edited) rule.

use serde::{Deserialize, Serialize};

use crate::state::f64_bits;

use super::condition::Transition;
use super::verdict::Change;

const MINUTE_MS: i64 = 60_000;

/// The smallest rollup ring allocated: an hour of minutes.
const RING_MIN: i64 = 60;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// One tier of the multi-window table: fires when the burn rate over both windows exceeds
/// `factor`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BurnTier {
    pub long_ms: i64,
    pub short_ms: i64,
    pub factor: f64,
}

/// The default table, from the Google SRE workbook: for a 30-day period, 2% of the budget
/// in 1h (14.4×), 5% in 6h (6×), 10% in 1d (3×), 10% in 3d (1×). The windows stay; the
/// factors follow the period (budget fraction × period ÷ long window), so 28 days gives
/// 13.44 / 5.6 / 2.8 / 0.933.
pub fn default_tiers(period_ms: i64) -> Vec<BurnTier> {
    [
        (HOUR_MS, 5 * MINUTE_MS, 0.02),
        (6 * HOUR_MS, 30 * MINUTE_MS, 0.05),
        (DAY_MS, 2 * HOUR_MS, 0.10),
        (3 * DAY_MS, 6 * HOUR_MS, 0.10),
    ]
    .into_iter()
    .map(|(long_ms, short_ms, budget_fraction)| BurnTier {
        long_ms,
        short_ms,
        factor: budget_fraction * period_ms as f64 / long_ms as f64,
    })
    .collect()
}

/// What the SLI counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SliCounter {
    /// Bad events (ratio SLI: the `errors` selector).
    Bad,
    /// Good events (latency SLI: buckets at or under the threshold).
    Good,
    /// All events.
    Total,
}

impl SliCounter {
    const ALL: [Self; 3] = [Self::Bad, Self::Good, Self::Total];
}

/// Whether the SLI is given by bad or by good events next to the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SliShape {
    /// errors / total.
    Ratio,
    /// (total - good) / total.
    Latency,
}

/// A compiled SLO.
#[derive(Debug, Clone, PartialEq)]
pub struct SloSpec {
    /// The objective as a ratio, e.g. 0.999.
    pub target: f64,
    pub period_ms: i64,
    pub tiers: Vec<BurnTier>,
    /// Trip when less than this fraction of the budget remains.
    pub budget_threshold: f64,
    pub shape: SliShape,
}

/// Event counts of one rollup bucket.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Start of the minute, ms; `i64::MIN` while unused.
    start_ms: i64,
    /// Bad events (ratio) or good events (latency).
    counted: f64,
    total: f64,
}

/// Per-minute counts over the period, in a ring indexed by minute, with running totals of
/// the whole period so that the budget costs O(1) to read: a minute leaves the totals
/// once, when the newest minute moves a period past it.
///
/// The ring grows with the data, not with the period: it holds at least the minutes from
/// the first counted to the newest (at most the period), doubling as that span grows. A
/// 30-day SLO's 43 200 buckets (about 1 MiB) were allocated before its first sample, so a
/// thousand SLO resources needed a gigabyte to start; now a young SLO holds what it has
/// counted.
#[derive(Debug)]
struct Rollup {
    /// The ring: its length divides nothing, a minute's slot is `minute mod len`, and all
    /// minutes in use lie within `len` consecutive minutes (see [`Rollup::reserve_span`]).
    buckets: Vec<Bucket>,
    /// The period, in minutes.
    period: i64,
    /// Sums over the minutes (latest − len, latest].
    counted: f64,
    total: f64,
    /// The newest minute counted; `i64::MIN` before the first.
    latest_minute: i64,
    /// No minute before this one holds counts (`i64::MAX` before the first), so window
    /// sums start there: a young SLO's hour-long windows cost what it has counted so far.
    first_minute: i64,
}

impl Rollup {
    fn new(period_ms: i64) -> Self {
        Self {
            buckets: Vec::new(),
            period: (period_ms / MINUTE_MS).max(1),
            counted: 0.0,
            total: 0.0,
            latest_minute: i64::MIN,
            first_minute: i64::MAX,
        }
    }

    /// The period in minutes.
    fn len(&self) -> i64 {
        self.period
    }

    /// A minute's slot in the ring; the ring must not be empty.
    fn index(&self, minute: i64) -> usize {
        minute.rem_euclid(self.buckets.len().max(1) as i64) as usize
    }

    /// Grows the ring to hold `span` consecutive minutes (at most the period), moving the
    /// buckets in use to their slots in the larger ring.
    fn reserve_span(&mut self, span: i64) {
        let need = span.clamp(1, self.period);
        let ring = self.buckets.len() as i64;
        if need <= ring {
            return;
        }
        let size = (ring * 2).max(need).max(RING_MIN).min(self.period) as usize;
        let old = std::mem::replace(
            &mut self.buckets,
            vec![
                Bucket {
                    start_ms: i64::MIN,
                    ..Bucket::default()
                };
                size
            ],
        );
        for bucket in old.into_iter().filter(|b| b.start_ms != i64::MIN) {
            let index = self.index(bucket.start_ms.div_euclid(MINUTE_MS));
            self.buckets[index] = bucket;
        }
    }

    /// Moves the newest minute to `minute`, taking the minutes that leave the period out
    /// of the running totals.
    fn advance(&mut self, minute: i64) {
        if self.latest_minute == i64::MIN {
            self.latest_minute = minute;
            return;
        }
        if minute <= self.latest_minute {
            return;
        }
        let len = self.len();
        if minute - self.latest_minute >= len {
            // A period or more without counts: every minute left, and the ring's memory
            // with them.
            self.buckets = Vec::new();
            self.counted = 0.0;
            self.total = 0.0;
            self.latest_minute = minute;
            self.first_minute = i64::MAX;
            return;
        }
        if self.buckets.is_empty() {
            self.latest_minute = minute;
            return;
        }
        for leaving in self.latest_minute - len + 1..=minute - len {
            let index = self.index(leaving);
            let bucket = &mut self.buckets[index];
            if bucket.start_ms == leaving * MINUTE_MS {
                self.counted -= bucket.counted;
                self.total -= bucket.total;
                bucket.start_ms = i64::MIN;
            }
        }
        self.latest_minute = minute;
    }

    /// Adds counts at `at_ms`; counts older than the period are ignored.
    fn add(&mut self, at_ms: i64, counted: f64, total: f64) {
        let minute = at_ms.div_euclid(MINUTE_MS);
        self.advance(minute);
        if minute <= self.latest_minute - self.len() {
            return;
        }
        // Every minute in use, this one included, must have a slot of its own.
        let first = self.first_minute.min(minute);
        self.reserve_span(
            self.latest_minute
                .max(minute)
                .saturating_sub(first)
                .saturating_add(1),
        );
        let index = self.index(minute);
        let bucket = &mut self.buckets[index];
        if bucket.start_ms != minute * MINUTE_MS {
            // Whatever the slot held lies a period back: it already left the totals.
            *bucket = Bucket {
                start_ms: minute * MINUTE_MS,
                ..Bucket::default()
            };
        }
        bucket.counted += counted;
        bucket.total += total;
        self.counted += counted;
        self.total += total;
        self.first_minute = self.first_minute.min(minute);
    }

    /// Sums of (counted, total) over the window (now − window, now], to the minute: a
    /// bucket counts when its minute starts inside the window. Costs O(window ÷ 1 min),
    /// and O(1) for the whole period.
    fn sum(&self, now_ms: i64, window_ms: i64) -> (f64, f64) {
        let now_minute = now_ms.div_euclid(MINUTE_MS);
        let minutes = (window_ms / MINUTE_MS).clamp(1, self.len());
        if minutes == self.len() && now_minute == self.latest_minute {
            // Subtraction may leave a rounding residue below zero.
            return (self.counted.max(0.0), self.total.max(0.0));
        }
        // The window's minutes lie in at most two runs of the ring: walk them in order
        // rather than dividing for each minute's index.
        // Minutes before the first count hold nothing: skipping them changes no sum.
        let first = (now_minute - minutes + 1).max(self.first_minute);
        // Minutes after the newest counted hold nothing either; the rest lie within the
        // ring's span.
        let last = now_minute.min(self.latest_minute);
        if first > last || self.buckets.is_empty() {
            return (0.0, 0.0);
        }
        let minutes = last - first + 1;
        let start = self.index(first);
        let end = start + minutes as usize;
        let (head, tail) = if end <= self.buckets.len() {
            (&self.buckets[start..end], &self.buckets[..0])
        } else {
            (
                &self.buckets[start..],
                &self.buckets[..end - self.buckets.len()],
            )
        };
        let (mut counted, mut total) = (0.0, 0.0);
        for (bucket, minute) in head.iter().chain(tail).zip(first..=last) {
            if bucket.start_ms == minute * MINUTE_MS {
                counted += bucket.counted;
                total += bucket.total;
            }
        }
        (counted, total)
    }

    /// The counts as saved: the used buckets, oldest first.
    fn export(&self) -> Vec<StoredBucket> {
        if self.latest_minute == i64::MIN || self.buckets.is_empty() {
            return Vec::new();
        }
        (self.latest_minute - self.len() + 1..=self.latest_minute)
            .filter_map(|minute| {
                let bucket = &self.buckets[self.index(minute)];
                (bucket.start_ms == minute * MINUTE_MS).then_some(StoredBucket(
                    minute,
                    bucket.counted,
                    bucket.total,
                ))
            })
            .collect()
    }

    /// A rollup over `period_ms` holding the saved buckets that fall in the period ending
    /// at `latest_minute`. The saved running totals are taken as they are when every bucket
    /// fits, so that the restored detector computes exactly what the saved one would;
    /// otherwise they are summed afresh from the buckets kept.
    fn import(
        period_ms: i64,
        latest_minute: Option<i64>,
        buckets: &[StoredBucket],
        totals: (f64, f64),
    ) -> Result<Self, SloImportError> {
        let mut rollup = Self::new(period_ms);
        let Some(latest) = latest_minute else {
            return Ok(rollup);
        };
        // Every minute of the period must have a representable start, as live ones do.
        let representable = |minute: i64| minute.checked_mul(MINUTE_MS).is_some();
        if !representable(latest) || !representable(latest.saturating_sub(rollup.len())) {
            return Err(SloImportError::Invalid(format!(
                "its rollups end at minute {latest}, outside any representable time"
            )));
        }
        rollup.latest_minute = latest;
        // Room for the saved minutes that fall in the period, before any is placed.
        if let Some(oldest) = buckets
            .iter()
            .map(|b| b.0)
            .filter(|&m| m > latest - rollup.len() && m <= latest)
            .min()
        {
            rollup.reserve_span(latest - oldest + 1);
        }
        let mut all_kept = true;
        let (mut counted, mut total) = (0.0, 0.0);
        for &StoredBucket(minute, c, t) in buckets {
            let usable = c.is_finite() && t.is_finite() && c >= 0.0 && t >= 0.0;
            if !usable || minute <= latest - rollup.len() || minute > latest {
                all_kept = false;
                continue;
            }
            let index = rollup.index(minute);
            let bucket = &mut rollup.buckets[index];
            if bucket.start_ms == minute * MINUTE_MS {
                // The same minute twice: not something export writes.
                all_kept = false;
                continue;
            }
            *bucket = Bucket {
                start_ms: minute * MINUTE_MS,
                counted: c,
                total: t,
            };
            counted += c;
            total += t;
            rollup.first_minute = rollup.first_minute.min(minute);
        }
        (rollup.counted, rollup.total) = if all_kept && totals.0.is_finite() && totals.1.is_finite()
        {
            totals
        } else {
            (counted, total)
        };
        Ok(rollup)
    }
}

/// One used rollup bucket as saved: `[minute, counted bits, total bits]`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StoredBucket(
    i64,
    #[serde(with = "f64_bits")] f64,
    #[serde(with = "f64_bits")] f64,
);

/// One counter series' last raw value as saved: `[counter, series id, value bits, time]`.
/// The time (absent from states saved before it was kept) is where an increase across
/// the restart starts.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StoredBaseline(
    SliCounter,
    u32,
    #[serde(with = "f64_bits")] f64,
    #[serde(default)] Option<i64>,
);

/// What of an [`SloDetector`] outlives a restart: the per-minute rollups with their running
/// totals, the per-series counter baselines, and whether the SLO was violated at the last
/// evaluation. Not the spec, which the rule's current version provides on import.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SloDetectorState {
    /// What the counts mean: bad events for a ratio SLI, good ones for a latency SLI.
    shape: SliShape,
    /// The period the rollups covered when saved.
    period_ms: i64,
    /// The newest minute counted; `None` before the first count.
    latest_minute: Option<i64>,
    /// Running totals over the period, bit-exact.
    #[serde(with = "f64_bits")]
    counted: f64,
    #[serde(with = "f64_bits")]
    total: f64,
    /// Used buckets, oldest first.
    buckets: Vec<StoredBucket>,
    /// Keyed by the series ids `observe` was given; [`SloDetector::import`] renumbers them.
    baselines: Vec<StoredBaseline>,
    /// The first counter sample's time: what the counts cover. Absent from states saved
    /// before it was kept; the oldest saved minute stands in then.
    #[serde(default)]
    since_ms: Option<i64>,
    /// Whether the SLO was violated at the last evaluation. While it stays violated, an
    /// imported detector announces no new `Tripped`; set this to `false` before importing
    /// if the verdicts it announced were not kept across the restart.
    pub tripped: bool,
}

/// Why saved SLO state cannot be imported into a rule's detector. The caller reports it
/// and starts the detector afresh.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SloImportError {
    #[error(
        "the SLI was {saved:?} when the state was saved and is {now:?} now: the saved counts \
         count other events"
    )]
    ShapeChanged { saved: SliShape, now: SliShape },
    #[error("the saved SLO state is invalid: {0}")]
    Invalid(String),
}

/// The burn rates and budget of an SLO at one event time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SloState {
    pub at_ms: i64,
    /// Per tier: (long-window burn rate, short-window burn rate, firing).
    pub tiers: Vec<TierState>,
    /// Fraction of the period's error budget left (negative once overspent).
    pub budget_remaining: f64,
    /// Days until the budget is gone at the first tier's long-window burn rate; `None`
    /// while nothing burns.
    pub time_to_exhaustion_days: Option<f64>,
    /// How much of the period the counts cover: from the first counter sample seen (or
    /// the oldest minute restored) to now, at most the period. A budget figure over less
    /// than the period is the budget as spent so far, not over the whole period.
    pub covered_ms: i64,
    /// Why the SLO is not judged although events arrive (a latency SLI whose `le`
    /// matches no bucket of the data); then it never trips and shows no budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_judged: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TierState {
    #[serde(flatten)]
    pub tier: BurnTier,
    pub long_burn_rate: f64,
    pub short_burn_rate: f64,
    pub firing: bool,
}

/// Error-budget state of one SLO, fed with the counter samples of its SLI.
#[derive(Debug)]
pub struct SloDetector {
    spec: SloSpec,
    rollup: Rollup,
    /// Last raw value of each counter series and its time, per SLI counter.
    last: [Vec<Option<(f64, i64)>>; 3],
    /// The first counter sample's time (`i64::MAX` before it): what the counts cover.
    since_ms: i64,
    tripped: bool,
}

impl SloDetector {
    pub fn new(spec: SloSpec) -> Self {
        let rollup = Rollup::new(spec.period_ms);
        Self {
            spec,
            rollup,
            last: [Vec::new(), Vec::new(), Vec::new()],
            since_ms: i64::MAX,
            tripped: false,
        }
    }

    /// Bytes of rollup held: proportional to the minutes counted so far, at most the
    /// period ÷ one minute.
    pub fn rollup_bytes(&self) -> usize {
        self.rollup.buckets.len() * std::mem::size_of::<Bucket>()
    }

    /// Feeds one counter sample of series `series` (an index stable per series, such as
    /// its window's `SeriesId`). Staleness markers and NaNs carry no count.
    pub fn observe(&mut self, counter: SliCounter, series: u32, at_ms: i64, value: f64) {
        if value.is_nan() {
            return;
        }
        self.since_ms = self.since_ms.min(at_ms);
        let lasts = &mut self.last[counter as usize];
        let index = series as usize;
        if index >= lasts.len() {
            lasts.resize(index + 1, None);
        }
        let previous = lasts[index].replace((value, at_ms));
        // The first sample of a series is its baseline: counting it would turn every
        // restart of Prophet or new series into a burst of events.
        let Some((previous, previous_ms)) = previous else {
            return;
        };
        // A baseline restored without a time (see `import`) spreads nothing.
        let previous_ms = if previous_ms == i64::MIN {
            at_ms
        } else {
            previous_ms
        };
        let increase = if value >= previous {
            value - previous
        } else {
            value
        };
        // An infinite counter has no increase to count: ∞ in a bucket would turn the
        // running totals into NaN once it leaves the period.
        if !increase.is_finite() || increase <= 0.0 {
            return;
        }
        let counted = match (counter, self.spec.shape) {
            (SliCounter::Total, _) => false,
            (SliCounter::Bad, SliShape::Ratio) | (SliCounter::Good, SliShape::Latency) => true,
            // The other counter kind does not belong to this shape of SLI.
            (SliCounter::Bad, SliShape::Latency) | (SliCounter::Good, SliShape::Ratio) => {
                return;
            }
        };
        self.count_between(previous_ms, at_ms, increase, counted);
    }

    /// Adds an increase that happened between two samples of a counter. Within a minute it
    /// lands in the newer sample's minute; across a gap (a scrape outage, a series that
    /// reports rarely) it is spread evenly over the gap's minutes, as a steady counter
    /// would have risen: all of it in the minute the series came back would read as a
    /// burst to the short burn-rate windows.
    fn count_between(&mut self, from_ms: i64, to_ms: i64, increase: f64, counted: bool) {
        let add = |rollup: &mut Rollup, at_ms: i64, amount: f64| {
            if counted {
                rollup.add(at_ms, amount, 0.0);
            } else {
                rollup.add(at_ms, 0.0, amount);
            }
        };
        // Minutes a period back are ignored by the rollup anyway.
        let from_ms = from_ms.max(to_ms.saturating_sub(self.spec.period_ms));
        let span_ms = to_ms.saturating_sub(from_ms);
        if from_ms.div_euclid(MINUTE_MS) == to_ms.div_euclid(MINUTE_MS) || span_ms <= MINUTE_MS {
            add(&mut self.rollup, to_ms, increase);
            return;
        }
        let mut start = from_ms;
        while start < to_ms {
            let end = ((start.div_euclid(MINUTE_MS) + 1) * MINUTE_MS).min(to_ms);
            // The part of the gap up to `end`, counted where a sample at `end` would be.
            add(
                &mut self.rollup,
                end,
                increase * (end - start) as f64 / span_ms as f64,
            );
            start = end;
        }
    }

    /// What must outlive a restart; see [`SloDetectorState`].
    pub fn export(&self) -> SloDetectorState {
        let baselines = SliCounter::ALL
            .into_iter()
            .flat_map(|counter| {
                self.last[counter as usize]
                    .iter()
                    .enumerate()
                    .filter_map(move |(series, last)| {
                        last.map(|(value, at_ms)| {
                            StoredBaseline(counter, series as u32, value, Some(at_ms))
                        })
                    })
            })
            .collect();
        SloDetectorState {
            shape: self.spec.shape,
            period_ms: self.spec.period_ms,
            latest_minute: (self.rollup.latest_minute != i64::MIN)
                .then_some(self.rollup.latest_minute),
            counted: self.rollup.counted,
            total: self.rollup.total,
            buckets: self.rollup.export(),
            baselines,
            since_ms: (self.since_ms != i64::MAX).then_some(self.since_ms),
            tripped: self.tripped,
        }
    }

    /// A detector for `spec` that continues from saved `state`. `remap` gives, for a
    /// series id the saved detector was fed (per SLI counter), the id the same series is
    /// fed under now, or `None` if it is gone: its baseline is dropped, so its next sample
    /// becomes its baseline again, as for a new series.
    ///
    /// The spec may have been edited since the state was saved. Target, tiers and the
    /// budget threshold apply to the saved counts as they are. A changed period keeps the
    /// saved minutes that fall in the new period, ending at the newest saved minute: a
    /// longer period starts partly filled, a shorter one forgets its oldest minutes. A
    /// changed SLI shape (ratio or latency) is refused: the saved counts count other
    /// events.
    pub fn import(
        spec: SloSpec,
        state: SloDetectorState,
        remap: impl Fn(SliCounter, u32) -> Option<u32>,
    ) -> Result<Self, SloImportError> {
        if state.shape != spec.shape {
            return Err(SloImportError::ShapeChanged {
                saved: state.shape,
                now: spec.shape,
            });
        }
        let rollup = Rollup::import(
            spec.period_ms,
            state.latest_minute,
            &state.buckets,
            (state.counted, state.total),
        )?;
        // A baseline saved without its time is taken as of the newest minute saved, so an
        // increase across the restart is spread from there on.
        let baseline_ms = state
            .latest_minute
            .map_or(i64::MIN, |m| m.saturating_mul(MINUTE_MS));
        let since_ms = match state.since_ms {
            Some(since_ms) => since_ms,
            None if rollup.first_minute == i64::MAX => i64::MAX,
            None => rollup.first_minute * MINUTE_MS,
        };
        let mut detector = Self {
            rollup,
            tripped: state.tripped,
            since_ms,
            ..Self::new(spec)
        };
        for StoredBaseline(counter, series, value, at_ms) in state.baselines {
            // `observe` never keeps a NaN: one would count the next value whole.
            if value.is_nan() {
                continue;
            }
            let Some(series) = remap(counter, series) else {
                continue;
            };
            let lasts = &mut detector.last[counter as usize];
            let index = series as usize;
            if index >= lasts.len() {
                lasts.resize(index + 1, None);
            }
            let baseline_ms = at_ms.unwrap_or(baseline_ms);
            lasts[index] = Some((value, baseline_ms));
            if baseline_ms != i64::MIN {
                detector.since_ms = detector.since_ms.min(baseline_ms);
            }
        }
        Ok(detector)
    }

    /// Forgets a series' baseline (its window was evicted).
    pub fn forget(&mut self, counter: SliCounter, series: u32) {
        if let Some(last) = self.last[counter as usize].get_mut(series as usize) {
            *last = None;
        }
    }

    fn bad_ratio(&self, counted: f64, total: f64) -> f64 {
        if total <= 0.0 {
            return 0.0;
        }
        let bad = match self.spec.shape {
            SliShape::Ratio => counted,
            SliShape::Latency => (total - counted).max(0.0),
        };
        (bad / total).clamp(0.0, 1.0)
    }

    fn burn_rate(&self, now_ms: i64, window_ms: i64) -> f64 {
        let (counted, total) = self.rollup.sum(now_ms, window_ms);
        let budget = 1.0 - self.spec.target;
        if budget <= 0.0 {
            return 0.0;
        }
        self.bad_ratio(counted, total) / budget
    }

    /// How much time the counts cover at `now_ms`, at most the period.
    fn covered_ms(&self, now_ms: i64) -> i64 {
        if self.since_ms == i64::MAX {
            return 0;
        }
        now_ms
            .saturating_sub(self.since_ms)
            .clamp(0, self.spec.period_ms)
    }

    /// The state at event time `now_ms`.
    ///
    /// A tier fires only once the counts cover its short window: the multi-window alerts
    /// of the SRE workbook assume full windows, and two minutes of errors on a fresh start
    /// are not yet five minutes of burn.
    pub fn state(&self, now_ms: i64) -> SloState {
        let covered_ms = self.covered_ms(now_ms);
        let tiers: Vec<TierState> = self
            .spec
            .tiers
            .iter()
            .map(|&tier| {
                let long_burn_rate = self.burn_rate(now_ms, tier.long_ms);
                let short_burn_rate = self.burn_rate(now_ms, tier.short_ms);
                TierState {
                    tier,
                    long_burn_rate,
                    short_burn_rate,
                    firing: covered_ms >= tier.short_ms
                        && long_burn_rate > tier.factor
                        && short_burn_rate > tier.factor,
                }
            })
            .collect();
        let budget_remaining = 1.0 - self.burn_rate(now_ms, self.spec.period_ms);
        let current = tiers.first().map_or(0.0, |t| t.long_burn_rate);
        let period_days = self.spec.period_ms as f64 / DAY_MS as f64;
        let time_to_exhaustion_days =
            (current > 0.0).then(|| budget_remaining.max(0.0) * period_days / current);
        // A latency SLI counts good events in the bucket at its `le`: if events arrive
        // (the +Inf bucket) but no series has that `le`, every event would read as bad.
        let seen = |counter: SliCounter| self.last[counter as usize].iter().any(Option::is_some);
        let not_judged = (self.spec.shape == SliShape::Latency
            && seen(SliCounter::Total)
            && !seen(SliCounter::Good))
        .then(|| {
            "no series of the histogram has a bucket at spec.sli.latency.le: events arrive, but none can be counted as good, so the SLO is not judged (check le against the buckets the histogram exposes)".to_owned()
        });
        if not_judged.is_some() {
            return SloState {
                at_ms: now_ms,
                tiers: Vec::new(),
                budget_remaining: f64::NAN,
                time_to_exhaustion_days: None,
                covered_ms,
                not_judged,
            };
        }
        SloState {
            at_ms: now_ms,
            tiers,
            budget_remaining,
            time_to_exhaustion_days,
            covered_ms,
            not_judged: None,
        }
    }

    /// Evaluates at `now_ms` and returns a transition when the SLO starts or stops being
    /// violated: any tier firing, or less budget left than the threshold.
    pub fn evaluate(&mut self, now_ms: i64) -> (SloState, Option<Transition>) {
        let state = self.state(now_ms);
        let firing: Vec<String> = state
            .tiers
            .iter()
            .filter(|t| t.firing)
            .map(|t| {
                format!(
                    "burn rate {:.2}× over {} and {:.2}× over {} (> {:.2}×)",
                    t.long_burn_rate,
                    window_name(t.tier.long_ms),
                    t.short_burn_rate,
                    window_name(t.tier.short_ms),
                    t.tier.factor
                )
            })
            .collect();
        // The budget as spent so far trips only once the counts cover the first tier's
        // long window (1h by default): over a few minutes it is noise, not a budget.
        let budget_judged = state.covered_ms
            >= self
                .spec
                .tiers
                .first()
                .map_or(HOUR_MS, |t| t.long_ms)
                .min(self.spec.period_ms);
        let low_budget = budget_judged && state.budget_remaining < self.spec.budget_threshold;
        let violated = state.not_judged.is_none() && (!firing.is_empty() || low_budget);
        let transition = match (violated, self.tripped) {
            (true, false) => {
                let mut reasons = firing;
                if low_budget {
                    reasons.push(format!(
                        "error budget remaining {:.1}% < {:.1}% (counted over {} of the {} period)",
                        state.budget_remaining * 100.0,
                        self.spec.budget_threshold * 100.0,
                        window_name(state.covered_ms),
                        window_name(self.spec.period_ms)
                    ));
                }
                Some(Transition {
                    change: Change::Tripped,
                    reason: reasons.join("; "),
                })
            }
            (false, true) => Some(Transition {
                change: Change::Cleared,
                reason: format!(
                    "no burn-rate tier firing and {:.1}% of the error budget left",
                    state.budget_remaining * 100.0
                ),
            }),
            _ => None,
        };
        self.tripped = violated;
        (state, transition)
    }
}

fn window_name(ms: i64) -> String {
    if ms % DAY_MS == 0 {
        format!("{}d", ms / DAY_MS)
    } else if ms % HOUR_MS == 0 {
        format!("{}h", ms / HOUR_MS)
    } else {
        format!("{}m", ms / MINUTE_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAYS_30: i64 = 30 * DAY_MS;

    fn spec(target: f64) -> SloSpec {
        SloSpec {
            target,
            period_ms: DAYS_30,
            tiers: default_tiers(DAYS_30),
            budget_threshold: 0.1,
            shape: SliShape::Ratio,
        }
    }

    /// Feeds a steady 100 requests/s (one sample a minute) with `error_ratio` of them
    /// failing, for minutes `from..to`; counters start at `base`.
    fn traffic(d: &mut SloDetector, from: i64, to: i64, error_ratio: f64, base: &mut (f64, f64)) {
        for minute in from..to {
            let at = minute * MINUTE_MS;
            base.0 += 6000.0 * error_ratio;
            base.1 += 6000.0;
            d.observe(SliCounter::Bad, 0, at, base.0);
            d.observe(SliCounter::Total, 0, at, base.1);
        }
    }

    #[test]
    fn default_factors_scale_with_the_period() {
        let f30: Vec<f64> = default_tiers(DAYS_30).iter().map(|t| t.factor).collect();
        assert_eq!(f30, [14.4, 6.0, 3.0, 1.0]);
        let f28: Vec<f64> = default_tiers(28 * DAY_MS)
            .iter()
            .map(|t| t.factor)
            .collect();
        for (got, want) in f28.iter().zip([13.44, 5.6, 2.8, 0.9333333333333333]) {
            assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        }
    }

    #[test]
    fn no_traffic_gives_zero_burn_full_budget_and_no_trip() {
        let mut d = SloDetector::new(spec(0.999));
        let (state, transition) = d.evaluate(10 * DAY_MS);
        assert_eq!(transition, None);
        assert_eq!(state.budget_remaining, 1.0);
        assert_eq!(state.time_to_exhaustion_days, None);
        assert!(
            state
                .tiers
                .iter()
                .all(|t| t.long_burn_rate == 0.0 && !t.firing)
        );
    }

    #[test]
    fn the_fast_tier_trips_when_hand_computed_and_clears_with_its_short_window() {
        // Target 99.9%: budget 0.1%; 10% errors burn at 100×. Three clean days first, so
        // that neither the slow tiers nor the budget threshold interfere.
        let mut d = SloDetector::new(spec(0.999));
        let mut counters = (0.0, 0.0);
        let start = 3 * 24 * 60 + 1;
        traffic(&mut d, 0, start, 0.0, &mut counters);
        // After x erroring minutes the 1h burn rate is 100·x/60: above 14.4 from x = 9
        // (8.64 rounded up to whole minutes); the 5m one is 100·min(x,5)/5 > 14.4 at once.
        let mut tripped_after = None;
        for x in 1..20 {
            let minute = start + x - 1;
            traffic(&mut d, minute, minute + 1, 0.1, &mut counters);
            let (state, transition) = d.evaluate(minute * MINUTE_MS);
            if let Some(t) = transition {
                assert_eq!(t.change, Change::Tripped);
                assert!(t.reason.contains("over 1h and"), "{}", t.reason);
                assert!(state.tiers[0].firing && !state.tiers[1].firing, "{state:?}");
                tripped_after = Some(x);
                break;
            }
        }
        assert_eq!(tripped_after, Some(9));
        // Clean again: the 5m window still holds an erroring minute 4 minutes on (burn
        // 100/5 = 20 > 14.4) and none from the 5th, when the tier stops firing.
        let last_error = start + 8;
        let mut cleared_after = None;
        for y in 1..20 {
            let minute = last_error + y;
            traffic(&mut d, minute, minute + 1, 0.0, &mut counters);
            let (state, transition) = d.evaluate(minute * MINUTE_MS);
            if let Some(t) = transition {
                assert_eq!(t.change, Change::Cleared, "{state:?}");
                assert!(state.tiers[0].long_burn_rate > 14.4, "{state:?}");
                cleared_after = Some(y);
                break;
            }
        }
        assert_eq!(cleared_after, Some(5));
    }

    /// Three clean days, then errors at `error_ratio` every minute: the number of erroring
    /// minutes after which the SLO trips, and which tiers fire then.
    fn trip_after(error_ratio: f64, max_minutes: i64) -> Option<(i64, Vec<bool>)> {
        trip(error_ratio, max_minutes).map(|(x, tiers, ..)| (x, tiers))
    }

    /// A trip: erroring minutes, tiers firing, the detector, its counters, the minute.
    type Trip = (i64, Vec<bool>, SloDetector, (f64, f64), i64);

    /// [`trip_after`], with the detector, its counters and the trip's minute.
    fn trip(error_ratio: f64, max_minutes: i64) -> Option<Trip> {
        let mut d = SloDetector::new(spec(0.999));
        let mut counters = (0.0, 0.0);
        let start = 3 * 24 * 60 + 1;
        traffic(&mut d, 0, start, 0.0, &mut counters);
        for x in 1..=max_minutes {
            let minute = start + x - 1;
            traffic(&mut d, minute, minute + 1, error_ratio, &mut counters);
            let (state, transition) = d.evaluate(minute * MINUTE_MS);
            if let Some(t) = transition {
                assert_eq!(t.change, Change::Tripped);
                let firing = state.tiers.iter().map(|t| t.firing).collect();
                return Some((x, firing, d, counters, minute));
            }
        }
        None
    }

    #[test]
    fn each_slower_tier_trips_when_hand_computed() {
        // Budget 0.1%. At burn b, after x erroring minutes a window of w minutes burns
        // b·x/w (x ≤ w), and the short windows burn b at once.
        // 0.8% errors (8×): 1h at most 8 < 14.4; 6h: 8x/360 > 6 from x = 271; the 1d
        // and 3d tiers would need x > 540.
        assert_eq!(
            trip_after(0.008, 400),
            Some((271, vec![false, true, false, false]))
        );
        // 0.4% (4×): never the first two tiers; 1d: 4x/1440 > 3 and 3d: 4x/4320 > 1
        // both from x = 1081 (for a burst within a day the two tiers agree: 3·1440 =
        // 1·4320), with 2h at 4 > 3 and 6h at 4 > 1.
        assert_eq!(
            trip_after(0.004, 1200),
            Some((1081, vec![false, false, true, true]))
        );
        // 0.15% (1.5×): 1d at most 1.5 < 3; 3d: 1.5x/4320 > 1 from x = 2881, two days
        // in, with the 6h window at 1.5 > 1. The budget (1 − 0.6) stays above 0.1.
        assert_eq!(
            trip_after(0.0015, 3000),
            Some((2881, vec![false, false, false, true]))
        );
        // 0.09% (0.9×): no tier fires, ever, and the budget is not spent in 3 days.
        assert_eq!(trip_after(0.0009, 4320), None);
    }

    #[test]
    fn the_6h_tier_clears_when_its_30m_window_cools() {
        // Tripped at 8× after 271 minutes. Clean from then on: after y clean minutes the
        // 30m window burns 8·(30 − y)/30, under 6 from y = 8, while the 6h one still
        // holds all 271 erroring minutes (6.02 > 6).
        let (_, _, mut d, mut counters, last_error) = trip(0.008, 400).unwrap();
        for y in 1..30 {
            let minute = last_error + y;
            traffic(&mut d, minute, minute + 1, 0.0, &mut counters);
            let (state, transition) = d.evaluate(minute * MINUTE_MS);
            if let Some(t) = transition {
                assert_eq!(t.change, Change::Cleared);
                assert_eq!(y, 8, "{state:?}");
                assert!(state.tiers[1].long_burn_rate > 6.0, "{state:?}");
                return;
            }
        }
        panic!("never cleared");
    }

    #[test]
    fn budget_and_time_to_exhaustion_follow_the_definitions() {
        // Budget 0.1% over 30 days, a day of traffic at 0.05% errors. The budget is
        // event-weighted over the period's events: errors/total = 0.0005, so remaining is
        // 1 - 0.0005/0.001 = 0.5, whatever the traffic's duration.
        let mut d = SloDetector::new(spec(0.999));
        let mut counters = (0.0, 0.0);
        traffic(&mut d, 0, 24 * 60, 0.0005, &mut counters);
        let state = d.state(24 * 60 * MINUTE_MS - MINUTE_MS);
        assert!((state.budget_remaining - 0.5).abs() < 1e-9, "{state:?}");
        // Time to exhaustion: 0.5 of the budget × 30 days ÷ burn 0.5 = 30 days.
        let tte = state.time_to_exhaustion_days.unwrap();
        assert!((tte - 30.0).abs() < 1e-6, "{tte}");
    }

    #[test]
    fn counter_resets_and_first_samples_do_not_fake_errors() {
        let mut d = SloDetector::new(spec(0.99));
        // A series appears with a large value: its baseline, not an increase.
        d.observe(SliCounter::Bad, 0, 0, 1e6);
        d.observe(SliCounter::Total, 0, 0, 1e9);
        // It restarts (reset to a small value) and counts on.
        d.observe(SliCounter::Bad, 0, MINUTE_MS, 0.0);
        d.observe(SliCounter::Total, 0, MINUTE_MS, 100.0);
        d.observe(SliCounter::Bad, 0, 2 * MINUTE_MS, 1.0);
        d.observe(SliCounter::Total, 0, 2 * MINUTE_MS, 200.0);
        let (counted, total) = d.rollup.sum(2 * MINUTE_MS, HOUR_MS);
        assert_eq!((counted, total), (1.0, 200.0));
        let state = d.state(2 * MINUTE_MS);
        assert!((state.budget_remaining - 0.5).abs() < 1e-9, "{state:?}");
    }

    #[test]
    fn latency_slis_count_what_is_over_the_threshold() {
        let mut d = SloDetector::new(SloSpec {
            shape: SliShape::Latency,
            ..spec(0.9)
        });
        for (minute, good, total) in [(0, 0.0, 0.0), (1, 80.0, 100.0)] {
            d.observe(SliCounter::Good, 0, minute * MINUTE_MS, good);
            d.observe(SliCounter::Total, 0, minute * MINUTE_MS, total);
        }
        // 20% slow against a 10% budget: burn 2, budget overspent by 100%.
        let state = d.state(MINUTE_MS);
        assert!((state.tiers[0].long_burn_rate - 2.0).abs() < 1e-9);
        assert!((state.budget_remaining + 1.0).abs() < 1e-9);
        assert_eq!(state.time_to_exhaustion_days, Some(0.0));
    }

    #[test]
    fn running_period_totals_equal_a_recount_as_minutes_leave_the_period() {
        // A 1h period, traffic with gaps over 3 hours: the O(1) period sum must always
        // equal the sum over the minutes still inside the period.
        let mut rollup = Rollup::new(HOUR_MS);
        let mut added: Vec<(i64, f64, f64)> = Vec::new();
        for minute in (0..180).filter(|m| m % 7 != 3 && !(60..75).contains(m)) {
            let at = minute * MINUTE_MS + 5_000;
            let (c, t) = ((minute % 5) as f64, 10.0 + minute as f64);
            rollup.add(at, c, t);
            added.push((minute, c, t));
            let (counted, total) = rollup.sum(at, HOUR_MS);
            let (want_c, want_t) = added
                .iter()
                .filter(|(m, ..)| *m > minute - 60)
                .fold((0.0, 0.0), |(a, b), (_, c, t)| (a + c, b + t));
            assert!((counted - want_c).abs() < 1e-9, "minute {minute}");
            assert!((total - want_t).abs() < 1e-9, "minute {minute}");
        }
    }

    fn same_ids(_: SliCounter, id: u32) -> Option<u32> {
        Some(id)
    }

    #[test]
    fn a_gap_longer_than_the_period_empties_the_running_totals() {
        let mut rollup = Rollup::new(HOUR_MS);
        rollup.add(0, 1.0, 10.0);
        rollup.add(30 * MINUTE_MS, 1.0, 10.0);
        rollup.add(1_000 * MINUTE_MS, 0.0, 5.0);
        assert_eq!(rollup.sum(1_000 * MINUTE_MS, HOUR_MS), (0.0, 5.0));
        rollup.add(1_060 * MINUTE_MS, 0.0, 7.0);
        assert_eq!(rollup.sum(1_060 * MINUTE_MS, HOUR_MS), (0.0, 7.0));
    }

    #[test]
    fn a_young_slo_trips_only_once_the_short_window_is_covered() {
        let mut d = SloDetector::new(spec(0.99));
        let mut counters = (0.0, 0.0);
        // Every request fails from the first sample on: on a fresh start two minutes of
        // that once tripped with a budget of -9800% "over 30 days".
        traffic(&mut d, 0, 4, 1.0, &mut counters);
        let (state, transition) = d.evaluate(4 * MINUTE_MS);
        assert!(transition.is_none(), "{state:?}");
        assert_eq!(state.covered_ms, 4 * MINUTE_MS);
        assert!(state.tiers[0].long_burn_rate > 14.4 && !state.tiers[0].firing);
        // The 5m window is covered at minute 5: the 1h/5m tier fires, the budget (over
        // less than an hour) does not count yet.
        traffic(&mut d, 4, 5, 1.0, &mut counters);
        let (_, transition) = d.evaluate(5 * MINUTE_MS);
        let reason = transition.expect("trips at 5 minutes").reason;
        assert!(reason.contains("over 1h and"), "{reason}");
        assert!(!reason.contains("error budget"), "{reason}");
        traffic(&mut d, 5, 60, 1.0, &mut counters);
        let state = d.state(60 * MINUTE_MS);
        assert_eq!(state.covered_ms, 60 * MINUTE_MS);
        let mut later = SloDetector::new(spec(0.99));
        let mut counters = (0.0, 0.0);
        traffic(&mut later, 0, 61, 1.0, &mut counters);
        let (_, transition) = later.evaluate(61 * MINUTE_MS);
        let reason = transition.unwrap().reason;
        assert!(
            reason.contains("(counted over 61m of the 30d period)"),
            "{reason}"
        );
    }

    #[test]
    fn a_counter_silent_for_minutes_keeps_its_baseline_and_the_gap_is_spread() {
        let mut d = SloDetector::new(spec(0.99));
        let mut counters = (0.0, 0.0);
        traffic(&mut d, 0, 60, 0.0, &mut counters);
        // Both counters fall silent for 8 minutes after minute 59, then report what
        // happened meanwhile: 800 requests, 80 of them errors.
        let (_, total_before) = d.rollup.sum(59 * MINUTE_MS, DAYS_30);
        let back = 67 * MINUTE_MS;
        d.observe(SliCounter::Total, 0, back, counters.1 + 800.0);
        d.observe(SliCounter::Bad, 0, back, counters.0 + 80.0);
        let (bad, _) = d.rollup.sum(back, HOUR_MS);
        assert!(
            (bad - 80.0).abs() < 1e-9,
            "the hour counts the whole gap: {bad}"
        );
        let (_, total) = d.rollup.sum(back, DAYS_30);
        assert!((total - total_before - 800.0).abs() < 1e-6, "{total}");
        // The last 5 minutes hold 5/8 of it, as a steady rise would: not all of it.
        let (bad_5m, _) = d.rollup.sum(back, 5 * MINUTE_MS);
        assert!((bad_5m - 50.0).abs() < 1e-9, "{bad_5m}");
    }

    #[test]
    fn a_baseline_saved_without_its_time_still_loads() {
        let mut d = SloDetector::new(spec(0.99));
        let mut counters = (0.0, 0.0);
        traffic(&mut d, 0, 10, 0.1, &mut counters);
        let mut json = serde_json::to_value(d.export()).unwrap();
        for baseline in json["baselines"].as_array_mut().unwrap() {
            baseline.as_array_mut().unwrap().truncate(3);
        }
        json.as_object_mut().unwrap().remove("sinceMs");
        let old: SloDetectorState = serde_json::from_value(json).unwrap();
        let restored = SloDetector::import(spec(0.99), old, same_ids).unwrap();
        // Without the first sample's time, what the counts cover starts at the oldest
        // minute counted (the first sample at minute 0 was a baseline).
        let mut expected = d.state(10 * MINUTE_MS);
        expected.covered_ms = 9 * MINUTE_MS;
        assert_eq!(restored.state(10 * MINUTE_MS), expected);
    }

    #[test]
    fn an_infinite_counter_counts_nothing() {
        let mut d = SloDetector::new(spec(0.99));
        for (minute, total) in [(0, 1.0), (1, f64::INFINITY), (2, f64::INFINITY), (3, 5.0)] {
            d.observe(SliCounter::Total, 0, minute * MINUTE_MS, total);
        }
        d.observe(SliCounter::Total, 0, 4 * MINUTE_MS, 7.0);
        // Minute 3 (the reset: +5) leaves the period, minute 4 (+2) stays, and the +2
        // across the month-long gap is spread over it, all inside the period.
        d.observe(
            SliCounter::Total,
            0,
            (DAYS_30 / MINUTE_MS + 3) * MINUTE_MS,
            9.0,
        );
        assert_eq!(d.rollup.counted, 0.0);
        assert!((d.rollup.total - 4.0).abs() < 1e-9, "{}", d.rollup.total);
    }

    /// Feeds `minutes` of traffic on two series of each counter, with counter resets.
    fn mixed_traffic(d: &mut SloDetector, ids: [u32; 2], from: i64, minutes: i64) {
        for minute in from..from + minutes {
            let at = minute * MINUTE_MS + 15_000;
            let errors = if minute % 97 < 5 { 40.0 } else { 1.0 };
            let reset = if minute > from + minutes / 2 {
                0.0
            } else {
                1e6
            };
            d.observe(SliCounter::Bad, ids[0], at, minute as f64 * errors);
            d.observe(SliCounter::Total, ids[0], at, minute as f64 * 600.0);
            d.observe(SliCounter::Bad, ids[1], at, reset + minute as f64 * 2.0);
            d.observe(SliCounter::Total, ids[1], at, reset + minute as f64 * 900.0);
        }
    }

    #[test]
    fn a_restored_detector_continues_exactly_as_the_saved_one() {
        let mut saved = SloDetector::new(spec(0.999));
        mixed_traffic(&mut saved, [0, 1], 0, 3 * 24 * 60);
        let (_, tripped) = saved.evaluate((3 * 24 * 60 - 1) * MINUTE_MS);
        assert!(tripped.is_some(), "the traffic violates the SLO");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slo.state");
        crate::state::save(&path, &saved.export()).unwrap();
        let loaded: SloDetectorState = crate::state::load(&path).unwrap().unwrap();
        // The series come back under other ids.
        let remap = |_: SliCounter, id: u32| Some([7, 3][id as usize]);
        let mut restored = SloDetector::import(spec(0.999), loaded, remap).unwrap();

        let mut compared = 0;
        for day in 3..35 {
            let from = day * 24 * 60;
            mixed_traffic(&mut saved, [0, 1], from, 24 * 60);
            mixed_traffic(&mut restored, [7, 3], from, 24 * 60);
            for minute in [from + 1, from + 600, from + 24 * 60 - 1] {
                let at = minute * MINUTE_MS;
                assert_eq!(saved.evaluate(at), restored.evaluate(at), "minute {minute}");
                compared += 1;
            }
        }
        assert_eq!(compared, 96);
        assert_eq!(
            serde_json::to_string(&saved.export()).unwrap(),
            serde_json::to_string(
                &SloDetector::import(spec(0.999), restored.export(), |_, id| {
                    Some([0, 0, 0, 1, 0, 0, 0, 0][id as usize])
                })
                .unwrap()
                .export()
            )
            .unwrap()
        );
    }

    #[test]
    fn a_dropped_series_restarts_from_a_baseline() {
        let mut saved = SloDetector::new(spec(0.99));
        saved.observe(SliCounter::Bad, 0, 0, 5.0);
        saved.observe(SliCounter::Total, 0, 0, 100.0);
        let mut restored = SloDetector::import(spec(0.99), saved.export(), |counter, id| {
            (counter == SliCounter::Total).then_some(id)
        })
        .unwrap();
        // Without a baseline the jump to 500 is no error burst; with one, +100 is counted.
        restored.observe(SliCounter::Bad, 0, MINUTE_MS, 500.0);
        restored.observe(SliCounter::Total, 0, MINUTE_MS, 200.0);
        assert_eq!(restored.rollup.sum(MINUTE_MS, HOUR_MS), (0.0, 100.0));
    }

    #[test]
    fn an_edited_period_keeps_the_minutes_that_fit_and_a_changed_shape_is_refused() {
        let mut saved = SloDetector::new(spec(0.999));
        let mut counters = (0.0, 0.0);
        // Ten days at 0.05% errors, then ten clean days.
        traffic(&mut saved, 0, 10 * 24 * 60, 0.0005, &mut counters);
        traffic(&mut saved, 10 * 24 * 60, 20 * 24 * 60, 0.0, &mut counters);
        let now = (20 * 24 * 60 - 1) * MINUTE_MS;
        let with_period = |days: i64| SloSpec {
            period_ms: days * DAY_MS,
            tiers: default_tiers(days * DAY_MS),
            ..spec(0.999)
        };
        let budget = |days| {
            SloDetector::import(with_period(days), saved.export(), same_ids)
                .unwrap()
                .state(now)
                .budget_remaining
        };
        // Half the traffic at half the budget's error ratio (the very first minute being
        // the counters' baseline).
        assert!((budget(30) - 0.75).abs() < 1e-4, "{}", budget(30));
        assert_eq!(budget(30), saved.state(now).budget_remaining);
        assert_eq!(budget(60), budget(30));
        // Seven days hold only the clean ones.
        assert_eq!(budget(7), 1.0);

        let latency = SloSpec {
            shape: SliShape::Latency,
            ..spec(0.999)
        };
        let refused = SloDetector::import(latency, saved.export(), same_ids).unwrap_err();
        assert_eq!(
            refused,
            SloImportError::ShapeChanged {
                saved: SliShape::Ratio,
                now: SliShape::Latency
            }
        );
        assert!(
            refused.to_string().contains("count other events"),
            "{refused}"
        );
    }

    #[test]
    fn a_tampered_state_imports_without_panicking() {
        let mut saved = SloDetector::new(spec(0.99));
        let mut counters = (0.0, 0.0);
        traffic(&mut saved, 0, 100, 0.01, &mut counters);
        let good = saved.export();

        let mut odd = good.clone();
        odd.buckets.push(StoredBucket(50, 1.0, 1.0));
        odd.buckets.push(StoredBucket(1_000_000, 1.0, 1.0));
        odd.buckets.push(StoredBucket(50, f64::NAN, -1.0));
        odd.baselines
            .push(StoredBaseline(SliCounter::Bad, 9, f64::NAN, None));
        odd.counted = f64::INFINITY;
        let d = SloDetector::import(spec(0.99), odd, same_ids).unwrap();
        assert_eq!(
            d.rollup.sum(99 * MINUTE_MS, DAYS_30),
            saved.rollup.sum(99 * MINUTE_MS, DAYS_30)
        );
        assert!(d.state(99 * MINUTE_MS).budget_remaining.is_finite());

        for latest in [
            i64::MIN,
            i64::MIN / MINUTE_MS,
            i64::MAX / MINUTE_MS + 1,
            i64::MAX,
        ] {
            let far = SloDetectorState {
                latest_minute: Some(latest),
                ..good.clone()
            };
            let error = SloDetector::import(spec(0.99), far, same_ids).unwrap_err();
            assert!(matches!(error, SloImportError::Invalid(_)), "{latest}");
        }
        let edge = SloDetectorState {
            latest_minute: Some(i64::MAX / MINUTE_MS),
            ..good
        };
        let mut d = SloDetector::import(spec(0.99), edge, same_ids).unwrap();
        d.observe(SliCounter::Total, 0, 0, 1.0);
        d.evaluate(0);
    }

    #[test]
    fn memory_follows_the_minutes_counted_up_to_the_period() {
        let bucket = std::mem::size_of::<Bucket>();
        let mut d = SloDetector::new(spec(0.999));
        assert_eq!(d.rollup_bytes(), 0, "nothing before the first sample");
        // A day of samples, one a minute: about a day of buckets (the ring doubles).
        for minute in 0..24 * 60 {
            d.observe(SliCounter::Total, 0, minute * MINUTE_MS, minute as f64);
        }
        assert!(
            (24 * 60 * bucket..=2 * 24 * 60 * bucket).contains(&d.rollup_bytes()),
            "{}",
            d.rollup_bytes()
        );
        // Forty days: the period's worth, no more.
        for minute in 24 * 60..40 * 24 * 60 {
            d.observe(SliCounter::Total, 0, minute * MINUTE_MS, minute as f64);
        }
        assert_eq!(d.rollup_bytes(), 30 * 24 * 60 * bucket);
    }

    #[test]
    fn a_latency_le_that_matches_no_bucket_is_said_and_never_trips() {
        let mut d = SloDetector::new(SloSpec {
            shape: SliShape::Latency,
            ..spec(0.99)
        });
        // Only the +Inf bucket arrives: the threshold's bucket is not in the data.
        for minute in 0..120 {
            d.observe(
                SliCounter::Total,
                0,
                minute * MINUTE_MS,
                (minute * 100) as f64,
            );
            let (state, transition) = d.evaluate(minute * MINUTE_MS);
            assert!(transition.is_none(), "minute {minute}: {transition:?}");
            assert!(state.not_judged.is_some());
            assert!(state.budget_remaining.is_nan());
        }
        // With the bucket in the data (le right), the same traffic is judged: all good.
        let mut right = SloDetector::new(SloSpec {
            shape: SliShape::Latency,
            ..spec(0.99)
        });
        for minute in 0..120 {
            let count = (minute * 100) as f64;
            right.observe(SliCounter::Total, 0, minute * MINUTE_MS, count);
            right.observe(SliCounter::Good, 1, minute * MINUTE_MS, count);
        }
        let (state, _) = right.evaluate(120 * MINUTE_MS);
        assert!(state.not_judged.is_none());
        assert_eq!(state.budget_remaining, 1.0);
    }

    #[test]
    fn a_growing_ring_keeps_every_count_and_every_window_sum() {
        // The same counts into a rollup that grows and into one sized for the period
        // at once (as before): every window's sum and the budget agree at every minute.
        let period = 3 * 24 * 60 * MINUTE_MS;
        let mut growing = Rollup::new(period);
        let mut full = Rollup::new(period);
        full.reserve_span(i64::MAX);
        let mut noise = 7u64;
        for minute in 0..5 * 24 * 60i64 {
            noise = noise
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            // Gaps of an hour now and then, and a late count within the period.
            if (noise >> 33).is_multiple_of(50) {
                continue;
            }
            let at = minute * MINUTE_MS;
            let bad = ((noise >> 40) % 5) as f64;
            growing.add(at, bad, 10.0);
            full.add(at, bad, 10.0);
            if minute % 97 == 0 && minute > 100 {
                growing.add(at - 90 * MINUTE_MS, 1.0, 1.0);
                full.add(at - 90 * MINUTE_MS, 1.0, 1.0);
            }
            for window in [5, 60, 360, 24 * 60, 3 * 24 * 60] {
                assert_eq!(
                    growing.sum(at, window * MINUTE_MS),
                    full.sum(at, window * MINUTE_MS),
                    "minute {minute}, window {window}"
                );
            }
        }
        assert_eq!(growing.export().len(), full.export().len());
    }
}
