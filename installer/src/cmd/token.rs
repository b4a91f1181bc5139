//! `kinit token`: bootstrap tokens (`kube-system/bootstrap-token-<id>` secrets) that let a new
//! node authenticate until it has its own certificate, as in kubeadm.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use comfy_table::{presets::NOTHING, Table};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kinit_auth::{
    is_valid_bootstrap_group, parse_bootstrap_token, BOOTSTRAP_TOKEN_NAMESPACE,
    BOOTSTRAP_TOKEN_SECRET_PREFIX, BOOTSTRAP_TOKEN_SECRET_TYPE,
};
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use rand::Rng;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use kinit::bootstrap::secret_field;
use kinit::client;
use kinit::output::{emit, OutputFormat};

/// Group kubeadm gives node-join tokens; the default RBAC lets it create node CSRs.
pub const DEFAULT_GROUP: &str = "system:bootstrappers:kubeadm:default-node-token";

/// `kinit token …`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
    /// Admin kubeconfig used to reach the cluster.
    #[arg(long, global = true, default_value = "/etc/kubernetes/admin.conf")]
    kubeconfig: PathBuf,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token (a random one unless TOKEN is given).
    Create(CreateArgs),
    /// List bootstrap tokens.
    List {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Delete bootstrap tokens, by full token or by token ID.
    Delete {
        /// Tokens (`abcdef.0123456789abcdef`) or IDs (`abcdef`).
        #[arg(required = true)]
        tokens: Vec<String>,
    },
    /// Print a new random token without creating it.
    Generate,
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The token to create, `[a-z0-9]{6}.[a-z0-9]{16}`; random when omitted.
    token: Option<String>,
    /// Lifetime, e.g. `24h`, `90m`; `0` never expires.
    #[arg(long, default_value = "24h", value_parser = parse_ttl)]
    ttl: Duration,
    /// Human-readable description stored with the token.
    #[arg(long)]
    description: Option<String>,
    /// Usages: `authentication`, `signing` (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
    usages: Vec<Usage>,
    /// Extra groups the token authenticates as (`system:bootstrappers:…`).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_GROUP)]
    groups: Vec<String>,
    /// Print the `kinit join` command that uses the token instead of just the token.
    #[arg(long)]
    print_join_command: bool,
}

/// What a bootstrap token may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Usage {
    /// Authenticate to the API server as `system:bootstrap:<id>`.
    Authentication,
    /// Sign the `cluster-info` ConfigMap for discovery.
    Signing,
}

impl Usage {
    fn secret_key(self) -> &'static str {
        match self {
            Usage::Authentication => "usage-bootstrap-authentication",
            Usage::Signing => "usage-bootstrap-signing",
        }
    }
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    if value.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value)
        .map_err(|e| format!("`{value}` is not a duration like 24h or 90m: {e}"))
}

/// A random token `[a-z0-9]{6}.[a-z0-9]{16}` from the OS-seeded thread RNG.
pub fn generate_token() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut part = |n: usize| -> String {
        (0..n)
            .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
            .collect()
    };
    let id = part(6);
    let secret = part(16);
    format!("{id}.{secret}")
}

/// The secret that stores `token`.
pub(crate) fn token_secret(
    token: &str,
    ttl: Duration,
    now: OffsetDateTime,
    description: Option<&str>,
    usages: &[Usage],
    groups: &[String],
) -> anyhow::Result<Secret> {
    let (id, secret) = parse_bootstrap_token(token).with_context(|| {
        format!("`{token}` is not a bootstrap token; use the form [a-z0-9]{{6}}.[a-z0-9]{{16}} or omit it for a random one")
    })?;
    for group in groups {
        if !is_valid_bootstrap_group(group) {
            bail!("--groups {group}: extra groups must look like system:bootstrappers:[a-z0-9:-] (e.g. {DEFAULT_GROUP})");
        }
    }
    if usages.is_empty() {
        bail!("--usages: give at least one of authentication, signing");
    }
    let mut data = BTreeMap::from([
        ("token-id".to_string(), id.to_string()),
        ("token-secret".to_string(), secret.to_string()),
    ]);
    if !ttl.is_zero() {
        let expires = now + ttl;
        data.insert("expiration".into(), expires.format(&Rfc3339)?);
    }
    if let Some(d) = description {
        data.insert("description".into(), d.to_string());
    }
    for usage in usages {
        data.insert(usage.secret_key().into(), "true".into());
    }
    if !groups.is_empty() && usages.contains(&Usage::Authentication) {
        data.insert("auth-extra-groups".into(), groups.join(","));
    }
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}")),
            namespace: Some(BOOTSTRAP_TOKEN_NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        type_: Some(BOOTSTRAP_TOKEN_SECRET_TYPE.into()),
        string_data: Some(data),
        ..Secret::default()
    })
}

