//! The alerting configuration (`alerts/`, `provisioning/prometheus/`,
//! `provisioning/alertmanager/`, `docs/runbooks.md`) checked with the real
//! tools, one test per check, plus structural checks of the rule files,
//! read with a YAML parser (`serde_saphyr`) and their expressions with a
//! PromQL parser (module [`promql`]).
//!
//! Needs `promtool` (Debian package `prometheus`) and `amtool` and
//! `alertmanager` (Debian package `prometheus-alertmanager`) on `PATH`;
//! without them these tests fail and say what to install.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use promql_parser::parser::{Expr, LabelModifier, VectorMatchCardinality};
use serde::Deserialize;

use crate::promql;

/// Base of every `runbook_url` in the rule files.
const RUNBOOK_BASE: &str =
    "https://github.com/okr-exporter/okr-exporter/blob/main/docs/runbooks.md#";

/// The `le` strings the latency middleware writes (DESIGN §4), integer
/// bounds with ".0" as Prometheus 3 also normalises them.
const BUCKET_LE: [&str; 16] = [
    "0.005", "0.01", "0.025", "0.05", "0.075", "0.1", "0.2", "0.25", "0.5", "0.75", "1.0", "2.5",
    "5.0", "7.5", "10.0", "+Inf",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `*.yml` files directly inside `dir` (relative to the repository),
/// sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = repo().join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .yml files in {}", dir.display());
    files
}

