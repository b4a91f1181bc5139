//! Process-level tests for `kinit pause` and `kinit demoapp`, and the images end to end in a
//! real containerd.
//!
//! This file has its own `main` (no libtest harness): the same executable is the test driver
//! *and* the program under test. Started as `…/kinit pause` or `…/kinit demoapp` (its name
//! inside the images, where it is packaged as `/usr/local/bin/kinit`), or with
//! `KINIT_IMAGES_TEST_CHILD` set, it runs that program instead of the tests.
//!
//! The containerd test needs root and the Debian packages `containerd` and `runc`; without them
//! it is reported as SKIPPED, unless `KINIT_E2E=1`, which turns a missing prerequisite into a
//! failure.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use kinit_images::{
    build_images, run_demoapp, run_pause, BuildOptions, Compression, DemoAppArgs, KinitImage,
    PauseArgs,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CHILD_ENV: &str = "KINIT_IMAGES_TEST_CHILD";

#[derive(Parser)]
struct DemoCli {
    #[command(flatten)]
    args: DemoAppArgs,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let as_kinit = argv[0].ends_with("/kinit") || argv[0] == "kinit";
    let child_mode = std::env::var(CHILD_ENV).ok();
    if as_kinit || child_mode.is_some() {
        let mode = child_mode.unwrap_or_else(|| argv.get(1).cloned().unwrap_or_default());
        std::process::exit(run_child(&mode, &argv));
    }

    let filter: Option<String> = argv[1..].iter().find(|a| !a.starts_with('-')).cloned();
    let tests: Vec<(&str, TestFn)> = vec![
        ("pause_reaps_orphans_and_exits_0_on_sigterm", || {
            pause_reaps_and_exits_on(Signal::SIGTERM)
        }),
        ("pause_exits_0_on_sigint", || {
            pause_reaps_and_exits_on(Signal::SIGINT)
        }),
        (
            "demoapp_process_serves_and_exits_0_on_sigterm",
            demoapp_process,
        ),
        ("images_import_and_run_in_containerd", containerd_e2e),
    ];
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    for (name, test) in tests {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(test).unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Outcome::Failed(message)
        });
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Outcome::Passed => {
                passed += 1;
                println!("test {name} ... ok ({secs:.1}s)");
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                println!("test {name} ... SKIPPED: {why}");
                eprintln!(
                    "\n*** SKIPPED {name}: {why}\n*** install the Debian packages `containerd runc` \
                     and run as root, or set KINIT_E2E=1 to make this a failure ***\n"
                );
            }
            Outcome::Failed(why) => {
                failed += 1;
                println!("test {name} ... FAILED ({secs:.1}s)\n{why}");
            }
        }
    }
    println!("\n{passed} passed, {failed} failed, {skipped} skipped");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

type TestFn = fn() -> Outcome;

/// A child process that is killed and waited for when dropped, so no test leaves a zombie or a
/// stray process behind, whichever way it ends.
struct Guarded(Child);

