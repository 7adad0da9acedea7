//! The zero-copy walk over a decompressed remote-write body. Labels stay borrowed from
//! the body (1.0) or its symbol table (2.0); samples are read into a buffer reused across
//! the series of one request. Each series is validated as a whole and then handed to a
//! callback, which decides whether anything of it is kept.
//!
//! The walk is checked against the prost-generated types in `proto` by the tests.

use super::wire::{Reader, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT, expect_wire};
use super::{IngestError, Limits, Protocol};

const METRIC_NAME: &[u8] = b"__name__";

/// One float sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch, the sample's event time.
    pub timestamp_ms: i64,
    pub value: f64,
}

/// One label, borrowed from the request body. Bytes, not `str`: like Prometheus's own
/// receiver, Prophet checks UTF-8 only for the series it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
}

/// A validated series of the request being decoded.
#[derive(Debug)]
pub struct SeriesView<'s, 'a> {
    /// Position of the series in the request, for error messages.
    pub index: usize,
    /// The value of `__name__`.
    pub metric_name: &'a [u8],
    /// All labels, `__name__` included, in the order the sender wrote them.
    pub labels: &'s [Label<'a>],
    /// Whether `labels` are sorted by name (senders sort them; validation found out).
    pub sorted: bool,
    /// The bytes that held all of `labels`, when the sender wrote them as one run of
    /// `TimeSeries.labels` entries with one-byte lengths (as Prometheus does); empty
    /// otherwise (and when a label has an empty value, which is no label). Sorted, such a
    /// run is the labels' canonical form (see [`crate::labels::Labels`]), so the router
    /// keeps the series by copying it.
    pub encoded_labels: &'a [u8],
    pub samples: &'s [Sample],
    /// Native histogram samples: counted and acknowledged, not evaluated by any rule.
    pub histograms: usize,
    pub exemplars: usize,
}

/// What a decoded request held, as the remote-write 2.0 response headers report it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    pub series: usize,
    pub samples: usize,
    pub histograms: usize,
    pub exemplars: usize,
    pub metadata: usize,
}

/// Per-request scratch space, so the walk allocates once per request, not per series.
struct Scratch<'a> {
    labels: Vec<Label<'a>>,
    /// See [`SeriesView::encoded_labels`].
    encoded_labels: &'a [u8],
    samples: Vec<Sample>,
}

/// Walks `body` (already decompressed) and calls `on_series` for every series, after the
/// series passed validation. An `Err` from the callback aborts the walk. Returns the
/// request's counts; on `Err` nothing the callback gathered should be committed.
pub fn decode<'a, F>(
    protocol: Protocol,
    body: &'a [u8],
    limits: &Limits,
    now_ms: i64,
    mut on_series: F,
) -> Result<DecodeStats, IngestError>
where
    F: FnMut(&SeriesView<'_, 'a>) -> Result<(), IngestError>,
{
    let validator = Validator {
        latest_allowed_ms: now_ms.saturating_add(limits.max_future_ms),
        limit_ms: limits.max_future_ms,
        now_ms,
        max_labels: limits.max_labels_per_series,
        max_label_bytes: limits.max_label_bytes,
    };
    let mut scratch = Scratch {
        labels: Vec::with_capacity(32),
        // Remote-write 2.0 refers to labels through the symbol table: never one run.
        encoded_labels: &[],
        samples: Vec::with_capacity(8),
    };
    match protocol {
        Protocol::V1 => decode_v1(body, &validator, &mut scratch, &mut on_series),
        Protocol::V2 => decode_v2(body, &validator, &mut scratch, &mut on_series),
    }
}

struct Validator {
    latest_allowed_ms: i64,
    limit_ms: i64,
    now_ms: i64,
    max_labels: usize,
    max_label_bytes: usize,
}

impl Validator {
    #[inline]
    fn timestamp(&self, series: usize, timestamp_ms: i64) -> Result<(), IngestError> {
        if timestamp_ms > self.latest_allowed_ms {
            return Err(IngestError::FutureSample {
                series,
                timestamp_ms,
                ahead_ms: timestamp_ms - self.now_ms,
                limit_ms: self.limit_ms,
            });
        }
        Ok(())
    }

