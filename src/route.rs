//! Route: the compiled rule set's index, from metric name to the rule inputs that need the
//! series, with their label matchers. For each decoded series the router either drops it
//! (counting its samples as unmatched) before anything is allocated for it, or copies it
//! once into a [`Batch`] bound for the evaluator. The router is immutable; a new rule set
//! builds a new one, swapped in whole.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use promql_parser::label::{MatchOp, Matcher};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::ingest::{IngestError, Sample, SeriesView};
use crate::labels::{LabelNames, Labels, PrehashedMap, push_label};

/// Identifies one distinct selector that rules need (every rule input with that selector
/// reads its series), as an index into the evaluator's table of windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SelectorId(pub u32);

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
}

/// One distinct matcher of a [`RouteSet`].
struct SetMatcher {
    /// `__name__`: the decoder already found its value, no need to search the labels.
    reads_metric_name: bool,
    /// For a regular expression that is an alternation of plain strings (`a|b|c`, the
    /// common case), those strings: a value matches when it equals one, as Prometheus's
    /// own matcher also decides without running the expression.
    literals: Option<Vec<Box<[u8]>>>,
    /// Where the label was in the last series that had it. Series of one metric family
    /// carry the same label names, so it is nearly always there again, and one compare
    /// replaces a walk over the labels. Only a hint: handlers racing on it cost a walk.
    position: AtomicUsize,
    matcher: Matcher,
}

impl SetMatcher {
    /// Whether a decoded series matches, the labels in `hidden` read as absent (they are
    /// not kept). Equality matchers compare bytes; only regular expressions need the
    /// value as `str`, so only they check UTF-8.
    fn matches(
        &self,
        series: &SeriesView<'_, '_>,
        hidden: Option<&LabelNames>,
    ) -> Result<bool, IngestError> {
        let value = if self.reads_metric_name {
            series.metric_name
        } else if hidden.is_some_and(|h| h.contains(self.matcher.name.as_bytes())) {
            b""
        } else {
            self.label_value(series)
        };
        Ok(match &self.matcher.op {
            MatchOp::Equal => value == self.matcher.value.as_bytes(),
            MatchOp::NotEqual => value != self.matcher.value.as_bytes(),
            MatchOp::Re(_) | MatchOp::NotRe(_)
                if let Some(literals) = &self.literals
                    // Other text goes the general way, which also refuses invalid UTF-8.
                    && value.is_ascii() =>
            {
                literals.iter().any(|l| **l == *value) == matches!(self.matcher.op, MatchOp::Re(_))
            }
            MatchOp::Re(_) | MatchOp::NotRe(_) => {
                let value = std::str::from_utf8(value).map_err(|_| IngestError::InvalidUtf8 {
                    series: series.index,
                })?;
                self.matcher.is_match(value)
            }
        })
    }
}

/// The strings a regular-expression matcher's pattern alternates between, when it is
/// nothing more than that (`search|default`; anchored, as PromQL anchors every pattern).
fn literal_alternatives(matcher: &Matcher) -> Option<Vec<Box<[u8]>>> {
    if !matches!(matcher.op, MatchOp::Re(_) | MatchOp::NotRe(_)) {
        return None;
    }
    // Characters that mean themselves anywhere in a pattern.
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-:/,=@% ".contains(c);
    matcher
        .value
        .split('|')
        .map(|alt| alt.chars().all(plain).then(|| alt.as_bytes().into()))
        .collect()
}

impl SetMatcher {
    /// The value of the matcher's label; a missing label matches as the empty string, as
    /// in PromQL.
    #[inline]
    fn label_value<'a>(&self, series: &SeriesView<'_, 'a>) -> &'a [u8] {
        let name = self.matcher.name.as_bytes();
        let labels = series.labels;
        if let Some(label) = labels.get(self.position.load(Ordering::Relaxed))
            && label.name == name
        {
            return label.value;
        }
        // Names of one length nearly always differ in their first byte (`container` and
        // `namespace`): deciding on it keeps the memcmp call for the label actually wanted.
        let found = labels.iter().position(|l| {
            l.name.len() == name.len() && l.name.first() == name.first() && l.name == name
        });
        match found {
            Some(index) => {
                self.position.store(index, Ordering::Relaxed);
                labels[index].value
            }
            None => b"",
        }
    }
}

