//! `metering-emulator`: serve AWS Marketplace Metering, License Manager and STS web identity
//! locally. See `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use metering_emulator::keys::RsaKey;
use metering_emulator::{
    parse_licenses, Config, Customer, Faults, InjectedError, JsonNumber, LicenseFault, Operation,
    RandomFaults, RefreshToken, RegistrationToken, ResponseFault, StatusFault, TokenFault,
};

/// A local stand-in for AWS Marketplace Metering, License Manager and STS web identity, for
/// tests and demos.
///
/// One port serves Metering (RegisterUsage, MeterUsage, BatchMeterUsage, ResolveCustomer) and
/// License Manager (CheckoutLicense, ExtendLicenseConsumption, CheckInLicense, GetLicense,
/// GetAccessToken) over awsJson1_1, and STS AssumeRoleWithWebIdentity over awsQuery. Point an
/// AWS SDK at it with AWS_ENDPOINT_URL=http://ADDR (or AWS_ENDPOINT_URL_MARKETPLACE_METERING,
/// AWS_ENDPOINT_URL_LICENSE_MANAGER, AWS_ENDPOINT_URL_STS) and any credentials. It checks the
/// target, the body and the SigV4 scope, answers the documented errors, and signs tokens with
/// its own RSA key.
///
/// Control and inspection: GET /_emulator/status (the period and Region a client should match),
/// GET /_emulator/stats (calls per operation), GET /_emulator/ledger
/// (accepted metering records and idempotency counters), GET /_emulator/licenses (seats in use
/// and checkouts), POST /_emulator/faults (replace the faults: a JSON object with the fault
/// options below in camelCase, e.g. {"operations": ["meter-usage"], "throttleFirst": 2,
/// "random": {"seed": 7, "loseResponse": 0.1}}, or {} for none).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8787")]
    listen: String,

    /// Write the bound address (host:port) to this file once listening.
    #[arg(long, value_name = "PATH")]
    addr_file: Option<PathBuf>,

    /// The Region this endpoint serves: Metering calls signed for another get
    /// InvalidRegionException (RegisterUsage) or InvalidEndpointRegionException (MeterUsage);
    /// licenses live here unless they name another home Region.
    #[arg(long, default_value = "us-east-1")]
    region: String,

    /// RSA private key (PKCS#8 or PKCS#1 PEM) that signs RegisterUsage tokens, License Manager
    /// SignedTokens and access tokens; generated when absent.
    #[arg(long, value_name = "PATH")]
    private_key_file: Option<PathBuf>,

    /// Write the signing key's public half (SPKI PEM) here, for the gate's --public-key-file.
    #[arg(long, value_name = "PATH")]
    public_key_out: Option<PathBuf>,

    /// Accepted public key versions (repeatable); others get InvalidPublicKeyVersionException.
    #[arg(long = "key-version", value_name = "N", default_values_t = [1])]
    key_versions: Vec<u32>,

    /// Product code with an active subscription (repeatable).
    #[arg(long, value_name = "CODE")]
    entitled: Vec<String>,

    /// Known product code without a subscription: CustomerNotEntitledException (repeatable).
    /// Codes in neither list get InvalidProductCodeException.
    #[arg(long, value_name = "CODE")]
    not_entitled: Vec<String>,

    /// Send PublicKeyRotationTimestamp (epoch seconds) with every token: any JSON number, sent
    /// as written (e.g. 1900000000, or 9.3e18 and 1e400, which no timestamp holds).
    #[arg(long, value_name = "EPOCH_SECONDS")]
    rotation_timestamp: Option<JsonNumber>,

    /// RegisterUsage's per-account quota: a token bucket of N calls per second (AWS: 5); calls
    /// beyond it get ThrottlingException. Off by default. Counters are at GET /_emulator/stats.
    #[arg(long, value_name = "N")]
    quota_per_second: Option<u32>,

    /// Another operation's quota in calls per second, 0 for none (repeatable). Defaults:
    /// meter-usage=10 and batch-meter-usage=10, as AWS's.
    #[arg(long = "quota", value_name = "OPERATION=N", value_parser = parse_quota)]
    quotas: Vec<(Operation, u32)>,

    /// The metering period (AWS: an hour), as 1h, 10m, 30s or 500ms: MeterUsage timestamps
    /// round down to it, and are accepted up to 6 periods back.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    period: Duration,

    /// A usage dimension of the product (repeatable); MeterUsage for another gets
    /// InvalidUsageDimensionException. None given: any dimension is accepted.
    #[arg(long = "dimension", value_name = "NAME")]
    dimensions: Vec<String>,

    /// A SaaS customer subscribed to the product, for BatchMeterUsage (repeatable): its
    /// CustomerIdentifier, optionally with its AWS account ID (CustomerAWSAccountId).
    #[arg(long = "customer", value_name = "ID[:ACCOUNT]")]
    customers: Vec<Customer>,

    /// A SaaS registration token ResolveCustomer resolves (repeatable), as
    /// TOKEN=CUSTOMER_ID:ACCOUNT_ID:PRODUCT_CODE[:LICENSE_ARN]; its customer is subscribed for
    /// BatchMeterUsage too. Unknown tokens get InvalidTokenException.
    #[arg(
        long = "registration-token",
        value_name = "TOKEN=CUSTOMER:ACCOUNT:PRODUCT"
    )]
    registration_tokens: Vec<RegistrationToken>,

    /// A registration token that has expired (same form): ExpiredTokenException.
    #[arg(
        long = "expired-registration-token",
        value_name = "TOKEN=CUSTOMER:ACCOUNT:PRODUCT"
    )]
    expired_registration_tokens: Vec<RegistrationToken>,

    /// License Manager licenses from a JSON file: {"licenses": [{"productSku": "prod-abc",
    /// "entitlements": [{"name": "Seats", "unit": "Count", "maxCount": 3}]}]}. Optional per
    /// license: licenseArn, licenseName, productName, keyFingerprint (default AWS
    /// Marketplace's), begin and end (ISO 8601, e.g. 2027-01-01T00:00:00Z), homeRegion
    /// (default --region; checkouts signed for another Region get RedirectException),
    /// floatingTtlSeconds (default 3600). Per entitlement: unit (the model's, e.g. Count,
    /// Gigabytes, None), maxCount (required unless unit is None), value (for None, default
    /// Enabled), overage (default false), allowCheckIn (default true).
    #[arg(long, value_name = "FILE")]
    licenses: Option<PathBuf>,

    /// A buyer's License Manager refresh token GetAccessToken accepts (repeatable); unknown
    /// ones get AuthorizationException.
    #[arg(long = "refresh-token", value_name = "TOKEN")]
    refresh_tokens: Vec<String>,

    /// A refresh token that has expired (repeatable): AuthorizationException.
    #[arg(long = "expired-refresh-token", value_name = "TOKEN")]
    expired_refresh_tokens: Vec<String>,

    /// How long GetAccessToken's access tokens live.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    access_token_ttl: Duration,

    /// A buyer role ARN STS AssumeRoleWithWebIdentity lets an access token assume
    /// (repeatable); others get AccessDenied.
    #[arg(long = "buyer-role", value_name = "ARN")]
    buyer_roles: Vec<String>,

    /// How long AssumeRoleWithWebIdentity's credentials live when the call names no
    /// DurationSeconds.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
    session_ttl: Duration,

    /// Refuse this operation as IAM would (repeatable): AccessDeniedException, or
    /// UnauthorizedException for a MeterUsage DryRun.
    #[arg(long, value_enum, value_name = "OPERATION")]
    deny: Vec<Operation>,

    /// Also serve IMDSv2 credentials and Region, as an EC2 node would
    /// (point AWS_EC2_METADATA_SERVICE_ENDPOINT here).
    #[arg(long)]
    imds: bool,

    /// Run the service's clock this far from the host's, as -40m (behind: the caller's clock
    /// looks 40 minutes ahead) or 2h (ahead): IssuedAt, Expiration, token claims and every
    /// expiry follow it.
    #[arg(long, value_name = "[-]DURATION", value_parser = parse_offset, allow_hyphen_values = true)]
    clock_offset: Option<i64>,

    #[command(flatten)]
    faults: FaultArgs,
}

