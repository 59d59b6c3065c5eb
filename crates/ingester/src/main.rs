#![cfg_attr(not(test), warn(clippy::too_many_lines))]

use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgMatches, CommandFactory, FromArgMatches};
use resources_ingester::commands::{check, history, migrate};
use resources_ingester::config::{CheckOutput, Command, Config, HistoryAction};
use resources_ingester::pipeline::service;
use resources_ingester::storage;
use resources_ingester::telemetry::logging;
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

/// How long the exit waits for tasks still running after the service stopped (a leader that
/// lost its Lease returns without draining: its tasks and connections are dropped here).
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(1);

/// clap's own exit code for a bad setting.
const BAD_SETTING: u8 = 2;

fn main() -> ExitCode {
    let matches = Config::command().get_matches();
    if let Some(("migrate", sub)) = matches.subcommand() {
        if sub.get_flag("print_sql") {
            print!("{}", migrate::print_sql());
            return ExitCode::SUCCESS;
        }
    }
    let config = match config(&matches) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    init_logging(&config);
    let Some(runtime) = runtime(config.runtime_threads) else {
        return ExitCode::FAILURE;
    };
    match &config.command {
        Some(Command::Migrate { .. }) => run_migrate(runtime, &config),
        Some(Command::History {
            action: Some(HistoryAction::Maintain),
            ..
        }) => run_history_maintain(runtime, &config),
        Some(Command::History {
            action: None,
            global_uid,
            kind,
            namespace,
            name,
        }) => {
            let target = history::Target::from_args(
                global_uid.as_deref(),
                kind.as_deref(),
                namespace.as_deref(),
                name.as_deref(),
            );
            run_history_show(runtime, &config, target)
        }
        Some(Command::Check { output }) => run_check(runtime, &config, *output),
        None => run_service(runtime, config),
    }
}

/// The configuration of this command line, or the exit code of a bad one (after saying why).
fn config(matches: &ArgMatches) -> Result<Config, ExitCode> {
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
            return Err(ExitCode::from(BAD_SETTING));
        }
    }
    let config = match Config::from_arg_matches(matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Err(e) = config.validate() {
        eprintln!("error: {e}");
        return Err(ExitCode::from(BAD_SETTING));
    }
    Ok(config)
}

/// The async runtime, or `None` (said why) when it cannot start.
fn runtime(threads: u16) -> Option<Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.into())
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("resources-ingester: cannot start the async runtime: {e}");
            None
        }
    }
}

/// A command whose standard output is its result (`check`, `history`) logs to standard
/// error (see `logging::init_for_command`).
fn init_logging(config: &Config) {
    if matches!(
        config.command,
        Some(Command::Check { .. } | Command::History { .. })
    ) {
        logging::init_for_command(config.log_format);
    } else {
        logging::init(config.log_format);
    }
}

/// `resources-ingester`: the service, until it stops.
fn run_service(runtime: Runtime, config: Config) -> ExitCode {
    let outcome = runtime.block_on(service::run(config, CancellationToken::new()));
    exit(runtime, outcome)
}

/// `resources-ingester migrate`.
fn run_migrate(runtime: Runtime, config: &Config) -> ExitCode {
    let outcome = runtime
        .block_on(migrate::run(config))
        .map(|applied| {
            println!("resources-ingester migrate: applied {applied:?}; schema complete");
        })
        .map_err(anyhow::Error::from);
    exit(runtime, outcome)
}

/// `resources-ingester history maintain`.
fn run_history_maintain(runtime: Runtime, config: &Config) -> ExitCode {
    let outcome = runtime
        .block_on(history::maintain(config))
        .map(|done| {
            println!(
                "resources-ingester history maintain: created {:?}; dropped {:?}; {} expired rows deleted from the default partition",
                done.created, done.dropped, done.expired_default_rows
            );
        })
        .map_err(anyhow::Error::from);
    exit(runtime, outcome)
}

/// `resources-ingester history <object>`: the object's history printed; an object named
/// wrongly is a bad setting.
fn run_history_show(
    runtime: Runtime,
    config: &Config,
    target: Result<history::Target, String>,
) -> ExitCode {
    match target {
        Ok(target) => {
            let outcome = runtime
                .block_on(history::show(config, &target))
                .map(|report| print!("{report}"))
                .map_err(anyhow::Error::from);
            exit(runtime, outcome)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(BAD_SETTING)
        }
    }
}

/// `resources-ingester check`: its report printed, its exit code the report's.
fn run_check(runtime: Runtime, config: &Config, output: CheckOutput) -> ExitCode {
    let report = runtime.block_on(check::run(config));
    match output {
        CheckOutput::Table => print!("{}", report.table()),
        CheckOutput::Json => print!("{}", report.json()),
    }
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    ExitCode::from(report.exit_code())
}

/// Stops the runtime and turns the command's outcome into the exit code (an error logged and
/// printed).
fn exit(runtime: Runtime, outcome: anyhow::Result<()>) -> ExitCode {
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause, a database error by its SQLSTATE and message.
            let e = storage::error_chain(e.as_ref());
            tracing::error!("{e}");
            eprintln!("resources-ingester: {e}");
            ExitCode::FAILURE
        }
    }
}