/// One row of `kinit token list`.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct TokenInfo {
    token: String,
    /// Remaining lifetime, `<forever>` or `<expired>`.
    ttl: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    usages: Vec<String>,
    description: String,
    extra_groups: Vec<String>,
}

fn token_info(secret: &Secret, now: OffsetDateTime) -> Option<TokenInfo> {
    let id = secret_field(secret, "token-id")?;
    let token_secret = secret_field(secret, "token-secret")?;
    let expires = secret_field(secret, "expiration");
    let ttl = match expires
        .as_deref()
        .map(|e| OffsetDateTime::parse(e, &Rfc3339))
    {
        None => "<forever>".to_string(),
        Some(Err(_)) => "<invalid>".to_string(),
        Some(Ok(at)) if at <= now => "<expired>".to_string(),
        Some(Ok(at)) => {
            let secs = (at - now).whole_seconds().max(0) as u64;
            humantime::format_duration(Duration::from_secs(secs))
                .to_string()
                .split(' ')
                .take(2)
                .collect::<String>()
        }
    };
    let usages = ["authentication", "signing"]
        .into_iter()
        .filter(|u| {
            secret_field(secret, &format!("usage-bootstrap-{u}")).as_deref() == Some("true")
        })
        .map(str::to_string)
        .collect();
    Some(TokenInfo {
        token: format!("{id}.{token_secret}"),
        ttl,
        expires,
        usages,
        description: secret_field(secret, "description").unwrap_or_default(),
        extra_groups: secret_field(secret, "auth-extra-groups")
            .map(|g| g.split(',').map(str::to_string).collect())
            .unwrap_or_default(),
    })
}

fn list_table(rows: &Vec<TokenInfo>) -> String {
    let mut table = Table::new();
    table.load_preset(NOTHING);
    table.set_header([
        "TOKEN",
        "TTL",
        "EXPIRES",
        "USAGES",
        "DESCRIPTION",
        "EXTRA GROUPS",
    ]);
    for row in rows {
        table.add_row([
            row.token.clone(),
            row.ttl.clone(),
            row.expires.clone().unwrap_or_else(|| "<never>".into()),
            row.usages.join(","),
            row.description.clone(),
            row.extra_groups.join(","),
        ]);
    }
    table.to_string()
}

/// `host:port` of the API server and the CA hash, for the join command.
pub(crate) fn join_command(
    kubeconfig: &kinit_pki::Kubeconfig,
    token: &str,
) -> anyhow::Result<String> {
    let cluster = kubeconfig
        .current_cluster()
        .context("the kubeconfig has no current cluster")?;
    let endpoint = cluster
        .cluster
        .server
        .strip_prefix("https://")
        .unwrap_or(&cluster.cluster.server)
        .trim_end_matches('/');
    let ca_data = cluster
        .cluster
        .certificate_authority_data
        .as_deref()
        .context(
            "the kubeconfig embeds no certificate-authority-data; the CA hash cannot be computed",
        )?;
    let ca_pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ca_data)
        .context("certificate-authority-data is not base64")?;
    let hash = kinit_pki::ca_cert_hash(&ca_pem)?;
    Ok(format!(
        "kinit join {endpoint} --token {token} --discovery-token-ca-cert-hash {hash}"
    ))
}