/// One input's selector, as indices into its set's distinct matchers: a series matches
/// when every matcher of at least one group does.
struct Route {
    input: SelectorId,
    groups: Vec<Vec<u32>>,
}

/// Routes checked together against a series (those of one metric name, or those without
/// one), with their matchers deduplicated. Rule sets repeat matchers: a hundred rules over
/// twenty metric families share a few `namespace="…"` and `container!=""`, so each
/// distinct matcher is checked at most once per series instead of once per input.
#[derive(Default)]
struct RouteSet {
    matchers: Vec<SetMatcher>,
    /// Each distinct matcher's index in `matchers`, by its printed form (which names the
    /// label, the operator and the value or pattern): found in constant time, so a rule
    /// set with thousands of `or` alternatives builds in linear time.
    by_text: HashMap<String, u32>,
    routes: Vec<Route>,
}

impl RouteSet {
    /// Adds an input. `known_name`, for a set of one metric name, is that name: its
    /// equality matcher holds for every series the set is checked against, so it is left
    /// out.
    fn push(&mut self, input: SelectorId, selector: Selector, known_name: Option<&[u8]>) {
        let groups = selector
            .groups
            .into_iter()
            .map(|group| {
                group
                    .into_iter()
                    .filter(|m| {
                        !(m.name == "__name__"
                            && m.op == MatchOp::Equal
                            && Some(m.value.as_bytes()) == known_name)
                    })
                    .map(|m| self.matcher_index(m))
                    .collect()
            })
            .collect();
        self.routes.push(Route { input, groups });
    }

    fn matcher_index(&mut self, matcher: Matcher) -> u32 {
        let text = matcher.to_string();
        if let Some(&index) = self.by_text.get(&text) {
            return index;
        }
        // A set's matchers come from rules, each bounded in size when compiled: far
        // fewer than 2^32.
        let index = u32::try_from(self.matchers.len()).unwrap_or(u32::MAX);
        self.matchers.push(SetMatcher {
            reads_metric_name: matcher.name == "__name__",
            literals: literal_alternatives(&matcher),
            position: AtomicUsize::new(0),
            matcher,
        });
        self.by_text.insert(text, index);
        index
    }

    /// Calls `selected` with every input whose selector matches, in the order added.
    /// Matchers are checked lazily in selector order, as a plain walk would check them, so
    /// an invalid value fails the series exactly when that walk would reach it.
    #[inline]
    fn select(
        &self,
        series: &SeriesView<'_, '_>,
        hidden: Option<&LabelNames>,
        mut selected: impl FnMut(SelectorId) -> Result<(), IngestError>,
    ) -> Result<(), IngestError> {
        // Results of the first 64 matchers, remembered for the routes that share them;
        // any further ones (not seen in practice) are checked each time.
        let (mut known, mut matched) = (0u64, 0u64);
        let mut check = |index: u32| -> Result<bool, IngestError> {
            let bit = 1u64.checked_shl(index).unwrap_or(0);
            if known & bit != 0 {
                return Ok(matched & bit != 0);
            }
            let result = self.matchers[index as usize].matches(series, hidden)?;
            known |= bit;
            if result {
                matched |= bit;
            }
            Ok(result)
        };
        for route in &self.routes {
            let mut any = false;
            for group in &route.groups {
                let mut all = true;
                for &index in group {
                    if !check(index)? {
                        all = false;
                        break;
                    }
                }
                if all {
                    any = true;
                    break;
                }
            }
            if any {
                selected(route.input)?;
            }
        }
        Ok(())
    }
}

