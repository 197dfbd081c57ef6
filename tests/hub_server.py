"""A small loopback fake of the Hugging Face Hub: the endpoints huggingface_hub's upload and datasets' loading use.

There is no local Hub server to install, and huggingface_hub 2.x talks through httpx (responses /
requests-mock do not intercept it), so the publish tests run this server on 127.0.0.1 and point
``HfApi(endpoint=...)`` (or ``HF_ENDPOINT``, in a subprocess running ``datasets``) at it, with
``HF_HUB_DISABLE_XET=1`` (the legacy LFS protocol). It listens on loopback only, reads request bodies of
bounded size, and stops by itself after ``lifetime`` seconds if a test forgets to stop it.

Writing:

- ``POST /api/repos/create``: 200 the first time, 409 (with ``url``) when the repo exists;
- ``POST /api/{type}s/{repo}/branch/{branch}``: create a branch (409 when it exists);
- ``POST /api/{type}s/{repo}/tag/{rev}``: tag a revision (409 when the tag exists);
- ``POST /api/validate-yaml``: the YAML header of a README must load as a mapping;
- ``POST /api/{type}s/{repo}/preupload/{rev}``: ``lfs`` for ``*.tar``, ``regular`` otherwise, with the oid
  of a file already committed under that path (so unchanged files are skipped);
- ``POST /{type}s/{repo}.git/info/lfs/objects/batch``: an upload action for objects not stored yet, none for
  stored ones (this is what makes a re-run resume);
- ``PUT /lfs-upload/{oid}``: stores the object after checking its sha256 and size;
- ``POST /api/{type}s/{repo}/commit/{rev}``: ndjson commit (``file`` base64, ``lfsFile`` by oid, ``deletedFile``,
  ``deletedFolder``); a commit is atomic (all of it or nothing).

Reading (what ``huggingface_hub``'s downloads, ``HfFileSystem`` and ``datasets.load_dataset`` ask for); a
revision is a branch, a tag or a commit sha (every commit's files are kept):

- ``GET /api/{type}s/{repo}[/revision/{rev}]``: repo info (``sha``, ``siblings``, ``cardData``...);
- ``GET /api/{type}s/{repo}/tree/{rev}[/{folder}][?recursive=true]``: a folder listing;
- ``POST /api/{type}s/{repo}/paths-info/{rev}``: the entries of the given paths (form-encoded ``paths``);
- ``GET /api/{type}s/{repo}/refs``: branches and tags;
- ``HEAD``/``GET /{type}s/{repo}/resolve/{rev}/{path}``: file bytes, ``Range`` supported.

Every request's method, path and ``Authorization`` header is recorded. Failure injection: ``fail_put_after``
makes the N+1-th LFS PUT fail with HTTP 400 (an upload interrupted in the middle of the shards);
``fail_commits`` makes that many next commits fail with HTTP 500 (interrupted after the shards went up).
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
from urllib.parse import parse_qs, unquote

#: Largest request body accepted (the test releases are a few hundred KB).
MAX_BODY = 64 * 1024 * 1024


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    """Files the fake Hub stores through LFS (as the Hub's default ``.gitattributes`` does for tars)."""
    return path.endswith(".tar")


@dataclass
class FakeHubState:
    """Everything the fake Hub knows and saw."""

    # "datasets/u/n" → {"private": bool, "branches": {name: {"files", "sha"}}, "tags": {name: sha},
    #                   "history": {sha: files}}
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 → content
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, authorization)
    bodies: list[bytes] = field(default_factory=list)
    fail_put_after: int | None = None
    fail_commits: int = 0
    puts: list[str] = field(default_factory=list)
    commits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        """The files of ``repo`` (e.g. ``datasets/user/name``) on ``branch``."""
        return self.repos[repo]["branches"][branch]["files"]

    def tags(self, repo: str) -> dict[str, str]:
        """Tag name → commit sha of ``repo``."""
        return self.repos[repo]["tags"]

    def resolve(self, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        """A branch, tag or commit sha of ``repo`` → (commit sha, files), or None."""
        r = self.repos.get(repo)
        if r is None:
            return None
        rev = unquote(rev)
        if rev in r["branches"]:
            b = r["branches"][rev]
            return b["sha"], b["files"]
        sha = r["tags"].get(rev, rev)
        if sha in r["history"]:
            return sha, r["history"][sha]
        return None


def _entry(path: str, data: bytes) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
    if is_lfs(path):
        e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
    return e


def _folder(path: str) -> dict[str, Any]:
    return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0}


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
                if len(out) + size > MAX_BODY:
                    raise ValueError("request body too large")
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise ValueError("request body too large")
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
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
        path, _, query = self.path.partition("?")
        if path.startswith(("/datasets/", "/models/")) and "/resolve/" in path:
            return self._resolve(head=False, recorded=True)
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+?)/refs$", path)
        if m:
            repo = f"{m.group(1)}s/{m.group(2)}"
            if repo not in st.repos:
                return self._send(404, {"error": "Repository not found"})
            r = st.repos[repo]
            return self._send(200, {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": b["sha"]}
                             for n, b in sorted(r["branches"].items())],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in sorted(r["tags"].items())],
                "converts": [],
            })
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+?)(?:/revision/([^/]+))?$", path)
        if m:
            repo = f"{m.group(1)}s/{m.group(2)}"
            if repo not in st.repos:
                return self._send(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
            found = st.resolve(repo, m.group(3) or "main")
            if found is None:
                return self._send(404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"})
            sha, files = found
            return self._send(200, {
                "id": m.group(2), "_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "sha": sha,
                "private": st.repos[repo]["private"], "disabled": False, "gated": False, "downloads": 0,
                "likes": 0, "tags": [], "lastModified": "2026-01-01T00:00:00.000Z",
                "createdAt": "2026-01-01T00:00:00.000Z", "cardData": _card_data(files),
                "siblings": [{"rfilename": f} for f in sorted(files)],
            })
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$", path)
        if m:
            repo, folder = f"{m.group(1)}s/{m.group(2)}", unquote(m.group(4)).strip("/")
            found = st.resolve(repo, m.group(3))
            if found is None:
                return self._send(404, {"error": "Repository or revision not found"})
            recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
            return self._send(200, _listing(found[1], folder, recursive))
        self._send(404, {"error": f"no route GET {self.path}"})

    def _resolve(self, head: bool, recorded: bool = False) -> None:
        """``/{type}s/{repo}/resolve/{rev}/{path}``: file bytes (Range supported), with the Hub's headers."""
        st = self.server.state if recorded else self._record(b"")
        m = re.match(r"^/(\w+s)/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", self.path.split("?")[0])
        found = st.resolve(m.group(1) + "/" + m.group(2), m.group(3)) if m else None
        data = None if found is None else found[1].get(unquote(m.group(4)))
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if found is not None else "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        fname = unquote(m.group(4))
        status, body = 200, data
        rng = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if rng:
            start = min(int(rng.group(1)), len(data))
            stop = min(int(rng.group(2)) + 1, len(data)) if rng.group(2) else len(data)
            status, body = 206, data[start:stop]
        etag = hashlib.sha256(data).hexdigest() if is_lfs(fname) else git_blob_sha1(data)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Repo-Commit", found[0])
        if is_lfs(fname):
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(len(data)))
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
        path = self.path.split("?")[0]
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+)/paths-info/([^/]+)$", path)
        if m:  # a read: no token needed for a public repo
            found = st.resolve(f"{m.group(1)}s/{m.group(2)}", m.group(3))
            if found is None:
                return self._send(404, {"error": "Repository or revision not found"})
            form = parse_qs(body.decode())
            files = found[1]
            out = []
            for p in form.get("paths", []):
                p = p.strip("/")
                if p in files:
                    out.append(_entry(p, files[p]))
                elif any(f.startswith(p + "/") for f in files):
                    out.append(_folder(p))
            return self._send(200, out)
        if not (self.headers.get("Authorization") or "").startswith("Bearer "):
            return self._send(401, {"error": "Invalid credentials in Authorization header"})
        if path == "/api/repos/create":
            req = json.loads(body)
            repo = f"{req.get('type', 'model')}s/{req['organization']}/{req['name']}"
            url = f"{endpoint}/{repo}"
            with st.lock:
                if repo in st.repos:
                    return self._send(409, {"error": "You already created this dataset repo", "url": url})
                st.repos[repo] = {"private": req.get("visibility") == "private", "tags": {},
                                  "history": {"0" * 40: {}}, "branches": {"main": {"files": {}, "sha": "0" * 40}}}
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
        m = re.match(r"^/api/(\w+)s/([^/]+/[^/]+)/(branch|tag|preupload|commit)/([^/]+)$", path)
        if m:
            return self._repo_post(st, endpoint, f"{m.group(1)}s/{m.group(2)}", m.group(3), unquote(m.group(4)), body)
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

    def _repo_post(self, st: FakeHubState, endpoint: str, repo: str, action: str, rev: str, body: bytes) -> None:
        if repo not in st.repos:
            return self._send(404, {"error": "Repository not found"})
        r = st.repos[repo]
        branches = r["branches"]
        if action == "branch":
            if rev in branches:
                return self._send(409, {"error": "Reference already exists"})
            branches[rev] = dict(branches["main"])
            return self._send(200, {})
        if action == "tag":
            tag = json.loads(body)["tag"]
            found = st.resolve(repo, rev)
            if found is None:
                return self._send(404, {"error": f"Invalid rev id: {rev}"})
            if tag in r["tags"] or tag in branches:
                return self._send(409, {"error": f"Tag {tag} already exists"})
            r["tags"][tag] = found[0]
            return self._send(200, {})
        if rev not in branches:
            return self._send(404, {"error": f"Invalid rev id: {rev}"})
        files = branches[rev]["files"]
        if action == "preupload":
            out = []
            for f in json.loads(body)["files"]:
                have = files.get(f["path"])
                oid = None
                if have is not None:
                    oid = hashlib.sha256(have).hexdigest() if is_lfs(f["path"]) else git_blob_sha1(have)
                out.append({"path": f["path"], "uploadMode": "lfs" if is_lfs(f["path"]) else "regular",
                            "shouldIgnore": False, "oid": oid})
            return self._send(200, {"files": out})
        # commit: all or nothing
        with st.lock:
            if st.fail_commits > 0:
                st.fail_commits -= 1
                return self._send(500, {"error": "internal error (simulated interruption)"})
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
            elif item["key"] == "deletedFile":
                if v["path"] not in new_files:
                    return self._send(404, {"error": f"File not found: {v['path']}"})
                new_files.pop(v["path"])
            elif item["key"] == "deletedFolder":
                prefix = v["path"].rstrip("/") + "/"
                for p in [p for p in new_files if p.startswith(prefix)]:
                    new_files.pop(p)
        with st.lock:
            st.commits += 1
            sha = hashlib.sha1(f"{repo}{st.commits}".encode()).hexdigest()
            branches[rev] = {"files": new_files, "sha": sha}
            r["history"][sha] = new_files
        return self._send(200, {"commitUrl": f"{endpoint}/{repo}/commit/{sha}", "commitOid": sha,
                                "pullRequestUrl": None})


