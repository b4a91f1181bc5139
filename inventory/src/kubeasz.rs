//! Import of a kubeasz `hosts` file (`/etc/kubeasz/clusters/<name>/hosts`) into an inventory.
//!
//! The file is an Ansible INI inventory. It is parsed by hand: Ansible's INI dialect (host lines
//! with `key=value` variables, quoted values, `[group:vars]` sections) is not standard INI, and
//! INI crates reject or mangle host lines, so a small line parser is simpler and gives exact
//! line numbers.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{InventoryError, Problem};
use crate::model::{
    ApiEndpoint, ClusterConfig, CniMode, Datastore, Host, Inventory, InventorySpec, Metadata, Role,
    SshConfig, Vip, API_SERVER_PORT, API_VERSION, KIND,
};
use crate::names;

/// The result of an import: the inventory and what was not carried over.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Import {
    /// The converted (and validated) inventory.
    pub inventory: Inventory,
    /// Settings of the kubeasz file that kinit ignores or interprets differently, one sentence each.
    pub warnings: Vec<String>,
}

/// Converts the kubeasz hosts file `text`; `source_name` names it in messages (and, when it is a
/// path like `…/clusters/<name>/hosts`, gives the inventory its name).
pub fn import(text: &str, source_name: &str) -> Result<Import, InventoryError> {
    let parsed = parse(text, source_name)?;
    Converter::new(source_name, &parsed).convert()
}

/// One host line of a group.
#[derive(Debug, Clone)]
struct HostLine {
    line: usize,
    pattern: String,
    vars: Vec<(String, String)>,
}

/// A `key=value` of a `[…:vars]` section.
#[derive(Debug, Clone)]
struct VarLine {
    line: usize,
    key: String,
    value: String,
}

#[derive(Debug, Default)]
struct Parsed {
    /// Host groups in file order.
    groups: Vec<(String, usize, Vec<HostLine>)>,
    /// `[group:vars]` sections (`all` for `[all:vars]`).
    group_vars: BTreeMap<String, Vec<VarLine>>,
    /// `[group:children]` sections, kept only to warn about them.
    children: Vec<(String, usize)>,
}

enum Section {
    Hosts(usize),
    Vars(String),
    Children,
}

fn line_error(source_name: &str, line: usize, message: String, hint: &str) -> InventoryError {
    InventoryError::single(source_name, "", Some(line), message, hint)
}

/// Splits a host line into whitespace-separated tokens, honouring '…' and "…" quotes and
/// dropping a `#` comment that starts a token.
fn tokenize(s: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                in_token = true;
                let mut closed = false;
                for q in chars.by_ref() {
                    if q == c {
                        closed = true;
                        break;
                    }
                    current.push(q);
                }
                if !closed {
                    return Err(format!("unterminated {c} quote"));
                }
            }
            '#' if !in_token => break,
            c if c.is_whitespace() => {
                if in_token {
                    tokens.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            c => {
                in_token = true;
                current.push(c);
            }
        }
    }
    if in_token {
        tokens.push(current);
    }
    Ok(tokens)
}

/// A var value: trailing ` #comment` removed, surrounding quotes stripped.
fn unquote_value(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(String::new());
    }
    let tokens = tokenize(raw)?;
    if raw.starts_with(['\'', '"']) && tokens.len() == 1 {
        return Ok(tokens.into_iter().next().unwrap_or_default());
    }
    // Unquoted: keep inner spaces, drop a trailing comment.
    let without_comment = match raw.find(" #") {
        Some(i) => &raw[..i],
        None => raw,
    };
    Ok(without_comment.trim().to_string())
}

