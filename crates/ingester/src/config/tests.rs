use super::values::parse_bytes;
use super::*;

fn parse(args: &[&str]) -> Result<Config, clap::Error> {
    let mut all = vec!["resources-ingester", "--db-user", "u", "--db-name", "d"];
    all.extend_from_slice(args);
    Config::try_parse_from(all)
}

#[test]
fn defaults_match_the_spec() {
    let c = parse(&[]).expect("defaults");
    assert_eq!(c.port, 8080);
    assert_eq!(c.metrics_port, 9090);
    assert_eq!(c.db_host, DbHosts(vec!["localhost".into()]));
    assert_eq!(c.db_port, DbPorts(vec![5432]));
    assert_eq!(c.db_ready_timeout, Duration::from_secs(120));
    assert!(c.namespaces.is_all());
    assert_eq!(c.db_params, DbParams::default());
    assert!(!c.leader_election);
}

#[test]
fn durations_are_human() {
    let c = parse(&["--db-ready-timeout", "90s", "--flush-interval", "250ms"]).expect("ok");
    assert_eq!(c.db_ready_timeout, Duration::from_secs(90));
    assert_eq!(c.flush_interval, Duration::from_millis(250));
    let c = parse(&["--db-ready-timeout", "1h"]).expect("ok");
    assert_eq!(c.db_ready_timeout, Duration::from_secs(3600));
}

#[test]
fn bad_values_name_the_variable() {
    let e = parse(&["--db-ready-timeout", "soon"])
        .expect_err("bad")
        .to_string();
    assert!(e.contains("DB_READY_TIMEOUT"), "{e}");
    let e = parse(&["--db-port", "70000"]).expect_err("bad").to_string();
    assert!(e.contains("DB_PORT"), "{e}");
    let e = parse(&["--db-params", "sslmode"])
        .expect_err("bad")
        .to_string();
    assert!(e.contains("DB_PARAMS"), "{e}");
    let e = parse(&["--namespaces", "Bad_NS"])
        .expect_err("bad")
        .to_string();
    assert!(e.contains("NAMESPACES"), "{e}");
}

#[test]
fn db_params_parse_known_keys() {
    let p: DbParams = "sslmode=require&connect_timeout=5&application_name=ing%20x"
        .parse()
        .expect("ok");
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.connect_timeout, Some(Duration::from_secs(5)));
    assert_eq!(p.application_name.as_deref(), Some("ing x"));
    let p: DbParams = "sslmode=verify-full&sslrootcert=/ca.crt"
        .parse()
        .expect("ok");
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca.crt")));
}

#[test]
fn db_params_errors_never_echo_a_value() {
    for bad in [
        "sslmode=require&password=hunter2",
        "password=hunter2",
        "sslmode=hunter2",
        "connect_timeout=hunter2",
        "target_session_attrs=hunter2",
        "sslmode=require&hunter2",
        "secret=hunter2",
    ] {
        let e = bad.parse::<DbParams>().expect_err(bad);
        assert!(!e.contains("hunter2"), "{bad}: {e}");
        // Through clap (what an operator sees): names the variable, never the value.
        let e = parse(&["--db-params", bad]).expect_err(bad).to_string();
        assert!(!e.contains("hunter2"), "{bad}: {e}");
        assert!(e.contains("DB_PARAMS"), "{bad}: {e}");
    }
    let e = "sslmode=require&password=hunter2"
        .parse::<DbParams>()
        .expect_err("password");
    assert!(e.contains("password") && e.contains("DB_PASS"), "{e}");
    let e = "connect_timeout=hunter2"
        .parse::<DbParams>()
        .expect_err("x");
    assert!(e.contains("connect_timeout"), "{e}");
    let e = "sslmode=require&hunter2"
        .parse::<DbParams>()
        .expect_err("x");
    assert!(e.contains("parameter 2"), "{e}");
}

#[test]
fn db_params_reject_malformed_input() {
    assert!("sslmode=sometimes".parse::<DbParams>().is_err());
    assert!("connect_timeout=soon".parse::<DbParams>().is_err());
    assert!("connect_timeout=0".parse::<DbParams>().is_err());
    assert!("keepalives_idle=0".parse::<DbParams>().is_err());
    assert!("connect_timeout=3601".parse::<DbParams>().is_err());
    assert!("bogus=1".parse::<DbParams>().is_err());
    assert!("sslmode=verify-full".parse::<DbParams>().is_err());
    assert!("novalue".parse::<DbParams>().is_err());
}

