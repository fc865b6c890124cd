//! `entitlement-gate doctor`: a read-only diagnosis a buyer can paste into a support ticket.
//! It never calls RegisterUsage (which starts metering) unless asked to (`call`).
//!
//! - [`meter`]: the metering sidecar's setup, when one is configured
//! - [`license`]: contract pricing's setup (Anywhere credentials, a checkout), when configured

pub mod license;
pub mod meter;

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use aws_types::os_shim_internal::{Env, Fs};
use hyper_util::client::proxy::matcher::Matcher;
use serde::Serialize;

use crate::aws::anywhere::{self, AnywhereSettings};
use crate::aws::endpoint::{self, EndpointOverride, Pinning, Service};
use crate::aws::identity::{
    self, IdentityError, RegionSource, ResolvedCredentials, ResolvedRegion,
};
use crate::aws::metering::MeteringError;
use crate::aws::retry::RetryPolicy;
use crate::aws::workload::{self, WorkloadError};
use crate::domain::files;
use crate::domain::key::{KeyError, KeyRequest, VerifyingKey};
use crate::domain::mesh::Mesh;
use crate::domain::product_code::{ProductCode, ProductCodeError};
use crate::domain::text;
use crate::domain::time::{epoch_seconds, epoch_text, rfc3339, SystemClock};
use crate::domain::trust::TrustAnchors;
use crate::domain::workload::{WorkloadId, WorkloadIdSource};
use crate::gate::check::{self, CheckConfig, CheckError, Progress};
use crate::license::LicenseError;
use crate::meter::period::Period;
pub use license::LicenseRequest;
pub use meter::MeterRequest;

/// When this binary was built (or `SOURCE_DATE_EPOCH`): a clock before it is certainly wrong.
const BUILD_EPOCH: &str = env!("ENTITLEMENT_GATE_BUILD_EPOCH");

/// What to diagnose: the configuration `check` would run with.
#[derive(Debug, Clone)]
pub struct DoctorRequest {
    pub product_code: Option<String>,
    pub key: KeyRequest,
    pub region_override: Option<String>,
    /// For the RegisterUsage call, if `call` is set.
    pub deadline: Duration,
    pub retry: RetryPolicy,
    pub handoff_dir: Option<PathBuf>,
    /// Bound on the DNS lookup and on the TCP connect to the endpoint, each.
    pub probe_timeout: Duration,
    /// Also call RegisterUsage and verify the token: this starts metering for this workload.
    /// With `meter`, also a MeterUsage DryRun (which records nothing).
    pub call: bool,
    /// The metering sidecar's setup, when it is configured.
    pub meter: Option<MeterRequest>,
    /// What `license check` would check out, when a product ID is configured; with `call`, a
    /// provisional checkout is made and checked in at once.
    pub license: Option<LicenseRequest>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        })
    }
}

/// An error a check failed on, explained to the operator by the caller (the layer that owns
/// operator sentences).
#[derive(Debug)]
pub enum Failure {
    Identity(IdentityError),
    ProductCode(ProductCodeError),
    Key(KeyError),
    Check(CheckError),
    /// License Manager, or the Anywhere credentials it is called with.
    License(LicenseError),
    /// The MeterUsage DryRun.
    Metering(MeteringError),
    /// Another endpoint than AWS's, which a locked build refuses.
    Endpoint(EndpointOverride),
}

/// The result of one check.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For a check that failed on an error: the error, to be explained by [`Diagnosis::explain`].
    #[serde(skip)]
    pub failure: Option<Failure>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
            failure: None,
        }
    }

    fn warn(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Warn,
            detail: detail.into(),
            hint: Some(hint.into()),
            failure: None,
        }
    }

    fn fail(check: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Self {
        Self {
            check,
            status: Status::Fail,
            detail: detail.into(),
            hint: Some(hint.into()),
            failure: None,
        }
    }

    /// A failure on `error`, whose detail becomes the operator sentence for it (which carries
    /// its remedy) once explained.
    fn failed_with(check: &'static str, error: Failure) -> Self {
        Self {
            check,
            status: Status::Fail,
            detail: String::new(),
            hint: None,
            failure: Some(error),
        }
    }
}

/// Every finding, in order.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Diagnosis {
    pub version: String,
    /// Whether RegisterUsage was called.
    pub called_register_usage: bool,
    pub checks: Vec<Finding>,
}

