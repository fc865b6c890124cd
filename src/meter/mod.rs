//! The metering sidecar: reports custom-dimension usage with MeterUsage, once per hour per
//! dimension, durably, losing and duplicating nothing.
//!
//! Local clients `POST /v1/usage`; each report is acknowledged only once it is durable in the
//! state directory ([`store`], written by one [`writer`] thread with group commit). When an hour
//! closes, [`sender`] sends one MeterUsage record per dimension with an idempotent
//! `ClientToken`; on SIGTERM the open hour closes early and everything unsent is sent within
//! the shutdown grace. [`api`] serves the HTTP API and [`metrics`] its counters.
//!
//! - [`report`]: what a client may report, by MeterUsage's rules
//! - [`billing`]: an hour's whole units, allocations and carried fraction, exactly
//! - [`period`]: the metering hour (shorter only against an emulator)

pub mod api;
pub mod billing;
pub mod metrics;
pub mod period;
pub mod report;
pub mod sender;
pub mod store;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::aws::endpoint::{self, EndpointOverride, Pinning};
use crate::aws::identity::{self, IdentityError};
use crate::aws::metering::{self, MeterUsageCall, MeteringError};
use crate::aws::retry::RetryPolicy;
use crate::domain::product_code::ProductCode;
use crate::domain::quantity::{Micros, Quantity};
use crate::domain::time::Clock;
use crate::local_http::server::{Listen, Listener};
use api::{Api, Readiness};
use billing::Rounding;
use metrics::Metrics;
use period::Period;
use sender::{Destination, Limit, Sender};
use store::{Ledger, Store, StoreError};
use writer::{Budget, Closing, Refused, Writer};

/// A validated configuration of the metering sidecar.
#[derive(Debug, Clone)]
pub struct MeterConfig {
    pub product_code: ProductCode,
    /// The dimension API names of the product.
    pub dimensions: BTreeSet<String>,
    pub listen: Listen,
    pub state_dir: PathBuf,
    pub period: Period,
    /// Give every dimension a record every closed hour, zero when unused.
    pub send_zero: bool,
    /// How long a report ID is remembered (at least; at most twice that).
    pub id_window: Duration,
    /// What the last hour closed at shutdown does with the fraction left under one unit.
    pub final_fraction: Rounding,
    /// The most the state may hold, in bytes, before new reports are refused.
    pub state_budget: u64,
    /// How long, after SIGTERM, the sidecar may take to send what is unsent.
    pub shutdown_grace: Duration,
    /// How long, after SIGTERM, the sidecar still accepts usage (before the grace starts).
    pub drain: Duration,
    /// Bound on start-up (Region, credentials, the DryRun).
    pub deadline: Duration,
    pub retry: RetryPolicy,
    /// For local testing only: on ECS and EKS the platform sets the Region.
    pub region_override: Option<String>,
    /// Whether MeterUsage may go elsewhere than AWS (an open build's emulator).
    pub pinning: Pinning,
}

/// Why the sidecar did not start, or stopped with usage unsent.
#[derive(Debug, thiserror::Error)]
pub enum MeterError {
    /// A locked build is being pointed at another endpoint than AWS's.
    #[error("{0}, and this locked build calls AWS's own endpoints only")]
    EndpointOverridden(EndpointOverride),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The start-up DryRun was refused. Boxed: the gate's errors stay small enough to return.
    #[error(transparent)]
    Metering(Box<MeteringError>),
    #[error("cannot listen on {listen}: {reason}")]
    Listen { listen: String, reason: String },
    /// The endpoint is a metering-emulator with another period: every hour of this sidecar
    /// would be refused there as a duplicate.
    #[error("the metering endpoint {endpoint} is a metering-emulator with a {emulator} period, and this sidecar's period is {meter}")]
    PeriodMismatch {
        endpoint: String,
        emulator: Period,
        meter: Period,
    },
    #[error("the {deadline:?} start-up deadline passed while {phase}")]
    StartupDeadline {
        phase: &'static str,
        deadline: Duration,
    },
    /// Stopped with acknowledged usage that was not billed. Boxed: the gate's errors stay small
    /// enough to return.
    #[error(transparent)]
    Unbilled(Box<Unbilled>),
    #[error(transparent)]
    Writer(#[from] Refused),
    /// The state stayed unwritable (a full or failing disk) for the writer's limit.
    #[error("the state in {} could not be written for {} s: {reason}", state_dir.display(), after.as_secs())]
    StateUnwritable {
        state_dir: PathBuf,
        after: Duration,
        reason: String,
    },
}

impl From<MeteringError> for MeterError {
    fn from(error: MeteringError) -> Self {
        MeterError::Metering(Box::new(error))
    }
}

/// Acknowledged usage a stopping sidecar did not bill.
#[derive(Debug, thiserror::Error)]
pub enum Unbilled {
    #[error(
        "{quantity} acknowledged units ({hours} hour records) were still unsent when the shutdown grace ended"
    )]
    Unsent {
        hours: usize,
        quantity: Micros,
        state_dir: PathBuf,
    },
    /// Everything was sent, but AWS refused some acknowledged usage as a duplicate or may not
    /// hold it (in doubt).
    #[error("{refused} acknowledged units were refused by AWS as duplicates and {in_doubt} are in doubt")]
    Refused { refused: Micros, in_doubt: Micros },
}

