//! The command line: clap definitions for every command of SPEC section 7, and nothing else.
//! What each command does, and how its outcome becomes an exit code, is `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "audience-sync",
    version,
    about = "Keep Intercom in step with audiences and computed traits, the way Segment Personas does.",
    long_about = None,
)]
pub struct Cli {
    /// Settings file. Default: ./settings.toml, then /etc/audience-sync/settings.toml; built-in
    /// defaults when neither exists.
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The daemon: sync on schedule.cron, deliver continuously, stop cleanly on SIGTERM/SIGINT.
    Run,
    /// One run now: diff, enqueue, and deliver until the outbox is drained.
    Sync(SyncArgs),
    /// Print what the next run would do, changing nothing.
    Plan(PlanArgs),
    /// Store FILE as the newest complete snapshot of a computation (created on first load).
    Load(LoadArgs),
    /// Store FILE as the newest complete account membership snapshot.
    LoadMembers(LoadMembersArgs),
    /// Deliver Segment-spec messages (identify / track / group) from an NDJSON file.
    Send(SendArgs),
    /// Computations, snapshot sizes, last runs, outbox pending / retrying / dead.
    Status(StatusArgs),
    /// Inspect and act on messages that failed for good.
    DeadLetters(DeadLettersArgs),
    // The help text names settings tables in brackets, which rustdoc would take for links.
    #[command(
        about = "Run the SQL-defined computations ([[computations]], [membership]) and store each result as a new snapshot"
    )]
    Compute(ComputeArgs),
    /// Apply the retention settings now and report what was removed.
    Prune(PruneArgs),
    /// A complete local walk-through against the built-in Intercom-compatible sandbox.
    Demo,
    /// Run the built-in Intercom-compatible sandbox in the foreground.
    Sandbox(SandboxArgs),
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Re-send the current value of every entity (repairs drift; sends no track events).
    #[arg(long)]
    pub full: bool,
    /// Only this computation (its key).
    #[arg(long, value_name = "KEY")]
    pub computation: Option<String>,
    /// Write the messages as NDJSON to standard output and change nothing.
    #[arg(long, conflicts_with = "no_deliver")]
    pub dry_run: bool,
    /// Plan and enqueue only; leave delivery to a later `sync` or the daemon.
    #[arg(long)]
    pub no_deliver: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Plan a full resync instead of an incremental run.
    #[arg(long)]
    pub full: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Audience,
    Trait,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    User,
    Account,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The computation's key (snake_case; it becomes the Intercom attribute name).
    #[arg(long, value_name = "KEY")]
    pub computation: String,
    /// audience (rows are members) or trait (rows carry values).
    #[arg(long, value_enum)]
    pub kind: KindArg,
    /// user (rows keyed by user_id / email) or account (rows keyed by group_id).
    #[arg(long, value_enum)]
    pub scope: ScopeArg,
    /// Display name, stored when the computation is created. Default: the key.
    #[arg(long)]
    pub name: Option<String>,
    /// When the snapshot was taken (RFC 3339). Default: now.
    #[arg(long, value_name = "RFC3339")]
    pub taken_at: Option<String>,
    /// NDJSON (.ndjson, .jsonl) or CSV with a header (.csv); `-` reads NDJSON from standard input.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ComputeArgs {
    // As `Compute`'s about: brackets a rustdoc link would take.
    #[arg(
        long,
        value_name = "KEY",
        help = "Only this computation (its key in [[computations]]); default: every computation and the [membership] query"
    )]
    pub computation: Option<String>,
    /// Run and check every query; print row counts and the first rows, store nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The instant `:now` stands for, and the stored snapshots' taken_at (RFC 3339). Default:
    /// now. For backfills, and for trying a lookback window.
    #[arg(long, value_name = "RFC3339")]
    pub now: Option<String>,
}

