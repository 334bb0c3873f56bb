//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`) decoded into the
//! JSON form of the object, so the rest of the apiserver only ever sees JSON.
//!
//! kubectl's typed clients (`kubectl create namespace|deployment|configmap|secret|…`) send
//! protobuf. A body is the magic `k8s\0` followed by a `runtime.Unknown` envelope whose `raw`
//! field holds the object's message. The wire format is read generically; what each field means
//! comes from the generated table in `protobuf_schema.rs` (`cargo xtask gen-protobuf-schema`).
//!
//! Field presence follows Go's encoder: it writes every non-pointer field, zero or not, and
//! pointer fields only when set. So a field on the wire is emitted even when zero
//! (`replicas: 0` survives), and an absent field is left out. Two exceptions follow what Go's
//! JSON would say about the same struct: an empty singular string and an empty (zero) `Time`
//! are left out, since Go writes them for every unset non-pointer field.

use base64::Engine as _;
use serde_json::{Map, Number, Value};

#[path = "protobuf_schema.rs"]
pub(crate) mod schema;

/// The bytes before every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// Nesting deeper than any Kubernetes type (Deployment → … → container → probe is ~10) means
/// the input is hostile; stop before the stack is at risk.
const MAX_DEPTH: usize = 64;

/// What a field's value is, and so how its bytes become JSON.
#[derive(Clone, Copy)]
pub(crate) enum Ty {
    Str,
    Bool,
    I32,
    I64,
    // The decoder handles every type the generator can emit; today's roots reach no double.
    #[allow(
        dead_code,
        reason = "no message in the current table has a double field"
    )]
    F64,
    /// JSON has no bytes: base64, as Go's encoding/json writes `[]byte`.
    Bytes,
    Msg(&'static Message),
    /// `meta.v1.Time`: RFC 3339, whole seconds, UTC.
    Time,
    /// `meta.v1.MicroTime`: RFC 3339 with microseconds, UTC.
    MicroTime,
    /// `meta.v1.Duration`: Go's `time.Duration` string ("1h0m0s").
    #[allow(
        dead_code,
        reason = "no message in the current table has a Duration field"
    )]
    Duration,
    /// `api.resource.Quantity`: its canonical string.
    Quantity,
    /// `util.intstr.IntOrString`: a JSON number or string.
    IntOrString,
    /// A message of repeated strings at tag 1 that Go types as `[]string` (`ExtraValue`).
    StringList,
    /// `runtime.RawExtension`, `meta.v1.FieldsV1`: a field holding JSON bytes.
    RawJson,
}

/// How often a field occurs.
#[derive(Clone, Copy)]
pub(crate) enum Card {
    One,
    /// A sub-message Go embeds with `json:",inline"`: its fields go into the parent object.
    Inline,
    Repeated,
    /// Repeated `{key = 1, value = 2}` entries (the key's type is given) → a JSON object.
    Map(Ty),
}

pub(crate) struct Field {
    pub(crate) tag: u32,
    /// The JSON key.
    pub(crate) name: &'static str,
    pub(crate) card: Card,
    pub(crate) ty: Ty,
}

impl Field {
    /// Keeps each row of the generated table on one line.
    pub(crate) const fn new(tag: u32, name: &'static str, card: Card, ty: Ty) -> Field {
        Field {
            tag,
            name,
            card,
            ty,
        }
    }
}

pub(crate) struct Message {
    /// Full proto name, for error messages.
    pub(crate) name: &'static str,
    /// In declaration order: Go's struct order, in which kube-apiserver writes JSON.
    pub(crate) fields: &'static [Field],
    /// JSON names the OpenAPI schema requires (Go fields without `omitempty`), which
    /// kube-apiserver always writes, as their zero value if unset.
    pub(crate) required: &'static [&'static str],
}

/// Decode a Kubernetes protobuf body ("k8s\0" magic + runtime.Unknown envelope {typeMeta=1
/// {apiVersion=1, kind=2}, raw=2 bytes, contentEncoding=3, contentType=4}) into the object's
/// JSON form, with "apiVersion" and "kind" set from the envelope.
pub fn decode(body: &[u8]) -> Result<serde_json::Value, String> {
    decode_at(body, 0)
}