impl From<Unbilled> for MeterError {
    fn from(unbilled: Unbilled) -> Self {
        MeterError::Unbilled(Box::new(unbilled))
    }
}

/// Why `health` found the sidecar not ready.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{url} answered HTTP {status}")]
    NotReady { url: String, status: u16 },
    #[error("{url} did not answer: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Asks the sidecar listening on `listen` whether it is ready (`GET /readyz` answers 200).
pub async fn health(listen: &Listen, timeout: Duration) -> Result<(), HealthError> {
    let (target, url) = listen.target("/readyz");
    match crate::local_http::client::get(&target, timeout, 4096).await {
        Ok(answer) if answer.status == 200 => Ok(()),
        Ok(answer) => Err(HealthError::NotReady {
            url,
            status: answer.status,
        }),
        Err(reason) => Err(HealthError::Unreachable { url, reason }),
    }
}

/// How the sidecar ended after a stop request: everything sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub signal: &'static str,
    /// Hour records settled during the shutdown flush.
    pub flushed: usize,
    /// Per dimension, where every acknowledged unit is.
    pub ledger: BTreeMap<String, Ledger>,
}

/// A started sidecar: ready, taking usage and sending closed hours.
pub struct Sidecar {
    config: MeterConfig,
    writer: Writer,
    reader: store::Reader,
    readiness: Arc<Readiness>,
    sender: Arc<Sender>,
    serving: tokio::task::JoinHandle<()>,
    ticking: tokio::task::JoinHandle<()>,
    sending: tokio::task::JoinHandle<()>,
    stop_sending: tokio::sync::oneshot::Sender<()>,
}

/// Starts the sidecar: opens the state and listens at once (answering 503 until ready, so that
/// probes get an answer), then proves the MeterUsage permission, the product code and every
/// dimension with a DryRun (all within `config.deadline`), and becomes ready.
pub async fn start(config: &MeterConfig, clock: Arc<dyn Clock>) -> Result<Sidecar, MeterError> {
    // Configuration first: the AWS files (which the SDK reads with blocking reads) and a locked
    // build's endpoints, before the state is opened or anything listens.
    identity::check_aws_files(|name| std::env::var(name).ok())?;
    endpoint::refuse_overrides(config.pinning)
        .await
        .map_err(MeterError::EndpointOverridden)?;
    let deadline = Instant::now() + config.deadline;
    let bound = |phase: &'static str| {
        move |_| MeterError::StartupDeadline {
            phase,
            deadline: config.deadline,
        }
    };
    let store = Store::open(
        &config.state_dir,
        config.product_code.as_str(),
        config.period,
        config.id_window,
    )?;
    tracing::info!(state_dir = %config.state_dir.display(), instance_id = %store.instance_id,
        "opened the metering state");
    let reader = store.reader();
    let instance_id = store.instance_id.clone();
    let writer = Writer::start(
        store,
        Closing {
            dimensions: config.dimensions.clone(),
            send_zero: config.send_zero,
            final_fraction: config.final_fraction,
        },
        Budget::new(config.state_budget),
        clock.clone(),
    );
    // Hours that ended while the sidecar was down close now, before the first report.
    writer.tick().await?;
    let metrics = Arc::new(Metrics::new(&config.dimensions));
    let readiness = Arc::new(Readiness::default());
    let api = Arc::new(Api {
        writer: writer.clone(),
        reader: reader.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        dimensions: config.dimensions.clone(),
        period: config.period,
        clock: clock.clone(),
        instance_id: instance_id.clone(),
        product_code: config.product_code.to_string(),
        state_budget: config.state_budget,
    });
    let listener = Listener::bind(&config.listen)
        .await
        .map_err(|e| MeterError::Listen {
            listen: config.listen.to_string(),
            reason: e.to_string(),
        })?;
    let serving = tokio::spawn(listener.serve(Arc::new(move |request| {
        let api = api.clone();
        async move { api::handle(&api, request).await }
    })));

    let region = tokio::time::timeout_at(
        deadline,
        identity::resolve_region(config.region_override.as_deref()),
    )
    .await
    .map_err(bound("resolving the AWS Region"))?
    .ok_or(IdentityError::NoRegion)?;
    let credentials =
        tokio::time::timeout_at(deadline, identity::resolve_credentials(&region.region))
            .await
            .map_err(bound("resolving AWS credentials"))??;
    tracing::info!(region = %region.region, credentials = %credentials.source, "resolved the AWS identity");
    if credentials.source.unsupported_for_metering() {
        tracing::warn!(source = %credentials.source,
            "AWS Marketplace does not support these credentials for metering; give the workload its own role with IRSA or the ECS task role");
    }
    let destination = Destination::resolve(
        config.product_code.clone(),
        &region.region,
        &credentials,
        config.retry,
        config.pinning,
    )
    .await;
    check_emulator_period(&destination.endpoint, config.period, deadline).await?;
    let hour_start = config.period.start(config.period.index_at(clock.now()));
    dry_run(
        &destination,
        &config.dimensions,
        hour_start,
        &instance_id,
        deadline,
    )
    .await?;

    let ticking = tokio::spawn(tick(writer.clone(), config.period, clock.clone()));
    let sender = Arc::new(Sender {
        destination,
        reader: reader.clone(),
        writer: writer.clone(),
        metrics,
        clock,
        period: config.period,
        instance_id,
    });
    let (stop_sending, sending_stopped) = tokio::sync::oneshot::channel::<()>();
    let sending = tokio::spawn({
        let sender = sender.clone();
        async move {
            sender
                .run(async {
                    let _ = sending_stopped.await;
                })
                .await
        }
    });
    readiness.set_ready();
    tracing::info!(listen = %config.listen, dimensions = ?config.dimensions, period = %config.period,
        "ready: accepting usage");
    Ok(Sidecar {
        config: config.clone(),
        writer,
        reader,
        readiness,
        sender,
        serving,
        ticking,
        sending,
        stop_sending,
    })
}

