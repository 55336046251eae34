//! `okr-exporter check`: verifies the source tables, their columns and types,
//! the recommended indexes and the migration state, and says precisely what
//! is wrong.

use std::fmt;

use sqlx::PgPool;

use crate::db::{self, DbError, ctx};

/// A column the collector reads, with the types it accepts.
struct ExpectedColumn {
    table: &'static str,
    column: &'static str,
    /// Accepted `information_schema.columns.data_type` values; the first is
    /// the one the data contract names.
    types: &'static [&'static str],
}

const TEXT: &[&str] = &["text", "character varying"];
const TS: &[&str] = &["timestamp with time zone"];
const UUID: &[&str] = &["uuid"];

const EXPECTED: &[ExpectedColumn] = &[
    ExpectedColumn {
        table: "followups",
        column: "id",
        types: UUID,
    },
    ExpectedColumn {
        table: "followups",
        column: "creator_id",
        types: TEXT,
    },
    ExpectedColumn {
        table: "followups",
        column: "company",
        types: TEXT,
    },
    ExpectedColumn {
        table: "followups",
        column: "meeting_type",
        types: TEXT,
    },
    ExpectedColumn {
        table: "followups",
        column: "creator_region",
        types: TEXT,
    },
    ExpectedColumn {
        table: "followups",
        column: "status",
        types: TEXT,
    },
    ExpectedColumn {
        table: "followups",
        column: "created_at",
        types: TS,
    },
    ExpectedColumn {
        table: "followups",
        column: "published_at",
        types: TS,
    },
    ExpectedColumn {
        table: "followups",
        column: "deleted_at",
        types: TS,
    },
    ExpectedColumn {
        table: "analytics_sessions",
        column: "id",
        types: &["bigint", "integer"],
    },
    ExpectedColumn {
        table: "analytics_sessions",
        column: "followup_id",
        types: UUID,
    },
    ExpectedColumn {
        table: "analytics_sessions",
        column: "visitor_id",
        types: TEXT,
    },
    ExpectedColumn {
        table: "analytics_sessions",
        column: "device_type",
        types: TEXT,
    },
    ExpectedColumn {
        table: "analytics_sessions",
        column: "started_at",
        types: TS,
    },
];

const RECOMMENDED_INDEXES: &[&str] = &[
    "okr_followups_created_at_idx",
    "okr_followups_published_at_idx",
    "okr_analytics_sessions_started_at_idx",
    "okr_analytics_sessions_followup_visitor_idx",
];

/// How one checked item fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// As expected.
    Ok,
    /// Missing or wrong: the exporter cannot work correctly.
    Problem,
    /// Advice (e.g. a recommended index is missing); not a failure.
    Advice,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Outcome.
    pub status: Status,
    /// What was checked and what was found.
    pub message: String,
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Findings in check order.
    pub findings: Vec<Finding>,
}

impl CheckReport {
    fn push(&mut self, status: Status, message: impl Into<String>) {
        self.findings.push(Finding {
            status,
            message: message.into(),
        });
    }

    /// Number of problems (not counting advice).
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Problem)
            .count()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            let tag = match finding.status {
                Status::Ok => "ok     ",
                Status::Problem => "PROBLEM",
                Status::Advice => "advice ",
            };
            writeln!(f, "{tag}  {}", finding.message)?;
        }
        match self.problems() {
            0 => writeln!(f, "result: all checks passed"),
            n => writeln!(f, "result: {n} problem(s)"),
        }
    }
}

/// Runs every check against `pool`.
pub async fn run(pool: &PgPool) -> Result<CheckReport, DbError> {
    let mut report = CheckReport::default();
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map_err(ctx("connecting to the database"))?;
    report.push(Status::Ok, "database reachable");

    let columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() \
           AND table_name IN ('followups', 'analytics_sessions')",
    )
    .fetch_all(pool)
    .await
    .map_err(ctx("reading information_schema.columns"))?;

    for table in ["followups", "analytics_sessions"] {
        if !columns.iter().any(|(t, _, _)| t == table) {
            report.push(
                Status::Problem,
                format!("table {table} is missing (see sql/source_schema.sql for its shape)"),
            );
            continue;
        }
        for exp in EXPECTED.iter().filter(|e| e.table == table) {
            let found = columns
                .iter()
                .find(|(t, c, _)| t == exp.table && c == exp.column);
            match found {
                None => report.push(
                    Status::Problem,
                    format!(
                        "column {}.{} is missing (expected {})",
                        exp.table, exp.column, exp.types[0]
                    ),
                ),
                Some((_, _, ty)) if !exp.types.contains(&ty.as_str()) => report.push(
                    Status::Problem,
                    format!(
                        "column {}.{} is {ty}, expected {}",
                        exp.table, exp.column, exp.types[0]
                    ),
                ),
                Some((_, _, ty)) => {
                    report.push(Status::Ok, format!("{}.{} ({ty})", exp.table, exp.column))
                }
            }
        }
    }

    let indexes: Vec<(String,)> = sqlx::query_as(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema()",
    )
    .fetch_all(pool)
    .await
    .map_err(ctx("reading pg_indexes"))?;
    for name in RECOMMENDED_INDEXES {
        if indexes.iter().any(|(i,)| i == name) {
            report.push(Status::Ok, format!("index {name}"));
        } else {
            report.push(
                Status::Advice,
                format!(
                    "index {name} is missing: queries scan whole tables \
                     (create it with `okr-exporter migrate --create-source-indexes` or sql/source_indexes.sql)"
                ),
            );
        }
    }

    let total = db::MIGRATOR.iter().count();
    if db::migrations_applied(pool).await? {
        report.push(Status::Ok, format!("migrations: all {total} applied"));
    } else {
        report.push(
            Status::Problem,
            format!("migrations: not all {total} applied (run `okr-exporter migrate`)"),
        );
    }
    Ok(report)
}
