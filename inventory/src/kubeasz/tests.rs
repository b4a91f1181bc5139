use super::*;

fn sample() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kubeasz-hosts"))
        .unwrap()
}

fn import_err(text: &str) -> InventoryError {
    match import(text, "hosts") {
        Ok(i) => panic!("accepted: {:#?}", i.inventory),
        Err(e) => e,
    }
}

#[test]
fn sample_imports_with_merged_roles_and_cluster_settings() {
    let imported = import(&sample(), "/etc/kubeasz/clusters/prod/hosts").unwrap();
    let inv = &imported.inventory;
    assert_eq!(inv.metadata.name, "prod");
    let names: Vec<&str> = inv.spec.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "master-01",
            "master-02",
            "master-03",
            "worker-01",
            "worker-02",
            "192.168.1.6",
            "192.168.1.7"
        ]
    );
    let m1 = inv.host("master-01").unwrap();
    assert_eq!(m1.address, "192.168.1.1");
    assert_eq!(m1.roles, [Role::ControlPlane, Role::Etcd]);
    let w2 = inv.host("worker-02").unwrap();
    assert_eq!(
        (w2.ssh.user.as_str(), w2.ssh.port, w2.ssh.sudo),
        ("ops", 2222, true)
    );
    assert_eq!(inv.lb_hosts().len(), 2);
    assert_eq!(inv.etcd_members().len(), 3);
    let c = &inv.spec.cluster;
    assert_eq!(c.service_cidr.to_string(), "10.68.0.0/16");
    assert_eq!(c.pod_cidr.to_string(), "172.20.0.0/16");
    assert_eq!(c.datastore, Some(Datastore::Etcd));
    let vip = c.vip.as_ref().unwrap();
    assert_eq!(
        (vip.address.to_string().as_str(), vip.port),
        ("192.168.1.250", 8443)
    );
    assert_eq!(inv.api_endpoint().host, "192.168.1.250");
    assert_eq!(inv.cluster_dns_ip().to_string(), "10.68.0.10");
    // The converted inventory is itself a valid inventory file.
    Inventory::from_str(&inv.to_yaml(), "converted").unwrap();
}

#[test]
fn sample_warns_about_ignored_settings_with_lines() {
    let imported = import(&sample(), "hosts").unwrap();
    let w = imported.warnings.join("\n");
    for expected in [
        "[chrony] ignored",
        "CLUSTER_NETWORK=calico replaced",
        "PROXY_MODE=ipvs ignored",
        "bin_dir=/opt/kube/bin ignored",
        "ca_dir=/etc/kubernetes/ssl ignored",
        "ansible_python_interpreter ignored",
    ] {
        assert!(w.contains(expected), "missing {expected:?} in:\n{w}");
    }
    // Defaults kubeasz and kinit share are not warned about.
    assert!(!w.contains("SECURE_PORT"), "{w}");
    assert!(!w.contains("NODE_PORT_RANGE"), "{w}");
    assert!(!w.contains("CONTAINER_RUNTIME"), "{w}");
    assert!(imported.warnings.iter().all(|w| w.starts_with("hosts:")));
    assert!(w.contains("hosts:34: [chrony] ignored"), "{w}");
}

#[test]
fn flannel_maps_to_vxlan() {
    let text = "[kube_master]\n10.0.0.1\n[all:vars]\nCLUSTER_NETWORK=\"flannel\"\n";
    let imported = import(text, "hosts").unwrap();
    assert_eq!(imported.inventory.spec.cluster.cni.mode, CniMode::Vxlan);
}

#[test]
fn minimal_file_gets_defaults_and_address_names() {
    let imported = import("[kube_master]\n10.0.0.1\n[kube_node]\n10.0.0.2\n", "hosts").unwrap();
    let inv = imported.inventory;
    assert_eq!(inv.metadata.name, "kinit");
    assert_eq!(inv.spec.hosts[0].name, "10.0.0.1");
    assert_eq!(inv.spec.hosts[0].ssh, SshConfig::default());
    assert_eq!(inv.datastore(), Datastore::Embedded);
    assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
}

#[test]
fn group_and_all_vars_apply_to_hosts_with_host_vars_first() {
    let text = "\
[kube_master]
10.0.0.1 ansible_ssh_port=2200
[kube_node]
10.0.0.2
[kube_node:vars]
ansible_ssh_user=ubuntu
[all:vars]
ansible_ssh_port=2222
ansible_ssh_private_key_file=/root/.ssh/kubeasz
";
    let inv = import(text, "hosts").unwrap().inventory;
    assert_eq!(inv.spec.hosts[0].ssh.port, 2200);
    assert_eq!(inv.spec.hosts[0].ssh.user, "root");
    assert_eq!(inv.spec.hosts[1].ssh.port, 2222);
    assert_eq!(inv.spec.hosts[1].ssh.user, "ubuntu");
    assert_eq!(
        inv.spec.hosts[1].ssh.key_path.as_deref(),
        Some(Path::new("/root/.ssh/kubeasz"))
    );
}

#[test]
fn passwords_are_never_imported() {
    let text = "[kube_master]\n10.0.0.1 ansible_ssh_pass='s3cret'\n";
    let imported = import(text, "hosts").unwrap();
    assert!(!imported.inventory.to_yaml().contains("s3cret"));
    assert!(
        imported.warnings[0].contains("passwordEnv"),
        "{:?}",
        imported.warnings
    );
    assert!(!imported.warnings[0].contains("s3cret"));
}

