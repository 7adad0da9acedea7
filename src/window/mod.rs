//! Windows: per (selector, series) time windows of samples, in event time. A window keeps
//! what the rule inputs reading that selector need and no more (its retention), a set of
//! windows is bounded by the per-rule series limit, and series that stop reporting are
//! evicted once the selector's event clock has moved past them. Time is always passed in as sample timestamps; nothing here
//! reads a clock. The windows also say how far their series have surely arrived (the
//! watermark a step settles on) and keep what a step not yet settled needs (the hold).
//!
//! Windows can be exported and imported (as [`SeriesExport`]s) so that they survive a
//! restart; `crate::state` writes them to disk.

mod series;

pub use series::{Insert, SeriesWindow};

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::ingest::Sample;
use crate::labels::{Labels, PrehashedMap};

/// Stable handle of a series within one [`SelectorWindows`]; reused after eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u32);

/// What the windows of one selector keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// How far behind the newest sample of a series its window reaches; 0 keeps only the
    /// newest sample.
    pub retention_ms: i64,
    /// A series without a sample for this long (behind the selector's clock) is evicted.
    pub idle_ms: i64,
    /// The most series tracked; samples of further series are refused and counted.
    pub series_limit: usize,
    /// A series silent for this long behind the clock may be evicted before `idle_ms` to
    /// make room for a new one when the windows are full (series limit or label bytes).
    /// Some inputs keep a silent series for days (a likelihood band's state, an SLO
    /// counter's baseline); at the limit, a rollout's new pods must not wait that long.
    pub reclaim_ms: i64,
    /// The most label bytes (canonical form) the live series may hold together: the
    /// series limit counts series, and one series may carry hundreds of KiB of labels.
    pub label_bytes_limit: usize,
}

/// The default [`WindowSpec::label_bytes_limit`]: 10 000 series of 3.2 KiB of labels
/// each, several times what kube-state-metrics' widest series carry.
pub const LABEL_BYTES_LIMIT: usize = 32 << 20;

/// The series was not admitted: the windows are at their series limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit;

/// One series' window as saved: its labels, its id when saved (for the caller to map
/// per-series detector state onto the id it gets back), and its samples, values bit-exact.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeriesExport {
    pub labels: Labels,
    pub id: u32,
    /// Oldest first.
    #[serde(with = "stored_samples")]
    pub samples: Vec<Sample>,
}

impl PartialEq for SeriesExport {
    /// Values compare by bits, so that NaNs (the staleness marker) equal themselves.
    fn eq(&self, other: &Self) -> bool {
        self.labels == other.labels
            && self.id == other.id
            && self.samples.len() == other.samples.len()
            && self.samples.iter().zip(&other.samples).all(|(a, b)| {
                a.timestamp_ms == b.timestamp_ms && a.value.to_bits() == b.value.to_bits()
            })
    }
}

/// Samples as `[timestamp_ms, value bits]` pairs: compact, and exact for every NaN.
mod stored_samples {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::ingest::Sample;

