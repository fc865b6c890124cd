//! The metering sidecar's setup: its dimensions, its state directory, its listen address (and
//! the sidecar answering there), and with `--call` a MeterUsage DryRun, which records nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{Failure, Finding};
use crate::aws::endpoint::Pinning;
use crate::aws::identity::{ResolvedCredentials, ResolvedRegion};
use crate::aws::retry::RetryPolicy;
use crate::domain::product_code::ProductCode;
use crate::domain::text;
use crate::local_http::client as local_http;
use crate::local_http::server::Listen;
use crate::meter::period::Period;
use crate::meter::sender::Destination;
use crate::meter::store::FILE_NAME;

/// The sidecar's configuration, as the `meter` command would read it.
#[derive(Debug, Clone)]
pub struct MeterRequest {
    pub dimensions: Vec<String>,
    pub state_dir: Option<PathBuf>,
    pub listen: Listen,
    /// `--period` / `ENTITLEMENT_GATE_METER_PERIOD`, as given.
    pub period: Duration,
}

/// The metering period against the endpoint the SDK would call: an hour against AWS; against a
/// metering-emulator, the emulator's own period.
pub(super) async fn period(period: Duration, endpoint: &str, timeout: Duration) -> Finding {
    const CHECK: &str = "meter-period";
    let shown = humantime::format_duration(period);
    let Some(period) = Period::from_duration(period) else {
        return Finding::fail(
            CHECK,
            format!("ENTITLEMENT_GATE_METER_PERIOD is {shown}, not a whole number of seconds"),
            "leave it at 1h (whole seconds only against an emulator)",
        );
    };
    if !endpoint.starts_with("http://") {
        return if period == Period::HOUR {
            Finding::ok(CHECK, "1h, as MeterUsage meters")
        } else {
            Finding::fail(
                CHECK,
                format!("ENTITLEMENT_GATE_METER_PERIOD is {shown} against {endpoint}"),
                "leave it at 1h: MeterUsage meters by the hour (shorter periods are for an \
                 emulator)",
            )
        };
    }
    match crate::meter::emulator_period(endpoint, timeout).await {
        Some(emulator) if emulator == period => Finding::ok(
            CHECK,
            format!("{shown}, the same as the metering-emulator at {endpoint}"),
        ),
        Some(emulator) => Finding::fail(
            CHECK,
            format!(
                "ENTITLEMENT_GATE_METER_PERIOD is {shown}, and the metering-emulator at \
                 {endpoint} meters every {emulator}: it would refuse every hour after the first \
                 as a duplicate"
            ),
            "start both with the same period (the meter's --period, the emulator's --period)",
        ),
        None => Finding::warn(
            CHECK,
            format!("{shown} against {endpoint}, which does not say its period"),
            "use the period of the service at that endpoint",
        ),
    }
}

/// The most a status answer may hold for the doctor to read it.
const STATUS_LIMIT: usize = 1 << 20;

/// The dimension names: what MeterUsage accepts as `UsageDimension`.
pub(super) fn dimensions(names: &[String]) -> Finding {
    let bad: Vec<String> = names
        .iter()
        .filter(|name| {
            let length = name.trim().chars().count();
            length == 0 || length > 255
        })
        .map(|name| text::quoted(name))
        .collect();
    if !bad.is_empty() {
        return Finding::fail(
            "dimensions",
            format!(
                "not dimension names of 1 to 255 characters: {}",
                bad.join(", ")
            ),
            "list the product's dimension API names from the AWS Marketplace Management Portal, \
             comma-separated, in ENTITLEMENT_GATE_DIMENSIONS",
        );
    }
    let unique: BTreeSet<&str> = names.iter().map(|name| name.trim()).collect();
    Finding::ok(
        "dimensions",
        format!(
            "{} ({}); whether the product has them only a DryRun can tell (--call)",
            unique.len(),
            unique.into_iter().collect::<Vec<_>>().join(", ")
        ),
    )
}

