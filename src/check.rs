//! `okr-exporter check`: verifies the source tables, their columns and types,
//! the recommended indexes and the migration state, and says precisely what
//! is wrong. It also reports, as advice, what makes the incremental reads of
//! `analytics_sessions` miss rows until the next full reconciliation (a cached
//! id sequence, logical replication, updates and deletes), so operators can
//! choose `--reconcile-interval` knowingly.

use std::fmt;

use chrono::{DateTime, Utc};
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

    // Without analytics_sessions.id (already reported as a problem) there is
    // no incremental read to advise about, and the lookups below would fail.
    if columns
        .iter()
        .any(|(t, c, _)| t == "analytics_sessions" && c == "id")
    {
        report.findings.push(id_sequence(pool).await?);
        report.findings.push(table_changes(pool).await?);
    }
    report.findings.push(subscriptions(pool).await?);

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

/// What the advice below tells operators to do, in one place so every finding
/// recommends the same settings.
const RECONCILE_ADVICE: &str = "set --reconcile-interval 0 (full recomputation every run) \
     or a short reconcile interval";

/// What an out-of-order id costs.
const MISSED_UNTIL_RECONCILED: &str = "the incremental reads of the engagement and mobile OKRs \
     miss such rows until the next full reconciliation (--reconcile-interval, default 5m)";

/// True when PostgreSQL refused a query for lack of privileges, which the
/// advisory checks report instead of failing the whole check.
fn insufficient_privilege(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("42501"))
}

/// The advice given when a catalog or statistics view cannot be read.
fn undetermined(what: &str, e: &sqlx::Error) -> Finding {
    Finding {
        status: Status::Advice,
        message: format!(
            "could not determine {what} ({e}); grant the exporter's role read access \
             or run check as a more privileged role, or {RECONCILE_ADVICE} to be safe"
        ),
    }
}

/// Reads the sequence behind `analytics_sessions.id` and its cache size.
async fn id_sequence(pool: &PgPool) -> Result<Finding, DbError> {
    // pg_get_serial_sequence covers serial and identity columns; a nextval()
    // default on a sequence the column does not own is found through the
    // default's dependency on it.
    let found: Result<Option<(String, i64)>, sqlx::Error> = sqlx::query_as(
        "SELECT s.seqrelid::regclass::text, s.seqcache \
         FROM ( \
           SELECT 1 AS rank, pg_get_serial_sequence( \
                    format('%I.analytics_sessions', current_schema()), 'id')::regclass AS seq \
           UNION ALL \
           SELECT 2, d.refobjid::regclass \
           FROM pg_attribute a \
           JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
           JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid \
                           AND d.refclassid = 'pg_class'::regclass \
           WHERE a.attrelid = format('%I.analytics_sessions', current_schema())::regclass \
             AND a.attname = 'id' \
         ) c \
         JOIN pg_sequence s ON s.seqrelid = c.seq \
         ORDER BY c.rank LIMIT 1",
    )
    .fetch_optional(pool)
    .await;
    match found {
        Ok(seq) => Ok(id_sequence_finding(
            seq.as_ref().map(|(name, cache)| (name.as_str(), *cache)),
        )),
        Err(e) if insufficient_privilege(&e) => Ok(undetermined(
            "the cache size of the sequence behind analytics_sessions.id",
            &e,
        )),
        Err(e) => Err(ctx("reading the sequence behind analytics_sessions.id")(e)),
    }
}

/// The finding for the id sequence `(name, cache size)`, or for no sequence.
fn id_sequence_finding(seq: Option<(&str, i64)>) -> Finding {
    match seq {
        Some((name, cache)) if cache <= 1 => Finding {
            status: Status::Ok,
            message: format!(
                "analytics_sessions.id sequence {name} has CACHE {cache}: ids are not handed out \
                 in per-session blocks"
            ),
        },
        Some((name, cache)) => Finding {
            status: Status::Advice,
            message: format!(
                "analytics_sessions.id sequence {name} has CACHE {cache}: each database session \
                 takes ids in blocks of {cache}, so a row committed now can carry an id below ids \
                 already read, and {MISSED_UNTIL_RECONCILED}; {RECONCILE_ADVICE}, \
                 or run ALTER SEQUENCE {name} CACHE 1"
            ),
        },
        None => Finding {
            status: Status::Advice,
            message: format!(
                "analytics_sessions.id has no sequence (no serial, identity or nextval default): \
                 ids are inserted explicitly and need not follow commit order, so a row committed \
                 now can carry an id below ids already read, and {MISSED_UNTIL_RECONCILED}; \
                 {RECONCILE_ADVICE}"
            ),
        },
    }
}

