//! Command line, environment and configuration file (DESIGN §6).
//!
//! Flags fall back to environment variables (clap `env`); the optional TOML
//! file (`--config`) holds targets, windows, per-endpoint latency targets and
//! collector intervals. A flag or variable wins over the file, the file over
//! the built-in default, and every built-in default is set in one place,
//! [`Settings::for_database`], which [`CommonArgs::resolve`] starts from.
//! Every value is validated while parsing, so a bad value stops the program
//! with one clear line before anything starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::collector::registry::{self, COLLECTORS};
use crate::serve::ServeOptions;

/// Top-level command line of the `okr-exporter` binary.
#[derive(Debug, Parser)]
#[command(
    name = "okr-exporter",
    version,
    about = "Prometheus exporter for the Follow-Up product's OKRs and API latency",
    long_about = "Prometheus exporter for the Follow-Up product's OKRs and API latency.\n\n\
        Polls the product's PostgreSQL tables in the background and serves OKR gauges, \
        targets and its own health on /metrics, plus authenticated ingestion endpoints \
        for client-side events."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve /metrics, health, report and ingestion endpoints (the production mode).
    Serve(ServeArgs),
    /// Apply the exporter's own migrations and exit.
    Migrate(MigrateArgs),
    /// Verify the source tables, their columns and the migration state; exit 0 or 1.
    Check,
    /// Run everything on a private embedded PostgreSQL with generated history and live traffic.
    Demo(DemoArgs),
    /// Write OKR history as OpenMetrics with timestamps, for
    /// `promtool tsdb create-blocks-from openmetrics` (source tables are only read).
    Backfill(BackfillArgs),
}

/// `backfill` options.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    /// First instant: a duration before now (`90d`) or an RFC 3339 time.
    #[arg(long, default_value = "90d", value_parser = crate::backfill::TimeArg::parse)]
    pub from: crate::backfill::TimeArg,
    /// Last instant: a duration before now or an RFC 3339 time. Prometheus
    /// refuses blocks that overlap its head block (the last ~2-3 hours),
    /// hence the default.
    #[arg(long, default_value = "3h", value_parser = crate::backfill::TimeArg::parse)]
    pub until: crate::backfill::TimeArg,
    /// Distance between instants (Prometheus's default lookback is 5m, so
    /// panels draw unbroken lines).
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub step: Duration,
    /// File to write (replaced only when the backfill succeeds) [default: standard output].
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Label added to every series, `name=value`; repeatable (e.g. `job`,
    /// `instance`, so backfilled series continue the live ones).
    #[arg(long = "label", value_parser = crate::backfill::parse_label)]
    pub labels: Vec<(String, String)>,
}