impl Diagnosis {
    pub fn failed(&self) -> bool {
        self.checks
            .iter()
            .any(|finding| finding.status == Status::Fail)
    }

    /// Fills in the detail of every finding that failed on an error, with `sentence(error)`.
    pub fn explain(&mut self, sentence: impl Fn(Failure) -> String) {
        for finding in &mut self.checks {
            if let Some(failure) = finding.failure.take() {
                finding.detail = sentence(failure);
            }
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("serialisable") + "\n"
    }

    pub fn to_text(&self) -> String {
        let mut text = format!("entitlement-gate doctor {}\n", self.version);
        for finding in &self.checks {
            text.push_str(&format!(
                "{:<5} {:<15} {}",
                finding.status, finding.check, finding.detail
            ));
            if let Some(hint) = &finding.hint {
                text.push_str(&format!("; hint: {hint}"));
            }
            text.push('\n');
        }
        if !self.called_register_usage {
            text.push_str(
                "RegisterUsage was not called (it starts metering); add --call to test it.\n",
            );
        }
        let count = |status| self.checks.iter().filter(|f| f.status == status).count();
        text.push_str(&format!(
            "{} ok, {}, {}\n",
            count(Status::Ok),
            counted(count(Status::Warn), "warning"),
            counted(count(Status::Fail), "failure")
        ));
        text
    }
}

/// `1 warning`, `2 warnings`.
fn counted(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// Runs every check; each problem is a finding. The one error: a locked build asked to call
/// AWS (`call`) while another endpoint is configured, refused before anything is called.
pub async fn run(
    request: &DoctorRequest,
    anchors: &TrustAnchors,
) -> Result<Diagnosis, EndpointOverride> {
    let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let pinning = Pinning::of(anchors);
    let mut checks = vec![platform(env)];

    // The SDK reads these files with blocking reads: a FIFO among them would hang the checks
    // below, so they are only consulted when this passes.
    let aws_files_usable = match identity::check_aws_files(env) {
        Ok(()) => {
            checks.push(Finding::ok(
                "aws-files",
                "AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE and AWS_WEB_IDENTITY_TOKEN_FILE are \
                 ordinary files or unset",
            ));
            true
        }
        Err(e) => {
            checks.push(Finding::failed_with("aws-files", Failure::Identity(e)));
            false
        }
    };
    let overridden = match aws_files_usable {
        true => endpoint::configured_override(&Env::real(), &Fs::real()).await,
        false => None,
    };
    // A locked build calls nothing that could reach another endpoint: with --call that is the
    // command's refusal; without, the credential providers (which may call STS) are skipped.
    let refused = match overridden {
        Some(found) if pinning == Pinning::AwsOnly => {
            if request.call {
                return Err(found);
            }
            checks.push(Finding::failed_with("endpoints", Failure::Endpoint(found)));
            true
        }
        other => {
            checks.push(endpoints_finding(aws_files_usable, pinning, other));
            false
        }
    };
    // Outside AWS, contract pricing's credentials come from the buyer's license token.
    let anywhere_settings = request
        .license
        .as_ref()
        .map(|_| AnywhereSettings::from_env(env));
    let anywhere_configured = matches!(anywhere_settings, Some(Ok(Some(_))));
    let region = match aws_files_usable {
        true => identity::resolve_region(request.region_override.as_deref())
            .await
            .or_else(|| {
                anywhere_configured.then(|| ResolvedRegion {
                    region: aws_config::Region::new(anywhere::DEFAULT_REGION),
                    source: RegionSource::AnywhereDefault,
                })
            }),
        false => None,
    };
    checks.push(region_finding(region.as_ref()));
    let credentials = match &region {
        Some(_) if refused => {
            checks.push(Finding::fail(
                "credentials",
                "not resolved: the credential providers could call the refused endpoint",
                "fix endpoints first",
            ));
            None
        }
        Some(region) => {
            let (finding, credentials) = match identity::resolve_credentials(&region.region).await
            {
                Err(IdentityError::NoCredentials { .. }) if anywhere_configured => (
                    Finding::ok(
                        "credentials",
                        "none in the default chain: the buyer's license token is used (see anywhere)",
                    ),
                    None,
                ),
                resolved => credentials_finding(resolved),
            };
            checks.push(finding);
            credentials
        }
        None => {
            checks.push(Finding::fail(
                "credentials",
                "not checked: no Region",
                "fix the Region first",
            ));
            None
        }
    };
    checks.push(web_identity_token(env, SystemTime::now()));
    match &region {
        Some(region) => {
            let endpoint = endpoint::resolve(
                Service::MarketplaceMetering,
                region.region.as_ref(),
                pinning,
            )
            .await;
            checks
                .push(probe_endpoint(&endpoint, &Matcher::from_env(), request.probe_timeout).await);
        }
        None => checks.push(Finding::fail(
            "endpoint",
            "not checked: no Region",
            "fix the Region first",
        )),
    }
    checks.push(mesh_finding(Mesh::detect(env)));
    checks.push(workload_finding(
        workload::resolve(env, request.probe_timeout).await,
    ));
    // A product sold by contract alone has no product code and no RegisterUsage key.
    let hourly = request.license.is_none() || request.product_code.is_some();
    let (product_code, key) = if hourly {
        hourly_setup(request, anchors, &mut checks)
    } else {
        (None, None)
    };
    checks.push(clock(SystemTime::now(), BUILD_EPOCH.parse().unwrap_or(0)));
    if let Some(meter) = &request.meter {
        checks.push(meter::dimensions(&meter.dimensions));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok();
        checks.push(meter::state(meter.state_dir.as_deref(), mounts.as_deref()));
        checks.push(meter::listen(&meter.listen, request.probe_timeout).await);
        if let Some(region) = &region {
            let endpoint = endpoint::resolve(
                Service::MarketplaceMetering,
                region.region.as_ref(),
                pinning,
            )
            .await;
            checks.push(meter::period(meter.period, &endpoint, request.probe_timeout).await);
        }
        if request.call {
            checks.push(match (&product_code, &region, &credentials) {
                (Some(product_code), Some(region), Some(credentials)) => {
                    meter::dry_run(
                        meter::DryRunRequest {
                            product_code,
                            period: Period::from_duration(meter.period).unwrap_or(Period::HOUR),
                            dimensions: &meter.dimensions,
                            region,
                            credentials,
                            retry: request.retry,
                            deadline: request.deadline,
                            pinning,
                        },
                        SystemTime::now(),
                    )
                    .await
                }
                _ => Finding::fail(
                    "meter-dry-run",
                    "not called: the product code, the Region or the credentials are not usable",
                    "fix those first",
                ),
            });
        }
    }
    if let (Some(license), Some(settings)) = (&request.license, anywhere_settings) {
        let (finding, config) = license::product(license, request, anchors);
        checks.push(finding);
        checks.push(license::anywhere(settings, env));
        if request.call {
            match config {
                Some(config) => checks.extend(license::checkout(&config, &SystemClock).await),
                None => checks.push(Finding::fail(
                    "license-checkout",
                    "not called: the product ID or the entitlements are not usable",
                    "fix those first",
                )),
            }
        }
    }
    if request.call && request.license.is_none() {
        checks.push(match (product_code, key) {
            (Some(product_code), Some(key)) => {
                register_usage(&CheckConfig {
                    product_code,
                    key,
                    deadline: request.deadline,
                    retry: request.retry,
                    handoff_dir: request.handoff_dir.clone(),
                    region_override: request.region_override.clone(),
                    pinning,
                })
                .await
            }
            _ => Finding::fail(
                "register-usage",
                "not called: the product code or the key is not usable",
                "fix the configuration first",
            ),
        });
    }
    Ok(Diagnosis {
        version: anchors.version_line(),
        called_register_usage: request.call,
        checks,
    })
}

/// Where the calls go when nothing is refused: AWS, or (an open build) the override.
fn endpoints_finding(
    aws_files_usable: bool,
    pinning: Pinning,
    overridden: Option<EndpointOverride>,
) -> Finding {
    const CHECK: &str = "endpoints";
    match (aws_files_usable, pinning, overridden) {
        (false, ..) => Finding::fail(
            CHECK,
            "not checked: the AWS files are not usable",
            "fix aws-files first",
        ),
        (_, Pinning::Configured, Some(found)) => Finding::ok(
            CHECK,
            format!(
                "{found}: this open build calls that endpoint (an emulator); a locked build \
                 refuses it"
            ),
        ),
        (_, Pinning::Configured, None) => Finding::ok(
            CHECK,
            "AWS's own: no endpoint override in the environment or the AWS config files",
        ),
        (_, Pinning::AwsOnly, _) => Finding::ok(
            CHECK,
            "AWS's own only (locked build): no endpoint override, and TLS must chain to Amazon \
             Trust Services",
        ),
    }
}

/// The product code and the RegisterUsage public key, each with its finding.
fn hourly_setup(
    request: &DoctorRequest,
    anchors: &TrustAnchors,
    checks: &mut Vec<Finding>,
) -> (Option<ProductCode>, Option<VerifyingKey>) {
    let product_code = match anchors.product_code(request.product_code.as_deref()) {
        Ok(code) => {
            let trusted = match anchors.product_codes {
                Some(_) => "in this build's trusted list",
                None => "open build: not checked against a trusted list",
            };
            checks.push(Finding::ok("product-code", format!("{code} ({trusted})")));
            Some(code)
        }
        Err(e) => {
            checks.push(Finding::failed_with(
                "product-code",
                Failure::ProductCode(e),
            ));
            None
        }
    };
    let key = match anchors.verifying_key(&request.key) {
        Ok(key) => {
            checks.push(Finding::ok(
                "public-key",
                format!(
                    "RSA-{} for key version {} from {}",
                    key.bits, key.version, key.source
                ),
            ));
            Some(key)
        }
        Err(e) => {
            checks.push(Finding::failed_with("public-key", Failure::Key(e)));
            None
        }
    };
    (product_code, key)
}

/// Whether a mesh sidecar was injected: the gate's init container must then be exempted.
fn mesh_finding(mesh: Option<Mesh>) -> Finding {
    match mesh {
        Some(mesh) => Finding::warn(
            "mesh",
            format!("an injected {mesh} sidecar (pod annotations)"),
            format!(
                "init containers run before {mesh}'s proxy: set the chart's mesh.type to {} with \
                 a mesh.strategy, or the gate cannot reach AWS (README, Service meshes)",
                mesh.chart_type()
            ),
        ),
        None => Finding::ok(
            "mesh",
            "no Istio or Linkerd sidecar in the pod annotations the chart passes in",
        ),
    }
}

/// Which workload identity the nonce would be bound to, and how strong it is.
fn workload_finding(workload: Result<WorkloadId, WorkloadError>) -> Finding {
    match workload {
        Ok(w) if w.source == WorkloadIdSource::Hostname => Finding::warn(
            "workload",
            format!("identified by {} ({})", w.source, text::quoted(&w.id)),
            "set ENTITLEMENT_GATE_WORKLOAD_ID to the pod UID (the Helm chart does) in the gate and \
             the app container; a hostname can be chosen by whoever writes the pod spec",
        ),
        Ok(w) => Finding::ok(
            "workload",
            format!("identified by {} ({})", w.source, text::quoted(&w.id)),
        ),
        Err(e) => Finding::fail(
            "workload",
            e.to_string(),
            "set ENTITLEMENT_GATE_WORKLOAD_ID in the gate and the app container",
        ),
    }
}

/// Which platform this looks like, from the variables ECS and the EKS webhook set.
pub fn platform(env: impl Fn(&str) -> Option<String>) -> Finding {
    let execution_env = env("AWS_EXECUTION_ENV").unwrap_or_default();
    let kubernetes = env("KUBERNETES_SERVICE_HOST").is_some();
    if execution_env == "AWS_ECS_FARGATE" {
        Finding::ok(
            "platform",
            "ECS on Fargate (AWS_EXECUTION_ENV=AWS_ECS_FARGATE)",
        )
    } else if execution_env == "AWS_ECS_EC2" || env("ECS_CONTAINER_METADATA_URI_V4").is_some() {
        Finding::ok("platform", "ECS on EC2 (ECS container metadata present)")
    } else if kubernetes && env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() {
        Finding::ok(
            "platform",
            "Kubernetes with IRSA (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE set)",
        )
    } else if kubernetes {
        Finding::warn(
            "platform",
            "Kubernetes without IRSA",
            "annotate the pod's service account with eks.amazonaws.com/role-arn; AWS Marketplace meters EKS pods through IRSA",
        )
    } else {
        Finding::warn(
            "platform",
            "not ECS, Fargate or Kubernetes",
            "RegisterUsage answers PlatformNotSupportedException outside ECS, EKS and Fargate; locally, test against metering-emulator",
        )
    }
}

fn region_finding(region: Option<&ResolvedRegion>) -> Finding {
    match region {
        Some(r) if r.source == RegionSource::Override => Finding::warn(
            "region",
            format!("{} from {}", r.region, r.source),
            "on ECS and EKS leave the Region to the platform",
        ),
        Some(r) => Finding::ok("region", format!("{} from {}", r.region, r.source)),
        None => Finding::fail(
            "region",
            "no Region from the environment, the config profile or instance metadata",
            "on ECS and EKS the platform sets AWS_REGION; elsewhere set it",
        ),
    }
}

/// The finding on the resolved credentials, and the credentials for the calls that follow.
fn credentials_finding(
    credentials: Result<ResolvedCredentials, IdentityError>,
) -> (Finding, Option<ResolvedCredentials>) {
    let c = match credentials {
        Ok(c) => c,
        Err(e) => {
            return (
                Finding::failed_with("credentials", Failure::Identity(e)),
                None,
            )
        }
    };
    let finding = if c.source.unsupported_for_metering() {
        Finding::warn(
            "credentials",
            format!("from {}", c.source),
            "AWS Marketplace does not support these for metering; give the workload its own role with IRSA or the ECS task role",
        )
    } else if c.credentials.session_token().is_none() {
        Finding::warn(
            "credentials",
            format!("long-term access keys from {}", c.source),
            "AWS Marketplace does not support long-term keys for metering, and images must never carry them; use IRSA or the ECS task role",
        )
    } else {
        Finding::ok(
            "credentials",
            format!("temporary credentials from {}", c.source),
        )
    };
    (finding, Some(c))
}

/// The IRSA token file and role, checked as far as possible without calling STS: a readable
/// regular file holding a service-account JWT meant for STS and not expired, and a well-formed
/// role ARN. Whether the role trusts this service account only STS can tell (`--call`).
fn web_identity_token(env: impl Fn(&str) -> Option<String>, now: SystemTime) -> Finding {
    const CHECK: &str = "irsa-token";
    let Some(path) = env("AWS_WEB_IDENTITY_TOKEN_FILE") else {
        return if env("KUBERNETES_SERVICE_HOST").is_some() {
            Finding::warn(
                CHECK,
                "AWS_WEB_IDENTITY_TOKEN_FILE is not set",
                "the EKS pod identity webhook sets it when the service account has eks.amazonaws.com/role-arn",
            )
        } else {
            Finding::ok(CHECK, "not used here (not on Kubernetes)")
        };
    };
    let token = match files::read_limited_to_string(
        std::path::Path::new(&path),
        identity::MAX_AWS_FILE_BYTES,
    ) {
        Ok(token) => token,
        Err(e) => {
            return Finding::fail(
                CHECK,
                format!("cannot read {path}: {e}"),
                "check the projected service-account token volume and the container's user",
            )
        }
    };
    let claims =
        match service_account_claims(token.trim()) {
            Ok(claims) => claims,
            Err(problem) => return Finding::fail(
                CHECK,
                format!("{path} is not a service-account token: {problem}"),
                "the EKS pod identity webhook mounts a projected token there; do not replace it",
            ),
        };
    let role = match env("AWS_ROLE_ARN") {
        Some(role) if is_role_arn(&role) => role,
        Some(role) => {
            return Finding::fail(
                CHECK,
                format!(
                    "AWS_ROLE_ARN {} is not an IAM role ARN",
                    text::quoted(&role)
                ),
                "set eks.amazonaws.com/role-arn to arn:aws:iam::<account>:role/<name>",
            )
        }
        None => {
            return Finding::fail(
                CHECK,
                format!("{path} is readable but AWS_ROLE_ARN is not set"),
                "annotate the service account with eks.amazonaws.com/role-arn",
            )
        }
    };
    let now = epoch_seconds(now);
    let summary = format!(
        "{path}: token for {} (audience {}), role {role}",
        text::quoted(&claims.subject),
        text::quoted(&claims.audiences.join(",")),
    );
    if !claims
        .audiences
        .iter()
        .any(|aud| aud == "sts.amazonaws.com")
    {
        return Finding::fail(
            CHECK,
            summary,
            "the token's audience must be sts.amazonaws.com; check the pod identity webhook",
        );
    }
    match claims.expires_at {
        Some(exp) if exp <= now => Finding::fail(
            CHECK,
            format!("{summary}; expired {} s ago", now - exp),
            "the kubelet refreshes projected tokens; check the node's kubelet and clock",
        ),
        Some(exp) => Finding::ok(
            CHECK,
            format!("{summary}; expires in {} s; only STS can tell whether the role trusts it (use --call)", exp - now),
        ),
        None => Finding::ok(CHECK, summary),
    }
}

/// The claims of a Kubernetes service-account token that IRSA depends on.
struct ServiceAccountClaims {
    subject: String,
    audiences: Vec<String>,
    expires_at: Option<u64>,
}

/// Reads (without verifying: only STS can) the payload of a service-account JWT.
fn service_account_claims(token: &str) -> Result<ServiceAccountClaims, &'static str> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).ok_or("it is not a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| "its payload is not base64url")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| "its payload is not JSON")?;
    let subject = claims["sub"]
        .as_str()
        .ok_or("it has no subject")?
        .to_owned();
    let audiences = match &claims["aud"] {
        serde_json::Value::String(aud) => vec![aud.clone()],
        serde_json::Value::Array(auds) => auds
            .iter()
            .filter_map(|aud| aud.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    Ok(ServiceAccountClaims {
        subject,
        audiences,
        expires_at: claims["exp"].as_u64(),
    })
}

/// `arn:<partition>:iam::<12-digit account>:role/<path and name>`.
fn is_role_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "iam", "", account, resource]
        if partition.starts_with("aws")
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && resource.strip_prefix("role/").is_some_and(|name| !name.is_empty()))
}