impl Sidecar {
    /// Takes usage and sends closed hours until `stop` resolves (and the drain passed); then
    /// stops accepting (503),
    /// closes the open hour early (it is this instance's last) and sends everything unsent
    /// within the shutdown grace.
    pub async fn run_until(
        self,
        stop: impl Future<Output = &'static str>,
    ) -> Result<Stopped, MeterError> {
        let config = &self.config;
        let signal = tokio::select! {
            signal = stop => signal,
            (reason, after) = self.writer.gave_up() => {
                // Nothing more can be recorded: whatever is unsent stays in the state, for the
                // sidecar that is restarted on it.
                self.serving.abort();
                self.ticking.abort();
                self.sending.abort();
                return Err(MeterError::StateUnwritable {
                    state_dir: config.state_dir.clone(),
                    after,
                    reason,
                });
            }
        };
        if !config.drain.is_zero() {
            tracing::info!(signal, drain = ?config.drain,
                "stop requested: still accepting usage during the drain, while the app stops");
            tokio::time::sleep(config.drain).await;
        }
        let grace_ends = Instant::now() + config.shutdown_grace;
        self.readiness.set_stopping();
        tracing::info!(signal, grace = ?config.shutdown_grace,
            "stopping: no more usage accepted; closing the open hour and sending what is unsent");
        self.ticking.abort();
        let _ = self.stop_sending.send(());
        let _ = self.sending.await;
        let future_hour = match self.writer.close_for_shutdown().await {
            Ok(future_hour) => future_hour,
            // The open hour stays open in the state: the next start closes and sends it.
            Err(refused @ Refused::Unwritable { .. }) => {
                tracing::error!(error = %refused, "cannot close the open hour at shutdown");
                None
            }
            Err(refused) => return Err(refused.into()),
        };
        let flush = self.sender.pass(Limit::All(grace_ends)).await;
        self.serving.abort();
        let unsent = self.reader.unsent()?;
        let ledger = self.reader.ledger()?;
        if let Some(hour) = future_hour.filter(|hour| {
            self.writer
                .settled()
                .open
                .iter()
                .any(|(open, _, micros)| open == hour && *micros > 0)
        }) {
            tracing::warn!(hour = %config.period.label(hour),
                "usage accepted after a restart within an hour already reported waits for its own hour; a restart with the same state directory sends it, a deleted pod loses it");
        }
        for (dimension, counted) in &ledger {
            let fraction = Micros(counted.carried_fraction);
            tracing::info!(
                dimension = %dimension,
                acknowledged = %Micros(counted.acknowledged as i128),
                billed = %Micros(counted.billed as i128),
                refused = %Micros(counted.refused as i128),
                in_doubt = %Micros(counted.in_doubt as i128),
                unsent = %Micros(counted.unsent as i128),
                carried_fraction = %fraction,
                balances = counted.balances(),
                "ledger: acknowledged = billed + refused + in doubt + unsent + carried fraction"
            );
            if counted.carried_fraction > 0 {
                tracing::info!(dimension = %dimension, fraction = %fraction,
                    "the fraction under one unit is not billed (--final-fraction down); it stays in the state, and a sidecar restarted on it bills it with later usage");
            }
        }
        let total =
            |part: fn(&Ledger) -> u128| Micros(ledger.values().map(part).sum::<u128>() as i128);
        if !unsent.is_empty() || total(|l| l.unsent) > Micros(0) {
            return Err(Unbilled::Unsent {
                hours: unsent.len(),
                quantity: total(|l| l.unsent),
                state_dir: config.state_dir.clone(),
            }
            .into());
        }
        let (refused, in_doubt) = (total(|l| l.refused), total(|l| l.in_doubt));
        if refused > Micros(0) || in_doubt > Micros(0) {
            return Err(Unbilled::Refused { refused, in_doubt }.into());
        }
        Ok(Stopped {
            signal,
            flushed: flush.settled,
            ledger,
        })
    }
}