fn parse(text: &str, source_name: &str) -> Result<Parsed, InventoryError> {
    let mut parsed = Parsed::default();
    let mut section: Option<Section> = None;
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            let header = rest.split(" #").next().unwrap_or(rest).trim_end();
            let Some(name) = header.strip_suffix(']') else {
                return Err(line_error(
                    source_name,
                    line,
                    format!("group header `{trimmed}` has no closing `]`"),
                    "write group headers as [name], e.g. [kube_master]",
                ));
            };
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(line_error(
                    source_name,
                    line,
                    format!("`{trimmed}` is not a valid group header"),
                    "write group headers as [name], [name:vars] or [name:children]",
                ));
            }
            section = Some(match name.split_once(':') {
                Some((group, "vars")) => {
                    parsed.group_vars.entry(group.to_string()).or_default();
                    Section::Vars(group.to_string())
                }
                Some((group, "children")) => {
                    parsed.children.push((group.to_string(), line));
                    Section::Children
                }
                Some((_, other)) => {
                    return Err(line_error(
                        source_name,
                        line,
                        format!("unknown section kind `:{other}` in `{trimmed}`"),
                        "use [name], [name:vars] or [name:children]",
                    ))
                }
                None => {
                    parsed.groups.push((name.to_string(), line, Vec::new()));
                    Section::Hosts(parsed.groups.len() - 1)
                }
            });
            continue;
        }
        match &section {
            None => {
                return Err(line_error(
                    source_name,
                    line,
                    format!("`{trimmed}` comes before any [group] header"),
                    "put host lines under a group such as [kube_master]",
                ))
            }
            Some(Section::Children) => {}
            Some(Section::Vars(group)) => {
                let Some((key, value)) = trimmed.split_once('=') else {
                    return Err(line_error(
                        source_name,
                        line,
                        format!("`{trimmed}` in [{group}:vars] is not `key=value`"),
                        "write variables as NAME=\"value\"",
                    ));
                };
                let key = key.trim();
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(line_error(
                        source_name,
                        line,
                        format!("`{trimmed}` has an invalid variable name"),
                        "write variables as NAME=\"value\"",
                    ));
                }
                let value = unquote_value(value).map_err(|e| {
                    line_error(
                        source_name,
                        line,
                        format!("{e} in `{trimmed}`"),
                        "close the quote",
                    )
                })?;
                parsed
                    .group_vars
                    .entry(group.clone())
                    .or_default()
                    .push(VarLine {
                        line,
                        key: key.to_string(),
                        value,
                    });
            }
            Some(Section::Hosts(g)) => {
                let tokens = tokenize(trimmed).map_err(|e| {
                    line_error(
                        source_name,
                        line,
                        format!("{e} in `{trimmed}`"),
                        "close the quote",
                    )
                })?;
                let Some((pattern, rest)) = tokens.split_first() else {
                    continue;
                };
                if pattern.contains('[') || pattern.contains('=') {
                    return Err(line_error(
                        source_name,
                        line,
                        format!("`{pattern}` is not a host address"),
                        "write one host per line (ranges like 10.0.0.[1:3] are not supported): 192.168.1.1 k8s_nodename='node1'",
                    ));
                }
                let mut vars = Vec::new();
                for token in rest {
                    let Some((k, v)) = token.split_once('=') else {
                        return Err(line_error(
                            source_name,
                            line,
                            format!("`{token}` after host {pattern} is not `key=value`"),
                            "write host variables as key=value, e.g. k8s_nodename='node1'",
                        ));
                    };
                    if k.is_empty() {
                        return Err(line_error(
                            source_name,
                            line,
                            format!("`{token}` has no variable name"),
                            "write host variables as key=value",
                        ));
                    }
                    vars.push((k.to_string(), v.to_string()));
                }
                parsed.groups[*g].2.push(HostLine {
                    line,
                    pattern: pattern.clone(),
                    vars,
                });
            }
        }
    }
    Ok(parsed)
}

/// One machine gathered from all groups it appears in.
#[derive(Debug)]
struct Machine {
    pattern: String,
    first_line: usize,
    roles: Vec<Role>,
    groups: Vec<String>,
    /// Host variables with the line they were set on.
    vars: BTreeMap<String, (String, usize)>,
}

struct Converter<'a> {
    source_name: &'a str,
    parsed: &'a Parsed,
    warnings: Vec<String>,
}

/// Host variables kinit understands.
const HOST_VARS: [&str; 9] = [
    "k8s_nodename",
    "ansible_host",
    "ansible_ssh_host",
    "ansible_user",
    "ansible_ssh_user",
    "ansible_port",
    "ansible_ssh_port",
    "ansible_ssh_private_key_file",
    "ansible_become",
];

/// Ex-lb variables read from `[ex_lb]` host lines.
const LB_VARS: [&str; 3] = ["LB_ROLE", "EX_APISERVER_VIP", "EX_APISERVER_PORT"];

