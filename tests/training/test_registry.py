"""The models topic: state transitions (pure) and the latest record per model on a real broker."""

from __future__ import annotations

import json

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from streams import KafkaProducer, Record, client_config, ensure_topics
from streams.schemas import ModelState as ModelStateRecord
from training.exceptions import RegistryError
from training.registry import ModelState, announce, read_state, read_states


@pytest.mark.unit
def test_publish_promote_rollback_transitions() -> None:
    empty = ModelState(model="classifier")
    assert empty.serving() == [] and empty.event is None

    one = empty.published(1, "bootstrap")
    assert (one.candidate, one.champion, one.event, one.reason) == (1, None, "published", "bootstrap")
    champion = one.promoted()
    assert (champion.champion, champion.candidate, champion.previous_champion) == (1, None, None)
    two = champion.published(2).published(3)  # a newer candidate replaces the older one
    assert (two.champion, two.candidate) == (1, 3)
    three = two.promoted()
    assert (three.champion, three.previous_champion, three.candidate, three.serving()) == (3, 1, None, [1, 3])
    back = three.rolled_back(reason="canary failed")
    assert (back.champion, back.previous_champion, back.event) == (1, None, "rolled_back")
    rejected = back.rejected(4, "did not load")
    assert (rejected.champion, rejected.candidate, rejected.event) == (1, None, "rejected")
    assert rejected.reason == "version 4: did not load"
    assert three.role(1) == "previous_champion" and three.role(3) == "champion" and three.role(2) is None


@pytest.mark.unit
def test_a_withdrawn_candidate_leaves_the_champion_alone() -> None:
    state = ModelState(model="m").published(1).promoted().published(2)
    dropped = state.withdrawn(reason="canary: less accurate")
    assert (dropped.champion, dropped.candidate, dropped.event) == (1, None, "rejected")
    assert dropped.reason == "version 2: canary: less accurate"
    with pytest.raises(RegistryError, match="not the candidate"):
        state.withdrawn(3)
    with pytest.raises(RegistryError, match="not the candidate"):
        dropped.withdrawn()


@pytest.mark.unit
def test_invalid_transitions_raise() -> None:
    state = ModelState(model="m").published(1).promoted()
    with pytest.raises(RegistryError, match="no candidate"):
        state.promoted()
    with pytest.raises(RegistryError, match="already is the champion"):
        state.promoted(1)
    with pytest.raises(RegistryError, match="no previous champion"):
        state.rolled_back()
    with pytest.raises(RegistryError, match="already is the champion"):
        state.rolled_back(1)


@pytest.mark.unit
def test_the_record_is_the_documented_json_and_the_worker_reads_it() -> None:
    state = ModelState(model="classifier").published(4, "why")
    record = json.loads(state.to_bytes())
    assert set(record) == {"model", "champion", "candidate", "previous_champion", "event", "at", "reason"}
    assert record["at"].endswith("Z") and record["candidate"] == 4 and record["champion"] is None
    assert ModelState.model_validate_json(state.to_bytes()) == state
    worker_view = ModelStateRecord.model_validate_json(state.to_bytes())  # what the inference worker parses
    assert (worker_view.candidate, worker_view.event, worker_view.reason) == (4, "published", "why")


@pytest.mark.integration
def test_latest_record_per_model_wins_on_the_compacted_topic(settings_factory) -> None:
    settings = settings_factory()
    ensure_topics(settings)
    topic = settings.kafka.topic("models-v1")
    assert read_state(settings).event is None  # an empty topic: no record yet

    first = ModelState(model=settings.triton.model_name).published(1)
    announce(settings, first)
    announce(settings, ModelState(model="other").published(7))
    second = first.promoted(reason="good")
    announce(settings, second)
    with KafkaProducer(settings) as producer:
        producer.produce_batch(
            [
                Record(topic, b"not json", key=b"broken"),
                Record(topic, b"[" * 100_000, key=b"deep"),
                Record(
                    topic,
                    second.to_bytes().replace(b'"at":"', b'"at":"0001-01-01T00:00:00+01:00","x":"'),
                    key=settings.triton.model_name.encode(),
                ),  # out of range, and an unknown field
                Record(
                    topic,
                    json.dumps(json.loads(second.to_bytes()) | {"at": "2026-11-27T10:00:00", "champion": 9}).encode(),
                    key=settings.triton.model_name.encode(),
                ),  # a naive time
                Record(topic, ModelState(model="gone").published(1).to_bytes(), key=b"gone"),
                Record(topic, None, key=b"gone"),  # a tombstone forgets the model
            ]
        )

    assert read_state(settings) == second
    states = read_states(settings)
    assert set(states) == {settings.triton.model_name, "other"}
    assert states["other"].candidate == 7
    admin = AdminClient(client_config(settings))
    configs = admin.describe_configs([ConfigResource("topic", topic)])
    policy = next(iter(configs.values())).result()["cleanup.policy"].value
    assert policy == "compact"


@pytest.mark.integration
def test_a_missing_topic_is_a_registry_error(settings_factory) -> None:
    settings = settings_factory()  # topics not created
    with pytest.raises(RegistryError, match="does not exist"):
        read_state(settings, timeout_s=5)