/// Faults, applied to every operation (or those --faults-on names), each counting its own calls.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Faults (also settable while running: POST /_emulator/faults)")]
struct FaultArgs {
    /// Apply the faults only to these operations (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "OPERATION,...")]
    faults_on: Vec<Operation>,

    /// Close the connection without answering the first N calls.
    #[arg(long, value_name = "N", default_value_t = 0)]
    drop_first: u32,

    /// Answer the next N calls with the operation's throttling error (ThrottlingException,
    /// RateLimitExceededException for License Manager, Throttling for STS).
    #[arg(long, value_name = "N", default_value_t = 0)]
    throttle_first: u32,

    /// Answer the next N calls with the operation's 500 (InternalServiceErrorException,
    /// ServerInternalException, InternalFailure).
    #[arg(long, value_name = "N", default_value_t = 0)]
    fail_first: u32,

    /// Wait this many milliseconds before answering each call.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay_ms: u64,

    /// Answer every later call with this error, as CODE or CODE:STATUS
    /// (e.g. AccessDeniedException, PlatformNotSupportedException, DisabledApiException).
    #[arg(long, value_name = "CODE[:STATUS]")]
    error: Option<InjectedError>,

    /// Name the --error code only in the X-Amzn-ErrorType header, with an empty JSON body.
    #[arg(long, requires = "error")]
    error_in_header: bool,

