#!/usr/bin/env python3
"""Write a docker-archive image tarball without Docker (python3 stdlib only).

The archive holds manifest.json, the image config JSON and one layer tar, the layout
`docker save` writes, so both `ctr -n k8s.io images import FILE` and
`kind load image-archive FILE` accept it. Output is deterministic: the same inputs give
byte-identical archives (fixed mtimes, uid/gid 0, sorted entries).

Layer content is given as --file SRC:DEST (DEST inside the image; a directory SRC is
copied recursively), --dir DEST[:MODE], --symlink DEST:TARGET; or, with --with-libs
BINARY..., the binaries plus every shared library `ldd` lists for them, at the same
absolute paths (and the dynamic loader), which is how Rust release binaries built
against glibc become runnable images.

Example:
  mkimage.py --tag pbft-replica:0.1.0 --out /tmp/replica.tar \\
      --with-libs target/release/pbft-replica:/usr/local/bin/pbft-replica \\
      --entrypoint /usr/local/bin/pbft-replica
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

EPOCH = 0  # fixed mtime for reproducible layers


def die(msg):
    print(f"mkimage: ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


class Layer:
    """Collects entries (path inside image -> spec) and writes a sorted tar."""

    def __init__(self):
        self.entries = {}

    def _parents(self, dest):
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            self.entries.setdefault(p, ("dir", 0o755))

    def add_dir(self, dest, mode=0o755):
        dest = dest.strip("/")
        if dest:
            self._parents(dest)
            self.entries[dest] = ("dir", mode)

    def add_bytes(self, dest, data, mode=0o644):
        dest = dest.strip("/")
        self._parents(dest)
        self.entries[dest] = ("bytes", data, mode)

    def add_file(self, src, dest, mode=None):
        if os.path.isdir(src):
            for root, dirs, files in os.walk(src):
                dirs.sort()
                rel = os.path.relpath(root, src)
                base = dest if rel == "." else os.path.join(dest, rel)
                self.add_dir(base, os.stat(root).st_mode & 0o7777)
                for f in sorted(files):
                    self.add_file(os.path.join(root, f), os.path.join(base, f))
            return
        if not os.path.exists(src):
            die(f"no such file: {src}")
        dest = dest.strip("/")
        self._parents(dest)
        if os.path.islink(src) and not os.path.exists(os.path.realpath(src)):
            die(f"dangling symlink: {src}")
        st = os.stat(src)
        self.entries[dest] = ("file", os.path.realpath(src), mode if mode is not None else st.st_mode & 0o7777)

    def add_symlink(self, dest, target):
        dest = dest.strip("/")
        self._parents(dest)
        self.entries[dest] = ("symlink", target)

    def write(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                spec = self.entries[path]
                ti = tarfile.TarInfo(path)
                ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = EPOCH, 0, 0, "root", "root"
                kind = spec[0]
                if kind == "dir":
                    ti.type, ti.mode = tarfile.DIRTYPE, spec[1]
                    tar.addfile(ti)
                elif kind == "symlink":
                    ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, spec[1], 0o777
                    tar.addfile(ti)
                elif kind == "bytes":
                    ti.size, ti.mode = len(spec[1]), spec[2]
                    tar.addfile(ti, io.BytesIO(spec[1]))
                else:
                    ti.size, ti.mode = os.path.getsize(spec[1]), spec[2]
                    with open(spec[1], "rb") as f:
                        tar.addfile(ti, f)
        return buf.getvalue()


def ldd_libs(binary):
    """Absolute paths of the shared libraries (and loader) a dynamic binary needs."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        die("ldd not found (Debian package libc-bin)")
    text = out.stdout + out.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if out.returncode != 0:
        die(f"ldd {binary} failed: {text.strip()}")
    libs = []
    for line in text.splitlines():
        line = line.strip()
        if "not found" in line:
            die(f"{binary}: missing shared library: {line}")
        m = re.search(r"=>\s+(/\S+)", line) or re.match(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def add_host_path(layer, path, depth=0):
    """Copy a host file to the same path in the image, recreating every symlink met on
    the way (/lib -> usr/lib on merged-/usr hosts, lib64 loader links, soname links),
    so the binary finds each library where ldd found it, with no duplicate copies."""
    if depth > 40:
        die(f"symlink loop at {path}")
    parts = path.strip("/").split("/")
    cur = ""
    for i, part in enumerate(parts):
        cur += "/" + part
        if os.path.islink(cur):
            target = os.readlink(cur)
            layer.add_symlink(cur, target)
            resolved = target if target.startswith("/") else os.path.join(os.path.dirname(cur), target)
            rest = "/".join(parts[i + 1:])
            add_host_path(layer, os.path.normpath(resolved + ("/" + rest if rest else "")), depth + 1)
            return
    layer.add_file(path, path)


BASE_ETC = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/nsswitch.conf": b"hosts: files dns\n",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", required=True, help="image reference NAME:TAG (a tag is required, never latest)")
    ap.add_argument("--out", required=True, help="archive path to write")
    ap.add_argument("--file", action="append", default=[], metavar="SRC:DEST")
    ap.add_argument("--dir", action="append", default=[], metavar="DEST[:MODE]")
    ap.add_argument("--symlink", action="append", default=[], metavar="DEST:TARGET")
    ap.add_argument("--with-libs", action="append", default=[], metavar="SRC[:DEST]",
                    help="a binary plus the shared libraries ldd lists, at their own paths")
    ap.add_argument("--base-etc", action="store_true", help="add /etc/passwd, /etc/group, /tmp")
    ap.add_argument("--entrypoint", nargs="+", default=None)
    ap.add_argument("--cmd", nargs="+", default=None)
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--user", default="")
    ap.add_argument("--label", action="append", default=[], metavar="K=V")
    a = ap.parse_args()

    name, _, tag = a.tag.rpartition(":")
    if not name or "/" in tag or not tag:
        die(f"--tag {a.tag!r} has no tag; use NAME:VERSION")
    if tag == "latest":
        die("refusing tag 'latest' (pods would pull with policy Always); use a version")

    layer = Layer()
    if a.base_etc:
        for p, data in BASE_ETC.items():
            layer.add_bytes(p, data)
        layer.add_dir("tmp", 0o1777)
    for spec in a.dir:
        dest, _, mode = spec.partition(":")
        layer.add_dir(dest, int(mode, 8) if mode else 0o755)
    for spec in a.file:
        src, _, dest = spec.partition(":")
        layer.add_file(src, dest or src)
    for spec in a.symlink:
        dest, _, target = spec.partition(":")
        layer.add_symlink(dest, target)
    for spec in a.with_libs:
        src, _, dest = spec.partition(":")
        if not os.path.isfile(src):
            die(f"binary not found: {src}")
        layer.add_file(src, dest or os.path.abspath(src))
        libs = ldd_libs(src)
        for lib in libs:
            add_host_path(layer, lib)
        print(f"mkimage: {src}: {len(libs)} shared libraries packed: {' '.join(libs) or '(static binary)'}")

    layer_tar = layer.write()
    diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + a.env
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": env, "WorkingDir": a.workdir},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "pbft-operator e2e/images/mkimage.py"}],
    }
    if a.entrypoint:
        config["config"]["Entrypoint"] = a.entrypoint
    if a.cmd:
        config["config"]["Cmd"] = a.cmd
    if a.user:
        config["config"]["User"] = a.user
    if a.label:
        config["config"]["Labels"] = dict(kv.split("=", 1) for kv in a.label)
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [layer_name]}]
    repositories = {name: {tag: diff_id.split(":")[1]}}

    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        def put(path, data, mode=0o644):
            ti = tarfile.TarInfo(path)
            ti.size, ti.mode, ti.mtime = len(data), mode, EPOCH
            out.addfile(ti, io.BytesIO(data))
        d = tarfile.TarInfo(layer_name.split("/")[0])
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, EPOCH
        out.addfile(d)
        put(layer_name, layer_tar)
        put(config_name, config_bytes)
        put("manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        put("repositories", json.dumps(repositories, separators=(",", ":")).encode())
    os.replace(tmp, a.out)
    print(f"mkimage: wrote {a.out} ({a.tag}, {len(layer_tar) // 1024} KiB layer, {diff_id[:19]})")


if __name__ == "__main__":
    main()
