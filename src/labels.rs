//! `Labels`: a series' identity, in one canonical, compact form shared by every stage after
//! ingest. Names are sorted and each pair is written as remote-write 1.0 writes a
//! `TimeSeries.labels` entry: `0x0a len (0x0a len name 0x12 len value)`, lengths as
//! minimal varints and the value always present. Equal label sets are equal bytes, which
//! makes the form both the hash input and the map key; and it is the form in which
//! Prometheus sends sorted labels, so ingest keeps a series by copying its label bytes
//! as they arrived (see `route::Batch`).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// Protobuf tags of the canonical form: `TimeSeries.labels` and `Label.name` (field 1,
/// length-delimited), `Label.value` (field 2).
const TAG_ONE: u8 = 0x0a;
const TAG_TWO: u8 = 0x12;

/// A sorted label set in canonical form. Cheap to compare and hash; one allocation,
/// shared by its clones: the windows of every rule input that keeps a series hold one copy
/// of its labels between them, so finding the series again in another input's windows can
/// compare pointers instead of bytes (see [`Labels::shares_bytes_with`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Labels(Arc<[u8]>);

impl Labels {
    /// Builds from pairs in any order. Later duplicates of a name are kept as given;
    /// ingest has already refused duplicate names.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut pairs: Vec<_> = pairs.into_iter().collect();
        pairs.sort_unstable();
        let mut bytes = Vec::new();
        for (name, value) in pairs {
            push_label(&mut bytes, name.as_bytes(), value.as_bytes());
        }
        Self(bytes.into())
    }

    /// Wraps bytes already in canonical form (as `route::Batch` writes them).
    pub(crate) fn from_canonical(bytes: &[u8]) -> Self {
        Self(bytes.into())
    }

    pub fn as_canonical(&self) -> &[u8] {
        &self.0
    }

    /// Whether both are clones of one allocation: then they are equal without comparing
    /// bytes (unequal allocations may still hold equal bytes).
    pub(crate) fn shares_bytes_with(&self, other: &Labels) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The pairs, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        // Both were valid UTF-8 when the canonical form was built.
        self.entries().map(|e| {
            (
                std::str::from_utf8(e.name).unwrap_or_default(),
                std::str::from_utf8(e.value).unwrap_or_default(),
            )
        })
    }

    /// The entries as bytes, in name order: what comparisons, lookups and label
    /// filtering work on, so they neither check UTF-8 nor re-encode.
    fn entries(&self) -> impl Iterator<Item = Entry<'_>> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            // The bytes were written by `push_label`, or copied from a request only after
            // being found to be in exactly that form; a malformed tail ends the walk.
            let (content, after) = field(rest, TAG_ONE)?;
            let raw = &rest[..rest.len() - after.len()];
            rest = after;
            let (name, content) = field(content, TAG_ONE)?;
            let (value, _) = field(content, TAG_TWO)?;
            Some(Entry { raw, name, value })
        })
    }

    /// The value of `name`, if the series has that label.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries()
            .find(|e| e.name == name.as_bytes())
            .map(|e| std::str::from_utf8(e.value).unwrap_or_default())
    }

    /// The labels whose names `keep` accepts. Entries are copied as they are, in order,
    /// so the result is canonical without sorting or re-encoding; when every label is
    /// kept, the result shares this set's bytes. `keep` is asked twice per name.
    pub fn retain(&self, keep: impl Fn(&[u8]) -> bool) -> Labels {
        // Sized first: growing the copy entry by entry reallocated several times per set,
        // and expressions drop or keep labels of every series at every step.
        let kept_len: usize = self
            .entries()
            .filter(|entry| keep(entry.name))
            .map(|entry| entry.raw.len())
            .sum();
        if kept_len == self.0.len() {
            return self.clone();
        }
        let mut kept = Vec::with_capacity(kept_len);
        for entry in self.entries().filter(|entry| keep(entry.name)) {
            kept.extend_from_slice(entry.raw);
        }
        Self(kept.into())
    }

    /// The labels without those whose value is empty, or `None` when there are none (the
    /// usual case, found without copying or checking UTF-8). Prometheus treats a label
    /// with an empty value as no label.
    pub fn without_empty_values(&self) -> Option<Labels> {
        // An empty value is written with a zero length byte, and no other length or tag
        // is zero (names are never empty; a varint's bytes are never zero but for zero
        // itself): a set without a zero byte has no empty value. std's byte search
        // (`contains` on `[u8]` is memchr) rules most sets out a word at a time, before
        // any entry is parsed; this runs for every series an expression selects at every
        // step. A NUL inside a name or value is caught by the exact check after it.
        if !self.0.contains(&0) {
            return None;
        }
        if !self.entries().any(|entry| entry.value.is_empty()) {
            return None;
        }
        let mut kept = Vec::with_capacity(self.0.len());
        for entry in self.entries().filter(|entry| !entry.value.is_empty()) {
            kept.extend_from_slice(entry.raw);
        }
        Some(Self(kept.into()))
    }

    /// The seeded xxh3 hash of the canonical form: the hash `route::Batch` gives a series
    /// routed with the same seed, which [`crate::window::SelectorWindows`] is keyed by.
    pub fn hash_with_seed(&self, seed: u64) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_seed(&self.0, seed)
    }

    /// The metric name (`__name__`), or "" if absent.
    pub fn metric_name(&self) -> &str {
        self.get("__name__").unwrap_or_default()
    }
}

