//! `hookops policy`: delivery policies stored in the database, which bind every dispatcher of
//! the file (design §6). `serve --deny-private-targets` can only tighten them for one process.

use clap::{Args, Subcommand};

use super::{CliError, Global, output};
use crate::store::{Policies, PolicyKey};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Show the policies every dispatcher of this database applies
    #[command(after_long_help = super::examples::POLICY_SHOW)]
    Show(ShowArgs),
    /// Set a policy: deny_private_targets true|false, or max_body_bytes N
    #[command(after_long_help = super::examples::POLICY_SET)]
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// deny_private_targets or max_body_bytes
    pub name: String,
    /// true/false for deny_private_targets; a number of bytes for max_body_bytes
    pub value: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
}

pub fn run(g: &Global, c: PolicyCommand) -> Result<(), CliError> {
    match c {
        PolicyCommand::Show(a) => {
            let p = g.open()?.policies()?;
            print(&p, a.json)
        }
        PolicyCommand::Set(a) => {
            let key: PolicyKey = a.name.parse()?;
            let store = g.open()?;
            let p = store.set_policy(key, &a.value, &g.operator())?;
            print(&p, a.json)
        }
    }
}

fn print(p: &Policies, json: bool) -> Result<(), CliError> {
    if json {
        return output::json(p);
    }
    outln!(
        "deny_private_targets  {}",
        if p.deny_private_targets {
            "true"
        } else {
            "false"
        }
    );
    outln!("max_body_bytes        {}", p.max_body_bytes);
    Ok(())
}
