//! The one contract a source kind fulfils (`SourceKind`), and its type-erased form
//! (`RegisteredKind`) that the registry (`sources::registry`) lists.

use std::marker::PhantomData;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::{Map, Value};

use super::context::{ConnectContext, Source};
use crate::config::{BridgeSpec, ExchangeConfig, SourceSettings, SourceSpec};
use crate::message::SourceError;

/// A source kind: its settings type and what it does with them.
#[async_trait]
pub trait SourceKind: Send + Sync + 'static {
    /// The `kind = "..."` name.
    const NAME: &'static str;
    /// Keys of this kind that hold secrets; each may also be given as `<key>_file`.
    const SECRET_KEYS: &'static [&'static str] = &[];
    /// Whether `config.example.toml` documents the kind (and the test insists); false
    /// only for kinds that exist for the test suite.
    const DOCUMENTED: bool = true;
    /// The kind's settings: plain data, compared whole to decide whether a reload
    /// restarts the bridge.
    type Spec: std::fmt::Debug + Clone + PartialEq + Serialize + Send + Sync + 'static;

    /// Reads the kind-specific keys; errors name the key.
    fn parse(table: Map<String, Value>) -> Result<Self::Spec, String>;
    /// Every key `parse` accepts.
    fn accepted_keys() -> Vec<&'static str>;
    /// A line for `check`: delivery guarantee and where it reads from.
    fn describe(spec: &Self::Spec) -> String;

    /// What `{subject[N]}` splits the subject on; `None` when the subject is one token
    /// or there is none.
    fn subject_separator(spec: &Self::Spec) -> Option<char> {
        let _ = spec;
        None
    }

    /// Checks that need the rest of the config.
    fn check(
        spec: &Self::Spec,
        bridge: &BridgeSpec,
        exchange: &ExchangeConfig,
    ) -> Result<(), String> {
        let _ = (spec, bridge, exchange);
        Ok(())
    }

    /// Checks across the bridges of this kind: `Err((bridge, message))`.
    fn check_bridges(bridges: &[(&BridgeSpec, &Self::Spec)]) -> Result<(), (String, String)> {
        let _ = bridges;
        Ok(())
    }

    /// Whether starting with this spec would move a position at the broker (or change
    /// an object we did not create): `Err(SourceError::Refused)`. Kinds that keep no
    /// position at their broker keep the default.
    async fn verify_position(spec: &Self::Spec, bridge: &BridgeSpec) -> Result<(), SourceError> {
        let _ = (spec, bridge);
        Ok(())
    }

    /// Connects and subscribes.
    async fn connect(
        spec: &Self::Spec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError>;
}

/// A kind's settings as config holds them.
pub struct Settings<K: SourceKind>(pub K::Spec);

impl<K: SourceKind> std::fmt::Debug for Settings<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<K: SourceKind> SourceSettings for Settings<K> {
    fn kind(&self) -> &'static str {
        K::NAME
    }

    fn describe(&self) -> String {
        K::describe(&self.0)
    }

    fn subject_separator(&self) -> Option<char> {
        K::subject_separator(&self.0)
    }

    fn check(&self, bridge: &BridgeSpec, exchange: &ExchangeConfig) -> Result<(), String> {
        K::check(&self.0, bridge, exchange)
    }

    fn same_as(&self, other: &dyn SourceSettings) -> bool {
        other
            .as_any()
            .downcast_ref::<Self>()
            .is_some_and(|other| other.0 == self.0)
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The settings of kind `K` in `spec`, when the bridge is of that kind.
pub fn spec_of<K: SourceKind>(spec: &SourceSpec) -> Option<&K::Spec> {
    spec.downcast::<Settings<K>>().map(|settings| &settings.0)
}

/// A `SourceKind` without its types, for the registry.
#[async_trait]
pub trait RegisteredKind: Sync {
    fn name(&self) -> &'static str;
    fn documented(&self) -> bool;
    fn secret_keys(&self) -> &'static [&'static str];
    fn accepted_keys(&self) -> Vec<&'static str>;
    fn parse(&self, table: Map<String, Value>) -> Result<SourceSpec, String>;
    fn check_bridges(&self, bridges: &[BridgeSpec]) -> Result<(), (String, String)>;
    async fn verify_position(&self, bridge: &BridgeSpec) -> Result<(), SourceError>;
    async fn connect(
        &self,
        spec: &SourceSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError>;
}

/// The registry entry of kind `K`.
pub struct Entry<K>(PhantomData<K>);

impl<K> Entry<K> {
    pub const NEW: Entry<K> = Entry(PhantomData);
}

impl<K: SourceKind> Entry<K> {
    fn own<'a>(&self, spec: &'a SourceSpec) -> Result<&'a K::Spec, SourceError> {
        spec_of::<K>(spec).ok_or_else(|| {
            SourceError::Connect(format!(
                "a {} bridge handed to the {} kind",
                spec.kind(),
                K::NAME
            ))
        })
    }
}

#[async_trait]
impl<K: SourceKind> RegisteredKind for Entry<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn documented(&self) -> bool {
        K::DOCUMENTED
    }

    fn secret_keys(&self) -> &'static [&'static str] {
        K::SECRET_KEYS
    }

    fn accepted_keys(&self) -> Vec<&'static str> {
        K::accepted_keys()
    }

    fn parse(&self, table: Map<String, Value>) -> Result<SourceSpec, String> {
        K::parse(table).map(|spec| SourceSpec::new(Settings::<K>(spec)))
    }

    fn check_bridges(&self, bridges: &[BridgeSpec]) -> Result<(), (String, String)> {
        let own: Vec<(&BridgeSpec, &K::Spec)> = bridges
            .iter()
            .filter_map(|bridge| spec_of::<K>(&bridge.source).map(|spec| (bridge, spec)))
            .collect();
        K::check_bridges(&own)
    }

    async fn verify_position(&self, bridge: &BridgeSpec) -> Result<(), SourceError> {
        K::verify_position(self.own(&bridge.source)?, bridge).await
    }

    async fn connect(
        &self,
        spec: &SourceSpec,
        context: &ConnectContext,
    ) -> Result<Box<dyn Source>, SourceError> {
        K::connect(self.own(spec)?, context).await
    }
}