/// The routes of one metric name.
struct NamedRoutes {
    name: Box<[u8]>,
    routes: RouteSet,
}

/// The index the hot path consults for every series of every request.
pub struct Router {
    /// By the seeded hash of the metric name; a bucket holds more than one name only on
    /// a hash collision.
    by_name: PrehashedMap<Vec<NamedRoutes>>,
    /// Selectors without a fixed metric name (`{job="x"}`, `{__name__=~"a|b"}`): checked
    /// against every series, so they cost throughput; rare in practice.
    unnamed: RouteSet,
    seed: u64,
    /// Which rule set this index was built for; the evaluator refuses a batch routed
    /// under another (its selector ids mean other windows there).
    generation: u64,
}

impl Router {
    /// Builds the index for the given inputs. The seed keys the series hash, so that a
    /// sender cannot aim label sets at one hash bucket.
    pub fn new(inputs: impl IntoIterator<Item = (SelectorId, Selector)>, seed: u64) -> Self {
        let mut by_name: PrehashedMap<Vec<NamedRoutes>> = PrehashedMap::default();
        let mut unnamed = RouteSet::default();
        for (input, selector) in inputs {
            let Some(name) = selector.metric_name().map(|n| n.as_bytes().to_vec()) else {
                unnamed.push(input, selector, None);
                continue;
            };
            let bucket = by_name.entry(xxh3_64_with_seed(&name, seed)).or_default();
            let named = match bucket.iter().position(|n| *n.name == *name) {
                Some(index) => &mut bucket[index],
                None => {
                    bucket.push(NamedRoutes {
                        name: name.clone().into(),
                        routes: RouteSet::default(),
                    });
                    bucket.last_mut().expect("just pushed")
                }
            };
            named.routes.push(input, selector, Some(&name));
        }
        Self {
            by_name,
            unnamed,
            seed,
            generation: 0,
        }
    }

    /// The same index, marked as built for rule set `generation`.
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The rule set this index was built for.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A router that keeps nothing.
    pub fn empty() -> Self {
        Self::new([], 0)
    }

    /// Whether any rule needs any series at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.unnamed.routes.is_empty()
    }

    /// Decides the fate of one validated series: dropped and counted, or copied into
    /// `batch` once, with an entry for every input whose selector matches.
    #[inline]
    pub fn route(&self, series: &SeriesView<'_, '_>, batch: &mut Batch) -> Result<(), IngestError> {
        self.route_stripped(series, None, batch)
    }

    /// [`Self::route`], leaving the labels named in `strip` out of the kept copy (an HA
    /// pair's replica label: both replicas' series are then one series). Selectors see
    /// the series as kept: a stripped label matches as absent, as in Cortex, where it is
    /// never stored.
    #[inline]
    pub fn route_stripped(
        &self,
        series: &SeriesView<'_, '_>,
        strip: Option<&LabelNames>,
        batch: &mut Batch,
    ) -> Result<(), IngestError> {
        batch.generation = self.generation;
        if series.samples.is_empty() {
            // Histogram- or exemplar-only series: nothing a rule evaluates.
            return Ok(());
        }
        let named = self
            .by_name
            .get(&xxh3_64_with_seed(series.metric_name, self.seed))
            .and_then(|bucket| bucket.iter().find(|n| *n.name == *series.metric_name))
            .map(|n| &n.routes);
        if named.is_none() && self.unnamed.routes.is_empty() {
            batch.unmatched_samples += series.samples.len();
            return Ok(());
        }
        // The series is copied in at its first matching input; the others share the copy.
        let mut kept: Option<(Range<u32>, u64)> = None;
        let mut keep = |input: SelectorId| -> Result<(), IngestError> {
            let (labels, hash) = match &kept {
                Some(k) => k.clone(),
                None => kept
                    .insert(batch.push_series(series, self.seed, strip)?)
                    .clone(),
            };
            let first = batch.samples.len() as u32 - series.samples.len() as u32;
            batch.entries.push(KeptSeries {
                input,
                hash,
                labels,
                samples: first..batch.samples.len() as u32,
            });
            Ok(())
        };
        if let Some(named) = named {
            named.select(series, strip, &mut keep)?;
        }
        self.unnamed.select(series, strip, &mut keep)?;
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
    pub input: SelectorId,
    /// Seeded hash of the canonical labels.
    pub hash: u64,
    labels: Range<u32>,
    samples: Range<u32>,
}

