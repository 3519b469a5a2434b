//! The logistic regression ([`ferrovene_interventions::logistic`]) against scikit-learn 1.5.2's
//! `LogisticRegression` on the fixed data sets of `tests/golden/logistic/logistic.json`
//! (`make_logistic_golden.py` beside it): coefficients and intercept within 1e-6 absolute, on an
//! overlapping data set, a separable one with more features than vectors, and a strong penalty.

use ferrovene_interventions::logistic::fit;

#[test]
fn fits_equal_scikit_learns_within_1e_6() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/logistic/logistic.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "golden file {} is missing ({e}): tests/golden/logistic/make_logistic_golden.py makes it",
            path.display()
        )
    });
    let golden: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let cases = golden["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().expect("a name");
        let floats =
            |v: &serde_json::Value| -> Vec<f64> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect() };
        let xs: Vec<Vec<f64>> = case["x"].as_array().unwrap().iter().map(floats).collect();
        let ys: Vec<bool> = case["y"].as_array().unwrap().iter().map(|y| y.as_bool().unwrap()).collect();
        let (coef, intercept) = (floats(&case["coef"]), case["intercept"].as_f64().unwrap());
        let model = fit(&xs, &ys, case["C"].as_f64().unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let worst = model
            .weights
            .iter()
            .zip(&coef)
            .map(|(a, b)| (a - b).abs())
            .fold((model.intercept - intercept).abs(), f64::max);
        assert!(
            worst < 1e-6,
            "{name}: differs from scikit-learn by {worst} ({:?} + {} against {coef:?} + {intercept})",
            model.weights,
            model.intercept
        );
        assert!(model.steps >= 2 && model.steps < 30, "{name}: {} Newton steps", model.steps);
    }
}

#[test]
fn bad_input_is_refused_with_the_reason() {
    let xs = vec![vec![1.0, 2.0], vec![3.0]];
    assert!(fit(&xs, &[true, false], 1.0).unwrap_err().contains("one width"));
    let xs = vec![vec![1.0], vec![-1.0]];
    assert!(fit(&xs, &[true], 1.0).unwrap_err().contains("one class per vector"));
    assert!(fit(&xs, &[true, false], 0.0).unwrap_err().contains("C = 0"));
    assert!(fit(&[vec![f64::NAN], vec![1.0]], &[true, false], 1.0).unwrap_err().contains("non-finite"));
    // One class only: the optimum exists (the penalty bounds it) and is found.
    let one = fit(&xs, &[true, true], 1.0).expect("a fit");
    assert!(one.intercept > 0.0, "{one:?}");
}