    /// Checks label names (non-empty, no duplicates) and returns the metric name and
    /// whether the labels are sorted.
    #[inline]
    fn labels<'a>(
        &self,
        series: usize,
        labels: &[Label<'a>],
    ) -> Result<(&'a [u8], bool), IngestError> {
        if labels.len() > self.max_labels {
            return Err(IngestError::TooManyLabels {
                series,
                labels: labels.len(),
                limit: self.max_labels,
            });
        }
        let mut metric_name: &[u8] = &[];
        let mut sorted = true;
        let mut previous: &[u8] = &[];
        for label in labels {
            let Some(&first) = label.name.first() else {
                return Err(IngestError::EmptyLabelName { series });
            };
            // Names nearly always differ in their first byte: decide on it and leave the
            // byte-wise comparison (a memcmp call) to the rare shared prefix.
            sorted &= match previous.first() {
                None => true,
                Some(&p) if p != first => p < first,
                Some(_) => previous < label.name,
            };
            if label.name.len() + label.value.len() > self.max_label_bytes {
                return Err(IngestError::LabelTooLong {
                    series,
                    name: String::from_utf8_lossy(&label.name[..label.name.len().min(64)])
                        .into_owned(),
                    limit: self.max_label_bytes,
                });
            }
            if first == b'_' && label.name == METRIC_NAME {
                metric_name = label.value;
            }
            previous = label.name;
        }
        // Senders sort labels, so strictly increasing names (checked above for free) rule
        // out duplicates; only an unsorted series pays for sorting a copy of its names.
        if !sorted {
            let mut names: Vec<&[u8]> = labels.iter().map(|l| l.name).collect();
            names.sort_unstable();
            if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
                return Err(IngestError::DuplicateLabelName {
                    series,
                    name: String::from_utf8_lossy(pair[0]).into_owned(),
                });
            }
        }
        if metric_name.is_empty() {
            return Err(IngestError::MissingMetricName { series });
        }
        Ok((metric_name, sorted))
    }
}

fn decode_v1<'a, F>(
    body: &'a [u8],
    validator: &Validator,
    scratch: &mut Scratch<'a>,
    on_series: &mut F,
) -> Result<DecodeStats, IngestError>
where
    F: FnMut(&SeriesView<'_, 'a>) -> Result<(), IngestError>,
{
    let mut stats = DecodeStats::default();
    let mut request = Reader::new(body);
    while !request.is_empty() {
        let (field, wire) = request.tag()?;
        match field {
            1 => {
                expect_wire("WriteRequest.timeseries", wire, WIRE_LEN)?;
                let series = request.bytes()?;
                let index = stats.series;
                let (histograms, exemplars) = read_series_v1(series, index, validator, scratch)?;
                finish_series(
                    index,
                    (histograms, exemplars),
                    validator,
                    scratch,
                    &mut stats,
                    on_series,
                )?;
            }
            3 => {
                expect_wire("WriteRequest.metadata", wire, WIRE_LEN)?;
                request.bytes()?;
                stats.metadata += 1;
            }
            _ => request.skip(wire)?,
        }
    }
    Ok(stats)
}

/// Reads one 1.0 `TimeSeries` into the scratch buffers; returns (histograms, exemplars).
fn read_series_v1<'a>(
    series: &'a [u8],
    index: usize,
    validator: &Validator,
    scratch: &mut Scratch<'a>,
) -> Result<(usize, usize), IngestError> {
    scratch.labels.clear();
    scratch.samples.clear();
    let (mut histograms, mut exemplars) = (0, 0);
    let consumed = read_leading_labels(series, &mut scratch.labels);
    let leading = scratch.labels.len();
    let mut reader = Reader::new(&series[consumed..]);
    while !reader.is_empty() {
        let (field, wire) = reader.tag()?;
        match field {
            1 => {
                expect_wire("TimeSeries.labels", wire, WIRE_LEN)?;
                scratch.labels.push(read_label(reader.bytes()?)?);
            }
            2 => {
                expect_wire("TimeSeries.samples", wire, WIRE_LEN)?;
                let sample = read_sample(reader.bytes()?)?;
                validator.timestamp(index, sample.timestamp_ms)?;
                scratch.samples.push(sample);
            }
            3 => {
                expect_wire("TimeSeries.exemplars", wire, WIRE_LEN)?;
                reader.bytes()?;
                exemplars += 1;
            }
            4 => {
                expect_wire("TimeSeries.histograms", wire, WIRE_LEN)?;
                let timestamp_ms = read_histogram_timestamp(reader.bytes()?)?;
                validator.timestamp(index, timestamp_ms)?;
                histograms += 1;
            }
            _ => reader.skip(wire)?,
        }
    }
    scratch.encoded_labels = if scratch.labels.len() == leading {
        &series[..consumed]
    } else {
        &[]
    };
    Ok((histograms, exemplars))
}

