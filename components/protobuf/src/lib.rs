//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`, as kubectl, helm 3
//! and client-go send them) turned into the Kubernetes JSON a JSON client would have sent.
//!
//! A body is the magic `k8s\0`, then a `runtime.Unknown` envelope naming apiVersion/kind, then
//! the object. The object is decoded generically with descriptors of every built-in kind
//! ([`schema`], no `protoc`), and written as JSON the way Go's `encoding/json` writes the decoded
//! Go struct: the Go facts of each field (pointer, `omitempty`, inline) come with the schema, so
//! `replicas: 0` (a pointer) stays and `"resourceVersion": ""` (a zero `omitempty` string) is not
//! invented. JSON `null`s are left out: every Kubernetes decoder reads `null` and absent alike.
//!
//! A field the schema does not know is refused ([`ProtobufError::UnknownField`]) instead of
//! silently dropped.

#![warn(missing_docs)]

mod schema;
mod wellknown;

use base64::Engine;
use prost::Message;
use prost_reflect::{DynamicMessage, MapKey, MessageDescriptor, ReflectMessage, Value as PValue};
use serde_json::{Map, Value};

/// The Kubernetes protobuf magic prefix.
pub const MAGIC: &[u8] = b"k8s\0";

/// How deep embedded objects (`RawExtension`s that are themselves protobuf bodies) may nest.
const MAX_EMBEDDED_DEPTH: usize = 8;

/// The `metav1` option kinds that `AddToGroupVersion` registers in every group version (a
/// `DeleteOptions` body for an `apps/v1` resource says `apps/v1`).
const OPTIONS_KINDS: &[&str] = &[
    "DeleteOptions",
    "ListOptions",
    "GetOptions",
    "CreateOptions",
    "UpdateOptions",
    "PatchOptions",
];

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// A decoded protobuf body.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedBody {
    /// The envelope's apiVersion (`apps/v1`).
    pub api_version: String,
    /// The envelope's kind (`Deployment`).
    pub kind: String,
    /// The object as Kubernetes JSON, with `apiVersion` and `kind` set.
    pub object: Value,
}

/// Why a protobuf body could not be turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    /// The body lacks the `k8s\0` prefix.
    #[error("the protobuf body does not start with the Kubernetes magic prefix `k8s\\0`; send a Kubernetes protobuf body or the object as JSON")]
    MissingMagic,
    /// The `runtime.Unknown` envelope does not decode.
    #[error("the protobuf envelope (runtime.Unknown) of the body is invalid: {0}; send the object as JSON")]
    Envelope(String),
    /// The envelope says the object is compressed or in another format.
    #[error("the protobuf envelope announces {what} {value:?}, which this server does not decode; send the object as JSON")]
    Encoding {
        /// `contentEncoding` or `contentType`.
        what: &'static str,
        /// Its value.
        value: String,
    },
    /// No built-in kind of that apiVersion/kind.
    #[error("protobuf bodies of kind {kind} ({api_version}) are not supported by this server; send the object as JSON")]
    UnsupportedKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The object bytes are not a valid protobuf message of its kind.
    #[error("invalid protobuf {kind} ({api_version}): {reason}; send the object as JSON")]
    Malformed {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The object sets a field number its message does not have in this server's schema.
    #[error("the protobuf {kind} sets field number {number} of {message} at `{path}`, which this server's Kubernetes 1.33 schema does not know; send the object as JSON (e.g. kubectl create -f / apply -f)")]
    UnknownField {
        /// The kind being decoded.
        kind: String,
        /// The JSON path of the message holding the field (`spec.template.spec.containers[0]`).
        path: String,
        /// The message's protobuf name.
        message: String,
        /// The unknown field number.
        number: u32,
    },
    /// A value has no JSON form (an invalid time, IntOrString type, embedded JSON ...).
    #[error("invalid value at `{path}` of the protobuf {kind}: {reason}; send the object as JSON")]
    InvalidValue {
        /// The kind being decoded.
        kind: String,
        /// The JSON path of the value.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Embedded protobuf objects nest deeper than the decoder follows.
    #[error(
        "the protobuf body nests embedded objects deeper than {0} levels; send the object as JSON"
    )]
    TooDeep(usize),
    /// The embedded schema is broken (a build defect, not a client error).
    #[error("the server's embedded Kubernetes protobuf schema is invalid ({0}); report this as a bug and send the object as JSON meanwhile")]
    Schema(String),
}

