//! Route: the compiled rule set's index, from metric name to the rule inputs that need the
//! series, with their label matchers. For each decoded series the router either drops it
//! (counting its samples as unmatched) before anything is allocated for it, or copies it
//! once into a [`Batch`] bound for the evaluator. The router is immutable; a new rule set
//! builds a new one, swapped in whole.

use std::ops::Range;
use std::time::Instant;

use promql_parser::label::{MatchOp, Matcher};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::ingest::{IngestError, Sample, SeriesView};
use crate::labels::{Labels, PrehashedMap, push_pair};

/// Identifies one input of one rule (a selector whose series the rule needs), as an index
/// into the evaluator's table of inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputId(pub u32);

/// A series selector: what `up{job="x"}` says, as promql-parser parsed it. A series
/// matches when every matcher of at least one group matches; a selector without `or` has
/// exactly one group. The metric name, when the selector gives one, is a matcher in
/// every group.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub groups: Vec<Vec<Matcher>>,
}

impl Selector {
    /// From a parsed vector selector.
    pub fn from_promql(selector: &promql_parser::parser::VectorSelector) -> Self {
        let mut groups = selector.matchers.or_matchers.clone();
        if !selector.matchers.matchers.is_empty() || groups.is_empty() {
            groups.push(selector.matchers.matchers.clone());
        }
        if let Some(name) = &selector.name {
            for group in &mut groups {
                if !group
                    .iter()
                    .any(|m| m.name == "__name__" && m.op == MatchOp::Equal && m.value == *name)
                {
                    group.push(Matcher::new(MatchOp::Equal, "__name__", name));
                }
            }
        }
        Self { groups }
    }

    /// Whether a series with these labels is selected (a label it lacks matches as "").
    pub fn selects(&self, labels: &crate::labels::Labels) -> bool {
        self.groups.iter().any(|group| {
            group
                .iter()
                .all(|m| m.is_match(labels.get(&m.name).unwrap_or_default()))
        })
    }

    /// The metric name every matching series must have, when all groups fix the same one.
    fn metric_name(&self) -> Option<&str> {
        fn equal_name(group: &[Matcher]) -> Option<&str> {
            group
                .iter()
                .find(|m| m.name == "__name__" && m.op == MatchOp::Equal)
                .map(|m| m.value.as_str())
        }
        let first = equal_name(self.groups.first()?)?;
        self.groups[1..]
            .iter()
            .all(|g| equal_name(g) == Some(first))
            .then_some(first)
    }

