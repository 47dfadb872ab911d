"""When ``driftloop produce`` and the demo send labels: ``LabelSchedule`` (late, for a share of the events)."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from foundation.settings import load_settings
from streams import generator
from streams.client import Record
from streams.generator import LabelSchedule, dated_as_sent, produce, synthetic_records
from streams.schemas import parse_event, parse_label

pytestmark = pytest.mark.unit

SETTINGS = load_settings(kafka={"topic_prefix": "gen-"})
EVENTS, LABELS = SETTINGS.kafka.topic("events-v1"), SETTINGS.kafka.topic("labels-v1")


def _stream(count: int, seed: int = 3) -> list[list[Record]]:
    return list(synthetic_records(SETTINGS, count, seed=seed))


def test_without_delay_or_share_every_label_goes_with_its_event_unchanged():
    schedule = LabelSchedule(LABELS)
    for records in _stream(20):
        assert [r.topic for r in schedule.split(records, 5.0)] == [EVENTS]
        assert schedule.due(5.0) == [records[1]]  # the very record: nothing re-stamped
    assert len(schedule) == 0 and schedule.dropped == 0


def test_a_label_is_held_until_its_delay_has_passed_and_then_stamped_with_its_sending():
    schedule = LabelSchedule(LABELS, delay_s=30.0)
    stream = _stream(3)
    for i, records in enumerate(stream):
        schedule.split(records, 100.0 + i)
    assert schedule.due(129.99) == [] and len(schedule) == 3 and schedule.next_due() == 130.0
    before = datetime.now(UTC)
    first = schedule.due(130.0)
    assert [parse_label(r.value).event_id for r in first] == [parse_event(stream[0][0].value).event_id]
    assert parse_label(first[0].value).labelled_at >= before > parse_label(stream[0][1].value).labelled_at
    assert first[0].key == stream[0][1].key
    rest = schedule.due(1000.0)  # late callers get the rest, oldest first
    assert [r.key for r in rest] == [stream[1][1].key, stream[2][1].key]
    assert schedule.next_due() is None and len(schedule) == 0


def test_the_share_keeps_about_that_many_labels_of_every_class_and_is_the_same_for_a_seed():
    def kept(seed: int) -> list[str]:
        schedule = LabelSchedule(LABELS, share=0.5, seed=seed)
        out = []
        for records in _stream(2000, seed=seed):
            schedule.split(records, 0.0)
            out += [parse_label(r.value).label for r in schedule.due(0.0)]
        assert len(out) + schedule.dropped == 2000
        return out

    labels = kept(seed=3)
    assert 900 <= len(labels) <= 1100
    assert kept(seed=3) == labels
    # the draw is not the stream's own (same seed): no class is favoured
    produced = Counter(parse_label(r[1].value).label for r in _stream(2000, seed=3))
    for name, count in Counter(labels).items():
        assert 0.4 <= count / produced[name] <= 0.6, (name, count, produced[name])


def test_share_zero_sends_no_label_and_share_one_all():
    none, every = LabelSchedule(LABELS, share=0.0), LabelSchedule(LABELS, share=1.0)
    for records in _stream(50):
        none.split(records, 0.0)
        every.split(records, 0.0)
    assert none.due(1.0) == [] and none.dropped == 50
    assert len(every.due(1.0)) == 50 and every.dropped == 0


class _Clock:
    def __init__(self, now: float) -> None:
        self.now, self.slept = now, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_drain_sends_every_held_label_once_due_never_before():
    schedule = LabelSchedule(LABELS, delay_s=10.0)
    for i, records in enumerate(_stream(4)):
        schedule.split(records, 50.0 + 2 * i)  # due at 60, 62, 64, 66
    clock, sent = _Clock(61.0), []

    def send(records: list[Record]) -> None:
        assert clock.now >= schedule_due[len(sent)]
        sent.extend(records)

    schedule_due = [60.0, 62.0, 64.0, 66.0]
    assert schedule.drain(send, clock=clock, sleep=clock.sleep) == 4
    assert len(sent) == 4 and len(schedule) == 0
    assert clock.slept == [0.0, 1.0, 2.0, 2.0] and clock.now == 66.0


@pytest.mark.parametrize(("delay", "share"), [(-1.0, 1.0), (0.0, -0.1), (0.0, 1.5)])
def test_out_of_range_settings_are_refused(delay, share):
    with pytest.raises(ValueError):
        LabelSchedule(LABELS, delay_s=delay, share=share)


class _Recorder:
    """What ``produce`` hands to a producer, in order (the scheduling is under test here, not Kafka)."""

    def __init__(self) -> None:
        self.batches: list[list[Record]] = []

    def produce_batch(self, records) -> int:
        self.batches.append(list(records))
        return len(self.batches[-1])


def test_produce_sends_the_held_labels_after_the_events_before_it_returns():
    recorder, schedule = _Recorder(), LabelSchedule(LABELS, delay_s=0.2, share=0.5, seed=1)
    assert produce(recorder, _stream(40), labels=schedule) == 40
    topics = [r.topic for batch in recorder.batches for r in batch]
    assert topics.count(EVENTS) == 40 and topics.count(LABELS) + schedule.dropped == 40
    assert topics.index(LABELS) > max(i for i, t in enumerate(topics) if t == EVENTS)  # as fast as possible: after
    assert len(schedule) == 0


def test_at_a_set_rate_events_due_within_a_tick_go_out_together_and_never_ahead_of_time():
    recorder, rate, count, stream = _Recorder(), 1000.0, 100, _stream(100)
    began = time.monotonic()
    assert produce(recorder, stream, rate=rate) == count
    elapsed = time.monotonic() - began
    sent = [batch for batch in recorder.batches if batch]
    assert [r for batch in sent for r in batch] == [r for records in stream for r in records]
    assert max(len(batch) for batch in sent) > 1 and len(sent) < count  # a request per tick, not per event
    assert elapsed >= (count - 1) / rate - generator.PACE_TICK_S  # never more than a tick ahead of the rate


def test_the_same_traffic_sent_again_with_another_id_seed_reuses_no_event_id():
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def sent(id_seed: int | None) -> list:
        return [parse_event(r[0].value) for r in synthetic_records(SETTINGS, 30, seed=4, start=start, id_seed=id_seed)]

    first, second = sent(11), sent(12)
    assert [(e.text, e.entity_id) for e in first] == [(e.text, e.entity_id) for e in second]
    assert not {e.event_id for e in first} & {e.event_id for e in second}
    assert sent(None) == sent(None) and sent(11) == first  # a given (or the default) id seed repeats its ids


def test_synthetic_events_are_dated_as_they_are_sent_never_ahead_of_the_clock():
    before = datetime.now(UTC)
    backlog = [parse_event(r[0].value) for r in synthetic_records(SETTINGS, 50_000, **dated_as_sent(50_000, None))]
    assert before - backlog[0].event_time > (backlog[-1].event_time - backlog[0].event_time) * 0.99
    assert backlog[-1].event_time <= datetime.now(UTC)  # 50,000 events 100 ms apart: a backlog ending now
    paced = [parse_event(r[0].value) for r in synthetic_records(SETTINGS, 101, **dated_as_sent(101, 50.0))]
    assert (paced[-1].event_time - paced[0].event_time).total_seconds() == pytest.approx(2.0)
