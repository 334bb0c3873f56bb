//! Label selectors with the grammar and semantics of k8s.io/apimachinery's `pkg/labels`:
//! parsed from the text of `kubectl -l` / `labelSelector=`, or from the `LabelSelector` of an
//! object (a ReplicaSet's, a Service's), and matched against labels. The apiserver filters
//! lists and watches with it; the controllers match their pods with it, so both select
//! exactly what kube-apiserver would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
    /// Sorted and unique, like the Go `sets.String`, so equal selectors compare equal.
    values: Vec<String>,
}

impl Requirement {
    /// Checks as labels.NewRequirement does; messages follow its wording.
    fn new(key: &str, op: Op, values: BTreeSet<String>) -> Result<Requirement, String> {
        validate_label_key(key)?;
        match op {
            Op::In | Op::NotIn if values.is_empty() => {
                return Err(invalid_values(
                    &values,
                    "for 'in', 'notin' operators, values set can't be empty",
                ));
            }
            Op::Equals | Op::DoubleEquals | Op::NotEquals if values.len() != 1 => {
                return Err(invalid_values(
                    &values,
                    "exact-match compatibility requires one single value",
                ));
            }
            Op::Exists | Op::DoesNotExist if !values.is_empty() => {
                return Err(invalid_values(
                    &values,
                    "values set must be empty for exists and does not exist",
                ));
            }
            Op::GreaterThan | Op::LessThan => {
                if values.len() != 1 {
                    return Err(invalid_values(
                        &values,
                        "for 'Gt', 'Lt' operators, exactly one value is required",
                    ));
                }
                if values.iter().any(|v| v.parse::<i64>().is_err()) {
                    return Err(invalid_values(
                        &values,
                        "for 'Gt', 'Lt' operators, the value must be an integer",
                    ));
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            if let Err(msg) = check_label_value(v) {
                return Err(format!("values[{i}]: Invalid value: {v:?}: {msg}"));
            }
        }
        Ok(Requirement {
            key: key.to_string(),
            op,
            values: values.into_iter().collect(),
        })
    }

    fn matches(&self, value: Option<&str>) -> bool {
        let has = |v: &str| self.values.iter().any(|x| x == v);
        match self.op {
            Op::In | Op::Equals | Op::DoubleEquals => value.is_some_and(has),
            // Absent keys satisfy negative requirements.
            Op::NotIn | Op::NotEquals => !value.is_some_and(has),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
            Op::GreaterThan | Op::LessThan => {
                let (Some(Ok(have)), [want]) =
                    (value.map(str::parse::<i64>), self.values.as_slice())
                else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.op == Op::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

fn invalid_values(values: &BTreeSet<String>, detail: &str) -> String {
    format!("values: Invalid value: {values:?}: {detail}")
}

/// A parsed label selector (equality- and set-based, as kubectl's -l / labelSelector=).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    /// Sorted by key (stable), as the Go parser and `Selector.Add` keep them.
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parse `a=b,c!=d,e in (x,y),f notin (z),g,!h, i==j`; errors are messages for a 400.
    pub fn parse(s: &str) -> Result<LabelSelector, String> {
        let tokens = lex(s);
        let mut parser = Parser { tokens, pos: 0 };
        let mut requirements = parser.parse()?;
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// From the API type (matchLabels + matchExpressions with In/NotIn/Exists/DoesNotExist).
    pub fn from_label_selector(sel: &meta::LabelSelector) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(
                k,
                Op::Equals,
                BTreeSet::from([v.clone()]),
            )?);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            };
            let values = expr.values.iter().flatten().cloned().collect();
            requirements.push(Requirement::new(&expr.key, op, values)?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(LabelSelector { requirements })
    }

    /// Equality on every pair (a Service/ReplicationController-style selector).
    pub fn from_map(map: &BTreeMap<String, String>) -> LabelSelector {
        // Not validated: these maps come from stored objects, and Go's SelectorFromSet does
        // not validate either.
        let requirements = map
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                op: Op::Equals,
                values: vec![v.clone()],
            })
            .collect();
        LabelSelector { requirements }
    }

    /// Matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches(labels.get(&r.key).map(String::as_str)))
    }

    /// Same, reading `metadata.labels` of a JSON object.
    pub fn matches_object(&self, obj: &Value) -> bool {
        let labels = obj.get("metadata").and_then(|m| m.get("labels"));
        self.requirements.iter().all(|r| {
            let value = labels.and_then(|l| l.get(&r.key)).and_then(Value::as_str);
            r.matches(value)
        })
    }
}

/// The canonical text form (Go `Selector.String()`), e.g. for logs or a `labelSelector` echo.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let first = r.values.first().map(String::as_str).unwrap_or_default();
            match r.op {
                Op::Exists => write!(f, "{}", r.key)?,
                Op::DoesNotExist => write!(f, "!{}", r.key)?,
                Op::Equals => write!(f, "{}={first}", r.key)?,
                Op::DoubleEquals => write!(f, "{}=={first}", r.key)?,
                Op::NotEquals => write!(f, "{}!={first}", r.key)?,
                Op::GreaterThan => write!(f, "{}>{first}", r.key)?,
                Op::LessThan => write!(f, "{}<{first}", r.key)?,
                Op::In => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                Op::NotIn => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
            }
        }
        Ok(())
    }
}

