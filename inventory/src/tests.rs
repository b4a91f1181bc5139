//! Loading and validation tests: one per kind of mistake, each checking path and line.

use super::*;

/// A valid inventory; line numbers are noted so tests can check where problems point.
const BASE: &str = "\
apiVersion: kinit.dev/v1alpha1
kind: Cluster
metadata:
  name: test
spec:
  hosts:
    - name: cp1
      address: 10.0.0.11
      roles: [control-plane]
    - name: w1
      address: 10.0.0.21
      ssh: { user: ubuntu, port: 22 }
      roles: [worker]
      labels: { disk: ssd }
      taints: [\"dedicated=infra:NoSchedule\"]
  cluster:
    version: v1.33.0
    podCIDR: 10.244.0.0/16
    serviceCIDR: 10.96.0.0/12
";
// line 7: cp1 name, 8: cp1 address, 9: cp1 roles, 10: w1 name, 11: w1 address, 12: w1 ssh,
// 13: w1 roles, 14: labels, 15: taints, 16: cluster, 17: version, 18: podCIDR, 19: serviceCIDR

/// `BASE` with `from` replaced by `to` (which must occur).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

/// The problems of `text`, which must be rejected.
fn problems(text: &str) -> Vec<Problem> {
    match Inventory::from_str(text, "inventory.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            assert_eq!(e.source_name, "inventory.yaml");
            assert!(!e.problems.is_empty());
            e.problems
        }
    }
}

/// The single problem at `path`; fails when absent.
fn at<'a>(problems: &'a [Problem], path: &str) -> &'a Problem {
    problems
        .iter()
        .find(|p| p.path == path)
        .unwrap_or_else(|| panic!("no problem at {path}: {problems:#?}"))
}

#[test]
fn base_is_valid() {
    let inv = Inventory::from_str(BASE, "inventory.yaml").unwrap();
    assert_eq!(inv.spec.hosts.len(), 2);
    assert!(inv.spec.hosts[1].ssh.sudo);
    assert_eq!(inv.spec.hosts[1].taints[0].effect, TaintEffect::NoSchedule);
}

#[test]
fn yaml_syntax_error_names_the_line() {
    let p = problems(&edit("roles: [worker]", "roles: [worker"));
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("YAML syntax error"), "{p:?}");
    let line = p[0].line.unwrap();
    assert!((13..=15).contains(&line), "line {line}");
}

#[test]
fn misspelt_field_is_reported_with_a_suggestion() {
    let p = problems(&edit("      address: 10.0.0.21", "      adress: 10.0.0.21"));
    let problem = at(&p, "spec.hosts[1].adress");
    assert_eq!(problem.line, Some(11));
    assert!(problem.message.contains("unknown field `adress`"));
    assert!(
        problem.hint.contains("did you mean `address`"),
        "{}",
        problem.hint
    );
}

#[test]
fn wrong_case_field_suggests_the_right_spelling() {
    let p = problems(&edit("podCIDR:", "podCidr:"));
    assert!(at(&p, "spec.cluster.podCidr").hint.contains("`podCIDR`"));
}

