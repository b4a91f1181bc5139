//! The last applied model of the table, the nft scripts that bring the kernel to it, and the
//! comparison of the kernel's table with it (the tamper check):
//!
//! - a full resync rebuilds the table in place in one transaction
//!   ([`TableModel::rebuild_script`]): every chain, verdict map and cluster-IP set is flushed
//!   and refilled, objects that no longer belong are deleted, and the session-affinity sets
//!   of Services that still have affinity are kept with their elements, as kube-proxy's
//!   nftables mode does, so clients stay with their endpoints across resyncs and repairs.
//!   Deleting and recreating the whole table ([`TableModel::recreate_script`]) is the last
//!   resort when a rebuild fails;
//! - incremental deltas touch only what one set of Services changed.
//!
//! A delta adds new chains, flushes and refills changed ones, flushes chains that are gone
//! (they are deleted in a later transaction once nothing references them: before Linux 6.2
//! the kernel notices only a moment later that a chain lost its last map-element
//! reference), replaces changed affinity sets, and adds/deletes map elements.
//!
//! Map elements are owned per Service; when two Services claim the same key (for example
//! the same external IP and port), the first in namespace/name order wins and the other
//! takes over when the first goes away.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::time::Instant;

use crate::listing::{normalize, same_text, ListedHook, SetShape, TableListing};
use crate::model::ServiceKey;
use crate::render::{
    skeleton_chains, BaseChain, ElementKey, MapName, RenderContext, ServiceRules, BASE_CHAINS,
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

/// A full resync's script that rebuilds the table in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// The nft script (one transaction).
    pub script: String,
    /// Regular chains the table held that the model does not have: flushed by the script,
    /// to be deleted later ([`TableModel::add_stale_chains`]).
    pub leftover_chains: Vec<String>,
}

/// One way the kernel's table differs from the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Difference {
    /// A rule has other content than the model's rule at the same position (the chain has
    /// the expected number of rules).
    Rule {
        /// The chain.
        chain: String,
        /// The rule's position (from 0).
        index: usize,
        /// The rule as the proxy wrote it.
        written: String,
        /// The rule as nft lists it (rendered from JSON).
        listed: String,
    },
    /// Anything else: a missing or unexpected chain, set, map or element, a wrong number of
    /// rules, a wrong hook, policy or declaration.
    Other(String),
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Difference::Rule {
                chain,
                index,
                written,
                listed,
            } => write!(
                f,
                "chain {chain} rule {} is `{listed}`, expected `{written}`",
                index + 1
            ),
            Difference::Other(what) => f.write_str(what),
        }
    }
}

fn table_declaration(table: &str) -> String {
    format!("add table inet {table} {{ comment \"kinit service proxy\"; }}")
}

/// `add chain`, with the hook declaration for a base chain.
fn add_chain(s: &mut String, table: &str, name: &str) {
    match BASE_CHAINS.iter().find(|b| b.name == name) {
        Some(base) => {
            let _ = writeln!(
                s,
                "add chain inet {table} {name} {{ {} }}",
                base.declaration()
            );
        }
        None => {
            let _ = writeln!(s, "add chain inet {table} {name}");
        }
    }
}

/// Whether a listed hook is the base chain's (the policy aside: re-declaring resets it).
fn hook_matches(base: &BaseChain, hook: &ListedHook) -> bool {
    hook.kind == base.kind && hook.hook == base.hook && hook.priority == Some(base.priority.into())
}

