//! A bridge's kind-specific settings, as config holds them: behind a trait. Each kind
//! (`src/sources/<kind>/`) parses its own keys into a type of its own; loading asks a
//! `KindCatalog` for what it must know about kinds (their names, keys, secrets and
//! checks across bridges). So config imports no source module, and a new kind changes
//! nothing here.

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{BridgeSpec, ExchangeConfig};

/// The settings of one kind for one bridge.
pub trait SourceSettings: Any + fmt::Debug + Send + Sync {
    /// The `kind = "..."` name.
    fn kind(&self) -> &'static str;
    /// A line for `check`: delivery guarantee and where it reads from.
    fn describe(&self) -> String;
    /// What `{subject[N]}` splits this kind's subject on (`None`: one token, or no
    /// subject at all).
    fn subject_separator(&self) -> Option<char>;
    /// Checks that need the rest of the config (e.g. a bridge consuming its own output).
    fn check(&self, bridge: &BridgeSpec, exchange: &ExchangeConfig) -> Result<(), String>;
    /// Whether `other` holds the same settings: a reload leaves a bridge alone only
    /// when its whole spec is equal.
    fn same_as(&self, other: &dyn SourceSettings) -> bool;
    /// The settings as JSON (secrets stay redacted by their own type).
    fn to_json(&self) -> Value;
    fn as_any(&self) -> &dyn Any;
}

/// A bridge's source settings, shared between the config and the running bridge.
#[derive(Clone)]
pub struct SourceSpec(Arc<dyn SourceSettings>);

impl SourceSpec {
    pub fn new(settings: impl SourceSettings) -> Self {
        SourceSpec(Arc::new(settings))
    }

    /// The kind's own settings type, when it is `T`.
    pub fn downcast<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref::<T>()
    }
}

impl std::ops::Deref for SourceSpec {
    type Target = dyn SourceSettings;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl PartialEq for SourceSpec {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_as(&*other.0)
    }
}

impl Eq for SourceSpec {}

impl fmt::Debug for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SourceSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.to_json().serialize(serializer)
    }
}

/// What loading a config needs to know about the kinds of this build.
pub trait KindCatalog: Sync {
    /// Every kind name, for error messages and docs checks.
    fn names(&self) -> Vec<&'static str>;
    /// Reads a bridge's kind-specific keys (everything but the common bridge keys).
    fn parse(&self, kind: &str, table: Map<String, Value>) -> Result<SourceSpec, String>;
    /// Keys that hold a secret (and may be given as `<key>_file`), over every kind.
    fn secret_keys(&self) -> Vec<&'static str>;
    /// Every key of the documented kinds, for the test that `config.example.toml`
    /// documents them.
    fn accepted_keys(&self) -> Vec<&'static str>;
    /// The kinds `config.example.toml` must show (all but test-only ones).
    fn documented_names(&self) -> Vec<&'static str>;
    /// Checks across bridges: `Err((bridge, message))` names the bridge at fault.
    fn check_bridges(&self, bridges: &[BridgeSpec]) -> Result<(), (String, String)>;
}

/// TLS settings shared by the kinds that speak TLS (`[bridge.tls]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// PEM file with the CA certificates that sign the server certificate.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Refuse to connect without TLS.
    #[serde(default)]
    pub required: bool,
}