    /// Answer every later call with this bare HTTP status and no AWS error code, as a load
    /// balancer or proxy does: STATUS (400-599) with an empty body, or STATUS:html (an HTML page),
    /// STATUS:message (JSON with only a "message"), STATUS:text (a plain-text reason).
    #[arg(long, value_name = "STATUS[:BODY]", conflicts_with = "error")]
    status_fault: Option<StatusFault>,

    /// Spoil every successful answer at the HTTP level.
    #[arg(long, value_enum, value_name = "FAULT")]
    response_fault: Option<ResponseFault>,

    /// Spoil every RegisterUsage token this way.
    #[arg(long, value_enum, value_name = "FAULT")]
    token_fault: Option<TokenFault>,

    /// BatchMeterUsage: return the first N records received (across calls) unprocessed, in
    /// UnprocessedRecords, for the client to resend.
    #[arg(long, value_name = "N", default_value_t = 0)]
    unprocessed_first: u32,

    /// Spoil License Manager answers in ways AWS never answers: expiration-passed (a checkout
    /// whose Expiration precedes its IssuedAt), fewer-units or negative-units (EntitlementsAllowed
    /// with fewer units than asked), other-product-sku (GetLicense describes another product),
    /// extend-without-expiration (ExtendLicenseConsumption answers no Expiration).
    #[arg(long, value_enum, value_name = "FAULT")]
    license_fault: Option<LicenseFault>,

    /// Seed for the random faults, so a chaos run can be replayed.
    #[arg(long, value_name = "N", default_value_t = 0)]
    random_seed: u64,

    /// Probability (0-1) that a call loses its connection before it is processed.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_drop: f64,

    /// Probability that a call is throttled.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_throttle: f64,

    /// Probability that a call gets a 500.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_fail: f64,

    /// Probability that a call is processed (its usage recorded) but its answer is lost: the
    /// connection closes, and the client must resend idempotently.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_lose_response: f64,

    /// Probability that a call is answered --random-slow-ms late.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_slow: f64,

    #[arg(long, value_name = "MS", default_value_t = 3000)]
    random_slow_ms: u64,

    /// Probability that a BatchMeterUsage record comes back unprocessed.
    #[arg(long, value_name = "P", default_value_t = 0.0)]
    random_unprocessed: f64,
}

impl FaultArgs {
    fn into_faults(self) -> Faults {
        let random = RandomFaults {
            seed: self.random_seed,
            drop: self.random_drop,
            throttle: self.random_throttle,
            fail: self.random_fail,
            lose_response: self.random_lose_response,
            slow: self.random_slow,
            slow_delay: Duration::from_millis(self.random_slow_ms),
            unprocessed: self.random_unprocessed,
        };
        let any_random = [
            random.drop,
            random.throttle,
            random.fail,
            random.lose_response,
            random.slow,
            random.unprocessed,
        ]
        .iter()
        .any(|probability| *probability > 0.0);
        Faults {
            operations: (!self.faults_on.is_empty()).then(|| self.faults_on.into_iter().collect()),
            drop_first: self.drop_first,
            throttle_first: self.throttle_first,
            fail_first: self.fail_first,
            delay: Duration::from_millis(self.delay_ms),
            error: self.error,
            error_in_header_only: self.error_in_header,
            status: self.status_fault,
            token: self.token_fault,
            response: self.response_fault,
            random: any_random.then_some(random),
            unprocessed_first: self.unprocessed_first,
            license_fault: self.license_fault,
        }
    }
}

