//! Command-line mistakes as operator sentences, built from clap's error kind and context (not
//! its rendered text), naming the environment variable, and the Helm value behind it, when the
//! bad value came from one: in a pod, nobody typed a flag.

use std::ffi::{OsStr, OsString};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::CommandFactory as _;

use entitlement_gate::domain::text;

use super::Cli;

/// The Helm values of the example chart that set each variable, for messages.
const HELM_VALUES: &[(&str, &str)] = &[
    (
        "ENTITLEMENT_GATE_PRODUCT_CODE",
        "entitlementGate.productCode",
    ),
    (
        "ENTITLEMENT_GATE_PUBLIC_KEY_VERSION",
        "entitlementGate.publicKeyVersion",
    ),
    ("ENTITLEMENT_GATE_PUBLIC_KEY", "entitlementGate.publicKey"),
    ("ENTITLEMENT_GATE_DEADLINE", "entitlementGate.deadline"),
    ("ENTITLEMENT_GATE_LOG_FORMAT", "entitlementGate.logFormat"),
    (
        "ENTITLEMENT_GATE_DIMENSIONS",
        "entitlementGate.metering.dimensions",
    ),
    (
        "ENTITLEMENT_GATE_PRODUCT_ID",
        "entitlementGate.license.productId",
    ),
    (
        "ENTITLEMENT_GATE_ENTITLEMENTS",
        "entitlementGate.license.entitlements",
    ),
    (
        "ENTITLEMENT_GATE_CHECKOUT_TYPE",
        "entitlementGate.license.checkoutType",
    ),
    (
        "ENTITLEMENT_GATE_LICENSE_INTERVAL",
        "entitlementGate.license.watch.interval",
    ),
    (
        "ENTITLEMENT_GATE_ON_LOSS",
        "entitlementGate.license.watch.onLoss",
    ),
    (
        "ENTITLEMENT_GATE_LOSS_GRACE",
        "entitlementGate.license.watch.lossGrace",
    ),
];

/// A command-line mistake: what is wrong, and which `--help` explains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    pub detail: String,
    pub help: String,
}

/// Describes `error` for an operator; `args` are the process arguments (program name first),
/// `env` reads environment variables.
pub fn describe(
    error: &clap::Error,
    args: &[OsString],
    env: impl Fn(&str) -> Option<String>,
) -> Usage {
    let command = subcommand(args);
    let help = match command {
        Some(name) => format!("entitlement-gate {name} --help"),
        None => "entitlement-gate --help".to_owned(),
    };
    let context = |kind| error.get(kind).map(context_text);
    let invalid_arg = context(ContextKind::InvalidArg).unwrap_or_default();
    let detail = match error.kind() {
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            "no command given: use check, exec, verify, doctor, meter, license or health".to_owned()
        }
        ErrorKind::InvalidSubcommand => format!(
            "unknown command {}{}",
            quoted(&context(ContextKind::InvalidSubcommand).unwrap_or_default()),
            suggestion(context(ContextKind::SuggestedSubcommand))
        ),
        ErrorKind::UnknownArgument => format!(
            "unknown option {}{}",
            quoted(&invalid_arg),
            suggestion(context(ContextKind::SuggestedArg))
        ),
        ErrorKind::MissingRequiredArgument if invalid_arg.contains("<PROGRAM>") => {
            "exec needs the program to run after --, e.g. exec -- /app".to_owned()
        }
        ErrorKind::MissingRequiredArgument => format!("missing {invalid_arg}"),
        ErrorKind::ArgumentConflict => format!(
            "{invalid_arg} cannot be used with {}",
            context(ContextKind::PriorArg).unwrap_or_else(|| "another option given".to_owned())
        ),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let value = context(ContextKind::InvalidValue).unwrap_or_default();
            let why = match (
                std::error::Error::source(error),
                context(ContextKind::ValidValue),
            ) {
                (Some(source), _) => source.to_string(),
                (None, Some(valid)) => format!("use one of {valid}"),
                (None, None) => "it is not valid here".to_owned(),
            };
            invalid_value(command, &invalid_arg, &value, &why, args, env)
        }
        _ => error
            .render()
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .trim_start_matches("error: ")
            .to_owned(),
    };
    Usage {
        detail: text::quoted(&detail),
        help,
    }
}

/// `--deadline "soon" is invalid: ...`, or, when the value came from the environment,
/// `ENTITLEMENT_GATE_DEADLINE (Helm value entitlementGate.deadline) is "soon", which is invalid: ...`.
fn invalid_value(
    command: Option<&str>,
    invalid_arg: &str,
    value: &str,
    why: &str,
    args: &[OsString],
    env: impl Fn(&str) -> Option<String>,
) -> String {
    let flag = invalid_arg.split_whitespace().next().unwrap_or(invalid_arg);
    let variable = flag
        .strip_prefix("--")
        .and_then(|long| env_variable(command, long));
    match variable {
        Some(variable) if flag_value(args, flag).is_none() && env(&variable).is_some() => {
            let helm = HELM_VALUES
                .iter()
                .find(|(name, _)| *name == variable)
                .map(|(_, value)| format!(" (Helm value {value})"))
                .unwrap_or_default();
            format!(
                "{variable}{helm} is {}, which is invalid: {why}",
                quoted(value)
            )
        }
        _ => format!("{flag} {} is invalid: {why}", quoted(value)),
    }
}

