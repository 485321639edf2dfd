//! Settings: built-in defaults, then the settings file, then `AUDIENCE_SYNC__SECTION__KEY`
//! environment variables, parsed once into typed values.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;
use url::Url;

/// The shipped `settings.toml` is the documented default: it is compiled in as the first source.
pub const DEFAULTS: &str = include_str!("../settings.toml");

pub use audience_sync_core::intercom::budget::RATE_LIMIT_AUTO;
pub use audience_sync_core::intercom::values::LongStrings;

/// Intercom's documented budget for a private app: 10,000 requests a minute.
const INTERCOM_DOCUMENTED_PER_MINUTE: u64 = 10_000;

/// Settings that cannot be used: the file named by `--config` is missing, or the settings do
/// not parse or do not make sense. Bad input (the command line maps it to exit 2); a settings
/// file that exists but cannot be read is not this, it is an IO failure.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("settings file {} does not exist", .0.display())]
    Missing(PathBuf),
    /// `place` names the sources (`settings (FILE and AUDIENCE_SYNC__* variables)`); `reason` is
    /// what was wrong, with its causes.
    #[error("invalid {place}: {reason}")]
    Invalid { place: String, reason: String },
}

/// Where settings are looked for when `--config` is not given, in order.
pub const DEFAULT_PATHS: [&str; 2] = ["settings.toml", "/etc/audience-sync/settings.toml"];

/// The access token. It never prints: `Debug` and `Display` show a redaction.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The token itself, for the `Authorization` header and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub schedule: ScheduleSettings,
    pub personas: PersonasSettings,
    pub intercom: IntercomSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub plan: PlanSettings,
    pub retention: RetentionSettings,
    pub compute: ComputeSettings,
}

/// `[[computations]]`, `[membership]` and `[compute]`: computations defined in SQL (SPEC section
/// 11), which `compute` (and the daemon, before each scheduled run) turns into snapshots.
#[derive(Debug, Clone, Default)]
pub struct ComputeSettings {
    pub computations: Vec<SqlComputation>,
    /// `[membership] sql`: the account membership as a query.
    pub membership: Option<String>,
    /// `compute.timeout_secs`: a query running longer is stopped and stores nothing.
    pub timeout: Duration,
}

impl ComputeSettings {
    /// Anything to compute at all.
    pub fn is_empty(&self) -> bool {
        self.computations.is_empty() && self.membership.is_none()
    }

    pub fn find(&self, key: &str) -> Option<&SqlComputation> {
        self.computations.iter().find(|c| c.key == key)
    }
}

/// One `[[computations]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlComputation {
    pub key: String,
    pub name: Option<String>,
    pub kind: crate::domain::Kind,
    pub scope: crate::domain::Scope,
    /// One read-only statement returning the columns of a snapshot file; `:now` is bound.
    pub sql: String,
}