#[test]
fn every_structural_problem_is_reported_at_once() {
    let text = edit("roles: [control-plane]", "roles: [master]")
        .replacen("podCIDR: 10.244.0.0/16", "podCIDR: 10.244.0.0/33", 1)
        .replacen("      ssh: {", "      shh: {", 1);
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(at(&p, "spec.hosts[0].roles[0]").line, Some(9));
    assert_eq!(at(&p, "spec.hosts[1].shh").line, Some(12));
    assert_eq!(at(&p, "spec.cluster.podCIDR").line, Some(18));
    // Sorted by line.
    let lines: Vec<_> = p.iter().map(|p| p.line.unwrap()).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn wrong_api_version_and_kind() {
    let text = edit("kinit.dev/v1alpha1", "kinit.dev/v1").replacen("kind: Cluster", "kind: Pod", 1);
    let p = problems(&text);
    assert_eq!(at(&p, "apiVersion").line, Some(1));
    assert_eq!(at(&p, "kind").line, Some(2));
}

#[test]
fn no_hosts() {
    let text = "apiVersion: kinit.dev/v1alpha1\nkind: Cluster\nspec:\n  hosts: []\n";
    let p = problems(text);
    let problem = at(&p, "spec.hosts");
    assert_eq!(problem.line, Some(4));
    assert!(problem.message.contains("no hosts"));
}

#[test]
fn duplicate_host_name() {
    let p = problems(&edit("name: w1", "name: cp1"));
    let problem = at(&p, "spec.hosts[1].name");
    assert_eq!(problem.line, Some(10));
    assert!(problem.message.contains("already used by spec.hosts[0]"));
}

#[test]
fn duplicate_address() {
    let p = problems(&edit("address: 10.0.0.21", "address: 10.0.0.11"));
    let problem = at(&p, "spec.hosts[1].address");
    assert_eq!(problem.line, Some(11));
    assert!(problem.message.contains("cp1"));
}

#[test]
fn no_control_plane() {
    let p = problems(&edit("roles: [control-plane]", "roles: [worker]"));
    assert!(at(&p, "spec.hosts").message.contains("control-plane"));
}

#[test]
fn invalid_role() {
    let p = problems(&edit("roles: [worker]", "roles: [worker, master]"));
    let problem = at(&p, "spec.hosts[1].roles[1]");
    assert_eq!(problem.line, Some(13));
    assert!(problem.message.contains("master"));
}

#[test]
fn invalid_ip_and_cidr() {
    let text = edit("serviceCIDR: 10.96.0.0/12", "serviceCIDR: 10.96.0/12").replacen(
        "      roles: [control-plane]",
        "      roles: [control-plane]\n      privateAddress: 10.0.0.300",
        1,
    );
    let p = problems(&text);
    assert_eq!(at(&p, "spec.hosts[0].privateAddress").line, Some(10));
    assert!(at(&p, "spec.cluster.serviceCIDR")
        .message
        .contains("not a CIDR"));
}

#[test]
fn address_that_is_neither_ip_nor_name() {
    let p = problems(&edit("address: 10.0.0.21", "address: 10.0.0.21/24"));
    assert!(at(&p, "spec.hosts[1].address").message.contains("neither"));
}

#[test]
fn dns_address_needs_private_address() {
    let p = problems(&edit("address: 10.0.0.21", "address: w1.example.com"));
    assert!(at(&p, "spec.hosts[1].address")
        .hint
        .contains("privateAddress"));
    let ok = edit(
        "address: 10.0.0.21",
        "address: w1.example.com\n      privateAddress: 10.0.0.21",
    );
    let inv = Inventory::from_str(&ok, "x").unwrap();
    assert_eq!(inv.spec.hosts[1].node_ip().to_string(), "10.0.0.21");
}

#[test]
fn pod_cidr_overlapping_service_cidr() {
    let p = problems(&edit("podCIDR: 10.244.0.0/16", "podCIDR: 10.96.0.0/16"));
    let problem = at(&p, "spec.cluster.podCIDR");
    assert_eq!(problem.line, Some(18));
    assert!(problem
        .message
        .contains("overlaps serviceCIDR 10.96.0.0/12"));
}

#[test]
fn host_address_inside_pod_or_service_cidr() {
    let p = problems(&edit("address: 10.0.0.21", "address: 10.244.3.4"));
    assert!(at(&p, "spec.hosts[1].address").message.contains("podCIDR"));
    let p = problems(&edit("address: 10.0.0.21", "address: 10.100.0.4"));
    assert!(at(&p, "spec.hosts[1].address")
        .message
        .contains("serviceCIDR"));
}

#[test]
fn node_cidr_mask_not_longer_than_pod_prefix() {
    let text = edit(
        "    serviceCIDR: 10.96.0.0/12\n",
        "    serviceCIDR: 10.96.0.0/12\n    nodeCIDRMaskSize: 16\n",
    );
    let problem = &problems(&text)[0];
    assert_eq!(problem.path, "spec.cluster.nodeCIDRMaskSize");
    assert_eq!(problem.line, Some(20));
}

#[test]
fn node_cidr_mask_too_small_for_host_count() {
    // /16 split into /17s gives 2 node ranges: fine for 2 hosts, not for 3.
    let two = edit(
        "    serviceCIDR: 10.96.0.0/12\n",
        "    serviceCIDR: 10.96.0.0/12\n    nodeCIDRMaskSize: 17\n",
    );
    Inventory::from_str(&two, "x").unwrap();
    let three = two.replacen(
        "  cluster:",
        "    - name: w2\n      address: 10.0.0.22\n      roles: [worker]\n  cluster:",
        1,
    );
    let p = problems(&three);
    assert!(at(&p, "spec.cluster.nodeCIDRMaskSize")
        .message
        .contains("3 hosts"));
}

/// Three control planes (with stacked etcd) at .11–.13 and a worker; `extra` goes under cluster.
fn ha(extra: &str, cp_roles: &str) -> String {
    let mut s = String::from("apiVersion: kinit.dev/v1alpha1\nkind: Cluster\nspec:\n  hosts:\n");
    for i in 1..=3 {
        s.push_str(&format!(
            "    - {{name: cp{i}, address: 10.0.0.1{i}, roles: {cp_roles}}}\n"
        ));
    }
    s.push_str("    - {name: w1, address: 10.0.0.21, roles: [worker]}\n  cluster:\n");
    s.push_str(extra);
    s
}

#[test]
fn ha_layout_is_valid_and_derives_etcd() {
    let inv = Inventory::from_str(
        &ha(
            "    vip: {address: 10.0.0.100, interface: eth0}\n",
            "[control-plane, lb]",
        ),
        "x",
    )
    .unwrap();
    assert_eq!(inv.datastore(), Datastore::Etcd);
    assert_eq!(inv.etcd_members().len(), 3);
    let ep = inv.api_endpoint();
    assert_eq!((ep.host.as_str(), ep.port), ("10.0.0.100", 8443));
}

#[test]
fn even_number_of_etcd_members() {
    let text = ha("    datastore: etcd\n", "[control-plane, etcd]").replacen(
        "roles: [worker]",
        "roles: [worker, etcd]",
        1,
    );
    let p = problems(&text);
    let problem = at(&p, "spec.hosts");
    assert!(problem.message.contains("4 etcd members"), "{problem:?}");
    assert_eq!(problem.line, Some(4));
}

#[test]
fn vip_outside_the_holders_subnet() {
    let p = problems(&ha("    vip: {address: 10.0.1.100}\n", "[control-plane]"));
    let vip: Vec<_> = p
        .iter()
        .filter(|p| p.path == "spec.cluster.vip.address")
        .collect();
    assert_eq!(vip.len(), 3, "one per control plane: {p:#?}");
    assert!(vip[0].message.contains("outside the subnet 10.0.1.0/24"));
    assert_eq!(vip[0].line, Some(10));
    // A wider prefix puts the same VIP in the hosts' network.
    Inventory::from_str(
        &ha(
            "    vip: {address: 10.0.1.100, prefixLength: 16}\n",
            "[control-plane]",
        ),
        "x",
    )
    .unwrap();
}

#[test]
fn vip_equal_to_a_host_address() {
    let p = problems(&ha("    vip: {address: 10.0.0.12}\n", "[control-plane]"));
    assert!(at(&p, "spec.cluster.vip.address").message.contains("cp2"));
}

#[test]
fn vip_port_clashing_with_the_api_server() {
    let p = problems(&ha(
        "    vip: {address: 10.0.0.100, port: 6443}\n",
        "[control-plane]",
    ));
    assert!(at(&p, "spec.cluster.vip.port").hint.contains("8443"));
}

#[test]
fn more_than_one_control_plane_with_embedded_datastore() {
    let p = problems(&ha("    datastore: embedded\n", "[control-plane]"));
    let problem = at(&p, "spec.cluster.datastore");
    assert_eq!(problem.line, Some(10));
    assert!(problem.message.contains("3 hosts"));
}

#[test]
fn lb_role_without_vip() {
    let p = problems(&edit("roles: [worker]", "roles: [worker, lb]"));
    let problem = at(&p, "spec.hosts[1].roles");
    assert_eq!(problem.line, Some(13));
    assert!(problem.hint.contains("spec.cluster.vip"));
}

#[test]
fn etcd_role_with_embedded_datastore() {
    let p = problems(&edit(
        "roles: [control-plane]",
        "roles: [control-plane, etcd]",
    ));
    assert!(at(&p, "spec.hosts[0].roles")
        .hint
        .contains("datastore: etcd"));
}

#[test]
fn bad_taint_syntax_and_effect() {
    let text = edit(
        "taints: [\"dedicated=infra:NoSchedule\"]",
        "taints: [\"dedicated=infra\", \"gpu:Sometimes\"]",
    );
    let p = problems(&text);
    assert!(at(&p, "spec.hosts[1].taints[0]")
        .message
        .contains("no effect"));
    let effect = at(&p, "spec.hosts[1].taints[1]");
    assert!(effect.message.contains("Sometimes"));
    assert_eq!(effect.line, Some(15));
}

#[test]
fn invalid_label_key_and_value() {
    let p = problems(&edit(
        "labels: { disk: ssd }",
        "labels: { \"-disk\": ssd, \"example.com/tier\": \"a b\" }",
    ));
    assert!(at(&p, "spec.hosts[1].labels[\"-disk\"]")
        .message
        .contains("label key"));
    let value = at(&p, "spec.hosts[1].labels[\"example.com/tier\"]");
    assert!(value.message.contains("label value"));
    assert_eq!(value.line, Some(14));
}

#[test]
fn ssh_port_zero() {
    let p = problems(&edit("port: 22", "port: 0"));
    assert_eq!(at(&p, "spec.hosts[1].ssh.port").line, Some(12));
}

#[test]
fn ssh_port_out_of_range_is_a_type_error_with_line() {
    let p = problems(&edit("port: 22", "port: 70000"));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].line, Some(12));
    assert!(p[0].path.starts_with("spec.hosts[1]"), "{p:?}");
}

