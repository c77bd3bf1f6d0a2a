use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::Ipv6Net;
use on6::pki::{self, Role};
use std::path::PathBuf;

/// on6: an IPv6 overlay over mutually authenticated QUIC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fleet certificate authority.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Validate a site config file without running it.
    CheckConfig { file: PathBuf },
    /// Run a site (master and its in-process slaves) from its config file.
    Run { file: PathBuf },
    /// Run a slave in its own process, attached to its master over QUIC.
    Slave { file: PathBuf },
    /// Show a running site through its admin socket.
    Status {
        #[arg(long)]
        socket: PathBuf,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Build a multi-site overlay in network namespaces, send traffic, report.
    Demo(on6::demo::DemoArgs),
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create a fleet CA: DIR/ca.pem and DIR/ca.key (0600).
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "on6 fleet CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue a node certificate: DIR/NAME.pem and DIR/NAME.key (0600).
    Issue {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: Role,
        /// IPv6 prefix the node may announce (repeatable).
        #[arg(long = "prefix")]
        prefixes: Vec<Ipv6Net>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Add a certificate's serial to a revocation list file.
    Revoke {
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        list: PathBuf,
    },
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    // One thread for the packet path: cross-thread wakeups cost more than they give on small boxes.
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn ca(cmd: CaCommand) -> Result<()> {
    match cmd {
        CaCommand::Init { dir, name, days } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
            if key.exists() {
                bail!("{} exists: refusing to overwrite a CA key", key.display());
            }
            let pair = pki::init_ca(&name, days)?;
            pki::write_file(&key, &pair.key_pem, true)?;
            pki::write_file(&cert, &pair.cert_pem, false)?;
            println!(
                "fleet CA written: {} and {} (keep the key offline)",
                cert.display(),
                key.display()
            );
        }
        CaCommand::Issue {
            dir,
            name,
            role,
            prefixes,
            days,
        } => {
            let ca_cert = std::fs::read_to_string(dir.join("ca.pem"))
                .with_context(|| format!("reading {}/ca.pem", dir.display()))?;
            let ca_key = std::fs::read_to_string(dir.join("ca.key"))
                .with_context(|| format!("reading {}/ca.key", dir.display()))?;
            let now = time::OffsetDateTime::now_utc();
            let req = pki::IssueRequest {
                name: &name,
                role,
                prefixes: &prefixes,
                not_before: now - time::Duration::minutes(5),
                not_after: now + time::Duration::days(days),
            };
            let (pair, serial) = pki::issue(&ca_cert, &ca_key, &req)?;
            let (cert, key) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            pki::write_file(&key, &pair.key_pem, true)?;
            pki::write_file(&cert, &pair.cert_pem, false)?;
            println!(
                "issued {} ({role}, prefixes {:?}, {days} days, serial {serial})",
                cert.display(),
                prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>()
            );
        }
        CaCommand::Revoke { cert, list } => {
            let der = pki::load_certs(&cert)?.remove(0);
            let id = pki::NodeIdentity::from_der(&der)?;
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&list)
                .with_context(|| format!("opening {}", list.display()))?;
            writeln!(f, "{}  # {} ({})", id.serial, id.name, id.role)?;
            println!(
                "revoked {} (serial {}) in {}",
                id.name,
                id.serial,
                list.display()
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Ca(cmd) => ca(cmd),
        Command::CheckConfig { file } => {
            let cfg = on6::config::SiteConfig::load(&file)?;
            on6::site::load_site_credentials(&cfg)?;
            println!(
                "{}: ok (site {}, prefix {}, {} slave(s))",
                file.display(),
                cfg.site.name,
                cfg.site.prefix,
                cfg.slaves.len()
            );
            Ok(())
        }
        Command::Run { file } => {
            let cfg = on6::config::SiteConfig::load(&file)?;
            runtime()?.block_on(on6::site::run(cfg, terminated()))?;
            Ok(())
        }
        Command::Slave { file } => {
            let cfg = on6::config::SlaveFile::load(&file)?;
            runtime()?.block_on(on6::site::run_remote_slave(cfg, terminated()))?;
            Ok(())
        }
        Command::Status { socket, json } => {
            let text = on6::status::fetch(&socket)
                .with_context(|| format!("reading {}", socket.display()))?;
            if json {
                println!("{text}");
            } else {
                print!("{}", on6::status::render(&text)?);
            }
            Ok(())
        }
        Command::Demo(args) => on6::demo::main(args),
    }
}
