//! Flags and environment variables of every command, and their conversion into the library's
//! validated configuration before any network call, so a typo never costs a metered call.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use entitlement_gate::aws::endpoint::Pinning;
use entitlement_gate::aws::retry::{Backoff, RetryPolicy};
use entitlement_gate::doctor::{DoctorRequest, LicenseRequest, MeterRequest};
use entitlement_gate::domain::key::{KeyRequest, VerifyingKey};
use entitlement_gate::domain::license::{CheckoutType, EntitlementRequest};
use entitlement_gate::domain::product_code::{ProductCode, ProductCodeError};
use entitlement_gate::domain::trust::TrustAnchors;
use entitlement_gate::gate::check::CheckConfig;
use entitlement_gate::gate::verify::EvidenceRequest;
use entitlement_gate::license::watch::WatchConfig;
use entitlement_gate::license::LicenseConfig;
use entitlement_gate::license::OnLoss;
use entitlement_gate::local_http::server::Listen;
use entitlement_gate::meter::billing::Rounding;
use entitlement_gate::meter::period::Period;
use entitlement_gate::meter::MeterConfig;
use entitlement_gate::outcome::GateError;

/// The longest duration any option takes: a run bound beyond a day is a typo, and larger values
/// overflow the clock arithmetic.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Parses durations as operators write them (`90s`, `2m`, `1m30s`, `2min`, `1.5s`, `1500ms`,
/// `1h`; the `humantime` syntax); a bare number means seconds. Zero and anything above
/// [`MAX_DURATION`] are refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_or_zero(text)?;
    if duration.is_zero() {
        return Err("the duration must be greater than zero".to_owned());
    }
    Ok(duration)
}

/// A duration that may be zero (an option that is off at 0, as `--drain`).
pub fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let duration = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{text:?} is not a duration like 90s, 1m30s or 2h ({e})"))?,
    };
    if duration > MAX_DURATION {
        return Err(format!(
            "{text:?} is longer than the {}h maximum",
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(duration)
}

/// Parses a size as Kubernetes writes it for a volume: bytes, or with a binary suffix
/// (`256Mi`, `1Gi`, `512Ki`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, multiplier) = match text.strip_suffix("Gi") {
        Some(digits) => (digits, 1u64 << 30),
        None => match text.strip_suffix("Mi") {
            Some(digits) => (digits, 1 << 20),
            None => match text.strip_suffix("Ki") {
                Some(digits) => (digits, 1 << 10),
                None => (text, 1),
            },
        },
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} is not a size like 256Mi, 1Gi or 1048576 (bytes)"))
}

/// Which product and which key: shared by every command that checks a token.
#[derive(Debug, Clone, Default, Args)]
pub struct ProductArgs {
    /// AWS Marketplace product code of the paid product.
    #[arg(long, env = "ENTITLEMENT_GATE_PRODUCT_CODE")]
    pub product_code: Option<String>,

    /// Public key version sent to RegisterUsage; selects the key that verifies the token.
    #[arg(long, env = "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i32::MAX as i64))]
    pub public_key_version: u32,

    /// PEM file with the seller's RSA public key for that version.
    #[arg(long, env = "ENTITLEMENT_GATE_PUBLIC_KEY_FILE", value_name = "PATH")]
    pub public_key_file: Option<PathBuf>,

    /// The seller's RSA public key as PEM text (`--public-key "$(cat key.pem)"` works: the
    /// value may start with dashes).
    #[arg(
        long,
        env = "ENTITLEMENT_GATE_PUBLIC_KEY",
        value_name = "PEM",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub public_key: Option<String>,
}

impl ProductArgs {
    pub fn key_request(&self) -> KeyRequest {
        KeyRequest {
            version: self.public_key_version,
            file: self.public_key_file.clone(),
            pem: self.public_key.clone(),
        }
    }

    /// The product code and key, honouring this build's trust anchors.
    pub fn resolve(
        &self,
        anchors: &TrustAnchors,
    ) -> Result<(ProductCode, VerifyingKey), GateError> {
        let product_code = anchors.product_code(self.product_code.as_deref())?;
        let key = anchors.verifying_key(&self.key_request())?;
        Ok((product_code, key))
    }
}