#[test]
fn sizes_take_binary_units() {
    assert_eq!(parse_bytes("8MiB"), Ok(8 << 20));
    assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
    assert_eq!(parse_bytes("4096"), Ok(4096));
    assert!(parse_bytes("0").is_err());
    assert!(parse_bytes("lots").is_err());
    assert!(parse_bytes("8XB").is_err());
    let e = parse(&["--queue-bytes", "big"])
        .expect_err("bad")
        .to_string();
    assert!(e.contains("QUEUE_BYTES"), "{e}");
    let c = parse(&[]).expect("defaults");
    assert_eq!((c.queue_bytes, c.batch_bytes), (8 << 20, 1 << 20));
}

#[test]
fn out_of_range_durations_and_sizes_name_the_variable() {
    let cases: &[(&str, &str, &str)] = &[
        ("--checkpoint-interval", "0s", "CHECKPOINT_INTERVAL"),
        ("--checkpoint-interval", "2h", "CHECKPOINT_INTERVAL"),
        ("--status-interval", "0s", "STATUS_INTERVAL"),
        ("--flush-interval", "0ms", "FLUSH_INTERVAL"),
        ("--shutdown-timeout", "0s", "SHUTDOWN_TIMEOUT"),
        ("--db-ready-timeout", "0s", "DB_READY_TIMEOUT"),
        ("--lease-duration", "0s", "LEASE_DURATION"),
        ("--lease-duration", "1500ms", "LEASE_DURATION"),
        ("--lease-renew-deadline", "0s", "LEASE_RENEW_DEADLINE"),
        ("--lease-retry-period", "0s", "LEASE_RETRY_PERIOD"),
        ("--batch-size", "0", "BATCH_SIZE"),
        ("--workers", "0", "WORKERS"),
        ("--runtime-threads", "0", "RUNTIME_THREADS"),
        ("--runtime-threads", "257", "RUNTIME_THREADS"),
        ("--queue-capacity", "0", "QUEUE_CAPACITY"),
        ("--list-page-size", "0", "LIST_PAGE_SIZE"),
        ("--list-concurrency", "0", "LIST_CONCURRENCY"),
        ("--queue-bytes", "1KiB", "QUEUE_BYTES"),
        ("--batch-bytes", "100", "BATCH_BYTES"),
    ];
    for (flag, value, variable) in cases {
        let e = parse(&[flag, value])
            .expect_err(&format!("{flag} {value} must be refused"))
            .to_string();
        assert!(e.contains(variable), "{flag} {value}: {e}");
    }
}

#[test]
fn bounds_are_inclusive_and_the_defaults_are_inside_them() {
    let c = parse(&[
        "--flush-interval",
        "1h",
        "--checkpoint-interval",
        "100ms",
        "--queue-bytes",
        "64KiB",
    ])
    .expect("bounds are inclusive");
    assert_eq!(c.flush_interval, Duration::from_secs(3600));
    assert_eq!(c.queue_bytes, 64 << 10);
    parse(&[]).expect("defaults").validate().expect("defaults");
}

#[test]
fn lease_timings_must_nest() {
    let e = parse(&["--lease-duration", "10s", "--lease-renew-deadline", "10s"])
        .expect("each in range")
        .validate()
        .expect_err("renew deadline equal to the duration");
    assert!(
        e.contains("LEASE_RENEW_DEADLINE") && e.contains("LEASE_DURATION"),
        "{e}"
    );
    let e = parse(&["--lease-renew-deadline", "2s", "--lease-retry-period", "2s"])
        .expect("each in range")
        .validate()
        .expect_err("retry period equal to the deadline");
    assert!(
        e.contains("LEASE_RETRY_PERIOD") && e.contains("LEASE_RENEW_DEADLINE"),
        "{e}"
    );
    parse(&[
        "--lease-duration",
        "6s",
        "--lease-renew-deadline",
        "4s",
        "--lease-retry-period",
        "500ms",
    ])
    .expect("ok")
    .validate()
    .expect("nested");
}

#[test]
fn history_and_feed_settings() {
    let c = parse(&[]).expect("defaults");
    assert!(!c.history, "history is off by default");
    assert!(c.change_feed, "the change feed is on by default");
    assert_eq!(c.history_retention, Duration::from_secs(7 * 86_400));
    let c = parse(&["--history", "true", "--history-retention", "30d"]).expect("ok");
    assert!(c.history);
    assert_eq!(c.history_retention, Duration::from_secs(30 * 86_400));
    for bad in ["0d", "12h", "36h", "3651d", "soon"] {
        let e = parse(&["--history-retention", bad])
            .expect_err(bad)
            .to_string();
        assert!(e.contains("HISTORY_RETENTION"), "{bad}: {e}");
    }
    parse(&["--history-retention", "3650d"]).expect("upper bound inclusive");
    parse(&["--history-retention", "1d"]).expect("lower bound inclusive");
}