/// Compares a map's elements with the wanted ones, as sets, by content.
fn compare_elements(
    map: &str,
    mut wanted: Vec<String>,
    listed: &[String],
    out: &mut Vec<Difference>,
) {
    let mut seen = listed.to_vec();
    wanted.sort();
    seen.sort();
    if wanted == seen {
        return;
    }
    let mut wanted: Vec<String> = wanted.iter().map(|e| normalize(e)).collect();
    let mut seen: Vec<String> = seen.iter().map(|e| normalize(e)).collect();
    wanted.sort();
    seen.sort();
    if wanted == seen {
        return;
    }
    if wanted.len() != seen.len() {
        out.push(Difference::Other(format!(
            "map {map} has {} elements, expected {}",
            seen.len(),
            wanted.len()
        )));
    }
    let wanted_set: BTreeSet<&String> = wanted.iter().collect();
    let seen_set: BTreeSet<&String> = seen.iter().collect();
    for e in wanted_set.difference(&seen_set).take(3) {
        out.push(Difference::Other(format!("map {map} lacks element {e}")));
    }
    for e in seen_set.difference(&wanted_set).take(3) {
        out.push(Difference::Other(format!(
            "map {map} has unexpected element {e}"
        )));
    }
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

    /// The script that deletes the whole table and creates it again from this model, in one
    /// transaction. Everything goes, session-affinity state included: this is the last
    /// resort when rebuilding in place ([`TableModel::rebuild_script`]) failed.
    pub fn recreate_script(&self, ctx: &RenderContext) -> String {
        let t = &ctx.table;
        let mut s = String::with_capacity(256 + self.services.len() * 2048);
        // Creating first makes the delete valid when the table does not exist yet.
        let _ = writeln!(s, "add table inet {t}");
        let _ = writeln!(s, "delete table inet {t}");
        let _ = writeln!(s, "{}", table_declaration(t));
        let skeleton = skeleton_chains(ctx);
        for (name, _) in &skeleton {
            add_chain(&mut s, t, name);
        }
        for svc in self.services.values() {
            for name in svc.chains.keys() {
                add_chain(&mut s, t, name);
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
        self.write_rules_and_elements(&mut s, t, &skeleton);
        s
    }

    /// The script of a full resync that rebuilds the table in place, in one transaction,
    /// given what it holds now (`existing`, from a listing; empty when the table does not
    /// exist):
    ///
    /// - every chain is flushed and the model's chains are refilled; base chains are declared
    ///   again (which resets their policy to accept); a chain whose kind or hook is wrong is
    ///   deleted and created again;
    /// - the verdict maps and the cluster-IP sets are flushed and refilled;
    /// - session-affinity sets the model still has are kept with their elements (the clients
    ///   stay with their endpoints) unless their type or timeout differs; missing ones are
    ///   added; those of Services without affinity any more are deleted;
    /// - sets, maps and base chains the model does not have are deleted; regular chains it
    ///   does not have are flushed and returned in [`Rebuild::leftover_chains`], to be
    ///   deleted in a later transaction like every removed chain (see the module docs).
    pub fn rebuild_script(&self, ctx: &RenderContext, existing: &TableListing) -> Rebuild {
        let t = &ctx.table;
        let mut s = String::with_capacity(256 + self.services.len() * 2048);
        let _ = writeln!(s, "{}", table_declaration(t));
        let skeleton = skeleton_chains(ctx);

        // The model's chains (name → base chain declaration) and sets (name → kind,
        // declaration, whether its elements are kept).
        let mut chains: BTreeMap<&str, Option<&BaseChain>> = BTreeMap::new();
        for (name, _) in &skeleton {
            chains.insert(name, BASE_CHAINS.iter().find(|b| b.name == name));
        }
        for svc in self.services.values() {
            for name in svc.chains.keys() {
                chains.insert(name, None);
            }
        }
        let mut sets: BTreeMap<String, (&'static str, String, bool)> = BTreeMap::new();
        for map in MapName::all() {
            sets.insert(map.to_string(), (map.kind(), map.declaration(), false));
        }
        for svc in self.services.values() {
            for (name, decl) in &svc.sets {
                sets.insert(name.clone(), ("set", decl.clone(), true));
            }
        }

        let mut delete_chains = BTreeSet::new();
        let mut leftover_chains = Vec::new();
        for (name, listed) in &existing.chains {
            let _ = writeln!(s, "flush chain inet {t} {name}");
            match (chains.get(name.as_str()), &listed.hook) {
                (Some(Some(base)), Some(hook)) if hook_matches(base, hook) => {}
                (Some(None), None) => {}
                (None, None) => leftover_chains.push(name.clone()),
                // Wrong kind or hook, or a base chain the model does not have (it can still
                // drop packets when empty): it goes now. Nothing can jump to a base chain.
                _ => {
                    delete_chains.insert(name.clone());
                }
            }
        }
        let mut delete_sets = BTreeMap::new();
        for (name, listed) in &existing.sets {
            match sets.get(name) {
                Some((kind, decl, keep)) => {
                    let shape = SetShape::from_declaration(*kind == "map", decl);
                    if shape != listed.shape {
                        delete_sets.insert(name.clone(), listed.shape.is_map);
                    } else if !keep {
                        let _ = writeln!(s, "flush {kind} inet {t} {name}");
                    }
                }
                None => {
                    delete_sets.insert(name.clone(), listed.shape.is_map);
                }
            }
        }
        for name in &delete_chains {
            let _ = writeln!(s, "delete chain inet {t} {name}");
        }
        for (name, is_map) in &delete_sets {
            let kind = if *is_map { "map" } else { "set" };
            let _ = writeln!(s, "delete {kind} inet {t} {name}");
        }
        for (name, base) in &chains {
            let present = existing.chains.contains_key(*name) && !delete_chains.contains(*name);
            if base.is_some() || !present {
                add_chain(&mut s, t, name);
            }
        }
        for (name, (kind, decl, _)) in &sets {
            let present = existing.sets.contains_key(name) && !delete_sets.contains_key(name);
            if !present {
                let _ = writeln!(s, "add {kind} inet {t} {name} {{ {decl} }}");
            }
        }
        self.write_rules_and_elements(&mut s, t, &skeleton);
        Rebuild {
            script: s,
            leftover_chains,
        }
    }

    fn write_rules_and_elements(
        &self,
        s: &mut String,
        t: &str,
        skeleton: &[(String, Vec<String>)],
    ) {
        for (name, rules) in skeleton {
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
    }

    /// Registers chains left in the kernel by a rebuild as stale (flushed now, deleted
    /// after the grace period).
    pub fn add_stale_chains(&mut self, names: &[String]) {
        let now = Instant::now();
        for n in names {
            if !self.chain_exists(n) {
                self.stale_chains.insert(n.clone(), now);
            }
        }
    }

    /// How the kernel's table (`listing`, read with [`crate::listing::Detail::Contents`]) differs from this
    /// model; empty when it matches. Compared:
    ///
    /// - every chain of the model exists, with the right hook, type and priority for a base
    ///   chain and policy accept, and holds the model's rules in order, compared by content
    ///   ([`crate::listing::same_text`]); a pair `(written, listed)` in `tolerated` counts as
    ///   equal;
    /// - no other chain exists, except stale chains awaiting deletion, which must be empty;
    /// - every verdict map and cluster-IP set exists with its key and data types and holds
    ///   exactly the model's elements (keys and verdicts);
    /// - every session-affinity set exists with its type and timeout (its elements are
    ///   written by packets and not compared);
    /// - no other set or map exists.
    pub fn differences(
        &self,
        ctx: &RenderContext,
        listing: &TableListing,
        tolerated: &HashSet<(String, String)>,
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        let skeleton = skeleton_chains(ctx);
        let mut chains: BTreeMap<&str, &[String]> = BTreeMap::new();
        for (name, rules) in &skeleton {
            chains.insert(name, rules);
        }
        for svc in self.services.values() {
            for (name, rules) in &svc.chains {
                chains.insert(name, rules);
            }
        }
        for (name, rules) in &chains {
            let Some(listed) = listing.chains.get(*name) else {
                out.push(Difference::Other(format!("chain {name} is missing")));
                continue;
            };
            let base = BASE_CHAINS.iter().find(|b| b.name == *name);
            match (base, &listed.hook) {
                (Some(b), Some(h)) if !hook_matches(b, h) => out.push(Difference::Other(format!(
                    "base chain {name} is type {} hook {} priority {}, expected {}",
                    h.kind,
                    h.hook,
                    h.priority.map_or("?".into(), |p| p.to_string()),
                    b.declaration()
                ))),
                (Some(_), Some(h)) if h.policy != "accept" => out.push(Difference::Other(format!(
                    "base chain {name} has policy {}, expected accept",
                    h.policy
                ))),
                (Some(_), None) => out.push(Difference::Other(format!(
                    "chain {name} is not hooked, expected a base chain"
                ))),
                (None, Some(h)) => out.push(Difference::Other(format!(
                    "chain {name} is hooked to {}, expected a regular chain",
                    h.hook
                ))),
                _ => {}
            }
            if listed.rule_count != rules.len() {
                out.push(Difference::Other(format!(
                    "chain {name} has {} rules, expected {}",
                    listed.rule_count,
                    rules.len()
                )));
                continue;
            }
            for (index, (written, seen)) in rules.iter().zip(&listed.rules).enumerate() {
                if !same_text(written, seen)
                    && !tolerated.contains(&(written.clone(), seen.clone()))
                {
                    out.push(Difference::Rule {
                        chain: name.to_string(),
                        index,
                        written: written.clone(),
                        listed: seen.clone(),
                    });
                }
            }
        }
        for (name, listed) in &listing.chains {
            if chains.contains_key(name.as_str()) {
                continue;
            }
            if !self.stale_chains.contains_key(name) {
                out.push(Difference::Other(format!("unexpected chain {name}")));
            } else if let Some(hook) = &listed.hook {
                out.push(Difference::Other(format!(
                    "stale chain {name} is hooked to {}",
                    hook.hook
                )));
            } else if listed.rule_count != 0 {
                out.push(Difference::Other(format!(
                    "stale chain {name} has {} rules",
                    listed.rule_count
                )));
            }
        }

        let mut elements: BTreeMap<MapName, Vec<String>> = BTreeMap::new();
        for ((map, key), owners) in &self.owners {
            if let Some(verdict) = owners.values().next() {
                elements
                    .entry(*map)
                    .or_default()
                    .push(map.element(key, verdict));
            }
        }
        let mut known: BTreeSet<String> = BTreeSet::new();
        for map in MapName::all() {
            let name = map.to_string();
            let wanted = elements.remove(&map).unwrap_or_default();
            let shape = SetShape::from_declaration(!map.is_set(), &map.declaration());
            match listing.sets.get(&name) {
                None => out.push(Difference::Other(format!("map {name} is missing"))),
                Some(listed) if listed.shape != shape => out.push(Difference::Other(format!(
                    "map {name} is declared as {}, expected {}",
                    listed.shape, shape
                ))),
                Some(listed) => compare_elements(&name, wanted, &listed.elements, &mut out),
            }
            known.insert(name);
        }
        for svc in self.services.values() {
            for (name, decl) in &svc.sets {
                let shape = SetShape::from_declaration(false, decl);
                match listing.sets.get(name) {
                    None => out.push(Difference::Other(format!("set {name} is missing"))),
                    Some(listed) if listed.shape != shape => out.push(Difference::Other(format!(
                        "set {name} is declared as {}, expected {}",
                        listed.shape, shape
                    ))),
                    Some(_) => {}
                }
                known.insert(name.clone());
            }
        }
        for name in listing.sets.keys() {
            if !known.contains(name) {
                out.push(Difference::Other(format!("unexpected map or set {name}")));
            }
        }
        out
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

    /// Whether `name` is a chain of the model (live or stale).
    pub fn has_chain(&self, name: &str) -> bool {
        self.chain_exists(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::TableListing;
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

    fn declarations_before_rules(s: &str) {
        let lines: Vec<&str> = s.lines().collect();
        let first_rule = lines
            .iter()
            .position(|l| l.starts_with("add rule"))
            .unwrap();
        let last_decl = lines
            .iter()
            .rposition(|l| {
                l.starts_with("add chain")
                    || l.starts_with("add set")
                    || l.starts_with("add map")
                    || l.starts_with("delete")
                    || l.starts_with("flush")
            })
            .unwrap();
        assert!(last_decl < first_rule, "{s}");
    }

    #[test]
    fn recreate_script_deletes_the_table_and_declares_before_use() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        let s = model.recreate_script(&ctx());
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "add table inet kinit-proxy");
        assert_eq!(lines[1], "delete table inet kinit-proxy");
        declarations_before_rules(&s);
        assert!(s.contains("add chain inet kinit-proxy nat-prerouting { type nat hook prerouting priority -100; policy accept; }"));
        assert!(s.contains(
            "add element inet kinit-proxy service-ips-v4 { 10.96.0.1 . tcp . 80 : goto service-"
        ));
        assert!(s.contains("add set inet kinit-proxy affinity-"), "{s}");
    }

    #[test]
    fn rebuild_of_a_missing_table_creates_everything() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        let r = model.rebuild_script(&ctx(), &TableListing::default());
        let s = &r.script;
        assert!(!s.contains("delete"), "{s}");
        assert!(!s.contains("flush"), "{s}");
        assert!(s.starts_with("add table inet kinit-proxy { comment"), "{s}");
        declarations_before_rules(s);
        assert!(s.contains("add chain inet kinit-proxy nat-prerouting { type nat hook prerouting priority -100; policy accept; }"));
        assert!(
            s.contains("add set inet kinit-proxy cluster-ips-v4 { type ipv4_addr;"),
            "{s}"
        );
        assert!(
            s.contains("add element inet kinit-proxy cluster-ips-v4 { 10.96.0.1 }"),
            "{s}"
        );
        assert!(s.contains("add set inet kinit-proxy affinity-"), "{s}");
        assert!(r.leftover_chains.is_empty());
    }

    /// A listing of what `model` would have written, as the kernel would list it.
    fn listing_of(model: &TableModel) -> TableListing {
        let mut l = TableListing::default();
        for (name, rules) in skeleton_chains(&ctx()) {
            let hook = BASE_CHAINS
                .iter()
                .find(|b| b.name == name)
                .map(|b| ListedHook {
                    kind: b.kind.into(),
                    hook: b.hook.into(),
                    priority: Some(b.priority.into()),
                    policy: "accept".into(),
                });
            l.chains.insert(
                name,
                crate::listing::ListedChain {
                    hook,
                    rule_count: rules.len(),
                    rules,
                },
            );
        }
        for svc in model.services.values() {
            for (name, rules) in &svc.chains {
                l.chains.insert(
                    name.clone(),
                    crate::listing::ListedChain {
                        hook: None,
                        rule_count: rules.len(),
                        rules: rules.clone(),
                    },
                );
            }
            for (name, decl) in &svc.sets {
                l.sets.insert(
                    name.clone(),
                    crate::listing::ListedSet {
                        shape: SetShape::from_declaration(false, decl),
                        elements: Vec::new(),
                        element_count: 3,
                    },
                );
            }
        }
        for map in MapName::all() {
            let elements: Vec<String> = model
                .owners
                .iter()
                .filter(|((m, _), _)| *m == map)
                .filter_map(|((m, k), o)| o.values().next().map(|v| m.element(k, v)))
                .collect();
            l.sets.insert(
                map.to_string(),
                crate::listing::ListedSet {
                    shape: SetShape::from_declaration(!map.is_set(), &map.declaration()),
                    element_count: elements.len(),
                    elements,
                },
            );
        }
        l
    }

    #[test]
    fn rebuild_keeps_affinity_sets_and_flushes_everything_else() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        let b = svc("b", "10.96.0.2", json!({"sessionAffinity": "ClientIP"}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        model.set_service(&key("b"), Some(rules(&b, &slice("b", &["10.244.1.1"]))));
        let mut existing = listing_of(&model);
        // Since then: b lost its affinity, someone added a chain, a set and a base chain
        // with policy drop, and changed the priority of one of ours.
        let b_set = model
            .service(&key("b"))
            .unwrap()
            .sets
            .keys()
            .next()
            .unwrap()
            .clone();
        let b2 = svc("b", "10.96.0.2", json!({}));
        model.set_service(&key("b"), Some(rules(&b2, &slice("b", &["10.244.1.1"]))));
        existing
            .chains
            .insert("intruder".into(), Default::default());
        existing.chains.insert(
            "intruder-base".into(),
            crate::listing::ListedChain {
                hook: Some(ListedHook {
                    kind: "filter".into(),
                    hook: "input".into(),
                    priority: Some(0),
                    policy: "drop".into(),
                }),
                ..Default::default()
            },
        );
        existing
            .chains
            .get_mut("nat-output")
            .unwrap()
            .hook
            .as_mut()
            .unwrap()
            .priority = Some(0);
        existing.sets.insert(
            "intruder-set".into(),
            crate::listing::ListedSet {
                shape: SetShape::from_declaration(false, "type ipv4_addr;"),
                elements: Vec::new(),
                element_count: 0,
            },
        );
        let r = model.rebuild_script(&ctx(), &existing);
        let s = &r.script;
        declarations_before_rules(s);
        assert!(!s.contains("delete table"), "{s}");
        let a_set = model
            .service(&key("a"))
            .unwrap()
            .sets
            .keys()
            .next()
            .unwrap()
            .clone();
        // The affinity set of a is neither flushed, deleted nor re-added: only rules use it.
        assert!(s.contains(&format!(" @{a_set} ")), "{s}");
        for line in s.lines() {
            if line.contains(&format!(" {a_set}")) {
                assert!(line.starts_with("add rule"), "{line}");
            }
        }
        assert!(
            s.contains(&format!("delete set inet kinit-proxy {b_set}\n")),
            "{s}"
        );
        assert!(
            s.contains("delete set inet kinit-proxy intruder-set\n"),
            "{s}"
        );
        assert!(
            s.contains("flush map inet kinit-proxy service-ips-v4\n"),
            "{s}"
        );
        assert!(
            s.contains("flush set inet kinit-proxy cluster-ips-v4\n"),
            "{s}"
        );
        assert!(s.contains("flush chain inet kinit-proxy services\n"), "{s}");
        // Base chains: re-declared (policy accept); the wrong one deleted and re-added.
        assert!(s.contains("add chain inet kinit-proxy nat-prerouting { type nat hook prerouting priority -100; policy accept; }"));
        assert!(
            s.contains("delete chain inet kinit-proxy nat-output\n"),
            "{s}"
        );
        assert!(s.contains("add chain inet kinit-proxy nat-output { type nat hook output priority -100; policy accept; }"));
        assert!(
            s.contains("delete chain inet kinit-proxy intruder-base\n"),
            "{s}"
        );
        // Existing regular chains are flushed, not added again; unknown ones stay flushed
        // until deleted later.
        assert!(!s.contains("add chain inet kinit-proxy services\n"), "{s}");
        assert!(
            !s.contains("delete chain inet kinit-proxy intruder\n"),
            "{s}"
        );
        assert_eq!(r.leftover_chains, vec!["intruder".to_string()]);
        assert!(s.contains("add element inet kinit-proxy cluster-ips-v4 { 10.96.0.2 }"));

        model.add_stale_chains(&r.leftover_chains);
        assert!(model.has_chain("intruder"));
    }

    #[test]
    fn rebuild_redeclares_an_affinity_set_with_another_timeout() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        model.set_service(&key("a"), Some(rules(&a, &slice("a", &["10.244.0.1"]))));
        let mut existing = listing_of(&model);
        let name = model
            .service(&key("a"))
            .unwrap()
            .sets
            .keys()
            .next()
            .unwrap()
            .clone();
        existing.sets.get_mut(&name).unwrap().shape.timeout_seconds = Some(60);
        let s = model.rebuild_script(&ctx(), &existing).script;
        let del = s
            .find(&format!("delete set inet kinit-proxy {name}\n"))
            .expect("deleted");
        let add = s
            .find(&format!("add set inet kinit-proxy {name} {{"))
            .expect("added");
        assert!(del < add, "{s}");
    }

    #[test]
    fn differences_compare_rule_content_and_elements() {
        let mut model = TableModel::new();
        let a = svc("a", "10.96.0.1", json!({"sessionAffinity": "ClientIP"}));
        model.set_service(
            &key("a"),
            Some(rules(&a, &slice("a", &["10.244.0.1", "10.244.0.2"]))),
        );
        let good = listing_of(&model);
        let none = HashSet::new();
        assert_eq!(model.differences(&ctx(), &good, &none), vec![]);

        // One rule edited in place: the count is unchanged.
        let mut edited = good.clone();
        let (chain, listed) = edited
            .chains
            .iter_mut()
            .find(|(n, _)| n.starts_with("endpoint-"))
            .unwrap();
        let chain = chain.clone();
        let last = listed.rules.len() - 1;
        let written = listed.rules[last].clone();
        listed.rules[last] = "meta l4proto tcp dnat ip to 10.244.9.9:8080".into();
        let d = model.differences(&ctx(), &edited, &none);
        assert_eq!(
            d,
            vec![Difference::Rule {
                chain: chain.clone(),
                index: last,
                written: written.clone(),
                listed: "meta l4proto tcp dnat ip to 10.244.9.9:8080".into()
            }]
        );
        assert!(d[0].to_string().contains(&chain));
        let tolerated: HashSet<(String, String)> = [(
            written,
            "meta l4proto tcp dnat ip to 10.244.9.9:8080".to_string(),
        )]
        .into_iter()
        .collect();
        assert!(model.differences(&ctx(), &edited, &tolerated).is_empty());

        // One element replaced by another: same count.
        let mut replaced = good.clone();
        let map = replaced.sets.get_mut("service-ips-v4").unwrap();
        map.elements = vec!["10.96.0.1 . tcp . 80 : goto reject-chain".into()];
        let d = model.differences(&ctx(), &replaced, &none);
        assert!(
            d.iter().any(|d| d
                .to_string()
                .contains("lacks element 10.96.0.1 . tcp . 80 : goto service-")),
            "{d:?}"
        );

        // A base chain with another policy, a missing affinity set, an unexpected set.
        let mut other = good.clone();
        other
            .chains
            .get_mut("filter-input")
            .unwrap()
            .hook
            .as_mut()
            .unwrap()
            .policy = "drop".into();
        let set = model
            .service(&key("a"))
            .unwrap()
            .sets
            .keys()
            .next()
            .unwrap()
            .clone();
        let removed = other.sets.remove(&set).unwrap();
        other.sets.insert("stray".into(), removed);
        let d: Vec<String> = model
            .differences(&ctx(), &other, &none)
            .iter()
            .map(|d| d.to_string())
            .collect();
        assert!(
            d.contains(&"base chain filter-input has policy drop, expected accept".to_string()),
            "{d:?}"
        );
        assert!(d.contains(&format!("set {set} is missing")), "{d:?}");
        assert!(
            d.contains(&"unexpected map or set stray".to_string()),
            "{d:?}"
        );
        assert_eq!(d.len(), 3, "{d:?}");
    }
}