#[test]
fn password_env_must_be_a_variable_name() {
    let p = problems(&edit("port: 22", "port: 22, passwordEnv: \"hunter2!\""));
    assert!(at(&p, "spec.hosts[1].ssh.passwordEnv")
        .hint
        .contains("never the password"));
}

#[test]
fn invalid_version_string() {
    let p = problems(&edit("version: v1.33.0", "version: 1.33"));
    let problem = at(&p, "spec.cluster.version");
    assert_eq!(problem.line, Some(17));
    assert!(problem.hint.contains("v1.33.0"));
}

#[test]
fn key_algorithm_and_validity() {
    let text = edit(
        "    version: v1.33.0\n",
        "    version: v1.33.0\n    pki: {keyAlgorithm: dsa, caValidityDays: 30, certValidityDays: 365}\n",
    );
    let p = problems(&text);
    assert!(at(&p, "spec.cluster.pki.keyAlgorithm")
        .hint
        .contains("ecdsa-p256"));
    let text = edit(
        "    version: v1.33.0\n",
        "    version: v1.33.0\n    pki: {caValidityDays: 30, certValidityDays: 365}\n",
    );
    assert!(at(&problems(&text), "spec.cluster.pki.certValidityDays")
        .message
        .contains("outlives"));
}

#[test]
fn semantic_problems_are_all_reported_together() {
    let text = edit("name: w1", "name: cp1")
        .replacen("podCIDR: 10.244.0.0/16", "podCIDR: 10.96.0.0/16", 1)
        .replacen("version: v1.33.0", "version: latest", 1);
    let p = problems(&text);
    assert_eq!(p.len(), 3, "{p:#?}");
    let err = Inventory::from_str(&text, "inventory.yaml")
        .unwrap_err()
        .to_string();
    assert_eq!(err.lines().count(), 3);
    assert!(err.contains(
        "inventory.yaml:18: spec.cluster.podCIDR: 10.96.0.0/16 overlaps serviceCIDR 10.96.0.0/12 — choose disjoint ranges"
    ), "{err}");
}

