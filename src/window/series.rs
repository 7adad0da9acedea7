//! One series' window: its samples in timestamp order, trimmed to the retention.

use std::collections::VecDeque;
use std::ops::Range;

use crate::ingest::{Sample, is_stale_marker};
use crate::labels::Labels;

/// What became of an inserted sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Appended,
    /// The exact sample (timestamp and value bits) is already there: accepted once.
    Duplicate,
    /// Older than the newest sample, or the same timestamp with another value: dropped,
    /// as Prometheus's own TSDB would refuse it.
    OutOfOrder,
    /// Older than its rule's event clock minus the idle time: the series would be
    /// evicted at once.
    TooOld,
}

/// The samples of one series that its rule input needs.
#[derive(Debug)]
pub struct SeriesWindow {
    labels: Labels,
    hash: u64,
    samples: VecDeque<Sample>,
    /// The time between its last two samples, and the shorter of its last two such
    /// intervals (0 while unknown): its rhythm, kept whatever the retention.
    gap_ms: i64,
    interval_ms: i64,
    /// [`SeriesWindow::complete_through`], kept up to date (the windows' watermark reads
    /// it for every series without touching their samples); `i64::MAX` also once the
    /// series is quiet (it missed a step's settle delay), until its next sample.
    complete_ms: i64,
}

impl SeriesWindow {
    pub(super) fn new(labels: Labels, hash: u64) -> Self {
        Self {
            labels,
            hash,
            samples: VecDeque::with_capacity(1),
            gap_ms: 0,
            interval_ms: 0,
            complete_ms: i64::MAX,
        }
    }

    /// A window of no selector's: a history that its owner appends to at its own times
    /// (an expression result's values at each step, read by its band).
    pub(crate) fn detached() -> Self {
        Self::new(Labels::from_pairs([]), 0)
    }

    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    pub(super) fn hash(&self) -> u64 {
        self.hash
    }

    pub(super) fn into_labels(self) -> Labels {
        self.labels
    }