/// Runs `kinit token`.
pub fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if let TokenCommand::Generate = args.command {
        println!("{}", generate_token());
        return Ok(ExitCode::SUCCESS);
    }
    client::block_on(async move {
        let kube = client::from_kubeconfig(&args.kubeconfig).await?;
        let secrets: Api<Secret> = Api::namespaced(kube.clone(), BOOTSTRAP_TOKEN_NAMESPACE);
        match args.command {
            TokenCommand::Generate => unreachable!("handled above"),
            TokenCommand::Create(create) => {
                let token = create.token.clone().unwrap_or_else(generate_token);
                let secret = token_secret(
                    &token,
                    create.ttl,
                    OffsetDateTime::now_utc(),
                    create.description.as_deref(),
                    &create.usages,
                    &create.groups,
                )?;
                secrets
                    .create(&PostParams::default(), &secret)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot create bootstrap token secret {}/{}",
                            BOOTSTRAP_TOKEN_NAMESPACE,
                            secret.metadata.name.as_deref().unwrap_or_default()
                        )
                    })?;
                // Joining nodes check cluster-info against the token's signature. The token
                // exists either way: print it, and say why joining with it fails for now.
                if let Err(e) = kinit::bootstrap::resign_cluster_info(&kube).await {
                    eprintln!("warning: cannot sign cluster-info for the new token ({e}); `kinit join` with it fails until cluster-info is signed (re-run `kinit apply` or `kinit token create`)");
                }
                if create.print_join_command {
                    let kubeconfig = kinit_pki::Kubeconfig::load(&args.kubeconfig)?;
                    println!("{}", join_command(&kubeconfig, &token)?);
                } else {
                    println!("{token}");
                }
            }
            TokenCommand::List { output } => {
                let list = kinit::bootstrap::bootstrap_token_secrets(&kube).await?;
                let now = OffsetDateTime::now_utc();
                let rows: Vec<TokenInfo> = list.iter().filter_map(|s| token_info(s, now)).collect();
                emit(&rows, output, list_table)?;
            }
            TokenCommand::Delete { tokens } => {
                for given in &tokens {
                    let id = match parse_bootstrap_token(given) {
                        Some((id, _)) => id,
                        None if given.len() == 6
                            && given
                                .bytes()
                                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
                        {
                            given.as_str()
                        }
                        None => bail!(
                            "`{given}` is neither a bootstrap token nor a 6-character token ID"
                        ),
                    };
                    let name = format!("{BOOTSTRAP_TOKEN_SECRET_PREFIX}{id}");
                    secrets
                        .delete(&name, &DeleteParams::default())
                        .await
                        .with_context(|| {
                            format!(
                                "cannot delete bootstrap token {id} (secret kube-system/{name})"
                            )
                        })?;
                    println!("bootstrap token {id} deleted");
                }
                kinit::bootstrap::resign_cluster_info(&kube)
                    .await
                    .context("cannot drop the deleted tokens' signatures from cluster-info")?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_have_the_bootstrap_shape_and_differ() {
        let a = generate_token();
        let b = generate_token();
        assert!(parse_bootstrap_token(&a).is_some(), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn secret_carries_expiry_usages_and_groups() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let secret = token_secret(
            "abcdef.0123456789abcdef",
            Duration::from_secs(24 * 3600),
            now,
            Some("join"),
            &[Usage::Signing, Usage::Authentication],
            &[DEFAULT_GROUP.to_string()],
        )
        .unwrap();
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("bootstrap-token-abcdef")
        );
        assert_eq!(secret.type_.as_deref(), Some(BOOTSTRAP_TOKEN_SECRET_TYPE));
        let data = secret.string_data.as_ref().unwrap();
        assert_eq!(data["token-secret"], "0123456789abcdef");
        assert_eq!(data["expiration"], "2027-01-16T08:00:00Z");
        assert_eq!(data["usage-bootstrap-authentication"], "true");
        assert_eq!(data["usage-bootstrap-signing"], "true");
        assert_eq!(data["auth-extra-groups"], DEFAULT_GROUP);

        let info = token_info(&secret, now).unwrap();
        assert_eq!(info.ttl, "1day");
        assert_eq!(info.usages, ["authentication", "signing"]);
        let later = now + time::Duration::days(2);
        assert_eq!(token_info(&secret, later).unwrap().ttl, "<expired>");
    }

    #[test]
    fn bad_tokens_groups_and_ttls_are_refused() {
        let now = OffsetDateTime::now_utc();
        let err = token_secret("ABC.def", Duration::ZERO, now, None, &[Usage::Signing], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[a-z0-9]{6}"), "{err}");
        let err = token_secret(
            "abcdef.0123456789abcdef",
            Duration::ZERO,
            now,
            None,
            &[Usage::Authentication],
            &["admins".into()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("system:bootstrappers"), "{err}");
        assert!(parse_ttl("soon").is_err());
        assert_eq!(parse_ttl("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_ttl("90m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn zero_ttl_never_expires() {
        let now = OffsetDateTime::now_utc();
        let secret = token_secret(
            "abcdef.0123456789abcdef",
            Duration::ZERO,
            now,
            None,
            &[Usage::Authentication],
            &[],
        )
        .unwrap();
        assert!(!secret
            .string_data
            .as_ref()
            .unwrap()
            .contains_key("expiration"));
        assert_eq!(token_info(&secret, now).unwrap().ttl, "<forever>");
    }
}
