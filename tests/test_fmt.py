"""Number formatting: rounded before the unit is chosen (never "1000ms" or "7200s"), total."""

from __future__ import annotations

import math

import pytest

from tui.fmt import clean, fmt_bytes, fmt_duration, fmt_ms, fmt_num, fmt_pct, fmt_rate, sig


@pytest.mark.parametrize(
    "ms, shown",
    [
        (0.0, "0.00ms"),
        (9.994, "9.99ms"),
        (9.996, "10.0ms"),
        (99.94, "99.9ms"),
        (99.96, "100ms"),
        (999.4, "999ms"),
        (999.5, "1.00s"),
        (999.96, "1.00s"),
        (9994.0, "9.99s"),
        (9996.0, "10.0s"),
        (99940.0, "99.9s"),
        (99960.0, "1m40s"),
        (7_200_000.0, "2h00m"),
        (-5.0, "-5.00ms"),
        (math.nan, "—"),
        (None, "—"),
        (math.inf, "∞"),
        (10**400, "∞"),
    ],
)
def test_fmt_ms_boundaries(ms: float, shown: str) -> None:
    assert fmt_ms(ms) == shown


@pytest.mark.parametrize(
    "s, shown",
    [
        (0, "0s"),
        (59.4, "59s"),
        (59.6, "1m00s"),
        (3599.6, "1h00m"),
        (7200, "2h00m"),
        (86399.6, "1d00h"),
        (90061, "1d01h"),
        (-1, "—"),
        (math.nan, "—"),
        (math.inf, "∞"),
        (10**400, "∞"),
        (1e15, "∞"),
    ],
)
def test_fmt_duration(s: float, shown: str) -> None:
    assert fmt_duration(s) == shown


def test_no_unit_is_ever_shown_at_1000_or_more() -> None:
    import re

    for i in range(1, 60_000):
        x = i * 0.0537
        for text in (fmt_ms(x), fmt_ms(x * 1000)):
            m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
            if m:
                assert float(m.group(1)) < (1000 if m.group(2) == "ms" else 100), text


def test_bytes_rates_shares_and_scalars() -> None:
    assert (
        fmt_bytes(1023.6) == "1.0 KiB"
        and fmt_bytes(512) == "512 B"
        and fmt_bytes(1024**3 * 1023.96) == "1.0 TiB"
    )
    assert fmt_bytes(None) == "—" and fmt_bytes(10**400) == "∞"
    assert fmt_rate(99.96) == "100" and fmt_rate(3.14159) == "3.14" and fmt_rate(math.inf) == "—"
    assert fmt_pct(0.4) == " 40.0%" and fmt_pct(math.inf) == "    —" and fmt_pct(1e6) == " >999%"
    assert fmt_num(1.05e-05) == "1.05e-05" and fmt_num(math.inf) == "∞" and fmt_num(None) == "—"
    assert (
        sig(1.05e-05) == 1.05e-05
        and sig(0.123456789) == 0.123457
        and sig(math.nan) is None
        and sig(10**400) is None
    )


def test_clean_escapes_controls_only() -> None:
    assert clean("forward/vrt") == "forward/vrt" and clean("é ✓ [bold]") == "é ✓ [bold]"
    assert clean("a\x1b[2Jb\x07\r\x9b") == "a\\x1b[2Jb\\x07\\r\\x9b"
