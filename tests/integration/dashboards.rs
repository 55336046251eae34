//! Static checks of the dashboards-as-code and of the container stack.
//!
//! Every `dashboards/*.json` must parse, give each panel a unique id, the
//! `prometheus` data source and a description, query only metrics of the
//! catalogue (DESIGN §4), compare against the exported `okr_target_*` series
//! instead of repeating a target literal, and never turn an absent ratio into
//! a zero. `docker-compose.yml` must mount files that exist, cover every
//! provisioning file, publish ports on 127.0.0.1 only, pin its images and
//! import the demo's history before Prometheus first starts. The latency
//! dashboard reads the native histogram where Prometheus stores one and
//! shows exemplars; the compose Prometheus scrapes native histograms beside
//! the classic buckets and Grafana links an exemplar's trace id.
//!
//! Queries are read with a PromQL parser (module [`promql`]) once their
//! Grafana variables are replaced by the concrete values documented on
//! [`SUBSTITUTIONS`]; [`dashboard_queries`] hands the same concrete queries
//! to tests that run them against a real Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use promql_parser::parser::Expr;
use serde_json::Value;

use crate::promql;

/// Metric names of the catalogue (DESIGN §4). Histograms are listed by their
/// base name; `_bucket`, `_count` and `_sum` are stripped before the lookup.
const CATALOGUE: &[&str] = &[
    "okr_creation_time_seconds",
    "okr_creation_time_within_target_ratio",
    "okr_creation_time_samples",
    "okr_draft_completion_ratio",
    "okr_drafts",
    "okr_engagement_ratio",
    "okr_engaged_followups_ratio",
    "okr_engagement_by_meeting_type_ratio",
    "okr_engagement_by_creator_region_ratio",
    "okr_engagement_by_company_ratio",
    "okr_time_to_next_action_avg_seconds",
    "okr_next_actions",
    "okr_mobile_views_ratio",
    "okr_views",
    "okr_followups_created",
    "okr_followups_published",
    "okr_followups",
    "okr_active_creators",
    "okr_repeat_creators_ratio",
    "okr_target_creation_time_p80_seconds",
    "okr_target_draft_completion_ratio",
    "okr_target_engagement_ratio",
    "okr_target_mobile_views_ratio",
    "okr_target_time_to_next_action_avg_seconds",
    "okr_alert_floor_draft_completion_ratio",
    "http_server_request_duration_seconds",
    "http_server_active_requests",
    "http_server_latency_target_seconds",
    "okr_exporter_collection_duration_seconds",
    "okr_exporter_collections_total",
    "okr_exporter_collection_errors_total",
    // Series the reconciliation of the incremental collectors corrected (DESIGN §7).
    "okr_exporter_reconcile_corrections_total",
    "okr_exporter_last_success_timestamp_seconds",
    "okr_exporter_up",
    "okr_exporter_build_info",
];

/// The exported targets and alert floor the OKR overview must compare against.
const TARGET_SERIES: &[&str] = &[
    "okr_target_creation_time_p80_seconds",
    "okr_target_draft_completion_ratio",
    "okr_target_engagement_ratio",
    "okr_target_mobile_views_ratio",
    "okr_target_time_to_next_action_avg_seconds",
    "okr_alert_floor_draft_completion_ratio",
];

/// Default target values; a query must read them from the `okr_target_*`
/// series, never repeat them as numbers.
const TARGET_LITERALS: &[f64] = &[600.0, 0.8, 0.4, 0.75, 604_800.0];

/// `le` label values the middleware writes (Prometheus 3 style, `1.0`).
const LE_STRINGS: &[&str] = &[
    "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.2", "0.25", "0.5", "0.75", "1.0", "2.5",
    "5.0", "7.5", "10.0", "+Inf",
];

/// Grafana's own variables that need no template definition.
const BUILTIN_VARIABLES: &[&str] = &["__rate_interval", "__interval", "__range"];

