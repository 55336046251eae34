//! The landing page: trend charts equal to the report's daily history (gaps
//! included), target lines from the configuration, adoption figures in
//! words, the draft-completion alert-floor marker, and a page that still
//! renders when the database is down.

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate, Utc};
use okr_exporter::collector::Scheduler;
use okr_exporter::config::{DatabaseUrl, Settings};
use okr_exporter::server::Exporter;
use serde_json::Value;

use crate::support::{TestDb, prepared_db, start_exporter};

/// An exporter serving its routes without background collection, so the
/// rollup rows a test writes stay exactly as written (the rollup collector
/// would recompute them from the source tables).
struct QuietExporter {
    base: String,
    scheduler: Scheduler,
    shutdown: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl QuietExporter {
    async fn start(settings: Settings) -> Self {
        let exporter = Exporter::new(settings).expect("exporter");
        let scheduler = exporter.scheduler().clone();
        let app = exporter.router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let (shutdown, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Self {
            base,
            scheduler,
            shutdown,
            task,
        }
    }

    /// Runs every collector but the rollups once, for the live gauges.
    async fn collect_live_gauges(&self) {
        let live: Vec<_> = okr_exporter::collector::all_collectors()
            .into_iter()
            .filter(|c| c.name() != "rollups")
            .collect();
        let results = self.scheduler.run_concurrently(&live, Utc::now()).await;
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let resp = reqwest::get(format!("{}{path}", self.base))
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("body"))
    }

    async fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.task.await;
    }
}

/// One seeded rollup day: (created, published, deleted) drafts,
/// (follow-ups, unique visitors, engaged) engagement, (sessions, mobile,
/// tablet, desktop, other) views; None leaves that table without a row.
struct SeedDay {
    ago: u64,
    drafts: Option<(i64, i64, i64)>,
    engagement: Option<(i64, i64, i64)>,
    views: Option<(i64, i64, i64, i64, i64)>,
}

fn seed_days() -> Vec<SeedDay> {
    let day = |ago, drafts, engagement, views| SeedDay {
        ago,
        drafts,
        engagement,
        views,
    };
    vec![
        day(0, Some((10, 7, 1)), Some((4, 6, 3)), Some((10, 4, 1, 5, 0))),
        day(1, Some((8, 6, 0)), Some((5, 1, 1)), Some((20, 3, 2, 14, 1))),
        day(2, Some((12, 12, 0)), Some((3, 0, 0)), Some((7, 7, 0, 0, 0))),
        // Day 3: no row anywhere (a gap in every chart).
        // Day 4: drafts only (a gap in engagement and mobile usage).
        day(4, Some((9, 3, 2)), None, None),
        // Day 5: a row without drafts: no draft-completion value.
        day(5, Some((0, 0, 0)), Some((6, 9, 4)), Some((16, 12, 0, 4, 0))),
        day(9, Some((3, 2, 0)), Some((2, 2, 1)), Some((8, 1, 1, 6, 0))),
        day(29, Some((5, 5, 0)), Some((1, 3, 1)), Some((4, 2, 0, 2, 0))),
        // Older than the 30 days shown.
        day(30, Some((4, 1, 0)), Some((1, 1, 1)), Some((4, 1, 0, 3, 0))),
        day(40, Some((4, 1, 0)), Some((1, 1, 1)), Some((4, 1, 0, 3, 0))),
    ]
}

async fn db_today(db: &TestDb) -> NaiveDate {
    let (today,): (NaiveDate,) = sqlx::query_as("SELECT (now() AT TIME ZONE 'UTC')::date")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    today
}

