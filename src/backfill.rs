//! `okr-exporter backfill`: OKR history as OpenMetrics with timestamps, for
//! `promtool tsdb create-blocks-from openmetrics`, so Prometheus has every
//! OKR's trend from the first day instead of from the exporter's start.
//!
//! Each value is what the collector would have exported at that instant, as
//! of that instant (see [`crate::collector::history`]). Every OKR family is one
//! sweep over its rows (not one query per step), written out as soon as it
//! is done, so memory holds one family's values at a time. The source
//! tables are only read, in one read-only snapshot.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::Connection;

use crate::collector::history::{
    GaugeHistory, HistoryContext, collector_history, history_collectors, target_history,
};
use crate::config::Settings;
use crate::db;

/// Label names the exported series already carry; `--label` may not reuse them.
const RESERVED_LABELS: [&str; 8] = [
    "window",
    "quantile",
    "outcome",
    "device_type",
    "meeting_type",
    "creator_region",
    "company",
    "status",
];

/// Most instants one backfill writes (25,920 is 90 days at 5 minutes).
pub const MAX_STEPS: usize = 1_000_000;

/// A point in time on the command line: an age (`90d`, before now) or an
/// RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeArg {
    /// This long before now.
    Ago(Duration),
    /// This instant.
    At(DateTime<Utc>),
}

impl TimeArg {
    /// Parses `90d`, `0s` or `2026-09-01T00:00:00Z`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Ok(Self::At(t.with_timezone(&Utc)));
        }
        if s == "0" {
            return Ok(Self::Ago(Duration::ZERO));
        }
        humantime::parse_duration(s).map(Self::Ago).map_err(|_| {
            format!("'{s}' is neither a duration before now (90d, 3h) nor an RFC 3339 time")
        })
    }

    /// The instant this names, `now` being now.
    pub fn resolve(self, now: DateTime<Utc>) -> Result<DateTime<Utc>, BackfillError> {
        match self {
            Self::At(t) => Ok(t),
            Self::Ago(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .ok_or_else(|| BackfillError::Invalid(format!("{d:?} before now is out of range"))),
        }
    }
}

/// A `--label name=value` pair.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (name, value) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not name=value"))?;
    let valid = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !valid || name.starts_with("__") {
        return Err(format!(
            "'{name}' is not a label name (letters, digits and _, not starting with a digit or __)"
        ));
    }
    if RESERVED_LABELS.contains(&name) {
        return Err(format!(
            "'{name}' is a label of the exported series; choose another name"
        ));
    }
    Ok((name.to_owned(), value.to_owned()))
}

/// What to backfill.
#[derive(Debug, Clone)]
pub struct BackfillOptions {
    /// First instant (rounded up to a multiple of `step`).
    pub from: DateTime<Utc>,
    /// Last instant (rounded down to a multiple of `step`).
    pub until: DateTime<Utc>,
    /// Distance between instants.
    pub step: Duration,
    /// Labels added to every series (e.g. `job`, `instance`).
    pub labels: Vec<(String, String)>,
}

impl BackfillOptions {
    /// The instants: multiples of `step` (since the Unix epoch) in
    /// `[from, until]`, so they line up with any other backfill's.
    pub fn steps(&self) -> Result<Vec<DateTime<Utc>>, BackfillError> {
        let step = i64::try_from(self.step.as_millis())
            .ok()
            .filter(|s| *s >= 1000)
            .ok_or_else(|| BackfillError::Invalid("--step must be at least 1s".to_owned()))?;
        let from = self.from.timestamp_millis();
        let until = self.until.timestamp_millis();
        if until < from {
            return Err(BackfillError::Invalid(format!(
                "--until ({}) is before --from ({})",
                self.until.to_rfc3339(),
                self.from.to_rfc3339()
            )));
        }
        let first = from.div_euclid(step) * step + if from.rem_euclid(step) > 0 { step } else { 0 };
        let count = usize::try_from((until - first).div_euclid(step) + 1).unwrap_or(0);
        if count > MAX_STEPS {
            return Err(BackfillError::Invalid(format!(
                "{count} instants from --from to --until at --step: at most {MAX_STEPS}; use a longer --step"
            )));
        }
        Ok((0..count)
            .filter_map(|k| DateTime::from_timestamp_millis(first + step * k as i64))
            .collect())
    }
}

/// Why a backfill failed.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// A bad option.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] db::DbError),
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Write {
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// What a backfill wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackfillSummary {
    /// Instants.
    pub steps: usize,
    /// Series.
    pub series: usize,
    /// Samples.
    pub samples: usize,
}

