//! Running the `nft` CLI: scripts through `nft -f -` (one atomic transaction each) and
//! listings through `nft -j list table`, parsed into what the tamper check compares.
//!
//! The CLI is used because nftables' netlink protocol has no maintained Rust crate for
//! writing rulesets (the `nftables` crate also drives the CLI, through JSON).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

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
        let in_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
            .unwrap_or(false);
        let program = if in_path {
            PathBuf::from("nft")
        } else {
            ["/usr/sbin/nft", "/sbin/nft"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("nft"))
        };
        NftCommand {
            program,
            args: Vec::new(),
        }
    }
}

impl NftCommand {
    /// `nft` run inside the named network namespace through `ip netns exec`.
    pub fn in_netns(netns: &str) -> NftCommand {
        NftCommand {
            program: PathBuf::from("ip"),
            args: vec!["netns".into(), "exec".into(), netns.into(), "nft".into()],
        }
    }

    fn run(&self, extra: &[&str], stdin: Option<&str>) -> Result<std::process::Output, ProxyError> {
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .args(extra)
            // Error texts are matched below; keep them untranslated.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ProxyError::NftSpawn {
                program: self.display(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write shows up as nft's own error below (it read a truncated script).
            let _ = pipe.write_all(text.as_bytes());
        }
        child
            .wait_with_output()
            .map_err(|source| ProxyError::NftSpawn {
                program: self.display(),
                source,
            })
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut parts = vec![self.program.display().to_string()];
        parts.extend(self.args.iter().cloned());
        parts.join(" ")
    }

    /// Runs `script` as one transaction on `table` (`what` says what it is, for errors).
    pub fn apply(&self, table: &str, what: &str, script: &str) -> Result<(), ProxyError> {
        let out = self.run(&["-f", "-"], Some(script))?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(ProxyError::NftTransaction {
            table: table.to_string(),
            what: what.to_string(),
            offending_line: offending_line(&stderr, script),
            stderr,
        })
    }

    /// The table as nft's JSON, `None` when it does not exist.
    pub fn list_table(&self, table: &str) -> Result<Option<Value>, ProxyError> {
        let out = self.run(&["-j", "list", "table", "inet", table], None)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stderr.contains("No such file or directory") {
                return Ok(None);
            }
            return Err(ProxyError::NftList {
                table: table.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        serde_json::from_slice(&out.stdout)
            .map(Some)
            .map_err(|e| ProxyError::NftParse {
                table: table.to_string(),
                message: e.to_string(),
            })
    }

    /// Whether table `inet table` exists.
    pub fn table_exists(&self, table: &str) -> Result<bool, ProxyError> {
        let out = self.run(&["list", "tables", "inet"], None)?;
        if !out.status.success() {
            return Err(ProxyError::NftList {
                table: table.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let wanted = format!("table inet {table}");
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.trim() == wanted))
    }

    /// Whether nft runs and the kernel answers.
    pub fn probe(&self) -> Result<(), ProxyError> {
        let out = self.run(&["list", "tables"], None)?;
        if out.status.success() {
            return Ok(());
        }
        Err(ProxyError::NftList {
            table: "(all)".into(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The script line nft complained about (`/dev/stdin:LINE:COL: Error: ...`), numbered.
fn offending_line(stderr: &str, script: &str) -> Option<String> {
    let line: usize = stderr.lines().find_map(|l| {
        let rest = l.strip_prefix("/dev/stdin:")?;
        rest.split(':').next()?.parse().ok()
    })?;
    let text = script.lines().nth(line.checked_sub(1)?)?;
    Some(format!("line {line}: {text}"))
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
    fn offending_line_is_taken_from_the_script() {
        let stderr =
            "/dev/stdin:2:36-38: Error: No symbol type information\nadd rule inet t c foo\n";
        assert_eq!(
            offending_line(stderr, "add table inet t\nadd rule inet t c foo\n"),
            Some("line 2: add rule inet t c foo".into())
        );
        assert_eq!(offending_line("Error: something", "x"), None);
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