/// Options shared by all subcommands.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// PostgreSQL URL (postgres://user:password@host:port/db). `demo` starts an
    /// embedded PostgreSQL when it is not given. The password is never logged.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Read replica URL for the collector's queries (defaults to --database-url).
    #[arg(long, env = "DATABASE_READ_URL", global = true, hide_env_values = true)]
    pub database_read_url: Option<String>,

    /// Address the exporter listens on [default: 127.0.0.1:9464].
    #[arg(long, env = "OKR_LISTEN", global = true)]
    pub listen: Option<SocketAddr>,

    /// How often the collector polls PostgreSQL [default: 60s].
    #[arg(long, env = "OKR_COLLECT_INTERVAL", global = true, value_parser = parse_duration)]
    pub collect_interval: Option<Duration>,

    /// Statement timeout of each OKR query [default: 10s].
    #[arg(long, env = "OKR_QUERY_TIMEOUT", global = true, value_parser = parse_duration)]
    pub query_timeout: Option<Duration>,

    /// How long the last good values are served while the database fails
    /// [default: 3 × collect interval].
    #[arg(long, env = "OKR_MAX_STALENESS", global = true, value_parser = parse_duration)]
    pub max_staleness: Option<Duration>,

    /// How often the incremental collectors (engagement, mobile) recompute
    /// fully and correct their state; `0` recomputes every run [default: 5m].
    #[arg(long, env = "OKR_RECONCILE_INTERVAL", global = true, value_parser = parse_duration_or_zero)]
    pub reconcile_interval: Option<Duration>,

    /// Rolling windows, comma-separated humantime durations [default: 1d,7d,30d].
    #[arg(long, env = "OKR_WINDOWS", global = true, value_parser = parse_windows)]
    pub windows: Option<Windows>,

    /// Bearer token required by the ingestion endpoints; ingestion is refused until one is set.
    #[arg(long, env = "OKR_INGEST_TOKEN", global = true, hide_env_values = true)]
    pub ingest_token: Option<String>,

    /// Bearer token protecting /metrics, / and the report (optional).
    #[arg(long, env = "OKR_METRICS_TOKEN", global = true, hide_env_values = true)]
    pub metrics_token: Option<String>,

    /// Basic-auth credentials `user:password` protecting /metrics, / and the report (optional).
    #[arg(
        long,
        env = "OKR_METRICS_BASIC_AUTH",
        global = true,
        hide_env_values = true
    )]
    pub metrics_basic_auth: Option<String>,

    /// Number of companies broken out in okr_engagement_by_company_ratio [default: 20].
    #[arg(long, env = "OKR_COMPANY_TOP_N", global = true)]
    pub company_top_n: Option<usize>,

    /// TOML file with targets, windows, latency targets and collector intervals.
    #[arg(long, env = "OKR_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "OKR_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax, e.g. `info` or `okr_exporter=debug`).
    #[arg(long, env = "OKR_LOG", global = true, default_value = "info")]
    pub log: String,

    /// Create the indexes the collector relies on in the source tables
    /// (sql/source_indexes.sql, built concurrently) at start-up.
    #[arg(long, env = "OKR_CREATE_SOURCE_INDEXES", global = true)]
    pub create_source_indexes: bool,

    /// Largest request body accepted by the ingestion endpoints, in bytes
    /// [default: 16384].
    #[arg(long, env = "OKR_MAX_BODY_BYTES", global = true)]
    pub max_body_bytes: Option<usize>,

    /// Largest creation duration accepted by ingestion [default: 1d].
    #[arg(long, env = "OKR_MAX_CREATION_DURATION", global = true, value_parser = parse_duration)]
    pub max_creation_duration: Option<Duration>,

    /// Write one row per instrumented request to the performance_metrics table.
    #[arg(long, env = "OKR_REQUEST_LOG", global = true)]
    pub request_log: bool,

    /// Delete request-log rows older than this [default: 30d].
    #[arg(long, env = "OKR_REQUEST_LOG_RETENTION", global = true, value_parser = parse_duration)]
    pub request_log_retention: Option<Duration>,

    /// Request header carrying the user id written to the request log
    /// [default: x-user-id].
    #[arg(long, env = "OKR_REQUEST_LOG_USER_HEADER", global = true)]
    pub request_log_user_header: Option<String>,

    /// Time a connection has to send complete request headers, from its
    /// acceptance or its previous response (also closes idle keep-alive
    /// connections) [default: 10s].
    #[arg(long, env = "OKR_HTTP_HEADER_READ_TIMEOUT", global = true, value_parser = parse_duration)]
    pub http_header_read_timeout: Option<Duration>,

    /// Time a request body has to arrive once the headers have; later: 408
    /// [default: 10s].
    #[arg(long, env = "OKR_HTTP_BODY_READ_TIMEOUT", global = true, value_parser = parse_duration)]
    pub http_body_read_timeout: Option<Duration>,

    /// Time from the request headers to the response; later: 408 if the body
    /// is still missing, else 503 [default: 30s].
    #[arg(long, env = "OKR_HTTP_REQUEST_TIMEOUT", global = true, value_parser = parse_duration)]
    pub http_request_timeout: Option<Duration>,

    /// Most open HTTP connections; at the cap the longest-idle one is closed
    /// for each new one [default: the file-descriptor limit less 64, at
    /// most 1024].
    #[arg(long, env = "OKR_HTTP_MAX_CONNECTIONS", global = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_connections: Option<u32>,

    /// `--collector.NAME` / `--no-collector.NAME` of every registered collector.
    #[command(flatten)]
    pub collectors: CollectorFlags,
}

/// The `--collector.NAME` / `--no-collector.NAME` flags (node_exporter's
/// convention), one pair per collector of [`registry::COLLECTORS`]: clap's
/// derive cannot name flags after a list, so this type adds them to the
/// command itself and reads them back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectorFlags {
    /// The collectors the command line turns on (`true`) or off (`false`);
    /// when both flags of one collector are given, the last one wins.
    pub given: BTreeMap<&'static str, bool>,
}

impl CollectorFlags {
    fn enable_id(name: &str) -> String {
        format!("collector.{name}")
    }

    fn disable_id(name: &str) -> String {
        format!("no-collector.{name}")
    }
}

impl FromArgMatches for CollectorFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Self::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for r in &COLLECTORS {
            // The two flags of a collector override each other, so at most
            // one of them is set: the one given last.
            let flag = |id: String| matches.try_get_one::<bool>(&id).ok().flatten() == Some(&true);
            if flag(Self::enable_id(r.name)) {
                self.given.insert(r.name, true);
            } else if flag(Self::disable_id(r.name)) {
                self.given.insert(r.name, false);
            }
        }
        Ok(())
    }
}

impl Args for CollectorFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(COLLECTORS.iter().flat_map(|r| {
            let (on, off) = (Self::enable_id(r.name), Self::disable_id(r.name));
            let default = if r.enabled_by_default { "on" } else { "off" };
            [
                clap::Arg::new(on.clone())
                    .long(on.clone())
                    .action(ArgAction::SetTrue)
                    .overrides_with(off.clone())
                    .global(true)
                    .help_heading("Collectors")
                    .help(format!(
                        "Enable the {} collector [default: {default}].",
                        r.name
                    )),
                clap::Arg::new(off.clone())
                    .long(off)
                    .action(ArgAction::SetTrue)
                    .overrides_with(on)
                    .global(true)
                    .help_heading("Collectors")
                    .help(format!("Disable the {} collector.", r.name)),
            ]
        }))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// `serve` options.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {}

