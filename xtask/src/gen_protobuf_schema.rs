//! `cargo xtask gen-protobuf-schema`: write `control/src/apiserver/protobuf_schema.rs`, the static
//! table the apiserver's protobuf request decoder walks.
//!
//! Two crates from the cargo registry are the sources, read as text (neither is a dependency):
//! - `k8s-pb`: prost code generated from the upstream `generated.proto` files. It gives every
//!   message, its fields' tags and wire types, and (through `impl crate::Resource`) the
//!   apiVersion/kind of top-level objects.
//! - `k8s-openapi`: its serde visitors hold the exact JSON keys (`"podIP" => Field::Key_pod_ip`).
//!   prost snake_cases names and loses the original casing (`podIP` → `pod_ip`,
//!   `serverAddressByClientCIDRs` → `server_address_by_client_cid_rs`), so the JSON name of a
//!   proto field is the k8s-openapi key of the same struct that is equal to it once both are
//!   lowercased without underscores. Only where k8s-openapi has no such struct or key does the
//!   generator fall back to lowerCamel of the snake name, and it lists every such fallback.
//!
//! - `k8s-openapi` also holds each type's OpenAPI schema (its `schemars` impls, compiled only
//!   with that feature but present in the source): the `"required"` lists of those become each
//!   message's `required` fields, the ones kube-apiserver always writes (Go fields without
//!   `omitempty`), which the apiserver fills with zero values when they are missing.
//!
//! Fields are emitted in prost's declaration order, which follows the `.proto` files and so Go's
//! struct order (not the tag order: `PodSpec` declares `volumes` (1), `initContainers` (20),
//! `containers` (2)): the apiserver writes JSON objects in that order, as kube-apiserver does.
//!
//! The table covers the transitive closure of [`ROOTS`] and [`RESPONSE_KINDS`]. Messages whose JSON form is not an
//! object (`Time`, `Quantity`, `IntOrString`, …) become dedicated types the decoder formats
//! itself; the generator checks their fields still look as the decoder expects.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::Workspace;

