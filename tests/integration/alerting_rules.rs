//! The alerting configuration (`alerts/`, `provisioning/prometheus/`,
//! `provisioning/alertmanager/`, `docs/runbooks.md`) checked with the real
//! tools, one test per check, plus structural checks of the rule files.
//!
//! Needs `promtool` (Debian package `prometheus`) and `amtool` and
//! `alertmanager` (Debian package `prometheus-alertmanager`) on `PATH`;
//! without them these tests fail and say what to install.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Value of a `key: value` line, without surrounding quotes.
fn yaml_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = line.trim_start().strip_prefix(key)?.strip_prefix(':')?;
    Some(rest.trim().trim_matches('"').trim_matches('\''))
}

/// One alerting rule of a rule file, as lines of text.
struct AlertRule {
    file: String,
    name: String,
    lines: Vec<String>,
}

impl AlertRule {
    fn values(&self, key: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|line| yaml_value(line, key))
            .collect()
    }

    /// The text of a (possibly folded, multi-line) annotation: its first
    /// line plus the following lines indented deeper than its key.
    fn block(&self, key: &str) -> Option<String> {
        let start = self
            .lines
            .iter()
            .position(|line| yaml_value(line, key).is_some())?;
        let indent = |line: &str| line.len() - line.trim_start().len();
        let key_indent = indent(&self.lines[start]);
        let mut text = yaml_value(&self.lines[start], key)
            .unwrap_or_default()
            .to_string();
        for line in &self.lines[start + 1..] {
            if !line.trim().is_empty() && indent(line) <= key_indent {
                break;
            }
            text.push(' ');
            text.push_str(line.trim());
        }
        Some(text)
    }
}

/// Splits every rule file into its alerting rules (recording rules are
/// skipped). The files keep one rule per `- alert:` / `- record:` item.
fn alert_rules() -> Vec<AlertRule> {
    let mut rules = Vec::new();
    for path in rule_files() {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut current: Option<AlertRule> = None;
        for line in read(&path).lines() {
            let item = line.trim_start().strip_prefix("- ");
            let starts_item = item.is_some_and(|i| {
                i.starts_with("alert:") || i.starts_with("record:") || i.starts_with("name:")
            });
            if starts_item {
                rules.extend(current.take());
                if let Some(name) = item.and_then(|i| yaml_value(i, "alert")) {
                    current = Some(AlertRule {
                        file: file.clone(),
                        name: name.to_string(),
                        lines: Vec::new(),
                    });
                }
                continue;
            }
            if let Some(rule) = current.as_mut() {
                rule.lines.push(line.to_string());
            }
        }
        rules.extend(current);
    }
    assert!(!rules.is_empty(), "no alerting rules found in alerts/*.yml");
    rules
}