// ----- lexer and parser (labels/selector.go) -----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Identifier,
    In,
    NotIn,
    Equals,
    DoubleEquals,
    NotEquals,
    DoesNotExist,
    GreaterThan,
    LessThan,
    OpenPar,
    ClosedPar,
    Comma,
    End,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn symbol(s: &[u8]) -> Option<Tok> {
    Some(match s {
        b"=" => Tok::Equals,
        b"==" => Tok::DoubleEquals,
        b"!=" => Tok::NotEquals,
        b"!" => Tok::DoesNotExist,
        b">" => Tok::GreaterThan,
        b"<" => Tok::LessThan,
        b"(" => Tok::OpenPar,
        b")" => Tok::ClosedPar,
        b"," => Tok::Comma,
        _ => return None,
    })
}

/// Tokens with their literal text. The last token is always `End`.
fn lex(s: &str) -> Vec<(Tok, &str)> {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < bytes.len() && is_whitespace(bytes[i]) {
            i += 1;
        }
        // A NUL byte ends the input, as in the Go lexer.
        if i >= bytes.len() || bytes[i] == 0 {
            out.push((Tok::End, ""));
            return out;
        }
        let start = i;
        if is_special(bytes[i]) {
            // Longest run of special characters that still forms an operator.
            let mut best = (Tok::End, start);
            let mut j = start;
            while j < bytes.len() && is_special(bytes[j]) {
                match symbol(&bytes[start..=j]) {
                    Some(t) => best = (t, j + 1),
                    None => break,
                }
                j += 1;
            }
            // Every single special character is an operator, so `best` is always set here.
            let (tok, end) = best;
            out.push((tok, &s[start..end]));
            i = end;
        } else {
            while i < bytes.len()
                && bytes[i] != 0
                && !is_whitespace(bytes[i])
                && !is_special(bytes[i])
            {
                i += 1;
            }
            // Boundaries are at ASCII bytes, so slicing stays on char boundaries.
            let lit = &s[start..i];
            let tok = match lit {
                "in" => Tok::In,
                "notin" => Tok::NotIn,
                _ => Tok::Identifier,
            };
            out.push((tok, lit));
        }
    }
}

/// Whether `in`/`notin` are keywords (after a key) or plain identifiers (as values or keys).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    KeyAndOperator,
    Values,
}

