//! Who this process is: the host name, and its leader election identity.

/// The host name (the UTS name of this process's namespace, i.e. the pod name inside a pod).
pub fn hostname() -> std::io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?
        .trim()
        .to_string();
    if name.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/sys/kernel/hostname is empty",
        ));
    }
    Ok(name)
}

/// `<hostname>_<uuid>`, the `holderIdentity` kube-scheduler and kube-controller-manager use:
/// unique per process, and it says which host leads. Falls back to `$HOSTNAME`, then
/// `localhost`, when the host name cannot be read.
pub fn leader_identity() -> String {
    let host = hostname()
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}_{}", uuid::Uuid::new_v4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_identities_name_the_host_and_differ_per_process() {
        let a = leader_identity();
        let b = leader_identity();
        assert_ne!(a, b);
        let host = hostname().unwrap();
        assert!(a.starts_with(&format!("{host}_")), "{a}");
        let uuid = a.rsplit('_').next().unwrap();
        assert!(uuid::Uuid::parse_str(uuid).is_ok(), "{a}");
    }
}
