//! The CRD manager's decisions, without a server: `CrdWatches` on each CRD event.

use std::collections::HashSet;

use super::state::{Action, CrdWatches, Kind, LiveKind, OrphanSweep};
use crate::config::Namespaces;
use crate::kubernetes::crd::{CrdSummary, CrdWatch};
use crate::pipeline::watch::CrdEvent;
use crate::row::routes::{ManagedGroups, Route};

const GROUP: &str = "composition.krateo.io";

fn kind(group: &str, plural: &str) -> Kind {
    (group.to_owned(), plural.to_owned())
}

/// A manager of `GROUP`, with `static_kinds` already watched by static routes.
fn watches(namespaces: &[&str], static_kinds: &[Kind]) -> CrdWatches {
    CrdWatches::new(
        ManagedGroups::parse(&format!("{GROUP}\n")).0,
        Namespaces(namespaces.iter().map(|n| n.to_string()).collect()),
        static_kinds.iter().cloned().collect::<HashSet<_>>(),
    )
}

fn crd(group: &str, plural: &str, version: Option<&str>, rv: i64) -> CrdSummary {
    CrdSummary {
        name: format!("{plural}.{group}"),
        group: group.to_owned(),
        plural: plural.to_owned(),
        kind: "FireworksApp".to_owned(),
        namespaced: true,
        watched_version: version.map(str::to_owned),
        resource_version: Some(rv),
    }
}

fn watch_of(crd: &CrdSummary, version: &str) -> CrdWatch {
    CrdWatch {
        route: Route::new(&crd.group, version, &crd.plural, &crd.kind),
        namespaced: crd.namespaced,
    }
}

fn start(crd: &CrdSummary, version: &str) -> Action {
    Action::Start {
        crd: crd.name.clone(),
        watch: watch_of(crd, version),
    }
}

fn stop(crd: &CrdSummary) -> Action {
    Action::Stop {
        crd: crd.name.clone(),
    }
}

fn sweep(crd: &CrdSummary, seen_gone_at: i64) -> Action {
    Action::Sweep {
        kind: kind(&crd.group, &crd.plural),
        namespace: None,
        seen_gone_at: Some(seen_gone_at),
    }
}

fn live(kind: Kind, has_cluster_scoped_rows: bool) -> LiveKind {
    LiveKind {
        kind,
        has_cluster_scoped_rows,
        api_version: "v1".to_owned(),
    }
}

#[test]
fn a_managed_crd_gets_one_watch_at_its_version() {
    let mut state = watches(&[], &[]);
    let apps = crd(GROUP, "fireworksapps", Some("v1"), 10);
    assert_eq!(
        state.next(CrdEvent::Applied(apps.clone())),
        vec![start(&apps, "v1")]
    );
    // The same CRD again (a status update, a relist): the running watch stays.
    assert_eq!(state.next(CrdEvent::Applied(apps.clone())), vec![]);
}

#[test]
fn a_crd_of_an_unmanaged_group_is_not_watched() {
    let mut state = watches(&[], &[]);
    let other = crd("other.io", "things", Some("v1"), 10);
    assert_eq!(state.next(CrdEvent::Applied(other.clone())), vec![]);
    assert_eq!(state.next(CrdEvent::Deleted(other)), vec![]);
}

#[test]
fn a_new_version_stops_the_old_watch_before_starting_the_new_one() {
    let mut state = watches(&[], &[]);
    let v1 = crd(GROUP, "fireworksapps", Some("v1"), 10);
    let v2 = crd(GROUP, "fireworksapps", Some("v2"), 11);
    state.next(CrdEvent::Applied(v1));
    assert_eq!(
        state.next(CrdEvent::Applied(v2.clone())),
        vec![stop(&v2), start(&v2, "v2")]
    );
}

#[test]
fn a_crd_that_serves_no_version_any_more_is_stopped_and_swept() {
    let mut state = watches(&[], &[]);
    state.next(CrdEvent::Applied(crd(
        GROUP,
        "fireworksapps",
        Some("v1"),
        10,
    )));
    let unserved = crd(GROUP, "fireworksapps", None, 12);
    assert_eq!(
        state.next(CrdEvent::Applied(unserved.clone())),
        vec![stop(&unserved), sweep(&unserved, 12)]
    );
    // Nothing runs any more: a second such event does nothing.
    assert_eq!(state.next(CrdEvent::Applied(unserved)), vec![]);
}

#[test]
fn a_crd_of_a_static_routes_kind_gets_no_second_watch() {
    let apps = crd(GROUP, "fireworksapps", Some("v1"), 10);
    let mut state = watches(&[], &[kind(GROUP, "fireworksapps")]);
    assert_eq!(
        state.next(CrdEvent::Applied(apps.clone())),
        vec![Action::LeftToStaticRoute {
            crd: apps.name.clone()
        }]
    );
    // Deleted: the static route's watch owns its rows, no sweep here.
    assert_eq!(state.next(CrdEvent::Deleted(apps)), vec![]);
}