/// The hot loop of the decoder: senders write a series' labels first, each as tag 0x0a
/// and a one-byte length around `0x0a len name 0x12 len value`. Reads that run of labels
/// straight off the bytes, without the general field dispatch, and returns how many bytes
/// it consumed; anything else (a longer label, another field, an empty value) is left to
/// the general walk, which also reports any error. An empty value ends the run because
/// it is no label (as in Prometheus): the run is kept by copying it whole, so it must
/// hold only labels that are kept.
#[inline(always)]
fn read_leading_labels<'a>(series: &'a [u8], labels: &mut Vec<Label<'a>>) -> usize {
    let mut pos = 0;
    while let [0x0a, len, rest @ ..] = &series[pos..]
        && *len < 0x80
        && let Some(label) = rest.get(..*len as usize)
        && let [0x0a, name_len, label @ ..] = label
        && *name_len < 0x80
        && let Some((name, [0x12, value_len, value @ ..])) =
            label.split_at_checked(*name_len as usize)
        && value.len() == *value_len as usize
        && *value_len != 0
    {
        labels.push(Label { name, value });
        pos += 2 + *len as usize;
    }
    pos
}

#[inline(always)]
fn read_label(bytes: &[u8]) -> Result<Label<'_>, IngestError> {
    // Every sender writes `name` (field 1) then `value` (field 2), each shorter than 128
    // bytes in practice: take that layout directly, and walk the general way otherwise.
    if let [0x0a, name_len, rest @ ..] = bytes
        && *name_len < 0x80
        && let Some((name, [0x12, value_len, value @ ..])) =
            rest.split_at_checked(*name_len as usize)
        && *value_len < 0x80
        && value.len() == *value_len as usize
    {
        return Ok(Label { name, value });
    }
    read_label_general(bytes)
}