impl ProtobufError {
    /// Whether the body is well formed but asks for something this server does not decode
    /// (HTTP 415 Unsupported Media Type); otherwise the body is malformed (HTTP 400), or for
    /// [`ProtobufError::Schema`] the server is at fault.
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            Self::Encoding { .. }
                | Self::UnsupportedKind { .. }
                | Self::UnknownField { .. }
                | Self::Schema(_)
        )
    }
}

/// Decodes a Kubernetes protobuf body (`k8s\0` + `runtime.Unknown`) into Kubernetes JSON.
pub fn decode(body: &[u8]) -> Result<DecodedBody, ProtobufError> {
    decode_at(body, 0)
}

/// Whether `decode` knows protobuf bodies of `api_version`/`kind`.
pub fn supports(api_version: &str, kind: &str) -> bool {
    schema::get().is_ok_and(|s| kind_descriptor(s, api_version, kind).is_some())
}

/// A body of `api_version`/`kind` whose object is the protobuf message `raw`, framed as
/// client-go frames it (magic, then `runtime.Unknown` with empty content type and encoding).
pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct TypeMeta {
        #[prost(string, optional, tag = "1")]
        api_version: Option<String>,
        #[prost(string, optional, tag = "2")]
        kind: Option<String>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Unknown {
        #[prost(message, optional, tag = "1")]
        type_meta: Option<TypeMeta>,
        #[prost(bytes = "vec", optional, tag = "2")]
        raw: Option<Vec<u8>>,
        #[prost(string, optional, tag = "3")]
        content_encoding: Option<String>,
        #[prost(string, optional, tag = "4")]
        content_type: Option<String>,
    }
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw.to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn decode_at(body: &[u8], depth: usize) -> Result<DecodedBody, ProtobufError> {
    if depth > MAX_EMBEDDED_DEPTH {
        return Err(ProtobufError::TooDeep(MAX_EMBEDDED_DEPTH));
    }
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::MissingMagic)?;
    let schema = schema::get()?;
    let unknown_desc = message(schema, "k8s.io.apimachinery.pkg.runtime.Unknown")?;
    let envelope = DynamicMessage::decode(unknown_desc, payload)
        .map_err(|e| ProtobufError::Envelope(e.to_string()))?;
    let string = |m: &DynamicMessage, name: &str| {
        m.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let type_meta = envelope
        .get_field_by_name("typeMeta")
        .and_then(|v| v.as_message().cloned());
    let (api_version, kind) = type_meta
        .map(|t| (string(&t, "apiVersion"), string(&t, "kind")))
        .unwrap_or_default();
    for what in ["contentEncoding", "contentType"] {
        let value = string(&envelope, what);
        if !value.is_empty() && value != "application/vnd.kubernetes.protobuf" {
            return Err(ProtobufError::Encoding { what, value });
        }
    }
    let raw = envelope
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let desc = kind_descriptor(schema, &api_version, &kind).ok_or_else(|| {
        ProtobufError::UnsupportedKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        }
    })?;
    let msg = DynamicMessage::decode(desc, raw.as_ref()).map_err(|e| ProtobufError::Malformed {
        api_version: api_version.clone(),
        kind: kind.clone(),
        reason: e.to_string(),
    })?;
    let walker = Walker {
        schema,
        kind: &kind,
        depth,
    };
    let mut fields = match walker.message(&msg, "")? {
        Some(Value::Object(fields)) => fields,
        _ => Map::new(),
    };
    drop_zero_status(&walker, &msg, &mut fields)?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), Value::String(api_version.clone()));
    object.insert("kind".into(), Value::String(kind.clone()));
    object.extend(fields);
    Ok(DecodedBody {
        api_version,
        kind,
        object: Value::Object(object),
    })
}

/// A zero `status` is what every Go client writes for an object whose status it does not set
/// (creates, spec updates); it carries nothing, so it is left out and the server applies its own
/// status defaults. A non-zero status (a `/status` update) is kept.
fn drop_zero_status(
    walker: &Walker<'_>,
    msg: &DynamicMessage,
    fields: &mut Map<String, Value>,
) -> Result<(), ProtobufError> {
    let Some(status) = msg.descriptor().get_field_by_name("status") else {
        return Ok(());
    };
    let prost_reflect::Kind::Message(status_desc) = status.kind() else {
        return Ok(());
    };
    let zero = walker.message(&DynamicMessage::new(status_desc), "status")?;
    if fields.get("status") == zero.as_ref() {
        fields.remove("status");
    }
    Ok(())
}

fn message(schema: &schema::Schema, name: &str) -> Result<MessageDescriptor, ProtobufError> {
    schema
        .pool
        .get_message_by_name(name)
        .ok_or_else(|| ProtobufError::Schema(format!("message {name} is missing")))
}

