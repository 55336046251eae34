//! The `okr-exporter` binary: parses the command line and wires components.

#![deny(unsafe_code)]

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use okr_exporter::config::{Cli, Command, LogFormat};
use okr_exporter::{backfill, check, db, demo, server};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.common.log_format, &cli.common.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.common.resolve()?;
    match cli.command {
        Command::Serve(_) => {
            // Configuration errors (no database) before the port is taken.
            let listen = settings.listen;
            let exporter = server::Exporter::new(settings)?;
            let listener = server::bind(listen).await?;
            exporter.run(listener, server::shutdown_signal()).await?;
        }
        Command::Migrate(_) => {
            let url = settings
                .database_url
                .as_ref()
                .context("no database configured: pass --database-url or set DATABASE_URL")?;
            let pool = db::lazy_pool(url, 2)?;
            db::migrate(&pool).await?;
            if settings.create_source_indexes {
                db::create_source_indexes(&pool).await?;
            }
            println!("migrations applied to {url}");
        }
        Command::Check => {
            let url = settings
                .database_url
                .as_ref()
                .context("no database configured: pass --database-url or set DATABASE_URL")?;
            let pool = db::lazy_pool(url, 2)?;
            println!("checking {url}");
            match check::run(&pool).await {
                Ok(report) => {
                    print!("{report}");
                    if report.problems() > 0 {
                        return Ok(ExitCode::FAILURE);
                    }
                }
                Err(e) => {
                    println!("PROBLEM  {e}");
                    println!("result: 1 problem(s)");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Command::Demo(args) => demo::run(settings, args).await?,
        Command::Backfill(args) => {
            let now = chrono::Utc::now();
            let options = backfill::BackfillOptions {
                from: args.from.resolve(now)?,
                until: args.until.resolve(now)?,
                step: args.step,
                labels: args.labels,
            };
            let summary = backfill::run(&settings, &options, args.output.clone()).await?;
            if let Some(path) = &args.output {
                eprintln!(
                    "wrote {} samples of {} series at {} instants to {}",
                    summary.samples,
                    summary.series,
                    summary.steps,
                    path.display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
