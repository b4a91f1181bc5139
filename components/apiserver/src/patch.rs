//! PATCH bodies: JSON merge patch and JSON patch (through the `json-patch` crate), strategic
//! merge patch for built-in kinds, and server-side apply with managed fields.
//!
//! Strategic merge is hand-written: no maintained crate implements Kubernetes' directives. The
//! merge keys come from [`merge_key`], which mirrors the `patchMergeKey` tags of the built-in
//! types.

use serde_json::{json, Map, Value};

/// The merge key of list `field` when its parent object sits under field `parent` (for list
/// elements, the list's field name), or `None` for atomic lists.
pub fn merge_key(parent: &str, field: &str) -> Option<&'static str> {
    Some(match (parent, field) {
        (_, "containers" | "initContainers" | "ephemeralContainers") => "name",
        ("containers" | "initContainers" | "ephemeralContainers", "ports") => "containerPort",
        ("containers" | "initContainers" | "ephemeralContainers", "env") => "name",
        ("containers" | "initContainers" | "ephemeralContainers", "volumeMounts") => "mountPath",
        ("containers" | "initContainers" | "ephemeralContainers", "volumeDevices") => "devicePath",
        ("containers" | "initContainers" | "ephemeralContainers", "resizePolicy") => "resourceName",
        ("spec", "volumes") => "name",
        ("spec", "imagePullSecrets") => "name",
        ("spec", "hostAliases") => "ip",
        ("spec", "topologySpreadConstraints") => "topologyKey",
        ("spec", "readinessGates") => "conditionType",
        ("spec", "schedulingGates") => "name",
        ("spec", "resourceClaims") => "name",
        ("spec", "taints") => "key",
        ("spec", "ports") => "port",
        ("status", "conditions") => "type",
        ("status", "addresses") => "type",
        ("status", "podIPs" | "hostIPs") => "ip",
        ("metadata", "ownerReferences") => "uid",
        ("", "secrets") => "name",
        _ => return None,
    })
}

/// Lists whose elements are told apart by the protocol too (their `listMapKeys` for
/// server-side apply are `containerPort`/`port` and `protocol`): two ports with one number and
/// different protocols (DNS's 53/UDP and 53/TCP) are two elements, not one. Strategic merge
/// upstream keys them by the number alone, which merges such pairs into one (a known
/// Kubernetes bug); kinit tells them apart in both.
fn keyed_by_protocol(parent: &str, field: &str) -> bool {
    matches!(
        (parent, field),
        (
            "containers" | "initContainers" | "ephemeralContainers",
            "ports"
        ) | ("spec", "ports")
    )
}

/// The protocol of a port element, `TCP` when unset (the API's default).
fn protocol_of(item: &Value) -> &str {
    item.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
}

/// Lists of scalars merged as sets (`patchStrategy: merge` on primitive lists).
fn is_set_list(parent: &str, field: &str) -> bool {
    matches!(
        (parent, field),
        ("metadata", "finalizers") | ("spec", "finalizers")
    )
}

/// Applies a strategic merge patch to `original` (root parent context `""`).
pub fn strategic_merge(original: &Value, patch: &Value) -> Result<Value, String> {
    merge_object(original, patch, "")
}

fn merge_object(original: &Value, patch: &Value, parent: &str) -> Result<Value, String> {
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut out = p.clone();
            out.remove("$patch");
            return Ok(Value::Object(out));
        }
        Some("delete") => return Ok(Value::Null),
        Some(other) if other != "merge" => return Err(format!("unknown patch type: {other}")),
        _ => {}
    }
    let mut out: Map<String, Value> = match original {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let mut orders: Vec<(String, Vec<Value>)> = Vec::new();
    for (k, v) in p {
        if k == "$patch" {
            continue;
        }
        if k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$setElementOrder/") {
            orders.push((field.to_string(), v.as_array().cloned().unwrap_or_default()));
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v.as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(list)) = out.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        let current = out.get(k).cloned().unwrap_or(Value::Null);
        let merged = match v {
            Value::Object(_) => {
                let m = merge_object(&current, v, k)?;
                if m.is_null() {
                    out.remove(k);
                    continue;
                }
                m
            }
            Value::Array(items) => merge_list(&current, items, parent, k)?,
            _ => v.clone(),
        };
        out.insert(k.clone(), merged);
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (field, order) in orders {
        if let Some(Value::Array(list)) = out.get_mut(&field) {
            reorder(list, &order, ListKey::of(parent, &field));
        }
    }
    Ok(Value::Object(out))
}