impl KeptSeries {
    /// The kept series within its batch: the entries of one series (one per input that
    /// selected it) share it and are adjacent.
    pub fn series(&self) -> u32 {
        self.labels.start
    }
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
    /// The rule set the batch was routed under (see [`Router::generation`]).
    pub generation: u64,
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
            generation: 0,
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

    /// Copies a series' labels (sorted, UTF-8 checked, without those named in `strip` and
    /// those with an empty value) and samples in; returns the label range and hash.
    fn push_series(
        &mut self,
        series: &SeriesView<'_, '_>,
        seed: u64,
        strip: Option<&LabelNames>,
    ) -> Result<(Range<u32>, u64), IngestError> {
        let start = self.labels.len();
        // Prometheus writes sorted labels as one run that is already the canonical form;
        // ASCII throughout (framing included, as its lengths are under 128), it is valid
        // UTF-8 too, and one copy keeps it (the decoder ends the run before an empty
        // value, so a run never holds one).
        let encoded = series.encoded_labels;
        if !(series.sorted
            && !encoded.is_empty()
            && encoded.is_ascii()
            && self.copy_run(encoded, series, strip))
        {
            self.labels.truncate(start);
            self.push_labels(series, strip)?;
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

    /// Copies a run of encoded labels, leaving out the entries of the labels in `strip`
    /// (so a replica's series keeps the one-copy path too). Each entry of a run has
    /// one-byte lengths, `0a len 0a n name 12 v value`: 6 bytes plus its name and value,
    /// in the order of `series.labels`. Returns false, having copied part of it at most,
    /// if the run is not that (the caller then writes the labels one by one).
    #[inline]
    fn copy_run(
        &mut self,
        encoded: &[u8],
        series: &SeriesView<'_, '_>,
        strip: Option<&LabelNames>,
    ) -> bool {
        let Some(strip) = strip else {
            self.labels.extend_from_slice(encoded);
            return true;
        };
        let (mut at, mut from) = (0, 0);
        for label in series.labels {
            let len = 6 + label.name.len() + label.value.len();
            if strip.contains(label.name) {
                let Some(kept) = encoded.get(from..at) else {
                    return false;
                };
                self.labels.extend_from_slice(kept);
                from = at + len;
            }
            at += len;
        }
        match encoded.get(from..) {
            Some(rest) if at == encoded.len() => {
                self.labels.extend_from_slice(rest);
                true
            }
            _ => false,
        }
    }

    /// Writes a series' labels in canonical form, label by label: sorted, each checked to
    /// be UTF-8, leaving out those named in `strip` and those with an empty value (which
    /// Prometheus takes for no label).
    fn push_labels(
        &mut self,
        series: &SeriesView<'_, '_>,
        strip: Option<&LabelNames>,
    ) -> Result<(), IngestError> {
        let invalid = || IngestError::InvalidUtf8 {
            series: series.index,
        };
        // Label text is nearly always ASCII, which a word-at-a-time check confirms faster
        // than full UTF-8 validation.
        let utf8 = |bytes: &[u8]| bytes.is_ascii() || std::str::from_utf8(bytes).is_ok();
        let mut push = |label: &crate::ingest::Label<'_>| -> Result<(), IngestError> {
            if label.value.is_empty() || strip.is_some_and(|s| s.contains(label.name)) {
                return Ok(());
            }
            if !(utf8(label.name) && utf8(label.value)) {
                return Err(invalid());
            }
            push_label(&mut self.labels, label.name, label.value);
            Ok(())
        };
        if series.sorted {
            series.labels.iter().try_for_each(&mut push)
        } else {
            let mut order: Vec<_> = series.labels.iter().collect();
            order.sort_unstable_by_key(|l| l.name);
            order.into_iter().try_for_each(&mut push)
        }
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

    /// Series `index` of a request, with one sample, as decode hands it to the router.
    fn view<'s, 'a>(index: usize, labels: &'s [Label<'a>]) -> SeriesView<'s, 'a> {
        const ONE_SAMPLE: &[Sample] = &[Sample {
            timestamp_ms: 1,
            value: 1.0,
        }];
        SeriesView {
            index,
            metric_name: labels
                .iter()
                .find(|l| l.name == b"__name__")
                .map_or(&b""[..], |l| l.value),
            sorted: labels.windows(2).all(|w| w[0].name < w[1].name),
            encoded_labels: &[],
            labels,
            samples: ONE_SAMPLE,
            histograms: 0,
            exemplars: 0,
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
        let mut batch = Batch::new(Instant::now(), i64::MAX, 1 << 20);
        router.route(&view(0, &labels), &mut batch).unwrap();
        batch
    }

    fn inputs(batch: &Batch) -> Vec<u32> {
        batch.entries.iter().map(|e| e.input.0).collect()
    }

    #[test]
    fn an_or_selector_keeps_its_metric_name_in_every_group() {
        let router = Router::new([(SelectorId(0), selector(r#"mem{ns="a" or ns="b"}"#))], 1);
        assert_eq!(
            inputs(&route(&router, &[("__name__", "mem"), ("ns", "b")])),
            [0]
        );
        assert!(inputs(&route(&router, &[("__name__", "other"), ("ns", "b")])).is_empty());
        assert!(inputs(&route(&router, &[("__name__", "mem"), ("ns", "c")])).is_empty());
    }

    /// Alternations of plain strings are decided by comparing bytes; every answer is the
    /// regular expression's.
    #[test]
    fn literal_alternations_match_as_their_regex_does() {
        let values = [
            "search",
            "default",
            "",
            "a",
            "api",
            "searc",
            "searchx",
            "b",
            "x-y",
            "z_1",
            "caf\u{e9}",
            "a|b",
        ];
        for pattern in [
            "search|default",
            "a|",
            "api",
            "x-y|z_1",
            "a.*|b",
            "a\\|b",
            "(?i)api",
        ] {
            for op in ["=~", "!~"] {
                let parsed = selector(&format!("up{{job{op}{pattern:?}}}"));
                let matcher = parsed.groups[0]
                    .iter()
                    .find(|m| m.name == "job")
                    .unwrap()
                    .clone();
                let set = SetMatcher {
                    reads_metric_name: false,
                    literals: literal_alternatives(&matcher),
                    position: AtomicUsize::new(0),
                    matcher: matcher.clone(),
                };
                let plain = !pattern.contains(['.', '*', '\\', '(']);
                assert_eq!(set.literals.is_some(), plain, "{pattern}");
                for value in values {
                    let labels = [Label {
                        name: b"job",
                        value: value.as_bytes(),
                    }];
                    assert_eq!(
                        set.matches(&view(0, &labels), None),
                        Ok(matcher.is_match(value)),
                        "{pattern} {value}"
                    );
                }
            }
        }
    }

    /// A label is looked for where the previous series had it first; a series with another
    /// layout, or without the label, is still judged by its own labels.
    #[test]
    fn a_label_found_elsewhere_or_missing_is_still_found_or_missed() {
        let router = Router::new([(SelectorId(0), selector(r#"up{ns="a"}"#))], 1);
        let kept = |labels: &[(&str, &str)]| route(&router, labels).kept_samples == 1;
        assert!(kept(&[("__name__", "up"), ("ns", "a")]));
        assert!(kept(&[("__name__", "up"), ("job", "j"), ("ns", "a")]));
        assert!(!kept(&[("__name__", "up"), ("job", "ns")]));
        assert!(!kept(&[("__name__", "up"), ("ns", "b")]));
        assert!(!kept(&[("__name__", "up")]));
        assert!(kept(&[
            ("__name__", "up"),
            ("a", "1"),
            ("b", "2"),
            ("ns", "a")
        ]));
        assert!(kept(&[("__name__", "up"), ("ns", "a")]));
    }

    #[test]
    fn matchers_follow_promql_semantics() {
        let router = Router::new(
            [
                (SelectorId(0), selector(r#"up{job="api"}"#)),
                (SelectorId(1), selector(r#"up{job=~"a.*", zone=""}"#)),
                (SelectorId(2), selector(r#"up{job!~"api|web"}"#)),
                (
                    SelectorId(3),
                    selector(r#"{__name__=~"up|down", job!="x"}"#),
                ),
            ],
            1,
        );
        // One copy of the series, an entry per matching input.
        let batch = route(&router, &[("__name__", "up"), ("job", "api")]);
        assert_eq!(inputs(&batch), [0, 1, 3]);
        assert_eq!(batch.kept_samples, 1);
        assert_eq!(
            batch.labels,
            Labels::from_pairs([("__name__", "up"), ("job", "api")]).as_canonical()
        );
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
    fn inputs_sharing_matchers_each_get_their_own_answer() {
        let router = Router::new(
            [
                (SelectorId(0), selector(r#"up{ns="a"}"#)),
                (SelectorId(1), selector(r#"up{ns="a", pod!=""}"#)),
                (SelectorId(2), selector(r#"up{ns="b"}"#)),
                (SelectorId(3), selector(r#"up{ns="a"}"#)),
                (SelectorId(4), selector(r#"up{pod!="", ns=~"a|b"}"#)),
            ],
            1,
        );
        let both = [("__name__", "up"), ("ns", "a"), ("pod", "p")];
        assert_eq!(inputs(&route(&router, &both)), [0, 1, 3, 4]);
        let no_pod = [("__name__", "up"), ("ns", "a")];
        assert_eq!(inputs(&route(&router, &no_pod)), [0, 3]);
        let b = [("__name__", "up"), ("ns", "b"), ("pod", "p")];
        assert_eq!(inputs(&route(&router, &b)), [2, 4]);
    }

    #[test]
    fn an_invalid_value_fails_a_series_only_where_a_regex_reads_it() {
        let router = Router::new(
            [
                (SelectorId(0), selector(r#"up{job="x", zone=~"a.*"}"#)),
                (SelectorId(1), selector(r#"up{job="x"}"#)),
            ],
            1,
        );
        let series = |job: &'static [u8]| {
            [
                Label {
                    name: b"__name__",
                    value: b"up",
                },
                Label {
                    name: b"job",
                    value: job,
                },
                Label {
                    name: b"zone",
                    value: b"\xff",
                },
            ]
        };
        let mut batch = Batch::new(Instant::now(), i64::MAX, 1 << 20);
        // `job` fails first: the regex never reads the zone.
        let (other_job, job) = (series(b"y"), series(b"x"));
        router.route(&view(3, &other_job), &mut batch).unwrap();
        assert_eq!((batch.entries.len(), batch.unmatched_samples), (0, 1));
        assert_eq!(
            router.route(&view(3, &job), &mut batch),
            Err(IngestError::InvalidUtf8 { series: 3 })
        );
    }

    #[test]
    fn unsorted_labels_are_kept_sorted_and_hash_like_sorted_ones() {
        let router = Router::new([(SelectorId(0), selector("up"))], 9);
        let sorted = route(&router, &[("__name__", "up"), ("a", "1"), ("b", "2")]);
        let unsorted = route(&router, &[("b", "2"), ("__name__", "up"), ("a", "1")]);
        let (s, u) = (&sorted.entries[0], &unsorted.entries[0]);
        assert_eq!(s.hash, u.hash);
        assert_eq!(sorted.canonical_labels(s), unsorted.canonical_labels(u));
    }

    /// Series as Prometheus encodes them are kept by copying their label bytes; the result
    /// is the canonical form the label-by-label path writes, whatever the sender did.
    #[test]
    fn label_bytes_copied_as_sent_are_the_canonical_form() {
        use crate::proto::v1::{Label as WireLabel, Sample as WireSample, TimeSeries};
        let router = Router::new([(SelectorId(0), selector("up"))], 1);
        let series = |pairs: &[(&str, &str)]| TimeSeries {
            labels: pairs
                .iter()
                .map(|(n, v)| WireLabel {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            samples: vec![WireSample {
                value: 1.0,
                timestamp: 1,
            }],
            ..Default::default()
        };
        let long = "x".repeat(200);
        let cases: [&[(&str, &str)]; 5] = [
            // One run, sorted: copied.
            &[("__name__", "up"), ("job", "api"), ("pod", "p-1")],
            // Unsorted, non-ASCII, an empty value prost leaves out, a long value: rebuilt.
            &[("job", "api"), ("__name__", "up")],
            &[("__name__", "up"), ("job", "caf\u{e9}")],
            &[("__name__", "up"), ("a", ""), ("job", "api")],
            &[("__name__", "up"), ("job", &long)],
        ];
        for pairs in cases {
            let body = prost::Message::encode_to_vec(&crate::proto::v1::WriteRequest {
                timeseries: vec![series(pairs)],
                ..Default::default()
            });
            let batch = routed(&router, &body, None);
            // A label with an empty value is no label.
            let want = Labels::from_pairs(pairs.iter().copied().filter(|(_, v)| !v.is_empty()));
            let entry = &batch.entries[0];
            assert_eq!(
                batch.canonical_labels(entry),
                want.as_canonical(),
                "{pairs:?}"
            );
            assert_eq!(entry.hash, want.hash_with_seed(1));
        }
    }

    /// Decodes a 1.0 body and routes its series with `strip` into a new batch.
    fn routed(router: &Router, body: &[u8], strip: Option<&LabelNames>) -> Batch {
        let mut batch = Batch::new(Instant::now(), i64::MAX, 1 << 20);
        crate::ingest::decode(
            crate::ingest::Protocol::V1,
            body,
            &crate::ingest::Limits::default(),
            i64::MAX / 2,
            |s| router.route_stripped(s, strip, &mut batch),
        )
        .unwrap();
        batch
    }

    /// The labels [`routed`] keeps.
    fn kept_labels(router: &Router, body: &[u8], strip: Option<&LabelNames>) -> Vec<Labels> {
        let batch = routed(router, body, strip);
        batch.entries.iter().map(|e| batch.labels(e)).collect()
    }

    /// `0a len (0a n name 12 v value)` for each pair, one-byte lengths, values written
    /// even when empty: prost (like Prometheus's Go encoder) leaves an empty value out, and
    /// this is the form another sender may write.
    fn series_bytes(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut series = Vec::new();
        for (name, value) in pairs {
            series.extend_from_slice(&[0x0a, (4 + name.len() + value.len()) as u8, 0x0a]);
            series.push(name.len() as u8);
            series.extend_from_slice(name.as_bytes());
            series.extend_from_slice(&[0x12, value.len() as u8]);
            series.extend_from_slice(value.as_bytes());
        }
        // One sample: value 1.0 (fixed64), timestamp 1.
        series.extend_from_slice(&[0x12, 0x0b, 0x09]);
        series.extend_from_slice(&1f64.to_le_bytes());
        series.extend_from_slice(&[0x10, 0x01]);
        let mut body = vec![0x0a, series.len() as u8];
        body.extend_from_slice(&series);
        body
    }

    /// Prometheus takes a label with an empty value for no label: a series sent with
    /// `shard=""` is kept as the series sent without it, whichever way it was encoded.
    #[test]
    fn a_label_with_an_empty_value_is_no_label() {
        let router = Router::new([(SelectorId(0), selector("up"))], 1);
        let want = Labels::from_pairs([("__name__", "up"), ("job", "api")]);
        for pairs in [
            &[("__name__", "up"), ("job", "api")][..],
            &[("__name__", "up"), ("job", "api"), ("shard", "")],
            &[("__name__", "up"), ("a", ""), ("job", "api")],
            &[("job", "api"), ("shard", ""), ("__name__", "up")],
        ] {
            let kept = kept_labels(&router, &series_bytes(pairs), None);
            assert_eq!(kept, std::slice::from_ref(&want), "{pairs:?}");
            assert_eq!(kept[0].hash_with_seed(1), want.hash_with_seed(1));
        }
    }

    /// An HA replica's series is kept without its replica label, on the one-copy path
    /// (sorted, as Prometheus sends) and on the label-by-label one, with the same hash.
    #[test]
    fn stripped_labels_are_left_out_of_the_kept_copy() {
        let router = Router::new([(SelectorId(0), selector(r#"up{__replica__=""}"#))], 1);
        let strip = LabelNames::new(["__replica__", "prometheus_replica"]);
        let want = Labels::from_pairs([("__name__", "up"), ("cluster", "eu"), ("job", "api")]);
        for pairs in [
            &[
                ("__name__", "up"),
                ("__replica__", "b"),
                ("cluster", "eu"),
                ("job", "api"),
            ][..],
            &[
                ("job", "api"),
                ("__replica__", "b"),
                ("__name__", "up"),
                ("cluster", "eu"),
            ],
            &[
                ("__name__", "up"),
                ("__replica__", "b"),
                ("cluster", "eu"),
                ("job", "api"),
                ("prometheus_replica", "p-1"),
            ],
        ] {
            let kept = kept_labels(&router, &series_bytes(pairs), Some(&strip));
            // `__replica__=""` selects it: matchers see the series as kept.
            assert_eq!(kept, std::slice::from_ref(&want), "{pairs:?}");
            assert_eq!(kept[0].hash_with_seed(1), want.hash_with_seed(1));
        }
    }

    #[test]
    fn a_stripped_label_is_not_there_for_selectors() {
        let router = Router::new(
            [
                (SelectorId(0), selector(r#"up{__replica__="b"}"#)),
                (SelectorId(1), selector(r#"up{__replica__!="b"}"#)),
            ],
            1,
        );
        let strip = LabelNames::new(["__replica__"]);
        let body = series_bytes(&[("__name__", "up"), ("__replica__", "b")]);
        assert_eq!(inputs(&routed(&router, &body, Some(&strip))), [1]);
    }

    #[test]
    fn a_batch_refuses_more_label_bytes_than_its_limit() {
        let router = Router::new([(SelectorId(0), selector("up"))], 1);
        let labels = [Label {
            name: b"__name__",
            value: b"up",
        }];
        let series = view(0, &labels);
        // `0a 0e 0a 08 __name__ 12 02 up` is 16 bytes: two series fit in 40, a third does
        // not.
        let mut batch = Batch::new(Instant::now(), i64::MAX, 40);
        router.route(&series, &mut batch).unwrap();
        router.route(&series, &mut batch).unwrap();
        assert_eq!(
            router.route(&series, &mut batch),
            Err(IngestError::KeptLabelsTooLarge { limit: 40 })
        );
    }
}
