"""The metadata baselines, on the real official metadata."""
import numpy as np
import pytest

from cxr.baselines import ARTIFACT_FEATURE, HEADER_FEATURES, metadata_baseline, metadata_baselines, metadata_features


@pytest.fixture(scope="module")
def held_out_and_test(full_metadata):
    """A patient-disjoint test set of real rows: 300 patients drawn with a seed."""
    patients = np.sort(full_metadata["Patient ID"].unique())
    chosen = set(np.random.default_rng(0).choice(patients, 300, replace=False))
    test = full_metadata[full_metadata["Patient ID"].isin(chosen)].reset_index(drop=True)
    return chosen, test


def test_features_encode_header_fields_and_keep_missing_age_missing(full_metadata):
    rows = full_metadata.head(3).copy()
    rows.loc[0, "Patient Age"] = np.nan
    x = metadata_features(rows, HEADER_FEATURES + (ARTIFACT_FEATURE,))
    assert x.shape == (3, 4) and np.isnan(x[0, 0]) and not np.isnan(x[1:, 0]).any()
    assert set(x[:, 1]) <= {0.0, 1.0} and set(x[:, 2]) <= {0.0, 1.0}
    np.testing.assert_array_equal(x[:, 3], rows[ARTIFACT_FEATURE].to_numpy(dtype=float))


def test_trained_without_held_out_patients_and_seeded(full_metadata, held_out_and_test):
    held_out, test = held_out_and_test
    fitted, scores = metadata_baseline(full_metadata, held_out, ["PA", "AP"], "abnormal", test, HEADER_FEATURES, 0)
    assert fitted["train_rows"] == int((~full_metadata["Patient ID"].isin(held_out)).sum())
    assert fitted["train_patients"] == full_metadata["Patient ID"].nunique() - len(held_out)
    assert scores.shape == (len(test),) and 0 <= scores.min() and scores.max() <= 1
    _, again = metadata_baseline(full_metadata, held_out, ["PA", "AP"], "abnormal", test, HEADER_FEATURES, 0)
    np.testing.assert_array_equal(scores, again)


def test_header_fields_predict_abnormal_above_chance_and_the_report_marks_the_artifact(full_metadata,
                                                                                         held_out_and_test):
    from cxr.data.labels import multi_hot
    from cxr.evaluate import bootstrap_weights
    held_out, test = held_out_and_test
    truth = multi_hot(test["Finding Labels"])["abnormal"].to_numpy()
    weights = bootstrap_weights(test["Patient ID"].to_numpy(), 200, 0)
    result = metadata_baselines(full_metadata, held_out, ["PA", "AP"], "abnormal", test, truth, weights, 0)
    header, artifact = result["metadata"], result["metadata_with_follow_up"]
    # Age, sex and view carry real signal on ~1,200 held-out images (AP films are sicker patients).
    assert header["auroc_ci95"]["low"] > 0.5 and header["features"] == list(HEADER_FEATURES)
    assert artifact["features"][-1] == ARTIFACT_FEATURE and "not usable at inference" in artifact["use"]