/// `migrate` options.
#[derive(Debug, Args, Default)]
pub struct MigrateArgs {}

/// `demo` options.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Seed of the generated history and traffic (same seed, same data).
    #[arg(long, env = "OKR_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Days of history to backfill.
    #[arg(long, env = "OKR_DEMO_DAYS", default_value_t = 45,
          value_parser = clap::value_parser!(u32).range(1..=730))]
    pub days: u32,
    /// Follow-ups created per day in the backfilled history.
    #[arg(long, env = "OKR_DEMO_FOLLOWUPS_PER_DAY", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub followups_per_day: u32,
    /// Address of the demo's reference Follow-Up API.
    #[arg(long, env = "OKR_DEMO_API_LISTEN", default_value = "127.0.0.1:8080")]
    pub api_listen: SocketAddr,
    /// Simulated requests per second against the reference API (0 disables traffic).
    #[arg(long, env = "OKR_DEMO_RPS", default_value_t = 10.0)]
    pub rps: f64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A duration in humantime syntax (`30s`, `7d`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 30s, 5m or 7d ({e})"))?;
    if d.is_zero() {
        return Err(format!("'{s}' must be longer than zero"));
    }
    Ok(d)
}

/// A duration in humantime syntax, where `0` is allowed (it turns the
/// periodic behaviour it configures into "every run").
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 0, 30s, 5m or 7d ({e})"))
}

/// Default of `--reconcile-interval`.
pub const DEFAULT_RECONCILE_INTERVAL: Duration = Duration::from_secs(300);

/// One rolling window: its label (as written, e.g. `7d`) and its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The `window` label value.
    pub label: String,
    /// The window's length.
    pub duration: Duration,
}

/// The configured windows, in the order given, without duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Windows(pub Vec<Window>);

impl Windows {
    /// The longest window.
    pub fn longest(&self) -> Duration {
        self.0.iter().map(|w| w.duration).max().unwrap_or_default()
    }
}

impl Default for Windows {
    fn default() -> Self {
        parse_windows("1d,7d,30d").unwrap_or(Windows(Vec::new()))
    }
}

/// Parses a comma-separated window list such as `1d,7d,30d`.
pub fn parse_windows(s: &str) -> Result<Windows, String> {
    let mut out: Vec<Window> = Vec::new();
    for part in s.split(',') {
        let label = part.trim();
        if label.is_empty() {
            return Err(format!(
                "'{s}' has an empty window; expected e.g. 1d,7d,30d"
            ));
        }
        let duration = parse_duration(label)?;
        if duration > Duration::from_secs(3 * 366 * 86_400) {
            return Err(format!("window '{label}' is longer than three years"));
        }
        if out
            .iter()
            .any(|w| w.label == label || w.duration == duration)
        {
            return Err(format!("window '{label}' is given twice"));
        }
        out.push(Window {
            label: label.to_owned(),
            duration,
        });
    }
    Ok(Windows(out))
}

/// A PostgreSQL URL whose `Display`/`Debug` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Validates a `postgres://` or `postgresql://` URL.
    pub fn parse_arg(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let redacted = redact_url(s);
        if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
            return Err(format!(
                "'{redacted}' is not a PostgreSQL URL (expected postgres://user:password@host:port/database)"
            ));
        }
        sqlx::postgres::PgConnectOptions::from_str(s)
            .map_err(|_| format!("'{redacted}' is not a valid PostgreSQL URL"))?;
        Ok(Self(s.to_owned()))
    }

    /// The full URL, password included: hand it only to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

/// Replaces the password of a URL (and any `password=` query parameter) by
/// `***`. A string that is not a `scheme://host` URL is returned as it is,
/// unless it might hold credentials (an `@` or the word `password`): then
/// only `***`.
pub fn redact_url(s: &str) -> String {
    let url = url::Url::parse(s).ok().filter(|u| !u.cannot_be_a_base());
    let Some(mut url) = url else {
        let suspicious = s.contains('@') || s.to_ascii_lowercase().contains("password");
        return if suspicious { "***" } else { s }.to_owned();
    };
    if url.password().is_some() {
        // Fails only for URLs that cannot carry a password.
        let _ = url.set_password(Some("***"));
    }
    let has_password_param = url
        .query_pairs()
        .any(|(k, _)| k.eq_ignore_ascii_case("password"));
    if has_password_param {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".into()
                } else {
                    v
                };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.into()
}

/// A secret string (token) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Accepts any non-empty value without surrounding whitespace.
    pub fn parse_arg(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.is_empty() {
            return Err("the token must not be empty".to_owned());
        }
        Ok(Self(t.to_owned()))
    }

    /// Wraps a value (for tests and library users).
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: compare it in constant time, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Basic-auth credentials for the read endpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicCredentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: Secret,
}