async fn seed_rollups(db: &TestDb, today: NaiveDate) {
    for s in seed_days() {
        let day = today - Days::new(s.ago);
        if let Some((created, published, deleted)) = s.drafts {
            sqlx::query(
                "INSERT INTO okr_draft_completions (day, created, published, deleted, open) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(day)
            .bind(created)
            .bind(published)
            .bind(deleted)
            .bind(created - published - deleted)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        if let Some((followups, visitors, engaged)) = s.engagement {
            sqlx::query(
                "INSERT INTO okr_engagement (day, followups, unique_visitors, engaged_followups) VALUES ($1, $2, $3, $4)",
            )
            .bind(day)
            .bind(followups)
            .bind(visitors)
            .bind(engaged)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        if let Some((sessions, mobile, tablet, desktop, other)) = s.views {
            sqlx::query(
                "INSERT INTO okr_mobile_usage (day, sessions, mobile, tablet, desktop, other) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(day)
            .bind(sessions)
            .bind(mobile)
            .bind(tablet)
            .bind(desktop)
            .bind(other)
            .execute(&db.pool)
            .await
            .unwrap();
        }
    }
}

/// The values each chart must show, computed from the seed by hand rules:
/// field → day → value, days of the last 30 only, days without a value
/// left out.
fn expected_points(today: NaiveDate) -> BTreeMap<&'static str, BTreeMap<String, f64>> {
    let mut out: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
    for s in seed_days().into_iter().filter(|s| s.ago < 30) {
        let day = (today - Days::new(s.ago)).to_string();
        if let Some((created, published, _)) = s.drafts.filter(|d| d.0 > 0) {
            out.entry("draft_completion_ratio")
                .or_default()
                .insert(day.clone(), published as f64 / created as f64);
        }
        if let Some((followups, visitors, _)) = s.engagement {
            out.entry("engagement_ratio")
                .or_default()
                .insert(day.clone(), visitors as f64 / followups as f64);
        }
        if let Some((sessions, mobile, ..)) = s.views {
            out.entry("mobile_views_ratio")
                .or_default()
                .insert(day.clone(), mobile as f64 / sessions as f64);
        }
    }
    out
}

/// The value of attribute `name` in the start tag `tag`.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(" {name}=\"");
    let at = tag.find(&needle)? + needle.len();
    let rest = &tag[at..];
    Some(&rest[..rest.find('"')?])
}

/// Start tags `<name …>` in `html`.
fn start_tags<'a>(html: &'a str, name: &str) -> Vec<&'a str> {
    let open = format!("<{name} ");
    html.match_indices(&open)
        .map(|(at, _)| {
            let rest = &html[at..];
            &rest[..=rest.find('>').expect("tag end")]
        })
        .collect()
}

/// The `<figure>` of one trend chart.
fn chart<'a>(html: &'a str, field: &str) -> &'a str {
    let needle = format!("data-field=\"{field}\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no chart of {field}"));
    let start = html[..at].rfind("<figure").expect("figure start");
    let end = at + html[at..].find("</figure>").expect("figure end");
    &html[start..end]
}

/// The start tag of a scorecard card.
fn card<'a>(html: &'a str, okr: &str, window: &str) -> &'a str {
    let needle = format!("data-okr=\"{okr}\" data-window=\"{window}\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no card {needle}"));
    let start = html[..at].rfind("<div").unwrap();
    let end = at + html[at..].find('>').unwrap();
    &html[start..=end]
}

/// The visible label of an adoption row.
fn adoption_label<'a>(html: &'a str, key: &str, window: &str) -> &'a str {
    let needle = format!("<tr data-adoption=\"{key}\" data-window=\"{window}\"");
    let at = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no adoption row {needle}"));
    let row = &html[at..at + html[at..].find("</tr>").unwrap()];
    let cell = &row[row.find("<td>").expect("label cell") + 4..];
    &cell[..cell.find("</td>").unwrap()]
}