#[cold]
fn read_label_general(bytes: &[u8]) -> Result<Label<'_>, IngestError> {
    let mut label = Label {
        name: &[],
        value: &[],
    };
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire) = reader.tag()?;
        match field {
            1 => {
                expect_wire("Label.name", wire, WIRE_LEN)?;
                label.name = reader.bytes()?;
            }
            2 => {
                expect_wire("Label.value", wire, WIRE_LEN)?;
                label.value = reader.bytes()?;
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(label)
}

/// Reads a `Sample` (1.0 and 2.0 share fields 1 and 2; 2.0's start timestamp, field 3,
/// is skipped like any unknown field).
#[inline(always)]
fn read_sample(bytes: &[u8]) -> Result<Sample, IngestError> {
    // The usual layout: value (fixed64, tag 0x09) then timestamp (varint, tag 0x10).
    if let [0x09, v0, v1, v2, v3, v4, v5, v6, v7, 0x10, timestamp @ ..] = bytes {
        let mut reader = Reader::new(timestamp);
        let timestamp_ms = reader.varint()? as i64;
        if reader.is_empty() {
            return Ok(Sample {
                timestamp_ms,
                value: f64::from_le_bytes([*v0, *v1, *v2, *v3, *v4, *v5, *v6, *v7]),
            });
        }
    }
    read_sample_general(bytes)
}

fn read_sample_general(bytes: &[u8]) -> Result<Sample, IngestError> {
    let mut sample = Sample {
        timestamp_ms: 0,
        value: 0.0,
    };
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire) = reader.tag()?;
        match field {
            1 => {
                expect_wire("Sample.value", wire, WIRE_FIXED64)?;
                sample.value = f64::from_bits(reader.fixed64()?);
            }
            2 => {
                expect_wire("Sample.timestamp", wire, WIRE_VARINT)?;
                // int64 is encoded as its two's-complement u64.
                sample.timestamp_ms = reader.varint()? as i64;
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok(sample)
}

/// A native histogram's timestamp (field 15 in both protocols): the only part of it that
/// Prophet reads, to apply the same future-timestamp check as for float samples.
fn read_histogram_timestamp(bytes: &[u8]) -> Result<i64, IngestError> {
    let mut timestamp_ms = 0;
    let mut reader = Reader::new(bytes);
    while !reader.is_empty() {
        let (field, wire) = reader.tag()?;
        if field == 15 {
            expect_wire("Histogram.timestamp", wire, WIRE_VARINT)?;
            timestamp_ms = reader.varint()? as i64;
        } else {
            reader.skip(wire)?;
        }
    }
    Ok(timestamp_ms)
}

fn decode_v2<'a, F>(
    body: &'a [u8],
    validator: &Validator,
    scratch: &mut Scratch<'a>,
    on_series: &mut F,
) -> Result<DecodeStats, IngestError>
where
    F: FnMut(&SeriesView<'_, 'a>) -> Result<(), IngestError>,
{
    // Symbols may legally follow the series that use them, so they are gathered first.
    let mut symbols: Vec<&'a [u8]> = Vec::new();
    let mut request = Reader::new(body);
    while !request.is_empty() {
        let (field, wire) = request.tag()?;
        if field == 4 {
            expect_wire("Request.symbols", wire, WIRE_LEN)?;
            symbols.push(request.bytes()?);
        } else {
            request.skip(wire)?;
        }
    }

    let mut stats = DecodeStats::default();
    let mut refs: Vec<u32> = Vec::with_capacity(64);
    let mut request = Reader::new(body);
    while !request.is_empty() {
        let (field, wire) = request.tag()?;
        if field != 5 {
            request.skip(wire)?;
            continue;
        }
        expect_wire("Request.timeseries", wire, WIRE_LEN)?;
        let series = request.bytes()?;
        let index = stats.series;
        scratch.labels.clear();
        scratch.samples.clear();
        refs.clear();
        let (mut histograms, mut exemplars) = (0, 0);
        let mut reader = Reader::new(series);
        while !reader.is_empty() {
            let (field, wire) = reader.tag()?;
            match (field, wire) {
                (1, WIRE_LEN) => {
                    let mut packed = Reader::new(reader.bytes()?);
                    while !packed.is_empty() {
                        refs.push(symbol_ref(packed.varint()?, index, symbols.len())?);
                    }
                }
                (1, WIRE_VARINT) => refs.push(symbol_ref(reader.varint()?, index, symbols.len())?),
                (1, other) => expect_wire("TimeSeries.labels_refs", other, WIRE_LEN)?,
                (2, _) => {
                    expect_wire("TimeSeries.samples", wire, WIRE_LEN)?;
                    let sample = read_sample(reader.bytes()?)?;
                    validator.timestamp(index, sample.timestamp_ms)?;
                    scratch.samples.push(sample);
                }
                (3, _) => {
                    expect_wire("TimeSeries.histograms", wire, WIRE_LEN)?;
                    let timestamp_ms = read_histogram_timestamp(reader.bytes()?)?;
                    validator.timestamp(index, timestamp_ms)?;
                    histograms += 1;
                }
                (4, _) => {
                    expect_wire("TimeSeries.exemplars", wire, WIRE_LEN)?;
                    reader.bytes()?;
                    exemplars += 1;
                }
                _ => reader.skip(wire)?,
            }
        }
        if !refs.len().is_multiple_of(2) {
            return Err(IngestError::OddLabelRefs {
                series: index,
                len: refs.len(),
            });
        }
        scratch
            .labels
            .extend(refs.chunks_exact(2).map(|pair| Label {
                name: symbols[pair[0] as usize],
                value: symbols[pair[1] as usize],
            }));
        finish_series(
            index,
            (histograms, exemplars),
            validator,
            scratch,
            &mut stats,
            on_series,
        )?;
    }
    Ok(stats)
}

/// Validates the series gathered in `scratch`, counts it, and hands it to the callback.
#[inline(always)]
fn finish_series<'a, F>(
    index: usize,
    (histograms, exemplars): (usize, usize),
    validator: &Validator,
    scratch: &Scratch<'a>,
    stats: &mut DecodeStats,
    on_series: &mut F,
) -> Result<(), IngestError>
where
    F: FnMut(&SeriesView<'_, 'a>) -> Result<(), IngestError>,
{
    let (metric_name, sorted) = validator.labels(index, &scratch.labels)?;
    stats.series += 1;
    stats.samples += scratch.samples.len();
    stats.histograms += histograms;
    stats.exemplars += exemplars;
    on_series(&SeriesView {
        index,
        metric_name,
        labels: &scratch.labels,
        sorted,
        encoded_labels: scratch.encoded_labels,
        samples: &scratch.samples,
        histograms,
        exemplars,
    })
}

