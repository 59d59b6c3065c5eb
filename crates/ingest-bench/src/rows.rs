//! The rows the ingester would write, prepared once for the reference writers: objects are
//! listed from kube-sim over REST exactly as the ingester lists them (pages of JSON text),
//! turned into records by the ingester's own `build_record`, and encoded as PostgreSQL binary
//! COPY data in a file. COPY streams the file; the row-wise writers decode it back and send the
//! very same field bytes as binary parameters.

use std::error::Error as StdError;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use resources_ingester::row::fields::FieldPolicy;
use resources_ingester::row::object::RawObject;
use resources_ingester::row::record::{build_record_with, CompositionFallback, EventKind, Record};
use resources_ingester::row::routes::Route;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// Column order of the COPY data and of the row-wise statements.
pub const COLUMNS: &str = "created_at, updated_at, deleted_at, cluster_name, uid, namespace, global_uid, resource_group, resource_version, resource_kind, resource_plural, resource_name, composition_id, raw, status_raw, object_resource_version";
pub const NCOLS: usize = 16;

const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow)]
    items: Vec<&'a RawValue>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    continue_: Option<String>,
}

/// Summary of a prepared row file.
#[derive(Debug, Clone, Copy, Default)]
pub struct Prepared {
    pub rows: u64,
    pub raw_bytes: u64,
    pub file_bytes: u64,
}

fn put_field(buf: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            buf.put_i32(d.len() as i32);
            buf.extend_from_slice(d);
        }
        None => buf.put_i32(-1),
    }
}

fn ts(t: DateTime<Utc>) -> [u8; 8] {
    (t.timestamp_micros() - PG_EPOCH_OFFSET_US).to_be_bytes()
}

fn jsonb(s: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.push(1);
    v.extend_from_slice(s.as_bytes());
    v
}

pub fn encode_record(buf: &mut BytesMut, r: &Record) {
    buf.put_i16(NCOLS as i16);
    put_field(buf, Some(&ts(r.created_at)));
    put_field(buf, Some(&ts(r.updated_at)));
    put_field(buf, r.deleted_at.map(ts).as_ref().map(|b| &b[..]));
    put_field(buf, Some(r.cluster_name.as_bytes()));
    put_field(buf, Some(r.uid.as_bytes()));
    put_field(buf, Some(r.namespace.as_bytes()));
    put_field(buf, Some(r.global_uid.as_bytes()));
    put_field(buf, Some(r.route.group.as_bytes()));
    put_field(buf, Some(r.route.version.as_bytes()));
    put_field(buf, Some(r.route.kind.as_bytes()));
    put_field(buf, Some(r.route.plural.as_bytes()));
    put_field(buf, Some(r.name.as_bytes()));
    put_field(buf, r.composition_id.as_ref().map(|u| &u.as_bytes()[..]));
    put_field(buf, Some(&jsonb(&r.raw)));
    put_field(buf, r.status_json().map(jsonb).as_deref());
    put_field(
        buf,
        r.object_resource_version
            .map(i64::to_be_bytes)
            .as_ref()
            .map(|b| &b[..]),
    );
}

