//! Call records in SQLite, written as the call goes (a row per call, per turn, per field).
//!
//! One writer thread per process owns the connection (SQLite is blocking; the conversation
//! loops must not be). Turns and fields queue up to [`MAX_QUEUED`]; beyond it (the disk
//! stalls) they are dropped and counted (`agent_record_dropped_total`), never silently. A call's
//! start and end rows are never dropped: they always queue (there are at most a few per call).
//! Every row is its own transaction in WAL mode, so what was written survives a crash of the
//! agent. Times are Unix milliseconds.
//!
//! ```sql
//! calls(call_id TEXT PK, room, call_sid, caller, called, agent, started_ms, ended_ms, outcome, fields_json)
//! turns(call_id, seq, role, text, started_ms, ended_ms, interrupted, heard_text,
//!       eos_to_stt_ms, stt_to_llm_ms, llm_to_tts_ms, tts_to_push_ms, eos_to_push_ms)
//! fields(call_id, name, value, at_ms)        -- PK (call_id, name): latest value wins
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc as smpsc;
use std::sync::Arc;

use rusqlite::{params, Connection};

use crate::metrics::TurnTimings;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS calls (
  call_id TEXT PRIMARY KEY,
  room TEXT NOT NULL,
  call_sid TEXT,
  caller TEXT,
  called TEXT,
  agent TEXT NOT NULL,
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER,
  outcome TEXT,
  fields_json TEXT
);
CREATE TABLE IF NOT EXISTS turns (
  call_id TEXT NOT NULL REFERENCES calls(call_id),
  seq INTEGER NOT NULL,
  role TEXT NOT NULL,
  text TEXT NOT NULL,
  started_ms INTEGER NOT NULL,
  ended_ms INTEGER,
  interrupted INTEGER NOT NULL DEFAULT 0,
  heard_text TEXT,
  eos_to_stt_ms INTEGER,
  stt_to_llm_ms INTEGER,
  llm_to_tts_ms INTEGER,
  tts_to_push_ms INTEGER,
  eos_to_push_ms INTEGER,
  PRIMARY KEY (call_id, seq)
);
CREATE TABLE IF NOT EXISTS fields (
  call_id TEXT NOT NULL REFERENCES calls(call_id),
  name TEXT NOT NULL,
  value TEXT NOT NULL,
  at_ms INTEGER NOT NULL,
  PRIMARY KEY (call_id, name)
);
";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallInfo {
    pub call_id: String,
    pub room: String,
    pub call_sid: Option<String>,
    pub caller: Option<String>,
    pub called: Option<String>,
    pub agent: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TurnRow {
    pub seq: u32,
    pub role: String,
    pub text: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub interrupted: bool,
    pub heard_text: Option<String>,
    pub timings: Option<TurnTimings>,
}

enum Cmd {
    StartCall(CallInfo, i64),
    UpdateCaller {
        call_id: String,
        caller: Option<String>,
        called: Option<String>,
        call_sid: Option<String>,
    },
    Turn(String, TurnRow),
    Field {
        call_id: String,
        name: String,
        value: String,
        at_ms: i64,
    },
    EndCall {
        call_id: String,
        outcome: String,
        fields_json: String,
        at_ms: i64,
    },
    Flush(smpsc::SyncSender<()>),
}

impl Cmd {
    /// Rows that are never dropped.
    fn critical(&self) -> bool {
        matches!(self, Cmd::StartCall(..) | Cmd::EndCall { .. } | Cmd::UpdateCaller { .. } | Cmd::Flush(_))
    }
}

/// Turns and fields waiting for the disk at most.
pub const MAX_QUEUED: usize = 4096;

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: smpsc::Sender<Cmd>,
    queued: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

