//! Resolves which workload (Kubernetes pod or ECS task) this process belongs to. The gate's
//! nonce commits to it, so a genuine handoff copied from another pod, or another buyer's, does
//! not verify.

use std::time::Duration;

use serde::Deserialize;

use crate::domain::text;
use crate::domain::workload::{
    WorkloadId, WorkloadIdSource, MAX_WORKLOAD_ID_BYTES, WORKLOAD_ID_VARIABLE,
};
use crate::local_http::client as local_http;

/// The largest task metadata answer read; real ones are a few KiB.
const MAX_TASK_METADATA_BYTES: usize = 256 * 1024;

/// Why the workload identity could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{WORKLOAD_ID_VARIABLE} is longer than {MAX_WORKLOAD_ID_BYTES} bytes")]
    ConfiguredTooLong,
    #[error("the ECS task metadata endpoint {url} gave no task ARN: {detail}")]
    TaskMetadata { url: String, detail: String },
    #[error("cannot read the hostname: {0}")]
    Hostname(std::io::Error),
}

/// Resolves the workload identity: `ENTITLEMENT_GATE_WORKLOAD_ID`, else the ECS task ARN when
/// the ECS agent publishes task metadata, else the hostname. `timeout` bounds the metadata call.
pub async fn resolve(
    env: impl Fn(&str) -> Option<String>,
    timeout: Duration,
) -> Result<WorkloadId, WorkloadError> {
    if let Some(id) = env(WORKLOAD_ID_VARIABLE).filter(|id| !id.is_empty()) {
        if id.len() > MAX_WORKLOAD_ID_BYTES {
            return Err(WorkloadError::ConfiguredTooLong);
        }
        return Ok(WorkloadId {
            id,
            source: WorkloadIdSource::Configured,
        });
    }
    let metadata = [
        "ECS_CONTAINER_METADATA_URI_V4",
        "ECS_CONTAINER_METADATA_URI",
    ]
    .iter()
    .find_map(|name| env(name).filter(|uri| !uri.is_empty()));
    if let Some(base) = metadata {
        let url = format!("{}/task", base.trim_end_matches('/'));
        let id = task_arn(&url, timeout)
            .await
            .map_err(|detail| WorkloadError::TaskMetadata {
                url: url.clone(),
                detail,
            })?;
        return Ok(WorkloadId {
            id,
            source: WorkloadIdSource::EcsTaskArn,
        });
    }
    Ok(WorkloadId {
        id: hostname().map_err(WorkloadError::Hostname)?,
        source: WorkloadIdSource::Hostname,
    })
}

/// The `TaskARN` of the ECS task metadata document at `url` (plain HTTP on the agent's
/// link-local address), read within `timeout` and [`MAX_TASK_METADATA_BYTES`].
async fn task_arn(url: &str, timeout: Duration) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Task {
        #[serde(rename = "TaskARN")]
        task_arn: String,
    }
    let answer = local_http::get(
        &local_http::Target::Url(url.to_owned()),
        timeout,
        MAX_TASK_METADATA_BYTES,
    )
    .await?;
    if answer.status != 200 {
        return Err(format!("HTTP {}", answer.status));
    }
    let body = answer.body;
    let task: Task = serde_json::from_slice(&body).map_err(|e| {
        format!(
            "the answer has no TaskARN ({})",
            text::quoted(&e.to_string())
        )
    })?;
    if task.task_arn.is_empty() || task.task_arn.len() > MAX_WORKLOAD_ID_BYTES {
        return Err("the answer's TaskARN is empty or too long".to_owned());
    }
    Ok(task.task_arn)
}

/// This host's name (the pod name on Kubernetes, the same in every container of the pod).
fn hostname() -> std::io::Result<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let status = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if status != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let end = buffer.iter().position(|b| *b == 0).unwrap_or(buffer.len());
    Ok(String::from_utf8_lossy(&buffer[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    fn env_of(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    /// Answers one HTTP request with `body`, on a loopback port; returns the base URL.
    fn one_answer(status: &'static str, body: &'static str) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        });
        format!("http://{addr}/v4/container-id")
    }

    #[tokio::test]
    async fn the_configured_identity_wins() {
        let id = resolve(
            env_of(vec![
                (WORKLOAD_ID_VARIABLE, "pod-uid-1".into()),
                ("ECS_CONTAINER_METADATA_URI_V4", "http://127.0.0.1:1".into()),
            ]),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(
            id,
            WorkloadId {
                id: "pod-uid-1".into(),
                source: WorkloadIdSource::Configured
            }
        );
        let too_long = resolve(
            env_of(vec![(WORKLOAD_ID_VARIABLE, "x".repeat(2000))]),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(too_long, Err(WorkloadError::ConfiguredTooLong)));
    }

    #[tokio::test]
    async fn on_ecs_the_task_arn_identifies_the_workload() {
        let arn = "arn:aws:ecs:us-east-1:111122223333:task/cluster/0123456789abcdef";
        let base = one_answer(
            "200 OK",
            r#"{"Cluster":"c","TaskARN":"arn:aws:ecs:us-east-1:111122223333:task/cluster/0123456789abcdef"}"#,
        );
        let id = resolve(
            env_of(vec![("ECS_CONTAINER_METADATA_URI_V4", base)]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(id.id, arn);
        assert_eq!(id.source, WorkloadIdSource::EcsTaskArn);
    }

    #[tokio::test]
    async fn a_broken_task_metadata_endpoint_is_an_error_not_a_fallback() {
        // Falling back to the hostname here would give the gate and the app different identities.
        for (status, body) in [("500 Internal Server Error", ""), ("200 OK", "{}")] {
            let base = one_answer(status, body);
            let result = resolve(
                env_of(vec![("ECS_CONTAINER_METADATA_URI_V4", base)]),
                Duration::from_secs(5),
            )
            .await;
            assert!(
                matches!(result, Err(WorkloadError::TaskMetadata { .. })),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn elsewhere_the_hostname_is_used() {
        let id = resolve(env_of(vec![]), Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(id.source, WorkloadIdSource::Hostname);
        assert!(!id.id.is_empty());
    }
}
