//! `kinit token` and `kinit kubeconfig` against a real (in-process) API server: the tokens and
//! certificates they make authenticate as the identities they claim.

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kinit_apiserver::testing::TestServer;
use kube::api::PostParams;

async fn kinit(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_kinit"))
            .args(&args)
            .output()
            .expect("run kinit");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn kinit_ok(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (ok, stdout, stderr) = kinit(args.clone()).await;
    assert!(ok, "kinit {args:?} failed:\n{stdout}{stderr}");
    stdout
}

/// The user the server sees for `client`'s credentials.
async fn whoami(client: kube::Client) -> Result<(String, Vec<String>), kube::Error> {
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client);
    let review = api
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await?;
    let info = review.status.unwrap().user_info.unwrap();
    Ok((info.username.unwrap(), info.groups.unwrap_or_default()))
}

async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A client that presents `token` as a bearer token and trusts the cluster CA.
async fn token_client(ts: &TestServer, token: &str) -> kube::Client {
    let mut config = kube::Config::new(ts.server.parse().unwrap());
    config.root_cert = Some(vec![pem_to_der(&ts.ca_pem)]);
    config.auth_info.token = Some(token.to_string().into());
    kube::Client::try_from(config).unwrap()
}

fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_tokens_are_created_listed_used_and_deleted() {
    let ts = TestServer::start().await;
    let admin = ts.admin_kubeconfig();
    let admin = admin.to_str().unwrap();

    let join = kinit_ok(&[
        "token",
        "create",
        "--kubeconfig",
        admin,
        "--description",
        "e2e join",
        "--print-join-command",
    ])
    .await;
    let words: Vec<&str> = join.split_whitespace().collect();
    assert_eq!(&words[..2], ["kinit", "join"], "{join}");
    assert_eq!(format!("https://{}", words[2]), ts.server, "{join}");
    let token = words[words.iter().position(|w| *w == "--token").unwrap() + 1].to_string();
    let hash = words[words
        .iter()
        .position(|w| *w == "--discovery-token-ca-cert-hash")
        .unwrap()
        + 1];
    assert_eq!(hash, kinit_pki::ca_cert_hash(&ts.ca_pem).unwrap());
    let id = token.split('.').next().unwrap().to_string();

    let listed: serde_json::Value = serde_json::from_str(
        &kinit_ok(&["token", "list", "--kubeconfig", admin, "-o", "json"]).await,
    )
    .unwrap();
    let row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["token"] == token.as_str())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(row["description"], "e2e join");
    assert_eq!(
        row["usages"],
        serde_json::json!(["authentication", "signing"])
    );
    assert!(row["ttl"].as_str().unwrap().starts_with("23h"), "{row}");

    let (user, groups) = whoami(token_client(&ts, &token).await).await.unwrap();
    assert_eq!(user, format!("system:bootstrap:{id}"));
    assert!(
        groups.iter().any(|g| g == "system:bootstrappers"),
        "{groups:?}"
    );
    assert!(
        groups
            .iter()
            .any(|g| g == "system:bootstrappers:kubeadm:default-node-token"),
        "{groups:?}"
    );

    let (ok, _, stderr) = kinit(
        ["token", "create", "--kubeconfig", admin, "not-a-token"]
            .map(String::from)
            .to_vec(),
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("[a-z0-9]{6}"), "{stderr}");

    kinit_ok(&["token", "delete", "--kubeconfig", admin, &id]).await;
    let listed = kinit_ok(&["token", "list", "--kubeconfig", admin]).await;
    assert!(!listed.contains(&token), "{listed}");
    let err = whoami(token_client(&ts, &token).await).await.unwrap_err();
    assert!(
        err.to_string().contains("401") || err.to_string().contains("Unauthorized"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_user_kubeconfig_authenticates_as_that_user() {
    let ts = TestServer::start().await;
    let out = ts.dir.path().join("alice.conf");
    kinit_ok(&[
        "kubeconfig",
        "--user",
        "alice",
        "--group",
        "dev,ops",
        "--cert-dir",
        ts.dir.path().join("pki").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (user, groups) = whoami(client_from(&out).await).await.unwrap();
    assert_eq!(user, "alice");
    assert!(groups.contains(&"dev".to_string()) && groups.contains(&"ops".to_string()));
    assert!(
        groups.contains(&"system:authenticated".to_string()),
        "{groups:?}"
    );

    // Without RBAC bindings alice may not read secrets: the kubeconfig grants identity, not power.
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client_from(&out).await, "kube-system");
    let err = secrets.list(&Default::default()).await.unwrap_err();
    assert!(
        err.to_string().contains("403") || err.to_string().contains("forbidden"),
        "{err}"
    );
}
