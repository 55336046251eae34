//! `okr-exporter backfill`: OKR history as of past instants, checked against
//! the reference computation over the tables as they were at each instant,
//! against the live collector at the last instant, and through the real
//! `promtool tsdb create-blocks-from openmetrics` and Prometheus.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, Duration, DurationRound, Utc};
use okr_exporter::collector::{self, CollectContext};
use okr_exporter::config::{Settings, Targets, parse_windows};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::reference::{self, F, Fixture, Key, expected, key};
use crate::support::{exporter_bin, free_port, prepared_db, require_tool};

const WINDOWS: &str = "1h,1d";
const TOP_N: usize = 3;

fn windows() -> Vec<(&'static str, Duration)> {
    vec![("1h", Duration::hours(1)), ("1d", Duration::days(1))]
}

/// Two and a half days of activity before `end`, with rows exactly on
/// 5-minute instants (window edges of later instants), sessions before a
/// follow-up's publication, drafts published or deleted later, unknown
/// device types.
fn fixture(end: DateTime<Utc>) -> Fixture {
    let mut rng = StdRng::seed_from_u64(15);
    let start = end - Duration::hours(60);
    let span = (end - start).num_seconds();
    let at = |rng: &mut StdRng| {
        let secs = rng.random_range(0..span);
        // A third of the times fall exactly on an instant of the backfill.
        let secs = if rng.random_range(0..3) == 0 {
            secs - secs % 300
        } else {
            secs
        };
        start + Duration::seconds(secs) + Duration::microseconds(rng.random_range(0..2))
    };
    let mut fx = Fixture::default();
    for i in 0..160 {
        let created = at(&mut rng);
        let published = match rng.random_range(0..10) {
            0..=6 => Some(created + Duration::minutes(rng.random_range(0..180))),
            _ => None,
        }
        .filter(|p| *p <= end);
        let deleted = match rng.random_range(0..8) {
            0 => Some(created + Duration::minutes(rng.random_range(1..600))),
            _ => None,
        }
        .filter(|d| *d <= end);
        let status = if deleted.is_some() {
            "deleted"
        } else if published.is_some() {
            "published"
        } else {
            "draft"
        };
        let company = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", ""][i % 6];
        fx.followups.push(reference::f(
            &format!("creator-{}", rng.random_range(0..12)),
            Some(company).filter(|c| !c.is_empty()),
            [Some("demo"), Some("renewal"), None][rng.random_range(0..3)],
            [Some("EMEA"), Some("NA"), Some("")][rng.random_range(0..3)],
            status,
            created,
            published,
            deleted,
        ));
    }
    let ids: Vec<(Uuid, DateTime<Utc>)> = fx
        .followups
        .iter()
        .filter_map(|f| f.published.map(|p| (f.id, p)))
        .collect();
    for _ in 0..900 {
        let (id, published) = ids[rng.random_range(0..ids.len())];
        // Mostly after publication, some before (a preview), never after `end`.
        let started = (published + Duration::minutes(rng.random_range(-30..2000))).min(end);
        let device = ["mobile", "desktop", "tablet", "smart-tv", "Mobile"][rng.random_range(0..5)];
        fx.sessions.push(reference::s(
            id,
            &format!("v{}", rng.random_range(0..30)),
            device,
            started,
        ));
    }
    for (id, published) in &ids {
        if rng.random_range(0..5) < 4 {
            fx.creation
                .push((*published, f64::from(rng.random_range(30..1500)) + 0.25));
        }
        if rng.random_range(0..2) == 0 {
            let action = (*published + Duration::minutes(rng.random_range(0..3000))).min(end);
            fx.actions.push((*id, *published, action));
        }
    }
    fx
}

/// The tables as they were at `t`: rows that did not exist yet are gone,
/// publications and deletions after `t` had not happened.
fn as_of(fx: &Fixture, t: DateTime<Utc>) -> Fixture {
    Fixture {
        followups: fx
            .followups
            .iter()
            .filter(|f| f.created <= t)
            .map(|f| {
                let published = f.published.filter(|p| *p <= t);
                let deleted = f.deleted.filter(|d| *d <= t);
                let status = if deleted.is_some() {
                    "deleted"
                } else if published.is_some() {
                    "published"
                } else {
                    "draft"
                };
                F {
                    published,
                    deleted,
                    status: status.to_owned(),
                    ..f.clone()
                }
            })
            .collect(),
        sessions: fx
            .sessions
            .iter()
            .filter(|s| s.started <= t)
            .cloned()
            .collect(),
        creation: fx.creation.iter().filter(|c| c.0 <= t).copied().collect(),
        actions: fx.actions.iter().filter(|a| a.2 <= t).copied().collect(),
    }
}