fn decode_at(body: &[u8], depth: usize) -> Result<Value, String> {
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err("not a Kubernetes protobuf body (no k8s\\0 prefix)".into());
    };
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut encoding = String::new();
    let mut content_type = String::new();
    let mut r = Reader::new(envelope);
    while let Some((tag, wire)) = r.key()? {
        match (tag, wire) {
            (1, LEN) => {
                let mut tm = Reader::new(r.bytes()?);
                while let Some((tag, wire)) = tm.key()? {
                    match (tag, wire) {
                        (1, LEN) => api_version = utf8(tm.bytes()?),
                        (2, LEN) => kind = utf8(tm.bytes()?),
                        _ => tm.skip(tag, wire)?,
                    }
                }
            }
            (2, LEN) => raw = r.bytes()?,
            (3, LEN) => encoding = utf8(r.bytes()?),
            (4, LEN) => content_type = utf8(r.bytes()?),
            (1..=4, _) => return Err(format!("envelope field {tag} has wire type {wire}")),
            _ => r.skip(tag, wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(format!("unsupported contentEncoding {encoding:?}"));
    }
    if !content_type.is_empty() && content_type != "application/vnd.kubernetes.protobuf" {
        return Err(format!(
            "unsupported contentType {content_type:?} in the envelope"
        ));
    }
    if kind.is_empty() {
        return Err("the envelope names no kind".into());
    }
    let gvk = format!("{api_version}/{kind}");
    let root = schema::ROOTS
        .iter()
        .find(|(k, _)| *k == gvk)
        .or_else(|| schema::ANY_GROUP.iter().find(|(k, _)| *k == kind))
        .map(|(_, m)| *m)
        .ok_or_else(|| format!("no protobuf schema for {gvk}; send JSON instead"))?;
    let mut obj = message(raw, root, depth + 1)?;
    obj.insert("apiVersion".into(), Value::String(api_version));
    obj.insert("kind".into(), Value::String(kind));
    Ok(Value::Object(obj))
}

// Wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const SGROUP: u8 = 3;
const EGROUP: u8 = 4;
const I32: u8 = 5;

/// A cursor over protobuf wire data; every read is bounds-checked and fails instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let Some((&b, rest)) = self.buf.split_first() else {
                return Err("truncated varint".into());
            };
            self.buf = rest;
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && b > 1 {
                return Err("varint overflows 64 bits".into());
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!(
                "truncated: {n} bytes announced, {} left",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn fixed64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().map_err(|_| "fixed64")?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| "length does not fit in memory")?;
        self.take(len)
    }

    /// The next field's (tag, wire type); `None` at the end of the message.
    fn key(&mut self) -> Result<Option<(u32, u8)>, String> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "field number out of range")?;
        if tag == 0 {
            return Err("field number 0".into());
        }
        Ok(Some((tag, (key & 7) as u8)))
    }

    /// Skip a field this schema does not know (newer servers' fields, or fields we ignore).
    fn skip(&mut self, tag: u32, wire: u8) -> Result<(), String> {
        match wire {
            VARINT => self.varint().map(drop),
            I64 => self.take(8).map(drop),
            LEN => self.bytes().map(drop),
            I32 => self.take(4).map(drop),
            // Deprecated groups: Kubernetes never writes them, but they are valid wire data.
            // Skipped without recursion by counting nesting until the matching end.
            SGROUP => {
                let mut open = vec![tag];
                while let Some(&want) = open.last() {
                    let (t, w) = self.key()?.ok_or("unterminated group")?;
                    match w {
                        SGROUP if open.len() < MAX_DEPTH => open.push(t),
                        SGROUP => return Err("groups nested too deep".into()),
                        EGROUP if t == want => {
                            open.pop();
                        }
                        EGROUP => return Err("mismatched end of group".into()),
                        _ => self.skip(t, w)?,
                    }
                }
                Ok(())
            }
            EGROUP => Err("end of group without a start".into()),
            _ => Err(format!("invalid wire type {wire}")),
        }
    }
}

