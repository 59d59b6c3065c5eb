//! The values of single settings: their types (a password that never shows, the namespaces)
//! and the parsers that check each one's bounds, so a bad value stops start-up naming its
//! variable.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A secret string whose `Debug`/`Display` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl FromStr for Password {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Password(s.to_owned()))
    }
}

/// Namespaces to watch; empty = all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    pub fn is_all(&self) -> bool {
        self.0.is_empty()
    }
}

pub(super) const fn millis(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) const fn hours(n: u64) -> Duration {
    Duration::from_secs(n * 3600)
}

/// A human duration (`250ms`, `5s`, `2m`) within `[min, max]`.
pub(super) fn duration_between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?}: {e}"))?;
        if d < min || d > max {
            return Err(format!(
                "{s:?}: must be between {} and {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(d)
    }
}

/// A duration of whole seconds within `[min, max]` seconds: the Lease stores
/// `leaseDurationSeconds` as an integer, and every replica must agree on the value it holds.
pub(super) fn whole_seconds_between(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = duration_between(secs(min), secs(max))(s)?;
        if d.subsec_nanos() != 0 {
            return Err(format!(
                "{s:?}: must be a whole number of seconds (the Lease stores leaseDurationSeconds)"
            ));
        }
        Ok(d)
    }
}

/// A duration of whole days (`7d`, `30days`, `1w`) within `[min, max]` days: history
/// partitions are days, so retention is counted in them.
pub(super) fn whole_days_between(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| {
        let d = duration_between(hours(24 * min), hours(24 * max))(s)?;
        if d.as_secs() % (24 * 3600) != 0 || d.subsec_nanos() != 0 {
            return Err(format!("{s:?}: must be a whole number of days (e.g. 7d)"));
        }
        Ok(d)
    }
}

/// A size (see [`parse_bytes`]) within `[min, max]` bytes.
pub(super) fn bytes_between(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n = parse_bytes(s)?;
        if n < min || n > max {
            return Err(format!(
                "{s:?}: must be between {} and {}",
                show_bytes(min),
                show_bytes(max)
            ));
        }
        Ok(n)
    }
}

fn show_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// `8MiB`, `512KiB`, `1GiB` or a plain number of bytes.
pub(super) fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{s:?}: expected a size like 8MiB, 512KiB or 1048576"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "k" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(factor)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?}: must be between 1 byte and the address space"))
}

pub(super) fn parse_cluster_id(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 253 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("expected a non-empty identity without whitespace, at most 253 characters (e.g. the uid of namespace kube-system)".into());
    }
    Ok(s.to_owned())
}

pub(super) fn parse_instance_name(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.is_empty() || s.len() > 253 || s.chars().any(char::is_whitespace) {
        return Err("expected a non-empty name without whitespace, at most 253 characters".into());
    }
    Ok(s.to_owned())
}

pub(super) fn parse_namespaces(s: &str) -> Result<Namespaces, String> {
    let mut out: Vec<String> = Vec::new();
    for ns in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let valid = ns.len() <= 63
            && ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !valid {
            return Err(format!("{ns:?} is not a valid namespace name"));
        }
        if !out.iter().any(|o| o == ns) {
            out.push(ns.to_owned());
        }
    }
    Ok(Namespaces(out))
}

/// Most hosts `DB_HOST` may list: each is tried in turn at every new connection, so a long
/// list is a mistake (a pasted inventory), not a topology.
pub const MAX_DB_HOSTS: usize = 16;

/// `DB_HOST`: one host, or several separated by commas (libpq's convention), tried in order;
/// with `target_session_attrs=read-write` the first that accepts writes is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbHosts(pub Vec<String>);

impl fmt::Display for DbHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

/// `DB_PORT`: one port for every host, or one per host in `DB_HOST`'s order (libpq's
/// convention; the count is checked against the hosts by `Config::validate`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbPorts(pub Vec<u16>);

impl DbPorts {
    /// The port of the `i`-th host.
    pub fn of_host(&self, i: usize) -> u16 {
        self.0
            .get(i)
            .or_else(|| self.0.first())
            .copied()
            .unwrap_or(5432)
    }
}

/// The pieces of a comma-separated list: none empty, at most [`MAX_DB_HOSTS`].
fn list_pieces(s: &str, what: &str) -> Result<Vec<String>, String> {
    let pieces: Vec<String> = s.split(',').map(|p| p.trim().to_owned()).collect();
    if let Some(i) = pieces.iter().position(String::is_empty) {
        return Err(format!("{what} {} of {:?} is empty", i + 1, s));
    }
    if pieces.len() > MAX_DB_HOSTS {
        return Err(format!(
            "{} {what}s listed; at most {MAX_DB_HOSTS}",
            pieces.len()
        ));
    }
    Ok(pieces)
}

pub(super) fn parse_db_hosts(s: &str) -> Result<DbHosts, String> {
    let hosts = list_pieces(s, "host")?;
    if let Some(h) = hosts.iter().find(|h| h.contains(char::is_whitespace)) {
        return Err(format!("host {h:?} contains a space"));
    }
    Ok(DbHosts(hosts))
}

pub(super) fn parse_db_ports(s: &str) -> Result<DbPorts, String> {
    let ports = list_pieces(s, "port")?
        .iter()
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("port {p:?} is not a number from 1 to 65535")),
        })
        .collect::<Result<Vec<u16>, String>>()?;
    Ok(DbPorts(ports))
}
