//! The persistent job queue: jobs, their tasks, which node runs what, in one SQLite database.
//!
//! This module owns the queue's state and the rules for changing it. It never talks to nodes,
//! never sleeps and never reads the clock for a scheduling decision: the caller passes `now_ms`
//! to everything that depends on time (leases), so tests can drive time and a restarted manager
//! judges leases by its own clock. Wall-clock time is only used for the `created_at_ms`,
//! `updated_at_ms`, `started_at_ms` and `finished_at_ms` columns shown to users.
//!
//! # Crash safety
//!
//! Every public method that changes something runs in one `BEGIN IMMEDIATE` transaction, and
//! the database runs in WAL mode with `synchronous=FULL`, so a change is on disk when the method
//! returns and a crash leaves either all of it or none of it. On [`Store::open`], tasks that were
//! running stay running with their lease: nodes may still be working on them and get until the
//! lease ends to report back (or renew) to the restarted manager; after that
//! [`Store::expire_leases`] puts them back in the queue. The schema is versioned with
//! `PRAGMA user_version` and upgraded by the ordered [`MIGRATIONS`] list.
//!
//! # Job states
//!
//! | status    | meaning                                                                     |
//! |-----------|-----------------------------------------------------------------------------|
//! | queued    | waiting: no task is running, some are queued                                |
//! | active    | at least one task is running                                                |
//! | paused    | no new tasks are handed out; running ones finish and their results stay     |
//! | completed | every task completed (terminal)                                             |
//! | failed    | a task used up its [`MAX_TASK_ATTEMPTS`]; the rest were canceled (terminal) |
//! | canceled  | a user canceled it; its queued and running tasks were canceled (terminal)   |
//!
//! Allowed job transitions ([`JOB_TRANSITIONS`]; `x` = allowed, `.` = refused):
//!
//! ```text
//! from \ to   queued active paused completed failed canceled
//! queued        .      x      x       .        .       x
//! active        x      .      x       x        x       x
//! paused        x      x      .       x        x       x
//! completed     .      .      .       .        .       .
//! failed        .      .      .       .        .       .
//! canceled      .      .      .       .        .       .
//! ```
//!
//! - queued -> active: a task is handed out. active -> queued: the last running task went back
//!   to the queue (retry, lost node, expired lease).
//! - active -> completed: the last task completed. active -> failed: a task used up its
//!   attempts; the job's queued and running tasks are canceled and the running ones reported.
//! - any of queued, active, paused -> paused / canceled: a user paused or canceled it.
//! - paused -> queued or active: resumed (active if tasks are still running). paused ->
//!   completed or failed: a task that was still running when the job was paused finished it.
//! - completed, failed, canceled are terminal: such a job can only be deleted.
//!
//! Queued, active, completed and failed follow from the tasks: after every task change the job
//! is *settled* ([`JobStatus`] derived from its task counts); paused and canceled are set by
//! users. Asking for the state a job is already in (pause a paused job, resume a queued one,
//! cancel a canceled one) does nothing and is not an error, so API calls can be retried.
//!
//! # Task states
//!
//! ```text
//! from \ to   queued running completed failed canceled
//! queued        .      x        .        .       x
//! running       x      .        x        x       x
//! completed     .      .        .        .       .
//! failed        .      .        .        .       .
//! canceled      .      .        .        .       .
//! ```
//!
//! - queued -> running: handed out by [`Store::next_task`].
//! - running -> completed: its holder reported it done.
//! - running -> queued: it failed, its node was lost or its lease expired, with attempts left.
//! - running -> failed: the same with no attempts left.
//! - queued or running -> canceled: its job was canceled or failed. (Deleting a job removes its
//!   tasks outright; the caller is told which nodes to stop.)
//!
//! # Attempts, retries and node exclusion
//!
//! `attempts` counts hand-outs: [`Store::next_task`] increments it. When a running task ends
//! without a result (the node reported a failure, the node was lost, its lease expired) it goes
//! back to the queue unless it has had [`MAX_TASK_ATTEMPTS`] attempts, in which case it fails
//! and so does its job. A lost node or an expired lease counts as an attempt because a task
//! that kills its worker (out of memory, a driver crash) would otherwise be retried forever,
//! but it does not count as that node's failure: the node may simply have been switched off.
//! A reported failure also adds one to the (job, node) failure count, and a node with
//! [`MAX_NODE_FAILURES_PER_JOB`] failures on a job gets no more of its tasks: a machine without
//! enough memory for one scene should not burn the attempts of every task of it.
//!
//! Only the node holding a running task may complete, fail or renew it: after an expiry or a
//! restart the task may have been given to someone else, and a late report from the previous
//! holder is refused with [`StoreError::NotHolder`] so no result is counted twice.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, ToSql, TransactionBehavior};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A task is handed out at most this many times; the failure after the last one fails the job.
pub const MAX_TASK_ATTEMPTS: u32 = 3;
/// A node that reported this many failures on one job is given none of its tasks any more.
pub const MAX_NODE_FAILURES_PER_JOB: u32 = 2;
/// How long a node may hold a task without renewing its lease, unless [`Store::with_lease_ms`]
/// says otherwise.
pub const DEFAULT_TASK_LEASE_MS: i64 = 60_000;

/// Job ids are `[a-z0-9-]` and at most this long (generated ones are 13 characters).
pub const MAX_JOB_ID_LEN: usize = rayfarm_job::jobdesc::MAX_JOB_ID_LEN;
/// Job and task names, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Node names, in bytes.
pub const MAX_NODE_NAME_BYTES: usize = 128;
/// A job's spec, in bytes of JSON text.
pub const MAX_JOB_SPEC_BYTES: usize = 1 << 20;
/// A task's spec, in bytes of JSON text; small because a job may have many tasks.
pub const MAX_TASK_SPEC_BYTES: usize = 64 << 10;
/// Tasks in one job.
pub const MAX_TASKS_PER_JOB: usize = 100_000;
/// Error messages from nodes are cut to this many bytes before they are stored.
pub const MAX_ERROR_BYTES: usize = 4096;

/// How long a write waits for another connection to the same file (a monitor reading it with
/// the `sqlite3` tool, say) before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations, applied in order. `PRAGMA user_version` is the number applied so far.
/// Never edit a migration that has shipped; append a new one.
pub const MIGRATIONS: &[&str] = &[
    // 1: jobs, tasks, per-(job, node) failure counts.
    "
    CREATE TABLE jobs (
        -- Submission order, for 'older first' among equal priorities; AUTOINCREMENT so a
        -- deleted job's number is never reused.
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        name          TEXT NOT NULL,
        kind          TEXT NOT NULL,
        priority      INTEGER NOT NULL,
        status        TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        spec          TEXT NOT NULL,
        error         TEXT
    );
    CREATE TABLE tasks (
        id             INTEGER PRIMARY KEY,
        job_id         TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx            INTEGER NOT NULL,
        name           TEXT NOT NULL,
        spec           TEXT NOT NULL,
        status         TEXT NOT NULL,
        attempts       INTEGER NOT NULL DEFAULT 0,
        node           TEXT,
        lease_until_ms INTEGER,
        error          TEXT,
        updated_at_ms  INTEGER NOT NULL,
        UNIQUE (job_id, idx)
    );
    CREATE INDEX tasks_by_status ON tasks(status, job_id, idx);
    CREATE INDEX tasks_by_node ON tasks(node, status);
    CREATE TABLE job_node_failures (
        job_id   TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        node     TEXT NOT NULL,
        failures INTEGER NOT NULL,
        PRIMARY KEY (job_id, node)
    );
    ",
    // 2: when a task's last attempt started and when the task ended, for the monitor's task
    // lists (wall clock, like updated_at_ms; tasks from before this migration have neither).
    "
    ALTER TABLE tasks ADD COLUMN started_at_ms INTEGER;
    ALTER TABLE tasks ADD COLUMN finished_at_ms INTEGER;
    ",
];

/// Row id of a task; unique across jobs.
pub type TaskId = i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no job with id {0:?}")]
    NoSuchJob(String),
    #[error("no task with id {0}")]
    NoSuchTask(TaskId),
    #[error("job id {id:?} is invalid: {why}")]
    BadJobId { id: String, why: String },
    #[error("node name {node:?} is invalid: {why}")]
    BadNodeName { node: String, why: &'static str },
    #[error("invalid job: {0}")]
    InvalidJob(String),
    #[error("cannot move {what} from {from} to {to}")]
    BadTransition {
        /// The job or task, e.g. `job j0123456789ab` or `task 17`.
        what: String,
        from: &'static str,
        to: &'static str,
    },
    #[error("job {id} has {running} running task(s); cancel it first, or delete it with force")]
    JobRunning { id: String, running: u64 },
    #[error(
        "task {task_id} is not held by node {node:?} (it is {status}{}); the report was refused",
        .holder.as_ref().map(|h| format!(" on {h:?}")).unwrap_or_default()
    )]
    NotHolder {
        task_id: TaskId,
        node: String,
        status: TaskStatus,
        holder: Option<String>,
    },
    #[error(
        "job database schema version {found} is newer than this build supports ({supported}); \
         use a newer rayfarm"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("cannot open job database {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot generate a job id: {0}")]
    Random(getrandom::Error),
    #[error("job database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Defines a status-like enum stored as lower-case text, with its SQL and serde forms.
macro_rules! text_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                let s = value.as_str()?;
                $name::parse(s).ok_or_else(|| {
                    FromSqlError::Other(
                        format!(concat!("unknown ", stringify!($name), " {:?} in the database"), s)
                            .into(),
                    )
                })
            }
        }
    };
}

text_enum!(
    /// What a job produces; decides how its tasks are run and merged.
    JobKind { Bake => "bake", Render => "render" }
);

text_enum!(
    /// See the module documentation for the state machine.
    JobStatus {
        Queued => "queued",
        Active => "active",
        Paused => "paused",
        Completed => "completed",
        Failed => "failed",
        Canceled => "canceled",
    }
);

text_enum!(
    /// See the module documentation for the state machine.
    TaskStatus {
        Queued => "queued",
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Canceled => "canceled",
    }
);

/// Every allowed job status change; anything else is a [`StoreError::BadTransition`].
impl From<rayfarm_job::jobdesc::JobKindTag> for JobKind {
    fn from(k: rayfarm_job::jobdesc::JobKindTag) -> Self {
        match k {
            rayfarm_job::jobdesc::JobKindTag::Bake => JobKind::Bake,
            rayfarm_job::jobdesc::JobKindTag::Render => JobKind::Render,
        }
    }
}

