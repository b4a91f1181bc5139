//! The last applied model of the table, and the nft scripts that bring the kernel to it:
//! a full script (delete and recreate the whole table in one transaction) and incremental
//! deltas that touch only what one set of Services changed.
//!
//! A delta adds new chains, flushes and refills changed ones, flushes chains that are gone
//! (they are deleted in a later transaction once nothing references them: before Linux 6.2
//! the kernel notices only a moment later that a chain lost its last map-element
//! reference), replaces changed affinity sets, and adds/deletes map elements.
//!
//! Map elements are owned per Service; when two Services claim the same key (for example
//! the same external IP and port), the first in namespace/name order wins and the other
//! takes over when the first goes away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::time::Instant;

use crate::model::ServiceKey;
use crate::render::{
    skeleton_chains, ElementKey, MapName, RenderContext, ServiceRules, BASE_CHAINS,
};

/// What the kernel holds, as far as this process knows.
#[derive(Debug, Default)]
pub struct TableModel {
    services: BTreeMap<ServiceKey, ServiceRules>,
    owners: HashMap<ElementKey, BTreeMap<ServiceKey, String>>,
    /// Chains removed from the model, flushed, waiting to be deleted, with the time they
    /// were flushed.
    stale_chains: BTreeMap<String, Instant>,
}

/// The changes from one model to the next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Delta {
    /// Chains to create.
    pub add_chains: BTreeSet<String>,
    /// Chains to (flush and) fill: name → rules.
    pub write_chains: BTreeMap<String, Vec<String>>,
    /// Existing chains among `write_chains` that must be flushed first.
    pub flush_chains: BTreeSet<String>,
    /// Chains that are gone: flushed now, deleted later.
    pub remove_chains: BTreeSet<String>,
    /// Sets to delete (gone, or re-declared).
    pub delete_sets: BTreeSet<String>,
    /// Sets to create: name → declaration.
    pub add_sets: BTreeMap<String, String>,
    /// Map elements to delete.
    pub delete_elements: BTreeSet<ElementKey>,
    /// Map elements to add: key → verdict.
    pub add_elements: BTreeMap<ElementKey, String>,
    /// Element keys claimed by more than one Service (for a warning).
    pub conflicts: BTreeSet<ElementKey>,
}

impl Delta {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add_chains.is_empty()
            && self.write_chains.is_empty()
            && self.remove_chains.is_empty()
            && self.delete_sets.is_empty()
            && self.add_sets.is_empty()
            && self.delete_elements.is_empty()
            && self.add_elements.is_empty()
    }

    /// The nft script applying this delta to `table` in one transaction.
    pub fn script(&self, table: &str) -> String {
        let mut s = String::new();
        for c in &self.add_chains {
            let _ = writeln!(s, "add chain inet {table} {c}");
        }
        for c in &self.flush_chains {
            let _ = writeln!(s, "flush chain inet {table} {c}");
        }
        for c in &self.remove_chains {
            let _ = writeln!(s, "flush chain inet {table} {c}");
        }
        for set in &self.delete_sets {
            let _ = writeln!(s, "delete set inet {table} {set}");
        }
        for (set, decl) in &self.add_sets {
            let _ = writeln!(s, "add set inet {table} {set} {{ {decl} }}");
        }
        for (chain, rules) in &self.write_chains {
            for rule in rules {
                let _ = writeln!(s, "add rule inet {table} {chain} {rule}");
            }
        }
        for (map, key) in &self.delete_elements {
            let _ = writeln!(s, "delete element inet {table} {map} {{ {key} }}");
        }
        for ((map, key), verdict) in &self.add_elements {
            let _ = writeln!(
                s,
                "add element inet {table} {map} {{ {} }}",
                map.element(key, verdict)
            );
        }
        s
    }
}

/// What a correct table holds, for the tamper check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// Chain → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Chains that may exist, empty (flushed, awaiting deletion).
    pub optional_chains: BTreeSet<String>,
    /// Map or set → number of elements.
    pub maps: BTreeMap<String, usize>,
    /// Sets that must exist whose elements are written by packets (affinity), not counted.
    pub sets: BTreeSet<String>,
}

impl TableModel {
    /// An empty model (nothing applied yet).
    pub fn new() -> TableModel {
        TableModel::default()
    }