/// Lists every object of `routes` from kube-sim (pages of `page_size`) and writes the binary
/// COPY file; `fields` is the ingester's field policy (`PRUNE_FIELDS` ...), so the baseline
/// rows are the rows the ingester writes.
pub async fn prepare(
    base_url: &str,
    routes: &[Route],
    cluster: &str,
    page_size: usize,
    path: &Path,
    fields: &FieldPolicy,
) -> anyhow::Result<Prepared> {
    let http = reqwest::Client::new();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    out.write_all(b"PGCOPY\n\xff\r\n\0")?;
    out.write_all(&0i32.to_be_bytes())?;
    out.write_all(&0i32.to_be_bytes())?;
    let cluster: Arc<str> = Arc::from(cluster);
    let mut p = Prepared::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for route in routes {
        let route = Arc::new(route.clone());
        let prefix = if route.group.is_empty() {
            format!("{base_url}/api/{}", route.version)
        } else {
            format!("{base_url}/apis/{}/{}", route.group, route.version)
        };
        let mut cont: Option<String> = None;
        loop {
            let mut url = format!("{prefix}/{}?limit={page_size}", route.plural);
            if let Some(c) = &cont {
                url.push_str("&continue=");
                url.push_str(c);
            }
            let body = http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            let page: Page<'_> = serde_json::from_slice(&body)?;
            let now = Utc::now();
            for item in page.items {
                let mut text = item.get().to_owned();
                // List items carry no apiVersion/kind on a real server; kube-sim's do. The
                // ingester stores what it receives either way.
                text.shrink_to_fit();
                let obj = RawObject::from_json(text)?;
                let (rec, _) = build_record_with(
                    obj,
                    &route,
                    &cluster,
                    EventKind::Apply,
                    now,
                    CompositionFallback::default(),
                    fields,
                )
                .map_err(|e| anyhow::anyhow!("record: {e}"))?;
                p.raw_bytes += rec.raw.len() as u64;
                p.rows += 1;
                buf.clear();
                encode_record(&mut buf, &rec);
                out.write_all(&buf)?;
            }
            cont = page.metadata.continue_.filter(|c| !c.is_empty());
            if cont.is_none() {
                break;
            }
        }
    }
    out.write_all(&(-1i16).to_be_bytes())?;
    out.flush()?;
    p.file_bytes = std::fs::metadata(path)?.len();
    Ok(p)
}

/// One decoded row: the binary bytes of each field (None = NULL).
pub struct RawRow {
    pub fields: Vec<Option<Vec<u8>>>,
}

/// Streams the rows of a binary COPY file.
pub struct RowReader {
    r: BufReader<std::fs::File>,
}

impl RowReader {
    pub fn open(path: &Path) -> anyhow::Result<RowReader> {
        let mut r = BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let mut header = [0u8; 19];
        r.read_exact(&mut header)?;
        Ok(RowReader { r })
    }

    pub fn next_row(&mut self) -> anyhow::Result<Option<RawRow>> {
        let mut n = [0u8; 2];
        self.r.read_exact(&mut n)?;
        let n = i16::from_be_bytes(n);
        if n < 0 {
            return Ok(None);
        }
        let mut fields = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut l = [0u8; 4];
            self.r.read_exact(&mut l)?;
            let l = i32::from_be_bytes(l);
            if l < 0 {
                fields.push(None);
            } else {
                let mut v = vec![0u8; l as usize];
                self.r.read_exact(&mut v)?;
                fields.push(Some(v));
            }
        }
        Ok(Some(RawRow { fields }))
    }
}

/// A parameter whose binary wire bytes are already known.
#[derive(Debug)]
pub struct RawParam<'a>(pub Option<&'a [u8]>);

impl ToSql for RawParam<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self.0 {
            Some(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        }
    }
    fn accepts(_ty: &Type) -> bool {
        true
    }
    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use kube_sim::workload::reference::{PodGen, Size};
    use resources_ingester::row::fields::{FieldPolicy, SensitiveKinds};
    use serde_json::Value;

    /// Bytes of `pod`'s JSON and of its `"managedFields":[...]` member.
    fn sizes(pod: &Value) -> (usize, usize) {
        let total = serde_json::to_string(pod).map_or(0, |s| s.len());
        let mf = serde_json::to_string(&pod["metadata"]["managedFields"]).map_or(0, |s| s.len());
        (total, r#""managedFields":"#.len() + mf)
    }

    /// `--ingester-env PRUNE_FIELDS=metadata.managedFields` takes exactly that member off the
    /// benchmark's pods (the baselines' rows shrink as the ingester's do).
    #[test]
    fn pruning_managed_fields_drops_exactly_that_member() {
        let policy = FieldPolicy::new(
            true,
            &SensitiveKinds::default(),
            &"metadata.managedFields".parse().expect("valid"),
        );
        for size in [Size::Realistic, Size::Large] {
            let pod = PodGen::new(size).pod(7);
            let text = serde_json::to_string(&pod).expect("json");
            let (total, mf) = sizes(&pod);
            let applied = policy.apply("", "Pod", &text).expect("pruned");
            assert_eq!(applied.pruned_bytes, mf as u64);
            assert_eq!(
                applied.json.len(),
                total - mf - 1,
                "the member and its comma"
            );
        }
        let small = serde_json::to_string(&PodGen::new(Size::Small).pod(7)).expect("json");
        assert_eq!(policy.apply("", "Pod", &small), None, "no managedFields");
    }
}
