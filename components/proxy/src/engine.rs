//! The synchronous core of the proxy: caches of Services and EndpointSlices, the last
//! applied table model, and the operations that bring the kernel to the desired state —
//! incremental sync of changed Services, full resync, tamper check, stale chain cleanup.
//!
//! The watch loop ([`crate::start`]) feeds it; tests and the benchmark drive it directly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::{ConntrackCleanup, ProxyConfig};
use crate::conntrack::{stale_udp_flows, Conntrack, FlowFilter};
use crate::error::ProxyError;
use crate::listing::{Detail, TableListing};
use crate::model::{plan_service, ServiceKey, ServicePortPlan};
use crate::nft::NftCommand;
use crate::render::{render_service, RenderContext};
use crate::table::{Delta, Difference, TableModel};

/// What a sync did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncKind {
    /// The whole table was rewritten in one transaction (rebuilt in place, keeping the
    /// session-affinity sets, or, as the last resort, recreated).
    Full,
    /// Only the changed Services' objects were written.
    Incremental,
    /// Nothing needed writing.
    Unchanged,
}

/// The outcome of a sync.
#[derive(Clone, Debug)]
pub struct SyncReport {
    /// What kind of transaction ran.
    pub kind: SyncKind,
    /// Services whose rules were recomputed.
    pub services: usize,
    /// Lines of the nft script.
    pub script_lines: usize,
    /// Time spent (rendering and nft).
    pub duration: Duration,
    /// Conntrack entries deleted afterwards.
    pub conntrack_deleted: usize,
    /// Whether a full resync deleted and recreated the table (the last resort after a
    /// failed rebuild; session-affinity state is lost) instead of rebuilding it in place.
    pub table_recreated: bool,
}

/// The proxy's state and kernel operations.
pub struct Engine {
    ctx: RenderContext,
    node_name: String,
    nft: NftCommand,
    conntrack: Option<Conntrack>,
    stale_grace: Duration,
    services: HashMap<ServiceKey, Service>,
    slices: HashMap<(String, String), (Option<ServiceKey>, EndpointSlice)>,
    slices_by_service: HashMap<ServiceKey, BTreeSet<String>>,
    plans: HashMap<ServiceKey, Vec<ServicePortPlan>>,
    table: TableModel,
    dirty: BTreeSet<ServiceKey>,
    needs_full: bool,
    programmed: bool,
    conntrack_warned: bool,
    /// The last full resync's rebuild failed: the next one recreates the table.
    rebuild_failed: bool,
    /// What the last tamper check found (cleared when a check finds nothing).
    repairing: HashSet<Difference>,
    /// A full resync ran since `repairing` was found.
    repair_written: bool,
    /// `(written, listed)` rule pairs accepted as equal (see [`Engine::check_table`]).
    tolerated: HashSet<(String, String)>,
}

fn same_service(a: &Service, b: &Service) -> bool {
    a.spec == b.spec && a.status == b.status && a.metadata.labels == b.metadata.labels
}

impl Engine {
    /// An engine with empty caches; nothing is written until the first [`Engine::sync`].
    pub fn new(config: &ProxyConfig) -> Result<Engine, ProxyError> {
        config.validate()?;
        Ok(Engine {
            ctx: config.render_context(),
            node_name: config.node_name.clone(),
            nft: config.nft.clone(),
            conntrack: match &config.conntrack {
                ConntrackCleanup::Netlink { netns } => Some(Conntrack::new(netns.clone())),
                ConntrackCleanup::Disabled => None,
            },
            stale_grace: config.stale_chain_grace,
            services: HashMap::new(),
            slices: HashMap::new(),
            slices_by_service: HashMap::new(),
            plans: HashMap::new(),
            table: TableModel::new(),
            dirty: BTreeSet::new(),
            needs_full: true,
            programmed: false,
            conntrack_warned: false,
            rebuild_failed: false,
            repairing: HashSet::new(),
            repair_written: false,
            tolerated: HashSet::new(),
        })
    }

