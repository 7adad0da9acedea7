//! Kubernetes quantities (`1Gi`, `500m`, `1e3`) read as plain numbers, and the
//! thresholds built from them (`> 1Gi`) that an AnomalyAction compares each sample with.
//!
//! This module owns the syntax and the comparison semantics only: it knows nothing of
//! series, windows or rules. Comparisons follow PromQL (IEEE 754), so a NaN sample never
//! satisfies `>`, `<`, `==` and friends, but always satisfies `!=`.

use std::fmt;
use std::str::FromStr;

/// Why a text is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Nothing to read.
    #[error(
        "empty quantity: expected a number with an optional suffix, like \"1Gi\", \"500m\" or \"1e3\""
    )]
    Empty,
    /// The text is not `<sign><digits>[.<digits>]<suffix>`.
    #[error(
        "invalid quantity {input:?}: expected a number with an optional suffix (n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or an exponent like e3)"
    )]
    Malformed {
        /// The text as written.
        input: String,
    },
    /// A number followed by something that is not a known suffix.
    #[error(
        "invalid quantity {input:?}: unknown suffix {suffix:?}; expected one of n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or an exponent like e3"
    )]
    UnknownSuffix {
        /// The text as written.
        input: String,
        /// The part after the number.
        suffix: String,
    },
    /// The value does not fit in a finite 64-bit float.
    #[error("quantity {input:?} is out of range: its value does not fit in a 64-bit float")]
    OutOfRange {
        /// The text as written.
        input: String,
    },
}

/// How a suffix scales the number in front of it.
enum Scale {
    /// Multiply by 10^exponent (decimal SI suffixes and `e`/`E` exponents).
    Decimal(i32),
    /// Multiply by 2^exponent (binary SI suffixes).
    Binary(i32),
}

/// Reads a Kubernetes quantity as a number: `1Gi` = 1073741824, `500m` = 0.5,
/// `1e3` = 1000, `-2` = -2.
///
/// The grammar is Kubernetes' (`resource.Quantity`): an optional sign, digits with an
/// optional fraction, then at most one suffix — decimal `n u m k M G T P E`, binary
/// `Ki Mi Gi Ti Pi Ei`, or an integer exponent `e3`/`E-3`. Spaces are not allowed.
pub fn parse_quantity(input: &str) -> Result<f64, QuantityError> {
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let malformed = || QuantityError::Malformed {
        input: input.to_owned(),
    };

    let unsigned = input.strip_prefix(['+', '-']).unwrap_or(input);
    let negative = input.starts_with('-');
    let number_len = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits_ok = |part: &str| part.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_ok(whole) || !digits_ok(fraction) {
        return Err(malformed());
    }

    let scale = parse_suffix(suffix).ok_or_else(|| {
        if suffix.starts_with(['e', 'E']) && suffix.len() > 1 {
            // `1e`, `1e+`, `1e3.5`: an exponent was meant but is not an integer.
            malformed()
        } else {
            QuantityError::UnknownSuffix {
                input: input.to_owned(),
                suffix: suffix.to_owned(),
            }
        }
    })?;

    // Rust's float parser rounds correctly, so decimal scaling is done by handing it the
    // exponent (`500e-3` is exactly the double nearest 0.5) rather than by multiplying,
    // which would round twice. Binary scaling by a power of two is exact.
    let mantissa = format!("{}{whole}.{fraction}", if negative { "-" } else { "" });
    let value = match scale {
        Scale::Decimal(exponent) => format!("{mantissa}e{exponent}").parse::<f64>(),
        Scale::Binary(exponent) => mantissa.parse::<f64>().map(|m| m * 2f64.powi(exponent)),
    }
    .map_err(|_| malformed())?;
    if value.is_finite() {
        Ok(value)
    } else {
        Err(QuantityError::OutOfRange {
            input: input.to_owned(),
        })
    }
}

