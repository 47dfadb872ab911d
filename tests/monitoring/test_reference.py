"""The reference sample: read from a version's metadata.json, with clear errors naming the file."""

from __future__ import annotations

import json

import pytest

from foundation.settings import load_settings
from monitoring import ReferenceSampleError, load_reference, reference_path, reference_row

pytestmark = pytest.mark.unit


@pytest.fixture
def settings(tmp_path):
    return load_settings(triton={"model_repository": tmp_path / "repo"})


def _write(settings, metadata, model="classifier", version=1):
    path = reference_path(settings, model, version)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metadata) if not isinstance(metadata, str) else metadata)
    return path


def test_reference_path_is_the_version_folder_of_the_model_repository(settings, tmp_path):
    assert reference_path(settings, "classifier", 3) == tmp_path / "repo" / "classifier" / "3" / "metadata.json"


def test_load_reference_builds_the_window_columns(settings, synthetic_factory):
    setup = synthetic_factory(reference_size=50)
    setup.write(settings.triton.model_repository)
    reference = load_reference(settings, "classifier", 1)
    assert reference.feature_names == ("amount", "items")
    assert reference.labels == ("negative", "neutral", "positive")
    assert list(reference.frame.columns) == [
        "amount",
        "items",
        "text_length",
        "word_count",
        "oov_share",
        "label",
        "max_score",
    ]
    assert len(reference.frame) == 50
    assert reference.frame["amount"].dtype == "float64" and reference.frame["label"].dtype == object
    assert reference.metrics == {"accuracy": 0.98, "macro_f1": 0.98}


def test_missing_values_and_columns_become_nan(settings):
    _write(
        settings,
        {
            "feature_names": ["amount"],
            "labels": ["a"],
            "reference": [{"amount": None, "label": "a", "max_score": 0.9}, {"amount": 2.5, "label": "a"}],
        },
    )
    reference = load_reference(settings, "classifier", 1)
    assert reference.descriptor_columns == ()
    assert reference.frame["amount"].isna().tolist() == [True, False]
    assert reference.frame["max_score"].isna().tolist() == [False, True]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ("{nope", "cannot read"),
        ([], "not a JSON object"),
        ({"reference": []}, "non-empty list"),
        ({"reference": [{"amount": 1}]}, "no 'label'"),
        ({"feature_names": ["amount"], "reference": [{"amount": "lots", "label": "a"}]}, "non-number"),
        ({"feature_names": [1], "reference": [{"label": "a"}]}, "lists of strings"),
    ],
)
def test_malformed_metadata_is_an_error_naming_the_file(settings, metadata, message):
    path = _write(settings, metadata)
    with pytest.raises(ReferenceSampleError, match=message) as info:
        load_reference(settings, "classifier", 1)
    assert str(path) in str(info.value)


def test_missing_file_is_an_error_naming_model_version_and_path(settings):
    with pytest.raises(ReferenceSampleError, match=r"classifier v7: .*metadata.json does not exist"):
        load_reference(settings, "classifier", 7)


def test_reference_row_has_the_metadata_shape(synthetic_factory):
    prediction, _ = synthetic_factory().predictions(1, seed=9)[0]
    row = reference_row(prediction)
    assert set(row) == {"amount", "items", "text_length", "word_count", "oov_share", "label", "max_score"}
    assert row["max_score"] == max(prediction.scores.values())
    assert row["text_length"] == prediction.text_stats["length"]