/// How the elements of one list are matched: by their merge key (and the protocol where
/// [`keyed_by_protocol`]), or whole.
#[derive(Clone, Copy)]
struct ListKey<'a> {
    key: Option<&'a str>,
    protocol: bool,
}

impl<'a> ListKey<'a> {
    fn of(parent: &str, field: &str) -> ListKey<'static> {
        ListKey {
            key: merge_key(parent, field),
            protocol: keyed_by_protocol(parent, field),
        }
    }
}

fn element_matches(item: &Value, key: ListKey<'_>, wanted: &Value) -> bool {
    match key.key {
        Some(k) => {
            item.get(k).is_some()
                && item.get(k) == wanted.get(k)
                && (!key.protocol || protocol_of(item) == protocol_of(wanted))
        }
        None => item == wanted,
    }
}

fn reorder(list: &mut Vec<Value>, order: &[Value], key: ListKey<'_>) {
    let mut sorted = Vec::with_capacity(list.len());
    for o in order {
        if let Some(pos) = list.iter().position(|x| element_matches(x, key, o)) {
            sorted.push(list.remove(pos));
        }
    }
    sorted.append(list);
    *list = sorted;
}

fn merge_list(
    current: &Value,
    items: &[Value],
    parent: &str,
    field: &str,
) -> Result<Value, String> {
    // A list-level `{"$patch": "replace"}` element replaces the whole list with the others.
    if items.iter().any(|i| {
        i.get("$patch").and_then(Value::as_str) == Some("replace")
            && i.as_object().is_some_and(|m| m.len() == 1)
    }) {
        return Ok(Value::Array(
            items
                .iter()
                .filter(|i| {
                    !(i.get("$patch").is_some() && i.as_object().is_some_and(|m| m.len() == 1))
                })
                .cloned()
                .collect(),
        ));
    }
    let current: Vec<Value> = current.as_array().cloned().unwrap_or_default();
    if is_set_list(parent, field) {
        let mut out = current;
        for i in items {
            if !out.contains(i) {
                out.push(i.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let Some(key) = merge_key(parent, field) else {
        return Ok(Value::Array(items.to_vec()));
    };
    if !items.iter().all(Value::is_object) {
        return Ok(Value::Array(items.to_vec()));
    }
    let mut out = current;
    for item in items {
        if item.get(key).is_none() {
            return Err(format!(
                "map: {item} does not contain declared merge key: {key}"
            ));
        }
        let pos = out
            .iter()
            .position(|x| element_matches(x, ListKey::of(parent, field), item));
        if item.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(pos) = pos {
                out.remove(pos);
            }
            continue;
        }
        match pos {
            Some(pos) => {
                let merged = merge_object(&out[pos], item, field)?;
                out[pos] = merged;
            }
            None => {
                let mut fresh = merge_object(&Value::Null, item, field)?;
                strip_directives(&mut fresh);
                out.push(fresh);
            }
        }
    }
    Ok(Value::Array(out))
}

fn strip_directives(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|k, _| !k.starts_with('$'));
        for x in m.values_mut() {
            strip_directives(x);
        }
    } else if let Value::Array(a) = v {
        for x in a {
            strip_directives(x);
        }
    }
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(original: &Value, patch: &Value) -> Value {
    let mut out = original.clone();
    json_patch::merge(&mut out, patch);
    out
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(original: &Value, patch: &Value) -> Result<Value, String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut out = original.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| e.to_string())?;
    Ok(out)
}

// ---- managed fields (fieldsV1) ----

/// The `fieldsV1` set of the fields present in `obj` (leaves and merge-keyed list items), in
/// Kubernetes' `f:`/`k:` notation. `apiVersion`, `kind`, and system metadata are not tracked.
pub fn fields_v1(obj: &Value) -> Value {
    let mut out = Map::new();
    if let Value::Object(m) = obj {
        for (k, v) in m {
            if k == "apiVersion" || k == "kind" {
                continue;
            }
            if k == "metadata" {
                let mut meta = Map::new();
                if let Value::Object(mm) = v {
                    for key in ["labels", "annotations", "finalizers", "ownerReferences"] {
                        if let Some(x) = mm.get(key) {
                            meta.insert(format!("f:{key}"), fields_of(x, "metadata", key));
                        }
                    }
                }
                if !meta.is_empty() {
                    out.insert("f:metadata".into(), Value::Object(meta));
                }
                continue;
            }
            out.insert(format!("f:{k}"), fields_of(v, "", k));
        }
    }
    Value::Object(out)
}

fn fields_of(v: &Value, parent: &str, field: &str) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                out.insert(format!("f:{k}"), fields_of(x, field, k));
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            if let Some(key) = merge_key(parent, field) {
                let mut out = Map::new();
                for item in items {
                    if let Some(kv) = item.get(key) {
                        let id = if keyed_by_protocol(parent, field) {
                            format!("k:{}", json!({ key: kv, "protocol": protocol_of(item) }))
                        } else {
                            format!("k:{}", json!({ key: kv }))
                        };
                        let mut inner = match fields_of(item, parent, field) {
                            Value::Object(m) => m,
                            _ => Map::new(),
                        };
                        inner.insert(".".into(), json!({}));
                        out.insert(id, Value::Object(inner));
                    }
                }
                Value::Object(out)
            } else if is_set_list(parent, field) {
                let mut out = Map::new();
                for item in items {
                    out.insert(format!("v:{item}"), json!({}));
                }
                Value::Object(out)
            } else {
                json!({})
            }
        }
        _ => json!({}),
    }
}