/// Go does not check UTF-8 when it decodes protobuf and replaces bad bytes when it writes
/// JSON; do the same rather than reject the body.
fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn message(buf: &[u8], msg: &'static Message, depth: usize) -> Result<Map<String, Value>, String> {
    if depth > MAX_DEPTH {
        return Err("message nesting too deep".into());
    }
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while let Some((tag, wire)) = r.key()? {
        let Some(field) = msg.fields.iter().find(|f| f.tag == tag) else {
            r.skip(tag, wire)?;
            continue;
        };
        let err = |e: String| format!("{}.{}: {e}", msg.name, field.name);
        match field.card {
            Card::One => {
                // Last one wins, as for any proto scalar; Go never repeats a message field.
                match value(&mut r, wire, field.ty, depth).map_err(err)? {
                    // Go writes every non-pointer string, so the wire is full of `""` for
                    // fields nobody set (`nodeName`, `restartPolicy`, `strategy.type`, …).
                    // Go reads those as unset and its JSON omits them (omitempty); keeping them
                    // would make "" look like a value to code that tests for presence. Pointer
                    // strings, where "" could differ from unset, carry no such meaning in the
                    // API (an empty name, policy or class is invalid or means the default).
                    Some(Value::String(s)) if s.is_empty() && matches!(field.ty, Ty::Str) => {
                        out.remove(field.name)
                    }
                    Some(v) => out.insert(field.name.to_string(), v),
                    None => out.remove(field.name),
                };
            }
            Card::Inline => {
                if let Some(Value::Object(inner)) =
                    value(&mut r, wire, field.ty, depth).map_err(err)?
                {
                    out.extend(inner);
                }
            }
            Card::Repeated => {
                let list = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(list) = list else {
                    unreachable!("only arrays are stored under repeated fields")
                };
                if wire == LEN && is_numeric(field.ty) {
                    // A packed run of numbers (Go writes them unpacked; proto3 writers pack).
                    let mut packed = Reader::new(r.bytes().map_err(err)?);
                    while !packed.buf.is_empty() {
                        let wire = if matches!(field.ty, Ty::F64) {
                            I64
                        } else {
                            VARINT
                        };
                        if let Some(v) = value(&mut packed, wire, field.ty, depth).map_err(err)? {
                            list.push(v);
                        }
                    }
                } else {
                    // A repeated element is always there, even if it is a zero timestamp.
                    let v = value(&mut r, wire, field.ty, depth).map_err(err)?;
                    list.push(v.unwrap_or(Value::Null));
                }
            }
            Card::Map(key_ty) => {
                if wire != LEN {
                    return Err(err(format!("map entry has wire type {wire}")));
                }
                let (k, v) =
                    map_entry(r.bytes().map_err(err)?, key_ty, field.ty, depth).map_err(err)?;
                let map = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                let Value::Object(map) = map else {
                    unreachable!("only objects are stored under map fields")
                };
                map.insert(k, v);
            }
        }
    }
    Ok(out)
}

fn is_numeric(ty: Ty) -> bool {
    matches!(ty, Ty::Bool | Ty::I32 | Ty::I64 | Ty::F64)
}

