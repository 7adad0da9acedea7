//! Regular expressions with Go's (RE2's) meaning, for label matchers and
//! `label_replace`. Prometheus compiles them with Go's `regexp`, where the Perl classes
//! `\d`, `\w`, `\s` and the word boundary `\b` are ASCII only; the `regex` crate, which
//! promql-parser compiles them with, makes them Unicode-aware, so `\w` would match the
//! `é` of `café` where Prometheus does not. [`go_compatible`] rewrites those classes into
//! their ASCII sets before compiling, and [`go_matchers`] recompiles every regex matcher
//! of a parsed expression so.
//!
//! Also rewritten, inside brackets, is what the `regex` crate reads differently from Go:
//! a `[` that opens no `[:class:]` (a nested class to the crate, a literal to Go) and the
//! `&` and `~` of the crate's class set operations (`&&`, `~~`).
//!
//! Under Prometheus 3's semantics `.` also matches a newline, as Prometheus 3 anchors
//! every regex as `^(?s:...)$` (2.x: `^(?:...)$`).

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::Expr;
use promql_parser::util::visitor::{ExprVisitorMut, walk_expr_mut};
use regex::Regex;

use super::Semantics;

/// Go's `\d`, `\w` and `\s` as the bracket contents they stand for (`\s` is
/// `[\t\n\f\r ]`: RE2 leaves out the vertical tab).
fn perl_class(c: char) -> Option<(&'static str, bool)> {
    match c {
        'd' => Some(("0-9", false)),
        'D' => Some(("0-9", true)),
        'w' => Some(("0-9A-Za-z_", false)),
        'W' => Some(("0-9A-Za-z_", true)),
        's' => Some((r"\t\n\x0C\r ", false)),
        'S' => Some((r"\t\n\x0C\r ", true)),
        _ => None,
    }
}

/// `pattern` rewritten so that the `regex` crate gives it Go's meaning (see the module
/// documentation). Anything else passes through unchanged.
pub(super) fn go_compatible(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    // Inside brackets; and whether the class has no member yet (where `]` is literal).
    let mut in_class = false;
    let mut class_start = false;
    while let Some(c) = chars.next() {
        if c == '\\' {
            let Some(next) = chars.next() else {
                out.push(c);
                break;
            };
            class_start = false;
            match (perl_class(next), in_class) {
                (Some((set, false)), false) => {
                    out.push('[');
                    out.push_str(set);
                    out.push(']');
                }
                (Some((set, true)), false) => {
                    out.push_str("[^");
                    out.push_str(set);
                    out.push(']');
                }
                (Some((set, false)), true) => out.push_str(set),
                // A negated class inside brackets: a nested class, which the crate
                // unites with the rest.
                (Some((set, true)), true) => {
                    out.push_str("[^");
                    out.push_str(set);
                    out.push(']');
                }
                (None, false) if next == 'b' || next == 'B' => {
                    out.push_str("(?-u:\\");
                    out.push(next);
                    out.push(')');
                }
                (None, _) => {
                    out.push('\\');
                    out.push(next);
                }
            }
            continue;
        }
        if in_class {
            match c {
                ']' if !class_start => in_class = false,
                '[' if chars.peek() == Some(&':') => {
                    // A POSIX class, `[:alpha:]`: copied whole.
                    out.push(c);
                    for d in chars.by_ref() {
                        out.push(d);
                        if d == ']' {
                            break;
                        }
                    }
                    class_start = false;
                    continue;
                }
                '[' | '&' | '~' => {
                    out.push('\\');
                    out.push(c);
                    class_start = false;
                    continue;
                }
                '^' if class_start && out.ends_with('[') => {
                    out.push(c);
                    continue;
                }
                _ => {}
            }
            class_start = false;
            out.push(c);
            continue;
        }
        if c == '[' {
            in_class = true;
            class_start = true;
        }
        out.push(c);
    }
    out
}

