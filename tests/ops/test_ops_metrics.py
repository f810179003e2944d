"""The core metrics render under their documented names."""

from __future__ import annotations

import platform

from daemon import __version__, metrics


def _text() -> str:
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    return body.decode()


def test_counters_are_exposed_with_total_suffix() -> None:
    metrics.CYCLES.labels(result="quiet").inc()
    metrics.CHANGES.labels(kind="user_added").inc(3)
    metrics.DELIVERIES.labels(target="m-suffix", result="ok").inc()
    text = _text()
    assert 'provisiond_cycles_total{result="quiet"}' in text
    assert 'provisiond_changes_total{kind="user_added"}' in text
    assert 'provisiond_deliveries_total{result="ok",target="m-suffix"}' in text


def test_build_info_carries_versions() -> None:
    expected = (
        f'provisiond_build_info{{python="{platform.python_version()}",version="{__version__}"}} 1.0'
    )
    assert expected in _text()


def test_every_documented_metric_is_present() -> None:
    metrics.CYCLE_DURATION.observe(0.002)
    metrics.DIRECTORY_OBJECTS.labels(kind="user").set(10)
    metrics.DIRECTORY_SKIPPED.labels(kind="group").set(1)
    metrics.DIRTY_OBJECTS.labels(target="m-all").set(2)
    metrics.FAILED_OBJECTS.labels(target="m-all").set(1)
    metrics.HELD_REMOVALS.labels(target="m-all").set(4)
    metrics.LAST_SUCCESS.set(1_700_000_000)
    text = _text()
    for name in (
        "provisiond_cycle_duration_seconds_bucket",
        'provisiond_cycle_duration_seconds_bucket{le="600.0"}',
        'provisiond_directory_objects{kind="user"} 10.0',
        'provisiond_directory_skipped_records{kind="group"} 1.0',
        'provisiond_dirty_objects{target="m-all"} 2.0',
        'provisiond_failed_objects{target="m-all"} 1.0',
        'provisiond_held_removals{target="m-all"} 4.0',
        "provisiond_last_successful_cycle_timestamp_seconds 1.7e+09",
    ):
        assert name in text


def test_default_registry_is_not_used() -> None:
    from prometheus_client import REGISTRY as DEFAULT
    from prometheus_client import generate_latest

    assert b"provisiond_" not in generate_latest(DEFAULT)


def test_forget_target_drops_only_that_target() -> None:
    for target in ("m-gone", "m-kept"):
        metrics.DELIVERIES.labels(target=target, result="ok").inc()
        metrics.DELIVERIES.labels(target=target, result="permanent").inc()
        metrics.DIRTY_OBJECTS.labels(target=target).set(1)
        metrics.FAILED_OBJECTS.labels(target=target).set(1)
        metrics.HELD_REMOVALS.labels(target=target).set(1)
    metrics.forget_target("m-gone")
    text = _text()
    assert 'target="m-gone"' not in text
    assert text.count('target="m-kept"') >= 5


def test_forget_unknown_target_is_harmless() -> None:
    metrics.forget_target("m-never-seen")