/// The state directory: set, a writable directory, and on a volume that outlives the container.
pub(super) fn state(state_dir: Option<&Path>, mounts: Option<&str>) -> Finding {
    const CHECK: &str = "meter-state";
    let Some(dir) = state_dir else {
        return Finding::fail(
            CHECK,
            "ENTITLEMENT_GATE_STATE_DIR is not set",
            "mount a volume that outlives the container (an emptyDir, or a PVC) and point \
             ENTITLEMENT_GATE_STATE_DIR at it",
        );
    };
    let shown = text::quoted(&dir.display().to_string());
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => Finding::fail(
            CHECK,
            format!("{shown} is not a directory"),
            "point ENTITLEMENT_GATE_STATE_DIR at a directory",
        ),
        Ok(_) => {
            if let Err(e) = tempfile::NamedTempFile::new_in(dir) {
                return Finding::fail(
                    CHECK,
                    format!("{shown} is not writable: {e}"),
                    "make it writable by the container's user (the chart runs as 65532; an \
                     emptyDir is)",
                );
            }
            let held = match std::fs::metadata(dir.join(FILE_NAME)) {
                Ok(file) => format!("holds {FILE_NAME} ({} bytes)", file.len()),
                Err(_) => "empty: the sidecar creates its state on start".to_owned(),
            };
            match mounts.and_then(|mounts| mount_point(mounts, dir)) {
                Some(point) if point == Path::new("/") => Finding::warn(
                    CHECK,
                    format!("{shown} is writable and {held}, on the container's root filesystem"),
                    "usage acknowledged but not yet sent is lost when the container is replaced; \
                     mount an emptyDir or a PVC there",
                ),
                _ => Finding::ok(CHECK, format!("{shown} is writable and {held}")),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Finding::warn(
            CHECK,
            format!("{shown} does not exist; the sidecar would create it"),
            "mount a volume there (an emptyDir or a PVC), or the state lives and dies with the \
             container",
        ),
        Err(e) => Finding::fail(
            CHECK,
            format!("{shown} cannot be read: {e}"),
            "check the volume mounted there and its permissions",
        ),
    }
}

/// The mount point `dir` lives on, from `/proc/self/mountinfo` (field 5 of each line).
fn mount_point(mountinfo: &str, dir: &Path) -> Option<PathBuf> {
    let dir = dir.canonicalize().ok()?;
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| dir.starts_with(point))
        .max_by_key(|point| point.as_os_str().len())
}

/// The listen address: a sidecar answering there (and how it is doing), or free for one.
pub(super) async fn listen(listen: &Listen, timeout: Duration) -> Finding {
    const CHECK: &str = "meter-listen";
    let (target, url) = listen.target("/v1/status");
    match local_http::get(&target, timeout, STATUS_LIMIT).await {
        Ok(answer) if answer.status == 200 => sidecar_status(listen, &answer.body),
        Ok(answer) => Finding::warn(
            CHECK,
            format!("{url} answered HTTP {}", answer.status),
            "something else listens there, or an older sidecar; check the meter container",
        ),
        Err(reason) => match listen {
            Listen::Tcp(addr) => match std::net::TcpListener::bind(addr) {
                Ok(_) => {
                    let exposed = if addr.ip().is_loopback() {
                        String::new()
                    } else {
                        "; it is not loopback, so anyone who reaches the pod could report usage"
                            .to_owned()
                    };
                    Finding::warn(
                        CHECK,
                        format!("no sidecar answers at {listen} (the address is free){exposed}"),
                        "run `entitlement-gate meter` beside the app (the chart's \
                         entitlementGate.metering.enabled) with the same \
                         ENTITLEMENT_GATE_METER_LISTEN",
                    )
                }
                Err(e) => Finding::fail(
                    CHECK,
                    format!(
                        "{listen} is taken ({e}) by a process that does not answer as the \
                         sidecar ({})",
                        text::quoted(&reason)
                    ),
                    "give the sidecar a free port in ENTITLEMENT_GATE_METER_LISTEN",
                ),
            },
            Listen::Unix(socket) => Finding::warn(
                CHECK,
                format!("no sidecar answers at {listen} ({})", text::quoted(&reason)),
                if socket.parent().is_some_and(Path::is_dir) {
                    "run `entitlement-gate meter` beside the app, on a volume both containers \
                     mount"
                } else {
                    "the socket's directory does not exist: mount a volume both containers share"
                },
            ),
        },
    }
}

/// What a running sidecar says of itself: ready, and what it has not sent.
fn sidecar_status(listen: &Listen, body: &[u8]) -> Finding {
    const CHECK: &str = "meter-listen";
    let Ok(status) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Finding::warn(
            CHECK,
            format!("{listen} answered a status that is not the sidecar's JSON"),
            "something else listens there; check ENTITLEMENT_GATE_METER_LISTEN",
        );
    };
    let mut unsent = 0;
    let mut problems = Vec::new();
    if let Some(dimensions) = status["dimensions"].as_object() {
        for (name, dimension) in dimensions {
            unsent += dimension["unsentHours"].as_array().map_or(0, Vec::len);
            if let Some(error) = dimension["lastError"].as_str() {
                problems.push(format!("{}: {}", text::quoted(name), text::quoted(error)));
            }
        }
    }
    let ready = status["ready"].as_bool() == Some(true);
    let detail = format!(
        "a sidecar answers at {listen}: {}, instance {}, {unsent} unsent hour records{}",
        if ready { "ready" } else { "not ready" },
        text::quoted(status["instanceId"].as_str().unwrap_or("?")),
        if problems.is_empty() {
            String::new()
        } else {
            format!("; last errors {}", problems.join(", "))
        }
    );
    if ready && unsent == 0 {
        Finding::ok(CHECK, detail)
    } else {
        Finding::warn(
            CHECK,
            detail,
            "read the meter container's log; unsent hours are retried, and GET /v1/status shows \
             each one",
        )
    }
}

