//! Running `nft` for the proxy through kinit's shared runner ([`kinit_nft`]): scripts through
//! `nft -f -` (one atomic transaction each) and listings through `nft -j list table`, with
//! the proxy's error type; and reading a listing into what the tamper check compares
//! ([`Observed`]).
//!
//! Lookup of the program, `LC_ALL=C`, the "table does not exist" detection and the parsing
//! of the offending script line all live in `kinit_nft`; [`NftCommand`] only carries the
//! proxy's configuration (same fields as `kinit_nft::NftCommand`) and names the table and the
//! transaction in errors.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kinit_nft::NftError;
use serde_json::Value;

use crate::error::ProxyError;
use crate::table::Expected;

/// How to run `nft`: a program and the arguments that come before nft's own (e.g.
/// `ip netns exec NAME nft` to act inside a network namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftCommand {
    /// The program to execute.
    pub program: PathBuf,
    /// Leading arguments.
    pub args: Vec<String>,
}

impl Default for NftCommand {
    /// `nft` from `PATH`, or `/usr/sbin/nft` / `/sbin/nft` when `PATH` lacks the sbin
    /// directories.
    fn default() -> Self {
        kinit_nft::NftCommand::default().into()
    }
}

impl From<kinit_nft::NftCommand> for NftCommand {
    fn from(c: kinit_nft::NftCommand) -> Self {
        NftCommand {
            program: c.program,
            args: c.args,
        }
    }
}

impl From<&NftCommand> for kinit_nft::NftCommand {
    fn from(c: &NftCommand) -> Self {
        kinit_nft::NftCommand {
            program: c.program.clone(),
            args: c.args.clone(),
        }
    }
}

/// The proxy's error for a failed listing or probe of `table`.
fn list_error(table: &str, e: NftError) -> ProxyError {
    match e {
        NftError::Spawn { program, source } => ProxyError::NftSpawn { program, source },
        NftError::Failed { stderr, .. } => ProxyError::NftList {
            table: table.to_string(),
            stderr,
        },
        NftError::Json { message, .. } => ProxyError::NftParse {
            table: table.to_string(),
            message,
        },
    }
}

impl NftCommand {
    /// `nft` run inside the named network namespace through `ip netns exec`.
    pub fn in_netns(netns: &str) -> NftCommand {
        kinit_nft::NftCommand::in_netns(netns).into()
    }

    fn runner(&self) -> kinit_nft::NftCommand {
        self.into()
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        self.runner().display()
    }

    /// Runs `script` as one transaction on `table` (`what` says what it is, for errors).
    pub fn apply(&self, table: &str, what: &str, script: &str) -> Result<(), ProxyError> {
        self.runner().apply(script).map_err(|e| match e {
            NftError::Failed {
                stderr,
                offending_line,
                ..
            } => ProxyError::NftTransaction {
                table: table.to_string(),
                what: what.to_string(),
                stderr,
                offending_line,
            },
            other => list_error(table, other),
        })
    }

    /// The table as nft's JSON, `None` when it does not exist.
    pub fn list_table(&self, table: &str) -> Result<Option<Value>, ProxyError> {
        self.runner()
            .list_table("inet", table)
            .map_err(|e| list_error(table, e))
    }

    /// Whether table `inet table` exists.
    pub fn table_exists(&self, table: &str) -> Result<bool, ProxyError> {
        self.runner()
            .table_exists("inet", table)
            .map_err(|e| list_error(table, e))
    }

    /// Whether nft runs and the kernel answers.
    pub fn probe(&self) -> Result<(), ProxyError> {
        self.runner().probe().map_err(|e| list_error("(all)", e))
    }
}

/// What a listing shows, reduced to what the tamper check compares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Chain → number of rules.
    pub chains: BTreeMap<String, usize>,
    /// Base chains whose policy is not `accept`.
    pub non_accepting_base_chains: BTreeSet<String>,
    /// Map or set → number of elements.
    pub maps: BTreeMap<String, usize>,
}