/// Flags and environment variables of `entitlement-gate check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub product: ProductArgs,

    /// Bound on the whole run (Region, credentials, every RegisterUsage attempt, verification).
    #[arg(long, env = "ENTITLEMENT_GATE_DEADLINE", default_value = "120s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,

    #[command(flatten)]
    pub retry: RetryArgs,

    /// Directory (e.g. a shared emptyDir) that receives entitlement.json on success.
    #[arg(long, env = "ENTITLEMENT_GATE_HANDOFF_DIR", value_name = "DIR")]
    pub handoff_dir: Option<PathBuf>,

    /// Region override for local testing only; on ECS/EKS the platform sets AWS_REGION.
    #[arg(long, env = "ENTITLEMENT_GATE_REGION")]
    pub region: Option<String>,
}

/// How each AWS call is retried: shared by every command that calls AWS.
#[derive(Debug, Clone, Args)]
pub struct RetryArgs {
    /// Bound on one AWS call attempt; a slower attempt is retried.
    #[arg(long, env = "ENTITLEMENT_GATE_ATTEMPT_TIMEOUT", default_value = "10s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub attempt_timeout: Duration,

    /// Jitter window before the first retry; it doubles with each retry up to --retry-cap.
    /// The defaults were tuned on a 200-gate storm against the 5 calls/s quota (README).
    #[arg(long, env = "ENTITLEMENT_GATE_RETRY_BASE", default_value = "2s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub retry_base: Duration,

    /// Largest jitter window between retries (each wait is uniform in [0, window]).
    #[arg(long, env = "ENTITLEMENT_GATE_RETRY_CAP", default_value = "8s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub retry_cap: Duration,
}

impl RetryArgs {
    /// The policy of calls made within `deadline`: no attempt outlasts it.
    pub fn policy(&self, deadline: Duration) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: self.attempt_timeout.min(deadline),
            backoff: Backoff {
                base: self.retry_base,
                cap: self.retry_cap.max(self.retry_base),
            },
        }
    }
}

impl CheckArgs {
    pub fn retry(&self) -> RetryPolicy {
        self.retry.policy(self.deadline)
    }

    /// The validated configuration of one `check` run.
    pub fn to_config(&self, anchors: &TrustAnchors) -> Result<CheckConfig, GateError> {
        let (product_code, key) = self.product.resolve(anchors)?;
        Ok(CheckConfig {
            product_code,
            key,
            deadline: self.deadline,
            retry: self.retry(),
            handoff_dir: self.handoff_dir.clone(),
            region_override: self.region.clone(),
            pinning: Pinning::of(anchors),
        })
    }
}

/// Flags of `entitlement-gate exec`: those of `check`, then the program after `--`.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    /// The program to run once the buyer is entitled, and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub program: Vec<OsString>,
}

/// Flags and environment variables of `entitlement-gate verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub product: ProductArgs,

    /// The handoff file to check [default: <handoff-dir>/entitlement.json].
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    pub handoff: Option<PathBuf>,

    /// Directory holding entitlement.json (the same variable the gate writes with).
    #[arg(long, env = "ENTITLEMENT_GATE_HANDOFF_DIR", value_name = "DIR")]
    pub handoff_dir: Option<PathBuf>,

    /// A token (JWT) to check instead of a handoff; `-` reads it from stdin, as does giving
    /// neither a token nor a handoff. Needs --nonce.
    #[arg(long, value_name = "JWT")]
    pub token: Option<String>,

    /// The nonce the token was issued for.
    #[arg(long)]
    pub nonce: Option<String>,

    /// Bound on the whole re-check (including the ECS task metadata lookup on ECS).
    #[arg(long, env = "ENTITLEMENT_GATE_DEADLINE", default_value = "10s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,

    /// Refuse tokens issued longer ago than this (e.g. 1h).
    #[arg(long, env = "ENTITLEMENT_GATE_MAX_AGE", value_parser = parse_duration, value_name = "DURATION")]
    pub max_age: Option<Duration>,
}

