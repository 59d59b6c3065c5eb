//! The presenter's query shapes (issue 12: discovery, list with every filter, keyset paging in
//! every sort order and direction, detail), run against the table and compared with what the
//! API server holds.

use std::collections::{BTreeSet, HashSet};

use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;

use super::Krateo;
use crate::common::*;

/// The kinds this scenario creates, at the version rows carry: (apiVersion, kind, plural).
const KINDS: &[(&str, &str, &str)] = &[
    ("v1", "Namespace", "namespaces"),
    ("v1", "Pod", "pods"),
    ("v1", "ConfigMap", "configmaps"),
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
    ),
    (
        "composition.krateo.io/v1alpha2",
        "FireworksApp",
        "fireworksapps",
    ),
    (
        "core.krateo.io/v1alpha1",
        "CompositionDefinition",
        "compositiondefinitions",
    ),
];

const COMPOSITION_LABEL: &str = "krateo.io/composition-id";

/// The presenter's list columns.
const LIST_COLUMNS: &str = "resource_name, uid, global_uid, namespace, resource_group, resource_version, resource_kind, resource_plural, cluster_name, created_at, updated_at, composition_id, id";

/// One live object as the API server holds it, with the row the presenter should see.
#[derive(Clone, Debug)]
struct Truth {
    group: String,
    version: String,
    plural: String,
    kind: String,
    namespace: String,
    name: String,
    global_uid: String,
    labels: Value,
    composition: String,
}

fn truth(k: &Krateo) -> Vec<Truth> {
    let store = k.h().store();
    let mut out = Vec::new();
    for (api_version, kind, plural) in KINDS {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        for o in store.list(api_version, kind, None) {
            let uid = uid(&o);
            let labels = o
                .pointer("/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            let composition = labels
                .get(COMPOSITION_LABEL)
                .and_then(Value::as_str)
                .and_then(|l| uuid::Uuid::parse_str(l).ok())
                .map(|u| u.to_string())
                .unwrap_or_else(|| uid.clone());
            out.push(Truth {
                group: group.into(),
                version: version.into(),
                plural: (*plural).into(),
                kind: (*kind).into(),
                namespace: o
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                name: o
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                global_uid: format!("{CLUSTER}:{uid}"),
                labels,
                composition,
            });
        }
    }
    out
}

fn uids<'a>(t: impl IntoIterator<Item = &'a Truth>) -> BTreeSet<String> {
    t.into_iter().map(|t| t.global_uid.clone()).collect()
}

/// A list request as the presenter builds it.
#[derive(Clone, Default)]
struct List {
    group: String,
    version: Option<String>,
    /// (group, plural, namespace) the caller may read.
    triples: Vec<(String, String, String)>,
    cluster: Option<String>,
    composition: Option<String>,
    name: Option<String>,
    name_like: Option<String>,
    labels: Option<Value>,
    since: Option<String>,
}

impl List {
    fn of_group(all: &[Truth], group: &str) -> List {
        let triples: BTreeSet<(String, String, String)> = all
            .iter()
            .filter(|t| t.group == group)
            .map(|t| (t.group.clone(), t.plural.clone(), t.namespace.clone()))
            .collect();
        List {
            group: group.into(),
            triples: triples.into_iter().collect(),
            ..List::default()
        }
    }

    /// What the API server says this request must return.
    fn expected(&self, all: &[Truth], changed_since: &HashSet<String>) -> BTreeSet<String> {
        uids(all.iter().filter(|t| {
            t.group == self.group
                && self.version.as_ref().is_none_or(|v| &t.version == v)
                && self
                    .triples
                    .iter()
                    .any(|(g, p, n)| g == &t.group && p == &t.plural && n == &t.namespace)
                && self.cluster.as_ref().is_none_or(|c| c == CLUSTER)
                && self
                    .composition
                    .as_ref()
                    .is_none_or(|c| &t.composition == c)
                && self.name.as_ref().is_none_or(|n| &t.name == n)
                && self
                    .name_like
                    .as_ref()
                    .is_none_or(|n| t.name.to_lowercase().contains(&n.to_lowercase()))
                && self.labels.as_ref().is_none_or(|want| {
                    want.as_object()
                        .is_some_and(|w| w.iter().all(|(k, v)| t.labels.get(k) == Some(v)))
                })
                && (self.since.is_none() || changed_since.contains(&t.global_uid))
        }))
    }
}

