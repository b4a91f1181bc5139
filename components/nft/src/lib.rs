//! kinit's one runner for the `nft` command-line tool, shared by the CNI plugin (masquerade,
//! hostPort, node address sets) and the service proxy.
//!
//! The CLI is used because nftables' netlink protocol has no maintained Rust crate for
//! writing rulesets (the `nftables` crate also drives the CLI, through JSON). What it does:
//! - finds the program in `PATH`, else in `/usr/sbin` or `/sbin` (container runtimes pass
//!   plugins a thin `PATH` without the sbin directories), see [`NftCommand::default`];
//! - runs it behind an optional command prefix, e.g. `ip netns exec NAME nft`
//!   ([`NftCommand::in_netns`]); a plain `nft` child acts in the network namespace of the
//!   calling thread;
//! - sets `LC_ALL=C`, so the error texts matched here ([`is_missing`]) are untranslated;
//! - applies a script through `nft -f -` as one kernel transaction ([`NftCommand::apply`]);
//! - reads JSON listings (`nft -j list ...`, [`NftCommand::list_json`]), telling "the object
//!   does not exist" apart from failures;
//! - reports refusals with nft's stderr and, for scripts, the script line nft pointed at
//!   ([`NftError::Failed`]).
//!
//! Every call runs a child process synchronously; async callers run it on a blocking thread.

#![warn(missing_docs)]

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Where `nft` is looked for when `PATH` does not have it.
pub const SBIN_FALLBACKS: &[&str] = &["/usr/sbin/nft", "/sbin/nft"];

/// What can go wrong running `nft`.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The program could not be started, fed or waited for.
    #[error(
        "cannot run {program}: {source}; install nftables (the nft CLI is looked for in PATH, /usr/sbin and /sbin)"
    )]
    Spawn {
        /// The command line.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// nft ran and refused; for a script nothing of it was applied.
    #[error(
        "`{command}` failed: {stderr}{}",
        offending_line.as_ref().map(|l| format!(" [offending script {l}]")).unwrap_or_default()
    )]
    Failed {
        /// The command line (`nft -f -` for scripts).
        command: String,
        /// nft's error output, trimmed.
        stderr: String,
        /// For scripts: the line nft pointed at, numbered (`line 3: add rule ...`).
        offending_line: Option<String>,
    },
    /// nft printed JSON that does not parse.
    #[error(
        "`{command}` printed JSON that does not parse: {message}; nft 0.9.3 or later is needed"
    )]
    Json {
        /// The command line.
        command: String,
        /// The parse error.
        message: String,
    },
}

impl NftError {
    /// nft's error output, when nft ran and refused.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            NftError::Failed { stderr, .. } => Some(stderr),
            _ => None,
        }
    }

    /// Whether nft refused because the object (table, chain, set) does not exist.
    pub fn is_missing(&self) -> bool {
        self.stderr().is_some_and(is_missing)
    }
}

/// How to run `nft`: a program and the arguments that come before nft's own (e.g.
/// `ip netns exec NAME nft` to act inside a named network namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftCommand {
    /// The program to execute.
    pub program: PathBuf,
    /// Leading arguments.
    pub args: Vec<String>,
}

impl Default for NftCommand {
    /// `nft` from `PATH`, or `/usr/sbin/nft` / `/sbin/nft` when `PATH` lacks it.
    fn default() -> Self {
        let path = std::env::var_os("PATH");
        let fallbacks: Vec<&Path> = SBIN_FALLBACKS.iter().map(Path::new).collect();
        NftCommand {
            program: find_program("nft", path.as_deref(), &fallbacks),
            args: Vec::new(),
        }
    }
}