impl BasicCredentials {
    /// Parses `user:password`.
    pub fn parse_arg(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() && !p.is_empty() => Ok(Self {
                user: u.to_owned(),
                password: Secret(p.to_owned()),
            }),
            _ => Err("expected user:password".to_owned()),
        }
    }
}

impl fmt::Debug for BasicCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BasicCredentials({}:***)", self.user)
    }
}

/// OKR targets and alert floors, exported as `okr_target_*` series.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Targets {
    /// P80 creation time target, seconds.
    pub creation_time_p80_seconds: f64,
    /// Draft completion target ratio.
    pub draft_completion_ratio: f64,
    /// Draft completion alert floor ratio.
    pub draft_completion_alert_floor_ratio: f64,
    /// Prospect engagement target (unique visitors per follow-up).
    pub engagement_ratio: f64,
    /// Mobile views target ratio.
    pub mobile_views_ratio: f64,
    /// Time to next action target, seconds.
    pub time_to_next_action_avg_seconds: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            creation_time_p80_seconds: 600.0,
            draft_completion_ratio: 0.8,
            draft_completion_alert_floor_ratio: 0.75,
            engagement_ratio: 0.4,
            mobile_views_ratio: 0.4,
            time_to_next_action_avg_seconds: 604_800.0,
        }
    }
}

/// One per-endpoint latency target from the configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyTarget {
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Route template, e.g. `/api/followups/{id}`.
    pub route: String,
    /// P95 target in seconds.
    pub p95_seconds: f64,
}

/// The optional TOML configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Windows, e.g. `["1d", "7d", "30d"]`.
    pub windows: Option<Vec<String>>,
    /// Collection interval, humantime.
    pub collect_interval: Option<String>,
    /// Query timeout, humantime.
    pub query_timeout: Option<String>,
    /// Staleness limit, humantime.
    pub max_staleness: Option<String>,
    /// Full recomputation interval of the incremental collectors, humantime
    /// (`"0s"`: every run).
    pub reconcile_interval: Option<String>,
    /// Companies broken out in the engagement breakdown.
    pub company_top_n: Option<usize>,
    /// OKR targets.
    #[serde(default)]
    pub targets: Targets,
    /// Per-endpoint latency targets (replace the defaults when given).
    pub latency_targets: Option<Vec<LatencyTarget>>,
    /// Latency histogram bucket bounds, seconds.
    pub latency_buckets: Option<Vec<f64>>,
    /// Per-collector interval overrides, e.g. `adoption = "5m"`.
    #[serde(default)]
    pub collector_intervals: BTreeMap<String, String>,
    /// Collectors turned on or off, e.g. `engagement = false`.
    #[serde(default)]
    pub collectors: BTreeMap<String, bool>,
}

/// Everything the server and collector need, resolved and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Primary database.
    pub database_url: Option<DatabaseUrl>,
    /// Database the collector reads from.
    pub database_read_url: Option<DatabaseUrl>,
    /// Listen address.
    pub listen: SocketAddr,
    /// Collection interval.
    pub collect_interval: Duration,
    /// Per-query statement timeout.
    pub query_timeout: Duration,
    /// Longest time a collector's last good values are served.
    pub max_staleness: Duration,
    /// How often the incremental collectors recompute fully and correct
    /// their state (zero: every run).
    pub reconcile_interval: Duration,
    /// Rolling windows.
    pub windows: Windows,
    /// Ingestion token.
    pub ingest_token: Option<Secret>,
    /// Bearer token for the read endpoints.
    pub metrics_token: Option<Secret>,
    /// Basic credentials for the read endpoints.
    pub metrics_basic_auth: Option<BasicCredentials>,
    /// Top-N companies.
    pub company_top_n: usize,
    /// OKR targets.
    pub targets: Targets,
    /// Per-endpoint latency targets (None: the middleware's defaults).
    pub latency_targets: Option<Vec<LatencyTarget>>,
    /// Latency buckets (None: the middleware's defaults).
    pub latency_buckets: Option<Vec<f64>>,
    /// Per-collector interval overrides, by registered collector name.
    pub collector_intervals: BTreeMap<&'static str, Duration>,
    /// Whether each registered collector runs, by name.
    pub collectors: BTreeMap<&'static str, bool>,
    /// Create source indexes at start-up.
    pub create_source_indexes: bool,
    /// Ingestion body limit.
    pub max_body_bytes: usize,
    /// Largest accepted creation duration.
    pub max_creation_duration: Duration,
    /// Request log enabled.
    pub request_log: bool,
    /// Request log retention.
    pub request_log_retention: Duration,
    /// Request log user header.
    pub request_log_user_header: String,
    /// Timeouts and connection cap of the HTTP server.
    pub http: ServeOptions,
}

