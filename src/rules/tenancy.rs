//! Tenancy: which series a namespaced rule may read. In cluster mode a rule confined to
//! its namespace reads only series labelled with it: a `namespace="<its namespace>"`
//! matcher is added to every selector of its PromQL, as prom-label-proxy does for
//! queries, so its status, Events and decisions can never carry another tenant's series.
//! Rules in a privileged namespace (node metrics, a forecast of the whole cluster) read
//! everything. The decision is made per rule by [`Tenancy::confines`]; the rewriting is
//! [`confine`], applied by the compiler right after parsing.

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{Expr, VectorSelector};

/// The label that names a series' namespace (cAdvisor, kube-state-metrics, and the
/// Prometheus Operator's scrape configs all write it).
pub const NAMESPACE_LABEL: &str = "namespace";

/// Who reads what.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tenancy {
    /// Confine rules to their own namespace's series (cluster mode's default).
    pub isolate: bool,
    /// Namespaces whose rules read every series.
    pub privileged: Vec<String>,
}

impl Tenancy {
    /// Whether a rule in `namespace` reads only its own namespace's series.
    pub fn confines(&self, namespace: &str) -> bool {
        self.isolate && !self.privileged.iter().any(|p| p == namespace)
    }
}

/// Adds `namespace="<namespace>"` to every selector in `expr` (to each `or` group of a
/// selector too). A selector that already names another namespace then selects nothing,
/// which is the point.
///
/// Recursion follows the tree's depth, which the compiler bounds before parsing.
pub fn confine(expr: &mut Expr, namespace: &str) {
    match expr {
        Expr::VectorSelector(vs) => confine_selector(vs, namespace),
        Expr::MatrixSelector(ms) => confine_selector(&mut ms.vs, namespace),
        Expr::Aggregate(agg) => {
            confine(&mut agg.expr, namespace);
            if let Some(param) = agg.param.as_mut() {
                confine(param, namespace);
            }
        }
        Expr::Unary(unary) => confine(&mut unary.expr, namespace),
        Expr::Binary(binary) => {
            confine(&mut binary.lhs, namespace);
            confine(&mut binary.rhs, namespace);
        }
        Expr::Paren(paren) => confine(&mut paren.expr, namespace),
        Expr::Subquery(sub) => confine(&mut sub.expr, namespace),
        Expr::Call(call) => {
            for arg in &mut call.args.args {
                confine(arg, namespace);
            }
        }
        Expr::Extension(ext) => {
            let mut children = ext.expr.children().to_vec();
            for child in &mut children {
                confine(child, namespace);
            }
            ext.expr = ext.expr.with_new_children(children);
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
    }
}

/// [`confine`] for one selector.
pub fn confine_selector(vs: &mut VectorSelector, namespace: &str) {
    let matcher = Matcher::new(MatchOp::Equal, NAMESPACE_LABEL, namespace);
    if vs.matchers.or_matchers.is_empty() {
        vs.matchers.matchers.push(matcher);
    } else {
        // With `or` groups the plain matchers are empty, and a non-empty set of them
        // would be read as one more group, selecting every series of the namespace.
        for group in &mut vs.matchers.or_matchers {
            group.push(matcher.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;
    use crate::route::Selector;

    fn selectors(expr: &Expr, out: &mut Vec<Selector>) {
        match expr {
            Expr::VectorSelector(vs) => out.push(Selector::from_promql(vs)),
            Expr::MatrixSelector(ms) => out.push(Selector::from_promql(&ms.vs)),
            Expr::Aggregate(a) => selectors(&a.expr, out),
            Expr::Binary(b) => {
                selectors(&b.lhs, out);
                selectors(&b.rhs, out);
            }
            Expr::Paren(p) => selectors(&p.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| selectors(a, out)),
            _ => {}
        }
    }

    #[test]
    fn every_selector_of_an_expression_is_confined() {
        let mut expr = promql_parser::parser::parse(
            r#"sum by (pod) (rate(http_requests_total{code=~"5.."}[5m])) / sum by (pod) (rate(http_requests_total[5m])) > 0.1 or up{job="a" or job="b"}"#,
        )
        .unwrap();
        confine(&mut expr, "shop");
        let mut found = Vec::new();
        selectors(&expr, &mut found);
        assert_eq!(found.len(), 3);
        let ours = Labels::from_pairs([
            ("__name__", "http_requests_total"),
            ("code", "500"),
            ("namespace", "shop"),
        ]);
        let theirs = Labels::from_pairs([
            ("__name__", "http_requests_total"),
            ("code", "500"),
            ("namespace", "bank"),
        ]);
        assert!(found[0].selects(&ours));
        assert!(!found[0].selects(&theirs));
        // A series of the namespace that matches no group stays out.
        let unrelated =
            Labels::from_pairs([("__name__", "up"), ("job", "c"), ("namespace", "shop")]);
        assert!(!found[2].selects(&unrelated));
        let mut nameless = promql_parser::parser::parse(r#"{job="a" or job="b"}"#).unwrap();
        confine(&mut nameless, "shop");
        let mut nameless_found = Vec::new();
        selectors(&nameless, &mut nameless_found);
        let other_job =
            Labels::from_pairs([("__name__", "x"), ("job", "c"), ("namespace", "shop")]);
        assert!(
            !nameless_found[0].selects(&other_job),
            "{:?}",
            nameless_found[0]
        );
        for job in ["a", "b"] {
            let up = |ns| Labels::from_pairs([("__name__", "up"), ("job", job), ("namespace", ns)]);
            assert!(found[2].selects(&up("shop")), "or group {job}");
            assert!(!found[2].selects(&up("bank")), "or group {job}");
        }
    }

    #[test]
    fn privileged_namespaces_read_everything() {
        let tenancy = Tenancy {
            isolate: true,
            privileged: vec!["prophet-system".into()],
        };
        assert!(tenancy.confines("shop"));
        assert!(!tenancy.confines("prophet-system"));
        assert!(!Tenancy::default().confines("shop"));
    }
}
