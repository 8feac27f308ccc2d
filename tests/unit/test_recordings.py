"""The recording store: the file backend on a real directory; the S3 backend's requests checked with botocore's
Stubber (that checks what we send, not how an S3 server answers)."""

from __future__ import annotations

import io
import os
import stat
import threading
import uuid
from pathlib import Path

import pytest

from portal.services.recordings import FileRecordingStore, RecordingStore, S3RecordingStore, session_key
from portal.settings import load_settings

SID = "0f6d1c2e-6f0e-4d8e-9c1a-2b3c4d5e6f70"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def store(tmp_path: Path) -> FileRecordingStore:
    built = RecordingStore.from_location(f"file://{tmp_path / 'recordings'}")
    assert isinstance(built, FileRecordingStore)
    return built


def test_from_settings_defaults_to_files_under_home(tmp_path: Path) -> None:
    settings = load_settings({"home": str(tmp_path), "secret_key": "k"}, environ={})
    built = RecordingStore.from_settings(settings)
    assert isinstance(built, FileRecordingStore) and built.root == tmp_path / "recordings"
    s3 = RecordingStore.from_settings(
        load_settings(
            {
                "home": str(tmp_path),
                "secret_key": "k",
                "recordings_url": "s3://audit-bucket/kaiden/recordings/",
                "s3_endpoint_url": "http://127.0.0.1:9000",
            },
            environ={},
        )
    )
    assert isinstance(s3, S3RecordingStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("audit-bucket", "kaiden/recordings", "http://127.0.0.1:9000")


@pytest.mark.parametrize("location", ["file://relative/dir", "s3://", "ftp://x/y", "/plain/path"])
def test_bad_locations_are_refused(location: str) -> None:
    with pytest.raises(ValueError):
        RecordingStore.from_location(location)


def test_chunks_are_read_back_in_seq_order(store: FileRecordingStore) -> None:
    assert not store.has(SID) and store.read(SID) == b"" and store.chunks(SID) == []
    assert store.put_chunk(SID, 2, b'[2.0, "o", "c"]\n')
    assert store.put_chunk(SID, 0, b'{"version": 2}\n')
    assert store.put_chunk(SID, 10, b'[10.0, "o", "z"]\n')
    assert store.put_chunk(SID, 1, b'[1.0, "o", "b"]\n')
    assert store.has(SID) and store.chunks(SID) == [0, 1, 2, 10]
    assert store.read(SID) == (b'{"version": 2}\n[1.0, "o", "b"]\n[2.0, "o", "c"]\n[10.0, "o", "z"]\n')
    assert sorted(os.listdir(store.root / SID)) == [
        "00000000.cast",
        "00000001.cast",
        "00000002.cast",
        "00000010.cast",
    ]


def test_put_is_idempotent_per_seq_the_first_write_wins(store: FileRecordingStore) -> None:
    assert store.put_chunk(SID, 0, b"first\n") is True
    assert store.put_chunk(SID, 0, b"second\n") is False
    assert store.read(SID) == b"first\n" and store.chunks(SID) == [0]


def test_concurrent_writers_of_one_seq_leave_one_whole_chunk(store: FileRecordingStore) -> None:
    results: list[bool] = []
    payloads = [bytes([65 + i]) * 200_000 for i in range(8)]
    barrier = threading.Barrier(len(payloads))

    def write(data: bytes) -> None:
        barrier.wait()
        results.append(store.put_chunk(SID, 3, data))

    threads = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results.count(True) == 1
    assert store.read(SID) in payloads  # whole, one writer's bytes only
    assert os.listdir(store.root / SID) == ["00000003.cast"]  # no temporary files left


def test_files_are_0600_and_directories_0700(store: FileRecordingStore) -> None:
    old = os.umask(0o002)  # a permissive umask must not widen them
    try:
        store.put_chunk(SID, 0, b"x")
    finally:
        os.umask(old)
    assert _mode(store.root) == 0o700
    assert _mode(store.root / SID) == 0o700
    assert _mode(store.root / SID / "00000000.cast") == 0o600


def test_delete_removes_the_recording(store: FileRecordingStore) -> None:
    other = str(uuid.uuid4())
    store.put_chunk(SID, 0, b"a")
    store.put_chunk(SID, 1, b"b")
    store.put_chunk(other, 0, b"keep")
    store.delete(SID)
    assert not store.has(SID) and not (store.root / SID).exists()
    store.delete(SID)  # nothing left to delete is fine
    assert store.read(other) == b"keep"


@pytest.mark.parametrize(
    "bad", ["../etc", "..", "", "/tmp/x", "0f6d1c2e-6f0e-4d8e-9c1a-2b3c4d5e6f70/../../x", "a" * 36, None, 7]
)
def test_session_ids_must_be_uuids(store: FileRecordingStore, bad: object) -> None:
    with pytest.raises(ValueError):
        store.put_chunk(bad, 0, b"x")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        store.read(bad)  # type: ignore[arg-type]
    assert not store.root.exists() or os.listdir(store.root) == []


def test_session_ids_are_canonicalized(store: FileRecordingStore) -> None:
    upper = SID.upper()
    store.put_chunk(upper, 0, b"x")
    assert store.read(uuid.UUID(SID)) == b"x" and store.read("{" + SID + "}") == b"x"
    assert os.listdir(store.root) == [SID] and session_key(upper) == SID
    assert store.path_of(upper) == f"file://{store.root}/{SID}"


@pytest.mark.parametrize("bad", [-1, 100_000_000, True, 1.0, "1"])
def test_seq_must_be_a_whole_number_in_range(store: FileRecordingStore, bad: object) -> None:
    with pytest.raises(ValueError):
        store.put_chunk(SID, bad, b"x")  # type: ignore[arg-type]


def test_only_chunk_files_count(store: FileRecordingStore) -> None:
    store.put_chunk(SID, 0, b"a")
    (store.root / SID / ".00000001.cast.abc.tmp").write_bytes(b"half")  # a crashed writer's leftover
    (store.root / SID / "notes.txt").write_bytes(b"?")
    assert store.chunks(SID) == [0] and store.read(SID) == b"a"


# ---------------------------------------------------------------- S3: our requests (botocore Stubber, not a server)


@pytest.fixture()
def stubbed():
    import boto3
    from botocore.stub import Stubber

    client = boto3.session.Session().client(
        "s3", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
    store = S3RecordingStore("audit", "kaiden/rec", client=client)
    with Stubber(client) as stubber:
        yield store, stubber
        stubber.assert_no_pending_responses()


def test_s3_put_writes_one_object_per_chunk_under_the_prefix(stubbed) -> None:
    store, stubber = stubbed
    stubber.add_response(
        "put_object",
        {"ETag": '"1"'},
        {"Bucket": "audit", "Key": f"kaiden/rec/{SID}/00000007.cast", "Body": b"data\n", "IfNoneMatch": "*"},
    )
    assert store.put_chunk(SID, 7, b"data\n") is True
    assert store.path_of(SID) == f"s3://audit/kaiden/rec/{SID}"


def test_s3_put_of_an_existing_chunk_is_not_an_error(stubbed) -> None:
    store, stubber = stubbed
    stubber.add_client_error("put_object", service_error_code="PreconditionFailed", http_status_code=412)
    assert store.put_chunk(SID, 0, b"again") is False
    stubber.add_client_error("put_object", service_error_code="AccessDenied", http_status_code=403)
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        store.put_chunk(SID, 1, b"x")


def test_s3_read_lists_pages_and_concatenates_in_seq_order(stubbed) -> None:
    store, stubber = stubbed
    base = f"kaiden/rec/{SID}/"
    stubber.add_response(
        "list_objects_v2",
        {"IsTruncated": True, "NextContinuationToken": "t1", "Contents": [{"Key": base + "00000002.cast"}]},
        {"Bucket": "audit", "Prefix": base},
    )
    stubber.add_response(
        "list_objects_v2",
        {"IsTruncated": False, "Contents": [{"Key": base + "00000000.cast"}, {"Key": base + "stray.txt"}]},
        {"Bucket": "audit", "Prefix": base, "ContinuationToken": "t1"},
    )
    from botocore.response import StreamingBody

    for seq, body in ((0, b"head\n"), (2, b"tail\n")):
        stubber.add_response(
            "get_object",
            {"Body": StreamingBody(io.BytesIO(body), len(body))},
            {"Bucket": "audit", "Key": f"{base}{seq:08d}.cast"},
        )
    assert store.read(SID) == b"head\ntail\n"


def test_s3_delete_removes_every_object_of_the_session(stubbed) -> None:
    store, stubber = stubbed
    base = f"kaiden/rec/{SID}/"
    keys = [base + f"{n:08d}.cast" for n in range(3)]
    stubber.add_response(
        "list_objects_v2",
        {"IsTruncated": False, "Contents": [{"Key": k} for k in keys]},
        {"Bucket": "audit", "Prefix": base},
    )
    stubber.add_response(
        "delete_objects",
        {},
        {"Bucket": "audit", "Delete": {"Objects": [{"Key": k} for k in keys], "Quiet": True}},
    )
    store.delete(SID)


def test_s3_without_prefix_and_bad_ids(stubbed) -> None:
    store, _ = stubbed
    bare = S3RecordingStore("b", "", client=store.client)
    assert bare.key_of(SID, 1) == f"{SID}/00000001.cast" and bare.location == "s3://b"
    with pytest.raises(ValueError):
        store.key_of("../../other", 0)
