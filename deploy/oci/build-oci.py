#!/usr/bin/env python3
"""Packages the filter (canary_filter.wasm) as an OCI image that Istio's WasmPlugin can pull.

Format: the "compat" variant of the Wasm image spec that istio-agent reads (pkg/wasm/imagefetcher.go): an ordinary
OCI image whose last layer is a tar+gzip holding one file, plugin.wasm. istio-agent also reads the Docker media
types of the same thing, and an "oci" variant with custom media types that it only accepts with exactly two layers;
the compat variant is what Istio's own samples build, and any registry stores it because its media types are the
standard ones.

Output in --out (default target/oci):
  canary-gate-filter/        an OCI image layout (oci-layout, index.json, blobs/sha256/...), the tag in index.json
  canary-gate-filter.tar     the same layout as one tar file (skopeo's oci-archive:, oras --from-oci-layout)
  canary-gate-filter.digest  the manifest digest, sha256:<hex>: the value to pin in the WasmPlugin

Deterministic: fixed timestamps, owners and modes, sorted JSON keys, no build-dependent annotations, so the same
wasm gives the same digest (with the same zlib). The manifest does not carry the tag, so retagging keeps the digest.

Python 3.11+ standard library only.
"""

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tomllib
from pathlib import Path

NAME = "canary-gate-filter"
WASM_MAGIC = b"\0asm"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": sha256(data), "size": len(data)}


def tar_entry(name: str, size: int, mode: int, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.type = size, mode, kind
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    return info


def layer_tar(wasm: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(tar_entry("plugin.wasm", len(wasm), 0o444), io.BytesIO(wasm))
    return buf.getvalue()


def gzip_fixed(data: bytes) -> bytes:
    buf = io.BytesIO()
    # No file name and mtime 0 in the gzip header.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(data)
    return buf.getvalue()


def build_image(wasm: bytes) -> tuple[dict[str, bytes], bytes]:
    """The blobs by digest, and the manifest's bytes."""
    tar = layer_tar(wasm)
    layer = gzip_fixed(tar)
    config = canonical_json(
        {
            "architecture": "wasm",
            "os": "wasip1",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar)]},
        }
    )
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": descriptor(MEDIA_CONFIG, config),
            "layers": [descriptor(MEDIA_LAYER, layer)],
        }
    )
    blobs = {sha256(b): b for b in (config, layer, manifest)}
    return blobs, manifest


def write_layout(directory: Path, blobs: dict[str, bytes], manifest: bytes, tag: str) -> dict[str, bytes]:
    """Writes the layout directory; returns its files by relative path."""
    index = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [dict(descriptor(MEDIA_MANIFEST, manifest), annotations={REF_NAME: tag})],
        }
    )
    files = {"oci-layout": canonical_json({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    for digest, data in blobs.items():
        files["blobs/sha256/" + digest.removeprefix("sha256:")] = data
    if directory.exists():
        shutil.rmtree(directory)
    for rel, data in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def write_archive(path: Path, files: dict[str, bytes]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for d in ("blobs/", "blobs/sha256/"):
            tar.addfile(tar_entry(d, 0, 0o755, tarfile.DIRTYPE))
        for rel in sorted(files):
            tar.addfile(tar_entry(rel, len(files[rel]), 0o644), io.BytesIO(files[rel]))
    path.write_bytes(buf.getvalue())


def workspace_version(root: Path) -> str | None:
    try:
        with open(root / "Cargo.toml", "rb") as f:
            return tomllib.load(f)["workspace"]["package"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return None


def main() -> int:
    root = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wasm", type=Path, default=root / "target/wasm32-wasip1/release/canary_filter.wasm")
    parser.add_argument("--out", type=Path, default=root / "target/oci")
    parser.add_argument("--tag", default=None, help="tag in index.json (default: the workspace version)")
    parser.add_argument(
        "--image", default="REGISTRY/canary-gate/filter", help="repository shown in the push and pin commands"
    )
    args = parser.parse_args()

    tag = args.tag or workspace_version(root)
    if not tag:
        parser.error("no --tag given and no [workspace.package] version in Cargo.toml")
    try:
        wasm = args.wasm.read_bytes()
    except OSError as e:
        print(f"build-oci: cannot read {args.wasm}: {e.strerror} (build it with `make wasm`)", file=sys.stderr)
        return 1
    if not wasm.startswith(WASM_MAGIC):
        print(f"build-oci: {args.wasm} is not a WebAssembly module (no \\0asm header)", file=sys.stderr)
        return 1

    blobs, manifest = build_image(wasm)
    layout = args.out / NAME
    args.out.mkdir(parents=True, exist_ok=True)
    files = write_layout(layout, blobs, manifest, tag)
    archive = args.out / f"{NAME}.tar"
    write_archive(archive, files)
    digest = sha256(manifest)
    (args.out / f"{NAME}.digest").write_text(digest + "\n")

    image = f"{args.image}:{tag}"
    print("canary-gate filter as an OCI image (Istio WasmPlugin, compat variant: one layer with plugin.wasm)")
    print(f"  wasm      {args.wasm} ({len(wasm)} bytes, {sha256(wasm)})")
    print(f"  layout    {layout} (tag {tag})")
    print(f"  archive   {archive}")
    print(f"  manifest  {digest}")
    print("push it (each keeps the manifest digest):")
    print(f"  oras cp --from-oci-layout {layout}:{tag} {image}")
    print(f"  skopeo copy --preserve-digests oci:{layout}:{tag} docker://{image}")
    print(f"  crane push {layout} {image}")
    print("pin it in deploy/istio/wasmplugin.yaml (both WasmPlugins):")
    print(f"  url: oci://{image}")
    print(f'  sha256: "{digest.removeprefix("sha256:")}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
