//! Errors of the broker itself (configuration, store, start-up), and the
//! refusals of a request: those are not errors of the broker but
//! [`Denial`]s, answered and audited.

/// What stopped the broker from starting or from serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// The configuration is unusable.
    #[error("broker configuration: {0}")]
    Config(String),
    /// The store failed (disk full, database locked or corrupt).
    #[error("broker store: {0}; check the database file and its disk")]
    Store(String),
    /// The PostgreSQL store failed (server down, authentication, schema).
    #[error("broker store (PostgreSQL): {0}; check that the server is running and the [store] url, user and database")]
    Postgres(String),
    /// A key file could not be loaded.
    #[error("broker key: {0}")]
    Key(#[from] sealtensors::Error),
    /// Listening or serving failed.
    #[error("broker I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for BrokerError {
    fn from(e: rusqlite::Error) -> Self {
        BrokerError::Store(e.to_string())
    }
}

/// A refused request: HTTP status, stable code, reason for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status.
    pub status: u16,
    /// Stable code, e.g. `licence_revoked`.
    pub code: &'static str,
    /// What was wrong.
    pub reason: String,
}

/// A [`Denial`] with its parts.
pub(crate) fn deny(status: u16, code: &'static str, reason: impl Into<String>) -> Denial {
    Denial {
        status,
        code,
        reason: reason.into(),
    }
}

/// The broker's result type.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