/// A configuration problem found while resolving [`Settings`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML of the expected shape.
    #[error("config file {path}: {message}")]
    Parse {
        /// File path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl CommonArgs {
    /// Merges flags, the configuration file and defaults into [`Settings`].
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.message().to_owned(),
                })?
            }
            None => FileConfig::default(),
        };
        let defaults = Settings::for_database(None);
        let file_duration =
            |v: &Option<String>, what: &str| -> Result<Option<Duration>, ConfigError> {
                v.as_deref()
                    .map(|s| {
                        parse_duration(s).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))
                    })
                    .transpose()
            };
        let collect_interval = self
            .collect_interval
            .or(file_duration(&file.collect_interval, "collect_interval")?)
            .unwrap_or(defaults.collect_interval);
        let query_timeout = self
            .query_timeout
            .or(file_duration(&file.query_timeout, "query_timeout")?)
            .unwrap_or(defaults.query_timeout);
        let max_staleness = self
            .max_staleness
            .or(file_duration(&file.max_staleness, "max_staleness")?)
            .unwrap_or_else(|| default_max_staleness(collect_interval));
        let reconcile_interval = match (self.reconcile_interval, &file.reconcile_interval) {
            (Some(d), _) => d,
            (None, Some(v)) => parse_duration_or_zero(v)
                .map_err(|e| ConfigError::Invalid(format!("reconcile_interval: {e}")))?,
            (None, None) => defaults.reconcile_interval,
        };
        let windows = match (&self.windows, &file.windows) {
            (Some(w), _) => w.clone(),
            (None, Some(list)) => parse_windows(&list.join(","))
                .map_err(|e| ConfigError::Invalid(format!("windows: {e}")))?,
            (None, None) => defaults.windows.clone(),
        };
        let company_top_n = self
            .company_top_n
            .or(file.company_top_n)
            .unwrap_or(defaults.company_top_n);
        let mut collector_intervals = BTreeMap::new();
        for (name, v) in &file.collector_intervals {
            let what = format!("collector_intervals.{name}");
            let name = registered_collector(&what, name)?;
            let d = parse_duration(v).map_err(|e| ConfigError::Invalid(format!("{what}: {e}")))?;
            collector_intervals.insert(name, d);
        }
        let mut collectors = defaults.collectors.clone();
        for (name, on) in &file.collectors {
            let name = registered_collector(&format!("collectors.{name}"), name)?;
            collectors.insert(name, *on);
        }
        collectors.extend(&self.collectors.given);
        validate_targets(&file.targets)?;
        if let Some(lt) = &file.latency_targets {
            for t in lt {
                let method_ok = http::Method::from_bytes(t.method.as_bytes()).is_ok()
                    && t.method.chars().all(|c| c.is_ascii_uppercase());
                if !method_ok || !t.route.starts_with('/') {
                    return Err(ConfigError::Invalid(format!(
                        "latency target: '{} {}' needs an upper-case HTTP method and a route starting with /",
                        t.method, t.route
                    )));
                }
                if !(t.p95_seconds.is_finite() && t.p95_seconds > 0.0) {
                    return Err(ConfigError::Invalid(format!(
                        "latency target for {} {} must be a positive number of seconds",
                        t.method, t.route
                    )));
                }
            }
        }
        if let Some(b) = &file.latency_buckets
            && (b.is_empty()
                || b.iter().any(|v| !v.is_finite() || *v <= 0.0)
                || b.windows(2).any(|w| w[0] >= w[1]))
        {
            return Err(ConfigError::Invalid(
                "latency_buckets must be positive, finite and strictly increasing".to_owned(),
            ));
        }
        // Secrets are validated here rather than by clap, whose error
        // message would repeat the raw value.
        let url = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| {
                    DatabaseUrl::parse_arg(s)
                        .map_err(|e| ConfigError::Invalid(format!("{flag}: {e}")))
                })
                .transpose()
        };
        let secret = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|s| {
                    Secret::parse_arg(s).map_err(|e| ConfigError::Invalid(format!("{flag}: {e}")))
                })
                .transpose()
        };
        let metrics_basic_auth = self
            .metrics_basic_auth
            .as_deref()
            .map(|s| {
                BasicCredentials::parse_arg(s)
                    .map_err(|e| ConfigError::Invalid(format!("--metrics-basic-auth: {e}")))
            })
            .transpose()?;
        Ok(Settings {
            database_url: url("--database-url", &self.database_url)?,
            database_read_url: url("--database-read-url", &self.database_read_url)?,
            listen: self.listen.unwrap_or(defaults.listen),
            collect_interval,
            query_timeout,
            max_staleness,
            reconcile_interval,
            windows,
            ingest_token: secret("--ingest-token", &self.ingest_token)?,
            metrics_token: secret("--metrics-token", &self.metrics_token)?,
            metrics_basic_auth,
            company_top_n,
            targets: file.targets,
            latency_targets: file.latency_targets,
            latency_buckets: file.latency_buckets,
            collector_intervals,
            collectors,
            create_source_indexes: self.create_source_indexes,
            max_body_bytes: self.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_creation_duration: self
                .max_creation_duration
                .unwrap_or(defaults.max_creation_duration),
            request_log: self.request_log,
            request_log_retention: self
                .request_log_retention
                .unwrap_or(defaults.request_log_retention),
            request_log_user_header: self
                .request_log_user_header
                .clone()
                .unwrap_or(defaults.request_log_user_header),
            http: self.http_options(&defaults.http),
        })
    }

    /// The HTTP server's options: the flags over `defaults`.
    fn http_options(&self, defaults: &ServeOptions) -> ServeOptions {
        let defaults = defaults.clone();
        ServeOptions {
            header_read_timeout: self
                .http_header_read_timeout
                .unwrap_or(defaults.header_read_timeout),
            body_read_timeout: self
                .http_body_read_timeout
                .unwrap_or(defaults.body_read_timeout),
            request_timeout: self
                .http_request_timeout
                .unwrap_or(defaults.request_timeout),
            max_connections: self
                .http_max_connections
                .map(|n| n as usize)
                .or(defaults.max_connections),
            ..defaults
        }
    }
}

