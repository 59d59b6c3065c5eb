//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl 1.32 sends built-in
//! kinds from its generators (`kubectl create namespace|configmap|secret|deployment|service`,
//! `kubectl run`). The body is decoded with k8s-pb's message types and turned into the JSON the
//! Go API types marshal to, so the object is stored exactly as if it had come as JSON.
//!
//! client-go falls back to JSON after a 415 only for CBOR, never for protobuf: a server that
//! cannot read these bodies makes those kubectl commands fail. Kinds without a converter still
//! get 415 UnsupportedMediaType, as from a real server for a type it has no protobuf codec for.

use crate::error::ApiError;
use base64::Engine;
use prost::Message;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub(crate) const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Every protobuf-encoded Kubernetes object starts with these four bytes, then a runtime.Unknown.
const MAGIC: &[u8] = b"k8s\0";

/// Go's JSON form of a message: field by field with the API's JSON names.
pub(crate) trait ToJson {
    fn to_json(&self) -> Result<Value, ApiError>;

    /// Whether Go's `omitempty` leaves the field out (nil pointer, empty string/slice/map).
    fn omitted(&self) -> bool {
        false
    }
}

/// Adds one field to an object unless it is omitted.
pub(crate) fn put<T: ToJson>(
    object: &mut Map<String, Value>,
    name: &str,
    field: &T,
) -> Result<(), ApiError> {
    if !field.omitted() {
        object.insert(name.to_string(), field.to_json()?);
    }
    Ok(())
}

/// An embedded Go struct (`json:",inline"`): its fields go into the enclosing object.
pub(crate) fn put_inline<T: ToJson>(
    object: &mut Map<String, Value>,
    field: &Option<T>,
) -> Result<(), ApiError> {
    if let Some(inner) = field {
        if let Value::Object(fields) = inner.to_json()? {
            object.extend(fields);
        }
    }
    Ok(())
}

/// `message!(api::core::v1::ConfigMap { metadata => "metadata", ... })`: the JSON form of a
/// k8s-pb message. The destructuring is exhaustive, so a field k8s-pb adds stops the build
/// instead of being dropped silently.
macro_rules! message {
    ($($seg:ident)::+ { $($field:ident => $name:tt),* $(,)? }) => {
        impl $crate::protobuf::ToJson for k8s_pb::$($seg)::+ {
            fn to_json(&self) -> Result<serde_json::Value, $crate::error::ApiError> {
                let k8s_pb::$($seg)::+ { $($field),* } = self;
                let mut object = serde_json::Map::new();
                $( message!(@put object, $field, $name); )*
                Ok(serde_json::Value::Object(object))
            }
        }
    };
    (@put $object:ident, $field:ident, inline) => {
        $crate::protobuf::put_inline(&mut $object, $field)?
    };
    (@put $object:ident, $field:ident, $name:literal) => {
        $crate::protobuf::put(&mut $object, $name, $field)?
    };
}

mod messages;

impl ToJson for String {
    fn to_json(&self) -> Result<Value, ApiError> {
        Ok(Value::String(self.clone()))
    }
    fn omitted(&self) -> bool {
        self.is_empty()
    }
}

impl ToJson for bool {
    fn to_json(&self) -> Result<Value, ApiError> {
        Ok(Value::Bool(*self))
    }
}

impl ToJson for i32 {
    fn to_json(&self) -> Result<Value, ApiError> {
        Ok(Value::from(*self))
    }
}

impl ToJson for i64 {
    fn to_json(&self) -> Result<Value, ApiError> {
        Ok(Value::from(*self))
    }
}

impl<T: ToJson> ToJson for Option<T> {
    fn to_json(&self) -> Result<Value, ApiError> {
        match self {
            Some(v) => v.to_json(),
            None => Ok(Value::Null),
        }
    }
    fn omitted(&self) -> bool {
        self.as_ref().is_none_or(ToJson::omitted)
    }
}

impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self) -> Result<Value, ApiError> {
        self.iter().map(ToJson::to_json).collect()
    }
    fn omitted(&self) -> bool {
        self.is_empty()
    }
}

