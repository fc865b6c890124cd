//! What every `--help` ends with: the exit codes that command can end with, and the
//! environment it reads besides its options' own variables (shown as `[env: ...]`): at 3 a.m.
//! the help is what an operator has.

use entitlement_gate::aws::endpoint::{Service, GLOBAL_VARIABLE};
use entitlement_gate::outcome::exit_code;

/// The AWS SDK's own variables, read by every command that calls AWS.
const AWS_ENVIRONMENT: &str = "  AWS_REGION, AWS_DEFAULT_REGION     the Region (ECS and EKS set it)
  AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN,
  AWS_CONTAINER_CREDENTIALS_FULL_URI  credentials, in the SDK's order (IRSA, EKS Pod Identity,
                                     the ECS task role, instance metadata)
  HTTPS_PROXY, HTTP_PROXY, NO_PROXY  an egress proxy
  SSL_CERT_FILE, SSL_CERT_DIR        the CA store of an open build (a locked build trusts only
                                     Amazon Trust Services' roots for AWS)";

/// What a locked build refuses, for the command at `path` (every one that calls AWS).
fn locked_build_refuses(path: &[&str]) -> String {
    let variables: Vec<&str> = Service::ALL
        .iter()
        .map(|service| service.variable())
        .chain([GLOBAL_VARIABLE])
        .collect();
    let refuses = match path {
        ["doctor"] => "refuses (with --call: exit 2, before any call; without: a failed check)",
        _ => "refuses (exit 2, before any call)",
    };
    format!(
        "A locked build {refuses} every other endpoint the AWS SDK would take:
  {},
  and endpoint_url in the active profile (AWS_PROFILE) of the AWS config or credentials file
  (AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE) or in the services section it names; its AWS
  calls need a CONNECT (non-inspecting) path to AWS.",
        variables.join(", ")
    )
}

/// The exit codes and environment of the command at `path` (e.g. `["license", "watch"]`).
fn epilogue(path: &[&str]) -> Option<String> {
    use exit_code::*;
    let (codes, environment): (&[u8], &str) = match path {
        ["check"] | ["exec"] => (
            &[
                INTERNAL,
                CONFIG,
                NOT_ENTITLED,
                TOKEN_REJECTED,
                SETUP_REFUSED,
                CREDENTIALS,
                UNREACHABLE,
                INTERRUPTED,
            ],
            "  AWS_ENDPOINT_URL_MARKETPLACE_METERING  another Metering endpoint (an emulator)\n  \
             ENTITLEMENT_GATE_WORKLOAD_ID       the pod UID the nonce is bound to (the chart sets it)",
        ),
        ["verify"] => (
            &[INTERNAL, CONFIG, TOKEN_REJECTED],
            "  ENTITLEMENT_GATE_WORKLOAD_ID       the workload the handoff must be bound to",
        ),
        ["doctor"] => (
            &[INTERNAL],
            "  AWS_ENDPOINT_URL_MARKETPLACE_METERING, AWS_ENDPOINT_URL_LICENSE_MANAGER  other endpoints (an emulator)\n  \
             AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE, AWS_LICENSE_ACCESS_FILE  the Anywhere license token\n  \
             ENTITLEMENT_GATE_ISTIO_SIDECAR_STATUS, ENTITLEMENT_GATE_LINKERD_PROXY_VERSION  mesh annotations (the chart passes them in)",
        ),
        ["meter"] => (
            &[
                INTERNAL,
                CONFIG,
                NOT_ENTITLED,
                SETUP_REFUSED,
                CREDENTIALS,
                UNREACHABLE,
                INTERRUPTED,
                UNBILLED,
            ],
            "  AWS_ENDPOINT_URL_MARKETPLACE_METERING  another Metering endpoint (an emulator)",
        ),
        ["license", "check"] | ["license", "watch"] => (
            &[
                INTERNAL,
                CONFIG,
                NOT_ENTITLED,
                TOKEN_REJECTED,
                SETUP_REFUSED,
                CREDENTIALS,
                UNREACHABLE,
                INTERRUPTED,
            ],
            "  AWS_ENDPOINT_URL_LICENSE_MANAGER, AWS_ENDPOINT_URL_STS  other endpoints (an emulator)\n  \
             AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE or AWS_LICENSE_ACCESS_FILE  Anywhere: the buyer's license token\n  \
             AWS_ROLE_ARN                       Anywhere: the role to assume (else iam_role beside the token)\n  \
             ENTITLEMENT_GATE_WORKLOAD_ID       the default NodeId",
        ),
        ["health"] => (&[INTERNAL], ""),
        _ => return None,
    };
    let mut text = String::from("Exit codes:\n  0  ");
    text.push_str(meaning(0, path));
    for code in codes {
        text.push_str(&format!("\n  {code}  {}", meaning(*code, path)));
    }
    text.push_str("\n\nEnvironment, besides each option's [env: ...]:\n");
    if !environment.is_empty() {
        text.push_str(environment);
        text.push('\n');
    }
    if path != ["health"] && path != ["verify"] {
        text.push_str(AWS_ENVIRONMENT);
        text.push_str("\n\n");
        text.push_str(&locked_build_refuses(path));
        text.push('\n');
    }
    Some(text)
}

/// `command` with every (sub)command's help ending in its epilogue.
pub fn with_epilogues(command: clap::Command) -> clap::Command {
    fn walk(command: clap::Command, path: &mut Vec<String>) -> clap::Command {
        let names: Vec<String> = command
            .get_subcommands()
            .map(|sub| sub.get_name().to_owned())
            .collect();
        let mut command = command;
        for name in names {
            path.push(name.clone());
            let borrowed: Vec<&str> = path.iter().map(String::as_str).collect();
            let text = epilogue(&borrowed);
            command = command.mut_subcommand(&name, |sub| {
                let sub = match text {
                    Some(text) => sub.after_help(text),
                    None => sub,
                };
                walk(sub, &mut path.clone())
            });
            path.pop();
        }
        command
    }
    walk(command, &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn every_command_ends_its_help_with_exit_codes_and_environment() {
        let mut command = with_epilogues(crate::cli::Cli::command());
        let mut leaves = Vec::new();
        for sub in command.get_subcommands_mut() {
            if sub.get_subcommands().count() == 0 {
                leaves.push((sub.get_name().to_owned(), sub.render_help().to_string()));
            } else {
                let parent = sub.get_name().to_owned();
                for leaf in sub.get_subcommands_mut() {
                    leaves.push((
                        format!("{parent} {}", leaf.get_name()),
                        leaf.render_help().to_string(),
                    ));
                }
            }
        }
        for (name, help) in leaves.iter().filter(|(name, _)| name != "help") {
            let tail = &help[help
                .find("Exit codes:")
                .unwrap_or_else(|| panic!("{name}: no exit codes"))..];
            assert!(tail.contains("\n  0  "), "{name}: {tail}");
            assert!(tail.contains("Environment"), "{name}: {tail}");
        }
        let check = &leaves.iter().find(|(name, _)| name == "check").unwrap().1;
        assert!(check.contains("  3  "), "{check}");
        assert!(check.contains("AWS_REGION"));
        let watch = &leaves
            .iter()
            .find(|(name, _)| name == "license watch")
            .unwrap()
            .1;
        assert!(
            watch.contains("AWS_WEB_IDENTITY_REFRESH_TOKEN_FILE"),
            "{watch}"
        );
        assert!(
            watch.contains("  4  License Manager's answer failed verification"),
            "{watch}"
        );
    }

    #[test]
    fn every_command_that_calls_aws_says_what_a_locked_build_refuses() {
        let mut command = with_epilogues(crate::cli::Cli::command());
        for path in [
            &["check"][..],
            &["exec"],
            &["meter"],
            &["doctor"],
            &["license", "check"],
            &["license", "watch"],
        ] {
            let mut sub = &mut command;
            for name in path {
                sub = sub.find_subcommand_mut(name).expect("a subcommand");
            }
            let help = sub.render_help().to_string();
            for refused in [
                "AWS_ENDPOINT_URL_MARKETPLACE_METERING, AWS_ENDPOINT_URL_LICENSE_MANAGER, \
                 AWS_ENDPOINT_URL_STS, AWS_ENDPOINT_URL,",
                "endpoint_url in the active profile",
                "services section",
                "CONNECT",
            ] {
                assert!(
                    help.contains(refused),
                    "{path:?} lacks {refused:?}:\n{help}"
                );
            }
        }
    }
}
