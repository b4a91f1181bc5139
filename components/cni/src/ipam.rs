//! host-local style address allocation, persisted as one file per address.
//!
//! Layout of `<dataDir>/<network>/` (the same as the reference host-local plugin, so
//! operators' habits and tools carry over):
//! - `<ip>`: an allocated address; contents `<containerID>\r\n<ifname>`;
//! - `last_reserved_ip.<set>`: the address last handed out from range set `<set>`, so
//!   allocation walks the range round-robin instead of reusing a just-freed address;
//! - `lock`: `flock`ed exclusively around every read-modify-write, which serialises
//!   concurrent plugin processes (the kernel drops the lock if a process dies).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::{ip_to_u128, u128_to_ip, Range};
use crate::error::CniError;

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_PREFIX: &str = "last_reserved_ip.";
/// Separator between container ID and interface name, as host-local writes it.
const LINE_BREAK: &str = "\r\n";

/// The allocation store of one network.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// An exclusive hold on the store; allocations may only change while it is alive.
pub struct Locked<'a> {
    store: &'a Store,
    _lock: Flock<File>,
}

/// One allocation on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The allocated address.
    pub ip: IpAddr,
    /// Owner container ID.
    pub container_id: String,
    /// Owner interface name (empty in files written by old host-local versions).
    pub ifname: String,
}

impl Store {
    /// A store rooted at `dir` (created on first lock).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the store's exclusive lock, creating the directory if needed; blocks until free.
    pub fn lock(&self) -> Result<Locked<'_>, CniError> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| CniError::io("cannot create the IPAM directory", &self.dir, e))?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| CniError::io("cannot open the IPAM lock file", &path, e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            CniError::io("cannot lock the IPAM lock file", &path, errno.into())
        })?;
        Ok(Locked {
            store: self,
            _lock: lock,
        })
    }
}

impl Locked<'_> {
    /// Every allocation in the store.
    pub fn allocations(&self) -> Result<Vec<Allocation>, CniError> {
        let dir = &self.store.dir;
        let entries = fs::read_dir(dir)
            .map_err(|e| CniError::io("cannot list the IPAM directory", dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|e| CniError::io("cannot list the IPAM directory", dir, e))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(CniError::io("cannot read the IPAM allocation", &path, e)),
            };
            let mut lines = text.lines().map(str::trim);
            let container_id = lines.next().unwrap_or_default().to_string();
            let ifname = lines.next().unwrap_or_default().to_string();
            out.push(Allocation {
                ip,
                container_id,
                ifname,
            });
        }
        out.sort_by_key(|a| (a.ip.is_ipv6(), ip_to_u128(a.ip)));
        Ok(out)
    }

    /// The addresses held by `container_id`/`ifname`.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        Ok(self
            .allocations()?
            .into_iter()
            .filter(|a| a.container_id == container_id && a.ifname == ifname)
            .map(|a| a.ip)
            .collect())
    }

    /// Allocates one address from `ranges` (one range set) for `container_id`/`ifname`.
    ///
    /// Idempotent: an address the same owner already holds in these ranges is returned again.
    pub fn allocate(
        &self,
        set_index: usize,
        ranges: &[Range],
        container_id: &str,
        ifname: &str,
    ) -> Result<IpAddr, CniError> {
        if let Some(ip) = self
            .find(container_id, ifname)?
            .into_iter()
            .find(|ip| ranges.iter().any(|r| r.contains(*ip)))
        {
            return Ok(ip);
        }
        let last_path = self
            .store
            .dir
            .join(format!("{LAST_RESERVED_PREFIX}{set_index}"));
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok());
        // Start right after the last reserved address when it is still in one of the ranges.
        let (mut range_i, mut next) = match last.and_then(|ip| {
            ranges
                .iter()
                .position(|r| r.contains(ip))
                .map(|i| (i, ip_to_u128(ip) + 1))
        }) {
            Some(pos) => pos,
            None => (0, ip_to_u128(ranges[0].start)),
        };
        // Every address gets at most one try: the walk ends after one full lap.
        let total: u128 = ranges
            .iter()
            .map(|r| (ip_to_u128(r.end) - ip_to_u128(r.start)).saturating_add(1))
            .fold(0u128, u128::saturating_add);
        let mut tried: u128 = 0;
        while tried < total {
            let range = &ranges[range_i];
            if next > ip_to_u128(range.end) || next < ip_to_u128(range.start) {
                range_i = (range_i + 1) % ranges.len();
                next = ip_to_u128(ranges[range_i].start);
                continue;
            }
            tried += 1;
            let ip = u128_to_ip(next, range.start.is_ipv4());
            next += 1;
            if ip == range.gateway {
                continue;
            }
            if self.try_claim(ip, container_id, ifname)? {
                write_atomic(&last_path, ip.to_string().as_bytes())?;
                return Ok(ip);
            }
        }
        let names: Vec<String> = ranges
            .iter()
            .map(|r| format!("{}-{}", r.start, r.end))
            .collect();
        Err(CniError::Exhausted(names.join(", ")))
    }

    /// Creates the file for `ip` unless it exists; `false` when someone holds it.
    fn try_claim(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<bool, CniError> {
        let path = self.store.dir.join(ip.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(format!("{container_id}{LINE_BREAK}{ifname}").as_bytes())
                    .and_then(|()| f.sync_data())
                    .map_err(|e| CniError::io("cannot write the IPAM allocation", &path, e))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(CniError::io("cannot create the IPAM allocation", &path, e)),
        }
    }

    /// Frees every address of `container_id`/`ifname`; returns them (empty when none).
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, CniError> {
        let mut freed = Vec::new();
        for a in self.allocations()? {
            // Files of old host-local versions hold only the container ID.
            let owner =
                a.container_id == container_id && (a.ifname == ifname || a.ifname.is_empty());
            if owner {
                self.remove(a.ip)?;
                freed.push(a.ip);
            }
        }
        Ok(freed)
    }

    /// Frees every address whose owner is not in `valid` (spec 1.1 GC).
    pub fn retain(&self, valid: &HashSet<(String, String)>) -> Result<Vec<IpAddr>, CniError> {
        let mut freed = Vec::new();
        for a in self.allocations()? {
            if !valid.contains(&(a.container_id.clone(), a.ifname.clone())) {
                self.remove(a.ip)?;
                freed.push(a.ip);
            }
        }
        Ok(freed)
    }

    fn remove(&self, ip: IpAddr) -> Result<(), CniError> {
        let path = self.store.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io("cannot remove the IPAM allocation", &path, e)),
        }
    }

    /// How many addresses of `ranges` are free.
    pub fn free_count(&self, ranges: &[Range]) -> Result<u128, CniError> {
        let used = self
            .allocations()?
            .iter()
            .filter(|a| ranges.iter().any(|r| r.contains(a.ip)))
            .count() as u128;
        let total: u128 = ranges
            .iter()
            .map(|r| {
                let n = (ip_to_u128(r.end) - ip_to_u128(r.start)).saturating_add(1);
                n - u128::from(r.contains(r.gateway))
            })
            .fold(0u128, u128::saturating_add);
        Ok(total.saturating_sub(used))
    }
}

