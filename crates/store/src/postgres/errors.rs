//! Failure classification: what went wrong with an attempt at a batch (or a
//! read), in the terms the retry needs: transient (retry), commit unknown
//! (find out first) or permanent (answer `Storage`).

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;
use voucherd_core::error::Error;

/// Why an attempt at a batch (or a read) failed, in the terms the retry needs.
#[derive(Debug)]
pub(super) enum Failure {
    /// Nothing was committed and another attempt may succeed: the connection
    /// broke (`connection`) or the transaction lost against another writer.
    Transient { cause: String, connection: bool },
    /// Nothing was committed and another attempt would fail the same way.
    Permanent { cause: String },
    /// The connection broke during COMMIT and whether it committed could not be
    /// found out.
    Unresolved { cause: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient { cause, .. }
            | Failure::Permanent { cause }
            | Failure::Unresolved { cause } => f.write_str(cause),
        }
    }
}

impl Failure {
    pub(super) fn connection(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            connection: true,
        }
    }

    pub(super) fn conflict(cause: impl Into<String>) -> Self {
        Failure::Transient {
            cause: cause.into(),
            connection: false,
        }
    }

    pub(super) fn permanent(cause: impl Into<String>) -> Self {
        Failure::Permanent {
            cause: cause.into(),
        }
    }

    pub(super) fn is_transient(&self) -> bool {
        matches!(self, Failure::Transient { .. })
    }

    /// True when a failure during COMMIT leaves the outcome unknown: the reply
    /// to COMMIT was lost, not a refusal of it.
    pub(super) fn leaves_commit_unknown(&self) -> bool {
        matches!(
            self,
            Failure::Transient {
                connection: true,
                ..
            }
        )
    }

    /// The domain error callers see once no attempt is left.
    pub(super) fn into_error(self) -> Error {
        match self {
            // Nothing was written: the caller may try again later.
            Failure::Transient { cause, .. } => Error::unavailable(cause),
            // Whether it was written is unknown, but every write of the ledger is
            // safe to repeat: a redemption has a stable id and key (a retry is
            // answered `AlreadyRedeemed` if it did commit), and so does a
            // transaction sent with an Idempotency-Key. So: retry later (503).
            Failure::Unresolved { cause } => Error::unavailable(cause),
            Failure::Permanent { cause } => Error::storage(cause),
        }
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Self {
        Failure::from(&error)
    }
}

/// The error and its causes on one line: the driver's own message is only its
/// kind ("db error"), the server's message is in the source.
pub(super) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl From<&tokio_postgres::Error> for Failure {
    fn from(error: &tokio_postgres::Error) -> Self {
        let cause = describe(error);
        let Some(state) = error.code() else {
            // Without a SQLSTATE the driver reports a closed or broken
            // connection, a timeout, or a protocol error, which a new connection
            // may cure; the remaining kinds (a column type mismatch) fail again,
            // and the retry is bounded.
            return Failure::connection(cause);
        };
        let connection_lost = state.code().starts_with("08")
            || *state == SqlState::ADMIN_SHUTDOWN
            || *state == SqlState::CRASH_SHUTDOWN
            || *state == SqlState::CANNOT_CONNECT_NOW
            || *state == SqlState::TOO_MANY_CONNECTIONS
            // CockroachDB: "result is ambiguous", the commit may have happened.
            || *state == SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN;
        // Conflicts with a concurrent writer: a retry reads the winner's rows
        // and turns the clash into the right business answer (a unique
        // violation here means another instance inserted the same key first;
        // the set-based statements never raise one on their own).
        let conflict = *state == SqlState::T_R_SERIALIZATION_FAILURE
            || *state == SqlState::T_R_DEADLOCK_DETECTED
            || *state == SqlState::LOCK_NOT_AVAILABLE
            || *state == SqlState::UNIQUE_VIOLATION
            || *state == SqlState::CHECK_VIOLATION;
        if connection_lost {
            Failure::connection(cause)
        } else if conflict {
            Failure::conflict(cause)
        } else {
            Failure::permanent(cause)
        }
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Backend(error) => Failure::from(error),
            PoolError::Timeout(_) => Failure::connection(format!("database connection: {error}")),
            other => Failure::permanent(format!("database connection pool: {other}")),
        }
    }
}

pub(super) fn storage_failure(error: Error) -> Failure {
    Failure::permanent(error.to_string())
}
