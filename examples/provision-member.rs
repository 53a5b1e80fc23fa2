//! Provision a member: a job that writes into the app's own SQLite database through shared
//! state, and returns the new member's id.
//!
//! ```text
//! cargo run --example provision-member -- serve
//! curl -X POST localhost:8091/api/v1/workers/jobs/provision-member/trigger \
//!      -d '{"email":"ada@example.com","name":"Ada Lovelace"}'
//! ```
//!
//! The members database is `members.db` in the data directory (`NETSCRIPT_DATA_DIR`,
//! default `.netscript`), apart from NetScript's own store.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

use netscript::prelude::*;
use rusqlite::{Connection, OptionalExtension};

/// The app's database, shared by every job that asks for `State<MemberDb>`.
struct MemberDb {
    conn: Mutex<Connection>,
}

impl MemberDb {
    fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open(path)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE IF NOT EXISTS members (
                 id INTEGER PRIMARY KEY,
                 email TEXT NOT NULL UNIQUE,
                 name TEXT NOT NULL,
                 created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             );",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }
}

/// Who to provision.
#[derive(Debug, Deserialize, JsonSchema)]
struct NewMember {
    email: String,
    name: String,
}

/// The provisioned member.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Provisioned {
    member_id: i64,
    /// `false` when the email was already a member (a retried or repeated request).
    created: bool,
}

/// Creates a member row, or finds the existing one: safe to run twice.
#[job(id = "provision-member", timeout = "10s", retries = 2)]
async fn provision_member(db: State<MemberDb>, payload: NewMember) -> JobResult<Provisioned> {
    if !payload.email.contains('@') {
        return Err(JobError::fatal(format!("`{}` is not an email address", payload.email)));
    }
    // SQLite calls block; keep them off the async workers.
    tokio::task::spawn_blocking(move || {
        let conn = db.conn.lock().map_err(|_| JobError::retryable("members database lock poisoned"))?;
        let existing: Option<i64> =
            conn.query_row("SELECT id FROM members WHERE email = ?1", [&payload.email], |r| r.get(0)).optional()?;
        if let Some(member_id) = existing {
            return Ok(Provisioned { member_id, created: false });
        }
        conn.execute("INSERT INTO members (email, name) VALUES (?1, ?2)", [&payload.email, &payload.name])?;
        Ok(Provisioned { member_id: conn.last_insert_rowid(), created: true })
    })
    .await?
}

#[tokio::main]
async fn main() -> ExitCode {
    let dir = std::env::var("NETSCRIPT_DATA_DIR").unwrap_or_else(|_| ".netscript".into());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {dir}: {e}");
        return ExitCode::FAILURE;
    }
    let path = Path::new(&dir).join("members.db");
    let db = match MemberDb::open(&path) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    Runtime::builder().state(db).run().await
}
