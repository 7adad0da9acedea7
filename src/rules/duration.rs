//! Durations in Prometheus's syntax (`30s`, `5m`, `1h30m`, `30d`, `1y`), as used by a
//! rule's `for`, `horizon` and `period`, and their canonical text.
//!
//! The behaviour matches Prometheus's `model.ParseDuration` and `Duration.String`
//! exactly, so a duration that works in a Prometheus rule works here and prints the same.
//! Not promql-parser's helper: that one refuses `0` and accepts bare float seconds,
//! neither of which Prometheus does.

use std::time::Duration;

/// Why a text is not a Prometheus duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing to read.
    #[error("empty duration: expected a Prometheus duration such as \"30s\", \"5m\" or \"1h30m\"")]
    Empty,
    /// Not a sequence of `<integer><unit>`, or units not from largest to smallest.
    #[error(
        "invalid duration {input:?}: expected integers with units from largest to smallest, each unit at most once (y w d h m s ms), such as \"1h30m\""
    )]
    Malformed {
        /// The text as written.
        input: String,
    },
    /// A number followed by a unit Prometheus does not know.
    #[error("invalid duration {input:?}: unknown unit {unit:?}; expected one of y w d h m s ms")]
    UnknownUnit {
        /// The text as written.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// More than Prometheus can represent (about 292 years, the range of Go's
    /// `time.Duration`).
    #[error(
        "duration {input:?} is out of range: Prometheus durations must be shorter than about 292 years"
    )]
    OutOfRange {
        /// The text as written.
        input: String,
    },
}

const MILLISECOND: u64 = 1;
const SECOND: u64 = 1000 * MILLISECOND;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const WEEK: u64 = 7 * DAY;
const YEAR: u64 = 365 * DAY;

/// Units from largest to smallest with their length in milliseconds; a duration must
/// use them in this order.
const UNITS: [(&str, u64); 7] = [
    ("y", YEAR),
    ("w", WEEK),
    ("d", DAY),
    ("h", HOUR),
    ("m", MINUTE),
    ("s", SECOND),
    ("ms", MILLISECOND),
];

/// Prometheus durations are Go `time.Duration`s: at most `i64::MAX` nanoseconds.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Reads a Prometheus duration: one or more `<integer><unit>` parts with units `y`
/// (365 days), `w`, `d`, `h`, `m`, `s`, `ms`, from largest to smallest, each at most
/// once (`1h30m`, `30d`, `500ms`). A bare `0` is allowed; signs, fractions, spaces and
/// an empty text are not.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    match input {
        "" => return Err(DurationError::Empty),
        "0" => return Ok(Duration::ZERO),
        _ => {}
    }
    let malformed = || DurationError::Malformed {
        input: input.to_owned(),
    };
    let out_of_range = || DurationError::OutOfRange {
        input: input.to_owned(),
    };

    let mut rest = input;
    let mut total_millis: u128 = 0;
    // Index into UNITS of the last unit seen; the next must come strictly later.
    let mut next_allowed_unit = 0;
    while !rest.is_empty() {
        let digits_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_len == 0 {
            return Err(malformed());
        }
        let (digits, after_digits) = rest.split_at(digits_len);
        let unit_len = after_digits
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after_digits.len());
        if unit_len == 0 {
            // A number without a unit, such as "5" or the "30" of "1h30".
            return Err(malformed());
        }
        let (unit, after_unit) = after_digits.split_at(unit_len);
        let position = UNITS
            .iter()
            .position(|(name, _)| *name == unit)
            .ok_or_else(|| DurationError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            })?;
        if position < next_allowed_unit {
            return Err(malformed());
        }
        next_allowed_unit = position + 1;

        // Any count with more digits than u64 holds is out of range anyway.
        let count: u128 = digits.parse::<u64>().map_err(|_| out_of_range())?.into();
        total_millis += count * u128::from(UNITS[position].1);
        if total_millis * 1_000_000 > MAX_NANOS {
            return Err(out_of_range());
        }
        rest = after_unit;
    }
    let millis = u64::try_from(total_millis).map_err(|_| out_of_range())?;
    Ok(Duration::from_millis(millis))
}