fn parse_suffix(suffix: &str) -> Option<Scale> {
    let scale = match suffix {
        "" => Scale::Decimal(0),
        "n" => Scale::Decimal(-9),
        "u" => Scale::Decimal(-6),
        "m" => Scale::Decimal(-3),
        "k" => Scale::Decimal(3),
        "M" => Scale::Decimal(6),
        "G" => Scale::Decimal(9),
        "T" => Scale::Decimal(12),
        "P" => Scale::Decimal(15),
        "E" => Scale::Decimal(18),
        "Ki" => Scale::Binary(10),
        "Mi" => Scale::Binary(20),
        "Gi" => Scale::Binary(30),
        "Ti" => Scale::Binary(40),
        "Pi" => Scale::Binary(50),
        "Ei" => Scale::Binary(60),
        exponent => {
            // `E` alone is exa (handled above); `e`/`E` followed by a signed integer is
            // an exponent. Kubernetes allows no fraction in the exponent.
            let digits = exponent.strip_prefix(['e', 'E'])?;
            let unsigned = digits.strip_prefix(['+', '-']).unwrap_or(digits);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // Anything beyond a few hundred over- or underflows an f64 anyway; clamping
            // keeps huge exponents from failing to parse as i32 and reports them as out
            // of range (or as zero) like any other extreme value.
            let exponent = digits.parse::<i64>().unwrap_or(if digits.starts_with('-') {
                i64::MIN
            } else {
                i64::MAX
            });
            Scale::Decimal(exponent.clamp(-10_000, 10_000) as i32)
        }
    };
    Some(scale)
}

/// A comparison operator of a threshold, with PromQL's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    /// Every operator, two-character ones first so a prefix match never takes `>` for
    /// `>=`.
    pub const ALL: [CmpOp; 6] = [
        CmpOp::Ge,
        CmpOp::Le,
        CmpOp::Eq,
        CmpOp::Ne,
        CmpOp::Gt,
        CmpOp::Lt,
    ];

    /// The operator as written in PromQL.
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }

    /// `left <op> right` with IEEE 754 semantics, which is what PromQL (Go) does: any
    /// comparison involving NaN is false, except `!=`, which is true.
    pub fn compare(self, left: f64, right: f64) -> bool {
        match self {
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
        }
    }
}

impl fmt::Display for CmpOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// Why a text is not a threshold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThresholdError {
    /// The text does not start with a comparison operator.
    #[error(
        "invalid threshold {input:?}: expected a comparison operator (>, >=, <, <=, ==, !=) followed by a quantity, like \"> 1Gi\""
    )]
    MissingOperator {
        /// The text as written.
        input: String,
    },
    /// An operator with nothing after it.
    #[error("invalid threshold {input:?}: expected a quantity after {op:?}, like \"{op} 1Gi\"")]
    MissingValue {
        /// The text as written.
        input: String,
        /// The operator that was read.
        op: CmpOp,
    },
    /// The part after the operator is not a quantity.
    #[error("invalid threshold {input:?}: {source}")]
    Value {
        /// The text as written.
        input: String,
        /// Why the value is not a quantity.
        source: QuantityError,
    },
}

/// A comparison with a fixed value, such as `> 1Gi`: the rule trips for samples `v`
/// where `v <op> value` holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Threshold {
    /// How a sample is compared with `value`.
    pub op: CmpOp,
    /// The quantity compared with, as a plain number (`1Gi` is 1073741824).
    pub value: f64,
}

impl Threshold {
    /// Reads `<op> <quantity>`, for example `> 1Gi`, `<=0.5` or ` != 0 `. Spaces around
    /// and between the two parts are optional.
    pub fn parse(input: &str) -> Result<Threshold, ThresholdError> {
        let text = input.trim();
        let (op, rest) = CmpOp::ALL
            .into_iter()
            .find_map(|op| text.strip_prefix(op.symbol()).map(|rest| (op, rest)))
            .ok_or_else(|| ThresholdError::MissingOperator {
                input: input.to_owned(),
            })?;
        let value_text = rest.trim_start();
        if value_text.is_empty() {
            return Err(ThresholdError::MissingValue {
                input: input.to_owned(),
                op,
            });
        }
        // `=>`, `>>` and `=<` read as an operator followed by a malformed quantity;
        // saying so about the operator is more helpful.
        if value_text.starts_with(['<', '>', '=', '!']) {
            return Err(ThresholdError::MissingOperator {
                input: input.to_owned(),
            });
        }
        let value = parse_quantity(value_text).map_err(|source| ThresholdError::Value {
            input: input.to_owned(),
            source,
        })?;
        Ok(Threshold { op, value })
    }

    /// Whether a sample trips the threshold, with PromQL's comparison semantics: a NaN
    /// sample only ever satisfies `!=`.
    pub fn holds(&self, sample: f64) -> bool {
        self.op.compare(sample, self.value)
    }
}

impl FromStr for Threshold {
    type Err = ThresholdError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Threshold::parse(input)
    }
}

/// Canonical form `<op> <number>`, with the value written without a suffix (`> 1Gi`
/// prints as `> 1073741824`) so two equal thresholds always print the same; the output
/// parses back to an equal threshold.
impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op, CanonicalNumber(self.value))
    }
}