/// The registered name of collector `name`, or an error naming the known
/// ones (`what` says where the name was found).
fn registered_collector(what: &str, name: &str) -> Result<&'static str, ConfigError> {
    registry::find(name).map(|r| r.name).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "{what}: unknown collector '{name}'; known collectors: {}",
            registry::known_names()
        ))
    })
}

/// Default of `--max-staleness`: three collection intervals.
pub fn default_max_staleness(collect_interval: Duration) -> Duration {
    collect_interval.saturating_mul(3)
}

fn validate_targets(t: &Targets) -> Result<(), ConfigError> {
    let ratios = [
        ("draft_completion_ratio", t.draft_completion_ratio),
        (
            "draft_completion_alert_floor_ratio",
            t.draft_completion_alert_floor_ratio,
        ),
        ("mobile_views_ratio", t.mobile_views_ratio),
    ];
    for (name, v) in ratios {
        if !(0.0..=1.0).contains(&v) {
            return Err(ConfigError::Invalid(format!(
                "targets.{name} must be between 0 and 1"
            )));
        }
    }
    let positives = [
        ("creation_time_p80_seconds", t.creation_time_p80_seconds),
        ("engagement_ratio", t.engagement_ratio),
        (
            "time_to_next_action_avg_seconds",
            t.time_to_next_action_avg_seconds,
        ),
    ];
    for (name, v) in positives {
        if !(v.is_finite() && v >= 0.0) {
            return Err(ConfigError::Invalid(format!(
                "targets.{name} must be a non-negative number"
            )));
        }
    }
    Ok(())
}

impl Settings {
    /// Settings with every default and the given database: the one place
    /// the built-in defaults are set. [`CommonArgs::resolve`] starts from
    /// these, so the command line, the environment, the file and library
    /// users agree.
    pub fn for_database(url: Option<DatabaseUrl>) -> Self {
        let collect_interval = Duration::from_secs(60);
        Self {
            database_url: url,
            database_read_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            collect_interval,
            query_timeout: Duration::from_secs(10),
            max_staleness: default_max_staleness(collect_interval),
            reconcile_interval: DEFAULT_RECONCILE_INTERVAL,
            windows: Windows::default(),
            ingest_token: None,
            metrics_token: None,
            metrics_basic_auth: None,
            company_top_n: 20,
            targets: Targets::default(),
            latency_targets: None,
            latency_buckets: None,
            collector_intervals: BTreeMap::new(),
            collectors: COLLECTORS
                .iter()
                .map(|r| (r.name, r.enabled_by_default))
                .collect(),
            create_source_indexes: false,
            max_body_bytes: 16 * 1024,
            max_creation_duration: Duration::from_secs(86_400),
            request_log: false,
            request_log_retention: Duration::from_secs(30 * 86_400),
            request_log_user_header: "x-user-id".to_owned(),
            http: ServeOptions::default(),
        }
    }

