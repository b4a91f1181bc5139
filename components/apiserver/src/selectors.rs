//! Label selectors (equality- and set-based, as in `?labelSelector=`) and field selectors.
//!
//! Hand-written: the grammar is small and no maintained crate implements Kubernetes' selector
//! syntax.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::ApiError;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRequirement {
    /// `key=value` / `key==value`
    Equals(String, String),
    /// `key!=value` (also matches objects without the key)
    NotEquals(String, String),
    /// `key in (a,b)`
    In(String, Vec<String>),
    /// `key notin (a,b)` (also matches objects without the key)
    NotIn(String, Vec<String>),
    /// `key`
    Exists(String),
    /// `!key`
    DoesNotExist(String),
}

/// A parsed label selector; all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// The requirements, all of which must match.
    pub requirements: Vec<LabelRequirement>,
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    let prefix_ok = prefix
        .is_none_or(|p| !p.is_empty() && p.len() <= 253 && crate::names::is_dns1123_subdomain(p));
    name_ok && prefix_ok
}

fn valid_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && v.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()))
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str, selector: &str) -> Result<Vec<String>, ApiError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{rest}', expected '(value, ...)' in label selector \"{selector}\""
            ))
        })?;
    let values: Vec<String> = inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect();
    for v in &values {
        if !valid_label_value(v) {
            return Err(ApiError::bad_request(format!(
                "invalid label value: \"{v}\" in label selector \"{selector}\""
            )));
        }
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses `?labelSelector=` syntax: `a=b,c!=d,e in (x,y),f notin (z),g,!h`.
    pub fn parse(selector: &str) -> Result<LabelSelector, ApiError> {
        let mut requirements = Vec::new();
        if selector.trim().is_empty() {
            return Ok(LabelSelector { requirements });
        }
        for raw in split_top_level(selector) {
            let part = raw.trim();
            if part.is_empty() {
                return Err(ApiError::bad_request(format!(
                    "found ',', expected: identifier in label selector \"{selector}\""
                )));
            }
            let bad_key = |k: &str| {
                ApiError::bad_request(format!(
                    "invalid label key \"{k}\" in label selector \"{selector}\": keys are [prefix/]name with alphanumerics, '-', '_' or '.'"
                ))
            };
            let req = if let Some(key) = part.strip_prefix('!') {
                let key = key.trim();
                if !valid_label_key(key) {
                    return Err(bad_key(key));
                }
                LabelRequirement::DoesNotExist(key.to_string())
            } else if let Some((k, v)) = part.split_once("!=") {
                LabelRequirement::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once("==") {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = part.split_once('=') {
                LabelRequirement::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some(idx) = part.find(" notin ").or_else(|| part.find(" notin(")) {
                let key = part[..idx].trim();
                LabelRequirement::NotIn(key.to_string(), parse_set(&part[idx + 6..], selector)?)
            } else if let Some(idx) = part.find(" in ").or_else(|| part.find(" in(")) {
                let key = part[..idx].trim();
                LabelRequirement::In(key.to_string(), parse_set(&part[idx + 3..], selector)?)
            } else {
                LabelRequirement::Exists(part.to_string())
            };
            let (key, values): (&str, Vec<&str>) = match &req {
                LabelRequirement::Equals(k, v) | LabelRequirement::NotEquals(k, v) => (k, vec![v]),
                LabelRequirement::In(k, _) | LabelRequirement::NotIn(k, _) => (k, vec![]),
                LabelRequirement::Exists(k) | LabelRequirement::DoesNotExist(k) => (k, vec![]),
            };
            if !valid_label_key(key) {
                return Err(bad_key(key));
            }
            for v in values {
                if !valid_label_value(v) {
                    return Err(ApiError::bad_request(format!(
                        "invalid label value: \"{v}\" in label selector \"{selector}\""
                    )));
                }
            }
            requirements.push(req);
        }
        Ok(LabelSelector { requirements })
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(selector: &Value) -> Result<LabelSelector, String> {
        let mut requirements = Vec::new();
        if let Some(m) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                requirements.push(LabelRequirement::Equals(
                    k.clone(),
                    v.as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(Value::as_array) {
            for (i, e) in exprs.iter().enumerate() {
                let key = e
                    .get("key")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let values: Vec<String> = e
                    .get("values")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                let op = e
                    .get("operator")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                requirements.push(match op {
                    "In" => LabelRequirement::In(key, values),
                    "NotIn" => LabelRequirement::NotIn(key, values),
                    "Exists" => LabelRequirement::Exists(key),
                    "DoesNotExist" => LabelRequirement::DoesNotExist(key),
                    other => {
                        return Err(format!(
                            "matchExpressions[{i}].operator: \"{other}\" is not a valid selector operator"
                        ))
                    }
                });
            }
        }
        Ok(LabelSelector { requirements })
    }

    /// Whether the selector has no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| match r {
            LabelRequirement::Equals(k, v) => labels.get(k) == Some(v),
            LabelRequirement::NotEquals(k, v) => labels.get(k) != Some(v),
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }

    /// Whether the labels of a JSON object (`metadata.labels`) satisfy the selector.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        self.matches(&object_labels(object))
    }

    /// Renders the selector in `?labelSelector=` syntax (as `kubectl -o wide` shows it).
    pub fn render(&self) -> String {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                LabelRequirement::Equals(k, v) => format!("{k}={v}"),
                LabelRequirement::NotEquals(k, v) => format!("{k}!={v}"),
                LabelRequirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                LabelRequirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                LabelRequirement::Exists(k) => k.clone(),
                LabelRequirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        parts.join(",")
    }
}

/// `metadata.labels` of a JSON object.
pub fn object_labels(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// One requirement of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted field path, e.g. `spec.nodeName`.
    pub field: String,
    /// Expected value.
    pub value: String,
    /// `!=` instead of `=`.
    pub negate: bool,
}

/// A parsed field selector; all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector {
    /// The requirements.
    pub requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// Parses `?fieldSelector=` syntax (`a=b,c!=d`, `==` allowed), accepting only fields in
    /// `supported` plus `metadata.name` and `metadata.namespace`.
    pub fn parse(selector: &str, supported: &[&str]) -> Result<FieldSelector, ApiError> {
        let mut requirements = Vec::new();
        if selector.trim().is_empty() {
            return Ok(FieldSelector { requirements });
        }
        for part in selector.split(',') {
            let part = part.trim();
            let (field, value, negate) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{selector}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !supported.contains(&field)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                value: value.trim().to_string(),
                negate,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Whether there are no requirements.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value required for `metadata.name`, if the selector pins one.
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == "metadata.name" && !r.negate)
            .map(|r| r.value.as_str())
    }

    /// Whether `object` satisfies all requirements.
    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|r| {
            let actual = field_value(object, &r.field);
            (actual == r.value) != r.negate
        })
    }
}

/// The string value of a dotted field path (`""` when absent), as field selectors compare it.
pub fn field_value(object: &Value, field: &str) -> String {
    let mut cur = object;
    for part in field.split('.') {
        match cur.get(part) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
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

    #[test]
    fn equality_and_set_based() {
        let s = LabelSelector::parse(
            "app=web,tier!=db,env in (prod, staging),zone notin (a),release,!legacy",
        )
        .unwrap();
        assert_eq!(s.requirements.len(), 6);
        let good = labels(&[
            ("app", "web"),
            ("env", "prod"),
            ("zone", "b"),
            ("release", "1"),
        ]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "true".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("tier".into(), "db".into());
        assert!(!s.matches(&bad));
        let mut bad = good;
        bad.remove("release");
        assert!(!s.matches(&bad));
    }

    #[test]
    fn double_equals_and_empty() {
        assert!(LabelSelector::parse("").unwrap().matches(&labels(&[])));
        let s = LabelSelector::parse("a==b").unwrap();
        assert_eq!(
            s.requirements,
            vec![LabelRequirement::Equals("a".into(), "b".into())]
        );
        assert!(!s.matches(&labels(&[])));
        // != and notin match objects without the key
        assert!(LabelSelector::parse("a!=b").unwrap().matches(&labels(&[])));
        assert!(LabelSelector::parse("a notin (b)")
            .unwrap()
            .matches(&labels(&[])));
    }

    #[test]
    fn rejects_garbage() {
        assert!(LabelSelector::parse("a in b").is_err());
        assert!(LabelSelector::parse("a=b,,c").is_err());
        assert!(LabelSelector::parse("bad key=x").is_err());
        assert!(LabelSelector::parse("a=in valid").is_err());
    }

    #[test]
    fn from_label_selector_object() {
        let s = LabelSelector::from_object(&json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]
        }))
        .unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        assert_eq!(s.render(), "app=web,tier in (fe)");
        assert!(LabelSelector::from_object(
            &json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]})
        )
        .is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let s = FieldSelector::parse(
            "spec.nodeName=n1,status.phase!=Failed",
            &["spec.nodeName", "status.phase"],
        )
        .unwrap();
        assert!(s.matches(&pod));
        let s = FieldSelector::parse("spec.nodeName==", &["spec.nodeName"]).unwrap();
        assert!(!s.matches(&pod));
        let s = FieldSelector::parse("metadata.name=p", &[]).unwrap();
        assert_eq!(s.pinned_name(), Some("p"));
        assert!(s.matches(&pod));
        let err = FieldSelector::parse("spec.foo=x", &["spec.nodeName"]).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("field label not supported: spec.foo"));
    }
}
