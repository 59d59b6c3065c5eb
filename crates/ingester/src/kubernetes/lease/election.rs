//! The elector's decisions between its tries (no I/O, no clock of its own: instants come in
//! as arguments): how long the Lease's record has been seen unchanged, which holder a standby
//! reports, and when a leader has lost the lease. The loops in `mod.rs` do the waiting, the
//! reading and writing, and the logging.

use std::time::{Duration, Instant};

use super::record::LeaseRecord;

/// The outcome of one try.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Attempt {
    /// We hold the lease (acquired or renewed).
    Held,
    /// Another replica holds a lease that has not expired.
    HeldBy(String),
    /// Someone wrote the lease between our read and our write, or the API failed.
    Retry(String),
}

/// What ended one wait of the renewal loop.
#[derive(Debug)]
pub(super) enum Renewal {
    Stopped,
    DeadlinePassed,
    /// A try, with the instant it started.
    Tried(Attempt, Instant),
}

/// The last record seen (holder, renewTime) and when this replica first saw it, on its own
/// clock (no comparison of clocks between machines).
#[derive(Debug, Default)]
pub(super) struct Observed(Option<((String, String), Instant)>);

impl Observed {
    /// How long, at `now`, this replica has seen the lease's record (holder, renewTime)
    /// unchanged: zero for a record it has not seen before.
    pub(super) fn unchanged_for(&mut self, record: &LeaseRecord, now: Instant) -> Duration {
        let key = (record.holder.clone(), record.renew_time.clone());
        match &self.0 {
            Some((seen, at)) if *seen == key => now.saturating_duration_since(*at),
            _ => {
                self.0 = Some((key, now));
                Duration::ZERO
            }
        }
    }

    /// This replica wrote the record (`holder`, `renew_time`) at `now`.
    pub(super) fn wrote(&mut self, holder: &str, renew_time: String, now: Instant) {
        self.0 = Some(((holder.to_owned(), renew_time), now));
    }
}

/// A replica waiting for the lease: remembers the holder it last reported, so each new
/// holder is logged once.
#[derive(Debug, Default)]
pub(super) struct Standby {
    reported: String,
}

/// What a waiting replica does after a try.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waiting {
    /// It holds the lease: it leads.
    Leads,
    /// Another replica leads (`Some`: a holder not reported yet): try again later.
    StandsBy(Option<String>),
    /// The try failed (why, to warn): try again later.
    Retries(String),
}

impl Standby {
    pub(super) fn tried(&mut self, attempt: Attempt) -> Waiting {
        match attempt {
            Attempt::Held => Waiting::Leads,
            Attempt::HeldBy(holder) if holder != self.reported => {
                self.reported = holder.clone();
                Waiting::StandsBy(Some(holder))
            }
            Attempt::HeldBy(_) => Waiting::StandsBy(None),
            Attempt::Retry(why) => Waiting::Retries(why),
        }
    }
}

/// A leader renewing the lease. It gives up `renew_deadline` after the start of its last
/// successful renewal (the Lease's `renewTime` is written after that instant, and a standby
/// counts the lease duration from when it saw that write).
#[derive(Debug)]
pub(super) struct Leadership {
    renewed_at: Instant,
    renew_deadline: Duration,
}

/// What the leader does after one wait of its renewal loop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Keeping {
    /// Renewed: renew again after a retry period.
    Renewed,
    /// The renewal failed (why, to warn): retry until the deadline.
    Failed(String),
    /// Asked to stop: the leader still holds the lease (to release it).
    Stopped,
    /// Lost: another replica holds the lease.
    LostTo(String),
    /// Lost: no renewal succeeded within the renew deadline.
    DeadlinePassed,
}

impl Leadership {
    /// Leading since a try that started at `held_since`.
    pub(super) fn new(held_since: Instant, renew_deadline: Duration) -> Leadership {
        Leadership {
            renewed_at: held_since,
            renew_deadline,
        }
    }

    /// When the leader gives up unless a renewal succeeds first.
    pub(super) fn give_up_at(&self) -> Instant {
        self.renewed_at + self.renew_deadline
    }

    pub(super) fn after(&mut self, step: Renewal) -> Keeping {
        match step {
            Renewal::Stopped => Keeping::Stopped,
            Renewal::DeadlinePassed => Keeping::DeadlinePassed,
            Renewal::Tried(Attempt::Held, started) => {
                self.renewed_at = started;
                Keeping::Renewed
            }
            Renewal::Tried(Attempt::HeldBy(holder), _) => Keeping::LostTo(holder),
            Renewal::Tried(Attempt::Retry(why), _) => Keeping::Failed(why),
        }
    }
}

#[cfg(test)]
mod tests;