#[derive(clap::Args)]
pub struct Args {
    /// Source directory of the k8s-pb crate [default: newest $CARGO_HOME/registry/src/*/k8s-pb-*].
    #[arg(long)]
    k8s_pb: Option<PathBuf>,
    /// Source directory of the k8s-openapi crate [default: newest
    /// $CARGO_HOME/registry/src/*/k8s-openapi-*].
    #[arg(long)]
    k8s_openapi: Option<PathBuf>,
    /// File to write [default: control/src/apiserver/protobuf_schema.rs in the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The objects a request body may hold: (k8s-pb module, message, apiVersion of the envelope).
/// The kind is the message name.
const ROOTS: &[(&str, &str, &str)] = &[
    ("api.core.v1", "Namespace", "v1"),
    ("api.core.v1", "Pod", "v1"),
    ("api.core.v1", "Service", "v1"),
    ("api.core.v1", "Endpoints", "v1"),
    ("api.core.v1", "Node", "v1"),
    ("api.core.v1", "Event", "v1"),
    ("api.core.v1", "ConfigMap", "v1"),
    ("api.core.v1", "Secret", "v1"),
    ("api.core.v1", "ServiceAccount", "v1"),
    ("api.core.v1", "Binding", "v1"),
    ("api.apps.v1", "Deployment", "apps/v1"),
    ("api.apps.v1", "ReplicaSet", "apps/v1"),
    ("api.apps.v1", "DaemonSet", "apps/v1"),
    ("api.batch.v1", "Job", "batch/v1"),
    ("api.coordination.v1", "Lease", "coordination.k8s.io/v1"),
    ("api.discovery.v1", "EndpointSlice", "discovery.k8s.io/v1"),
    (
        "api.rbac.v1",
        "ClusterRoleBinding",
        "rbac.authorization.k8s.io/v1",
    ),
    ("api.rbac.v1", "ClusterRole", "rbac.authorization.k8s.io/v1"),
    ("api.rbac.v1", "RoleBinding", "rbac.authorization.k8s.io/v1"),
    ("api.rbac.v1", "Role", "rbac.authorization.k8s.io/v1"),
    (
        "api.certificates.v1",
        "CertificateSigningRequest",
        "certificates.k8s.io/v1",
    ),
    ("api.autoscaling.v1", "Scale", "autoscaling/v1"),
    // `serviceaccounts/token` and `kubectl auth whoami` post these.
    (
        "api.authentication.v1",
        "TokenRequest",
        "authentication.k8s.io/v1",
    ),
    (
        "api.authentication.v1",
        "SelfSubjectReview",
        "authentication.k8s.io/v1",
    ),
    // `kubectl auth can-i` (and `--list`) posts these; the others are their siblings.
    (
        "api.authorization.v1",
        "SubjectAccessReview",
        "authorization.k8s.io/v1",
    ),
    (
        "api.authorization.v1",
        "LocalSubjectAccessReview",
        "authorization.k8s.io/v1",
    ),
    (
        "api.authorization.v1",
        "SelfSubjectAccessReview",
        "authorization.k8s.io/v1",
    ),
    (
        "api.authorization.v1",
        "SelfSubjectRulesReview",
        "authorization.k8s.io/v1",
    ),
    (META_V1, "DeleteOptions", "meta.k8s.io/v1"),
];

const META_V1: &str = "apimachinery.pkg.apis.meta.v1";

/// Top-level kinds the apiserver only writes (never decodes): their field order and required
/// fields are needed for responses. Same shape as [`ROOTS`].
const RESPONSE_KINDS: &[(&str, &str, &str)] = &[
    (META_V1, "Status", "v1"),
    (META_V1, "PartialObjectMetadata", "meta.k8s.io/v1"),
    // Discovery. `APIResource.verbs` is a `Verbs` message in proto but a plain string array in
    // JSON; the writer passes a value that is not an object through as it is.
    (META_V1, "APIVersions", "v1"),
    (META_V1, "APIGroupList", "v1"),
    (META_V1, "APIGroup", "v1"),
    (META_V1, "APIResourceList", "v1"),
];

/// (tag, prost name, prost kind) of a field the decoder reads itself.
type ExpectedField = (u32, &'static str, &'static str);

/// Messages with a custom JSON form: full proto name → (decoder type, expected fields as
/// (tag, prost name, prost kind)). The check catches an upstream change the decoder would
/// silently misread.
const SPECIAL: &[(&str, &str, &[ExpectedField])] = &[
    (
        "apimachinery.pkg.apis.meta.v1.Time",
        "Time",
        &[(1, "seconds", "int64"), (2, "nanos", "int32")],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.MicroTime",
        "MicroTime",
        &[(1, "seconds", "int64"), (2, "nanos", "int32")],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.Duration",
        "Duration",
        &[(1, "duration", "int64")],
    ),
    (
        "apimachinery.pkg.apis.meta.v1.FieldsV1",
        "RawJson",
        &[(1, "raw", "bytes")],
    ),
    (
        "apimachinery.pkg.runtime.RawExtension",
        "RawJson",
        &[(1, "raw", "bytes")],
    ),
    (
        "apimachinery.pkg.api.resource.Quantity",
        "Quantity",
        &[(1, "string", "string")],
    ),
    // `ExtraValue` is a `[]string` in Go: a message only in proto.
    (
        "api.authentication.v1.ExtraValue",
        "StringList",
        &[(1, "items", "repeated string")],
    ),
    (
        "api.authorization.v1.ExtraValue",
        "StringList",
        &[(1, "items", "repeated string")],
    ),
    (
        "api.certificates.v1.ExtraValue",
        "StringList",
        &[(1, "items", "repeated string")],
    ),
    (
        "apimachinery.pkg.util.intstr.IntOrString",
        "IntOrString",
        &[
            (1, "type", "int64"),
            (2, "int_val", "int32"),
            (3, "str_val", "string"),
        ],
    ),
];

/// A proto field type as prost spells it; `Message` holds the full proto name.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PbType {
    Scalar(String),
    Message(String),
}

#[derive(Clone, Debug)]
enum PbCard {
    One,
    Repeated,
    Map(String),
}

#[derive(Debug)]
struct PbField {
    /// prost's snake_case name without `r#`.
    name: String,
    tag: u32,
    card: PbCard,
    ty: PbType,
}

#[derive(Debug, Default)]
struct PbMessage {
    fields: Vec<PbField>,
}

#[derive(Default)]
struct PbCrate {
    /// Full proto name ("api.core.v1.Pod") → message.
    messages: BTreeMap<String, PbMessage>,
    /// Full proto name → (apiVersion, kind) from `impl crate::Resource`.
    resources: BTreeMap<String, (String, String)>,
}

pub fn run(ws: &Workspace, args: &Args) -> Result<()> {
    let pb_dir = match &args.k8s_pb {
        Some(d) => d.clone(),
        None => find_crate("k8s-pb")?,
    };
    let openapi_dir = match &args.k8s_openapi {
        Some(d) => d.clone(),
        None => find_crate("k8s-openapi")?,
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ws.root.join("control/src/apiserver/protobuf_schema.rs"));
    println!("k8s-pb:      {}", pb_dir.display());
    println!("k8s-openapi: {}", openapi_dir.display());

    let pb = read_k8s_pb(&pb_dir.join("src"))?;
    let (json_keys, required) = read_k8s_openapi(&openapi_dir.join("src"))?;
    let text = generate(
        &pb,
        &json_keys,
        &required,
        &crate_label(&pb_dir),
        &crate_label(&openapi_dir),
    )?;
    std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
    // The table is long; let rustfmt lay it out so `cargo fmt --check` stays clean.
    let status = std::process::Command::new("rustfmt")
        .args(["--edition", "2024"])
        .arg(&out)
        .status()
        .context("running rustfmt on the generated file")?;
    if !status.success() {
        bail!("rustfmt failed on {}", out.display());
    }
    println!("wrote {}", out.display());
    Ok(())
}

