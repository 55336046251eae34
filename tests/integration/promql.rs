//! What the dashboard and alert-rule tests read from a PromQL expression,
//! taken from the syntax tree of [`promql_parser`] (the Prometheus parser
//! ported to Rust), not from the text: metric names, number literals,
//! label matchers, function calls and binary operations.
//!
//! The parser accepts plain PromQL only; Grafana variables (`$window`,
//! `$__rate_interval`, …) must be replaced by concrete values first (see
//! `dashboards::substitute_variables`).

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, BinaryExpr, Call, Expr, VectorSelector};

/// Parses `expr`, panicking with `place` and the parser's message when it
/// is not valid PromQL.
pub fn parse(place: &str, expr: &str) -> Expr {
    parser::parse(expr).unwrap_or_else(|e| panic!("{place}: not valid PromQL ({e}): {expr}"))
}

/// Every node of `expr`, depth first, parents before children.
pub fn nodes(expr: &Expr) -> Vec<&Expr> {
    // Walked here rather than with `promql_parser::util::walk_expr`, which
    // skips an aggregation's parameter (the 0.8 of `quantile(0.8, …)`) and
    // whose visitor cannot keep borrows of the nodes.
    fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
        out.push(e);
        match e {
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    walk(p, out);
                }
                walk(&a.expr, out);
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Subquery(s) => walk(&s.expr, out),
            Expr::Call(c) => {
                for arg in &c.args.args {
                    walk(arg, out);
                }
            }
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

/// Every vector selector, including those inside range selectors.
pub fn selectors(expr: &Expr) -> Vec<&VectorSelector> {
    nodes(expr)
        .into_iter()
        .filter_map(|e| match e {
            Expr::VectorSelector(vs) => Some(vs),
            Expr::MatrixSelector(ms) => Some(&ms.vs),
            _ => None,
        })
        .collect()
}

/// The metric name of a selector: `name{…}` or `{__name__="name"}`.
pub fn metric_name(vs: &VectorSelector) -> Option<&str> {
    vs.name.as_deref().or_else(|| {
        vs.matchers
            .matchers
            .iter()
            .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
            .map(|m| m.value.as_str())
    })
}

/// Metric names selected by `expr`.
pub fn metric_names(expr: &Expr) -> Vec<&str> {
    selectors(expr)
        .into_iter()
        .filter_map(metric_name)
        .collect()
}

/// Every label matcher of every selector (`or`-ed alternatives included).
pub fn matchers(expr: &Expr) -> Vec<&Matcher> {
    selectors(expr)
        .into_iter()
        .flat_map(|vs| {
            vs.matchers
                .matchers
                .iter()
                .chain(vs.matchers.or_matchers.iter().flatten())
        })
        .collect()
}

/// Values of the equality and inequality matchers (`=`, `!=`, not the
/// regular-expression ones) on `label`.
pub fn literal_matcher_values<'a>(expr: &'a Expr, label: &str) -> Vec<&'a str> {
    matchers(expr)
        .into_iter()
        .filter(|m| m.name == label && matches!(m.op, MatchOp::Equal | MatchOp::NotEqual))
        .map(|m| m.value.as_str())
        .collect()
}

/// Number literals of `expr` (durations and label values are not numbers).
pub fn numbers(expr: &Expr) -> Vec<f64> {
    nodes(expr)
        .into_iter()
        .filter_map(|e| match e {
            Expr::NumberLiteral(n) => Some(n.val),
            _ => None,
        })
        .collect()
}

/// Every function call of `expr`.
pub fn calls(expr: &Expr) -> Vec<&Call> {
    nodes(expr)
        .into_iter()
        .filter_map(|e| match e {
            Expr::Call(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Every binary operation of `expr`.
pub fn binaries(expr: &Expr) -> Vec<&BinaryExpr> {
    nodes(expr)
        .into_iter()
        .filter_map(|e| match e {
            Expr::Binary(b) => Some(b),
            _ => None,
        })
        .collect()
}

/// `expr` without the parentheses around it.
pub fn unparen(mut expr: &Expr) -> &Expr {
    while let Expr::Paren(p) = expr {
        expr = &p.expr;
    }
    expr
}

#[test]
fn the_tree_yields_names_numbers_and_matchers_outside_strings() {
    let expr = parse(
        "example",
        r#"max(okr_creation_time_seconds{window="7d", quantile="0.8"}) and on() max(okr_target_creation_time_p80_seconds) / 86400"#,
    );
    assert_eq!(
        metric_names(&expr),
        [
            "okr_creation_time_seconds",
            "okr_target_creation_time_p80_seconds"
        ]
    );
    assert_eq!(numbers(&expr), [86400.0]);
    assert_eq!(literal_matcher_values(&expr, "window"), ["7d"]);

    let expr = parse(
        "example",
        "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket[1m]))) > 0.8 * 1e3",
    );
    assert_eq!(
        metric_names(&expr),
        ["http_server_request_duration_seconds_bucket"]
    );
    assert_eq!(numbers(&expr), [0.95, 0.8, 1e3]);
    assert_eq!(
        calls(&expr).iter().map(|c| c.func.name).collect::<Vec<_>>(),
        ["histogram_quantile", "rate"]
    );
    assert!(numbers(&parse("example", "rate(x[5m] offset 1h) + okr_x2")).is_empty());
    assert_eq!(
        literal_matcher_values(
            &parse(
                "example",
                r#"x_bucket{le="1.0", handle="a", le!="2.5", le=~"5.*"}"#
            ),
            "le"
        ),
        ["1.0", "2.5"]
    );
    assert!(parser::parse(r#"sum(rate(x{a="(("}[1m]))"#).is_ok());
    assert!(parser::parse("sum(rate(x[1m))").is_err());
}
