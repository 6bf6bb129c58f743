"""A loopback stand-in for the Hugging Face Hub, for scripts/check-hub-push and the Python
package's README example test.

Serves what prefflow's push uses (whoami-v2, repos/create, revision info, branch, preupload,
commit) and what `datasets.load_dataset` / huggingface_hub / prefflow's hf:// reader read
(dataset info, tree, paths-info, resolve with HEAD and GET). Files live in memory.
Usage: hub-standin.py PORT [ORG/NAME=DIR ...]   (each DIR's files seed a public dataset repo)
"""
import base64
import hashlib
import http.server
import json
import sys
import urllib.parse

SHA = "0123456789abcdef0123456789abcdef01234567"
REPOS = {}  # "org/name" -> {"private": bool, "files": {path: bytes}}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("stand-in: %s\n" % (fmt % args))

    def reply(self, code, body=b"", headers=None, head=False):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers = dict(headers or {}, **{"Content-Type": "application/json"})
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def repo_rev(self, rest):
        # org/name[/revision/REV] or org/name/{tree,paths-info}/REV/...
        parts = rest.split("/")
        return parts[0] + "/" + parts[1], parts[2:]

    def info(self, key):
        repo = REPOS.get(key)
        if repo is None:
            return self.reply(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        siblings = [{"rfilename": p, "size": len(b)} for p, b in sorted(repo["files"].items())]
        return self.reply(200, {"id": key, "sha": SHA, "private": repo["private"], "siblings": siblings,
                                "cardData": {}, "tags": [], "lastModified": "2026-11-30T00:00:00.000Z"})

    def tree(self, key, path, recursive):
        files = REPOS[key]["files"]
        out, dirs = [], set()
        prefix = path + "/" if path else ""
        for p, b in sorted(files.items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                segs = rest.split("/")[:-1]
                for i in range(len(segs)):
                    dirs.add(prefix + "/".join(segs[: i + 1]))
            out.append({"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()})
        return [{"type": "directory", "path": d, "oid": SHA, "size": 0} for d in sorted(dirs)] + out

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        url = urllib.parse.urlparse(self.path)
        path = urllib.parse.unquote(url.path)
        query = urllib.parse.parse_qs(url.query)
        if path == "/api/whoami-v2":
            return self.reply(200, {"type": "user", "name": "tester",
                                    "auth": {"accessToken": {"role": "write", "displayName": "t"}}}, head=head)
        if path.startswith("/api/datasets/"):
            key, rest = self.repo_rev(path[len("/api/datasets/"):])
            if not rest or rest[0] == "revision":
                return self.info(key)
            if rest[0] == "tree":
                sub = "/".join(rest[2:])
                return self.reply(200, self.tree(key, sub, query.get("recursive", ["false"])[0] in ("true", "True", "1")))
        if path.startswith("/datasets/") and "/resolve/" in path:
            key, rest = path[len("/datasets/"):].split("/resolve/", 1)
            _, name = rest.split("/", 1)
            data = REPOS.get(key, {"files": {}})["files"].get(name)
            if data is None:
                return self.reply(404, b"", {"X-Error-Code": "EntryNotFound"}, head=head)
            etag = '"%s"' % hashlib.sha1(data).hexdigest()
            headers = {"ETag": etag, "X-Repo-Commit": SHA}
            # hf-hub (prefflow's hf:// reader) downloads in byte ranges.
            ranged = self.headers.get("Range", "")
            if ranged.startswith("bytes="):
                first, _, last = ranged[len("bytes="):].partition("-")
                first = int(first or 0)
                last = min(int(last) if last else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = "bytes %d-%d/%d" % (first, last, len(data))
                return self.reply(206, data[first:last + 1], headers, head=head)
            return self.reply(200, data, headers, head=head)
        return self.reply(404, {"error": "not found: " + path}, head=head)

    def do_POST(self):
        path = urllib.parse.unquote(urllib.parse.urlparse(self.path).path)
        body = self.body()
        if path == "/api/repos/create":
            req = json.loads(body)
            key = req["organization"] + "/" + req["name"]
            if key in REPOS:
                return self.reply(409, {"error": "You already created this dataset repo"})
            REPOS[key] = {"private": req.get("private", False), "files": {".gitattributes": b"*.parquet filter=lfs\n"}}
            return self.reply(200, {"url": "http://hub/datasets/" + key})
        if path.startswith("/api/datasets/"):
            key, rest = self.repo_rev(path[len("/api/datasets/"):])
            if rest[0] == "preupload":
                files = json.loads(body)["files"]
                return self.reply(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
            if rest[0] == "branch":
                return self.reply(200, {})
            if rest[0] == "paths-info":
                form = urllib.parse.parse_qs(body.decode())
                paths = json.loads(body).get("paths", []) if body.startswith(b"{") else form.get("paths", [])
                files = REPOS[key]["files"]
                out = []
                for p in paths:
                    if p in files:
                        out.append({"type": "file", "path": p, "size": len(files[p]), "oid": hashlib.sha1(files[p]).hexdigest()})
                    elif any(f.startswith(p + "/") for f in files):
                        out.append({"type": "directory", "path": p, "oid": SHA, "size": 0})
                return self.reply(200, out)
            if rest[0] == "commit":
                files = REPOS[key]["files"]
                for line in body.decode().splitlines():
                    entry = json.loads(line)
                    if entry["key"] == "file":
                        files[entry["value"]["path"]] = base64.b64decode(entry["value"]["content"])
                    elif entry["key"] == "deletedFile":
                        files.pop(entry["value"]["path"], None)
                return self.reply(200, {"commitOid": SHA, "commitUrl": "http://hub/commit"})
        return self.reply(404, {"error": "not found: " + path})


def seed(spec):
    import os

    key, folder = spec.split("=", 1)
    files = {}
    for dirpath, _, names in os.walk(folder):
        for n in names:
            full = os.path.join(dirpath, n)
            with open(full, "rb") as f:
                files[os.path.relpath(full, folder).replace(os.sep, "/")] = f.read()
    REPOS[key] = {"private": False, "files": files}


for spec in sys.argv[2:]:
    seed(spec)
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