/// Leaf paths of a `fieldsV1` set (each a list of `f:`/`k:` segments).
pub fn leaf_paths(fields: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let only_dot = m.len() == 1 && m.contains_key(".");
                if only_dot {
                    out.push(prefix.clone());
                    return;
                }
                for (k, x) in m {
                    if k == "." {
                        continue;
                    }
                    prefix.push(k.clone());
                    walk(x, prefix, out);
                    prefix.pop();
                }
            }
            _ => out.push(prefix.clone()),
        }
    }
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// Paths of the list items a `fieldsV1` set owns as a whole (`k:`/`v:` entries marked `.`).
fn item_paths(fields: &Value) -> Vec<Vec<String>> {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        let Value::Object(m) = v else { return };
        if m.contains_key(".") && !prefix.is_empty() {
            out.push(prefix.clone());
        }
        for (k, x) in m {
            if k != "." {
                prefix.push(k.clone());
                walk(x, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// Resolves one fieldsV1 path in an object: the value it names, if present.
pub fn resolve_path<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            cur = cur.get(f)?;
        } else if let Some(k) = seg.strip_prefix("k:") {
            let want: Map<String, Value> = serde_json::from_str(k).ok()?;
            cur = cur
                .as_array()?
                .iter()
                .find(|item| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)))?;
        } else if let Some(v) = seg.strip_prefix("v:") {
            let want: Value = serde_json::from_str(v).ok()?;
            cur = cur.as_array()?.iter().find(|item| **item == want)?;
        } else {
            return None;
        }
    }
    Some(cur)
}

/// Removes the field named by a fieldsV1 path from `obj` (no-op when absent).
pub fn remove_path(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for seg in parents {
        let next = if let Some(f) = seg.strip_prefix("f:") {
            cur.get_mut(f)
        } else if let Some(k) = seg.strip_prefix("k:") {
            let Ok(want) = serde_json::from_str::<Map<String, Value>>(k) else {
                return;
            };
            cur.as_array_mut().and_then(|a| {
                a.iter_mut()
                    .find(|item| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)))
            })
        } else {
            None
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(k) = last.strip_prefix("k:") {
        if let (Ok(want), Some(a)) = (
            serde_json::from_str::<Map<String, Value>>(k),
            cur.as_array_mut(),
        ) {
            a.retain(|item| !want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)));
        }
    } else if let Some(v) = last.strip_prefix("v:") {
        if let (Ok(want), Some(a)) = (serde_json::from_str::<Value>(v), cur.as_array_mut()) {
            a.retain(|item| *item != want);
        }
    }
}

