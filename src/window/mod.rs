//! Windows: per (rule input, series) time windows of samples, in event time. A window keeps
//! what its input needs and no more (its retention), a set of windows is bounded by its
//! per-rule series limit, and series that stop reporting are evicted once the input's event
//! clock has moved past them. Time is always passed in as sample timestamps; nothing here
//! reads a clock.

mod series;

pub use series::{Insert, SeriesWindow};

use std::collections::HashMap;

use crate::labels::{Labels, PrehashedMap};

/// Stable handle of a series within one [`InputWindows`]; reused after eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u32);

/// What one input's windows keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// How far behind the newest sample of a series its window reaches; 0 keeps only the
    /// newest sample.
    pub retention_ms: i64,
    /// A series without a sample for this long (behind the input's clock) is evicted.
    pub idle_ms: i64,
    /// The most series this input tracks; samples of further series are refused and counted.
    pub series_limit: usize,
}

/// The series was not admitted: the input is at its series limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit;

/// All windows of one rule input.
pub struct InputWindows {
    spec: WindowSpec,
    by_hash: PrehashedMap<SeriesId>,
    /// Series whose hash collided with another's label set; practically always empty.
    collided: HashMap<Labels, SeriesId>,
    slots: Vec<Option<SeriesWindow>>,
    free: Vec<SeriesId>,
    live: usize,
    /// The newest sample timestamp seen by this input: its event clock.
    clock_ms: i64,
    last_sweep_ms: i64,
}

impl InputWindows {
    pub fn new(spec: WindowSpec) -> Self {
        Self {
            spec,
            by_hash: PrehashedMap::default(),
            collided: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            clock_ms: i64::MIN,
            last_sweep_ms: i64::MIN,
        }
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
        if !self.collided.is_empty()
            && let Some(&id) = self.collided.get(&Labels::from_canonical(canonical))
        {
            return Ok(id);
        }
        if let Some(&id) = self.by_hash.get(&hash)
            && self
                .get(id)
                .is_some_and(|w| w.labels().as_canonical() == canonical)
        {
            return Ok(id);
        }
        if self.live >= self.spec.series_limit {
            return Err(OverLimit);
        }
        let window = SeriesWindow::new(Labels::from_canonical(canonical), hash);
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id.0 as usize] = Some(window);
                id
            }
            None => {
                self.slots.push(Some(window));
                SeriesId(self.slots.len() as u32 - 1)
            }
        };
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => {
                self.collided.insert(Labels::from_canonical(canonical), id);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(id);
            }
        }
        self.live += 1;
        Ok(id)
    }

    pub fn get(&self, id: SeriesId) -> Option<&SeriesWindow> {
        self.slots.get(id.0 as usize)?.as_ref()
    }

    /// Inserts a sample into a series' window and advances the event clock, which never
    /// passes `now_ms` (the receiver's clock when the sample arrived). A sample already
    /// older than the idle time behind the clock is refused: its series would be evicted
    /// at once.
    pub fn insert(&mut self, id: SeriesId, sample: crate::ingest::Sample, now_ms: i64) -> Insert {
        let retention_ms = self.spec.retention_ms;
        if sample.timestamp_ms < self.clock_ms.saturating_sub(self.spec.idle_ms) {
            return Insert::TooOld;
        }
        let Some(window) = self.slots.get_mut(id.0 as usize).and_then(Option::as_mut) else {
            return Insert::TooOld;
        };
        let outcome = window.insert(sample, retention_ms);
        if outcome == Insert::Appended {
            self.clock_ms = self.clock_ms.max(sample.timestamp_ms.min(now_ms));
        }
        outcome
    }

    /// Evicts series idle for longer than the spec allows, behind the event clock. Sweeps
    /// at most once per quarter of the idle time, so the cost stays off the per-sample
    /// path. Returns what was evicted so detectors can drop (and clear) their state.
    pub fn evict_idle(&mut self) -> Vec<(SeriesId, Labels)> {
        let every = (self.spec.idle_ms / 4).max(1_000);
        if self.clock_ms == i64::MIN || self.clock_ms.saturating_sub(self.last_sweep_ms) < every {
            return Vec::new();
        }
        self.last_sweep_ms = self.clock_ms;
        let deadline = self.clock_ms.saturating_sub(self.spec.idle_ms);
        let mut evicted = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let idle = slot
                .as_ref()
                .is_some_and(|w| w.last_timestamp_ms() < deadline);
            if !idle {
                continue;
            }
            let Some(window) = slot.take() else { continue };
            let id = SeriesId(index as u32);
            if self.by_hash.get(&window.hash()) == Some(&id) {
                self.by_hash.remove(&window.hash());
            } else {
                self.collided.remove(window.labels());
            }
            self.free.push(id);
            self.live -= 1;
            evicted.push((id, window.into_labels()));
        }
        evicted
    }

    /// Live series, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SeriesId, &SeriesWindow)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|w| (SeriesId(i as u32), w)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Sample;

    fn spec(limit: usize) -> WindowSpec {
        WindowSpec {
            retention_ms: 60_000,
            idle_ms: 300_000,
            series_limit: limit,
        }
    }

    fn labels(pod: &str) -> Labels {
        Labels::from_pairs([("__name__", "m"), ("pod", pod)])
    }

    #[test]
    fn admits_up_to_the_limit_and_refuses_the_rest() {
        let mut w = InputWindows::new(spec(2));
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
        let mut w = InputWindows::new(spec(10));
        let a = w.get_or_insert(7, labels("a").as_canonical()).unwrap();
        let b = w.get_or_insert(7, labels("b").as_canonical()).unwrap();
        assert_ne!(a, b);
        assert_eq!(w.get_or_insert(7, labels("b").as_canonical()), Ok(b));
        assert_eq!(w.get(b).unwrap().labels(), &labels("b"));
    }

    #[test]
    fn evicts_series_left_behind_by_the_event_clock_and_reuses_their_slots() {
        let mut w = InputWindows::new(spec(10));
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
}