impl Observed {
    /// Reads nft's JSON listing of one table.
    pub fn from_json(listing: &Value) -> Observed {
        let mut seen = Observed::default();
        let items = listing
            .get("nftables")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for item in items {
            if let Some(chain) = item.get("chain") {
                if let Some(name) = chain.get("name").and_then(Value::as_str) {
                    seen.chains.entry(name.to_string()).or_insert(0);
                    if chain.get("hook").is_some()
                        && chain.get("policy").and_then(Value::as_str) != Some("accept")
                    {
                        seen.non_accepting_base_chains.insert(name.to_string());
                    }
                }
            } else if let Some(rule) = item.get("rule") {
                if let Some(name) = rule.get("chain").and_then(Value::as_str) {
                    *seen.chains.entry(name.to_string()).or_insert(0) += 1;
                }
            } else if let Some(map) = item.get("map").or_else(|| item.get("set")) {
                if let Some(name) = map.get("name").and_then(Value::as_str) {
                    let n = map
                        .get("elem")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len);
                    seen.maps.insert(name.to_string(), n);
                }
            }
        }
        seen
    }

    /// Differences from `expected`, described (at most a few), empty when the table is right.
    pub fn mismatches(&self, expected: &Expected) -> Vec<String> {
        let mut out = Vec::new();
        for (chain, rules) in &expected.chains {
            match self.chains.get(chain) {
                None => out.push(format!("chain {chain} is missing")),
                Some(n) if n != rules => {
                    out.push(format!("chain {chain} has {n} rules, expected {rules}"))
                }
                Some(_) => {}
            }
        }
        for (chain, n) in &self.chains {
            if expected.chains.contains_key(chain) {
                continue;
            }
            if !expected.optional_chains.contains(chain) {
                out.push(format!("unexpected chain {chain}"));
            } else if *n != 0 {
                out.push(format!("stale chain {chain} has {n} rules"));
            }
        }
        for chain in &self.non_accepting_base_chains {
            out.push(format!("base chain {chain} has a policy other than accept"));
        }
        for (map, count) in &expected.maps {
            match self.maps.get(map) {
                None => out.push(format!("map {map} is missing")),
                Some(n) if n != count => {
                    out.push(format!("map {map} has {n} elements, expected {count}"))
                }
                Some(_) => {}
            }
        }
        for set in &expected.sets {
            if !self.maps.contains_key(set) {
                out.push(format!("set {set} is missing"));
            }
        }
        for map in self.maps.keys() {
            if !expected.maps.contains_key(map) && !expected.sets.contains(map) {
                out.push(format!("unexpected map or set {map}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runner_errors_name_the_table_and_the_transaction() {
        let refusing = NftCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "cat >/dev/null; echo '/dev/stdin:2:1-3: Error: syntax error' >&2; exit 1".into(),
                "nft".into(),
            ],
        };
        match refusing.apply("t", "full resync", "add table inet t\nbad line\n") {
            Err(ProxyError::NftTransaction {
                table,
                what,
                stderr,
                offending_line,
            }) => {
                assert_eq!((table.as_str(), what.as_str()), ("t", "full resync"));
                assert!(stderr.contains("syntax error"), "{stderr}");
                assert_eq!(offending_line.as_deref(), Some("line 2: bad line"));
            }
            other => panic!("expected a transaction error, got {other:?}"),
        }
        assert!(matches!(
            refusing.list_table("t"),
            Err(ProxyError::NftList { table, .. }) if table == "t"
        ));
        let missing = NftCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo 'Error: No such file or directory' >&2; exit 1".into(),
                "nft".into(),
            ],
        };
        assert_eq!(missing.list_table("t").unwrap(), None);
        let nowhere = NftCommand {
            program: "/nonexistent/nft".into(),
            args: vec![],
        };
        assert!(matches!(nowhere.probe(), Err(ProxyError::NftSpawn { .. })));
        assert_eq!(NftCommand::in_netns("n1").display(), "ip netns exec n1 nft");
    }

    #[test]
    fn listing_is_reduced_to_counts() {
        let listing = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "inet", "name": "t"}},
            {"map": {"name": "service-ips-v4", "elem": [[1, 2], [3, 4]]}},
            {"map": {"name": "service-ips-v6"}},
            {"set": {"name": "affinity-X"}},
            {"chain": {"name": "nat-prerouting", "hook": "prerouting", "policy": "accept"}},
            {"chain": {"name": "filter-input", "hook": "input", "policy": "drop"}},
            {"chain": {"name": "services"}},
            {"rule": {"chain": "services", "expr": []}},
            {"rule": {"chain": "services", "expr": []}},
            {"rule": {"chain": "nat-prerouting", "expr": []}}
        ]});
        let o = Observed::from_json(&listing);
        assert_eq!(o.chains["services"], 2);
        assert_eq!(o.chains["nat-prerouting"], 1);
        assert_eq!(o.chains["filter-input"], 0);
        assert_eq!(o.maps["service-ips-v4"], 2);
        assert_eq!(o.maps["service-ips-v6"], 0);
        assert_eq!(o.maps["affinity-X"], 0);
        assert!(o.non_accepting_base_chains.contains("filter-input"));

        let expected = Expected {
            chains: [
                ("services".to_string(), 2),
                ("nat-prerouting".to_string(), 1),
                ("filter-input".to_string(), 0),
                ("gone".to_string(), 1),
            ]
            .into_iter()
            .collect(),
            optional_chains: BTreeSet::new(),
            maps: [
                ("service-ips-v4".to_string(), 3),
                ("service-ips-v6".to_string(), 0),
            ]
            .into_iter()
            .collect(),
            sets: ["affinity-X".to_string()].into_iter().collect(),
        };
        let m = o.mismatches(&expected);
        assert!(m.contains(&"chain gone is missing".to_string()), "{m:?}");
        assert!(
            m.contains(&"map service-ips-v4 has 2 elements, expected 3".to_string()),
            "{m:?}"
        );
        assert!(
            m.iter().any(|s| s.contains("filter-input has a policy")),
            "{m:?}"
        );
        assert_eq!(m.len(), 3, "{m:?}");
    }
}