/// `name` when a directory of `path` (a `PATH` value) has it, else the first existing
/// `fallbacks` entry, else `name` (so the spawn error names what was looked for).
pub fn find_program(name: &str, path: Option<&OsStr>, fallbacks: &[&Path]) -> PathBuf {
    let in_path = path.is_some_and(|p| std::env::split_paths(p).any(|d| d.join(name).is_file()));
    if in_path {
        return PathBuf::from(name);
    }
    fallbacks
        .iter()
        .find(|p| p.is_file())
        .map(|p| p.to_path_buf())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl NftCommand {
    /// `nft` run inside the named network namespace through `ip netns exec`.
    pub fn in_netns(netns: &str) -> NftCommand {
        NftCommand {
            program: PathBuf::from("ip"),
            args: vec!["netns".into(), "exec".into(), netns.into(), "nft".into()],
        }
    }

    /// The command line, for messages.
    pub fn display(&self) -> String {
        let mut parts = vec![self.program.display().to_string()];
        parts.extend(self.args.iter().cloned());
        parts.join(" ")
    }

    fn command_line(&self, extra: &[&str]) -> String {
        let mut line = self.display();
        for a in extra {
            line.push(' ');
            line.push_str(a);
        }
        line
    }

    /// Runs `nft EXTRA` with `stdin` piped in when given; returns whether it succeeded, its
    /// stdout and its (trimmed) stderr.
    fn output(
        &self,
        extra: &[&str],
        stdin: Option<&str>,
    ) -> Result<(bool, String, String), NftError> {
        let spawn_error = |source| NftError::Spawn {
            program: self.display(),
            source,
        };
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .args(extra)
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_error)?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A failed write (nft exited early) shows up as nft's own error below; the
            // pipe is closed when `pipe` drops, so nft sees the end of the script.
            let _ = pipe.write_all(text.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_error)?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }

    /// Runs `nft ARGS` and returns its stdout; a refusal is [`NftError::Failed`] (check
    /// [`NftError::is_missing`] for "does not exist").
    pub fn run(&self, args: &[&str]) -> Result<String, NftError> {
        let (ok, stdout, stderr) = self.output(args, None)?;
        if ok {
            Ok(stdout)
        } else {
            Err(NftError::Failed {
                command: self.command_line(args),
                stderr,
                offending_line: None,
            })
        }
    }

    /// Applies `script` as one transaction (`nft -f -`): all of it or, on error, nothing.
    pub fn apply(&self, script: &str) -> Result<(), NftError> {
        let args = ["-f", "-"];
        let (ok, _, stderr) = self.output(&args, Some(script))?;
        if ok {
            return Ok(());
        }
        Err(NftError::Failed {
            command: self.command_line(&args),
            offending_line: offending_line(&stderr, script),
            stderr,
        })
    }

    /// `nft -j ARGS` parsed; `None` when nft says the object does not exist.
    pub fn list_json(&self, args: &[&str]) -> Result<Option<Value>, NftError> {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = match self.run(&full) {
            Ok(text) => text,
            Err(e) if e.is_missing() => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| NftError::Json {
                command: self.command_line(&full),
                message: e.to_string(),
            })
    }

    /// Table `family table` as nft's JSON, `None` when it does not exist.
    pub fn list_table(&self, family: &str, table: &str) -> Result<Option<Value>, NftError> {
        self.list_json(&["list", "table", family, table])
    }

    /// Whether table `family table` exists (from `nft list tables FAMILY`).
    pub fn table_exists(&self, family: &str, table: &str) -> Result<bool, NftError> {
        let listing = self.run(&["list", "tables", family])?;
        let wanted = format!("table {family} {table}");
        Ok(listing.lines().any(|l| l.trim() == wanted))
    }

    /// Whether nft runs and the kernel answers (`nft list tables`).
    pub fn probe(&self) -> Result<(), NftError> {
        self.run(&["list", "tables"]).map(drop)
    }

    /// Whether the program can be run at all (`nft --version`).
    pub fn available(&self) -> bool {
        self.run(&["--version"]).is_ok()
    }
}

/// Whether nft's error output says the object does not exist (nft prints the kernel's
/// ENOENT text, in English under `LC_ALL=C`).
pub fn is_missing(stderr: &str) -> bool {
    stderr.contains("No such file or directory") || stderr.contains("does not exist")
}

/// The script line nft complained about, numbered: nft reports script errors as
/// `/dev/stdin:LINE:COLUMNS: Error: ...` (or with `-` as the file name).
pub fn offending_line(stderr: &str, script: &str) -> Option<String> {
    let line: usize = stderr.lines().find_map(|l| {
        let rest = l
            .strip_prefix("/dev/stdin:")
            .or_else(|| l.strip_prefix("-:"))?;
        rest.split(':').next()?.parse().ok()
    })?;
    let text = script.lines().nth(line.checked_sub(1)?)?;
    Some(format!("line {line}: {text}"))
}

/// The objects of one kind (`"chain"`, `"rule"`, `"set"`, `"map"`) in an `nft -j` listing.
pub fn objects<'a>(listing: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    listing
        .get("nftables")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(move |o| o.get(kind))
}

