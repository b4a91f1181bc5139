//! Semantic checks: everything that is well-formed YAML of the right types but still wrong.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::model::{
    Datastore, Host, Inventory, Role, API_SERVER_PORT, API_VERSION, KEY_ALGORITHMS, KIND,
};
use crate::names;
use crate::source::{FieldPath, Issue};

/// Every semantic problem of `inv`, in the order of the file.
pub(crate) fn check(inv: &Inventory) -> Vec<Issue> {
    let mut out = Vec::new();
    check_header(inv, &mut out);
    check_hosts(inv, &mut out);
    check_networks(inv, &mut out);
    check_vip(inv, &mut out);
    check_datastore(inv, &mut out);
    check_misc(inv, &mut out);
    out
}

fn p(dotted: &str) -> FieldPath {
    FieldPath::parse(dotted)
}

fn host_path(i: usize) -> FieldPath {
    p("spec.hosts").index(i)
}

fn check_header(inv: &Inventory, out: &mut Vec<Issue>) {
    if inv.api_version != API_VERSION {
        out.push(Issue::new(
            p("apiVersion"),
            format!("`{}` is not supported", inv.api_version),
            format!("use `apiVersion: {API_VERSION}`"),
        ));
    }
    if inv.kind != KIND {
        out.push(Issue::new(
            p("kind"),
            format!("`{}` is not supported", inv.kind),
            format!("use `kind: {KIND}`"),
        ));
    }
    if let Err(e) = names::check_dns_subdomain(&inv.metadata.name) {
        out.push(Issue::new(
            p("metadata.name"),
            format!("`{}` {e}", inv.metadata.name),
            "use a lower-case name like `lab` or `prod-eu1`",
        ));
    }
}

