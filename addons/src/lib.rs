//! Cluster add-ons: manifests embedded in the binary (so offline installs need nothing else),
//! rendered with the same strict template engine as the host files, and handed to the
//! installer as objects to apply once the API server answers.
//!
//! Today there is one add-on, cluster DNS: kinit's own server (`kinit dns`) in the shape of
//! kubeadm's CoreDNS add-on — Deployment `coredns`, Service `kube-dns` at the 10th service
//! address, ConfigMap `coredns` with the Corefile — so users' habits and tools find what they
//! expect.
//!
//! Every object carries [`HASH_ANNOTATION`], the SHA-256 of its rendered form: the installer
//! rewrites an object only when that hash differs, so a second `kinit apply` changes nothing.
//! Objects marked [`AddonObject::keep_user_edits`] (the Corefile) are replaced only while
//! nobody edited them since kinit wrote them.

#![warn(missing_docs)]

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Annotation holding the SHA-256 of the object as kinit rendered it.
pub const HASH_ANNOTATION: &str = "kinit.io/addon-hash";
/// Label every add-on object carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "kinit");

/// The add-ons kinit ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Addon {
    /// Cluster DNS (`coredns` / `kube-dns`).
    Dns,
}

impl Addon {
    /// The add-on's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Addon::Dns => "dns",
        }
    }

    fn manifest(self) -> (&'static str, &'static str) {
        match self {
            Addon::Dns => (
                "coredns.yaml.j2",
                include_str!("../manifests/coredns.yaml.j2"),
            ),
        }
    }
}

/// Settings of the DNS add-on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsSettings {
    /// Cluster domain, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// ClusterIP of `kube-dns` (the 10th address of the service range).
    pub service_ip: IpAddr,
    /// Image holding the kinit binary, e.g. `kinit.local/kinit:v0.1.0`.
    pub image: String,
    /// Path of the kinit binary inside that image.
    pub command: String,
    /// SHA-256 of the kinit binary the image is built from (a new build, same tag, rolls the
    /// pods).
    pub binary_sha256: String,
    /// Upstream servers (`IP:port`); empty means the node's `/etc/resolv.conf`.
    pub upstreams: Vec<String>,
    /// Replicas of the Deployment (kubeadm runs 2).
    pub replicas: u32,
}

#[derive(Serialize)]
struct DnsContext<'a> {
    #[serde(flatten)]
    settings: &'a DnsSettings,
    forward_to: String,
}

/// One object to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct AddonObject {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `Deployment`.
    pub kind: String,
    /// Namespace; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
    /// The whole object, with [`HASH_ANNOTATION`] set.
    pub object: Value,
    /// The annotation's value: hex SHA-256 of the rendered object, or for objects that keep
    /// user edits of their `data` only (see [`data_hash`]).
    pub hash: String,
    /// Users are expected to edit this object (the Corefile): once the live object no longer
    /// matches what kinit last wrote, kinit leaves it alone.
    pub keep_user_edits: bool,
}

