//! The alerts exist once: `deploy/monitoring/rules.yaml` (what `promtool` checks and tests)
//! and the PrometheusRule next to it hold the same groups, and every alert has its runbook
//! section in docs/operations.md.

use serde_yaml::Value;

fn read(path: &str) -> Value {
    let text = std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn alerts(groups: &Value) -> Vec<String> {
    groups["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_prometheus_rule_holds_the_rule_file() {
    let rules = read("deploy/monitoring/rules.yaml");
    let cr = read("deploy/monitoring/prometheus-rule.yaml");
    assert_eq!(cr["kind"], "PrometheusRule");
    assert_eq!(
        cr["spec"], rules,
        "deploy/monitoring/prometheus-rule.yaml differs from rules.yaml: copy the groups over"
    );
    assert_eq!(alerts(&rules).len(), 7);
}

#[test]
fn every_alert_has_a_runbook_section() {
    let rules = read("deploy/monitoring/rules.yaml");
    let guide =
        std::fs::read_to_string(format!("{}/docs/operations.md", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    for alert in alerts(&rules) {
        assert!(
            guide.contains(&format!("### {alert}\n")),
            "docs/operations.md has no section \"### {alert}\""
        );
        let rule = rules["groups"][0]["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|r| r["alert"].as_str() == Some(alert.as_str()))
            .unwrap();
        assert_eq!(
            rule["annotations"]["runbook_url"].as_str(),
            Some(format!("docs/operations.md#{}", alert.to_lowercase()).as_str())
        );
    }
}

#[test]
fn the_chart_carries_the_same_rules() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let a = std::fs::read(format!("{dir}/deploy/monitoring/rules.yaml")).unwrap();
    let b = std::fs::read(format!("{dir}/charts/ecs-operator/files/rules.yaml")).unwrap();
    assert!(
        a == b,
        "charts/ecs-operator/files/rules.yaml is stale: cp deploy/monitoring/rules.yaml charts/ecs-operator/files/"
    );
}