/// The message of a kind: the kind in its group version's package, or a `metav1` option kind.
fn kind_descriptor(
    schema: &schema::Schema,
    api_version: &str,
    kind: &str,
) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = schema
        .groups
        .get(&(group.to_string(), version.to_string()))?;
    let is_kind = |full: &str| schema.messages.get(full).is_some_and(|m| m.kind);
    let full = format!("{package}.{kind}");
    if is_kind(&full) && !full.ends_with(".Unknown") {
        return schema.pool.get_message_by_name(&full);
    }
    if OPTIONS_KINDS.contains(&kind) {
        return schema.pool.get_message_by_name(&format!("{META}.{kind}"));
    }
    None
}

/// Writes decoded messages as Go's `encoding/json` would write the Go structs.
struct Walker<'a> {
    schema: &'a schema::Schema,
    kind: &'a str,
    depth: usize,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

impl Walker<'_> {
    fn invalid(&self, path: &str, reason: impl Into<String>) -> ProtobufError {
        ProtobufError::InvalidValue {
            kind: self.kind.to_string(),
            path: path.to_string(),
            reason: reason.into(),
        }
    }

    /// The JSON of a message; `None` where Go writes `null`.
    fn message(&self, msg: &DynamicMessage, path: &str) -> Result<Option<Value>, ProtobufError> {
        let desc = msg.descriptor();
        let name = desc.full_name();
        if let Some(field) = msg.unknown_fields().next() {
            return Err(ProtobufError::UnknownField {
                kind: self.kind.to_string(),
                path: path.to_string(),
                message: name.to_string(),
                number: field.number(),
            });
        }
        let get = |field: &str| msg.get_field_by_name(field);
        let has = |field: &str| msg.has_field_by_name(field);
        match name {
            "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
            | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
                // Go decodes an empty message as the zero time
                if !has("seconds") && !has("nanos") {
                    return Ok(None);
                }
                let seconds = get("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
                let nanos = get("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
                let micro = name.ends_with("MicroTime");
                return wellknown::time(seconds, nanos, micro)
                    .map(|t| t.map(Value::String))
                    .map_err(|e| self.invalid(path, e));
            }
            "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
                let nanos = get("duration").and_then(|v| v.as_i64()).unwrap_or(0);
                return Ok(Some(Value::String(wellknown::go_duration(nanos))));
            }
            "k8s.io.apimachinery.pkg.api.resource.Quantity"
            | "k8s.io.apimachinery.pkg.api.resource.QuantityValue" => {
                if !has("string") {
                    return Ok(Some(Value::String("0".into())));
                }
                let s = get("string")
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                if s.is_empty() {
                    return Err(self.invalid(path, "a quantity is empty"));
                }
                return Ok(Some(Value::String(s)));
            }
            "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
                let t = get("type").and_then(|v| v.as_i64()).unwrap_or(0);
                return match t {
                    0 => Ok(Some(Value::from(
                        get("intVal").and_then(|v| v.as_i32()).unwrap_or(0),
                    ))),
                    1 => Ok(Some(Value::String(
                        get("strVal")
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                    ))),
                    other => Err(self.invalid(
                        path,
                        format!("IntOrString type {other} is neither 0 (int) nor 1 (string)"),
                    )),
                };
            }
            "k8s.io.apimachinery.pkg.runtime.RawExtension" => {
                let raw = get("raw")
                    .and_then(|v| v.as_bytes().cloned())
                    .unwrap_or_default();
                return self.embedded(&raw, path);
            }
            "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
                let raw = get("Raw")
                    .and_then(|v| v.as_bytes().cloned())
                    .unwrap_or_default();
                if raw.is_empty() {
                    return Ok(None);
                }
                return serde_json::from_slice(&raw)
                    .map(Some)
                    .map_err(|e| self.invalid(path, format!("fieldsV1 is not JSON: {e}")));
            }
            "k8s.io.apimachinery.pkg.runtime.Unknown" => {
                let raw = get("raw")
                    .and_then(|v| v.as_bytes().cloned())
                    .unwrap_or_default();
                return self.embedded(&raw, path);
            }
            _ => {}
        }
        let info = self
            .schema
            .messages
            .get(name)
            .ok_or_else(|| ProtobufError::Schema(format!("no Go facts for {name}")))?;
        if info.slice {
            // a Go named slice: nil (no items) is null
            let items = get("items").map(|v| v.into_owned());
            return match items {
                Some(PValue::List(items)) if !items.is_empty() => {
                    let out = items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            self.value(v, &format!("{path}[{i}]"))
                                .map(|v| v.unwrap_or(Value::Null))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Some(Value::Array(out)))
                }
                _ => Ok(None),
            };
        }
        let mut object = Map::new();
        for field in desc.fields() {
            let go = info.fields.get(&field.number()).ok_or_else(|| {
                ProtobufError::Schema(format!("no Go facts for {name}.{}", field.name()))
            })?;
            if go.skip {
                continue;
            }
            let field_path = if go.inline {
                path.to_string()
            } else {
                join(path, &go.json)
            };
            let present = msg.has_field(&field);
            let value = msg.get_field(&field);
            let json = match value.as_ref() {
                // nil slices and maps are null in Go; empty ones never come out of a decoder
                PValue::List(items) => {
                    if items.is_empty() {
                        continue;
                    }
                    let out = items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            self.value(v, &format!("{field_path}[{i}]"))
                                .map(|v| v.unwrap_or(Value::Null))
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Some(Value::Array(out))
                }
                PValue::Map(entries) => {
                    if entries.is_empty() {
                        continue;
                    }
                    let mut out = Map::new();
                    for (key, v) in entries {
                        let key = map_key(key);
                        let v = self.value(v, &format!("{field_path}[{key}]"))?;
                        out.insert(key, v.unwrap_or(Value::Null));
                    }
                    Some(Value::Object(out))
                }
                PValue::Message(m) => {
                    if go.pointer && !present {
                        continue;
                    }
                    // a non-pointer struct is always written (omitempty has no effect on it)
                    let v = self.message(m, &field_path)?;
                    if go.omitempty
                        && self
                            .schema
                            .messages
                            .get(m.descriptor().full_name())
                            .is_some_and(|i| i.slice)
                        && v.is_none()
                    {
                        continue;
                    }
                    v
                }
                scalar => {
                    if go.pointer && !present {
                        continue;
                    }
                    if !go.pointer && go.omitempty && is_zero(scalar) {
                        continue;
                    }
                    self.value(scalar, &field_path)?
                }
            };
            match json {
                None => {}
                Some(Value::Object(inner)) if go.inline => object.extend(inner),
                Some(v) => {
                    object.insert(go.json.clone(), v);
                }
            }
        }
        Ok(Some(Value::Object(object)))
    }

    /// The JSON of one (non-repeated) value.
    fn value(&self, v: &PValue, path: &str) -> Result<Option<Value>, ProtobufError> {
        Ok(Some(match v {
            PValue::Bool(b) => Value::Bool(*b),
            PValue::I32(n) => Value::from(*n),
            PValue::I64(n) => Value::from(*n),
            PValue::U32(n) => Value::from(*n),
            PValue::U64(n) => Value::from(*n),
            PValue::F32(f) => {
                float(f64::from(*f)).ok_or_else(|| self.invalid(path, "not a finite number"))?
            }
            PValue::F64(f) => float(*f).ok_or_else(|| self.invalid(path, "not a finite number"))?,
            PValue::String(s) => Value::String(s.clone()),
            PValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
            PValue::EnumNumber(n) => Value::from(*n),
            PValue::Message(m) => return self.message(m, path),
            PValue::List(_) | PValue::Map(_) => {
                return Err(self.invalid(path, "a list or map nested directly in a list or map"))
            }
        }))
    }

    /// An embedded object (`RawExtension`): JSON as is, or a protobuf body decoded in turn.
    fn embedded(&self, raw: &[u8], path: &str) -> Result<Option<Value>, ProtobufError> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.starts_with(MAGIC) {
            return decode_at(raw, self.depth + 1).map(|d| Some(d.object));
        }
        serde_json::from_slice(raw).map(Some).map_err(|e| {
            self.invalid(
                path,
                format!("the embedded object is neither JSON nor a Kubernetes protobuf body: {e}"),
            )
        })
    }
}

fn float(f: f64) -> Option<Value> {
    serde_json::Number::from_f64(f).map(Value::Number)
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

/// Go's zero value of a scalar (what `omitempty` leaves out).
fn is_zero(v: &PValue) -> bool {
    match v {
        PValue::Bool(b) => !b,
        PValue::I32(n) => *n == 0,
        PValue::I64(n) => *n == 0,
        PValue::U32(n) => *n == 0,
        PValue::U64(n) => *n == 0,
        PValue::F32(f) => *f == 0.0,
        PValue::F64(f) => *f == 0.0,
        PValue::String(s) => s.is_empty(),
        PValue::Bytes(b) => b.is_empty(),
        PValue::EnumNumber(n) => *n == 0,
        PValue::Message(_) | PValue::List(_) | PValue::Map(_) => false,
    }
}
