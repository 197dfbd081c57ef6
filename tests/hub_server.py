"""A small loopback fake of the Hugging Face Hub, speaking the endpoints huggingface_hub's upload uses.

There is no local Hub server to install, and huggingface_hub 2.x talks through httpx (responses /
requests-mock do not intercept it), so the upload tests run this server on 127.0.0.1 and point
``HfApi(endpoint=...)`` at it (with ``HF_HUB_DISABLE_XET=1``: the legacy LFS protocol). Endpoints:

- ``POST /api/repos/create``: 200 the first time, 409 (with ``url``) when the repo exists;
- ``POST /api/{type}s/{repo}/branch/{branch}``: create a branch (409 when it exists);
- ``POST /api/validate-yaml``: the YAML header of a README must load as a mapping;
- ``POST /api/{type}s/{repo}/preupload/{rev}``: ``lfs`` for ``*.tar``, ``regular`` otherwise, with the oid
  of a file already committed under that path (so unchanged files are skipped);
- ``POST /{type}s/{repo}.git/info/lfs/objects/batch``: an upload action for objects not stored yet, none for
  stored ones (this is what makes a re-run resume);
- ``PUT /lfs-upload/{oid}``: stores the object after checking its sha256 and size;
- ``POST /api/{type}s/{repo}/commit/{rev}``: ndjson commit (``file`` base64 and ``lfsFile`` by oid);
- ``GET /api/{type}s/{repo}[/revision/{rev}]``: repo info (used when a commit would be empty);
- ``GET /api/{type}s/{repo}/tree/{rev}/{folder}``: a folder listing (``HfFileSystem``);
- ``HEAD``/``GET /{type}s/{repo}/resolve/{rev}/{path}``: file bytes, ``Range`` supported (downloads).

Every request's path and ``Authorization`` header is recorded; ``fail_put_after`` makes the N+1-th LFS PUT
fail with HTTP 400 (an interrupted upload).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHubState:
    """Everything the fake Hub knows and saw."""

    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # "datasets/u/n" → {private, branches}
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 → content
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, authorization)
    bodies: list[bytes] = field(default_factory=list)
    fail_put_after: int | None = None
    puts: list[str] = field(default_factory=list)
    commits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        """The files of ``repo`` (e.g. ``datasets/user/name``) on ``branch``."""
        return self.repos[repo]["branches"][branch]["files"]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass  # keep test output clean

    # -- helpers ----------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload: Any = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self, body: bytes) -> FakeHubState:
        st = self.server.state
        with st.lock:
            st.requests.append((self.command, self.path, self.headers.get("Authorization")))
            st.bodies.append(body)
        return st

    # -- routes -----------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 (stdlib name)
        self._resolve(head=True)

    def do_GET(self) -> None:  # noqa: N802 (stdlib name)
        st = self._record(b"")
        path = self.path.split("?")[0]
        if path.startswith(("/datasets/", "/models/")) and "/resolve/" in path:
            return self._resolve(head=False, recorded=True)
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", path)
        if m:
            repo = f"{m.group(1)}s/{m.group(2)}"
            if repo not in st.repos:
                return self._send(404, {"error": "Repository not found"})
            branch = st.repos[repo]["branches"].get(m.group(3) or "main")
            if branch is None:
                return self._send(404, {"error": "Revision not found"})
            return self._send(200, {"id": m.group(2), "sha": branch["sha"], "private": st.repos[repo]["private"],
                                    "siblings": [{"rfilename": f} for f in sorted(branch["files"])]})
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$", path)
        if m:
            repo, rev, folder = f"{m.group(1)}s/{m.group(2)}", m.group(3), m.group(4).strip("/")
            if repo not in st.repos or rev not in st.repos[repo]["branches"]:
                return self._send(404, {"error": "Repository or revision not found"})
            entries: dict[str, dict] = {}
            prefix = f"{folder}/" if folder else ""
            for f, data in st.files(repo, rev).items():
                if not f.startswith(prefix):
                    continue
                head, _, rest = f[len(prefix):].partition("/")
                if rest:
                    entries[prefix + head] = {"type": "directory", "path": prefix + head, "oid": "0" * 40, "size": 0}
                else:
                    entries[f] = {"type": "file", "path": f, "size": len(data), "oid": git_blob_sha1(data)}
                    if f.endswith(".tar"):
                        entries[f]["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                             "pointerSize": 130}
            return self._send(200, sorted(entries.values(), key=lambda e: e["path"]))
        self._send(404, {"error": f"no route GET {self.path}"})

    def _resolve(self, head: bool, recorded: bool = False) -> None:
        """``/{type}s/{repo}/resolve/{rev}/{path}``: file bytes (Range supported), with the Hub's headers."""
        st = self.server.state if recorded else self._record(b"")
        m = re.match(r"^/(\w+s)/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        if not m or m.group(1) + "/" + m.group(2) not in st.repos:
            return self._send(404, {"error": "Entry not found"})
        repo, rev, fname = m.group(1) + "/" + m.group(2), m.group(3), m.group(4)
        branch = st.repos[repo]["branches"].get(rev)
        data = None if branch is None else branch["files"].get(fname)
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, body = 200, data
        rng = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            stop = int(rng.group(2)) + 1 if rng.group(2) else len(data)
            status, body = 206, data[start:stop]
        etag = hashlib.sha256(data).hexdigest() if fname.endswith(".tar") else git_blob_sha1(data)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", branch["sha"])
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802
        body = self._body()
        st = self._record(b"<lfs bytes>")
        m = re.match(r"^/lfs-upload/([0-9a-f]{64})$", self.path)
        if not m:
            return self._send(404, {"error": f"no route PUT {self.path}"})
        with st.lock:
            if st.fail_put_after is not None and len(st.puts) >= st.fail_put_after:
                return self._send(400, {"error": "connection reset (simulated interruption)"})
            if hashlib.sha256(body).hexdigest() != m.group(1):
                return self._send(400, {"error": "sha256 mismatch"})
            st.lfs[m.group(1)] = body
            st.puts.append(m.group(1))
        self._send(200, {})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        st = self._record(body)
        endpoint = f"http://{self.headers['Host']}"
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            return self._send(401, {"error": "Invalid credentials in Authorization header"})
        path = self.path.split("?")[0]
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req.get('type', 'model')}s/{req['organization']}/{req['name']}"
            url = f"{endpoint}/{repo}"
            with st.lock:
                if repo in st.repos:
                    return self._send(409, {"error": "You already created this dataset repo", "url": url})
                st.repos[repo] = {"private": req.get("visibility") == "private",
                                  "branches": {"main": {"files": {}, "sha": "0" * 40}}}
            return self._send(200, {"url": url})
        if path == "/api/validate-yaml":
            import yaml

            content = json.loads(body)["content"]
            m = re.match(r"^---\n(.*?)\n---", content, flags=re.S)
            try:
                ok = m is not None and isinstance(yaml.safe_load(m.group(1)), dict)
            except yaml.YAMLError:
                ok = False
            return self._send(200 if ok else 400, {"errors": [] if ok else [{"message": "invalid YAML"}],
                                                   "warnings": []})
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+)/(branch|preupload|commit)/([^/]+)$", path)
        if m:
            repo, action, rev = f"{m.group(1)}s/{m.group(2)}", m.group(3), m.group(4)
            if repo not in st.repos:
                return self._send(404, {"error": "Repository not found"})
            branches = st.repos[repo]["branches"]
            if action == "branch":
                if rev in branches:
                    return self._send(409, {"error": "Reference already exists"})
                branches[rev] = {"files": dict(branches["main"]["files"]), "sha": branches["main"]["sha"]}
                return self._send(200, {})
            if rev not in branches:
                return self._send(404, {"error": f"Invalid rev id: {rev}"})
            files = branches[rev]["files"]
            if action == "preupload":
                out = []
                for f in json.loads(body)["files"]:
                    lfs_mode = f["path"].endswith(".tar")
                    have = files.get(f["path"])
                    oid = None
                    if have is not None:
                        oid = hashlib.sha256(have).hexdigest() if lfs_mode else git_blob_sha1(have)
                    out.append({"path": f["path"], "uploadMode": "lfs" if lfs_mode else "regular",
                                "shouldIgnore": False, "oid": oid})
                return self._send(200, {"files": out})
            # commit
            lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            new_files = dict(files)
            for item in lines[1:]:
                v = item["value"]
                if item["key"] == "file":
                    new_files[v["path"]] = base64.b64decode(v["content"])
                elif item["key"] == "lfsFile":
                    if v["oid"] not in st.lfs:
                        return self._send(400, {"error": f"LFS object {v['oid']} was never uploaded"})
                    new_files[v["path"]] = st.lfs[v["oid"]]
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    new_files.pop(v["path"], None)
            with st.lock:
                st.commits += 1
                sha = hashlib.sha1(f"{repo}{st.commits}".encode()).hexdigest()
                branches[rev] = {"files": new_files, "sha": sha}
            return self._send(200, {"commitUrl": f"{endpoint}/{repo}/commit/{sha}", "commitOid": sha,
                                    "pullRequestUrl": None})
        m = re.match(r"^/(\w+s)/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if m:
            objects = []
            for o in json.loads(body)["objects"]:
                if o["oid"] in st.lfs:
                    objects.append({"oid": o["oid"], "size": o["size"]})
                else:
                    objects.append({"oid": o["oid"], "size": o["size"],
                                    "actions": {"upload": {"href": f"{endpoint}/lfs-upload/{o['oid']}"}}})
            return self._send(200, {"transfer": "basic", "objects": objects})
        self._send(404, {"error": f"no route POST {self.path}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeHubState


class FakeHub:
    """Run the fake Hub on a free loopback port: ``with FakeHub() as hub: hub.endpoint``."""

    def __init__(self) -> None:
        self.state = FakeHubState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
