//! The size check that runs on PromQL *text* before anything parses it: its length, how
//! deeply its expression tree can nest, and how many parts it has, each against a fixed
//! limit.
//!
//! Why on the text: everything that handles an expression tree recurses over it. The
//! engine evaluates by recursion on the evaluator thread, and so do promql-parser's
//! grammar actions, and `Drop`, `Clone`, `Debug` and serialisation of the tree. A rule
//! nesting a few thousand levels (`abs(abs(...))`, `a + a + ... + a`, `- - - a`) loaded
//! as active and then overflowed the evaluator's stack at the first sample, aborting
//! the process, and again at every restart. A tree that is never built cannot be
//! recursed over, so the bound is measured by one linear scan over the characters, with
//! no recursion and memory proportional to the bracket nesting only.
//!
//! The depth found is an upper bound on the tree's depth: every level of the tree is
//! either a bracket group (a call, an aggregation, parentheses, a range, a matcher
//! list) or one operator of a chain inside a group (`a + b + c` nests two deep, `- - a`
//! two), so a group is counted as one level plus its operators plus its deepest inner
//! group. The limits are far above real alerting rules and far below what overflows
//! the evaluator's stack in a debug build (`tests.rs` evaluates an expression at the
//! limit).
//!
//! This module must never allocate in proportion to anything but the nesting, and never
//! recurse.

/// The longest expression accepted, in bytes.
pub const MAX_BYTES: usize = 64 * 1024;

/// The deepest nesting accepted, counting bracket groups and chained operators.
pub const MAX_DEPTH: usize = 128;

/// The most parts accepted: names, numbers, strings, operators and opening brackets.
pub const MAX_PARTS: usize = 4096;

/// Why an expression is refused before it is parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TooLarge {
    #[error("{bytes} bytes long, over the limit of {MAX_BYTES} bytes")]
    Bytes { bytes: usize },
    #[error(
        "nested {depth} levels deep (counting brackets and chained operators), over the limit of {MAX_DEPTH}"
    )]
    Depth { depth: usize },
    #[error(
        "made of {parts} parts (names, numbers, strings, operators and brackets), over the limit of {MAX_PARTS}"
    )]
    Parts { parts: usize },
}

/// What the scan measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Upper bound on the depth of the expression tree.
    pub depth: usize,
    /// Names, numbers, strings, operators and opening brackets.
    pub parts: usize,
}

/// Checks `text` against [`MAX_BYTES`], [`MAX_DEPTH`] and [`MAX_PARTS`] without parsing
/// it. Text the parser would refuse anyway (an unterminated string, unbalanced
/// brackets) is measured as far as it goes and left to the parser to report.
pub fn check_size(text: &str) -> Result<Size, TooLarge> {
    if text.len() > MAX_BYTES {
        return Err(TooLarge::Bytes { bytes: text.len() });
    }
    let size = measure(text);
    if size.depth > MAX_DEPTH {
        return Err(TooLarge::Depth { depth: size.depth });
    }
    if size.parts > MAX_PARTS {
        return Err(TooLarge::Parts { parts: size.parts });
    }
    Ok(size)
}

/// One open bracket group.
struct Group {
    /// `{` holds label matchers, whose `=`, `!=`, `=~` and `!~` build no tree.
    matchers: bool,
    /// Operators directly in this group.
    operators: usize,
    /// The deepest group closed inside this one.
    deepest_inner: usize,
}

impl Group {
    fn new(matchers: bool) -> Self {
        Self {
            matchers,
            operators: 0,
            deepest_inner: 0,
        }
    }

    fn depth(&self) -> usize {
        1 + self.operators + self.deepest_inner
    }
}