#[test]
fn empty_and_multi_document_files() {
    assert!(problems("")[0].message.contains("empty"));
    assert!(problems("# nothing\n")[0].message.contains("empty"));
    assert!(problems(&format!("{BASE}---\n{BASE}"))[0]
        .message
        .contains("2 YAML documents"));
    assert!(problems("- a\n- b\n")[0]
        .message
        .contains("expected a mapping"));
}

#[test]
fn missing_required_field_names_the_host() {
    let p = problems(&edit("      address: 10.0.0.21\n", ""));
    assert_eq!(p.len(), 1);
    assert!(p[0].message.contains("address"), "{p:?}");
    assert_eq!(p[0].path, "spec.hosts[1]");
}

#[test]
fn from_path_reads_files_and_reports_unreadable_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inventory.yaml");
    std::fs::write(&path, BASE).unwrap();
    assert_eq!(Inventory::from_path(&path).unwrap().metadata.name, "test");
    let err = Inventory::from_path(&dir.path().join("missing.yaml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("missing.yaml: cannot read the inventory"),
        "{err}"
    );
}

#[test]
fn validate_checks_inventories_built_in_code() {
    let mut inv = Inventory::example();
    inv.validate().unwrap();
    inv.spec.hosts[2].name = "node1".into();
    inv.spec.hosts[1].taints.push(Taint {
        key: "bad key".into(),
        value: None,
        effect: TaintEffect::NoSchedule,
    });
    let err = inv.validate().unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.problems.iter().all(|p| p.line.is_none()));
    assert_eq!(err.problems[0].path, "spec.hosts[1].taints[0]");
    assert_eq!(err.problems[1].path, "spec.hosts[2].name");
}