impl VerifyArgs {
    pub fn evidence_request(&self) -> EvidenceRequest {
        EvidenceRequest {
            handoff: self.handoff.clone(),
            handoff_dir: self.handoff_dir.clone(),
            token: self.token.clone(),
            nonce: self.nonce.clone(),
        }
    }
}

/// Flags of `entitlement-gate doctor`: those of `check`, plus what to report and how.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub check: CheckArgs,

    /// Also call RegisterUsage and verify the token. This starts metering for this workload.
    #[arg(long)]
    pub call: bool,

    /// Report format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,

    /// Bound on the DNS lookup and on the TCP connect to the endpoint, each.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub probe_timeout: Duration,

    /// Also check the metering sidecar's setup, with its dimensions (repeatable; the variable
    /// is a comma list): as the meter container sees them.
    #[arg(
        long = "dimension",
        env = "ENTITLEMENT_GATE_DIMENSIONS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub dimensions: Vec<String>,

    /// The metering sidecar's state directory.
    #[arg(long, env = "ENTITLEMENT_GATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The metering sidecar's listen address: host:port, or unix:/path.
    #[arg(
        long,
        env = "ENTITLEMENT_GATE_METER_LISTEN",
        default_value = "127.0.0.1:8478",
        value_name = "ADDR"
    )]
    pub listen: Listen,

    /// The metering sidecar's period (1h against AWS; an emulator's own period against one).
    #[arg(long, env = "ENTITLEMENT_GATE_METER_PERIOD", default_value = "1h",
          value_parser = parse_duration, value_name = "DURATION")]
    pub period: Duration,

    /// Also check contract pricing (License Manager): the product ID `license check` uses.
    #[arg(long, env = "ENTITLEMENT_GATE_PRODUCT_ID")]
    pub product_id: Option<String>,

    /// The entitlements `license check` checks out (repeatable; the variable is a comma list).
    #[arg(
        long = "entitlement",
        env = "ENTITLEMENT_GATE_ENTITLEMENTS",
        value_name = "SPEC",
        value_delimiter = ','
    )]
    pub entitlements: Vec<EntitlementRequest>,

    /// The checkout type `license check` uses; with --call only a provisional checkout is made
    /// (and checked in at once).
    #[arg(long, env = "ENTITLEMENT_GATE_CHECKOUT_TYPE", value_enum,
          default_value_t = CheckoutKind::Provisional)]
    pub checkout_type: CheckoutKind,

    /// The NodeId sent with the checkout.
    #[arg(long, env = "ENTITLEMENT_GATE_NODE_ID")]
    pub node_id: Option<String>,
}

impl DoctorArgs {
    pub fn to_request(&self) -> DoctorRequest {
        DoctorRequest {
            product_code: self.check.product.product_code.clone(),
            key: self.check.product.key_request(),
            region_override: self.check.region.clone(),
            deadline: self.check.deadline,
            retry: self.check.retry(),
            handoff_dir: self.check.handoff_dir.clone(),
            probe_timeout: self.probe_timeout,
            call: self.call,
            meter: (!self.dimensions.is_empty()).then(|| MeterRequest {
                dimensions: self.dimensions.clone(),
                state_dir: self.state_dir.clone(),
                listen: self.listen.clone(),
                period: self.period,
            }),
            license: self.product_id.as_ref().map(|_| LicenseRequest {
                product_id: self.product_id.clone(),
                entitlements: self.entitlements.clone(),
                checkout_type: self.checkout_type.into(),
                node_id: self.node_id.clone(),
            }),
        }
    }
}

/// Flags and environment variables of `entitlement-gate meter`, the metering sidecar.
#[derive(Debug, Clone, Args)]
pub struct MeterArgs {
    /// AWS Marketplace product code of the paid product.
    #[arg(long, env = "ENTITLEMENT_GATE_PRODUCT_CODE")]
    pub product_code: Option<String>,