/// Measures the text in one pass, following PromQL's lexer closely enough to skip
/// strings and comments and to tell operators from names and numbers.
fn measure(text: &str) -> Size {
    let bytes = text.as_bytes();
    let mut groups = vec![Group::new(false)];
    let mut parts = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b',' => i += 1,
            b'#' => {
                // A comment runs to the end of the line.
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' | b'`' => {
                parts += 1;
                i = skip_string(bytes, i);
            }
            b'(' | b'[' | b'{' => {
                parts += 1;
                groups.push(Group::new(c == b'{'));
                i += 1;
            }
            b')' | b']' | b'}' => {
                // An unmatched closer is the parser's to report; the outermost group
                // stays.
                if groups.len() > 1 {
                    close(&mut groups);
                }
                i += 1;
            }
            b'0'..=b'9' | b'.' => {
                parts += 1;
                i = skip_number(bytes, i);
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b':')
                {
                    i += 1;
                }
                parts += 1;
                let word = &text[start..i];
                let binary_word = ["and", "or", "unless", "atan2"]
                    .iter()
                    .any(|op| word.eq_ignore_ascii_case(op));
                if binary_word {
                    add_operator(&mut groups);
                }
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'=' | b'!' | b'<' | b'>' => {
                parts += 1;
                // Two-character operators (`==`, `!=`, `<=`, `>=`, `=~`, `!~`) count once.
                let next = bytes.get(i + 1).copied();
                let pair = matches!(
                    (c, next),
                    (b'=' | b'!' | b'<' | b'>', Some(b'=')) | (b'=' | b'!', Some(b'~'))
                );
                i += if pair { 2 } else { 1 };
                add_operator(&mut groups);
            }
            _ => {
                // `@`, `~` on its own, and anything else: one part, no nesting. Multi-byte
                // characters are stepped over byte by byte (they only occur in strings and
                // comments in valid PromQL).
                parts += 1;
                i += 1;
            }
        }
    }
    while groups.len() > 1 {
        close(&mut groups);
    }
    let depth = groups.first().map_or(0, Group::depth);
    Size { depth, parts }
}

fn add_operator(groups: &mut [Group]) {
    if let Some(group) = groups.last_mut()
        && !group.matchers
    {
        group.operators += 1;
    }
}

/// Closes the innermost group into its parent. Never called on the outermost one.
fn close(groups: &mut Vec<Group>) {
    if let Some(closed) = groups.pop()
        && let Some(parent) = groups.last_mut()
    {
        parent.deepest_inner = parent.deepest_inner.max(closed.depth());
    }
}

/// The index just past the string literal opening at `start` (or the end of the text
/// if it is never closed). Backquoted strings have no escapes, as in PromQL.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote != b'`' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// The index just past the number or duration at `start`: digits, letters (hex, `Inf`,
/// units such as `5m`), dots and underscores, and one exponent sign, only in a decimal
/// number (`1e-5`; the `-` in `0x1e-5` is an operator, as PromQL's lexer reads it). A
/// sign is never swallowed beyond that: a run like `1e+1e+1e` is a number, then
/// operators, so no operator can hide in a "number".
fn skip_number(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    let mut decimal = true;
    let mut signed = false;
    while i < bytes.len() {
        let c = bytes[i];
        let exponent_sign = matches!(c, b'+' | b'-')
            && decimal
            && !signed
            && i > start
            && matches!(bytes[i - 1], b'e' | b'E');
        if exponent_sign {
            signed = true;
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' {
            // Letters other than the exponent's make it a hex number or a duration.
            if c.is_ascii_alphabetic() && !matches!(c, b'e' | b'E') {
                decimal = false;
            }
            i += 1;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str) -> usize {
        measure(text).depth
    }

    #[test]
    fn real_rules_are_shallow_and_small() {
        for text in [
            "up",
            r#"container_memory_working_set_bytes{namespace="default", pod=~"api-.*"}"#,
            "sum by (pod) (rate(http_requests_total{code=~\"5..\"}[5m])) / sum by (pod) (rate(http_requests_total[5m])) > 0.05",
            "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m]))) > 0.3",
            "abs(delta(queue_depth[10m] offset 1h)) > 1e-3 and on (pod) kube_pod_info",
        ] {
            let size = check_size(text).expect(text);
            assert!(size.depth <= 8, "{text}: {size:?}");
            assert!(size.parts <= 40, "{text}: {size:?}");
        }
    }

    #[test]
    fn depth_counts_brackets_and_chained_operators() {
        assert_eq!(depth("a"), 1);
        assert_eq!(depth("a + b"), 2);
        assert_eq!(depth("a + b + c"), 3);
        assert_eq!(depth("- - a"), 3);
        assert_eq!(depth("abs(a)"), 2);
        assert_eq!(depth("abs(abs(a + b))"), 4);
        // Matchers build no tree; a range is one level.
        assert_eq!(depth(r#"a{b="c", d!="e", f=~"g", h!~"i"}"#), 2);
        assert_eq!(depth("rate(a[5m])"), 3);
        // Numbers with exponents, strings and comments hide no operators or brackets.
        assert_eq!(depth("1e-5"), 1);
        assert_eq!(depth("0x1e-5"), 2);
        assert_eq!(depth("5m-1"), 2);
        // PromQL reads `1e+1e+1e+1...` as `1e+1`, `e`, `+`, `1e+1`, `e`, `+`, ...: every
        // other sign is an operator, and none may hide in a long "number".
        let signs = format!("m + 1{}", "e+1".repeat(1000));
        assert_eq!(depth(&signs), 502);
        assert_eq!(depth(r#"a{b="((((+-+-"}"#), 2);
        assert_eq!(depth("a # (((( + + +\n"), 1);
        assert_eq!(depth("`\\`"), 1);
        // Word operators are operators, in any case.
        assert_eq!(depth("a and b OR c unless d"), 4);
    }

    #[test]
    fn the_four_crashing_shapes_are_refused() {
        let chain = vec!["a"; 3000].join(" + ");
        assert_eq!(check_size(&chain), Err(TooLarge::Depth { depth: 3000 }));
        let abs = format!("{}a{}", "abs(".repeat(3000), ")".repeat(3000));
        assert_eq!(check_size(&abs), Err(TooLarge::Depth { depth: 3001 }));
        let sum = format!("{}a{}", "sum(".repeat(5000), ")".repeat(5000));
        assert_eq!(check_size(&sum), Err(TooLarge::Depth { depth: 5001 }));
        let minus = format!("{}a", "-".repeat(20_000));
        assert_eq!(check_size(&minus), Err(TooLarge::Depth { depth: 20_001 }));
    }

    #[test]
    fn wide_shallow_expressions_are_bounded_by_their_parts() {
        // A balanced tree of 2048 leaves nests only 12 levels deep by brackets.
        let mut text = "a".to_owned();
        for _ in 0..11 {
            text = format!("({text}) + ({text})");
        }
        let size = measure(&text);
        assert!(size.depth < MAX_DEPTH, "{size:?}");
        assert_eq!(
            check_size(&text),
            Err(TooLarge::Parts { parts: size.parts })
        );
        let long = format!("a{{b=\"{}\"}}", "x".repeat(MAX_BYTES));
        assert_eq!(
            check_size(&long),
            Err(TooLarge::Bytes { bytes: long.len() })
        );
    }

    #[test]
    fn unbalanced_text_is_measured_and_left_to_the_parser() {
        assert_eq!(depth("abs((a"), 3);
        assert_eq!(depth("a))) + b"), 2);
        assert_eq!(depth("\"unterminated ((("), 1);
    }
}
