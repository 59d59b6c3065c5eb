use super::*;

fn held_by(holder: &str, duration: Option<u64>) -> LeaseRecord {
    LeaseRecord {
        holder: holder.into(),
        duration: duration.map(Duration::from_secs),
        transitions: 3,
        ..LeaseRecord::default()
    }
}

const DEFAULT: Duration = Duration::from_secs(15);

#[test]
fn another_holder_is_waited_for_until_its_record_stays_unchanged_for_its_duration() {
    let lease = held_by("b", Some(10));
    let fresh = lease.next("a", Duration::from_secs(9), DEFAULT);
    assert_eq!(fresh, Next::StandBy("b".into()));
    // The Lease's own duration counts, not this replica's setting.
    assert_eq!(
        lease.next("a", Duration::from_secs(10), DEFAULT),
        Next::Take
    );
    let no_duration = held_by("b", None);
    assert_eq!(
        no_duration.next("a", Duration::from_secs(10), DEFAULT),
        Next::StandBy("b".into())
    );
    assert_eq!(no_duration.next("a", DEFAULT, DEFAULT), Next::Take);
}

#[test]
fn a_released_lease_is_taken_at_once_and_our_own_is_renewed() {
    assert_eq!(
        held_by("", Some(10)).next("a", Duration::ZERO, DEFAULT),
        Next::Take
    );
    assert_eq!(
        held_by("a", Some(10)).next("a", Duration::ZERO, DEFAULT),
        Next::Renew
    );
    // Even when this replica's view of its own record is old.
    assert_eq!(
        held_by("a", Some(10)).next("a", Duration::from_secs(60), DEFAULT),
        Next::Renew
    );
}

#[test]
fn missing_fields_read_as_empty() {
    let lease: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l"}, "spec": {"holderIdentity": "b", "leaseTransitions": 2}
    }))
    .expect("a Lease");
    let r = LeaseRecord::of(&lease);
    assert_eq!((r.holder.as_str(), r.transitions), ("b", 2));
    assert_eq!((r.renew_time.as_str(), r.duration), ("", None));
}

fn settings(identity: &str, lease_duration: Duration) -> LeaseSettings {
    LeaseSettings {
        name: "l".into(),
        namespace: "ns".into(),
        identity: identity.into(),
        lease_duration,
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    }
}

fn lease_with(spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l"}, "spec": spec
    }))
    .expect("a Lease")
}

#[test]
fn the_holder_spec_reads_back_as_held_by_us() {
    let s = settings("a", Duration::from_secs(15));
    let spec = holder_spec(&s, "t0", "t1", 4);
    let r = LeaseRecord::of(&lease_with(spec));
    assert!(r.is_held_by("a") && !r.is_held_by("b"));
    assert_eq!(
        (
            r.acquire_time.as_str(),
            r.renew_time.as_str(),
            r.transitions
        ),
        ("t0", "t1", 4)
    );
    assert_eq!(r.duration, Some(Duration::from_secs(15)));
    // A duration under a second is written as one second (the field counts whole seconds).
    let short = holder_spec(&settings("a", Duration::from_millis(500)), "t0", "t1", 0);
    assert_eq!(short["leaseDurationSeconds"], json!(1));
}

#[test]
fn a_released_lease_has_no_holder_and_is_taken_at_once_keeping_its_history() {
    let s = settings("a", Duration::from_secs(15));
    let mut spec = holder_spec(&s, "t0", "t1", 4);
    release(&mut spec, "t2");
    let r = LeaseRecord::of(&lease_with(spec));
    assert!(!r.is_held_by("a"));
    assert_eq!(
        (r.holder.as_str(), r.renew_time.as_str(), r.duration),
        ("", "t2", Some(Duration::from_secs(1)))
    );
    assert_eq!((r.acquire_time.as_str(), r.transitions), ("t0", 4));
    assert_eq!(r.next("b", Duration::ZERO, DEFAULT), Next::Take);
}
