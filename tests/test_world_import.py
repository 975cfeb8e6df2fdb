"""Tests for training.world.importer: a real listening log becomes a contract-exact world."""

import json
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from training.core.layout import TABLE_COLUMNS, WorldPaths, coerce_table
from training.world import importer as world_import
from training.world.importer import WorldImportError, import_world

UTC = "UTC"


def _ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=UTC) if "+" not in text and "Z" not in text else pd.Timestamp(text)


def write_csv(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def write_parquet(path: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(path, index=False)
    return path


def read_world(root: Path) -> dict[str, pd.DataFrame]:
    paths = WorldPaths(root)
    return {name: pd.read_parquet(paths.table(name)) for name in TABLE_COLUMNS}


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


GOOD_EVENTS = """
    listener_id,item_id,timestamp
    u1,i1,2024-05-01T10:15:00Z
    u1,i2,2024-05-02 23:30:00+02:00
    u2,i1,2024-05-03 08:00:00
"""


# ----------------------------------------------------------------------------- good inputs


def test_required_columns_only_csv_gets_the_documented_defaults(tmp_path):
    events = write_csv(tmp_path / "events.csv", GOOD_EVENTS)
    out = tmp_path / "data" / "world"

    meta = import_world(events, out)
    world = read_world(out)

    ev = world["events"]
    assert ev["listener_id"].tolist() == ["u1", "u1", "u2"]
    assert ev["timestamp"].tolist() == [
        _ts("2024-05-01T10:15:00Z"),
        _ts("2024-05-02T21:30:00Z"),  # the +02:00 offset converted to UTC
        _ts("2024-05-03T08:00:00Z"),  # naive means UTC
    ]
    assert ev["content_type"].tolist() == ["playlist"] * 3, "no items file: playlist"
    assert ev["ms_played"].tolist() == [180_000] * 3, "no ms_played: the item's duration"
    assert ev["hour"].tolist() == [10, 21, 8], "no hour: the UTC hour of the timestamp"

    items = world["items"].set_index("item_id")
    assert sorted(items.index) == ["i1", "i2"]
    assert (items["content_type"] == "playlist").all()
    assert (items["genre"] == "unknown").all() and (items["market"] == "unknown").all()
    assert not items["is_editorial"].any()
    assert (items["duration_ms"] == 180_000).all(), "no ms_played at all: 180000"
    assert items.loc["i1", "released_at"] == _ts("2024-05-01T10:15:00Z"), "first play"
    assert items.loc["i2", "released_at"] == _ts("2024-05-02T21:30:00Z")

    listeners = world["listeners"].set_index("listener_id")
    assert sorted(listeners.index) == ["u1", "u2"]
    for column in ("market", "age_bucket", "platform"):
        assert (listeners[column] == "unknown").all()
    assert listeners.loc["u1", "signup_at"] == _ts("2024-05-01T10:15:00Z"), "first event"
    assert listeners.loc["u2", "signup_at"] == _ts("2024-05-03T08:00:00Z")

    assert meta["source"] == "imported"
    assert meta["start"] == "2024-05-01T00:00:00+00:00", "UTC midnight of the first day"
    assert meta["end"] == "2024-05-04T00:00:00+00:00", "UTC midnight after the last day"
    assert meta["counts"] == {
        "listeners": 2,
        "items": 2,
        "events": 3,
        "items_by_type": {"show": 0, "playlist": 2, "album": 0, "artist": 0},
    }
    assert meta["days"] == 3
    assert meta["inputs"] == {"events": str(events.resolve()), "items": None, "listeners": None}
    assert json.loads(WorldPaths(out).meta.read_text()) == meta
    assert not WorldPaths(out).truth.exists(), "imported worlds have no oracle"


def test_derived_duration_is_the_median_play_at_least_1000_and_fills_missing_plays(tmp_path):
    events = write_csv(
        tmp_path / "events.csv",
        """
        listener_id,item_id,timestamp,ms_played,content_type
        u1,a,2024-05-01T10:00:00Z,300000,
        u1,a,2024-05-01T11:00:00Z,100000,show
        u2,a,2024-05-01T12:00:00Z,,
        u2,b,2024-05-01T13:00:00Z,10,
        u2,c,2024-05-01T14:00:00Z,,album
        """,
    )
    out = tmp_path / "world"
    import_world(events, out)
    world = read_world(out)

    items = world["items"].set_index("item_id")
    assert items["duration_ms"].to_dict() == {"a": 200_000, "b": 1_000, "c": 180_000}
    assert items["content_type"].to_dict() == {"a": "show", "b": "playlist", "c": "album"}
    ev = world["events"]
    assert ev["ms_played"].tolist() == [300_000, 100_000, 200_000, 10, 180_000]
    assert ev["content_type"].tolist() == ["show", "show", "show", "playlist", "album"], (
        "a missing content_type takes the type given on the item's other events"
    )


def test_epoch_seconds_and_milliseconds_are_both_read_unambiguously(tmp_path):
    moment = _ts("2024-05-01T10:00:00Z")
    seconds, millis = moment.value // 10**9, moment.value // 10**6
    events = write_csv(
        tmp_path / "events.csv",
        f"""
        listener_id,item_id,timestamp
        u1,i1,{seconds}
        u1,i2,{millis}
        """,
    )
    import_world(events, tmp_path / "world")
    assert read_world(tmp_path / "world")["events"]["timestamp"].tolist() == [moment, moment]


def test_mixed_timestamp_spellings_in_one_column(tmp_path):
    events = write_csv(
        tmp_path / "events.csv",
        """
        listener_id,item_id,timestamp
        u1,i1,2024-05-01T12:00:00+02:00
        u1,i1,2024-05-01 10:00:00
        u1,i1,20240501T100000Z
        u1,i1,  2024-05-01T10:00
        u1,i1,1714557600
        """,
    )
    import_world(events, tmp_path / "world")
    stamps = read_world(tmp_path / "world")["events"]["timestamp"]
    assert (stamps == _ts("2024-05-01T10:00:00Z")).all(), (
        "a naive time after an offset one is still UTC (pandas carries the offset over)"
    )


def test_items_file_gaps_are_filled_from_the_events(tmp_path):
    events = write_csv(
        tmp_path / "events.csv",
        """
        listener_id,item_id,timestamp,ms_played,content_type
        u1,a,2024-05-02T10:00:00Z,5000,album
        u1,a,2024-05-03T10:00:00Z,7000,
        """,
    )
    items = write_csv(
        tmp_path / "items.csv",
        """
        item_id,content_type,genre,duration_ms,released_at
        a,,rock,,
        b,show,,,
        """,
    )
    listeners = write_csv(
        tmp_path / "listeners.csv",
        """
        listener_id,platform,signup_at
        u1,,
        quiet,web,
        """,
    )
    import_world(events, tmp_path / "world", items=items, listeners=listeners)
    world = read_world(tmp_path / "world")
    got = world["items"].set_index("item_id")
    assert got.loc["a"].to_dict() == {
        "content_type": "album",
        "genre": "rock",
        "market": "unknown",
        "released_at": _ts("2024-05-02T10:00:00Z"),
        "is_editorial": False,
        "duration_ms": 6000,
    }
    assert got.loc["b", "duration_ms"] == 180_000 and got.loc["b", "content_type"] == "show"
    assert world["events"]["content_type"].tolist() == ["album", "album"]
    people = world["listeners"].set_index("listener_id")
    assert people.loc["u1", "signup_at"] == _ts("2024-05-02T10:00:00Z")
    assert people.loc["u1", "platform"] == "unknown"
    assert people.loc["quiet", "signup_at"] == _ts("2024-05-02T00:00:00Z"), "no events: start"


def test_header_whitespace_extra_columns_and_na_like_text_are_handled(tmp_path):
    events = write_csv(
        tmp_path / "events.csv",
        """
         listener_id , item_id,timestamp,device
        NA,null,2024-05-01T10:00:00Z,phone
        """,
    )
    listeners = write_csv(
        tmp_path / "listeners.csv",
        """
        listener_id,market
        NA,NA
        """,
    )
    import_world(events, tmp_path / "world", listeners=listeners)
    world = read_world(tmp_path / "world")
    assert world["events"][["listener_id", "item_id"]].values.tolist() == [["NA", "null"]]
    assert world["listeners"]["market"].tolist() == ["NA"], "Namibia is not a missing value"
    assert "device" not in world["events"].columns


def test_parquet_log_with_all_optional_files_keeps_given_attributes(tmp_path):
    stockholm = pd.Timestamp("2024-05-01 12:00", tz="Europe/Stockholm")  # 10:00 UTC
    events = write_parquet(
        tmp_path / "events.parquet",
        pd.DataFrame(
            {
                "listener_id": ["u1", "u1", "u2", "u3"],
                "item_id": ["s1", "p1", "s1", "new"],
                "timestamp": [stockholm + pd.Timedelta(hours=h) for h in range(4)],
                "ms_played": pd.array([1_000, None, 2_000, None], dtype="Int64"),
                "content_type": ["show", None, None, None],
                "hour": pd.array([7, 8, None, 23], dtype="Int64"),
            }
        ),
    )
    items = write_parquet(
        tmp_path / "items.pq",
        pd.DataFrame(
            {
                "item_id": ["s1", "p1", "cold"],
                "content_type": ["show", "album", "artist"],
                "genre": ["news", "jazz", None],
                "market": ["SE", "US", "DE"],
                "released_at": pd.to_datetime(["2020-01-01", "2021-06-01", None], utc=True),
                "is_editorial": [True, False, True],
                "duration_ms": [3_600_000, 2_400_000, 60_000],
            }
        ),
    )
    listeners = write_parquet(
        tmp_path / "listeners.parquet",
        pd.DataFrame(
            {
                "listener_id": ["u1", "u9"],
                "market": ["SE", "BR"],
                "age_bucket": ["18-24", "35-44"],
                "platform": ["ios", "web"],
                "signup_at": pd.to_datetime(["2019-03-01", "2022-02-02"]),  # naive: UTC
            }
        ),
    )
    out = tmp_path / "world"
    meta = import_world(events, out, items=items, listeners=listeners)
    world = read_world(out)

    ev = world["events"]
    assert ev["timestamp"].iloc[0] == _ts("2024-05-01T10:00:00Z")
    assert ev["content_type"].tolist() == ["show", "album", "show", "playlist"]
    assert ev["ms_played"].tolist() == [1_000, 2_400_000, 2_000, 180_000], (
        "missing ms_played: the items file's duration_ms, else the derived default"
    )
    assert ev["hour"].tolist() == [7, 8, 12, 23], "given hours kept, missing one = UTC hour"

    got = world["items"].set_index("item_id")
    assert list(got.index) == ["s1", "p1", "cold", "new"]
    assert got.loc["s1"].to_dict() == {
        "content_type": "show",
        "genre": "news",
        "market": "SE",
        "released_at": _ts("2020-01-01T00:00:00Z"),
        "is_editorial": True,
        "duration_ms": 3_600_000,
    }
    assert got.loc["cold", "genre"] == "unknown"
    assert got.loc["cold", "released_at"] == _ts("2024-05-01T00:00:00Z"), "never played: start"
    assert got.loc["new", "content_type"] == "playlist" and got.loc["new", "genre"] == "unknown"

    people = world["listeners"].set_index("listener_id")
    assert list(people.index) == ["u1", "u9", "u2", "u3"]
    assert people.loc["u1"].to_dict() == {
        "market": "SE",
        "age_bucket": "18-24",
        "platform": "ios",
        "signup_at": _ts("2019-03-01T00:00:00Z"),
    }
    assert people.loc["u9", "platform"] == "web", "listeners without events are kept"
    assert people.loc["u2", "market"] == "unknown"
    assert people.loc["u2", "signup_at"] == _ts("2024-05-01T12:00:00Z")

    assert {k: meta["counts"][k] for k in ("listeners", "items", "events")} == {
        "listeners": 4,
        "items": 4,
        "events": 4,
    }
    assert meta["counts"]["items_by_type"] == {"show": 1, "playlist": 1, "album": 1, "artist": 1}
    assert meta["inputs"]["items"] == str(items.resolve())


def test_integer_ids_in_parquet_become_text(tmp_path):
    events = write_parquet(
        tmp_path / "events.parquet",
        pd.DataFrame(
            {
                "listener_id": [10, 11],
                "item_id": [7, 7],
                "timestamp": pd.to_datetime(["2024-05-01", "2024-05-02"]),
            }
        ),
    )
    import_world(events, tmp_path / "world")
    world = read_world(tmp_path / "world")
    assert world["events"]["listener_id"].tolist() == ["10", "11"]
    assert world["items"]["item_id"].tolist() == ["7"]


def test_imported_tables_match_the_contract_exactly(tmp_path):
    events = write_csv(tmp_path / "events.csv", GOOD_EVENTS)
    import_world(events, tmp_path / "world")
    for name, frame in read_world(tmp_path / "world").items():
        declared = TABLE_COLUMNS[name]
        assert list(frame.columns) == list(declared), name
        assert {c: str(t) for c, t in frame.dtypes.items()} == declared, name
        pd.testing.assert_frame_equal(coerce_table(frame, name), frame)


def test_a_second_import_replaces_the_world(tmp_path):
    out = tmp_path / "world"
    import_world(write_csv(tmp_path / "events.csv", GOOD_EVENTS), out)
    smaller = write_csv(tmp_path / "small.csv", "listener_id,item_id,timestamp\nu1,i1,2024-06-01\n")
    meta = import_world(smaller, out)
    assert meta["counts"]["events"] == 1
    assert len(read_world(out)["events"]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "small.csv", "world"]


# ------------------------------------------------------------------------------ bad inputs

HEADER = "listener_id,item_id,timestamp"
ALLOWED = "allowed: show, playlist, album, artist"

# (id, events.csv, items.csv or None, listeners.csv or None, substrings the message must hold)
BAD_CSV = [
    ("missing column", "listener_id,item_id\nu1,i1\n", None, None,
     ["events.csv", "missing required column 'timestamp'"]),
    ("empty file", "", None, None, ["events.csv", "empty"]),
    ("header only", HEADER + "\n", None, None, ["events.csv", "no data rows"]),
    ("ragged row", HEADER + "\nu1,i1\n", None, None, ["events.csv", "cannot read CSV"]),
    ("unparseable timestamp", HEADER + "\nu1,i1,2024-05-01\nu1,i1,yesterday\n", None, None,
     ["events.csv", "row 2", "column 'timestamp'", "'yesterday'"]),
    ("impossible date", HEADER + "\nu1,i1,2024-13-01\n", None, None,
     ["events.csv", "row 1", "column 'timestamp'", "cannot parse"]),
    ("empty timestamp", HEADER + "\nu1,i1,2024-05-01\nu1,i1,\n", None, None,
     ["events.csv", "row 2", "column 'timestamp'", "empty timestamp"]),
    ("ambiguous epoch", HEADER + "\nu1,i1,20240501\n", None, None,
     ["events.csv", "row 1", "column 'timestamp'", "neither epoch seconds"]),
    ("epoch beyond 2262", HEADER + "\nu1,i1,1714557600\nu1,i1,99999999999\n", None, None,
     ["events.csv", "row 2", "column 'timestamp'", "timestamp 99999999999 is neither"]),
    ("first bad timestamp of any spelling", HEADER + "\nu1,i1,soon\nu1,i1,123\n", None, None,
     ["events.csv", "row 1", "column 'timestamp'", "'soon'"]),
    ("blank timestamp", HEADER + "\nu1,i1,2024-05-01\nu1,i1,   \n", None, None,
     ["events.csv", "row 2", "column 'timestamp'", "empty timestamp"]),
    ("null listener id", HEADER + "\nu1,i1,2024-05-01\nu2,i1,2024-05-01\n,i1,2024-05-01\n",
     None, None, ["events.csv", "row 3", "column 'listener_id'", "empty id"]),
    ("id charset", HEADER + "\nu1,i1,2024-05-01\nu1,i/2,2024-05-01\n", None, None,
     ["events.csv", "row 2", "column 'item_id'", "outside [A-Za-z0-9_.:-]"]),
    ("id with a space", HEADER + "\nu 1,i1,2024-05-01\n", None, None,
     ["events.csv", "row 1", "column 'listener_id'", "'u 1'"]),
    ("id too long", HEADER + f"\nu1,{'x' * 129},2024-05-01\n", None, None,
     ["events.csv", "row 1", "column 'item_id'", "129 characters", "at most 128"]),
    ("negative ms_played", HEADER + ",ms_played\nu1,i1,2024-05-01,5\nu1,i1,2024-05-01,-1\n",
     None, None, ["events.csv", "row 2", "column 'ms_played'", "below the minimum 0"]),
    ("fractional ms_played", HEADER + ",ms_played\nu1,i1,2024-05-01,1.5\n", None, None,
     ["events.csv", "row 1", "column 'ms_played'", "not an integer"]),
    ("text ms_played", HEADER + ",ms_played\nu1,i1,2024-05-01,1\nu1,i1,2024-05-01,abc\n",
     None, None, ["events.csv", "row 2", "column 'ms_played'", "not an integer: 'abc'"]),
    ("hour out of range", HEADER + ",hour\nu1,i1,2024-05-01,24\n", None, None,
     ["events.csv", "row 1", "column 'hour'", "above the maximum 23"]),
    ("unknown content_type", HEADER + ",content_type\nu1,i1,2024-05-01,podcast\n", None, None,
     ["events.csv", "row 1", "column 'content_type'", "'podcast'", ALLOWED]),
    ("content_type changes within the log",
     HEADER + ",content_type\nu1,i1,2024-05-01,show\nu2,i2,2024-05-01,album\n"
     "u2,i1,2024-05-02,album\n", None, None,
     ["events.csv", "row 3", "column 'content_type'", "'show' on row 1"]),
    ("content_type contradicts the items file",
     HEADER + ",content_type\nu1,i2,2024-05-01,\nu1,i1,2024-05-01,show\n",
     "item_id,content_type\ni1,album\n", None,
     ["events.csv", "row 2", "column 'content_type'", "contradicts 'album'", "items.csv (row 1)"]),
    ("items file missing item_id", HEADER + "\nu1,i1,2024-05-01\n", "genre\njazz\n", None,
     ["items.csv", "missing required column 'item_id'"]),
    ("duplicate item_id", HEADER + "\nu1,i1,2024-05-01\n", "item_id\ni1\ni2\ni1\n", None,
     ["items.csv", "row 3", "column 'item_id'", "first seen on row 1"]),
    ("bad item id", HEADER + "\nu1,i1,2024-05-01\n", "item_id\ni1\ni#2\n", None,
     ["items.csv", "row 2", "column 'item_id'", "outside"]),
    ("unknown item content_type", HEADER + "\nu1,i1,2024-05-01\n",
     "item_id,content_type\ni1,song\n", None,
     ["items.csv", "row 1", "column 'content_type'", ALLOWED]),
    ("bad boolean", HEADER + "\nu1,i1,2024-05-01\n",
     "item_id,is_editorial\ni1,yes\ni2,maybe\n", None,
     ["items.csv", "row 2", "column 'is_editorial'", "not a boolean: 'maybe'"]),
    ("bad released_at", HEADER + "\nu1,i1,2024-05-01\n", "item_id,released_at\ni1,soon\n", None,
     ["items.csv", "row 1", "column 'released_at'", "'soon'"]),
    ("zero duration", HEADER + "\nu1,i1,2024-05-01\n", "item_id,duration_ms\ni1,0\n", None,
     ["items.csv", "row 1", "column 'duration_ms'", "below the minimum 1"]),
    ("duplicate listener_id", HEADER + "\nu1,i1,2024-05-01\n", None,
     "listener_id,market\nu1,SE\nu1,NO\n",
     ["listeners.csv", "row 2", "column 'listener_id'", "duplicate"]),
    ("bad signup_at", HEADER + "\nu1,i1,2024-05-01\n", None,
     "listener_id,signup_at\nu1,2024-01-01\nu2,31/12/2023\n",
     ["listeners.csv", "row 2", "column 'signup_at'", "'31/12/2023'"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "events_text, items_text, listeners_text, expected",
    [case[1:] for case in BAD_CSV],
    ids=[case[0] for case in BAD_CSV],
)
def test_bad_csv_is_rejected_naming_file_row_and_column_and_writes_nothing(
    tmp_path, events_text, items_text, listeners_text, expected
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "events.csv").write_text(events_text)
    kwargs = {}
    if items_text is not None:
        kwargs["items"] = write_csv(inputs / "items.csv", items_text)
    if listeners_text is not None:
        kwargs["listeners"] = write_csv(inputs / "listeners.csv", listeners_text)
    out = tmp_path / "data" / "world"

    with pytest.raises(WorldImportError) as caught:
        import_world(inputs / "events.csv", out, **kwargs)

    for part in expected:
        assert part in str(caught.value)
    assert not (tmp_path / "data").exists(), "nothing is created on error"


BAD_PARQUET = [
    (
        "negative ms_played",
        {"ms_played": [1, 2, -3]},
        ["events.parquet", "row 3", "column 'ms_played'", "below the minimum 0"],
    ),
    (
        "fractional ms_played",
        {"ms_played": [1.0, 2.5, 3.0]},
        ["events.parquet", "row 2", "column 'ms_played'", "not an integer"],
    ),
    (
        "null item id",
        {"item_id": ["a", None, "c"]},
        ["events.parquet", "row 2", "column 'item_id'", "empty id"],
    ),
    (
        "float ids",
        {"listener_id": [1.0, 2.0, 3.0]},
        ["events.parquet", "column 'listener_id'", "ids must be text or integers"],
    ),
    (
        "null timestamp",
        {"timestamp": pd.to_datetime(["2024-05-01", None, "2024-05-02"])},
        ["events.parquet", "row 2", "column 'timestamp'", "empty timestamp"],
    ),
    (
        "ambiguous integer timestamp",
        {"timestamp": [1_714_557_600, 20_240_501, 1_714_557_600]},
        ["events.parquet", "row 2", "column 'timestamp'", "neither epoch seconds"],
    ),
]


@pytest.mark.parametrize(
    "override, expected", [case[1:] for case in BAD_PARQUET], ids=[case[0] for case in BAD_PARQUET]
)
def test_bad_parquet_is_rejected_naming_file_row_and_column(tmp_path, override, expected):
    frame = pd.DataFrame(
        {
            "listener_id": ["u1", "u2", "u3"],
            "item_id": ["a", "b", "c"],
            "timestamp": pd.to_datetime(["2024-05-01", "2024-05-02", "2024-05-03"], utc=True),
        }
    )
    for column, values in override.items():
        frame[column] = values
    events = write_parquet(tmp_path / "events.parquet", frame)
    with pytest.raises(WorldImportError) as caught:
        import_world(events, tmp_path / "world")
    for part in expected:
        assert part in str(caught.value)
    assert not (tmp_path / "world").exists()


def test_unsupported_suffix_and_missing_file_are_named(tmp_path):
    text = write_csv(tmp_path / "events.txt", GOOD_EVENTS)
    with pytest.raises(WorldImportError, match=r"events\.txt.*unsupported file type '\.txt'"):
        import_world(text, tmp_path / "world")
    with pytest.raises(WorldImportError, match=r"nowhere\.parquet: file not found"):
        import_world(tmp_path / "nowhere.parquet", tmp_path / "world")
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(WorldImportError, match=r"broken\.parquet: cannot read parquet"):
        import_world(tmp_path / "broken.parquet", tmp_path / "world")
    events = write_csv(tmp_path / "events.csv", GOOD_EVENTS)
    with pytest.raises(WorldImportError, match=r"items\.json.*unsupported"):
        import_world(events, tmp_path / "world", items=tmp_path / "items.json")
    assert not (tmp_path / "world").exists()


def test_a_bad_import_leaves_an_existing_world_byte_identical(tmp_path):
    out = tmp_path / "world"
    import_world(write_csv(tmp_path / "events.csv", GOOD_EVENTS), out)
    before = snapshot(out)

    bad = write_csv(tmp_path / "bad.csv", HEADER + "\nu1,i1,2024-05-01\nu1,,2024-05-02\n")
    with pytest.raises(WorldImportError, match=r"bad\.csv, row 2, column 'item_id'"):
        import_world(bad, out)

    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "events.csv", "world"]


def test_a_failure_while_writing_leaves_the_old_world_and_no_staging_directory(
    tmp_path, monkeypatch
):
    out = tmp_path / "world"
    events = write_csv(tmp_path / "events.csv", GOOD_EVENTS)
    import_world(events, out)
    before = snapshot(out)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(world_import, "write_world_meta", disk_full)
    with pytest.raises(OSError, match="disk full"):
        import_world(events, out)

    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv", "world"]