/// `OPERATION=N`, as `meter-usage=20`.
fn parse_quota(text: &str) -> Result<(Operation, u32), String> {
    let (operation, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not OPERATION=N"))?;
    let operation = <Operation as clap::ValueEnum>::from_str(operation, true)
        .map_err(|_| format!("{operation:?} is not an operation"))?;
    let rate = rate
        .parse()
        .map_err(|_| format!("{rate:?} is not a whole number of calls per second"))?;
    Ok((operation, rate))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => Err(format!("cannot start the async runtime: {e}.")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(sentence) => {
            eprintln!("metering-emulator: {sentence}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until the listener fails; errors come back as sentences for the operator.
async fn run(cli: Cli) -> Result<(), String> {
    let key = match &cli.private_key_file {
        Some(path) => {
            let pem = read(path)?;
            RsaKey::from_private_pem(&pem)
                .map_err(|e| format!("{} holds no usable signing key: {e}.", path.display()))?
        }
        None => RsaKey::generate(2048),
    };
    if let Some(path) = &cli.public_key_out {
        write(path, &key.public_spki_pem)?;
    }
    let mut config = Config::new(Arc::new(key));
    config.region = cli.region;
    config.key_versions = cli.key_versions.into_iter().collect();
    config.entitled = cli.entitled.into_iter().collect();
    config.not_entitled = cli.not_entitled.into_iter().collect();
    config.rotation_timestamp = cli.rotation_timestamp;
    config.imds = cli.imds;
    config.quota_per_second = cli.quota_per_second;
    config.quotas.extend(cli.quotas);
    config.period = cli.period;
    config.dimensions = cli.dimensions.into_iter().collect();
    config.customers = cli.customers;
    config.registration_tokens = cli.registration_tokens;
    config.registration_tokens.extend(
        cli.expired_registration_tokens
            .into_iter()
            .map(RegistrationToken::expired),
    );
    if let Some(path) = &cli.licenses {
        config.licenses =
            parse_licenses(&read(path)?).map_err(|e| format!("{}: {e}.", path.display()))?;
    }
    let expired = cli
        .expired_refresh_tokens
        .iter()
        .map(|token| RefreshToken::new(token).expired());
    config.refresh_tokens = cli
        .refresh_tokens
        .iter()
        .map(|token| RefreshToken::new(token))
        .chain(expired)
        .collect();
    config.access_token_ttl = cli.access_token_ttl;
    config.buyer_roles = cli.buyer_roles.into_iter().collect();
    config.session_ttl = cli.session_ttl;
    config.denied = cli.deny.into_iter().collect();
    config.clock_offset_seconds = cli.clock_offset.unwrap_or(0);
    config.faults = cli.faults.into_faults();
    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}.", cli.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot tell which address it listens on: {e}."))?;
    if let Some(path) = &cli.addr_file {
        write(path, &addr.to_string())?;
    }
    eprintln!(
        "metering-emulator: serving Metering ({}), License Manager and STS on http://{addr}",
        config.region
    );
    metering_emulator::serve(config, listener)
        .await
        .map_err(|e| format!("stopped accepting connections: {e}."))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}.", path.display()))
}

fn write(path: &Path, contents: &str) -> Result<(), String> {
    std::fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}.", path.display()))
}

/// `1h`, `10m`, `30s`, `500ms`, or a bare number of seconds; at least a millisecond. The same
/// syntax as the gate's `config::parse_duration`, which this crate cannot call: the gate depends
/// on the emulator (for its tests), not the other way round.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let duration = match unit {
        "" | "s" => Duration::from_secs(number),
        "ms" => Duration::from_millis(number),
        "m" => Duration::from_secs(number * 60),
        "h" => Duration::from_secs(number * 3600),
        _ => return Err(format!("{text:?} has no unit of ms, s, m or h")),
    };
    if duration.is_zero() {
        return Err("a duration must be longer than zero".to_owned());
    }
    Ok(duration)
}

/// A clock offset in whole seconds: a duration, negative with a leading `-`.
fn parse_offset(text: &str) -> Result<i64, String> {
    let (sign, duration) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let seconds = i64::try_from(parse_duration(duration)?.as_secs())
        .map_err(|_| format!("{text:?} is too far off"))?;
    Ok(sign * seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_are_signed_durations() {
        assert_eq!(parse_offset("-40m"), Ok(-2400));
        assert_eq!(parse_offset("2h"), Ok(7200));
        assert_eq!(parse_offset("+90s"), Ok(90));
        assert!(parse_offset("-").is_err());
        assert!(parse_offset("-0s").is_err());
    }

    #[test]
    fn durations_take_a_unit_or_mean_seconds() {
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1d").unwrap_err().contains("no unit"));
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