/// A map keyed by a seeded xxh3 hash computed beforehand: hashing it again would be
/// wasted work on the hot path.
pub(crate) type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<PrehashedKey>>;

#[derive(Default)]
pub(crate) struct PrehashedKey(u64);

impl Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed with this hasher; fold anything else defensively.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// A map keyed by label sets, for the maps built while evaluating expressions (groups,
/// vector matching): hashed with xxh3 under a per-process random seed, several times
/// faster than the standard SipHash on label sets. Not a keyed PRF as SipHash is (xxh3
/// has seed-independent collisions), but these maps hold what the rules' own selectors
/// kept, and a collision costs a comparison, not correctness.
pub(crate) type LabelsMap<V> = HashMap<Labels, V, LabelsState>;

/// A set of label sets; see [`LabelsMap`].
pub(crate) type LabelsSet = std::collections::HashSet<Labels, LabelsState>;

#[derive(Clone, Copy)]
pub(crate) struct LabelsState(u64);

impl Default for LabelsState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        Self(*SEED.get_or_init(|| {
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0)
        }))
    }
}

impl std::hash::BuildHasher for LabelsState {
    type Hasher = LabelsHasher;
    fn build_hasher(&self) -> LabelsHasher {
        LabelsHasher(self.0)
    }
}

pub(crate) struct LabelsHasher(u64);