fn check_hosts(inv: &Inventory, out: &mut Vec<Issue>) {
    let hosts = &inv.spec.hosts;
    if hosts.is_empty() {
        out.push(Issue::new(
            p("spec.hosts"),
            "no hosts are listed",
            "add at least one host with `address` and `roles: [control-plane]`",
        ));
        return;
    }
    let mut names_seen: HashMap<&str, usize> = HashMap::new();
    let mut addresses_seen: HashMap<String, (usize, &'static str)> = HashMap::new();
    for (i, host) in hosts.iter().enumerate() {
        let hp = host_path(i);
        check_host_identity(inv, i, host, &mut names_seen, &mut addresses_seen, out);
        let ssh = hp.key("ssh");
        if host.ssh.port == 0 {
            out.push(Issue::new(
                ssh.key("port"),
                "port 0 is not a usable SSH port",
                "use the port sshd listens on (usually 22)",
            ));
        }
        if host.ssh.user.trim().is_empty() {
            out.push(Issue::new(
                ssh.key("user"),
                "is empty",
                "name the login user, e.g. root",
            ));
        }
        if let Some(env) = &host.ssh.password_env {
            if let Err(e) = names::check_env_var_name(env) {
                out.push(Issue::new(
                    ssh.key("passwordEnv"),
                    format!("`{env}` {e}"),
                    "give the NAME of an environment variable that holds the password, never the password itself",
                ));
            }
        }
        if let Some(key) = &host.ssh.key_path {
            if key.as_os_str().is_empty() {
                out.push(Issue::new(
                    ssh.key("keyPath"),
                    "is empty",
                    "give the private key file or remove the line to use the SSH agent",
                ));
            }
        }
        check_roles(inv, i, host, out);
        for (key, value) in &host.labels {
            let lp = hp.key("labels").key(key);
            if let Err(e) = names::check_qualified_name(key) {
                out.push(Issue::new(
                    lp.clone(),
                    format!("label key `{key}` {e}"),
                    "use [prefix/]name, e.g. disk or example.com/disk",
                ));
            }
            if let Err(e) = names::check_label_value(value) {
                out.push(Issue::new(
                    lp,
                    format!("label value `{value}` {e}"),
                    "use at most 63 letters, digits, `-`, `_` or `.`",
                ));
            }
        }
        for (t, taint) in host.taints.iter().enumerate() {
            if let Err(e) = taint.check() {
                out.push(Issue::new(
                    hp.key("taints").index(t),
                    e,
                    "write key[=value]:Effect, e.g. dedicated=infra:NoSchedule",
                ));
            }
        }
    }
    if !hosts.iter().any(|h| h.has_role(Role::ControlPlane)) {
        out.push(Issue::new(
            p("spec.hosts"),
            "no host has the control-plane role",
            "add `control-plane` to the roles of one host (three for high availability)",
        ));
    }
}

fn check_host_identity<'a>(
    inv: &'a Inventory,
    i: usize,
    host: &'a Host,
    names_seen: &mut HashMap<&'a str, usize>,
    addresses_seen: &mut HashMap<String, (usize, &'static str)>,
    out: &mut Vec<Issue>,
) {
    let hp = host_path(i);
    if let Err(e) = names::check_dns_subdomain(&host.name) {
        out.push(Issue::new(
            hp.key("name"),
            format!("node name `{}` {e}", host.name),
            "use a lower-case host name like node1 or cp-1.example.com",
        ));
    }
    if let Some(first) = names_seen.insert(&host.name, i) {
        names_seen.insert(&host.name, first);
        out.push(Issue::new(
            hp.key("name"),
            format!(
                "host name `{}` is already used by spec.hosts[{first}]",
                host.name
            ),
            "give every host a unique name",
        ));
    }
    let address_ip = host.address.parse::<IpAddr>().ok();
    if address_ip.is_none() {
        if let Err(e) = names::check_host_name(&host.address) {
            out.push(Issue::new(
                hp.key("address"),
                format!(
                    "`{}` is neither an IP address nor a DNS name: it {e}",
                    host.address
                ),
                "write the IP address (or DNS name) kinit reaches the host on over SSH",
            ));
        } else if host.private_address.is_none() {
            out.push(Issue::new(
                hp.key("address"),
                format!("`{}` is a DNS name and the host has no privateAddress", host.address),
                "set privateAddress to the IP the node uses for cluster traffic, or write an IP address here",
            ));
        }
    }
    // Both the SSH address and the cluster address must be unique across hosts.
    let mut seen_here: Vec<String> = Vec::new();
    let candidates = [
        (
            address_ip
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| host.address.to_ascii_lowercase()),
            "address",
        ),
        (
            host.private_address
                .map(|ip| ip.to_string())
                .unwrap_or_default(),
            "privateAddress",
        ),
    ];
    for (addr, field) in candidates {
        if addr.is_empty() || seen_here.contains(&addr) {
            continue;
        }
        seen_here.push(addr.clone());
        match addresses_seen.get(&addr) {
            Some((first, first_field)) => out.push(Issue::new(
                hp.key(field),
                format!(
                    "address {addr} is already used by spec.hosts[{first}].{first_field} ({})",
                    inv.spec.hosts[*first].name
                ),
                "list each machine once, with all its roles",
            )),
            None => {
                addresses_seen.insert(addr, (i, field));
            }
        }
    }
}

fn check_roles(inv: &Inventory, i: usize, host: &Host, out: &mut Vec<Issue>) {
    let rp = host_path(i).key("roles");
    if host.roles.is_empty() {
        out.push(Issue::new(
            rp.clone(),
            format!("host {} has no roles", host.name),
            "give it at least one of control-plane, worker, etcd, lb",
        ));
    }
    for (r, role) in host.roles.iter().enumerate() {
        if host.roles[..r].contains(role) {
            out.push(Issue::new(
                rp.index(r),
                format!("role {role} is listed twice"),
                "list each role once",
            ));
        }
    }
    if host.has_role(Role::Lb) && inv.spec.cluster.vip.is_none() {
        out.push(Issue::new(
            rp.clone(),
            format!("host {} has the lb role but spec.cluster.vip is not set", host.name),
            "set spec.cluster.vip.address (the address the load balancers share) or remove the lb role",
        ));
    }
    if host.has_role(Role::Etcd) && inv.datastore() == Datastore::Embedded {
        out.push(Issue::new(
            rp,
            format!(
                "host {} has the etcd role but the cluster uses the embedded datastore",
                host.name
            ),
            "set spec.cluster.datastore: etcd, or remove the etcd role",
        ));
    }
}