#[inline]
fn symbol_ref(raw: u64, series: usize, symbols: usize) -> Result<u32, IngestError> {
    if raw >= symbols as u64 {
        return Err(IngestError::SymbolOutOfRange {
            series,
            index: raw,
            symbols,
        });
    }
    Ok(raw as u32)
}

#[cfg(test)]
mod tests {
    //! Hand-built encodings that prost would never produce (fields out of order, unpacked
    //! repeated fields, long labels that miss the fast paths), checked against prost's
    //! decoding of the same bytes.

    use prost::Message;

    use super::*;
    use crate::proto::{v1, v2};

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn key(field: u32, wire: u8, out: &mut Vec<u8>) {
        varint(u64::from(field) << 3 | u64::from(wire), out);
    }

    fn len_field(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
        key(field, 2, out);
        varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }

    fn varint_field(field: u32, v: u64, out: &mut Vec<u8>) {
        key(field, 0, out);
        varint(v, out);
    }

    fn double_field(field: u32, v: f64, out: &mut Vec<u8>) {
        key(field, 1, out);
        out.extend_from_slice(&v.to_le_bytes());
    }

    /// A sample with its fields in reverse order.
    fn sample_reversed(timestamp: i64, value: f64) -> Vec<u8> {
        let mut s = Vec::new();
        varint_field(2, timestamp as u64, &mut s);
        double_field(1, value, &mut s);
        s
    }

    type Decoded = Vec<(Vec<(Vec<u8>, Vec<u8>)>, Vec<(i64, u64)>)>;

    fn ours(protocol: Protocol, body: &[u8]) -> Result<(Decoded, DecodeStats), IngestError> {
        let mut out = Vec::new();
        let stats = decode(protocol, body, &Limits::default(), 0, |s| {
            out.push((
                s.labels
                    .iter()
                    .map(|l| (l.name.to_vec(), l.value.to_vec()))
                    .collect(),
                s.samples
                    .iter()
                    .map(|s| (s.timestamp_ms, s.value.to_bits()))
                    .collect(),
            ));
            Ok(())
        })?;
        Ok((out, stats))
    }

    fn prost_v1(body: &[u8]) -> Decoded {
        v1::WriteRequest::decode(body)
            .unwrap()
            .timeseries
            .into_iter()
            .map(|ts| {
                (
                    ts.labels
                        .into_iter()
                        .map(|l| (l.name.into_bytes(), l.value.into_bytes()))
                        .collect(),
                    ts.samples
                        .into_iter()
                        .map(|s| (s.timestamp, s.value.to_bits()))
                        .collect(),
                )
            })
            .collect()
    }