    #[derive(Serialize, Deserialize)]
    struct Stored(i64, #[serde(with = "crate::state::f64_bits")] f64);

    pub fn serialize<S: Serializer>(samples: &[Sample], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(samples.iter().map(|s| Stored(s.timestamp_ms, s.value)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Sample>, D::Error> {
        let stored = Vec::<Stored>::deserialize(deserializer)?;
        Ok(stored
            .into_iter()
            .map(|Stored(timestamp_ms, value)| Sample {
                timestamp_ms,
                value,
            })
            .collect())
    }
}

/// All windows of one selector, shared by the rule inputs that read it.
pub struct SelectorWindows {
    spec: WindowSpec,
    by_hash: PrehashedMap<SeriesId>,
    /// Series whose hash collided with another's label set; practically always empty.
    collided: HashMap<Labels, SeriesId>,
    slots: Vec<Option<SeriesWindow>>,
    /// The live series in Prometheus's label order, which expressions read them in
    /// (`topk` ties, summation order): kept as series come and go, so that evaluating an
    /// expression every step does not sort them again.
    ordered: Vec<SeriesId>,
    free: Vec<SeriesId>,
    live: usize,
    /// Label bytes of the live series (canonical form), against the spec's limit.
    label_bytes: usize,
    /// Series evicted to make room (see [`WindowSpec::reclaim_ms`]) and not yet reported:
    /// their ids stay out of `free` until [`Self::evict_idle`] hands them to the
    /// detectors, so no per-series state meant for an old series reaches a new one.
    reclaimed: Vec<(SeriesId, Labels)>,
    /// Series that may be reclaimed, oldest last, as found at the first need in a batch
    /// (one scan per batch, not one per refused series).
    reclaimable: Option<Vec<SeriesId>>,
    /// The newest sample timestamp seen for this selector: its event clock.
    clock_ms: i64,
    /// The event clock when the batch being applied began: samples are too old when they
    /// are behind *it*, not behind a clock that the same request moved on. A sender
    /// catching up after an outage sends each series in order over many minutes in one
    /// request; judged against the request's own newest sample, the later series'
    /// samples were refused.
    floor_ms: i64,
    last_sweep_ms: i64,
    /// Samples at or after this time are kept whatever the retention says: a step of an
    /// expression reading these windows that has not settled yet still needs its ranges
    /// back from it (see [`Self::hold`]).
    hold_ms: i64,
    /// The least [`SeriesWindow::complete_through`] of the live series, while `settled`
    /// is true; recomputed only after something changed.
    watermark_ms: i64,
    watermark_fresh: bool,
}

impl SelectorWindows {
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            by_hash: PrehashedMap::default(),
            collided: HashMap::new(),
            slots: Vec::new(),
            ordered: Vec::new(),
            free: Vec::new(),
            live: 0,
            label_bytes: 0,
            reclaimed: Vec::new(),
            reclaimable: None,
            clock_ms: i64::MIN,
            floor_ms: i64::MIN,
            last_sweep_ms: i64::MIN,
            hold_ms: i64::MAX,
            watermark_ms: i64::MAX,
            watermark_fresh: true,
        }
    }

    /// Keeps, from now on, every sample and series that a step at `step_ms` needs:
    /// windows trim behind the older of a sample's time, the receiver's clock and this
    /// step, and series idle behind this step (not the clock) are evicted or refused.
    /// `i64::MIN` keeps everything (a rule that has not placed its first step yet);
    /// `i64::MAX` holds nothing back.
    pub fn hold(&mut self, step_ms: i64) {
        self.hold_ms = step_ms;
    }

    /// The event time up to which every live series has surely or most likely sent all
    /// its samples (the least [`SeriesWindow::complete_through`]); `i64::MAX` when no
    /// series holds anything back. Computed again only after the windows changed.
    pub fn watermark(&mut self) -> i64 {
        if !self.watermark_fresh {
            self.watermark_ms = self
                .iter()
                .map(|(_, w)| w.complete_through())
                .min()
                .unwrap_or(i64::MAX);
            self.watermark_fresh = true;
        }
        self.watermark_ms
    }

    /// A step at `step_ms` settled without these series (its settle delay ran out): the
    /// series behind it are quiet until they send again, so the next steps do not wait
    /// for them too. Returns how many were marked.
    pub fn mark_quiet_behind(&mut self, step_ms: i64) -> usize {
        let mut marked = 0;
        for window in self.slots.iter_mut().flatten() {
            if window.complete_through() < step_ms {
                window.mark_quiet();
                marked += 1;
            }
        }
        if marked > 0 {
            self.watermark_fresh = false;
        }
        marked
    }

    /// Samples that were not stored (their series was over the limit) still move the
    /// event clock, never past `now_ms`: otherwise a rule whose every series was replaced
    /// (a rollout) would never see the old ones go idle, and refuse the new ones forever.
    pub fn advance_clock(&mut self, timestamp_ms: i64, now_ms: i64) {
        self.clock_ms = self.clock_ms.max(timestamp_ms.min(now_ms));
    }

    /// A batch begins: samples of it are judged too old against the clock as it is now.
    pub fn begin_batch(&mut self) {
        self.floor_ms = self.clock_ms;
        self.reclaimable = None;
    }

    pub fn spec(&self) -> WindowSpec {
        self.spec
    }

    /// Number of series tracked.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn clock_ms(&self) -> i64 {
        self.clock_ms
    }

    /// Finds the series with these canonical labels, or admits it if under the limit.
    pub fn get_or_insert(&mut self, hash: u64, canonical: &[u8]) -> Result<SeriesId, OverLimit> {
        match self.find(hash, canonical, None) {
            Some(id) => Ok(id),
            None => self.admit(hash, Labels::from_canonical(canonical), true),
        }
    }

    /// [`Self::get_or_insert`] for a series whose labels the caller holds already, as
    /// another selector's window (of the same series) holds them. A series that selectors admit
    /// from one batch shares one copy of its labels, so it is found again by comparing
    /// pointers, not hundreds of bytes, and is admitted without a copy.
    pub fn get_or_insert_shared(
        &mut self,
        hash: u64,
        labels: &Labels,
    ) -> Result<SeriesId, OverLimit> {
        match self.find(hash, labels.as_canonical(), Some(labels)) {
            Some(id) => Ok(id),
            None => self.admit(hash, labels.clone(), true),
        }
    }

    /// The series with these labels (also given as `shared`, when the caller has them).
    fn find(&self, hash: u64, canonical: &[u8], shared: Option<&Labels>) -> Option<SeriesId> {
        if !self.collided.is_empty()
            && let Some(&id) = self.collided.get(&Labels::from_canonical(canonical))
        {
            return Some(id);
        }
        let id = *self.by_hash.get(&hash)?;
        let held = self.get(id)?.labels();
        (shared.is_some_and(|s| s.shares_bytes_with(held)) || held.as_canonical() == canonical)
            .then_some(id)
    }

    /// Admits a new series if there is room, making room by reclaiming silent series
    /// when `reclaim` allows.
    fn admit(&mut self, hash: u64, labels: Labels, reclaim: bool) -> Result<SeriesId, OverLimit> {
        let bytes = labels.as_canonical().len();
        while self.live >= self.spec.series_limit
            || self.label_bytes.saturating_add(bytes) > self.spec.label_bytes_limit
        {
            // A label set larger than the whole budget would evict everything in vain.
            if !reclaim || bytes > self.spec.label_bytes_limit || !self.reclaim_one() {
                return Err(OverLimit);
            }
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                SeriesId(self.slots.len() as u32 - 1)
            }
        };
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(labels.clone(), id);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
            }
        }
        let at = self.ordered.partition_point(|&other| {
            self.slots[other.0 as usize]
                .as_ref()
                .is_some_and(|w| *w.labels() < labels)
        });
        self.ordered.insert(at, id);
        self.slots[id.0 as usize] = Some(SeriesWindow::new(labels, hash));
        self.live += 1;
        self.label_bytes += bytes;
        Ok(id)
    }

    /// Evicts the series silent longest, if it has been silent for the spec's
    /// `reclaim_ms`; false if none has.
    fn reclaim_one(&mut self) -> bool {
        if self.spec.reclaim_ms > self.spec.idle_ms || self.clock_ms == i64::MIN {
            return false;
        }
        // Behind a pending step, not the clock, as for idle series.
        let deadline = self
            .clock_ms
            .min(self.hold_ms)
            .saturating_sub(self.spec.reclaim_ms);
        let slots = &self.slots;
        let last = |id: SeriesId| {
            slots[id.0 as usize]
                .as_ref()
                .map_or(i64::MAX, SeriesWindow::last_timestamp_ms)
        };
        let candidates = self.reclaimable.get_or_insert_with(|| {
            let mut silent: Vec<SeriesId> = (0..slots.len() as u32)
                .map(SeriesId)
                .filter(|&id| last(id) < deadline)
                .collect();
            silent.sort_by_key(|&id| std::cmp::Reverse(last(id)));
            silent
        });
        // A candidate may have taken a sample since the scan; it is not silent then.
        while let Some(id) = candidates.pop() {
            if last(id) < deadline {
                self.remove(id, true);
                return true;
            }
        }
        false
    }

    /// Takes a live series out of the maps; its id is reused at once (`free`) or once it
    /// has been reported (`reclaimed`).
    fn remove(&mut self, id: SeriesId, reclaimed: bool) -> Option<Labels> {
        let window = self.slots.get_mut(id.0 as usize)?.take()?;
        if self.by_hash.get(&window.hash()) == Some(&id) {
            self.by_hash.remove(&window.hash());
        } else {
            self.collided.remove(window.labels());
        }
        self.live -= 1;
        self.watermark_fresh = false;
        self.label_bytes -= window.labels().as_canonical().len();
        let labels = window.into_labels();
        if reclaimed {
            self.reclaimed.push((id, labels));
            None
        } else {
            self.free.push(id);
            Some(labels)
        }
    }

    pub fn get(&self, id: SeriesId) -> Option<&SeriesWindow> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    /// Whether [`Self::insert`] would refuse `sample` as too old for the event clock
    /// (as it was when the batch began, see [`Self::begin_batch`]), whatever its series.
    ///
    /// A step still pending (see [`Self::hold`]) moves that clock back to it: a sender
    /// catching up through several shards may move the clock minutes on with one
    /// shard's backlog, and the samples of the others must still land.
    pub fn too_old(&self, sample: Sample) -> bool {
        sample.timestamp_ms
            < self
                .floor_ms
                .min(self.hold_ms)
                .saturating_sub(self.spec.idle_ms)
    }

    /// Inserts a sample into a series' window and advances the event clock, which never
    /// passes `now_ms` (the receiver's clock when the sample arrived). A sample already
    /// older than the idle time behind the clock is refused: its series would be evicted
    /// at once.
    pub fn insert(&mut self, id: SeriesId, sample: Sample, now_ms: i64) -> Insert {
        let retention_ms = self.spec.retention_ms;
        if self.too_old(sample) {
            return Insert::TooOld;
        }
        let Some(window) = self.slots.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return Insert::TooOld;
        };
        let outcome = window.insert(sample, retention_ms, now_ms.min(self.hold_ms));
        if outcome == Insert::Appended {
            self.clock_ms = self.clock_ms.max(sample.timestamp_ms.min(now_ms));
            self.watermark_fresh = false;
        }
        outcome
    }

    /// Evicts series idle for longer than the spec allows, behind the event clock. Sweeps
    /// at most once per quarter of the idle time, so the cost stays off the per-sample
    /// path. Returns what was evicted so detectors can drop (and clear) their state.
    /// Series reclaimed to make room since the last call are returned too, and only now
    /// may their ids be reused.
    pub fn evict_idle(&mut self) -> Vec<(SeriesId, Labels)> {
        let mut evicted = std::mem::take(&mut self.reclaimed);
        self.free.extend(evicted.iter().map(|(id, _)| *id));
        let every = (self.spec.idle_ms / 4).max(1_000);
        if self.clock_ms != i64::MIN && self.clock_ms.saturating_sub(self.last_sweep_ms) >= every {
            self.last_sweep_ms = self.clock_ms;
            // Behind a pending step, not the clock: the series it waits for stay.
            let deadline = self
                .clock_ms
                .min(self.hold_ms)
                .saturating_sub(self.spec.idle_ms);
            for index in 0..self.slots.len() {
                let id = SeriesId(index as u32);
                let idle = self
                    .get(id)
                    .is_some_and(|w| w.last_timestamp_ms() < deadline);
                if idle && let Some(labels) = self.remove(id, false) {
                    evicted.push((id, labels));
                }
            }
        }
        if !evicted.is_empty() {
            self.watermark_fresh = false;
            let slots = &self.slots;
            self.ordered.retain(|id| slots[id.0 as usize].is_some());
        }
        evicted
    }

    /// Live series in Prometheus's label order (`labels.Compare`).
    pub fn iter_ordered(&self) -> impl Iterator<Item = (SeriesId, &SeriesWindow)> {
        self.ordered
            .iter()
            .filter_map(|&id| Some((id, self.get(id)?)))
    }

    /// Live series, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SeriesId, &SeriesWindow)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|w| (SeriesId(i as u32), w)))
    }

    /// Every live series with its samples, in slot order, for saving.
    pub fn export(&self) -> Vec<SeriesExport> {
        self.iter()
            .map(|(id, window)| SeriesExport {
                labels: window.labels().clone(),
                id: id.0,
                samples: window.samples().copied().collect(),
            })
            .collect()
    }

    /// Re-admits saved series and returns, for each one admitted, its saved id and the id
    /// it has now: per-series detector state saved under the old id must be moved to the
    /// new one, and anything not in the mapping dropped.
    ///
    /// Admission follows this spec, which may differ from the one the series were
    /// saved under: samples are trimmed to the retention, series are admitted newest first
    /// up to the series limit, and series already idle behind the event clock (the newest
    /// saved sample, never past `now_ms`) are left out, as the next sweep would evict them.
    /// Samples out of order are dropped as [`Self::insert`] would, and a label set given
    /// twice is admitted once, so a tampered file cannot break a window's invariants.
    /// Series already present keep their id and receive the saved samples that fit.
    ///
    /// `seed` must be the seed the router hashes series with (see
    /// [`Labels::hash_with_seed`]): series are found again by that hash.
    pub fn import(
        &mut self,
        mut series: Vec<SeriesExport>,
        seed: u64,
        now_ms: i64,
    ) -> Vec<(u32, SeriesId)> {
        let newest = |s: &SeriesExport| s.samples.last().map_or(i64::MIN, |s| s.timestamp_ms);
        series.retain(|s| !s.samples.is_empty());
        series.sort_by_key(|s| std::cmp::Reverse(newest(s)));
        if let Some(first) = series.first() {
            self.clock_ms = self.clock_ms.max(newest(first).min(now_ms));
            self.floor_ms = self.clock_ms;
        }
        let deadline = self.clock_ms.saturating_sub(self.spec.idle_ms);
        let retention_ms = self.spec.retention_ms;
        let mut admitted = HashSet::new();
        let mut mapping = Vec::new();
        for saved in series {
            if newest(&saved) < deadline {
                // Sorted newest first: every further series is idle too.
                break;
            }
            let canonical = saved.labels.as_canonical();
            // Saved series come newest first: reclaiming would evict a newer one for it.
            let hash = saved.labels.hash_with_seed(seed);
            let found = match self.find(hash, canonical, None) {
                Some(id) => Ok(id),
                None => self.admit(hash, saved.labels.clone(), false),
            };
            let Ok(id) = found else {
                // At the limit; a series already present may still follow.
                continue;
            };
            if !admitted.insert(id) {
                continue;
            }
            if let Some(window) = self.slots.get_mut(id.0 as usize).and_then(Option::as_mut) {
                for &sample in &saved.samples {
                    window.insert(sample, retention_ms, now_ms);
                }
            }
            mapping.push((saved.id, id));
        }
        self.watermark_fresh = false;
        mapping
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limit: usize) -> WindowSpec {
        WindowSpec {
            retention_ms: 60_000,
            idle_ms: 300_000,
            series_limit: limit,
            reclaim_ms: 300_000,
            label_bytes_limit: LABEL_BYTES_LIMIT,
        }
    }

    fn labels(pod: &str) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("pod", pod)])
    }

    #[test]
    fn admits_up_to_the_limit_and_refuses_the_rest() {
        let mut w = SelectorWindows::new(spec(2));
        let a = w.get_or_insert(1, labels("a").as_canonical()).unwrap();
        let b = w.get_or_insert(2, labels("b").as_canonical()).unwrap();
        assert_ne!(a, b);
        assert_eq!(w.get_or_insert(1, labels("a").as_canonical()), Ok(a));
        assert_eq!(
            w.get_or_insert(3, labels("c").as_canonical()),
            Err(OverLimit)
        );
        assert_eq!(w.len(), 2);
    }

    #[test]
    fn a_hash_collision_keeps_both_series_apart() {
        let mut w = SelectorWindows::new(spec(10));
        let a = w.get_or_insert(7, labels("a").as_canonical()).unwrap();
        let b = w.get_or_insert(7, labels("b").as_canonical()).unwrap();
        assert_ne!(a, b);
        assert_eq!(w.get_or_insert(7, labels("b").as_canonical()), Ok(b));
        assert_eq!(w.get(b).unwrap().labels(), &labels("b"));
    }

    #[test]
    fn inputs_admitting_one_series_share_its_labels_and_find_it_by_them() {
        let mut first = SelectorWindows::new(spec(10));
        let id = first.get_or_insert(7, labels("a").as_canonical()).unwrap();
        let held = first.get(id).unwrap().labels().clone();
        let mut second = SelectorWindows::new(spec(10));
        let shared = second.get_or_insert_shared(7, &held).unwrap();
        assert!(
            second
                .get(shared)
                .unwrap()
                .labels()
                .shares_bytes_with(&held)
        );
        assert_eq!(second.get_or_insert_shared(7, &held), Ok(shared));
        // Equal labels in another allocation, or as bytes, are the same series.
        assert_eq!(second.get_or_insert_shared(7, &labels("a")), Ok(shared));
        assert_eq!(
            second.get_or_insert(7, labels("a").as_canonical()),
            Ok(shared)
        );
        // Another series under the same hash is kept apart.
        let other = second.get_or_insert_shared(7, &labels("b")).unwrap();
        assert_ne!(other, shared);
        assert_eq!(second.get_or_insert_shared(7, &labels("b")), Ok(other));
    }

    #[test]
    fn series_are_read_in_label_order_as_they_come_and_go() {
        let mut w = SelectorWindows::new(spec(10));
        let at = |t: i64| Sample {
            timestamp_ms: t,
            value: 1.0,
        };
        // Admitted out of order. Values compare as strings: "a" < "a-b" < "b".
        for (hash, pod) in [(1, "c"), (2, "a-b"), (3, "b"), (4, "a")] {
            let id = w.get_or_insert(hash, labels(pod).as_canonical()).unwrap();
            w.insert(id, at(if pod == "b" { 0 } else { 400_000 }), 400_000);
        }
        let pods = |w: &SelectorWindows| -> Vec<String> {
            w.iter_ordered()
                .map(|(_, s)| s.labels().get("pod").unwrap().to_string())
                .collect()
        };
        assert_eq!(pods(&w), ["a", "a-b", "b", "c"]);
        // "b" fell idle; its slot is reused by "0", which sorts first.
        assert_eq!(w.evict_idle().len(), 1);
        assert_eq!(pods(&w), ["a", "a-b", "c"]);
        w.get_or_insert(5, labels("0").as_canonical()).unwrap();
        assert_eq!(pods(&w), ["0", "a", "a-b", "c"]);
    }

    #[test]
    fn samples_between_is_the_half_open_range_wherever_it_falls() {
        let mut w = SelectorWindows::new(spec(10));
        let id = w.get_or_insert(1, labels("a").as_canonical()).unwrap();
        for t in [10, 20, 20, 30, 40] {
            w.insert(
                id,
                Sample {
                    timestamp_ms: t,
                    value: t as f64,
                },
                40,
            );
        }
        let window = w.get(id).unwrap();
        let between = |after: i64, until: i64| -> Vec<i64> {
            window
                .samples_between(after, until)
                .map(|s| s.timestamp_ms)
                .collect()
        };
        assert_eq!(between(0, 100), [10, 20, 30, 40]);
        assert_eq!(between(10, 30), [20, 30]);
        assert_eq!(between(20, 39), [30]);
        assert_eq!(between(40, 100), Vec::<i64>::new());
        assert_eq!(between(30, 20), Vec::<i64>::new());
        assert_eq!(between(-5, 9), Vec::<i64>::new());
    }

    #[test]
    fn evicts_series_left_behind_by_the_event_clock_and_reuses_their_slots() {
        let mut w = SelectorWindows::new(spec(10));
        let a = w.get_or_insert(1, labels("a").as_canonical()).unwrap();
        let b = w.get_or_insert(2, labels("b").as_canonical()).unwrap();
        let at = |t: i64| Sample {
            timestamp_ms: t,
            value: 1.0,
        };
        w.insert(a, at(0), i64::MAX);
        w.insert(b, at(0), i64::MAX);
        w.insert(b, at(400_000), i64::MAX);
        let evicted = w.evict_idle();
        assert_eq!(evicted, vec![(a, labels("a"))]);
        assert_eq!(w.len(), 1);
        let c = w.get_or_insert(3, labels("c").as_canonical()).unwrap();
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(w.get_or_insert(1, labels("a").as_canonical()).unwrap().0, 2);
    }

    const SEED: u64 = 0x5eed;

    fn at(t: i64, v: f64) -> Sample {
        Sample {
            timestamp_ms: t,
            value: v,
        }
    }

    /// Admits `pod` as the router would hash it and appends samples at the given times.
    fn fill(w: &mut SelectorWindows, pod: &str, samples: &[(i64, f64)]) -> SeriesId {
        let l = labels(pod);
        let id = w
            .get_or_insert(l.hash_with_seed(SEED), l.as_canonical())
            .unwrap();
        for &(t, v) in samples {
            w.insert(id, at(t, v), i64::MAX);
        }
        id
    }

    #[test]
    fn at_the_limit_a_series_silent_past_reclaim_makes_room_and_is_reported_once() {
        // Kept two days when silent (a likelihood band's state), reclaimable after 5 min.
        let mut w = SelectorWindows::new(WindowSpec {
            idle_ms: 2 * 86_400_000,
            ..spec(2)
        });
        let a = fill(&mut w, "a", &[(1_000, 1.0)]);
        let b = fill(&mut w, "b", &[(200_000, 1.0)]);
        fill(&mut w, "b", &[(400_000, 1.0)]);
        // "a" is 399 s silent, "b" is not: one new series gets in, a second does not.
        w.begin_batch();
        let c = fill(&mut w, "c", &[(400_000, 1.0)]);
        assert_ne!(c, a, "a reclaimed id is not reused before it is reported");
        let d = labels("d");
        assert_eq!(
            w.get_or_insert(d.hash_with_seed(SEED), d.as_canonical()),
            Err(OverLimit)
        );
        assert_eq!(w.len(), 2);
        assert!(w.get(a).is_none() && w.get(b).is_some());
        let evicted = w.evict_idle();
        assert_eq!(evicted, vec![(a, labels("a"))]);
        assert!(w.evict_idle().is_empty());
        assert_eq!(
            w.iter_ordered().map(|(id, _)| id).collect::<Vec<_>>(),
            vec![b, c]
        );
    }

    #[test]
    fn label_bytes_are_budgeted_and_given_back_on_eviction() {
        let one = labels("a").as_canonical().len();
        let mut w = SelectorWindows::new(WindowSpec {
            label_bytes_limit: 2 * one,
            ..spec(100)
        });
        fill(&mut w, "a", &[(1_000, 1.0)]);
        fill(&mut w, "b", &[(1_000, 1.0)]);
        let c = labels("c");
        assert_eq!(
            w.get_or_insert(c.hash_with_seed(SEED), c.as_canonical()),
            Err(OverLimit)
        );
        // A label set over the whole budget is refused without evicting anything.
        let huge = Labels::from_pairs([("__name__", "m"), ("pod", &"x".repeat(3 * one))]);
        fill(&mut w, "a", &[(400_000, 1.0)]);
        w.begin_batch();
        assert_eq!(
            w.get_or_insert(huge.hash_with_seed(SEED), huge.as_canonical()),
            Err(OverLimit)
        );
        assert_eq!(w.len(), 2);
        // "b" went silent past the lookback: it makes room for "c".
        fill(&mut w, "c", &[(400_000, 1.0)]);
        assert_eq!(w.evict_idle(), vec![(SeriesId(1), labels("b"))]);
        assert_eq!(w.len(), 2);
    }

    fn by_labels(exports: Vec<SeriesExport>) -> Vec<(Labels, Vec<(i64, u64)>)> {
        let mut out: Vec<_> = exports
            .into_iter()
            .map(|s| {
                let samples = s
                    .samples
                    .iter()
                    .map(|s| (s.timestamp_ms, s.value.to_bits()))
                    .collect();
                (s.labels, samples)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn windows_round_trip_through_a_state_file_bit_for_bit() {
        let stale = f64::from_bits(crate::ingest::STALE_NAN_BITS);
        let mut w = SelectorWindows::new(spec(10));
        fill(
            &mut w,
            "a",
            &[(1_000, 1.5), (2_000, stale), (3_000, f64::NAN)],
        );
        fill(&mut w, "b", &[(1_500, f64::NEG_INFINITY), (2_500, -0.0)]);
        // Admitted, but every sample refused (as out of order): nothing to restore.
        fill(&mut w, "empty", &[]);
        let exported = w.export();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("windows.state");
        crate::state::save(&path, &exported).unwrap();
        let loaded: Vec<SeriesExport> = crate::state::load(&path).unwrap().unwrap();
        assert_eq!(loaded, exported);

        let mut restored = SelectorWindows::new(spec(10));
        let mapping = restored.import(loaded, SEED, i64::MAX);
        assert_eq!(mapping.len(), 2);
        for (old, new) in &mapping {
            let before = exported.iter().find(|s| s.id == *old).unwrap();
            assert_eq!(restored.get(*new).unwrap().labels(), &before.labels);
        }
        let mut expected = exported.clone();
        expected.retain(|s| !s.samples.is_empty());
        assert_eq!(by_labels(restored.export()), by_labels(expected));
        assert_eq!(restored.clock_ms(), 3_000);
        let a = restored.get(mapping[0].1).unwrap();
        assert!(a.current().is_some_and(|s| s.value.is_nan()));
        assert_eq!(a.samples().nth(1).unwrap().value.to_bits(), stale.to_bits());
    }

    #[test]
    fn imported_series_are_found_by_the_routers_hash() {
        use crate::route::{Batch, Router, Selector, SelectorId};
        let selector = match promql_parser::parser::parse("m").unwrap() {
            promql_parser::parser::Expr::VectorSelector(s) => Selector::from_promql(&s),
            other => panic!("not a selector: {other:?}"),
        };
        let router = Router::new([(SelectorId(0), selector)], SEED);
        let wire = [
            crate::ingest::Label {
                name: b"__name__",
                value: b"m",
            },
            crate::ingest::Label {
                name: b"pod",
                value: b"a",
            },
        ];
        let series = crate::ingest::SeriesView {
            index: 0,
            metric_name: b"m",
            labels: &wire,
            sorted: true,
            encoded_labels: &[],
            samples: &[at(5_000, 2.0)],
            histograms: 0,
            exemplars: 0,
        };
        let mut batch = Batch::new(std::time::Instant::now(), i64::MAX, 1 << 20);
        router.route(&series, &mut batch).unwrap();
        let entry = &batch.entries[0];

        let mut saved = SelectorWindows::new(spec(10));
        fill(&mut saved, "a", &[(1_000, 1.0)]);
        let mut restored = SelectorWindows::new(spec(10));
        let mapping = restored.import(saved.export(), SEED, i64::MAX);
        assert_eq!(
            restored.get_or_insert(entry.hash, batch.canonical_labels(entry)),
            Ok(mapping[0].1)
        );
        assert_eq!(restored.len(), 1);
    }

    #[test]
    fn import_keeps_the_newest_series_up_to_the_limit_and_trims_to_retention() {
        let mut w = SelectorWindows::new(spec(10));
        for (i, pod) in ["a", "b", "c", "d"].into_iter().enumerate() {
            let t = 100_000 + i as i64 * 1_000;
            fill(&mut w, pod, &[(t - 50_000, 0.0), (t, 1.0)]);
        }
        let exported = w.export();
        let mut restored = SelectorWindows::new(WindowSpec {
            retention_ms: 10_000,
            ..spec(2)
        });
        let mapping = restored.import(exported, SEED, i64::MAX);
        let kept: Vec<_> = mapping
            .iter()
            .map(|&(old, new)| (old, restored.get(new).unwrap().labels().get("pod")))
            .collect();
        assert_eq!(kept, [(3, Some("d")), (2, Some("c"))]);
        assert_eq!(restored.len(), 2);
        for (_, window) in restored.iter() {
            assert_eq!(window.samples().count(), 1, "trimmed to the retention");
        }
    }

    #[test]
    fn import_leaves_out_idle_series_and_never_moves_the_clock_past_now() {
        let mut w = SelectorWindows::new(spec(10));
        fill(&mut w, "old", &[(0, 1.0)]);
        fill(&mut w, "recent", &[(400_000, 1.0)]);
        fill(&mut w, "future", &[(900_000, 1.0)]);
        let restored_at = |now_ms| {
            let mut restored = SelectorWindows::new(spec(10));
            let mapping = restored.import(w.export(), SEED, now_ms);
            let mut pods: Vec<_> = mapping
                .iter()
                .map(|&(_, id)| {
                    restored
                        .get(id)
                        .unwrap()
                        .labels()
                        .get("pod")
                        .unwrap()
                        .to_owned()
                })
                .collect();
            pods.sort();
            (restored.clock_ms(), pods)
        };
        // The future sample would otherwise age "recent" out.
        assert_eq!(
            restored_at(500_000),
            (500_000, vec!["future".into(), "recent".into()])
        );
        assert_eq!(restored_at(i64::MAX), (900_000, vec!["future".to_owned()]));
    }

    #[test]
    fn a_tampered_export_cannot_break_a_windows_invariants() {
        let twice = |id| SeriesExport {
            labels: labels("a"),
            id,
            samples: vec![
                at(3_000, 1.0),
                at(1_000, 2.0),
                at(3_000, 3.0),
                at(4_000, 4.0),
            ],
        };
        let mut restored = SelectorWindows::new(spec(10));
        let mapping = restored.import(vec![twice(0), twice(7)], SEED, i64::MAX);
        assert_eq!(mapping, [(0, SeriesId(0))]);
        let kept: Vec<_> = restored
            .get(SeriesId(0))
            .unwrap()
            .samples()
            .map(|s| s.timestamp_ms)
            .collect();
        assert_eq!(kept, [3_000, 4_000]);
    }
}