impl<T: ToJson> ToJson for BTreeMap<String, T> {
    fn to_json(&self) -> Result<Value, ApiError> {
        self.iter()
            .map(|(k, v)| Ok((k.clone(), v.to_json()?)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object)
    }
    fn omitted(&self) -> bool {
        self.is_empty()
    }
}

/// `map<string, bytes>` (Secret `data`, ConfigMap `binaryData`): base64 in JSON.
impl ToJson for BTreeMap<String, Vec<u8>> {
    fn to_json(&self) -> Result<Value, ApiError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Value::Object(
            self.iter()
                .map(|(k, v)| (k.clone(), Value::String(b64.encode(v))))
                .collect(),
        ))
    }
    fn omitted(&self) -> bool {
        self.is_empty()
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::api::resource::Quantity {
    fn to_json(&self) -> Result<Value, ApiError> {
        Ok(Value::String(self.string.clone().unwrap_or_default()))
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
    fn to_json(&self) -> Result<Value, ApiError> {
        // type 1 is a string, 0 (or unset) an int
        Ok(match self.r#type {
            Some(1) => Value::String(self.str_val.clone().unwrap_or_default()),
            _ => Value::from(self.int_val.unwrap_or_default()),
        })
    }
}

fn timestamp(seconds: Option<i64>, nanos: Option<i32>, format: &str) -> Result<Value, ApiError> {
    let t = chrono::DateTime::from_timestamp(
        seconds.unwrap_or_default(),
        u32::try_from(nanos.unwrap_or_default()).unwrap_or_default(),
    )
    .ok_or_else(|| ApiError::bad_request("a timestamp in the protobuf body is out of range"))?;
    Ok(Value::String(t.format(format).to_string()))
}

/// A zero time marshals as `null` in Go; every time field is `omitempty`, so it is left out.
fn zero_time(seconds: Option<i64>, nanos: Option<i32>) -> bool {
    seconds.unwrap_or_default() == 0 && nanos.unwrap_or_default() == 0
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::Time {
    fn to_json(&self) -> Result<Value, ApiError> {
        // metav1.Time has second precision on the wire
        timestamp(self.seconds, None, "%Y-%m-%dT%H:%M:%SZ")
    }
    fn omitted(&self) -> bool {
        zero_time(self.seconds, self.nanos)
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::MicroTime {
    fn to_json(&self) -> Result<Value, ApiError> {
        timestamp(self.seconds, self.nanos, "%Y-%m-%dT%H:%M:%S%.6fZ")
    }
    fn omitted(&self) -> bool {
        zero_time(self.seconds, self.nanos)
    }
}

/// Raw JSON carried as bytes (managedFields' fieldsV1, RawExtension).
fn raw_json(raw: &Option<Vec<u8>>) -> Result<Value, ApiError> {
    match raw.as_deref() {
        None | Some([]) => Ok(Value::Null),
        Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
            ApiError::bad_request(format!("raw JSON in the protobuf body is invalid: {e}"))
        }),
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::FieldsV1 {
    fn to_json(&self) -> Result<Value, ApiError> {
        raw_json(&self.raw)
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::runtime::RawExtension {
    fn to_json(&self) -> Result<Value, ApiError> {
        raw_json(&self.raw)
    }
}

impl ToJson for k8s_pb::apimachinery::pkg::apis::meta::v1::Duration {
    fn to_json(&self) -> Result<Value, ApiError> {
        Ok(Value::String(go_duration(
            self.duration.unwrap_or_default(),
        )))
    }
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "250ms", "0s".
fn go_duration(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n == 0 {
        return "0s".into();
    }
    if n < 1_000_000_000 {
        let (unit, div) = match n {
            n if n < 1_000 => return format!("{sign}{n}ns"),
            n if n < 1_000_000 => ("µs", 1_000f64),
            _ => ("ms", 1_000_000f64),
        };
        return format!("{sign}{}{unit}", n as f64 / div);
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = rest as f64 / 1e9;
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn unsupported(kind: &str) -> ApiError {
    ApiError::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the body of the request was in an unknown format - kube-sim decodes {MEDIA_TYPE} \
             bodies of Namespace, ConfigMap, Secret, Pod, Service, Deployment, Scale and \
             SelfSubjectAccessReview only \
             (got {kind}); send application/json"
        ),
    )
}

fn convert<M: Message + Default + ToJson>(raw: &[u8]) -> Result<Value, ApiError> {
    let message = M::decode(raw).map_err(|e| {
        ApiError::bad_request(format!("the protobuf body could not be decoded: {e}"))
    })?;
    message.to_json()
}

/// The JSON object a protobuf request body encodes (with apiVersion and kind).
pub(crate) fn decode_object(body: &[u8]) -> Result<Value, ApiError> {
    use k8s_pb::api::{apps, authorization, autoscaling, core};
    let envelope = body.strip_prefix(MAGIC).ok_or_else(|| {
        ApiError::bad_request("a protobuf body must start with the bytes \"k8s\\x00\"")
    })?;
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown::decode(envelope).map_err(|e| {
        ApiError::bad_request(format!("the protobuf envelope could not be decoded: {e}"))
    })?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(unsupported(&format!("{kind} with a content encoding")));
    }
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => convert::<core::v1::Namespace>(&raw)?,
        ("v1", "ConfigMap") => convert::<core::v1::ConfigMap>(&raw)?,
        ("v1", "Secret") => convert::<core::v1::Secret>(&raw)?,
        ("v1", "Pod") => convert::<core::v1::Pod>(&raw)?,
        ("v1", "Service") => convert::<core::v1::Service>(&raw)?,
        ("apps/v1", "Deployment") => convert::<apps::v1::Deployment>(&raw)?,
        ("autoscaling/v1", "Scale") => convert::<autoscaling::v1::Scale>(&raw)?,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            convert::<authorization::v1::SelfSubjectAccessReview>(&raw)?
        }
        _ => return Err(unsupported(&format!("{api_version} {kind}"))),
    };
    if let Value::Object(m) = &mut object {
        m.insert("apiVersion".into(), api_version.into());
        m.insert("kind".into(), kind.into());
    }
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
            type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut body = MAGIC.to_vec();
        body.extend(unknown.encode_to_vec());
        body
    }

    #[test]
    fn pod_decodes_to_the_json_of_the_go_types() {
        let pod = core::Pod {
            metadata: Some(meta::ObjectMeta {
                name: Some("web".into()),
                generate_name: Some(String::new()),
                labels: [("run".to_string(), "web".to_string())].into(),
                creation_timestamp: Some(meta::Time::default()),
                ..Default::default()
            }),
            spec: Some(core::PodSpec {
                containers: vec![core::Container {
                    name: Some("web".into()),
                    image: Some("nginx".into()),
                    resources: Some(core::ResourceRequirements {
                        limits: [(
                            "cpu".to_string(),
                            k8s_pb::apimachinery::pkg::api::resource::Quantity {
                                string: Some("100m".into()),
                            },
                        )]
                        .into(),
                        ..Default::default()
                    }),
                    ports: vec![core::ContainerPort {
                        container_port: Some(80),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                host_ipc: Some(true),
                ..Default::default()
            }),
            status: Some(core::PodStatus::default()),
        };
        let v = decode_object(&envelope("v1", "Pod", pod.encode_to_vec())).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "labels": {"run": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx",
                    "resources": {"limits": {"cpu": "100m"}}, "ports": [{"containerPort": 80}]}],
                    "hostIPC": true},
                "status": {}})
        );
    }

    #[test]
    fn secret_bytes_are_base64_and_unknown_kinds_get_415() {
        let secret = core::Secret {
            data: [("k".to_string(), b"v\x00".to_vec())].into(),
            ..Default::default()
        };
        let v = decode_object(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(v["data"]["k"], "dgA=");
        let e = decode_object(&envelope("v1", "Endpoints", Vec::new())).unwrap_err();
        assert_eq!((e.code, e.reason.as_str()), (415, "UnsupportedMediaType"));
        let e = decode_object(b"{}").unwrap_err();
        assert_eq!(e.code, 400);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(250_000_000), "250ms");
    }
}
