//! What the engine starts with: every detector's condition, False with its healthy reason;
//! NPD's names; a configuration it refuses.

use super::*;

#[test]
fn conditions_start_false_and_present() {
    let engine = engine_with(config());
    let conditions = engine.conditions();
    let shown: Vec<_> = conditions
        .iter()
        .map(|c| (c.condition_type.as_str(), c.status, c.reason.as_str()))
        .collect();
    for expected in [
        ("FDPressure", False, "NoFDPressure"),
        ("KernelDeadlock", False, "KernelHasNoDeadlock"),
        ("KernelOops", False, "NoKernelOops"),
    ] {
        assert!(shown.contains(&expected), "{expected:?} in {shown:?}");
    }
    // Every condition of every detector, each False with its healthy reason.
    assert_eq!(conditions.len(), detectors::catalog().conditions.len());
    for condition in conditions {
        assert_eq!(condition.status, False);
        assert_eq!(
            condition.reason,
            condition.condition_type.spec().healthy_reason
        );
    }
    assert!(conditions.iter().all(|c| c.last_transition_time == wall(0)));
}

#[test]
fn engine_refuses_an_invalid_config() {
    let config = EngineConfig {
        fd_pressure_low_percent: 95.0,
        ..EngineConfig::default()
    };
    assert!(matches!(
        Engine::new(config, detectors::catalog(), at(0)),
        Err(ConfigError::WaterMarksInverted { .. })
    ));
}

#[test]
fn condition_and_reason_names_are_npd_compatible() {
    let catalog = detectors::catalog();
    let conditions: Vec<&str> = catalog.conditions.iter().map(|c| c.as_str()).collect();
    for npd in ["FDPressure", "KernelDeadlock", "KernelOops"] {
        assert!(conditions.contains(&npd), "{npd} in {conditions:?}");
    }
    assert_eq!(ConditionStatus::from_name("True"), True);
    assert_eq!(ConditionStatus::from_name("False"), False);
    assert_eq!(
        ConditionStatus::from_name("Unknown"),
        ConditionStatus::Unknown
    );
    let reasons: Vec<&str> = catalog.reasons.iter().map(|r| r.as_str()).collect();
    for npd in [
        "OOMKilling",
        "TaskHung",
        "TaskHungRecovered",
        "KernelOops",
        "KernelWarning",
        "FDExhausted",
    ] {
        assert!(reasons.contains(&npd), "{npd} in {reasons:?}");
    }
    let mut unique = reasons.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        reasons.len(),
        "two detectors declare one reason"
    );
}