impl<'a> Converter<'a> {
    fn new(source_name: &'a str, parsed: &'a Parsed) -> Self {
        Converter {
            source_name,
            parsed,
            warnings: Vec::new(),
        }
    }

    fn err(&self, line: usize, message: String, hint: &str) -> InventoryError {
        line_error(self.source_name, line, message, hint)
    }

    fn warn(&mut self, line: usize, message: String) {
        self.warnings
            .push(format!("{}:{line}: {message}", self.source_name));
    }

    /// Gathers the machines from the host groups, merging roles of repeated addresses.
    fn machines(&mut self) -> Result<Vec<Machine>, InventoryError> {
        let mut machines: Vec<Machine> = Vec::new();
        for (group, group_line, lines) in &self.parsed.groups {
            let role = match group.as_str() {
                "kube_master" => Some(Role::ControlPlane),
                "kube_node" => Some(Role::Worker),
                "etcd" => Some(Role::Etcd),
                "ex_lb" => Some(Role::Lb),
                "chrony" => {
                    if !lines.is_empty() {
                        self.warn(
                            *group_line,
                            "[chrony] ignored: kinit does not install a time server; keep host clocks in sync with the distribution's NTP client".into(),
                        );
                    }
                    continue;
                }
                other => {
                    if !lines.is_empty() {
                        self.warn(
                            *group_line,
                            format!("[{other}] ignored: kinit does not manage this group"),
                        );
                    }
                    continue;
                }
            };
            for hl in lines {
                let idx = match machines.iter().position(|m| m.pattern == hl.pattern) {
                    Some(i) => i,
                    None => {
                        machines.push(Machine {
                            pattern: hl.pattern.clone(),
                            first_line: hl.line,
                            roles: Vec::new(),
                            groups: Vec::new(),
                            vars: BTreeMap::new(),
                        });
                        machines.len() - 1
                    }
                };
                let m = &mut machines[idx];
                if let Some(role) = role {
                    if !m.roles.contains(&role) {
                        m.roles.push(role);
                    }
                }
                m.groups.push(group.clone());
                for (k, v) in &hl.vars {
                    match m.vars.get(k) {
                        Some((old, old_line)) if old != v => {
                            return Err(self.err(
                                hl.line,
                                format!(
                                    "host {} sets {k}={v} here but {k}={old} on line {old_line}",
                                    hl.pattern
                                ),
                                "give the host the same value in every group",
                            ))
                        }
                        Some(_) => {}
                        None => {
                            m.vars.insert(k.clone(), (v.clone(), hl.line));
                        }
                    }
                }
            }
        }
        // Roles in a fixed order, whatever the group order in the file.
        for m in &mut machines {
            m.roles.sort();
        }
        Ok(machines)
    }

    /// A host variable: the host's own, else its groups' `[g:vars]`, else `[all:vars]`.
    fn host_var(&self, m: &Machine, key: &str) -> Option<(String, usize)> {
        if let Some(v) = m.vars.get(key) {
            return Some(v.clone());
        }
        let lookup = |group: &str| {
            self.parsed.group_vars.get(group).and_then(|vars| {
                vars.iter()
                    .rev()
                    .find(|v| v.key == key)
                    .map(|v| (v.value.clone(), v.line))
            })
        };
        m.groups
            .iter()
            .find_map(|g| lookup(g))
            .or_else(|| lookup("all"))
    }

