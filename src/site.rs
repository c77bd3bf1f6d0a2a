//! A site's process: the master, its in-process slaves, its listener for
//! remote slaves and its admin socket, run until shutdown.

use crate::config::{SiteConfig, SlaveFile, SlaveSection};
use crate::master::driver::MasterHandle;
use crate::master::remote::{self, Admission, RemoteStats};
use crate::master::Master;
use crate::pki::{Credentials, PkiError, Role};
use crate::slave::dht::{self, DhtShared};
use crate::slave::gateway::{self, GatewayStats};
use crate::slave::tunnel::{self, TunnelShared};
use crate::slave::{self, SlaveError};
use crate::status;
use crate::transport::{self, TransportError};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("credentials: {0}")]
    Pki(#[from] PkiError),
    #[error("{0}")]
    Identity(String),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("slave {name}: {source}")]
    Slave { name: String, source: SlaveError },
    #[error("admin socket: {0}")]
    Admin(std::io::Error),
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
}

pub fn load_site_credentials(cfg: &SiteConfig) -> Result<Credentials, SiteError> {
    let s = &cfg.site;
    let creds = Credentials::load(&s.ca, &s.cert, &s.key, s.revoked.as_deref())?;
    let id = &creds.identity;
    if id.role != Role::Master {
        return Err(SiteError::Identity(format!(
            "{}: a site needs a master certificate, this one is for a {}",
            s.cert.display(),
            id.role
        )));
    }
    if id.name != s.name {
        return Err(SiteError::Identity(format!(
            "{}: certificate is for {:?}, the site is {:?}",
            s.cert.display(),
            id.name,
            s.name
        )));
    }
    if !id.covers(&s.prefix) {
        return Err(SiteError::Identity(format!(
            "{}: certificate does not cover the site prefix {}",
            s.cert.display(),
            s.prefix
        )));
    }
    Ok(creds)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Runs a site until `shutdown` resolves; the TUN devices are gone when it returns.
pub async fn run(cfg: SiteConfig, shutdown: impl Future<Output = ()>) -> Result<(), SiteError> {
    let creds = load_site_credentials(&cfg)?;
    let opts = cfg.transport();
    let started = std::time::Instant::now();
    let master = MasterHandle::new(Master::new(cfg.router_address()));
    let remote_stats = Arc::new(RemoteStats::default());
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = match cfg.master.listen {
        Some(addr) => {
            let server = transport::server_config(&creds, &opts)?;
            let client = transport::client_config(&creds, &opts)?;
            let ep = transport::endpoint(addr, Some(server), client)?;
            let admission = Admission {
                allowed_names: cfg.master.remote_slaves.clone(),
            };
            tokio::spawn(remote::serve(
                ep.clone(),
                master.clone(),
                admission,
                remote_stats.clone(),
            ));
            tracing::info!(%addr, "master listening for remote slaves");
            Some(ep)
        }
        None => None,
    };

    let mut slaves = tokio::task::JoinSet::new();
    let mut gateways = Vec::new();
    let mut tunnels = Vec::new();
    let mut dhts = Vec::new();
    for (i, section) in cfg.slaves.iter().enumerate() {
        match section {
            SlaveSection::Gateway(g) => {
                let gcfg = g.resolve(
                    &format!("{}-gw{i}", cfg.site.name),
                    cfg.site.prefix,
                    cfg.site.mtu,
                );
                if let Some(p) = gcfg
                    .extra_prefixes
                    .iter()
                    .find(|p| !creds.identity.covers(p))
                {
                    return Err(SiteError::Identity(format!(
                        "slave[{i}].extra_prefixes: {p} is outside the site certificate"
                    )));
                }
                let allowed = std::iter::once(gcfg.prefix)
                    .chain(gcfg.extra_prefixes.iter().copied())
                    .collect();
                let port = slave::attach_local(&master, &gcfg.name, allowed)
                    .await
                    .map_err(|source| SiteError::Slave {
                        name: gcfg.name.clone(),
                        source,
                    })?;
                let stats = Arc::new(GatewayStats::default());
                gateways.push((gcfg.name.clone(), stats.clone()));
                let stop = stopped(stop_rx.clone());
                let name = gcfg.name.clone();
                slaves.spawn(async move { (name, gateway::run(gcfg, port, stats, stop).await) });
            }
            SlaveSection::Dht(d) => {
                let dcfg = d.resolve(&format!("{}-dht{i}", cfg.site.name), cfg.site.prefix, opts);
                let port = slave::attach_local(&master, &dcfg.name, d.space.clone())
                    .await
                    .map_err(|source| SiteError::Slave {
                        name: dcfg.name.clone(),
                        source,
                    })?;
                let shared = Arc::new(DhtShared::default());
                dhts.push((dcfg.name.clone(), shared.clone()));
                let stop = stopped(stop_rx.clone());
                let (name, creds) = (dcfg.name.clone(), creds.clone());
                slaves
                    .spawn(async move { (name, dht::run(dcfg, creds, port, shared, stop).await) });
            }
            SlaveSection::Tunnel(t) => {
                let tcfg = t.resolve(&format!("{}-tunnel{i}", cfg.site.name), opts);
                let port = slave::attach_local(&master, &tcfg.name, t.allowed())
                    .await
                    .map_err(|source| SiteError::Slave {
                        name: tcfg.name.clone(),
                        source,
                    })?;
                let shared = Arc::new(TunnelShared::default());
                tunnels.push((tcfg.name.clone(), shared.clone()));
                let stop = stopped(stop_rx.clone());
                let (name, creds) = (tcfg.name.clone(), creds.clone());
                slaves.spawn(
                    async move { (name, tunnel::run(tcfg, creds, port, shared, stop).await) },
                );
            }
        }
    }

    let view = Arc::new(status::SiteView {
        name: cfg.site.name.clone(),
        identity: creds.identity.clone(),
        started,
        master: Some(master.clone()),
        remote: remote_stats,
        gateways,
        tunnels,
        dhts,
    });
    observe(
        &view,
        cfg.site.admin_socket.as_deref(),
        cfg.site.metrics_listen,
    )
    .await?;
    tracing::info!(site = %cfg.site.name, prefix = %cfg.site.prefix, router = %cfg.router_address(), "site running");

    tokio::pin!(shutdown);
    let result = tokio::select! {
        _ = &mut shutdown => Ok(()),
        Some(done) = slaves.join_next() => match done {
            Ok((name, Err(source))) => Err(SiteError::Slave { name, source }),
            Ok((name, Ok(()))) => Err(SiteError::Slave { name, source: SlaveError::MasterGone }),
            Err(e) => Err(SiteError::Identity(format!("slave task failed: {e}"))),
        },
    };
    // Let every slave remove its device and routes before returning.
    let _ = stop_tx.send(true);
    while slaves.join_next().await.is_some() {}
    if let Some(ep) = listener {
        ep.close(transport::close::SHUTDOWN.into(), b"shutdown");
    }
    if let Some(path) = &cfg.site.admin_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!(site = %cfg.site.name, "site stopped");
    result
}

/// Starts the admin socket and the metrics listener, where configured.
async fn observe(
    view: &Arc<status::SiteView>,
    admin: Option<&std::path::Path>,
    metrics: Option<std::net::SocketAddr>,
) -> Result<(), SiteError> {
    if let Some(path) = admin {
        let listener = status::bind(path).map_err(SiteError::Admin)?;
        tokio::spawn(status::serve(listener, view.clone()));
    }
    if let Some(addr) = metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(SiteError::Metrics)?;
        tokio::spawn(crate::metrics::serve(listener, view.clone()));
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    Ok(())
}

/// Runs a slave in its own process, attached to its master over QUIC.
pub async fn run_remote_slave(
    cfg: SlaveFile,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SiteError> {
    let creds = Credentials::load(&cfg.ca, &cfg.cert, &cfg.key, cfg.revoked.as_deref())?;
    if creds.identity.role != Role::Slave {
        return Err(SiteError::Identity(format!(
            "{}: a remote slave needs a slave certificate",
            cfg.cert.display()
        )));
    }
    let opts = cfg.transport();
    let SlaveSection::Gateway(g) = &cfg.slave else {
        return Err(SiteError::Identity(
            "only gateway slaves run in their own process".into(),
        ));
    };
    let default_prefix = g
        .prefix
        .or_else(|| creds.identity.prefixes.first().copied())
        .ok_or_else(|| {
            SiteError::Identity(format!(
                "{}: certificate carries no prefix to serve",
                cfg.cert.display()
            ))
        })?;
    let gcfg = g.resolve(&creds.identity.name, default_prefix, cfg.mtu);
    let name = gcfg.name.clone();
    let port = slave::connect_remote(&creds, &opts, cfg.master.address, &cfg.master.name)
        .await
        .map_err(|source| SiteError::Slave {
            name: name.clone(),
            source,
        })?;
    tracing::info!(master = %cfg.master.address, "connected to master");
    let stats = Arc::new(GatewayStats::default());
    let view = Arc::new(status::SiteView {
        name: creds.identity.name.clone(),
        identity: creds.identity.clone(),
        started: std::time::Instant::now(),
        master: None,
        remote: Arc::new(RemoteStats::default()),
        gateways: vec![(name.clone(), stats.clone())],
        tunnels: vec![],
        dhts: vec![],
    });
    observe(&view, cfg.admin_socket.as_deref(), cfg.metrics_listen).await?;
    let result = gateway::run(gcfg, port, stats, shutdown)
        .await
        .map_err(|source| SiteError::Slave { name, source });
    if let Some(path) = &cfg.admin_socket {
        let _ = std::fs::remove_file(path);
    }
    result
}