/// `pattern` (the text between the anchors) as a fully anchored regex with Go's meaning
/// under `semantics`: Prometheus 3 lets `.` match a newline (`^(?s:...)$`), 2 does not.
pub(super) fn anchored(pattern: &str, semantics: Semantics) -> String {
    let flags = match semantics {
        Semantics::V2 => "?:",
        Semantics::V3 => "?s:",
    };
    format!("^({flags}{})$", go_compatible(pattern))
}

/// Recompiles every regex matcher of `expr` with [`go_compatible`], and under Prometheus
/// 3's semantics with `.` matching a newline. A pattern the rewrite would break (none
/// should) keeps the parser's compilation.
pub(super) fn go_matchers(expr: &mut Expr, semantics: Semantics) {
    struct Rewrite(Semantics);
    impl ExprVisitorMut for Rewrite {
        type Error = std::convert::Infallible;
        fn pre_visit(&mut self, expr: &mut Expr) -> Result<bool, Self::Error> {
            let selector = match expr {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(ms) => &mut ms.vs,
                // The walk does not descend into an aggregation's parameter.
                Expr::Aggregate(agg) => {
                    if let Some(param) = &mut agg.param {
                        let _ = walk_expr_mut(self, param);
                    }
                    return Ok(true);
                }
                _ => return Ok(true),
            };
            let matchers = &mut selector.matchers;
            for m in matchers
                .matchers
                .iter_mut()
                .chain(matchers.or_matchers.iter_mut().flatten())
            {
                rewrite(m, self.0);
            }
            Ok(true)
        }
    }
    fn rewrite(m: &mut Matcher, semantics: Semantics) {
        let re = match &mut m.op {
            MatchOp::Re(re) | MatchOp::NotRe(re) => re,
            MatchOp::Equal | MatchOp::NotEqual => return,
        };
        // The parser anchors the pattern as `^(?:...)$` (escaping a `{` that opens no
        // repetition, as Go reads it); only the group's flags change here.
        let mut pattern = go_compatible(re.as_str());
        if semantics == Semantics::V3
            && let Some(inner) = pattern.strip_prefix("^(?:")
        {
            pattern = format!("^(?s:{inner}");
        }
        if pattern != re.as_str()
            && let Ok(compiled) = Regex::new(&pattern)
        {
            *re = compiled;
        }
    }
    let _ = walk_expr_mut(&mut Rewrite(semantics), expr);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(pattern: &str) -> Regex {
        Regex::new(&format!("^(?:{})$", go_compatible(pattern))).unwrap()
    }

    #[test]
    fn perl_classes_are_ascii_as_in_go() {
        assert!(go(r"\w+").is_match("cafe_1"));
        assert!(!go(r"\w+").is_match("café"));
        assert!(
            !go(r"\d").is_match("٣"),
            "an Arabic-Indic digit is no \\d in Go"
        );
        assert!(go(r"\D").is_match("٣"));
        assert!(go(r"\W").is_match("é"));
        assert!(
            !go(r"\s").is_match("\u{a0}"),
            "a no-break space is no \\s in Go"
        );
        assert!(!go(r"\s").is_match("\u{b}"), "nor is a vertical tab");
        assert!(go(r"[\w.]+").is_match("a.b"));
        assert!(!go(r"[\w.]+").is_match("é.b"));
        assert!(go(r"[^\d]+").is_match("abc"));
        assert!(go(r"[\W]").is_match("é"));
        // An ASCII word boundary: é is no word character, so "é" borders none.
        assert!(go(r".*\bx").is_match("éx"));
        assert!(!go(r".*\bx").is_match("ax"));
    }

    #[test]
    fn other_syntax_passes_through_and_brackets_read_as_go_reads_them() {
        assert_eq!(go_compatible(r"a\.b|\pL+"), r"a\.b|\pL+");
        assert!(go(r"[[:alpha:]]+").is_match("abc"));
        assert!(go(r"[]a]+").is_match("]a"));
        assert!(go(r"[a[]+").is_match("[a"), "a literal [ inside brackets");
        assert!(go(r"[a&&b]+").is_match("a&b"), "no set intersection in Go");
        assert!(go(r"(?i)\w+").is_match("ABC"));
    }
}
