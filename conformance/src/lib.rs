//! The conformance suite of Amphi's invocation contract: each case a small file (request in,
//! expected response, record and log out), run against every backend and binding.
//!
//! Empty for now: the cases arrive with the issue that proves the contract across backends.
//! Until then, the contract is checked by the integration tests in `runtime/cli/tests/`.