impl Recorder {
    /// Open (or create) the database and start the writer thread.
    pub fn open(path: &Path) -> Result<Recorder, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        conn.execute_batch(SCHEMA)?;
        let (tx, rx) = smpsc::channel::<Cmd>();
        let errors = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicUsize::new(0));
        let (errs, q) = (errors.clone(), queued.clone());
        std::thread::Builder::new()
            .name("call-record".into())
            .spawn(move || writer(conn, rx, errs, q))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Recorder { tx, queued, dropped: Arc::new(AtomicU64::new(0)), errors })
    }

    fn send(&self, c: Cmd) {
        if !c.critical() && self.queued.load(Ordering::Relaxed) >= MAX_QUEUED {
            self.drop_one();
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(c).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.drop_one();
        }
    }

    fn drop_one(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        crate::metrics::global().record_dropped.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            tracing::warn!(dropped = n, "call record behind the calls: rows dropped");
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    pub fn start_call(&self, info: CallInfo) {
        self.send(Cmd::StartCall(info, now_ms()));
    }

    pub fn update_caller(
        &self,
        call_id: &str,
        caller: Option<String>,
        called: Option<String>,
        call_sid: Option<String>,
    ) {
        self.send(Cmd::UpdateCaller {
            call_id: call_id.into(),
            caller,
            called,
            call_sid,
        });
    }

    /// Insert or replace turn `seq` (a turn is written when it starts and again when it ends).
    pub fn turn(&self, call_id: &str, row: TurnRow) {
        self.send(Cmd::Turn(call_id.into(), row));
    }

    pub fn field(&self, call_id: &str, name: &str, value: &str) {
        self.send(Cmd::Field {
            call_id: call_id.into(),
            name: name.into(),
            value: value.into(),
            at_ms: now_ms(),
        });
    }

    pub fn end_call(&self, call_id: &str, outcome: &str, fields: &crate::providers::Fields) {
        let fields_json = serde_json::to_string(fields).unwrap_or_default();
        self.send(Cmd::EndCall {
            call_id: call_id.into(),
            outcome: outcome.into(),
            fields_json,
            at_ms: now_ms(),
        });
    }

    /// Wait until everything sent so far is written (tests, shutdown).
    pub fn flush(&self) {
        let (tx, rx) = smpsc::sync_channel(1);
        self.queued.fetch_add(1, Ordering::Relaxed); // the writer counts every command down
        if self.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.recv_timeout(std::time::Duration::from_secs(5));
        }
    }

    /// [`flush`](Self::flush) from async code.
    pub async fn flush_async(&self) {
        let me = self.clone();
        let _ = tokio::task::spawn_blocking(move || me.flush()).await;
    }
}

/// A call as stored: what [`load_call`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct CallRecord {
    pub info: CallInfo,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub outcome: Option<String>,
    pub turns: Vec<TurnRow>,
    /// Latest value of each field, by name.
    pub fields: Vec<(String, String)>,
}