/// Shortest text that reads back as the same f64: plain decimals for everyday
/// magnitudes, exponent notation (`1e21`, `1e-7`) where plain decimals get long.
struct CanonicalNumber(f64);

impl fmt::Display for CanonicalNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let magnitude = self.0.abs();
        if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
            write!(f, "{:e}", self.0)
        } else {
            write!(f, "{}", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_signed_decimals() {
        assert_eq!(parse_quantity("0"), Ok(0.0));
        assert_eq!(parse_quantity("42"), Ok(42.0));
        assert_eq!(parse_quantity("-2"), Ok(-2.0));
        assert_eq!(parse_quantity("+2"), Ok(2.0));
        assert_eq!(parse_quantity("0.5"), Ok(0.5));
        assert_eq!(parse_quantity(".5"), Ok(0.5));
        assert_eq!(parse_quantity("5."), Ok(5.0));
        assert_eq!(parse_quantity("-0.25"), Ok(-0.25));
    }

    #[test]
    fn binary_suffixes() {
        assert_eq!(parse_quantity("1Ki"), Ok(1024.0));
        assert_eq!(parse_quantity("1.5Ki"), Ok(1536.0));
        assert_eq!(parse_quantity("1Mi"), Ok(1_048_576.0));
        assert_eq!(parse_quantity("1Gi"), Ok(1_073_741_824.0));
        assert_eq!(parse_quantity("2Ti"), Ok(2.0 * 1_099_511_627_776.0));
        assert_eq!(parse_quantity("1Pi"), Ok(2f64.powi(50)));
        assert_eq!(parse_quantity("1Ei"), Ok(2f64.powi(60)));
        assert_eq!(parse_quantity("-1Gi"), Ok(-1_073_741_824.0));
    }

    #[test]
    fn decimal_suffixes() {
        assert_eq!(parse_quantity("500m"), Ok(0.5));
        assert_eq!(parse_quantity("100m"), Ok(0.1));
        assert_eq!(parse_quantity("250u"), Ok(0.00025));
        assert_eq!(parse_quantity("3n"), Ok(3e-9));
        assert_eq!(parse_quantity("1k"), Ok(1000.0));
        assert_eq!(parse_quantity("1.5M"), Ok(1_500_000.0));
        assert_eq!(parse_quantity("2G"), Ok(2e9));
        assert_eq!(parse_quantity("1T"), Ok(1e12));
        assert_eq!(parse_quantity("1P"), Ok(1e15));
        assert_eq!(parse_quantity("1E"), Ok(1e18));
    }

    #[test]
    fn exponents() {
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert_eq!(parse_quantity("1E3"), Ok(1000.0));
        assert_eq!(parse_quantity("1.5e3"), Ok(1500.0));
        assert_eq!(parse_quantity("1e-3"), Ok(0.001));
        assert_eq!(parse_quantity("1e+3"), Ok(1000.0));
        assert_eq!(parse_quantity("-2E2"), Ok(-200.0));
        assert_eq!(parse_quantity("1e-400"), Ok(0.0));
    }

    #[test]
    fn bad_quantities_say_what_was_expected() {
        assert_eq!(parse_quantity(""), Err(QuantityError::Empty));
        for bad in [
            "abc", "Gi", "-", "+", ".", "1..2", "1.2.3", " 1", "1 Gi", "--1", "+-1", "1e", "1e+",
            "1e3.5", "1ee3", "0x10",
        ] {
            let error = parse_quantity(bad).expect_err(bad);
            assert!(
                matches!(
                    error,
                    QuantityError::Malformed { .. } | QuantityError::UnknownSuffix { .. }
                ),
                "{bad:?}: {error:?}"
            );
            assert!(error.to_string().contains(&format!("{bad:?}")), "{error}");
        }
        for bad in ["1gi", "1KB", "1Kib", "1K", "1 ", "1Gi ", "1mi", "1ms"] {
            assert_eq!(
                parse_quantity(bad),
                Err(QuantityError::UnknownSuffix {
                    input: bad.to_owned(),
                    suffix: bad
                        .trim_start_matches(|c: char| c.is_ascii_digit())
                        .to_owned(),
                }),
                "{bad:?}"
            );
        }
        let message = parse_quantity("1gi").unwrap_err().to_string();
        assert!(
            message.contains("Gi"),
            "should list the valid suffixes: {message}"
        );
    }

    #[test]
    fn values_beyond_f64_are_out_of_range() {
        let googol_cubed_ei = format!("1{}Ei", "0".repeat(300));
        for huge in [
            "1e400",
            "1e99999999999999999999",
            "-2e308",
            &googol_cubed_ei,
        ] {
            assert_eq!(
                parse_quantity(huge),
                Err(QuantityError::OutOfRange {
                    input: huge.to_owned()
                }),
                "{huge}"
            );
        }
    }

    #[test]
    fn every_operator() {
        let cases = [
            (">", CmpOp::Gt),
            (">=", CmpOp::Ge),
            ("<", CmpOp::Lt),
            ("<=", CmpOp::Le),
            ("==", CmpOp::Eq),
            ("!=", CmpOp::Ne),
        ];
        for (symbol, op) in cases {
            let threshold = Threshold::parse(&format!("{symbol} 10")).expect(symbol);
            assert_eq!(threshold, Threshold { op, value: 10.0 });
            assert_eq!(op.to_string(), symbol);
        }
        let at = |text: &str, sample: f64| Threshold::parse(text).expect(text).holds(sample);
        assert!(at("> 10", 11.0) && !at("> 10", 10.0));
        assert!(at(">= 10", 10.0) && !at(">= 10", 9.0));
        assert!(at("< 10", 9.0) && !at("< 10", 10.0));
        assert!(at("<= 10", 10.0) && !at("<= 10", 11.0));
        assert!(at("== 10", 10.0) && !at("== 10", 10.5));
        assert!(at("!= 10", 10.5) && !at("!= 10", 10.0));
    }

    #[test]
    fn thresholds_take_quantities_and_any_spacing() {
        let one_gib = Threshold {
            op: CmpOp::Gt,
            value: 1_073_741_824.0,
        };
        for text in ["> 1Gi", ">1Gi", "  >   1Gi  ", "\t>\t1Gi\n"] {
            assert_eq!(Threshold::parse(text), Ok(one_gib), "{text:?}");
        }
        assert_eq!(
            "<= 500m".parse::<Threshold>(),
            Ok(Threshold {
                op: CmpOp::Le,
                value: 0.5
            })
        );
        assert_eq!(
            Threshold::parse(">= -2"),
            Ok(Threshold {
                op: CmpOp::Ge,
                value: -2.0
            })
        );
    }

    #[test]
    fn bad_thresholds() {
        for text in [
            "", "1Gi", "=> 1", "= 1", "=< 1", ">> 1", "<> 1", "! 1", "gt 1", "≥ 1",
        ] {
            assert_eq!(
                Threshold::parse(text),
                Err(ThresholdError::MissingOperator {
                    input: text.to_owned()
                }),
                "{text:?}"
            );
        }
        assert_eq!(
            Threshold::parse(">"),
            Err(ThresholdError::MissingValue {
                input: ">".to_owned(),
                op: CmpOp::Gt
            })
        );
        let error = Threshold::parse("> 1 Gi").unwrap_err();
        assert!(matches!(error, ThresholdError::Value { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains("\"> 1 Gi\""),
            "quotes the threshold: {message}"
        );
        assert!(
            message.contains("\"1 Gi\""),
            "quotes the quantity: {message}"
        );
        let message = Threshold::parse("1Gi").unwrap_err().to_string();
        assert!(
            message.contains(">=") && message.contains("!="),
            "{message}"
        );
    }

    #[test]
    fn nan_follows_promql() {
        for text in ["> 0", ">= 0", "< 0", "<= 0", "== 0"] {
            assert!(
                !Threshold::parse(text).expect(text).holds(f64::NAN),
                "{text}"
            );
        }
        assert!(Threshold::parse("!= 0").expect("!=").holds(f64::NAN));
        assert!(Threshold::parse("> 0").expect(">").holds(f64::INFINITY));
        assert!(Threshold::parse("< 0").expect("<").holds(f64::NEG_INFINITY));
    }

    #[test]
    fn display_is_canonical_and_parses_back() {
        let cases = [
            ("> 1Gi", "> 1073741824"),
            (">=500m", ">= 0.5"),
            ("<  -2", "< -2"),
            ("== 1e3", "== 1000"),
            ("!= 0", "!= 0"),
            ("> 1E", "> 1000000000000000000"),
            ("> 1e21", "> 1e21"),
            ("< 3n", "< 3e-9"),
            ("< 1Ei", "< 1152921504606847000"),
        ];
        for (text, canonical) in cases {
            let threshold = Threshold::parse(text).expect(text);
            assert_eq!(threshold.to_string(), canonical, "{text:?}");
            assert_eq!(Threshold::parse(canonical), Ok(threshold), "{canonical:?}");
        }
    }
}
