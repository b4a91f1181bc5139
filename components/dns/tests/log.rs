//! The `log` and `errors` plugins: one line per query, and failed forwards logged with the
//! name. (Own test binary: it installs a global log subscriber.)

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kinit_dns::{ClusterSnapshot, ClusterSource, DnsServer, ForwardTimeouts, ServerOptions};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_errors_plugins() {
    let captured = Captured::default();
    let sink = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .init();
    let dir = tempfile::tempdir().unwrap();
    let silent = fake_upstream(Behaviour::Silent).await;
    let snap = ClusterSnapshot {
        namespaces: vec![Arc::new(Namespace {
            metadata: ObjectMeta {
                name: Some("default".into()),
                ..Default::default()
            },
            ..Default::default()
        })],
        services: vec![Arc::new(Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.7".into()),
                ..Default::default()
            }),
            ..Default::default()
        })],
        ..Default::default()
    };
    let cf = write_corefile(
        dir.path(),
        &format!(
            ".:53 {{\n  log\n  errors\n  kubernetes cluster.local\n  forward . {}\n  nonsense plugin\n}}\n",
            silent.addr
        ),
    );
    let mut opts = ServerOptions::loopback(cf, ClusterSource::Static(Arc::new(snap)));
    opts.forward_timeouts = ForwardTimeouts {
        attempt: Duration::from_millis(200),
        deadline: Duration::from_millis(400),
    };
    let server = DnsServer::start(opts).await.unwrap();
    let dns = server.dns_addr().unwrap();
    let m = ask(dns, "web.default.svc.cluster.local.", RecordType::A, false).await;
    assert_eq!(addrs(&m), vec!["10.96.0.7"]);
    let m = ask(dns, "gone.example.org.", RecordType::AAAA, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    let text = captured.text();
    assert!(
        text.contains("\"A IN web.default.svc.cluster.local. udp")
            && text.contains("NOERROR qr,aa,rd,ra"),
        "{text}"
    );
    assert!(
        text.contains("\"AAAA IN gone.example.org. udp") && text.contains("SERVFAIL"),
        "{text}"
    );
    assert!(
        text.contains("ERROR") && text.contains("AAAA gone.example.org.: all upstreams failed"),
        "{text}"
    );
    assert!(
        text.contains("Corefile line 6: plugin 'nonsense' is not supported"),
        "{text}"
    );
}
