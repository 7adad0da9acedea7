//! Where the engine's series come from: the [`SeriesSource`] trait and [`MemorySource`],
//! a plain list of series for tests and backtests. A source only selects by matchers and
//! time; lookback, staleness and range boundaries are the engine's business.

use promql_parser::label::Matcher;

use super::value::compare_labels;
use crate::ingest::Sample;
use crate::labels::Labels;

/// One series and its samples, oldest first. Samples may include Prometheus staleness
/// markers (see [`crate::ingest::is_stale_marker`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSamples {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Series storage the engine reads from.
pub trait SeriesSource {
    /// The series matching every matcher of at least one group of `matchers` (the shape
    /// of [`crate::route::Selector::groups`]), each with its samples in
    /// `(start_ms, end_ms]`, oldest first. Series without samples in that range may be
    /// left out or returned empty. A label a series lacks matches as the empty string.
    ///
    /// Prometheus 2.x ranges are closed, `[t - range, t]` (and `[t - lookback, t]` for
    /// instant selectors), so under 2.x's semantics the engine asks for
    /// `start_ms = t - range - 1`: a source backed by windows must keep samples from
    /// `t - range` inclusive. Prometheus 3.x's are left-open: `start_ms = t - range`.
    fn select(&self, matchers: &[Vec<Matcher>], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples>;

    /// Calls `visit` with each series [`Self::select`] returns, in label order (see
    /// [`super::value::compare_labels`]), and its samples in `(start_ms, end_ms]`, oldest
    /// first. Range functions read their series this way, one at a time: a source backed
    /// by windows lends them in place, where [`Self::select`] would copy every sample of
    /// every series at every step.
    fn visit_range(
        &self,
        matchers: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
        visit: &mut dyn FnMut(&Labels, &[Sample]),
    ) {
        let mut series = self.select(matchers, start_ms, end_ms);
        if !series.is_sorted_by(|a, b| compare_labels(&a.labels, &b.labels).is_le()) {
            series.sort_by(|a, b| compare_labels(&a.labels, &b.labels));
        }
        for s in &series {
            visit(&s.labels, &s.samples);
        }
    }

    /// [`Self::select`] for an instant selector, which reads only each series' newest
    /// sample in `(start_ms, end_ms]`: a source backed by windows finds it without copying
    /// the lookback's worth of samples before it.
    fn select_latest(
        &self,
        matchers: &[Vec<Matcher>],
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(Labels, Sample)> {
        self.select(matchers, start_ms, end_ms)
            .into_iter()
            .filter_map(|s| Some((s.labels, *s.samples.last()?)))
            .collect()
    }
}

/// Whether `labels` satisfy every matcher of `group`.
pub(super) fn group_matches(group: &[Matcher], labels: &Labels) -> bool {
    group
        .iter()
        .all(|m| m.is_match(labels.get(&m.name).unwrap_or_default()))
}

/// Series held in memory, for tests and backtests.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    pub series: Vec<SeriesSamples>,
}

impl MemorySource {
    pub fn new(series: Vec<SeriesSamples>) -> Self {
        Self { series }
    }

    /// Adds a series; samples must be oldest first.
    pub fn push(&mut self, labels: Labels, samples: Vec<Sample>) {
        self.series.push(SeriesSamples { labels, samples });
    }
}

impl SeriesSource for MemorySource {
    fn select(&self, matchers: &[Vec<Matcher>], start_ms: i64, end_ms: i64) -> Vec<SeriesSamples> {
        self.series
            .iter()
            .filter(|s| matchers.iter().any(|g| group_matches(g, &s.labels)))
            .map(|s| SeriesSamples {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .filter(|x| x.timestamp_ms > start_ms && x.timestamp_ms <= end_ms)
                    .copied()
                    .collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect()
    }
}