/// Computes the history of every OKR family on `conn` and writes it to `out`
/// as OpenMetrics, closing with `# EOF`. `progress` gets one line per family.
pub async fn write_history(
    conn: &mut sqlx::PgConnection,
    settings: &Settings,
    options: &BackfillOptions,
    out: &mut dyn Write,
    mut progress: impl FnMut(&str),
) -> Result<BackfillSummary, BackfillError> {
    let steps = options.steps()?;
    let h = HistoryContext::new(
        steps,
        &settings.windows,
        &settings.targets,
        settings.company_top_n,
    );
    let millis = h.unix_millis();
    let mut summary = BackfillSummary {
        steps: h.len(),
        ..BackfillSummary::default()
    };
    let io = |source| BackfillError::Write {
        path: "output".to_owned(),
        source,
    };
    let mut tx = conn
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(db::ctx("starting a read-only transaction"))?;
    // JIT compiles the long scans for nothing here; the visitor aggregation
    // wants memory; a backfill may take minutes, so no statement timeout.
    sqlx::raw_sql(
        "SET LOCAL jit = off; SET LOCAL work_mem = '64MB'; SET LOCAL statement_timeout = 0",
    )
    .execute(&mut *tx)
    .await
    .map_err(db::ctx("configuring the transaction"))?;
    // A disabled collector's families are absent here as on /metrics.
    let names: Vec<&str> = history_collectors()
        .into_iter()
        .filter(|name| settings.collector_enabled(name))
        .collect();
    let started = Instant::now();
    for (done, name) in names.iter().enumerate() {
        let t = Instant::now();
        let families = collector_history(&mut tx, &h, name)
            .await
            .map_err(db::ctx("reading the source tables"))?;
        for fam in &families {
            write_family(out, fam.as_ref(), &millis, &options.labels).map_err(io)?;
            summary.series += fam.series_count();
            summary.samples += fam.len();
        }
        let elapsed = started.elapsed();
        let left = names.len() - done - 1;
        let eta = elapsed.mul_f64(left as f64 / (done + 1) as f64);
        progress(&format!(
            "[{}/{}] {name}: {} instants, {} values in {:.1} s; {} rows read so far; ETA {}",
            done + 1,
            names.len(),
            h.len(),
            families.iter().map(|f| f.len()).sum::<usize>(),
            t.elapsed().as_secs_f64(),
            h.rows_read(),
            humantime::format_duration(Duration::from_secs(eta.as_secs())),
        ));
    }
    for fam in target_history(&h) {
        write_family(out, fam.as_ref(), &millis, &options.labels).map_err(io)?;
        summary.series += fam.series_count();
        summary.samples += fam.len();
    }
    out.write_all(b"# EOF\n").map_err(io)?;
    out.flush().map_err(io)?;
    tx.rollback()
        .await
        .map_err(db::ctx("ending the read-only transaction"))?;
    Ok(summary)
}

