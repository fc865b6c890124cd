//! Service meshes whose injected proxy intercepts a pod's egress: under Istio or Linkerd in
//! sidecar mode, init containers run after the redirect is in place but before the proxy
//! runs, so a gate there cannot reach AWS unless the chart's mesh values exempt it.
//!
//! The mesh's injector annotates the pod; the chart hands those annotations to the gate with
//! the downward API (empty when absent).

use std::fmt;

/// Set from the pod annotation `sidecar.istio.io/status`.
pub const ISTIO_STATUS_VARIABLE: &str = "ENTITLEMENT_GATE_ISTIO_SIDECAR_STATUS";
/// Set from the pod annotation `linkerd.io/proxy-version`.
pub const LINKERD_PROXY_VARIABLE: &str = "ENTITLEMENT_GATE_LINKERD_PROXY_VERSION";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mesh {
    Istio,
    Linkerd,
}

impl Mesh {
    /// The mesh whose sidecar was injected into this pod, if the annotations say so.
    pub fn detect(env: impl Fn(&str) -> Option<String>) -> Option<Mesh> {
        let set = |name| env(name).is_some_and(|value| !value.trim().is_empty());
        if set(ISTIO_STATUS_VARIABLE) {
            Some(Mesh::Istio)
        } else if set(LINKERD_PROXY_VARIABLE) {
            Some(Mesh::Linkerd)
        } else {
            None
        }
    }

    /// The chart's `mesh.type` for it.
    pub fn chart_type(self) -> &'static str {
        match self {
            Mesh::Istio => "istio",
            Mesh::Linkerd => "linkerd",
        }
    }
}

impl fmt::Display for Mesh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mesh::Istio => "Istio",
            Mesh::Linkerd => "Linkerd",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_injectors_annotations_name_the_mesh() {
        let with = |name: &'static str, value: &'static str| {
            move |asked: &str| (asked == name).then(|| value.to_owned())
        };
        assert_eq!(
            Mesh::detect(with(
                ISTIO_STATUS_VARIABLE,
                "{\"initContainers\":[\"istio-init\"]}"
            )),
            Some(Mesh::Istio)
        );
        assert_eq!(
            Mesh::detect(with(LINKERD_PROXY_VARIABLE, "edge-25.1.1")),
            Some(Mesh::Linkerd)
        );
        // The downward API gives an empty value when the annotation is absent.
        assert_eq!(Mesh::detect(with(ISTIO_STATUS_VARIABLE, "")), None);
        assert_eq!(Mesh::detect(|_: &str| None), None);
    }
}