/// What a DryRun needs.
pub(super) struct DryRunRequest<'a> {
    pub product_code: &'a ProductCode,
    pub period: Period,
    pub dimensions: &'a [String],
    pub region: &'a ResolvedRegion,
    pub credentials: &'a ResolvedCredentials,
    pub retry: RetryPolicy,
    pub deadline: Duration,
    pub pinning: Pinning,
}

/// A MeterUsage DryRun per dimension for the current hour: permission, product and dimensions.
pub(super) async fn dry_run(request: DryRunRequest<'_>, now: SystemTime) -> Finding {
    const CHECK: &str = "meter-dry-run";
    let destination = Destination::resolve(
        request.product_code.clone(),
        &request.region.region,
        request.credentials,
        request.retry,
        request.pinning,
    )
    .await;
    let dimensions: BTreeSet<String> = request
        .dimensions
        .iter()
        .map(|name| name.trim().to_owned())
        .collect();
    let hour_start = request.period.start(request.period.index_at(now));
    match crate::meter::dry_run(
        &destination,
        &dimensions,
        hour_start,
        "doctor",
        Instant::now() + request.deadline,
    )
    .await
    {
        Ok(()) => Finding::ok(
            CHECK,
            format!(
                "MeterUsage DryRun passed for {} dimensions: the role may meter them (nothing \
                 was recorded)",
                dimensions.len()
            ),
        ),
        Err(e) => Finding::failed_with(CHECK, Failure::Metering(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn dimension_names_must_fit_meter_usage() {
        let good = dimensions(&["requests".to_owned(), "users".to_owned()]);
        assert_eq!(good.status, Status::Ok);
        assert!(good.detail.starts_with("2 (requests, users)"));
        let bad = dimensions(&["requests".to_owned(), " ".to_owned(), "x".repeat(256)]);
        assert_eq!(bad.status, Status::Fail);
    }

    #[test]
    fn the_state_directory_must_be_writable_and_should_be_a_volume() {
        assert_eq!(state(None, None).status, Status::Fail);
        let dir = tempfile::tempdir().unwrap();
        let canonical = dir.path().canonicalize().unwrap();
        let on_root = "22 1 0:21 / / rw - overlay overlay rw\n";
        let on_volume = format!(
            "22 1 0:21 / / rw - overlay overlay rw\n23 22 0:22 / {} rw - tmpfs tmpfs rw\n",
            canonical.display()
        );
        let root = state(Some(dir.path()), Some(on_root));
        assert_eq!(root.status, Status::Warn, "{}", root.detail);
        let volume = state(Some(dir.path()), Some(&on_volume));
        assert_eq!(volume.status, Status::Ok, "{}", volume.detail);
        assert!(volume.detail.contains("empty"));
        std::fs::write(dir.path().join(FILE_NAME), b"x").unwrap();
        assert!(state(Some(dir.path()), Some(&on_volume))
            .detail
            .contains("holds meter.redb (1 bytes)"));
        assert_eq!(
            state(Some(&dir.path().join("missing")), None).status,
            Status::Warn
        );
        let file = dir.path().join(FILE_NAME);
        assert_eq!(state(Some(&file), None).status, Status::Fail);
    }

    #[test]
    fn a_running_sidecars_status_is_summarised() {
        let listen: Listen = "127.0.0.1:8478".parse().unwrap();
        let healthy = br#"{"ready": true, "instanceId": "abc", "dimensions": {"requests": {"unsentHours": [], "lastError": null}}}"#;
        let finding = sidecar_status(&listen, healthy);
        assert_eq!(finding.status, Status::Ok, "{}", finding.detail);
        let behind = br#"{"ready": true, "instanceId": "abc", "dimensions": {"requests": {"unsentHours": [{}, {}], "lastError": "ThrottlingException\u001b[2J"}}}"#;
        let finding = sidecar_status(&listen, behind);
        assert_eq!(finding.status, Status::Warn);
        assert!(
            finding.detail.contains("2 unsent hour records"),
            "{}",
            finding.detail
        );
        assert!(
            !finding.detail.contains('\u{1b}'),
            "escaped: {}",
            finding.detail
        );
    }
}