    fn prost_v2(body: &[u8]) -> Decoded {
        let request = v2::Request::decode(body).unwrap();
        request
            .timeseries
            .into_iter()
            .map(|ts| {
                (
                    ts.labels_refs
                        .chunks(2)
                        .map(|p| {
                            (
                                request.symbols[p[0] as usize].clone().into_bytes(),
                                request.symbols[p[1] as usize].clone().into_bytes(),
                            )
                        })
                        .collect(),
                    ts.samples
                        .into_iter()
                        .map(|s| (s.timestamp, s.value.to_bits()))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn v1_fields_in_any_order_long_labels_and_negative_timestamps() {
        let long_value = "v".repeat(300);
        let mut series = Vec::new();
        // A sample before the labels, with its fields reversed and a negative timestamp.
        len_field(2, &sample_reversed(-5_000, 1.5), &mut series);
        // A label written value-first.
        let mut label = Vec::new();
        len_field(2, b"api", &mut label);
        len_field(1, b"job", &mut label);
        len_field(1, &label, &mut series);
        // A label too long for the one-byte fast path.
        let mut label = Vec::new();
        len_field(1, b"long", &mut label);
        len_field(2, long_value.as_bytes(), &mut label);
        len_field(1, &label, &mut series);
        let mut label = Vec::new();
        len_field(1, b"__name__", &mut label);
        len_field(2, b"up", &mut label);
        len_field(1, &label, &mut series);
        // An unknown field is skipped.
        varint_field(9, 7, &mut series);
        len_field(2, &sample_reversed(1_000, f64::INFINITY), &mut series);
        let mut body = Vec::new();
        len_field(1, &series, &mut body);
        len_field(3, b"\x08\x01", &mut body);

        let (decoded, stats) = ours(Protocol::V1, &body).unwrap();
        assert_eq!(decoded, prost_v1(&body));
        assert_eq!(stats.series, 1);
        assert_eq!(stats.samples, 2);
        assert_eq!(stats.metadata, 1);
        assert_eq!(decoded[0].1[0], (-5_000, 1.5f64.to_bits()));
    }

    #[test]
    fn v2_symbols_after_series_and_unpacked_refs() {
        let mut series = Vec::new();
        // Two refs packed, two unpacked: both encodings are valid for a repeated uint32.
        let mut packed = Vec::new();
        varint(1, &mut packed);
        varint(2, &mut packed);
        len_field(1, &packed, &mut series);
        varint_field(1, 3, &mut series);
        varint_field(1, 4, &mut series);
        // A sample with a start timestamp (field 3).
        let mut sample = Vec::new();
        double_field(1, 2.0, &mut sample);
        varint_field(2, 10_000, &mut sample);
        varint_field(3, 9_000, &mut sample);
        len_field(2, &sample, &mut series);
        let mut body = Vec::new();
        len_field(5, &series, &mut body);
        for symbol in ["", "__name__", "up", "job", "api"] {
            len_field(4, symbol.as_bytes(), &mut body);
        }
        let (decoded, _) = ours(Protocol::V2, &body).unwrap();
        assert_eq!(decoded, prost_v2(&body));
        assert_eq!(decoded[0].0.len(), 2);
        assert_eq!(decoded[0].1, [(10_000, 2.0f64.to_bits())]);
    }

    #[test]
    fn malformed_wire_data_is_refused_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (b"\x0a\x05\x0a\x03", "truncated"),
            (b"\x0a", "truncated"),
            (b"\x0b", "wire type"),
            (b"\x09\x00\x00", "wire type"),
            (
                b"\x0a\x0b\x12\x09\x09\x00\x00\x00\x00\x00\x00\xf0",
                "truncated",
            ),
        ];
        for (body, word) in cases {
            let error = ours(Protocol::V1, body).unwrap_err();
            assert!(
                matches!(error, IngestError::Protobuf(ref m) if m.contains(word)),
                "{body:?}: {error}"
            );
        }
    }

    #[test]
    fn a_series_with_thousands_of_unsorted_labels_is_refused_quickly() {
        let mut series = Vec::new();
        for i in (0..20_000).rev() {
            let mut label = Vec::new();
            len_field(1, format!("l{i:05}").as_bytes(), &mut label);
            len_field(2, b"x", &mut label);
            len_field(1, &label, &mut series);
        }
        let mut body = Vec::new();
        len_field(1, &series, &mut body);
        assert!(matches!(
            ours(Protocol::V1, &body),
            Err(IngestError::TooManyLabels { labels: 20_000, .. })
        ));
        // Below the count limit, an unsorted duplicate is still found.
        let mut series = Vec::new();
        for name in ["b", "__name__", "a", "b"] {
            let mut label = Vec::new();
            len_field(1, name.as_bytes(), &mut label);
            len_field(2, b"x", &mut label);
            len_field(1, &label, &mut series);
        }
        let mut body = Vec::new();
        len_field(1, &series, &mut body);
        assert!(matches!(
            ours(Protocol::V1, &body),
            Err(IngestError::DuplicateLabelName { ref name, .. }) if name == "b"
        ));
    }
}
