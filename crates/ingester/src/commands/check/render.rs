//! Rendering of the report: a table for people, JSON for scripts.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Check, Report, Status};

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'a> {
    would_run: bool,
    failures: usize,
    warnings: usize,
    checks: &'a [Check],
}

impl Report {
    /// One line per check: name, status, detail (columns aligned), then the verdict.
    pub fn table(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("CHECK".len());
        let mut out = String::new();
        let _ = writeln!(out, "{:width$}  {:6} DETAIL", "CHECK", "STATUS");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "{:width$}  {:6} {}",
                c.name,
                c.status.as_str(),
                c.detail
            );
        }
        let _ = writeln!(
            out,
            "resources-ingester would {}: {} failed, {} warnings, {} checks",
            if self.would_run() { "run" } else { "NOT run" },
            self.count(Status::Fail),
            self.count(Status::Warn),
            self.checks.len()
        );
        out
    }

    /// `{"wouldRun": bool, "failures": n, "warnings": n, "checks": [{name, status, detail}]}`.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(&JsonReport {
            would_run: self.would_run(),
            failures: self.count(Status::Fail),
            warnings: self.count(Status::Warn),
            checks: &self.checks,
        })
        .unwrap_or_default()
            + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::super::line;
    use super::*;

    #[test]
    fn the_verdict_is_run_unless_a_line_fails() {
        let mut r = Report::default();
        r.push(line("a", Status::Ok, "x"));
        r.push(line("b", Status::Warn, "y"));
        assert!(r.would_run());
        assert_eq!(r.exit_code(), 0);
        r.push(line("c", Status::Fail, "z"));
        assert!(!r.would_run());
        assert_eq!(r.exit_code(), 1);
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "CHECK  STATUS DETAIL");
        assert_eq!(lines[1], "a      OK     x");
        assert_eq!(lines[3], "c      FAIL   z");
        assert!(lines[4].contains("would NOT run: 1 failed, 1 warnings"));
        let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(json["wouldRun"], false);
        assert_eq!(json["checks"][2]["status"], "FAIL");
        assert_eq!(json["checks"][2]["name"], "c");
    }

    #[test]
    fn the_password_never_reaches_the_report() {
        let mut r = Report::default();
        r.push(line("database", Status::Fail, "password s3cret refused"));
        let r = r.redacted("s3cret");
        assert_eq!(r.checks[0].detail, "password *** refused");
        assert!(!r.table().contains("s3cret") && !r.json().contains("s3cret"));
    }
}
