//! `DB_PARAMS`: libpq-style connection parameters, parsed without ever showing a value.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// libpq's default: TLS when the server offers it, without verification.
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Parsed `DB_PARAMS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DbParams {
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    pub options: Option<String>,
    pub keepalives_idle: Option<Duration>,
    pub target_session_attrs_read_write: bool,
}

/// Parses `DB_PARAMS` without ever showing its value: a password put there by mistake would
/// otherwise be printed by clap's "invalid value '...'" message. The error names the
/// offending key (or the position of a piece that is not `key=value`) only.
#[derive(Clone, Copy, Debug)]
pub struct DbParamsParser;

impl clap::builder::TypedValueParser for DbParamsParser {
    type Value = DbParams;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DbParams, clap::Error> {
        let invalid = |why: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid DB_PARAMS (--db-params): {why}\n"),
            )
            .with_cmd(cmd)
        };
        let s = value
            .to_str()
            .ok_or_else(|| invalid("not valid UTF-8".into()))?;
        s.parse().map_err(invalid)
    }
}

impl FromStr for DbParams {
    type Err = String;

    /// Errors name the key, never a value (see [`DbParamsParser`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut p = DbParams::default();
        let s = s.trim().trim_start_matches('?');
        if s.is_empty() {
            return Ok(p);
        }
        for (position, piece) in s.split('&').filter(|x| !x.is_empty()).enumerate() {
            let not_key_value = || {
                format!(
                    "parameter {} is not key=value (its text is not shown: it may hold a secret)",
                    position + 1
                )
            };
            if !piece.contains('=') {
                return Err(not_key_value());
            }
            let (key, value) = form_urlencoded::parse(piece.as_bytes())
                .next()
                .ok_or_else(not_key_value)?;
            // 0 would time every connection attempt out at once (connect_timeout) or be
            // refused by the socket (keepalives_idle).
            let secs = |v: &str| match v.parse::<u64>() {
                Ok(n @ 1..=3600) => Ok(Duration::from_secs(n)),
                _ => Err(format!("{key}: expected whole seconds between 1 and 3600")),
            };
            match key.as_ref() {
                "sslmode" => {
                    p.sslmode = match value.as_ref() {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        _ => return Err(
                            "sslmode: expected disable, prefer, require, verify-ca or verify-full"
                                .into(),
                        ),
                    }
                }
                "sslrootcert" => p.sslrootcert = Some(PathBuf::from(value.as_ref())),
                "connect_timeout" => p.connect_timeout = Some(secs(&value)?),
                "keepalives_idle" => p.keepalives_idle = Some(secs(&value)?),
                "application_name" => p.application_name = Some(value.into_owned()),
                "options" => p.options = Some(value.into_owned()),
                "target_session_attrs" => {
                    p.target_session_attrs_read_write = match value.as_ref() {
                        "any" => false,
                        "read-write" => true,
                        _ => return Err("target_session_attrs: expected any or read-write".into()),
                    }
                }
                "password" => {
                    return Err(
                        "password is not accepted here: put it in DB_PASS (from a Secret)".into(),
                    )
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        if matches!(p.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && p.sslrootcert.is_none() {
            return Err("sslmode=verify-ca/verify-full needs sslrootcert=<CA file>".into());
        }
        Ok(p)
    }
}
