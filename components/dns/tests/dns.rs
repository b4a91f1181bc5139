//! The DNS server against kinit-apiserver's in-process TestServer and fake upstream resolvers,
//! all on 127.0.0.1: cluster records following API changes, forwarding with cache and
//! failover, loop detection, live reload, health/ready, and authenticated metrics.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kinit_apiserver::testing::TestServer;
use kinit_dns::{ClusterSource, DnsServer, ForwardTimeouts, ServerOptions};
use kube::api::{Api, DeleteParams, PostParams};

fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(String::from),
        ..Default::default()
    }
}

fn svc(ns: &str, name: &str, headless: bool, ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: meta(Some(ns), name),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_string()),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ServicePort {
                        name: Some(n.to_string()),
                        port: *p,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(
    ns: &str,
    service: &str,
    name: &str,
    eps: &[(&str, Option<&str>, bool)],
    port: (&str, i32),
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_string(),
                service.to_string(),
            )])),
            ..meta(Some(ns), name)
        },
        address_type: "IPv4".into(),
        endpoints: eps
            .iter()
            .map(|(ip, host, ready)| Endpoint {
                addresses: vec![ip.to_string()],
                hostname: host.map(String::from),
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some(port.0.into()),
            port: Some(port.1),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

const CLUSTER_COREFILE: &str = ".:53 {
    errors
    health { lameduck 1s }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    forward . UPSTREAM
    cache 30
    loop
    reload
    loadbalance
}
";

struct Env {
    ts: TestServer,
    admin: kube::Client,
    dir: tempfile::TempDir,
}

async fn env() -> Env {
    let ts = TestServer::start().await;
    let admin = client(&ts.admin_kubeconfig()).await;
    Env {
        ts,
        admin,
        dir: tempfile::tempdir().unwrap(),
    }
}

async fn start(corefile: std::path::PathBuf, cluster: ClusterSource) -> DnsServer {
    let mut opts = ServerOptions::loopback(corefile, cluster);
    opts.udp_workers = 2;
    opts.forward_timeouts = ForwardTimeouts {
        attempt: Duration::from_millis(300),
        deadline: Duration::from_millis(900),
    };
    opts.auth_cache_ttl = Duration::from_millis(100);
    DnsServer::start(opts).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_records_follow_the_api() {
    let e = env().await;
    let up = fake_upstream(Behaviour::Answer {
        ip: "192.0.2.10".parse().unwrap(),
        ttl: 300,
    })
    .await;
    let cf = write_corefile(
        e.dir.path(),
        &CLUSTER_COREFILE.replace("UPSTREAM", &up.addr.to_string()),
    );
    let ns: Api<Namespace> = Api::all(e.admin.clone());
    ns.create(
        &PostParams::default(),
        &Namespace {
            metadata: meta(None, "app"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let services: Api<Service> = Api::namespaced(e.admin.clone(), "app");
    let slices: Api<EndpointSlice> = Api::namespaced(e.admin.clone(), "app");
    let web = services
        .create(
            &PostParams::default(),
            &svc("app", "web", false, &[("http", 80)]),
        )
        .await
        .unwrap();
    let web_ip = web.spec.unwrap().cluster_ip.unwrap();
    services
        .create(
            &PostParams::default(),
            &svc("app", "db", true, &[("pg", 5432)]),
        )
        .await
        .unwrap();
    slices
        .create(
            &PostParams::default(),
            &slice(
                "app",
                "db",
                "db-abc",
                &[
                    ("10.244.1.10", Some("db-0"), true),
                    ("10.244.1.11", Some("db-1"), true),
                    ("10.244.1.12", Some("db-2"), false),
                ],
                ("pg", 5432),
            ),
        )
        .await
        .unwrap();
    let mut ext = svc("app", "ext", false, &[]);
    ext.spec = Some(ServiceSpec {
        type_: Some("ExternalName".into()),
        external_name: Some("backend.example.test".into()),
        ..Default::default()
    });
    services.create(&PostParams::default(), &ext).await.unwrap();

    let server = start(cf, ClusterSource::Kube(e.admin.clone())).await;
    assert!(
        server.wait_ready(Duration::from_secs(10)).await,
        "watchers sync"
    );
    let dns = server.dns_addr().unwrap();
    let (status, body) = http_get(server.ready_addr().unwrap(), "/ready").await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let (status, body) = http_get(server.health_addr().unwrap(), "/health").await;
    assert_eq!((status, body.as_str()), (200, "OK"));

    for tcp in [false, true] {
        // ClusterIP Service.
        let m = ask(dns, "web.app.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(addrs(&m), vec![web_ip.clone()], "tcp={tcp}");
        assert!(m.metadata.authoritative);
        assert_eq!(m.answers[0].ttl, 30);
        // Headless: ready endpoints only.
        let m = ask(dns, "db.app.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(addrs(&m), vec!["10.244.1.10", "10.244.1.11"], "tcp={tcp}");
        let m = ask(dns, "db-1.db.app.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(addrs(&m), vec!["10.244.1.11"]);
        // SRV with addresses in the additional section.
        let m = ask(
            dns,
            "_pg._tcp.db.app.svc.cluster.local.",
            RecordType::SRV,
            tcp,
        )
        .await;
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.additionals.len(), 2);
        let m = ask(
            dns,
            "_http._tcp.web.app.svc.cluster.local.",
            RecordType::SRV,
            tcp,
        )
        .await;
        assert!(
            matches!(&m.answers[0].data, RData::SRV(s) if s.port == 80 && s.target.to_ascii() == "web.app.svc.cluster.local.")
        );
        // PTR of the ClusterIP and of an endpoint.
        let ip: std::net::IpAddr = web_ip.parse().unwrap();
        let m = ask(
            dns,
            &kinit_dns::records::reverse_name(&ip),
            RecordType::PTR,
            tcp,
        )
        .await;
        assert!(
            matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "web.app.svc.cluster.local.")
        );
        let m = ask(dns, "10.1.244.10.in-addr.arpa.", RecordType::PTR, tcp).await;
        assert!(
            matches!(&m.answers[0].data, RData::PTR(p) if p.0.to_ascii() == "db-0.db.app.svc.cluster.local.")
        );
        // NXDOMAIN vs NODATA.
        let m = ask(dns, "nope.app.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(matches!(m.authorities[0].data, RData::SOA(_)));
        let m = ask(dns, "app.svc.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty() && matches!(m.authorities[0].data, RData::SOA(_)));
        let m = ask(dns, "web.app.svc.cluster.local.", RecordType::AAAA, tcp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        // Pods (insecure) and dns-version.
        let m = ask(dns, "10-244-9-9.app.pod.cluster.local.", RecordType::A, tcp).await;
        assert_eq!(addrs(&m), vec!["10.244.9.9"]);
        let m = ask(dns, "dns-version.cluster.local.", RecordType::TXT, tcp).await;
        assert!(matches!(&m.answers[0].data, RData::TXT(t) if &*t.txt_data[0] == b"1.1.0"));
    }
    // ExternalName: CNAME, target chased through the upstream.
    let m = ask(dns, "ext.app.svc.cluster.local.", RecordType::A, false).await;
    assert!(
        matches!(&m.answers[0].data, RData::CNAME(c) if c.0.to_ascii() == "backend.example.test.")
    );
    assert_eq!(addrs(&m), vec!["192.0.2.10"]);
    assert_eq!(up.count_of("backend.example.test"), 1);
    // Unknown reverse names fall through to the upstream.
    let before = up.count();
    ask(dns, "1.2.0.192.in-addr.arpa.", RecordType::PTR, false).await;
    assert_eq!(up.count(), before + 1);

    // Changes show within a second.
    services
        .create(
            &PostParams::default(),
            &svc("app", "late", false, &[("http", 80)]),
        )
        .await
        .unwrap();
    let (_, took) = eventually(
        "the new Service to resolve",
        Duration::from_secs(1),
        || async {
            let m = ask(dns, "late.app.svc.cluster.local.", RecordType::A, false).await;
            (m.metadata.response_code == ResponseCode::NoError && !m.answers.is_empty())
                .then_some(())
        },
    )
    .await;
    eprintln!("new Service resolvable after {took:?}");
    slices
        .replace("db-abc", &PostParams::default(), &{
            let mut s = slice(
                "app",
                "db",
                "db-abc",
                &[
                    ("10.244.1.10", Some("db-0"), true),
                    ("10.244.1.11", Some("db-1"), false),
                    ("10.244.1.12", Some("db-2"), false),
                ],
                ("pg", 5432),
            );
            s.metadata.resource_version = slices
                .get("db-abc")
                .await
                .unwrap()
                .metadata
                .resource_version;
            s
        })
        .await
        .unwrap();
    eventually(
        "db-1 to leave the headless answer",
        Duration::from_secs(1),
        || async {
            let m = ask(dns, "db.app.svc.cluster.local.", RecordType::A, false).await;
            (addrs(&m) == vec!["10.244.1.10"]).then_some(())
        },
    )
    .await;
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the deleted Service to be NXDOMAIN",
        Duration::from_secs(1),
        || async {
            let m = ask(dns, "web.app.svc.cluster.local.", RecordType::A, false).await;
            (m.metadata.response_code == ResponseCode::NXDomain).then_some(())
        },
    )
    .await;
    // A namespace that is gone is NXDOMAIN; one that exists is NODATA.
    let m = ask(dns, "nonexistent.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    server.shutdown().await;
    drop(e.ts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_and_loadbalance_on_a_large_headless_service() {
    let e = env().await;
    let cf = write_corefile(
        e.dir.path(),
        ".:53 {\n  kubernetes cluster.local\n  loadbalance\n}\n",
    );
    let services: Api<Service> = Api::namespaced(e.admin.clone(), "default");
    services
        .create(
            &PostParams::default(),
            &svc("default", "many", true, &[("http", 80)]),
        )
        .await
        .unwrap();
    let ips: Vec<String> = (1..=60).map(|i| format!("10.244.2.{i}")).collect();
    let eps: Vec<(&str, Option<&str>, bool)> =
        ips.iter().map(|ip| (ip.as_str(), None, true)).collect();
    Api::<EndpointSlice>::namespaced(e.admin.clone(), "default")
        .create(
            &PostParams::default(),
            &slice("default", "many", "many-1", &eps, ("http", 80)),
        )
        .await
        .unwrap();
    let server = start(cf, ClusterSource::Kube(e.admin.clone())).await;
    assert!(server.wait_ready(Duration::from_secs(10)).await);
    let dns = server.dns_addr().unwrap();
    eventually("the headless Service", Duration::from_secs(2), || async {
        let m = ask(dns, "many.default.svc.cluster.local.", RecordType::A, true).await;
        (m.answers.len() == 60).then_some(())
    })
    .await;
    // UDP without EDNS: 512 bytes, TC set, whole records only.
    let m = ask(dns, "many.default.svc.cluster.local.", RecordType::A, false).await;
    assert!(m.metadata.truncation);
    assert!(!m.answers.is_empty() && m.answers.len() < 60);
    // EDNS0 with a large buffer: everything over UDP.
    let m = ask_with(
        dns,
        query_message("many.default.svc.cluster.local.", RecordType::A, Some(4096)),
        false,
    )
    .await;
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), 60);
    assert!(m.edns.is_some());
    // loadbalance: the first address changes between answers.
    let mut firsts = std::collections::HashSet::new();
    for _ in 0..4 {
        let m = ask(dns, "many.default.svc.cluster.local.", RecordType::A, true).await;
        firsts.insert(format!("{}", m.answers[0].data));
        let mut all = addrs(&m);
        all.dedup();
        assert_eq!(all.len(), 60);
    }
    assert!(firsts.len() > 1, "answers are rotated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_cache_failover_and_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let good = fake_upstream(Behaviour::Answer {
        ip: "192.0.2.20".parse().unwrap(),
        ttl: 300,
    })
    .await;
    // A dead upstream: a port nothing listens on (queries get ICMP port unreachable).
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let silent = fake_upstream(Behaviour::Silent).await;
    let cf = write_corefile(
        dir.path(),
        &format!(
            ".:53 {{\n  errors\n  forward example.test {dead} {good} {{\n    policy sequential\n  }}\n  forward . {}\n  cache 30\n}}\n",
            silent.addr,
            good = good.addr
        ),
    );
    // Two forward plugins in one block are not allowed (CoreDNS neither).
    assert!(DnsServer::start(ServerOptions::loopback(
        &cf,
        ClusterSource::Static(Default::default())
    ))
    .await
    .is_err());
    let cf = write_corefile(
        dir.path(),
        &format!(
            "example.test:53 {{\n  errors\n  forward . {dead} {good} {{\n    policy sequential\n  }}\n  cache 30\n}}\n.:53 {{\n  forward . {}\n}}\n",
            silent.addr,
            good = good.addr
        ),
    );
    let server = start(cf, ClusterSource::Static(Default::default())).await;
    let dns = server.dns_addr().unwrap();

    // Failover: the dead upstream is tried first (sequential) and the good one answers.
    let t0 = Instant::now();
    let m = ask(dns, "www.example.test.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&m), vec!["192.0.2.20"]);
    assert!(
        t0.elapsed() < Duration::from_millis(800),
        "failover is quick: {:?}",
        t0.elapsed()
    );
    assert_eq!(m.answers[0].ttl, 30, "TTL capped by cache 30");
    assert_eq!(good.count_of("www.example.test"), 1);
    // Cached: the upstream sees it once, the TTL goes down.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = ask(dns, "WWW.example.TEST.", RecordType::A, false).await;
    assert_eq!(addrs(&m), vec!["192.0.2.20"]);
    assert!(
        m.answers[0].ttl < 30 && m.answers[0].ttl >= 28,
        "ttl {}",
        m.answers[0].ttl
    );
    assert_eq!(
        good.count_of("www.example.test"),
        1,
        "answered from the cache"
    );
    // Negative answers are cached too.
    for _ in 0..3 {
        let m = ask(dns, "nxhost.example.test.", RecordType::A, false).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(good.count_of("nxhost.example.test"), 1);
    // Truncated upstream answers are fetched again over TCP; a small client gets TC.
    let m = ask(dns, "big.example.test.", RecordType::A, true).await;
    assert_eq!(m.answers.len(), 40);
    let m = ask(dns, "big.example.test.", RecordType::A, false).await;
    assert!(m.metadata.truncation && m.answers.len() < 40);
    // Over TCP from the client, TCP to the upstream.
    let before = good.count();
    let m = ask(dns, "tcp.example.test.", RecordType::A, true).await;
    assert_eq!(addrs(&m), vec!["192.0.2.20"]);
    assert_eq!(good.count(), before + 1);
    // A silent upstream: SERVFAIL once the deadline passes.
    let t0 = Instant::now();
    let m = ask(dns, "www.elsewhere.test.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(silent.count() >= 1);
    // Metrics count it all under CoreDNS's names.
    let text = server.metrics_text();
    assert!(text.contains("coredns_cache_hits_total{server=\"dns://:53\",type=\"success\",view=\"\",zones=\"example.test.\"} 2"), "www and big from the cache: {text}");
    assert!(text.contains("coredns_cache_hits_total{server=\"dns://:53\",type=\"denial\",view=\"\",zones=\"example.test.\"} 2"), "{text}");
    assert!(text.contains(&format!(
        "coredns_forward_requests_total{{to=\"{}\"}}",
        good.addr
    )));
    assert!(text.contains("rcode=\"SERVFAIL\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_is_this_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cf = write_corefile(
        dir.path(),
        &format!(".:53 {{\n  kubernetes cluster.local\n  forward . 127.0.0.1:{port}\n  loop\n}}\n"),
    );
    let mut opts = ServerOptions::loopback(&cf, ClusterSource::Static(Default::default()));
    opts.dns_port = Some(port);
    let server = DnsServer::start(opts).await.unwrap();
    let dns = server.dns_addr().unwrap();
    assert_eq!(dns.port(), port);
    let t0 = Instant::now();
    let m = ask(dns, "example.org.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(
        t0.elapsed() < Duration::from_millis(200),
        "refused at once, no loop"
    );
    // Cluster names still work.
    let m = ask(dns, "dns-version.cluster.local.", RecordType::TXT, false).await;
    assert_eq!(m.answers.len(), 1);
    let text = server.metrics_text();
    assert!(!text.contains(&format!(
        "coredns_forward_requests_total{{to=\"127.0.0.1:{port}\"}} 1"
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected_without_a_storm() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let me: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // An upstream that sends everything back to this server.
    let relay = fake_upstream(Behaviour::Relay(me)).await;
    let cf = write_corefile(
        dir.path(),
        &format!(
            ".:53 {{\n  kubernetes cluster.local\n  forward . {}\n  loop\n}}\n",
            relay.addr
        ),
    );
    let mut opts = ServerOptions::loopback(&cf, ClusterSource::Static(Default::default()));
    opts.dns_port = Some(port);
    opts.forward_timeouts = ForwardTimeouts {
        attempt: Duration::from_secs(2),
        deadline: Duration::from_secs(3),
    };
    let server = DnsServer::start(opts).await.unwrap();
    // The probe comes back three times, then the upstream is refused.
    let (_, took) = eventually("the loop probe", Duration::from_secs(3), || async {
        (relay.count() >= 3).then_some(())
    })
    .await;
    eprintln!("loop detected after {took:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_probe = relay.count();
    assert!(
        after_probe <= 4,
        "no storm: the relay saw {after_probe} queries"
    );
    let m = ask(
        server.dns_addr().unwrap(),
        "example.org.",
        RecordType::A,
        false,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        relay.count(),
        after_probe,
        "the looping upstream is not used any more"
    );
    let text = server.metrics_text();
    assert!(text.contains("plugin=\"loop\""), "{text}");
}

/// Replaces `dir/Corefile` the way a ConfigMap volume does: a new `..<version>` directory,
/// then an atomic rename of the `..data` symlink.
fn configmap_update(dir: &std::path::Path, version: &str, text: &str) {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("Corefile"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("Corefile");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/Corefile", &link).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corefile_edits_apply_live_and_bad_ones_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let a = fake_upstream(Behaviour::Answer {
        ip: "192.0.2.1".parse().unwrap(),
        ttl: 300,
    })
    .await;
    let b = fake_upstream(Behaviour::Answer {
        ip: "192.0.2.2".parse().unwrap(),
        ttl: 300,
    })
    .await;
    let snap = kinit_dns::ClusterSnapshot {
        namespaces: vec![std::sync::Arc::new(Namespace {
            metadata: meta(None, "default"),
            ..Default::default()
        })],
        services: vec![std::sync::Arc::new(Service {
            metadata: meta(Some("default"), "web"),
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.50".into()),
                cluster_ips: Some(vec!["10.96.0.50".into()]),
                ..Default::default()
            }),
            ..Default::default()
        })],
        ..Default::default()
    };
    let corefile = |ttl: u32, up: SocketAddr| {
        format!(".:53 {{\n  kubernetes cluster.local {{\n    ttl {ttl}\n  }}\n  forward . {up}\n  reload\n}}\n")
    };
    configmap_update(dir.path(), "v1", &corefile(30, a.addr));
    let server = start(
        dir.path().join("Corefile"),
        ClusterSource::Static(std::sync::Arc::new(snap)),
    )
    .await;
    let dns = server.dns_addr().unwrap();
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(m.answers[0].ttl, 30);
    assert_eq!(
        addrs(&ask(dns, "x.example.org.", RecordType::A, false).await),
        vec!["192.0.2.1"]
    );

    configmap_update(dir.path(), "v2", &corefile(7, b.addr));
    let (_, took) = eventually("the new TTL", Duration::from_secs(5), || async {
        let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A, false).await;
        (m.answers.first().map(|r| r.ttl) == Some(7)).then_some(())
    })
    .await;
    eprintln!("reload applied after {took:?}");
    assert_eq!(
        addrs(&ask(dns, "y.example.org.", RecordType::A, false).await),
        vec!["192.0.2.2"]
    );
    assert_eq!(b.count_of("y.example.org"), 1);

    // A broken edit keeps the last good configuration.
    configmap_update(
        dir.path(),
        "v3",
        ".:53 {\n  kubernetes cluster.local {\n    ttl forever\n  }\n}\n",
    );
    eventually(
        "the failed reload to be counted",
        Duration::from_secs(5),
        || async {
            server
                .metrics_text()
                .contains("coredns_reload_failed_total 1")
                .then_some(())
        },
    )
    .await;
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(m.answers[0].ttl, 7);
    assert_eq!(
        addrs(&ask(dns, "z.example.org.", RecordType::A, false).await),
        vec!["192.0.2.2"]
    );

    // At start, a broken Corefile is fatal and names the line.
    let bad = tempfile::tempdir().unwrap();
    let cf = write_corefile(
        bad.path(),
        ".:53 {\n  forward . 192.0.2.1\n  loop forever\n}\n",
    );
    let err = DnsServer::start(ServerOptions::loopback(
        cf,
        ClusterSource::Static(Default::default()),
    ))
    .await
    .err()
    .expect("a broken Corefile does not start");
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_synced_and_no_denials_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let up = fake_upstream(Behaviour::Answer {
        ip: "192.0.2.30".parse().unwrap(),
        ttl: 60,
    })
    .await;
    let cf = write_corefile(
        dir.path(),
        &format!(
            ".:53 {{\n  health\n  ready\n  kubernetes cluster.local\n  forward . {}\n}}\n",
            up.addr
        ),
    );
    // An API server that is not there.
    let dead = format!("https://127.0.0.1:{}", free_port());
    let cfg = kube::Config::new(dead.parse().unwrap());
    let client = kube::Client::try_from(cfg).unwrap();
    let server = start(cf, ClusterSource::Kube(client)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = http_get(server.ready_addr().unwrap(), "/ready").await;
    assert_eq!(status, 503);
    let (status, body) = http_get(server.health_addr().unwrap(), "/health").await;
    assert_eq!((status, body.as_str()), (200, "OK"));
    let dns = server.dns_addr().unwrap();
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::ServFail,
        "no NXDOMAIN before the sync"
    );
    let m = ask(dns, "www.example.org.", RecordType::A, false).await;
    assert_eq!(addrs(&m), vec!["192.0.2.30"], "forwarding works meanwhile");
}

async fn sa_token(c: &kube::Client, ns: &str, name: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(c.clone(), ns);
    let _ = sas
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: meta(Some(ns), name),
                ..Default::default()
            },
        )
        .await;
    let tr = sas
        .create_token_request(
            name,
            &PostParams::default(),
            &TokenRequest {
                spec: TokenRequestSpec {
                    audiences: vec![],
                    expiration_seconds: Some(3600),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    tr.status.unwrap().token
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(groups.iter().map(|s| s.to_string()).collect()),
        resources: Some(resources.iter().map(|s| s.to_string()).collect()),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

async fn bind_cluster_role(
    c: &kube::Client,
    name: &str,
    rules: Vec<PolicyRule>,
    sa_ns: &str,
    sa: &str,
) {
    Api::<ClusterRole>::all(c.clone())
        .create(
            &PostParams::default(),
            &ClusterRole {
                metadata: meta(None, name),
                rules: Some(rules),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(c.clone())
        .create(
            &PostParams::default(),
            &ClusterRoleBinding {
                metadata: meta(None, name),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: name.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: sa.into(),
                    namespace: Some(sa_ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
}

/// The server runs as the `coredns` ServiceAccount with exactly the RBAC rules the manifests
/// ship; metrics need a token allowed to `get /metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_an_authorized_token() {
    let e = env().await;
    bind_cluster_role(
        &e.admin,
        "system:coredns",
        vec![
            rule(
                &[""],
                &["services", "pods", "namespaces"],
                &["list", "watch"],
            ),
            rule(
                &["discovery.k8s.io"],
                &["endpointslices"],
                &["list", "watch"],
            ),
            rule(&["authentication.k8s.io"], &["tokenreviews"], &["create"]),
            rule(
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
                &["create"],
            ),
        ],
        "kube-system",
        "coredns",
    )
    .await;
    let dns_identity = client(&e.ts.kubeconfig_for(
        "system:serviceaccount:kube-system:coredns",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:kube-system",
            "system:authenticated",
        ],
    ))
    .await;
    Api::<Service>::namespaced(e.admin.clone(), "default")
        .create(
            &PostParams::default(),
            &svc("default", "web", false, &[("http", 80)]),
        )
        .await
        .unwrap();
    let cf = write_corefile(
        e.dir.path(),
        ".:53 {\n  kubernetes cluster.local {\n    pods verified\n  }\n  prometheus :9153\n}\n",
    );
    let server = start(cf, ClusterSource::Kube(dns_identity)).await;
    assert!(
        server.wait_ready(Duration::from_secs(10)).await,
        "the coredns role can list and watch"
    );
    let dns = server.dns_addr().unwrap();
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(m.answers.len(), 1);

    let url = format!("https://{}/metrics", server.metrics_addr().unwrap());
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let get = |token: Option<String>| {
        let mut r = http.get(&url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        async move {
            let r = r.send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.text().await.unwrap())
        }
    };
    // Plain HTTP is not served.
    let plain = reqwest::get(format!("http://{}/metrics", server.metrics_addr().unwrap())).await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    assert_eq!(get(None).await.0, 401);
    assert_eq!(get(Some("not-a-token".into())).await.0, 401);
    let token = sa_token(&e.admin, "default", "scraper").await;
    let (status, body) = get(Some(token.clone())).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("system:serviceaccount:default:scraper"));
    let mut reader = rule(&[], &[], &["get"]);
    reader.api_groups = None;
    reader.resources = None;
    reader.non_resource_urls = Some(vec!["/metrics".into()]);
    bind_cluster_role(
        &e.admin,
        "metrics-reader",
        vec![reader],
        "default",
        "scraper",
    )
    .await;
    let (body, _) = eventually("metrics with the RBAC rule", Duration::from_secs(5), || {
        let get = get(Some(token.clone()));
        async move {
            let (status, body) = get.await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert!(body.contains("coredns_dns_requests_total{family=\"1\",proto=\"udp\",server=\"dns://:53\",type=\"A\",view=\"\",zone=\".\"} 1"), "{body}");
    assert!(body.contains("coredns_dns_responses_total"));
}