/// `[plan]`: how far planning runs ahead of delivery (SPEC section 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanSettings {
    /// A run waits before its next chunk while the outbox holds at least this many undelivered
    /// messages (where something delivers them: the daemon, `sync`).
    pub max_pending_messages: u64,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ScheduleSettings {
    /// Six fields: sec min hour day month weekday.
    pub cron: String,
    pub run_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct PersonasSettings {
    pub space_id: String,
    pub track_on_initial_sync: bool,
    pub audience_entered_event: String,
    pub audience_exited_event: String,
    pub trait_computed_event: String,
}

#[derive(Debug, Clone)]
pub struct IntercomSettings {
    pub base_url: Url,
    pub access_token: Secret,
    pub api_version: String,
    /// Requests per window at most (`intercom.rate_limit`), or [`RATE_LIMIT_AUTO`] for
    /// `"auto"`: whatever Intercom announces.
    pub rate_limit: u32,
    pub rate_limit_window: Duration,
    /// The most messages in flight at once (`intercom.max_concurrency`): an upper bound; the
    /// drain keeps about budget rate × latency in flight (`Client::in_flight_target`).
    pub max_concurrency: usize,
    pub request_timeout: Duration,
    /// Counted failures of one message (not 429s, not transient errors) before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// How long a message may keep failing with transient errors (408, 5xx, timeouts, no
    /// connection) before it is dead-lettered.
    pub retry_for: Duration,
    /// The longest wait between two probes while Intercom is unreachable (probes start 1 s
    /// apart, or this if shorter, and double up to it); also the longest back-off of one
    /// message's transient retries.
    pub outage_probe: Duration,
    pub long_strings: LongStrings,
    pub company_attribute_prefix: String,
}

impl IntercomSettings {
    /// Whether `intercom.rate_limit = "auto"`.
    pub fn rate_limit_is_auto(&self) -> bool {
        self.rate_limit == RATE_LIMIT_AUTO
    }

    /// `intercom.rate_limit` as written in settings: `auto` or the number.
    pub fn rate_limit_text(&self) -> String {
        if self.rate_limit_is_auto() {
            "auto".to_string()
        } else {
            self.rate_limit.to_string()
        }
    }

    /// Requests per `rate_limit_window` to estimate with before Intercom has announced a
    /// budget: the number, or for `"auto"` what Intercom documents for a private app (10,000 a
    /// minute, 1,666 per 10 s), scaled to the window. An estimate, never a limit.
    pub fn rate_limit_estimate(&self) -> u32 {
        if self.rate_limit_is_auto() {
            let per_window = INTERCOM_DOCUMENTED_PER_MINUTE * self.rate_limit_window.as_secs() / 60;
            per_window.clamp(1, u64::from(RATE_LIMIT_AUTO - 1)) as u32
        } else {
            self.rate_limit
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `None` when `http.listen = ""`: no metrics endpoint.
    pub listen: Option<SocketAddr>,
    /// `/healthz` fails when the oldest undelivered message is older than this.
    pub max_pending_age: Duration,
}

/// `[retention]`: what `audience-sync prune` and the daemon (after each run) remove (SPEC section
/// 9; the rules are in `store::retention`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Delivered outbox rows are kept this long after they were delivered (`delivered_days`).
    /// Dead letters and pending messages are never removed.
    pub delivered_for: Duration,
    /// Run records kept: the newest this many (besides runs a kept message still refers to).
    pub runs: u64,
    /// Complete snapshots kept per computation, and membership snapshots, besides any a planned
    /// base still needs.
    pub snapshots_per_computation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise (for example under systemd).
    Auto,
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

// The raw shapes, exactly as in settings.toml. `deny_unknown_fields` makes a misspelt key an
// error that names it instead of a silently ignored line.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    database: RawDatabase,
    schedule: RawSchedule,
    personas: RawPersonas,
    intercom: RawIntercom,
    http: RawHttp,
    log: RawLog,
    plan: RawPlan,
    retention: RawRetention,
    compute: RawCompute,
    #[serde(default)]
    computations: Vec<RawComputation>,
    #[serde(default)]
    membership: Option<RawMembership>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompute {
    timeout_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComputation {
    key: Option<String>,
    name: Option<String>,
    kind: String,
    scope: String,
    sql: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMembership {
    sql: String,
}

/// The longest `compute.timeout_secs`: a day.
const MAX_COMPUTE_TIMEOUT_SECS: u64 = 86_400;

/// `[[computations]]`, `[membership]`, `[compute]`: each entry named by its position (and key)
/// when it is wrong. A key may be left out when a name is given: it is the name's snake_case
/// (SPEC section 2).
fn parse_compute(
    compute: &RawCompute,
    computations: Vec<RawComputation>,
    membership: Option<RawMembership>,
) -> anyhow::Result<ComputeSettings> {
    use crate::domain::{Kind, Scope};
    use heck::ToSnakeCase;
    positive("compute.timeout_secs", compute.timeout_secs)?;
    if compute.timeout_secs > MAX_COMPUTE_TIMEOUT_SECS {
        anyhow::bail!(
            "compute.timeout_secs: {} is more than {MAX_COMPUTE_TIMEOUT_SECS} seconds (a day)",
            compute.timeout_secs
        );
    }
    let mut parsed: Vec<SqlComputation> = Vec::with_capacity(computations.len());
    for (index, raw) in computations.into_iter().enumerate() {
        let at = match raw.key.as_deref().or(raw.name.as_deref()) {
            Some(named) => format!("computations[{index}] ({named:?})"),
            None => format!("computations[{index}]"),
        };
        if let Some(name) = &raw.name
            && name.trim().is_empty()
        {
            anyhow::bail!("{at}: name must not be empty");
        }
        let key = match (&raw.key, &raw.name) {
            (Some(key), _) => key.clone(),
            (None, Some(name)) => name.to_snake_case(),
            (None, None) => anyhow::bail!("{at}: needs a key (or a name to derive it from)"),
        };
        crate::load::check_key(&key).map_err(|e| anyhow::anyhow!("{at}: key: {e}"))?;
        if let Some(first) = parsed.iter().position(|c| c.key == key) {
            anyhow::bail!("{at}: key {key:?} is also the key of computations[{first}]");
        }
        let kind = Kind::parse(raw.kind.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "{at}: kind: {:?} is not \"audience\" or \"trait\"",
                raw.kind
            )
        })?;
        let scope = Scope::parse(raw.scope.trim()).ok_or_else(|| {
            anyhow::anyhow!(
                "{at}: scope: {:?} is not \"user\" or \"account\"",
                raw.scope
            )
        })?;
        if raw.sql.trim().is_empty() {
            anyhow::bail!("{at}: sql must not be empty");
        }
        parsed.push(SqlComputation {
            key,
            name: raw.name.map(|n| n.trim().to_string()),
            kind,
            scope,
            sql: raw.sql,
        });
    }
    let membership = match membership {
        Some(m) if m.sql.trim().is_empty() => anyhow::bail!("membership.sql: must not be empty"),
        Some(m) => Some(m.sql),
        None => None,
    };
    Ok(ComputeSettings {
        computations: parsed,
        membership,
        timeout: Duration::from_secs(compute.timeout_secs),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    max_pending_messages: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: String,
    run_on_start: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPersonas {
    space_id: String,
    track_on_initial_sync: bool,
    audience_entered_event: String,
    audience_exited_event: String,
    trait_computed_event: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntercom {
    base_url: String,
    access_token: String,
    access_token_file: String,
    api_version: String,
    rate_limit: RawRateLimit,
    rate_limit_window_secs: u64,
    max_concurrency: usize,
    request_timeout_secs: u64,
    max_attempts: u32,
    retry_for_secs: u64,
    outage_probe_secs: f64,
    long_strings: LongStrings,
    company_attribute_prefix: String,
}

/// `intercom.rate_limit` as written: `"auto"`, a number, or (from the environment) a string
/// holding one. Anything scalar is taken here and judged in [`parse_rate_limit`], so that a
/// wrong value is refused with a message naming the key.
#[derive(Debug)]
enum RawRateLimit {
    Integer(i128),
    Float(f64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawRateLimit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawRateLimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"auto\" or a positive number of requests per window")
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawRateLimit, E> {
                Ok(RawRateLimit::Integer(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawRateLimit, E> {
                Ok(RawRateLimit::Integer(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<RawRateLimit, E> {
                Ok(RawRateLimit::Integer(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawRateLimit, E> {
                Ok(RawRateLimit::Float(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawRateLimit, E> {
                Ok(RawRateLimit::Text(v.to_string()))
            }
            fn visit_str<E>(self, v: &str) -> Result<RawRateLimit, E> {
                Ok(RawRateLimit::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `intercom.rate_limit`: `"auto"` ([`RATE_LIMIT_AUTO`]) or a positive whole number.
fn parse_rate_limit(raw: &RawRateLimit) -> anyhow::Result<u32> {
    const KEY: &str = "intercom.rate_limit";
    let number = |n: i128| -> anyhow::Result<u32> {
        if n <= 0 {
            anyhow::bail!("{KEY}: {n} must be \"auto\" or a number greater than 0");
        }
        match u32::try_from(n) {
            Ok(n) if n < RATE_LIMIT_AUTO => Ok(n),
            _ => anyhow::bail!(
                "{KEY}: {n} is more than any budget; use \"auto\" for Intercom's announced budget"
            ),
        }
    };
    match raw {
        RawRateLimit::Integer(n) => number(*n),
        RawRateLimit::Float(x) if x.fract() == 0.0 && x.is_finite() => number(*x as i128),
        RawRateLimit::Float(x) => {
            anyhow::bail!("{KEY}: {x} must be \"auto\" or a whole number of requests per window")
        }
        RawRateLimit::Text(text) => {
            let text = text.trim();
            if text.eq_ignore_ascii_case("auto") {
                Ok(RATE_LIMIT_AUTO)
            } else if let Ok(n) = text.parse::<i128>() {
                number(n)
            } else {
                anyhow::bail!(
                    "{KEY}: {text:?} is neither \"auto\" (Intercom's announced budget) nor a \
                     positive number of requests per window"
                )
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: String,
    max_pending_age_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: LogFormat,
    level: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    delivered_days: u64,
    runs: u64,
    snapshots_per_computation: u64,
}

/// The longest `retention.delivered_days` (a century: "keep them").
const MAX_DELIVERED_DAYS: u64 = 36_500;

/// `[retention]`: `delivered_days` may be 0 (delivered rows go at the next prune); `runs` and
/// `snapshots_per_computation` must keep at least one (the newest snapshot is what the next run
/// plans from).
fn parse_retention(raw: &RawRetention) -> anyhow::Result<RetentionSettings> {
    if raw.delivered_days > MAX_DELIVERED_DAYS {
        anyhow::bail!(
            "retention.delivered_days: {} is more than {MAX_DELIVERED_DAYS} days",
            raw.delivered_days
        );
    }
    positive("retention.runs", raw.runs)?;
    positive(
        "retention.snapshots_per_computation",
        raw.snapshots_per_computation,
    )?;
    Ok(RetentionSettings {
        delivered_for: Duration::from_secs(raw.delivered_days * 86_400),
        runs: raw.runs,
        snapshots_per_computation: raw.snapshots_per_computation,
    })
}

impl Settings {
    /// The built-in defaults alone (the shipped settings.toml), with the environment ignored.
    pub fn defaults() -> anyhow::Result<Settings> {
        let config = Config::builder()
            .add_source(File::from_str(DEFAULTS, FileFormat::Toml))
            .build()?;
        Settings::from_config(config)
    }

    /// Load settings for a command. `explicit` is `--config`: it must exist. Without it the
    /// default paths are tried, and the built-in defaults stand alone when none exists.
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Settings> {
        let file = match explicit {
            Some(path) => {
                if !path.is_file() {
                    return Err(SettingsError::Missing(path.to_path_buf()).into());
                }
                Some(path.to_path_buf())
            }
            None => DEFAULT_PATHS
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
        };
        Settings::load_from(file.as_deref(), std::env::vars())
    }

    /// Load from an optional file and an explicit set of environment variables (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Settings> {
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("AUDIENCE_SYNC__"))
            .collect();
        let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read settings file {}", path.display()))?;
            builder = builder.add_source(File::from_str(&text, FileFormat::Toml));
        }
        // The environment is added last so that it wins over the file.
        builder = builder.add_source(
            Environment::with_prefix("AUDIENCE_SYNC")
                .prefix_separator("__")
                .separator("__")
                .source(Some(env)),
        );
        let where_ = match file {
            Some(path) => format!(
                "settings ({} and AUDIENCE_SYNC__* variables)",
                path.display()
            ),
            None => "settings (built-in defaults and AUDIENCE_SYNC__* variables)".to_string(),
        };
        let config = builder.build().map_err(|e| SettingsError::Invalid {
            place: where_.clone(),
            reason: e.to_string(),
        })?;
        Settings::from_config(config).map_err(|e| {
            SettingsError::Invalid {
                place: where_,
                reason: format!("{e:#}"),
            }
            .into()
        })
    }

    fn from_config(config: Config) -> anyhow::Result<Settings> {
        let raw: Raw = config.try_deserialize()?;
        Settings::from_raw(raw)
    }

    fn from_raw(raw: Raw) -> anyhow::Result<Settings> {
        let base_url = Url::parse(&raw.intercom.base_url).map_err(|e| {
            anyhow::anyhow!(
                "intercom.base_url: {:?} is not a URL ({e})",
                raw.intercom.base_url
            )
        })?;
        if !matches!(base_url.scheme(), "http" | "https") {
            anyhow::bail!(
                "intercom.base_url: {:?} must be an http or https URL",
                raw.intercom.base_url
            );
        }
        let access_token = if raw.intercom.access_token_file.is_empty() {
            Secret::new(raw.intercom.access_token.trim())
        } else {
            let path = Path::new(&raw.intercom.access_token_file);
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "intercom.access_token_file: cannot read {} ({e})",
                    path.display()
                )
            })?;
            Secret::new(text.trim())
        };
        let rate_limit = parse_rate_limit(&raw.intercom.rate_limit)?;
        positive(
            "intercom.rate_limit_window_secs",
            raw.intercom.rate_limit_window_secs,
        )?;
        positive(
            "intercom.max_concurrency",
            raw.intercom.max_concurrency as u64,
        )?;
        positive(
            "intercom.request_timeout_secs",
            raw.intercom.request_timeout_secs,
        )?;
        positive("intercom.max_attempts", raw.intercom.max_attempts as u64)?;
        positive("intercom.retry_for_secs", raw.intercom.retry_for_secs)?;
        let probe = raw.intercom.outage_probe_secs;
        if !(probe.is_finite() && probe > 0.0 && probe <= 3600.0) {
            anyhow::bail!(
                "intercom.outage_probe_secs: {probe} must be more than 0 and at most 3600 seconds"
            );
        }
        if raw.intercom.api_version.trim().is_empty() {
            anyhow::bail!("intercom.api_version: must not be empty");
        }
        let fields = raw.schedule.cron.split_whitespace().count();
        if fields != 6 {
            anyhow::bail!(
                "schedule.cron: {:?} has {fields} fields; it needs 6 (sec min hour day month weekday)",
                raw.schedule.cron
            );
        }
        for (key, name) in [
            (
                "personas.audience_entered_event",
                &raw.personas.audience_entered_event,
            ),
            (
                "personas.audience_exited_event",
                &raw.personas.audience_exited_event,
            ),
            (
                "personas.trait_computed_event",
                &raw.personas.trait_computed_event,
            ),
            ("personas.space_id", &raw.personas.space_id),
        ] {
            if name.trim().is_empty() {
                anyhow::bail!("{key}: must not be empty");
            }
        }
        let listen = if raw.http.listen.trim().is_empty() {
            None
        } else {
            Some(raw.http.listen.trim().parse::<SocketAddr>().map_err(|e| {
                anyhow::anyhow!(
                    "http.listen: {:?} is not an address like 127.0.0.1:9464 ({e})",
                    raw.http.listen
                )
            })?)
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            anyhow::bail!(
                "log.level: {:?} is not a log filter like \"info\" ({e})",
                raw.log.level
            );
        }
        if raw.database.path.trim().is_empty() {
            anyhow::bail!("database.path: must not be empty");
        }
        let retention = parse_retention(&raw.retention)?;
        positive("plan.max_pending_messages", raw.plan.max_pending_messages)?;
        let compute = parse_compute(&raw.compute, raw.computations, raw.membership)?;
        Ok(Settings {
            database: DatabaseSettings {
                path: PathBuf::from(raw.database.path),
            },
            schedule: ScheduleSettings {
                cron: raw.schedule.cron,
                run_on_start: raw.schedule.run_on_start,
            },
            personas: PersonasSettings {
                space_id: raw.personas.space_id,
                track_on_initial_sync: raw.personas.track_on_initial_sync,
                audience_entered_event: raw.personas.audience_entered_event,
                audience_exited_event: raw.personas.audience_exited_event,
                trait_computed_event: raw.personas.trait_computed_event,
            },
            intercom: IntercomSettings {
                base_url,
                access_token,
                api_version: raw.intercom.api_version,
                rate_limit,
                rate_limit_window: Duration::from_secs(raw.intercom.rate_limit_window_secs),
                max_concurrency: raw.intercom.max_concurrency,
                request_timeout: Duration::from_secs(raw.intercom.request_timeout_secs),
                max_attempts: raw.intercom.max_attempts,
                retry_for: Duration::from_secs(raw.intercom.retry_for_secs),
                outage_probe: Duration::from_secs_f64(raw.intercom.outage_probe_secs),
                long_strings: raw.intercom.long_strings,
                company_attribute_prefix: raw.intercom.company_attribute_prefix,
            },
            http: HttpSettings {
                listen,
                max_pending_age: Duration::from_secs(raw.http.max_pending_age_secs),
            },
            log: LogSettings {
                format: raw.log.format,
                level: raw.log.level,
            },
            plan: PlanSettings {
                max_pending_messages: raw.plan.max_pending_messages,
            },
            retention,
            compute,
        })
    }
}

fn positive(key: &str, value: u64) -> anyhow::Result<()> {
    if value == 0 {
        anyhow::bail!("{key}: must be greater than 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn shipped_file_is_the_default() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.database.path, PathBuf::from("audience-sync.db"));
        assert_eq!(s.schedule.cron, "0 */15 * * * *");
        assert!(s.schedule.run_on_start);
        assert_eq!(s.personas.space_id, "local");
        assert!(!s.personas.track_on_initial_sync);
        assert_eq!(s.personas.audience_entered_event, "Audience Entered");
        assert_eq!(s.personas.audience_exited_event, "Audience Exited");
        assert_eq!(s.personas.trait_computed_event, "Trait Computed");
        assert_eq!(s.intercom.base_url.as_str(), "https://api.intercom.io/");
        assert!(s.intercom.access_token.is_empty());
        assert_eq!(s.intercom.api_version, "2.14");
        assert_eq!(s.intercom.rate_limit, RATE_LIMIT_AUTO);
        assert!(s.intercom.rate_limit_is_auto());
        assert_eq!(s.intercom.rate_limit_text(), "auto");
        assert_eq!(s.intercom.rate_limit_estimate(), 1666);
        assert_eq!(s.intercom.rate_limit_window, Duration::from_secs(10));
        assert_eq!(s.intercom.max_concurrency, 64);
        assert_eq!(s.intercom.request_timeout, Duration::from_secs(30));
        assert_eq!(s.intercom.max_attempts, 10);
        assert_eq!(s.intercom.retry_for, Duration::from_secs(14_400));
        assert_eq!(s.intercom.outage_probe, Duration::from_secs(30));
        assert_eq!(s.intercom.long_strings, LongStrings::Truncate);
        assert_eq!(s.intercom.company_attribute_prefix, "account_");
        assert_eq!(s.http.listen, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(s.http.max_pending_age, Duration::from_secs(3600));
        assert_eq!(s.log.format, LogFormat::Auto);
    }

    #[test]
    fn file_then_environment_and_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[intercom]\nrate_limit = 50\nmax_concurrency = 3\n[http]\nlisten = \"\"\n",
        );
        let s = Settings::load_from(
            Some(&path),
            env(&[
                ("AUDIENCE_SYNC__INTERCOM__RATE_LIMIT", "40"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.intercom.rate_limit, 40, "environment wins over the file");
        assert_eq!(
            s.intercom.max_concurrency, 3,
            "the file wins over the defaults"
        );
        assert_eq!(
            s.intercom.request_timeout,
            Duration::from_secs(30),
            "defaults fill the rest"
        );
        assert_eq!(s.http.listen, None);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[intercom]\nrate_limt = 50\n");
        let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("rate_limt"), "{err:#}");

        let err =
            Settings::load_from(None, env(&[("AUDIENCE_SYNC__INTERCOM__TOKEN", "x")])).unwrap_err();
        assert!(format!("{err:#}").contains("token"), "{err:#}");

        let path = write(&dir, "[nonsense]\nx = 1\n");
        let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
        assert!(format!("{err:#}").contains("nonsense"), "{err:#}");
    }

    #[test]
    fn wrong_types_are_refused_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[intercom]\nrate_limit = \"lots\"\n");
        let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("rate_limit"), "{text}");

        let err = Settings::load_from(
            None,
            env(&[("AUDIENCE_SYNC__SCHEDULE__RUN_ON_START", "maybe")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("run_on_start"), "{err:#}");

        let err = Settings::load_from(
            None,
            env(&[("AUDIENCE_SYNC__INTERCOM__LONG_STRINGS", "shorten")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("long_strings"), "{err:#}");

        let err = Settings::load_from(
            None,
            env(&[("AUDIENCE_SYNC__INTERCOM__BASE_URL", "not a url")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("intercom.base_url"), "{err:#}");

        let err = Settings::load_from(
            None,
            env(&[("AUDIENCE_SYNC__SCHEDULE__CRON", "*/5 * * * *")]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("schedule.cron"), "{err:#}");
    }

    #[test]
    fn environment_values_are_typed() {
        let s = Settings::load_from(
            None,
            env(&[
                ("AUDIENCE_SYNC__SCHEDULE__RUN_ON_START", "false"),
                ("AUDIENCE_SYNC__INTERCOM__MAX_ATTEMPTS", "3"),
                ("AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN", "12345"),
            ]),
        )
        .unwrap();
        assert!(!s.schedule.run_on_start);
        assert_eq!(s.intercom.max_attempts, 3);
        assert_eq!(s.intercom.access_token.expose(), "12345");
    }

    #[test]
    fn token_file_wins_and_token_never_prints() {
        let dir = tempfile::tempdir().unwrap();
        let token_path = dir.path().join("token");
        std::fs::write(&token_path, "tok_from_file\n").unwrap();
        let s = Settings::load_from(
            None,
            env(&[
                ("AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN", "tok_from_env"),
                (
                    "AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN_FILE",
                    token_path.to_str().unwrap(),
                ),
            ]),
        )
        .unwrap();
        assert_eq!(s.intercom.access_token.expose(), "tok_from_file");
        let printed = format!("{s:?} {}", s.intercom.access_token);
        assert!(!printed.contains("tok_from_file"), "{printed}");

        let missing = dir.path().join("missing");
        let err = Settings::load_from(
            None,
            env(&[(
                "AUDIENCE_SYNC__INTERCOM__ACCESS_TOKEN_FILE",
                missing.to_str().unwrap(),
            )]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("access_token_file"), "{err:#}");
    }

    #[test]
    fn rate_limit_is_auto_or_a_positive_number() {
        let dir = tempfile::tempdir().unwrap();
        for (file, expected) in [
            ("rate_limit = \"auto\"", RATE_LIMIT_AUTO),
            ("rate_limit = \"AUTO\"", RATE_LIMIT_AUTO),
            ("rate_limit = 83", 83),
            ("rate_limit = 1666", 1666),
            ("rate_limit = 1", 1),
            ("rate_limit = \"120\"", 120),
            ("rate_limit = 40.0", 40),
        ] {
            let path = write(&dir, &format!("[intercom]\n{file}\n"));
            let s = Settings::load_from(Some(&path), env(&[])).unwrap();
            assert_eq!(s.intercom.rate_limit, expected, "{file}");
        }
        for (value, expected) in [("auto", RATE_LIMIT_AUTO), ("50", 50), (" 7 ", 7)] {
            let s =
                Settings::load_from(None, env(&[("AUDIENCE_SYNC__INTERCOM__RATE_LIMIT", value)]))
                    .unwrap();
            assert_eq!(s.intercom.rate_limit, expected, "{value:?}");
        }
        let s = Settings::load_from(None, env(&[("AUDIENCE_SYNC__INTERCOM__RATE_LIMIT", "83")]))
            .unwrap();
        assert!(!s.intercom.rate_limit_is_auto());
        assert_eq!(s.intercom.rate_limit_text(), "83");
        assert_eq!(s.intercom.rate_limit_estimate(), 83);
    }

    #[test]
    fn other_rate_limits_are_refused_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for file in [
            "rate_limit = \"lots\"",
            "rate_limit = \"\"",
            "rate_limit = \"automatic\"",
            "rate_limit = 0",
            "rate_limit = -5",
            "rate_limit = 1.5",
            "rate_limit = true",
            "rate_limit = 4294967295",
            "rate_limit = 99999999999",
        ] {
            let path = write(&dir, &format!("[intercom]\n{file}\n"));
            let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("intercom.rate_limit"), "{file}: {text}");
        }
        for value in ["lots", "0", "-1", "auto-ish", ""] {
            let err =
                Settings::load_from(None, env(&[("AUDIENCE_SYNC__INTERCOM__RATE_LIMIT", value)]))
                    .unwrap_err();
            let text = format!("{err:#}");
            assert!(text.contains("intercom.rate_limit"), "{value:?}: {text}");
            if !value.is_empty() && value != "0" && value != "-1" {
                assert!(text.contains(value), "{value:?}: {text}");
            }
        }
    }

    #[test]
    fn retention_defaults_and_limits() {
        let s = Settings::defaults().unwrap();
        assert_eq!(
            s.retention,
            RetentionSettings {
                delivered_for: Duration::from_secs(7 * 86_400),
                runs: 1000,
                snapshots_per_computation: 2,
            }
        );
        let s = Settings::load_from(
            None,
            env(&[
                ("AUDIENCE_SYNC__RETENTION__DELIVERED_DAYS", "0"),
                ("AUDIENCE_SYNC__RETENTION__RUNS", "5"),
                ("AUDIENCE_SYNC__RETENTION__SNAPSHOTS_PER_COMPUTATION", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.retention.delivered_for, Duration::ZERO);
        assert_eq!(s.retention.runs, 5);
        assert_eq!(s.retention.snapshots_per_computation, 1);
        let dir = tempfile::tempdir().unwrap();
        for (file, key) in [
            ("runs = 0", "retention.runs"),
            (
                "snapshots_per_computation = 0",
                "retention.snapshots_per_computation",
            ),
            ("delivered_days = 36501", "retention.delivered_days"),
            ("delivered_days = -1", "delivered_days"),
            ("keep_everything = true", "keep_everything"),
        ] {
            let path = write(&dir, &format!("[retention]\n{file}\n"));
            let err = Settings::load_from(Some(&path), env(&[])).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{file}: {err:#}");
        }
    }

    #[test]
    fn sql_computations_are_parsed_and_their_mistakes_named() {
        use crate::domain::{Kind, Scope};
        let defaults = Settings::defaults().unwrap();
        assert!(defaults.compute.is_empty());
        assert_eq!(defaults.compute.timeout, Duration::from_secs(300));
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "[[computations]]\n\
             key = \"order_completed_last_30days\"\n\
             name = \"Order Completed Last 30 Days\"\n\
             kind = \"audience\"\n\
             scope = \"user\"\n\
             sql = \"SELECT user_id, email FROM orders WHERE completed_at > :now - 30*86400\"\n\
             [[computations]]\n\
             name = \"Account Tier\"\n\
             kind = \"trait\"\n\
             scope = \"account\"\n\
             sql = \"SELECT group_id, tier AS value FROM accounts\"\n\
             [membership]\n\
             sql = \"SELECT group_id, user_id, email FROM account_users\"\n\
             [compute]\n\
             timeout_secs = 20\n",
        );
        let s = Settings::load_from(Some(&path), env(&[])).unwrap();
        assert_eq!(s.compute.timeout, Duration::from_secs(20));
        assert_eq!(
            s.compute.computations,
            vec![
                SqlComputation {
                    key: "order_completed_last_30days".to_string(),
                    name: Some("Order Completed Last 30 Days".to_string()),
                    kind: Kind::Audience,
                    scope: Scope::User,
                    sql: "SELECT user_id, email FROM orders WHERE completed_at > :now - 30*86400"
                        .to_string(),
                },
                SqlComputation {
                    // No key: the name's snake_case (SPEC section 2).
                    key: "account_tier".to_string(),
                    name: Some("Account Tier".to_string()),
                    kind: Kind::Trait,
                    scope: Scope::Account,
                    sql: "SELECT group_id, tier AS value FROM accounts".to_string(),
                },
            ]
        );
        assert_eq!(
            s.compute.membership.as_deref(),
            Some("SELECT group_id, user_id, email FROM account_users")
        );
        let entry = |body: &str| format!("[[computations]]\n{body}\n");
        let ok = "kind = \"audience\"\nscope = \"user\"\nsql = \"SELECT user_id FROM t\"";
        for (file, needles) in [
            (
                entry(&format!("key = \"a\"\n{ok}")) + &entry(&format!("key = \"a\"\n{ok}")),
                vec!["computations[1]", "also the key of computations[0]"],
            ),
            (
                entry("key = \"a\"\nkind = \"audeince\"\nscope = \"user\"\nsql = \"SELECT 1\""),
                vec!["computations[0] (\"a\")", "kind", "audeince"],
            ),
            (
                entry("key = \"a\"\nkind = \"trait\"\nscope = \"team\"\nsql = \"SELECT 1\""),
                vec!["scope", "team"],
            ),
            (
                entry("key = \"a\"\nkind = \"trait\"\nscope = \"user\"\nsql = \"  \""),
                vec!["computations[0]", "sql must not be empty"],
            ),
            (entry(ok), vec!["computations[0]", "needs a key"]),
            (
                entry(&format!("key = \"High Value\"\n{ok}")),
                vec!["key", "snake_case", "high_value"],
            ),
            (
                entry(&format!("key = \"a\"\nquery = \"SELECT 1\"\n{ok}")),
                vec!["query"],
            ),
            (
                entry("key = \"a\"\nkind = \"trait\"\nscope = \"user\""),
                vec!["sql"],
            ),
            (
                "[membership]\nsql = \"\"\n".to_string(),
                vec!["membership.sql"],
            ),
            (
                "[compute]\ntimeout_secs = 0\n".to_string(),
                vec!["compute.timeout_secs"],
            ),
            (
                "[compute]\ntimeout_secs = 86401\n".to_string(),
                vec!["compute.timeout_secs"],
            ),
        ] {
            let path = write(&dir, &file);
            let err = format!(
                "{:#}",
                Settings::load_from(Some(&path), env(&[])).unwrap_err()
            );
            for needle in needles {
                assert!(err.contains(needle), "{file}: {err} lacks {needle:?}");
            }
        }
    }
}