    /// A dimension API name of the product (repeatable; the variable is a comma list).
    #[arg(
        long = "dimension",
        env = "ENTITLEMENT_GATE_DIMENSIONS",
        value_name = "NAME",
        value_delimiter = ',',
        required = true
    )]
    pub dimensions: Vec<String>,

    /// Where the local API listens: host:port, or unix:/path for a Unix socket.
    #[arg(
        long,
        env = "ENTITLEMENT_GATE_METER_LISTEN",
        default_value = "127.0.0.1:8478",
        value_name = "ADDR"
    )]
    pub listen: Listen,

    /// Where acknowledged usage lives (a volume that outlives the container: emptyDir or PVC).
    #[arg(long, env = "ENTITLEMENT_GATE_STATE_DIR", value_name = "DIR")]
    pub state_dir: PathBuf,

    /// The metering period: 1h against AWS; shorter only when the endpoint is overridden
    /// (emulator testing).
    #[arg(long, env = "ENTITLEMENT_GATE_METER_PERIOD", default_value = "1h",
          value_parser = parse_duration, value_name = "DURATION")]
    pub period: Duration,

    /// Give every dimension a record every closed hour, zero when unused (the default).
    #[arg(long, env = "ENTITLEMENT_GATE_SEND_ZERO", default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true",
          value_name = "BOOL")]
    pub send_zero: bool,

    /// Send records only for dimensions with usage.
    #[arg(long, overrides_with = "send_zero")]
    pub no_send_zero: bool,

    /// How long a report's id is remembered, so that a resend after a lost answer counts once
    /// (at least this long, at most twice; at most the carry window, 5.5 periods)
    /// [default: 1h, or the carry window if shorter].
    #[arg(long, env = "ENTITLEMENT_GATE_METER_ID_WINDOW",
          value_parser = parse_duration, value_name = "DURATION")]
    pub id_window: Option<Duration>,

    /// The most the state may hold: past it, new reports get HTTP 503 with Retry-After (nothing
    /// acknowledged is dropped). Keep it well under the state volume's size (the chart's
    /// emptyDir sizeLimit is twice it).
    #[arg(long, env = "ENTITLEMENT_GATE_METER_STATE_BUDGET", default_value = "256Mi",
          value_parser = parse_bytes, value_name = "SIZE")]
    pub state_budget: u64,

    /// At shutdown, what the last hour does with the fraction left under one unit: down
    /// (not billed; it stays in the state for a restart on it) or up (billed as one unit, the
    /// difference kept as a credit for a restart on it).
    #[arg(long, env = "ENTITLEMENT_GATE_FINAL_FRACTION", value_enum,
          default_value_t = FinalFraction::Down)]
    pub final_fraction: FinalFraction,

    /// After SIGTERM, how long to send what is unsent; the pod's terminationGracePeriodSeconds
    /// (ECS stopTimeout) must exceed it.
    #[arg(long, env = "ENTITLEMENT_GATE_SHUTDOWN_GRACE", default_value = "25s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,

    /// After SIGTERM, keep accepting usage this long before closing the hour: for a sidecar
    /// that is stopped together with the app (a regular container), so that the app's last
    /// reports still land. 0 for a native sidecar or ECS, which stop the app first.
    #[arg(long, env = "ENTITLEMENT_GATE_METER_DRAIN", default_value = "0s",
          value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub drain: Duration,

    /// Bound on start-up: Region, credentials and the MeterUsage DryRun.
    #[arg(long, env = "ENTITLEMENT_GATE_DEADLINE", default_value = "120s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,

    #[command(flatten)]
    pub retry: RetryArgs,

    /// Region override for local testing only; on ECS/EKS the platform sets AWS_REGION.
    #[arg(long, env = "ENTITLEMENT_GATE_REGION")]
    pub region: Option<String>,
}