/// Samples of an OpenMetrics text by (series without the added labels,
/// Unix milliseconds).
fn parse_openmetrics(text: &str) -> BTreeMap<(Key, i64), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, rest) = line.rsplit_once('}').expect("labels");
        let (name, labels) = series.split_once('{').expect("name");
        let mut pairs = Vec::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("pair");
            let v = v.trim_end_matches('"');
            if k != "job" && k != "instance" {
                pairs.push((k, v));
            }
        }
        let mut fields = rest.split_whitespace();
        let value: f64 = fields.next().expect("value").parse().expect("number");
        let ts: f64 = fields.next().expect("timestamp").parse().expect("number");
        out.insert((key(name, &pairs), (ts * 1000.0).round() as i64), value);
    }
    out
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// Compares one instant's samples with the reference: same series, same values.
fn assert_instant(what: &str, actual: &BTreeMap<Key, f64>, reference: &BTreeMap<Key, f64>) {
    let a: BTreeSet<&Key> = actual.keys().collect();
    let e: BTreeSet<&Key> = reference.keys().collect();
    assert_eq!(
        a.difference(&e).collect::<Vec<_>>(),
        Vec::<&&Key>::new(),
        "{what}: series that should be absent"
    );
    assert_eq!(
        e.difference(&a).collect::<Vec<_>>(),
        Vec::<&&Key>::new(),
        "{what}: series missing"
    );
    for (k, v) in reference {
        assert!(
            close(actual[k], *v),
            "{what}: {k:?} = {} expected {v}",
            actual[k]
        );
    }
}

