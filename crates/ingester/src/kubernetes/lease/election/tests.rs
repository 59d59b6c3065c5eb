use super::*;

fn record(holder: &str, renew_time: &str) -> LeaseRecord {
    LeaseRecord {
        holder: holder.into(),
        renew_time: renew_time.into(),
        ..LeaseRecord::default()
    }
}

const S: Duration = Duration::from_secs(1);

#[test]
fn a_record_counts_as_unchanged_from_when_this_replica_first_saw_it() {
    let t0 = Instant::now();
    let mut observed = Observed::default();
    assert_eq!(
        observed.unchanged_for(&record("b", "r1"), t0),
        Duration::ZERO
    );
    assert_eq!(
        observed.unchanged_for(&record("b", "r1"), t0 + 3 * S),
        3 * S
    );
    // A renewal (or a new holder) starts the count again.
    assert_eq!(
        observed.unchanged_for(&record("b", "r2"), t0 + 4 * S),
        Duration::ZERO
    );
    assert_eq!(
        observed.unchanged_for(&record("b", "r2"), t0 + 6 * S),
        2 * S
    );
    assert_eq!(
        observed.unchanged_for(&record("c", "r2"), t0 + 7 * S),
        Duration::ZERO
    );
}

#[test]
fn our_own_write_counts_from_when_we_wrote_it() {
    let t0 = Instant::now();
    let mut observed = Observed::default();
    observed.unchanged_for(&record("b", "r1"), t0);
    observed.wrote("a", "r2".into(), t0 + S);
    assert_eq!(
        observed.unchanged_for(&record("a", "r2"), t0 + 3 * S),
        2 * S
    );
}

#[test]
fn a_standby_reports_each_new_holder_once_and_leads_once_it_holds_the_lease() {
    let mut standby = Standby::default();
    let held_by = |h: &str| Attempt::HeldBy(h.into());
    assert_eq!(
        standby.tried(held_by("b")),
        Waiting::StandsBy(Some("b".into()))
    );
    assert_eq!(standby.tried(held_by("b")), Waiting::StandsBy(None));
    assert_eq!(
        standby.tried(Attempt::Retry("conflict".into())),
        Waiting::Retries("conflict".into())
    );
    // A failed try in between does not make the same holder news again.
    assert_eq!(standby.tried(held_by("b")), Waiting::StandsBy(None));
    assert_eq!(
        standby.tried(held_by("c")),
        Waiting::StandsBy(Some("c".into()))
    );
    assert_eq!(
        standby.tried(held_by("b")),
        Waiting::StandsBy(Some("b".into()))
    );
    assert_eq!(standby.tried(Attempt::Held), Waiting::Leads);
}

#[test]
fn a_leader_gives_up_a_renew_deadline_after_the_start_of_its_last_renewal() {
    let t0 = Instant::now();
    let deadline = 10 * S;
    let mut leader = Leadership::new(t0, deadline);
    assert_eq!(leader.give_up_at(), t0 + deadline);
    // A renewal that succeeds counts from when it started, not from when it answered.
    let renewal = Renewal::Tried(Attempt::Held, t0 + 2 * S);
    assert_eq!(leader.after(renewal), Keeping::Renewed);
    assert_eq!(leader.give_up_at(), t0 + 2 * S + deadline);
    // A failed one leaves the deadline where it was.
    let failed = Renewal::Tried(Attempt::Retry("timeout".into()), t0 + 4 * S);
    assert_eq!(leader.after(failed), Keeping::Failed("timeout".into()));
    assert_eq!(leader.give_up_at(), t0 + 2 * S + deadline);
    assert_eq!(
        leader.after(Renewal::DeadlinePassed),
        Keeping::DeadlinePassed
    );
}

#[test]
fn a_leader_that_sees_another_holder_has_lost_and_a_stopped_one_still_holds() {
    let t0 = Instant::now();
    let mut leader = Leadership::new(t0, 10 * S);
    let other = Renewal::Tried(Attempt::HeldBy("b".into()), t0 + S);
    assert_eq!(leader.after(other), Keeping::LostTo("b".into()));
    assert_eq!(leader.give_up_at(), t0 + 10 * S);
    assert_eq!(leader.after(Renewal::Stopped), Keeping::Stopped);
}