/// Outcome of [`server_side_apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// The merged object.
    pub object: Value,
    /// The new `metadata.managedFields`.
    pub managed_fields: Vec<Value>,
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyConflict {
    /// The other manager.
    pub manager: String,
    /// Dotted path of the field.
    pub field: String,
}

fn dotted(path: &[String]) -> String {
    let mut s = String::new();
    for seg in path {
        if let Some(f) = seg.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else {
            s.push('[');
            s.push_str(&seg[2..]);
            s.push(']');
        }
    }
    s
}

/// Server-side apply of `applied` by `manager` onto `live` (None = create).
///
/// The applied configuration is merged with strategic-merge semantics; fields the manager
/// applied before but no longer does are removed unless another manager also owns them. A field
/// whose live value differs from the applied one and that another manager owns is a conflict
/// unless `force`, in which case ownership moves to `manager`.
pub fn server_side_apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> Result<Applied, Vec<ApplyConflict>> {
    let new_fields = fields_v1(applied);
    let new_paths = leaf_paths(&new_fields);
    let mut managed: Vec<Value> = live
        .and_then(|l| l.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);

    // Conflicts: another manager owns a field this apply sets to a different value.
    let mut conflicts = Vec::new();
    for entry in &managed {
        let other = entry.get("manager").and_then(Value::as_str).unwrap_or("");
        let is_self =
            other == manager && entry.get("operation").and_then(Value::as_str) == Some("Apply");
        if is_self {
            continue;
        }
        let owned = leaf_paths(entry.get("fieldsV1").unwrap_or(&empty));
        for p in &new_paths {
            if owned.contains(p) {
                let live_v = resolve_path(live_obj, p);
                let new_v = resolve_path(applied, p);
                if live_v.is_some() && live_v != new_v && !new_v.is_some_and(Value::is_object) {
                    conflicts.push(ApplyConflict {
                        manager: other.to_string(),
                        field: dotted(p),
                    });
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Forced: the fields move to this manager.
    if force {
        for entry in managed.iter_mut() {
            let other = entry
                .get("manager")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if other == manager {
                continue;
            }
            if let Some(fields) = entry.get_mut("fieldsV1") {
                for p in &new_paths {
                    remove_fields_path(fields, p);
                }
            }
        }
    }

    // Start from live and drop what this manager applied before but no longer applies.
    let mut object = live_obj.clone();
    // A list item the manager no longer applies goes as a whole (its key fields included), so
    // items count as owned paths beside the leaves; shorter paths go first and what lies inside
    // an item already removed is skipped.
    let owned_paths = |fields: &Value| {
        let mut paths = leaf_paths(fields);
        paths.extend(item_paths(fields));
        paths
    };
    let mut previous = managed
        .iter()
        .find(|e| {
            e.get("manager").and_then(Value::as_str) == Some(manager)
                && e.get("operation").and_then(Value::as_str) == Some("Apply")
        })
        .and_then(|e| e.get("fieldsV1"))
        .map(owned_paths)
        .unwrap_or_default();
    previous.sort_by_key(Vec::len);
    let applied_now = owned_paths(&new_fields);
    let owned_by_others: Vec<Vec<String>> = managed
        .iter()
        .filter(|e| e.get("manager").and_then(Value::as_str) != Some(manager))
        .flat_map(|e| owned_paths(e.get("fieldsV1").unwrap_or(&empty)))
        .collect();
    let mut removed: Vec<Vec<String>> = Vec::new();
    for p in previous {
        if applied_now.contains(&p)
            || owned_by_others.contains(&p)
            || removed.iter().any(|r| p.starts_with(r))
        {
            continue;
        }
        remove_path(&mut object, &p);
        removed.push(p);
    }
    let mut object = strategic_merge(&object, applied).map_err(|e| {
        vec![ApplyConflict {
            manager: manager.into(),
            field: e,
        }]
    })?;

    managed.retain(|e| {
        !(e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some("Apply"))
    });
    managed.retain(|e| {
        e.get("fieldsV1")
            .is_some_and(|f| f.as_object().is_some_and(|m| !m.is_empty()))
    });
    managed.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": new_fields,
    }));
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(Applied {
        object,
        managed_fields: managed,
    })
}

fn remove_fields_path(fields: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = fields;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Records an `Update` (or other non-apply) operation by `manager` that set the fields of
/// `body` into `managed`, merging with the manager's earlier entry.
pub fn record_update(
    managed: &mut Vec<Value>,
    body: &Value,
    manager: &str,
    operation: &str,
    api_version: &str,
    now: &str,
    subresource: &str,
) {
    let fields = fields_v1(body);
    if fields.as_object().is_none_or(Map::is_empty) {
        return;
    }
    if let Some(entry) = managed.iter_mut().find(|e| {
        e.get("manager").and_then(Value::as_str) == Some(manager)
            && e.get("operation").and_then(Value::as_str) == Some(operation)
            && e.get("subresource").and_then(Value::as_str).unwrap_or("") == subresource
    }) {
        let merged = merge_patch(entry.get("fieldsV1").unwrap_or(&json!({})), &fields);
        entry["fieldsV1"] = merged;
        entry["time"] = json!(now);
        return;
    }
    let mut entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    if !subresource.is_empty() {
        entry["subresource"] = json!(subresource);
    }
    managed.push(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_merge_by_name() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"}
        ]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}
        ]}}}});
        let out = strategic_merge(&orig, &patch).unwrap();
        let cs = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs.as_array().unwrap().len(), 2);
        assert_eq!(cs[0]["image"], "a:2");
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(cs[1]["image"], "b:1");
    }

    #[test]
    fn ports_with_one_number_and_two_protocols_stay_two() {
        let orig = json!({"spec": {"template": {"spec": {"containers": [{"name": "dns", "ports": [
            {"containerPort": 53, "name": "dns", "protocol": "UDP"},
            {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"}
        ]}]}}, "ports": [{"port": 53, "protocol": "UDP", "name": "dns"}, {"port": 53, "name": "dns-tcp"}]}});
        // Re-applying the same object (what server-side apply does) changes nothing.
        assert_eq!(strategic_merge(&orig, &orig).unwrap(), orig);
        // A patch of the TCP port touches only it (an unset protocol is TCP).
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "dns", "ports": [
            {"containerPort": 53, "name": "dns-tcp2"}
        ]}]}}, "ports": [{"port": 53, "protocol": "TCP", "targetPort": 5353}]}});
        let out = strategic_merge(&orig, &patch).unwrap();
        let ports = &out["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert_eq!(ports.as_array().unwrap().len(), 2, "{ports}");
        assert_eq!(ports[0]["name"], "dns");
        assert_eq!(ports[1]["name"], "dns-tcp2");
        let service_ports = out["spec"]["ports"].as_array().unwrap();
        assert_eq!(service_ports.len(), 2);
        assert_eq!(service_ports[0].get("targetPort"), None);
        assert_eq!(service_ports[1]["targetPort"], 5353);
        // Managed fields name both elements.
        let fields = fields_v1(&orig).to_string();
        assert!(
            fields.contains(r#"k:{\"containerPort\":53,\"protocol\":\"UDP\"}"#),
            "{fields}"
        );
        assert!(
            fields.contains(r#"k:{\"containerPort\":53,\"protocol\":\"TCP\"}"#),
            "{fields}"
        );
    }

    #[test]
    fn directives() {
        let orig = json!({"metadata": {"finalizers": ["a", "b"], "labels": {"x": "1", "y": "2"}},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}], "tolerations": [{"key": "k"}]}});
        let patch = json!({
            "metadata": {"labels": {"y": null}, "$deleteFromPrimitiveList/finalizers": ["a"], "finalizers": ["z"]},
            "spec": {
                "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                "containers": [{"name": "b", "$patch": "delete"}],
                "tolerations": [{"key": "other"}]
            }
        });
        let out = strategic_merge(&orig, &patch).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"x": "1"}));
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "z"]));
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}])
        );
        // atomic list is replaced
        assert_eq!(out["spec"]["tolerations"], json!([{"key": "other"}]));
    }

    #[test]
    fn replace_and_retain_keys() {
        let orig = json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}, "ports": [{"port": 80}, {"port": 81}]}});
        let patch = json!({"spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "ports": [{"$patch": "replace"}, {"port": 9}]
        }});
        let out = strategic_merge(&orig, &patch).unwrap();
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(out["spec"]["ports"], json!([{"port": 9}]));
        let whole =
            strategic_merge(&orig, &json!({"spec": {"$patch": "replace", "x": 1}})).unwrap();
        assert_eq!(whole["spec"], json!({"x": 1}));
    }

    #[test]
    fn merge_key_missing_is_an_error() {
        let err = strategic_merge(
            &json!({"spec": {"containers": []}}),
            &json!({"spec": {"containers": [{"image": "x"}]}}),
        )
        .unwrap_err();
        assert!(err.contains("merge key: name"));
    }

    #[test]
    fn json_and_merge_patches() {
        let orig = json!({"spec": {"replicas": 1, "x": [1, 2]}});
        let out = json_patch(&orig, &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}, {"op": "add", "path": "/spec/x/-", "value": 3}])).unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 3, "x": [1, 2, 3]}}));
        assert!(json_patch(
            &orig,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
        )
        .is_err());
        assert_eq!(
            merge_patch(&orig, &json!({"spec": {"x": null}})),
            json!({"spec": {"replicas": 1}})
        );
    }

    #[test]
    fn fields_v1_notation() {
        let f = fields_v1(
            &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
        );
        assert_eq!(
            f,
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:name": {}}}}
            })
        );
        let paths = leaf_paths(&f);
        assert!(paths.contains(&vec![
            "f:spec".into(),
            "f:containers".into(),
            "k:{\"name\":\"c\"}".into(),
            "f:image".into()
        ]));
    }

    #[test]
    fn apply_removes_dropped_fields_and_detects_conflicts() {
        let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}, "data": {"k": "v"}});
        let a = server_side_apply(None, &first, "alice", false, "v1", "t").unwrap();
        assert_eq!(a.managed_fields.len(), 1);
        let mut live = a.object.clone();
        live["metadata"]["managedFields"] = json!(a.managed_fields);
        // alice drops label b
        let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "1"}}, "data": {"k": "v"}});
        let b = server_side_apply(Some(&live), &second, "alice", false, "v1", "t").unwrap();
        assert_eq!(b.object["metadata"]["labels"], json!({"a": "1"}));
        let mut live = b.object.clone();
        live["metadata"]["managedFields"] = json!(b.managed_fields);
        // bob changes data.k: conflict unless forced
        let bob = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "other"}});
        let err = server_side_apply(Some(&live), &bob, "bob", false, "v1", "t").unwrap_err();
        assert_eq!(
            err[0],
            ApplyConflict {
                manager: "alice".into(),
                field: ".data.k".into()
            }
        );
        let forced = server_side_apply(Some(&live), &bob, "bob", true, "v1", "t").unwrap();
        assert_eq!(forced.object["data"]["k"], "other");
        assert_eq!(forced.managed_fields.len(), 2);
    }

    #[test]
    fn apply_removes_a_dropped_list_item_whole() {
        let deployment = |env: Value| {
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"template": {"spec": {"containers": [
                    {"name": "app", "image": "i", "env": env}]}}}})
        };
        let first =
            deployment(json!([{"name": "MODE", "value": "a"}, {"name": "KEEP", "value": "k"}]));
        let a = server_side_apply(None, &first, "owner", false, "apps/v1", "t").unwrap();
        let mut live = a.object.clone();
        live["metadata"]["managedFields"] = json!(a.managed_fields);
        let second = deployment(json!([{"name": "KEEP", "value": "k"}]));
        let b = server_side_apply(Some(&live), &second, "owner", false, "apps/v1", "t").unwrap();
        assert_eq!(
            b.object["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "KEEP", "value": "k"}])
        );
        // Dropping the whole list removes every item, key fields included.
        let mut live = b.object.clone();
        live["metadata"]["managedFields"] = json!(b.managed_fields);
        let mut third = deployment(json!(null));
        third["spec"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("env");
        let c = server_side_apply(Some(&live), &third, "owner", false, "apps/v1", "t").unwrap();
        let app = &c.object["spec"]["template"]["spec"]["containers"][0];
        assert!(
            app.get("env").is_none_or(|e| e == &json!([])),
            "env left behind: {app}"
        );
    }
}