#[tokio::test]
async fn landing_page_charts_equal_the_report_history() {
    let db = prepared_db().await;
    let today = db_today(&db).await;
    seed_rollups(&db, today).await;
    // Live gauges: 10 drafts created 2 days ago, 6 published (7d and 1d:
    // 0.6 — 1d has none), and 20 from 15 days ago, all published (30d:
    // 26 / 30 ≈ 0.87, above the floor).
    sqlx::raw_sql(
        "INSERT INTO followups (id, creator_id, status, created_at, published_at)
         SELECT gen_random_uuid(), 'c' || (g % 4),
                CASE WHEN g <= 6 THEN 'published' ELSE 'draft' END,
                now() - interval '2 days',
                CASE WHEN g <= 6 THEN now() - interval '2 days' + interval '10 minutes' END
         FROM generate_series(1, 10) g;
         INSERT INTO followups (id, creator_id, status, created_at, published_at)
         SELECT gen_random_uuid(), 'c' || (g % 9), 'published',
                now() - interval '15 days', now() - interval '15 days' + interval '10 minutes'
         FROM generate_series(1, 20) g;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut settings = Settings::for_database(Some(db.database_url()));
    // Targets of the charts come from the configuration, not from defaults.
    settings.targets.engagement_ratio = 0.55;
    settings.targets.mobile_views_ratio = 0.45;
    let ex = QuietExporter::start(settings).await;
    ex.collect_live_gauges().await;

    let (status, body) = ex.get("/api/okr/report?days=30").await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    let history = report["history"].as_array().unwrap();
    let (status, html) = ex.get("/").await;
    assert_eq!(status, 200);
    assert!(!html.contains("history unavailable"));
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "no external assets, no JavaScript"
    );

    let expected = expected_points(today);
    let gap_days: Vec<String> = [3u64, 4, 5]
        .iter()
        .map(|ago| (today - Days::new(*ago)).to_string())
        .collect();
    for (field, target) in [
        ("draft_completion_ratio", 0.8),
        ("engagement_ratio", 0.55),
        ("mobile_views_ratio", 0.45),
    ] {
        // The report's history of this field: day → value, nulls left out.
        let from_report: BTreeMap<String, f64> = history
            .iter()
            .filter_map(|h| Some((h["day"].as_str()?.to_owned(), h[field].as_f64()?)))
            .collect();
        assert_eq!(
            from_report, expected[field],
            "{field}: report history against the seed"
        );
        let figure = chart(&html, field);
        let svg = start_tags(figure, "svg");
        assert_eq!(svg.len(), 1, "{field}: one chart");
        assert_eq!(attr(svg[0], "role"), Some("img"));
        assert!(attr(svg[0], "viewBox").is_some());
        assert!(figure.contains("<title"), "{field}: chart has a title");
        let mut points = BTreeMap::new();
        for c in start_tags(figure, "circle") {
            let day = attr(c, "data-day").expect("data-day").to_owned();
            let value: f64 = attr(c, "data-value").expect("data-value").parse().unwrap();
            assert!(
                points.insert(day.clone(), value).is_none(),
                "{field}: two points on {day}"
            );
        }
        assert_eq!(
            points, from_report,
            "{field}: chart points equal the report's history"
        );
        // The gaps: no point on days without a value.
        for day in &gap_days {
            assert_eq!(
                points.contains_key(day),
                expected[field].contains_key(day),
                "{field}: {day}"
            );
        }
        // The target line, dashed, at the configured target.
        let line = start_tags(figure, "line")
            .into_iter()
            .find(|l| attr(l, "class") == Some("target"))
            .unwrap_or_else(|| panic!("{field}: no target line"));
        assert_eq!(
            attr(line, "data-target").and_then(|v| v.parse::<f64>().ok()),
            Some(target),
            "{field}"
        );
        assert!(figure.contains("target-label"), "{field}: target labelled");
    }
    // Day 3 has no row anywhere: no chart has a point on it.
    assert!(!html.contains(&format!("data-day=\"{}\"", gap_days[0])));
    // 30 days shown: the rows of days 30 and 40 are not.
    for ago in [30u64, 40] {
        let day = (today - Days::new(ago)).to_string();
        assert!(!html.contains(&format!("data-day=\"{day}\"")), "{day}");
    }

    // Adoption figures in words, the key kept for machines.
    for (window, active) in [
        ("1d", "Daily active creators"),
        ("7d", "Weekly active creators"),
        ("30d", "Monthly active creators"),
    ] {
        assert_eq!(adoption_label(&html, "active_creators", window), active);
    }
    for (key, label) in [
        ("repeat_creators_ratio", "Repeat creators"),
        ("followups_created", "Follow-ups created"),
        ("followups_published", "Published"),
        ("next_actions", "Next actions"),
        ("followups_all_time_draft", "Drafts (all time)"),
        ("followups_all_time_published", "Published (all time)"),
    ] {
        assert_eq!(adoption_label(&html, key, "7d"), label, "{key}");
    }
    let repeat = &html[html
        .find("<tr data-adoption=\"repeat_creators_ratio\" data-window=\"7d\"")
        .unwrap()..];
    assert!(
        repeat[..repeat.find("</tr>").unwrap()].contains(" %</td>"),
        "ratios shown as percentages"
    );

    // The alert floor: 7d draft completion 0.6 < 0.75 is flagged, 30d
    // (26 / 30) is not, 1d has no value.
    let week = card(&html, "draft_completion", "7d");
    assert_eq!(attr(week, "data-value"), Some("0.6"));
    assert_eq!(attr(week, "data-below-floor"), Some("true"));
    assert!(attr(week, "class").unwrap().contains("below-floor"));
    let after = &html[html.find(week).unwrap()..];
    assert!(
        after[..after.find("data-okr=\"engagement\"").unwrap()]
            .contains("below the 75 % alert floor")
    );
    let month = card(&html, "draft_completion", "30d");
    assert_eq!(
        attr(month, "data-value").and_then(|v| v.parse::<f64>().ok()),
        Some(26.0 / 30.0)
    );
    assert_eq!(attr(month, "data-below-floor"), Some("false"));
    assert_eq!(
        attr(card(&html, "draft_completion", "1d"), "data-below-floor"),
        None
    );
    assert_eq!(html.matches("below the 75 % alert floor").count(), 1);
    ex.stop().await;
}

#[tokio::test]
async fn landing_page_renders_without_a_database() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let url = DatabaseUrl::parse_arg(&format!("postgres://okr@127.0.0.1:{port}/okr")).unwrap();
    let ex = start_exporter(Settings::for_database(Some(url))).await;
    let started = std::time::Instant::now();
    let (status, html) = ex.get("/").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("history unavailable"), "{html}");
    assert!(!html.contains("<svg"));
    assert!(
        html.contains("data-okr=\"draft_completion\""),
        "scorecard still shown"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // The report, by contrast, answers 503.
    assert_eq!(ex.get("/api/okr/report").await.0, 503);
    ex.stop().await;
}