    fn host(&mut self, m: &Machine) -> Result<Host, InventoryError> {
        let line = m.first_line;
        let address = self
            .host_var(m, "ansible_host")
            .or_else(|| self.host_var(m, "ansible_ssh_host"))
            .map(|(v, _)| v)
            .unwrap_or_else(|| m.pattern.clone());
        if address.parse::<IpAddr>().is_err() && names::check_host_name(&address).is_err() {
            return Err(self.err(
                line,
                format!("`{address}` is neither an IP address nor a host name"),
                "write the host's IP address at the start of the line",
            ));
        }
        let name = match self.host_var(m, "k8s_nodename") {
            Some((n, _)) if !n.is_empty() => n,
            // kubeasz names nodes after their address when k8s_nodename is empty; so does kinit.
            _ if address != m.pattern => m.pattern.clone(),
            _ => address.clone(),
        };
        let user = self
            .host_var(m, "ansible_user")
            .or_else(|| self.host_var(m, "ansible_ssh_user"))
            .map(|(v, _)| v)
            .unwrap_or_else(|| "root".to_string());
        let port = match self
            .host_var(m, "ansible_port")
            .or_else(|| self.host_var(m, "ansible_ssh_port"))
        {
            Some((v, l)) => v.parse::<u16>().map_err(|_| {
                self.err(
                    l,
                    format!(
                        "SSH port `{v}` of host {} is not a number from 1 to 65535",
                        m.pattern
                    ),
                    "write the port sshd listens on, e.g. ansible_ssh_port=22",
                )
            })?,
            None => 22,
        };
        let become_ = match self.host_var(m, "ansible_become") {
            Some((v, l)) => Some(parse_bool(&v).ok_or_else(|| {
                self.err(
                    l,
                    format!("ansible_become=`{v}` is not true or false"),
                    "write ansible_become=true or false",
                )
            })?),
            None => None,
        };
        let key_path = self
            .host_var(m, "ansible_ssh_private_key_file")
            .map(|(v, _)| PathBuf::from(v));
        for secret in [
            "ansible_ssh_pass",
            "ansible_password",
            "ansible_become_pass",
        ] {
            if let Some((_, l)) = self.host_var(m, secret) {
                self.warn(
                    l,
                    format!(
                        "{secret} of host {} not imported: kinit never stores passwords in the inventory; export it in an environment variable and set ssh.passwordEnv to its name",
                        m.pattern
                    ),
                );
            }
        }
        for (key, (_, l)) in &m.vars {
            let known = HOST_VARS.contains(&key.as_str())
                || [
                    "ansible_ssh_pass",
                    "ansible_password",
                    "ansible_become_pass",
                ]
                .contains(&key.as_str())
                || (LB_VARS.contains(&key.as_str()) && m.roles.contains(&Role::Lb));
            if !known {
                let why = if key == "NODE_NAME" {
                    "kinit names etcd members after their hosts"
                } else if key.starts_with("ansible_") {
                    "kinit does not use this Ansible setting"
                } else {
                    "kinit does not use this variable"
                };
                self.warn(*l, format!("{key} of host {} ignored: {why}", m.pattern));
            }
        }
        let ssh = SshConfig {
            sudo: become_.unwrap_or(user != "root"),
            user,
            port,
            key_path,
            password_env: None,
        };
        let private_address = if address.parse::<IpAddr>().is_err() {
            m.pattern.parse::<IpAddr>().ok()
        } else {
            None
        };
        Ok(Host {
            name,
            address,
            ssh,
            roles: m.roles.clone(),
            labels: BTreeMap::new(),
            taints: Vec::new(),
            private_address,
        })
    }

