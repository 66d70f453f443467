//! Endpoints: where the source and the target are, and how to connect to them.
//!
//! (Foundation skeleton: URL / key=value parsing and plain connections. Split flags, environment,
//! .env files, ~/.pgpass and TLS are resolved here too; see `EndpointArgs`.)

use std::str::FromStr;

use tokio_postgres::Client;

use crate::error::{Error, Result, Side};

/// What the user gave on the command line for one side (all optional).
#[derive(Debug, Clone, Default)]
pub struct EndpointArgs {
    pub url: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A resolved database endpoint.
#[derive(Clone)]
pub struct Endpoint {
    pub side: Side,
    pub config: tokio_postgres::Config,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Endpoint({}: {})", self.side, self.describe())
    }
}

impl Endpoint {
    /// Resolves one side from flags (environment and files are consulted by later layers).
    pub fn resolve(side: Side, args: &EndpointArgs) -> Result<Endpoint> {
        let mut config = match &args.url {
            Some(u) => tokio_postgres::Config::from_str(u)
                .map_err(|e| Error::Config(format!("invalid {side} connection string: {e}")))?,
            None => tokio_postgres::Config::new(),
        };
        if let Some(h) = &args.host {
            config.host(h);
        }
        if let Some(p) = args.port {
            config.port(p);
        }
        if let Some(d) = &args.database {
            config.dbname(d);
        }
        if let Some(u) = &args.username {
            config.user(u);
        }
        if let Some(p) = &args.password {
            config.password(p);
        }
        config.application_name("pgflip");
        Ok(Endpoint { side, config })
    }

    /// `host:port, database name` — never the password.
    pub fn describe(&self) -> String {
        let host = self
            .config
            .get_hosts()
            .first()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".into());
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self.config.get_dbname().unwrap_or("(default)");
        format!("{host}:{port}, database {db}")
    }

    /// Opens a connection; the connection task runs on the current runtime.
    pub async fn connect(&self) -> Result<Client> {
        let (client, conn) = self
            .config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| Error::Connect {
                side: self.side,
                endpoint: self.describe(),
                reason: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}