#[test]
fn several_masters_without_vip_warn_and_pin_the_endpoint() {
    let text =
        "[etcd]\n10.0.0.1\n10.0.0.2\n10.0.0.3\n[kube_master]\n10.0.0.1\n10.0.0.2\n10.0.0.3\n";
    let imported = import(text, "hosts").unwrap();
    assert!(imported
        .warnings
        .iter()
        .any(|w| w.contains("no [ex_lb] VIP")));
    assert_eq!(imported.inventory.api_endpoint().host, "10.0.0.1");
}

#[test]
fn lb_master_not_first_is_warned() {
    let text = "\
[kube_master]
10.0.0.1
[ex_lb]
10.0.0.6 LB_ROLE=backup EX_APISERVER_VIP=10.0.0.250 EX_APISERVER_PORT=8443
10.0.0.7 LB_ROLE=master EX_APISERVER_VIP=10.0.0.250 EX_APISERVER_PORT=8443
";
    let imported = import(text, "hosts").unwrap();
    assert!(
        imported
            .warnings
            .iter()
            .any(|w| w.starts_with("hosts:5: LB_ROLE=master of 10.0.0.7")),
        "{:?}",
        imported.warnings
    );
}

#[test]
fn malformed_lines_are_errors_with_line_numbers() {
    let cases: [(&str, usize, &str); 9] = [
        ("10.0.0.1\n[kube_master]\n", 1, "before any [group]"),
        ("[kube_master\n10.0.0.1\n", 1, "closing `]`"),
        ("[kube_master]\n10.0.0.1 k8s_nodename\n", 2, "not `key=value`"),
        ("[kube_master]\n10.0.0.1 k8s_nodename='cp1\n", 2, "unterminated"),
        ("[kube_master]\n10.0.0.[1:3]\n", 2, "ranges"),
        ("[kube_master]\n10.0.0.1 ansible_ssh_port=ssh\n", 2, "SSH port"),
        ("[kube_master]\n10.0.0.1\n[all:vars]\nSERVICE_CIDR=\"10.68.0.0/33\"\n", 4, "SERVICE_CIDR"),
        ("[kube_master]\n10.0.0.1\n[all:vars]\nJUST_A_WORD\n", 4, "key=value"),
        (
            "[kube_master]\n10.0.0.1\n[ex_lb]\n10.0.0.6 LB_ROLE=primary EX_APISERVER_VIP=10.0.0.250\n",
            4,
            "LB_ROLE",
        ),
    ];
    for (text, line, needle) in cases {
        let err = import_err(text);
        let p = &err.problems[0];
        assert_eq!(p.line, Some(line), "{text:?}: {err}");
        assert!(err.to_string().contains(needle), "{text:?}: {err}");
    }
}

#[test]
fn conflicting_values_for_one_host_are_errors() {
    let text = "[kube_master]\n10.0.0.1 k8s_nodename=a\n[kube_node]\n10.0.0.1 k8s_nodename=b\n";
    let err = import_err(text);
    assert_eq!(err.problems[0].line, Some(4));
    let text = "[kube_master]\n10.0.0.1\n[ex_lb]\n10.0.0.6 EX_APISERVER_VIP=10.0.0.250\n10.0.0.7 EX_APISERVER_VIP=10.0.0.251\n";
    assert_eq!(import_err(text).problems[0].line, Some(5));
}

#[test]
fn ex_lb_without_vip_is_an_error() {
    let err = import_err("[kube_master]\n10.0.0.1\n[ex_lb]\n10.0.0.6 LB_ROLE=master\n");
    assert!(err.to_string().contains("EX_APISERVER_VIP"), "{err}");
}

#[test]
fn invalid_result_points_at_the_host_line() {
    // Two masters share a node name: the converted inventory is invalid.
    let text = "[kube_master]\n10.0.0.1 k8s_nodename=cp\n10.0.0.2 k8s_nodename=cp\n";
    let err = import_err(text);
    let p = &err.problems[0];
    assert_eq!(p.path, "spec.hosts[1].name");
    assert_eq!(p.line, Some(3));
    assert!(p.message.contains("converted inventory"), "{p:?}");
}

#[test]
fn no_kubernetes_hosts_is_an_error() {
    let err = import_err("[chrony]\n10.0.0.1\n");
    assert!(err.to_string().contains("no hosts"), "{err}");
}

#[test]
fn tokenizer_handles_quotes_and_comments() {
    assert_eq!(
        tokenize("10.0.0.1 a='x y' b=\"z\" c=d # comment").unwrap(),
        ["10.0.0.1", "a=x y", "b=z", "c=d"]
    );
    assert_eq!(unquote_value(" \"6443\" ").unwrap(), "6443");
    assert_eq!(
        unquote_value("/usr/bin/python3 # py").unwrap(),
        "/usr/bin/python3"
    );
    assert_eq!(unquote_value("''").unwrap(), "");
}

#[test]
fn cluster_name_comes_from_the_kubeasz_path() {
    assert_eq!(
        cluster_name_from_path("/etc/kubeasz/clusters/k8s-01/hosts").as_deref(),
        Some("k8s-01")
    );
    assert_eq!(cluster_name_from_path("/tmp/hosts"), None);
}