/// DNS and TCP reachability of the metering endpoint, without sending a request; through the
/// proxy the AWS SDK would use (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, read by the same
/// matcher the SDK's HTTP client uses), if any.
async fn probe_endpoint(url: &str, proxies: &Matcher, timeout: Duration) -> Finding {
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return Finding::fail(
            "endpoint",
            format!("{url} is not a URL the gate can reach"),
            "check AWS_REGION and any AWS_ENDPOINT_URL_MARKETPLACE_METERING",
        );
    };
    let (target, via) = match proxies.intercept(&uri) {
        Some(proxy) => (
            proxy.uri().to_string(),
            format!(" via proxy {}", proxy.uri()),
        ),
        None => (url.to_owned(), String::new()),
    };
    let Some((host, port)) = host_and_port(&target) else {
        return Finding::fail(
            "endpoint",
            format!("{url}{via} is not a URL the gate can reach"),
            "check AWS_REGION, any AWS_ENDPOINT_URL_MARKETPLACE_METERING, and HTTPS_PROXY",
        );
    };
    let egress = if via.is_empty() {
        "check DNS and egress to the metering endpoint (security groups, NAT, VPC endpoint, proxy)"
    } else {
        "check the proxy named by HTTPS_PROXY, or list the endpoint in NO_PROXY"
    };
    let addresses =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port))).await {
            Ok(Ok(addresses)) => addresses.collect::<Vec<_>>(),
            Ok(Err(e)) => {
                return Finding::fail(
                    "endpoint",
                    format!("{url}{via}: cannot resolve {host}: {e}"),
                    egress,
                )
            }
            Err(_) => {
                return Finding::fail(
                    "endpoint",
                    format!("{url}{via}: resolving {host} took over {timeout:?}"),
                    egress,
                )
            }
        };
    let Some(address) = addresses.first() else {
        return Finding::fail(
            "endpoint",
            format!("{url}{via}: {host} has no addresses"),
            egress,
        );
    };
    let started = Instant::now();
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Finding::ok(
            "endpoint",
            format!(
                "{url}{via}: {host} resolves to {}, TCP connect in {} ms",
                address.ip(),
                started.elapsed().as_millis()
            ),
        ),
        Ok(Err(e)) => Finding::fail(
            "endpoint",
            format!("{url}{via}: TCP connect to {address} failed: {e}"),
            egress,
        ),
        Err(_) => Finding::fail(
            "endpoint",
            format!("{url}{via}: TCP connect to {address} took over {timeout:?}"),
            egress,
        ),
    }
}