#[test]
fn history_subcommand_takes_a_uid_or_a_name_or_maintain() {
    let c = parse(&["history", "c:1234"]).expect("uid");
    assert!(
        matches!(c.command, Some(Command::History { global_uid: Some(ref u), action: None, .. }) if u == "c:1234")
    );
    let c = parse(&["history", "maintain"]).expect("maintain");
    assert!(matches!(
        c.command,
        Some(Command::History {
            action: Some(HistoryAction::Maintain),
            global_uid: None,
            ..
        })
    ));
    let c = parse(&[
        "history",
        "--kind",
        "Pod",
        "--namespace",
        "a",
        "--name",
        "web",
    ])
    .expect("by name");
    assert!(matches!(
        c.command,
        Some(Command::History {
            kind: Some(_),
            name: Some(_),
            ..
        })
    ));
}

#[test]
fn field_policy_settings_default_to_redacting_secrets_and_refuse_pruning_labels() {
    let c = parse(&[]).expect("defaults");
    assert!(c.redact_sensitive);
    assert_eq!(
        c.sensitive_kinds,
        crate::row::fields::SensitiveKinds::default()
    );
    assert!(c.prune_fields.is_empty());
    let c = parse(&[
        "--redact-sensitive",
        "false",
        "--prune-fields",
        "metadata.managedFields,apps/Deployment:spec.template.metadata.annotations",
    ])
    .expect("ok");
    assert!(!c.redact_sensitive);
    assert_eq!(c.prune_fields.all.len(), 1);
    assert_eq!(c.prune_fields.by_kind.len(), 1);
    let e = parse(&["--prune-fields", "metadata.managedFields,metadata.labels"])
        .expect_err("labels are never pruned")
        .to_string();
    assert!(
        e.contains("PRUNE_FIELDS") && e.contains("metadata.labels"),
        "{e}"
    );
    let e = parse(&["--sensitive-kinds", "Secret"])
        .expect_err("GROUP/Kind")
        .to_string();
    assert!(e.contains("SENSITIVE_KINDS"), "{e}");
    let e = parse(&["--redact-sensitive", "no"])
        .expect_err("bool")
        .to_string();
    assert!(e.contains("REDACT_SENSITIVE"), "{e}");
}

#[test]
fn namespaces_are_split_trimmed_and_deduplicated() {
    let c = parse(&["--namespaces", " a, b ,,a"]).expect("ok");
    assert_eq!(c.namespaces.0, vec!["a".to_owned(), "b".to_owned()]);
}

#[test]
fn the_password_never_shows_in_debug() {
    let c = parse(&["--db-pass", "hunter2"]).expect("ok");
    assert_eq!(c.db_pass.expose(), "hunter2");
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn cluster_id_and_the_check_command() {
    assert_eq!(
        parse(&["--cluster-id", " uid-1 "]).expect("ok").cluster_id,
        Some("uid-1".to_owned())
    );
    let e = parse(&["--cluster-id", "a b"]).unwrap_err().to_string();
    assert!(
        e.contains("--cluster-id") && e.contains("whitespace"),
        "{e}"
    );
    let c = parse(&["check", "--output", "json"]).expect("ok");
    assert_eq!(
        c.command,
        Some(Command::Check {
            output: CheckOutput::Json
        })
    );
    assert!(parse(&["check", "--output", "yaml"]).is_err());
}

#[test]
fn several_hosts_take_one_port_or_one_each() {
    let c = parse(&["--db-host", "a, b", "--db-port", "5433"]).expect("one port");
    assert_eq!(c.db_host, DbHosts(vec!["a".into(), "b".into()]));
    c.validate().expect("one port for all");
    assert_eq!(c.db_target(), "a:5433,b:5433/d");
    let c = parse(&["--db-host", "a,b", "--db-port", "5433,5434"]).expect("a port each");
    c.validate().expect("a port each");
    assert_eq!(c.db_target(), "a:5433,b:5434/d");
    let c = parse(&["--db-host", "a,b,c", "--db-port", "1,2"]).expect("parses");
    let e = c.validate().expect_err("2 ports for 3 hosts");
    assert!(e.contains("DB_PORT") && e.contains("DB_HOST"), "{e}");
    for (flag, bad) in [
        ("--db-host", "a,,b"),
        ("--db-host", "a b"),
        ("--db-port", "5432,"),
        ("--db-port", "0"),
        ("--db-port", "x"),
    ] {
        let e = parse(&[flag, bad]).expect_err(bad).to_string();
        let var = if flag == "--db-host" {
            "DB_HOST"
        } else {
            "DB_PORT"
        };
        assert!(e.contains(var), "{bad}: {e}");
    }
    let many = vec!["h"; MAX_DB_HOSTS + 1].join(",");
    let e = parse(&["--db-host", &many])
        .expect_err("too many")
        .to_string();
    assert!(e.contains("at most"), "{e}");
}