    /// Appends `sample` and drops samples older than `retention_ms` before the older of
    /// the sample's time and `now_ms`, the receiver's clock at arrival (never the newest
    /// sample itself). Trimming by the receiver's clock,
    /// not by the sample alone, means a sender whose clock runs ahead still leaves the
    /// window what evaluations at the receiver's time need.
    pub(crate) fn insert(&mut self, sample: Sample, retention_ms: i64, now_ms: i64) -> Insert {
        if let Some(last) = self.samples.back() {
            if sample.timestamp_ms < last.timestamp_ms {
                return Insert::OutOfOrder;
            }
            if sample.timestamp_ms == last.timestamp_ms {
                return if sample.value.to_bits() == last.value.to_bits() {
                    Insert::Duplicate
                } else {
                    Insert::OutOfOrder
                };
            }
        }
        if let Some(last) = self.samples.back() {
            let gap = sample.timestamp_ms.saturating_sub(last.timestamp_ms);
            self.interval_ms = if self.gap_ms > 0 {
                gap.min(self.gap_ms)
            } else {
                gap
            };
            self.gap_ms = gap;
        }
        self.samples.push_back(sample);
        self.complete_ms = if is_stale_marker(sample.value) {
            i64::MAX
        } else {
            sample
                .timestamp_ms
                .saturating_add(self.interval_ms.max(0) / 4 * 3)
        };
        let oldest_kept = sample.timestamp_ms.min(now_ms).saturating_sub(retention_ms);
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|s| s.timestamp_ms < oldest_kept)
        {
            self.samples.pop_front();
        }
        Insert::Appended
    }

    /// The event time up to which this series has surely, or by its rhythm most likely,
    /// sent every sample: a step at or before it need not wait for the series.
    ///
    /// A sender sends each series in order, so every sample up to the newest has arrived.
    /// Beyond it, the series' next sample is expected one scrape interval later (the
    /// shorter of its last two intervals, so one gap does not stretch it); up to three
    /// quarters of that interval past the newest nothing more is expected, the last
    /// quarter is left for a scrape's jitter. A series ended by a staleness marker, or
    /// marked quiet (it missed a settle delay and sent nothing since), holds nothing:
    /// `i64::MAX`.
    pub fn complete_through(&self) -> i64 {
        self.complete_ms
    }

    /// Marks the series quiet: see [`Self::complete_through`].
    pub(crate) fn mark_quiet(&mut self) {
        self.complete_ms = i64::MAX;
    }

    /// The newest sample, staleness markers included.
    pub fn last(&self) -> Option<Sample> {
        self.samples.back().copied()
    }

    /// The series' current value: the newest sample unless it is a staleness marker.
    pub fn current(&self) -> Option<Sample> {
        self.last().filter(|s| !is_stale_marker(s.value))
    }

    pub fn last_timestamp_ms(&self) -> i64 {
        self.samples.back().map_or(i64::MIN, |s| s.timestamp_ms)
    }

    /// The retained samples, oldest first.
    pub fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// The retained samples in `(after_ms, until_ms]`, oldest first (the PromQL engine's
    /// ranges), found by search: a window kept for the longest range any reader needs is
    /// not walked from its start by every shorter one.
    pub fn samples_between(
        &self,
        after_ms: i64,
        until_ms: i64,
    ) -> impl DoubleEndedIterator<Item = &Sample> + ExactSizeIterator + Clone {
        self.samples.range(self.between(after_ms, until_ms))
    }

    /// [`Self::samples_between`] where the window holds them, to be read in place: one
    /// slice, or two (older, newer) where the ring buffer wraps around within them.
    pub fn slices_between(&self, after_ms: i64, until_ms: i64) -> (&[Sample], &[Sample]) {
        let range = self.between(after_ms, until_ms);
        let (front, back) = self.samples.as_slices();
        let split = front.len();
        if range.end <= split {
            (&front[range], &[])
        } else if range.start >= split {
            (&back[range.start - split..range.end - split], &[])
        } else {
            (&front[range.start..], &back[..range.end - split])
        }
    }

    /// The retained samples in `[from_ms, before_ms)`, oldest first: the history a band
    /// judges the sample at `before_ms` against.
    pub fn samples_in(
        &self,
        from_ms: i64,
        before_ms: i64,
    ) -> impl DoubleEndedIterator<Item = &Sample> + ExactSizeIterator + Clone {
        let range = self.positions(move |t| t < from_ms, move |t| t < before_ms);
        self.samples.range(range)
    }

    /// The positions of the samples in `(after_ms, until_ms]`.
    fn between(&self, after_ms: i64, until_ms: i64) -> Range<usize> {
        self.positions(move |t| t <= after_ms, move |t| t <= until_ms)
    }

    /// The positions after the samples whose time is `before_start` up to the last whose
    /// time is `before_end` (both predicates true for a prefix of the window).
    fn positions(
        &self,
        before_start: impl Fn(i64) -> bool,
        before_end: impl Fn(i64) -> bool,
    ) -> Range<usize> {
        // Readers mostly want the whole window (a band's history), or its newest part (a
        // range shorter than what another reader keeps).
        let from = match self.samples.front() {
            Some(first) if !before_start(first.timestamp_ms) => 0,
            _ => self.count_from_back(before_start),
        };
        let to = self.count_from_back(before_end);
        from..to.max(from)
    }

    /// How many samples, from the oldest, have a time for which `before` holds (true for a
    /// prefix of the window). Searched from the newest end in doubling steps, then by
    /// bisection within the last step: ranges mostly end at or near the newest sample and
    /// start minutes before it, in a window that may keep an hour, and this touches only
    /// the samples near the answer where a plain binary search would start in the middle.
    fn count_from_back(&self, before: impl Fn(i64) -> bool) -> usize {
        let holds = |i: usize| before(self.samples[i].timestamp_ms);
        // Every sample at `end` or after is not before.
        let mut end = self.samples.len();
        let mut step = 1;
        while end > 0 {
            let probe = end.saturating_sub(step);
            if holds(probe) {
                let (mut low, mut high) = (probe + 1, end);
                while low < high {
                    let middle = low + (high - low) / 2;
                    if holds(middle) {
                        low = middle + 1;
                    } else {
                        high = middle;
                    }
                }
                return low;
            }
            end = probe;
            step *= 2;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::STALE_NAN_BITS;

    fn at(t: i64, v: f64) -> Sample {
        Sample {
            timestamp_ms: t,
            value: v,
        }
    }

    #[test]
    fn keeps_order_drops_duplicates_and_trims_to_retention() {
        let mut w = SeriesWindow::new(Labels::from_pairs([("__name__", "m")]), 0);
        assert_eq!(w.insert(at(1_000, 1.0), 10_000, i64::MAX), Insert::Appended);
        assert_eq!(
            w.insert(at(1_000, 1.0), 10_000, i64::MAX),
            Insert::Duplicate
        );
        assert_eq!(
            w.insert(at(1_000, 2.0), 10_000, i64::MAX),
            Insert::OutOfOrder
        );
        assert_eq!(w.insert(at(500, 2.0), 10_000, i64::MAX), Insert::OutOfOrder);
        assert_eq!(w.insert(at(6_000, 2.0), 10_000, i64::MAX), Insert::Appended);
        assert_eq!(
            w.insert(at(12_000, 3.0), 10_000, i64::MAX),
            Insert::Appended
        );
        let kept: Vec<_> = w.samples().map(|s| s.timestamp_ms).collect();
        assert_eq!(kept, [6_000, 12_000]);
    }

    #[test]
    fn slices_between_lend_what_samples_between_copies_also_where_the_buffer_wraps() {
        let mut w = SeriesWindow::new(Labels::from_pairs([("__name__", "m")]), 0);
        // Trimming to 5 samples while appending makes the ring buffer wrap again and again.
        let mut wrapped = 0;
        for t in 0..40 {
            w.insert(at(t * 10, t as f64), 45, i64::MAX);
            for after in -10..=t * 10 + 10 {
                for until in [after, after + 5, after + 20, t * 10, t * 10 + 10] {
                    let (older, newer) = w.slices_between(after, until);
                    let lent: Vec<Sample> = older.iter().chain(newer).copied().collect();
                    let copied: Vec<Sample> = w.samples_between(after, until).copied().collect();
                    assert_eq!(lent, copied, "at {t}, ({after}, {until}]");
                    assert!(!older.is_empty() || newer.is_empty());
                    wrapped += usize::from(!newer.is_empty());
                }
            }
        }
        assert!(wrapped > 0, "the ring buffer never wrapped within a range");
    }

    #[test]
    fn ranges_hold_exactly_the_samples_a_scan_finds_at_every_size_and_edge() {
        let mut w = SeriesWindow::new(Labels::from_pairs([("__name__", "m")]), 0);
        // Uneven gaps, so edges fall on samples and between them; the retention of 600
        // makes the window grow to ~70 samples and then wrap as it slides.
        let mut t = 0;
        for i in 0..200 {
            t += 3 + (i * 7) % 11;
            w.insert(at(t, i as f64), 600, i64::MAX);
            let all: Vec<i64> = w.samples().map(|s| s.timestamp_ms).collect();
            let first = all[0];
            for edge in first - 2..=t + 2 {
                for width in [0, 1, 5, 60, 600, 1_000] {
                    let (after, until) = (edge - width, edge);
                    let between: Vec<i64> = w
                        .samples_between(after, until)
                        .map(|s| s.timestamp_ms)
                        .collect();
                    let scanned: Vec<i64> = all
                        .iter()
                        .copied()
                        .filter(|&s| s > after && s <= until)
                        .collect();
                    assert_eq!(between, scanned, "({after}, {until}] of {all:?}");
                    let history: Vec<i64> =
                        w.samples_in(after, until).map(|s| s.timestamp_ms).collect();
                    let scanned: Vec<i64> = all
                        .iter()
                        .copied()
                        .filter(|&s| s >= after && s < until)
                        .collect();
                    assert_eq!(history, scanned, "[{after}, {until}) of {all:?}");
                }
            }
        }
    }

    #[test]
    fn a_series_is_complete_up_to_three_quarters_of_its_shorter_recent_interval() {
        let mut w = SeriesWindow::new(Labels::from_pairs([("__name__", "m")]), 0);
        assert_eq!(
            w.complete_through(),
            i64::MAX,
            "an empty series holds nothing"
        );
        w.insert(at(100_000, 1.0), 0, i64::MAX);
        assert_eq!(
            w.complete_through(),
            100_000,
            "rhythm unknown: its newest sample"
        );
        w.insert(at(160_000, 1.0), 0, i64::MAX);
        assert_eq!(w.complete_through(), 205_000);
        // After a gap, the interval before it still counts: a gap does not stretch it.
        w.insert(at(700_000, 1.0), 0, i64::MAX);
        assert_eq!(w.complete_through(), 745_000);
        w.mark_quiet();
        assert_eq!(w.complete_through(), i64::MAX);
        w.insert(at(715_000, 1.0), 0, i64::MAX);
        assert_eq!(
            w.complete_through(),
            726_250,
            "its next sample ends the quiet"
        );
        w.insert(at(730_000, f64::from_bits(STALE_NAN_BITS)), 0, i64::MAX);
        assert_eq!(
            w.complete_through(),
            i64::MAX,
            "ended by a staleness marker"
        );
    }

    #[test]
    fn a_staleness_marker_ends_the_current_value_but_other_nans_do_not() {
        let mut w = SeriesWindow::new(Labels::from_pairs([("__name__", "m")]), 0);
        w.insert(at(1, f64::NAN), 0, i64::MAX);
        assert!(w.current().is_some_and(|s| s.value.is_nan()));
        w.insert(at(2, f64::from_bits(STALE_NAN_BITS)), 0, i64::MAX);
        assert_eq!(w.current(), None);
        w.insert(at(3, f64::INFINITY), 0, i64::MAX);
        assert_eq!(w.current(), Some(at(3, f64::INFINITY)));
    }
}