/// The lines of an nft text listing, whitespace-normalised, for comparison.
pub fn normalize(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn offending_line_is_taken_from_the_script() {
        let stderr =
            "/dev/stdin:2:36-38: Error: No symbol type information\nadd rule inet t c foo\n";
        assert_eq!(
            offending_line(stderr, "add table inet t\nadd rule inet t c foo\n"),
            Some("line 2: add rule inet t c foo".into())
        );
        assert_eq!(
            offending_line("-:1:5-7: Error: syntax error", "add tabel inet t\n"),
            Some("line 1: add tabel inet t".into())
        );
        assert_eq!(offending_line("Error: something", "x"), None);
        // A line number past the script, or 0, points at nothing.
        assert_eq!(offending_line("/dev/stdin:9:1: Error: x", "a\nb\n"), None);
        assert_eq!(offending_line("/dev/stdin:0:1: Error: x", "a\n"), None);
    }

    #[test]
    fn missing_objects_are_recognised() {
        assert!(is_missing(
            "Error: No such file or directory\nlist table inet x\n                ^"
        ));
        assert!(is_missing(
            "Error: No such file or directory; did you mean table 'y' in family inet?"
        ));
        assert!(!is_missing("Error: syntax error, unexpected newline"));
        assert!(!is_missing("Error: Operation not permitted"));
        let failed = NftError::Failed {
            command: "nft list table inet x".into(),
            stderr: "Error: No such file or directory".into(),
            offending_line: None,
        };
        assert!(failed.is_missing());
        let spawn = NftError::Spawn {
            program: "nft".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            !spawn.is_missing(),
            "a missing program is not a missing table"
        );
    }

    #[test]
    fn normalization_ignores_indentation() {
        assert_eq!(
            normalize("table inet t {\n\tchain c {\n\t}\n}\n"),
            normalize("table inet t {\n  chain c {\n  }\n}")
        );
    }

    #[test]
    fn objects_are_picked_by_kind() {
        let v: Value = serde_json::from_str(
            r#"{"nftables":[{"metainfo":{}},{"chain":{"name":"a"}},{"rule":{"chain":"a"}},{"chain":{"name":"b"}}]}"#,
        )
        .unwrap();
        let names: Vec<&str> = objects(&v, "chain")
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(objects(&Value::Null, "chain").count(), 0);
    }

    fn executable(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn program_is_found_in_path_then_in_the_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let sbin = dir.path().join("sbin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&sbin).unwrap();
        let fallback = executable(&sbin, "nft");
        let thin_path = std::env::join_paths([&bin]).unwrap();
        let missing = dir.path().join("nowhere/nft");
        // A thin PATH: the sbin fallback is taken, the first existing one.
        assert_eq!(
            find_program("nft", Some(&thin_path), &[&missing, &fallback]),
            fallback
        );
        assert_eq!(find_program("nft", None, &[&fallback]), fallback);
        // In PATH: the bare name, resolved by the OS at spawn time.
        executable(&bin, "nft");
        assert_eq!(
            find_program("nft", Some(&thin_path), &[&fallback]),
            PathBuf::from("nft")
        );
        // Nowhere: the bare name, so the spawn error says what was looked for.
        assert_eq!(
            find_program("nft", Some(OsStr::new("")), &[&missing]),
            PathBuf::from("nft")
        );
    }

    /// A stand-in for nft: a shell script run with nft's arguments as `$@`.
    fn fake(script: &str) -> NftCommand {
        NftCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into(), "nft".into()],
        }
    }

    #[test]
    fn runs_in_the_c_locale_with_the_prefix_and_arguments() {
        let out = fake(r#"echo "$LC_ALL|$*""#)
            .run(&["list", "tables"])
            .unwrap();
        assert_eq!(out, "C|list tables\n");
        assert_eq!(NftCommand::in_netns("n1").display(), "ip netns exec n1 nft");
    }

    #[test]
    fn scripts_go_to_stdin_and_refusals_carry_stderr_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let got = dir.path().join("script");
        let ok = fake(&format!(r#"[ "$*" = "-f -" ] && cat > {}"#, got.display()));
        ok.apply("add table inet t\n").unwrap();
        assert_eq!(std::fs::read_to_string(&got).unwrap(), "add table inet t\n");

        let refusing = fake(
            r#"cat >/dev/null; echo '/dev/stdin:2:19-21: Error: No symbol type information' >&2; exit 1"#,
        );
        let e = refusing
            .apply("add table inet t\nadd rule inet t c foo\n")
            .unwrap_err();
        match &e {
            NftError::Failed {
                command,
                stderr,
                offending_line,
            } => {
                assert!(command.ends_with("nft -f -"), "{command}");
                assert_eq!(
                    stderr,
                    "/dev/stdin:2:19-21: Error: No symbol type information"
                );
                assert_eq!(
                    offending_line.as_deref(),
                    Some("line 2: add rule inet t c foo")
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let text = e.to_string();
        assert!(
            text.contains("No symbol type information")
                && text.contains("[offending script line 2: add rule inet t c foo]"),
            "{text}"
        );
    }

    #[test]
    fn listings_tell_missing_from_failed() {
        let missing = fake("echo 'Error: No such file or directory' >&2; exit 1");
        assert_eq!(missing.list_table("inet", "t").unwrap(), None);
        let denied = fake("echo 'Error: Operation not permitted' >&2; exit 1");
        let e = denied.list_table("inet", "t").unwrap_err();
        assert!(!e.is_missing());
        assert!(e.to_string().contains("-j list table inet t"), "{e}");
        let listing = fake(r#"echo '{"nftables":[{"table":{"name":"t"}}]}'"#);
        let v = listing.list_table("inet", "t").unwrap().unwrap();
        assert_eq!(objects(&v, "table").count(), 1);
        let garbage = fake("echo '{'");
        assert!(matches!(
            garbage.list_json(&["list", "ruleset"]),
            Err(NftError::Json { .. })
        ));
        let tables = fake("printf 'table inet a\\ntable inet kinit-proxy\\n'");
        assert!(tables.table_exists("inet", "kinit-proxy").unwrap());
        assert!(!tables.table_exists("inet", "kinit").unwrap());
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let nowhere = NftCommand {
            program: "/nonexistent/nft".into(),
            args: vec![],
        };
        let e = nowhere.probe().unwrap_err();
        assert!(matches!(e, NftError::Spawn { .. }), "{e:?}");
        assert!(e.to_string().contains("install nftables"), "{e}");
        assert!(!nowhere.available());
    }
}