/// Reads back the latest call held in `room` (None when there is none).
pub fn load_call(path: &Path, room: &str) -> Result<Option<CallRecord>, rusqlite::Error> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    let call = conn.query_row(
        "SELECT call_id, room, call_sid, caller, called, agent, started_ms, ended_ms, outcome
           FROM calls WHERE room = ?1 ORDER BY started_ms DESC LIMIT 1",
        params![room],
        |r| {
            Ok(CallRecord {
                info: CallInfo {
                    call_id: r.get(0)?,
                    room: r.get(1)?,
                    call_sid: r.get(2)?,
                    caller: r.get(3)?,
                    called: r.get(4)?,
                    agent: r.get(5)?,
                },
                started_ms: r.get(6)?,
                ended_ms: r.get(7)?,
                outcome: r.get(8)?,
                turns: Vec::new(),
                fields: Vec::new(),
            })
        },
    );
    let mut call = match call {
        Ok(c) => c,
        Err(rusqlite::Error::QueryReturnedNoRows) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut q = conn.prepare(
        "SELECT seq, role, text, started_ms, ended_ms, interrupted, heard_text,
                eos_to_stt_ms, stt_to_llm_ms, llm_to_tts_ms, tts_to_push_ms, eos_to_push_ms
           FROM turns WHERE call_id = ?1 ORDER BY seq",
    )?;
    call.turns = q
        .query_map(params![call.info.call_id], |r| {
            let timings = TurnTimings {
                eos_to_stt_ms: r.get(7)?,
                stt_to_llm_ms: r.get(8)?,
                llm_to_tts_ms: r.get(9)?,
                tts_to_push_ms: r.get(10)?,
                eos_to_push_ms: r.get(11)?,
            };
            let any = timings != TurnTimings::default();
            Ok(TurnRow {
                seq: r.get(0)?,
                role: r.get(1)?,
                text: r.get(2)?,
                started_ms: r.get(3)?,
                ended_ms: r.get(4)?,
                interrupted: r.get::<_, i64>(5)? != 0,
                heard_text: r.get(6)?,
                timings: any.then_some(timings),
            })
        })?
        .collect::<Result<_, _>>()?;
    let mut q = conn.prepare("SELECT name, value FROM fields WHERE call_id = ?1 ORDER BY at_ms")?;
    call.fields = q
        .query_map(params![call.info.call_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok(Some(call))
}

fn writer(conn: Connection, rx: smpsc::Receiver<Cmd>, errors: Arc<AtomicU64>, queued: Arc<AtomicUsize>) {
    while let Ok(cmd) = rx.recv() {
        queued.fetch_sub(1, Ordering::Relaxed);
        let r = match cmd {
            Cmd::StartCall(i, at) => conn
                .execute(
                    "INSERT OR REPLACE INTO calls (call_id, room, call_sid, caller, called, agent, started_ms) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                    params![i.call_id, i.room, i.call_sid, i.caller, i.called, i.agent, at],
                )
                .map(|_| ()),
            Cmd::UpdateCaller { call_id, caller, called, call_sid } => conn
                .execute(
                    "UPDATE calls SET caller = COALESCE(?2, caller), called = COALESCE(?3, called), call_sid = COALESCE(?4, call_sid) WHERE call_id = ?1",
                    params![call_id, caller, called, call_sid],
                )
                .map(|_| ()),
            Cmd::Turn(call_id, t) => {
                let m = t.timings.unwrap_or_default();
                conn.execute(
                    "INSERT OR REPLACE INTO turns (call_id, seq, role, text, started_ms, ended_ms, interrupted, heard_text,
                       eos_to_stt_ms, stt_to_llm_ms, llm_to_tts_ms, tts_to_push_ms, eos_to_push_ms)
                     VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13)",
                    params![
                        call_id,
                        t.seq,
                        t.role,
                        t.text,
                        t.started_ms,
                        t.ended_ms,
                        t.interrupted as i64,
                        t.heard_text,
                        m.eos_to_stt_ms,
                        m.stt_to_llm_ms,
                        m.llm_to_tts_ms,
                        m.tts_to_push_ms,
                        m.eos_to_push_ms
                    ],
                )
                .map(|_| ())
            }
            Cmd::Field { call_id, name, value, at_ms } => conn
                .execute("INSERT OR REPLACE INTO fields (call_id, name, value, at_ms) VALUES (?1,?2,?3,?4)", params![call_id, name, value, at_ms])
                .map(|_| ()),
            Cmd::EndCall { call_id, outcome, fields_json, at_ms } => conn
                .execute(
                    "UPDATE calls SET ended_ms = ?2, outcome = ?3, fields_json = ?4 WHERE call_id = ?1",
                    params![call_id, at_ms, outcome, fields_json],
                )
                .map(|_| ()),
            Cmd::Flush(done) => {
                let _ = done.send(());
                Ok(())
            }
        };
        if let Err(e) = r {
            errors.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().record_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "call record write failed");
        }
    }
}