/// Writes via a temporary file and rename, so a crash never leaves a torn file.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), CniError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(|e| CniError::io("cannot write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpamConf;
    use std::sync::Arc;

    fn ranges(v: serde_json::Value) -> Vec<Range> {
        let ipam: IpamConf = serde_json::from_value(v).unwrap();
        ipam.range_sets().unwrap().remove(0)
    }

    fn small() -> Vec<Range> {
        // 10.250.0.0/29: network .0, gateway .1, broadcast .7 -> .2 to .6 are allocatable.
        ranges(serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/29"}]]}))
    }

    #[test]
    fn allocates_in_order_skipping_network_gateway_and_broadcast() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().join("net"));
        let l = store.lock().unwrap();
        let r = small();
        let got: Vec<IpAddr> = (0..5)
            .map(|i| l.allocate(0, &r, &format!("c{i}"), "eth0").unwrap())
            .collect();
        let want: Vec<IpAddr> = (2..=6)
            .map(|h| format!("10.250.0.{h}").parse().unwrap())
            .collect();
        assert_eq!(got, want);
        let e = l.allocate(0, &r, "c5", "eth0").unwrap_err();
        assert_eq!(e.code() as u32, 100);
        assert!(e.to_string().contains("10.250.0.1-10.250.0.6"), "{e}");
        assert_eq!(l.free_count(&r).unwrap(), 0);
    }

    #[test]
    fn add_is_idempotent_and_release_frees() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let l = store.lock().unwrap();
        let r = small();
        let a = l.allocate(0, &r, "c1", "eth0").unwrap();
        assert_eq!(l.allocate(0, &r, "c1", "eth0").unwrap(), a);
        let b = l.allocate(0, &r, "c1", "net1").unwrap();
        assert_ne!(
            a, b,
            "another interface of the same container gets its own address"
        );
        let text = fs::read_to_string(dir.path().join(a.to_string())).unwrap();
        assert_eq!(text, "c1\r\neth0");
        assert_eq!(l.release("c1", "eth0").unwrap(), vec![a]);
        assert!(
            l.release("c1", "eth0").unwrap().is_empty(),
            "second DEL is a no-op"
        );
        assert!(l.release("unknown", "eth0").unwrap().is_empty());
        assert_eq!(l.find("c1", "net1").unwrap(), vec![b]);
        // Round robin: the freed address is not handed out next.
        let c = l.allocate(0, &r, "c2", "eth0").unwrap();
        assert_ne!(c, a);
        assert_eq!(c, "10.250.0.4".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn wraps_around_to_freed_addresses_and_persists_across_stores() {
        let dir = tempfile::tempdir().unwrap();
        let r = small();
        {
            let store = Store::new(dir.path());
            let l = store.lock().unwrap();
            for i in 0..5 {
                l.allocate(0, &r, &format!("c{i}"), "eth0").unwrap();
            }
            l.release("c1", "eth0").unwrap(); // frees .3
        }
        // A new process (new Store) sees the same state on disk.
        let store = Store::new(dir.path());
        let l = store.lock().unwrap();
        assert_eq!(l.allocations().unwrap().len(), 4);
        assert_eq!(l.free_count(&r).unwrap(), 1);
        let ip = l.allocate(0, &r, "c9", "eth0").unwrap();
        assert_eq!(ip, "10.250.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(
            l.find("c0", "eth0").unwrap(),
            vec!["10.250.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn respects_explicit_bounds_and_multiple_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let l = store.lock().unwrap();
        let r = ranges(serde_json::json!({"type": "host-local", "ranges": [[
            {"subnet": "10.250.0.0/24", "rangeStart": "10.250.0.100", "rangeEnd": "10.250.0.101"},
            {"subnet": "10.250.1.0/24", "rangeStart": "10.250.1.1", "rangeEnd": "10.250.1.2"}
        ]]}));
        let got: Vec<String> = (0..3)
            .map(|i| {
                l.allocate(0, &r, &format!("c{i}"), "eth0")
                    .unwrap()
                    .to_string()
            })
            .collect();
        // 10.250.1.1 is the second range's default gateway, so it is skipped.
        assert_eq!(got, ["10.250.0.100", "10.250.0.101", "10.250.1.2"]);
        assert!(l.allocate(0, &r, "c3", "eth0").is_err());
    }

    #[test]
    fn ipv6_ranges_allocate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let l = store.lock().unwrap();
        let r = ranges(
            serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "fd00:250::/64"}]]}),
        );
        assert_eq!(
            l.allocate(0, &r, "c", "eth0").unwrap(),
            "fd00:250::2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let l = store.lock().unwrap();
        let r = small();
        let keep = l.allocate(0, &r, "keep", "eth0").unwrap();
        l.allocate(0, &r, "gone", "eth0").unwrap();
        l.allocate(0, &r, "keep", "net9").unwrap();
        let valid: HashSet<_> = [("keep".to_string(), "eth0".to_string())].into();
        assert_eq!(l.retain(&valid).unwrap().len(), 2);
        assert_eq!(
            l.allocations()
                .unwrap()
                .iter()
                .map(|a| a.ip)
                .collect::<Vec<_>>(),
            vec![keep]
        );
        // The lock and bookkeeping files survive GC.
        assert!(dir.path().join("lock").exists());
        assert!(dir.path().join("last_reserved_ip.0").exists());
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = tempfile::tempdir().unwrap();
        let path = Arc::new(dir.path().to_path_buf());
        let r = Arc::new(ranges(
            serde_json::json!({"type": "host-local", "ranges": [[{"subnet": "10.250.0.0/26"}]]}),
        ));
        // 61 allocatable addresses (.2-.62), 8 threads x 10 containers: 19 must fail cleanly.
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let path = Arc::clone(&path);
                let r = Arc::clone(&r);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    for i in 0..10 {
                        // A fresh Store and lock per call, like separate plugin processes.
                        let store = Store::new(path.as_path());
                        let l = store.lock().unwrap();
                        match l.allocate(0, &r, &format!("t{t}-c{i}"), "eth0") {
                            Ok(ip) => got.push(ip),
                            Err(e) => assert_eq!(e.code() as u32, 100, "{e}"),
                        }
                    }
                    got
                })
            })
            .collect();
        let all: Vec<IpAddr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 61);
        assert_eq!(unique.len(), 61);
        let store = Store::new(path.as_path());
        assert_eq!(store.lock().unwrap().allocations().unwrap().len(), 61);
    }
}