impl MeterArgs {
    /// The validated configuration of the sidecar. `endpoint_overridden`: whether the SDK will
    /// call another Metering endpoint than AWS's (an emulator), the only case a period other
    /// than an hour makes sense.
    pub fn to_config(
        &self,
        anchors: &TrustAnchors,
        endpoint_overridden: bool,
    ) -> Result<MeterConfig, GateError> {
        let product_code = anchors.product_code(self.product_code.as_deref())?;
        let mut dimensions = BTreeSet::new();
        for name in &self.dimensions {
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 255 {
                return Err(GateError::InvalidSetting {
                    setting: "--dimension (ENTITLEMENT_GATE_DIMENSIONS)",
                    problem: format!("{name:?} is not a dimension name of 1 to 255 characters"),
                    remedy: "list the product's dimension API names, comma-separated",
                });
            }
            dimensions.insert(name.to_owned());
        }
        let period = Period::from_duration(self.period)
            .filter(|period| *period == Period::HOUR || endpoint_overridden)
            .ok_or(GateError::InvalidSetting {
                setting: "--period (ENTITLEMENT_GATE_METER_PERIOD)",
                problem: format!(
                    "{} is not allowed: MeterUsage meters by the hour",
                    humantime::format_duration(self.period)
                ),
                remedy: "leave the period at 1h; shorter whole-second periods are for an \
                         emulator, with AWS_ENDPOINT_URL_MARKETPLACE_METERING set",
            })?;
        let carry_window = period
            .carry_after(0)
            .duration_since(period.start(0))
            .unwrap_or_default();
        let id_window = match self.id_window {
            None => carry_window.min(DEFAULT_ID_WINDOW),
            Some(window) if window <= carry_window => window,
            Some(window) => {
                return Err(GateError::InvalidSetting {
                    setting: "--id-window (ENTITLEMENT_GATE_METER_ID_WINDOW)",
                    problem: format!(
                        "{} is longer than the carry window of {} (5.5 periods)",
                        humantime::format_duration(window),
                        humantime::format_duration(carry_window)
                    ),
                    remedy: "use at most the carry window; 1h is the default",
                })
            }
        };
        Ok(MeterConfig {
            product_code,
            dimensions,
            listen: self.listen.clone(),
            state_dir: self.state_dir.clone(),
            period,
            send_zero: self.send_zero && !self.no_send_zero,
            id_window,
            state_budget: self.state_budget,
            final_fraction: match self.final_fraction {
                FinalFraction::Down => Rounding::Down,
                FinalFraction::Up => Rounding::Up,
            },
            shutdown_grace: self.shutdown_grace,
            drain: self.drain,
            deadline: self.deadline,
            retry: self.retry.policy(self.deadline),
            region_override: self.region.clone(),
            pinning: Pinning::of(anchors),
        })
    }
}

/// The id window when none is given (or the carry window, if shorter).
const DEFAULT_ID_WINDOW: Duration = Duration::from_secs(3600);

/// `--final-fraction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FinalFraction {
    Down,
    Up,
}

/// Flags shared by `license check` and `license watch`: what to check out.
#[derive(Debug, Clone, Args)]
pub struct LicenseArgs {
    /// AWS Marketplace product ID (not the product code), sent as ProductSKU.
    #[arg(long, env = "ENTITLEMENT_GATE_PRODUCT_ID")]
    pub product_id: Option<String>,

    /// An entitlement to check out, NAME[=VALUE][:UNIT] (repeatable; the variable is a comma
    /// list): a tier or feature alone (unit None), or a count, e.g. ReadOnlyUsers=1:Count.
    #[arg(
        long = "entitlement",
        env = "ENTITLEMENT_GATE_ENTITLEMENTS",
        value_name = "SPEC",
        value_delimiter = ',',
        required = true
    )]
    pub entitlements: Vec<EntitlementRequest>,

    /// provisional: floating seats and tiers, returned at the end; perpetual: drawdown,
    /// consumed for good.
    #[arg(long, env = "ENTITLEMENT_GATE_CHECKOUT_TYPE", value_enum,
          default_value_t = CheckoutKind::Provisional)]
    pub checkout_type: CheckoutKind,

    /// The NodeId sent with the checkout [default: the workload identity, e.g. the pod UID].
    #[arg(long, env = "ENTITLEMENT_GATE_NODE_ID")]
    pub node_id: Option<String>,

    /// Bound on start-up: Region, credentials and the checkout with its retries.
    #[arg(long, env = "ENTITLEMENT_GATE_DEADLINE", default_value = "120s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,

    #[command(flatten)]
    pub retry: RetryArgs,

    /// Directory (the shared emptyDir) that receives license.json.
    #[arg(long, env = "ENTITLEMENT_GATE_HANDOFF_DIR", value_name = "DIR")]
    pub handoff_dir: Option<PathBuf>,

    /// Region override for local testing only (outside AWS the default is us-east-1).
    #[arg(long, env = "ENTITLEMENT_GATE_REGION")]
    pub region: Option<String>,
}