    /// Adds or updates a Service.
    pub fn upsert_service(&mut self, service: Service) {
        let Some(key) = ServiceKey::of(&service) else {
            return;
        };
        if self
            .services
            .get(&key)
            .is_some_and(|s| same_service(s, &service))
        {
            return;
        }
        self.services.insert(key.clone(), service);
        self.dirty.insert(key);
    }

    /// Removes a Service.
    pub fn remove_service(&mut self, namespace: &str, name: &str) {
        let key = ServiceKey::new(namespace, name);
        if self.services.remove(&key).is_some() {
            self.dirty.insert(key);
        }
    }

    /// Replaces every Service (after a re-list).
    pub fn replace_services(&mut self, services: Vec<Service>) {
        let mut seen = BTreeSet::new();
        for s in services {
            if let Some(k) = ServiceKey::of(&s) {
                seen.insert(k);
            }
            self.upsert_service(s);
        }
        let gone: Vec<ServiceKey> = self
            .services
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for k in gone {
            self.services.remove(&k);
            self.dirty.insert(k);
        }
    }

    /// Adds or updates an EndpointSlice.
    pub fn upsert_slice(&mut self, slice: EndpointSlice) {
        let namespace = slice.metadata.namespace.clone().unwrap_or_default();
        let Some(name) = slice.metadata.name.clone() else {
            return;
        };
        let owner = ServiceKey::owning(&slice);
        let id = (namespace, name.clone());
        if let Some((old_owner, old)) = self.slices.get(&id) {
            if *old_owner == owner
                && old.endpoints == slice.endpoints
                && old.ports == slice.ports
                && old.address_type == slice.address_type
            {
                return;
            }
            if let Some(o) = old_owner.clone() {
                if Some(&o) != owner.as_ref() {
                    self.unindex(&o, &name);
                    self.dirty.insert(o);
                }
            }
        }
        if let Some(o) = &owner {
            self.slices_by_service
                .entry(o.clone())
                .or_default()
                .insert(name);
            self.dirty.insert(o.clone());
        }
        self.slices.insert(id, (owner, slice));
    }