#[derive(Debug, Args)]
pub struct LoadMembersArgs {
    /// When the snapshot was taken (RFC 3339). Default: now.
    #[arg(long, value_name = "RFC3339")]
    pub taken_at: Option<String>,
    /// NDJSON (.ndjson, .jsonl) or CSV with a header (.csv); `-` reads NDJSON from standard input.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Print the Intercom requests it would make, one JSON object a line, and send nothing. A
    /// message that cannot be mapped is reported on standard error with its line number; the
    /// other lines are still printed and the command then exits 2.
    #[arg(long)]
    pub dry_run: bool,
    /// NDJSON file of Segment messages; `-` reads standard input.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeadLettersArgs {
    #[command(subcommand)]
    pub action: Option<DeadLetterAction>,
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List dead letters (the default).
    List {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put dead letters back in the outbox for another delivery attempt.
    Retry {
        /// Outbox sequence numbers; every dead letter when none is given and --all is set.
        ids: Vec<i64>,
        /// Retry every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Forget dead letters for good (planned state already went back to delivered state).
    Discard {
        /// Outbox sequence numbers.
        ids: Vec<i64>,
        /// Discard every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Report what would be removed and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also rewrite the database file (VACUUM): switches a database created before retention to
    /// incremental vacuum so freed space goes back to the file system. Writers wait while it
    /// runs; it needs free disk space about the size of the database.
    #[arg(long)]
    pub vacuum: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Address to listen on (port 0 picks a free one; the first line of output is the URL).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: String,
    /// The access token the sandbox accepts.
    #[arg(long, default_value = "sandbox-token", value_name = "T")]
    pub token: String,
    /// Requests allowed per window (Intercom's per-app figure is 10,000 a minute: 1,666 per 10 s;
    /// the Personas destination's budget is 83).
    #[arg(long, default_value_t = 1666, value_name = "N")]
    pub rate_limit: u32,
    /// Length of a rate-limit window in seconds.
    #[arg(long, default_value_t = 10, value_name = "W")]
    pub window_secs: u64,
    /// Do not send X-RateLimit-* headers (429s still happen): clients must discover the budget.
    #[arg(long)]
    pub hide_rate_limit_headers: bool,
    /// Share of requests (0-1) answered 500, 502, 503, 504 or 408.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub fault_rate: f64,
    /// Share of requests (0-1) whose connection is closed without a response.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub drop_rate: f64,
    /// Whether a fault strikes before the request's effect or after it (a lost response).
    #[arg(long, value_enum, default_value_t = FaultPointArg::Either)]
    pub fault_point: FaultPointArg,
    /// Seed of the generator behind faults and slow responses.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Milliseconds added to every API request.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub latency_ms: u64,
    /// Share of requests (0-1) that are slow.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub slow_rate: f64,
    /// How many milliseconds later a slow request is answered.
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    pub slow_ms: u64,
    /// Seconds a new contact stays invisible to search (Intercom's index lags).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub search_lag_secs: u64,
    /// Most active event names; the next new name is refused with 422.
    #[arg(long, default_value_t = 120, value_name = "N")]
    pub event_name_limit: usize,
    /// Accept string values longer than 255 characters instead of refusing them.
    #[arg(long)]
    pub allow_long_strings: bool,
    /// Simulate an Intercom outage that begins once N API requests have been answered (0: at
    /// start). Outages can also be begun and ended with POST / DELETE /_sandbox/outage.
    #[arg(long, value_name = "N")]
    pub outage_after_requests: Option<u64>,
    /// Seconds the scheduled outage lasts (fractions allowed); without it, until
    /// DELETE /_sandbox/outage.
    #[arg(long, value_name = "S", requires = "outage_after_requests")]
    pub outage_secs: Option<f64>,
    /// How the scheduled outage refuses requests: 502/503/504 in turn, dropped connections, or
    /// the two alternating.
    #[arg(
        long,
        default_value = "errors",
        value_name = "KIND",
        requires = "outage_after_requests",
        value_parser = clap::builder::TypedValueParser::try_map(
            clap::builder::PossibleValuesParser::new(["errors", "drops", "mixed"]),
            |name| name.parse::<intercom_sandbox::OutageKind>(),
        ),
    )]
    pub outage_kind: intercom_sandbox::OutageKind,
}

/// When an injected fault strikes relative to the request's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultPointArg {
    /// Nothing is applied.
    Before,
    /// The request is applied, then its response is lost.
    After,
    /// Each fault picks one of the two, half and half.
    Either,
}