/// Host and port of an `http(s)://` URL.
fn host_and_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default_port = match scheme {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => default_port,
    };
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// A clock set before this binary was built is wrong; SigV4 and `iat` checks would fail.
fn clock(now: SystemTime, built: u64) -> Finding {
    let secs = epoch_seconds(now);
    let built_at = epoch_text(built);
    if secs < built {
        Finding::fail(
            "clock",
            format!("system clock {} is before this binary was built ({built_at})", rfc3339(now)),
            "fix time synchronisation (NTP, Amazon Time Sync Service); AWS rejects requests signed more than 5 minutes off",
        )
    } else {
        Finding::ok(
            "clock",
            format!("system clock {} (binary built {built_at})", rfc3339(now)),
        )
    }
}

/// The real thing, with `--call`: RegisterUsage and verification, as `check` does them.
async fn register_usage(config: &CheckConfig) -> Finding {
    match check::run(config, &Progress::default()).await {
        Ok(entitlement) => Finding::ok(
            "register-usage",
            format!(
                "entitled: token verified for {} (key version {}, iat {}, {} s behind this clock)",
                entitlement.token.product_code,
                entitlement.token.public_key_version,
                entitlement.token.issued_at,
                epoch_seconds(entitlement.verified_at) as i64 - entitlement.token.issued_at as i64,
            ),
        ),
        Err(e) => Finding::failed_with("register-usage", Failure::Check(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::identity::CredentialSource;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_credential_types::Credentials;
    use std::time::UNIX_EPOCH;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn platform_is_read_from_the_variables_ecs_and_eks_set() {
        let fargate = platform(env_of(&[("AWS_EXECUTION_ENV", "AWS_ECS_FARGATE")]));
        assert_eq!(
            (fargate.status, fargate.detail.starts_with("ECS on Fargate")),
            (Status::Ok, true)
        );
        let ec2 = platform(env_of(&[(
            "ECS_CONTAINER_METADATA_URI_V4",
            "http://169.254.170.2/v4/x",
        )]));
        assert!(ec2.detail.starts_with("ECS on EC2"));
        let irsa = platform(env_of(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
        ]));
        assert_eq!(irsa.status, Status::Ok);
        assert_eq!(
            platform(env_of(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")])).status,
            Status::Warn
        );
        assert_eq!(platform(env_of(&[])).status, Status::Warn);
    }

    #[test]
    fn credentials_warn_on_node_roles_pod_identity_and_long_term_keys() {
        let resolved = |source, session: Option<&str>| {
            let credentials =
                Credentials::new("AKID", "secret", session.map(str::to_owned), None, "test");
            Ok(ResolvedCredentials {
                provider: SharedCredentialsProvider::new(credentials.clone()),
                credentials,
                source,
            })
        };
        assert_eq!(
            credentials_finding(resolved(CredentialSource::WebIdentityToken, Some("t")))
                .0
                .status,
            Status::Ok
        );
        assert_eq!(
            credentials_finding(resolved(CredentialSource::EcsContainer, Some("t")))
                .0
                .status,
            Status::Ok
        );
        assert_eq!(
            credentials_finding(resolved(CredentialSource::InstanceMetadata, Some("t")))
                .0
                .status,
            Status::Warn
        );
        assert_eq!(
            credentials_finding(resolved(CredentialSource::EksPodIdentity, Some("t")))
                .0
                .status,
            Status::Warn
        );
        let (long_term, _) = credentials_finding(resolved(CredentialSource::Environment, None));
        assert_eq!(long_term.status, Status::Warn);
        assert!(long_term.detail.contains("long-term"));
        let (none, _) = credentials_finding(Err(IdentityError::NoCredentials {
            tried: vec![CredentialSource::Environment],
            web_identity_configured: false,
        }));
        assert_eq!(none.status, Status::Fail);
    }

    /// A service-account token as the kubelet projects it (the signature is not checked here).
    fn service_account_token(claims: serde_json::Value) -> String {
        use base64::Engine as _;
        let encode = |value: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        format!(
            "{}.{}.c2lnbmF0dXJl",
            encode(serde_json::json!({ "alg": "RS256" })),
            encode(claims)
        )
    }

    #[test]
    fn the_irsa_line_checks_the_token_file_its_claims_and_the_role() {
        const NOW: u64 = 1_800_000_000;
        let now = UNIX_EPOCH + Duration::from_secs(NOW);
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let good = write(
            "good",
            service_account_token(serde_json::json!({
                "sub": "system:serviceaccount:shop:product", "aud": ["sts.amazonaws.com"], "exp": NOW + 3600
            })),
        );
        let expired = write(
            "expired",
            service_account_token(serde_json::json!({
                "sub": "system:serviceaccount:shop:product", "aud": "sts.amazonaws.com", "exp": NOW - 1
            })),
        );
        let wrong_audience = write(
            "audience",
            service_account_token(
                serde_json::json!({ "sub": "s", "aud": "https://kubernetes.default.svc" }),
            ),
        );
        let garbage = write("garbage", "eyJ...".to_owned());
        let role = "arn:aws:iam::111122223333:role/gate";
        let check = |vars: Vec<(&'static str, String)>| {
            web_identity_token(
                move |name| {
                    vars.iter()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.clone())
                },
                now,
            )
        };
        let token = |path: &str| ("AWS_WEB_IDENTITY_TOKEN_FILE", path.to_owned());
        let role_of = |arn: &str| ("AWS_ROLE_ARN", arn.to_owned());

        let ok = check(vec![token(&good), role_of(role)]);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(ok.detail.contains("system:serviceaccount:shop:product"));
        assert!(ok.detail.contains("expires in 3600 s"));
        assert_eq!(
            check(vec![token(&expired), role_of(role)]).status,
            Status::Fail
        );
        assert_eq!(
            check(vec![token(&wrong_audience), role_of(role)]).status,
            Status::Fail
        );
        assert_eq!(
            check(vec![token(&garbage), role_of(role)]).status,
            Status::Fail
        );
        assert_eq!(check(vec![token(&good)]).status, Status::Fail);
        assert_eq!(
            check(vec![token(&good), role_of("arn:aws:iam::1:role/r")]).status,
            Status::Fail
        );
        assert_eq!(
            check(vec![token("/nonexistent"), role_of(role)]).status,
            Status::Fail
        );
        assert_eq!(
            check(vec![token("/dev/zero"), role_of(role)]).status,
            Status::Fail
        );
        assert_eq!(check(vec![]).status, Status::Ok);
        assert_eq!(
            check(vec![("KUBERNETES_SERVICE_HOST", "h".to_owned())]).status,
            Status::Warn
        );
    }

    #[test]
    fn role_arns_need_a_partition_an_account_and_a_role_name() {
        assert!(is_role_arn("arn:aws:iam::111122223333:role/gate"));
        assert!(is_role_arn("arn:aws-cn:iam::111122223333:role/path/gate"));
        for bad in [
            "arn:aws:iam::1:role/r",
            "arn:aws:iam::111122223333:user/u",
            "arn:aws:iam::111122223333:role/",
            "arn:aws:sts::111122223333:role/r",
            "role/r",
        ] {
            assert!(!is_role_arn(bad), "{bad}");
        }
    }

    #[test]
    fn urls_give_host_and_port() {
        assert_eq!(
            host_and_port("https://metering.marketplace.us-east-1.amazonaws.com"),
            Some(("metering.marketplace.us-east-1.amazonaws.com".into(), 443))
        );
        assert_eq!(
            host_and_port("http://127.0.0.1:8787/"),
            Some(("127.0.0.1".into(), 8787))
        );
        assert_eq!(
            host_and_port("http://[::1]:9000/path"),
            Some(("::1".into(), 9000))
        );
        assert_eq!(host_and_port("http://user@host"), Some(("host".into(), 80)));
        for bad in ["", "metering", "ftp://x", "http://", "http://host:port"] {
            assert_eq!(host_and_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_clock_before_the_build_fails() {
        let built = 1_800_000_000;
        assert_eq!(
            clock(UNIX_EPOCH + Duration::from_secs(built + 10), built).status,
            Status::Ok
        );
        assert_eq!(
            clock(UNIX_EPOCH + Duration::from_secs(built - 10), built).status,
            Status::Fail
        );
    }

    #[test]
    fn text_and_json_reports_carry_every_finding_with_failures_explained() {
        let mut diagnosis = Diagnosis {
            version: "0.1.0 (open build)".into(),
            called_register_usage: false,
            checks: vec![
                Finding::ok("platform", "ECS"),
                Finding::fail("region", "none", "set AWS_REGION"),
                Finding::failed_with(
                    "product-code",
                    Failure::ProductCode(ProductCodeError::Missing),
                ),
            ],
        };
        assert!(diagnosis.failed());
        diagnosis.explain(|failure| match failure {
            Failure::ProductCode(e) => format!("explained: {e}"),
            other => panic!("{other:?}"),
        });
        let text = diagnosis.to_text();
        assert!(
            text.contains("fail  product-code    explained: no product code configured\n"),
            "{text}"
        );
        assert!(text.ends_with("1 ok, 0 warnings, 2 failures\n"), "{text}");
        assert!(text.contains("ok    platform        ECS\n"), "{text}");
        assert!(
            text.contains("fail  region          none; hint: set AWS_REGION\n"),
            "{text}"
        );
        assert!(text.contains("add --call"));
        let json: serde_json::Value = serde_json::from_str(&diagnosis.to_json()).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][1]["hint"], "set AWS_REGION");
        assert!(json["checks"][0].get("hint").is_none());
    }
}
