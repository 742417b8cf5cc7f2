import gzip
import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tunefleet.data.readers import BadRow, DataError, read_rows, rows_to_table


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_malformed_jsonl_line_reported_as_file_line(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", ['{"a": 1}', "", '{"a": 2 "b": 3}'])
    with pytest.raises(DataError, match=r"train\.jsonl:3: invalid JSON \(Expecting ',' delimiter"):
        read_rows(path)


def test_skip_mode_counts_bad_rows_and_warns(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", ['{"a": 1}', "not json", "[1, 2]", '{"a": 2}'])
    with pytest.warns(UserWarning, match=r"skipped 2 of 4 rows: .*train\.jsonl:2: invalid JSON"):
        result = read_rows(path, on_bad_row="skip")
    assert result.rows == [{"a": 1}, {"a": 2}]
    assert [b.line for b in result.bad_rows] == [2, 3]
    assert "expected a JSON object, got list" in result.bad_rows[1].reason


def test_validate_reason_becomes_bad_row(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ['{"a": 1}', '{"b": 1}'])
    with pytest.raises(DataError, match=r"d\.jsonl:2: missing a"):
        read_rows(path, validate=lambda r: None if "a" in r else "missing a")


def test_digest_is_sha256_of_file_bytes(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", ['{"a": 1}'])
    result = read_rows(path)
    assert result.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.path == str(path) and result.bad_rows == ()


def test_bad_row_str():
    assert str(BadRow(path="x.jsonl", line=7, reason="boom")) == "x.jsonl:7: boom"


def test_reads_json_list(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"a": 1}, {"a": 2}]))
    assert read_rows(path).rows == [{"a": 1}, {"a": 2}]


def test_json_not_a_list_is_error(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"a": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        read_rows(path)


def test_reads_jsonl_gz(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n')
    assert read_rows(path).rows == [{"a": 1}, {"a": 2}]


def test_reads_parquet_and_reports_row_index(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(rows_to_table([{"a": 1}, {"a": 2}, {"a": 3}]), path)
    assert read_rows(path).rows == [{"a": 1}, {"a": 2}, {"a": 3}]
    with pytest.raises(DataError, match=r"d\.parquet:2: two"):
        read_rows(path, validate=lambda r: "two" if r["a"] == 2 else None)


def test_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl"):
        read_rows(tmp_path / "nope.jsonl")


def test_unknown_extension_lists_supported(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a\n1\n")
    with pytest.raises(DataError, match=r"\.jsonl, \.jsonl\.gz, \.json, \.parquet"):
        read_rows(path)


def test_bad_on_bad_row_value(tmp_path):
    with pytest.raises(ValueError, match="on_bad_row"):
        read_rows(tmp_path / "d.jsonl", on_bad_row="ignore")


def test_rows_to_table():
    table = rows_to_table([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}])
    assert isinstance(table, pa.Table)
    assert table.column_names == ["a", "b"] and table.num_rows == 2
