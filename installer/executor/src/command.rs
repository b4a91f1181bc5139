//! Command results, streamed output lines and shell quoting.

use std::borrow::Cow;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ExitStatus {
    /// The command exited with this code.
    Code(i32),
    /// The command was killed by this signal (name as SSH reports it, e.g. `KILL`, or a number).
    Signal(String),
    /// The remote side closed the channel without reporting a status.
    Unknown,
}

impl ExitStatus {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, ExitStatus::Code(0))
    }

    /// The exit code, if the command exited normally.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatus::Code(code) => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(code) => write!(f, "exit code {code}"),
            ExitStatus::Signal(signal) => write!(f, "signal {signal}"),
            ExitStatus::Unknown => f.write_str("no exit status (connection closed)"),
        }
    }
}

/// Everything a finished command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// How the command ended.
    pub status: ExitStatus,
    /// Raw standard output.
    pub stdout: Vec<u8>,
    /// Raw standard error.
    pub stderr: Vec<u8>,
}

impl CommandOutput {
    /// True when the command exited with code 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Standard output as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// Standard error as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }

    /// The last `lines` non-empty lines of standard error, joined by newlines; used in errors.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail_lines(&self.stderr_text(), lines)
    }
}

/// The last `count` non-empty lines of `text`.
pub(crate) fn tail_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

/// Which stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Called once per complete line of output while a command runs (line without its newline).
pub type LineSink<'a> = &'a mut (dyn FnMut(OutputStream, &str) + Send);

/// What to feed a command's standard input.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// The contents of this local file, streamed.
    File(&'a std::path::Path),
}

/// One command to run on a host.
pub struct ExecRequest<'a> {
    /// A POSIX `sh` command line; run as `sh -c` (with `sudo -n` for non-root users that need it).
    pub command: &'a str,
    /// Standard input; none means an empty input (EOF at once).
    pub stdin: Option<Input<'a>>,
    /// Overrides the host's default command timeout.
    pub timeout: Option<Duration>,
    /// Receives each output line as it arrives.
    pub on_line: Option<LineSink<'a>>,
}

impl<'a> ExecRequest<'a> {
    /// A request for `command` with no input, the host's timeout and no streaming.
    pub fn new(command: &'a str) -> Self {
        ExecRequest {
            command,
            stdin: None,
            timeout: None,
            on_line: None,
        }
    }

    /// Feeds `input` to the command's standard input.
    pub fn stdin(mut self, input: Input<'a>) -> Self {
        self.stdin = Some(input);
        self
    }

    /// Sets a timeout for this command.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Streams output lines to `sink` while the command runs.
    pub fn on_line(mut self, sink: LineSink<'a>) -> Self {
        self.on_line = Some(sink);
        self
    }
}

/// Where the bytes of an upload come from.
#[derive(Debug, Clone, Copy)]
pub enum UploadSource<'a> {
    /// These bytes.
    Bytes(&'a [u8]),
    /// A local file, streamed.
    File(&'a std::path::Path),
}

impl<'a> From<UploadSource<'a>> for Input<'a> {
    fn from(source: UploadSource<'a>) -> Self {
        match source {
            UploadSource::Bytes(bytes) => Input::Bytes(bytes),
            UploadSource::File(path) => Input::File(path),
        }
    }
}

/// Mode and ownership an uploaded file gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileAttrs {
    /// Permission bits, e.g. `0o644`.
    pub mode: u32,
    /// Owning user name (or numeric id); `None` keeps the uploader's user.
    pub owner: Option<String>,
    /// Owning group name (or numeric id); `None` keeps the uploader's group.
    pub group: Option<String>,
}

impl FileAttrs {
    /// A file with `mode`, owned by whoever writes it.
    pub fn mode(mode: u32) -> Self {
        FileAttrs {
            mode,
            owner: None,
            group: None,
        }
    }

    /// Sets the owning user and group.
    pub fn owned_by(mut self, owner: impl Into<String>, group: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self.group = Some(group.into());
        self
    }

    /// `chown` argument (`user`, `user:group` or `:group`), if any ownership is requested.
    pub(crate) fn chown_spec(&self) -> Option<String> {
        match (&self.owner, &self.group) {
            (None, None) => None,
            (Some(owner), None) => Some(owner.clone()),
            (None, Some(group)) => Some(format!(":{group}")),
            (Some(owner), Some(group)) => Some(format!("{owner}:{group}")),
        }
    }
}

