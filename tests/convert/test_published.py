"""Published checkpoints by tag (pengi_kit.convert.published): a fake weight file served from
127.0.0.1 is downloaded into the cache, resumed after a cut connection, refused with a wrong
checksum, and used from the cache offline; a missing one offline is one line naming the URL."""
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from click.testing import CliRunner

from pengi_kit.cli import main
from pengi_kit.convert import published
from pengi_kit.convert.published import Published, fetch
from pengi_kit.errors import ConversionError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Server:
    """Serves PAYLOAD at /weights.bin with range requests; ``cut`` bytes into a full response it
    closes the connection (once); records the Range header of each request."""

    def __init__(self, body: bytes = PAYLOAD) -> None:
        self.body, self.cut, self.ranges = body, None, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                header = self.headers.get("Range")
                server.ranges.append(header)
                start = int(header.split("=")[1].split("-")[0]) if header else 0
                chunk = server.body[start:]
                self.send_response(206 if header else 200)
                self.send_header("Content-Length", str(len(chunk)))
                self.end_headers()
                if server.cut is not None:
                    chunk, server.cut = chunk[: server.cut], None
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    self.connection.shutdown(2)  # the connection drops mid-file
                    return
                self.wfile.write(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/weights.bin"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _entry(url, checksum=None):
    return Published("panns", "test", url, checksum or "sha256:" + hashlib.sha256(PAYLOAD).hexdigest(), len(PAYLOAD),
                     "CC-BY 4.0", "test")


def test_download_then_the_cache(server, tmp_path):
    entry = _entry(server.url)
    path = fetch(entry, cache=tmp_path, progress=False)
    assert path == tmp_path / "panns" / "weights.bin" and path.read_bytes() == PAYLOAD
    assert fetch(entry, cache=tmp_path, progress=False) == path and len(server.ranges) == 1  # no second request


def test_a_cut_download_resumes_where_it_stopped(server, tmp_path):
    entry = _entry(server.url)
    server.cut = 300_000
    with pytest.raises(ConversionError, match=r"run it again to resume") as error:
        fetch(entry, cache=tmp_path, progress=False, timeout=5)
    assert "\n" not in str(error.value) and server.url in str(error.value)
    assert (tmp_path / "panns" / "weights.bin.part").stat().st_size == 300_000
    path = fetch(entry, cache=tmp_path, progress=False, timeout=5)
    assert server.ranges[-1] == "bytes=300000-" and path.read_bytes() == PAYLOAD


def test_a_wrong_checksum_is_refused_in_one_line(server, tmp_path):
    entry = _entry(server.url, checksum="md5:" + "0" * 32)
    with pytest.raises(ConversionError, match=r"md5 [0-9a-f]{32} is not the publisher's 0{32}; the download was removed"):
        fetch(entry, cache=tmp_path, progress=False)
    assert not list((tmp_path / "panns").iterdir())


def test_offline_the_cache_serves_and_a_missing_file_names_its_url(server, tmp_path):
    entry = _entry(server.url)
    fetch(entry, cache=tmp_path, progress=False)
    url = server.url
    server.close()  # offline from here on
    assert fetch(entry, cache=tmp_path, progress=False).read_bytes() == PAYLOAD
    with pytest.raises(ConversionError) as error:
        fetch(_entry(url.replace("weights.bin", "other.bin")), cache=tmp_path, progress=False, timeout=5)
    message = str(error.value)
    assert "\n" not in message and url.replace("weights.bin", "other.bin") in message and "by hand" in message


def test_a_file_with_no_recorded_checksum_or_size_is_fetched_and_its_md5_printed(server, tmp_path, capsys):
    """Pengi's entries until their record's md5 and size are read: the server's length tells a cut
    download, which resumes; the md5 of the whole file is printed to compare with the publisher's."""
    entry = Published("pengi", "test", server.url, None, None, "-", "the test's record")
    server.cut = 300_000
    with pytest.raises(ConversionError, match=r"300000 of 1048576 bytes.* run it again to resume"):
        fetch(entry, cache=tmp_path, progress=False, timeout=5)
    assert fetch(entry, cache=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert f"its md5 is {hashlib.md5(PAYLOAD).hexdigest()}, compare it with the test's record" in capsys.readouterr().err


def test_import_takes_a_tag(tmp_path, monkeypatch):
    """`pengi-kit import panns TAG` downloads the tag's file and imports it as a local file would be."""
    from pengi_kit.components.cnn14 import cnn14

    sd = cnn14(sample_rate=16000, width=2, clip_seconds=0.5).state_dict()
    n_fft = 512
    sd["spectrogram_extractor.stft.conv_real.weight"] = torch.zeros(n_fft // 2 + 1, 1, n_fft)
    sd["spectrogram_extractor.stft.conv_imag.weight"] = torch.zeros(n_fft // 2 + 1, 1, n_fft)
    torch.save({"model": sd}, tmp_path / "Cnn14_16k.pth")
    body = (tmp_path / "Cnn14_16k.pth").read_bytes()
    s = _Server(body)
    try:
        entry = Published("panns", "cnn14-16k-test", s.url.replace("weights.bin", "Cnn14_16k.pth"),
                          "sha256:" + hashlib.sha256(body).hexdigest(), len(body), "CC-BY 4.0", "test")
        monkeypatch.setattr(published, "PUBLISHED", [entry])
        monkeypatch.setenv("PENGI_KIT_CACHE", str(tmp_path / "cache"))
        result = CliRunner().invoke(main, ["import", "panns", "cnn14-16k-test", "--out", str(tmp_path / "enc")])
    finally:
        s.close()
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cache" / "panns" / "Cnn14_16k.pth").read_bytes() == body
    assert (tmp_path / "enc" / "component.json").is_file()
    unknown = CliRunner().invoke(main, ["import", "panns", "no-such-tag", "--out", str(tmp_path / "x")])
    assert unknown.exit_code == 2 and "not a file, nor a published tag of panns" in unknown.output


def test_the_published_table_is_well_formed():
    from pengi_kit.plugins import registry

    importers = registry().names("importer")
    assert len({(p.format, p.tag) for p in published.PUBLISHED}) == len(published.PUBLISHED)
    for entry in published.PUBLISHED:
        assert entry.format in importers and entry.url.startswith("https://")
        assert entry.licence and entry.source and "%" not in entry.filename
        if entry.checksum is None:  # Pengi's, until its record's md5 and size are read
            assert entry.size is None and "not yet recorded" in entry.source
            continue
        algorithm, value = entry.checksum.split(":")
        assert len(value) == {"md5": 32, "sha256": 64}[algorithm] and int(value, 16) >= 0 and entry.size > 0
    assert published.find("panns", "cnn14-16k").filename == "Cnn14_16k_mAP=0.438.pth"
    assert published.find("pengi", "base").filename == "base.pth"