/// Update and delete counts of `analytics_sessions` from the statistics views,
/// with what is needed to trust them.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TableChanges {
    /// How many relations (the table, or a partitioned table and its
    /// partitions) have statistics; 0 for a view or foreign table.
    relations: i64,
    /// Rows updated (HOT updates included).
    updates: i64,
    /// Rows deleted.
    deletes: i64,
    /// Whether PostgreSQL counts row changes at all.
    track_counts: bool,
    /// A standby's statistics count only its own (read-only) activity.
    in_recovery: bool,
    /// When this database's statistics were last reset; `None` if never.
    stats_reset: Option<DateTime<Utc>>,
}

/// Reads the update and delete counts recorded for `analytics_sessions`.
async fn table_changes(pool: &PgPool) -> Result<Finding, DbError> {
    // A partitioned table's changes are counted on its partitions.
    let changes: Result<TableChanges, sqlx::Error> = sqlx::query_as(
        "WITH t AS (SELECT format('%I.analytics_sessions', current_schema())::regclass AS oid) \
         SELECT count(st.relid) AS relations, \
                coalesce(sum(st.n_tup_upd), 0)::int8 AS updates, \
                coalesce(sum(st.n_tup_del), 0)::int8 AS deletes, \
                current_setting('track_counts')::bool AS track_counts, \
                pg_is_in_recovery() AS in_recovery, \
                (SELECT stats_reset FROM pg_stat_database \
                 WHERE datname = current_database()) AS stats_reset \
         FROM t JOIN pg_stat_all_tables st \
           ON st.relid = t.oid OR st.relid IN (SELECT relid FROM pg_partition_tree(t.oid))",
    )
    .fetch_one(pool)
    .await;
    match changes {
        Ok(c) => Ok(table_changes_finding(&c)),
        Err(e) if insufficient_privilege(&e) => Ok(undetermined(
            "whether analytics_sessions is append-only",
            &e,
        )),
        Err(e) => Err(ctx("reading the statistics of analytics_sessions")(e)),
    }
}