    /// The Services in the model.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// The rules of one Service, if present.
    pub fn service(&self, key: &ServiceKey) -> Option<&ServiceRules> {
        self.services.get(key)
    }

    fn effective(&self, key: &ElementKey) -> Option<&String> {
        self.owners.get(key).and_then(|o| o.values().next())
    }

    fn chain_exists(&self, name: &str) -> bool {
        self.stale_chains.contains_key(name)
            || self.services.values().any(|s| s.chains.contains_key(name))
    }

    /// Replaces the rules of `key` (`None` removes the Service) and returns the changes.
    pub fn set_service(&mut self, key: &ServiceKey, new: Option<ServiceRules>) -> Delta {
        self.apply_batch(vec![(key.clone(), new)])
    }

    /// Replaces the rules of several Services at once; the delta holds the net change
    /// (an element handed from one Service to another within the batch is written once).
    pub fn apply_batch(&mut self, changes: Vec<(ServiceKey, Option<ServiceRules>)>) -> Delta {
        let mut delta = Delta::default();
        let mut before: BTreeMap<ElementKey, Option<String>> = BTreeMap::new();
        for (key, new) in changes {
            self.replace_one(&key, new, &mut delta, &mut before);
        }
        for (k, was) in before {
            let now = self.effective(&k).cloned();
            if was != now {
                if was.is_some() {
                    delta.delete_elements.insert(k.clone());
                }
                if let Some(v) = now {
                    delta.add_elements.insert(k, v);
                }
            }
        }
        delta
    }