struct Parser<'a> {
    tokens: Vec<(Tok, &'a str)>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn lookahead(&self, ctx: Ctx) -> (Tok, &'a str) {
        let (tok, lit) = self.tokens.get(self.pos).copied().unwrap_or((Tok::End, ""));
        match tok {
            Tok::In | Tok::NotIn if ctx == Ctx::Values => (Tok::Identifier, lit),
            _ => (tok, lit),
        }
    }

    fn consume(&mut self, ctx: Ctx) -> (Tok, &'a str) {
        let t = self.lookahead(ctx);
        if self.pos < self.tokens.len() {
            self.pos += 1;
        }
        t
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, String> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(Ctx::Values);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self
                        .requirement()
                        .map_err(|e| format!("unable to parse requirement: {e}"))?;
                    requirements.push(r);
                    let (t, l) = self.consume(Ctx::Values);
                    match t {
                        Tok::End => return Ok(requirements),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(Ctx::Values);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(format!(
                                    "found '{l2}', expected: identifier after ','"
                                ));
                            }
                        }
                        _ => return Err(format!("found '{l}', expected: ',' or 'end of string'")),
                    }
                }
                Tok::End => return Ok(requirements),
                _ => {
                    return Err(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    ));
                }
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let mut negated = false;
        let (mut tok, mut lit) = self.consume(Ctx::Values);
        if tok == Tok::DoesNotExist {
            negated = true;
            (tok, lit) = self.consume(Ctx::Values);
        }
        if tok != Tok::Identifier {
            return Err(format!("found '{lit}', expected: identifier"));
        }
        let key = lit;
        validate_label_key(key)?;
        let (next, _) = self.lookahead(Ctx::Values);
        if negated {
            return Requirement::new(key, Op::DoesNotExist, BTreeSet::new());
        }
        if next == Tok::End || next == Tok::Comma {
            return Requirement::new(key, Op::Exists, BTreeSet::new());
        }
        let (tok, lit) = self.consume(Ctx::KeyAndOperator);
        let op = match tok {
            Tok::In => Op::In,
            Tok::NotIn => Op::NotIn,
            Tok::Equals => Op::Equals,
            Tok::DoubleEquals => Op::DoubleEquals,
            Tok::NotEquals => Op::NotEquals,
            Tok::GreaterThan => Op::GreaterThan,
            Tok::LessThan => Op::LessThan,
            _ => {
                return Err(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                ));
            }
        };
        let values = match op {
            Op::In | Op::NotIn => self.set_values()?,
            _ => self.exact_value()?,
        };
        Requirement::new(key, op, values)
    }

    fn exact_value(&mut self) -> Result<BTreeSet<String>, String> {
        let (tok, _) = self.lookahead(Ctx::Values);
        if tok == Tok::End || tok == Tok::Comma {
            // `a=` selects the empty value.
            return Ok(BTreeSet::from([String::new()]));
        }
        match self.consume(Ctx::Values) {
            (Tok::Identifier, lit) => Ok(BTreeSet::from([lit.to_string()])),
            (_, lit) => Err(format!("found '{lit}', expected: identifier")),
        }
    }

    fn set_values(&mut self) -> Result<BTreeSet<String>, String> {
        let (tok, lit) = self.consume(Ctx::Values);
        if tok != Tok::OpenPar {
            return Err(format!("found '{lit}' expected: '('"));
        }
        let (tok, lit) = self.lookahead(Ctx::Values);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let set = self.identifiers()?;
                let (tok, _) = self.consume(Ctx::Values);
                if tok != Tok::ClosedPar {
                    return Err(format!("found '{lit}', expected: ')'"));
                }
                Ok(set)
            }
            Tok::ClosedPar => {
                // `()` is the set holding the empty value.
                self.consume(Ctx::Values);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(format!("found '{lit}', expected: ',', ')' or identifier")),
        }
    }

    /// Values between parentheses; empty entries (`(,a)`, `(a,)`, `(a,,b)`) mean "".
    fn identifiers(&mut self) -> Result<BTreeSet<String>, String> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(Ctx::Values);
            match tok {
                Tok::Identifier => {
                    set.insert(lit.to_string());
                    let (t2, l2) = self.lookahead(Ctx::Values);
                    match t2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(set),
                        _ => return Err(format!("found '{l2}', expected: ',' or ')'")),
                    }
                }
                Tok::Comma => {
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    let (t2, _) = self.lookahead(Ctx::Values);
                    if t2 == Tok::ClosedPar {
                        set.insert(String::new());
                        return Ok(set);
                    }
                    if t2 == Tok::Comma {
                        self.consume(Ctx::Values);
                        set.insert(String::new());
                    }
                }
                _ => return Err(format!("found '{lit}', expected: ',', or identifier")),
            }
        }
    }
}

