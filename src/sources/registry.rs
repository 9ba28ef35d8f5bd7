//! The registry of the kinds of this build. Everything the rest of the daemon knows
//! about kinds (names in errors, accepted and secret keys, parsing, checks across
//! bridges, position checks, connecting) is derived from it, so a kind is its folder
//! plus one line of `kinds!` in `sources/mod.rs`.

use serde_json::{Map, Value};

use super::common::context::{ConnectContext, Source, VERIFY_TIMEOUT, Verdict};
use super::common::kind::RegisteredKind;
use crate::config::{BridgeSpec, KindCatalog, SourceSpec};
use crate::message::SourceError;

/// The kinds of this build, in the order `kinds!` lists them.
pub struct Registry(pub &'static [&'static dyn RegisteredKind]);

impl Registry {
    pub fn get(&self, name: &str) -> Option<&'static dyn RegisteredKind> {
        self.0.iter().copied().find(|kind| kind.name() == name)
    }

    /// Asks the source's broker, before a reload restarts a bridge (or for `check
    /// --online`), whether its spec would move a position there.
    pub async fn verify_position(&self, bridge: &BridgeSpec) -> Verdict {
        let Some(kind) = self.get(bridge.kind()) else {
            return Verdict::Safe;
        };
        match tokio::time::timeout(VERIFY_TIMEOUT, kind.verify_position(bridge)).await {
            Ok(Ok(())) => Verdict::Safe,
            Ok(Err(SourceError::Refused(reason))) => Verdict::Refused(reason),
            Ok(Err(error)) => Verdict::Unverified(error.to_string()),
            Err(_) => Verdict::Unverified(format!(
                "no answer from the broker within {VERIFY_TIMEOUT:?}"
            )),
        }
    }

    /// Connects a bridge's source and subscribes.
    pub async fn connect(
        &self,
        spec: &SourceSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        match self.get(spec.kind()) {
            Some(kind) => kind.connect(spec, context).await,
            None => Err(SourceError::Connect(format!(
                "kind `{}` is not in this build",
                spec.kind()
            ))),
        }
    }
}

impl KindCatalog for Registry {
    fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|kind| kind.name()).collect()
    }

    fn parse(&self, kind: &str, table: Map<String, Value>) -> Result<SourceSpec, String> {
        match self.get(kind) {
            Some(entry) => entry.parse(table),
            None => Err(format!(
                "key `kind`: unknown kind `{kind}` (this build knows: {})",
                self.names().join(", ")
            )),
        }
    }

    fn secret_keys(&self) -> Vec<&'static str> {
        let mut keys: Vec<&'static str> = self
            .0
            .iter()
            .flat_map(|kind| kind.secret_keys().iter().copied())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    fn accepted_keys(&self) -> Vec<&'static str> {
        let mut keys = crate::config::fields::names::<crate::config::TlsOptions>().to_vec();
        for kind in self.0.iter().filter(|kind| kind.documented()) {
            keys.extend(kind.accepted_keys());
        }
        keys
    }

    fn documented_names(&self) -> Vec<&'static str> {
        self.0
            .iter()
            .filter(|kind| kind.documented())
            .map(|kind| kind.name())
            .collect()
    }

    fn check_bridges(&self, bridges: &[BridgeSpec]) -> Result<(), (String, String)> {
        self.0
            .iter()
            .try_for_each(|kind| kind.check_bridges(bridges))
    }
}

/// Declares the kind modules of this build and the registry of their kinds: one line
/// per module, `#[cfg(...)] module: [Kind, ...]` (the `cfg` is the kind's feature).
macro_rules! kinds {
    ($( #[$cfg:meta] $module:ident : [$($kind:ident),+ $(,)?] ),* $(,)?) => {
        $( #[$cfg] pub mod $module; )*

        /// Every source kind of this build.
        pub static KINDS: registry::Registry = registry::Registry(&[
            $( $( #[$cfg] &$crate::sources::common::kind::Entry::<$module::$kind>::NEW, )+ )*
        ]);
    };
}

pub(crate) use kinds;
