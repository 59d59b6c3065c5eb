//! `kube-sim --reference-pods N --exit-after-load`: preloads the benchmark's pods, logs the load
//! figures (docs/kube-sim.md, "Scale: memory and load rate") and exits.

use std::process::Command;

/// The value of `key=` in a tracing log line (ANSI colours stripped).
fn field(line: &str, key: &str) -> Option<String> {
    let plain: String = line
        .split('\u{1b}')
        .map(|part| part.split_once('m').map_or(part, |(_, rest)| rest))
        .collect();
    let needle = format!("{key}=");
    let start = plain.find(&needle)? + needle.len();
    let value: String = plain[start..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Some(value.trim_matches('"').to_owned())
}

#[test]
fn reference_pods_are_preloaded_and_measured_then_the_server_exits() {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args([
            "--reference-pods",
            "1500",
            "--reference-size",
            "small",
            "--exit-after-load",
        ])
        .env("RUST_LOG", "info")
        .output()
        .expect("run kube-sim");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let line = stderr
        .lines()
        .find(|l| l.contains("reference pods preloaded"))
        .unwrap_or_else(|| panic!("no figures logged: {stderr}"));
    // 1,500 pods over two namespaces of 1,000.
    assert_eq!(field(line, "objects").as_deref(), Some("1502"), "{line}");
    let number = |key| -> f64 {
        field(line, key)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} in {line}"))
    };
    // The small pods are a few KiB each as served.
    assert!((1.5e6..1.5e7).contains(&number("json_bytes")), "{line}");
    assert!(number("objects_per_second") > 0.0, "{line}");
    assert!(number("peak_rss_bytes") >= number("rss_bytes"), "{line}");
    assert!(number("peak_rss_bytes") > 0.0, "{line}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "served instead of exiting"
    );
}

#[test]
fn an_unknown_reference_size_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_kube-sim"))
        .args(["--reference-pods", "1", "--reference-size", "huge"])
        .output()
        .expect("run kube-sim");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown size"));
}
