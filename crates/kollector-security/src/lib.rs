//! Security primitives for kollector, each small and testable without a
//! network: who may call the API ([`tokens`]), how secrets are kept at rest
//! ([`sealing`]), the TLS material nodes use on every gRPC hop and where
//! Kafka TLS files may come from ([`tls`]), certificate generation for test
//! and small clusters ([`certs`]), and a rate limit for expensive calls
//! ([`rate`]). The services decide *where* these apply; this crate decides
//! *how*.

pub mod access;
pub mod certs;
pub mod files;
pub mod rate;
pub mod sealing;
pub mod tls;
pub mod tokens;

pub use access::{Access, ApiGuard, TokenFile};
pub use certs::{generate as generate_certs, CertError, CertRequest};
pub use rate::RateLimit;
pub use sealing::{open_spec, seal_spec, Keyring, SealError};
pub use tls::{FilePolicy, NodeTls, TlsError};
pub use tokens::{Refusal, Role, TokenBook, TokenError};
