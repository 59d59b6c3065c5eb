#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};
use resources_ingester::commands::{check, history, migrate};
use resources_ingester::config::{CheckOutput, Command, Config, HistoryAction};
use resources_ingester::pipeline::service;
use resources_ingester::telemetry::logging;
use tokio_util::sync::CancellationToken;

/// How long the exit waits for tasks still running after the service stopped (a leader that
/// lost its Lease returns without draining: its tasks and connections are dropped here).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let matches = Config::command().get_matches();
    if let Some(("migrate", sub)) = matches.subcommand() {
        if sub.get_flag("print_sql") {
            print!("{}", migrate::print_sql());
            return ExitCode::SUCCESS;
        }
    }
    // Subcommands lift clap's required arguments (`migrate --print-sql` needs none), so the
    // database settings the others need are checked here, by their variable names.
    if let Some((name, _)) = matches.subcommand() {
        let missing: Vec<&str> = [("db_user", "DB_USER"), ("db_name", "DB_NAME")]
            .into_iter()
            .filter(|(id, _)| matches!(matches.try_get_one::<String>(id), Ok(None) | Err(_)))
            .map(|(_, var)| var)
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "error: `resources-ingester {name}` needs the database settings: {} not set (environment variable, or --db-user / --db-name)",
                missing.join(" and ")
            );
            return ExitCode::from(2);
        }
    }
    let config = match Config::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        // clap's own exit code for a bad setting.
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if matches!(
        config.command,
        Some(Command::Check { .. } | Command::History { .. })
    ) {
        logging::init_for_command(config.log_format);
    } else {
        logging::init(config.log_format);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("resources-ingester: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match config.command {
        Some(Command::Migrate { .. }) => runtime
            .block_on(migrate::run(&config))
            .map(|applied| {
                println!("resources-ingester migrate: applied {applied:?}; schema complete");
            })
            .map_err(anyhow::Error::from),
        Some(Command::History {
            action: Some(HistoryAction::Maintain),
            ..
        }) => runtime
            .block_on(history::maintain(&config))
            .map(|done| {
                println!(
                    "resources-ingester history maintain: created {:?}; dropped {:?}; {} expired rows deleted from the default partition",
                    done.created, done.dropped, done.expired_default_rows
                );
            })
            .map_err(anyhow::Error::from),
        Some(Command::History {
            action: None,
            ref global_uid,
            ref kind,
            ref namespace,
            ref name,
        }) => match history::Target::from_args(
            global_uid.as_deref(),
            kind.as_deref(),
            namespace.as_deref(),
            name.as_deref(),
        ) {
            Ok(target) => runtime
                .block_on(history::show(&config, &target))
                .map(|report| print!("{report}"))
                .map_err(anyhow::Error::from),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        Some(Command::Check { output }) => {
            let report = runtime.block_on(check::run(&config));
            match output {
                CheckOutput::Table => print!("{}", report.table()),
                CheckOutput::Json => print!("{}", report.json()),
            }
            runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
            return ExitCode::from(report.exit_code());
        }
        None => runtime.block_on(service::run(config, CancellationToken::new())),
    };
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("resources-ingester: {e:#}");
            ExitCode::FAILURE
        }
    }
}