/// Prometheus's canonical text of a duration (`Duration.String`): largest units first,
/// `y` and `w` only when they divide the duration exactly (`30d` stays `30d`, `28d`
/// becomes `4w`), anything below a millisecond dropped, and `0s` for zero.
pub fn format_duration(duration: Duration) -> String {
    let mut remaining = duration.as_millis();
    if remaining == 0 {
        return "0s".to_owned();
    }
    let mut text = String::new();
    for (unit, length) in UNITS {
        let length = u128::from(length);
        // Prometheus writes "90d" rather than "12w6d": years and weeks only when exact.
        let exact_only = matches!(unit, "y" | "w");
        if exact_only && !remaining.is_multiple_of(length) {
            continue;
        }
        let count = remaining / length;
        if count > 0 {
            text.push_str(&count.to_string());
            text.push_str(unit);
            remaining -= count * length;
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn single_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(secs(30)));
        assert_eq!(parse_duration("5m"), Ok(secs(300)));
        assert_eq!(parse_duration("1h"), Ok(secs(3600)));
        assert_eq!(parse_duration("30d"), Ok(secs(30 * 86_400)));
        assert_eq!(parse_duration("2w"), Ok(secs(14 * 86_400)));
        assert_eq!(parse_duration("1y"), Ok(secs(365 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("007m"), Ok(secs(420)));
    }

    #[test]
    fn compounds_from_largest_to_smallest() {
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("1d12h"), Ok(secs(36 * 3600)));
        assert_eq!(parse_duration("90m"), Ok(secs(5400)));
        assert_eq!(
            parse_duration("1m30s500ms"),
            Ok(Duration::from_millis(90_500))
        );
        assert_eq!(
            parse_duration("1y2w3d4h5m6s7ms"),
            Ok(Duration::from_millis(
                YEAR + 2 * WEEK + 3 * DAY + 4 * HOUR + 5 * MINUTE + 6 * SECOND + 7
            ))
        );
    }

    #[test]
    fn bad_orderings_and_repeats() {
        for bad in ["30m1h", "1s1m", "5ms1s", "1h1h", "1d1y", "1m1m"] {
            assert_eq!(
                parse_duration(bad),
                Err(DurationError::Malformed {
                    input: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_syntax() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        for bad in [
            "5", "1h30", "-5m", "+5m", "1.5h", ".5h", "h", "m5", " 5m", "5m ", "5 m", "00",
        ] {
            let error = parse_duration(bad).expect_err(bad);
            assert!(
                matches!(
                    error,
                    DurationError::Malformed { .. } | DurationError::UnknownUnit { .. }
                ),
                "{bad:?}: {error:?}"
            );
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
        for (bad, unit) in [
            ("5x", "x"),
            ("1H", "H"),
            ("10sec", "sec"),
            ("3us", "us"),
            ("2M", "M"),
        ] {
            assert_eq!(
                parse_duration(bad),
                Err(DurationError::UnknownUnit {
                    input: bad.to_owned(),
                    unit: unit.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overflow_is_out_of_range() {
        // Go's time.Duration holds about 292 years; Prometheus refuses more.
        assert_eq!(parse_duration("292y"), Ok(secs(292 * 365 * 86_400)));
        for huge in ["293y", "106752d", "99999999999999999999999s", "292y52w"] {
            assert_eq!(
                parse_duration(huge),
                Err(DurationError::OutOfRange {
                    input: huge.to_owned()
                }),
                "{huge:?}"
            );
        }
    }

    #[test]
    fn canonical_form_matches_prometheus() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(500), "500ms"),
            (secs(90), "1m30s"),
            (secs(5400), "1h30m"),
            (secs(30 * 86_400), "30d"),
            (secs(28 * 86_400), "4w"),
            (secs(90 * 86_400), "90d"),
            (secs(365 * 86_400), "1y"),
            (secs(366 * 86_400), "366d"),
            (secs(86_400 + 1), "1d1s"),
            (Duration::from_nanos(1_500_000), "1ms"),
        ];
        for (duration, text) in cases {
            assert_eq!(format_duration(duration), text, "{duration:?}");
        }
        for text in ["1h30m", "30d", "500ms", "1y", "4w", "1d2h3m4s5ms"] {
            let duration = parse_duration(text).expect(text);
            assert_eq!(format_duration(duration), text);
        }
    }
}