/// The finding for the recorded updates and deletes.
fn table_changes_finding(c: &TableChanges) -> Finding {
    let advice = |message: String| Finding {
        status: Status::Advice,
        message,
    };
    let cannot_tell = "could not determine whether analytics_sessions is append-only";
    if c.in_recovery {
        return advice(format!(
            "{cannot_tell}: this server is a read replica, and statistics are per server: \
             they count only the replica's own writes, not the primary's; \
             run okr-exporter check against the primary"
        ));
    }
    if !c.track_counts {
        return advice(format!(
            "{cannot_tell}: track_counts is off, so PostgreSQL records no row changes; \
             if rows are updated or deleted, {RECONCILE_ADVICE}"
        ));
    }
    if c.relations == 0 {
        return advice(format!(
            "{cannot_tell}: PostgreSQL keeps no statistics for it (a view or foreign table?); \
             if rows are updated or deleted, {RECONCILE_ADVICE}"
        ));
    }
    let since = match c.stats_reset {
        Some(t) => format!(
            "since its statistics were last reset ({})",
            t.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None => "since its statistics began (never reset)".to_owned(),
    };
    if c.updates == 0 && c.deletes == 0 {
        return Finding {
            status: Status::Ok,
            message: format!(
                "analytics_sessions: no updates or deletes recorded on this server {since}"
            ),
        };
    }
    advice(format!(
        "analytics_sessions: {} update(s) and {} delete(s) recorded on this server {since}: \
         the table is not append-only: updates/deletes are only picked up by reconciliation, \
         within --reconcile-interval (default 5m); set --reconcile-interval 0 for exactness \
         every run (statistics are per server: on a read replica check the primary)",
        c.updates, c.deletes
    ))
}

/// Lists this database's logical-replication subscriptions.
async fn subscriptions(pool: &PgPool) -> Result<Finding, DbError> {
    // pg_subscription is cluster-wide; subconninfo is the only column most
    // roles may not read, and it is not selected.
    let subs: Result<Vec<(String, bool)>, sqlx::Error> = sqlx::query_as(
        "SELECT s.subname::text, EXISTS ( \
                  SELECT 1 FROM pg_subscription_rel r \
                  WHERE r.srsubid = s.oid \
                    AND r.srrelid = to_regclass(format('%I.analytics_sessions', current_schema()))) \
         FROM pg_subscription s \
         WHERE s.subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await;
    match subs {
        Ok(subs) => Ok(subscription_finding(&subs)),
        Err(e) if insufficient_privilege(&e) => Ok(undetermined(
            "whether this database is a logical-replication subscriber",
            &e,
        )),
        Err(e) => Err(ctx("reading pg_subscription")(e)),
    }
}

/// The finding for this database's subscriptions, each with whether it
/// replicates `analytics_sessions`.
fn subscription_finding(subs: &[(String, bool)]) -> Finding {
    if subs.is_empty() {
        return Finding {
            status: Status::Ok,
            message: "not a logical-replication subscriber (no subscription in this database)"
                .to_owned(),
        };
    }
    let names = subs
        .iter()
        .map(|(name, _)| name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let table = if subs.iter().any(|(_, has)| *has) {
        "analytics_sessions is among their tables"
    } else {
        "analytics_sessions is not among their tables yet, a REFRESH PUBLICATION may add it"
    };
    Finding {
        status: Status::Advice,
        message: format!(
            "this database is a logical-replication subscriber (subscriptions: {names}; \
             {table}): replicated rows keep the publisher's ids and are applied in the \
             publisher's commit order, not in id order, so a row applied now can carry an id \
             below ids already read, and {MISSED_UNTIL_RECONCILED}; replicated updates and \
             deletes arrive as such and are likewise only picked up by reconciliation; \
             {RECONCILE_ADVICE}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_with_cache_one_is_ok_and_a_larger_cache_is_advice() {
        let ok = id_sequence_finding(Some(("analytics_sessions_id_seq", 1)));
        assert_eq!(ok.status, Status::Ok);
        assert!(ok.message.contains("CACHE 1"), "{}", ok.message);

        let cached = id_sequence_finding(Some(("app.sessions_seq", 20)));
        assert_eq!(cached.status, Status::Advice);
        for part in [
            "sequence app.sessions_seq has CACHE 20",
            "blocks of 20",
            "set --reconcile-interval 0",
            "ALTER SEQUENCE app.sessions_seq CACHE 1",
        ] {
            assert!(cached.message.contains(part), "{part}: {}", cached.message);
        }

        let none = id_sequence_finding(None);
        assert_eq!(none.status, Status::Advice);
        assert!(none.message.contains("has no sequence"), "{}", none.message);
        assert!(none.message.contains("set --reconcile-interval 0"));
    }

    fn changes(updates: i64, deletes: i64) -> TableChanges {
        TableChanges {
            relations: 1,
            updates,
            deletes,
            track_counts: true,
            in_recovery: false,
            stats_reset: None,
        }
    }

    #[test]
    fn recorded_updates_and_deletes_are_advice_with_their_numbers() {
        let none = table_changes_finding(&changes(0, 0));
        assert_eq!(none.status, Status::Ok);
        assert!(none.message.contains("never reset"), "{}", none.message);

        let mut some = changes(3, 7);
        some.stats_reset = DateTime::from_timestamp(1_700_000_000, 0);
        let f = table_changes_finding(&some);
        assert_eq!(f.status, Status::Advice);
        for part in [
            "3 update(s) and 7 delete(s)",
            "since its statistics were last reset (2023-11-14 22:13:20 UTC)",
            "not append-only",
            "set --reconcile-interval 0",
        ] {
            assert!(f.message.contains(part), "{part}: {}", f.message);
        }
    }

    #[test]
    fn replica_disabled_counters_and_views_are_undetermined_not_ok() {
        let mut replica = changes(0, 0);
        replica.in_recovery = true;
        let mut untracked = changes(0, 0);
        untracked.track_counts = false;
        let mut view = changes(0, 0);
        view.relations = 0;
        for (c, why) in [
            (replica, "read replica"),
            (untracked, "track_counts is off"),
            (view, "no statistics"),
        ] {
            let f = table_changes_finding(&c);
            assert_eq!(f.status, Status::Advice);
            assert!(f.message.contains("could not determine"), "{}", f.message);
            assert!(f.message.contains(why), "{why}: {}", f.message);
        }
    }

    #[test]
    fn subscriptions_are_advice_naming_them() {
        assert_eq!(subscription_finding(&[]).status, Status::Ok);

        let f = subscription_finding(&[("a".to_owned(), false), ("b".to_owned(), true)]);
        assert_eq!(f.status, Status::Advice);
        for part in [
            "subscriptions: a, b",
            "analytics_sessions is among their tables",
            "set --reconcile-interval 0",
        ] {
            assert!(f.message.contains(part), "{part}: {}", f.message);
        }
        let f = subscription_finding(&[("a".to_owned(), false)]);
        assert!(
            f.message.contains("not among their tables"),
            "{}",
            f.message
        );
    }
}