    /// VIP and port from the `[ex_lb]` host lines.
    fn vip(&mut self, machines: &[Machine]) -> Result<Option<Vip>, InventoryError> {
        let mut vip: Option<(IpAddr, usize)> = None;
        let mut port: Option<(u16, usize)> = None;
        let mut master: Option<(String, usize)> = None;
        let lb: Vec<&Machine> = machines
            .iter()
            .filter(|m| m.roles.contains(&Role::Lb))
            .collect();
        for m in &lb {
            if let Some((v, l)) = m.vars.get("EX_APISERVER_VIP") {
                let ip = v.parse::<IpAddr>().map_err(|_| {
                    self.err(
                        *l,
                        format!("EX_APISERVER_VIP `{v}` is not an IP address"),
                        "write the virtual IP, e.g. EX_APISERVER_VIP=192.168.1.250",
                    )
                })?;
                match vip {
                    Some((other, ol)) if other != ip => {
                        return Err(self.err(
                            *l,
                            format!("EX_APISERVER_VIP {ip} differs from {other} on line {ol}"),
                            "use the same EX_APISERVER_VIP on every [ex_lb] host",
                        ))
                    }
                    _ => vip = Some((ip, *l)),
                }
            }
            if let Some((v, l)) = m.vars.get("EX_APISERVER_PORT") {
                let p = v.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    self.err(
                        *l,
                        format!("EX_APISERVER_PORT `{v}` is not a port number"),
                        "write a port from 1 to 65535, e.g. EX_APISERVER_PORT=8443",
                    )
                })?;
                match port {
                    Some((other, ol)) if other != p => {
                        return Err(self.err(
                            *l,
                            format!("EX_APISERVER_PORT {p} differs from {other} on line {ol}"),
                            "use the same EX_APISERVER_PORT on every [ex_lb] host",
                        ))
                    }
                    _ => port = Some((p, *l)),
                }
            }
            if let Some((v, l)) = m.vars.get("LB_ROLE") {
                match v.as_str() {
                    "master" => {
                        if let Some((other, _)) = &master {
                            return Err(self.err(
                                *l,
                                format!("both {other} and {} have LB_ROLE=master", m.pattern),
                                "give exactly one [ex_lb] host LB_ROLE=master",
                            ));
                        }
                        master = Some((m.pattern.clone(), *l));
                    }
                    "backup" => {}
                    other => return Err(self.err(
                        *l,
                        format!("LB_ROLE `{other}` is neither master nor backup"),
                        "write LB_ROLE=master on one [ex_lb] host and LB_ROLE=backup on the others",
                    )),
                }
            }
        }
        let Some(first) = lb.first() else {
            return Ok(None);
        };
        let Some((address, _)) = vip else {
            return Err(self.err(
                first.first_line,
                "[ex_lb] hosts are listed but none sets EX_APISERVER_VIP".into(),
                "add EX_APISERVER_VIP=<virtual IP> to the [ex_lb] host lines",
            ));
        };
        if let Some((master, l)) = master {
            if master != first.pattern {
                self.warn(
                    l,
                    format!(
                        "LB_ROLE=master of {master} not kept: kinit makes the first lb host ({}) the VRRP master; list {master} first to keep it",
                        first.pattern
                    ),
                );
            }
        }
        let mut vip = Vip::new(address);
        if let Some((p, _)) = port {
            vip.port = p;
        }
        Ok(Some(vip))
    }

    /// Applies `[all:vars]` to the cluster settings.
    fn cluster_vars(&mut self, cluster: &mut ClusterConfig) -> Result<(), InventoryError> {
        let Some(vars) = self.parsed.group_vars.get("all") else {
            return Ok(());
        };
        for v in vars {
            let (key, value, line) = (v.key.as_str(), v.value.as_str(), v.line);
            match key {
                "SERVICE_CIDR" | "CLUSTER_CIDR" => {
                    let net = value.parse().map_err(|_| {
                        self.err(
                            line,
                            format!("{key} `{value}` is not a CIDR range"),
                            "write address/prefix, e.g. 10.68.0.0/16",
                        )
                    })?;
                    if key == "SERVICE_CIDR" {
                        cluster.service_cidr = net;
                    } else {
                        cluster.pod_cidr = net;
                    }
                }
                "CLUSTER_DNS_DOMAIN" => {
                    cluster.dns_domain = value.trim_end_matches('.').to_string();
                }
                "SECURE_PORT" => {
                    if value != API_SERVER_PORT.to_string() {
                        self.warn(
                            line,
                            format!("SECURE_PORT={value} ignored: kinit's API server listens on {API_SERVER_PORT}"),
                        );
                    }
                }
                "CONTAINER_RUNTIME" => {
                    if value != "containerd" {
                        self.warn(
                            line,
                            format!("CONTAINER_RUNTIME={value} ignored: kinit runs containers with containerd"),
                        );
                    }
                }
                "CLUSTER_NETWORK" => {
                    let mode = if value == "flannel" {
                        CniMode::Vxlan
                    } else {
                        CniMode::HostGw
                    };
                    cluster.cni.mode = mode;
                    let mode_name = mode.as_str();
                    self.warn(
                        line,
                        format!(
                            "CLUSTER_NETWORK={value} replaced: kinit runs its own CNI, imported as cni.mode {mode_name} (use vxlan when hosts are on different L2 networks)"
                        ),
                    );
                }
                "PROXY_MODE" => self.warn(
                    line,
                    format!("PROXY_MODE={value} ignored: kinit's service proxy uses nftables"),
                ),
                "NODE_PORT_RANGE" => {
                    if value != "30000-32767" {
                        self.warn(
                            line,
                            format!("NODE_PORT_RANGE={value} ignored: kinit uses 30000-32767"),
                        );
                    }
                }
                "bin_dir" | "ca_dir" | "base_dir" | "cluster_dir" => self.warn(
                    line,
                    format!(
                        "{key}={value} ignored: kinit uses the kubeadm layout (/etc/kubernetes/pki, /etc/kubernetes/manifests, /var/lib/kinit)"
                    ),
                ),
                k if HOST_VARS.contains(&k) => {} // applied per host
                "ansible_ssh_pass" | "ansible_password" | "ansible_become_pass" => {} // warned per host
                "ansible_python_interpreter" => self.warn(
                    line,
                    "ansible_python_interpreter ignored: kinit needs no Python on hosts".into(),
                ),
                other => self.warn(line, format!("{other}={value} ignored: kinit does not use this variable")),
            }
        }
        Ok(())
    }

    fn convert(mut self) -> Result<Import, InventoryError> {
        for (group, line) in &self.parsed.children {
            let message =
                format!("[{group}:children] ignored: list hosts directly under kubeasz's groups");
            self.warn(*line, message);
        }
        for (group, vars) in &self.parsed.group_vars {
            let known = ["all", "etcd", "kube_master", "kube_node", "ex_lb"];
            if !known.contains(&group.as_str()) {
                if let Some(v) = vars.first() {
                    let message =
                        format!("[{group}:vars] ignored: kinit does not manage group {group}");
                    self.warn(v.line, message);
                }
            }
        }
        let machines = self.machines()?;
        if machines.is_empty() {
            return Err(InventoryError::single(
                self.source_name,
                "",
                None,
                "no hosts in [kube_master], [kube_node], [etcd] or [ex_lb]",
                "is this a kubeasz hosts file? List the machines under those groups",
            ));
        }
        let mut hosts = Vec::new();
        for m in &machines {
            hosts.push(self.host(m)?);
        }
        let mut cluster = ClusterConfig::default();
        self.cluster_vars(&mut cluster)?;
        cluster.vip = self.vip(&machines)?;
        if machines.iter().any(|m| m.roles.contains(&Role::Etcd)) {
            cluster.datastore = Some(Datastore::Etcd);
        }
        let control_planes = hosts
            .iter()
            .filter(|h| h.has_role(Role::ControlPlane))
            .count();
        if control_planes > 1 && cluster.vip.is_none() {
            let line = machines
                .iter()
                .find(|m| m.roles.contains(&Role::ControlPlane))
                .map_or(1, |m| m.first_line);
            self.warn(
                line,
                "several control planes and no [ex_lb] VIP: kubeasz balances the API through a local proxy on each node, kinit points clients at the first control plane; add spec.cluster.vip for high availability".into(),
            );
            if let Some(first) = hosts.iter().find(|h| h.has_role(Role::ControlPlane)) {
                if let Some(ip) = first.try_node_ip() {
                    cluster.api_endpoint = Some(ApiEndpoint {
                        host: ip.to_string(),
                        port: API_SERVER_PORT,
                    });
                }
            }
        }
        let inventory = Inventory {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            metadata: Metadata {
                name: cluster_name_from_path(self.source_name).unwrap_or_else(|| "kinit".into()),
            },
            spec: InventorySpec { hosts, cluster },
        };
        if let Err(e) = inventory.validate() {
            return Err(InventoryError {
                source_name: self.source_name.to_string(),
                problems: e
                    .problems
                    .into_iter()
                    .map(|p| locate(p, &machines))
                    .collect(),
            });
        }
        Ok(Import {
            inventory,
            warnings: self.warnings,
        })
    }
}

/// Points a problem of the converted inventory at the host's first line in the kubeasz file.
fn locate(mut problem: Problem, machines: &[Machine]) -> Problem {
    let index = problem
        .path
        .strip_prefix("spec.hosts[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(m) = index.and_then(|i| machines.get(i)) {
        problem.line = Some(m.first_line);
        problem.message = format!("{} (host {})", problem.message, m.pattern);
    }
    problem.message = format!("in the converted inventory: {}", problem.message);
    problem
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// `<name>` of a path like `/etc/kubeasz/clusters/<name>/hosts`, when it is a valid name.
fn cluster_name_from_path(source_name: &str) -> Option<String> {
    let path = Path::new(source_name);
    let dir = path.parent()?;
    let clusters = dir.parent()?;
    if clusters.file_name()? != "clusters" {
        return None;
    }
    let name = dir.file_name()?.to_str()?.to_ascii_lowercase();
    names::check_dns_subdomain(&name).ok().map(|_| name)
}

#[cfg(test)]
mod tests;
