//! Syntax checks for names used in Kubernetes objects and in the inventory.
//! Hand-written: each is a few character-class rules from the Kubernetes API conventions,
//! smaller than pulling in a regex engine. `Err` completes the sentence "`x` …".

/// A DNS-1123 label: 1–63 lower-case alphanumerics or `-`, alphanumeric at both ends.
pub fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters long".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain lower-case letters, digits and `-`".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (node names, label prefixes).
pub fn check_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err("must be 1 to 253 characters long".into());
    }
    for label in s.split('.') {
        check_dns_label(label).map_err(|e| format!("has a part `{label}` that {e}"))?;
    }
    Ok(())
}

/// A host name usable in DNS (case-insensitive DNS-1123 subdomain), e.g. an SSH address.
pub fn check_host_name(s: &str) -> Result<(), String> {
    check_dns_subdomain(&s.to_ascii_lowercase())
}

/// The name part of a qualified name or a label value: alphanumerics, `-`, `_`, `.`,
/// alphanumeric at both ends, at most 63 characters.
fn check_name_part(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be at most 63 characters long".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may only contain letters, digits, `-`, `_` and `.`".into());
    }
    let first_last_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_last_ok(s.bytes().next()) || !first_last_ok(s.bytes().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A qualified name (label key, taint key): `[prefix/]name` with a DNS-subdomain prefix.
pub fn check_qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(prefix) = prefix {
        check_dns_subdomain(prefix).map_err(|e| format!("has a prefix `{prefix}` that {e}"))?;
    }
    if name.is_empty() {
        return Err("has an empty name".into());
    }
    check_name_part(name)
}

/// A label value: empty, or like the name part of a qualified name.
pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    check_name_part(s)
}

/// A Kubernetes version `vMAJOR.MINOR.PATCH` with an optional `-pre.release` suffix.
pub fn check_version(s: &str) -> Result<(), String> {
    let bad = || "is not a version like v1.33.0".to_string();
    let rest = s.strip_prefix('v').ok_or_else(bad)?;
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    if let Some(pre) = pre {
        if pre.is_empty()
            || !pre
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            return Err(bad());
        }
    }
    Ok(())
}

/// An environment variable name: a letter or `_`, then letters, digits or `_`.
pub fn check_env_var_name(s: &str) -> Result<(), String> {
    let mut bytes = s.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphabetic() || b == b'_' => {}
        _ => return Err("must start with a letter or `_`".into()),
    }
    if bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err("may only contain letters, digits and `_`".into())
    }
}

/// A Linux network interface name: 1–15 bytes, no `/`, `:` or whitespace.
pub fn check_interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err("must be 1 to 15 characters long".into());
    }
    if s.bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
    {
        return Err("may not contain `/`, `:` or spaces".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names() {
        for ok in [
            "disk",
            "node-role.kubernetes.io/control-plane",
            "a_b.c",
            "A1",
        ] {
            check_qualified_name(ok).unwrap();
        }
        for bad in [
            "",
            "-disk",
            "disk-",
            "a b",
            "Example.com/x",
            "x/",
            "/x",
            "a/b/c",
        ] {
            assert!(check_qualified_name(bad).is_err(), "{bad}");
        }
        assert!(check_qualified_name(&"a".repeat(64)).is_err());
    }

    #[test]
    fn label_values() {
        check_label_value("").unwrap();
        check_label_value("ssd").unwrap();
        assert!(check_label_value("has space").is_err());
        assert!(check_label_value("_x").is_err());
    }

    #[test]
    fn dns_names() {
        check_dns_subdomain("node-1.example.com").unwrap();
        check_dns_subdomain("10.0.0.1").unwrap();
        assert!(check_dns_subdomain("Node1").is_err());
        assert!(check_dns_subdomain("a..b").is_err());
        check_host_name("Node1.Example.com").unwrap();
        assert!(check_host_name("under_score").is_err());
        check_dns_label("kinit").unwrap();
        assert!(check_dns_label("a.b").is_err());
    }

    #[test]
    fn versions() {
        for ok in ["v1.33.0", "v1.32.10", "v1.34.0-rc.1"] {
            check_version(ok).unwrap();
        }
        for bad in ["1.33.0", "v1.33", "v1.33.x", "latest", "v1.33.0-", "v1..0"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_vars_and_interfaces() {
        check_env_var_name("KINIT_SSH_PASSWORD").unwrap();
        assert!(check_env_var_name("1PASS").is_err());
        assert!(check_env_var_name("hunter2!").is_err());
        check_interface_name("eth0").unwrap();
        assert!(check_interface_name("a-very-long-interface").is_err());
        assert!(check_interface_name("eth0:1").is_err());
    }
}
