//! The few host sysctls the plugin needs, written through `/proc/sys` (the kernel's own
//! interface for them; no crate adds anything over a file write).

use std::fs;

use crate::error::CniError;

/// Turns on IP forwarding for the family, so the host routes between the bridge and its uplinks.
pub fn enable_forwarding(ipv4: bool) -> Result<(), CniError> {
    let path = if ipv4 {
        "/proc/sys/net/ipv4/ip_forward"
    } else {
        "/proc/sys/net/ipv6/conf/all/forwarding"
    };
    if fs::read_to_string(path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(path, "1").map_err(|e| CniError::io("cannot enable forwarding in", path, e))
}

/// Lets `ifname` route packets with loopback addresses, so connections to
/// `127.0.0.1:<hostPort>` can be forwarded to a pod behind it (see [`crate::hostport`]).
pub fn enable_route_localnet(ifname: &str) -> Result<(), CniError> {
    let path = format!("/proc/sys/net/ipv4/conf/{ifname}/route_localnet");
    if fs::read_to_string(&path).is_ok_and(|v| v.trim() == "1") {
        return Ok(());
    }
    fs::write(&path, "1").map_err(|e| CniError::io("cannot enable route_localnet in", path, e))
}
