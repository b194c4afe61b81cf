"""A fake Launchpad web service, Launchpad `+files` and Ubuntu archive pool on 127.0.0.1.

One fake for every test that needs Ubuntu uploads (test_sources_ubuntu_local.py,
test_differential.py). It is a real HTTP server answering the way the real services do, so
that kbisect's client cannot drift into calls the real API does not answer. Where each
behaviour comes from:

- /work/shared/real-layouts.md, "Launchpad and the Ubuntu archive":
  * a *source* publication's `binaryFileUrls()` takes no `include_meta` and returns plain
    URL strings (no hashes);
  * hashes come from `getPublishedBinaries()` on the source publication, then each *binary*
    publication's `binaryFileUrls(include_meta=true)`: dicts with url, size, sha1, sha256,
    and only in the `devel` web service, not `1.0`;
  * publication statuses Published/Superseded (real uploads) and Deleted/Obsolete;
  * xenial's `linux-image-extra-…` packages; builds gone from the pool stay at `+files`.
- The Launchpad source, `lib/lp/soyuz/interfaces/publishing.py` (stored copies read while
  writing this; the 2009-2022 one): `binaryFileUrls(include_meta=False)` on
  IBinaryPackagePublishingHistory is `@operation_for_version("devel")`; the source
  publication's `binaryFileUrls()` has no parameters; `getPublishedBinaries(
  active_binaries_only=True)` returns only PUBLISHED or PENDING binary publications unless
  `active_binaries_only` is false (older copies have no parameter and always filter).
- lazr.restful collections (the framework Launchpad's API is built on): pages of `entries`
  with `start`, `total_size` and `next_collection_link`, batched by `ws.start`/`ws.size`.
  Pages here are small (2 entries by default) so that paging is always exercised.

Beliefs, not checked against the real service: the text of the 400 error bodies (the real
service may even ignore an unknown `include_meta` on a source publication and answer plain
strings; the fake answers 400 so that such a call fails loudly in tests), and which fields
beyond the ones kbisect reads an entry carries.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from urllib.parse import parse_qs, urlencode, urlsplit

from tests.localhttp import serve_handler

ACTIVE = ("Published", "Pending")  # what getPublishedBinaries returns by default
WS_VERSIONS = ("devel", "1.0")
_API_RE = re.compile(r"^/api/(?P<ws>[^/]+)/ubuntu/\+archive/primary(?:/\+(?P<kind>sourcepub|binarypub)/(?P<id>\d+))?$")
_DEB_RE = re.compile(r"^(?P<name>[^_/]+)_(?P<version>[^_/]+)_(?P<arch>[^_/.]+)\.deb$")


@dataclass
class Upload:
    """One publication of a source package: an upload in one series and pocket."""

    version: str
    series: str = "focal"
    pocket: str = "Updates"
    status: str = "Published"  # Pending, Published, Superseded, Deleted, Obsolete
    debs: dict[str, bytes] = field(default_factory=dict)  # "<pkg>_<version>_<arch>.deb" -> content
    source: str = "linux"
    component: str = "main"


@dataclass
class FakeLaunchpad:
    """What the fake serves: the publications, Launchpad's +files and the archive pool."""

    uploads: list[Upload]
    pool: dict[str, bytes] = field(default_factory=dict)  # pool/<component>/l/linux/<deb>: what is still there
    page_size: int = 2
    requests: list[str] = field(default_factory=list)  # every path?query asked, for assertions

    @property
    def librarian(self) -> dict[str, bytes]:
        """Launchpad's +files: every file ever built (the pool may have dropped or altered some)."""
        return {name: data for up in self.uploads for name, data in up.debs.items()}

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run on 127.0.0.1; yields the base URL standing for all three hosts.

        URL/api/ is the API root, URL/ubuntu/ the archive, URL/launchpad/ stands for launchpad.net.
        """
        with serve_handler(_Handler, fake=self) as url:
            yield url


@contextmanager
def serve_launchpad(uploads: dict[str, list[str]]) -> Iterator[str]:
    """A fake Launchpad listing `uploads` (series -> versions, Published in Updates, no files)."""
    fake = FakeLaunchpad([Upload(v, series=s) for s, versions in uploads.items() for v in versions])
    with fake.serve() as url:
        yield url


class _Handler(http.server.BaseHTTPRequestHandler):
    server: http.server.ThreadingHTTPServer

    def log_message(self, *args) -> None:
        pass

    @property
    def fake(self) -> FakeLaunchpad:
        return self.server.fake  # type: ignore[attr-defined]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: object) -> None:
        self._send(200, json.dumps(value).encode())

    def _error(self, code: int, text: str) -> None:
        self._send(code, text.encode(), "text/plain")

    def do_GET(self) -> None:  # noqa: N802
        self.fake.requests.append(self.path)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        api = _API_RE.match(parts.path)
        if api and api["ws"] not in WS_VERSIONS:
            self._error(404, f"unknown web service version {api['ws']}")
        elif api and api["kind"] is None:
            self._archive_op(api["ws"], query)
        elif api and api["kind"] == "sourcepub":
            self._sourcepub_op(api["ws"], int(api["id"]), query)
        elif api:
            self._binarypub_op(api["ws"], int(api["id"]), query)
        elif parts.path.startswith("/launchpad/ubuntu/+archive/primary/+files/"):
            self._file(self.fake.librarian, parts.path.rsplit("/", 1)[1])
        elif re.match(r"^/ubuntu/pool/[a-z]+/l/linux/[^/]+$", parts.path):
            self._file(self.fake.pool, parts.path.rsplit("/", 1)[1])
        else:
            self._error(404, "Not found")

    def _file(self, files: dict[str, bytes], name: str) -> None:
        if name in files:
            self._send(200, files[name], "application/x-debian-package")
        else:
            self._error(404, "Not found")

    # -- the archive: getPublishedSources -------------------------------------------------

    def _archive_op(self, ws: str, query: dict[str, str]) -> None:
        if query.get("ws.op") != "getPublishedSources":
            self._error(400, f"No such operation: {query.get('ws.op')}")
            return
        rows = list(enumerate(self.fake.uploads))
        name = query.get("source_name")
        if name:
            exact = query.get("exact_match", "false") == "true"
            rows = [(i, u) for i, u in rows if (u.source == name if exact else name in u.source)]
        if "distro_series" in query:
            series = re.match(r"^https?://[^/]+/api/[^/]+/ubuntu/([a-z]+)$", query["distro_series"])
            if not series:
                self._error(400, f"distro_series: not a link to a distro series: {query['distro_series']}")
                return
            rows = [(i, u) for i, u in rows if u.series == series[1]]
        for key, attr in (("version", "version"), ("status", "status"), ("pocket", "pocket")):
            if key in query:
                rows = [(i, u) for i, u in rows if getattr(u, attr) == query[key]]
        rows.reverse()  # newest publication first, as Launchpad orders them
        self._page(ws, "ubuntu/+archive/primary", query, [self._source_entry(ws, i, u) for i, u in rows])

    def _page(self, ws: str, path: str, query: dict[str, str], entries: list[dict]) -> None:
        """One batch of a collection: `ws.start`/`ws.size` (capped at the fake's page size)."""
        start = int(query.get("ws.start", "0"))
        size = min(int(query.get("ws.size", str(self.fake.page_size))), self.fake.page_size)
        page: dict = {"start": start, "total_size": len(entries), "entries": entries[start:start + size]}
        if start + size < len(entries):
            nxt = {**query, "ws.size": str(size), "memo": str(start + size), "ws.start": str(start + size)}
            page["next_collection_link"] = f"{self.base}api/{ws}/{path}?{urlencode(nxt)}"
        if start > 0:
            prev = {**query, "ws.size": str(size), "ws.start": str(max(0, start - size))}
            page["prev_collection_link"] = f"{self.base}api/{ws}/{path}?{urlencode(prev)}"
        self._json(page)

    def _source_entry(self, ws: str, index: int, up: Upload) -> dict:
        api = f"{self.base}api/{ws}/"
        return {"self_link": f"{api}ubuntu/+archive/primary/+sourcepub/{index}",
                "resource_type_link": f"{api}#source_package_publishing_history",
                "display_name": f"{up.source} {up.version} in {up.series}",
                "source_package_name": up.source, "source_package_version": up.version,
                "status": up.status, "pocket": up.pocket, "component_name": up.component,
                "section_name": "devel", "distro_series_link": f"{api}ubuntu/{up.series}",
                "archive_link": f"{api}ubuntu/+archive/primary", "date_published": "2020-04-23T12:00:00+00:00"}

    # -- a source publication: binaryFileUrls, getPublishedBinaries ------------------------

    def _upload(self, index: int) -> Upload | None:
        return self.fake.uploads[index] if 0 <= index < len(self.fake.uploads) else None

    def _sourcepub_op(self, ws: str, index: int, query: dict[str, str]) -> None:
        up = self._upload(index)
        if up is None:
            self._error(404, "Object not found")
        elif query.get("ws.op") == "binaryFileUrls":
            if "include_meta" in query:
                # a source publication's binaryFileUrls() has no parameters (real-layouts.md)
                self._error(400, "include_meta: unknown parameter for binaryFileUrls on a source publication")
            else:
                self._json([f"{self.base}launchpad/ubuntu/+archive/primary/+files/{n}" for n in up.debs])
        elif query.get("ws.op") == "getPublishedBinaries":
            entries = [self._binary_entry(ws, index, j, up, name) for j, name in enumerate(up.debs)]
            if query.get("active_binaries_only", "true") != "false":
                entries = [e for e in entries if e["status"] in ACTIVE]
            self._page(ws, f"ubuntu/+archive/primary/+sourcepub/{index}", query, entries)
        else:
            self._error(400, f"No such operation: {query.get('ws.op')}")

    def _binary_entry(self, ws: str, index: int, j: int, up: Upload, deb: str) -> dict:
        api = f"{self.base}api/{ws}/"
        m = _DEB_RE.match(deb)
        assert m, f"test data: {deb} is not <pkg>_<version>_<arch>.deb"
        entry = {"self_link": f"{api}ubuntu/+archive/primary/+binarypub/{index * 1000 + j}",
                 "resource_type_link": f"{api}#binary_package_publishing_history",
                 "display_name": f"{m['name']} {m['version']} in {up.series} {m['arch']}",
                 "binary_package_name": m["name"], "binary_package_version": m["version"],
                 "source_package_name": up.source, "source_package_version": up.version,
                 "distro_arch_series_link": f"{api}ubuntu/{up.series}/{m['arch']}",
                 "architecture_specific": m["arch"] != "all", "status": up.status, "pocket": up.pocket,
                 "component_name": up.component, "section_name": "kernel",
                 "archive_link": f"{api}ubuntu/+archive/primary"}
        if ws == "devel":
            entry["is_debug"] = False  # exported as_of devel only
        return entry

    # -- a binary publication: binaryFileUrls (devel only) --------------------------------

    def _binarypub_op(self, ws: str, number: int, query: dict[str, str]) -> None:
        up = self._upload(number // 1000)
        names = list(up.debs) if up else []
        if up is None or number % 1000 >= len(names):
            self._error(404, "Object not found")
            return
        if query.get("ws.op") != "binaryFileUrls" or ws != "devel":
            # binaryFileUrls on a binary publication is @operation_for_version("devel")
            self._error(400, f"No such operation: {query.get('ws.op')}")
            return
        name = names[number % 1000]
        url = f"{self.base}launchpad/ubuntu/+archive/primary/+files/{name}"
        if query.get("include_meta", "false") != "true":
            self._json([url])
            return
        data = up.debs[name]
        self._json([{"url": url, "size": len(data), "sha1": hashlib.sha1(data).hexdigest(),
                     "sha256": hashlib.sha256(data).hexdigest()}])