impl AddonObject {
    /// `Kind namespace/name` for messages.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

/// Why an add-on could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum AddonError {
    /// The template failed.
    #[error("add-on {addon}: {source}")]
    Template {
        /// The add-on.
        addon: &'static str,
        /// What failed.
        #[source]
        source: kinit_templates::TemplateError,
    },
    /// A rendered document is not a Kubernetes object.
    #[error("add-on {addon}: document {index} is not a Kubernetes object: {reason}")]
    Document {
        /// The add-on.
        addon: &'static str,
        /// 0-based document index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// A setting is unusable.
    #[error("add-on {addon}: {reason}")]
    Setting {
        /// The add-on.
        addon: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// Renders the DNS add-on's objects, in the order they must be applied.
pub fn dns(settings: &DnsSettings) -> Result<Vec<AddonObject>, AddonError> {
    let addon = Addon::Dns;
    if settings.replicas == 0 {
        return Err(AddonError::Setting {
            addon: addon.name(),
            reason: "replicas must be at least 1".into(),
        });
    }
    for upstream in &settings.upstreams {
        if upstream.parse::<std::net::SocketAddr>().is_err() {
            return Err(AddonError::Setting {
                addon: addon.name(),
                reason: format!("upstream {upstream:?} is not IP:port"),
            });
        }
    }
    let forward_to = if settings.upstreams.is_empty() {
        "/etc/resolv.conf".to_string()
    } else {
        settings.upstreams.join(" ")
    };
    let context = DnsContext {
        settings,
        forward_to,
    };
    render(addon, &context, |kind| kind == "ConfigMap")
}

/// Hex SHA-256 of an object's `data` (ConfigMaps): equal to the object's [`HASH_ANNOTATION`]
/// while nobody edited the data kinit wrote.
pub fn data_hash(object: &Value) -> String {
    // Keys sorted explicitly: a map's order depends on serde_json features and on the server.
    let data: std::collections::BTreeMap<&str, &Value> = object
        .get("data")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default();
    let text = serde_json::to_string(&data).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn render<C: Serialize>(
    addon: Addon,
    context: &C,
    keep_user_edits: impl Fn(&str) -> bool,
) -> Result<Vec<AddonObject>, AddonError> {
    let (name, source) = addon.manifest();
    let text = kinit_templates::render_source(name, source, &serde_json::json!({ "dns": context }))
        .map_err(|source| AddonError::Template {
            addon: addon.name(),
            source,
        })?;
    let mut objects = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let bad = |reason: String| AddonError::Document {
            addon: addon.name(),
            index,
            reason,
        };
        let mut object: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| bad(format!("invalid YAML: {e}")))?;
        if object.is_null() {
            continue;
        }
        let field = |object: &Value, path: &[&str]| -> Option<String> {
            path.iter()
                .try_fold(object, |v, k| v.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let api_version =
            field(&object, &["apiVersion"]).ok_or_else(|| bad("no apiVersion".into()))?;
        let kind = field(&object, &["kind"]).ok_or_else(|| bad("no kind".into()))?;
        let name =
            field(&object, &["metadata", "name"]).ok_or_else(|| bad("no metadata.name".into()))?;
        let namespace = field(&object, &["metadata", "namespace"]);
        let keep_user_edits = keep_user_edits(&kind);
        let hash = if keep_user_edits {
            data_hash(&object)
        } else {
            hex::encode(Sha256::digest(
                serde_json::to_vec(&object).map_err(|e| bad(e.to_string()))?,
            ))
        };
        let metadata = object
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| bad("metadata is not a map".into()))?;
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        let Some(annotations) = annotations.as_object_mut() else {
            return Err(bad("metadata.annotations is not a map".into()));
        };
        annotations.insert(HASH_ANNOTATION.into(), Value::String(hash.clone()));
        objects.push(AddonObject {
            keep_user_edits,
            api_version,
            kind,
            namespace,
            name,
            object,
            hash,
        });
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Service};

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_domain: "cluster.local".into(),
            service_ip: "10.96.0.10".parse().unwrap(),
            image: "kinit.local/kinit:v0.1.0".into(),
            command: "/usr/local/bin/kinit".into(),
            binary_sha256: "ab".repeat(32),
            upstreams: vec![],
            replicas: 2,
        }
    }

    fn find<'a>(objects: &'a [AddonObject], kind: &str) -> &'a AddonObject {
        objects.iter().find(|o| o.kind == kind).unwrap()
    }

    #[test]
    fn dns_has_kubeadms_objects_and_names() {
        let objects = dns(&settings()).unwrap();
        let names: Vec<String> = objects.iter().map(AddonObject::describe).collect();
        assert_eq!(
            names,
            [
                "ServiceAccount kube-system/coredns",
                "ClusterRole system:coredns",
                "ClusterRoleBinding system:coredns",
                "ConfigMap kube-system/coredns",
                "Service kube-system/kube-dns",
                "Deployment kube-system/coredns",
            ]
        );
        let service: Service = serde_json::from_value(find(&objects, "Service").object.clone())
            .expect("a valid Service");
        let spec = service.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.10"));
        let ports: Vec<(String, i32, String)> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port, p.protocol.unwrap()))
            .collect();
        assert_eq!(
            ports,
            [
                ("dns".to_string(), 53, "UDP".to_string()),
                ("dns-tcp".to_string(), 53, "TCP".to_string()),
                ("metrics".to_string(), 9153, "TCP".to_string()),
            ]
        );
        let deployment: Deployment =
            serde_json::from_value(find(&objects, "Deployment").object.clone())
                .expect("a valid Deployment");
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.dns_policy.as_deref(), Some("Default"));
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("kinit.local/kinit:v0.1.0"));
        assert_eq!(
            container.command.as_deref().unwrap(),
            [
                "/usr/local/bin/kinit",
                "dns",
                "--conf",
                "/etc/coredns/Corefile"
            ]
        );
        assert_eq!(
            spec.template.metadata.unwrap().labels.unwrap()["k8s-app"],
            "kube-dns"
        );
    }

    #[test]
    fn corefile_names_the_domain_and_upstreams_and_only_it_keeps_user_edits() {
        let mut s = settings();
        s.cluster_domain = "corp.example".into();
        let objects = dns(&s).unwrap();
        let config: ConfigMap =
            serde_json::from_value(find(&objects, "ConfigMap").object.clone()).unwrap();
        let corefile = &config.data.unwrap()["Corefile"];
        assert!(
            corefile.contains("kubernetes corp.example in-addr.arpa ip6.arpa {"),
            "{corefile}"
        );
        assert!(
            corefile.contains("forward . /etc/resolv.conf {"),
            "{corefile}"
        );
        assert!(corefile.contains("cache 30"), "{corefile}");
        assert!(objects
            .iter()
            .all(|o| o.keep_user_edits == (o.kind == "ConfigMap")));

        s.upstreams = vec!["10.0.0.2:53".into(), "10.0.0.3:5353".into()];
        let objects = dns(&s).unwrap();
        let corefile = find(&objects, "ConfigMap").object["data"]["Corefile"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            corefile.contains("forward . 10.0.0.2:53 10.0.0.3:5353 {"),
            "{corefile}"
        );
    }

    #[test]
    fn hashes_follow_the_rendered_content() {
        let a = dns(&settings()).unwrap();
        let b = dns(&settings()).unwrap();
        assert_eq!(a, b, "rendering is deterministic");
        for o in &a {
            assert_eq!(o.object["metadata"]["annotations"][HASH_ANNOTATION], o.hash);
        }
        let mut s = settings();
        s.image = "kinit.local/kinit:v0.2.0".into();
        let c = dns(&s).unwrap();
        assert_ne!(find(&a, "Deployment").hash, find(&c, "Deployment").hash);
        // Another kinit build under the same tag changes the pod template, so pods roll.
        let mut s = settings();
        s.binary_sha256 = "cd".repeat(32);
        let d = dns(&s).unwrap();
        let template = |o: &[AddonObject]| {
            find(o, "Deployment").object["spec"]["template"]["metadata"]["annotations"]
                ["kinit.io/binary-sha256"]
                .clone()
        };
        assert_ne!(template(&a), template(&d));
        assert_ne!(find(&a, "Deployment").hash, find(&d, "Deployment").hash);
        assert_eq!(find(&a, "Service").hash, find(&c, "Service").hash);
        // The Corefile's hash covers its data, so an edit of the live object is recognised.
        let config = find(&a, "ConfigMap");
        assert_eq!(config.hash, data_hash(&config.object));
        let mut edited = config.object.clone();
        edited["data"]["Corefile"] = Value::String("edited".into());
        assert_ne!(data_hash(&edited), config.hash);
    }

    #[test]
    fn bad_settings_are_refused() {
        let mut s = settings();
        s.replicas = 0;
        assert!(dns(&s).unwrap_err().to_string().contains("replicas"));
        let mut s = settings();
        s.upstreams = vec!["dns.example.com".into()];
        assert!(dns(&s).unwrap_err().to_string().contains("IP:port"));
    }
}
