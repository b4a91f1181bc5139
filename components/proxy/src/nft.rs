//! Running `nft` for the proxy through kinit's shared runner ([`kinit_nft`]): scripts through
//! `nft -f -` (one atomic transaction each) and JSON listings, with the proxy's error type.
//!
//! Lookup of the program, `LC_ALL=C`, the "table does not exist" detection and the parsing
//! of the offending script line all live in `kinit_nft`; [`NftCommand`] only carries the
//! proxy's configuration (same fields as `kinit_nft::NftCommand`) and names the table and the
//! transaction in errors.

use std::path::PathBuf;

use kinit_nft::NftError;
use serde_json::Value;

use crate::error::ProxyError;

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

    /// nft's JSON for `args` (e.g. `list chains inet`), `None` when what it names does not
    /// exist; errors name `table`, the table the caller is after.
    pub fn list_json(&self, table: &str, args: &[&str]) -> Result<Option<Value>, ProxyError> {
        self.runner()
            .list_json(args)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
