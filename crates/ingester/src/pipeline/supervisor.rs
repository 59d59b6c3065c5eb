//! Task supervision: every panic, in any task, is reported once and stops the service (a
//! panicked watch or lane must never leave a process that is alive but useless); tasks run
//! under a name through [`named`] so the report says which one.

use std::sync::{Arc, LazyLock, OnceLock};

use tokio::sync::Notify;

/// The first panic of the process, reported by the panic hook ([`install_panic_reporter`]).
static FIRST_PANIC: OnceLock<String> = OnceLock::new();
static PANIC_REPORTED: LazyLock<Notify> = LazyLock::new(Notify::new);

tokio::task_local! {
    /// The name of the running task, for the panic report.
    static TASK_NAME: Arc<str>;
}

/// Makes every panic, in any task, stop the service: the hook records which task panicked
/// (tasks started through [`named`]; others by the panic's location) and wakes the
/// supervisor in [`run`], which stops and returns an error. Without it tokio would keep a
/// panicked task's error in a join handle nobody reads, and the process would stay up with
/// that watch or lane silently gone. [`run`] installs it (once per process).
pub fn install_panic_reporter() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let task = TASK_NAME
                .try_with(|name| format!("task '{name}'"))
                .unwrap_or_else(|_| "an unnamed task".to_owned());
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|m| (*m).to_owned())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-text panic payload".to_owned());
            if FIRST_PANIC
                .set(format!("{task} panicked{location}: {message}"))
                .is_ok()
            {
                PANIC_REPORTED.notify_one();
            }
        }));
    });
}

/// The first panic's report, if a task has panicked.
pub fn first_panic() -> Option<String> {
    FIRST_PANIC.get().cloned()
}

/// Waits for the first panic report.
pub async fn task_panicked() -> String {
    loop {
        if let Some(report) = FIRST_PANIC.get() {
            return report.clone();
        }
        PANIC_REPORTED.notified().await;
    }
}

/// Runs `task` under `name`, so a panic report names it.
pub fn named<F: std::future::Future>(
    name: impl Into<Arc<str>>,
    task: F,
) -> impl std::future::Future<Output = F::Output> {
    let name: Arc<str> = name.into();
    TASK_NAME.scope(name.clone(), async move {
        debug_hooks::panic_if_requested(&name);
        task.await
    })
}

/// Test hooks compiled into debug builds only (release builds, and so every image, ignore
/// them); not a setting.
pub mod debug_hooks {
    /// `INGESTER_DEBUG_PANIC_TASK=<prefix>`: a task whose name starts with the prefix panics
    /// when it starts, so tests can prove that a panicking task stops the process.
    pub fn panic_if_requested(task: &str) {
        #[cfg(debug_assertions)]
        if let Ok(prefix) = std::env::var("INGESTER_DEBUG_PANIC_TASK") {
            if !prefix.is_empty() && task.starts_with(&prefix) {
                panic!("INGESTER_DEBUG_PANIC_TASK={prefix}: deliberate panic");
            }
        }
        #[cfg(not(debug_assertions))]
        let _ = task;
    }

    /// `INGESTER_DEBUG_PANIC_TASK=unnamed`: a task started without `named` (a library's, or
    /// one added later without a name) panics once the service runs.
    pub fn spawn_unnamed_panic_if_requested() {
        #[cfg(debug_assertions)]
        if std::env::var("INGESTER_DEBUG_PANIC_TASK").as_deref() == Ok("unnamed") {
            tokio::spawn(async { panic!("INGESTER_DEBUG_PANIC_TASK=unnamed: deliberate panic") });
        }
    }
}