    fn unindex(&mut self, owner: &ServiceKey, slice: &str) {
        if let Some(set) = self.slices_by_service.get_mut(owner) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_by_service.remove(owner);
            }
        }
    }

    /// Removes an EndpointSlice.
    pub fn remove_slice(&mut self, namespace: &str, name: &str) {
        if let Some((Some(owner), _)) = self
            .slices
            .remove(&(namespace.to_string(), name.to_string()))
        {
            self.unindex(&owner, name);
            self.dirty.insert(owner);
        }
    }

    /// Replaces every EndpointSlice (after a re-list).
    pub fn replace_slices(&mut self, slices: Vec<EndpointSlice>) {
        let mut seen = BTreeSet::new();
        for s in slices {
            seen.insert((
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            ));
            self.upsert_slice(s);
        }
        let gone: Vec<(String, String)> = self
            .slices
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        for (ns, name) in gone {
            self.remove_slice(&ns, &name);
        }
    }

    /// Services changed since the last sync.
    pub fn pending(&self) -> usize {
        self.dirty.len()
    }

    /// Whether the next sync rewrites the whole table.
    pub fn needs_full_resync(&self) -> bool {
        self.needs_full || !self.programmed
    }

    /// Asks for a full resync at the next sync.
    pub fn request_full_resync(&mut self) {
        self.needs_full = true;
    }

    /// Whether a table has been written since this engine started.
    pub fn is_programmed(&self) -> bool {
        self.programmed
    }

    /// The plans in effect for a Service.
    pub fn plans(&self, key: &ServiceKey) -> &[ServicePortPlan] {
        self.plans.get(key).map(Vec::as_slice).unwrap_or_default()
    }

    /// The model of what was applied.
    pub fn table(&self) -> &TableModel {
        &self.table
    }

    /// The script a full resync would run now if the table did not exist (for
    /// measurements).
    pub fn full_script(&self) -> String {
        self.table
            .rebuild_script(&self.ctx, &TableListing::default())
            .script
    }

    fn compute_plans(&self, key: &ServiceKey) -> Vec<ServicePortPlan> {
        let Some(service) = self.services.get(key) else {
            return Vec::new();
        };
        let slices: Vec<&EndpointSlice> = self
            .slices_by_service
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|name| self.slices.get(&(key.namespace.clone(), name.clone())))
            .map(|(_, s)| s)
            .collect();
        match plan_service(service, &slices, &self.node_name) {
            Ok(plans) => plans,
            Err(reason) => {
                tracing::debug!(service = %key, %reason, "service is not proxied");
                Vec::new()
            }
        }
    }

    /// Applies pending changes: incrementally, or as a full resync when one is due (first
    /// sync, after a failure or a detected tamper).
    pub fn sync(&mut self) -> Result<SyncReport, ProxyError> {
        if self.needs_full_resync() {
            return self.full_resync();
        }
        let start = Instant::now();
        if self.dirty.is_empty() {
            return Ok(self.report(SyncKind::Unchanged, 0, 0, start, 0));
        }
        let keys: Vec<ServiceKey> = std::mem::take(&mut self.dirty).into_iter().collect();
        let mut flows = Vec::new();
        let mut changes = Vec::with_capacity(keys.len());
        for key in &keys {
            let new = self.compute_plans(key);
            let old = self.plans.remove(key).unwrap_or_default();
            flows.extend(stale_udp_flows(&old, &new));
            let rules = (!new.is_empty()).then(|| render_service(&self.ctx, &new));
            changes.push((key.clone(), rules));
            if !new.is_empty() {
                self.plans.insert(key.clone(), new);
            }
        }
        let delta = self.table.apply_batch(changes);
        warn_conflicts(&delta);
        if delta.is_empty() {
            let deleted = self.clean_conntrack(&flows);
            return Ok(self.report(SyncKind::Unchanged, keys.len(), 0, start, deleted));
        }
        let script = delta.script(&self.ctx.table);
        if let Err(e) = self
            .nft
            .apply(&self.ctx.table, "incremental update", &script)
        {
            self.needs_full = true;
            return Err(e);
        }
        let deleted = self.clean_conntrack(&flows);
        Ok(self.report(
            SyncKind::Incremental,
            keys.len(),
            script.lines().count(),
            start,
            deleted,
        ))
    }

    /// Rewrites the whole table from the caches, in one transaction: rebuilt in place from a
    /// fresh listing of its chains, sets and maps, keeping the session-affinity sets of
    /// Services that still have affinity ([`TableModel::rebuild_script`]); after a rebuild
    /// failed, the next one deletes and recreates the table instead
    /// ([`TableModel::recreate_script`]), which always converges but loses the affinity
    /// state.
    pub fn full_resync(&mut self) -> Result<SyncReport, ProxyError> {
        let start = Instant::now();
        self.dirty.clear();
        let keys: BTreeSet<ServiceKey> = self
            .services
            .keys()
            .chain(self.plans.keys())
            .cloned()
            .collect();
        let mut flows = Vec::new();
        let mut changes = Vec::with_capacity(keys.len());
        for key in &keys {
            let new = self.compute_plans(key);
            let old = self.plans.remove(key).unwrap_or_default();
            flows.extend(stale_udp_flows(&old, &new));
            if !new.is_empty() {
                changes.push((key.clone(), Some(render_service(&self.ctx, &new))));
                self.plans.insert(key.clone(), new);
            }
        }
        self.table.clear();
        let delta = self.table.apply_batch(changes);
        warn_conflicts(&delta);
        let recreate = self.rebuild_failed;
        let (script, leftover_chains) = if recreate {
            (self.table.recreate_script(&self.ctx), Vec::new())
        } else {
            let existing = match self.list_declarations() {
                Ok(existing) => existing,
                Err(e) => {
                    self.needs_full = true;
                    return Err(e);
                }
            };
            let rebuild = self.table.rebuild_script(&self.ctx, &existing);
            (rebuild.script, rebuild.leftover_chains)
        };
        let what = if recreate {
            "full resync (table recreated)"
        } else {
            "full resync"
        };
        if let Err(e) = self.nft.apply(&self.ctx.table, what, &script) {
            self.needs_full = true;
            self.rebuild_failed = !recreate;
            return Err(e);
        }
        self.rebuild_failed = false;
        self.table.add_stale_chains(&leftover_chains);
        self.needs_full = false;
        self.programmed = true;
        if !self.repairing.is_empty() {
            self.repair_written = true;
        }
        let deleted = self.clean_conntrack(&flows);
        let mut report = self.report(
            SyncKind::Full,
            keys.len(),
            script.lines().count(),
            start,
            deleted,
        );
        report.table_recreated = recreate;
        Ok(report)
    }

    /// The table's chains, sets and maps without rules, for a rebuild: from
    /// `nft -j list chains|sets|maps inet` filtered to the proxy's table, which costs a
    /// fraction of listing the table with its rules. Empty when the table does not exist.
    fn list_declarations(&self) -> Result<TableListing, ProxyError> {
        let table = &self.ctx.table;
        let mut items = Vec::new();
        for kind in ["chains", "sets", "maps"] {
            let listing = self.nft.list_json(table, &["list", kind, "inet"])?;
            let Some(serde_json::Value::Object(mut listing)) = listing else {
                continue;
            };
            if let Some(serde_json::Value::Array(objects)) = listing.remove("nftables") {
                items.extend(objects.into_iter().filter(|o| {
                    o.as_object()
                        .and_then(|o| o.values().next())
                        .and_then(|v| v.get("table"))
                        .and_then(serde_json::Value::as_str)
                        == Some(table.as_str())
                }));
            }
        }
        Ok(TableListing::from_json(
            &serde_json::json!({ "nftables": items }),
            Detail::Declarations,
        ))
    }

    fn report(
        &self,
        kind: SyncKind,
        services: usize,
        lines: usize,
        start: Instant,
        ct: usize,
    ) -> SyncReport {
        SyncReport {
            kind,
            services,
            script_lines: lines,
            duration: start.elapsed(),
            conntrack_deleted: ct,
            table_recreated: false,
        }
    }

    fn clean_conntrack(&mut self, flows: &[FlowFilter]) -> usize {
        let Some(ct) = &self.conntrack else {
            return 0;
        };
        match ct.delete(flows) {
            Ok(n) => n,
            Err(e) if !self.conntrack_warned => {
                self.conntrack_warned = true;
                tracing::warn!(error = %e, "stale UDP conntrack entries were not cleared (logged once; UDP clients may keep reaching removed endpoints until their entries expire)");
                0
            }
            Err(e) => {
                tracing::debug!(error = %e, "stale UDP conntrack entries were not cleared");
                0
            }
        }
    }

    /// Compares the kernel's table with the model, by content (what is compared:
    /// [`TableModel::differences`]). `Ok(None)`: it matches (or nothing was programmed yet).
    /// `Ok(Some(why))`: it differs; the next sync is a full resync.
    ///
    /// A rule difference that survives the full resync meant to repair it (nft listing a
    /// rule in a form [`crate::listing::normalize`] does not know, or another program making
    /// the same change again at once) cannot be repaired by rewriting: it is logged as a
    /// warning and from then on that exact pair of written and listed rule is accepted.
    pub fn check_table(&mut self) -> Result<Option<String>, ProxyError> {
        if !self.programmed || self.needs_full {
            return Ok(None);
        }
        let differences = match self.nft.list_table(&self.ctx.table)? {
            None => vec![Difference::Other(format!(
                "table inet {} is missing",
                self.ctx.table
            ))],
            Some(listing) => self.table.differences(
                &self.ctx,
                &TableListing::from_json(&listing, Detail::Contents),
                &self.tolerated,
            ),
        };
        if differences.is_empty() {
            self.repairing.clear();
            self.repair_written = false;
            return Ok(None);
        }
        let unrepairable = self.repair_written
            && differences
                .iter()
                .all(|d| matches!(d, Difference::Rule { .. }) && self.repairing.contains(d));
        self.repair_written = false;
        if unrepairable {
            for d in &differences {
                if let Difference::Rule {
                    written, listed, ..
                } = d
                {
                    tracing::warn!(table = %self.ctx.table, difference = %d, "a rule still differs after the table was rewritten; accepting this form from now on");
                    self.tolerated.insert((written.clone(), listed.clone()));
                }
            }
            self.repairing.clear();
            return Ok(None);
        }
        self.repairing = differences.iter().cloned().collect();
        self.needs_full = true;
        let shown: Vec<String> = differences.iter().take(5).map(|d| d.to_string()).collect();
        let more = differences.len().saturating_sub(shown.len());
        let mut why = shown.join("; ");
        if more > 0 {
            why.push_str(&format!("; and {more} more"));
        }
        Ok(Some(why))
    }

    /// When the oldest flushed chain may be deleted.
    pub fn next_stale_deadline(&self) -> Option<Instant> {
        self.table
            .oldest_stale_chain()
            .map(|t| t + self.stale_grace)
    }

    /// Deletes chains flushed at least the grace period ago; returns how many.
    pub fn delete_stale_chains(&mut self) -> Result<usize, ProxyError> {
        let names = self
            .table
            .stale_chains_older_than(Instant::now(), self.stale_grace);
        if names.is_empty() || !self.programmed {
            return Ok(0);
        }
        let script = TableModel::delete_chains_script(&self.ctx.table, &names);
        if let Err(e) = self
            .nft
            .apply(&self.ctx.table, "stale chain cleanup", &script)
        {
            self.needs_full = true;
            return Err(e);
        }
        self.table.stale_chains_deleted(&names);
        Ok(names.len())
    }
}

