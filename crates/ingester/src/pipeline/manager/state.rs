//! The CRD manager's decisions, made without a server: which CRD has which watch, what the
//! manager knows of the CRDs listed, and, for each CRD event, the actions (stop, start, sweep)
//! that the manager's loop performs in order.

use std::collections::{HashMap, HashSet};

use crate::config::Namespaces;
use crate::kubernetes::crd::{CrdSummary, CrdWatch};
use crate::pipeline::watch::CrdEvent;
use crate::row::routes::ManagedGroups;

/// A kind, by API group and plural: what sweeps and duplicate checks compare.
pub type Kind = (String, String);

/// What the manager's loop does next, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop the CRD's watch and wait until what it queued is committed.
    Stop {
        crd: String,
    },
    Start {
        crd: String,
        watch: CrdWatch,
    },
    /// Mark the rows of a kind whose CRD is gone deleted, in every namespace (`None`: the
    /// objects of a gone CRD are gone everywhere) or in one, but only rows not newer than
    /// `seen_gone_at`.
    Sweep {
        kind: Kind,
        namespace: Option<String>,
        seen_gone_at: Option<i64>,
    },
    /// Look for the rows of kinds nobody watches (see `CrdWatches::orphan_sweeps`).
    SweepOrphans,
    /// A managed CRD's kind is a static route's: say that it gets no second watch.
    LeftToStaticRoute {
        crd: String,
    },
}

/// A kind with live rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveKind {
    pub kind: Kind,
    /// Some of its rows have no namespace.
    pub has_cluster_scoped_rows: bool,
    /// The API version of one of its rows.
    pub api_version: String,
}

/// What the orphan sweep does with a kind that has live rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrphanSweep {
    /// A static route of a custom resource whose CRD went while the ingester was not
    /// watching: its watch only sees 404s, its rows would stay live. Swept once the server's
    /// discovery says it does not serve the kind at `api_version`.
    StaticKindIfNotServed { kind: Kind, api_version: String },
    /// No CRD serves this kind: its objects are marked deleted.
    Unwatched(Kind),
    /// This kind is namespaced now: its cluster-scoped objects are marked deleted.
    ClusterScopedRows(Kind),
}

/// Which CRD has which watch, and the CRDs and kinds seen by the CRD watch.
pub struct CrdWatches {
    groups: ManagedGroups,
    namespaces: Namespaces,
    /// Kinds the static routes already watch: a CRD of one of them gets no second watch
    /// (two watches of one scope would fight over its rows).
    static_kinds: HashSet<Kind>,
    running: HashMap<String, CrdWatch>,
    /// CRD names seen since the current list started.
    listing: Option<HashSet<String>>,
    /// Kinds served by a CRD, as of the last complete list and the events since.
    crd_kinds: HashSet<Kind>,
    /// The same, collected while a list is in progress.
    listing_kinds: HashSet<Kind>,
    /// The resourceVersion of the last complete CRD list, while the sweep of kinds whose CRD
    /// is gone is still owed (it failed and is retried).
    orphan_sweep_owed: Option<Option<i64>>,
}

fn kind_of(watch: &CrdWatch) -> Kind {
    (watch.route.group.clone(), watch.route.plural.clone())
}

impl CrdWatches {
    pub fn new(groups: ManagedGroups, namespaces: Namespaces, static_kinds: HashSet<Kind>) -> Self {
        Self {
            groups,
            namespaces,
            static_kinds,
            running: HashMap::new(),
            listing: None,
            crd_kinds: HashSet::new(),
            listing_kinds: HashSet::new(),
            orphan_sweep_owed: None,
        }
    }

    pub fn namespaces(&self) -> &Namespaces {
        &self.namespaces
    }

    /// The resourceVersion of the last complete CRD list while its orphan sweep is owed.
    pub fn orphan_sweep_owed(&self) -> Option<Option<i64>> {
        self.orphan_sweep_owed
    }

    /// What to do on an event of the CRD watch.
    pub fn next(&mut self, event: CrdEvent) -> Vec<Action> {
        match event {
            CrdEvent::ListStarted => {
                self.listing = Some(HashSet::new());
                self.listing_kinds.clear();
                Vec::new()
            }
            CrdEvent::Applied(crd) => self.applied(crd),
            CrdEvent::Deleted(crd) => self.deleted(crd),
            CrdEvent::ListDone { resource_version } => self.list_done(resource_version),
        }
    }