#[test]
fn a_deleted_crd_is_stopped_and_swept_as_of_its_deletion() {
    let mut state = watches(&[], &[]);
    let apps = crd(GROUP, "fireworksapps", Some("v1"), 10);
    state.next(CrdEvent::Applied(apps));
    let deleted = crd(GROUP, "fireworksapps", Some("v1"), 20);
    assert_eq!(
        state.next(CrdEvent::Deleted(deleted.clone())),
        vec![stop(&deleted), sweep(&deleted, 20)]
    );
}

#[test]
fn a_deleted_crd_that_was_not_watched_is_swept_all_the_same() {
    // It had stopped serving (its watch stopped then), and is deleted now.
    let mut state = watches(&[], &[]);
    let deleted = crd(GROUP, "fireworksapps", None, 20);
    assert_eq!(
        state.next(CrdEvent::Deleted(deleted.clone())),
        vec![sweep(&deleted, 20)]
    );
}

#[test]
fn a_complete_list_stops_and_sweeps_the_crds_it_lacks_then_owes_the_orphan_sweep() {
    let mut state = watches(&[], &[]);
    let kept = crd(GROUP, "fireworksapps", Some("v1"), 10);
    let gone = crd(GROUP, "rockets", Some("v1"), 11);
    state.next(CrdEvent::Applied(kept.clone()));
    state.next(CrdEvent::Applied(gone.clone()));
    assert_eq!(state.orphan_sweep_owed(), None);

    assert_eq!(state.next(CrdEvent::ListStarted), vec![]);
    assert_eq!(state.next(CrdEvent::Applied(kept)), vec![]);
    assert_eq!(
        state.next(CrdEvent::ListDone {
            resource_version: Some(50)
        }),
        vec![stop(&gone), sweep(&gone, 50), Action::SweepOrphans]
    );
    assert_eq!(state.orphan_sweep_owed(), Some(Some(50)));
    state.orphans_swept();
    assert_eq!(state.orphan_sweep_owed(), None);
}

#[test]
fn a_list_end_without_its_start_decides_nothing() {
    let mut state = watches(&[], &[]);
    state.next(CrdEvent::Applied(crd(
        GROUP,
        "fireworksapps",
        Some("v1"),
        10,
    )));
    assert_eq!(
        state.next(CrdEvent::ListDone {
            resource_version: Some(50)
        }),
        vec![]
    );
    assert_eq!(state.orphan_sweep_owed(), None);
}

#[test]
fn the_orphan_sweep_looks_at_the_managed_groups_and_the_static_routes_groups() {
    let state = watches(&[], &[kind("", "pods"), kind("other.io", "things")]);
    let mut groups = state.orphan_groups();
    groups.sort();
    assert_eq!(groups, vec![GROUP.to_owned(), "other.io".to_owned()]);
}

#[test]
fn rows_of_a_managed_kind_nobody_watches_are_swept() {
    let mut state = watches(&[], &[]);
    state.next(CrdEvent::Applied(crd(
        GROUP,
        "fireworksapps",
        Some("v1"),
        10,
    )));
    let sweeps = state.orphan_sweeps(vec![
        live(kind(GROUP, "fireworksapps"), true),
        live(kind(GROUP, "rockets"), false),
        live(kind("other.io", "things"), false),
    ]);
    assert_eq!(sweeps, vec![OrphanSweep::Unwatched(kind(GROUP, "rockets"))]);
}

#[test]
fn cluster_scoped_rows_of_a_kind_watched_per_namespace_are_swept() {
    let live_rows = || vec![live(kind(GROUP, "fireworksapps"), true)];
    let apps = crd(GROUP, "fireworksapps", Some("v1"), 10);

    let mut per_namespace = watches(&["team-a"], &[]);
    per_namespace.next(CrdEvent::Applied(apps.clone()));
    assert_eq!(
        per_namespace.orphan_sweeps(live_rows()),
        vec![OrphanSweep::ClusterScopedRows(kind(GROUP, "fireworksapps"))]
    );

    // Watched cluster-wide, the kind's list covers rows without a namespace as well.
    let mut cluster_wide = watches(&[], &[]);
    cluster_wide.next(CrdEvent::Applied(apps));
    assert_eq!(cluster_wide.orphan_sweeps(live_rows()), vec![]);
}

#[test]
fn a_static_routes_kind_no_listed_crd_serves_is_swept_if_discovery_agrees() {
    let apps = crd(GROUP, "fireworksapps", Some("v1"), 10);
    let static_kind = kind(GROUP, "fireworksapps");
    let mut state = watches(&[], std::slice::from_ref(&static_kind));
    let live_rows = || vec![live(static_kind.clone(), false)];
    assert_eq!(
        state.orphan_sweeps(live_rows()),
        vec![OrphanSweep::StaticKindIfNotServed {
            kind: static_kind.clone(),
            api_version: "v1".to_owned()
        }]
    );

    // Its CRD is listed: nothing to ask.
    state.next(CrdEvent::ListStarted);
    state.next(CrdEvent::Applied(apps));
    state.next(CrdEvent::ListDone {
        resource_version: Some(50),
    });
    assert_eq!(state.orphan_sweeps(live_rows()), vec![]);

    // The next complete list lacks it: the kinds served are those of that list.
    state.next(CrdEvent::ListStarted);
    state.next(CrdEvent::ListDone {
        resource_version: Some(60),
    });
    assert_eq!(state.orphan_sweeps(live_rows()).len(), 1);
}