#[test]
fn every_runbook_url_points_at_a_section_of_docs_runbooks_md() {
    let anchors = markdown_anchors(&read(&repo().join("docs/runbooks.md")));
    let mut problems = Vec::new();
    let mut seen = 0;
    for path in rule_files() {
        for (number, line) in read(&path).lines().enumerate() {
            let Some(url) = yaml_value(line, "runbook_url") else {
                continue;
            };
            seen += 1;
            let place = format!("{}:{}", path.display(), number + 1);
            match url.strip_prefix(RUNBOOK_BASE) {
                None => problems.push(format!("{place}: {url} does not start with {RUNBOOK_BASE}")),
                Some(anchor) if !anchors.contains(anchor) => problems.push(format!(
                    "{place}: no heading with anchor #{anchor} in docs/runbooks.md"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(seen > 0, "no runbook_url in alerts/*.yml");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_has_severity_summary_description_runbook_and_plain_for() {
    let mut problems = Vec::new();
    for rule in alert_rules() {
        let at = format!("{} ({})", rule.name, rule.file);

        match rule.values("severity").as_slice() {
            [severity] if ["critical", "warning", "info"].contains(severity) => {}
            other => problems.push(format!(
                "{at}: severity must be critical, warning or info, found {other:?}"
            )),
        }

        match rule.values("summary").as_slice() {
            [summary] if !summary.is_empty() && !summary.contains("{{") => {}
            other => problems.push(format!(
                "{at}: needs one plain-sentence summary, found {other:?}"
            )),
        }

        match rule.block("description") {
            Some(text) if text.contains("$value") => {}
            other => problems.push(format!(
                "{at}: description must be templated with $value, found {other:?}"
            )),
        }

        let anchor = rule.name.to_lowercase();
        match rule.values("runbook_url").as_slice() {
            [url] if url.strip_prefix(RUNBOOK_BASE) == Some(anchor.as_str()) => {}
            other => problems.push(format!(
                "{at}: runbook_url must be {RUNBOOK_BASE}{anchor}, found {other:?}"
            )),
        }

        // Every `for:` on its own line as `for: <duration>`, so that a copy
        // with shorter durations is one text substitution away.
        let fors: Vec<&String> = rule
            .lines
            .iter()
            .filter(|l| l.trim_start().starts_with("for:"))
            .collect();
        let plain_duration = |d: &str| {
            d.starts_with(|c: char| c.is_ascii_digit())
                && d.chars().all(|c| c.is_ascii_alphanumeric())
        };
        match fors.as_slice() {
            [line] if yaml_value(line, "for").is_some_and(plain_duration) => {}
            other => problems.push(format!(
                "{at}: needs exactly one `for: <duration>` line, found {other:?}"
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The first number in a PromQL expression outside names and string
/// literals, if any.
fn numeric_literal(expr: &str) -> Option<String> {
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' {
            // Skip a string literal (label values such as window="7d").
            while let Some(d) = chars.next() {
                if d == '\\' {
                    chars.next();
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            // Skip the rest of a name (metric names such as ..._p80_...).
            while chars
                .peek()
                .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_' || *d == ':')
            {
                chars.next();
            }
        } else if c.is_ascii_digit() {
            let mut number = c.to_string();
            while let Some(d) = chars
                .peek()
                .copied()
                .filter(|d| d.is_ascii_alphanumeric() || *d == '.')
            {
                number.push(d);
                chars.next();
            }
            return Some(number);
        }
    }
    None
}

#[test]
fn okr_alerts_compare_the_7d_window_with_exported_targets() {
    let mut problems = Vec::new();
    let okr_rules: Vec<AlertRule> = alert_rules()
        .into_iter()
        .filter(|rule| rule.file == "okr.yml")
        .collect();
    assert!(
        okr_rules.len() >= 5,
        "expected the five OKR alerts in okr.yml"
    );
    for rule in okr_rules {
        let expr = rule.block("expr").unwrap_or_default();
        if !expr.contains(r#"window="7d""#) {
            problems.push(format!("{}: does not select window=\"7d\"", rule.name));
        }
        if !(expr.contains("okr_target_") || expr.contains("okr_alert_floor_")) {
            problems.push(format!(
                "{}: does not compare against an exported okr_target_*/okr_alert_floor_* series",
                rule.name
            ));
        }
        if !expr.contains("on (job, instance) group_left") {
            problems.push(format!(
                "{}: must join the target on (job, instance) with group_left",
                rule.name
            ));
        }
        // The threshold is a series, never a number written in the rule.
        if let Some(number) = numeric_literal(&expr) {
            problems.push(format!(
                "{}: numeric literal {number} in the expression: {expr}",
                rule.name
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_le_in_the_rules_is_a_bucket_the_middleware_writes() {
    let mut problems = Vec::new();
    let mut seen = 0;
    for path in rule_files() {
        for (number, line) in read(&path).lines().enumerate() {
            // `le="…"` in PromQL and `le: "…"` in rule labels.
            let mut values = Vec::new();
            let mut rest = line;
            while let Some(at) = rest.find("le=\"") {
                let tail = &rest[at + 4..];
                // `quantile="…"` and the like end in `le="` too.
                let preceded_by_name = rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                if preceded_by_name {
                    rest = tail;
                    continue;
                }
                let end = tail.find('"').unwrap_or(tail.len());
                values.push(&tail[..end]);
                rest = &tail[end..];
            }
            if let Some(value) = yaml_value(line, "le") {
                values.push(value);
            }
            for value in values.into_iter().filter(|v| !v.contains("{{")) {
                seen += 1;
                if !BUCKET_LE.contains(&value) {
                    problems.push(format!(
                        "{}:{}: le=\"{value}\" is not one of {BUCKET_LE:?}",
                        path.display(),
                        number + 1
                    ));
                }
            }
        }
    }
    assert!(seen > 0, "no le label found in alerts/*.yml");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn numeric_literals_are_found_outside_names_and_strings() {
    assert_eq!(
        numeric_literal(r#"okr_target_creation_time_p80_seconds{window="7d"}"#),
        None
    );
    assert_eq!(
        numeric_literal("okr_engagement_ratio < 0.4"),
        Some("0.4".into())
    );
    assert_eq!(numeric_literal("x > 1e3"), Some("1e3".into()));
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