/// Quotes one word for POSIX `sh`.
///
/// Returns `None` for words `sh` cannot carry (NUL bytes).
pub fn shell_quote(word: &str) -> Option<String> {
    shlex::try_quote(word).ok().map(Cow::into_owned)
}

/// Joins words into one `sh` command line, each quoted.
///
/// Returns `None` when a word contains a NUL byte.
pub fn shell_join<'a>(words: impl IntoIterator<Item = &'a str>) -> Option<String> {
    shlex::try_join(words).ok()
}

/// Wraps `command` so it runs under POSIX `sh`, through `sudo -n` when `elevate` is set.
///
/// `-n` makes sudo fail at once instead of waiting for a password nobody can type.
pub fn wrap_command(command: &str, elevate: bool) -> Option<String> {
    let quoted = shell_quote(command)?;
    Some(if elevate {
        format!("sudo -n sh -c {quoted}")
    } else {
        format!("sh -c {quoted}")
    })
}

/// Shortens a command for error messages: first line, at most 160 characters.
pub(crate) fn display_command(command: &str) -> String {
    const MAX: usize = 160;
    let first = command.lines().next().unwrap_or("");
    let multi = command.lines().nth(1).is_some();
    if first.chars().count() > MAX {
        let cut: String = first.chars().take(MAX).collect();
        format!("{cut}…")
    } else if multi {
        format!("{first} …")
    } else {
        first.to_string()
    }
}

/// Splits a byte stream into lines for a [`LineSink`], across chunk boundaries.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Feeds a chunk and calls `emit` for each completed line (without `\n` or `\r\n`).
    pub(crate) fn push(&mut self, chunk: &[u8], mut emit: impl FnMut(&str)) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + pos;
            let mut line = &self.pending[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            emit(&String::from_utf8_lossy(line));
            start = end + 1;
        }
        self.pending.drain(..start);
    }

    /// Emits what is left after the stream ended without a final newline.
    pub(crate) fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.pending.is_empty() {
            emit(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }
}

/// Collects a command's output and forwards lines to an optional sink.
pub(crate) struct OutputCollector<'a> {
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    out_lines: LineSplitter,
    err_lines: LineSplitter,
    sink: Option<LineSink<'a>>,
}

impl<'a> OutputCollector<'a> {
    pub(crate) fn new(sink: Option<LineSink<'a>>) -> Self {
        OutputCollector {
            stdout: Vec::new(),
            stderr: Vec::new(),
            out_lines: LineSplitter::default(),
            err_lines: LineSplitter::default(),
            sink,
        }
    }

    pub(crate) fn push(&mut self, stream: OutputStream, chunk: &[u8]) {
        let (buffer, splitter) = match stream {
            OutputStream::Stdout => (&mut self.stdout, &mut self.out_lines),
            OutputStream::Stderr => (&mut self.stderr, &mut self.err_lines),
        };
        buffer.extend_from_slice(chunk);
        if let Some(sink) = self.sink.as_mut() {
            splitter.push(chunk, |line| sink(stream, line));
        }
    }

    pub(crate) fn finish(mut self, status: ExitStatus) -> CommandOutput {
        if let Some(sink) = self.sink.as_mut() {
            self.out_lines
                .finish(|line| sink(OutputStream::Stdout, line));
            self.err_lines
                .finish(|line| sink(OutputStream::Stderr, line));
        }
        CommandOutput {
            status,
            stdout: self.stdout,
            stderr: self.stderr,
        }
    }
}

