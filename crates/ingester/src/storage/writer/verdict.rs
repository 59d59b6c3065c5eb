//! Error classification: where in a batch's transaction an error came from ([`Stage`]) and
//! what it means for the batch ([`Verdict`]), by a pure rule ([`verdict`]) tested without a
//! server.

/// How a `COMMIT` refused for its queued notification is reported (SQLSTATE 54000 at commit).
pub const NOTIFY_QUEUE_FULL: &str = "the NOTIFY queue is full";

/// Where in a batch's transaction an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Getting a connection, `BEGIN`, preparing a statement.
    Open,
    /// `COPY`, the upsert, the tombstones: the statements that read the rows' data.
    Rows,
    /// `pg_notify`, queued in the transaction.
    Notify,
    /// `COMMIT`: every statement succeeded; what fails here is the environment (or the
    /// notification queued for this commit).
    Commit,
}

/// What an error means for the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Some record's data: narrow it down to that record.
    Data,
    /// The change-feed notification could not be queued (the NOTIFY queue is full: a
    /// listener stopped reading or sits in an open transaction): write the batch without it.
    FeedRefused,
    /// The environment (connection, read-only server, a lagging identity sequence, a plan
    /// invalidated by DDL, ...): retry the same batch, drop nothing.
    Transient,
}

/// The pure rule: which server errors are about a row's data. Only errors of the
/// statements that read the rows can be; of those, data exceptions (22: `\u0000` in jsonb),
/// integrity violations (23) other than on the primary key (`id` comes from the table's
/// identity sequence, not from the row: a sequence behind the table's ids, after a restore,
/// fails every insert), program limits (54: a row too big) and unsupported values (0A)
/// other than "cached plan must not change result type" (the owner altered a column under
/// a prepared statement). Errors at `COMMIT` are never the rows': the statements passed.
fn verdict(
    stage: Stage,
    code: Option<&str>,
    constraint: Option<&str>,
    table: Option<&str>,
    message: &str,
) -> Verdict {
    let Some(code) = code else {
        return Verdict::Transient;
    };
    match stage {
        Stage::Open => Verdict::Transient,
        // 54000 "too many notifications in the NOTIFY queue" comes at COMMIT; a payload
        // PostgreSQL refuses (22023) at pg_notify. Neither is worth a row.
        Stage::Notify if code.starts_with("22") || code.starts_with("54") => Verdict::FeedRefused,
        Stage::Commit if code == "54000" => Verdict::FeedRefused,
        Stage::Notify | Stage::Commit => Verdict::Transient,
        Stage::Rows => {
            let primary_key = constraint.is_some_and(|c| c.ends_with("_pkey"));
            // Another table's constraint (the history's day partitions: "no partition of
            // relation found for row" when tomorrow's was not created) is the schema's state.
            let other_table = table.is_some_and(|t| t != "krateo_resources")
                || message.starts_with("no partition of relation");
            let replanned = code == "0A000" && message.contains("cached plan");
            let data = code.starts_with("22")
                || (code.starts_with("23") && !primary_key && !other_table)
                || code.starts_with("54")
                || (code.starts_with("0A") && !replanned);
            if data {
                Verdict::Data
            } else {
                Verdict::Transient
            }
        }
    }
}

/// How [`crate::storage::describe_db_error`] begins a read-only refusal (SQLSTATE 25006).
const READ_ONLY: &str = "SQLSTATE 25006:";

#[derive(Debug)]
pub(super) enum AttemptError {
    Data(String),
    FeedRefused(String),
    Transient(String),
}

impl AttemptError {
    /// The server refused to write (a standby, a demoted primary): the connection that
    /// answered so must not be used again. Never a data error (class 25, stage `Rows`).
    pub(super) fn is_read_only(&self) -> bool {
        matches!(self, AttemptError::Transient(e) if e.starts_with(READ_ONLY))
    }

    /// Classifies `e` from `stage` (see [`verdict`]).
    pub(super) fn at(stage: Stage) -> impl Fn(tokio_postgres::Error) -> AttemptError {
        move |e| {
            let db = e.as_db_error();
            // The code and message name the error (never a password; a row's data only in
            // the detail, which is not kept).
            let msg = crate::storage::describe_db_error(&e);
            match verdict(
                stage,
                db.map(|d| d.code().code()),
                db.and_then(|d| d.constraint()),
                db.and_then(|d| d.table()),
                db.map(|d| d.message()).unwrap_or_default(),
            ) {
                Verdict::Data => AttemptError::Data(msg),
                Verdict::FeedRefused => AttemptError::FeedRefused(msg),
                Verdict::Transient => AttemptError::Transient(msg),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_of_the_statements_that_read_rows_are_the_rows_fault() {
        use Stage::*;
        use Verdict::*;
        let v = |stage, code, constraint, message| {
            verdict(
                stage,
                Some(code),
                constraint,
                Some("krateo_resources"),
                message,
            )
        };
        // The rows' data: narrow down.
        assert_eq!(
            v(Rows, "22P05", None, "unsupported Unicode escape sequence"),
            Data
        );
        assert_eq!(
            v(
                Rows,
                "54000",
                None,
                "total size of jsonb object elements exceeds"
            ),
            Data
        );
        assert_eq!(v(Rows, "23505", Some("deviser_unique_name"), ""), Data);
        assert_eq!(v(Rows, "0A000", None, "unsupported value"), Data);
        // The environment: retry the same batch.
        assert_eq!(
            v(Rows, "23505", Some("krateo_resources_pkey"), ""),
            Transient
        );
        assert_eq!(
            v(
                Rows,
                "0A000",
                None,
                "cached plan must not change result type"
            ),
            Transient
        );
        assert_eq!(
            v(
                Rows,
                "25006",
                None,
                "cannot execute INSERT in a read-only transaction"
            ),
            Transient
        );
        assert_eq!(v(Open, "22023", None, ""), Transient);
        assert_eq!(
            verdict(Rows, None, None, None, ""),
            Transient,
            "no answer at all"
        );
        assert_eq!(
            verdict(
                Rows,
                Some("23514"),
                None,
                Some("krateo_resource_history"),
                "no partition of relation \"krateo_resource_history\" found for row"
            ),
            Transient,
            "a day partition of the history not created yet"
        );
        // COMMIT: never the rows; a full NOTIFY queue refuses only the feed.
        assert_eq!(
            v(
                Commit,
                "54000",
                None,
                "too many notifications in the NOTIFY queue"
            ),
            FeedRefused
        );
        assert_eq!(v(Commit, "40001", None, ""), Transient);
        assert_eq!(v(Commit, "23505", None, ""), Transient);
        assert_eq!(
            v(Notify, "22023", None, "payload string too long"),
            FeedRefused
        );
        assert_eq!(v(Notify, "57P01", None, ""), Transient);
    }
}
