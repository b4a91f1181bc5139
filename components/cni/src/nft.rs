//! The `nft` command-line runner shared by the masquerade, hostPort and node-network code.
//!
//! The `nft` CLI is used because nftables' netlink protocol has no maintained Rust crate (the
//! `nftables` crate also drives the CLI, through JSON). Every change is one `nft -f -` script,
//! which the kernel applies as one transaction. A child `nft` runs in the network namespace of
//! the calling thread.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::error::CniError;

/// What a completed `nft` run said: its stdout on success, its stderr on failure.
pub(crate) type Answer = Result<String, String>;

/// Runs `nft ARGS` (with `stdin` piped in when given). `Err` means nft could not be run at
/// all; `Ok(Err(stderr))` means nft ran and refused.
pub(crate) fn run_raw(args: &[&str], stdin: Option<&str>) -> Result<Answer, CniError> {
    let mut last_err = None;
    // containerd passes its own PATH on to plugins; it may lack the sbin directories.
    for bin in ["nft", "/usr/sbin/nft", "/sbin/nft"] {
        let child = Command::new(bin)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(CniError::Nft(format!("cannot run {bin}: {e}"))),
        };
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|e| CniError::Nft(format!("cannot write to nft: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::Nft(format!("cannot wait for nft: {e}")))?;
        return Ok(if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        });
    }
    Err(CniError::Nft(format!(
        "nft not found in PATH, /usr/sbin or /sbin: {}",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Whether the `nft` CLI can be run at all.
pub(crate) fn available() -> bool {
    run_raw(&["--version"], None).is_ok_and(|a| a.is_ok())
}

/// Runs `nft ARGS`; a refusal is an error naming the command and nft's message.
pub(crate) fn run(args: &[&str], stdin: Option<&str>) -> Result<String, CniError> {
    run_raw(args, stdin)?
        .map_err(|stderr| CniError::Nft(format!("nft {} failed: {stderr}", args.join(" "))))
}

/// Applies `script` as one transaction (`nft -f -`).
pub(crate) fn apply(script: &str) -> Result<(), CniError> {
    run_raw(&["-f", "-"], Some(script))?
        .map(drop)
        .map_err(|stderr| {
            CniError::Nft(format!(
                "the transaction was rejected: {stderr}\n--- script ---\n{script}"
            ))
        })
}

/// Whether nft's refusal says the object does not exist.
pub(crate) fn is_missing(stderr: &str) -> bool {
    stderr.contains("No such file or directory") || stderr.contains("does not exist")
}

/// `nft -j ARGS` parsed; `None` when nft says the object does not exist.
pub(crate) fn list_json(args: &[&str]) -> Result<Option<serde_json::Value>, CniError> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    match run_raw(&full, None)? {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
            CniError::Nft(format!(
                "nft {} printed JSON that does not parse: {e}",
                full.join(" ")
            ))
        }),
        Err(stderr) if is_missing(&stderr) => Ok(None),
        Err(stderr) => Err(CniError::Nft(format!(
            "nft {} failed: {stderr}",
            full.join(" ")
        ))),
    }
}

/// The objects of one kind (`"chain"`, `"rule"`, `"set"`) in an `nft -j` listing.
pub(crate) fn objects<'a>(
    listing: &'a serde_json::Value,
    kind: &'a str,
) -> impl Iterator<Item = &'a serde_json::Value> + 'a {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

/// The lines of an nft listing, whitespace-normalised, for comparison.
pub(crate) fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_ignores_indentation() {
        assert_eq!(
            normalize("table inet t {\n\tchain c {\n\t}\n}\n"),
            normalize("table inet t {\n  chain c {\n  }\n}")
        );
    }

    #[test]
    fn objects_are_picked_by_kind() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},{"chain":{"name":"a"}},{"rule":{"chain":"a"}},{"chain":{"name":"b"}}]}"#,
        )
        .unwrap();
        let names: Vec<&str> = objects(&v, "chain")
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(objects(&serde_json::Value::Null, "chain").count(), 0);
    }

    #[test]
    fn missing_objects_are_recognised() {
        assert!(is_missing(
            "Error: No such file or directory\nlist table inet x"
        ));
        assert!(!is_missing("Error: syntax error"));
    }
}