def _listing(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    prefix = f"{folder}/" if folder else ""
    for f, data in files.items():
        if not f.startswith(prefix):
            continue
        parts = f[len(prefix):].split("/")
        for i in range(1, len(parts)):  # the folders on the way
            sub = prefix + "/".join(parts[:i])
            entries[sub] = _folder(sub)
            if not recursive:
                break
        if recursive or len(parts) == 1:
            entries[f] = _entry(f, data)
    return sorted(entries.values(), key=lambda e: e["path"])


def _card_data(files: dict[str, bytes]) -> dict[str, Any] | None:
    card = files.get("README.md")
    if card is None:
        return None
    import yaml

    m = re.match(r"^---\n(.*?)\n---", card.decode("utf-8", "replace"), flags=re.S)
    try:
        data = yaml.safe_load(m.group(1)) if m else None
    except yaml.YAMLError:
        return None
    return data if isinstance(data, dict) else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeHubState


class FakeHub:
    """Run the fake Hub on a free loopback port: ``with FakeHub() as hub: hub.endpoint``.

    Args:
        lifetime: seconds after which the server stops by itself (a safety net for a forgotten ``__exit__``).
    """

    def __init__(self, lifetime: float = 600.0) -> None:
        self.state = FakeHubState()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = self.state
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime, self._server.shutdown)
        self._timer.daemon = True

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()