// ----- validation (util/validation) -----

const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty.
fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let b = label.as_bytes();
        match (b.first(), b.last()) {
            (Some(f), Some(l)) => {
                let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
                alnum(f) && alnum(l) && b.iter().all(|c| alnum(c) || *c == b'-')
            }
            _ => false,
        }
    })
}

/// A label key: a qualified name with an optional DNS subdomain prefix (`example.com/name`).
fn validate_label_key(key: &str) -> Result<(), String> {
    let mut errs: Vec<String> = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".into());
            } else {
                if prefix.len() > 253 {
                    errs.push("prefix part must be no more than 253 characters".into());
                }
                if !is_dns1123_subdomain(prefix) {
                    errs.push(format!("prefix part {DNS1123_SUBDOMAIN_MSG}"));
                }
            }
            *name
        }
        _ => {
            errs.push(format!(
                "a qualified name {QUALIFIED_NAME_MSG} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            ""
        }
    };
    if parts.len() <= 2 {
        if name.is_empty() {
            errs.push("name part must be non-empty".into());
        } else if name.len() > 63 {
            errs.push("name part must be no more than 63 characters".into());
        }
        if !is_qualified_name_part(name) {
            errs.push(format!("name part {QUALIFIED_NAME_MSG}"));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(format!("key: Invalid value: {key:?}: {}", errs.join("; ")))
    }
}

fn check_label_value(v: &str) -> Result<(), String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !is_qualified_name_part(v) {
        errs.push(LABEL_VALUE_MSG.to_string());
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> LabelSelector {
        LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_every_operator() {
        let s = sel("a=b,c!=d,e in (x,y),f notin (z),g,!h, i==j");
        let l = labels(&[
            ("a", "b"),
            ("c", "x"),
            ("e", "y"),
            ("f", "q"),
            ("g", ""),
            ("i", "j"),
        ]);
        assert!(s.matches(&l));
        for (k, v) in [
            ("a", "z"),
            ("c", "d"),
            ("e", "w"),
            ("f", "z"),
            ("h", "1"),
            ("i", "k"),
        ] {
            let mut bad = l.clone();
            bad.insert(k.to_string(), v.to_string());
            assert!(!s.matches(&bad), "{k}={v} should not match");
        }
        let mut missing_g = l.clone();
        missing_g.remove("g");
        assert!(!s.matches(&missing_g));
        assert_eq!(s.to_string(), "a=b,c!=d,e in (x,y),f notin (z),g,!h,i==j");
    }

    #[test]
    fn negative_operators_match_absent_keys() {
        let empty = BTreeMap::new();
        assert!(sel("a!=b").matches(&empty));
        assert!(sel("a notin (b)").matches(&empty));
        assert!(sel("!a").matches(&empty));
        assert!(!sel("a").matches(&empty));
        assert!(!sel("a=b").matches(&empty));
        assert!(!sel("a in (b)").matches(&empty));
    }

    #[test]
    fn empty_and_whitespace_select_everything() {
        for s in ["", "   ", "\t\n"] {
            let parsed = sel(s);
            assert!(parsed.is_empty());
            assert!(parsed.matches(&labels(&[("x", "y")])));
            assert_eq!(parsed, LabelSelector::default());
        }
        assert_eq!(sel(" a = b , c in ( x , y ) "), sel("a=b,c in (x,y)"));
    }

    #[test]
    fn keywords_as_keys_and_values() {
        // `in` is an identifier where a key or value is expected.
        assert!(sel("in=notin").matches(&labels(&[("in", "notin")])));
        assert!(sel("a in (in,notin)").matches(&labels(&[("a", "notin")])));
        assert!(sel("notin").matches(&labels(&[("notin", "")])));
    }

    #[test]
    fn empty_values() {
        assert!(sel("a=").matches(&labels(&[("a", "")])));
        assert!(sel("a in ()").matches(&labels(&[("a", "")])));
        assert!(sel("a in (,x)").matches(&labels(&[("a", "")])));
        assert!(sel("a in (x,)").matches(&labels(&[("a", "")])));
        assert!(sel("a in (x,,y)").matches(&labels(&[("a", "")])));
        assert!(!sel("a in (x,y)").matches(&labels(&[("a", "")])));
    }

    #[test]
    fn greater_and_less_than() {
        assert!(sel("n>5").matches(&labels(&[("n", "6")])));
        assert!(!sel("n>5").matches(&labels(&[("n", "5")])));
        assert!(!sel("n>5").matches(&labels(&[("n", "x")])));
        assert!(!sel("n>5").matches(&BTreeMap::new()));
        assert!(sel("n<5").matches(&labels(&[("n", "-3")])));
        assert!(LabelSelector::parse("n>x").is_err());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "a=b,",
            ",a=b",
            "a=b c",
            "a in b",
            "a in (b",
            "a in (b c)",
            "a notin",
            "=b",
            "!",
            "!a=b",
            "a=(b)",
            "a==",
            "a!",
            "a>",
            "a<<1",
            "a b",
            "-a=b",
            "a/b/c=d",
            "/a=b",
            "Example.com/a=b",
            "a=-b",
            "a=b$",
            "(a)",
            "a=b)",
            "a in (x)y",
        ] {
            let got = LabelSelector::parse(bad);
            if bad == "a==" {
                // `a==` is an equality with the empty value, as in Go.
                assert!(got.is_ok(), "{bad}");
                continue;
            }
            assert!(got.is_err(), "{bad:?} parsed as {got:?}");
        }
        let long = "x".repeat(64);
        assert!(LabelSelector::parse(&format!("a={long}")).is_err());
        assert!(LabelSelector::parse(&format!("{long}=a")).is_err());
        assert!(LabelSelector::parse(&format!("a={}", &long[..63])).is_ok());
        assert!(LabelSelector::parse("example.com/app.kubernetes.io_x=v-1.2_3").is_ok());
        let err = LabelSelector::parse("a b").unwrap_err();
        assert!(err.contains("found 'b'"), "{err}");
    }

    #[test]
    fn from_api_type() {
        let api = meta::LabelSelector {
            match_labels: Some(BTreeMap::from([("app".to_string(), "web".to_string())])),
            match_expressions: Some(vec![
                meta::LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["fe".into(), "be".into()]),
                },
                meta::LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        let s = LabelSelector::from_label_selector(&api).unwrap();
        assert_eq!(s, sel("app=web,tier in (be,fe),!canary"));
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "be")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "be"), ("canary", "1")])));

        assert!(
            LabelSelector::from_label_selector(&meta::LabelSelector::default())
                .unwrap()
                .is_empty()
        );
        let bad = |op: &str, values: Option<Vec<String>>| {
            LabelSelector::from_label_selector(&meta::LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![meta::LabelSelectorRequirement {
                    key: "k".into(),
                    operator: op.into(),
                    values,
                }]),
            })
        };
        assert!(bad("Gt", Some(vec!["1".into()])).is_err());
        assert!(bad("In", None).is_err());
        assert!(bad("Exists", Some(vec!["x".into()])).is_err());
        assert!(bad("NotIn", Some(vec!["bad value".into()])).is_err());
        assert!(bad("Exists", None).is_ok());
    }

    #[test]
    fn from_map_and_objects() {
        let s = LabelSelector::from_map(&labels(&[("app", "web"), ("tier", "fe")]));
        assert_eq!(s, sel("app=web,tier=fe"));
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "fe", "x": "y"}}});
        assert!(s.matches_object(&pod));
        assert!(!s.matches_object(&json!({"metadata": {"labels": {"app": "web"}}})));
        assert!(!s.matches_object(&json!({})));
        assert!(sel("!app").matches_object(&json!({"metadata": {}})));
        assert!(LabelSelector::from_map(&BTreeMap::new()).is_empty());
    }
}