/// The presenter's sort orders: columns before `id`.
const ORDERS: &[(&str, &[&str], &str)] = &[
    (
        "group/version/plural/namespace/name",
        &[
            "resource_group",
            "resource_version",
            "resource_plural",
            "namespace",
            "resource_name",
        ],
        "",
    ),
    ("created_at", &["created_at"], ""),
    ("updated_at", &["updated_at"], ""),
    ("global_uid", &["global_uid"], ""),
    (
        "composition_id nulls last",
        &["composition_id"],
        " NULLS LAST",
    ),
    (
        "composition_id nulls first",
        &["composition_id"],
        " NULLS FIRST",
    ),
];

/// The SQL type of a cursor column (cursor values travel as text).
fn cursor_cast(column: &str) -> &'static str {
    match column {
        "created_at" | "updated_at" => "timestamptz",
        "composition_id" => "uuid",
        _ => "text",
    }
}

/// One page: the presenter's WHERE, the keyset cursor, ORDER BY, LIMIT n+1. Returns
/// (global_uid, id, cursor values as text) per row.
async fn page(
    db: &Client,
    q: &List,
    order: &(&str, &[&str], &str),
    descending: bool,
    cursor: Option<&(Vec<Option<String>>, i64)>,
    limit: i64,
) -> anyhow::Result<Vec<(String, i64, Vec<Option<String>>)>> {
    let mut params: Vec<Box<dyn ToSql + Sync>> = Vec::new();
    let mut p = |v: Box<dyn ToSql + Sync>| {
        params.push(v);
        format!("${}", params.len())
    };
    let mut sql_where = format!(
        "deleted_at IS NULL AND resource_group = {}",
        p(Box::new(q.group.clone()))
    );
    if let Some(v) = &q.version {
        sql_where += &format!(" AND resource_version = {}", p(Box::new(v.clone())));
    }
    let triples: Vec<String> = q
        .triples
        .iter()
        .map(|(g, pl, n)| {
            format!(
                "({}, {}, {})",
                p(Box::new(g.clone())),
                p(Box::new(pl.clone())),
                p(Box::new(n.clone()))
            )
        })
        .collect();
    if triples.is_empty() {
        sql_where += " AND false";
    } else {
        sql_where += &format!(
            " AND (resource_group, resource_plural, namespace) IN ({})",
            triples.join(", ")
        );
    }
    if let Some(c) = &q.cluster {
        sql_where += &format!(" AND cluster_name = {}", p(Box::new(c.clone())));
    }
    if let Some(c) = &q.composition {
        sql_where += &format!(
            " AND composition_id = {}::text::uuid",
            p(Box::new(c.clone()))
        );
    }
    if let Some(n) = &q.name {
        sql_where += &format!(" AND resource_name = {}", p(Box::new(n.clone())));
    }
    if let Some(n) = &q.name_like {
        sql_where += &format!(" AND resource_name ILIKE {}", p(Box::new(format!("%{n}%"))));
    }
    if let Some(l) = &q.labels {
        sql_where += &format!(
            " AND raw->'metadata'->'labels' @> {}::text::jsonb",
            p(Box::new(l.to_string()))
        );
    }
    if let Some(s) = &q.since {
        sql_where += &format!(
            " AND updated_at >= {}::text::timestamptz",
            p(Box::new(s.clone()))
        );
    }
    let (columns, nulls) = (order.1, order.2);
    if let Some((values, id)) = cursor {
        let mut left: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
        left.push("id".into());
        let mut right: Vec<String> = columns
            .iter()
            .zip(values)
            .map(|(c, v)| format!("{}::text::{}", p(Box::new(v.clone())), cursor_cast(c)))
            .collect();
        right.push(p(Box::new(*id)));
        sql_where += &format!(
            " AND ({}) {} ({})",
            left.join(", "),
            if descending { "<" } else { ">" },
            right.join(", ")
        );
    }
    let dir = if descending { " DESC" } else { " ASC" };
    let mut order_by: Vec<String> = columns.iter().map(|c| format!("{c}{dir}{nulls}")).collect();
    order_by.push(format!("id{dir}"));
    let cursor_columns: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c}::text AS cursor_{i}"))
        .collect();
    let sql = format!(
        "SELECT {LIST_COLUMNS}, {} FROM krateo_resources WHERE {sql_where} ORDER BY {} LIMIT {}",
        cursor_columns.join(", "),
        order_by.join(", "),
        p(Box::new(limit + 1))
    );
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = db.query(&sql, &refs).await?;
    let first_cursor = LIST_COLUMNS.split(',').count();
    Ok(rows
        .iter()
        .map(|r| {
            let cursor = (0..columns.len())
                .map(|i| r.get::<_, Option<String>>(first_cursor + i))
                .collect();
            (r.get("global_uid"), r.get("id"), cursor)
        })
        .collect())
}