/// `--checkout-type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckoutKind {
    Provisional,
    Perpetual,
}

impl From<CheckoutKind> for CheckoutType {
    fn from(kind: CheckoutKind) -> CheckoutType {
        match kind {
            CheckoutKind::Provisional => CheckoutType::Provisional,
            CheckoutKind::Perpetual => CheckoutType::Perpetual,
        }
    }
}

impl LicenseArgs {
    /// The validated configuration; `workload_id` is the default NodeId.
    pub fn to_config(
        &self,
        anchors: &TrustAnchors,
        workload_id: Option<String>,
    ) -> Result<LicenseConfig, GateError> {
        const SETTING: &str = "--product-id (ENTITLEMENT_GATE_PRODUCT_ID)";
        let product_id = anchors
            .product_code(self.product_id.as_deref())
            .map_err(|error| {
                let (problem, remedy) = match error {
                    ProductCodeError::Missing => (
                        "not set".to_owned(),
                        "set it to the product ID from the AWS Marketplace Management Portal \
                         (Products, Container, the product's ID; not its product code)",
                    ),
                    ProductCodeError::Invalid { code, reason } => (
                        format!("{code:?} is invalid: {reason}"),
                        "use the product ID from the AWS Marketplace Management Portal",
                    ),
                    ProductCodeError::Untrusted { code } => (
                        format!("{code:?} is not one this build trusts"),
                        "use the product ID this locked image was built for",
                    ),
                };
                GateError::InvalidSetting {
                    setting: SETTING,
                    problem,
                    remedy,
                }
            })?;
        Ok(LicenseConfig {
            product_id,
            entitlements: self.entitlements.clone(),
            checkout_type: self.checkout_type.into(),
            node_id: self.node_id.clone().or(workload_id),
            handoff_dir: self.handoff_dir.clone(),
            deadline: self.deadline,
            retry: self.retry.policy(self.deadline),
            region_override: self.region.clone(),
            pinning: Pinning::of(anchors),
        })
    }
}

/// Flags of `entitlement-gate license watch`, the sidecar.
#[derive(Debug, Clone, Args)]
pub struct LicenseWatchArgs {
    #[command(flatten)]
    pub license: LicenseArgs,

    /// How often the license is re-validated (at most daily; at least a minute against AWS).
    #[arg(long, env = "ENTITLEMENT_GATE_LICENSE_INTERVAL", default_value = "15m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub interval: Duration,

    /// When the license is lost: exit (the workload restarts into the start-up gate) or report
    /// (keep running; status, metrics and license.json say so).
    #[arg(long, env = "ENTITLEMENT_GATE_ON_LOSS", value_enum, default_value_t = LossPolicy::Exit)]
    pub on_loss: LossPolicy,

    /// How long the last good license is kept while AWS cannot confirm it.
    #[arg(long, env = "ENTITLEMENT_GATE_LOSS_GRACE", default_value = "30m",
          value_parser = parse_duration_or_zero, value_name = "DURATION")]
    pub loss_grace: Duration,

    /// Where the local API listens: host:port, or unix:/path.
    #[arg(
        long,
        env = "ENTITLEMENT_GATE_LICENSE_LISTEN",
        default_value = "127.0.0.1:8479",
        value_name = "ADDR"
    )]
    pub listen: Listen,

    /// After SIGTERM, how long checking the seat in may take; the pod's
    /// terminationGracePeriodSeconds (ECS stopTimeout) must exceed it.
    #[arg(long, env = "ENTITLEMENT_GATE_SHUTDOWN_GRACE", default_value = "10s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,
}

