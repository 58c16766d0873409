//! Bad input end to end: a misconfigured operator (credentials, endpoint) and bad cloud
//! answers (unknown region, garbage bodies, falsified OperationDetails) each become a
//! condition naming the code and a Warning Event; nothing is lost (the finalizer stays, the
//! VM is untouched) and, once the cause is fixed, the VM is deleted exactly once.
//! The cases live in `bad_input/mod.rs`, shared with `e2e_secrets.rs`. Spec values the
//! schema rejects are covered by `e2e_lifecycle.rs::schema_rejects_malformed_specs`.

mod bad_input;
use ecs_test_harness as support;

use bad_input::*;

#[tokio::test(flavor = "multi_thread")]
async fn misconfigured_operators_report_and_hold_the_finalizer() {
    let rows = run_config_cases(MATRIX, &Evidence::default()).await;
    print_matrix(&rows);
    assert_eq!(rows.len(), config_cases(&MATRIX).len());
    assert_observed_as_expected(&rows);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_cloud_answers_report_and_hold_the_finalizer() {
    let rows = run_answer_cases(MATRIX, &Evidence::default()).await;
    print_matrix(&rows);
    assert_eq!(rows.len(), answer_cases().len());
    assert_observed_as_expected(&rows);
}

/// The matrix holds what was observed (each row's reasons were read from the resource's
/// conditions); every observed reason must be the one the case expects.
fn assert_observed_as_expected(rows: &[Row]) {
    let off: Vec<&Row> = rows.iter().filter(|r| !r.as_expected()).collect();
    assert!(
        off.is_empty(),
        "observed reasons differ from the expected: {off:?}"
    );
}

/// A production user who points the operator at a plain-http or malformed endpoint gets a
/// prompt exit with the reason, not a crash loop of panics or a silently insecure operator.
#[test]
fn misconfigured_endpoints_fail_at_startup_with_a_clear_message() {
    run_startup_cases(&MATRIX, &Evidence::default());
}
