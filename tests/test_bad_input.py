"""Every bad configuration and bad client input tidegate was tried with, and what it does.

The tables below are the catalogue: each row is code that is run, and the exact outcome it
must have. ``docs/bad-input.md`` is generated from them, and a test fails when it is out of
date; regenerate it with ``python tests/test_bad_input.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from conftest import UnprintableError, Unrepresentable, nested

import tidegate
from tidegate import MaintenanceSwitch, RetryAfter
from tidegate.asgi import TideGateMiddleware as AsgiMiddleware
from tidegate.responses import ErrorPages
from tidegate.wsgi import TideGateMiddleware

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad-input.md"
TOKEN = "0123456789abcdef-token"


@dataclass(frozen=True)
class Row:
    """``code`` is executed; ``outcome`` is ``"TypeError: exact message"``, or for input that
    is accepted, a description that the code's result (the value of ``result``) must equal."""

    code: str
    outcome: str


# -- configuration ------------------------------------------------------------------------

CONFIGURATION: dict[str, list[Row]] = {
    "CapacityGate": [
        Row("CapacityGate(0)", "ValueError: limit: must be an integer >= 1, got 0"),
        Row("CapacityGate(-3)", "ValueError: limit: must be an integer >= 1, got -3"),
        Row("CapacityGate(2**64)", "ValueError: limit: is too large: 18446744073709551616"),
        Row(
            "CapacityGate(10**40)",
            "ValueError: limit: is too large: 10000000000000000000000000000000000000000",
        ),
        Row(
            "CapacityGate(-(10**40))",
            (
                "ValueError: limit: must be an integer >= 1, got "
                "-10000000000000000000000000000000000000000"
            ),
        ),
        Row(
            "CapacityGate(10**100)",
            (
                "ValueError: limit: is too large: "
                "1000000000000000000000000000000000000000000000000000000000000000... (101 digits)"
            ),
        ),
        Row(
            "CapacityGate(10**5000)",
            "ValueError: limit: is too large: an int of 16610 bits",
        ),
        Row("CapacityGate('8')", "TypeError: limit: must be an int, got str"),
        Row("CapacityGate(8.0)", "TypeError: limit: must be an int, got float"),
        Row("CapacityGate(True)", "TypeError: limit: must be an int, got True"),
        Row("CapacityGate(None)", "TypeError: limit: must be an int, got NoneType"),
        Row(
            "gate = CapacityGate(2); gate.limit = 0",
            "ValueError: limit: must be an integer >= 1, got 0",
        ),
        Row(
            "gate = CapacityGate(2); gate.limit = 10**40",
            "ValueError: limit: is too large: 10000000000000000000000000000000000000000",
        ),
        Row(
            "CapacityGate(1).acquire(timeout=-1)",
            "ValueError: timeout: must be a finite number of seconds >= 0, got -1",
        ),
        Row(
            "CapacityGate(1).acquire(timeout=math.nan)",
            "ValueError: timeout: must be a finite number of seconds >= 0, got NaN",
        ),
        Row(
            "CapacityGate(1).acquire(timeout=math.inf)",
            "ValueError: timeout: must be a finite number of seconds >= 0, got inf",
        ),
        Row(
            "CapacityGate(1).acquire(timeout='1')",
            "TypeError: timeout: must be a number of seconds or None, got str",
        ),
        Row(
            "gate = CapacityGate(1); result = gate.acquire(timeout=1e19).released",
            "False",
        ),
        Row(
            "gate = CapacityGate(1); result = gate.acquire(timeout=10**400).released",
            "False",
        ),
        Row(
            "CapacityGate(1).acquire(timeout=-(10**400))",
            (
                "ValueError: timeout: must be a finite number of seconds >= 0, got "
                "-1000000000000000000000000000000000000000000000000000000000000000... "
                "(401 digits)"
            ),
        ),
    ],
    "AdaptiveGate": [
        Row("AdaptiveGate(initial=0)", "ValueError: initial: must be an integer >= 1, got 0"),
        Row("AdaptiveGate(initial=True)", "TypeError: initial: must be an int, got True"),
        Row("AdaptiveGate(initial=2.5)", "TypeError: initial: must be an int, got float"),
        Row("AdaptiveGate(initial=None)", "accepted"),
        Row("AdaptiveGate(min_limit=0)", "ValueError: min_limit: must be an integer >= 1, got 0"),
        Row(
            "AdaptiveGate(min_limit=30)",
            "ValueError: initial: must be between min_limit (30) and max_limit (1000), got 20",
        ),
        Row(
            "AdaptiveGate(max_limit=10)",
            "ValueError: initial: must be between min_limit (1) and max_limit (10), got 20",
        ),
        Row(
            "AdaptiveGate(min_limit=5, max_limit=4, initial=5)",
            "ValueError: max_limit: must be >= min_limit (5), got 4",
        ),
        Row(
            "AdaptiveGate(max_limit=2**64)",
            "ValueError: max_limit: is too large: 18446744073709551616",
        ),
        Row(
            "AdaptiveGate(algorithm='netflix')",
            "ValueError: algorithm: must be 'gradient2', 'aimd' or 'vegas', got \"netflix\"",
        ),
        Row("AdaptiveGate(algorithm=None)", "accepted"),
        Row(
            "AdaptiveGate(algorithm=2)",
            "TypeError: algorithm: must be 'gradient2', 'aimd' or 'vegas', got 2",
        ),
        Row(
            "AdaptiveGate(20)",
            "TypeError: AdaptiveGate.__new__() takes 0 positional arguments but 1 was given",
        ),
        Row(
            "g = AdaptiveGate(); g.limit = 5",
            (
                "AttributeError: attribute 'limit' of 'tidegate._tidegate.AdaptiveGate' objects "
                "is not writable"
            ),
        ),
        Row("result = AdaptiveGate(algorithm='aimd', initial=7).limit", "7"),
    ],
    "RetryAfter": [
        Row("RetryAfter.after(-1)", "ValueError: seconds: must be a finite number >= 0, got -1"),
        Row(
            "RetryAfter.after(math.nan)",
            "ValueError: seconds: must be a finite number >= 0, got nan",
        ),
        Row(
            "RetryAfter.after(math.inf)",
            "ValueError: seconds: must be a finite number >= 0, got inf",
        ),
        Row(
            "RetryAfter.after(timedelta(seconds=-1))",
            (
                "ValueError: seconds: must be a finite number >= 0, got "
                "datetime.timedelta(days=-1, seconds=86399)"
            ),
        ),
        Row(
            "RetryAfter.after('5')",
            "TypeError: seconds: expected an int, float or datetime.timedelta, got str",
        ),
        Row(
            "RetryAfter.after(True)",
            "TypeError: seconds: expected an int, float or datetime.timedelta, got bool",
        ),
        Row(
            "RetryAfter.after(None)",
            "TypeError: seconds: expected an int, float or datetime.timedelta, got NoneType",
        ),
        Row("result = RetryAfter.after(10**30).header_value()", "2147483648"),
        Row(
            "RetryAfter.at('2030-01-01')",
            "TypeError: when: expected a datetime.datetime, got str",
        ),
        Row(
            "RetryAfter.at(datetime(9999, 12, 31, 23, 59, 59, 1))",
            (
                "ValueError: when: datetime.datetime(9999, 12, 31, 23, 59, 59, 1) is past "
                "9999-12-31 23:59:59 UTC, the last HTTP-date"
            ),
        ),
        Row(
            "RetryAfter.after(5).delay(now='now')",
            "TypeError: now: expected a datetime.datetime, got str",
        ),
        Row(
            "RetryAfter.after(10).when(now=datetime(9999, 12, 31, 23, 59, 59))",
            (
                "ValueError: now + 10 seconds is outside the years 1 to 9999 that a datetime "
                "can hold"
            ),
        ),
    ],
    "MaintenanceSwitch": [
        Row(
            "MaintenanceSwitch(5)",
            "TypeError: store: must be a str, an os.PathLike or None (a state file path, or a "
            "redis:// or unix:// store URI), got int",
        ),
        Row("MaintenanceSwitch('')", "ValueError: store: must not be empty, got ''"),
        Row(
            "MaintenanceSwitch('/var/run/app/')",
            "ValueError: store: must name a file, got '/var/run/app/'",
        ),
        Row(
            "MaintenanceSwitch(state_file='')", "ValueError: state_file: must not be empty, got ''"
        ),
        Row(
            "MaintenanceSwitch('a.json', state_file='b.json')",
            "TypeError: store: and state_file= are the same parameter; give one",
        ),
        Row(
            "MaintenanceSwitch('redis://')",
            'ValueError: store: must name a host, got "redis://"',
        ),
        Row(
            "MaintenanceSwitch('redis://cache:0')",
            'ValueError: store: must have a port from 1 to 65535, got "redis://cache:0"',
        ),
        Row(
            "MaintenanceSwitch('redis://cache:65536')",
            'ValueError: store: must have a port from 1 to 65535, got "redis://cache:65536"',
        ),
        Row(
            "MaintenanceSwitch('redis://user:hunter2@cache:http')",
            ('ValueError: store: must have a port from 1 to 65535, got "redis://***@cache:http"'),
        ),
        Row(
            "MaintenanceSwitch('redis://cache/x')",
            (
                'ValueError: store: must have a database number from 0 to 65535, not "x", got '
                '"redis://cache/x"'
            ),
        ),
        Row(
            "MaintenanceSwitch('redis://cache?db=2')",
            (
                'ValueError: store: has an unknown query parameter "db" (known: key), got '
                '"redis://cache?db=2"'
            ),
        ),
        Row(
            "MaintenanceSwitch('redis://cache?key=')",
            (
                "ValueError: store: must have a key= of 1 to 512 characters without control "
                'characters, got "redis://cache?key="'
            ),
        ),
        Row(
            "MaintenanceSwitch('redis://cache?key=a%0Ab')",
            (
                "ValueError: store: must have a key= of 1 to 512 characters without control "
                'characters, got "redis://cache?key=a%0Ab"'
            ),
        ),
        Row(
            "MaintenanceSwitch('redis://%zz@cache')",
            'ValueError: store: has a malformed %-escape, got "redis://***@cache"',
        ),
        Row(
            "MaintenanceSwitch('redis://[::1')",
            'ValueError: store: has an unclosed [ in its host, got "redis://[::1"',
        ),
        Row(
            "MaintenanceSwitch('redis://cache#top')",
            'ValueError: store: must not have a #fragment, got "redis://cache#top"',
        ),
        Row(
            "MaintenanceSwitch('rediss://cache?ca=/nonexistent/ca.pem')",
            (
                "ValueError: store: has a ca= file /nonexistent/ca.pem that cannot be read (I/O"
                " error: No such file or directory (os error 2)), got "
                '"rediss://cache?ca=/nonexistent/ca.pem"'
            ),
        ),
        Row(
            "MaintenanceSwitch('redis://cache?ca=/etc/ssl/ca.pem')",
            (
                'ValueError: store: has an unknown query parameter "ca" (known: key), got '
                '"redis://cache?ca=/etc/ssl/ca.pem"'
            ),
        ),
        Row(
            "MaintenanceSwitch('unix://redis.sock')",
            (
                "ValueError: store: must give an absolute socket path "
                '(unix:///path/to/redis.sock), got "unix://redis.sock"'
            ),
        ),
        Row(
            "MaintenanceSwitch('unix:///run/redis.sock?password=hunter2&pasword=x')",
            (
                'ValueError: store: has an unknown query parameter "pasword" (known: key, db, '
                'username, password), got "unix:///run/redis.sock?password=***"'
            ),
        ),
        Row(
            "MaintenanceSwitch('memcached://cache')",
            ('ValueError: store: must start with redis:// or unix://, got "memcached://cache"'),
        ),
        Row(
            "MaintenanceSwitch(env_var='')",
            "ValueError: env_var: must be a non-empty name without '=' or NUL, got ''",
        ),
        Row(
            "MaintenanceSwitch(env_var='A=B')",
            "ValueError: env_var: must be a non-empty name without '=' or NUL, got 'A=B'",
        ),
        Row("MaintenanceSwitch(env_var=5)", "TypeError: env_var: must be a str or None, got int"),
        Row(
            "MaintenanceSwitch(poll_interval=-1)",
            "ValueError: poll_interval: must be a finite number of seconds >= 0, got -1",
        ),
        Row(
            "MaintenanceSwitch(poll_interval=math.nan)",
            "ValueError: poll_interval: must be a finite number of seconds >= 0, got NaN",
        ),
        Row(
            "MaintenanceSwitch(poll_interval=math.inf)",
            "ValueError: poll_interval: must be a finite number of seconds >= 0, got inf",
        ),
        Row(
            "MaintenanceSwitch(poll_interval='1')",
            "TypeError: poll_interval: must be a number of seconds, got str",
        ),
        Row(
            "MaintenanceSwitch(poll_interval=True)",
            "TypeError: poll_interval: must be a number of seconds, got bool",
        ),
        Row(
            "MaintenanceSwitch(poll_interval=10**400)",
            "ValueError: poll_interval: is out of range: "
            "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)",
        ),
        Row(
            "MaintenanceSwitch(default_retry_after=-1)",
            (
                "ValueError: default_retry_after: must be whole seconds between 0 and "
                "2147483648, got -1"
            ),
        ),
        Row(
            "MaintenanceSwitch(default_retry_after=1.5)",
            "TypeError: default_retry_after: must be an int, got float",
        ),
        Row(
            "MaintenanceSwitch(default_retry_after='60')",
            "TypeError: default_retry_after: must be an int, got str",
        ),
        Row(
            "MaintenanceSwitch(default_retry_after=10**40)",
            "ValueError: default_retry_after: must be whole seconds between 0 and 2147483648, "
            "got 10000000000000000000000000000000000000000",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(message=5)",
            "TypeError: message: must be a str or None, got int",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(message='\\x01' * 11_000)",
            "ValueError: message: is too long: it makes a state file of 66155 bytes, "
            "more than the 65536 every reader accepts",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(until='tomorrow')",
            "TypeError: until: must be a datetime or None, got str",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(retry_after=-1)",
            "ValueError: retry_after: must be whole seconds >= 0, got -1",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(retry_after='60')",
            "TypeError: retry_after: must be an int, a timedelta or None, got str",
        ),
        Row(
            "s = MaintenanceSwitch(env_var=None); s.enable(retry_after=10**40); "
            "result = s.status().retry_after",
            "2147483648",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(retry_after=-(10**40))",
            "ValueError: retry_after: must be whole seconds >= 0, "
            "got -10000000000000000000000000000000000000000",
        ),
        Row(
            "MaintenanceSwitch(env_var=None).enable(retry_after=timedelta(seconds=-5))",
            (
                "ValueError: retry_after: must not be negative, got datetime.timedelta("
                "days=-1, "
                "seconds=86395)"
            ),
        ),
        Row(
            "MaintenanceSwitch(env_var=None).drain(local='yes')",
            "TypeError: local: must be a bool, got 'yes'",
        ),
        Row(
            "MaintenanceSwitch('/nonexistent-dir/state.json', env_var=None).enable()",
            (
                "OSError: cannot write /nonexistent-dir/state.json: No such file or directory "
                "(os error 2)"
            ),
        ),
    ],
    "CircuitBreaker": [
        Row("CircuitBreaker('')", "ValueError: name: must not be empty"),
        Row("CircuitBreaker(5)", "TypeError: name: must be a str, got int"),
        Row(
            "CircuitBreaker('\\ud800')",
            "ValueError: name: must be valid text (no lone surrogates), got '\\ud800'",
        ),
        Row(
            "CircuitBreaker('db', failure_threshold=0)",
            "ValueError: failure_threshold: must be an integer >= 1, got 0",
        ),
        Row(
            "CircuitBreaker('db', failure_threshold=1.5)",
            "TypeError: failure_threshold: must be an int, got float",
        ),
        Row(
            "CircuitBreaker('db', failure_threshold=True)",
            "TypeError: failure_threshold: must be an int, got True",
        ),
        Row(
            "CircuitBreaker('db', failure_threshold=2**40)",
            "ValueError: failure_threshold: is too large: 1099511627776",
        ),
        Row(
            "CircuitBreaker('db', failure_threshold=10**40)",
            (
                "ValueError: failure_threshold: is too large: "
                "10000000000000000000000000000000000000000"
            ),
        ),
        Row(
            "CircuitBreaker('db', half_open_max_calls=10**40)",
            (
                "ValueError: half_open_max_calls: is too large: "
                "10000000000000000000000000000000000000000"
            ),
        ),
        Row(
            "CircuitBreaker('db', success_threshold=10**40)",
            (
                "ValueError: success_threshold: is too large: "
                "10000000000000000000000000000000000000000"
            ),
        ),
        Row(
            "CircuitBreaker('db', minimum_calls=10**40)",
            "ValueError: minimum_calls: is too large: 10000000000000000000000000000000000000000",
        ),
        Row(
            "CircuitBreaker('db', failure_threshold=-(10**40))",
            (
                "ValueError: failure_threshold: must be an integer >= 1, got "
                "-10000000000000000000000000000000000000000"
            ),
        ),
        Row(
            "CircuitBreaker('db', reset_timeout=10**400)",
            (
                "ValueError: reset_timeout: must be a finite number, got "
                "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)"
            ),
        ),
        Row(
            "CircuitBreaker('db', window=10**400)",
            (
                "ValueError: window: must be a finite number, got "
                "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)"
            ),
        ),
        Row(
            "CircuitBreaker('db', backoff=10**400)",
            (
                "ValueError: backoff: must be a finite number, got "
                "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)"
            ),
        ),
        Row(
            "CircuitBreaker('db', failure_rate=10**400)",
            (
                "ValueError: failure_rate: must be a finite number, got "
                "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)"
            ),
        ),
        Row(
            "CircuitBreaker('db', max_reset_timeout=10**400)",
            (
                "ValueError: max_reset_timeout: must be a finite number, got "
                "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)"
            ),
        ),
        Row(
            "CircuitBreaker('db', reset_timeout=-1)",
            "ValueError: reset_timeout: must be a finite number of seconds >= 0, got -1",
        ),
        Row("CircuitBreaker('db', reset_timeout=0)", "accepted"),
        Row(
            "CircuitBreaker('db', reset_timeout=math.nan)",
            "ValueError: reset_timeout: must be a finite number of seconds >= 0, got NaN",
        ),
        Row(
            "CircuitBreaker('db', reset_timeout=math.inf)",
            "ValueError: reset_timeout: must be a finite number of seconds >= 0, got inf",
        ),
        Row(
            "CircuitBreaker('db', reset_timeout='30')",
            "TypeError: reset_timeout: must be a number, got '30'",
        ),
        Row(
            "CircuitBreaker('db', half_open_max_calls=0)",
            "ValueError: half_open_max_calls: must be an integer >= 1, got 0",
        ),
        Row(
            "CircuitBreaker('db', probe_timeout=0)",
            "ValueError: probe_timeout: must be a finite number of seconds > 0, got 0",
        ),
        Row(
            "CircuitBreaker('db', probe_timeout=-5)",
            "ValueError: probe_timeout: must be a finite number of seconds > 0, got -5",
        ),
        Row(
            "CircuitBreaker('db', probe_timeout=math.inf)",
            "ValueError: probe_timeout: must be a finite number of seconds > 0, got inf",
        ),
        Row(
            "CircuitBreaker('db', probe_timeout='5')",
            "TypeError: probe_timeout: must be a number, got '5'",
        ),
        Row(
            "CircuitBreaker('db', probe_timeout=10**400)",
            (
                "ValueError: probe_timeout: must be a finite number, got "
                "1000000000000000000000000000000000000000000000000000000000000000... (401 digits)"
            ),
        ),
        Row(
            "CircuitBreaker('db', store=5)",
            "TypeError: store: must be a store URI (redis:// or unix://) or None, got int",
        ),
        Row(
            "CircuitBreaker('db', store=b'redis://h')",
            "TypeError: store: must be a store URI (redis:// or unix://) or None, got bytes",
        ),
        Row(
            "CircuitBreaker('db', store='/tmp/state.json')",
            'ValueError: store: is not a store URI, got "/tmp/state.json"',
        ),
        Row(
            "CircuitBreaker('db', store='redis://h:0')",
            'ValueError: store: must have a port from 1 to 65535, got "redis://h:0"',
        ),
        Row(
            "CircuitBreaker('db', store='redis://:secret@h:0')",
            'ValueError: store: must have a port from 1 to 65535, got "redis://***@h:0"',
        ),
        Row(
            "CircuitBreaker('db', store='redis://localhost', clock=lambda: 0.0)",
            "ValueError: clock: cannot be combined with store= (a fleet shares the system clock)",
        ),
        Row(
            "CircuitBreaker('db', poll_interval=-1)",
            "ValueError: poll_interval: must be a finite number of seconds >= 0, got -1",
        ),
        Row(
            "CircuitBreaker('db', poll_interval=math.nan)",
            "ValueError: poll_interval: must be a finite number of seconds >= 0, got NaN",
        ),
        Row(
            "CircuitBreaker('db', poll_interval='1')",
            "TypeError: poll_interval: must be a number, got '1'",
        ),
        Row(
            "CircuitBreaker('db', poll_interval=True)",
            "TypeError: poll_interval: must be a number, got True",
        ),
        Row(
            "result = CircuitBreaker('db', store='redis://:pw@localhost:1/0?key=app').store",
            "redis://:***@localhost:1/0?key=app",
        ),
        Row("result = CircuitBreaker('db').store is None", "True"),
        Row("result = CircuitBreaker('db', reset_timeout=5).probe_timeout", "30.0"),
        Row("result = CircuitBreaker('db', reset_timeout=90).probe_timeout", "90.0"),
        Row(
            "CircuitBreaker('db', success_threshold=0)",
            "ValueError: success_threshold: must be an integer >= 1, got 0",
        ),
        Row(
            "CircuitBreaker('db', failure_rate=0)",
            "ValueError: failure_rate: must be in (0, 1], got 0",
        ),
        Row(
            "CircuitBreaker('db', failure_rate=1.5)",
            "ValueError: failure_rate: must be in (0, 1], got 1.5",
        ),
        Row(
            "CircuitBreaker('db', failure_rate=math.nan)",
            "ValueError: failure_rate: must be in (0, 1], got NaN",
        ),
        Row(
            "CircuitBreaker('db', failure_rate=0.5, window=0)",
            "ValueError: window: must be a finite number of seconds > 0, got 0",
        ),
        Row(
            "CircuitBreaker('db', failure_rate=0.5, minimum_calls=0)",
            "ValueError: minimum_calls: must be an integer >= 1, got 0",
        ),
        Row(
            "CircuitBreaker('db', reset_timeout=30, max_reset_timeout=10)",
            (
                "ValueError: max_reset_timeout: must be a finite number of seconds >= "
                "reset_timeout (30), got 10"
            ),
        ),
        Row(
            "CircuitBreaker('db', max_reset_timeout=60, backoff=0.5)",
            "ValueError: backoff: must be a finite number >= 1, got 0.5",
        ),
        Row(
            "CircuitBreaker('db', exclude=5)",
            "TypeError: exclude: must be an exception type or a tuple of them, got 5",
        ),
        Row(
            "CircuitBreaker('db', exclude=(KeyError, 5))",
            "TypeError: exclude: 5 is not an exception type",
        ),
        Row(
            "CircuitBreaker('db', exclude=int)",
            "TypeError: exclude: <class 'int'> is not an exception type",
        ),
        Row(
            "CircuitBreaker('db', fallback=5)",
            "TypeError: fallback: must be callable or None, got 5",
        ),
        Row("CircuitBreaker('db', clock=5)", "TypeError: clock: must be callable or None, got 5"),
        Row(
            "CircuitBreaker('db', clock=lambda: 'now').state",
            "TypeError: clock: must return a number of seconds, got 'now'",
        ),
        Row(
            "CircuitBreaker('db', clock=lambda: math.nan).state",
            "ValueError: clock: must return a finite number of seconds, got NaN",
        ),
        Row("CircuitBreaker('db').call(5)", "TypeError: func: must be callable, got 5"),
        Row("CircuitBreaker('db').add_listener(5)", "TypeError: listener: must be callable, got 5"),
        Row(
            "CircuitBreaker('db').remove_listener(print)",
            "ValueError: listener: not registered: <built-in function print>",
        ),
    ],
    "HealthChecks": [
        Row(
            "HealthChecks(cache_ttl=-1)",
            "ValueError: cache_ttl: must be a finite number >= 0, got -1",
        ),
        Row(
            "HealthChecks(cache_ttl=math.nan)",
            "ValueError: cache_ttl: must be a finite number >= 0, got nan",
        ),
        Row(
            "HealthChecks(cache_ttl='1')",
            "TypeError: cache_ttl: expected a number of seconds, got '1'",
        ),
        Row(
            "HealthChecks(cache_ttl=True)",
            "TypeError: cache_ttl: expected a number of seconds, got True",
        ),
        Row(
            "HealthChecks(show_details='yes')",
            "TypeError: show_details: expected a bool, got 'yes'",
        ),
        Row(
            "HealthChecks(fail_during_maintenance=1)",
            "TypeError: fail_during_maintenance: expected a bool, got 1",
        ),
        Row(
            "HealthChecks(default_timeout=0)",
            "ValueError: default_timeout: must be a finite number > 0, got 0",
        ),
        Row(
            "HealthChecks(default_timeout=math.inf)",
            "ValueError: default_timeout: must be a finite number > 0, got inf",
        ),
        Row(
            "HealthChecks(clock=5)",
            "TypeError: clock: expected a callable returning seconds, got 5",
        ),
        Row("HealthChecks().add(5, print)", "TypeError: name: expected a str, got 5"),
        Row("HealthChecks().add('  ', print)", "ValueError: name: must not be empty, got '  '"),
        Row(
            "HealthChecks().add('db', 5)",
            "TypeError: check: expected a zero-argument callable, got 5",
        ),
        Row(
            "HealthChecks().add('db', print, timeout=0)",
            "ValueError: timeout: must be a finite number > 0, got 0",
        ),
        Row(
            "HealthChecks().add('db', print, critical='yes')",
            "TypeError: critical: expected a bool, got 'yes'",
        ),
        Row(
            "health = HealthChecks(); health.add('db', print); health.add('db', print)",
            "ValueError: name: a check named 'db' is already registered",
        ),
        Row(
            "HealthChecks().add_breaker(5)",
            "TypeError: breaker: expected an object with name, state and retry_after, got 5",
        ),
        Row(
            (
                "health = HealthChecks(); b = CircuitBreaker('db'); health.add_breaker(b); "
                "health.add_breaker(b)"
            ),
            "ValueError: breaker: a breaker named 'db' is already registered",
        ),
        Row(
            "HealthChecks().readiness(maintenance=5)",
            "TypeError: maintenance: expected an object with status(), got 5",
        ),
    ],
    "ErrorPages": [
        Row(
            "ErrorPages(messages=['overload'])",
            "TypeError: messages: must be a mapping of reason to text, got ['overload']",
        ),
        Row(
            "ErrorPages(messages={'overlaod': 'typo'})",
            (
                "ValueError: messages: unknown reason 'overlaod'; expected one of ('overload', "
                "'maintenance', 'dependency', 'draining')"
            ),
        ),
        Row(
            "ErrorPages(messages={'overload': 3})",
            "TypeError: messages: the 'overload' message must be a str, got 3",
        ),
        Row("ErrorPages(template=5)", "TypeError: template: must be a str, got 5"),
        Row(
            "ErrorPages(template='<p>$mesage</p>')",
            "ValueError: template: bad placeholder ('mesage')",
        ),
        Row(
            "ErrorPages(template='<p>${message</p>')",
            (
                "ValueError: template: bad placeholder (Invalid placeholder in string: line 1, "
                "col 4)"
            ),
        ),
        Row(
            "ErrorPages(template='<p>$</p>')",
            (
                "ValueError: template: bad placeholder (Invalid placeholder in string: line 1, "
                "col 4)"
            ),
        ),
        Row("ErrorPages(status_url=5)", "TypeError: status_url: must be a str, got 5"),
        Row(
            "ErrorPages(status_url='javascript:alert(1)')",
            (
                "ValueError: status_url: must be an http(s) URL with a host or a path on this "
                "site starting with one '/', got 'javascript:alert(1)'"
            ),
        ),
        Row(
            "ErrorPages(status_url='status.example.com')",
            (
                "ValueError: status_url: must be an http(s) URL with a host or a path on this "
                "site starting with one '/', got 'status.example.com'"
            ),
        ),
        Row(
            "ErrorPages(status_url='https:evil.example')",
            (
                "ValueError: status_url: must be an http(s) URL with a host or a path on this "
                "site starting with one '/', got 'https:evil.example'"
            ),
        ),
        Row(
            "ErrorPages(status_url='//evil.example')",
            (
                "ValueError: status_url: must not start with '//', a link to another host, got "
                "'//evil.example'"
            ),
        ),
        Row(
            "ErrorPages(status_url='/\\\\evil.example')",
            (
                "ValueError: status_url: must not hold spaces, backslashes or control "
                "characters (browsers read them as another link), got '/\\\\evil.example'"
            ),
        ),
        Row(
            "ErrorPages(status_url='/\\t/evil.example')",
            (
                "ValueError: status_url: must not hold spaces, backslashes or control "
                "characters (browsers read them as another link), got '/\\t/evil.example'"
            ),
        ),
        Row("ErrorPages(status_url='HTTPS://status.example.com') and None", "accepted"),
        Row(
            "ErrorPages().render('typo', retry_after=1)",
            (
                "ValueError: reason: must be one of ('overload', 'maintenance', 'dependency', "
                "'draining'), got 'typo'"
            ),
        ),
    ],
    "asgi.TideGateMiddleware": [
        Row("AsgiMiddleware(5)", "TypeError: app: must be an ASGI app (a callable), got 5"),
        Row(
            "AsgiMiddleware(asgi_app, gate_websockets='yes')",
            "TypeError: gate_websockets: must be a bool, got 'yes'",
        ),
        Row(
            "AsgiMiddleware(asgi_app, gate_websockets=1)",
            "TypeError: gate_websockets: must be a bool, got 1",
        ),
        Row(
            "AsgiMiddleware(asgi_app, limt=8)",
            "TypeError: TideGateMiddleware: unknown option 'limt'",
        ),
    ],
    "TideGateMiddleware": [
        Row("TideGateMiddleware(5)", "TypeError: app: must be a WSGI callable, got 5"),
        Row(
            "TideGateMiddleware(app, metrics_path='metrics')",
            "ValueError: metrics_path: must be a path starting with '/', got 'metrics'",
        ),
        Row(
            "TideGateMiddleware(app, metrics_path=b'/metrics')",
            "TypeError: metrics_path: must be a str, got b'/metrics'",
        ),
        Row(
            "TideGateMiddleware(app, metrics_path='/health')",
            "ValueError: metrics_path: '/health' is already the health_path or live_path",
        ),
        Row(
            "TideGateMiddleware(app, metrics='yes')",
            "TypeError: metrics: must be True, False or None, got 'yes'",
        ),
        Row(
            "TideGateMiddleware(app, metrics=False, metrics_path='/metrics')",
            "ValueError: metrics_path: serving metrics needs metrics=True or None",
        ),
        Row(
            "TideGateMiddleware(app, limt=8)",
            "TypeError: TideGateMiddleware: unknown option 'limt'",
        ),
        Row(
            "TideGateMiddleware(app, limit=0)",
            "ValueError: limit: must be an integer >= 1, got 0",
        ),
        Row(
            "TideGateMiddleware(app, limit='8')",
            "TypeError: limit: must be an int or 'auto', got '8'",
        ),
        Row(
            "TideGateMiddleware(app, limit='AUTO')",
            "TypeError: limit: must be an int or 'auto', got 'AUTO'",
        ),
        Row(
            "TideGateMiddleware(app, limit='auto', gate=AdaptiveGate())",
            "ValueError: limit: give either limit or gate, not both",
        ),
        Row("result = TideGateMiddleware(app, limit='auto').gate.algorithm", "gradient2"),
        Row(
            "TideGateMiddleware(app, max_queue_time=0)",
            "ValueError: max_queue_time: must be seconds > 0 and at most 600, got 0",
        ),
        Row(
            "TideGateMiddleware(app, max_queue_time=-1)",
            "ValueError: max_queue_time: must be seconds > 0 and at most 600, got -1",
        ),
        Row(
            "TideGateMiddleware(app, max_queue_time=math.nan)",
            "ValueError: max_queue_time: must be seconds > 0 and at most 600, got nan",
        ),
        Row(
            "TideGateMiddleware(app, max_queue_time=math.inf)",
            "ValueError: max_queue_time: must be seconds > 0 and at most 600, got inf",
        ),
        Row(
            "TideGateMiddleware(app, max_queue_time=3600)",
            "ValueError: max_queue_time: must be seconds > 0 and at most 600, got 3600",
        ),
        Row(
            "TideGateMiddleware(app, max_queue_time='0.5')",
            "TypeError: max_queue_time: must be a number of seconds or None, got '0.5'",
        ),
        Row(
            "TideGateMiddleware(app, max_queue_time=True)",
            "TypeError: max_queue_time: must be a number of seconds or None, got True",
        ),
        Row(
            "TideGateMiddleware(app, priority='critical')",
            "TypeError: priority: must be a callable of the request or None, got 'critical'",
        ),
        Row(
            "TideGateMiddleware(app, priority_shares={'sheddable': 0})",
            "ValueError: priority_shares: sheddable must be a fraction in (0, 1], got 0",
        ),
        Row(
            "TideGateMiddleware(app, priority_shares={'sheddable': 1.5})",
            "ValueError: priority_shares: sheddable must be a fraction in (0, 1], got 1.5",
        ),
        Row(
            "TideGateMiddleware(app, priority_shares={'sheddable': math.nan})",
            "ValueError: priority_shares: sheddable must be a fraction in (0, 1], got nan",
        ),
        Row(
            "TideGateMiddleware(app, priority_shares={'sheddable': '0.5'})",
            "TypeError: priority_shares: sheddable must be a number, got '0.5'",
        ),
        Row(
            "TideGateMiddleware(app, priority_shares={'low': 0.5})",
            (
                "ValueError: priority_shares: levels are 'critical', 'default' and 'sheddable', "
                "got 'low'"
            ),
        ),
        Row(
            "TideGateMiddleware(app, priority_shares={'default': 0.4})",
            (
                "ValueError: priority_shares: must not give a lower level more of the limit than "
                "a higher one, got {'critical': 1.0, 'default': 0.4, 'sheddable': 0.5}"
            ),
        ),
        Row(
            "TideGateMiddleware(app, priority_shares=[0.5])",
            (
                "TypeError: priority_shares: must be a dict of level -> fraction of the limit, "
                'such as {"sheddable": 0.5}, got [0.5]'
            ),
        ),
        Row(
            "TideGateMiddleware(app, priority_header='')",
            "ValueError: priority_header: must be a header name, got ''",
        ),
        Row(
            "TideGateMiddleware(app, priority_header='X Priority')",
            "ValueError: priority_header: must be a header name, got 'X Priority'",
        ),
        Row(
            "TideGateMiddleware(app, priority_header=5)",
            "TypeError: priority_header: must be a str, got 5",
        ),
        Row(
            "TideGateMiddleware(app, limit=2, gate=CapacityGate(2))",
            "ValueError: limit: give either limit or gate, not both",
        ),
        Row(
            "TideGateMiddleware(app, gate=3)",
            "TypeError: gate: must be a CapacityGate or an AdaptiveGate, got 3",
        ),
        Row(
            "TideGateMiddleware(app, maintenance=42)",
            (
                "TypeError: maintenance: must be a MaintenanceSwitch, a state-file path, None (the "
                "default switch) or False (no switch), got 42"
            ),
        ),
        Row(
            "TideGateMiddleware(app, maintenance=True)",
            (
                "TypeError: maintenance: must be a MaintenanceSwitch, a state-file path, None (the "
                "default switch) or False (no switch), got True"
            ),
        ),
        Row(
            "TideGateMiddleware(app, maintenance=0)",
            (
                "TypeError: maintenance: must be a MaintenanceSwitch, a state-file path, None (the "
                "default switch) or False (no switch), got 0"
            ),
        ),
        Row(
            "TideGateMiddleware(app, maintenance='')",
            "ValueError: maintenance: store: must not be empty, got ''",
        ),
        Row(
            "TideGateMiddleware(app, exempt_paths='/health')",
            "TypeError: exempt_paths: must be an iterable of paths, got '/health'",
        ),
        Row(
            "TideGateMiddleware(app, exempt_paths=['health'])",
            "ValueError: exempt_paths: must be a path starting with '/', got 'health'",
        ),
        Row(
            "TideGateMiddleware(app, health=5)",
            "TypeError: health: must be a HealthChecks, got 5",
        ),
        Row(
            "TideGateMiddleware(app, health_path='health')",
            "ValueError: health_path: must be a path starting with '/', got 'health'",
        ),
        Row("TideGateMiddleware(app, live_path=5)", "TypeError: live_path: must be a str, got 5"),
        Row(
            "TideGateMiddleware(app, retry_after=-1)",
            "ValueError: retry_after: must be between 0 and 2147483648, got -1",
        ),
        Row(
            "TideGateMiddleware(app, retry_after=1.5)",
            "TypeError: retry_after: must be an int, got 1.5",
        ),
        Row(
            "TideGateMiddleware(app, retry_after=2**31 + 1)",
            "ValueError: retry_after: must be between 0 and 2147483648, got 2147483649",
        ),
        Row(
            "TideGateMiddleware(app, retry_jitter=-1)",
            "ValueError: retry_jitter: must be between 0 and 300, got -1",
        ),
        Row(
            "TideGateMiddleware(app, retry_jitter=301)",
            "ValueError: retry_jitter: must be between 0 and 300, got 301",
        ),
        Row("TideGateMiddleware(app, pages=5)", "TypeError: pages: must be an ErrorPages, got 5"),
        Row(
            "TideGateMiddleware(app, pages=ErrorPages(), status_url='/status')",
            "ValueError: pages: give either pages or messages/template/status_url",
        ),
        Row(
            "TideGateMiddleware(app, messages={'overlaod': 'typo'})",
            (
                "ValueError: messages: unknown reason 'overlaod'; expected one of ('overload', "
                "'maintenance', 'dependency', 'draining')"
            ),
        ),
        Row(
            "TideGateMiddleware(app, bypass_networks='10.0.0.0/8')",
            "TypeError: bypass_networks: must be an iterable of networks, got '10.0.0.0/8'",
        ),
        Row(
            "TideGateMiddleware(app, bypass_networks=['10.0.0.0/33'])",
            "ValueError: bypass_networks: not an IP network: '10.0.0.0/33'",
        ),
        Row(
            "TideGateMiddleware(app, bypass_networks=[5])",
            "TypeError: bypass_networks: must hold networks as str, got 5",
        ),
        Row(
            "TideGateMiddleware(app, trusted_proxies=-1)",
            "ValueError: trusted_proxies: must be between 0 and 64, got -1",
        ),
        Row(
            "TideGateMiddleware(app, trusted_proxies=65)",
            "ValueError: trusted_proxies: must be between 0 and 64, got 65",
        ),
        Row(
            "TideGateMiddleware(app, trusted_proxies='1')",
            "TypeError: trusted_proxies: must be an int, got '1'",
        ),
        Row(
            "TideGateMiddleware(app, trusted_proxies=True)",
            "TypeError: trusted_proxies: must be an int, got True",
        ),
        Row(
            "TideGateMiddleware(app, bypass_header='X-Bypass')",
            ("ValueError: bypass_header: give both bypass_header and bypass_token, or neither"),
        ),
        Row(
            "TideGateMiddleware(app, bypass_token=TOKEN)",
            ("ValueError: bypass_header: give both bypass_header and bypass_token, or neither"),
        ),
        Row(
            "TideGateMiddleware(app, bypass_header=5, bypass_token=TOKEN)",
            "TypeError: bypass_header: must be a str, got 5",
        ),
        Row(
            "TideGateMiddleware(app, bypass_header='X Bypass', bypass_token=TOKEN)",
            "ValueError: bypass_header: must be a header name, got 'X Bypass'",
        ),
        Row(
            "TideGateMiddleware(app, bypass_header='', bypass_token=TOKEN)",
            "ValueError: bypass_header: must be a header name, got ''",
        ),
        Row(
            "TideGateMiddleware(app, bypass_header='X-Bypass', bypass_token='s3cret')",
            "ValueError: bypass_token: must be a str of at least 16 characters",
        ),
        Row(
            ("TideGateMiddleware(app, bypass_header='X-Bypass', bypass_token=b'0123456789abcdef')"),
            "TypeError: bypass_token: must be a str, got bytes",
        ),
        Row(
            (
                "TideGateMiddleware(app, bypass_header='X-Bypass', bypass_token='correct horse "
                "battery staple')"
            ),
            "ValueError: bypass_token: must be visible ASCII characters only (no spaces)",
        ),
    ],
    "TideGate (Flask)": [
        Row("TideGate(limt=8)", "TypeError: TideGate: unknown option 'limt'"),
        Row(
            "flask_app.config['TIDEGATE_LIMIT'] = 0; TideGate(flask_app)",
            "ValueError: limit: must be an integer >= 1, got 0",
        ),
        Row(
            "flask_app.config['TIDEGATE_LIMIT'] = 0; TideGate(flask_app, limit=4) and None",
            "accepted",
        ),
        Row(
            "flask_app.config['TIDEGATE_MAINTENANCE'] = True; TideGate(flask_app)",
            (
                "TypeError: maintenance: must be a MaintenanceSwitch, a state-file path, None (the "
                "default switch) or False (no switch), got True"
            ),
        ),
        Row(
            "TideGate(flask_app); TideGate(flask_app)",
            "RuntimeError: tidegate is already registered on this app",
        ),
        Row("TideGate().exempt(5)", "TypeError: exempt: expected a view function, got 5"),
    ],
    "TideGateMiddleware (Django)": [
        Row(
            "django_middleware('limit=8')",
            (
                'TypeError: TIDEGATE: must be a dict of tidegate options, such as {"limit": 16}, '
                "got 'limit=8'"
            ),
        ),
        Row(
            "django_middleware(None)",
            (
                'TypeError: TIDEGATE: must be a dict of tidegate options, such as {"limit": 16}, '
                "got None"
            ),
        ),
        Row("django_middleware({'limt': 8})", "TypeError: TIDEGATE: unknown option 'limt'"),
        Row("django_middleware({1: 8})", "TypeError: TIDEGATE: option names must be str, got 1"),
        Row(
            "django_middleware({'limit': 0})",
            "ValueError: limit: must be an integer >= 1, got 0",
        ),
        Row(
            "django_middleware({'maintenance': True})",
            (
                "TypeError: maintenance: must be a MaintenanceSwitch, a state-file path, None (the "
                "default switch) or False (no switch), got True"
            ),
        ),
        Row("django_middleware({'limit': 4, 'maintenance': False}) and None", "accepted"),
        Row("django_exempt(5)", "TypeError: exempt: expected a view, got 5"),
        Row(
            "django_exempt(len)",
            (
                "TypeError: exempt: cannot mark <built-in function len> (no attributes can be set "
                "on it)"
            ),
        ),
    ],
    "CLI (tidegate)": [
        Row(
            "result = cli('maintenance', 'on', '--state', 'rediss://cache?ca=/nonexistent.pem')",
            (
                "exit 2: tidegate maintenance on: error: argument --state: store: has a ca= "
                "file /nonexistent.pem that cannot be read (I/O error: No such file or "
                'directory (os error 2)), got "rediss://cache?ca=/nonexistent.pem" (see '
                "tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'redis://127.0.0.1:1')",
            (
                "exit 1: tidegate: error: cannot write maintenance store redis://127.0.0.1:1/0:"
                " cannot connect: Connection refused (os error 111)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'status', '--state', 'redis://127.0.0.1:1')",
            (
                "exit 1: tidegate: error: maintenance store redis://127.0.0.1:1/0 is lost "
                "(cannot connect: Connection refused (os error 111))"
            ),
        ),
        Row(
            "result = cli('drain', '--state', 'unix:///nonexistent/redis.sock')",
            (
                "exit 1: tidegate: error: cannot write maintenance store "
                "unix:///nonexistent/redis.sock?db=0: cannot connect: No such file or directory"
                " (os error 2)"
            ),
        ),
        Row(
            "result = cli()",
            (
                "exit 2: tidegate: error: choose a command: maintenance, drain, page or demo "
                "(see tidegate --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on')",
            (
                "exit 2: tidegate maintenance on: error: argument --state is required (or set "
                "TIDEGATE_STATE_FILE) (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'sideways', '--state', 'STATE')",
            (
                "exit 2: tidegate maintenance: error: argument ACTION: invalid choice: "
                "'sideways' (choose from 'on', 'off', 'status') (see tidegate maintenance "
                "--help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--for', '2x')",
            (
                "exit 2: tidegate maintenance on: error: argument --for: not a duration: '2x' "
                "(use e.g. 90s, 15m, 2h, 1h30m or 1d) (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--for', '0s')",
            (
                "exit 2: tidegate maintenance on: error: argument --for: must be longer than "
                "zero, got '0s' (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--for', '-5m')",
            (
                "exit 2: tidegate maintenance on: error: argument --for: expected one argument "
                "(see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--for=-5m')",
            (
                "exit 2: tidegate maintenance on: error: argument --for: not a duration: '-5m' "
                "(use e.g. 90s, 15m, 2h, 1h30m or 1d) (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--for', '9' * 30 + 'd')",
            (
                "exit 2: tidegate maintenance on: error: argument --for: duration too long: "
                "'999999999999999999999999999999d' (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--until', 'tomorrow')",
            (
                "exit 2: tidegate maintenance on: error: argument --until: not an ISO-8"
                "601 date "
                "and time: 'tomorrow' (e.g. 2030-01-01T12:00:00Z) (see tidegate maintenance on "
                "--help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--until', '2999-01-01T12')",
            (
                "exit 2: tidegate maintenance on: error: argument --until: not an ISO-8601 "
                "date and time: '2999-01-01T12' (e.g. 2030-01-01T12:00:00Z) (see tidegate "
                "maintenance on --help)"
            ),
        ),
        Row(
            (
                "result = cli('maintenance', 'on', '--state', 'STATE', '--until', "
                "'2000-01-01T00:00Z')"
            ),
            (
                "exit 2: tidegate maintenance on: error: argument --until: '2000-01-01T00:00Z' "
                "is in the past (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            (
                "result = cli('maintenance', 'on', '--state', 'STATE', '--for', '2h', "
                "'--until', '2999-01-01T00:00Z')"
            ),
            (
                "exit 2: tidegate maintenance on: error: argument --until: not allowed with "
                "argument --for (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--retry-after', 'soon')",
            (
                "exit 2: tidegate maintenance on: error: argument --retry-after: not a "
                "duration: 'soon' (use e.g. 90s, 15m, 2h, 1h30m or 1d) (see tidegate "
                "maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--message', '\\udcff')",
            "exit 0",
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'STATE', '--message', 'x' * 70_000)",
            (
                "exit 2: tidegate maintenance on: error: message: is too long: it makes a state "
                "file of 70155 bytes, more than the 65536 every reader accepts (see tidegate "
                "maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'FOLDER')",
            (
                "exit 2: tidegate maintenance on: error: argument --state: FOLDER is a folder; "
                "name a file in it (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'on', '--state', 'FOLDER/missing/state.json')",
            (
                "exit 2: tidegate maintenance on: error: argument --state: FOLDER/missing does "
                "not exist (see tidegate maintenance on --help)"
            ),
        ),
        Row(
            "result = cli('maintenance', 'status', '--state', 'GARBAGE')",
            (
                "exit 1: tidegate: error: maintenance state file GARBAGE is not a valid state "
                "file: key must be a string at line 1 column 3"
            ),
        ),
        Row(
            "result = cli('page', '--status-url', 'javascript:alert(1)')",
            (
                "exit 2: tidegate page: error: argument --status-url: must be an http(s) URL "
                "with a host or a path on this site starting with one '/', got "
                "'javascript:alert(1)' (see tidegate page --help)"
            ),
        ),
        Row(
            "result = cli('page', '--status-url', '//evil.example')",
            (
                "exit 2: tidegate page: error: argument --status-url: must not start with "
                "'//', a link to another host, got '//evil.example' (see tidegate page --help)"
            ),
        ),
        Row(
            "result = cli('page', '--status-url', '/\\\\evil.example')",
            (
                "exit 2: tidegate page: error: argument --status-url: must not hold spaces, "
                "backslashes or control characters (browsers read them as another link), got "
                "'/\\\\evil.example' (see tidegate page --help)"
            ),
        ),
        Row(
            "result = cli('page', '--status-url', 'HTTPS://status.example.com')",
            "exit 0",
        ),
        Row(
            "result = cli('page', '--template', 'FOLDER/none.html')",
            (
                "exit 2: tidegate page: error: argument --template: cannot read it: [Errno 2] "
                "No such file or directory: 'FOLDER/none.html' (see tidegate page --help)"
            ),
        ),
        Row(
            "result = cli('page', '--template', 'TEMPLATE')",
            (
                "exit 2: tidegate page: error: argument --template: bad placeholder ('mesage') "
                "(see tidegate page --help)"
            ),
        ),
    ],
}

# -- client input -------------------------------------------------------------------------

CLIENT: dict[str, list[Row]] = {
    "Accept": [
        Row("result = maintenance_request(HTTP_ACCEPT='text/html')", "503 maintenance, HTML page"),
        Row("result = maintenance_request(HTTP_ACCEPT='text/html;q=2')", "503 maintenance, JSON"),
        Row(
            "result = maintenance_request(HTTP_ACCEPT='text/html;q=0.1234')",
            "503 maintenance, JSON",
        ),
        Row("result = maintenance_request(HTTP_ACCEPT='text/html;q=abc')", "503 maintenance, JSON"),
        Row(
            "result = maintenance_request(HTTP_ACCEPT='text/html, application/json')",
            "503 maintenance, JSON",
        ),
        Row("result = maintenance_request(HTTP_ACCEPT=';;;,,,/')", "503 maintenance, JSON"),
        Row(
            "result = maintenance_request(HTTP_ACCEPT='text/html,' * 20_000)",
            "503 maintenance, HTML page",
        ),
        Row(
            "result = maintenance_request(HTTP_ACCEPT='text/html,\\ud800')",
            "503 maintenance, HTML page",
        ),
        Row("result = maintenance_request(HTTP_ACCEPT=b'text/html')", "503 maintenance, JSON"),
        Row(
            "result = full_gate_request(HTTP_ACCEPT='text/html,\\ud800')",
            "503 overload, HTML page",
        ),
        Row("result = full_gate_request(HTTP_ACCEPT=b'text/html')", "503 overload, JSON"),
        Row("result = full_gate_request(HTTP_ACCEPT=12)", "503 overload, JSON"),
    ],
    "Peer address and X-Forwarded-For": [
        Row("result = maintenance_request(REMOTE_ADDR='10.1.2.3')", "200 from the app"),
        Row(
            "result = maintenance_request(HTTP_X_FORWARDED_FOR='10.1.2.3')",
            "503 maintenance, JSON",
        ),
        Row("result = maintenance_request(REMOTE_ADDR='::ffff:10.1.2.3')", "200 from the app"),
        Row("result = maintenance_request(REMOTE_ADDR='10.1.2.3:5000')", "503 maintenance, JSON"),
        Row("result = maintenance_request(REMOTE_ADDR='10.1.2.3\\x00')", "503 maintenance, JSON"),
        Row("result = maintenance_request(REMOTE_ADDR=None)", "503 maintenance, JSON"),
        Row("result = maintenance_request(REMOTE_ADDR=b'10.1.2.3')", "503 maintenance, JSON"),
        Row("result = behind_one_proxy(HTTP_X_FORWARDED_FOR='10.1.2.3')", "200 from the app"),
        Row(
            "result = behind_one_proxy(HTTP_X_FORWARDED_FOR='10.1.2.3, 192.0.2.7')",
            "503 maintenance, JSON",
        ),
        Row("result = behind_one_proxy(HTTP_X_FORWARDED_FOR='')", "503 maintenance, JSON"),
        Row("result = behind_one_proxy(HTTP_X_FORWARDED_FOR=' , ,')", "503 maintenance, JSON"),
        Row("result = behind_one_proxy(HTTP_X_FORWARDED_FOR='unknown')", "503 maintenance, JSON"),
        Row(
            "result = behind_one_proxy(HTTP_X_FORWARDED_FOR='[10.1.2.3]')",
            "503 maintenance, JSON",
        ),
        Row(
            "result = behind_one_proxy(HTTP_X_FORWARDED_FOR='10.1.2.3:443')",
            "503 maintenance, JSON",
        ),
        Row("result = behind_one_proxy(HTTP_X_FORWARDED_FOR=b'10.1.2.3')", "503 maintenance, JSON"),
        Row(
            ("result = behind_one_proxy(HTTP_X_FORWARDED_FOR='192.0.2.7, ' * 10_000 + '10.1.2.3')"),
            "200 from the app",
        ),
    ],
    "Bypass header": [
        Row("result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS=TOKEN)", "200 from the app"),
        Row(
            "result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS=TOKEN[:-1])",
            "503 maintenance, JSON",
        ),
        Row(
            "result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS=TOKEN + 'x')",
            "503 maintenance, JSON",
        ),
        Row(
            "result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS=TOKEN.upper())",
            "503 maintenance, JSON",
        ),
        Row("result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS='')", "503 maintenance, JSON"),
        Row(
            "result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS='\\ud800' + TOKEN)",
            "503 maintenance, JSON",
        ),
        Row(
            "result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS=TOKEN.encode())",
            "503 maintenance, JSON",
        ),
        Row(
            "result = maintenance_request(HTTP_X_MAINTENANCE_BYPASS='x' * 100_000)",
            "503 maintenance, JSON",
        ),
    ],
    "X-Request-Start (max_queue_time=0.5)": [
        Row("result = queued_request(waited=2.0)", "503 overload, JSON"),
        Row("result = queued_request(waited=0.1)", "200 from the app"),
        Row("result = queued_request(waited=2.0, unit='ms')", "503 overload, JSON"),
        Row("result = queued_request(waited=2.0, unit='us')", "503 overload, JSON"),
        Row("result = queued_request(waited=0.1, unit='us')", "200 from the app"),
        Row("result = queued_request(waited=-0.5)", "200 from the app"),
        Row("result = queued_request(waited=-3600)", "200 from the app"),
        Row("result = queued_request(waited=86400)", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=abc')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=-5')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=1e9')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=0')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=' + '9' * 400)", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='t=1.2.3')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START='\\ud800')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START=b't=1')", "200 from the app"),
        Row("result = queued_request(HTTP_X_REQUEST_START=12)", "200 from the app"),
    ],
    "Priority header (X-Priority; limit 4, 2 in flight)": [
        Row("result = half_full_request()", "200 from the app"),
        Row("result = half_full_request(HTTP_X_PRIORITY='sheddable')", "200 from the app"),
        Row(
            "result = half_full_request(HTTP_X_PRIORITY='sheddable', REMOTE_ADDR='10.1.2.3')",
            "503 overload, JSON",
        ),
        Row(
            "result = half_full_request(HTTP_X_PRIORITY=' Sheddable ', REMOTE_ADDR='10.1.2.3')",
            "503 overload, JSON",
        ),
        Row(
            "result = half_full_request(HTTP_X_PRIORITY='bogus', REMOTE_ADDR='10.1.2.3')",
            "200 from the app",
        ),
        Row(
            "result = half_full_request(HTTP_X_PRIORITY='\\ud800', REMOTE_ADDR='10.1.2.3')",
            "200 from the app",
        ),
        Row(
            "result = half_full_request(HTTP_X_PRIORITY=b'sheddable', REMOTE_ADDR='10.1.2.3')",
            "200 from the app",
        ),
        Row(
            "result = half_full_request(priority=lambda environ: 'sheddable')", "503 overload, JSON"
        ),
        Row("result = half_full_request(priority=lambda environ: 42)", "200 from the app"),
        Row("result = half_full_request(priority=lambda environ: 1 / 0)", "200 from the app"),
    ],
    "Path and method": [
        Row("result = full_gate_request(PATH_INFO='/health')", "200 from the app"),
        Row("result = full_gate_request(PATH_INFO='/health/')", "503 overload, JSON"),
        Row("result = full_gate_request(PATH_INFO='/HEALTH')", "503 overload, JSON"),
        Row("result = full_gate_request(PATH_INFO=None)", "503 overload, JSON"),
        Row("result = full_gate_request(PATH_INFO=['/health'])", "503 overload, JSON"),
        Row("result = full_gate_request(PATH_INFO=b'/health')", "503 overload, JSON"),
        Row("result = full_gate_request(PATH_INFO='/\\ud800')", "503 overload, JSON"),
        Row("result = full_gate_request(PATH_INFO='/' * 100_000)", "503 overload, JSON"),
        Row(
            "result = full_gate_request(REQUEST_METHOD='HEAD')",
            "503, headers only (Retry-After: 1)",
        ),
        Row("result = full_gate_request(REQUEST_METHOD='head')", "503 overload, JSON"),
        Row("result = full_gate_request(REQUEST_METHOD=b'HEAD')", "503 overload, JSON"),
        Row("result = full_gate_request(REQUEST_METHOD=None)", "503 overload, JSON"),
        Row(
            "result = maintenance_request(REQUEST_METHOD='HEAD')",
            "503, headers only (Retry-After: 60)",
        ),
    ],
    "Retry-After values (RetryAfter.parse)": [
        Row("result = parse('120')", "120"),
        Row("result = parse('99999999999999999999')", "2147483648"),
        Row("result = parse(' \\t 120 \\t ')", "120"),
        Row("result = parse('-5')", 'ValueError: not delay-seconds or an HTTP-date: "-5"'),
        Row("result = parse('1.5')", 'ValueError: not delay-seconds or an HTTP-date: "1.5"'),
        Row(
            "result = parse('')",
            "ValueError: empty value: expected delay-seconds or an HTTP-date",
        ),
        Row("result = parse('\\r\\n')", 'ValueError: not delay-seconds or an HTTP-date: "\\r\\n"'),
        Row("result = parse('soon')", 'ValueError: not delay-seconds or an HTTP-date: "soon"'),
        Row("result = parse('Sunday, 06-Nov-94 08:49:37 GMT')", "Sun, 06 Nov 1994 08:49:37 GMT"),
        Row("result = parse('Sun Nov  6 08:49:37 1994')", "Sun, 06 Nov 1994 08:49:37 GMT"),
        Row(
            "result = parse('sun, 06 Nov 1994 08:49:37 GMT')",
            (
                'ValueError: bad HTTP-date "sun, 06 Nov 1994 08:49:37 GMT": names are '
                'case-sensitive: "sun" must be written "Sun"'
            ),
        ),
        Row(
            "result = parse('Sun, 06 nov 1994 08:49:37 GMT')",
            (
                'ValueError: bad HTTP-date "Sun, 06 nov 1994 08:49:37 GMT": names are '
                'case-sensitive: "nov" must be written "Nov"'
            ),
        ),
        Row(
            "result = parse('Mon, 06 Nov 1994 08:49:37 GMT')",
            (
                'ValueError: bad HTTP-date "Mon, 06 Nov 1994 08:49:37 GMT": day name Mon does '
                "not match 06 Nov 1994, a Sunday"
            ),
        ),
        Row(
            "result = parse('Thu, 31 Nov 1994 08:49:37 GMT')",
            ('ValueError: bad HTTP-date "Thu, 31 Nov 1994 08:49:37 GMT": Nov 1994 has no day 31'),
        ),
        Row(
            "result = parse('Sun, 06 Nov 1994 24:00:00 GMT')",
            (
                'ValueError: bad HTTP-date "Sun, 06 Nov 1994 24:00:00 GMT": hour 24 is out of '
                "range (00 to 23)"
            ),
        ),
        Row(
            "result = parse('Sun, 06 Nov 1994 08:49:60 GMT')",
            (
                'ValueError: bad HTTP-date "Sun, 06 Nov 1994 08:49:60 GMT": second 60 i'
                "s out of "
                "range (00 to 59, or 60 at 23:59)"
            ),
        ),
        Row(
            "result = parse('Sun, 06 Nov 1994 08:49:37 UTC')",
            (
                'ValueError: bad HTTP-date "Sun, 06 Nov 1994 08:49:37 UTC": expected " GMT" at '
                "offset 25"
            ),
        ),
        Row(
            "result = parse('Sun, 06 Nov 1994 08:49:37 GMT; extra')",
            (
                'ValueError: bad HTTP-date "Sun, 06 Nov 1994 08:49:37 GMT; extra": unexpected '
                "text after the date at offset 29"
            ),
        ),
        Row(
            "result = parse('Sun, 6 Nov 1994 08:49:37 GMT')",
            (
                'ValueError: bad HTTP-date "Sun, 6 Nov 1994 08:49:37 GMT": expected a t'
                "wo-digit "
                "day at offset 5"
            ),
        ),
        Row(
            "result = parse('Fri, 31 Dec 9999 23:59:60 GMT')",
            (
                'ValueError: "Fri, 31 Dec 9999 23:59:60 GMT" is outside the years 0000 to 9999 '
                "that an HTTP-date can hold"
            ),
        ),
        Row(
            "result = parse('\\ud800')",
            "ValueError: not delay-seconds or an HTTP-date: a str with lone surrogates",
        ),
        Row(
            "result = parse('Sun, ' + 'x' * 100_000)",
            (
                'ValueError: bad HTTP-date "Sun, '
                'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"...: expected a two-digit day at '
                "offset 5"
            ),
        ),
        Row("result = parse(120)", "TypeError: text: expected a str, got int"),
    ],
    "What a health check returns or raises": [
        Row("result = readiness_with(lambda: {'lag': 3})", "200 ready, detail {'lag': 3}"),
        Row(
            "result = readiness_with(lambda: nested(5000))",
            "200 ready, detail \"{'a': {'a': {'a': {...}}}}\"",
        ),
        Row(
            "result = readiness_with(lambda: {'thing': Unrepresentable()})",
            "200 ready, detail \"{'thing': <Unrepresentable instance at 0x...>}\"",
        ),
        Row(
            "result = readiness_with(lambda: {'ratio': math.nan})",
            "200 ready, detail \"{'ratio': nan}\"",
        ),
        Row(
            "result = readiness_with(lambda: {1: 'not a str key', (2, 3): 'tuple'})",
            "200 ready, detail \"{1: 'not a str key', (2, 3): 'tuple'}\"",
        ),
        Row(
            "result = readiness_with(raising(UnprintableError()))",
            "503 unavailable, error 'UnprintableError (its message could not be read)'",
        ),
        Row(
            "result = readiness_with(raising(RuntimeError('db down')))",
            "503 unavailable, error 'RuntimeError: db down'",
        ),
    ],
    "The maintenance state file": [
        Row(
            "result = state_file_says('')",
            ("on (good); logs: maintenance state file STATE is empty; keeping the last good state"),
        ),
        Row(
            "result = state_file_says('{\"active\": tr')",
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: EOF "
                "while parsing a value at line 1 column 13; keeping the last good state"
            ),
        ),
        Row(
            "result = state_file_says('not json')",
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: "
                "expected a JSON object; keeping the last good state"
            ),
        ),
        Row(
            "result = state_file_says('[true]')",
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: "
                "expected a JSON object; keeping the last good state"
            ),
        ),
        Row(
            'result = state_file_says(\'{"active": "yes"}\')',
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: "
                'invalid type: string "yes", expected a boolean at line 1 column 16; keeping '
                "the last good state"
            ),
        ),
        Row(
            'result = state_file_says(\'{"active": true, "version": 2}\')',
            (
                "on (good); logs: maintenance state file STATE has unsupported version 2; "
                "keeping the last good state"
            ),
        ),
        Row(
            'result = state_file_says(\'{"active": true, "until": "tomorrow"}\')',
            (
                "on (good); logs: maintenance state file STATE has an until that is not an "
                'ISO-8601 date: "tomorrow"; keeping the last good state'
            ),
        ),
        Row(
            'result = state_file_says(\'{"active": true, "retry_after": -1}\')',
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: "
                "invalid value: integer `-1`, expected u64 at line 1 column 34; keeping the "
                "last good state"
            ),
        ),
        Row(
            "result = state_file_says('{\"active\": \"' + 'A' * 60_000 + '\"}')",
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: "
                "invalid type: string "
                '"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA'
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAA... "
                "at line 1 column 60013; keeping the last good state"
            ),
        ),
        Row(
            "result = state_file_says('x' * 70_000)",
            (
                "on (good); logs: maintenance state file STATE is larger than 65536 bytes; "
                "keeping the last good state"
            ),
        ),
        Row(
            "result = state_file_says(b'\\xff\\xfe')",
            (
                "on (good); logs: maintenance state file STATE is not a valid state file: "
                "expected a JSON object; keeping the last good state"
            ),
        ),
        Row(
            "result = state_file_says(directory=True)",
            (
                "on (good); logs: maintenance state file STATE is a directory; keeping "
                "the last "
                "good state"
            ),
        ),
        Row('result = state_file_says(\'{"active": false, "owner": "ops"}\')', "off; logs nothing"),
        Row(
            'result = state_file_says(\'{"active": true, "retry_after": 99999999999}\')',
            "on (None), Retry-After 2147483648; logs nothing",
        ),
    ],
}


# -- running a row -------------------------------------------------------------------------


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"from the app"]


# The page says only its reason, so that an outcome can name it.
REASON_PAGE = ErrorPages(template="<p>$reason</p>")


def describe(mw: Any, environ: dict[str, Any]) -> str:
    """One request, served the way a server does, summed up: ``200 from the app``, or
    ``503 <reason>, JSON | HTML page | headers only``."""
    captured: list[Any] = []
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "192.0.2.7"}
    body = mw(
        {**base, **environ},
        lambda status, headers, exc_info=None: captured.append((status, dict(headers))),
    )
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    status, headers = captured[-1]
    if status.startswith("200"):
        return f"200 {data.decode()}"
    if not data:
        return f"{status[:3]}, headers only (Retry-After: {headers['Retry-After']})"
    if headers["Content-Type"].startswith("text/html"):
        return f"{status[:3]} {data.decode()[3:-4]}, HTML page"
    return f"{status[:3]} {json.loads(data)['reason']}, JSON"


def maintenance_request(**environ: Any) -> str:
    """A request while maintenance is on, from 192.0.2.7 unless ``REMOTE_ADDR`` says
    otherwise; ``10.0.0.0/8`` and the bypass header with ``TOKEN`` may pass."""
    switch = MaintenanceSwitch(env_var=None)
    switch.enable()
    mw = TideGateMiddleware(
        wsgi_app,
        maintenance=switch,
        pages=REASON_PAGE,
        bypass_networks=["10.0.0.0/8"],
        bypass_header="X-Maintenance-Bypass",
        bypass_token=TOKEN,
    )
    return describe(mw, environ)


def behind_one_proxy(**environ: Any) -> str:
    """As ``maintenance_request``, with ``trusted_proxies=1`` and the proxy (198.51.100.1)
    as the peer."""
    switch = MaintenanceSwitch(env_var=None)
    switch.enable()
    mw = TideGateMiddleware(
        wsgi_app,
        maintenance=switch,
        pages=REASON_PAGE,
        bypass_networks=["10.0.0.0/8"],
        trusted_proxies=1,
    )
    return describe(mw, {"REMOTE_ADDR": "198.51.100.1", **environ})


def full_gate_request(**environ: Any) -> str:
    """A request while the gate (``limit=1``) is full."""
    mw = TideGateMiddleware(wsgi_app, limit=1, pages=REASON_PAGE)
    held = mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *args: None)
    try:
        return describe(mw, environ)
    finally:
        held.close()


def queued_request(waited: float | None = None, unit: str = "s", **environ: Any) -> str:
    """A request with ``max_queue_time=0.5`` that waited ``waited`` seconds by its
    ``X-Request-Start`` (nginx's seconds, or Heroku's milliseconds, or Apache's
    microseconds), or carries the header given."""
    if waited is not None:
        start = time.time() - waited
        value = {
            "s": f"t={start:.3f}",
            "ms": f"{start * 1e3:.0f}",
            "us": f"t={start * 1e6:.0f}",
        }[unit]
        environ["HTTP_X_REQUEST_START"] = value
    mw = TideGateMiddleware(wsgi_app, max_queue_time=0.5, pages=REASON_PAGE)
    return describe(mw, environ)


def half_full_request(priority: Any = None, **environ: Any) -> str:
    """A request while 2 of 4 slots are taken, with the priority header ``X-Priority``
    honoured from ``10.0.0.0/8``: a sheddable request may fill half the limit."""
    mw = TideGateMiddleware(
        wsgi_app,
        limit=4,
        pages=REASON_PAGE,
        priority=priority,
        priority_header="X-Priority",
        bypass_networks=["10.0.0.0/8"],
    )
    held = [mw({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda *args: None) for _ in range(2)]
    try:
        return describe(mw, environ)
    finally:
        for body in held:
            body.close()


def django_middleware(setting: object) -> Any:
    """The Django middleware, built with ``settings.TIDEGATE = setting``."""
    import django_site  # noqa: F401  (configures Django)
    from django.test import override_settings

    from tidegate.django import TideGateMiddleware as DjangoMiddleware

    with override_settings(TIDEGATE=setting):
        return DjangoMiddleware(lambda request: None)


def django_exempt(view: Any) -> Any:
    """``@tidegate.django.exempt`` on ``view``."""
    from tidegate.django import exempt

    return exempt(view)


def raising(error: BaseException) -> Any:
    """A check that raises ``error``."""

    def check() -> None:
        raise error

    return check


def readiness_with(check: Any) -> str:
    """``GET /health`` from a middleware whose only health check (``show_details=True``) is
    ``check``: the status, the readiness status, and what the body shows of the check (memory
    addresses in it elided)."""
    import re

    health = tidegate.HealthChecks(show_details=True)
    health.add("check", check)
    mw = TideGateMiddleware(wsgi_app, maintenance=False, health=health)
    captured: list[str] = []
    body = b"".join(
        mw(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/health"},
            lambda status, headers, exc_info=None: captured.append(status),
        )
    )

    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    report = json.loads(body, parse_constant=refuse)["checks"]["check"]
    shown = f"error {report['error']!r}" if "error" in report else f"detail {report['detail']!r}"
    document = json.loads(body)
    return f"{captured[-1][:3]} {document['status']}, {re.sub('0x[0-9a-f]+', '0x...', shown)}"


NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def parse(text: Any) -> str:
    """``RetryAfter.parse(text, now=2026-01-01)``, as the header value it stands for."""
    return RetryAfter.parse(text, now=NOW).header_value()


def state_file_says(content: str | bytes = "", *, directory: bool = False) -> str:
    """What a switch does when its state file, last seen saying "on", is replaced by
    ``content`` (or by a directory): whether maintenance is on, and the warning it logs."""
    warnings: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            warnings.append(record.getMessage())

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "state.json"
        switch = MaintenanceSwitch(path, env_var=None, poll_interval=0)
        switch.enable(message="good")
        handler = Catch(logging.WARNING)
        logger = logging.getLogger("tidegate")
        level = logger.level
        logger.setLevel(logging.WARNING)
        logger.addHandler(handler)
        try:
            # Swapped in by one rename, so the poller never sees it half-written or gone.
            staged = Path(folder) / "staged"
            if directory:
                (Path(folder) / "a-directory").mkdir()
                staged.symlink_to(Path(folder) / "a-directory")
            else:
                staged.write_bytes(content if isinstance(content, bytes) else content.encode())
            staged.replace(path)
            # The poller thread looks at the file: wait (boundedly) for it to warn or to
            # follow the file before reading what requests would see.
            deadline = time.monotonic() + 5
            status = switch.status()
            while not warnings and status.message == "good" and time.monotonic() < deadline:
                time.sleep(0.005)
                status = switch.status()
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        said = [w.replace(str(path), "STATE") for w in warnings]
    state = f"on ({status.message})" if status.active else "off"
    if status.active and status.message != "good":
        state += f", Retry-After {status.retry_after.header_value()}"
    return state + (f"; logs: {said[0]}" if said else "; logs nothing")


def cli(*argv: str) -> str:
    """``tidegate *argv`` run in-process with ``TIDEGATE_STATE_FILE`` unset, as its exit code
    and what it wrote to stderr. In ``argv`` and the output, ``FOLDER`` is a fresh folder,
    ``STATE`` a state file not yet written in it, ``GARBAGE`` a file holding ``{ half`` and
    ``TEMPLATE`` one holding ``<p>$mesage</p>``."""
    from tidegate.cli import main

    with tempfile.TemporaryDirectory() as folder:
        places = {
            "TEMPLATE": str(Path(folder) / "page.html"),
            "GARBAGE": str(Path(folder) / "garbage.json"),
            "STATE": str(Path(folder) / "state.json"),
            "FOLDER": folder,
        }
        Path(places["GARBAGE"]).write_text("{ half")
        Path(places["TEMPLATE"]).write_text("<p>$mesage</p>")
        args = list(argv)
        for name, place in places.items():
            args = [arg.replace(name, place) for arg in args]
        err, out = io.StringIO(), io.StringIO()
        saved = os.environ.pop("TIDEGATE_STATE_FILE", None)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                code = main(args)
        finally:
            if saved is not None:
                os.environ["TIDEGATE_STATE_FILE"] = saved
        said = err.getvalue().strip()
        for name, place in places.items():
            said = said.replace(place, name)
    return f"exit {code}" + (f": {said}" if said else "")


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app for the catalogue's middleware rows."""


def namespace() -> dict[str, Any]:
    from flask import Flask

    from tidegate.flask import TideGate

    return {
        **{name: getattr(tidegate, name) for name in tidegate.__all__},
        "ErrorPages": ErrorPages,
        "TideGate": TideGate,
        "TideGateMiddleware": TideGateMiddleware,
        "AsgiMiddleware": AsgiMiddleware,
        "app": wsgi_app,
        "asgi_app": asgi_app,
        "flask_app": Flask("catalogue"),
        "TOKEN": TOKEN,
        "datetime": datetime,
        "timedelta": timedelta,
        "timezone": timezone,
        "math": math,
        "maintenance_request": maintenance_request,
        "behind_one_proxy": behind_one_proxy,
        "full_gate_request": full_gate_request,
        "queued_request": queued_request,
        "half_full_request": half_full_request,
        "parse": parse,
        "state_file_says": state_file_says,
        "cli": cli,
        "readiness_with": readiness_with,
        "raising": raising,
        "django_middleware": django_middleware,
        "django_exempt": django_exempt,
        "nested": nested,
        "Unrepresentable": Unrepresentable,
        "UnprintableError": UnprintableError,
    }


def outcome(row: Row) -> str:
    """What running ``row.code`` does: an exception as ``Type: message``, or ``result``."""
    scope = namespace()
    try:
        exec(row.code, scope)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    result = scope.get("result")
    return "accepted" if result is None else str(result)


ALL_ROWS = [
    pytest.param(row, id=f"{section}: {row.code}")
    for tables in (CONFIGURATION, CLIENT)
    for section, rows in tables.items()
    for row in rows
]


@pytest.mark.parametrize("row", ALL_ROWS)
def test_each_row_does_what_the_catalogue_says(row: Row) -> None:
    assert outcome(row) == row.outcome


# -- the document --------------------------------------------------------------------------


INTRO = """\
# Bad input

<!-- Generated from the tables in tests/test_bad_input.py by `python tests/test_bad_input.py`.
     The test suite fails when this file and the tables disagree: edit the tables, not this. -->

Every row below is code that the test suite runs, next to the exact outcome it must have: the
exception and its message, or what happens instead. The rules the rows show:

- A bad configuration is refused when the object is built (or the method is called), never
  later on a request. A value of the wrong type is a `TypeError`, a value out of range a
  `ValueError`; the message names the parameter (it starts with it) and shows the value it got.
  The one exception: a rejected `bypass_token` is never repeated, since it may be a real
  secret.
- Nothing a client sends raises into the server or changes another request's accounting:
  odd, huge, non-text or non-`str` values are ignored the safe way (no bypass, JSON rather
  than HTML, not a health route).
- A bad maintenance state file never raises: the last good state stands and one warning is
  logged, quoting at most a short excerpt of the file.
- The `tidegate` command answers a bad argument with exit status 2 and one line on stderr
  that names the option; a state file it cannot read, with exit status 1.
"""

SECTION_NOTES = {
    "CLI (tidegate)": "`cli(*argv)` runs `tidegate *argv` in-process and shows its exit status "
    "and what it wrote to stderr. `FOLDER` is a fresh folder, `STATE` a state file not yet "
    "written in it, `GARBAGE` a file holding `{ half`, `TEMPLATE` one holding "
    "`<p>$mesage</p>`.",
    "TideGate (Flask)": "`flask_app` is a fresh `Flask` app. Options read from "
    "`app.config` are checked exactly like constructor arguments.",
    "TideGateMiddleware (Django)": "`django_middleware(setting)` builds "
    "`tidegate.django.TideGateMiddleware` with `settings.TIDEGATE = setting`, as Django does "
    "when it loads `settings.MIDDLEWARE`; `django_exempt(view)` is `@tidegate.django.exempt` "
    "on `view`. Option values are checked exactly like the other adapters' arguments.",
    "Accept": "`maintenance_request(**environ)` sends one request to a `TideGateMiddleware` "
    "whose maintenance is on (peer 192.0.2.7; `bypass_networks=['10.0.0.0/8']`, "
    "`bypass_header='X-Maintenance-Bypass'`, `bypass_token=TOKEN`); `full_gate_request` "
    "sends one to a middleware whose gate (`limit=1`) is full. The outcome is the status, the "
    "reason, and whether the body is JSON, the HTML page, or nothing.",
    "Peer address and X-Forwarded-For": "`behind_one_proxy(**environ)` is "
    "`maintenance_request` with `trusted_proxies=1` and the proxy, 198.51.100.1, as the peer.",
    "Retry-After values (RetryAfter.parse)": "`parse(text)` is "
    "`RetryAfter.parse(text, now=datetime(2026, 1, 1, tzinfo=timezone.utc)).header_value()`: a "
    "`Retry-After` value as an upstream server or a client may send it.",
    "What a health check returns or raises": "`readiness_with(check)` asks `GET /health` of a "
    "`TideGateMiddleware` whose only health check, with `show_details=True`, is `check`. The "
    "outcome is the status, the readiness status and what the body shows of the check; the "
    "body is always strict JSON.",
    "The maintenance state file": "`state_file_says(content)` writes `content` over a state "
    "file that said maintenance is on with the message `good`, then asks the switch: whether "
    "maintenance is on (and with which message), and the warning it logs (`STATE` stands for "
    "the file's path).",
}


def _code(text: str) -> str:
    """``text`` as a Markdown code span that is safe inside a table cell."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_doc() -> str:
    out = [INTRO]
    for title, tables in (("Configuration", CONFIGURATION), ("Client input", CLIENT)):
        out.append(f"## {title}\n")
        for section, rows in tables.items():
            out.append(f"### {section}\n")
            if section in SECTION_NOTES:
                out.append(SECTION_NOTES[section] + "\n")
            out.append("| code | outcome |\n| --- | --- |")
            out.extend(f"| {_code(row.code)} | {_code(row.outcome)} |" for row in rows)
            out.append("")
    return "\n".join(out)


def test_the_document_matches_the_tables() -> None:
    assert DOC.read_text(encoding="utf-8") == render_doc(), (
        "docs/bad-input.md is out of date: run python tests/test_bad_input.py"
    )


def _print_outcomes() -> Iterator[str]:
    for tables in (CONFIGURATION, CLIENT):
        for section, rows in tables.items():
            for row in rows:
                actual = outcome(row)
                flag = "" if actual == row.outcome else "  <-- differs"
                yield f"[{section}] {row.code}\n    {actual}{flag}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--print"]:
        print("\n".join(_print_outcomes()))
    else:
        DOC.parent.mkdir(exist_ok=True)
        DOC.write_text(render_doc(), encoding="utf-8")
        print(f"wrote {DOC}")