/// A remote path split into its directory and file name, for atomic writes next to it.
pub(crate) fn split_dest(path: &str) -> Option<(String, String)> {
    let path_buf = PathBuf::from(path);
    let name = path_buf.file_name()?.to_str()?.to_string();
    let dir = match path_buf.parent() {
        Some(parent) if parent.as_os_str().is_empty() => ".".to_string(),
        Some(parent) => parent.to_str()?.to_string(),
        None => return None,
    };
    Some((dir, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_a_round_trip_through_shlex() {
        for word in [
            "plain",
            "with space",
            "it's",
            "$(rm -rf /)",
            "back`tick`",
            "a\"b",
            "",
            "new\nline",
        ] {
            let quoted = shell_quote(word).unwrap();
            assert_eq!(shlex::split(&quoted).unwrap(), vec![word.to_string()]);
        }
        assert!(shell_quote("nul\0byte").is_none());
    }

    #[test]
    fn wrap_command_runs_sh_or_sudo() {
        let plain = wrap_command("echo 'hi' $HOME", false).unwrap();
        assert_eq!(
            shlex::split(&plain).unwrap(),
            vec!["sh", "-c", "echo 'hi' $HOME"]
        );
        let wrapped = wrap_command("id -u && echo ok", true).unwrap();
        assert!(wrapped.starts_with("sudo -n sh -c "));
        let words = shlex::split(&wrapped).unwrap();
        assert_eq!(words, vec!["sudo", "-n", "sh", "-c", "id -u && echo ok"]);
    }

    #[test]
    fn shell_join_quotes_each_word() {
        let joined = shell_join(["printf", "%s\n", "a b"]).unwrap();
        assert_eq!(
            shlex::split(&joined).unwrap(),
            vec!["printf", "%s\n", "a b"]
        );
    }

    #[test]
    fn line_splitter_handles_chunk_boundaries_and_crlf() {
        let mut splitter = LineSplitter::default();
        let mut lines = Vec::new();
        splitter.push(b"one\ntw", |l| lines.push(l.to_string()));
        splitter.push(b"o\r\nthree", |l| lines.push(l.to_string()));
        assert_eq!(lines, vec!["one", "two"]);
        splitter.finish(|l| lines.push(l.to_string()));
        assert_eq!(lines, vec!["one", "two", "three"]);
    }

    #[test]
    fn collector_keeps_bytes_and_streams_lines() {
        let mut seen = Vec::new();
        let mut sink = |stream: OutputStream, line: &str| seen.push((stream, line.to_string()));
        let mut collector = OutputCollector::new(Some(&mut sink));
        collector.push(OutputStream::Stdout, b"a\nb");
        collector.push(OutputStream::Stderr, b"warn\n");
        let output = collector.finish(ExitStatus::Code(0));
        assert_eq!(output.stdout, b"a\nb");
        assert_eq!(output.stderr, b"warn\n");
        assert_eq!(
            seen,
            vec![
                (OutputStream::Stdout, "a".to_string()),
                (OutputStream::Stderr, "warn".to_string()),
                (OutputStream::Stdout, "b".to_string()),
            ]
        );
    }

    #[test]
    fn stderr_tail_keeps_last_non_empty_lines() {
        let output = CommandOutput {
            status: ExitStatus::Code(1),
            stdout: vec![],
            stderr: b"l1\nl2\n\nl3\nl4\n".to_vec(),
        };
        assert_eq!(output.stderr_tail(2), "l3\nl4");
    }

    #[test]
    fn display_command_shortens_scripts() {
        assert_eq!(display_command("echo hi"), "echo hi");
        assert_eq!(display_command("set -e\necho hi"), "set -e …");
        let long = "x".repeat(300);
        assert_eq!(display_command(&long).chars().count(), 161);
    }

    #[test]
    fn split_dest_finds_dir_and_name() {
        assert_eq!(
            split_dest("/etc/kubernetes/admin.conf"),
            Some(("/etc/kubernetes".into(), "admin.conf".into()))
        );
        assert_eq!(split_dest("file"), Some((".".into(), "file".into())));
        assert_eq!(split_dest("/"), None);
    }

    #[test]
    fn chown_spec_forms() {
        assert_eq!(FileAttrs::mode(0o644).chown_spec(), None);
        assert_eq!(
            FileAttrs::mode(0o600).owned_by("root", "adm").chown_spec(),
            Some("root:adm".into())
        );
        let only_group = FileAttrs {
            mode: 0o640,
            owner: None,
            group: Some("etcd".into()),
        };
        assert_eq!(only_group.chown_spec(), Some(":etcd".into()));
    }

    #[test]
    fn exit_status_helpers() {
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Code(2).success());
        assert_eq!(ExitStatus::Code(2).code(), Some(2));
        assert!(!ExitStatus::Signal("KILL".into()).success());
        assert_eq!(ExitStatus::Signal("KILL".into()).to_string(), "signal KILL");
    }
}