/// Whether two ranges share any address.
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn check_networks(inv: &Inventory, out: &mut Vec<Issue>) {
    let c = &inv.spec.cluster;
    for (field, net) in [("podCIDR", &c.pod_cidr), ("serviceCIDR", &c.service_cidr)] {
        if net.trunc() != *net {
            out.push(Issue::new(
                p("spec.cluster").key(field),
                format!("{net} has host bits set"),
                format!("write the network address: {}", net.trunc()),
            ));
        }
    }
    let same_family = matches!(
        (c.pod_cidr, c.service_cidr),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    );
    if !same_family {
        out.push(Issue::new(
            p("spec.cluster.serviceCIDR"),
            format!(
                "{} and podCIDR {} are of different IP families",
                c.service_cidr, c.pod_cidr
            ),
            "use IPv4 (or IPv6) ranges for both; dual stack is not supported",
        ));
    }
    if overlaps(&c.pod_cidr, &c.service_cidr) {
        out.push(Issue::new(
            p("spec.cluster.podCIDR"),
            format!("{} overlaps serviceCIDR {}", c.pod_cidr, c.service_cidr),
            "choose disjoint ranges, e.g. podCIDR 10.244.0.0/16 and serviceCIDR 10.96.0.0/12",
        ));
    }
    // The 10th address is the cluster DNS service, so the range needs at least 16 addresses.
    let service_max = if c.service_cidr.addr().is_ipv4() {
        28
    } else {
        124
    };
    if c.service_cidr.prefix_len() > service_max {
        out.push(Issue::new(
            p("spec.cluster.serviceCIDR"),
            format!(
                "{} is too small for the cluster DNS address (the 10th)",
                c.service_cidr
            ),
            format!("use a prefix of /{service_max} or shorter, e.g. /12"),
        ));
    }
    let mask = c.node_cidr_mask_size;
    let pod_prefix = c.pod_cidr.prefix_len();
    let max_mask = c.pod_cidr.max_prefix_len().saturating_sub(2);
    let mask_path = p("spec.cluster.nodeCIDRMaskSize");
    if mask <= pod_prefix {
        out.push(Issue::new(
            mask_path,
            format!("/{mask} is not longer than podCIDR's /{pod_prefix}"),
            format!(
                "use a mask larger than {pod_prefix} so each node gets a slice (e.g. {})",
                (pod_prefix + 8).min(max_mask)
            ),
        ));
    } else if mask > max_mask {
        out.push(Issue::new(
            mask_path,
            format!("/{mask} leaves no room for pods on a node"),
            format!("use at most /{max_mask} (24 is usual for IPv4)"),
        ));
    } else {
        let bits = u32::from(mask - pod_prefix);
        let slices = if bits >= 32 { u64::MAX } else { 1u64 << bits };
        let hosts = inv.spec.hosts.len() as u64;
        if slices < hosts {
            out.push(Issue::new(
                mask_path,
                format!(
                    "podCIDR {} holds only {slices} node ranges of /{mask}, but there are {hosts} hosts",
                    c.pod_cidr
                ),
                "use a larger nodeCIDRMaskSize or a larger podCIDR",
            ));
        }
    }
    // Host addresses must not be taken for pods or services.
    for (i, host) in inv.spec.hosts.iter().enumerate() {
        let mut addrs: Vec<(&str, IpAddr)> = Vec::new();
        if let Ok(ip) = host.address.parse::<IpAddr>() {
            addrs.push(("address", ip));
        }
        if let Some(ip) = host.private_address {
            addrs.push(("privateAddress", ip));
        }
        for (field, ip) in addrs {
            for (range_name, range) in [("podCIDR", &c.pod_cidr), ("serviceCIDR", &c.service_cidr)]
            {
                if range.contains(&ip) {
                    out.push(Issue::new(
                        host_path(i).key(field),
                        format!("{ip} of host {} is inside {range_name} {range}", host.name),
                        format!("choose a {range_name} that does not cover the host network"),
                    ));
                }
            }
        }
    }
}

