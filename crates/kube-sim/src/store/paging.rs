//! Lists: which revision a list reads (consistent, exact, or a lagging watch cache's), the state
//! at that revision rebuilt from the history, and pages with their continue tokens.

use super::history::too_large;
use super::{Inner, Key, Obj};
use crate::error::ApiError;
use crate::resources::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// A list request after query parsing.
#[derive(Debug, Default, Clone)]
pub(crate) struct ListQuery {
    pub ns: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub limit: usize,
    pub cont: Option<String>,
    pub rv: Option<String>,
    pub rv_match: Option<String>,
    /// Events the serving replica's watch cache lags behind the store (0: up to date).
    pub lag: u64,
}

pub(crate) struct ListResult {
    pub rv: u64,
    pub items: Vec<Arc<Obj>>,
    pub cont: Option<String>,
    /// `metadata.remainingItemCount` of a page with a continuation: the items after it, as
    /// the real server counts them (only for a list without selectors).
    pub remaining: Option<u64>,
}

fn encode_continue(rv: u64, key: &Key) -> String {
    let token = json!({"rv": rv, "ns": &*key.0, "name": &*key.1});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

fn decode_continue(token: &str) -> Result<(u64, Key), ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: invalid token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let rv = v["rv"].as_u64().ok_or_else(bad)?;
    let ns = v["ns"].as_str().ok_or_else(bad)?;
    let name = v["name"].as_str().ok_or_else(bad)?;
    Ok((rv, (ns.into(), name.into())))
}

/// The states (None: absent) of the keys written after a revision, as they were at it.
type Overlay = BTreeMap<Key, Option<Arc<Obj>>>;

impl Inner {
    pub fn list(&self, def: &ResourceDef, q: &ListQuery) -> Result<ListResult, ApiError> {
        let (at, after) = match &q.cont {
            Some(token) => self.continued_at(token)?,
            None => (self.list_rv(q)?, None),
        };
        let empty = BTreeMap::new();
        let current = self.objects.get(&def.key).unwrap_or(&empty);
        let overlay = self.undone_after(def, at);
        let ns_start: Option<Key> = q.ns.as_deref().map(|ns| (Arc::from(ns), Arc::from("")));
        let lower: Bound<Key> = match (&after, &ns_start) {
            (Some(a), Some(n)) if a >= n => Bound::Excluded(a.clone()),
            (Some(a), None) => Bound::Excluded(a.clone()),
            (_, Some(n)) => Bound::Included(n.clone()),
            (None, None) => Bound::Unbounded,
        };
        let mut items = Vec::new();
        let mut more = 0u64;
        let count_rest = q.labels.is_empty() && q.fields.is_empty();
        for slot in state_from(current, &overlay, lower) {
            let Some(o) = slot else { continue };
            if let Some(ns) = &q.ns {
                if *o.ns != **ns {
                    break;
                }
            }
            if !o.matches(&q.labels, &q.fields) {
                continue;
            }
            if q.limit > 0 && items.len() == q.limit {
                more += 1;
                if !count_rest {
                    break;
                }
                continue;
            }
            items.push(o);
        }
        let cont = match items.last() {
            Some(last) if more > 0 => Some(encode_continue(at, &last.key())),
            _ => None,
        };
        Ok(ListResult {
            rv: at,
            items,
            remaining: (cont.is_some() && count_rest).then_some(more),
            cont,
        })
    }

    /// The revision and last key of the page a continue token follows.
    fn continued_at(&self, token: &str) -> Result<(u64, Option<Key>), ApiError> {
        let (rv, key) = decode_continue(token)?;
        if rv < self.compacted_rv {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue value \
                 from the response.",
            ));
        }
        Ok((rv, Some(key)))
    }

    /// The revision the first page (or the whole) of a list reads, from `resourceVersion` and
    /// `resourceVersionMatch`.
    fn list_rv(&self, q: &ListQuery) -> Result<u64, ApiError> {
        let asked =
            match q.rv.as_deref() {
                None | Some("") | Some("0") => None,
                Some(x) => Some(x.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version \"{x}\""))
                })?),
            };
        match (asked, q.rv_match.as_deref()) {
            // Exact: read from storage at that revision.
            (Some(x), Some("Exact")) => {
                if x > self.rv {
                    return Err(too_large(x, self.rv));
                }
                if x < self.compacted_rv {
                    return Err(self.too_old(x));
                }
                Ok(x)
            }
            // "0": any state will do; the watch cache serves its own, maybe old, one.
            (None, _) if q.rv.as_deref() == Some("0") => Ok(self.cache_rv(q.lag)),
            // No revision: a consistent read, the current state.
            (None, _) => Ok(self.rv),
            // NotOlderThan X: a paged list is read from storage (current state), a whole
            // list from the watch cache, which must have reached X.
            (Some(x), _) => {
                let have = if q.limit > 0 {
                    self.rv
                } else {
                    self.cache_rv(q.lag)
                };
                if x > have {
                    return Err(too_large(x, have));
                }
                Ok(have)
            }
        }
    }

    /// State at `at` = current state with the later writes undone: for each key written after
    /// `at`, its state before the first such write.
    fn undone_after(&self, def: &ResourceDef, at: u64) -> Overlay {
        let mut overlay = Overlay::new();
        if at < self.rv {
            let start = self.history.partition_point(|e| e.rv <= at);
            for e in self.history.range(start..).filter(|e| e.res == def.key) {
                overlay.entry(e.obj.key()).or_insert_with(|| e.prev.clone());
            }
        }
        overlay
    }
}

/// The keys from `lower` on in order, each with its state: the overlay's where it has one, the
/// current one otherwise (None: absent at the list's revision).
fn state_from<'a>(
    current: &'a BTreeMap<Key, Arc<Obj>>,
    overlay: &'a Overlay,
    lower: Bound<Key>,
) -> impl Iterator<Item = Option<Arc<Obj>>> + 'a {
    let mut cur = current
        .range::<Key, _>((lower.clone(), Bound::Unbounded))
        .peekable();
    let mut ovl = overlay
        .range::<Key, _>((lower, Bound::Unbounded))
        .peekable();
    std::iter::from_fn(move || {
        use std::cmp::Ordering::*;
        let which = match (cur.peek(), ovl.peek()) {
            (None, None) => return None,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match which {
            Less => cur.next().map(|(_, o)| Some(o.clone())),
            Greater => ovl.next().map(|(_, o)| o.clone()),
            Equal => {
                cur.next();
                ovl.next().map(|(_, o)| o.clone())
            }
        }
    })
}