/// The environment variable of `--long` in `command` (or a global option), from the command
/// definition itself.
fn env_variable(command: Option<&str>, long: &str) -> Option<String> {
    let root = Cli::command();
    let in_scope = |scope: &clap::Command| {
        scope
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .and_then(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
    };
    // `license check`: the nested command's own options.
    command
        .and_then(|name| {
            name.split(' ')
                .try_fold(&root, |scope, word| scope.find_subcommand(word))
        })
        .and_then(in_scope)
        .or_else(|| in_scope(&root))
}

/// The subcommand named in `args`, if any (the first argument that is one).
pub fn subcommand(args: &[OsString]) -> Option<&'static str> {
    const NAMES: [&str; 7] = [
        "check", "exec", "verify", "doctor", "meter", "license", "health",
    ];
    let mut words = args.iter().skip(1).take_while(|arg| *arg != "--");
    let name = words.find_map(|arg| NAMES.into_iter().find(|name| arg == *name))?;
    if name != "license" {
        return Some(name);
    }
    Some(match words.next().and_then(|arg| arg.to_str()) {
        Some("check") => "license check",
        Some("watch") => "license watch",
        _ => "license",
    })
}

/// The value given to `--flag` as `--flag VALUE` or `--flag=VALUE`, before any `--`.
pub fn flag_value(args: &[OsString], flag: &str) -> Option<OsString> {
    let mut args = args.iter().skip(1).take_while(|arg| *arg != "--");
    while let Some(arg) = args.next() {
        if arg == flag {
            return args.next().cloned();
        }
        let prefix = format!("{flag}=");
        if let Some(value) = arg.as_encoded_bytes().strip_prefix(prefix.as_bytes()) {
            // SAFETY: `value` is a suffix of a valid OsStr split after an ASCII `=`.
            return Some(unsafe { OsStr::from_encoded_bytes_unchecked(value) }.to_owned());
        }
    }
    None
}

fn context_text(value: &ContextValue) -> String {
    match value {
        ContextValue::String(text) => text.clone(),
        ContextValue::Strings(texts) => texts.join(", "),
        ContextValue::StyledStr(text) => text.to_string(),
        ContextValue::StyledStrs(texts) => texts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        ContextValue::Number(number) => number.to_string(),
        ContextValue::Bool(flag) => flag.to_string(),
        _ => String::new(),
    }
}

fn suggestion(suggested: Option<String>) -> String {
    suggested
        .filter(|text| !text.is_empty())
        .map(|text| format!(" (did you mean {text}?)"))
        .unwrap_or_default()
}

fn quoted(text: &str) -> String {
    format!("{text:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Describes the usage error of `args`. Clap reads the process environment itself, so
    /// values from the environment are covered by the integration tests, which run the binary
    /// with an environment of their own; `vars` here only feeds [`describe`].
    fn describe_args(args: &[&str], vars: &[(&str, &str)]) -> Usage {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let error = Cli::try_parse_args(&args).expect_err("a usage error");
        describe(&error, &args, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn a_bare_invocation_asks_for_a_command() {
        let usage = describe_args(&["entitlement-gate"], &[]);
        assert_eq!(
            usage.detail,
            "no command given: use check, exec, verify, doctor, meter, license or health"
        );
        assert_eq!(usage.help, "entitlement-gate --help");
    }

    #[test]
    fn exec_without_a_program_says_what_is_missing() {
        let usage = describe_args(&["entitlement-gate", "exec", "--product-code", "p"], &[]);
        assert!(
            usage.detail.contains("program to run after --"),
            "{usage:?}"
        );
        assert_eq!(usage.help, "entitlement-gate exec --help");
    }

    #[test]
    fn unknown_options_and_commands_are_named_with_a_suggestion() {
        let usage = describe_args(&["entitlement-gate", "check", "--product", "p"], &[]);
        assert!(
            usage.detail.starts_with("unknown option \"--product\""),
            "{usage:?}"
        );
        assert!(usage.detail.contains("--product-code"), "{usage:?}");
        let usage = describe_args(&["entitlement-gate", "chek"], &[]);
        assert!(usage.detail.contains("\"chek\""), "{usage:?}");
        assert!(usage.detail.contains("check"), "{usage:?}");
    }

    #[test]
    fn a_bad_flag_value_names_the_flag() {
        let usage = describe_args(
            &["entitlement-gate", "check", "--deadline", "soon"],
            &[("ENTITLEMENT_GATE_DEADLINE", "90s")],
        );
        assert!(
            usage.detail.starts_with("--deadline \"soon\" is invalid"),
            "{usage:?}"
        );
        let usage = describe_args(&["entitlement-gate", "check", "--log-format", "xml"], &[]);
        assert!(usage.detail.contains("text"), "{usage:?}");
    }

    #[test]
    fn flag_values_are_found_in_both_spellings_before_a_double_dash() {
        let args: Vec<OsString> = [
            "eg",
            "check",
            "--handoff-dir=/h",
            "--",
            "--handoff-dir",
            "/x",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(flag_value(&args, "--handoff-dir"), Some("/h".into()));
        let args: Vec<OsString> = ["eg", "--termination-log", "/t", "check"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(flag_value(&args, "--termination-log"), Some("/t".into()));
        assert_eq!(subcommand(&args), Some("check"));
    }
}