/// The newest `<name>-<version>` directory under `$CARGO_HOME/registry/src/*/`.
fn find_crate(name: &str) -> Result<PathBuf> {
    let home = match std::env::var_os("CARGO_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME")?)
            .join(".cargo"),
    };
    let mut found: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    let registry = home.join("registry/src");
    for index in
        std::fs::read_dir(&registry).with_context(|| format!("reading {}", registry.display()))?
    {
        let index = index?.path();
        let Ok(entries) = std::fs::read_dir(&index) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("");
            let Some(version) = file.strip_prefix(name).and_then(|v| v.strip_prefix('-')) else {
                continue;
            };
            // Skip look-alikes such as `k8s-pb-derive-…`: the rest must be a version.
            let parts: Option<Vec<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
            if let Some(parts) = parts {
                found.push((parts, path));
            }
        }
    }
    found.sort();
    match found.pop() {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no {name}-<version> under {}/*/; pass its directory explicitly",
            registry.display()
        ),
    }
}

/// "k8s-pb-0.9.0" for the header of the generated file.
fn crate_label(dir: &Path) -> String {
    dir.file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// All `.rs` files under `dir`, sorted so the output does not depend on directory order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Module of a file as a dotted path relative to `root`: `api/core/v1/mod.rs` → `api.core.v1`,
/// `api/core/v1/pod.rs` → `api.core.v1`.
fn module_of(root: &Path, file: &Path) -> String {
    let dir = file.parent().unwrap_or(root);
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

fn read_k8s_pb(src: &Path) -> Result<PbCrate> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    let mut pb = PbCrate::default();
    for file in files {
        if file.file_name().is_some_and(|f| f != "mod.rs") {
            continue; // lib.rs holds only the Resource traits
        }
        let module = module_of(src, &file);
        let text = std::fs::read_to_string(&file)?;
        parse_pb_module(&module, &text, &mut pb)
            .with_context(|| format!("parsing {}", file.display()))?;
    }
    Ok(pb)
}

/// Parse one prost-generated module. prost's output is regular: a struct opens with
/// `pub struct Name {` at column 0 and closes with `}` at column 0; each field is a
/// `#[prost(…)]` line followed by `pub name: Type,` (the type may span lines).
fn parse_pb_module(module: &str, text: &str, pb: &mut PbCrate) -> Result<()> {
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    let mut current: Option<(String, PbMessage)> = None;
    let mut resource: Option<(String, String, String)> = None;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if let Some(rest) = line.strip_prefix("pub struct ") {
            let name = rest.trim_end_matches(" {}").trim_end_matches(" {").trim();
            if rest.ends_with("{}") {
                pb.messages
                    .insert(format!("{module}.{name}"), PbMessage::default());
            } else {
                current = Some((name.to_string(), PbMessage::default()));
            }
            continue;
        }
        if line == "}" {
            if let Some((name, msg)) = current.take() {
                pb.messages.insert(format!("{module}.{name}"), msg);
            }
            if let Some((name, api_version, kind)) = resource.take() {
                pb.resources
                    .insert(format!("{module}.{name}"), (api_version, kind));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("impl crate::Resource for ") {
            let name = rest.trim_end_matches(" {").trim().to_string();
            resource = Some((name, String::new(), String::new()));
            continue;
        }
        if let Some((_, api_version, kind)) = resource.as_mut() {
            let t = line.trim();
            if let Some(v) = const_str(t, "API_VERSION") {
                *api_version = v;
            } else if let Some(v) = const_str(t, "KIND") {
                *kind = v;
            }
            continue;
        }
        let Some((_, msg)) = current.as_mut() else {
            continue;
        };
        let Some(attr) = line
            .trim()
            .strip_prefix("#[prost(")
            .and_then(|a| a.strip_suffix(")]"))
        else {
            continue;
        };
        // The declaration: from `pub name:` to the line ending in `,` with balanced `<>`.
        let mut decl = String::new();
        while i < lines.len() {
            decl.push_str(lines[i].trim());
            i += 1;
            let depth = decl.matches('<').count() as i64 - decl.matches('>').count() as i64;
            if decl.ends_with(',') && depth == 0 {
                break;
            }
        }
        let field = parse_pb_field(module, attr, &decl)
            .with_context(|| format!("field `{decl}` with #[prost({attr})]"))?;
        msg.fields.push(field);
    }
    Ok(())
}

/// `const KIND: &'static str = "Pod";` → `Pod` for `name` = `KIND`.
fn const_str(line: &str, name: &str) -> Option<String> {
    let rest = line.strip_prefix(&format!("const {name}: &'static str = \""))?;
    Some(rest.strip_suffix("\";")?.to_string())
}

fn parse_pb_field(module: &str, attr: &str, decl: &str) -> Result<PbField> {
    let name = decl
        .strip_prefix("pub ")
        .and_then(|d| d.split(':').next())
        .context("no `pub name:`")?
        .trim()
        .trim_start_matches("r#")
        .to_string();
    let ty_text = decl.split_once(':').map(|(_, t)| t).unwrap_or("");
    let ty_text: String = ty_text.chars().filter(|c| !c.is_whitespace()).collect();
    let ty_text = ty_text.trim_end_matches(',');

    let tag = attr
        .split("tag = \"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .and_then(|t| t.parse::<u32>().ok())
        .context("no tag")?;
    let kind = attr
        .split([',', ' '])
        .next()
        .context("empty attribute")?
        .to_string();

    if kind == "map" || kind == "btree_map" || kind == "hash_map" {
        let spec = attr
            .split('"')
            .nth(1)
            .context("map without key/value kinds")?;
        let (key, value) = spec.split_once(',').context("map kinds")?;
        let (key, value) = (key.trim().to_string(), value.trim().to_string());
        let ty = if value == "message" {
            // BTreeMap<K,V>: the message type is V.
            let inner = generic_args(ty_text).context("map type without <K,V>")?;
            let (_, v) = split_top_level(inner).context("map type without V")?;
            PbType::Message(resolve(module, v.trim_end_matches(',')))
        } else {
            PbType::Scalar(value)
        };
        return Ok(PbField {
            name,
            tag,
            card: PbCard::Map(key),
            ty,
        });
    }

    let repeated = attr.split(", ").any(|w| w == "repeated");
    let card = if repeated {
        PbCard::Repeated
    } else {
        PbCard::One
    };
    let ty = if kind == "message" {
        // Option<T>, Vec<T>, Option<Box<T>>: peel the wrappers down to the path of T.
        let mut t = ty_text;
        while let Some(inner) = generic_args(t) {
            // rustfmt leaves a trailing comma when it breaks `Vec<…>` over lines.
            t = inner.trim_end_matches(',');
        }
        PbType::Message(resolve(module, t))
    } else {
        PbType::Scalar(kind)
    };
    Ok(PbField {
        name,
        tag,
        card,
        ty,
    })
}

/// `A<B<C>>` → `B<C>`; `None` if there are no generic arguments.
fn generic_args(t: &str) -> Option<&str> {
    let open = t.find('<')?;
    let close = t.rfind('>')?;
    (close > open).then(|| &t[open + 1..close])
}

/// `K,V<X,Y>` → (`K`, `V<X,Y>`): split at the first comma outside `<>`.
fn split_top_level(t: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, c) in t.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => return Some((&t[..i], &t[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A Rust path as written inside `module` (`super::super::x::Y`, `Y`) → full proto name.
fn resolve(module: &str, path: &str) -> String {
    let mut segments: Vec<&str> = module.split('.').collect();
    for part in path.split("::").filter(|p| !p.is_empty()) {
        match part {
            "super" => {
                segments.pop();
            }
            "crate" => segments.clear(),
            other => segments.push(other),
        }
    }
    segments.join(".")
}

/// k8s-openapi: (module, squashed struct name) → JSON keys, and → the keys its OpenAPI schema
/// lists as `required`; both merged over all its `v1_*` API versions.
fn read_k8s_openapi(src: &Path) -> Result<(JsonKeys, JsonKeys)> {
    let mut keys = JsonKeys::new();
    let mut required = JsonKeys::new();
    let mut versions = 0;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let dir = entry?.path();
        if !dir.is_dir()
            || !dir
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with("v1_"))
        {
            continue;
        }
        versions += 1;
        let mut files = Vec::new();
        rust_files(&dir, &mut files)?;
        for file in files {
            let module = module_of(&dir, &file);
            let text = std::fs::read_to_string(&file)?;
            let mut current: Option<String> = None;
            // The struct whose `schemars::JsonSchema` impl is being read, and whether the
            // lines are inside its `"required": [ … ]` list.
            let mut schema: Option<String> = None;
            let mut in_required = false;
            for line in text.lines() {
                let t = line.trim();
                if let Some(rest) = t.strip_prefix("impl crate::schemars::JsonSchema for ") {
                    schema = Some(rest.trim_end_matches(" {").trim().to_string());
                    in_required = false;
                    continue;
                }
                if let Some(name) = &schema {
                    if t == "\"required\": [" {
                        in_required = true;
                        required.entry((module.clone(), squash(name))).or_default();
                        continue;
                    }
                    if in_required {
                        if let Some(key) = t.strip_prefix('"').and_then(|k| k.strip_suffix("\",")) {
                            required
                                .entry((module.clone(), squash(name)))
                                .or_default()
                                .insert(key.to_string());
                        } else {
                            in_required = false;
                        }
                        continue;
                    }
                }
                if let Some(rest) = t.strip_prefix("impl<'de> crate::serde::Deserialize<'de> for ")
                {
                    let name = rest.trim_end_matches(" {").trim();
                    if name != "Field" {
                        current = Some(name.to_string());
                    }
                    continue;
                }
                // `"podIP" => Field::Key_pod_ip,`
                if let (Some(name), Some(rest)) = (&current, t.strip_prefix('"'))
                    && let Some((key, tail)) = rest.split_once('"')
                    && tail.trim_start().starts_with("=> Field::Key_")
                {
                    // Struct names are matched case-insensitively: prost spells `HTTPGetAction`
                    // as `HttpGetAction`, `PodIP` as `PodIp`.
                    keys.entry((module.clone(), squash(name)))
                        .or_default()
                        .insert(key.to_string());
                }
            }
        }
    }
    if versions == 0 {
        bail!("no v1_* directories under {}", src.display());
    }
    if required.is_empty() {
        bail!(
            "no `\"required\": [` lists in {}: has the schemars code changed shape?",
            src.display()
        );
    }
    Ok((keys, required))
}

/// Lowercase without underscores: the form in which prost and JSON names agree.
fn squash(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

fn lower_camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// `api.core.v1.PodIP` → `CORE_V1_POD_IP`: the name of the message's static (the last two
/// module segments keep it short; `generate` fails if two messages collide).
fn static_name(full: &str) -> String {
    let mut out = String::new();
    let segments: Vec<&str> = full.split('.').collect();
    for (n, segment) in segments[segments.len().saturating_sub(3)..]
        .iter()
        .enumerate()
    {
        if n > 0 {
            out.push('_');
        }
        let chars: Vec<char> = segment.chars().collect();
        for (i, &c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            // A word starts at a capital after a lowercase letter/digit, or at the last capital
            // of an acronym that precedes a lowercase letter (`APIGroup` → `API_GROUP`).
            let boundary = c.is_ascii_uppercase()
                && match prev {
                    Some(p) if p.is_ascii_lowercase() || p.is_ascii_digit() => true,
                    Some(p) if p.is_ascii_uppercase() => {
                        next.is_some_and(|n| n.is_ascii_lowercase())
                    }
                    _ => false,
                };
            if boundary {
                out.push('_');
            }
            out.extend(c.to_uppercase());
        }
    }
    out
}

fn special_of(full: &str) -> Option<&'static str> {
    SPECIAL
        .iter()
        .find(|(name, _, _)| *name == full)
        .map(|(_, ty, _)| *ty)
}

/// Decoder type for a scalar kind as prost names it.
fn scalar_ty(kind: &str) -> Result<&'static str> {
    Ok(match kind {
        "string" => "Str",
        "bool" => "Bool",
        "int32" => "I32",
        "int64" => "I64",
        "double" => "F64",
        "bytes" => "Bytes",
        other => bail!("proto kind `{other}` is not supported by the decoder"),
    })
}

fn ty_expr(ty: &PbType) -> Result<String> {
    Ok(match ty {
        PbType::Scalar(kind) => scalar_ty(kind)?.to_string(),
        PbType::Message(full) => match special_of(full) {
            Some(special) => special.to_string(),
            None => format!("Msg(&{})", static_name(full)),
        },
    })
}

type JsonKeys = BTreeMap<(String, String), BTreeSet<String>>;

/// The JSON name of field `f` of message `full`, and whether it is inlined (Go's
/// `json:",inline"`: the sub-message's fields appear directly in the parent's JSON object).
fn json_name(
    pb: &PbCrate,
    module_keys: &BTreeMap<&str, BTreeSet<&String>>,
    full: &str,
    keys: Option<&BTreeSet<String>>,
    f: &PbField,
    fallbacks: &mut Vec<String>,
    borrowed: &mut usize,
) -> Result<(String, bool)> {
    let wanted = squash(&f.name);
    if let Some(keys) = keys {
        let matches: Vec<&String> = keys.iter().filter(|k| squash(k) == wanted).collect();
        match matches.as_slice() {
            [one] => return Ok(((*one).clone(), false)),
            [] => {}
            many => bail!("{full}.{}: several JSON keys match: {many:?}", f.name),
        }
        // Not a key of the parent: inlined if all the sub-message's fields are keys instead.
        if let (PbCard::One, PbType::Message(child)) = (&f.card, &f.ty)
            && special_of(child).is_none()
            && let Some(child_msg) = pb.messages.get(child)
            && !child_msg.fields.is_empty()
            && child_msg
                .fields
                .iter()
                .all(|cf| keys.iter().any(|k| squash(k) == squash(&cf.name)))
        {
            return Ok((f.name.clone(), true));
        }
    }
    let (module, _) = full.rsplit_once('.').expect("full names have a module");
    let spellings: BTreeSet<&String> = module_keys
        .get(module)
        .map(|k| k.iter().copied().filter(|k| squash(k) == wanted).collect())
        .unwrap_or_default();
    if spellings.len() == 1 {
        *borrowed += 1;
        return Ok(((*spellings.first().expect("one")).clone(), false));
    }
    let guess = lower_camel(&f.name);
    fallbacks.push(format!(
        "{full}.{} → {guess} ({})",
        f.name,
        match (keys.is_some(), spellings.len()) {
            (true, 0) => "k8s-openapi struct has no such key".to_string(),
            (false, 0) => "no k8s-openapi struct, no such key in the module".to_string(),
            (_, n) => format!("{n} spellings in the module"),
        }
    ));
    Ok((guess, false))
}

/// The JSON names an inlined message contributes to its parent's object (recursively).
fn inline_names(
    pb: &PbCrate,
    json_keys: &JsonKeys,
    module_keys: &BTreeMap<&str, BTreeSet<&String>>,
    full: &str,
) -> Result<Vec<String>> {
    let (module, name) = full.rsplit_once('.').expect("full names have a module");
    let keys = json_keys.get(&(module.to_string(), squash(name)));
    let mut out = Vec::new();
    let Some(msg) = pb.messages.get(full) else {
        return Ok(out);
    };
    for f in &msg.fields {
        let (json, inline) = json_name(pb, module_keys, full, keys, f, &mut Vec::new(), &mut 0)?;
        match (&f.ty, inline) {
            (PbType::Message(child), true) => {
                out.extend(inline_names(pb, json_keys, module_keys, child)?)
            }
            _ => out.push(json),
        }
    }
    Ok(out)
}

fn generate(
    pb: &PbCrate,
    json_keys: &JsonKeys,
    required_keys: &JsonKeys,
    pb_label: &str,
    openapi_label: &str,
) -> Result<String> {
    check_special_types(pb)?;
    let reachable = reachable_messages(pb)?;
    let mut out = String::new();
    write_kind_tables(&mut out)?;
    // Every JSON key of a module: names for messages k8s-openapi has no struct for, because
    // Go inlines them into their parent (`ProbeHandler` into `Probe`).
    let mut module_keys: BTreeMap<&str, BTreeSet<&String>> = BTreeMap::new();
    for ((module, _), keys) in json_keys {
        module_keys.entry(module).or_default().extend(keys);
    }
    let mut tables = MessageTables {
        pb,
        json_keys,
        required_keys,
        module_keys: &module_keys,
        out,
        cards: BTreeSet::new(),
        tys: BTreeSet::new(),
        fields_total: 0,
        statics: BTreeSet::new(),
        unmatched_required: Vec::new(),
        fallbacks: Vec::new(),
        inlined: Vec::new(),
        borrowed: 0,
    };
    for full in &reachable {
        tables.write_message(full)?;
    }
    let mut head = header(pb_label, openapi_label)?;
    writeln!(
        head,
        "use super::Card::{{{}}};\nuse super::Ty::{{{}}};\nuse super::{{Field as F, Message}};\n",
        tables.cards.iter().copied().collect::<Vec<_>>().join(", "),
        tables.tys.iter().cloned().collect::<Vec<_>>().join(", ")
    )?;
    head.push_str(&tables.out);
    tables.report(reachable.len())?;
    Ok(head)
}

/// The special types must still have the shape the decoder reads.
fn check_special_types(pb: &PbCrate) -> Result<()> {
    for (full, _, expected) in SPECIAL {
        let msg = pb
            .messages
            .get(*full)
            .with_context(|| format!("special type {full} is not in k8s-pb"))?;
        for (tag, name, kind) in *expected {
            // `repeated string`: a list field; a bare kind: a single one.
            let (repeated, kind) = match kind.strip_prefix("repeated ") {
                Some(k) => (true, k),
                None => (false, *kind),
            };
            let ok = msg.fields.iter().any(|f| {
                f.tag == *tag
                    && f.name == *name
                    && matches!(f.card, PbCard::Repeated) == repeated
                    && matches!(f.card, PbCard::One | PbCard::Repeated)
                    && f.ty == PbType::Scalar(kind.to_string())
            });
            if !ok {
                bail!(
                    "{full}: expected field {tag} `{name}` of kind {kind}; the decoder's handling of it needs review"
                );
            }
        }
    }
    Ok(())
}

/// Transitive closure of the roots, in a stable (sorted) order.
fn reachable_messages(pb: &PbCrate) -> Result<BTreeSet<String>> {
    let mut reachable: BTreeSet<String> = BTreeSet::new();
    let mut queue: Vec<String> = Vec::new();
    for (module, name, api_version) in ROOTS.iter().chain(RESPONSE_KINDS) {
        let full = format!("{module}.{name}");
        if !pb.messages.contains_key(&full) {
            bail!("root {full} is not in k8s-pb");
        }
        if let Some((av, kind)) = pb.resources.get(&full)
            && (av != api_version || kind != name)
        {
            bail!("root {full}: k8s-pb says {av}/{kind}, the root list says {api_version}/{name}");
        }
        queue.push(full);
    }
    while let Some(full) = queue.pop() {
        if special_of(&full).is_some() || !reachable.insert(full.clone()) {
            continue;
        }
        let msg = pb
            .messages
            .get(&full)
            .with_context(|| format!("{full} is referenced but not defined in k8s-pb"))?;
        for f in &msg.fields {
            if let PbType::Message(m) = &f.ty {
                queue.push(m.clone());
            }
        }
    }
    Ok(reachable)
}

/// The generated file's comment and module doc.
fn header(pb_label: &str, openapi_label: &str) -> Result<String> {
    let mut head = String::new();
    writeln!(
        head,
        "// @generated by `cargo xtask gen-protobuf-schema` from {pb_label} (messages, tags, wire \
         types,\n// field order) and {openapi_label} (JSON names, required fields). Do not edit: \
         change the\n// generator and rerun it.\n"
    )?;
    writeln!(
        head,
        "//! The Kubernetes protobuf messages [`super::decode`] understands: every message reachable \
         from\n//! the [`ROOTS`] and [`KINDS`], each field with its tag, JSON name, cardinality and type, \
         in\n//! declaration (Go struct) order, and the JSON names its OpenAPI schema requires.\n"
    )?;
    Ok(head)
}

/// The `ROOTS`, `KINDS` and `ANY_GROUP` tables: kinds to their messages.
fn write_kind_tables(out: &mut String) -> Result<()> {
    writeln!(
        out,
        "/// \"apiVersion/kind\" of a body's envelope → the message its `raw` holds.\npub(crate) static ROOTS: &[(&str, &Message)] = &["
    )?;
    for (module, name, api_version) in ROOTS {
        write_kind_entry(out, api_version, module, name)?;
    }
    writeln!(out, "];\n")?;
    writeln!(
        out,
        "/// \"apiVersion/kind\" → message of every top-level kind a response may carry.\npub(crate) static KINDS: &[(&str, &Message)] = &["
    )?;
    // meta/v1 roots (DeleteOptions) are request bodies only.
    for (module, name, api_version) in ROOTS
        .iter()
        .filter(|(m, _, _)| *m != META_V1)
        .chain(RESPONSE_KINDS)
    {
        write_kind_entry(out, api_version, module, name)?;
    }
    writeln!(out, "];\n")?;
    writeln!(
        out,
        "/// meta/v1 options every API group registers as its own: found by kind whatever the group.\npub(crate) static ANY_GROUP: &[(&str, &Message)] = &["
    )?;
    for (module, name, _) in ROOTS.iter().filter(|(m, _, _)| *m == META_V1) {
        writeln!(
            out,
            "    (\"{name}\", &{}),",
            static_name(&format!("{module}.{name}"))
        )?;
    }
    writeln!(out, "];")?;
    Ok(())
}

fn write_kind_entry(out: &mut String, api_version: &str, module: &str, name: &str) -> Result<()> {
    writeln!(
        out,
        "    (\"{api_version}/{name}\", &{}),",
        static_name(&format!("{module}.{name}"))
    )?;
    Ok(())
}

/// The message statics being written, and what the generator reports about them afterwards.
struct MessageTables<'a> {
    pb: &'a PbCrate,
    json_keys: &'a JsonKeys,
    required_keys: &'a JsonKeys,
    module_keys: &'a BTreeMap<&'a str, BTreeSet<&'a String>>,
    out: String,
    /// Imports: only what the table uses, as an unused import would fail clippy -D warnings.
    cards: BTreeSet<&'static str>,
    tys: BTreeSet<String>,
    fields_total: usize,
    statics: BTreeSet<String>,
    unmatched_required: Vec<String>,
    fallbacks: Vec<String>,
    inlined: Vec<String>,
    borrowed: usize,
}

impl MessageTables<'_> {
    fn write_message(&mut self, full: &str) -> Result<()> {
        let pb = self.pb;
        let msg = &pb.messages[full];
        let (module, name) = full.rsplit_once('.').expect("full names have a module");
        let keys = self.json_keys.get(&(module.to_string(), squash(name)));
        let static_ident = static_name(full);
        if !self.statics.insert(static_ident.clone()) {
            bail!("two messages map to the static name {static_ident}");
        }
        writeln!(
            self.out,
            "\npub(crate) static {static_ident}: Message = Message {{\n    name: \"{full}\",\n    fields: &["
        )?;
        // Declaration order: Go's struct order, the order kube-apiserver writes JSON keys in.
        let mut names = Vec::new();
        for f in &msg.fields {
            self.write_field(full, keys, f, &mut names)?;
        }
        let required = self.required_in_order(full, module, name, &names);
        writeln!(
            self.out,
            "    ],\n    required: &[{}],\n}};",
            required.join(", ")
        )?;
        Ok(())
    }

    /// One `F::new(…)` line; the JSON names the field contributes go to `names`.
    fn write_field(
        &mut self,
        full: &str,
        keys: Option<&BTreeSet<String>>,
        f: &PbField,
        names: &mut Vec<String>,
    ) -> Result<()> {
        self.fields_total += 1;
        let (json, inline) = json_name(
            self.pb,
            self.module_keys,
            full,
            keys,
            f,
            &mut self.fallbacks,
            &mut self.borrowed,
        )?;
        let card = match &f.card {
            PbCard::One if inline => "Inline".to_string(),
            PbCard::One => "One".to_string(),
            PbCard::Repeated => "Repeated".to_string(),
            PbCard::Map(key) => format!("Map({})", scalar_ty(key)?),
        };
        let ty = ty_expr(&f.ty).with_context(|| format!("{full}.{}", f.name))?;
        self.cards.insert(match f.card {
            PbCard::One if inline => "Inline",
            PbCard::One => "One",
            PbCard::Repeated => "Repeated",
            PbCard::Map(_) => "Map",
        });
        if let PbCard::Map(key) = &f.card {
            self.tys.insert(scalar_ty(key)?.to_string());
        }
        self.tys
            .insert(ty.split('(').next().unwrap_or(&ty).to_string());
        writeln!(
            self.out,
            "        F::new({}, \"{json}\", {card}, {ty}),",
            f.tag
        )?;
        if inline {
            self.inlined.push(format!("{full}.{}", f.name));
            if let PbType::Message(child) = &f.ty {
                names.extend(inline_names(
                    self.pb,
                    self.json_keys,
                    self.module_keys,
                    child,
                )?);
            }
        } else {
            names.push(json);
        }
        Ok(())
    }

    /// The required keys the message has (TypeMeta's kind/apiVersion are not message fields),
    /// quoted, in declaration order as the fields.
    fn required_in_order(
        &mut self,
        full: &str,
        module: &str,
        name: &str,
        names: &[String],
    ) -> Vec<String> {
        let mut required: Vec<&String> = Vec::new();
        if let Some(keys) = self.required_keys.get(&(module.to_string(), squash(name))) {
            for key in keys {
                if names.contains(key) {
                    required.push(key);
                } else if key != "kind" && key != "apiVersion" {
                    self.unmatched_required.push(format!("{full}.{key}"));
                }
            }
        }
        required.sort_by_key(|k| names.iter().position(|n| n == *k));
        required.iter().map(|k| format!("\"{k}\"")).collect()
    }

    /// What the run found, and an error for required keys that matched no field.
    fn report(&self, reachable: usize) -> Result<()> {
        println!(
            "{reachable} messages, {} fields reachable from {} roots",
            self.fields_total,
            ROOTS.len()
        );
        println!(
            "{} inlined sub-messages (Go `json:\",inline\"`): {}",
            self.inlined.len(),
            self.inlined.join(", ")
        );
        println!(
            "{} JSON names of messages k8s-openapi has no struct for (Go inlines them) \
             taken from another struct of the same module",
            self.borrowed
        );
        if !self.unmatched_required.is_empty() {
            bail!(
                "required keys that are no field of their message: {}",
                self.unmatched_required.join(", ")
            );
        }
        if self.fallbacks.is_empty() {
            println!("every JSON name came from k8s-openapi");
        } else {
            println!(
                "{} JSON names guessed as lowerCamel (no k8s-openapi match):",
                self.fallbacks.len()
            );
            for f in &self.fallbacks {
                println!("  {f}");
            }
        }
        Ok(())
    }
}
