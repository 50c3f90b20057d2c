//! Command-line arguments. Every flag that configures a running node also reads an environment
//! variable, so containers and tests can set it without editing the manifest.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "nimbus", version, about = "The serverless stack for generative-AI apps, as one binary.")]
#[command(propagate_version = true, arg_required_else_help = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the app in DIR: gateway, functions, identity, docs, blobs and AI on one port.
    Up(UpArgs),
    /// Create a runnable app folder with a nimbus.toml and one function.
    Init(InitArgs),
    /// Check DIR's nimbus.toml and report every problem with file:line:column.
    Validate(ValidateArgs),
    /// Manage the API keys that `auth = "api_key"` routes accept.
    Keys(KeysArgs),
    /// Manage the built-in identity provider.
    Identity(IdentityArgs),
    /// Manage the identity provider's users.
    Users(UsersArgs),
    /// Objects in blob containers (the site is container `$web`).
    Blob(BlobArgs),
    /// Deploy the static website, list its deploys, roll back.
    Site(SiteArgs),
    /// Items in docs containers: query, get, put, rm, import and export JSON Lines.
    Docs(DocsArgs),
    /// Orchestration instances: start, status, list, raise, terminate, suspend, resume, purge, history.
    Durable(DurableArgs),
    /// The AI gateway's usage ledger.
    Ai(AiArgs),
}

#[derive(Debug, Args)]
pub struct AiArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: AiCommand,
}

#[derive(Debug, Subcommand)]
pub enum AiCommand {
    /// Tokens and requests since a time, summed by user, key, model or backend (hourly records).
    Usage {
        /// What to sum by, comma-separated: user, key, model, backend. [default: one total]
        #[arg(long, value_delimiter = ',')]
        by: Vec<String>,
        /// How far back, as a duration ("7d", "12h").
        #[arg(long, default_value = "1d")]
        since: String,
    },
}

#[derive(Debug, Args)]
pub struct DurableArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: DurableCommand,
}

#[derive(Debug, Subcommand)]
pub enum DurableCommand {
    /// Start an instance of orchestrator NAME; the node serving the app runs it. Prints its id.
    Start {
        name: String,
        /// The input, as JSON.
        #[arg(long)]
        input: Option<String>,
        /// The instance id. [default: a new random id]
        #[arg(long)]
        id: Option<String>,
        /// The orchestration version to stamp (`ctx.version`). [default: [durable] version]
        #[arg(long, value_name = "VERSION")]
        orchestration_version: Option<String>,
    },
    /// An instance's status, input, custom status and output.
    Status { id: String },
    /// Instances, by id.
    List {
        /// Only these statuses (comma-separated or repeated): Pending, Running, Completed, ...
        #[arg(long)]
        status: Vec<String>,
        /// Only instances of this orchestrator.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 100)]
        top: usize,
    },
    /// Raise external event EVENT on an instance.
    Raise {
        id: String,
        event: String,
        /// The event's data, as JSON.
        #[arg(long)]
        data: Option<String>,
    },
    /// End a running instance.
    Terminate {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Pause an instance: what arrives meanwhile waits for `resume`.
    Suspend {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    Resume {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put a failed instance back to work from the step that failed (after a fix).
    Rewind {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run an instance's orchestration again with its input; prints the new instance's id.
    Restart {
        id: String,
        /// Under the same id (the instance must have ended) rather than a new one.
        #[arg(long)]
        same_id: bool,
    },
    /// Delete an ended instance and its history.
    Purge { id: String },
    /// An instance's history as a timeline (each event; how long each task took).
    History { id: String },
}

#[derive(Debug, Args)]
pub struct DocsArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: DocsCommand,
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Run a query; print the results one JSON value a line (a JSON array with --json).
    Query {
        container: String,
        /// e.g. "SELECT * FROM c WHERE c.status = @status".
        query: String,
        /// A parameter, `@name=VALUE` (VALUE is JSON, else a string); repeat for several.
        #[arg(long = "param", value_name = "@NAME=VALUE")]
        params: Vec<String>,
        /// Only this partition: its key value (JSON, else the string itself).
        #[arg(long)]
        pk: Option<String>,
    },
    /// Print one item.
    Get {
        container: String,
        id: String,
        /// The item's partition key value (JSON, else the string itself).
        #[arg(long)]
        pk: String,
    },
    /// Create or replace one item, from a JSON file (`-` for standard input).
    Put { container: String, file: PathBuf },
    /// Delete one item.
    Rm {
        container: String,
        id: String,
        /// The item's partition key value (JSON, else the string itself).
        #[arg(long)]
        pk: String,
    },
    /// Create or replace every item of a JSON Lines file (`-` for standard input); stops at the
    /// first line that cannot be written, naming it as FILE:LINE.
    Import {
        container: String,
        file: PathBuf,
        /// How many lines are written at once (those in flight when one fails still finish;
        /// with 1, nothing after a failing line is written).
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1000))]
        batch: u16,
    },
    /// Write every item as JSON Lines to FILE (standard output when absent or `-`).
    Export { container: String, file: Option<PathBuf> },
}