impl Hasher for LabelsHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        // The length prefix `[u8]` hashes first: mixed in, not hashed on its own.
        self.0 = (self.0 ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Ord for Labels {
    /// Prometheus's order of label sets (`labels.Compare`): pair by pair, name then value,
    /// then the shorter first; not the order of the canonical bytes.
    fn cmp(&self, other: &Self) -> Ordering {
        self.entries()
            .map(|e| (e.name, e.value))
            .cmp(other.entries().map(|e| (e.name, e.value)))
    }
}

impl PartialOrd for Labels {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A small set of label names looked for in every series of a request (the HA pair
/// labels): found by walking a series' labels once, where a label whose name has a length
/// none of the set has (nearly all of them) is passed over on one bit test, without
/// comparing bytes.
#[derive(Debug, Clone, Default)]
pub struct LabelNames {
    names: Vec<Box<[u8]>>,
    /// Bit `n` set when some name is `n` bytes long (bit 63 for 63 and longer).
    lengths: u64,
}

impl LabelNames {
    pub fn new<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Self {
        let mut set = Self::default();
        for name in names {
            let name = name.as_ref().as_bytes();
            if !name.is_empty() && !set.names.iter().any(|n| **n == *name) {
                set.lengths |= Self::length_bit(name);
                set.names.push(name.into());
            }
        }
        set
    }

    #[inline(always)]
    fn length_bit(name: &[u8]) -> u64 {
        1u64 << name.len().min(63)
    }

    /// The position of `name` in the set, in the order the names were given.
    #[inline(always)]
    pub fn position(&self, name: &[u8]) -> Option<usize> {
        if self.lengths & Self::length_bit(name) == 0 {
            return None;
        }
        self.names.iter().position(|n| short_eq(n, name))
    }

    #[inline(always)]
    pub fn contains(&self, name: &[u8]) -> bool {
        self.position(name).is_some()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The names, as given (duplicates and empty names left out).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        // Built from `str`s.
        self.names
            .iter()
            .map(|n| std::str::from_utf8(n).unwrap_or_default())
    }
}

/// Whether two short byte strings (label names, external label values) are equal,
/// compared inline: a call to libc's `memcmp` for each of a few bytes cost more than the
/// rest of judging a series for HA (measured: a third of `ha/pair/*`).
#[inline(always)]
pub(crate) fn short_eq(a: &[u8], b: &[u8]) -> bool {
    // Or-ing the differences, with no early exit, is not turned back into a `memcmp` call.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// One label of a canonical form, as bytes: UTF-8 compares bytewise in the order of its
/// characters, so byte comparisons order labels as strings do.
struct Entry<'a> {
    /// The whole entry, tags and lengths included.
    raw: &'a [u8],
    name: &'a [u8],
    value: &'a [u8],
}

/// Appends one label in canonical form.
pub(crate) fn push_label(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    // Nearly every label is short enough for one-byte lengths throughout.
    let short = 4 + name.len() + value.len();
    if short < 0x80 {
        out.extend_from_slice(&[TAG_ONE, short as u8, TAG_ONE, name.len() as u8]);
        out.extend_from_slice(name);
        out.extend_from_slice(&[TAG_TWO, value.len() as u8]);
        out.extend_from_slice(value);
        return;
    }
    let entry = 2 + varint_len(name.len()) + name.len() + varint_len(value.len()) + value.len();
    out.push(TAG_ONE);
    push_varint(out, entry);
    out.push(TAG_ONE);
    push_varint(out, name.len());
    out.extend_from_slice(name);
    out.push(TAG_TWO);
    push_varint(out, value.len());
    out.extend_from_slice(value);
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Splits `tag len bytes` off the front of `rest`: `(bytes, what follows)`.
#[inline]
fn field(rest: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, mut rest) = rest.split_first()?;
    if first != tag {
        return None;
    }
    let mut len = 0usize;
    for shift in (0..usize::BITS).step_by(7) {
        let (&byte, after) = rest.split_first()?;
        rest = after;
        len |= usize::from(byte & 0x7f).checked_shl(shift)?;
        if byte < 0x80 {
            return rest.split_at_checked(len);
        }
    }
    None
}

impl fmt::Display for Labels {
    /// Prometheus's series notation: `name{a="b", c="d"}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric_name())?;
        f.write_str("{")?;
        let mut first = true;
        for (name, value) in self.iter().filter(|(n, _)| *n != "__name__") {
            if !first {
                f.write_str(", ")?;
            }
            first = false;
            write!(f, "{name}={value:?}")?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Labels {
    /// As a JSON object, like Prometheus's HTTP API.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> serde::Deserialize<'de> for Labels {
    /// From the map [`Serialize`](serde::Serialize) writes, rebuilt through
    /// [`Labels::from_pairs`] so that whatever the input, the result is canonical. Refuses
    /// what ingest refuses: an empty label name, or a name given twice.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(LabelsVisitor)
    }
}

struct LabelsVisitor;

impl<'de> serde::de::Visitor<'de> for LabelsVisitor {
    type Value = Labels;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of label names to values")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Labels, A::Error> {
        use serde::de::Error;
        let mut pairs: Vec<(String, String)> = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((name, value)) = map.next_entry::<String, String>()? {
            if name.is_empty() {
                return Err(A::Error::custom("empty label name"));
            }
            pairs.push((name, value));
        }
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        if let Some(pair) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(A::Error::custom(format_args!(
                "duplicate label name {:?}",
                pair[0].0
            )));
        }
        Ok(Labels::from_pairs(
            pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_is_order_independent_and_round_trips() {
        let a = Labels::from_pairs([("pod", "p-1"), ("__name__", "up"), ("job", "k")]);
        let b = Labels::from_pairs([("job", "k"), ("pod", "p-1"), ("__name__", "up")]);
        assert_eq!(a, b);
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            [("__name__", "up"), ("job", "k"), ("pod", "p-1")]
        );
        assert_eq!(a.get("pod"), Some("p-1"));
        assert_eq!(a.get("node"), None);
        assert_eq!(a.to_string(), r#"up{job="k", pod="p-1"}"#);
    }

    #[test]
    fn deserializing_rebuilds_the_canonical_form_and_refuses_what_ingest_refuses() {
        let a = Labels::from_pairs([("pod", "p\u{e9}\"1"), ("__name__", "up"), ("job", "")]);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Labels>(&json).unwrap(), a);
        // Out of order in the file: still canonical once read.
        let shuffled: Labels =
            serde_json::from_str(r#"{"pod":"p\u00e9\"1","job":"","__name__":"up"}"#).unwrap();
        assert_eq!(shuffled.as_canonical(), a.as_canonical());
        for bad in [
            r#"{"":"x"}"#,
            r#"{"a":"1","a":"2"}"#,
            r#"{"a":1}"#,
            r#"["a","b"]"#,
        ] {
            assert!(serde_json::from_str::<Labels>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_canonical_form_is_the_remote_write_encoding_of_the_labels() {
        let long = "v".repeat(300);
        let labels = Labels::from_pairs([("__name__", "up"), ("a", ""), ("long", &long)]);
        let wire = crate::proto::v1::TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| crate::proto::v1::Label {
                    name: name.into(),
                    value: value.into(),
                })
                .collect(),
            ..Default::default()
        };
        let mut encoded = prost::Message::encode_to_vec(&wire);
        // prost leaves an empty value out; the canonical form always writes it.
        let empty = [0x0a, 0x03, 0x0a, 0x01, b'a'];
        let at = encoded.windows(5).position(|w| w == empty).unwrap();
        encoded.splice(at..at + 5, [0x0a, 0x05, 0x0a, 0x01, b'a', 0x12, 0x00]);
        assert_eq!(labels.as_canonical(), &encoded[..]);
        assert_eq!(labels.get("long"), Some(long.as_str()));
        assert_eq!(labels.get("a"), Some(""));
    }

    #[test]
    fn orders_like_prometheus_not_by_bytes() {
        // By bytes, the longer `aa` entry (its length first) would sort before `b`.
        let a = Labels::from_pairs([("aa", "1")]);
        let b = Labels::from_pairs([("b", "1")]);
        assert!(a < b);
        let short = Labels::from_pairs([("a", "1")]);
        let longer = Labels::from_pairs([("a", "1"), ("b", "1")]);
        assert!(short < longer);
    }

    #[test]
    fn empty_values_survive() {
        let l = Labels::from_pairs([("__name__", "x"), ("a", "")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), [("__name__", "x"), ("a", "")]);
    }

    #[test]
    fn without_empty_values_drops_only_empty_ones() {
        let l = Labels::from_pairs([("__name__", "x"), ("a", ""), ("b", "y")]);
        assert_eq!(
            l.without_empty_values(),
            Some(Labels::from_pairs([("__name__", "x"), ("b", "y")]))
        );
        assert_eq!(
            Labels::from_pairs([("a", "x")]).without_empty_values(),
            None
        );
        // The bytes of an empty value inside a non-empty one are no empty value.
        let tricky = Labels::from_pairs([("a", "\u{12}\u{0}")]);
        assert_eq!(tricky.without_empty_values(), None);
    }
}
