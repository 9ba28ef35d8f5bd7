use super::*;

/// The bridges of a config of `[defaults]` lines and `bridges` (`[[bridge]]` tables),
/// loaded the way a reload loads them.
fn load_bridges(defaults: &str, bridges: &str) -> Vec<BridgeSpec> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, format!("[defaults]\n{defaults}\n{bridges}")).unwrap();
    config::load(&path, &KINDS)
        .unwrap_or_else(|error| panic!("the test config does not load: {error}"))
        .config
        .bridges
}

/// A core NATS bridge table: `name`, its `subject`, and any further `keys`.
fn nats(name: &str, subject: &str, keys: &str) -> String {
    format!("[[bridge]]\nname = \"{name}\"\nkind = \"nats\"\nsubject = \"{subject}\"\n{keys}\n")
}

fn names(specs: &[BridgeSpec]) -> Vec<&str> {
    specs.iter().map(|spec| spec.name.as_str()).collect()
}

#[test]
fn the_same_config_again_stops_restarts_and_starts_nothing() {
    let bridges = [nats("orders", "orders.>", ""), nats("audit", "audit.>", "")].concat();
    let running = load_bridges("", &bridges);
    let plan = reload_plan(&running, &load_bridges("", &bridges));
    assert!(plan.stop.is_empty(), "{plan:?}");
    assert!(plan.restart.is_empty(), "{plan:?}");
    assert!(plan.start.is_empty(), "{plan:?}");
}

#[test]
fn an_added_bridge_is_started_and_the_others_left_alone() {
    let running = load_bridges("", &nats("orders", "orders.>", ""));
    let wanted = load_bridges(
        "",
        &[nats("orders", "orders.>", ""), nats("audit", "audit.>", "")].concat(),
    );
    let plan = reload_plan(&running, &wanted);
    assert!(plan.stop.is_empty(), "{plan:?}");
    assert!(plan.restart.is_empty(), "{plan:?}");
    assert_eq!(names(&plan.start), ["audit"]);
    assert_eq!(
        plan.start[0], wanted[1],
        "started with the spec the config wants"
    );
}

#[test]
fn a_removed_bridge_is_stopped_and_the_others_left_alone() {
    let running = load_bridges(
        "",
        &[nats("orders", "orders.>", ""), nats("audit", "audit.>", "")].concat(),
    );
    let plan = reload_plan(&running, &load_bridges("", &nats("orders", "orders.>", "")));
    assert_eq!(plan.stop, ["audit"]);
    assert!(plan.restart.is_empty(), "{plan:?}");
    assert!(plan.start.is_empty(), "{plan:?}");
}

#[test]
fn a_changed_common_key_restarts_the_bridge_with_its_new_spec() {
    let running = load_bridges("", &nats("orders", "orders.>", "tenant = \"acme\""));
    let wanted = load_bridges("", &nats("orders", "orders.>", "tenant = \"globex\""));
    let plan = reload_plan(&running, &wanted);
    assert!(plan.stop.is_empty(), "a restart is not a removal: {plan:?}");
    assert_eq!(names(&plan.restart), ["orders"]);
    assert_eq!(plan.restart[0].tenant, "globex");
    assert!(
        plan.start.is_empty(),
        "a restart is not an addition: {plan:?}"
    );
}

#[test]
fn changed_source_settings_restart_the_bridge_with_its_new_spec() {
    let running = load_bridges("", &nats("orders", "orders.>", ""));
    let wanted = load_bridges("", &nats("orders", "orders.eu.>", ""));
    assert_ne!(running[0].source, wanted[0].source);
    let plan = reload_plan(&running, &wanted);
    assert!(plan.stop.is_empty(), "{plan:?}");
    assert_eq!(names(&plan.restart), ["orders"]);
    assert_eq!(plan.restart[0].source, wanted[0].source);
    assert!(plan.start.is_empty(), "{plan:?}");
}

#[test]
fn a_changed_default_restarts_only_the_bridges_that_inherit_it() {
    let bridges = [
        nats("orders", "orders.>", "max_in_flight = 10"),
        nats("audit", "audit.>", ""),
    ]
    .concat();
    let running = load_bridges("max_in_flight = 100", &bridges);
    let plan = reload_plan(&running, &load_bridges("max_in_flight = 200", &bridges));
    assert_eq!(names(&plan.restart), ["audit"], "{plan:?}");
    assert_eq!(plan.restart[0].max_in_flight, 200);
    assert!(plan.stop.is_empty() && plan.start.is_empty(), "{plan:?}");
}

#[test]
fn several_changes_at_once_are_told_apart() {
    // As the supervisor lists them: by name.
    let running = load_bridges(
        "",
        &[
            nats("audit", "audit.>", ""),
            nats("billing", "billing.>", ""),
            nats("orders", "orders.>", ""),
            nats("payments", "payments.>", ""),
            nats("shipping", "shipping.>", ""),
        ]
        .concat(),
    );
    let wanted = load_bridges(
        "",
        &[
            // Changed source settings.
            nats("shipping", "shipping.eu.>", ""),
            nats("zebra", "zebra.>", ""),
            // Unchanged.
            nats("orders", "orders.>", ""),
            // A changed common key.
            nats("billing", "billing.>", "source_name = \"invoices\""),
            // `payments` renamed: a different bridge as far as a reload can tell.
            nats("payments_eu", "payments.>", ""),
        ]
        .concat(),
    );
    let plan = reload_plan(&running, &wanted);
    assert_eq!(plan.stop, ["audit", "payments"]);
    assert_eq!(names(&plan.restart), ["billing", "shipping"]);
    assert_eq!(plan.restart[0], wanted[3]);
    assert_eq!(plan.restart[1], wanted[0]);
    assert_eq!(
        names(&plan.start),
        ["zebra", "payments_eu"],
        "in config order"
    );
}