#[derive(Debug, Args)]
pub struct SiteArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: SiteCommand,
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Upload DIR's changed files and switch the site to them at once.
    Deploy {
        dir: PathBuf,
        /// Also remove objects whose file is not in DIR.
        #[arg(long)]
        prune: bool,
        /// How many deploys to keep for rollback.
        #[arg(long, default_value_t = nimbus_blob::DEFAULT_KEEP, value_parser = clap::value_parser!(usize))]
        keep: usize,
    },
    /// Return the site to the deploy before the current one.
    Rollback,
    /// The deploys kept, newest first.
    List,
}

#[derive(Debug, Args)]
pub struct BlobArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: BlobCommand,
}

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// List objects: `CONTAINER[/PREFIX]`.
    Ls { path: String },
    /// Upload a file to `CONTAINER/KEY`.
    Put {
        file: PathBuf,
        target: String,
        /// The content type; guessed from the key when absent.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Download `CONTAINER/KEY` to a file (`-` for standard output).
    Get { source: String, file: PathBuf },
    /// Delete `CONTAINER/KEY`.
    Rm { target: String },
    /// Copy `CONTAINER/KEY` to `CONTAINER/KEY`.
    Cp { source: String, target: String },
}

#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: UsersCommand,
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create a user (without a password, the user sets one through "Forgot your password?").
    Create {
        #[arg(long)]
        email: String,
        #[arg(long)]
        name: Option<String>,
        /// Roles, separated by commas.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
    /// Show a user (by id or e-mail address).
    Show { user: String },
    /// Stop a user from signing in (and from refreshing tokens).
    Disable { user: String },
    /// Let a disabled user sign in again.
    Enable { user: String },
    /// Replace a user's roles (they reach tokens as the `roles` claim).
    SetRoles {
        user: String,
        /// Roles, separated by commas; empty to remove all.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        roles: Vec<String>,
    },
    /// Delete a user for good.
    Delete { user: String },
}

#[derive(Debug, Args)]
pub struct IdentityArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Make a new signing key; the old ones stay in the JWKS until the tokens they signed expire.
    RotateKey,
    /// Show the mail the identity provider has sent (verification, password reset).
    Outbox,
    /// Register, list and delete clients (beside those the manifest declares).
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client; a confidential client's secret is printed once.
    Create {
        #[arg(long)]
        id: String,
        /// A browser or mobile app: PKCE, no secret.
        #[arg(long)]
        public: bool,
        /// Where the client receives codes (repeat for several).
        #[arg(long = "redirect-uri")]
        redirect_uris: Vec<String>,
        /// Scopes the client may ask for, separated by commas (default: the OpenID ones).
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// authorization_code, refresh_token, client_credentials (default: all it may use).
        #[arg(long = "grant-types", value_delimiter = ',')]
        grant_types: Vec<String>,
    },
    /// List registered clients (not those of the manifest).
    List,
    /// Delete a registered client.
    Delete { id: String },
}

/// Where a command that reads or writes the app's data finds it (the store a node uses).
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// The app folder.
    #[arg(long = "app", default_value = ".", global = true)]
    pub app: PathBuf,
    /// The node's data dir. [default: APP/.nimbus]
    #[arg(long, env = "NIMBUS_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Store URL. [default: [store] url, else sqlite]
    #[arg(long = "store", env = "NIMBUS_STORE", global = true)]
    pub store: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(subcommand)]
    pub command: KeysCommand,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        /// What the key is for, e.g. the client that will use it.
        #[arg(long)]
        name: String,
        /// `[[routes]]` paths the key opens (repeat or separate with commas); all api_key routes if none.
        #[arg(long = "routes", value_delimiter = ',')]
        routes: Vec<String>,
        /// Lifetime, e.g. "30d"; the key never expires if absent.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Show one key.
    Show { id: String },
    /// Revoke a key for good.
    Revoke { id: String },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The app folder (holding nimbus.toml; without one the app runs with defaults).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Port to listen on; 0 picks a free one and prints it. [default: [server] port, else 7071]
    #[arg(long, env = "NIMBUS_PORT")]
    pub port: Option<u16>,
    /// Address to listen on: an IP address or localhost. [default: [server] host, else 127.0.0.1]
    #[arg(long, env = "NIMBUS_HOST")]
    pub host: Option<nimbus_config::ListenHost>,
    /// Where the node keeps its data (store file, admin token, lock). [default: DIR/.nimbus]
    #[arg(long, env = "NIMBUS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Store URL: "sqlite", "sqlite:///path/file.db" or "postgres://user:pass@host/db".
    /// [default: [store] url, else sqlite]
    #[arg(long = "store", env = "NIMBUS_STORE")]
    pub store: Option<String>,
    /// Log line format on stderr. Levels come from NIMBUS_LOG (e.g. "info,nimbus_store=debug").
    #[arg(long, value_enum, env = "NIMBUS_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Reload functions when the app's files change: new instances start, old ones finish what
    /// they have in flight.
    #[arg(long)]
    pub watch: bool,
    /// Who worker instances run as when the node runs as root: a user name or a numeric uid
    /// ("root" keeps them root). [default: nobody]
    #[arg(long, env = "NIMBUS_WORKER_USER")]
    pub worker_user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The folder to create (or fill, if it exists and has no app yet).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// The language of the first function.
    #[arg(long, value_enum)]
    pub template: Template,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    Python,
    Node,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The app folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
