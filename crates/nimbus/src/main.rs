//! `nimbus`: the serverless stack for generative-AI apps, as one binary. This crate is the CLI and
//! the wiring of components into one server; the components themselves live in their own crates.

mod ai;
mod blob;
mod cli;
mod data_dir;
mod docs;
mod durable;
mod init;
mod keys;
mod logging;
mod up;
mod users;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived buffers, and
/// the HTTP benchmark (bench/http.sh) measured glibc's allocator among the top costs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    nimbus_identity::crypto::install();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Init(args) => init::run(args),
        Command::Validate(args) => validate(args),
        Command::Keys(args) => keys::run(args),
        Command::Identity(args) => keys::identity(args),
        Command::Users(args) => users::run(args),
        Command::Blob(args) => blob::run(args),
        Command::Site(args) => blob::site(args),
        Command::Docs(args) => docs::run(args),
        Command::Durable(args) => durable::run(args),
        Command::Ai(args) => ai::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed; decides the exit code (2 for an invalid manifest, 1 otherwise).
#[derive(Debug)]
pub enum Failure {
    Config(nimbus_config::ConfigError),
    Other(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Self::Other(e.into())
    }
}

fn validate(args: cli::ValidateArgs) -> Result<(), Failure> {
    let config = nimbus_config::load(&args.dir).map_err(Failure::Config)?;
    match &config.manifest_path {
        Some(path) => println!("{}: valid (app \"{}\")", path.display(), config.name()),
        None => println!("{}: no nimbus.toml; the app runs with defaults", config.dir.display()),
    }
    Ok(())
}
