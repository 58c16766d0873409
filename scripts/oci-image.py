#!/usr/bin/env python3
"""Builds the operator's OCI image without a container engine or registry.

    scripts/oci-image.py build BINARY OUT_DIR [--tag TAG] [--archive PATH]
    scripts/oci-image.py verify OUT_DIR [--kubeconfig PATH]

`build` writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) with one layer:
the binary (stripped) as /ecs-operator, exactly the shared libraries `ldd` says it loads (at the paths
the loader looks for them), and /etc/passwd and /etc/group naming the non-root user 65532.
The layer is reproducible (sorted entries, mtime 0, owner 0:0) and gzip'd; the config runs as
65532:65532 with ENTRYPOINT /ecs-operator and CMD run. The root filesystem can be mounted
read-only: the binary writes no file. `--archive` also writes the layout as a tar
(`skopeo copy oci-archive:PATH docker://REGISTRY/...` or `podman load -i PATH` take it).

`verify` checks every digest and size in the layout, the config (non-root user, entrypoint),
unpacks the layer into a temporary root and runs `/ecs-operator --help` there with chroot
as user 65532 (proving it carries everything the binary links), and prints the sizes. With
`--kubeconfig`, it also runs the controller itself (`/ecs-operator run`) in that root, as
65532, against the cluster the kubeconfig names, until its watch cache has synced: every file
of the root is owned by root and not writable by that user, so this is the read-only root
filesystem the Deployment asks for.
"""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading

USER = 65532
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def linked_libraries(binary):
    """Absolute paths of the shared objects the binary loads (ldd), the loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        if "not a dynamic executable" in out.stdout + out.stderr:
            return []
        sys.exit(f"ldd {binary}: {out.stderr.strip()}")
    paths = []
    for line in out.stdout.splitlines():
        line = line.strip()
        if "=>" in line:
            target = line.split("=>", 1)[1].strip().split(" ")[0]
        else:
            target = line.split(" ")[0]
        if target.startswith("/"):
            paths.append(target)
        elif "not found" in line:
            sys.exit(f"ldd {binary}: {line}")
    return sorted(set(paths))


def add_file(tar, name, data, mode):
    info = tarfile.TarInfo(name.lstrip("/"))
    info.size = len(data)
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def add_dirs(tar, paths):
    dirs = set()
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs):
        info = tarfile.TarInfo(d)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = 0
        tar.addfile(info)


def stripped(binary):
    """The binary without symbols and debug info (what a release image ships)."""
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "ecs-operator")
        shutil.copy(binary, copy)
        subprocess.run(["strip", copy], check=True)
        return open(copy, "rb").read()


def layer(binary):
    files = {"/ecs-operator": (stripped(binary), 0o755)}
    for lib in linked_libraries(binary):
        files[lib] = (open(os.path.realpath(lib), "rb").read(), 0o755)
    files["/etc/passwd"] = (f"nonroot:x:{USER}:{USER}:nonroot:/nonexistent:/sbin/nologin\n".encode(), 0o644)
    files["/etc/group"] = (f"nonroot:x:{USER}:\n".encode(), 0o644)
    # Names from /etc/hosts (hostAliases) first, then DNS, as distroless configures it. The
    # DNS resolver is in glibc's libc since 2.34 (bookworm has 2.36): no libnss module to ship.
    files["/etc/nsswitch.conf"] = (b"hosts: files dns\n", 0o644)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add_dirs(tar, files)
        for name in sorted(files):
            data, mode = files[name]
            add_file(tar, name, data, mode)
    raw = raw.getvalue()
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=6) as gz:
        gz.write(raw)
    return raw, packed.getvalue(), sorted(files)


def blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256", digest)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(binary, out, tag, archive):
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    raw, packed, names = layer(binary)
    layer_desc = dict(mediaType=MEDIA_LAYER, **blob(out, packed))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": f"{USER}:{USER}",
            "Entrypoint": ["/ecs-operator"],
            "Cmd": ["run"],
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {
                "org.opencontainers.image.title": "volcengine-ecs-operator",
                "org.opencontainers.image.version": tag,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(raw).hexdigest()}"]},
        "history": [{"created_by": "scripts/oci-image.py: the binary and the libraries it links"}],
    }
    config_desc = dict(mediaType=MEDIA_CONFIG, **blob(out, canonical(config)))
    manifest = {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config_desc, "layers": [layer_desc]}
    manifest_desc = dict(mediaType=MEDIA_MANIFEST, **blob(out, canonical(manifest)))
    manifest_desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if archive:
        with tarfile.open(archive, "w") as tar:
            for root, _, files in os.walk(out):
                for name in sorted(files):
                    path = os.path.join(root, name)
                    tar.add(path, arcname=os.path.relpath(path, out))
    print(f"image {tag}: {len(names)} files, layer {len(packed)} bytes compressed ({len(raw)} unpacked)")
    for n in names:
        print(f"  {n}")


def run_controller(root, kubeconfig):
    """`/ecs-operator run` in the image's root as 65532 until it says its cache synced."""
    os.makedirs(os.path.join(root, "etc", "ecs"), exist_ok=True)
    # The files a kubeconfig names (the CA) are not in the image's root: embed them.
    flat = subprocess.run(
        ["kubectl", "config", "view", "--raw", "--flatten", "--kubeconfig", kubeconfig],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    with open(os.path.join(root, "etc", "ecs", "kubeconfig"), "w") as f:
        f.write(flat)
    # Readable by the image's user only (it carries the test cluster's credentials).
    os.chown(os.path.join(root, "etc", "ecs", "kubeconfig"), USER, USER)
    os.chmod(os.path.join(root, "etc", "ecs", "kubeconfig"), 0o400)
    env = {
        "KUBECONFIG": "/etc/ecs/kubeconfig",
        "VOLCENGINE_ACCESS_KEY": "AKimage",
        "VOLCENGINE_SECRET_KEY": "image",
        "VOLCENGINE_ENDPOINT": "http://127.0.0.1:9",
        "ECS_ALLOW_INSECURE_HTTP": "true",
        "RUST_LOG": "info",
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),  # for chroot itself
    }
    proc = subprocess.Popen(
        ["chroot", f"--userspec={USER}:{USER}", root, "/ecs-operator", "run", "--metrics-addr", "127.0.0.1:0",
         # One namespace nobody uses: the smoke run acts on nothing.
         "--namespaces", "ecs-image-smoke"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    # A binary that hangs without a word must not hang the test run.
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            seen.append(line)
            if "cache synced" in line:
                return
        raise AssertionError("the controller exited in the image's root:\n" + "".join(seen[-30:]))
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()


def verify(out, kubeconfig=None):
    def read_blob(desc):
        algo, digest = desc["digest"].split(":")
        data = open(os.path.join(out, "blobs", algo, digest), "rb").read()
        assert hashlib.sha256(data).hexdigest() == digest, f"digest of {desc['digest']}"
        assert len(data) == desc["size"], f"size of {desc['digest']}"
        return data

    assert json.load(open(os.path.join(out, "oci-layout")))["imageLayoutVersion"] == "1.0.0"
    index = json.load(open(os.path.join(out, "index.json")))
    manifest = json.loads(read_blob(index["manifests"][0]))
    config = json.loads(read_blob(manifest["config"]))
    c = config["config"]
    assert c["User"] == f"{USER}:{USER}", c["User"]
    assert c["Entrypoint"] == ["/ecs-operator"] and c["Cmd"] == ["run"], c
    packed = read_blob(manifest["layers"][0])
    raw = gzip.decompress(packed)
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    assert config["rootfs"]["diff_ids"] == [diff_id], "diff_id"
    with tempfile.TemporaryDirectory() as root:
        os.chmod(root, 0o755)  # the image's root, traversable by its non-root user
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            tar.extractall(root)
        # Run it as the image would: its own root, the non-root user, nothing from the host.
        run = subprocess.run(
            ["chroot", f"--userspec={USER}:{USER}", root, "/ecs-operator", "--help"],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, f"the image's binary did not run in its own root: {run.stderr}"
        assert "Usage: ecs-operator" in run.stdout, run.stdout
        if kubeconfig:
            run_controller(root, kubeconfig)
            print("verified: the controller ran in the image's root as 65532 until its cache synced")
    print(f"verified: digests, non-root user {USER}, entrypoint; /ecs-operator --help runs in the image's root")
    print(f"layer {len(packed)} bytes compressed, {len(raw)} unpacked")


def main():
    args = sys.argv[1:]
    if len(args) >= 3 and args[0] == "build":
        tag = args[args.index("--tag") + 1] if "--tag" in args else "0.1.0"
        archive = args[args.index("--archive") + 1] if "--archive" in args else None
        build(args[1], args[2], tag, archive)
    elif len(args) in (2, 4) and args[0] == "verify":
        kubeconfig = args[args.index("--kubeconfig") + 1] if "--kubeconfig" in args else None
        verify(args[1], kubeconfig)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