pub const JOB_TRANSITIONS: &[(JobStatus, JobStatus)] = {
    use JobStatus::*;
    &[
        (Queued, Active),
        (Queued, Paused),
        (Queued, Canceled),
        (Active, Queued),
        (Active, Paused),
        (Active, Completed),
        (Active, Failed),
        (Active, Canceled),
        (Paused, Queued),
        (Paused, Active),
        (Paused, Completed),
        (Paused, Failed),
        (Paused, Canceled),
    ]
};

/// Every allowed task status change; anything else is a [`StoreError::BadTransition`].
pub const TASK_TRANSITIONS: &[(TaskStatus, TaskStatus)] = {
    use TaskStatus::*;
    &[
        (Queued, Running),
        (Queued, Canceled),
        (Running, Queued),
        (Running, Completed),
        (Running, Failed),
        (Running, Canceled),
    ]
};

impl JobStatus {
    /// Whether [`JOB_TRANSITIONS`] allows `self -> to`.
    pub fn can_transition(self, to: JobStatus) -> bool {
        JOB_TRANSITIONS.contains(&(self, to))
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled
        )
    }
}

impl TaskStatus {
    /// Whether [`TASK_TRANSITIONS`] allows `self -> to`.
    pub fn can_transition(self, to: TaskStatus) -> bool {
        TASK_TRANSITIONS.contains(&(self, to))
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Canceled
        )
    }
}

/// A job as submitted; see [`Store::submit`].
#[derive(Clone, Debug)]
pub struct NewJob {
    /// The id to use (a client that names the job's folder before submitting chooses it);
    /// `None` makes one up. An id already in the queue is refused.
    pub id: Option<String>,
    pub name: String,
    pub kind: JobKind,
    /// Higher runs first.
    pub priority: i32,
    /// Opaque JSON text for whoever runs the tasks.
    pub spec: String,
    /// In order; a task's index is its position here.
    pub tasks: Vec<NewTask>,
}

#[derive(Clone, Debug)]
pub struct NewTask {
    pub name: String,
    /// Opaque JSON text.
    pub spec: String,
}

/// Tasks of one job per status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TaskCounts {
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub canceled: u64,
}

impl TaskCounts {
    pub fn total(&self) -> u64 {
        self.queued + self.running + self.completed + self.failed + self.canceled
    }
}

/// A job as the API and monitor show it (without its spec: see [`Store::job_spec`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobInfo {
    pub id: String,
    pub name: String,
    pub kind: JobKind,
    pub priority: i32,
    pub status: JobStatus,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// Why the job failed, when it did.
    pub error: Option<String>,
    pub tasks: TaskCounts,
    /// Completed tasks over all tasks, 0.0 to 1.0.
    pub progress: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskInfo {
    pub id: TaskId,
    pub job_id: String,
    pub index: u32,
    pub name: String,
    pub spec: String,
    pub status: TaskStatus,
    /// Times handed out so far.
    pub attempts: u32,
    /// The holder while running; the last holder once completed or canceled; none when queued.
    pub node: Option<String>,
    /// While running: the lease ends once `now_ms` passes this.
    pub lease_until_ms: Option<i64>,
    /// The last failure, kept across retries.
    pub error: Option<String>,
    pub updated_at_ms: i64,
    /// When its latest attempt was handed out (wall clock); none before the first.
    pub started_at_ms: Option<i64>,
    /// When it completed, failed for good or was canceled (wall clock); none until then.
    pub finished_at_ms: Option<i64>,
}

/// A node's failures on one job; see [`Store::node_failures`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeFailures {
    pub job_id: String,
    /// Failures the node reported on the job.
    pub failures: u32,
    /// Whether the node gets no more of the job's tasks ([`MAX_NODE_FAILURES_PER_JOB`]).
    pub excluded: bool,
}

/// What [`Store::next_task`] gives a node to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskAssignment {
    pub task_id: TaskId,
    pub job_id: String,
    pub job_kind: JobKind,
    pub job_spec: String,
    pub index: u32,
    pub name: String,
    pub spec: String,
    /// 1 for the first hand-out.
    pub attempt: u32,
    pub lease_until_ms: i64,
}

/// A running task that was canceled: the caller must tell `node` to stop it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StopTask {
    pub task_id: TaskId,
    pub job_id: String,
    pub node: String,
}

/// The outcome of [`Store::task_done`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDone {
    pub job_id: String,
    /// `Completed` when this was the last task: time to merge.
    pub job_status: JobStatus,
}

/// The outcome of [`Store::task_failed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFailed {
    pub job_id: String,
    /// Whether the task went back to the queue (else it failed for good, and so did the job).
    pub requeued: bool,
    pub job_status: JobStatus,
    /// Other tasks of the job that were running when it failed.
    pub stop: Vec<StopTask>,
}

/// The outcome of [`Store::node_lost`] and [`Store::expire_leases`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Tasks back in the queue.
    pub requeued: Vec<TaskId>,
    /// Tasks that had used all their attempts; their jobs failed.
    pub failed: Vec<TaskId>,
    /// Running tasks of those failed jobs on other nodes.
    pub stop: Vec<StopTask>,
}