fn rule_files() -> Vec<PathBuf> {
    yaml_files("alerts")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Runs `program args…` in the repository root. Panics with an install hint
/// when the program is not on `PATH`.
fn run<I, S>(program: &str, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    match Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{program}` is not installed or not on PATH; install the Debian packages \
             `prometheus` (promtool) and `prometheus-alertmanager` (amtool, alertmanager)"
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

/// Asserts that `output` is a success, showing everything the tool printed
/// otherwise.
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Runs a shell script of the repository with bash, after checking that the
/// tools it needs exist (so that a missing tool reads as such).
fn run_script(script: &str, tools: &[&str]) -> Output {
    for tool in tools {
        run(tool, ["--version"]);
    }
    run("bash", [repo().join(script)])
}

#[test]
fn promtool_check_rules_passes_with_every_lint() {
    let mut args = vec![
        "check".into(),
        "rules".into(),
        "--lint=all".into(),
        "--lint-fatal".into(),
    ];
    args.extend(rule_files().into_iter().map(PathBuf::into_os_string));
    let output = run("promtool", args);
    assert_success("promtool check rules", &output);
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let mut args = vec!["test".into(), "rules".into()];
    args.extend(
        yaml_files("alerts/tests")
            .into_iter()
            .map(PathBuf::into_os_string),
    );
    let output = run("promtool", args);
    assert_success("promtool test rules alerts/tests/*.yml", &output);
}

#[test]
fn promtool_check_config_passes_for_compose_and_local_configs() {
    for config in [
        "provisioning/prometheus/prometheus.yml",
        "provisioning/prometheus/prometheus.local.yml",
    ] {
        let output = run(
            "promtool",
            ["check", "config", "--lint=all", "--lint-fatal", config],
        );
        assert_success(&format!("promtool check config {config}"), &output);
    }
}

#[test]
fn amtool_check_config_passes() {
    let output = run(
        "amtool",
        ["check-config", "provisioning/alertmanager/alertmanager.yml"],
    );
    assert_success("amtool check-config", &output);
}

#[test]
fn alertmanager_routes_each_severity_to_its_receivers() {
    let output = run_script("provisioning/alertmanager/routes_test.sh", &["amtool"]);
    assert_success("provisioning/alertmanager/routes_test.sh", &output);
}

#[test]
fn alertmanager_critical_inhibits_the_matching_warning() {
    let alertmanager = ["alertmanager", "prometheus-alertmanager"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok())
        .unwrap_or_else(|| {
            panic!(
                "neither `alertmanager` nor `prometheus-alertmanager` is on PATH; \
                 install the Debian package `prometheus-alertmanager`"
            )
        });
    let output = run_script(
        "provisioning/alertmanager/inhibition_test.sh",
        &["amtool", alertmanager],
    );
    assert_success("provisioning/alertmanager/inhibition_test.sh", &output);
}

/// GitHub's anchor for a Markdown heading: lower case, punctuation other
/// than `-` and `_` dropped, spaces turned into `-`.
fn heading_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Anchors of all headings of a Markdown file, skipping fenced code.
fn markdown_anchors(markdown: &str) -> BTreeSet<String> {
    let mut anchors = BTreeSet::new();
    let mut in_fence = false;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            anchors.insert(heading_anchor(&trimmed[hashes..]));
        }
    }
    anchors
}

/// A Prometheus rule file, as `promtool check rules` reads it.
#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

/// One group of a rule file.
#[derive(Debug, Deserialize)]
struct RuleGroup {
    rules: Vec<Rule>,
}

/// One alerting (`alert`) or recording (`record`) rule.
#[derive(Debug, Deserialize)]
struct Rule {
    alert: Option<String>,
    record: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_duration: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// A rule with the file it comes from.
struct FileRule {
    file: String,
    rule: Rule,
}

impl FileRule {
    /// Where the rule is, for messages.
    fn at(&self) -> String {
        let name = self.rule.alert.as_deref().or(self.rule.record.as_deref());
        format!("{} ({})", name.unwrap_or("?"), self.file)
    }

    /// The rule's expression, parsed.
    fn expr(&self) -> Expr {
        promql::parse(&self.at(), &self.rule.expr)
    }
}

/// Every rule of every rule file, parsed with a YAML parser.
fn all_rules() -> Vec<FileRule> {
    let mut rules = Vec::new();
    for path in rule_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let parsed: RuleFile = serde_saphyr::from_str(&read(&path))
            .unwrap_or_else(|e| panic!("{}: not a rule file: {e}", path.display()));
        for group in parsed.groups {
            rules.extend(group.rules.into_iter().map(|rule| FileRule {
                file: file.clone(),
                rule,
            }));
        }
    }
    rules
}

/// The alerting rules of every rule file (recording rules are left out).
fn alert_rules() -> Vec<FileRule> {
    let rules: Vec<FileRule> = all_rules()
        .into_iter()
        .filter(|r| r.rule.alert.is_some())
        .collect();
    assert!(!rules.is_empty(), "no alerting rules found in alerts/*.yml");
    rules
}

#[test]
fn every_rule_expression_is_valid_promql() {
    let rules = all_rules();
    assert!(rules.iter().any(|r| r.rule.record.is_some()));
    for rule in &rules {
        assert!(
            rule.rule.alert.is_some() != rule.rule.record.is_some(),
            "{}: a rule is either `alert` or `record`",
            rule.at()
        );
        rule.expr();
    }
}

#[test]
fn every_runbook_url_points_at_a_section_of_docs_runbooks_md() {
    let anchors = markdown_anchors(&read(&repo().join("docs/runbooks.md")));
    let mut problems = Vec::new();
    let mut seen = 0;
    for rule in all_rules() {
        let Some(url) = rule.rule.annotations.get("runbook_url") else {
            continue;
        };
        seen += 1;
        let place = rule.at();
        match url.strip_prefix(RUNBOOK_BASE) {
            None => problems.push(format!("{place}: {url} does not start with {RUNBOOK_BASE}")),
            Some(anchor) if !anchors.contains(anchor) => problems.push(format!(
                "{place}: no heading with anchor #{anchor} in docs/runbooks.md"
            )),
            Some(_) => {}
        }
    }
    assert!(seen > 0, "no runbook_url in alerts/*.yml");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_severity_summary_description_runbook_and_plain_for() {
    let mut problems = Vec::new();
    let plain_duration = |d: &str| {
        d.starts_with(|c: char| c.is_ascii_digit()) && d.chars().all(|c| c.is_ascii_alphanumeric())
    };
    for rule in alert_rules() {
        let at = rule.at();
        let name = rule.rule.alert.as_deref().unwrap_or_default();
        let labels = &rule.rule.labels;
        let annotations = &rule.rule.annotations;

        match labels.get("severity").map(String::as_str) {
            Some("critical" | "warning" | "info") => {}
            other => problems.push(format!(
                "{at}: severity must be critical, warning or info, found {other:?}"
            )),
        }

        match annotations.get("summary") {
            Some(summary) if !summary.trim().is_empty() && !summary.contains("{{") => {}
            other => problems.push(format!(
                "{at}: needs one plain-sentence summary, found {other:?}"
            )),
        }

        match annotations.get("description") {
            Some(text) if text.contains("$value") => {}
            other => problems.push(format!(
                "{at}: description must be templated with $value, found {other:?}"
            )),
        }

        let anchor = name.to_lowercase();
        match annotations.get("runbook_url") {
            Some(url) if url.strip_prefix(RUNBOOK_BASE) == Some(anchor.as_str()) => {}
            other => problems.push(format!(
                "{at}: runbook_url must be {RUNBOOK_BASE}{anchor}, found {other:?}"
            )),
        }

        match rule.rule.for_duration.as_deref() {
            Some(d) if plain_duration(d) => {}
            other => problems.push(format!("{at}: needs a `for: <duration>`, found {other:?}")),
        }
    }
    // Every `for:` on its own line as `for: <duration>`, so that a copy with
    // shorter durations is one line substitution away (alerting_e2e).
    for path in rule_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let lines = read(&path)
            .lines()
            .filter(|l| {
                l.trim_start()
                    .strip_prefix("for: ")
                    .is_some_and(|d| plain_duration(d.trim()))
            })
            .count();
        let fors = all_rules()
            .iter()
            .filter(|r| r.file == file && r.rule.for_duration.is_some())
            .count();
        if lines != fors {
            problems.push(format!(
                "{file}: {fors} rules have a `for`, but {lines} lines read `for: <duration>`"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Whether `expr` has a binary operation matching `on (job, instance)`
/// with `group_left`.
fn joins_on_job_instance_group_left(expr: &Expr) -> bool {
    promql::binaries(expr).into_iter().any(|b| {
        b.modifier.as_ref().is_some_and(|m| {
            matches!(m.card, VectorMatchCardinality::ManyToOne(_))
                && matches!(
                    &m.matching,
                    Some(LabelModifier::Include(on)) if on.labels == ["job", "instance"]
                )
        })
    })
}

#[test]
fn okr_alerts_compare_the_7d_window_with_exported_targets() {
    let mut problems = Vec::new();
    let okr_rules: Vec<FileRule> = alert_rules()
        .into_iter()
        .filter(|rule| rule.file == "okr.yml")
        .collect();
    assert!(
        okr_rules.len() >= 5,
        "expected the five OKR alerts in okr.yml"
    );
    for rule in okr_rules {
        let at = rule.at();
        let expr = rule.expr();
        let windows = promql::literal_matcher_values(&expr, "window");
        if windows.is_empty() || windows.iter().any(|w| *w != "7d") {
            problems.push(format!("{at}: does not select window=\"7d\""));
        }
        let names = promql::metric_names(&expr);
        if !names
            .iter()
            .any(|n| n.starts_with("okr_target_") || n.starts_with("okr_alert_floor_"))
        {
            problems.push(format!(
                "{at}: does not compare against an exported okr_target_*/okr_alert_floor_* series"
            ));
        }
        if !joins_on_job_instance_group_left(&expr) {
            problems.push(format!(
                "{at}: must join the target on (job, instance) with group_left"
            ));
        }
        // The threshold is a series, never a number written in the rule.
        let numbers = promql::numbers(&expr);
        if !numbers.is_empty() {
            problems.push(format!(
                "{at}: numeric literals {numbers:?} in the expression: {}",
                rule.rule.expr
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_le_in_the_rules_is_a_bucket_the_middleware_writes() {
    let mut problems = Vec::new();
    let mut seen = 0;
    for rule in all_rules() {
        // `le="…"` matchers in the expression and `le: "…"` rule labels.
        let expr = rule.expr();
        let mut values = promql::literal_matcher_values(&expr, "le");
        values.extend(rule.rule.labels.get("le").map(String::as_str));
        for value in values.into_iter().filter(|v| !v.contains("{{")) {
            seen += 1;
            if !BUCKET_LE.contains(&value) {
                problems.push(format!(
                    "{}: le=\"{value}\" is not one of {BUCKET_LE:?}",
                    rule.at()
                ));
            }
        }
    }
    assert!(seen > 0, "no le label found in alerts/*.yml");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn rule_checks_read_the_expression_tree() {
    let join = promql::parse(
        "example",
        r#"okr_x{window="7d"} < on (job, instance) group_left okr_target_x"#,
    );
    assert!(joins_on_job_instance_group_left(&join));
    assert!(promql::numbers(&join).is_empty());
    let other = promql::parse("example", "okr_x < on (job) group_left okr_target_x");
    assert!(!joins_on_job_instance_group_left(&other));
    let ignoring = promql::parse("example", "okr_x < ignoring (job, instance) okr_target_x");
    assert!(!joins_on_job_instance_group_left(&ignoring));
    assert_eq!(
        promql::numbers(&promql::parse("example", "okr_engagement_ratio < 0.4")),
        [0.4]
    );
}

#[test]
fn heading_anchors_follow_github() {
    assert_eq!(heading_anchor(" OKRDataStale"), "okrdatastale");
    assert_eq!(
        heading_anchor("What it is, for whom"),
        "what-it-is-for-whom"
    );
    let anchors = markdown_anchors("# Top\n```\n# not a heading\n```\n## Second one\n");
    assert_eq!(
        anchors.into_iter().collect::<Vec<_>>(),
        vec!["second-one".to_string(), "top".to_string()]
    );
}