/// One `{key = 1, value = 2}` entry; a missing half is its type's zero value, as in proto.
fn map_entry(buf: &[u8], key_ty: Ty, val_ty: Ty, depth: usize) -> Result<(String, Value), String> {
    let mut key = None;
    let mut val = None;
    let mut r = Reader::new(buf);
    while let Some((tag, wire)) = r.key()? {
        match tag {
            1 => key = value(&mut r, wire, key_ty, depth)?,
            2 => val = value(&mut r, wire, val_ty, depth)?,
            _ => r.skip(tag, wire)?,
        }
    }
    let key = match key {
        Some(Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok((key, val.unwrap_or_else(|| zero(val_ty))))
}

fn zero(ty: Ty) -> Value {
    match ty {
        Ty::Str | Ty::Bytes => Value::String(String::new()),
        Ty::Bool => Value::Bool(false),
        Ty::I32 | Ty::I64 | Ty::F64 | Ty::IntOrString => Value::from(0),
        Ty::Msg(_) => Value::Object(Map::new()),
        Ty::Quantity => Value::String("0".into()),
        Ty::Duration => Value::String("0s".into()),
        Ty::Time | Ty::MicroTime | Ty::RawJson => Value::Null,
        Ty::StringList => Value::Array(Vec::new()),
    }
}

/// A message of strings at tag 1 (`ExtraValue`) as the JSON array Go writes for it.
fn string_list(buf: &[u8]) -> Result<Value, String> {
    let mut items = Vec::new();
    let mut l = Reader::new(buf);
    while let Some((tag, wire)) = l.key()? {
        match (tag, wire) {
            (1, LEN) => items.push(Value::String(utf8(l.bytes()?))),
            _ => l.skip(tag, wire)?,
        }
    }
    Ok(Value::Array(items))
}

/// One value of type `ty`. `None` means "as if absent": a zero `Time` (Go writes an empty
/// message for it and reads it back as the zero time, which JSON has no form for but `null`).
fn value(r: &mut Reader<'_>, wire: u8, ty: Ty, depth: usize) -> Result<Option<Value>, String> {
    let expected = match ty {
        Ty::Bool | Ty::I32 | Ty::I64 => VARINT,
        Ty::F64 => I64,
        _ => LEN,
    };
    if wire != expected {
        return Err(format!("wire type {wire}, expected {expected}"));
    }
    Ok(Some(match ty {
        Ty::Str => Value::String(utf8(r.bytes()?)),
        Ty::Bool => Value::Bool(r.varint()? != 0),
        // int32 is sent sign-extended to 64 bits; the low half is the value.
        Ty::I32 => Value::from(r.varint()? as i32),
        Ty::I64 => Value::from(r.varint()? as i64),
        Ty::F64 => {
            let f = f64::from_bits(r.fixed64()?);
            Value::Number(Number::from_f64(f).ok_or("NaN or infinite double")?)
        }
        Ty::Bytes => Value::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
        Ty::Msg(m) => Value::Object(message(r.bytes()?, m, depth + 1)?),
        Ty::Time | Ty::MicroTime => {
            let buf = r.bytes()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let (mut seconds, mut nanos) = (0i64, 0i32);
            let mut t = Reader::new(buf);
            while let Some((tag, wire)) = t.key()? {
                match (tag, wire) {
                    (1, VARINT) => seconds = t.varint()? as i64,
                    (2, VARINT) => nanos = t.varint()? as i32,
                    _ => t.skip(tag, wire)?,
                }
            }
            Value::String(format_time(seconds, nanos, matches!(ty, Ty::MicroTime))?)
        }
        Ty::Duration => {
            let mut ns = 0i64;
            let mut d = Reader::new(r.bytes()?);
            while let Some((tag, wire)) = d.key()? {
                match (tag, wire) {
                    (1, VARINT) => ns = d.varint()? as i64,
                    _ => d.skip(tag, wire)?,
                }
            }
            Value::String(go_duration(ns))
        }
        Ty::Quantity => {
            let mut s = String::from("0");
            let mut q = Reader::new(r.bytes()?);
            while let Some((tag, wire)) = q.key()? {
                match (tag, wire) {
                    (1, LEN) => s = utf8(q.bytes()?),
                    _ => q.skip(tag, wire)?,
                }
            }
            Value::String(s)
        }
        Ty::StringList => string_list(r.bytes()?)?,
        Ty::IntOrString => {
            let (mut kind, mut int, mut string) = (0i64, 0i32, String::new());
            let mut v = Reader::new(r.bytes()?);
            while let Some((tag, wire)) = v.key()? {
                match (tag, wire) {
                    (1, VARINT) => kind = v.varint()? as i64,
                    (2, VARINT) => int = v.varint()? as i32,
                    (3, LEN) => string = utf8(v.bytes()?),
                    _ => v.skip(tag, wire)?,
                }
            }
            // type 1 is intstr.String; anything else reads as an int, as Go's MarshalJSON does.
            if kind == 1 {
                Value::String(string)
            } else {
                Value::from(int)
            }
        }
        Ty::RawJson => {
            let mut raw: &[u8] = &[];
            let mut x = Reader::new(r.bytes()?);
            while let Some((tag, wire)) = x.key()? {
                match (tag, wire) {
                    (1, LEN) => raw = x.bytes()?,
                    _ => x.skip(tag, wire)?,
                }
            }
            if raw.is_empty() {
                return Ok(None);
            }
            if raw.starts_with(MAGIC) {
                // An embedded object serialized as protobuf itself.
                decode_at(raw, depth + 1)?
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| format!("embedded raw value is not JSON: {e}"))?
            }
        }
    }))
}

/// `metav1.Time` / `MicroTime` as their MarshalJSON writes them (always UTC).
fn format_time(seconds: i64, nanos: i32, micro: bool) -> Result<String, String> {
    let t = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 })
        .map_err(|e| format!("time out of range: {e}"))?;
    let format = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    Ok(t.strftime(format).to_string())
}