/// Runs `okr-exporter backfill`: connects, writes to `output` (through a
/// temporary file renamed at the end, so a failed run leaves no partial
/// file) or standard output, reports progress on standard error when it is
/// a terminal.
pub async fn run(
    settings: &Settings,
    options: &BackfillOptions,
    output: Option<PathBuf>,
) -> Result<BackfillSummary, BackfillError> {
    let url = settings.database_url.as_ref().ok_or_else(|| {
        BackfillError::Invalid(
            "no database configured: pass --database-url or set DATABASE_URL".to_owned(),
        )
    })?;
    options.steps()?;
    let mut conn = sqlx::PgConnection::connect_with(&db::connect_options(url)?)
        .await
        .map_err(db::ctx("connecting to the database"))?;
    let tty = std::io::stderr().is_terminal();
    let progress = |line: &str| {
        if tty {
            eprintln!("{line}");
        }
    };
    let summary = match &output {
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            write_history(&mut conn, settings, options, &mut out, progress).await?
        }
        Some(path) => {
            let tmp = path.with_extension("partial");
            let write_err = |source| BackfillError::Write {
                path: path.display().to_string(),
                source,
            };
            let file = std::fs::File::create(&tmp).map_err(write_err)?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let result = write_history(&mut conn, settings, options, &mut out, progress).await;
            drop(out);
            match result {
                Ok(s) => {
                    std::fs::rename(&tmp, path).map_err(write_err)?;
                    s
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
    };
    let _ = conn.close().await;
    Ok(summary)
}

/// Writes one gauge family: HELP, TYPE, then each series' samples in time
/// order (series sorted by labels, so output is reproducible).
fn write_family(
    out: &mut dyn Write,
    fam: &dyn GaugeHistory,
    millis: &[i64],
    extra: &[(String, String)],
) -> std::io::Result<()> {
    if fam.is_empty() {
        return Ok(());
    }
    let name = fam.name();
    writeln!(out, "# HELP {} {}", name, escape_help(fam.help()))?;
    writeln!(out, "# TYPE {} gauge", name)?;
    let mut line = String::with_capacity(256);
    for (labels, values) in fam.sorted_series() {
        if values.is_empty() {
            continue;
        }
        let mut prefix = String::from(name);
        let all: Vec<(&str, &str)> = labels
            .into_iter()
            .chain(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .collect();
        if !all.is_empty() {
            prefix.push('{');
            for (i, (k, v)) in all.iter().enumerate() {
                if i > 0 {
                    prefix.push(',');
                }
                prefix.push_str(k);
                prefix.push_str("=\"");
                escape_label_value(&mut prefix, v);
                prefix.push('"');
            }
            prefix.push('}');
        }
        for (step, value) in values {
            let Some(ms) = millis.get(*step as usize) else {
                continue;
            };
            line.clear();
            use std::fmt::Write as _;
            let _ = write!(line, "{prefix} {value} ");
            push_timestamp(&mut line, *ms);
            line.push('\n');
            out.write_all(line.as_bytes())?;
        }
    }
    Ok(())
}

/// Seconds with the milliseconds only when there are some.
fn push_timestamp(line: &mut String, ms: i64) {
    use std::fmt::Write as _;
    let (secs, frac) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    if frac == 0 {
        let _ = write!(line, "{secs}");
    } else {
        let _ = write!(line, "{secs}.{frac:03}");
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::history::HistoryFamily;
    use crate::collector::labels::WindowLabels;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn instants_are_step_multiples_inside_the_range() {
        let o = BackfillOptions {
            from: at("2026-11-01T00:02:00Z"),
            until: at("2026-11-01T00:21:00Z"),
            step: Duration::from_secs(300),
            labels: Vec::new(),
        };
        let steps = o.steps().unwrap_or_default();
        assert_eq!(
            steps,
            [
                at("2026-11-01T00:05:00Z"),
                at("2026-11-01T00:10:00Z"),
                at("2026-11-01T00:15:00Z"),
                at("2026-11-01T00:20:00Z")
            ]
        );
        let exact = BackfillOptions {
            from: at("2026-11-01T00:00:00Z"),
            until: at("2026-11-01T00:00:00Z"),
            ..o.clone()
        };
        assert_eq!(exact.steps().map(|s| s.len()).ok(), Some(1));
        let backwards = BackfillOptions {
            from: o.until,
            until: o.from,
            ..o.clone()
        };
        assert!(backwards.steps().is_err());
        let too_fine = BackfillOptions {
            step: Duration::from_millis(10),
            ..o
        };
        assert!(too_fine.steps().is_err());
    }

    #[test]
    fn time_and_label_arguments() {
        assert_eq!(
            TimeArg::parse("90d"),
            Ok(TimeArg::Ago(Duration::from_secs(90 * 86_400)))
        );
        assert_eq!(
            TimeArg::parse("2026-09-01T00:00:00Z"),
            Ok(TimeArg::At(at("2026-09-01T00:00:00Z")))
        );
        assert!(TimeArg::parse("yesterday").is_err());
        assert_eq!(
            parse_label("job=okr-exporter"),
            Ok(("job".to_owned(), "okr-exporter".to_owned()))
        );
        assert!(parse_label("window=7d").is_err());
        assert!(parse_label("9lives=x").is_err());
        assert!(parse_label("__name__=x").is_err());
        assert!(parse_label("novalue").is_err());
    }

    #[test]
    fn families_are_written_as_openmetrics() {
        let mut fam = HistoryFamily::new("okr_views", "Sessions.\nBy \\ device.");
        let a = fam.series(WindowLabels::new("7d"));
        let b = fam.series(WindowLabels::new("1d"));
        fam.push(a, 0, 2.0);
        fam.push(a, 1, 0.25);
        fam.push(b, 1, 1.0);
        let mut out = Vec::new();
        let extra = vec![("job".to_owned(), "a\"b".to_owned())];
        write_family(&mut out, &fam, &[1_000_000, 1_300_500], &extra).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&out),
            "# HELP okr_views Sessions.\\nBy \\\\ device.\n\
             # TYPE okr_views gauge\n\
             okr_views{window=\"1d\",job=\"a\\\"b\"} 1 1300.500\n\
             okr_views{window=\"7d\",job=\"a\\\"b\"} 2 1000\n\
             okr_views{window=\"7d\",job=\"a\\\"b\"} 0.25 1300.500\n"
        );
    }
}