/// `--on-loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossPolicy {
    Exit,
    Report,
}

impl LicenseWatchArgs {
    /// The validated configuration. `endpoint_overridden`: an emulator, the only case an
    /// interval under a minute makes sense.
    pub fn to_config(
        &self,
        anchors: &TrustAnchors,
        workload_id: Option<String>,
        endpoint_overridden: bool,
    ) -> Result<WatchConfig, GateError> {
        if self.interval < Duration::from_secs(60) && !endpoint_overridden {
            return Err(GateError::InvalidSetting {
                setting: "--interval (ENTITLEMENT_GATE_LICENSE_INTERVAL)",
                problem: format!(
                    "{} is too short for AWS License Manager's rate limits",
                    humantime::format_duration(self.interval)
                ),
                remedy: "use at least 1m (15m is AWS's advice; a day is enough outside AWS)",
            });
        }
        Ok(WatchConfig {
            license: self.license.to_config(anchors, workload_id)?,
            interval: self.interval,
            on_loss: match self.on_loss {
                LossPolicy::Exit => OnLoss::Exit,
                LossPolicy::Report => OnLoss::Report,
            },
            loss_grace: self.loss_grace,
            listen: self.listen.clone(),
            shutdown_grace: self.shutdown_grace,
        })
    }
}

/// Flags of `entitlement-gate health`: is a sidecar (the meter, the license watch) ready?
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The sidecar's listen address: host:port, or unix:/path.
    #[arg(long = "url", env = "ENTITLEMENT_GATE_METER_LISTEN", default_value = "127.0.0.1:8478",
          value_parser = parse_health_url, value_name = "URL")]
    pub listen: Listen,

    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
}

/// `http://host:port[/...]`, `host:port` or `unix:/path`.
fn parse_health_url(text: &str) -> Result<Listen, String> {
    let bare = text
        .strip_prefix("http://")
        .map_or(text, |rest| rest.split('/').next().unwrap_or(rest));
    bare.parse()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_what_operators_write() {
        for (text, expected) in [
            ("90s", Duration::from_secs(90)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1m30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("1500ms", Duration::from_millis(1500)),
            ("1h", Duration::from_secs(3600)),
            ("45", Duration::from_secs(45)),
            (" 24h ", MAX_DURATION),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text:?}");
        }
        for bad in ["", "s", "0s", "0", "-1s", "1.5", "ten", "25h", "2d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        for (text, bytes) in [
            ("256Mi", 256 << 20),
            ("1Gi", 1 << 30),
            ("4Ki", 4096),
            ("1000", 1000),
        ] {
            assert_eq!(parse_bytes(text), Ok(bytes), "{text}");
        }
        for bad in ["", "0", "1G", "-1Mi", "Mi", "99999999999Gi"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        let huge = parse_duration("18446744073709551615s").unwrap_err();
        assert!(huge.contains("24h maximum"), "{huge}");
        // Where 0 means off.
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_zero("3s"), Ok(Duration::from_secs(3)));
        assert!(parse_duration_or_zero("25h").is_err());
    }

    #[test]
    fn the_attempt_timeout_never_exceeds_the_deadline() {
        let args = CheckArgs {
            product: ProductArgs::default(),
            deadline: Duration::from_secs(2),
            retry: RetryArgs {
                attempt_timeout: Duration::from_secs(10),
                retry_base: Duration::from_secs(3),
                retry_cap: Duration::from_secs(1),
            },
            handoff_dir: None,
            region: None,
        };
        let retry = args.retry();
        assert_eq!(retry.attempt_timeout, Duration::from_secs(2));
        assert_eq!(retry.backoff.cap, Duration::from_secs(3), "cap >= base");
    }
}
