"""The alert engine (pure, injected time) and its rules: starts, clears, hold-down, no flapping."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from vitals_agent.agent.alerts.engine import AlertEngine, AlertEvent, Observation
from vitals_agent.agent.alerts.rules import CertFacts, DeviceFacts, Facts, LinkFacts, observe
from vitals_agent.config.alerts import AlertsConfig


def ehr(bad: bool, after: float = 300.0) -> Observation:
    return Observation("ehr_unreachable:ehr", "ehr_unreachable", bad, after=after, summary="x")


def test_fires_once_after_the_condition_lasted_and_clears_once_after_hold_down() -> None:
    engine = AlertEngine(hold_down=60)
    assert engine.observe(0, [ehr(True)]) == []
    assert engine.observe(299, [ehr(True)]) == []
    [start] = engine.observe(300, [ehr(True)])
    assert (start.state, start.kind, start.since, start.at) == ("firing", "ehr_unreachable", 0, 300)
    assert [a.key for a in engine.active()] == ["ehr_unreachable:ehr"]
    for t in range(301, 400, 7):
        assert engine.observe(t, [ehr(True)]) == []
    assert engine.observe(400, [ehr(False)]) == []  # good, but not for hold_down yet
    assert engine.observe(459, [ehr(False)]) == []
    [clear] = engine.observe(460, [ehr(False)])
    assert (clear.state, clear.since, clear.at) == ("cleared", 400, 460)
    assert engine.active() == []
    assert engine.observe(10_000, [ehr(False)]) == []


def test_a_short_outage_is_not_an_alert() -> None:
    engine = AlertEngine(hold_down=60)
    events = []
    for t in range(0, 1000, 10):  # down 200 s, up 10 s, again and again: never 300 s in one piece
        events += engine.observe(t, [ehr(t % 210 < 200)])
    assert events == []


def test_flapping_after_an_alert_does_not_clear_or_refire() -> None:
    engine = AlertEngine(hold_down=120)
    events = engine.observe(0, [ehr(True, after=0)])
    assert [e.state for e in events] == ["firing"]
    for t in range(5, 2000, 5):  # good for 60 s, bad for 5 s: never good for the hold-down time
        events += engine.observe(t, [ehr(t % 65 == 0, after=0)])
    assert [e.state for e in events] == ["firing"]


def test_refire_waits_for_hold_down_after_a_clear() -> None:
    engine = AlertEngine(hold_down=100)
    assert [e.state for e in engine.observe(0, [ehr(True, after=0)])] == ["firing"]
    assert engine.observe(10, [ehr(False, after=0)]) == []
    assert [e.state for e in engine.observe(110, [ehr(False, after=0)])] == ["cleared"]
    assert engine.observe(120, [ehr(True, after=0)]) == []  # 10 s after the clear
    assert engine.observe(209, [ehr(True, after=0)]) == []
    assert [e.state for e in engine.observe(210, [ehr(True, after=0)])] == ["firing"]


def test_a_key_nobody_reports_any_more_clears() -> None:
    engine = AlertEngine(hold_down=30)
    dev = Observation("device_silent:bp1", "device_silent", True, device="bp1")
    assert [e.state for e in engine.observe(0, [dev])] == ["firing"]
    assert engine.observe(10, []) == []
    [clear] = engine.observe(40, [])
    assert (clear.state, clear.device) == ("cleared", "bp1")
    assert engine.observe(100, []) == []


# --- the property: random up/down sequences ---------------------------------------------------------

steps = st.lists(
    st.tuples(st.floats(min_value=0.0, max_value=400.0), st.booleans(), st.sampled_from(["a", "b"])),
    max_size=200,
)


@settings(max_examples=400, deadline=None)
@given(
    steps=steps,
    hold_down=st.floats(min_value=0.0, max_value=300.0),
    after=st.floats(min_value=0.0, max_value=600.0),
)
def test_random_up_down_sequences_never_alert_twice_inside_hold_down(
    steps: list[tuple[float, bool, str]], hold_down: float, after: float
) -> None:
    engine = AlertEngine(hold_down=hold_down)
    now = 0.0
    state = {"a": False, "b": False}
    rounds: list[tuple[float, dict[str, bool], list[AlertEvent]]] = []
    for gap, bad, which in steps:
        now += gap
        state[which] = bad
        events = engine.observe(now, [Observation(k, "test", state[k], after=after) for k in ("a", "b")])
        rounds.append((now, dict(state), events))
    for key in ("a", "b"):
        mine = [(i, e) for i, (_, _, events) in enumerate(rounds) for e in events if e.key == key]
        # starts and clears alternate, beginning with a start
        assert [e.state for _, e in mine] == ["firing", "cleared"] * (len(mine) // 2) + (
            ["firing"] if len(mine) % 2 else []
        )
        # never two changes of one alert inside the hold-down time
        for (_, first), (_, second) in itertools.pairwise(mine):
            assert second.at - first.at >= hold_down
        for i, event in mine:
            want_bad = event.state == "firing"
            assert rounds[i][1][key] == want_bad
            j = i  # the round the current streak began
            while j > 0 and rounds[j - 1][1][key] == want_bad:
                j -= 1
            assert event.since == rounds[j][0]
            # the condition held without a break for the time the rule asks, up to the event
            assert event.at - event.since >= (after if want_bad else hold_down)


@settings(max_examples=200, deadline=None)
@given(hold_down=st.floats(min_value=0.0, max_value=100.0), after=st.floats(min_value=0.0, max_value=100.0))
def test_a_lasting_condition_always_alerts_and_a_lasting_recovery_always_clears(
    hold_down: float, after: float
) -> None:
    engine = AlertEngine(hold_down=hold_down)
    events: list[AlertEvent] = []
    t = 0.0
    while t <= after + hold_down + 1:
        events += engine.observe(t, [ehr(True, after=after)])
        t += 0.5
    assert [e.state for e in events] == ["firing"]
    stop = t + 2 * hold_down + 1
    while t <= stop:
        events += engine.observe(t, [ehr(False, after=after)])
        t += 0.5
    assert [e.state for e in events] == ["firing", "cleared"]


# --- the rules -------------------------------------------------------------------------------------


def test_rules_turn_facts_into_observations_without_patient_data() -> None:
    config = AlertsConfig(
        queue_age_seconds=600, disk_free_mb=500, cert_expiry_days=30, held_reading_seconds=60
    )
    facts = Facts(
        links={"ehr": LinkFacts("10.1.1.1:2575", True, 7, depth=12, dead=2, oldest_age=900.0)},
        devices={"bp1": DeviceFacts(False, 4000.0), "spo2": DeviceFacts(True, 99999.0)},
        held=3,
        oldest_held_age=120.0,
        disk_free_mb=120.0,
        certs=[CertFacts("EHR server certificate", 12.4)],
    )
    seen = {o.key: o for o in observe(config, facts)}
    assert seen["ehr_unreachable:ehr"].bad and seen["ehr_unreachable:ehr"].after == 300
    assert seen["ehr_unreachable:ehr"].counts == {"failed_attempts": 7, "waiting": 12}
    assert seen["queue_age:ehr"].bad and seen["queue_age:ehr"].counts["oldest_seconds"] == 900
    assert seen["dead_letter:ehr"].bad and seen["dead_letter:ehr"].counts == {"dead": 2}
    assert seen["device_silent:bp1"].bad and seen["device_silent:bp1"].device == "bp1"
    assert not seen["device_silent:spo2"].bad  # connected: however long since the last reading
    assert seen["held_reading"].bad and seen["held_reading"].counts == {"held": 3, "oldest_seconds": 120}
    assert seen["disk_free"].bad and seen["disk_free"].summary == "120 MB free on the data folder's disk"
    assert seen["cert_expiry:EHR server certificate"].bad
    assert seen["cert_expiry:EHR server certificate"].summary == "EHR server certificate expires in 12 day(s)"
    assert not seen["config_refused"].bad
    refused = {o.key: o for o in observe(config, Facts(config_error="signature does not verify"))}
    assert refused["config_refused"].bad
    assert refused["config_refused"].summary == "new configuration refused: signature does not verify"


def test_a_rule_set_to_zero_is_off() -> None:
    config = AlertsConfig(
        ehr_unreachable_seconds=0, device_silent_seconds=0, disk_free_mb=0, dead_letter=False
    )
    facts = Facts(
        links={"ehr": LinkFacts("h:1", True, 7, depth=0, dead=3, oldest_age=None)},
        devices={"bp1": DeviceFacts(False, 1e9)},
        disk_free_mb=1.0,
    )
    kinds = {o.kind for o in observe(config, facts)}
    assert kinds == {"queue_age", "held_reading", "config_refused"}