fn warn_conflicts(delta: &Delta) {
    for (map, key) in &delta.conflicts {
        tracing::warn!(%map, key = %key, "several Services claim the same destination; the first in namespace/name order gets it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceKey;
    use serde_json::json;
    use std::path::PathBuf;

    /// An "nft" that appends each script it gets to `log` and fails when `fail` exists;
    /// listings say the table does not exist.
    fn fake_nft(log: &std::path::Path, fail: &std::path::Path) -> NftCommand {
        NftCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "if [ \"$1\" = -j ]; then echo 'Error: No such file or directory' >&2; exit 1; fi; \
                     cat >> {log}; echo '#end' >> {log}; test ! -e {fail}",
                    log = log.display(),
                    fail = fail.display()
                ),
                "nft".into(),
            ],
        }
    }

    /// An engine whose "nft" appends each script it gets to a file.
    fn recording_engine(dir: &std::path::Path) -> (Engine, PathBuf) {
        let log = dir.join("scripts");
        let config = ProxyConfig {
            node_name: "n1".into(),
            nft: fake_nft(&log, &dir.join("fail")),
            conntrack: ConntrackCleanup::Disabled,
            ..Default::default()
        };
        (Engine::new(&config).unwrap(), log)
    }

    fn scripts(log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .split("#end\n")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, owner: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": owner}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [ip]}]
        }))
        .unwrap()
    }

    fn tempdir() -> PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("kinit-proxy-engine-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn first_sync_is_full_then_changes_are_incremental_and_unchanged_is_free() {
        let dir = tempdir();
        let (mut e, log) = recording_engine(&dir);
        e.upsert_service(svc("a", "10.96.0.1"));
        e.upsert_slice(slice("a-1", "a", "10.244.0.1"));
        assert_eq!(e.sync().unwrap().kind, SyncKind::Full);
        // The same objects again: nothing to write.
        e.upsert_service(svc("a", "10.96.0.1"));
        e.upsert_slice(slice("a-1", "a", "10.244.0.1"));
        assert_eq!(e.pending(), 0);
        assert_eq!(e.sync().unwrap().kind, SyncKind::Unchanged);
        e.upsert_slice(slice("a-1", "a", "10.244.0.2"));
        assert_eq!(e.sync().unwrap().kind, SyncKind::Incremental);
        let all = scripts(&log);
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(all[0].starts_with("add table inet kinit-proxy { comment"));
        assert!(!all[0].contains("delete"));
        assert!(!all[1].contains("delete table"));
        assert!(all[1].contains("dnat ip to 10.244.0.2:8080"), "{}", all[1]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn relabelled_slice_moves_its_endpoints_between_services() {
        let dir = tempdir();
        let (mut e, _) = recording_engine(&dir);
        e.upsert_service(svc("a", "10.96.0.1"));
        e.upsert_service(svc("b", "10.96.0.2"));
        e.upsert_slice(slice("s", "a", "10.244.0.1"));
        e.sync().unwrap();
        let a = ServiceKey::new("default", "a");
        let b = ServiceKey::new("default", "b");
        assert!(e.plans(&a)[0].has_endpoints);
        e.upsert_slice(slice("s", "b", "10.244.0.1"));
        assert_eq!(
            e.pending(),
            2,
            "both the old and the new owner are recomputed"
        );
        e.sync().unwrap();
        assert!(!e.plans(&a)[0].has_endpoints);
        assert!(e.plans(&b)[0].has_endpoints);
        e.remove_slice("default", "s");
        e.sync().unwrap();
        assert!(!e.plans(&b)[0].has_endpoints);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn relist_removes_what_is_gone() {
        let dir = tempdir();
        let (mut e, _) = recording_engine(&dir);
        e.upsert_service(svc("a", "10.96.0.1"));
        e.upsert_service(svc("b", "10.96.0.2"));
        e.sync().unwrap();
        e.replace_services(vec![svc("b", "10.96.0.2")]);
        assert_eq!(e.pending(), 1);
        e.sync().unwrap();
        assert!(e.plans(&ServiceKey::new("default", "a")).is_empty());
        assert_eq!(e.table().service_count(), 1);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn failed_transaction_forces_a_full_resync_and_a_failed_rebuild_a_recreation() {
        let dir = tempdir();
        let log = dir.join("scripts");
        let fail = dir.join("fail");
        std::fs::write(&fail, "").unwrap();
        let config = ProxyConfig {
            node_name: "n1".into(),
            nft: fake_nft(&log, &fail),
            conntrack: ConntrackCleanup::Disabled,
            ..Default::default()
        };
        let mut e = Engine::new(&config).unwrap();
        e.upsert_service(svc("a", "10.96.0.1"));
        let err = e.sync().unwrap_err().to_string();
        assert!(err.contains("full resync"), "{err}");
        assert!(e.needs_full_resync());
        assert!(!e.is_programmed());
        // The rebuild failed: the next full resync deletes and recreates the table.
        std::fs::remove_file(&fail).unwrap();
        let r = e.sync().unwrap();
        assert_eq!(r.kind, SyncKind::Full);
        assert!(r.table_recreated);
        let all = scripts(&log);
        assert!(!all[0].contains("delete table"), "{}", all[0]);
        assert!(all[1].starts_with("add table inet kinit-proxy\ndelete table inet kinit-proxy\n"));
        // Then rebuilds again.
        e.request_full_resync();
        assert!(!e.sync().unwrap().table_recreated);
        assert!(!scripts(&log)[2].contains("delete table"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