/// The job queue. Synchronous: wrap it in a mutex and call it from `spawn_blocking`.
pub struct Store {
    conn: Connection,
    lease_ms: i64,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    /// Running tasks keep their leases: see the module documentation.
    pub fn open(path: &Path) -> Result<Store> {
        let open_err = |source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        // WAL lets the monitor read while the manager writes, and with synchronous=FULL a
        // committed change survives power loss. Some filesystems (network shares) cannot do
        // WAL; SQLite then keeps its rollback journal, which is just as safe, only slower.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(
                path = %path.display(),
                journal_mode = %mode,
                "job database cannot use WAL; using its rollback journal"
            );
        }
        Store::init(conn)
    }

    /// A private database that disappears with the store; for tests.
    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        // Per connection, not stored in the file, so set on every open.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        let running: i64 = conn.query_row(
            "SELECT COUNT(*) FROM tasks WHERE status = 'running'",
            [],
            |row| row.get(0),
        )?;
        if running > 0 {
            tracing::info!(
                running,
                "tasks were running when the job database was last closed; \
                 their nodes have until their leases end to report"
            );
        }
        Ok(Store {
            conn,
            lease_ms: DEFAULT_TASK_LEASE_MS,
        })
    }

    /// Sets how long a hand-out or renewal lasts.
    pub fn with_lease_ms(mut self, lease_ms: i64) -> Store {
        self.lease_ms = lease_ms.max(1);
        self
    }

    pub fn lease_ms(&self) -> i64 {
        self.lease_ms
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    fn begin(&mut self) -> Result<rusqlite::Transaction<'_>> {
        // IMMEDIATE takes the write lock at BEGIN, so a transaction never fails half-way
        // because another connection wrote first.
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Adds a job and all its tasks (queued), atomically; returns the job's new id.
    pub fn submit(&mut self, job: NewJob) -> Result<String> {
        validate_new_job(&job)?;
        let now = wall_ms();
        let tx = self.begin()?;
        if let Some(id) = &job.id {
            validate_job_id(id)?;
            if tx
                .query_row("SELECT 1 FROM jobs WHERE id = ?1", [id], |_| Ok(()))
                .optional()?
                .is_some()
            {
                return Err(StoreError::InvalidJob(format!(
                    "a job with id '{id}' is already in the queue"
                )));
            }
        }
        // 48 random bits make a collision unlikely, but the id is a key: retry rather than fail.
        let mut id = match &job.id {
            Some(id) => id.clone(),
            None => new_job_id()?,
        };
        while job.id.is_none()
            && tx
                .query_row("SELECT 1 FROM jobs WHERE id = ?1", [&id], |_| Ok(()))
                .optional()?
                .is_some()
        {
            id = new_job_id()?;
        }
        tx.execute(
            "INSERT INTO jobs (id, name, kind, priority, status, created_at_ms, updated_at_ms, spec)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
            params![
                id,
                job.name,
                job.kind,
                job.priority,
                JobStatus::Queued,
                now,
                job.spec
            ],
        )?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO tasks (job_id, idx, name, spec, status, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (index, task) in job.tasks.iter().enumerate() {
                insert.execute(params![
                    id,
                    index as i64,
                    task.name,
                    task.spec,
                    TaskStatus::Queued,
                    now
                ])?;
            }
        }
        tx.commit()?;
        tracing::info!(job = %id, name = %job.name, tasks = job.tasks.len(), "job submitted");
        Ok(id)
    }

    /// Hands `node` the next task: the lowest-index queued task of the highest-priority job
    /// that is queued or active (older first among equals), skipping jobs this node has failed
    /// [`MAX_NODE_FAILURES_PER_JOB`] times. The task runs until `now_ms + lease_ms` unless
    /// renewed.
    pub fn next_task(&mut self, node: &str, now_ms: i64) -> Result<Option<TaskAssignment>> {
        validate_node(node)?;
        let lease_until_ms = now_ms.saturating_add(self.lease_ms);
        let tx = self.begin()?;
        let found = tx
            .query_row(
                "SELECT t.id, t.job_id, j.kind, j.spec, t.idx, t.name, t.spec, t.attempts
                 FROM tasks t JOIN jobs j ON j.id = t.job_id
                 WHERE t.status = 'queued' AND j.status IN ('queued', 'active')
                   AND NOT EXISTS (
                       SELECT 1 FROM job_node_failures f
                       WHERE f.job_id = j.id AND f.node = ?1 AND f.failures >= ?2)
                 ORDER BY j.priority DESC, j.seq ASC, t.idx ASC
                 LIMIT 1",
                params![node, MAX_NODE_FAILURES_PER_JOB],
                |row| {
                    Ok(TaskAssignment {
                        task_id: row.get(0)?,
                        job_id: row.get(1)?,
                        job_kind: row.get(2)?,
                        job_spec: row.get(3)?,
                        index: row.get(4)?,
                        name: row.get(5)?,
                        spec: row.get(6)?,
                        attempt: row.get::<_, u32>(7)? + 1,
                        lease_until_ms,
                    })
                },
            )
            .optional()?;
        let Some(assignment) = found else {
            return Ok(None);
        };
        set_task_status(
            &tx,
            assignment.task_id,
            TaskStatus::Queued,
            TaskStatus::Running,
        )?;
        tx.execute(
            "UPDATE tasks SET node = ?2, lease_until_ms = ?3, attempts = ?4, started_at_ms = ?5,
                              finished_at_ms = NULL
             WHERE id = ?1",
            params![
                assignment.task_id,
                node,
                lease_until_ms,
                assignment.attempt,
                wall_ms()
            ],
        )?;
        settle_job(&tx, &assignment.job_id)?;
        tx.commit()?;
        tracing::debug!(
            task = assignment.task_id,
            job = %assignment.job_id,
            node,
            attempt = assignment.attempt,
            "task handed out"
        );
        Ok(Some(assignment))
    }

    /// Whether any job that is queued or active has a queued task (work for an idle node).
    pub fn has_queued_tasks(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id
                 WHERE t.status = 'queued' AND j.status IN ('queued', 'active') LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Whether `node` could be given a task now: [`Store::has_queued_tasks`] without the jobs
    /// it has failed [`MAX_NODE_FAILURES_PER_JOB`] times (as [`Store::next_task`] skips them).
    pub fn has_queued_tasks_for(&self, node: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id
                 WHERE t.status = 'queued' AND j.status IN ('queued', 'active')
                   AND NOT EXISTS (
                       SELECT 1 FROM job_node_failures f
                       WHERE f.job_id = j.id AND f.node = ?1 AND f.failures >= ?2)
                 LIMIT 1",
                params![node, MAX_NODE_FAILURES_PER_JOB],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The nodes that get no more of `job_id`'s tasks (they failed it
    /// [`MAX_NODE_FAILURES_PER_JOB`] times), by name.
    pub fn excluded_nodes(&self, job_id: &str) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(
            "SELECT node FROM job_node_failures WHERE job_id = ?1 AND failures >= ?2 ORDER BY node",
        )?;
        let rows = st.query_map(params![job_id, MAX_NODE_FAILURES_PER_JOB], |r| {
            r.get::<_, String>(0)
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Every running task, in id order (a restarted manager checks what they left behind).
    pub fn running_tasks(&self) -> Result<Vec<TaskInfo>> {
        let mut out = Vec::new();
        for j in self.list_jobs()? {
            out.extend(
                self.tasks(&j.id)?
                    .into_iter()
                    .filter(|t| t.status == TaskStatus::Running),
            );
        }
        out.sort_by_key(|t| t.id);
        Ok(out)
    }

    /// Extends the lease of a task `node` holds to `now_ms + lease_ms`; returns the new end.
    ///
    /// A lease that has run out but not yet been collected by [`Store::expire_leases`] can still
    /// be renewed: the task is still the node's, and nobody else has it.
    pub fn renew_lease(&mut self, task_id: TaskId, node: &str, now_ms: i64) -> Result<i64> {
        validate_node(node)?;
        let lease_until_ms = now_ms.saturating_add(self.lease_ms);
        let tx = self.begin()?;
        held_task(&tx, task_id, node)?;
        tx.execute(
            "UPDATE tasks SET lease_until_ms = ?2 WHERE id = ?1",
            params![task_id, lease_until_ms],
        )?;
        tx.commit()?;
        Ok(lease_until_ms)
    }

    /// Records that `node` finished `task_id`. Refused unless `node` holds the task.
    pub fn task_done(&mut self, task_id: TaskId, node: &str) -> Result<TaskDone> {
        validate_node(node)?;
        let tx = self.begin()?;
        let job_id = held_task(&tx, task_id, node)?;
        set_task_status(&tx, task_id, TaskStatus::Running, TaskStatus::Completed)?;
        // An earlier attempt's error no longer describes a completed task (the events keep it).
        tx.execute(
            "UPDATE tasks SET lease_until_ms = NULL, error = NULL WHERE id = ?1",
            [task_id],
        )?;
        let (job_status, _) = settle_job(&tx, &job_id)?;
        tx.commit()?;
        if job_status == JobStatus::Completed {
            tracing::info!(job = %job_id, "job completed");
        }
        Ok(TaskDone { job_id, job_status })
    }

    /// Records that `task_id` failed on `node` with `error`. The task goes back to the queue
    /// unless it has had [`MAX_TASK_ATTEMPTS`] attempts; then it fails, its job fails, and the
    /// job's other running tasks are canceled (returned in [`TaskFailed::stop`]). Refused
    /// unless `node` holds the task.
    pub fn task_failed(&mut self, task_id: TaskId, node: &str, error: &str) -> Result<TaskFailed> {
        validate_node(node)?;
        let error = format!("on node {node}: {}", truncate(error, MAX_ERROR_BYTES));
        let tx = self.begin()?;
        let job_id = held_task(&tx, task_id, node)?;
        tx.execute(
            "INSERT INTO job_node_failures (job_id, node, failures) VALUES (?1, ?2, 1)
             ON CONFLICT (job_id, node) DO UPDATE SET failures = failures + 1",
            params![job_id, node],
        )?;
        let requeued = end_attempt(&tx, task_id, &error)?;
        let (job_status, stop) = settle_job(&tx, &job_id)?;
        tx.commit()?;
        if requeued {
            tracing::warn!(task = task_id, job = %job_id, %error, "task failed; requeued");
        } else {
            tracing::warn!(task = task_id, job = %job_id, %error, "task failed for good");
        }
        Ok(TaskFailed {
            job_id,
            requeued,
            job_status,
            stop,
        })
    }

    /// `node` is gone (disconnected, shut down): every task it was running goes back to the
    /// queue, or fails if it has used all its attempts. Counts as an attempt, not as a failure
    /// of the node (see the module documentation).
    pub fn node_lost(&mut self, node: &str) -> Result<Reclaimed> {
        validate_node(node)?;
        let tx = self.begin()?;
        let tasks = select_ids(
            &tx,
            "SELECT id FROM tasks WHERE status = 'running' AND node = ?1 ORDER BY id",
            params![node],
        )?;
        let reclaimed = reclaim(&tx, &tasks, &format!("node {node} was lost"))?;
        tx.commit()?;
        if !tasks.is_empty() {
            tracing::warn!(
                node,
                tasks = tasks.len(),
                "node lost; its tasks were reclaimed"
            );
        }
        Ok(reclaimed)
    }

    /// Reclaims every running task whose lease ended before `now_ms`, like [`Store::node_lost`].
    /// The caller runs this periodically; the holders of these tasks should be told to stop,
    /// as their results will be refused.
    pub fn expire_leases(&mut self, now_ms: i64) -> Result<Reclaimed> {
        let tx = self.begin()?;
        let tasks = select_ids(
            &tx,
            "SELECT id FROM tasks WHERE status = 'running' AND lease_until_ms < ?1 ORDER BY id",
            params![now_ms],
        )?;
        let reclaimed = reclaim(&tx, &tasks, "its lease expired")?;
        tx.commit()?;
        if !tasks.is_empty() {
            tracing::warn!(tasks = tasks.len(), "task leases expired; tasks reclaimed");
        }
        Ok(reclaimed)
    }

    /// Stops handing out the job's tasks; running tasks go on and their results are kept.
    /// Pausing a paused job does nothing.
    pub fn pause(&mut self, job_id: &str) -> Result<()> {
        validate_job_id(job_id)?;
        let tx = self.begin()?;
        let from = job_status(&tx, job_id)?;
        if from != JobStatus::Paused {
            set_job_status(&tx, job_id, from, JobStatus::Paused)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Hands out a paused job's tasks again: it becomes active if some are still running, else
    /// queued. Resuming a queued or active job does nothing; a finished one is an error.
    pub fn resume(&mut self, job_id: &str) -> Result<JobStatus> {
        validate_job_id(job_id)?;
        let tx = self.begin()?;
        let from = job_status(&tx, job_id)?;
        match from {
            JobStatus::Queued | JobStatus::Active => Ok(from),
            JobStatus::Paused => {
                let to = if task_counts(&tx, job_id)?.running > 0 {
                    JobStatus::Active
                } else {
                    JobStatus::Queued
                };
                set_job_status(&tx, job_id, from, to)?;
                tx.commit()?;
                Ok(to)
            }
            JobStatus::Completed | JobStatus::Failed | JobStatus::Canceled => {
                Err(bad_job_transition(job_id, from, JobStatus::Queued))
            }
        }
    }

    /// Cancels the job and its queued and running tasks; returns the running ones, whose nodes
    /// the caller must tell to stop. Canceling a canceled job does nothing.
    pub fn cancel(&mut self, job_id: &str) -> Result<Vec<StopTask>> {
        validate_job_id(job_id)?;
        let tx = self.begin()?;
        let from = job_status(&tx, job_id)?;
        if from == JobStatus::Canceled {
            return Ok(Vec::new());
        }
        set_job_status(&tx, job_id, from, JobStatus::Canceled)?;
        let stop = cancel_tasks(&tx, job_id)?;
        tx.commit()?;
        tracing::info!(job = %job_id, stopping = stop.len(), "job canceled");
        Ok(stop)
    }

    /// Removes the job, its tasks and its failure counts. A job with running tasks is only
    /// deleted with `force`; their nodes are then returned, to be told to stop.
    pub fn delete(&mut self, job_id: &str, force: bool) -> Result<Vec<StopTask>> {
        validate_job_id(job_id)?;
        let tx = self.begin()?;
        job_status(&tx, job_id)?;
        let stop = running_tasks(&tx, job_id)?;
        if !stop.is_empty() && !force {
            return Err(StoreError::JobRunning {
                id: job_id.to_string(),
                running: stop.len() as u64,
            });
        }
        // Tasks and failure counts go with it (ON DELETE CASCADE).
        tx.execute("DELETE FROM jobs WHERE id = ?1", [job_id])?;
        tx.commit()?;
        tracing::info!(job = %job_id, stopping = stop.len(), "job deleted");
        Ok(stop)
    }

    /// Changes a job's priority; takes effect at the next hand-out.
    pub fn set_priority(&mut self, job_id: &str, priority: i32) -> Result<()> {
        validate_job_id(job_id)?;
        let tx = self.begin()?;
        let changed = tx.execute(
            "UPDATE jobs SET priority = ?2, updated_at_ms = ?3 WHERE id = ?1",
            params![job_id, priority, wall_ms()],
        )?;
        if changed == 0 {
            return Err(StoreError::NoSuchJob(job_id.to_string()));
        }
        tx.commit()?;
        Ok(())
    }

    /// Every job, in submission order.
    pub fn list_jobs(&self) -> Result<Vec<JobInfo>> {
        let mut stmt = self
            .conn
            .prepare(&format!("{JOB_INFO_SELECT} GROUP BY j.seq ORDER BY j.seq"))?;
        let jobs = stmt
            .query_map([], job_info_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(jobs)
    }

    pub fn job(&self, job_id: &str) -> Result<JobInfo> {
        validate_job_id(job_id)?;
        self.conn
            .query_row(
                &format!("{JOB_INFO_SELECT} WHERE j.id = ?1 GROUP BY j.seq"),
                [job_id],
                job_info_from_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchJob(job_id.to_string()))
    }

    /// The job's spec as submitted.
    pub fn job_spec(&self, job_id: &str) -> Result<String> {
        validate_job_id(job_id)?;
        self.conn
            .query_row("SELECT spec FROM jobs WHERE id = ?1", [job_id], |row| {
                row.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::NoSuchJob(job_id.to_string()))
    }

    /// The job's tasks in index order.
    pub fn tasks(&self, job_id: &str) -> Result<Vec<TaskInfo>> {
        validate_job_id(job_id)?;
        job_status(&self.conn, job_id)?;
        let mut stmt = self.conn.prepare(
            "SELECT id, job_id, idx, name, spec, status, attempts, node, lease_until_ms, error,
                    updated_at_ms, started_at_ms, finished_at_ms
             FROM tasks WHERE job_id = ?1 ORDER BY idx",
        )?;
        let tasks = stmt
            .query_map([job_id], task_info_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(tasks)
    }

    pub fn task(&self, task_id: TaskId) -> Result<TaskInfo> {
        self.conn
            .query_row(
                "SELECT id, job_id, idx, name, spec, status, attempts, node, lease_until_ms,
                        error, updated_at_ms, started_at_ms, finished_at_ms
                 FROM tasks WHERE id = ?1",
                [task_id],
                task_info_from_row,
            )
            .optional()?
            .ok_or(StoreError::NoSuchTask(task_id))
    }

    /// The tasks `node` ran last (it is their holder or last holder), most recently changed
    /// first, at most `limit`. A task that went back to the queue after a failure has no holder
    /// any more: [`Store::node_failures`] counts those.
    pub fn tasks_of_node(&self, node: &str, limit: u32) -> Result<Vec<TaskInfo>> {
        validate_node(node)?;
        let mut stmt = self.conn.prepare(
            "SELECT id, job_id, idx, name, spec, status, attempts, node, lease_until_ms, error,
                    updated_at_ms, started_at_ms, finished_at_ms
             FROM tasks WHERE node = ?1 ORDER BY updated_at_ms DESC, id DESC LIMIT ?2",
        )?;
        let tasks = stmt
            .query_map(params![node, limit], task_info_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(tasks)
    }

    /// The jobs `node` reported failures on, with their counts and whether it is excluded
    /// from them, by job submission order.
    pub fn node_failures(&self, node: &str) -> Result<Vec<NodeFailures>> {
        validate_node(node)?;
        let mut stmt = self.conn.prepare(
            "SELECT f.job_id, f.failures FROM job_node_failures f JOIN jobs j ON j.id = f.job_id
             WHERE f.node = ?1 ORDER BY j.seq",
        )?;
        let rows = stmt.query_map([node], |r| {
            let failures: u32 = r.get(1)?;
            Ok(NodeFailures {
                job_id: r.get(0)?,
                failures,
                excluded: failures >= MAX_NODE_FAILURES_PER_JOB,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

const JOB_INFO_SELECT: &str = "
    SELECT j.id, j.name, j.kind, j.priority, j.status, j.created_at_ms, j.updated_at_ms, j.error,
           COALESCE(SUM(t.status = 'queued'), 0),
           COALESCE(SUM(t.status = 'running'), 0),
           COALESCE(SUM(t.status = 'completed'), 0),
           COALESCE(SUM(t.status = 'failed'), 0),
           COALESCE(SUM(t.status = 'canceled'), 0)
    FROM jobs j LEFT JOIN tasks t ON t.job_id = j.id";

fn job_info_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<JobInfo> {
    let tasks = TaskCounts {
        queued: count(row, 8)?,
        running: count(row, 9)?,
        completed: count(row, 10)?,
        failed: count(row, 11)?,
        canceled: count(row, 12)?,
    };
    let total = tasks.total();
    Ok(JobInfo {
        id: row.get(0)?,
        name: row.get(1)?,
        kind: row.get(2)?,
        priority: row.get(3)?,
        status: row.get(4)?,
        created_at_ms: row.get(5)?,
        updated_at_ms: row.get(6)?,
        error: row.get(7)?,
        tasks,
        progress: if total == 0 {
            0.0
        } else {
            tasks.completed as f64 / total as f64
        },
    })
}

/// A COUNT or SUM column; SQLite integers are signed, counts never negative.
fn count(row: &rusqlite::Row<'_>, index: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(index)?.max(0) as u64)
}

fn task_info_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<TaskInfo> {
    Ok(TaskInfo {
        id: row.get(0)?,
        job_id: row.get(1)?,
        index: row.get(2)?,
        name: row.get(3)?,
        spec: row.get(4)?,
        status: row.get(5)?,
        attempts: row.get(6)?,
        node: row.get(7)?,
        lease_until_ms: row.get(8)?,
        error: row.get(9)?,
        updated_at_ms: row.get(10)?,
        started_at_ms: row.get(11)?,
        finished_at_ms: row.get(12)?,
    })
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let supported = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    for (done, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        // The migration and the version bump commit together, so a crash mid-upgrade leaves
        // the previous version intact and the next open retries it.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", done as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = done + 1, "job database migrated");
    }
    Ok(())
}

fn job_status(conn: &Connection, job_id: &str) -> Result<JobStatus> {
    conn.query_row("SELECT status FROM jobs WHERE id = ?1", [job_id], |row| {
        row.get(0)
    })
    .optional()?
    .ok_or_else(|| StoreError::NoSuchJob(job_id.to_string()))
}

fn bad_job_transition(job_id: &str, from: JobStatus, to: JobStatus) -> StoreError {
    StoreError::BadTransition {
        what: format!("job {job_id}"),
        from: from.as_str(),
        to: to.as_str(),
    }
}

/// The one place a job's status is written, so no change escapes [`JOB_TRANSITIONS`].
fn set_job_status(conn: &Connection, job_id: &str, from: JobStatus, to: JobStatus) -> Result<()> {
    if !from.can_transition(to) {
        return Err(bad_job_transition(job_id, from, to));
    }
    conn.execute(
        "UPDATE jobs SET status = ?2, updated_at_ms = ?3 WHERE id = ?1",
        params![job_id, to, wall_ms()],
    )?;
    Ok(())
}

/// The one place a task's status is written, so no change escapes [`TASK_TRANSITIONS`].
/// `from` is what the caller read in the same transaction.
fn set_task_status(
    conn: &Connection,
    task_id: TaskId,
    from: TaskStatus,
    to: TaskStatus,
) -> Result<()> {
    if !from.can_transition(to) {
        return Err(StoreError::BadTransition {
            what: format!("task {task_id}"),
            from: from.as_str(),
            to: to.as_str(),
        });
    }
    // A task that reached an end records when; one that goes back to the queue has none.
    conn.execute(
        "UPDATE tasks SET status = ?2, updated_at_ms = ?3,
                          finished_at_ms = CASE WHEN ?4 THEN ?3 ELSE NULL END
         WHERE id = ?1",
        params![task_id, to, wall_ms(), to.is_terminal()],
    )?;
    Ok(())
}

/// Checks that `node` holds running task `task_id`; returns the task's job.
fn held_task(conn: &Connection, task_id: TaskId, node: &str) -> Result<String> {
    let (job_id, status, holder): (String, TaskStatus, Option<String>) = conn
        .query_row(
            "SELECT job_id, status, node FROM tasks WHERE id = ?1",
            [task_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?
        .ok_or(StoreError::NoSuchTask(task_id))?;
    if status != TaskStatus::Running || holder.as_deref() != Some(node) {
        return Err(StoreError::NotHolder {
            task_id,
            node: node.to_string(),
            status,
            holder: holder.filter(|_| status == TaskStatus::Running),
        });
    }
    Ok(job_id)
}

/// Ends a running task's attempt without a result: back to the queue, or failed when its
/// attempts are used up. Returns whether it was requeued.
fn end_attempt(conn: &Connection, task_id: TaskId, error: &str) -> Result<bool> {
    let attempts: u32 = conn.query_row(
        "SELECT attempts FROM tasks WHERE id = ?1",
        [task_id],
        |row| row.get(0),
    )?;
    let requeue = attempts < MAX_TASK_ATTEMPTS;
    let to = if requeue {
        TaskStatus::Queued
    } else {
        TaskStatus::Failed
    };
    set_task_status(conn, task_id, TaskStatus::Running, to)?;
    let error = format!("{error} (attempt {attempts} of {MAX_TASK_ATTEMPTS})");
    // A queued task has no holder (the error says who had it last); a failed one keeps its
    // last holder for the monitor.
    let sql = if requeue {
        "UPDATE tasks SET node = NULL, lease_until_ms = NULL, error = ?2 WHERE id = ?1"
    } else {
        "UPDATE tasks SET lease_until_ms = NULL, error = ?2 WHERE id = ?1"
    };
    conn.execute(sql, params![task_id, error])?;
    Ok(requeue)
}

/// Ends the attempts of `tasks` (all running) with `why`, then settles their jobs.
fn reclaim(conn: &Connection, tasks: &[TaskId], why: &str) -> Result<Reclaimed> {
    let mut out = Reclaimed::default();
    let mut jobs: Vec<String> = Vec::new();
    for &task_id in tasks {
        let job_id: String =
            conn.query_row("SELECT job_id FROM tasks WHERE id = ?1", [task_id], |row| {
                row.get(0)
            })?;
        if end_attempt(conn, task_id, why)? {
            out.requeued.push(task_id);
        } else {
            out.failed.push(task_id);
        }
        if !jobs.contains(&job_id) {
            jobs.push(job_id);
        }
    }
    // Settle after every task is ended, so a failing job does not list a reclaimed task of
    // the same node among the tasks to stop.
    for job_id in &jobs {
        let (_, stop) = settle_job(conn, job_id)?;
        out.stop.extend(stop);
    }
    Ok(out)
}

fn task_counts(conn: &Connection, job_id: &str) -> Result<TaskCounts> {
    let mut counts = TaskCounts::default();
    let mut stmt = conn
        .prepare_cached("SELECT status, COUNT(*) FROM tasks WHERE job_id = ?1 GROUP BY status")?;
    let mut rows = stmt.query([job_id])?;
    while let Some(row) = rows.next()? {
        let n = count(row, 1)?;
        match row.get::<_, TaskStatus>(0)? {
            TaskStatus::Queued => counts.queued = n,
            TaskStatus::Running => counts.running = n,
            TaskStatus::Completed => counts.completed = n,
            TaskStatus::Failed => counts.failed = n,
            TaskStatus::Canceled => counts.canceled = n,
        }
    }
    Ok(counts)
}

fn running_tasks(conn: &Connection, job_id: &str) -> Result<Vec<StopTask>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, node FROM tasks WHERE job_id = ?1 AND status = 'running' ORDER BY idx",
    )?;
    let tasks = stmt
        .query_map([job_id], |row| {
            Ok(StopTask {
                task_id: row.get(0)?,
                job_id: job_id.to_string(),
                // A running task always has a holder; the column is nullable for queued ones.
                node: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(tasks)
}

/// Cancels the job's queued and running tasks; returns the running ones.
fn cancel_tasks(conn: &Connection, job_id: &str) -> Result<Vec<StopTask>> {
    let stop = running_tasks(conn, job_id)?;
    let queued = select_ids(
        conn,
        "SELECT id FROM tasks WHERE job_id = ?1 AND status = 'queued'",
        params![job_id],
    )?;
    for task in &stop {
        set_task_status(
            conn,
            task.task_id,
            TaskStatus::Running,
            TaskStatus::Canceled,
        )?;
    }
    for &task_id in &queued {
        set_task_status(conn, task_id, TaskStatus::Queued, TaskStatus::Canceled)?;
    }
    conn.execute(
        "UPDATE tasks SET lease_until_ms = NULL WHERE job_id = ?1 AND status = 'canceled'",
        [job_id],
    )?;
    Ok(stop)
}

/// Brings a job's status in line with its tasks after a task changed: the derived statuses
/// (queued, active, completed, failed) follow the counts, paused stays paused until the job
/// ends, terminal stays. A job that fails has its remaining tasks canceled; the running ones
/// are returned so their nodes can be told to stop.
fn settle_job(conn: &Connection, job_id: &str) -> Result<(JobStatus, Vec<StopTask>)> {
    let from = job_status(conn, job_id)?;
    if from.is_terminal() {
        return Ok((from, Vec::new()));
    }
    let counts = task_counts(conn, job_id)?;
    let to = if counts.failed > 0 {
        JobStatus::Failed
    } else if counts.completed == counts.total() {
        JobStatus::Completed
    } else if from == JobStatus::Paused {
        JobStatus::Paused
    } else if counts.running > 0 {
        JobStatus::Active
    } else {
        JobStatus::Queued
    };
    let mut stop = Vec::new();
    if to != from {
        set_job_status(conn, job_id, from, to)?;
    }
    if to == JobStatus::Failed {
        let (index, name, error): (u32, String, Option<String>) = conn.query_row(
            "SELECT idx, name, error FROM tasks WHERE job_id = ?1 AND status = 'failed'
             ORDER BY idx LIMIT 1",
            [job_id],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        let error = format!(
            "task {index} ({name}) failed: {}",
            error.as_deref().unwrap_or("no error given")
        );
        conn.execute(
            "UPDATE jobs SET error = ?2 WHERE id = ?1",
            params![job_id, error],
        )?;
        stop = cancel_tasks(conn, job_id)?;
        tracing::warn!(job = %job_id, %error, "job failed");
    }
    Ok((to, stop))
}

fn select_ids(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<TaskId>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let ids = stmt
        .query_map(params, |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ids)
}

/// Checks a job id from a user before it goes anywhere near SQL (which gets it as a parameter
/// anyway): `[a-z0-9-]`, 1 to [`MAX_JOB_ID_LEN`] characters.
pub fn validate_job_id(id: &str) -> Result<()> {
    // One rule for job ids: the job folder's ([`rayfarm_job::jobdesc::check_job_id`]).
    rayfarm_job::jobdesc::check_job_id(id).map_err(|e| StoreError::BadJobId {
        id: truncate(id, MAX_JOB_ID_LEN + 8).to_string(),
        why: e.to_string(),
    })
}

fn validate_node(node: &str) -> Result<()> {
    let why = if node.is_empty() {
        "it is empty"
    } else if node.len() > MAX_NODE_NAME_BYTES {
        "it is longer than 128 bytes"
    } else if node.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(StoreError::BadNodeName {
        node: truncate(node, MAX_NODE_NAME_BYTES + 8).to_string(),
        why,
    })
}

fn validate_new_job(job: &NewJob) -> Result<()> {
    let invalid = |msg: String| Err(StoreError::InvalidJob(msg));
    if let Err(why) = check_name(&job.name) {
        return invalid(format!("job name {why}"));
    }
    if let Err(why) = check_spec(&job.spec, MAX_JOB_SPEC_BYTES) {
        return invalid(format!("job spec {why}"));
    }
    if job.tasks.is_empty() {
        return invalid("job has no tasks".to_string());
    }
    if job.tasks.len() > MAX_TASKS_PER_JOB {
        return invalid(format!(
            "job has {} tasks, more than the limit of {MAX_TASKS_PER_JOB}",
            job.tasks.len()
        ));
    }
    for (index, task) in job.tasks.iter().enumerate() {
        if let Err(why) = check_name(&task.name) {
            return invalid(format!("task {index} name {why}"));
        }
        if let Err(why) = check_spec(&task.spec, MAX_TASK_SPEC_BYTES) {
            return invalid(format!("task {index} spec {why}"));
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        Err("is empty".to_string())
    } else if name.len() > MAX_NAME_BYTES {
        Err(format!(
            "is {} bytes, more than the limit of {MAX_NAME_BYTES}",
            name.len()
        ))
    } else if name.chars().any(char::is_control) {
        Err("contains control characters".to_string())
    } else {
        Ok(())
    }
}

fn check_spec(spec: &str, limit: usize) -> Result<(), String> {
    if spec.len() > limit {
        return Err(format!(
            "is {} bytes, more than the limit of {limit}",
            spec.len()
        ));
    }
    // Opaque to the store, but it must be JSON: whoever reads it later should not be the
    // first to find out it is not.
    serde_json::from_str::<serde::de::IgnoredAny>(spec)
        .map(|_| ())
        .map_err(|e| format!("is not valid JSON: {e}"))
}

/// `j` and 12 lower-case hex digits from 48 random bits.
fn new_job_id() -> Result<String> {
    rayfarm_job::plan::new_job_id().map_err(StoreError::Random)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed clock for leases; the tests move it by hand.
    const T0: i64 = 1_000_000;
    const LEASE: i64 = 10_000;

    fn store() -> Store {
        Store::open_in_memory().unwrap().with_lease_ms(LEASE)
    }

    fn job(name: &str, priority: i32, tasks: usize) -> NewJob {
        NewJob {
            id: None,
            name: name.to_string(),
            kind: JobKind::Bake,
            priority,
            spec: format!(r#"{{"scene":"{name}.glb"}}"#),
            tasks: (0..tasks)
                .map(|i| NewTask {
                    name: format!("{name} task {i}"),
                    spec: format!(r#"{{"tile":{i}}}"#),
                })
                .collect(),
        }
    }

    fn status(s: &Store, id: &str) -> JobStatus {
        s.job(id).unwrap().status
    }

    fn task_status(s: &Store, id: TaskId) -> TaskStatus {
        s.task(id).unwrap().status
    }

    #[test]
    fn job_transition_table() {
        use JobStatus::*;
        let allowed = [
            (Queued, Active),
            (Queued, Paused),
            (Queued, Canceled),
            (Active, Queued),
            (Active, Paused),
            (Active, Completed),
            (Active, Failed),
            (Active, Canceled),
            (Paused, Queued),
            (Paused, Active),
            (Paused, Completed),
            (Paused, Failed),
            (Paused, Canceled),
        ];
        for &from in JobStatus::ALL {
            for &to in JobStatus::ALL {
                assert_eq!(
                    from.can_transition(to),
                    allowed.contains(&(from, to)),
                    "job {from} -> {to}"
                );
            }
            // Nothing leaves a terminal state, and nothing "moves" to where it is.
            if from.is_terminal() {
                assert!(JobStatus::ALL.iter().all(|&to| !from.can_transition(to)));
            }
            assert!(!from.can_transition(from));
        }
    }

    #[test]
    fn task_transition_table() {
        use TaskStatus::*;
        let allowed = [
            (Queued, Running),
            (Queued, Canceled),
            (Running, Queued),
            (Running, Completed),
            (Running, Failed),
            (Running, Canceled),
        ];
        for &from in TaskStatus::ALL {
            for &to in TaskStatus::ALL {
                assert_eq!(
                    from.can_transition(to),
                    allowed.contains(&(from, to)),
                    "task {from} -> {to}"
                );
            }
            if from.is_terminal() {
                assert!(TaskStatus::ALL.iter().all(|&to| !from.can_transition(to)));
            }
        }
    }

    #[test]
    fn status_text_round_trips() {
        for &s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for &s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobKind::parse("render"), Some(JobKind::Render));
        assert_eq!(JobStatus::parse("Queued"), None);
    }

    #[test]
    fn submit_and_query() {
        let mut s = store();
        let id = s.submit(job("level1", 5, 3)).unwrap();
        assert_eq!(id.len(), 13);
        assert!(id.starts_with('j'));
        validate_job_id(&id).unwrap();

        let info = s.job(&id).unwrap();
        assert_eq!(info.name, "level1");
        assert_eq!(info.kind, JobKind::Bake);
        assert_eq!(info.priority, 5);
        assert_eq!(info.status, JobStatus::Queued);
        assert_eq!(
            info.tasks,
            TaskCounts {
                queued: 3,
                ..TaskCounts::default()
            }
        );
        assert_eq!(info.progress, 0.0);
        assert!(info.created_at_ms > 0);
        assert_eq!(s.job_spec(&id).unwrap(), r#"{"scene":"level1.glb"}"#);

        let tasks = s.tasks(&id).unwrap();
        assert_eq!(tasks.len(), 3);
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(t.index as usize, i);
            assert_eq!(t.name, format!("level1 task {i}"));
            assert_eq!(t.spec, format!(r#"{{"tile":{i}}}"#));
            assert_eq!(t.status, TaskStatus::Queued);
            assert_eq!(t.attempts, 0);
            assert_eq!(t.node, None);
        }
        assert_eq!(s.list_jobs().unwrap(), vec![info]);
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
    }

    #[test]
    fn submit_rejects_bad_jobs() {
        let mut s = store();
        let cases: Vec<(NewJob, &str)> = vec![
            (job("x", 0, 0), "job has no tasks"),
            (job("", 0, 1), "job name is empty"),
            (
                job(&"n".repeat(MAX_NAME_BYTES + 1), 0, 1),
                "job name is 257",
            ),
            (job("a\nb", 0, 1), "job name contains control"),
            (
                NewJob {
                    id: None,
                    spec: "{not json".into(),
                    ..job("x", 0, 1)
                },
                "job spec is not valid JSON",
            ),
            (
                NewJob {
                    id: None,
                    spec: format!("\"{}\"", "a".repeat(MAX_JOB_SPEC_BYTES)),
                    ..job("x", 0, 1)
                },
                "job spec is 1048578 bytes",
            ),
            (
                NewJob {
                    id: None,
                    tasks: vec![NewTask {
                        name: "t".into(),
                        spec: "".into(),
                    }],
                    ..job("x", 0, 0)
                },
                "task 0 spec is not valid JSON",
            ),
            (
                NewJob {
                    id: None,
                    tasks: vec![
                        NewTask {
                            name: "t".into(),
                            spec: "{}".into(),
                        };
                        MAX_TASKS_PER_JOB + 1
                    ],
                    ..job("x", 0, 0)
                },
                "more than the limit of 100000",
            ),
        ];
        for (bad, expected) in cases {
            let err = s.submit(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidJob(_)), "{err}");
            assert!(err.to_string().contains(expected), "{err}");
        }
        assert!(s.list_jobs().unwrap().is_empty());
    }

    #[test]
    fn job_ids_are_validated_before_sql() {
        let mut s = store();
        let long = "a".repeat(MAX_JOB_ID_LEN + 1);
        for bad in [
            "",
            "J123",
            "a b",
            "x'; DROP TABLE jobs;--",
            "ü",
            long.as_str(),
        ] {
            assert!(
                matches!(s.job(bad), Err(StoreError::BadJobId { .. })),
                "{bad:?}"
            );
            assert!(matches!(s.pause(bad), Err(StoreError::BadJobId { .. })));
            assert!(matches!(s.resume(bad), Err(StoreError::BadJobId { .. })));
            assert!(matches!(s.cancel(bad), Err(StoreError::BadJobId { .. })));
            assert!(matches!(
                s.delete(bad, true),
                Err(StoreError::BadJobId { .. })
            ));
            assert!(matches!(
                s.set_priority(bad, 1),
                Err(StoreError::BadJobId { .. })
            ));
            assert!(matches!(s.tasks(bad), Err(StoreError::BadJobId { .. })));
        }
        validate_job_id(&"a".repeat(MAX_JOB_ID_LEN)).unwrap();
        validate_job_id("my-job-2").unwrap();
        // Well-formed but unknown.
        let err = s.pause("j000000000000").unwrap_err();
        assert!(matches!(err, StoreError::NoSuchJob(_)));
        assert_eq!(err.to_string(), "no job with id \"j000000000000\"");
        assert!(matches!(
            s.set_priority("nope", 1),
            Err(StoreError::NoSuchJob(_))
        ));
        assert!(matches!(s.tasks("nope"), Err(StoreError::NoSuchJob(_))));
        assert!(matches!(s.job_spec("nope"), Err(StoreError::NoSuchJob(_))));
    }

    #[test]
    fn generated_ids_are_distinct() {
        let mut s = store();
        let ids: std::collections::HashSet<String> = (0..50)
            .map(|i| s.submit(job(&format!("j{i}"), 0, 1)).unwrap())
            .collect();
        assert_eq!(ids.len(), 50);
    }

    #[test]
    fn node_names_are_validated() {
        let mut s = store();
        for bad in ["", "a\0b", &"n".repeat(MAX_NODE_NAME_BYTES + 1)] {
            assert!(matches!(
                s.next_task(bad, T0),
                Err(StoreError::BadNodeName { .. })
            ));
            assert!(matches!(
                s.node_lost(bad),
                Err(StoreError::BadNodeName { .. })
            ));
        }
    }

    #[test]
    fn job_runs_to_completion() {
        let mut s = store();
        let id = s.submit(job("j", 0, 2)).unwrap();
        let a = s.next_task("a", T0).unwrap().unwrap();
        assert_eq!(a.index, 0);
        assert_eq!(a.job_id, id);
        assert_eq!(a.job_kind, JobKind::Bake);
        assert_eq!(a.job_spec, r#"{"scene":"j.glb"}"#);
        assert_eq!(a.attempt, 1);
        assert_eq!(a.lease_until_ms, T0 + LEASE);
        assert_eq!(status(&s, &id), JobStatus::Active);
        let t = s.task(a.task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Running);
        assert_eq!(t.node.as_deref(), Some("a"));
        assert_eq!(t.lease_until_ms, Some(T0 + LEASE));

        let b = s.next_task("b", T0).unwrap().unwrap();
        assert_eq!(b.index, 1);
        assert_eq!(s.next_task("c", T0).unwrap(), None);

        let done = s.task_done(a.task_id, "a").unwrap();
        assert_eq!(done.job_status, JobStatus::Active);
        let info = s.job(&id).unwrap();
        assert_eq!(info.progress, 0.5);
        assert_eq!(info.tasks.completed, 1);
        assert_eq!(info.tasks.running, 1);

        let done = s.task_done(b.task_id, "b").unwrap();
        assert_eq!(
            done,
            TaskDone {
                job_id: id.clone(),
                job_status: JobStatus::Completed
            }
        );
        let info = s.job(&id).unwrap();
        assert_eq!(info.progress, 1.0);
        assert_eq!(info.error, None);
        let t = s.task(b.task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Completed);
        assert_eq!(t.node.as_deref(), Some("b"));
        assert_eq!(t.lease_until_ms, None);
    }

    #[test]
    fn active_job_goes_back_to_queued_when_nothing_runs() {
        let mut s = store();
        let id = s.submit(job("j", 0, 2)).unwrap();
        let a = s.next_task("a", T0).unwrap().unwrap();
        assert_eq!(status(&s, &id), JobStatus::Active);
        let failed = s.task_failed(a.task_id, "a", "oom").unwrap();
        assert!(failed.requeued);
        assert_eq!(failed.job_status, JobStatus::Queued);
        assert_eq!(status(&s, &id), JobStatus::Queued);
    }

    #[test]
    fn priorities_then_age_then_index() {
        let mut s = store();
        let low = s.submit(job("low", 1, 2)).unwrap();
        let high_old = s.submit(job("high-old", 5, 2)).unwrap();
        let high_new = s.submit(job("high-new", 5, 1)).unwrap();
        let order: Vec<(String, u32)> = (0..5)
            .map(|i| {
                let t = s.next_task(&format!("n{i}"), T0).unwrap().unwrap();
                (t.job_id, t.index)
            })
            .collect();
        assert_eq!(
            order,
            vec![
                (high_old.clone(), 0),
                (high_old.clone(), 1),
                (high_new.clone(), 0),
                (low.clone(), 0),
                (low.clone(), 1),
            ]
        );
        assert_eq!(s.next_task("n9", T0).unwrap(), None);
    }

    #[test]
    fn set_priority_reorders() {
        let mut s = store();
        let first = s.submit(job("first", 0, 2)).unwrap();
        let second = s.submit(job("second", 0, 2)).unwrap();
        assert_eq!(s.next_task("a", T0).unwrap().unwrap().job_id, first);
        s.set_priority(&second, 10).unwrap();
        assert_eq!(s.job(&second).unwrap().priority, 10);
        assert_eq!(s.next_task("a", T0).unwrap().unwrap().job_id, second);
        s.set_priority(&second, -10).unwrap();
        assert_eq!(s.next_task("a", T0).unwrap().unwrap().job_id, first);
    }

    #[test]
    fn retry_limit_fails_task_and_job() {
        let mut s = store();
        let id = s.submit(job("j", 0, 3)).unwrap();
        // Task 0 fails on three different nodes so node exclusion plays no part.
        let t0 = s.next_task("a", T0).unwrap().unwrap();
        let other = s.next_task("z", T0).unwrap().unwrap(); // task 1, keeps running
        assert_eq!(other.index, 1);
        let r = s.task_failed(t0.task_id, "a", "crash 1").unwrap();
        assert!(r.requeued);
        assert_eq!(r.job_status, JobStatus::Active);
        let t = s.task(t0.task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.attempts, 1);
        assert_eq!(t.node, None);
        assert_eq!(t.lease_until_ms, None);
        assert_eq!(
            t.error.as_deref(),
            Some("on node a: crash 1 (attempt 1 of 3)")
        );

        let again = s.next_task("b", T0).unwrap().unwrap();
        assert_eq!((again.task_id, again.attempt), (t0.task_id, 2));
        assert!(s.task_failed(t0.task_id, "b", "crash 2").unwrap().requeued);

        let last = s.next_task("c", T0).unwrap().unwrap();
        assert_eq!((last.task_id, last.attempt), (t0.task_id, 3));
        let r = s.task_failed(t0.task_id, "c", "crash 3").unwrap();
        assert!(!r.requeued);
        assert_eq!(r.job_status, JobStatus::Failed);
        assert_eq!(
            r.stop,
            vec![StopTask {
                task_id: other.task_id,
                job_id: id.clone(),
                node: "z".into()
            }]
        );

        let info = s.job(&id).unwrap();
        assert_eq!(info.status, JobStatus::Failed);
        assert_eq!(
            info.error.as_deref(),
            Some("task 0 (j task 0) failed: on node c: crash 3 (attempt 3 of 3)")
        );
        assert_eq!(
            info.tasks,
            TaskCounts {
                failed: 1,
                canceled: 2,
                ..TaskCounts::default()
            }
        );
        let t = s.task(t0.task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Failed);
        assert_eq!(t.node.as_deref(), Some("c"));
        // The canceled task's late result is refused; nothing more is handed out.
        assert!(matches!(
            s.task_done(other.task_id, "z"),
            Err(StoreError::NotHolder {
                status: TaskStatus::Canceled,
                ..
            })
        ));
        assert_eq!(s.next_task("d", T0).unwrap(), None);
    }

    #[test]
    fn node_failures_exclude_node_from_job() {
        let mut s = store();
        let bad_for_a = s.submit(job("big", 10, 3)).unwrap();
        let other = s.submit(job("small", 0, 1)).unwrap();

        for _ in 0..MAX_NODE_FAILURES_PER_JOB {
            let t = s.next_task("a", T0).unwrap().unwrap();
            assert_eq!(t.job_id, bad_for_a);
            s.task_failed(t.task_id, "a", "out of memory").unwrap();
        }
        // Node a is now skipped for the big job even though it has higher priority...
        assert!(s.has_queued_tasks_for("a").unwrap());
        let t = s.next_task("a", T0).unwrap().unwrap();
        assert_eq!(t.job_id, other);
        assert_eq!(s.next_task("a", T0).unwrap(), None);
        // (and has nothing to do, so the manager does not lease it for nothing)
        assert!(!s.has_queued_tasks_for("a").unwrap());
        assert!(s.has_queued_tasks_for("b").unwrap());
        // ...while other nodes still get it.
        let t = s.next_task("b", T0).unwrap().unwrap();
        assert_eq!(t.job_id, bad_for_a);
        assert_eq!(status(&s, &bad_for_a), JobStatus::Active);

        // The monitor's node page: a's failures per job and the exclusion they caused.
        assert_eq!(
            s.node_failures("a").unwrap(),
            vec![NodeFailures {
                job_id: bad_for_a.clone(),
                failures: MAX_NODE_FAILURES_PER_JOB,
                excluded: true,
            }]
        );
        assert_eq!(s.node_failures("b").unwrap(), vec![]);
        // a's failed tasks went back to the queue without a holder; it holds the small job's.
        let of_a = s.tasks_of_node("a", 10).unwrap();
        assert_eq!(
            of_a.iter().map(|t| t.job_id.as_str()).collect::<Vec<_>>(),
            [other.as_str()]
        );
        assert!(s.tasks_of_node("a", 0).unwrap().is_empty());
        assert!(matches!(
            s.tasks_of_node("", 10),
            Err(StoreError::BadNodeName { .. })
        ));
    }

    #[test]
    fn tasks_record_when_they_started_and_ended() {
        let mut s = store();
        let id = s.submit(job("j", 0, 3)).unwrap();
        let before = wall_ms();
        let t = s.tasks(&id).unwrap();
        assert!(t
            .iter()
            .all(|t| t.started_at_ms.is_none() && t.finished_at_ms.is_none()));
        let a = s.next_task("a", T0).unwrap().unwrap();
        let b = s.next_task("b", T0).unwrap().unwrap();
        let t = s.task(a.task_id).unwrap();
        let started = t.started_at_ms.expect("a running task has a start");
        assert!(started >= before, "{started} < {before}");
        assert_eq!(t.finished_at_ms, None);

        s.task_done(a.task_id, "a").unwrap();
        let t = s.task(a.task_id).unwrap();
        assert_eq!(t.started_at_ms, Some(started));
        assert!(t.finished_at_ms.unwrap() >= started);

        // A failure with attempts left goes back to the queue: no end yet.
        s.task_failed(b.task_id, "b", "out of memory").unwrap();
        let t = s.task(b.task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Queued);
        assert!(t.started_at_ms.is_some());
        assert_eq!(t.finished_at_ms, None);

        // Canceled tasks end, queued ones included.
        s.cancel(&id).unwrap();
        for t in s.tasks(&id).unwrap() {
            assert!(t.finished_at_ms.is_some(), "task {} has no end", t.index);
        }
    }

    #[test]
    fn pause_stops_hand_out_and_keeps_running_results() {
        let mut s = store();
        let id = s.submit(job("j", 0, 3)).unwrap();
        let t0 = s.next_task("a", T0).unwrap().unwrap();
        s.pause(&id).unwrap();
        assert_eq!(status(&s, &id), JobStatus::Paused);
        s.pause(&id).unwrap(); // idempotent
        assert_eq!(s.next_task("b", T0).unwrap(), None);

        // The running task finishes and its result counts.
        let done = s.task_done(t0.task_id, "a").unwrap();
        assert_eq!(done.job_status, JobStatus::Paused);
        assert_eq!(task_status(&s, t0.task_id), TaskStatus::Completed);
        assert_eq!(s.job(&id).unwrap().tasks.completed, 1);

        assert_eq!(s.resume(&id).unwrap(), JobStatus::Queued);
        assert_eq!(s.resume(&id).unwrap(), JobStatus::Queued); // idempotent
        let t1 = s.next_task("b", T0).unwrap().unwrap();
        assert_eq!(t1.index, 1);
        assert_eq!(status(&s, &id), JobStatus::Active);
    }

    #[test]
    fn pause_and_resume_a_queued_job() {
        let mut s = store();
        let id = s.submit(job("j", 0, 1)).unwrap();
        s.pause(&id).unwrap();
        assert_eq!(status(&s, &id), JobStatus::Paused);
        assert_eq!(s.next_task("a", T0).unwrap(), None);
        assert_eq!(s.resume(&id).unwrap(), JobStatus::Queued);
        assert!(s.next_task("a", T0).unwrap().is_some());
    }

    #[test]
    fn resume_with_running_tasks_is_active() {
        let mut s = store();
        let id = s.submit(job("j", 0, 2)).unwrap();
        let _t0 = s.next_task("a", T0).unwrap().unwrap();
        s.pause(&id).unwrap();
        assert_eq!(s.resume(&id).unwrap(), JobStatus::Active);
        assert_eq!(status(&s, &id), JobStatus::Active);
    }

    #[test]
    fn paused_job_completes_or_fails_through_running_tasks() {
        let mut s = store();
        let id = s.submit(job("j", 0, 1)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();
        s.pause(&id).unwrap();
        assert_eq!(
            s.task_done(t.task_id, "a").unwrap().job_status,
            JobStatus::Completed
        );

        let id = s.submit(job("k", 0, 2)).unwrap();
        let mut t = s.next_task("a", T0).unwrap().unwrap();
        for attempt in 1..=MAX_TASK_ATTEMPTS {
            if attempt > 1 {
                // Attempts 2 and 3 are handed out between pauses.
                s.resume(&id).unwrap();
                t = s.next_task(&format!("n{attempt}"), T0).unwrap().unwrap();
                assert_eq!(t.attempt, attempt);
            }
            s.pause(&id).unwrap();
            let node = if attempt == 1 {
                "a".to_string()
            } else {
                format!("n{attempt}")
            };
            let r = s.task_failed(t.task_id, &node, "boom").unwrap();
            let expected = if attempt < MAX_TASK_ATTEMPTS {
                JobStatus::Paused
            } else {
                JobStatus::Failed
            };
            assert_eq!(r.job_status, expected);
        }
    }

    #[test]
    fn finished_jobs_refuse_user_transitions() {
        let mut s = store();
        let id = s.submit(job("j", 0, 1)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();
        s.task_done(t.task_id, "a").unwrap();
        let err = s.pause(&id).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::BadTransition {
                    from: "completed",
                    to: "paused",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!("cannot move job {id} from completed to paused")
        );
        assert!(matches!(
            s.resume(&id),
            Err(StoreError::BadTransition {
                from: "completed",
                ..
            })
        ));
        assert!(matches!(
            s.cancel(&id),
            Err(StoreError::BadTransition {
                from: "completed",
                to: "canceled",
                ..
            })
        ));

        let canceled = s.submit(job("c", 0, 1)).unwrap();
        s.cancel(&canceled).unwrap();
        assert!(matches!(
            s.pause(&canceled),
            Err(StoreError::BadTransition {
                from: "canceled",
                ..
            })
        ));
        assert!(matches!(
            s.resume(&canceled),
            Err(StoreError::BadTransition { .. })
        ));
        // Priority is only bookkeeping and may change at any time.
        s.set_priority(&id, 3).unwrap();
    }

    #[test]
    fn cancel_returns_nodes_to_stop() {
        let mut s = store();
        let id = s.submit(job("j", 0, 4)).unwrap();
        let a = s.next_task("a", T0).unwrap().unwrap();
        let b = s.next_task("b", T0).unwrap().unwrap();
        let c = s.next_task("c", T0).unwrap().unwrap();
        s.task_done(c.task_id, "c").unwrap();

        let stop = s.cancel(&id).unwrap();
        assert_eq!(
            stop,
            vec![
                StopTask {
                    task_id: a.task_id,
                    job_id: id.clone(),
                    node: "a".into()
                },
                StopTask {
                    task_id: b.task_id,
                    job_id: id.clone(),
                    node: "b".into()
                },
            ]
        );
        let info = s.job(&id).unwrap();
        assert_eq!(info.status, JobStatus::Canceled);
        // The completed task stays completed; running and queued ones are canceled.
        assert_eq!(
            info.tasks,
            TaskCounts {
                completed: 1,
                canceled: 3,
                ..TaskCounts::default()
            }
        );
        assert!(s
            .tasks(&id)
            .unwrap()
            .iter()
            .all(|t| t.lease_until_ms.is_none()));
        assert_eq!(s.next_task("d", T0).unwrap(), None);
        assert_eq!(s.cancel(&id).unwrap(), vec![]); // idempotent
                                                    // Late reports from the stopped nodes are refused.
        assert!(matches!(
            s.task_done(a.task_id, "a"),
            Err(StoreError::NotHolder { .. })
        ));
        assert!(matches!(
            s.task_failed(b.task_id, "b", "killed"),
            Err(StoreError::NotHolder { .. })
        ));
        // Nor do expiring leases or lost nodes touch canceled tasks.
        assert_eq!(
            s.expire_leases(T0 + 10 * LEASE).unwrap(),
            Reclaimed::default()
        );
        assert_eq!(s.node_lost("a").unwrap(), Reclaimed::default());
    }

    #[test]
    fn cancel_queued_and_paused_jobs() {
        let mut s = store();
        let queued = s.submit(job("q", 0, 2)).unwrap();
        assert_eq!(s.cancel(&queued).unwrap(), vec![]);
        assert_eq!(s.job(&queued).unwrap().tasks.canceled, 2);

        let paused = s.submit(job("p", 0, 2)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();
        s.pause(&paused).unwrap();
        let stop = s.cancel(&paused).unwrap();
        assert_eq!(stop.len(), 1);
        assert_eq!(stop[0].task_id, t.task_id);
        assert_eq!(status(&s, &paused), JobStatus::Canceled);
    }

    #[test]
    fn delete_needs_force_while_tasks_run() {
        let mut s = store();
        let id = s.submit(job("j", 0, 2)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();
        s.task_failed(t.task_id, "a", "x").unwrap(); // leaves a node failure row
        let t = s.next_task("a", T0).unwrap().unwrap();

        let err = s.delete(&id, false).unwrap_err();
        assert!(
            matches!(err, StoreError::JobRunning { running: 1, .. }),
            "{err}"
        );
        // A paused job with a running task is still running work.
        s.pause(&id).unwrap();
        assert!(matches!(
            s.delete(&id, false),
            Err(StoreError::JobRunning { .. })
        ));

        let stop = s.delete(&id, true).unwrap();
        assert_eq!(
            stop,
            vec![StopTask {
                task_id: t.task_id,
                job_id: id.clone(),
                node: "a".into()
            }]
        );
        assert!(matches!(s.job(&id), Err(StoreError::NoSuchJob(_))));
        assert!(matches!(s.task(t.task_id), Err(StoreError::NoSuchTask(_))));
        assert!(matches!(s.delete(&id, true), Err(StoreError::NoSuchJob(_))));
        let left: i64 = s
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM tasks) + (SELECT COUNT(*) FROM job_node_failures)",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        // The stale holder's report is refused as an unknown task.
        assert!(matches!(
            s.task_done(t.task_id, "a"),
            Err(StoreError::NoSuchTask(_))
        ));
    }

    #[test]
    fn delete_finished_and_queued_jobs() {
        let mut s = store();
        let queued = s.submit(job("q", 0, 1)).unwrap();
        assert_eq!(s.delete(&queued, false).unwrap(), vec![]);
        let done = s.submit(job("d", 0, 1)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();
        s.task_done(t.task_id, "a").unwrap();
        assert_eq!(s.delete(&done, false).unwrap(), vec![]);
        assert!(s.list_jobs().unwrap().is_empty());
    }

    #[test]
    fn stale_results_are_refused() {
        let mut s = store();
        let _id = s.submit(job("j", 0, 1)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();

        let err = s.task_done(t.task_id, "b").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "task {} is not held by node \"b\" (it is running on \"a\"); \
                 the report was refused",
                t.task_id
            )
        );
        assert!(matches!(
            s.task_failed(t.task_id, "b", "x"),
            Err(StoreError::NotHolder { .. })
        ));
        assert!(matches!(
            s.renew_lease(t.task_id, "b", T0),
            Err(StoreError::NotHolder { .. })
        ));
        assert!(matches!(
            s.task_done(999, "a"),
            Err(StoreError::NoSuchTask(999))
        ));

        // The lease runs out; the task goes to b; a's late result is refused, b's counts.
        s.expire_leases(T0 + LEASE + 1).unwrap();
        let again = s.next_task("b", T0 + LEASE + 2).unwrap().unwrap();
        assert_eq!(again.task_id, t.task_id);
        assert!(matches!(
            s.task_done(t.task_id, "a"),
            Err(StoreError::NotHolder { .. })
        ));
        s.task_done(t.task_id, "b").unwrap();
        // A second report of the same result is refused too.
        let err = s.task_done(t.task_id, "b").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "task {} is not held by node \"b\" (it is completed); the report was refused",
                t.task_id
            )
        );
    }

    #[test]
    fn leases_renew_and_expire() {
        let mut s = store();
        let id = s.submit(job("j", 0, 2)).unwrap();
        let a = s.next_task("a", T0).unwrap().unwrap();
        let b = s.next_task("b", T0 + 5).unwrap().unwrap();

        // Expiry is strictly after the lease end.
        assert_eq!(s.expire_leases(T0 + LEASE).unwrap(), Reclaimed::default());
        let renewed = s.renew_lease(a.task_id, "a", T0 + LEASE).unwrap();
        assert_eq!(renewed, T0 + 2 * LEASE);
        assert_eq!(s.task(a.task_id).unwrap().lease_until_ms, Some(renewed));

        let r = s.expire_leases(T0 + LEASE + 6).unwrap();
        assert_eq!(
            r,
            Reclaimed {
                requeued: vec![b.task_id],
                failed: vec![],
                stop: vec![]
            }
        );
        let t = s.task(b.task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.attempts, 1);
        assert_eq!(t.node, None);
        assert_eq!(
            t.error.as_deref(),
            Some("its lease expired (attempt 1 of 3)")
        );
        assert_eq!(status(&s, &id), JobStatus::Active); // a still runs
        assert!(matches!(
            s.renew_lease(b.task_id, "b", T0),
            Err(StoreError::NotHolder { .. })
        ));
    }

    #[test]
    fn expired_leases_use_up_attempts() {
        let mut s = store();
        let id = s.submit(job("j", 0, 1)).unwrap();
        let mut now = T0;
        for attempt in 1..=MAX_TASK_ATTEMPTS {
            let t = s.next_task("a", now).unwrap().unwrap();
            assert_eq!(t.attempt, attempt);
            now += LEASE + 1;
            let r = s.expire_leases(now).unwrap();
            if attempt < MAX_TASK_ATTEMPTS {
                assert_eq!(r.requeued, vec![t.task_id]);
            } else {
                assert_eq!(r.failed, vec![t.task_id]);
            }
        }
        assert_eq!(status(&s, &id), JobStatus::Failed);
    }

    #[test]
    fn lost_node_requeues_without_counting_a_node_failure() {
        let mut s = store();
        let id = s.submit(job("j", 0, 3)).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            tasks.push(s.next_task("a", T0).unwrap().unwrap());
        }
        let c = s.next_task("c", T0).unwrap().unwrap();

        let r = s.node_lost("a").unwrap();
        assert_eq!(r.requeued, vec![tasks[0].task_id, tasks[1].task_id]);
        assert!(r.failed.is_empty() && r.stop.is_empty());
        let t = s.task(tasks[0].task_id).unwrap();
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.attempts, 1);
        assert_eq!(t.error.as_deref(), Some("node a was lost (attempt 1 of 3)"));
        assert_eq!(status(&s, &id), JobStatus::Active); // c still runs
        assert_eq!(s.node_lost("nobody").unwrap(), Reclaimed::default());

        // Losing a node twice is no failure of the node: it still gets the job's tasks.
        let t = s.next_task("a", T0).unwrap().unwrap();
        s.node_lost("a").unwrap();
        let t2 = s.next_task("a", T0).unwrap().unwrap();
        assert_eq!(t2.task_id, t.task_id);
        assert_eq!(t2.attempt, 3);

        // The third loss uses up the task's attempts: it fails, and c is told to stop.
        let r = s.node_lost("a").unwrap();
        assert_eq!(r.failed, vec![t.task_id]);
        assert_eq!(
            r.stop,
            vec![StopTask {
                task_id: c.task_id,
                job_id: id.clone(),
                node: "c".into()
            }]
        );
        // The other task a held was requeued, then canceled with the job.
        assert_eq!(r.requeued.len(), 0);
        assert_eq!(status(&s, &id), JobStatus::Failed);
        assert_eq!(task_status(&s, tasks[1].task_id), TaskStatus::Canceled);
    }

    #[test]
    fn long_errors_are_truncated() {
        let mut s = store();
        s.submit(job("j", 0, 1)).unwrap();
        let t = s.next_task("a", T0).unwrap().unwrap();
        let huge = "é".repeat(MAX_ERROR_BYTES);
        s.task_failed(t.task_id, "a", &huge).unwrap();
        let stored = s.task(t.task_id).unwrap().error.unwrap();
        assert!(stored.len() < MAX_ERROR_BYTES + 64, "{}", stored.len());
        assert!(stored.ends_with("(attempt 1 of 3)"));
    }

    /// A database from before the task times (schema 1) opens, upgrades, and keeps its tasks,
    /// without times.
    #[test]
    fn schema_1_database_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO jobs (id, name, kind, priority, status, created_at_ms, updated_at_ms, spec)
             VALUES ('j1', 'old', 'bake', 0, 'queued', 1, 1, '{}');
             INSERT INTO tasks (job_id, idx, name, spec, status, updated_at_ms)
             VALUES ('j1', 0, 'tile 0', '{}', 'queued', 1);",
        )
        .unwrap();
        drop(conn);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let t = &s.tasks("j1").unwrap()[0];
        assert_eq!((t.started_at_ms, t.finished_at_ms), (None, None));
        let a = s.next_task("a", T0).unwrap().unwrap();
        assert!(s.task(a.task_id).unwrap().started_at_ms.is_some());
    }

    #[test]
    fn schema_newer_than_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = Store::open(&path).err().unwrap();
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 99,
                    supported
                } if supported == MIGRATIONS.len() as i64
            ),
            "{err}"
        );
    }

    #[test]
    fn file_store_uses_wal_and_full_sync() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("jobs.db")).unwrap();
        let mode: String = s
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = s
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2); // FULL
        let fk: i64 = s
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn unopenable_path_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("jobs.db");
        let err = Store::open(&path).err().unwrap();
        assert!(matches!(err, StoreError::Open { .. }));
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }

    /// Set for the child process of `crash_loses_nothing`: the database it works on.
    const CRASH_DB_ENV: &str = "RAYFARM_FARM_CRASH_TEST_DB";

    /// The child half of `crash_loses_nothing`; does nothing in a normal test run.
    #[test]
    fn crash_child() {
        let Some(path) = std::env::var_os(CRASH_DB_ENV) else {
            return;
        };
        let mut s = Store::open(Path::new(&path)).unwrap().with_lease_ms(LEASE);
        let id = s.submit(job("crash", 0, 4)).unwrap();
        let a = s.next_task("a", T0).unwrap().unwrap();
        let b = s.next_task("b", T0 + 100).unwrap().unwrap();
        s.task_done(a.task_id, "a").unwrap();
        s.pause(&id).unwrap();
        s.resume(&id).unwrap();
        assert_eq!(b.index, 1);
        // Die without closing the database or checkpointing the WAL, as a killed manager would.
        std::process::abort();
    }

    #[test]
    fn crash_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DB_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child should have aborted");
        assert!(
            dir.path().join("jobs.db-wal").exists(),
            "the child's changes should still be in the WAL"
        );

        let mut s = Store::open(&path).unwrap().with_lease_ms(LEASE);
        let jobs = s.list_jobs().unwrap();
        assert_eq!(jobs.len(), 1, "the submitted job survived");
        let id = jobs[0].id.clone();
        assert_eq!(jobs[0].status, JobStatus::Active);
        assert_eq!(
            jobs[0].tasks,
            TaskCounts {
                queued: 2,
                running: 1,
                completed: 1,
                ..TaskCounts::default()
            }
        );
        let tasks = s.tasks(&id).unwrap();
        assert_eq!(tasks[0].status, TaskStatus::Completed);
        // The running task kept its holder and lease across the restart.
        assert_eq!(tasks[1].status, TaskStatus::Running);
        assert_eq!(tasks[1].node.as_deref(), Some("b"));
        assert_eq!(tasks[1].lease_until_ms, Some(T0 + 100 + LEASE));

        // The queue carries on where it was.
        let c = s.next_task("c", T0 + 200).unwrap().unwrap();
        assert_eq!(c.index, 2);
        // Within its lease the old holder may still renew and report...
        assert_eq!(
            s.expire_leases(T0 + 100 + LEASE).unwrap(),
            Reclaimed::default()
        );
        s.renew_lease(tasks[1].id, "b", T0 + 1000).unwrap();
        // ...and once the lease has passed, its task goes back to the queue.
        let r = s.expire_leases(T0 + 1000 + LEASE + 1).unwrap();
        assert_eq!(r.requeued, vec![tasks[1].id, c.task_id]);
        drop(s);

        // A clean close and reopen keeps that too, and runs no migration twice.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.job(&id).unwrap().tasks.queued, 3);
        assert_eq!(s.task(tasks[1].id).unwrap().attempts, 1);
    }
}
