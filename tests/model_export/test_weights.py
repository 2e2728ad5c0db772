import hashlib
import http.server
import threading
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest

from components.errors import InputError, IntegrityError, ServiceError

torch = pytest.importorskip("torch", reason="model export needs the [export] extra")
pytest.importorskip("segment_anything")

from model_export.architectures import ARCHITECTURES  # noqa: E402
from model_export.weights import (  # noqa: E402
    OFFICIAL_CHECKPOINTS,
    OfficialCheckpoint,
    WeightsSource,
    download_checkpoint,
    load_checkpoint,
    random_sam,
    resolve_weights,
)

TINY = ARCHITECTURES["vit_tiny"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves one blob; ``failures`` 503s first; honours Range unless told not to."""

    blob = b""
    failures = 0
    cuts = 0
    """Responses that announce the whole body, send half of it and close."""
    honour_range = True
    requests: ClassVar[list[str | None]] = []

    def do_GET(self):
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        if cls.failures > 0:
            cls.failures -= 1
            self.send_error(503)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and cls.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(cls.blob) - 1}/{len(cls.blob)}")
        else:
            self.send_response(200)
        body = cls.blob[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cls.cuts > 0:
            cls.cuts -= 1
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def serve(blob: bytes, failures: int = 0, honour_range: bool = True, cuts: int = 0):
    handler = type(
        "H",
        (_Handler,),
        {
            "blob": blob,
            "failures": failures,
            "honour_range": honour_range,
            "requests": [],
            "cuts": cuts,
        },
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ckpt.pth", handler
    finally:
        server.shutdown()
        server.server_close()


def official(url: str, blob: bytes) -> OfficialCheckpoint:
    return OfficialCheckpoint(url, hashlib.sha256(blob).hexdigest(), len(blob))


BLOB = bytes(range(256)) * 4096  # 1 MiB


def test_known_digests_are_the_published_ones():
    assert OFFICIAL_CHECKPOINTS["vit_b"].url.endswith("sam_vit_b_01ec64.pth")
    assert OFFICIAL_CHECKPOINTS["vit_h"].sha256.startswith("a7bf3b02")
    assert {len(c.sha256) for c in OFFICIAL_CHECKPOINTS.values()} == {64}


def test_download_verifies_and_caches(tmp_path):
    with serve(BLOB) as (url, handler):
        path = download_checkpoint(official(url, BLOB), tmp_path, progress=None)
        assert path.read_bytes() == BLOB
        again = download_checkpoint(official(url, BLOB), tmp_path, progress=None)
        assert again == path and len(handler.requests) == 1  # served from the cache


def test_download_resumes_a_partial_file(tmp_path):
    (tmp_path / "ckpt.pth.part").write_bytes(BLOB[:300_000])
    with serve(BLOB) as (url, handler):
        path = download_checkpoint(official(url, BLOB), tmp_path, progress=None)
    assert handler.requests == ["bytes=300000-"]
    assert path.read_bytes() == BLOB


def test_download_restarts_when_the_server_ignores_ranges(tmp_path):
    (tmp_path / "ckpt.pth.part").write_bytes(b"garbage" * 10)
    with serve(BLOB, honour_range=False) as (url, _):
        path = download_checkpoint(official(url, BLOB), tmp_path, progress=None)
    assert path.read_bytes() == BLOB


def test_download_retries_server_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("components.io.network.time.sleep", lambda s: None)
    with serve(BLOB, failures=2) as (url, handler):
        path = download_checkpoint(official(url, BLOB), tmp_path, progress=None)
    assert len(handler.requests) == 3 and path.read_bytes() == BLOB
    with serve(BLOB, failures=10) as (url, _), pytest.raises(ServiceError, match="3 attempts"):
        download_checkpoint(official(url, BLOB), tmp_path / "x", retries=3, progress=None)


def test_download_with_a_wrong_digest_removes_the_file(tmp_path):
    with serve(BLOB) as (url, _):
        bad = OfficialCheckpoint(url, "0" * 64, len(BLOB))
        with pytest.raises(IntegrityError, match="expected 0000"):
            download_checkpoint(bad, tmp_path, progress=None)
    assert list(tmp_path.iterdir()) == []


def test_without_a_digest_a_cut_body_is_resumed_never_taken(tmp_path, monkeypatch):
    monkeypatch.setattr("components.io.network.time.sleep", lambda s: None)
    undigested = OfficialCheckpoint("", None, 0)
    with serve(BLOB, cuts=1) as (url, handler):
        path = download_checkpoint(replace(undigested, url=url), tmp_path, progress=None)
    assert path.read_bytes() == BLOB  # the second request resumed where the cut left off
    assert handler.requests == [None, f"bytes={len(BLOB) // 2}-"]
    with serve(BLOB, cuts=10) as (url, _), pytest.raises(ServiceError, match="3 attempts"):
        download_checkpoint(replace(undigested, url=url), tmp_path / "x", retries=3, progress=None)
    assert not (tmp_path / "x" / "ckpt.pth").exists()


def test_download_times_out_on_a_stalled_server(tmp_path):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # accepts connections, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/ckpt.pth"
    try:
        with pytest.raises(ServiceError, match="could not download"):
            download_checkpoint(
                official(url, BLOB), tmp_path, timeout=0.5, retries=2, progress=None
            )
    finally:
        listener.close()


def save_state(path: Path, seed: int = 0) -> Path:
    torch.save(random_sam(TINY, seed).state_dict(), path)
    return path


def test_checkpoint_round_trip(tmp_path):
    ckpt = save_state(tmp_path / "tiny.pth", seed=3)
    sam, info = resolve_weights(TINY, WeightsSource(checkpoint=ckpt))
    assert (
        info.kind == "checkpoint" and info.sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    )
    ref = random_sam(TINY, 3).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in sam.state_dict().items())


def test_random_weights_are_seeded_and_ignore_global_rng():
    torch.manual_seed(123)
    a = random_sam(TINY, 5).state_dict()
    torch.manual_seed(999)
    b = random_sam(TINY, 5).state_dict()
    c = random_sam(TINY, 6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_for_another_model_type_names_both(tmp_path):
    ckpt = save_state(tmp_path / "tiny.pth")
    with pytest.raises(InputError, match=r"tiny.pth does not fit model type 'vit_b'.*shapes"):
        load_checkpoint(ckpt, ARCHITECTURES["vit_b"])


def test_corrupt_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth", TINY)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00not a checkpoint" * 100)
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(corrupt, TINY)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(3)], listing)
    with pytest.raises(InputError, match="holds a list, not a state dict"):
        load_checkpoint(listing, TINY)
    truncated = tmp_path / "truncated.pth"
    full = save_state(tmp_path / "full.pth")
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="not a readable"):
        load_checkpoint(truncated, TINY)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(InputError, match="not a readable"):
        load_checkpoint(path, TINY)


def test_weights_source_rules():
    with pytest.raises(InputError, match="not both"):
        resolve_weights(TINY, WeightsSource(Path("x"), random_weights=True, seed=1))
    with pytest.raises(InputError, match="--seed only applies"):
        resolve_weights(TINY, WeightsSource(seed=1))