#[test]
fn example_round_trips_through_yaml() {
    let example = Inventory::example();
    let yaml = example.to_yaml();
    let back = Inventory::from_str(&yaml, "example").unwrap();
    assert_eq!(back, example);
    assert_eq!(example.control_planes().len(), 1);
    assert_eq!(example.workers().len(), 2);
    assert!(yaml.contains("podCIDR: 10.244.0.0/16"), "{yaml}");
}

#[test]
fn shipped_examples_validate_and_round_trip() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let inv = Inventory::from_path(&path).unwrap_or_else(|e| panic!("{e}"));
        let back = Inventory::from_str(&inv.to_yaml(), "round trip").unwrap();
        assert_eq!(back, inv, "{}", path.display());
        seen += 1;
    }
    assert!(
        seen >= 3,
        "expected single-node, three-node and ha examples"
    );
}

#[test]
fn accessors_on_the_ha_example() {
    let inv = Inventory::from_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ha.yaml"))
        .unwrap();
    let names = |hosts: Vec<&Host>| hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(inv.control_planes()), ["cp1", "cp2", "cp3"]);
    assert_eq!(names(inv.workers()), ["worker1", "worker2"]);
    assert_eq!(names(inv.etcd_members()), ["cp1", "cp2", "cp3"]);
    assert_eq!(names(inv.lb_hosts()), ["cp1", "cp2", "cp3"]);
    assert_eq!(inv.first_control_plane().name, "cp1");
    assert_eq!(inv.host("worker2").unwrap().address, "10.88.0.22");
    assert!(inv.host("nope").is_none());
    assert_eq!(inv.datastore(), Datastore::Etcd);
    assert_eq!(
        inv.api_endpoint(),
        ApiEndpoint {
            host: "10.88.0.100".into(),
            port: 8443
        }
    );
    assert_eq!(inv.kubernetes_service_ip().to_string(), "10.96.0.1");
    assert_eq!(inv.cluster_dns_ip().to_string(), "10.96.0.10");
}

#[test]
fn derived_defaults_for_a_single_control_plane() {
    let inv = Inventory::from_str(BASE, "x").unwrap();
    assert_eq!(inv.datastore(), Datastore::Embedded);
    assert!(inv.etcd_members().is_empty());
    assert_eq!(
        inv.api_endpoint(),
        ApiEndpoint {
            host: "10.0.0.11".into(),
            port: 6443
        }
    );
    assert_eq!(inv.metadata.name, "test");
    let c = &inv.spec.cluster;
    assert_eq!(c.cluster_name, "kinit");
    assert_eq!(c.node_cidr_mask_size, 24);
    assert_eq!(c.dns_domain, "cluster.local");
    assert_eq!(c.cni.mode, CniMode::Auto);
    assert_eq!(
        c.addons,
        Addons {
            dns: true,
            ingress: false
        }
    );
    assert_eq!(c.pki, PkiConfig::default());
    // Explicit apiEndpoint wins over everything.
    let explicit = edit(
        "    version: v1.33.0\n",
        "    version: v1.33.0\n    apiEndpoint: {host: api.example.com}\n",
    );
    let inv = Inventory::from_str(&explicit, "x").unwrap();
    assert_eq!(
        inv.api_endpoint(),
        ApiEndpoint {
            host: "api.example.com".into(),
            port: 6443
        }
    );
}