/// A child process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_prometheus(dir: &Path, data: &Path) -> (Running, String) {
    let prometheus = require_tool("prometheus");
    let config = dir.join("prometheus.yml");
    fs::write(&config, "global:\n  scrape_interval: 1m\n").expect("config");
    let client = reqwest::Client::new();
    for attempt in 0..3 {
        let port = free_port();
        let log = File::create(dir.join(format!("prometheus-{attempt}.log"))).expect("log");
        let child = Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg("--storage.tsdb.retention.time=3650d")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let mut running = Running(child);
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while Instant::now() < deadline {
            if running.0.try_wait().ok().flatten().is_some() {
                break;
            }
            if let Ok(r) = client.get(format!("{base}/-/ready")).send().await
                && r.status().is_success()
            {
                return (running, base);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    panic!("prometheus did not start; logs in {}", dir.display());
}

/// Every series Prometheus has a sample for exactly at `t` (not one found
/// by the lookback), with its value.
async fn prometheus_at(base: &str, t: DateTime<Utc>) -> BTreeMap<Key, f64> {
    let client = reqwest::Client::new();
    let query = |expr: String| {
        let client = client.clone();
        let url = format!("{base}/api/v1/query");
        async move {
            let body: serde_json::Value = client
                .get(url)
                .query(&[
                    ("query", expr.as_str()),
                    ("time", &t.timestamp().to_string()),
                ])
                .send()
                .await
                .expect("query")
                .json()
                .await
                .expect("json");
            assert_eq!(body["status"], "success", "{expr}: {body}");
            body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        }
    };
    // The name copied into a label: timestamp() drops __name__, and series
    // of different metrics would otherwise collide.
    let named = r#"label_replace({job="okr-exporter",__name__!~"okr_target_.*|okr_alert_floor_.*"}, "name_", "$1", "__name__", "(.+)")"#;
    let series_key = |metric: &serde_json::Value| {
        let m = metric.as_object().expect("labels");
        let name = m["name_"].as_str().unwrap_or_default().to_owned();
        let pairs: Vec<(&str, &str)> = m
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "name_" | "job" | "instance"))
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
            .collect();
        key(&name, &pairs)
    };
    let number = |r: &serde_json::Value| -> f64 {
        r["value"][1]
            .as_str()
            .unwrap_or("NaN")
            .parse()
            .expect("number")
    };
    let stamps: BTreeMap<Key, f64> = query(format!("timestamp({named})"))
        .await
        .iter()
        .map(|r| (series_key(&r["metric"]), number(r)))
        .collect();
    query(named.to_owned())
        .await
        .iter()
        .map(|r| (series_key(&r["metric"]), number(r)))
        .filter(|(k, _)| stamps.get(k).is_some_and(|s| *s == t.timestamp() as f64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_equals_the_reference_as_of_every_instant() {
    let db = prepared_db().await;
    // Whole 5-minute instants, far enough back for Prometheus's head block.
    let end = (Utc::now() - Duration::hours(4))
        .duration_trunc(Duration::minutes(5))
        .expect("round");
    let fx = fixture(end);
    reference::load(&db.pool, &fx).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("okr.om");
    let from = end - Duration::days(1);
    let run = Command::new(exporter_bin())
        .args(["backfill", "--database-url", &db.url, "--windows", WINDOWS])
        .args(["--company-top-n", &TOP_N.to_string()])
        .args(["--from", &from.to_rfc3339(), "--until", &end.to_rfc3339()])
        .args(["--step", "5m", "--label", "job=okr-exporter"])
        .args(["--label", "instance=backfill-test", "--output"])
        .arg(&out)
        .output()
        .expect("run backfill");
    assert!(
        run.status.success(),
        "backfill failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = fs::read_to_string(&out).expect("output");
    assert!(text.ends_with("# EOF\n"), "no closing # EOF");
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        assert!(line.ends_with(" gauge"), "{line}");
    }
    assert!(text.contains("job=\"okr-exporter\",instance=\"backfill-test\"}"));
    let samples = parse_openmetrics(&text);
    let at = |t: DateTime<Utc>| -> BTreeMap<Key, f64> {
        samples
            .iter()
            .filter(|((k, ts), _)| {
                *ts == t.timestamp_millis()
                    && !k.0.starts_with("okr_target_")
                    && !k.0.starts_with("okr_alert_floor_")
            })
            .map(|((k, _), v)| (k.clone(), *v))
            .collect()
    };
    let targets = Targets::default();
    let steps: Vec<DateTime<Utc>> = (0..=288).map(|k| from + Duration::minutes(5 * k)).collect();
    // Every instant against the reference over the tables as they were then.
    for t in &steps {
        let reference = expected(&as_of(&fx, *t), *t, &windows(), &targets, TOP_N);
        assert_instant(&format!("at {t}"), &at(*t), &reference);
    }
    // The targets are drawn at every instant.
    let target_samples = samples
        .keys()
        .filter(|(k, _)| k.0 == "okr_target_engagement_ratio")
        .count();
    assert_eq!(target_samples, steps.len());

    // The last instant equals the live collector run at that instant.
    let mut settings = Settings::for_database(Some(db.database_url()));
    settings.windows = parse_windows(WINDOWS).expect("windows");
    settings.company_top_n = TOP_N;
    let ctx = CollectContext::new(end, &settings);
    let mut conn = db.pool.acquire().await.expect("connection");
    let mut live = Vec::new();
    for c in collector::all_collectors().iter().filter(|c| !c.writes()) {
        live.extend(c.collect(&mut conn, &ctx).await.expect("collect").families);
    }
    drop(conn);
    assert_instant(
        "live collector at the last instant",
        &at(end),
        &reference::flatten(&live),
    );

    // Through promtool and Prometheus: the same values at past instants,
    // window edges included (every instant is one for a later instant).
    let promtool = require_tool("promtool");
    let data = dir.path().join("data");
    let created = Command::new(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&out)
        .arg(&data)
        .output()
        .expect("run promtool");
    assert!(
        created.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&created.stdout),
        String::from_utf8_lossy(&created.stderr)
    );
    let (_prometheus, base) = start_prometheus(dir.path(), &data).await;
    for t in [steps[0], steps[12], steps[13], steps[150], steps[287], end] {
        let reference = expected(&as_of(&fx, t), t, &windows(), &targets, TOP_N);
        assert_instant(
            &format!("prometheus at {t}"),
            &prometheus_at(&base, t).await,
            &reference,
        );
    }
}

#[test]
fn bad_backfill_options_and_an_unreachable_database_fail_with_one_clear_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("never.om");
    let out = out.to_string_lossy().into_owned();
    let unreachable = "postgres://okr:hunter22@127.0.0.1:1/followup";
    for (args, needle) in [
        (vec!["--step", "soon"], "--step"),
        (vec!["--from", "last tuesday"], "--from"),
        (vec!["--label", "window=7d"], "window"),
        (vec!["--label", "nolabel"], "name=value"),
        (
            vec![
                "--from",
                "2026-01-02T00:00:00Z",
                "--until",
                "2026-01-01T00:00:00Z",
            ],
            "before",
        ),
        (vec!["--step", "1ms"], "--step"),
        (vec![], "connecting to the database"),
    ] {
        let output = Command::new(exporter_bin())
            .args(["backfill", "--database-url", unreachable, "--output", &out])
            .args(&args)
            .output()
            .expect("run backfill");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        let first = stderr.lines().next().unwrap_or("");
        assert!(first.starts_with("error:"), "{args:?}: {stderr}");
        assert!(first.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter22"), "password leaked: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !Path::new(&out).exists() && !Path::new(&out).with_extension("partial").exists(),
            "{args:?} left an output file"
        );
    }
}