impl Drop for Guarded {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Guarded {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Guarded {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

/// Runs the program under test; returns the exit code.
fn run_child(mode: &str, argv: &[String]) -> i32 {
    match mode {
        "pause" => match run_pause(PauseArgs::default()) {
            Ok(()) => 0,
            Err(err) => {
                eprintln!("{err}");
                1
            }
        },
        "pause-with-orphan" => {
            // Become a subreaper first so the orphan is reparented to this process, start
            // `sh` that leaves a background `sleep` behind, print its pid, then pause.
            nix::sys::prctl::set_child_subreaper(true).expect("set subreaper");
            let output = Command::new("sh")
                .args(["-c", "sleep 0.5 & echo $!"])
                .output()
                .expect("run sh");
            let pid = String::from_utf8_lossy(&output.stdout).trim().to_string();
            println!("{pid}");
            std::io::stdout().flush().unwrap();
            match run_pause(PauseArgs::default()) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("{err}");
                    1
                }
            }
        }
        "demoapp" => {
            // argv is `kinit demoapp FLAGS…` in the image, or `test-binary FLAGS…` in child mode.
            let skip = if argv.get(1).map(String::as_str) == Some("demoapp") {
                2
            } else {
                1
            };
            let cli = DemoCli::parse_from(
                std::iter::once("demoapp".to_string()).chain(argv[skip..].iter().cloned()),
            );
            let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
            match runtime.block_on(run_demoapp(cli.args)) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("{err}");
                    1
                }
            }
        }
        other => {
            eprintln!("unknown mode {other:?}: expected pause or demoapp");
            2
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `(state, ppid)` from /proc/PID/stat, `None` once the process is gone.
fn proc_state(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn pause_reaps_and_exits_on(signal: Signal) -> Outcome {
    let mut child = Guarded(
        Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, "pause-with-orphan")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn pause child"),
    );
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("read orphan pid");
    let orphan: i32 = line.trim().parse().expect("orphan pid");
    // The orphan was reparented to the pause process.
    if let Some((_, ppid)) = proc_state(orphan) {
        assert_eq!(
            ppid,
            child.id() as i32,
            "orphan {orphan} not reparented to pause"
        );
    }
    // Once it exits (0.5 s), pause must reap it: no zombie left behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proc_state(orphan) {
            None => break,
            Some((state, ppid)) if Instant::now() > deadline => {
                let _ = child.kill();
                return Outcome::Failed(format!(
                    "orphan {orphan} still present in state {state} (ppid {ppid}): not reaped"
                ));
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    kill(Pid::from_raw(child.id() as i32), signal).expect("signal pause");
    let status = wait_with_timeout(&mut child, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("pause did not exit within 5 s of {signal}"));
    assert_eq!(
        status.code(),
        Some(0),
        "pause exit status after {signal}: {status}"
    );
    Outcome::Passed
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.0 GET on loopback: `(status, body)`.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn wait_http_ok(port: u16, path: &str, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match http_get(port, path) {
            Ok((200, body)) => return Ok(body),
            Ok((status, body)) => last = format!("HTTP {status}: {body}"),
            Err(err) => last = err.to_string(),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "GET {path} on 127.0.0.1:{port} never returned 200: {last}"
    ))
}

fn demoapp_process() -> Outcome {
    let port = free_loopback_port();
    let mut child = Guarded(
        Command::new(std::env::current_exe().unwrap())
            .env(CHILD_ENV, "demoapp")
            .env("POD_NAME", "demo-pod")
            .env("VERSION", "v-test")
            .args(["--bind-address", "127.0.0.1", "--port", &port.to_string()])
            .spawn()
            .expect("spawn demoapp"),
    );
    if let Err(err) = wait_http_ok(port, "/healthz", Duration::from_secs(10)) {
        return Outcome::Failed(err);
    }
    let (status, body) = http_get(port, "/").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("pod: demo-pod") && body.contains("v-test"),
        "{body}"
    );
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_with_timeout(&mut child, Duration::from_secs(5)).expect("demoapp exits");
    assert_eq!(status.code(), Some(0), "{status}");
    Outcome::Passed
}

// ---------------------------------------------------------------------------------------------
// containerd end to end
// ---------------------------------------------------------------------------------------------

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

/// A private containerd (own root, state and socket under /tmp), killed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    process: Child,
    containers: Vec<String>,
}

const NAMESPACE: &str = "kinit-images-test";

impl Containerd {
    fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("kinit-ctr-")
            .tempdir_in("/tmp")
            .map_err(|e| e.to_string())?;
        let d = dir.path().display().to_string();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/c.sock\"\n[ttrpc]\n  address = \"{d}/c.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n"
        );
        std::fs::write(dir.path().join("config.toml"), config).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("containerd.log")).map_err(|e| e.to_string())?;
        let process = Command::new("containerd")
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("starting containerd: {e}"))?;
        let mut fixture = Containerd {
            dir,
            process,
            containers: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if fixture.ctr(&["version"]).is_ok() {
                return Ok(fixture);
            }
            if let Some(status) = fixture.process.try_wait().unwrap() {
                return Err(format!("containerd exited ({status}):\n{}", fixture.log()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd not ready after 30 s:\n{}",
                    fixture.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.dir.path().join("c.sock"))
            .args(["--namespace", NAMESPACE])
            .args(args);
        command
    }

    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let output = self
            .ctr_command(args)
            .output()
            .map_err(|e| format!("running ctr: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "ctr {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// `ctr run --rm …` in the background; the container is cleaned up on drop if still there.
    fn run(&mut self, args: &[&str], id: &str) -> Guarded {
        self.containers.push(id.to_string());
        Guarded(
            self.ctr_command(args)
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn ctr run"),
        )
    }

    /// The PID of a running task, once `ctr task ls` shows it RUNNING.
    fn wait_running(&self, id: &str, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let tasks = self.ctr(&["task", "ls"]).unwrap_or_default();
            if let Some(line) = tasks
                .lines()
                .find(|l| l.split_whitespace().next() == Some(id))
            {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.get(2) == Some(&"RUNNING") {
                    return fields[1]
                        .parse()
                        .map_err(|_| format!("bad pid in {line:?}"));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "task {id} not running after {timeout:?}:\n{tasks}\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in &self.containers {
            let _ = self.ctr(&["task", "kill", "--signal", "SIGKILL", id]);
            std::thread::sleep(Duration::from_millis(200));
            let _ = self.ctr(&["task", "delete", "--force", id]);
            let _ = self.ctr(&["container", "delete", id]);
        }
        // runc's state directory for this namespace (empty once every container is gone).
        let _ = std::fs::remove_dir(format!("/run/containerd/runc/{NAMESPACE}"));
        let _ = kill(Pid::from_raw(self.process.id() as i32), Signal::SIGTERM);
        if wait_with_timeout(&mut self.process, Duration::from_secs(10)).is_none() {
            eprintln!("containerd did not stop on SIGTERM; killed");
        }
    }
}

fn containerd_e2e() -> Outcome {
    let required = std::env::var("KINIT_E2E").is_ok_and(|v| v == "1");
    let missing: Vec<&str> = ["containerd", "ctr", "runc"]
        .into_iter()
        .filter(|p| which(p).is_none())
        .collect();
    let why = if !missing.is_empty() {
        Some(format!("{} not on PATH", missing.join(", ")))
    } else if !nix::unistd::geteuid().is_root() {
        Some("containerd needs root".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        return if required {
            Outcome::Failed(format!("KINIT_E2E=1 but {why}"))
        } else {
            Outcome::Skipped(why)
        };
    }

    // Images from this very executable: inside them it is /usr/local/bin/kinit.
    let out = tempfile::tempdir().unwrap();
    let mut options = BuildOptions::new(std::env::current_exe().unwrap(), out.path());
    options.tag = "v0.0.0-e2e".into();
    options.compression = Compression::Gzip(1);
    let built = build_images(&options).expect("build images");
    let reference = |image: KinitImage| image.reference(&options.tag);

    let mut containerd = match Containerd::start() {
        Ok(c) => c,
        Err(err) => return Outcome::Failed(err),
    };
    for image in &built.images {
        if let Err(err) = containerd.ctr(&["images", "import", image.path.to_str().unwrap()]) {
            return Outcome::Failed(err);
        }
    }
    let listing = containerd.ctr(&["images", "ls"]).unwrap();
    for image in &built.images {
        let line = listing
            .lines()
            .find(|l| l.split_whitespace().next() == Some(image.reference.as_str()))
            .unwrap_or_else(|| panic!("{} not in `ctr images ls`:\n{listing}", image.reference));
        assert!(
            line.contains(&image.manifest_digest),
            "digest differs: {line}"
        );
        assert!(
            line.contains("linux/amd64") || line.contains("linux/"),
            "{line}"
        );
    }

    // The demo app, with the image's own entrypoint, on a free loopback port of the host network.
    let port = free_loopback_port();
    let demo_id = format!("kinit-demo-{}", std::process::id());
    let port_env = format!("PORT={port}");
    let demo_ref = reference(KinitImage::Demoapp);
    let mut demo = containerd.run(
        &[
            "run",
            "--rm",
            "--net-host",
            "--env",
            &port_env,
            "--env",
            "BIND_ADDRESS=127.0.0.1",
            "--env",
            "POD_NAME=demo-pod",
            &demo_ref,
            &demo_id,
        ],
        &demo_id,
    );
    if let Err(err) = wait_http_ok(port, "/healthz", Duration::from_secs(30)) {
        return Outcome::Failed(format!("{err}\n{}", containerd.log()));
    }
    let (status, body) = http_get(port, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("pod: demo-pod"), "{body}");
    assert!(
        body.contains("v0.0.0-e2e"),
        "VERSION from the image config: {body}"
    );
    let demo_pid = containerd
        .wait_running(&demo_id, Duration::from_secs(5))
        .unwrap();
    let uid_line = std::fs::read_to_string(format!("/proc/{demo_pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(str::to_string)
        .unwrap();
    assert!(
        uid_line.contains("65534"),
        "demoapp runs as nobody: {uid_line}"
    );
    containerd.ctr(&["task", "kill", &demo_id]).unwrap(); // SIGTERM
    let status = wait_with_timeout(&mut demo, Duration::from_secs(15)).expect("demoapp stops");
    assert!(status.success(), "demoapp exit after SIGTERM: {status}");

    // The pause image: PID 1 of its container, exits 0 on SIGTERM.
    let pause_id = format!("kinit-pause-{}", std::process::id());
    let pause_ref = reference(KinitImage::Pause);
    let mut pause = containerd.run(&["run", "--rm", &pause_ref, &pause_id], &pause_id);
    let pause_pid = match containerd.wait_running(&pause_id, Duration::from_secs(30)) {
        Ok(pid) => pid,
        Err(err) => {
            return Outcome::Failed(err);
        }
    };
    // `task ls` may say RUNNING while the process is still `runc init`: wait for the exec.
    let expected: &[u8] = b"/usr/local/bin/kinit\0pause\0";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut cmdline = Vec::new();
    while Instant::now() < deadline {
        cmdline = std::fs::read(format!("/proc/{pause_pid}/cmdline")).unwrap_or_default();
        if cmdline == expected {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        String::from_utf8_lossy(&cmdline),
        String::from_utf8_lossy(expected),
        "pause entrypoint"
    );
    containerd.ctr(&["task", "kill", &pause_id]).unwrap(); // SIGTERM
    let status = wait_with_timeout(&mut pause, Duration::from_secs(15)).expect("pause stops");
    assert!(status.success(), "pause exit after SIGTERM: {status}");

    // The control-plane image runs `kinit` by name, through PATH, as the static pods do.
    let cp_id = format!("kinit-cp-{}", std::process::id());
    let cp_ref = reference(KinitImage::ControlPlane);
    let mut cp = containerd.run(&["run", "--rm", &cp_ref, &cp_id, "kinit", "pause"], &cp_id);
    if let Err(err) = containerd.wait_running(&cp_id, Duration::from_secs(30)) {
        return Outcome::Failed(err);
    }
    containerd.ctr(&["task", "kill", &cp_id]).unwrap();
    let status = wait_with_timeout(&mut cp, Duration::from_secs(15)).expect("control plane stops");
    assert!(
        status.success(),
        "`kinit pause` via PATH in the control-plane image: {status}"
    );

    containerd.containers.clear();
    drop(containerd);
    Outcome::Passed
}
