//! Whether two connections reach the same database: a command that reads one database and
//! changes another must never be pointed at one database twice (a sync of a database onto
//! itself empties nothing but rewrites everything, and a diff against itself hides every
//! difference the user meant to see).

use tokio_postgres::Client;

use crate::error::{DbResultExt, Error, Result};

/// Refuses (a usage error) when `source` and `target` are connected to the same database of
/// the same server. The servers are asked, not the connection strings compared: `localhost`,
/// `127.0.0.1`, a socket directory and a proxy can all name one server. Same server: the same
/// `system_identifier` (`pg_control_system()`); where a role may not call that, the source's
/// own backend (pid and start time) showing in the target's `pg_stat_activity`, which every
/// role may read.
pub async fn refuse_same_database(source: &Client, target: &Client) -> Result<()> {
    const ME: &str = "SELECT current_database()::text, pid, backend_start \
                      FROM pg_stat_activity WHERE pid = pg_backend_pid()";
    let s = source
        .query_one(ME, &[])
        .await
        .ctx("identifying the source")?;
    let t = target
        .query_one(ME, &[])
        .await
        .ctx("identifying the target")?;
    let (s_db, t_db): (String, String) = (s.get(0), t.get(0));
    if s_db != t_db {
        return Ok(());
    }
    const SYSID: &str = "SELECT system_identifier::text FROM pg_control_system()";
    let same_server = match (
        source.query_one(SYSID, &[]).await,
        target.query_one(SYSID, &[]).await,
    ) {
        (Ok(a), Ok(b)) => a.get::<_, String>(0) == b.get::<_, String>(0),
        _ => {
            let pid: i32 = s.get(1);
            let started: Option<std::time::SystemTime> = s.get(2);
            target
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
                     WHERE pid = $1 AND backend_start IS NOT DISTINCT FROM $2)",
                    &[&pid, &started],
                )
                .await
                .ctx("identifying the target")?
                .get(0)
        }
    };
    if same_server {
        return Err(Error::InvalidInput(format!(
            "the source and the target are the same database ({s_db} on one server); \
             name two different databases"
        )));
    }
    Ok(())
}