#[test]
fn ipv6_service_ips() {
    let mut inv = Inventory::example();
    inv.spec.cluster.service_cidr = "fd00:10:96::/112".parse().unwrap();
    assert_eq!(inv.kubernetes_service_ip().to_string(), "fd00:10:96::1");
    assert_eq!(inv.cluster_dns_ip().to_string(), "fd00:10:96::a");
}

/// The structural schema must accept exactly the keys the serde types read and write.
#[test]
fn schema_matches_the_serde_types() {
    let mut inv =
        Inventory::from_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ha.yaml"))
            .unwrap();
    // Fill every optional field so every key is serialized.
    let h = &mut inv.spec.hosts[0];
    h.ssh.password_env = Some("SSH_PASS".into());
    h.private_address = Some("10.88.0.11".parse().unwrap());
    h.labels.insert("a".into(), "b".into());
    h.taints.push("a=b:NoSchedule".parse().unwrap());
    inv.spec.cluster.api_endpoint = Some(ApiEndpoint {
        host: "10.88.0.100".into(),
        port: 8443,
    });
    inv.spec.cluster.dns.upstreams = vec!["10.88.0.1".into()];
    let yaml = inv.to_yaml();
    let tree = SourceTree::parse(&yaml).unwrap();
    let root = tree.root.as_ref().unwrap();
    let mut issues = Vec::new();
    let shape = source::inventory_shape();
    source::check_shape(root, &shape, &FieldPath::root(), &mut issues);
    assert!(issues.is_empty(), "{issues:#?}");

    // And every key of the schema appears in that output (no stale schema entries).
    fn keys(shape: &source::Shape, prefix: &str, out: &mut Vec<String>) {
        match shape {
            source::Shape::Map(fields) => {
                for (k, sub) in fields {
                    let p = format!("{prefix}.{k}");
                    out.push(p.clone());
                    keys(sub, &p, out);
                }
            }
            source::Shape::Seq(item) => keys(item, &format!("{prefix}[0]"), out),
            _ => {}
        }
    }
    let mut schema_keys = Vec::new();
    keys(&shape, "", &mut schema_keys);
    for key in schema_keys {
        let path = key.trim_start_matches('.').replace("[0]", ".#");
        let mut fp = FieldPath::root();
        for seg in path.split('.') {
            fp = if seg == "#" { fp.index(0) } else { fp.key(seg) };
        }
        assert!(
            tree.node_at(&fp).is_some(),
            "schema key {key} not in serialized YAML:\n{yaml}"
        );
    }
}

#[test]
fn cni_mode_and_dns_upstreams_are_read_and_checked() {
    let text = edit(
        "    serviceCIDR: 10.96.0.0/12\n",
        "    serviceCIDR: 10.96.0.0/12\n    cni: { mode: vxlan }\n    dns: { upstreams: [10.0.0.2, \"10.0.0.3:5353\", \"[fd00::2]:53\"] }\n",
    );
    let inv = Inventory::from_str(&text, "inventory.yaml").unwrap();
    assert_eq!(inv.spec.cluster.cni.mode, CniMode::Vxlan);
    let parsed: Vec<_> = inv
        .spec
        .cluster
        .dns
        .upstreams
        .iter()
        .map(|u| DnsConfig::parse_upstream(u).unwrap().to_string())
        .collect();
    assert_eq!(parsed, ["10.0.0.2:53", "10.0.0.3:5353", "[fd00::2]:53"]);

    let bad_mode = edit(
        "    serviceCIDR: 10.96.0.0/12\n",
        "    serviceCIDR: 10.96.0.0/12\n    cni: { mode: flannel }\n",
    );
    let found = problems(&bad_mode);
    let mode = at(&found, "spec.cluster.cni.mode");
    assert_eq!(mode.line, Some(20), "{mode:?}");
    assert!(mode.hint.contains("auto, host-gw, vxlan"), "{mode:?}");

    let bad_upstreams = edit(
        "    serviceCIDR: 10.96.0.0/12\n",
        "    serviceCIDR: 10.96.0.0/12\n    dns: { upstreams: [dns.example.com, \"10.0.0.3:0\"] }\n",
    );
    let found = problems(&bad_upstreams);
    let first = at(&found, "spec.cluster.dns.upstreams[0]");
    assert!(first.message.contains("dns.example.com"), "{first:?}");
    assert_eq!(first.line, Some(20), "{first:?}");
    at(&found, "spec.cluster.dns.upstreams[1]");
}