    /// Whether the collector called `name` runs: as configured, else as
    /// registered (a collector the registry does not know runs).
    pub fn collector_enabled(&self, name: &str) -> bool {
        match self.collectors.get(name) {
            Some(on) => *on,
            None => registry::find(name).is_none_or(|r| r.enabled_by_default),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_in_order_and_reject_bad_lists() {
        let w = parse_windows("1d, 7d,30d").unwrap();
        let labels: Vec<_> = w.0.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels, ["1d", "7d", "30d"]);
        assert_eq!(w.0[1].duration, Duration::from_secs(7 * 86_400));
        assert_eq!(w.longest(), Duration::from_secs(30 * 86_400));
        assert!(parse_windows("1d,,7d").is_err());
        assert!(parse_windows("1d,24h").is_err(), "same length twice");
        assert!(parse_windows("0s").is_err());
        assert!(parse_windows("soon").is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(
            redact_url("postgres://db/x?user=u&password=s3cret&sslmode=require"),
            "postgres://db/x?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://u@db/x"), "postgres://u@db/x");
        assert_eq!(
            redact_url("postgresql://u:p%40ss@db/x?PassWord=s3cret"),
            "postgresql://u:***@db/x?PassWord=***"
        );
        assert_eq!(redact_url("db.example.com/x"), "db.example.com/x");
        assert_eq!(redact_url("u:s3cret@[db/x"), "***");
        let url = DatabaseUrl::parse_arg("postgres://u:s3cret@db/x").unwrap();
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        let err = DatabaseUrl::parse_arg("mysql://u:s3cret@db/x").unwrap_err();
        assert!(!err.contains("s3cret"));
    }

    #[test]
    fn reconcile_interval_from_flag_toml_and_default() {
        use clap::Parser;
        let resolve = |args: &[&str]| {
            let mut all = vec!["okr-exporter", "check"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| c.common.resolve().map(|s| s.reconcile_interval))
        };
        assert_eq!(
            resolve(&[]).unwrap().unwrap(),
            Settings::for_database(None).reconcile_interval
        );
        assert_eq!(DEFAULT_RECONCILE_INTERVAL, Duration::from_secs(300));
        assert_eq!(
            resolve(&["--reconcile-interval", "0"]).unwrap().unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            resolve(&["--reconcile-interval", "90s"]).unwrap().unwrap(),
            Duration::from_secs(90)
        );
        assert!(resolve(&["--reconcile-interval", "soon"]).is_err());
        let path = std::env::temp_dir().join(format!(
            "okr-exporter-reconcile-{}.toml",
            std::process::id()
        ));
        std::fs::write(&path, "reconcile_interval = \"0s\"\n").unwrap();
        let file = path.to_string_lossy().into_owned();
        assert_eq!(
            resolve(&["--config", &file]).unwrap().unwrap(),
            Duration::ZERO
        );
        // The flag wins over the file.
        assert_eq!(
            resolve(&["--config", &file, "--reconcile-interval", "1m"])
                .unwrap()
                .unwrap(),
            Duration::from_secs(60)
        );
        std::fs::write(&path, "reconcile_interval = \"later\"\n").unwrap();
        assert!(resolve(&["--config", &file]).unwrap().is_err());
        let _ = std::fs::remove_file(&path);
    }

    /// Runs only as the child process of [`resolve_in_child`]: resolves the
    /// arguments it is given and prints the settings.
    #[test]
    fn resolve_in_child_process() {
        use clap::Parser;
        let Ok(args) = std::env::var(CHILD_ARGS) else {
            return;
        };
        let mut all = vec!["okr-exporter", "check"];
        all.extend(args.split('\x1f').filter(|a| !a.is_empty()));
        let settings = Cli::try_parse_from(all).unwrap().common.resolve().unwrap();
        println!("<<<{settings:#?}>>>");
    }

    /// Set in the child process of [`resolve_in_child`].
    const CHILD_ARGS: &str = "OKR_EXPORTER_TEST_CHILD_ARGS";

    /// The settings (`Debug`, every field) that `args` and `env` resolve to
    /// in a process whose environment holds none of the exporter's variables.
    fn resolve_in_child(args: &[&str], env: &[(&str, &str)]) -> String {
        use clap::CommandFactory;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args([
            "--exact",
            "config::tests::resolve_in_child_process",
            "--nocapture",
            "--test-threads=1",
        ]);
        for arg in Cli::command().get_arguments() {
            if let Some(var) = arg.get_env() {
                child.env_remove(var);
            }
        }
        child
            .env(CHILD_ARGS, args.join("\x1f"))
            .envs(env.iter().copied());
        let out = child.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let settings = stdout
            .split_once("<<<")
            .and_then(|(_, rest)| rest.split_once(">>>"))
            .map(|(settings, _)| settings.to_owned());
        settings.unwrap_or_else(|| {
            panic!(
                "child printed no settings:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    #[test]
    fn defaults_agree_from_flags_environment_file_and_constructor() {
        use clap::CommandFactory;
        // The documented defaults, written out by hand.
        let defaults = [
            ("OKR_LISTEN", "127.0.0.1:9464"),
            ("OKR_COLLECT_INTERVAL", "60s"),
            ("OKR_QUERY_TIMEOUT", "10s"),
            ("OKR_MAX_STALENESS", "3m"),
            ("OKR_RECONCILE_INTERVAL", "5m"),
            ("OKR_WINDOWS", "1d,7d,30d"),
            ("OKR_COMPANY_TOP_N", "20"),
            ("OKR_MAX_BODY_BYTES", "16384"),
            ("OKR_MAX_CREATION_DURATION", "1d"),
            ("OKR_REQUEST_LOG_RETENTION", "30d"),
            ("OKR_REQUEST_LOG_USER_HEADER", "x-user-id"),
            ("OKR_HTTP_HEADER_READ_TIMEOUT", "10s"),
            ("OKR_HTTP_BODY_READ_TIMEOUT", "10s"),
            ("OKR_HTTP_REQUEST_TIMEOUT", "30s"),
        ];
        let command = Cli::command();
        let flags: Vec<String> = defaults
            .iter()
            .flat_map(|(var, value)| {
                let arg = command
                    .get_arguments()
                    .find(|a| a.get_env().is_some_and(|e| e == *var))
                    .unwrap_or_else(|| panic!("no flag reads {var}"));
                [
                    format!("--{}", arg.get_long().unwrap()),
                    (*value).to_owned(),
                ]
            })
            .collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let path =
            std::env::temp_dir().join(format!("okr-exporter-defaults-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            r#"
windows = ["1d", "7d", "30d"]
collect_interval = "60s"
query_timeout = "10s"
max_staleness = "180s"
reconcile_interval = "5m"
company_top_n = 20

[targets]
creation_time_p80_seconds = 600
draft_completion_ratio = 0.8
draft_completion_alert_floor_ratio = 0.75
engagement_ratio = 0.4
mobile_views_ratio = 0.4
time_to_next_action_avg_seconds = 604800

[collectors]
creation_time = true
drafts = true
engagement = true
next_action = true
mobile = true
adoption = true
inventory = true
rollups = true
"#,
        )
        .unwrap();
        let file = path.to_string_lossy().into_owned();

        let constructor = format!("{:#?}", Settings::for_database(None));
        let nothing = resolve_in_child(&[], &[]);
        let from_env = resolve_in_child(&[], &defaults);
        let from_flags = resolve_in_child(&flags, &[]);
        let from_file = resolve_in_child(&["--config", &file], &[]);
        let _ = std::fs::remove_file(&path);
        for (source, resolved) in [
            ("no flags", nothing),
            ("environment", from_env),
            ("flags", from_flags),
            ("TOML file", from_file),
        ] {
            for (want, got) in constructor.lines().zip(resolved.lines()) {
                assert_eq!(got, want, "{source} disagrees with Settings::for_database");
            }
            assert_eq!(resolved.lines().count(), constructor.lines().count());
        }
        // The staleness limit follows the interval unless it is given.
        let settings = Cli::try_parse_from(["okr-exporter", "check", "--collect-interval", "10s"])
            .unwrap()
            .common
            .resolve()
            .unwrap();
        assert_eq!(settings.max_staleness, Duration::from_secs(30));
    }

    fn write_config(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("okr-exporter-{name}-{}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn resolve_args(args: &[&str]) -> Result<Settings, String> {
        let mut all = vec!["okr-exporter", "check"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .common
            .resolve()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn collectors_turn_off_and_on_by_flag_and_file() {
        let every_one_on = |s: &Settings, but: &[&str]| {
            for r in &COLLECTORS {
                assert_eq!(
                    s.collector_enabled(r.name),
                    !but.contains(&r.name),
                    "{}",
                    r.name
                );
            }
        };
        every_one_on(&resolve_args(&[]).unwrap(), &[]);
        every_one_on(&Settings::for_database(None), &[]);
        let s = resolve_args(&["--no-collector.engagement", "--no-collector.rollups"]).unwrap();
        every_one_on(&s, &["engagement", "rollups"]);
        // The last of a collector's two flags wins.
        let s = resolve_args(&["--no-collector.mobile", "--collector.mobile"]).unwrap();
        every_one_on(&s, &[]);
        let s = resolve_args(&["--collector.mobile", "--no-collector.mobile"]).unwrap();
        every_one_on(&s, &["mobile"]);
        assert!(resolve_args(&["--no-collector.nope"]).is_err());

        let path = write_config(
            "collectors",
            "[collectors]
drafts = false
adoption = true
",
        );
        let file = path.to_string_lossy().into_owned();
        every_one_on(&resolve_args(&["--config", &file]).unwrap(), &["drafts"]);
        // A flag wins over the file.
        let s = resolve_args(&["--config", &file, "--collector.drafts"]).unwrap();
        every_one_on(&s, &[]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unknown_collector_names_in_the_file_are_refused() {
        for (name, text) in [
            (
                "unknown-interval",
                "[collector_intervals]
enagement = \"5m\"
",
            ),
            (
                "unknown-toggle",
                "[collectors]
enagement = false
",
            ),
        ] {
            let path = write_config(name, text);
            let err = resolve_args(&["--config", &path.to_string_lossy()]).unwrap_err();
            let _ = std::fs::remove_file(&path);
            assert!(err.contains("unknown collector 'enagement'"), "{err}");
            for r in &COLLECTORS {
                assert!(err.contains(r.name), "{err} does not name {}", r.name);
            }
        }
        let path = write_config(
            "known-interval",
            "[collector_intervals]
adoption = \"5m\"
",
        );
        let s = resolve_args(&["--config", &path.to_string_lossy()]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(
            s.collector_intervals.get("adoption"),
            Some(&Duration::from_secs(300))
        );
    }

    #[test]
    fn help_lists_every_collector_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for r in &COLLECTORS {
            assert!(help.contains(&format!("--collector.{}", r.name)), "{help}");
            assert!(
                help.contains(&format!("--no-collector.{}", r.name)),
                "{help}"
            );
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::parse_arg("tok-123").unwrap();
        assert!(!format!("{s:?}").contains("tok-123"));
        let b = BasicCredentials::parse_arg("ops:pw").unwrap();
        assert!(!format!("{b:?}").contains("pw"));
        assert!(BasicCredentials::parse_arg("nopassword").is_err());
    }
}
