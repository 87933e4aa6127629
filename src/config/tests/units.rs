//! Durations and byte sizes: units required, parsed, bounded and shown.

use std::time::Duration;

use super::{assert_problem, parse};
use crate::config::units::{parse_size, show_duration, show_size, GIB, KIB};

#[test]
fn durations_need_a_unit() {
    for (text, needle) in [
        (
            "shutdown_timeout = 5",
            "5 has no unit; a unit is required, e.g. \"5s\" or \"5ms\"",
        ),
        (
            "shutdown_timeout = \"5\"",
            "\"5\" has no unit; a unit is required",
        ),
        (
            "shutdown_timeout = 1.5",
            "1.5 has no unit; a unit is required",
        ),
        (
            "client_idle_timeout = \"0\"",
            "\"0\" has no unit; a unit is required",
        ),
        (
            "client_idle_timeout = 0",
            "0 has no unit; a unit is required",
        ),
        ("shutdown_timeout = \"\"", "is empty"),
        ("shutdown_timeout = \"5 parsecs\"", "is not a duration"),
        ("shutdown_timeout = \"-1s\"", "is not a duration"),
        (
            "shutdown_timeout = \"400years\"",
            "longer than the maximum, 365 days",
        ),
    ] {
        let place = text.split(' ').next().unwrap();
        assert_problem(text, place, needle);
    }
}

#[test]
fn durations_are_typed() {
    let cases = [
        ("\"500ms\"", Duration::from_millis(500)),
        ("\"5s\"", Duration::from_secs(5)),
        ("\"1m\"", Duration::from_secs(60)),
        ("\" 2min \"", Duration::from_secs(120)),
        ("\"1h 30m\"", Duration::from_secs(5400)),
        ("\"1.5s\"", Duration::from_millis(1500)),
    ];
    for (written, expected) in cases {
        let settings = parse(&format!("[upstream]\ncommand_timeout = {written}\n")).unwrap();
        assert_eq!(settings.upstream.command_timeout, expected, "{written}");
    }
}

#[test]
fn zero_means_off_only_where_it_makes_sense() {
    let settings = parse("client_idle_timeout = \"0s\"\ntcp_keepalive = \"0ms\"\n").unwrap();
    assert_eq!(
        (settings.client_idle_timeout, settings.tcp_keepalive),
        (None, None)
    );
    let settings = parse("client_idle_timeout = \"30s\"\ntcp_keepalive = \"60s\"\n").unwrap();
    assert_eq!(settings.client_idle_timeout, Some(Duration::from_secs(30)));
    assert_eq!(settings.tcp_keepalive, Some(Duration::from_secs(60)));
    for place in [
        "shutdown_timeout",
        "upstream.connect_timeout",
        "upstream.command_timeout",
        "upstream.reconnect_backoff_min",
        "upstream.reconnect_backoff_max",
    ] {
        let text = match place.split_once('.') {
            Some((table, key)) => format!("[{table}]\n{key} = \"0s\"\n"),
            None => format!("{place} = \"0s\"\n"),
        };
        assert_problem(&text, place, "must be more than 0s");
    }
}

#[test]
fn keepalive_is_whole_seconds_in_the_kernels_range() {
    assert_problem(
        "tcp_keepalive = \"1500ms\"",
        "tcp_keepalive",
        "whole seconds from 1s to 32767s",
    );
    assert_problem("tcp_keepalive = \"500ms\"", "tcp_keepalive", "not 500ms");
    assert_problem(
        "tcp_keepalive = \"32768s\"",
        "tcp_keepalive",
        "not 9h 6m 8s",
    );
    assert_eq!(
        parse("tcp_keepalive = \"32767s\"").unwrap().tcp_keepalive,
        Some(Duration::from_secs(32767))
    );
}

#[test]
fn byte_sizes_are_parsed() {
    for (text, bytes) in [
        ("100B", 100),
        ("0b", 0),
        ("1KB", 1024),
        ("64kb", 65536),
        ("64KiB", 65536),
        ("64 kib", 65536),
        ("512MB", 512 << 20),
        ("512MiB", 512 << 20),
        ("1GB", 1 << 30),
        ("1gib", 1 << 30),
        ("16GiB", 16 << 30),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for (text, needle) in [
        ("64", "has no unit; a unit is required"),
        (
            "64k",
            "ambiguous (Redis reads 1k as 1000); write 64KB or 64KiB",
        ),
        ("1m", "write 1MB or 1MiB"),
        ("1.5GB", "must be whole"),
        ("-1MB", "expected a whole number and a unit"),
        ("MB", "expected a whole number and a unit"),
        ("1TB", "unknown unit \"TB\""),
        ("1 MBs", "unknown unit"),
        ("99999999999999999999GB", "too large"),
        ("17179869184GiB", "too large"),
    ] {
        let error = parse_size(text).unwrap_err();
        assert!(error.contains(needle), "{text}: {error}");
    }
    let limits = parse("[limits]\nmax_bulk_len = \"1kb\"\nmax_pending_output = \"2MB\"\n")
        .unwrap()
        .limits;
    assert_eq!(
        (limits.max_bulk_len, limits.max_pending_output),
        (1024, 2 << 20)
    );
}

#[test]
fn byte_sizes_need_a_unit_and_sane_bounds() {
    assert_problem(
        "[limits]\nmax_bulk_len = 512\n",
        "limits.max_bulk_len",
        "512 has no unit; a unit is required, e.g. \"512B\"",
    );
    assert_problem(
        "[limits]\nmax_bulk_len = \"512\"\n",
        "limits.max_bulk_len",
        "\"512\" has no unit",
    );
    assert_problem(
        "[limits]\nmax_bulk_len = \"0B\"\n",
        "limits.max_bulk_len",
        "must be between 1B and 2GiB, not \"0B\"",
    );
    assert_problem(
        "[limits]\nmax_inline_len = \"1000B\"\n",
        "limits.max_inline_len",
        "must be between 1KiB and 2GiB",
    );
    assert_problem(
        "[limits]\nmax_query_buffer = \"4GiB\"\n",
        "limits.max_query_buffer",
        "must be between 1MiB and 2GiB",
    );
    assert_problem(
        "[limits]\nmax_multibulk_len = 2147483648\n",
        "limits.max_multibulk_len",
        "must be between 1 and 2147483647",
    );
    assert_problem(
        "[limits]\nmax_reply_depth = 0\n",
        "limits.max_reply_depth",
        "must be between 1 and 10000, not 0",
    );
    assert_problem(
        "[limits]\nmax_bulk_len = \"2GiB\"\n",
        "limits.max_bulk_len",
        "2GiB is more than limits.max_query_buffer (1GiB)",
    );
}

#[test]
fn sizes_and_durations_display_readably() {
    assert_eq!(show_size(64 * KIB), "64KiB");
    assert_eq!(show_size(GIB), "1GiB");
    assert_eq!(show_size(1000), "1000B");
    assert_eq!(show_size(0), "0B");
    assert_eq!(show_duration(Duration::ZERO), "0s");
    assert_eq!(show_duration(Duration::from_millis(1500)), "1s 500ms");
}