/// Replacements used by [`dashboard_queries`], longest name first so that no
/// name is replaced inside a longer one:
///
/// | variable | value | why |
/// |---|---|---|
/// | `$window` | `7d` | default of the window selector and a default exporter window |
/// | `$__rate_interval` | `1m` | what Grafana computes for the 15 s scrape interval (4 × 15 s) |
/// | `$__interval` | `1m` | a typical step for a few hours on screen |
/// | `$__range` | `1h` | the API latency dashboard's default time range |
/// | `$job`, `$route`, `$instance` | `.+` | multi-value variables used only with `=~`; "All" is `.+` |
///
/// `${name}` forms are replaced the same way. Every value is valid where
/// its variable appears (a duration in `[…]`, a string in a label matcher),
/// so the substituted query is plain PromQL: the tests hand it to
/// `promql_parser` (module [`promql`]) and to a real Prometheus.
const SUBSTITUTIONS: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__interval", "1m"),
    ("instance", ".+"),
    ("__range", "1h"),
    ("window", "7d"),
    ("route", ".+"),
    ("job", ".+"),
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dashboard_files() -> Vec<PathBuf> {
    let dir = repo_root().join("dashboards");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards/*.json found");
    files
}

fn load_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Every dashboard as (file stem, parsed JSON).
fn dashboards() -> Vec<(String, Value)> {
    dashboard_files()
        .iter()
        .map(|path| (file_stem(path), load_json(path)))
        .collect()
}

/// All panels of a dashboard, including those nested in (collapsed) rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        if let Some(list) = panels.as_array() {
            for panel in list {
                out.push(panel);
                walk(&panel["panels"], out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn is_row(panel: &Value) -> bool {
    panel["type"].as_str() == Some("row")
}

fn title(panel: &Value) -> String {
    panel["title"].as_str().unwrap_or("<untitled>").to_string()
}

/// Visible PromQL queries of a panel as (refId, expr).
fn panel_exprs(panel: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(targets) = panel["targets"].as_array() {
        for target in targets {
            if target["hide"].as_bool() == Some(true) {
                continue;
            }
            if let Some(expr) = target["expr"].as_str() {
                let ref_id = target["refId"].as_str().unwrap_or("?").to_string();
                out.push((ref_id, expr.to_string()));
            }
        }
    }
    out
}

/// Queries of the template variables (for example `label_values(...)`).
fn variable_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(list) = dashboard["templating"]["list"].as_array() {
        for var in list {
            if var["type"].as_str() != Some("query") {
                continue;
            }
            let name = var["name"].as_str().unwrap_or("?").to_string();
            let query = match &var["query"] {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("query")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                _ => String::new(),
            };
            out.push((name, query));
        }
    }
    out
}

fn variable_names(dashboard: &Value) -> BTreeSet<String> {
    dashboard["templating"]["list"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|var| var["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces the Grafana variables of a query by the values documented on
/// [`SUBSTITUTIONS`].
pub fn substitute_variables(expr: &str) -> String {
    let mut out = expr.to_string();
    for (name, value) in SUBSTITUTIONS {
        out = out.replace(&format!("${{{name}}}"), value);
        out = out.replace(&format!("${name}"), value);
    }
    out
}

/// Every visible panel query of every dashboard as
/// (dashboard file stem, panel title, PromQL ready to run), with the Grafana
/// variables replaced as documented on [`SUBSTITUTIONS`]. Hidden queries and
/// template-variable queries are left out.
pub fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (name, dashboard) in dashboards() {
        for panel in all_panels(&dashboard) {
            for (_, expr) in panel_exprs(panel) {
                out.push((name.clone(), title(panel), substitute_variables(&expr)));
            }
        }
    }
    out
}

/// The PromQL of a query, parsed after [`substitute_variables`]. A
/// template variable's `label_values(<selector>, <label>)` is Grafana's,
/// not PromQL: its selector is parsed.
fn parse_query(place: &str, query: &str) -> Expr {
    let query = substitute_variables(query);
    let promql = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .map_or(query.as_str(), |args| {
            args.rsplit_once(',').map_or(args, |(selector, _)| selector)
        });
    promql::parse(place, promql)
}

/// Metric names of the catalogue's families referenced by a query: names
/// starting with `okr_` or `http_server_`, with a histogram suffix removed.
fn metric_names(expr: &Expr) -> BTreeSet<String> {
    promql::metric_names(expr)
        .into_iter()
        .filter(|id| id.starts_with("okr_") || id.starts_with("http_server_"))
        .map(|id| {
            ["_bucket", "_count", "_sum"]
                .into_iter()
                .find_map(|suffix| id.strip_suffix(suffix))
                .unwrap_or(id)
                .to_string()
        })
        .collect()
}

/// Grafana variables (`$name` or `${name}`) referenced by a query.
fn referenced_variables(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '$' {
            i += 1;
            continue;
        }
        i += 1;
        let braced = chars.get(i) == Some(&'{');
        if braced {
            i += 1;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if i > start {
            out.insert(chars[start..i].iter().collect());
        }
    }
    out
}

fn datasource_uid(value: &Value) -> Option<&str> {
    value["datasource"]["uid"].as_str()
}

#[test]
fn dashboards_parse_and_have_distinct_uids() {
    let mut uids = BTreeMap::new();
    for (name, dashboard) in dashboards() {
        let uid = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{name}: uid {uid:?} must be 1..=40 characters"
        );
        assert!(
            dashboard["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{name}: no title"
        );
        let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
        assert!(
            schema >= 39,
            "{name}: schemaVersion {schema} is older than 39"
        );
        if let Some(other) = uids.insert(uid.to_string(), name.clone()) {
            panic!("dashboards {other} and {name} share uid {uid}");
        }
    }
}

#[test]
fn panel_ids_are_unique_and_panels_fit_the_grid() {
    for (name, dashboard) in dashboards() {
        let mut ids = BTreeSet::new();
        for panel in all_panels(&dashboard) {
            let id = panel["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: panel {:?} has no numeric id", title(panel)));
            assert!(ids.insert(id), "{name}: panel id {id} is used twice");
            let x = panel["gridPos"]["x"].as_u64().unwrap_or(0);
            let w = panel["gridPos"]["w"].as_u64().unwrap_or(0);
            assert!(
                w > 0 && x + w <= 24,
                "{name}: panel {:?} does not fit the 24-column grid",
                title(panel)
            );
        }
    }
}

/// Top-level panels never share a grid cell (panels inside a collapsed row
/// are placed when it opens, so they are left out).
#[test]
fn panels_do_not_overlap() {
    for (name, dashboard) in dashboards() {
        let mut taken: BTreeMap<(u64, u64), String> = BTreeMap::new();
        for panel in dashboard["panels"].as_array().into_iter().flatten() {
            let pos = &panel["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| pos[k].as_u64().unwrap_or(0));
            for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
                if let Some(other) = taken.insert(cell, title(panel)) {
                    panic!(
                        "{name}: panels {other:?} and {:?} overlap at {cell:?}",
                        title(panel)
                    );
                }
            }
        }
    }
}

/// The admin view's "Uptime %": share of successful scrapes and of non-5xx
/// responses per route over the selected range, as percentages.
#[test]
fn api_latency_shows_uptime_over_the_selected_range() {
    let (_, dashboard) = dashboards()
        .into_iter()
        .find(|(name, _)| name == "api-latency")
        .expect("dashboards/api-latency.json");
    let panels = all_panels(&dashboard);
    let find = |needle: &str| {
        panels
            .iter()
            .copied()
            .find(|p| panel_exprs(p).iter().any(|(_, e)| e.contains(needle)))
            .unwrap_or_else(|| panic!("api-latency: no panel queries {needle}"))
    };
    let scrapes = find("avg_over_time(up{");
    let responses = find("http_response_status_code!~\"5..\"");
    for panel in [scrapes, responses] {
        let percent = panel["fieldConfig"]["defaults"]["unit"].as_str() == Some("percentunit")
            || panel["fieldConfig"]["overrides"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|o| o["properties"].as_array().into_iter().flatten())
                .any(|p| p["id"] == "unit" && p["value"] == "percentunit");
        assert!(percent, "{:?} is not shown in percent", title(panel));
        assert!(
            matches!(panel["type"].as_str(), Some("stat" | "table")),
            "{:?}",
            title(panel)
        );
        for (ref_id, expr) in panel_exprs(panel) {
            assert!(
                expr.contains("[$__range]"),
                "{:?} query {ref_id} is not over the selected range: {expr}",
                title(panel)
            );
        }
    }
    // A route answering only 5xx reads 0 %, not "no data".
    let (_, ratio) = panel_exprs(responses)
        .into_iter()
        .find(|(_, e)| e.contains("!~"))
        .unwrap();
    assert!(ratio.contains(" or 0 * "), "{ratio}");
}

/// A ratio of the responses with some status codes to all responses reads 0
/// when none of them had such a code: a status code that never occurred has
/// no series, so its numerator needs an `or 0 * <all responses>` fallback
/// (without one, "Server error ratio (5xx) by route" read "No data" on a
/// healthy system). Routes without traffic stay absent, as the denominator
/// keeps its `> 0`.
#[test]
fn status_code_ratios_read_zero_when_no_response_matched() {
    let mut ratios = Vec::new();
    for (name, dashboard) in dashboards() {
        for panel in all_panels(&dashboard) {
            for (ref_id, expr) in panel_exprs(panel) {
                let by_status = expr.contains("http_response_status_code=~")
                    || expr.contains("http_response_status_code!~");
                if !(by_status && expr.contains(" / ")) {
                    continue;
                }
                let (numerator, denominator) = expr.rsplit_once(" / ").unwrap();
                assert!(
                    numerator.contains(" or 0 * "),
                    "{name}: panel {:?} query {ref_id} has no series, not 0, when no \
                     response has the status codes it counts: {expr}",
                    title(panel)
                );
                assert!(
                    denominator.trim_end_matches(')').ends_with("> 0"),
                    "{name}: panel {:?} query {ref_id} divides by a rate that may be 0: {expr}",
                    title(panel)
                );
                ratios.push(title(panel));
            }
        }
    }
    assert!(
        ratios
            .iter()
            .any(|t| t == "Server error ratio (5xx) by route"),
        "{ratios:?}"
    );
}

/// Rows only group panels: they carry no query, so they need neither a data
/// source nor a description.
#[test]
fn every_panel_uses_the_prometheus_datasource_and_has_a_description() {
    for (name, dashboard) in dashboards() {
        for panel in all_panels(&dashboard).into_iter().filter(|p| !is_row(p)) {
            let t = title(panel);
            let description = panel["description"].as_str().unwrap_or("").trim();
            assert!(
                !description.is_empty(),
                "{name}: panel {t:?} has no description"
            );

            let panel_uid = datasource_uid(panel);
            let targets = panel["targets"].as_array().cloned().unwrap_or_default();
            assert!(!targets.is_empty(), "{name}: panel {t:?} has no query");
            if let Some(uid) = panel_uid {
                assert_eq!(
                    uid, "prometheus",
                    "{name}: panel {t:?} uses data source {uid}"
                );
                assert_eq!(
                    panel["datasource"]["type"].as_str(),
                    Some("prometheus"),
                    "{name}: panel {t:?}"
                );
            }
            let mut ref_ids = BTreeSet::new();
            for target in &targets {
                let ref_id = target["refId"].as_str().unwrap_or("");
                assert!(
                    !ref_id.is_empty() && ref_ids.insert(ref_id.to_string()),
                    "{name}: panel {t:?} has a missing or repeated refId {ref_id:?}"
                );
                // A query without its own data source inherits the panel's.
                let uid = datasource_uid(target).or(panel_uid);
                assert_eq!(
                    uid,
                    Some("prometheus"),
                    "{name}: panel {t:?} query {ref_id} has no prometheus data source"
                );
                assert!(
                    target["expr"]
                        .as_str()
                        .is_some_and(|e| !e.trim().is_empty()),
                    "{name}: panel {t:?} query {ref_id} has no expr"
                );
            }
        }
        for var in dashboard["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            if var["type"].as_str() == Some("query") {
                assert_eq!(
                    datasource_uid(&var),
                    Some("prometheus"),
                    "{name}: variable {:?} must query the prometheus data source",
                    var["name"]
                );
            }
        }
    }
}

#[test]
fn queries_reference_only_catalogue_metrics() {
    let catalogue: BTreeSet<&str> = CATALOGUE.iter().copied().collect();
    for (name, dashboard) in dashboards() {
        let mut queries: Vec<(String, String)> = Vec::new();
        for panel in all_panels(&dashboard) {
            for (ref_id, expr) in panel_exprs(panel) {
                queries.push((format!("panel {:?} query {ref_id}", title(panel)), expr));
            }
        }
        for (var, query) in variable_queries(&dashboard) {
            queries.push((format!("variable {var}"), query));
        }
        for (place, query) in queries {
            let expr = parse_query(&format!("{name}: {place}"), &query);
            for metric in metric_names(&expr) {
                assert!(
                    catalogue.contains(metric.as_str()),
                    "{name}: {place}: {metric} is not in the metric catalogue (DESIGN §4): {query}"
                );
            }
        }
    }
}

#[test]
fn queries_compare_against_target_series_not_literals() {
    for (name, dashboard) in dashboards() {
        for panel in all_panels(&dashboard) {
            for (ref_id, expr) in panel_exprs(panel) {
                let place = format!("{name}: panel {:?} query {ref_id}", title(panel));
                for value in promql::numbers(&parse_query(&place, &expr)) {
                    let is_target = TARGET_LITERALS
                        .iter()
                        .any(|t| (t - value).abs() <= 1e-9 * t.abs().max(1.0));
                    assert!(
                        !is_target,
                        "{name}: panel {:?} query {ref_id} hard-codes the target value {value}; \
                         read it from the okr_target_* series instead: {expr}",
                        title(panel)
                    );
                }
            }
        }
    }
}

#[test]
fn okr_overview_reads_every_target_series() {
    let (_, overview) = dashboards()
        .into_iter()
        .find(|(name, _)| name == "okr-overview")
        .expect("dashboards/okr-overview.json");
    let used: BTreeSet<String> = all_panels(&overview)
        .into_iter()
        .flat_map(panel_exprs)
        .flat_map(|(ref_id, expr)| metric_names(&parse_query(&ref_id, &expr)))
        .collect();
    for series in TARGET_SERIES {
        assert!(
            used.contains(*series),
            "okr-overview never queries {series}"
        );
    }
}

#[test]
fn okr_overview_has_the_window_selector() {
    let (_, overview) = dashboards()
        .into_iter()
        .find(|(name, _)| name == "okr-overview")
        .expect("dashboards/okr-overview.json");
    let var = overview["templating"]["list"]
        .as_array()
        .and_then(|list| list.iter().find(|v| v["name"].as_str() == Some("window")))
        .expect("okr-overview has a `window` variable");
    assert_eq!(var["type"].as_str(), Some("custom"));
    let options: Vec<&str> = var["query"]
        .as_str()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    assert_eq!(options, ["1d", "7d", "30d"]);
    assert_eq!(var["current"]["value"].as_str(), Some("7d"));
}

/// Ratio and quantile series are absent when a window has no samples; a
/// panel must then say "No data", not show a made-up zero.
#[test]
fn absent_series_are_not_turned_into_zeros() {
    for (name, dashboard) in dashboards() {
        for panel in all_panels(&dashboard) {
            for (ref_id, expr) in panel_exprs(panel) {
                let place = format!("{name}: panel {:?} query {ref_id}", title(panel));
                let tree = parse_query(&place, &expr);
                let absent = promql::calls(&tree)
                    .into_iter()
                    .any(|c| c.func.name == "absent");
                let or_vector = promql::binaries(&tree).into_iter().any(|b| {
                    b.op.to_string() == "or"
                        && matches!(promql::unparen(&b.rhs), Expr::Call(c) if c.func.name == "vector")
                });
                assert!(
                    !absent && !or_vector,
                    "{place} fills absent series (absent(…) or `or vector(…)`): {expr}"
                );
            }
            let no_value = panel["fieldConfig"]["defaults"]["noValue"]
                .as_str()
                .unwrap_or("");
            assert!(
                no_value.trim() != "0",
                "{name}: panel {:?} shows 0 for no data",
                title(panel)
            );
        }
    }
}

#[test]
fn le_matchers_use_the_exported_bucket_strings() {
    for (dashboard, panel, expr) in dashboard_queries() {
        let tree = promql::parse(&format!("{dashboard}: panel {panel:?}"), &expr);
        for le in promql::literal_matcher_values(&tree, "le") {
            assert!(
                LE_STRINGS.contains(&le),
                "le=\"{le}\" is not a bucket the middleware writes: {expr}"
            );
        }
    }
}

#[test]
fn query_variables_are_defined() {
    for (name, dashboard) in dashboards() {
        let defined = variable_names(&dashboard);
        let mut texts: Vec<String> = all_panels(&dashboard)
            .into_iter()
            .flat_map(|p| {
                let mut v: Vec<String> = panel_exprs(p).into_iter().map(|(_, e)| e).collect();
                v.push(title(p));
                if let Some(r) = p["repeat"].as_str() {
                    v.push(format!("${r}"));
                }
                v
            })
            .collect();
        texts.extend(variable_queries(&dashboard).into_iter().map(|(_, q)| q));
        for text in texts {
            for var in referenced_variables(&text) {
                assert!(
                    defined.contains(&var) || BUILTIN_VARIABLES.contains(&var.as_str()),
                    "{name}: ${var} is used but not defined: {text}"
                );
            }
        }
    }
}

#[test]
fn dashboard_queries_are_concrete() {
    let queries = dashboard_queries();
    assert!(
        queries.len() >= 20,
        "expected the dashboards' queries, got {}",
        queries.len()
    );
    for (dashboard, panel, expr) in &queries {
        assert!(
            !expr.contains('$'),
            "{dashboard}: panel {panel:?} still has a variable: {expr}"
        );
        // Every query is PromQL once its variables are replaced.
        promql::parse(&format!("{dashboard}: panel {panel:?}"), expr);
    }
    assert!(queries.iter().any(|(_, _, e)| e.contains("window=\"7d\"")));
    assert!(queries.iter().any(|(_, _, e)| e.contains("[1m]")));
}

#[test]
fn variables_become_concrete_promql() {
    assert_eq!(
        substitute_variables("x{job=~\"${job}\", w=\"$window\"}[$__rate_interval]"),
        "x{job=~\".+\", w=\"7d\"}[1m]"
    );
    let expr = parse_query(
        "example",
        "histogram_quantile(0.95, sum by (le) (rate(http_server_request_duration_seconds_bucket{job=~\"$job\"}[$__rate_interval])))",
    );
    assert_eq!(
        metric_names(&expr).into_iter().collect::<Vec<_>>(),
        ["http_server_request_duration_seconds"]
    );
    let variable = parse_query(
        "example",
        "label_values(http_server_request_duration_seconds_count{job=~\"$job\"}, http_route)",
    );
    assert_eq!(
        metric_names(&variable).into_iter().collect::<Vec<_>>(),
        ["http_server_request_duration_seconds"]
    );
}

// ---------------------------------------------------------------- container stack

/// A YAML file of the repository, parsed.
fn load_yaml(relative: &str) -> Value {
    let path = repo_root().join(relative);
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_saphyr::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

/// `docker-compose.yml`, parsed.
fn compose() -> Value {
    load_yaml("docker-compose.yml")
}

/// One service of the compose file.
fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(
        service.is_object(),
        "docker-compose.yml has no service {name}"
    );
    service
}

/// The strings of a YAML list (nothing when it is absent).
fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.as_str().map(str::to_owned))
        .collect()
}

/// The items of list `key` of every service (short syntax).
fn every_service_list(compose: &Value, key: &str) -> Vec<String> {
    compose["services"]
        .as_object()
        .into_iter()
        .flat_map(|services| services.values())
        .flat_map(|service| strings(&service[key]))
        .collect()
}

/// Host side of every bind mount (`./path:/container[:mode]`), normalised
/// without the leading `./` and trailing `/`.
fn compose_bind_mounts(compose: &Value) -> Vec<(String, String)> {
    every_service_list(compose, "volumes")
        .into_iter()
        .filter(|item| item.starts_with("./"))
        .map(|item| {
            let mut parts = item.splitn(3, ':');
            let host = parts
                .next()
                .unwrap_or("")
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string();
            let container = parts.next().unwrap_or("").to_string();
            (host, container)
        })
        .collect()
}

/// The `condition:` under `depends_on:` → `dep:` of a service.
fn depends_on_condition(service: &Value, dep: &str) -> Option<String> {
    service["depends_on"][dep]["condition"]
        .as_str()
        .map(str::to_owned)
}

/// The string value of `key` of a service.
fn service_value(service: &Value, key: &str) -> Option<String> {
    service[key]
        .as_str()
        .map(str::to_owned)
        .filter(|v| !v.is_empty())
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn compose_mounts_existing_paths() {
    let compose = compose();
    let mounts = compose_bind_mounts(&compose);
    assert!(
        !mounts.is_empty(),
        "docker-compose.yml mounts nothing from the repository"
    );
    for (host, container) in &mounts {
        assert!(
            repo_root().join(host).exists(),
            "docker-compose.yml mounts ./{host}, which does not exist"
        );
        assert!(
            container.starts_with('/'),
            "mount of ./{host} has no absolute container path"
        );
    }
    let expected = [
        (
            "provisioning/prometheus/prometheus.yml",
            "/etc/prometheus/prometheus.yml",
        ),
        ("alerts", "/etc/prometheus/rules"),
        (
            "provisioning/alertmanager/alertmanager.yml",
            "/etc/alertmanager/alertmanager.yml",
        ),
        (
            "provisioning/grafana/datasources",
            "/etc/grafana/provisioning/datasources",
        ),
        (
            "provisioning/grafana/dashboards",
            "/etc/grafana/provisioning/dashboards",
        ),
        ("dashboards", "/var/lib/grafana/dashboards"),
    ];
    for (host, container) in expected {
        assert!(
            mounts.iter().any(|(h, c)| h == host && c == container),
            "docker-compose.yml must mount ./{host} at {container}"
        );
    }
    assert!(
        compose_service(&compose, "okr-exporter")["build"]["dockerfile"] == "Dockerfile"
            && repo_root().join("Dockerfile").is_file(),
        "the okr-exporter service must be built from ./Dockerfile"
    );
}

#[test]
fn compose_mounts_every_provisioning_file() {
    let mounts: Vec<String> = compose_bind_mounts(&compose())
        .into_iter()
        .map(|(host, _)| host)
        .collect();
    let root = repo_root();
    let files = files_under(&root.join("provisioning"));
    assert!(!files.is_empty(), "provisioning/ is empty");
    // Stack configuration only: the routing/inhibition test scripts run in
    // CI, `*.local.yml` is for a Prometheus on this machine, and
    // provisioning/prometheus/rules links to alerts/ (mounted as such).
    let rules_link = root.join("provisioning/prometheus/rules");
    for file in files.into_iter().filter(|f| {
        f.extension().is_none_or(|e| e != "sh")
            && !f.to_string_lossy().contains(".local.")
            && !f.starts_with(&rules_link)
    }) {
        let rel = file
            .strip_prefix(&root)
            .expect("under the repository")
            .to_string_lossy()
            .replace('\\', "/");
        let covered = mounts
            .iter()
            .any(|m| rel == *m || rel.starts_with(&format!("{m}/")));
        assert!(
            covered,
            "docker-compose.yml does not mount {rel} (directly or through its directory)"
        );
    }
}

#[test]
fn compose_publishes_ports_on_loopback_only() {
    let ports = every_service_list(&compose(), "ports");
    assert!(!ports.is_empty(), "docker-compose.yml publishes no port");
    for port in ports {
        assert!(
            port.starts_with("127.0.0.1:"),
            "port {port:?} must be bound to 127.0.0.1"
        );
    }
}

#[test]
fn grafana_provisioning_matches_the_dashboards() {
    let datasources = load_yaml("provisioning/grafana/datasources/prometheus.yml");
    let source = datasources["datasources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["uid"] == "prometheus")
        .expect("a data source with uid prometheus");
    assert_eq!(source["type"], "prometheus", "{source}");
    assert_eq!(source["url"], "http://prometheus:9090", "{source}");
    let providers = load_yaml("provisioning/grafana/dashboards/dashboards.yml");
    assert!(
        providers["providers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["type"] == "file" && p["options"]["path"] == "/var/lib/grafana/dashboards"),
        "the dashboard provider must load /var/lib/grafana/dashboards from files"
    );
}

#[test]
fn compose_pins_every_image() {
    let compose = compose();
    let images: Vec<String> = compose["services"]
        .as_object()
        .into_iter()
        .flat_map(|services| services.values())
        .filter_map(|service| service_value(service, "image"))
        .collect();
    assert!(images.len() >= 7, "{images:?}");
    for image in &images {
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "image {image:?} is not pinned to a tag"
        );
    }
    // okr-exporter:local is never pulled: one service builds it.
    assert_eq!(
        compose_service(&compose, "okr-exporter")["build"]["dockerfile"],
        "Dockerfile",
        "the okr-exporter service must build okr-exporter:local"
    );
}

/// `okr-backfill` writes the demo's history once the demo is ready,
/// `okr-blocks` turns it into blocks in Prometheus's volume, and Prometheus
/// starts only after both succeeded; the labels continue the live series,
/// the volumes are declared and shared, the owners fit.
#[test]
fn compose_imports_the_demo_history_before_prometheus_starts() {
    let compose = compose();
    let exporter = compose_service(&compose, "okr-exporter");
    let backfill = compose_service(&compose, "okr-backfill");
    let blocks = compose_service(&compose, "okr-blocks");
    let prometheus = compose_service(&compose, "prometheus");

    // The backfill reads the history only once the demo is ready: the demo
    // answers nothing before its history exists, /readyz once the database
    // is reachable.
    assert!(
        strings(&exporter["healthcheck"]["test"])
            .iter()
            .any(|part| part.contains("GET /readyz")),
        "the okr-exporter healthcheck must probe /readyz"
    );
    assert_eq!(
        depends_on_condition(backfill, "okr-exporter").as_deref(),
        Some("service_healthy")
    );
    assert_eq!(
        service_value(backfill, "image").as_deref(),
        Some("okr-exporter:local")
    );
    let command = strings(&backfill["command"]);
    assert_eq!(command.first().map(String::as_str), Some("backfill"));
    let arg = |name: &str| {
        command
            .iter()
            .find_map(|c| c.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("okr-backfill has no --{name}"))
            .to_owned()
    };
    assert!(
        strings(&exporter["command"]).contains(
            &"--database-url=postgres://okr:${POSTGRES_PASSWORD:-okr}@postgres:5432/followup"
                .to_owned()
        ) && arg("database-url")
            == "postgres://okr:${POSTGRES_PASSWORD:-okr}@postgres:5432/followup",
        "okr-backfill must read the demo's database"
    );
    // As many days as the demo generates.
    assert!(
        exporter["environment"]["OKR_DEMO_DAYS"] == "${OKR_DEMO_DAYS:-45}",
        "the demo's days must be OKR_DEMO_DAYS"
    );
    assert_eq!(arg("from"), "${OKR_DEMO_DAYS:-45}d");
    // The labels Prometheus gives the live series of the exporter.
    let scrape = load_yaml("provisioning/prometheus/prometheus.yml");
    let job = scrape["scrape_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|job| job["job_name"] == "okr-exporter")
        .expect("an okr-exporter scrape job");
    let target = job["static_configs"][0]["targets"][0]
        .as_str()
        .expect("the okr-exporter target");
    let labels: Vec<&str> = command
        .iter()
        .filter_map(|c| c.strip_prefix("--label="))
        .collect();
    assert_eq!(
        labels,
        ["job=okr-exporter".to_owned(), format!("instance={target}")]
    );
    let output = arg("output");
    assert!(output.starts_with("/backfill/"), "{output}");
    assert!(strings(&backfill["volumes"]).contains(&"backfill:/backfill".to_owned()));

    // promtool from the Prometheus image, into Prometheus's volume, as
    // Prometheus's user (the image's default), from the backfill's file.
    assert_eq!(
        service_value(blocks, "image"),
        service_value(prometheus, "image")
    );
    assert!(
        service_value(blocks, "user").is_none(),
        "okr-blocks must write as the image's user (nobody), as Prometheus does"
    );
    assert_eq!(
        depends_on_condition(blocks, "okr-backfill").as_deref(),
        Some("service_completed_successfully")
    );
    // The entrypoint and its command, as one line of words.
    let script = [strings(&blocks["entrypoint"]), strings(&blocks["command"])]
        .concat()
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let promtool = format!(
        "promtool tsdb create-blocks-from openmetrics --max-block-duration={} {output} /prometheus",
        okr_exporter::demo::PROMTOOL_MAX_BLOCK_DURATION
    );
    assert!(
        script.contains(&promtool),
        "okr-blocks must run `{promtool}`"
    );
    // Once Prometheus has run on the volume, nothing is imported again.
    assert!(
        script.contains("if [ -d /prometheus/wal ]; then") && script.contains("exit 0; fi;"),
        "okr-blocks must skip a volume Prometheus has already used"
    );
    let volumes = strings(&blocks["volumes"]);
    assert!(
        volumes.contains(&"backfill:/backfill:ro".to_owned())
            && volumes.contains(&"prometheus-data:/prometheus".to_owned()),
        "{volumes:?}"
    );
    assert!(strings(&prometheus["volumes"]).contains(&"prometheus-data:/prometheus".to_owned()));
    assert_eq!(
        depends_on_condition(prometheus, "okr-blocks").as_deref(),
        Some("service_completed_successfully")
    );
    // Retention longer than the history: older blocks would go at once.
    let retention = strings(&prometheus["command"])
        .iter()
        .find_map(|c| {
            c.strip_prefix("--storage.tsdb.retention.time=")
                .map(str::to_owned)
        })
        .expect("a retention time");
    let retention = okr_exporter::config::parse_duration(&retention).expect("retention");
    assert!(retention >= std::time::Duration::from_secs(45 * 86_400));

    // Every named volume a service mounts is declared.
    let declared: Vec<&str> = compose["volumes"]
        .as_object()
        .expect("top-level volumes")
        .keys()
        .map(String::as_str)
        .collect();
    for mount in every_service_list(&compose, "volumes") {
        if let Some((volume, _)) = mount.split_once(':')
            && !volume.starts_with('.')
            && !volume.starts_with('/')
        {
            assert!(
                declared.contains(&volume),
                "volume {volume} is not declared"
            );
        }
    }

    // The image's user owns /backfill, which a new volume copies.
    let dockerfile = fs::read_to_string(repo_root().join("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains("install -d -o 10001 -g 10001 -m 0755 /backfill")
            && dockerfile.contains("USER 10001:10001"),
        "the runtime image must have /backfill owned by its user 10001"
    );
}

// ------------------------------------------------ native histograms and exemplars

/// The native histogram of the latency family: one series named like the
/// family (no `_bucket`, `_count` or `_sum`), scraped over protobuf.
const NATIVE_HISTOGRAM: &str = "http_server_request_duration_seconds";

/// Its classic buckets.
const CLASSIC_BUCKETS: &str = "http_server_request_duration_seconds_bucket";

fn api_latency() -> Value {
    dashboards()
        .into_iter()
        .find(|(name, _)| name == "api-latency")
        .map(|(_, dashboard)| dashboard)
        .expect("dashboards/api-latency.json")
}

/// The metric names a query selects, suffixes kept.
fn selected_names(place: &str, expr: &str) -> BTreeSet<String> {
    promql::metric_names(&parse_query(place, expr))
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// `q` and the histogram argument, when `expr` is `histogram_quantile(q, …)`.
fn quantile(expr: &Expr) -> Option<(f64, &Expr)> {
    let Expr::Call(call) = promql::unparen(expr) else {
        return None;
    };
    if call.func.name != "histogram_quantile" {
        return None;
    }
    let [q, histogram] = call.args.args.as_slice() else {
        return None;
    };
    let Expr::NumberLiteral(q) = promql::unparen(q) else {
        return None;
    };
    Some((q.val, histogram))
}

/// `histogram_quantile(q, …)`'s `q` and the label set its second argument
/// is aggregated by, when `expr` is that call.
fn quantile_and_grouping(expr: &Expr) -> Option<(f64, BTreeSet<String>)> {
    let (q, histogram) = quantile(expr)?;
    let Expr::Aggregate(aggregate) = promql::unparen(histogram) else {
        return None;
    };
    let by = match &aggregate.modifier {
        Some(promql_parser::parser::LabelModifier::Include(labels)) => {
            labels.labels.iter().cloned().collect()
        }
        _ => return None,
    };
    Some((q, by))
}

/// The label matchers of an expression's selectors, metric names left out.
fn label_matchers(expr: &Expr) -> BTreeSet<String> {
    promql::matchers(expr)
        .into_iter()
        .filter(|m| m.name != "__name__")
        .map(ToString::to_string)
        .collect()
}

/// Whether `expr` computes a P95: `histogram_quantile(0.95, …)` anywhere in it.
fn is_p95(expr: &Expr) -> bool {
    promql::nodes(expr)
        .into_iter()
        .any(|node| quantile(node).is_some_and(|(q, _)| q == 0.95))
}

/// The metric names an expression selects.
fn names(expr: &Expr) -> BTreeSet<&str> {
    promql::metric_names(expr).into_iter().collect()
}

/// A heatmap of the native histogram: Grafana draws its exponential buckets
/// as cells (no `le` to calculate from), on the dashboard's own filters.
#[test]
fn api_latency_has_a_native_histogram_heatmap() {
    let dashboard = api_latency();
    let heatmaps: Vec<&Value> = all_panels(&dashboard)
        .into_iter()
        .filter(|panel| panel["type"] == "heatmap")
        .filter(|panel| {
            panel_exprs(panel).iter().any(|(ref_id, expr)| {
                selected_names(ref_id, expr) == BTreeSet::from([NATIVE_HISTOGRAM.to_owned()])
            })
        })
        .collect();
    assert_eq!(
        heatmaps.len(),
        1,
        "api-latency needs one heatmap of {NATIVE_HISTOGRAM} (without _bucket)"
    );
    let panel = heatmaps[0];
    let targets = panel["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 1, "{}", title(panel));
    let target = &targets[0];
    let expr = target["expr"].as_str().expect("expr");
    assert_eq!(target["format"], "heatmap", "{expr}");
    assert_eq!(target["range"], true, "{expr}");
    // sum(rate(<native>{…}[$__rate_interval])): all buckets of the selected
    // series added up, per step.
    let tree = parse_query(&title(panel), expr);
    let Expr::Aggregate(sum) = promql::unparen(&tree) else {
        panic!("{expr} is not an aggregation");
    };
    assert!(
        sum.op.to_string() == "sum" && sum.modifier.is_none(),
        "{expr} must sum every bucket without grouping"
    );
    assert!(
        promql::calls(&tree).iter().any(|c| c.func.name == "rate"),
        "{expr}"
    );
    let variables = referenced_variables(expr);
    for var in ["job", "route", "__rate_interval"] {
        assert!(variables.contains(var), "{expr} ignores ${var}");
    }
    let options = &panel["options"];
    assert_eq!(options["calculate"], false, "{}", title(panel));
    assert_eq!(options["yAxis"]["unit"], "s", "{}", title(panel));
}

/// The native-first P95: `histogram_quantile` of the native series `or` of
/// the classic buckets. `or` keeps every series of its left side and adds a
/// right-side series only where no left-side one has the same labels, so
/// each route and method reads the native histogram where Prometheus stores
/// one, the buckets otherwise (2.x without the feature flag, 3.x without
/// `scrape_native_histograms`, a target without native buckets). Both sides
/// must end with the same labels and the same filters for that to hold.
#[test]
fn api_latency_p95_reads_the_native_histogram_else_the_buckets() {
    let dashboard = api_latency();
    let mut found = Vec::new();
    for panel in all_panels(&dashboard) {
        for (ref_id, expr) in panel_exprs(panel) {
            let place = format!("api-latency: panel {:?} query {ref_id}", title(panel));
            let tree = parse_query(&place, &expr);
            let Expr::Binary(or) = promql::unparen(&tree) else {
                continue;
            };
            if or.op.to_string() != "or" {
                continue;
            }
            let (Some((q_native, by_native)), Some((q_classic, by_classic))) = (
                quantile_and_grouping(&or.lhs),
                quantile_and_grouping(&or.rhs),
            ) else {
                continue;
            };
            assert!(
                or.modifier.as_ref().is_none_or(|m| m.matching.is_none()),
                "{place}: `or` must match on all labels: {expr}"
            );
            assert!(q_native == 0.95 && q_classic == 0.95, "{place}: {expr}");
            assert_eq!(
                names(&or.lhs),
                BTreeSet::from([NATIVE_HISTOGRAM]),
                "{place}: the left side must read the native histogram: {expr}"
            );
            assert_eq!(
                names(&or.rhs),
                BTreeSet::from([CLASSIC_BUCKETS]),
                "{place}: the right side must read the classic buckets: {expr}"
            );
            assert!(
                !by_native.contains("le") && by_classic.contains("le"),
                "{place}: only the classic side groups by le: {expr}"
            );
            let mut by_classic_without_le = by_classic.clone();
            by_classic_without_le.remove("le");
            assert_eq!(
                by_native, by_classic_without_le,
                "{place}: both sides must give the same labels: {expr}"
            );
            assert!(
                by_native.contains("http_route") && by_native.contains("http_request_method"),
                "{place}: one P95 per route and method: {expr}"
            );
            assert_eq!(
                label_matchers(&or.lhs),
                label_matchers(&or.rhs),
                "{place}: both sides must filter alike: {expr}"
            );
            assert!(
                referenced_variables(&expr)
                    .is_superset(&BTreeSet::from(["job".to_owned(), "route".to_owned()])),
                "{place}: {expr}"
            );
            assert_eq!(panel["type"], "timeseries", "{place}");
            found.push(title(panel));
        }
    }
    assert_eq!(found.len(), 1, "native-first P95 panels: {found:?}");
}

/// Grafana asks Prometheus for exemplars only for a query whose target says
/// `"exemplar": true`, and only for range queries (an instant query in a
/// table has no time axis to put them on). Every P95 range query shows them.
#[test]
fn p95_range_queries_show_exemplars() {
    let mut with_exemplars = 0;
    for (name, dashboard) in dashboards() {
        for panel in all_panels(&dashboard) {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let place = format!("{name}: panel {:?} query {}", title(panel), target["refId"]);
                let instant = target["instant"] == true || target["range"] == false;
                if target["hide"] == true || instant || !is_p95(&parse_query(&place, expr)) {
                    continue;
                }
                assert_eq!(
                    target["exemplar"], true,
                    "{place} shows a P95 without its exemplars: {expr}"
                );
                with_exemplars += 1;
            }
        }
    }
    // "P95 latency vs per-endpoint target", the native-first P95 and the
    // per-route P50 / P95 / P99.
    assert!(with_exemplars >= 3, "{with_exemplars} P95 range queries");
}

/// The compose Prometheus (3.x) scrapes native histograms and keeps the
/// classic buckets beside them, which every latency rule, alert and most
/// panels read; it stores exemplars. Both keys are Prometheus 3 only and
/// promtool 2.x, which checks prometheus.yml, rejects them: the service's
/// entrypoint adds them under `global:` in a copy of prometheus.yml next to
/// it, and Prometheus runs on that copy. The test makes the same copy.
#[test]
fn compose_prometheus_scrapes_native_histograms_and_keeps_the_buckets() {
    let compose = compose();
    let prometheus = compose_service(&compose, "prometheus");

    // scrape_native_histograms is the only switch from 3.9 on (3.8 added
    // it; the native-histograms feature flag does nothing since 3.9).
    let image = service_value(prometheus, "image").expect("prometheus image");
    let version: Vec<u64> = image
        .rsplit_once(":v")
        .map(|(_, v)| v)
        .unwrap_or_default()
        .split('.')
        .map(|part| part.parse().unwrap_or(0))
        .collect();
    assert!(
        version.len() == 3 && (version[0], version[1]) >= (3, 9),
        "{image}: scrape_native_histograms needs Prometheus 3.9 or later here"
    );

    let entrypoint = strings(&prometheus["entrypoint"]);
    assert!(
        entrypoint.len() == 4 && entrypoint[..2] == ["/bin/sh", "-c"],
        "{entrypoint:?}"
    );
    let script = &entrypoint[2];
    // The command's flags become the script's "$@" (`$$` is Compose's `$`).
    assert!(script.ends_with("exec /bin/prometheus \"$$@\""), "{script}");
    assert!(
        script.contains("/^global:/")
            && script.contains(
                "/etc/prometheus/prometheus.yml > /etc/prometheus/prometheus.compose.yml"
            ),
        "{script}"
    );
    let command = strings(&prometheus["command"]);
    assert!(
        command.contains(&"--config.file=/etc/prometheus/prometheus.compose.yml".to_owned()),
        "Prometheus must run on the copy: {command:?}"
    );
    assert!(
        command.contains(&"--enable-feature=exemplar-storage".to_owned()),
        "Prometheus must store exemplars: {command:?}"
    );

    // The lines the script prints after `global:`.
    let added: Vec<&str> = script
        .split("print \"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(line, _)| line))
        .collect();
    assert!(!added.is_empty(), "{script}");
    let source = fs::read_to_string(repo_root().join("provisioning/prometheus/prometheus.yml"))
        .expect("prometheus.yml");
    let mut copy = String::new();
    for line in source.lines() {
        copy.push_str(line);
        copy.push('\n');
        if line.starts_with("global:") {
            for added in &added {
                copy.push_str(added);
                copy.push('\n');
            }
        }
    }
    let config: Value = serde_saphyr::from_str(&copy)
        .unwrap_or_else(|e| panic!("the compose copy of prometheus.yml is not YAML: {e}\n{copy}"));
    let global = &config["global"];
    assert_eq!(global["scrape_native_histograms"], true, "{global}");
    assert_eq!(global["always_scrape_classic_histograms"], true, "{global}");
    // The copy is prometheus.yml plus the two keys: same jobs and rules.
    let original = load_yaml("provisioning/prometheus/prometheus.yml");
    assert_eq!(config["scrape_configs"], original["scrape_configs"]);
    assert_eq!(config["rule_files"], original["rule_files"]);
    assert!(
        original["global"]["scrape_native_histograms"].is_null()
            && original["global"]["always_scrape_classic_histograms"].is_null(),
        "prometheus.yml must stay valid for promtool 2.x"
    );
    // No job turns either off or negotiates without protobuf.
    for job in config["scrape_configs"].as_array().into_iter().flatten() {
        assert!(
            job["scrape_native_histograms"] != false
                && job["always_scrape_classic_histograms"] != false,
            "{job}"
        );
        for protocols in [&global["scrape_protocols"], &job["scrape_protocols"]] {
            assert!(
                protocols.is_null() || strings(protocols).contains(&"PrometheusProto".to_owned()),
                "{job}: {protocols}"
            );
        }
    }
}

/// Exemplars carry the label `trace_id`; the data source links it to a
/// tracing backend (a placeholder the README tells to change).
#[test]
fn grafana_links_exemplar_trace_ids() {
    let datasources = load_yaml("provisioning/grafana/datasources/prometheus.yml");
    let source = datasources["datasources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["uid"] == "prometheus")
        .expect("a data source with uid prometheus");
    let destinations = source["jsonData"]["exemplarTraceIdDestinations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let destination = destinations
        .iter()
        .find(|d| d["name"] == "trace_id")
        .unwrap_or_else(|| panic!("no exemplarTraceIdDestinations entry for trace_id: {source}"));
    match destination["url"].as_str() {
        // Grafana expands environment variables in provisioning files:
        // `$$` keeps `${__value.raw}`, the trace id, for the link.
        Some(url) => assert!(url.contains("$${__value.raw}"), "{url}"),
        None => assert!(
            destination["datasourceUid"]
                .as_str()
                .is_some_and(|uid| !uid.is_empty()),
            "{destination}"
        ),
    }
    assert!(
        destination["urlDisplayLabel"]
            .as_str()
            .is_some_and(|label| !label.is_empty()),
        "{destination}"
    );
}