    /// Whether a decoded series matches. Equality matchers compare bytes; only regular
    /// expressions need the value as `str`, so only they check UTF-8.
    fn matches(&self, series: &SeriesView<'_, '_>) -> Result<bool, IngestError> {
        for group in &self.groups {
            if group_matches(group, series)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn group_matches(group: &[Matcher], series: &SeriesView<'_, '_>) -> Result<bool, IngestError> {
    for matcher in group {
        // A missing label matches as the empty string, as in PromQL.
        let value = series
            .labels
            .iter()
            .find(|l| l.name == matcher.name.as_bytes())
            .map_or(&b""[..], |l| l.value);
        let matched = match &matcher.op {
            MatchOp::Equal => value == matcher.value.as_bytes(),
            MatchOp::NotEqual => value != matcher.value.as_bytes(),
            MatchOp::Re(_) | MatchOp::NotRe(_) => {
                let value = std::str::from_utf8(value).map_err(|_| IngestError::InvalidUtf8 {
                    series: series.index,
                })?;
                matcher.is_match(value)
            }
        };
        if !matched {
            return Ok(false);
        }
    }
    Ok(true)
}

struct Route {
    input: InputId,
    selector: Selector,
}

/// The routes of one metric name.
struct NamedRoutes {
    name: Box<[u8]>,
    routes: Vec<Route>,
}

/// The index the hot path consults for every series of every request.
pub struct Router {
    /// By the seeded hash of the metric name; a bucket holds more than one name only on
    /// a hash collision.
    by_name: PrehashedMap<Vec<NamedRoutes>>,
    /// Selectors without a fixed metric name (`{job="x"}`, `{__name__=~"a|b"}`): checked
    /// against every series, so they cost throughput; rare in practice.
    unnamed: Vec<Route>,
    seed: u64,
}

impl Router {
    /// Builds the index for the given inputs. The seed keys the series hash, so that a
    /// sender cannot aim label sets at one hash bucket.
    pub fn new(inputs: impl IntoIterator<Item = (InputId, Selector)>, seed: u64) -> Self {
        let mut by_name: PrehashedMap<Vec<NamedRoutes>> = PrehashedMap::default();
        let mut unnamed = Vec::new();
        for (input, selector) in inputs {
            let Some(name) = selector.metric_name().map(|n| n.as_bytes().to_vec()) else {
                unnamed.push(Route { input, selector });
                continue;
            };
            let bucket = by_name.entry(xxh3_64_with_seed(&name, seed)).or_default();
            let route = Route { input, selector };
            match bucket.iter_mut().find(|n| *n.name == *name) {
                Some(named) => named.routes.push(route),
                None => bucket.push(NamedRoutes {
                    name: name.into(),
                    routes: vec![route],
                }),
            }
        }
        Self {
            by_name,
            unnamed,
            seed,
        }
    }

    /// A router that keeps nothing.
    pub fn empty() -> Self {
        Self::new([], 0)
    }

    /// Whether any rule needs any series at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.unnamed.is_empty()
    }

    /// Decides the fate of one validated series: dropped and counted, or copied into
    /// `batch` once, with an entry for every input whose selector matches.
    #[inline]
    pub fn route(&self, series: &SeriesView<'_, '_>, batch: &mut Batch) -> Result<(), IngestError> {
        if series.samples.is_empty() {
            // Histogram- or exemplar-only series: nothing a rule evaluates.
            return Ok(());
        }
        let named = self
            .by_name
            .get(&xxh3_64_with_seed(series.metric_name, self.seed))
            .and_then(|bucket| bucket.iter().find(|n| *n.name == *series.metric_name))
            .map(|n| &n.routes);
        if named.is_none() && self.unnamed.is_empty() {
            batch.unmatched_samples += series.samples.len();
            return Ok(());
        }
        let candidates = named.into_iter().flatten().chain(&self.unnamed);
        let mut kept: Option<(Range<u32>, u64)> = None;
        for route in candidates {
            if !route.selector.matches(series)? {
                continue;
            }
            let (labels, hash) = match &kept {
                Some(k) => k.clone(),
                None => {
                    let k = batch.push_series(series, self.seed)?;
                    kept = Some(k.clone());
                    k
                }
            };
            let first = batch.samples.len() as u32 - series.samples.len() as u32;
            batch.entries.push(KeptSeries {
                input: route.input,
                hash,
                labels,
                samples: first..batch.samples.len() as u32,
            });
        }
        if kept.is_some() {
            batch.kept_samples += series.samples.len();
        } else {
            batch.unmatched_samples += series.samples.len();
        }
        Ok(())
    }
}

/// One kept (input, series) pair of a batch.
#[derive(Debug, Clone)]
pub struct KeptSeries {
    pub input: InputId,
    /// Seeded hash of the canonical labels.
    pub hash: u64,
    labels: Range<u32>,
    samples: Range<u32>,
}

/// What one request contributes to the evaluator: only the kept series, their labels in
/// canonical form back to back in one buffer, and their samples.
#[derive(Debug)]
pub struct Batch {
    /// When the request arrived, for `prophet_verdict_latency_seconds`.
    pub arrived: Instant,
    /// The receiver's wall clock at arrival (ms since the epoch): no rule's event clock
    /// moves past it, so one sender with a fast clock cannot age everyone else's series.
    pub received_ms: i64,
    pub entries: Vec<KeptSeries>,
    pub kept_samples: usize,
    pub unmatched_samples: usize,
    labels: Vec<u8>,
    /// Most bytes `labels` may grow to (at most `u32::MAX`, as ranges index it).
    max_label_bytes: usize,
    samples: Vec<Sample>,
}

impl Batch {
    /// An empty batch that refuses to hold more than `max_label_bytes` of labels.
    pub fn new(arrived: Instant, received_ms: i64, max_label_bytes: usize) -> Self {
        Self {
            arrived,
            received_ms,
            entries: Vec::new(),
            kept_samples: 0,
            unmatched_samples: 0,
            labels: Vec::new(),
            // Headroom for the one series that may cross the limit before it is noticed.
            max_label_bytes: max_label_bytes.min(u32::MAX as usize / 2),
            samples: Vec::new(),
        }
    }

    /// The canonical label bytes of an entry (see [`Labels`]).
    pub fn canonical_labels(&self, entry: &KeptSeries) -> &[u8] {
        &self.labels[entry.labels.start as usize..entry.labels.end as usize]
    }

    pub fn labels(&self, entry: &KeptSeries) -> Labels {
        Labels::from_canonical(self.canonical_labels(entry))
    }

    pub fn samples(&self, entry: &KeptSeries) -> &[Sample] {
        &self.samples[entry.samples.start as usize..entry.samples.end as usize]
    }

    /// Copies a series' labels (sorted, UTF-8 checked) and samples in; returns the label
    /// range and hash.
    fn push_series(
        &mut self,
        series: &SeriesView<'_, '_>,
        seed: u64,
    ) -> Result<(Range<u32>, u64), IngestError> {
        let start = self.labels.len();
        let invalid = || IngestError::InvalidUtf8 {
            series: series.index,
        };
        // Label text is nearly always ASCII, which a word-at-a-time check confirms faster
        // than full UTF-8 validation.
        let utf8 = |bytes: &[u8]| bytes.is_ascii() || std::str::from_utf8(bytes).is_ok();
        let mut push = |label: &crate::ingest::Label<'_>| -> Result<(), IngestError> {
            if !(utf8(label.name) && utf8(label.value)) {
                return Err(invalid());
            }
            push_pair(&mut self.labels, label.name, label.value);
            Ok(())
        };
        if series.sorted {
            series.labels.iter().try_for_each(&mut push)?;
        } else {
            let mut order: Vec<_> = series.labels.iter().collect();
            order.sort_unstable_by_key(|l| l.name);
            order.into_iter().try_for_each(&mut push)?;
        }
        if self.labels.len() > self.max_label_bytes
            || self.samples.len() + series.samples.len() > u32::MAX as usize
        {
            return Err(IngestError::KeptLabelsTooLarge {
                limit: self.max_label_bytes,
            });
        }
        let hash = xxh3_64_with_seed(&self.labels[start..], seed);
        self.samples.extend_from_slice(series.samples);
        Ok((start as u32..self.labels.len() as u32, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Label;

    fn selector(promql: &str) -> Selector {
        match promql_parser::parser::parse(promql).unwrap() {
            promql_parser::parser::Expr::VectorSelector(s) => Selector::from_promql(&s),
            other => panic!("not a selector: {other:?}"),
        }
    }

    fn route(router: &Router, labels: &[(&str, &str)]) -> Batch {
        let labels: Vec<Label<'_>> = labels
            .iter()
            .map(|(n, v)| Label {
                name: n.as_bytes(),
                value: v.as_bytes(),
            })
            .collect();
        let metric_name = labels
            .iter()
            .find(|l| l.name == b"__name__")
            .map_or(&b""[..], |l| l.value);
        let series = SeriesView {
            index: 0,
            metric_name,
            sorted: labels.windows(2).all(|w| w[0].name < w[1].name),
            labels: &labels,
            samples: &[Sample {
                timestamp_ms: 1,
                value: 1.0,
            }],
            histograms: 0,
            exemplars: 0,
        };
        let mut batch = Batch::new(Instant::now(), i64::MAX, 1 << 20);
        router.route(&series, &mut batch).unwrap();
        batch
    }

    fn inputs(batch: &Batch) -> Vec<u32> {
        batch.entries.iter().map(|e| e.input.0).collect()
    }

    #[test]
    fn an_or_selector_keeps_its_metric_name_in_every_group() {
        let router = Router::new([(InputId(0), selector(r#"mem{ns="a" or ns="b"}"#))], 1);
        assert_eq!(
            inputs(&route(&router, &[("__name__", "mem"), ("ns", "b")])),
            [0]
        );
        assert!(inputs(&route(&router, &[("__name__", "other"), ("ns", "b")])).is_empty());
        assert!(inputs(&route(&router, &[("__name__", "mem"), ("ns", "c")])).is_empty());
    }

    #[test]
    fn matchers_follow_promql_semantics() {
        let router = Router::new(
            [
                (InputId(0), selector(r#"up{job="api"}"#)),
                (InputId(1), selector(r#"up{job=~"a.*", zone=""}"#)),
                (InputId(2), selector(r#"up{job!~"api|web"}"#)),
                (InputId(3), selector(r#"{__name__=~"up|down", job!="x"}"#)),
            ],
            1,
        );
        // One copy of the series, an entry per matching input.
        let batch = route(&router, &[("__name__", "up"), ("job", "api")]);
        assert_eq!(inputs(&batch), [0, 1, 3]);
        assert_eq!(batch.kept_samples, 1);
        assert_eq!(batch.labels.iter().filter(|&&b| b == 0xFF).count(), 4);
        // A missing label matches ""; a present one does not.
        assert_eq!(
            inputs(&route(
                &router,
                &[("__name__", "up"), ("job", "ab"), ("zone", "z")]
            )),
            [2, 3]
        );
        assert!(inputs(&route(&router, &[("__name__", "node"), ("job", "x")])).is_empty());
    }

    #[test]
    fn unsorted_labels_are_kept_sorted_and_hash_like_sorted_ones() {
        let router = Router::new([(InputId(0), selector("up"))], 9);
        let sorted = route(&router, &[("__name__", "up"), ("a", "1"), ("b", "2")]);
        let unsorted = route(&router, &[("b", "2"), ("__name__", "up"), ("a", "1")]);
        let (s, u) = (&sorted.entries[0], &unsorted.entries[0]);
        assert_eq!(s.hash, u.hash);
        assert_eq!(sorted.canonical_labels(s), unsorted.canonical_labels(u));
    }

    #[test]
    fn a_batch_refuses_more_label_bytes_than_its_limit() {
        let router = Router::new([(InputId(0), selector("up"))], 1);
        let labels = [Label {
            name: b"__name__",
            value: b"up",
        }];
        let series = SeriesView {
            index: 0,
            metric_name: b"up",
            labels: &labels,
            sorted: true,
            samples: &[Sample {
                timestamp_ms: 1,
                value: 1.0,
            }],
            histograms: 0,
            exemplars: 0,
        };
        // `__name__ 0xFF up 0xFF` is 12 bytes: two series fit in 30, a third does not.
        let mut batch = Batch::new(Instant::now(), i64::MAX, 30);
        router.route(&series, &mut batch).unwrap();
        router.route(&series, &mut batch).unwrap();
        assert_eq!(
            router.route(&series, &mut batch),
            Err(IngestError::KeptLabelsTooLarge { limit: 30 })
        );
    }
}
