"""tunefleet.storage on a local directory and on a real S3 API (moto's server on 127.0.0.1)."""

import pytest

from tunefleet import storage


@pytest.fixture
def s3_root(monkeypatch):
    """An S3 bucket on moto's threaded server; yields its s3:// URI."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer
    from tf_raynodes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="tfbucket")
    try:
        yield "s3://tfbucket/runs"
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    return str(tmp_path / "runs") if request.param == "local" else request.getfixturevalue("s3_root")


def test_join_keeps_the_uri_scheme():
    assert storage.join("s3://b/p/", "run", "eval") == "s3://b/p/run/eval"
    assert storage.join("/x/y", "run") == "/x/y/run"
    assert storage.is_remote("s3://b") and not storage.is_remote("/x") and not storage.is_remote("file:///x")


def test_files_round_trip(root, tmp_path):
    f = storage.join(root, "run", "eval", "step_000001", "metrics.json")
    assert not storage.exists(f) and storage.listdir(storage.join(root, "run")) == []
    storage.write_text_atomic(f, '{"step": 1}')
    storage.write_text_atomic(storage.join(root, "run", "eval", "step_000002", "metrics.json"), "{}")
    assert storage.read_text(f) == '{"step": 1}' and storage.is_file(f)
    assert storage.listdir(storage.join(root, "run", "eval")) == ["step_000001", "step_000002"]
    assert storage.is_dir(storage.join(root, "run", "eval"))
    log = storage.join(root, "run", "sample_ids.jsonl")
    storage.append_line(log, "a")
    storage.append_line(log, "b")
    assert storage.read_text(log) == "a\nb\n"


def test_dirs_upload_and_download(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(b"\0" * 10)
    (src / "sub" / "b.txt").write_text("b")
    dest = storage.join(root, "ckpt")
    storage.upload_dir(src, dest)
    assert storage.listdir(dest) == ["a.bin", "sub"]
    with storage.local_dir(dest) as local:
        assert (local / "sub" / "b.txt").read_text() == "b" and (local / "a.bin").stat().st_size == 10


def test_ray_storage_gives_ray_a_configured_filesystem(s3_root, tmp_path):
    path, fs = storage.ray_storage(s3_root)
    assert path == "tfbucket/runs" and fs.type_name == "s3"
    assert storage.ray_storage(str(tmp_path)) == (str(tmp_path), None)