/// How long a metering-emulator may take to say its period.
const EMULATOR_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The period of the metering-emulator at `endpoint`, if it is one: an endpoint on plain HTTP
/// can only be a local stand-in, and the emulator says its period at `/_emulator/status`.
pub async fn emulator_period(endpoint: &str, timeout: Duration) -> Option<Period> {
    if !endpoint.starts_with("http://") {
        return None;
    }
    let url = format!("{}/_emulator/status", endpoint.trim_end_matches('/'));
    let target = crate::local_http::client::Target::Url(url);
    let answer = crate::local_http::client::get(&target, timeout, 4096)
        .await
        .ok()
        .filter(|answer| answer.status == 200)?;
    let status: serde_json::Value = serde_json::from_slice(&answer.body).ok()?;
    Period::from_duration(Duration::from_secs(status["periodSeconds"].as_u64()?))
}

/// A metering-emulator with another period than the sidecar's would refuse every hour after
/// the first as a duplicate, and the usage would never be billed there: refused at start-up.
async fn check_emulator_period(
    endpoint: &str,
    period: Period,
    deadline: Instant,
) -> Result<(), MeterError> {
    let timeout = EMULATOR_STATUS_TIMEOUT.min(deadline.saturating_duration_since(Instant::now()));
    match emulator_period(endpoint, timeout).await {
        Some(emulator) if emulator != period => Err(MeterError::PeriodMismatch {
            endpoint: endpoint.to_owned(),
            emulator,
            meter: period,
        }),
        _ => Ok(()),
    }
}

/// A MeterUsage DryRun for every dimension, for the hour starting at `hour_start`: the
/// permission, the product code and every dimension name are proven before the sidecar takes
/// usage it could never send (and by `doctor --call`). Records nothing.
pub async fn dry_run(
    destination: &Destination,
    dimensions: &BTreeSet<String>,
    hour_start: std::time::SystemTime,
    instance_id: &str,
    deadline: Instant,
) -> Result<(), MeteringError> {
    for dimension in dimensions {
        let token = sender::client_token(&format!("{instance_id}/dry-run"), dimension, hour_start);
        let call = MeterUsageCall {
            product_code: &destination.product_code,
            dimension,
            timestamp: hour_start,
            quantity: Quantity::ZERO,
            allocations: &[],
            client_token: &token,
            region: &destination.region,
            credentials_from: destination.credentials_from,
            endpoint: &destination.endpoint,
            retry: destination.retry,
        };
        metering::dry_run_meter_usage(&destination.client, &call, deadline).await?;
    }
    tracing::info!(
        dimensions = dimensions.len(),
        "MeterUsage DryRun passed: the role may meter these dimensions"
    );
    Ok(())
}

/// Closes hours as their time passes, even when nothing is reported.
async fn tick(writer: Writer, period: Period, clock: Arc<dyn Clock>) {
    loop {
        let now = clock.now();
        let next = period.start(period.index_at(now) + 1);
        let wait = next.duration_since(now).unwrap_or(Duration::ZERO);
        // A moment past the boundary, so the clock reads the new hour.
        tokio::time::sleep(wait + Duration::from_millis(20)).await;
        if let Err(error) = writer.tick().await {
            tracing::error!(error = %error, "cannot close the hour");
        }
    }
}
