//! `kollector certs`, `kollector token`, `kollector secret-key`: the files a
//! secure cluster starts from. Each writes new files only (mode 0600 for
//! anything secret) and never prints a secret except the one new token,
//! once, to the file or stream the user names.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use kollector_security::tokens::{entry_toml, hash_token, new_token};
use kollector_security::{CertRequest, Role};

use crate::security_args::{new_secret_key_file, write_private};

#[derive(Args)]
pub struct CertsArgs {
    /// Directory for ca.pem, ca.key and <node>.pem/<node>.key. An existing
    /// CA there is reused, so run again to add nodes.
    #[arg(long, default_value = "kollector-pki")]
    dir: PathBuf,
    /// Manager to make a certificate for; it also carries the manager role,
    /// which collectors require of every caller. Repeatable.
    #[arg(long = "manager")]
    managers: Vec<String>,
    /// Other node to make a certificate for (collector, etcd); repeatable.
    #[arg(long = "node")]
    nodes: Vec<String>,
    /// Host name or IP address the node certificates are valid for; repeatable.
    #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
    hosts: Vec<String>,
    /// Validity of node certificates.
    #[arg(long, default_value = "365days", value_parser = humantime::parse_duration)]
    valid_for: Duration,
}

pub fn certs(args: CertsArgs) -> anyhow::Result<()> {
    let written = kollector_security::generate_certs(&CertRequest {
        dir: args.dir,
        nodes: args.nodes,
        managers: args.managers,
        hosts: args.hosts,
        valid_for: args.valid_for,
    })?;
    for p in written {
        out!("{}", p.display());
    }
    Ok(())
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token: its hash is appended to the tokens file, the token
    /// itself written once to --out (mode 0600).
    Add {
        /// The tokens file a manager reads (--tokens-file); created if absent.
        #[arg(long)]
        tokens_file: PathBuf,
        /// Who the token is for (shown in the manager's log of admin calls).
        #[arg(long)]
        name: String,
        /// viewer (reads, status) or admin (changes, drain, probe).
        #[arg(long)]
        role: String,
        /// Where to write the token; must not exist.
        #[arg(long)]
        out: PathBuf,
        /// Expire after this long (e.g. 90days); never by default.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
    },
}

pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Add { tokens_file, name, role, out, expires_in } => {
            let role = Role::parse(&role).ok_or_else(|| anyhow::anyhow!("--role must be viewer or admin"))?;
            if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control() || c == '"') {
                bail!("--name must be 1-100 printable characters without quotes");
            }
            if out.exists() {
                bail!("{} already exists", out.display());
            }
            // Check that the current file parses before appending to it.
            if tokens_file.exists() {
                kollector_security::TokenBook::load(&tokens_file)?;
            }
            let token = new_token()?;
            let expires = expires_in.map(|d| SystemTime::now() + d);
            let entry = entry_toml(&name, role, &hash_token(&token), expires);
            write_private(&out, &format!("{token}\n"))?;
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&tokens_file)
                .with_context(|| format!("opening {}", tokens_file.display()))?;
            f.write_all(format!("\n{entry}").as_bytes()).and_then(|_| f.sync_all())?;
            out!(
                "token {name:?} ({}) written to {}; its hash added to {}",
                role.as_str(),
                out.display(),
                tokens_file.display()
            );
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct SecretKeyArgs {
    #[command(subcommand)]
    command: SecretKeyCommand,
}

#[derive(Subcommand)]
enum SecretKeyCommand {
    /// Make a new key file (mode 0600); give the same file to every manager.
    New {
        #[arg(long)]
        file: PathBuf,
    },
    /// Put a new key first in an existing file: new secrets are sealed with
    /// it, the older keys still open what they sealed.
    Rotate {
        #[arg(long)]
        file: PathBuf,
    },
}

pub fn secret_key(args: SecretKeyArgs) -> anyhow::Result<()> {
    match args.command {
        SecretKeyCommand::New { file } => {
            new_secret_key_file(&file)?;
            out!("secret key written to {}", file.display());
        }
        SecretKeyCommand::Rotate { file } => {
            let old = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            kollector_security::Keyring::parse(&file.display().to_string(), &old)?;
            let line = kollector_security::sealing::new_key_line(&kollector_security::sealing::next_key_id(&old))?;
            let tmp = file.with_extension("rotating");
            write_private(&tmp, &format!("{line}\n{old}"))?;
            std::fs::rename(&tmp, &file).with_context(|| format!("replacing {}", file.display()))?;
            out!(
                "new key first in {}; copy it to every manager and restart them: the leader re-seals every secret with it (`kollector status` counts those left), then remove the old line",
                file.display()
            );
        }
    }
    Ok(())
}
