//! The end-to-end release tests (tests/release.rs) against PostgreSQL: each
//! test gets a broker whose store is a throwaway schema in the database named
//! by SEALTENSORS_TEST_POSTGRES_URL (`scripts/pg-test-server.sh run ...`
//! starts one). Without it every test reports itself skipped on stderr; with
//! SEALTENSORS_TEST_POSTGRES_REQUIRED set (CI) they fail instead.

#[path = "release.rs"]
mod release;