fn check_vip(inv: &Inventory, out: &mut Vec<Issue>) {
    let c = &inv.spec.cluster;
    let Some(vip) = &c.vip else { return };
    let vp = p("spec.cluster.vip");
    let max_prefix = if vip.address.is_ipv4() { 32 } else { 128 };
    let vip_net = match IpNet::new(vip.address, vip.prefix_length) {
        Ok(net) if vip.prefix_length > 0 => Some(net.trunc()),
        _ => {
            out.push(Issue::new(
                vp.key("prefixLength"),
                format!(
                    "/{} is not a valid prefix for {}",
                    vip.prefix_length, vip.address
                ),
                format!("use the prefix of the hosts' network (1–{max_prefix}, usually 24)"),
            ));
            None
        }
    };
    for (i, host) in inv.spec.hosts.iter().enumerate() {
        let same = host.address.parse::<IpAddr>().ok() == Some(vip.address)
            || host.private_address == Some(vip.address);
        if same {
            out.push(Issue::new(
                vp.key("address"),
                format!(
                    "{} is the address of host {} (spec.hosts[{i}])",
                    vip.address, host.name
                ),
                "pick an unused address in the hosts' subnet for the VIP",
            ));
        }
    }
    for (range_name, range) in [("podCIDR", &c.pod_cidr), ("serviceCIDR", &c.service_cidr)] {
        if range.contains(&vip.address) {
            out.push(Issue::new(
                vp.key("address"),
                format!("{} is inside {range_name} {range}", vip.address),
                "pick an unused address in the hosts' subnet for the VIP",
            ));
        }
    }
    if let Some(vip_net) = vip_net {
        let lb = inv.lb_hosts();
        let (holders, who) = if lb.is_empty() {
            (inv.control_planes(), "control plane")
        } else {
            (lb, "lb host")
        };
        for host in holders {
            if let Some(ip) = host.try_node_ip() {
                if !vip_net.contains(&ip) {
                    out.push(Issue::new(
                        vp.key("address"),
                        format!(
                            "{} is outside the subnet {vip_net} of {who} {} ({ip}); keepalived can only move the VIP within one subnet",
                            vip.address, host.name
                        ),
                        "pick a VIP in the holders' subnet, or set vip.prefixLength to that subnet's prefix",
                    ));
                }
            }
        }
    }
    if vip.port == 0 {
        out.push(Issue::new(
            vp.key("port"),
            "port 0 is not usable",
            "use 8443",
        ));
    } else if vip.port == API_SERVER_PORT {
        let holders_run_apiserver = if inv.lb_hosts().is_empty() {
            !inv.control_planes().is_empty()
        } else {
            inv.lb_hosts()
                .iter()
                .any(|h| h.has_role(Role::ControlPlane))
        };
        if holders_run_apiserver {
            out.push(Issue::new(
                vp.key("port"),
                format!("haproxy cannot listen on {API_SERVER_PORT}: the API server on the same host uses it"),
                "use port 8443 (the default)",
            ));
        }
    }
    if vip.virtual_router_id == 0 {
        out.push(Issue::new(
            vp.key("virtualRouterId"),
            "0 is not a valid VRRP router id",
            "use 1–255, unique on the network segment (default 51)",
        ));
    }
    if let Some(iface) = &vip.interface {
        if let Err(e) = names::check_interface_name(iface) {
            out.push(Issue::new(
                vp.key("interface"),
                format!("`{iface}` {e}"),
                "name the network interface that carries the hosts' subnet, e.g. eth0",
            ));
        }
    }
}

