//! Helpers shared by the privileged integration tests.