/// Every row of `q` in `order`, three per page, following the cursor: (global_uid in the
/// order visited).
async fn walk(
    db: &Client,
    q: &List,
    order: &(&str, &[&str], &str),
    descending: bool,
) -> anyhow::Result<Vec<String>> {
    const PAGE: i64 = 3;
    let mut visited = Vec::new();
    let mut cursor = None;
    loop {
        let rows = page(db, q, order, descending, cursor.as_ref(), PAGE).await?;
        let more = rows.len() as i64 > PAGE;
        for (g, id, values) in rows.into_iter().take(PAGE as usize) {
            visited.push(g);
            cursor = Some((values, id));
        }
        if !more {
            return Ok(visited);
        }
        anyhow::ensure!(visited.len() < 10_000, "paging does not end");
    }
}

async fn list_all(db: &Client, q: &List) -> anyhow::Result<BTreeSet<String>> {
    let visited = walk(db, q, &ORDERS[0], false).await?;
    Ok(visited.into_iter().collect())
}

fn labelled(mut v: Value, labels: Value) -> Value {
    if let Some(obj) = labels.as_object() {
        for (key, val) in obj {
            v["metadata"]["labels"][key] = val.clone();
        }
    }
    v
}

pub async fn presenter_queries(k: Krateo) -> anyhow::Result<()> {
    let (ok, out) = k.migrate(&k.owner, &[]).await?;
    assert!(ok, "{out}");
    let h = k.h();
    let store = h.store();
    store.create(namespace("team-a"))?;
    store.create(namespace("team-b"))?;
    store.create(crd_json(
        "composition.krateo.io",
        "fireworksapps",
        "FireworksApp",
        &[("v1alpha1", true, true), ("v1alpha2", true, false)],
        "Namespaced",
    ))?;
    store.create(crd_json(
        "core.krateo.io",
        "compositiondefinitions",
        "CompositionDefinition",
        &[("v1alpha1", true, true)],
        "Namespaced",
    ))?;
    let app = store.create(cr_json(
        "composition.krateo.io",
        "v1alpha1",
        "FireworksApp",
        Some("team-a"),
        "app1",
    ))?;
    let composition = uid(&app);
    let member = json!({ COMPOSITION_LABEL: composition });
    store.create(cr_json(
        "composition.krateo.io",
        "v1alpha1",
        "FireworksApp",
        Some("team-b"),
        "app2",
    ))?;
    store.create(labelled(
        cr_json(
            "core.krateo.io",
            "v1alpha1",
            "CompositionDefinition",
            Some("team-a"),
            "def1",
        ),
        member.clone(),
    ))?;
    store.create(labelled(pod("team-a", "web"), member.clone()))?;
    store.create(labelled(pod("team-a", "worker"), member.clone()))?;
    store.create(labelled(pod("team-a", "web-2"), json!({"app": "web"})))?;
    store.create(pod("team-b", "web"))?;
    store.create(labelled(
        pod("team-b", "db"),
        json!({ COMPOSITION_LABEL: "not-a-uuid" }),
    ))?;
    store.create(pod("team-b", "gone"))?;
    store.create(labelled(
        configmap("team-a", "settings", json!({"a": "1"})),
        member.clone(),
    ))?;
    store.create(configmap("team-b", "other", json!({"a": "1"})))?;

    let _ing = k.start_ready_as(&k.ingester, &[]).await?;
    let db = h.db.client().await?;
    let scope = testkit::converge::CheckScope {
        cluster: CLUSTER.into(),
        // kube-sim's in-process `Store::list` renders custom resources at the apiVersion
        // they were created with, not the one asked for: after the storage version switch
        // the checker would call the FireworksApp rows (rightly at v1alpha2) stale. Their
        // version is checked below and by every query.
        kinds: KINDS
            .iter()
            .filter(|(_, kind, _)| *kind != "FireworksApp")
            .map(|(a, kind, _)| ((*a).to_owned(), (*kind).to_owned()))
            .collect(),
        namespaces: Vec::new(),
        managed_groups: Vec::new(),
        unwatched_rows_deleted: false,
    };
    let wait = || testkit::converge::wait_converged(&store, &db, &scope, WAIT);
    // Updates, a delete and the CRD's storage version switch, all before `since`.
    let mut web2 = store
        .get("v1", "Pod", Some("team-a"), "web-2")
        .ok_or_else(|| anyhow::anyhow!("web-2"))?;
    web2["metadata"]["labels"]["tier"] = json!("front");
    store.update(web2)?;
    store.delete("v1", "Pod", Some("team-b"), "gone")?;
    let mut def = store
        .get(
            "apiextensions.k8s.io/v1",
            "CustomResourceDefinition",
            None,
            "fireworksapps.composition.krateo.io",
        )
        .ok_or_else(|| anyhow::anyhow!("crd"))?;
    def["spec"]["versions"][0]["storage"] = json!(false);
    def["spec"]["versions"][1]["storage"] = json!(true);
    store.update(def)?;
    wait().await?;
    h.wait_count(
        "resource_kind = 'FireworksApp' AND resource_version = 'v1alpha2' AND deleted_at IS NULL",
        2,
    )
    .await?;
    wait().await?;

    // `since`: only what changes after it (updated_at moves on every change).
    let since: String = db.query_one("SELECT now()::text", &[]).await?.get(0);
    let mut other = store
        .get("v1", "ConfigMap", Some("team-b"), "other")
        .ok_or_else(|| anyhow::anyhow!("other"))?;
    other["data"]["a"] = json!("2");
    let other = store.update(other)?;
    wait().await?;
    let changed: HashSet<String> = [format!("{CLUSTER}:{}", uid(&other))].into();

    let all = truth(&k);
    assert_eq!(
        all.len(),
        15,
        "workload (namespace kube-system included): {all:?}"
    );
    let groups: BTreeSet<String> = all.iter().map(|t| t.group.clone()).collect();

    // Discovery, per group and namespace (none given means 'default'), with the optional
    // equalities.
    for group in &groups {
        for ns in ["default", "team-a", "team-b", ""] {
            let rows = db
                .query(
                    "SELECT DISTINCT resource_group, resource_plural, namespace FROM krateo_resources
                      WHERE deleted_at IS NULL AND resource_group = $1 AND namespace = $2
                        AND cluster_name = $3",
                    &[group, &ns, &CLUSTER],
                )
                .await?;
            let got: BTreeSet<(String, String, String)> = rows
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            let want: BTreeSet<(String, String, String)> = all
                .iter()
                .filter(|t| &t.group == group && t.namespace == ns)
                .map(|t| (t.group.clone(), t.plural.clone(), t.namespace.clone()))
                .collect();
            assert_eq!(got, want, "discovery {group:?} in {ns:?}");
        }
    }
    for (version, plural, want) in [
        ("v1alpha2", "fireworksapps", 2),
        ("v1alpha1", "fireworksapps", 0),
    ] {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM (SELECT DISTINCT resource_group, resource_plural, namespace FROM krateo_resources
                  WHERE deleted_at IS NULL AND resource_group = $1 AND resource_version = $2 AND resource_plural = $3) d",
                &[&"composition.krateo.io", &version, &plural],
            )
            .await?
            .get(0);
        assert_eq!(n, want, "discovery at {version}: one triple per namespace");
    }

    // List, with each filter.
    let none = HashSet::new();
    let mut cases: Vec<(String, List)> = Vec::new();
    for group in &groups {
        let base = List::of_group(&all, group);
        cases.push((format!("{group:?}"), base.clone()));
        cases.push((
            format!("{group:?} composition"),
            List {
                composition: Some(composition.clone()),
                ..base.clone()
            },
        ));
        cases.push((
            format!("{group:?} cluster"),
            List {
                cluster: Some(CLUSTER.into()),
                ..base.clone()
            },
        ));
        cases.push((
            format!("{group:?} other cluster"),
            List {
                cluster: Some("elsewhere".into()),
                ..base.clone()
            },
        ));
    }
    let core = List::of_group(&all, "");
    cases.extend([
        (
            "team-a only (RBAC triples)".into(),
            List {
                triples: core
                    .triples
                    .iter()
                    .filter(|(_, _, n)| n == "team-a")
                    .cloned()
                    .collect(),
                ..core.clone()
            },
        ),
        (
            "version v1".into(),
            List {
                version: Some("v1".into()),
                ..core.clone()
            },
        ),
        (
            "name web".into(),
            List {
                name: Some("web".into()),
                ..core.clone()
            },
        ),
        (
            "name like EB".into(),
            List {
                name_like: Some("EB".into()),
                ..core.clone()
            },
        ),
        (
            "labels app=web".into(),
            List {
                labels: Some(json!({"app": "web"})),
                ..core.clone()
            },
        ),
        (
            "labels app=web, tier=front".into(),
            List {
                labels: Some(json!({"app": "web", "tier": "front"})),
                ..core.clone()
            },
        ),
        (
            "fireworksapps at v1alpha2".into(),
            List {
                version: Some("v1alpha2".into()),
                ..List::of_group(&all, "composition.krateo.io")
            },
        ),
        (
            "fireworksapps at v1alpha1".into(),
            List {
                version: Some("v1alpha1".into()),
                ..List::of_group(&all, "composition.krateo.io")
            },
        ),
    ]);
    for (what, q) in &cases {
        let want = q.expected(&all, &none);
        assert_eq!(list_all(&db, q).await?, want, "list {what}");
    }
    let since_q = List {
        since: Some(since),
        ..core.clone()
    };
    let want = since_q.expected(&all, &changed);
    assert_eq!(want.len(), 1);
    assert_eq!(list_all(&db, &since_q).await?, want, "list since");
    // The composition's members, the composition object included.
    let members: BTreeSet<String> = uids(all.iter().filter(|t| t.composition == composition));
    let mut found = BTreeSet::new();
    for group in &groups {
        let q = List {
            composition: Some(composition.clone()),
            ..List::of_group(&all, group)
        };
        found.extend(list_all(&db, &q).await?);
    }
    assert_eq!(found, members, "composition members");
    assert!(members.contains(&format!("{CLUSTER}:{composition}")));
    assert_eq!(members.len(), 5, "app1, def1, web, worker, settings");

    // Keyset paging: every order, both directions, each live row exactly once.
    for group in &groups {
        let q = List::of_group(&all, group);
        let want = q.expected(&all, &none);
        for order in ORDERS {
            for descending in [false, true] {
                let visited = walk(&db, &q, order, descending).await?;
                let unique: BTreeSet<String> = visited.iter().cloned().collect();
                assert_eq!(
                    unique.len(),
                    visited.len(),
                    "{group:?} by {} desc={descending}: a row twice",
                    order.0
                );
                assert_eq!(unique, want, "{group:?} by {} desc={descending}", order.0);
            }
        }
    }

    // Detail: exactly one live row per object, none for a deleted one.
    for t in &all {
        let rows = db
            .query(
                &format!("SELECT {LIST_COLUMNS}, raw, status_raw FROM krateo_resources WHERE global_uid = $1 AND deleted_at IS NULL LIMIT 2"),
                &[&t.global_uid],
            )
            .await?;
        assert_eq!(rows.len(), 1, "detail {}", t.global_uid);
        let r = &rows[0];
        assert_eq!(r.get::<_, String>("resource_name"), t.name);
        assert_eq!(r.get::<_, String>("namespace"), t.namespace);
        assert_eq!(r.get::<_, String>("resource_kind"), t.kind);
        assert_eq!(r.get::<_, String>("resource_version"), t.version);
        assert_eq!(r.get::<_, String>("resource_plural"), t.plural);
        assert_eq!(
            r.get::<_, Option<uuid::Uuid>>("composition_id")
                .map(|u| u.to_string()),
            Some(t.composition.clone()),
            "composition id of {}",
            t.global_uid
        );
    }
    let gone: i64 = db
        .query_one(
            "SELECT count(*) FROM krateo_resources WHERE resource_name = 'gone' AND deleted_at IS NULL",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(gone, 0, "a deleted object has no live detail");
    Ok(())
}