fn check_datastore(inv: &Inventory, out: &mut Vec<Issue>) {
    let cps = inv.control_planes();
    if inv.spec.cluster.datastore == Some(Datastore::Embedded) && cps.len() > 1 {
        out.push(Issue::new(
            p("spec.cluster.datastore"),
            format!(
                "the embedded datastore serves one control plane, but {} hosts have the control-plane role",
                cps.len()
            ),
            "set datastore: etcd (or remove the line: etcd is the default with several control planes)",
        ));
    }
    if inv.datastore() == Datastore::Etcd {
        let members = inv.etcd_members();
        if members.len() > 1 && members.len() % 2 == 0 {
            let names: Vec<&str> = members.iter().map(|h| h.name.as_str()).collect();
            out.push(Issue::new(
                p("spec.hosts"),
                format!(
                    "{} etcd members ({}): an even count survives no more failures than one member fewer",
                    members.len(),
                    names.join(", ")
                ),
                "use an odd number of etcd members (3 or 5)",
            ));
        }
    }
}

fn check_misc(inv: &Inventory, out: &mut Vec<Issue>) {
    let c = &inv.spec.cluster;
    if let Err(e) = names::check_version(&c.version) {
        out.push(Issue::new(
            p("spec.cluster.version"),
            format!("`{}` {e}", c.version),
            "write vMAJOR.MINOR.PATCH, e.g. v1.33.0",
        ));
    }
    if let Err(e) = names::check_dns_label(&c.cluster_name) {
        out.push(Issue::new(
            p("spec.cluster.clusterName"),
            format!("`{}` {e}", c.cluster_name),
            "use a short lower-case name like kinit",
        ));
    }
    if let Err(e) = names::check_dns_subdomain(&c.dns_domain) {
        out.push(Issue::new(
            p("spec.cluster.dnsDomain"),
            format!("`{}` {e}", c.dns_domain),
            "use a DNS domain like cluster.local",
        ));
    }
    if let Some(ep) = &c.api_endpoint {
        let ep_path = p("spec.cluster.apiEndpoint");
        if ep.host.parse::<IpAddr>().is_err() {
            if let Err(e) = names::check_host_name(&ep.host) {
                out.push(Issue::new(
                    ep_path.key("host"),
                    format!(
                        "`{}` is neither an IP address nor a DNS name: it {e}",
                        ep.host
                    ),
                    "write the VIP, a load balancer's name or a control plane's address",
                ));
            }
        }
        if ep.port == 0 {
            out.push(Issue::new(
                ep_path.key("port"),
                "port 0 is not usable",
                "use 6443",
            ));
        }
    }
    for (i, upstream) in c.dns.upstreams.iter().enumerate() {
        if crate::model::DnsConfig::parse_upstream(upstream).is_none() {
            out.push(Issue::new(
                p("spec.cluster.dns.upstreams").index(i),
                format!("`{upstream}` is not an IP address or IP:port"),
                "write a DNS server's address, e.g. 10.0.0.2 or 10.0.0.2:53 (names cannot be used: they would need DNS)",
            ));
        }
    }
    let pki = &c.pki;
    let pp = p("spec.cluster.pki");
    if pki.ca_validity_days == 0 {
        out.push(Issue::new(
            pp.key("caValidityDays"),
            "must be at least 1",
            "use 3650 (10 years)",
        ));
    }
    if pki.cert_validity_days == 0 {
        out.push(Issue::new(
            pp.key("certValidityDays"),
            "must be at least 1",
            "use 365",
        ));
    } else if pki.cert_validity_days > pki.ca_validity_days && pki.ca_validity_days > 0 {
        out.push(Issue::new(
            pp.key("certValidityDays"),
            format!(
                "{} days outlives the CA ({} days)",
                pki.cert_validity_days, pki.ca_validity_days
            ),
            "make certValidityDays at most caValidityDays",
        ));
    }
    if !KEY_ALGORITHMS.contains(&pki.key_algorithm.as_str()) {
        out.push(Issue::new(
            pp.key("keyAlgorithm"),
            format!("`{}` is not supported", pki.key_algorithm),
            format!("use one of: {}", KEY_ALGORITHMS.join(", ")),
        ));
    }
}