    fn applied(&mut self, crd: CrdSummary) -> Vec<Action> {
        let kind = (crd.group.clone(), crd.plural.clone());
        if let Some(seen) = self.listing.as_mut() {
            seen.insert(crd.name.clone());
            self.listing_kinds.insert(kind.clone());
        }
        self.crd_kinds.insert(kind.clone());
        if crd.is_managed(&self.groups) && self.static_kinds.contains(&kind) {
            if self.running.contains_key(&crd.name) {
                return Vec::new();
            }
            return vec![Action::LeftToStaticRoute { crd: crd.name }];
        }
        // A terminating CRD still serves until its objects are gone; keep watching so their
        // DELETED events land, and sweep when the CRD itself is deleted.
        match (self.running.get(&crd.name), crd.desired_watch(&self.groups)) {
            (Some(running), Some(w)) if *running == w => Vec::new(),
            (_, Some(w)) => {
                let mut actions = self.stop(&crd.name);
                self.running.insert(crd.name.clone(), w.clone());
                actions.push(Action::Start {
                    crd: crd.name,
                    watch: w,
                });
                actions
            }
            (Some(_), None) => {
                // No version served any more: its objects cannot be read, the same as gone.
                let mut actions = self.stop(&crd.name);
                actions.push(sweep_everywhere(kind, crd.resource_version));
                actions
            }
            (None, None) => Vec::new(),
        }
    }

    fn deleted(&mut self, crd: CrdSummary) -> Vec<Action> {
        let mut actions = self.stop(&crd.name);
        let kind = (crd.group.clone(), crd.plural.clone());
        self.crd_kinds.remove(&kind);
        // Swept even when not running (a CRD that had stopped serving, then was deleted).
        if crd.is_managed(&self.groups) && !self.static_kinds.contains(&kind) {
            actions.push(sweep_everywhere(kind, crd.resource_version));
        }
        actions
    }

    /// A stop when the CRD has a watch, none otherwise.
    fn stop(&mut self, crd: &str) -> Vec<Action> {
        match self.running.remove(crd) {
            Some(_) => vec![Action::Stop {
                crd: crd.to_owned(),
            }],
            None => Vec::new(),
        }
    }

    fn list_done(&mut self, resource_version: Option<i64>) -> Vec<Action> {
        let Some(seen) = self.listing.take() else {
            return Vec::new();
        };
        self.crd_kinds = std::mem::take(&mut self.listing_kinds);
        let gone: Vec<String> = self
            .running
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        let mut actions = Vec::new();
        for name in gone {
            if let Some(watch) = self.running.remove(&name) {
                actions.push(Action::Stop { crd: name });
                actions.push(sweep_everywhere(kind_of(&watch), resource_version));
            }
        }
        self.orphan_sweep_owed = Some(resource_version);
        actions.push(Action::SweepOrphans);
        actions
    }

    /// The groups whose live rows the orphan sweep looks at: the managed ones and those of
    /// the static routes.
    pub fn orphan_groups(&self) -> Vec<String> {
        self.groups
            .iter()
            .map(str::to_owned)
            .chain(self.static_kinds.iter().map(|k| k.0.clone()))
            .filter(|g| !g.is_empty())
            .collect()
    }

    /// Rows of managed groups whose kind nobody watches (its CRD deleted while we were not
    /// running, or no longer served) are marked deleted after every complete CRD list: what
    /// to do with each kind that has live rows.
    pub fn orphan_sweeps(&self, live: Vec<LiveKind>) -> Vec<OrphanSweep> {
        let watched: HashSet<Kind> = self
            .running
            .values()
            .map(kind_of)
            .chain(self.static_kinds.iter().cloned())
            .collect();
        // A namespaced kind watched per namespace (`NAMESPACES` set) never lists rows
        // without a namespace: those are objects of an earlier, cluster-scoped CRD of the
        // same kind, gone with it.
        let watched_per_namespace: HashSet<Kind> = self
            .running
            .values()
            .filter(|w| w.namespaced && !self.namespaces.is_all())
            .map(kind_of)
            .collect();
        let mut sweeps = Vec::new();
        for LiveKind {
            kind,
            has_cluster_scoped_rows,
            api_version,
        } in live
        {
            if self.static_kinds.contains(&kind) {
                if !self.crd_kinds.contains(&kind) {
                    sweeps.push(OrphanSweep::StaticKindIfNotServed { kind, api_version });
                }
                continue;
            }
            if !self.groups.iter().any(|g| g == kind.0) {
                continue;
            }
            if !watched.contains(&kind) {
                sweeps.push(OrphanSweep::Unwatched(kind));
            } else if has_cluster_scoped_rows && watched_per_namespace.contains(&kind) {
                sweeps.push(OrphanSweep::ClusterScopedRows(kind));
            }
        }
        sweeps
    }

    /// The owed orphan sweep is done.
    pub fn orphans_swept(&mut self) {
        self.orphan_sweep_owed = None;
    }
}

fn sweep_everywhere(kind: Kind, seen_gone_at: Option<i64>) -> Action {
    Action::Sweep {
        kind,
        namespace: None,
        seen_gone_at,
    }
}