    fn replace_one(
        &mut self,
        key: &ServiceKey,
        new: Option<ServiceRules>,
        delta: &mut Delta,
        before: &mut BTreeMap<ElementKey, Option<String>>,
    ) {
        let old = self.services.remove(key).unwrap_or_default();
        let new = new.unwrap_or_default();

        // Sets: re-declared sets are deleted and added again; chains referencing them
        // must then be rewritten even when their text is unchanged.
        let mut redeclared = BTreeSet::new();
        for (name, decl) in &old.sets {
            match new.sets.get(name) {
                Some(d) if d == decl => {}
                Some(_) => {
                    redeclared.insert(name.clone());
                    delta.delete_sets.insert(name.clone());
                }
                None => {
                    delta.delete_sets.insert(name.clone());
                }
            }
        }
        for (name, decl) in &new.sets {
            if old.sets.get(name) != Some(decl) {
                delta.add_sets.insert(name.clone(), decl.clone());
            }
        }

        // Chains.
        for (name, rules) in &new.chains {
            let references_redeclared = rules.iter().any(|r| {
                r.split_whitespace()
                    .any(|t| t.strip_prefix('@').is_some_and(|s| redeclared.contains(s)))
            });
            match old.chains.get(name) {
                Some(old_rules) if old_rules == rules && !references_redeclared => {}
                Some(_) => {
                    delta.flush_chains.insert(name.clone());
                    delta.write_chains.insert(name.clone(), rules.clone());
                }
                None => {
                    if self.stale_chains.remove(name).is_some() {
                        // Still in the kernel (flushed): reuse it.
                        delta.flush_chains.insert(name.clone());
                    } else {
                        delta.add_chains.insert(name.clone());
                    }
                    delta.write_chains.insert(name.clone(), rules.clone());
                }
            }
        }
        let now = Instant::now();
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                delta.remove_chains.insert(name.clone());
                self.stale_chains.insert(name.clone(), now);
            }
        }

        // Elements, resolved through the owner index.
        let keys: BTreeSet<ElementKey> = old
            .elements
            .keys()
            .chain(new.elements.keys())
            .cloned()
            .collect();
        for k in keys {
            if !before.contains_key(&k) {
                let was = self.effective(&k).cloned();
                before.insert(k.clone(), was);
            }
            let owners = self.owners.entry(k.clone()).or_default();
            owners.remove(key);
            if let Some(v) = new.elements.get(&k) {
                owners.insert(key.clone(), v.clone());
            }
            if owners.len() > 1 {
                delta.conflicts.insert(k.clone());
            }
            if owners.is_empty() {
                self.owners.remove(&k);
            }
        }

        if !new.chains.is_empty() || !new.sets.is_empty() || !new.elements.is_empty() {
            self.services.insert(key.clone(), new);
        }
    }

    /// Forgets every Service and stale chain (before a full rebuild).
    pub fn clear(&mut self) {
        self.services.clear();
        self.owners.clear();
        self.stale_chains.clear();
    }

    /// The script that deletes and recreates the whole table from this model.
    pub fn full_script(&self, ctx: &RenderContext) -> String {
        let t = &ctx.table;
        let mut s = String::with_capacity(256 + self.services.len() * 2048);
        // Creating first makes the delete valid when the table does not exist yet.
        let _ = writeln!(s, "add table inet {t}");
        let _ = writeln!(s, "delete table inet {t}");
        let _ = writeln!(
            s,
            "add table inet {t} {{ comment \"kinit service proxy\"; }}"
        );
        let skeleton = skeleton_chains(ctx);
        for (name, _) in &skeleton {
            match BASE_CHAINS.iter().find(|b| b.name == name) {
                Some(base) => {
                    let _ = writeln!(s, "add chain inet {t} {name} {{ {} }}", base.declaration());
                }
                None => {
                    let _ = writeln!(s, "add chain inet {t} {name}");
                }
            }
        }
        for svc in self.services.values() {
            for name in svc.chains.keys() {
                let _ = writeln!(s, "add chain inet {t} {name}");
            }
        }
        for map in MapName::all() {
            let _ = writeln!(
                s,
                "add {} inet {t} {map} {{ {} }}",
                map.kind(),
                map.declaration()
            );
        }
        for svc in self.services.values() {
            for (name, decl) in &svc.sets {
                let _ = writeln!(s, "add set inet {t} {name} {{ {decl} }}");
            }
        }
        for (name, rules) in &skeleton {
            for rule in rules {
                let _ = writeln!(s, "add rule inet {t} {name} {rule}");
            }
        }
        for svc in self.services.values() {
            for (name, rules) in &svc.chains {
                for rule in rules {
                    let _ = writeln!(s, "add rule inet {t} {name} {rule}");
                }
            }
        }
        let mut elements: Vec<(&ElementKey, &String)> = self
            .owners
            .iter()
            .filter_map(|(k, o)| o.values().next().map(|v| (k, v)))
            .collect();
        elements.sort();
        for ((map, key), verdict) in elements {
            let _ = writeln!(
                s,
                "add element inet {t} {map} {{ {} }}",
                map.element(key, verdict)
            );
        }
        s
    }

    /// Chains flushed at least `grace` ago, ready to be deleted.
    pub fn stale_chains_older_than(&self, now: Instant, grace: std::time::Duration) -> Vec<String> {
        self.stale_chains
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= grace)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// When the oldest stale chain was flushed.
    pub fn oldest_stale_chain(&self) -> Option<Instant> {
        self.stale_chains.values().min().copied()
    }

    /// Forgets stale chains that were deleted.
    pub fn stale_chains_deleted(&mut self, names: &[String]) {
        for n in names {
            self.stale_chains.remove(n);
        }
    }

    /// Script deleting `names` (stale chains).
    pub fn delete_chains_script(table: &str, names: &[String]) -> String {
        names
            .iter()
            .map(|n| format!("delete chain inet {table} {n}\n"))
            .collect()
    }

    /// What the kernel should hold.
    pub fn expected(&self, ctx: &RenderContext) -> Expected {
        let mut chains: BTreeMap<String, usize> = skeleton_chains(ctx)
            .into_iter()
            .map(|(n, r)| (n, r.len()))
            .collect();
        let mut sets = BTreeSet::new();
        for svc in self.services.values() {
            for (name, rules) in &svc.chains {
                chains.insert(name.clone(), rules.len());
            }
            sets.extend(svc.sets.keys().cloned());
        }
        let mut maps: BTreeMap<String, usize> = MapName::all()
            .into_iter()
            .map(|m| (m.to_string(), 0))
            .collect();
        for (map, _) in self.owners.keys() {
            *maps.entry(map.to_string()).or_default() += 1;
        }
        Expected {
            chains,
            optional_chains: self.stale_chains.keys().cloned().collect(),
            maps,
            sets,
        }
    }

    /// Whether `name` is a chain of the model (live or stale).
    pub fn has_chain(&self, name: &str) -> bool {
        self.chain_exists(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{plan_service, Family};
    use crate::render::render_service;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use serde_json::json;

    fn ctx() -> RenderContext {
        RenderContext {
            table: "kinit-proxy".into(),
            masquerade_mark: 0x4000,
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            masquerade_all: false,
        }
    }

    fn svc(name: &str, ip: &str, extra: serde_json::Value) -> Service {
        let mut s = json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        });
        for (k, v) in extra.as_object().unwrap() {
            s["spec"][k] = v.clone();
        }
        serde_json::from_value(s).unwrap()
    }

    fn slice(name: &str, ips: &[&str]) -> EndpointSlice {
        let eps: Vec<serde_json::Value> = ips
            .iter()
            .map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}}))
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": eps
        }))
        .unwrap()
    }

    fn rules(s: &Service, sl: &EndpointSlice) -> ServiceRules {
        render_service(&ctx(), &plan_service(s, &[sl], "n1").unwrap())
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", name)
    }

    #[test]
    fn one_endpoint_change_touches_only_that_services_chains() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({}));
        let b = svc("b", "10.96.0.2", json!({}));
        model.set_service(
            &key("a"),
            Some(rules(&a, &slice("a", &["10.244.0.1", "10.244.0.2"]))),
        );
        model.set_service(
            &key("b"),
            Some(rules(&b, &slice("b", &["10.244.1.1", "10.244.1.2"]))),
        );

        let delta = model.set_service(
            &key("a"),
            Some(rules(&a, &slice("a", &["10.244.0.1", "10.244.0.3"]))),
        );
        let script = delta.script("kinit-proxy");
        assert!(!script.contains("default/b/"), "{script}");
        assert!(!script.contains("delete table"), "{script}");
        // The new endpoint's chain is created and filled, the service chain is rewritten,
        // the removed endpoint's chain is flushed (and deleted later).
        assert!(
            script.contains("add chain inet kinit-proxy endpoint-"),
            "{script}"
        );
        assert!(script.contains("10.244.0.3/8080\n"), "{script}");
        assert!(
            script.contains("flush chain inet kinit-proxy service-"),
            "{script}"
        );
        let removed: Vec<&String> = delta.remove_chains.iter().collect();
        assert_eq!(removed.len(), 1);
        assert!(removed[0].ends_with("__10.244.0.2/8080"));
        // The untouched endpoint keeps its chain: it is neither added nor rewritten.
        assert!(!delta
            .write_chains
            .keys()
            .any(|c| c.ends_with("__10.244.0.1/8080")));
        // No element changes: the cluster IP still goes to the same service chain.
        assert!(delta.add_elements.is_empty() && delta.delete_elements.is_empty());
        assert_eq!(
            model
                .stale_chains_older_than(Instant::now(), std::time::Duration::ZERO)
                .len(),
            1
        );
    }

    #[test]
    fn identical_rules_give_an_empty_delta() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({}));
        let r = rules(&a, &slice("a", &["10.244.0.1"]));
        model.set_service(&key("a"), Some(r.clone()));
        assert!(model.set_service(&key("a"), Some(r)).is_empty());
    }

    #[test]
    fn losing_all_endpoints_moves_the_element_to_the_reject_map() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        let delta = model.set_service(&key("a"), Some(rules(&a, &slice("a", &[]))));
        let script = delta.script("t");
        assert!(
            script.contains("delete element inet t service-ips-v4 { 10.96.0.1 . tcp . 80 }"),
            "{script}"
        );
        assert!(script.contains("add element inet t no-endpoint-services-v4 { 10.96.0.1 . tcp . 80 : goto reject-chain }"), "{script}");
        assert_eq!(delta.remove_chains.len(), 2);
        // Element deletion comes before the flush... order inside one transaction does not
        // matter to packets, but deletions of chains never happen in this script.
        assert!(!script.contains("delete chain"));
    }

    #[test]
    fn removed_service_and_readded_chain_reuse_the_stale_chain() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({}));
        let r = rules(&a, &slice("a", &["10.244.0.1"]));
        model.set_service(&key("a"), Some(r.clone()));
        let gone = model.set_service(&key("a"), None);
        assert_eq!(gone.remove_chains.len(), 2);
        assert_eq!(model.service_count(), 0);
        let back = model.set_service(&key("a"), Some(r));
        assert!(
            back.add_chains.is_empty(),
            "stale chains still exist: {:?}",
            back.add_chains
        );
        assert_eq!(back.flush_chains.len(), 2);
        assert!(model.oldest_stale_chain().is_none());
    }

    #[test]
    fn conflicting_external_ips_keep_one_owner_and_fail_over() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"externalIPs": ["192.0.2.9"]}));
        let b = svc("b", "10.96.0.2", json!({"externalIPs": ["192.0.2.9"]}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        let d = model.set_service(&key("b"), Some(rules(&b, &slice("b", &["10.244.1.1"]))));
        let k = (
            MapName::ServiceIps(Family::V4),
            "192.0.2.9 . tcp . 80".to_string(),
        );
        assert!(d.conflicts.contains(&k));
        assert!(!d.add_elements.contains_key(&k), "a keeps the address");
        let d = model.set_service(&key("a"), None);
        assert!(d.delete_elements.contains(&k));
        assert!(
            d.add_elements[&k].contains("default/b/"),
            "{:?}",
            d.add_elements
        );
    }

    #[test]
    fn batch_delta_is_the_net_change() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"externalIPs": ["192.0.2.9"]}));
        let b = svc("b", "10.96.0.2", json!({"externalIPs": ["192.0.2.9"]}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        model.set_service(&key("b"), Some(rules(&b, &slice("b", &["10.244.1.1"]))));
        // Both go away in one batch: the shared address is deleted once, never re-added.
        let d = model.apply_batch(vec![(key("a"), None), (key("b"), None)]);
        let k = (
            MapName::ServiceIps(Family::V4),
            "192.0.2.9 . tcp . 80".to_string(),
        );
        assert!(d.delete_elements.contains(&k));
        assert!(d.add_elements.is_empty(), "{:?}", d.add_elements);
    }

    #[test]
    fn changed_affinity_timeout_redeclares_sets_and_rewrites_users() {
        let mut model = TableModel::new();
        let a1 = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        let a2 = svc(
            "a",
            "10.96.0.1",
            json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 30}}}),
        );
        let sl = slice("a", &["10.244.0.1"]);
        model.set_service(&key("a"), Some(rules(&a1, &sl)));
        let d = model.set_service(&key("a"), Some(rules(&a2, &sl)));
        assert_eq!(d.delete_sets.len(), 1);
        assert_eq!(d.add_sets.len(), 1);
        // Both the service chain and the endpoint chain reference the set.
        assert_eq!(d.flush_chains.len(), 2, "{:?}", d.flush_chains);
        let script = d.script("t");
        let flush = script.find("flush chain").unwrap();
        let del = script.find("delete set").unwrap();
        let add = script.find("add set").unwrap();
        let rule = script.find("add rule").unwrap();
        assert!(flush < del && del < add && add < rule, "{script}");
    }

    #[test]
    fn full_script_recreates_the_table_and_declares_before_use() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        let s = model.full_script(&ctx());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "add table inet kinit-proxy");
        assert_eq!(lines[1], "delete table inet kinit-proxy");
        let first_rule = lines
            .iter()
            .position(|l| l.starts_with("add rule"))
            .unwrap();
        let last_decl = lines
            .iter()
            .rposition(|l| {
                l.starts_with("add chain") || l.starts_with("add set") || l.starts_with("add map")
            })
            .unwrap();
        assert!(last_decl < first_rule);
        assert!(s.contains("add chain inet kinit-proxy nat-prerouting { type nat hook prerouting priority -100; policy accept; }"));
        assert!(s.contains(
            "add element inet kinit-proxy service-ips-v4 { 10.96.0.1 . tcp . 80 : goto service-"
        ));
        let e = model.expected(&ctx());
        assert_eq!(e.maps["service-ips-v4"], 1);
        assert_eq!(e.maps["no-endpoint-services-v4"], 0);
        assert_eq!(e.sets.len(), 1);
        assert_eq!(e.chains["services"], 4);
        assert_eq!(e.maps["cluster-ips-v4"], 1);
        assert!(
            s.contains("add element inet kinit-proxy cluster-ips-v4 { 10.96.0.1 }"),
            "{s}"
        );
        assert!(
            s.contains("add set inet kinit-proxy cluster-ips-v4 { type ipv4_addr;"),
            "{s}"
        );
    }
}
