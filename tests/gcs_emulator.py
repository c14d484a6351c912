"""A GCS-protocol server on 127.0.0.1 for the tests, and the environment that points at it.

``gcp-storage-emulator start --in-memory`` (a test extra) serves the GCS JSON API; each
library is pointed at it the way it documents:

=============================  =============================================================
``STORAGE_EMULATOR_HOST``      gcsfs (``etils.epath``'s fsspec backend for ``gs://``) and the
                               google-cloud clients
``TENSORSTORE_GCS_HTTP_URL``   tensorstore, orbax's array store
``EPATH_USE_TF=false``         ``etils.epath`` uses fsspec/gcsfs for ``gs://`` rather than
                               TensorFlow's GCS file system, whose endpoint is compiled in
=============================  =============================================================

Nothing a test runs may send traffic beyond the loopback interface. `LOOPBACK_ONLY` is set
for the whole test session (``conftest.py``, before anything imports google-auth, which
reads it at import): credential lookups in google-auth, gcsfs and tensorstore ask the GCE
metadata server, which these variables put on a closed loopback port, and any ``gs://``
access made without the emulator goes to a closed loopback port too. `EmulatorServer.env`
adds a closed loopback HTTP(S) proxy for anything that honours the proxy variables
(TensorFlow's GCS client, libcurl, requests), so a stray request to a real endpoint fails
on 127.0.0.1 instead of leaving the machine; the emulator itself is reached directly
(``NO_PROXY``).

The emulator's media downloads lack two things of the GCS protocol that tensorstore relies
on: the ``x-goog-generation`` response header and the ``ifGenerationNotMatch`` /
``ifGenerationMatch`` preconditions (304 / 412). Without them tensorstore fails now and then
with "Malformed StorageGeneration" when it revalidates a cached OCDBT manifest. This module,
run as a script, starts the emulator with its download handler completed that way
(`_serve`); everything else is the package's own code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from cli_helpers import free_port

# A loopback port nothing listens on (discard; never bound in tests).
CLOSED = "127.0.0.1:9"

LOOPBACK_ONLY = {
    # google-auth and gcsfs compare this to the lower-case string "true".
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": CLOSED,  # google-auth
    "GCE_METADATA_IP": CLOSED,  # google-auth
    "GCE_METADATA_ROOT": CLOSED,  # google-auth (old name), tensorstore, TensorFlow
    "EPATH_USE_TF": "false",
    "STORAGE_EMULATOR_HOST": f"http://{CLOSED}",
    "TENSORSTORE_GCS_HTTP_URL": f"http://{CLOSED}",
    # gcsfs's default class asks the Storage Control gRPC API for a bucket's layout
    # (zonal/hierarchical) at first use; the emulator does not serve it.
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
}

_PROXY = {name: f"http://{CLOSED}" for name in
          ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")}
_NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class EmulatorServer:
    """``gcp-storage-emulator`` in memory on 127.0.0.1 with one bucket, ``bucket``."""

    def __init__(self, bucket: str = "detcon-test"):
        self.bucket = bucket
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen | None = None
        self._log = None

    def env(self, **extra: str) -> dict[str, str]:
        """Variables pointing every library at this server (see the module docstring)."""
        return {**LOOPBACK_ONLY, **_PROXY, **_NO_PROXY, "STORAGE_EMULATOR_HOST": self.url,
                "TENSORSTORE_GCS_HTTP_URL": self.url, **extra}

    def start(self, timeout: float = 60.0) -> EmulatorServer:
        """Starts the server and waits until it serves the bucket."""
        # Its output goes to a file: socketserver prints a traceback for every connection a
        # client drops, and an unread pipe would fill up and stall the server.
        self._log = tempfile.TemporaryFile(mode="w+")
        self._process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "start", "--host=127.0.0.1",
             f"--port={self.port}", "--in-memory", f"--default-bucket={self.bucket}", "-q"],
            stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **_NO_PROXY})
        deadline = time.monotonic() + timeout
        probe = f"{self.url}/storage/v1/b/{self.bucket}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if self._process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError(f"gcp-storage-emulator exited with status "
                                   f"{self._process.returncode}: {self._log.read()[-2000:]}")
            try:
                with opener.open(probe, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gcp-storage-emulator did not serve {probe} in {timeout}s")
            time.sleep(0.2)

    def bucket_exists(self, name: str) -> bool:
        """Whether the server holds bucket ``name`` (asked over HTTP, bypassing caches)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{self.url}/storage/v1/b/{name}", timeout=5) as response:
                return response.status == 200
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return False
            raise

    def object_names(self, prefix: str) -> list[str]:
        """Names of the objects of ``bucket`` under ``prefix`` (asked over HTTP, uncached)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        query = urllib.parse.urlencode({"prefix": prefix})
        with opener.open(f"{self.url}/storage/v1/b/{self.bucket}/o?{query}",
                         timeout=10) as response:
            return [item["name"] for item in json.load(response).get("items", [])]

    def stop(self) -> None:
        """Stops the server (its in-memory buckets are gone)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def reset_path_caches() -> None:
    """Forgets the gcsfs clients made so far (they hold the endpoint they were made with).

    etils.epath keeps one fsspec file system per scheme and fsspec keeps instances per
    argument set; both were made from the environment of their first use.
    """
    from etils.epath import backend
    from gcsfs import GCSFileSystem

    backend.fsspec_backend._get_filesystem.cache_clear()
    GCSFileSystem.clear_instance_cache()


def _serve() -> None:
    """``gcp-storage-emulator`` (same arguments) with generation-aware media downloads."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    plain_download = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"],
                                       request.params["object_id"])
        except NotFound:
            return plain_download(request, response, storage, *args, **kwargs)
        generation = str(obj["generation"])
        response["x-goog-generation"] = generation
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        if request.query.get("ifGenerationNotMatch", [None])[0] == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        match = request.query.get("ifGenerationMatch", [None])[0]
        if match is not None and match != generation:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
        return plain_download(request, response, storage, *args, **kwargs)

    # The server's routing table holds the handler functions: patch before importing it.
    objects.download = download
    from gcp_storage_emulator.__main__ import main

    main(sys.argv[1:])


if __name__ == "__main__":
    _serve()