/// Go's `time.Duration.String()`: "0s", "1.5µs", "20ms", "1m30s", "1h0m0s".
fn go_duration(ns: i64) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    if u == 0 {
        return "0s".into();
    }
    // The integer part of v / 10^prec and its fraction without trailing zeros.
    let split = |v: u64, prec: u32| -> (u64, String) {
        let p = 10u64.pow(prec);
        let frac = v % p;
        if frac == 0 {
            return (v / p, String::new());
        }
        let digits = format!("{frac:0width$}", width = prec as usize);
        (v / p, format!(".{}", digits.trim_end_matches('0')))
    };
    if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (int, frac) = split(u, prec);
        return format!("{sign}{int}{frac}{unit}");
    }
    let (secs, frac) = split(u, 9);
    let (mins, secs) = (secs / 60, secs % 60);
    let mut out = sign.to_string();
    if mins > 0 {
        let (hours, mins) = (mins / 60, mins % 60);
        if hours > 0 {
            out.push_str(&format!("{hours}h"));
        }
        out.push_str(&format!("{mins}m"));
    }
    out.push_str(&format!("{secs}{frac}s"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A minimal protobuf writer, enough to build bodies the way Go's encoder lays them out.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    impl Enc {
        fn new() -> Enc {
            Enc::default()
        }
        fn key(mut self, tag: u32, wire: u8) -> Enc {
            put_varint(&mut self.0, (u64::from(tag) << 3) | u64::from(wire));
            self
        }
        fn int(self, tag: u32, v: i64) -> Enc {
            let mut e = self.key(tag, VARINT);
            put_varint(&mut e.0, v as u64);
            e
        }
        fn bytes(self, tag: u32, b: &[u8]) -> Enc {
            let mut e = self.key(tag, LEN);
            put_varint(&mut e.0, b.len() as u64);
            e.0.extend_from_slice(b);
            e
        }
        fn str(self, tag: u32, s: &str) -> Enc {
            self.bytes(tag, s.as_bytes())
        }
        fn raw(mut self, b: &[u8]) -> Enc {
            self.0.extend_from_slice(b);
            self
        }
        fn msg(self, tag: u32, m: Enc) -> Enc {
            self.bytes(tag, &m.0)
        }
        /// A map entry {key = 1, value = 2} with a string key.
        fn entry(self, tag: u32, k: &str, v: &[u8]) -> Enc {
            self.msg(tag, Enc::new().str(1, k).bytes(2, v))
        }
    }

    /// "k8s\0" + runtime.Unknown, with the empty contentEncoding/contentType Go always writes.
    fn body(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
        let unknown = Enc::new()
            .msg(1, Enc::new().str(1, api_version).str(2, kind))
            .msg(2, raw)
            .str(3, "")
            .str(4, "");
        [MAGIC, &unknown.0].concat()
    }

    /// ObjectMeta as Go writes it: every non-pointer field, set or not.
    fn meta(name: &str, labels: &[(&str, &str)]) -> Enc {
        let mut m = Enc::new()
            .str(1, name)
            .str(2, "")
            .str(3, "")
            .str(4, "")
            .str(5, "")
            .str(6, "")
            .int(7, 0)
            .msg(8, Enc::new());
        for (k, v) in labels {
            m = m.entry(11, k, v.as_bytes());
        }
        m
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn namespace() {
        let ns = Enc::new()
            .msg(1, meta("x", &[]))
            .msg(2, Enc::new())
            .msg(3, Enc::new().str(1, ""));
        assert_eq!(
            decode(&body("v1", "Namespace", ns)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "x", "generation": 0}, "spec": {}, "status": {}})
        );
    }

    #[test]
    fn configmap_with_data() {
        let cm = Enc::new()
            .msg(1, meta("cfg", &[]))
            .entry(2, "a", b"1")
            .entry(2, "empty", b"")
            .entry(3, "bin", &[0, 1, 2]);
        assert_eq!(
            decode(&body("v1", "ConfigMap", cm)).unwrap(),
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "cfg", "generation": 0},
                   "data": {"a": "1", "empty": ""}, "binaryData": {"bin": "AAEC"}})
        );
    }

    #[test]
    fn secret_bytes_become_base64() {
        let secret = Enc::new()
            .msg(1, meta("s", &[]))
            .entry(2, "password", b"hunter2")
            .str(3, "Opaque")
            .int(5, 0);
        assert_eq!(
            decode(&body("v1", "Secret", secret)).unwrap(),
            json!({"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "s", "generation": 0},
                   "data": {"password": "aHVudGVyMg=="}, "type": "Opaque", "immutable": false})
        );
    }

    /// `kubectl create deployment kubia --image=kubia:v1 --replicas=3 --port=8080`, reduced to
    /// the fields that matter.
    #[test]
    fn deployment() {
        let labels = [("app", "kubia")];
        let container = Enc::new()
            .str(1, "kubia")
            .str(2, "kubia:v1")
            .msg(6, Enc::new().str(1, "").int(2, 0).int(3, 8080).str(4, ""))
            .msg(8, Enc::new());
        let template = Enc::new()
            .msg(1, meta("", &labels))
            .msg(2, Enc::new().msg(2, container).str(3, ""));
        let spec = Enc::new()
            .int(1, 3)
            .msg(2, Enc::new().entry(1, "app", b"kubia"))
            .msg(3, template)
            .msg(4, Enc::new().str(1, ""))
            .int(5, 0)
            .int(7, 0);
        let d = Enc::new().msg(1, meta("kubia", &labels)).msg(2, spec);
        assert_eq!(
            decode(&body("apps/v1", "Deployment", d)).unwrap(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "kubia", "generation": 0, "labels": {"app": "kubia"}},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": {"app": "kubia"}},
                    "template": {
                        "metadata": {"generation": 0, "labels": {"app": "kubia"}},
                        "spec": {"containers": [{
                            "name": "kubia", "image": "kubia:v1",
                            "ports": [{"containerPort": 8080, "hostPort": 0}],
                            "resources": {}
                        }]}
                    },
                    "strategy": {},
                    "minReadySeconds": 0,
                    "paused": false
                }
            })
        );
    }

    /// Bodies captured from kubectl 1.33 (`-v=10` hex-dumps them).
    #[test]
    fn real_kubectl_bodies() {
        let deploy = decode(&hex(
            "6b3873000a150a07617070732f7631120a4465706c6f796d656e7412c4010a230a056b75626961120\
             01a0022002a003200380042005a0c0a0361707012056b75626961128e010803120e0a0c0a036170701\
             2056b756269611a720a1e0a0012001a0022002a003200380042005a0c0a0361707012056b756269611\
             25012320a056b7562696112086b756269613a76312a00320b0a00100018903f22002a0042006a00720\
             0800100880100900100a201001a00320042004a0052005800600068008201008a01009a0100c201002\
             2020a00280038001a0c0800100018002000280038001a002200",
        ))
        .unwrap();
        assert_eq!(deploy["spec"]["replicas"], 3);
        assert_eq!(
            deploy["spec"]["selector"],
            json!({"matchLabels": {"app": "kubia"}})
        );
        assert_eq!(deploy["spec"]["strategy"], json!({}));
        let container = &deploy["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["name"], "kubia");
        assert_eq!(container["image"], "kubia:v1");
        assert_eq!(container["ports"][0]["containerPort"], 8080);
        assert_eq!(container["resources"], json!({}));
        assert!(container.get("imagePullPolicy").is_none());
        assert_eq!(deploy["status"]["replicas"], 0);

        let ns = decode(&hex(
            "6b3873000a0f0a02763112094e616d65737061636512190a110a017812001a0022002a00320038004\
             20012001a020a001a002200",
        ))
        .unwrap();
        assert_eq!(
            ns,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": "x", "generation": 0}, "spec": {}, "status": {}})
        );

        let cm = decode(&hex(
            "6b3873000a0f0a0276311209436f6e6669674d617012270a130a0363666712001a0022002a0032003\
             800420012060a016112013112080a0162120374776f1a002200",
        ))
        .unwrap();
        assert_eq!(cm["data"], json!({"a": "1", "b": "two"}));

        let secret = decode(&hex(
            "6b3873000a0c0a0276311206536563726574122a0a110a017312001a0022002a00320038004200121\
             30a0870617373776f7264120768756e746572321a001a002200",
        ))
        .unwrap();
        assert_eq!(secret["data"], json!({"password": "aHVudGVyMg=="}));
        assert_eq!(secret["metadata"]["name"], "s");
    }

    /// `kubectl auth can-i` posts reviews; a subject's extras are `ExtraValue` messages in
    /// proto and plain string lists in JSON.
    #[test]
    fn access_reviews_decode_with_extras_as_lists() {
        let attrs = Enc::new().str(1, "foo").str(2, "list").str(5, "services");
        let spec = Enc::new().msg(1, attrs).str(3, "alice").str(4, "devs").msg(
            5,
            Enc::new()
                .str(1, "scopes")
                .msg(2, Enc::new().str(1, "view").str(1, "edit")),
        );
        let sar = Enc::new().msg(1, Enc::new()).msg(2, spec);
        let body = body("authorization.k8s.io/v1", "SubjectAccessReview", sar);
        let sar = decode(&body).unwrap();
        assert_eq!(sar["kind"], "SubjectAccessReview");
        assert_eq!(
            sar["spec"],
            json!({"resourceAttributes": {"namespace": "foo", "verb": "list", "resource": "services"},
                "user": "alice", "groups": ["devs"], "extra": {"scopes": ["view", "edit"]}})
        );
    }

    #[test]
    fn special_types() {
        let time = |s: i64, n: i64| Enc::new().int(1, s).int(2, n);
        let pod = Enc::new()
            .msg(
                1,
                meta("p", &[]).msg(9, time(1_767_225_600, 500)).int(10, 0),
            )
            .msg(
                2,
                Enc::new().msg(
                    2,
                    Enc::new().str(1, "c").msg(
                        8,
                        Enc::new()
                            .msg(
                                1,
                                Enc::new().str(1, "cpu").msg(2, Enc::new().str(1, "100m")),
                            )
                            // A map entry whose value is missing gets the zero Quantity.
                            .msg(1, Enc::new().str(1, "memory"))
                            .msg(2, Enc::new().str(1, "cpu").msg(2, Enc::new().str(1, "1"))),
                    ),
                ),
            );
        let pod = decode(&body("v1", "Pod", pod)).unwrap();
        // Time: whole seconds, UTC; an empty Time (creationTimestamp) is left out.
        assert_eq!(pod["metadata"]["deletionTimestamp"], "2026-01-01T00:00:00Z");
        assert!(pod["metadata"].get("creationTimestamp").is_none());
        // A pointer int set to 0 survives.
        assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 0);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "100m", "memory": "0"})
        );
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["requests"],
            json!({"cpu": "1"})
        );

        // IntOrString, both ways; an inlined ProbeHandler lands in the probe itself.
        let port = |v: Enc| Enc::new().str(1, "http").int(3, 80).msg(4, v);
        let svc = Enc::new().msg(
            2,
            Enc::new()
                .msg(1, port(Enc::new().int(1, 0).int(2, 8080).str(3, "")))
                .msg(1, port(Enc::new().int(1, 1).int(2, 0).str(3, "web"))),
        );
        let svc = decode(&body("v1", "Service", svc)).unwrap();
        assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(svc["spec"]["ports"][1]["targetPort"], "web");

        let probe = Enc::new()
            .msg(
                1,
                Enc::new().msg(
                    2,
                    Enc::new()
                        .str(1, "/healthz")
                        .msg(2, Enc::new().int(1, 0).int(2, 8080)),
                ),
            )
            .int(3, 1);
        let pod = Enc::new().msg(2, Enc::new().msg(2, Enc::new().str(1, "c").msg(10, probe)));
        let pod = decode(&body("v1", "Pod", pod)).unwrap();
        assert_eq!(
            pod["spec"]["containers"][0]["livenessProbe"],
            json!({"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 1})
        );

        // MicroTime keeps microseconds.
        let lease = Enc::new().msg(
            2,
            Enc::new()
                .str(1, "me")
                .msg(4, time(1_767_225_600, 123_456_789)),
        );
        let lease = decode(&body("coordination.k8s.io/v1", "Lease", lease)).unwrap();
        assert_eq!(lease["spec"]["renewTime"], "2026-01-01T00:00:00.123456Z");
        assert_eq!(lease["spec"]["holderIdentity"], "me");
    }

    #[test]
    fn fields_v1_embeds_json() {
        let mf = Enc::new()
            .str(1, "kubectl")
            .msg(7, Enc::new().bytes(1, br#"{"f:metadata":{}}"#));
        let ns = Enc::new().msg(1, meta("x", &[]).msg(17, mf));
        let ns = decode(&body("v1", "Namespace", ns)).unwrap();
        assert_eq!(
            ns["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:metadata": {}})
        );
        // Garbage inside the raw bytes is an error, not a panic.
        let mf = Enc::new().msg(7, Enc::new().bytes(1, b"{not json"));
        let ns = Enc::new().msg(1, meta("x", &[]).msg(17, mf));
        assert!(decode(&body("v1", "Namespace", ns)).is_err());
    }

    #[test]
    fn delete_options_from_any_group() {
        for api_version in ["v1", "apps/v1", "meta.k8s.io/v1"] {
            let opts = Enc::new().int(1, 0).str(4, "Foreground").str(5, "All");
            let v = decode(&body(api_version, "DeleteOptions", opts)).unwrap();
            assert_eq!(v["gracePeriodSeconds"], 0);
            assert_eq!(v["propagationPolicy"], "Foreground");
            assert_eq!(v["dryRun"], json!(["All"]));
            assert_eq!(v["apiVersion"], api_version);
        }
    }

    #[test]
    fn unknown_fields_packed_and_negative_numbers() {
        let ns = Enc::new()
            .msg(1, meta("x", &[]).int(10, -5))
            .int(99, 7)
            .str(98, "future field")
            .key(97, I32)
            .raw(&[1, 2, 3, 4])
            .key(96, I64)
            .raw(&[0; 8])
            .msg(2, Enc::new().str(1, "kubernetes"));
        let v = decode(&body("v1", "Namespace", ns)).unwrap();
        // int64 -5 is ten bytes of sign-extended varint.
        assert_eq!(v["metadata"]["deletionGracePeriodSeconds"], -5);
        assert_eq!(v["spec"]["finalizers"], json!(["kubernetes"]));

        // A packed run of int32 (proto3 writers pack; Go's k8s encoder does not) and the
        // unpacked form mixed, as a parser must accept both.
        let mut packed = Vec::new();
        for n in [1u64, 2, 300] {
            put_varint(&mut packed, n);
        }
        let req = Enc::new()
            .str(1, "c")
            .str(2, "In")
            .bytes(3, &packed)
            .int(3, -1);
        let job = Enc::new().msg(
            2,
            Enc::new().msg(
                11,
                Enc::new().msg(1, Enc::new().str(1, "FailJob").msg(2, req)),
            ),
        );
        let v = decode(&body("batch/v1", "Job", job)).unwrap();
        assert_eq!(
            v["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"],
            json!({"containerName": "c", "operator": "In", "values": [1, 2, 300, -1]})
        );
    }

    #[test]
    fn errors() {
        assert!(decode(b"").is_err());
        assert!(decode(b"{\"kind\":\"Pod\"}").is_err());
        assert!(decode(MAGIC).is_err(), "no kind");
        let unknown_kind = body("v1", "Widget", Enc::new());
        assert!(decode(&unknown_kind).unwrap_err().contains("v1/Widget"));
        // Wrong wire type for a known field.
        let bad = Enc::new().msg(2, Enc::new().int(1, 3).int(2, 1));
        assert!(decode(&body("apps/v1", "Deployment", bad)).is_err());
        // Truncated anywhere.
        let full = body(
            "v1",
            "Namespace",
            Enc::new().msg(1, meta("x", &[("a", "b")])),
        );
        for n in 0..full.len() {
            let _ = decode(&full[..n]);
        }
        assert!(decode(&full[..full.len() - 1]).is_err());
        // Nested protobuf RawExtension/fieldsV1 bodies cannot recurse without bound.
        let mut deep = body("v1", "Namespace", Enc::new());
        for _ in 0..200 {
            let mf = Enc::new().msg(7, Enc::new().bytes(1, &deep));
            deep = body("v1", "Namespace", Enc::new().msg(1, Enc::new().msg(17, mf)));
        }
        assert!(decode(&deep).unwrap_err().contains("deep"));
        // Groups nested past the limit.
        let mut groups = Enc::new();
        for _ in 0..100 {
            groups = groups.key(50, SGROUP);
        }
        assert!(decode(&body("v1", "Namespace", groups)).is_err());
    }

    /// Random and mutated input never panics.
    #[test]
    fn fuzz_never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let real = hex(
            "6b3873000a0f0a0276311209436f6e6669674d617012270a130a0363666712001a0022002a0032003\
             800420012060a016112013112080a0162120374776f1a002200",
        );
        for i in 0..20_000 {
            let input: Vec<u8> = if i % 2 == 0 {
                let len = (rand() % 64) as usize;
                let mut b = MAGIC.to_vec();
                b.extend((0..len).map(|_| rand() as u8));
                b
            } else {
                let mut b = real.clone();
                for _ in 0..1 + rand() % 4 {
                    let at = 4 + (rand() as usize) % (b.len() - 4);
                    b[at] = rand() as u8;
                }
                b
            };
            let _ = decode(&input);
        }
    }

    #[test]
    fn go_durations() {
        for (ns, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (20_000_000, "20ms"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (-2_000_000_000, "-2s"),
        ] {
            assert_eq!(go_duration(ns), want);
        }
    }
}
