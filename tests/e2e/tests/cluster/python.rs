//! The cluster driven by the official Python `kubernetes` client, beside the kubectl checks:
//! typed models of the everyday kinds, watch, the four patch types, the scale subresource, 409
//! on stale updates, 404/422 `Status` bodies, paging, TokenRequest tokens and namespace deletion
//! (the checks live in `tests/e2e/python/client_suite.py`; this module runs that script).
//!
//! The interpreter is `$KINIT_PYTHON`, else `python3` on PATH; it must have the `kubernetes`
//! package (`pip install kubernetes`). A missing interpreter or package is a failure, not a skip.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the whole suite may take before it is stopped (it needs well under a minute).
const SUITE_LIMIT: Duration = Duration::from_secs(600);

/// The suite's script in this crate.
fn suite_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python/client_suite.py")
}

/// The Python interpreter: `$KINIT_PYTHON`, else `python3`.
fn python() -> PathBuf {
    std::env::var_os("KINIT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Runs the Python client suite against the cluster of `admin_kubeconfig`, with Deployments
/// of `image` (an image the nodes already have, e.g. `kinit.local/demoapp:<tag>`).
///
/// Returns the suite's output (one line per check, with timings) when every check passed;
/// otherwise an error holding what failed and the whole output.
pub fn run_client_suite(admin_kubeconfig: &Path, image: &str) -> Result<String, String> {
    let script = suite_script();
    let python = python();
    let mut child = Command::new(&python)
        .arg("-u")
        .arg(&script)
        .arg("--kubeconfig")
        .arg(admin_kubeconfig)
        .arg("--image")
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} {}: {e}; install Python 3 and `pip install kubernetes`, or set \
                 KINIT_PYTHON to an interpreter that has it",
                python.display(),
                script.display()
            )
        })?;
    // Drain both pipes on their own threads so a chatty suite never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() > SUITE_LIMIT => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("stopped after {} s", SUITE_LIMIT.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
            Err(e) => break Err(format!("cannot wait for the suite: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let output = if stderr.trim().is_empty() {
        stdout
    } else {
        format!("{stdout}\n--- stderr\n{stderr}")
    };
    match status {
        Ok(status) if status.success() => Ok(output),
        Ok(status) => {
            let failed: Vec<&str> = output.lines().filter(|l| l.starts_with("FAIL")).collect();
            Err(format!(
                "the Python client suite {} ({status}); failed:\n{}\n--- whole output\n{output}",
                script.display(),
                failed.join("\n")
            ))
        }
        Err(why) => Err(format!(
            "the Python client suite {} {why}\n--- output so far\n{output}",
            script.display()
        )),
    }
}
